"""Convolution by im2col: every window copied into a row, all rows times the filters in one GEMM.

Each filter (F_h x F_w x D, always the full input depth) takes a dot product with every window
of the zero-padded input, plus its bias, giving one activation map per filter. Written as a
matrix product, the windows are the rows of `rows(x)` (N*H'*W' x F_h*F_w*D), the filters are
the columns of `w` reshaped to (F_h*F_w*D x K), and the product is all K activation maps at once.

The rows are built a few images at a time into reused scratch buffers (see `runtime`): a chunk's
rows are still in the CPU cache when the GEMM reads them, and memory does not grow with the
batch. Backward rebuilds each chunk's rows instead of keeping them all.

Backward, for each chunk of dout (N, H', W', K):
    dw = rows^T @ dout                 one GEMM, (F_h*F_w*D x K)
    db = dout summed over N, H', W'
    dx: drows = dout @ w^T, and each window's row is added back onto the input it came from
        (`window.col2im_add`). This works at any stride and padding; at stride 1 the `fullconv`
        pair computes dx as one more convolution instead, with no scatter.

`relu=True` in the forward applies the ReLU that follows while the output is still in cache,
and keeps that output in the cache; `relu=True` in the backward then applies the ReLU's mask
(out > 0) to dout, chunk by chunk.

With numba installed (`compiled`), three passes run compiled, each in one pass without the GIL
and bitwise equal to the NumPy path: the rows of thin inputs (at most THIN_DEPTH channels, a
first layer), the bias and ReLU, and the ReLU's mask. For a first layer that is most of the
work: its GEMM runs near the BLAS peak even with 27-wide rows (an RGB 3x3 filter), while NumPy
copies those rows 9 numbers at a time (docs/benchmarks.md, "Thin first layers").
"""
import numpy as np

from slidenet.ops import compiled
from slidenet.ops.conv.common import ConvCache, check_shapes, finish_rows, relu_masked
from slidenet.ops.runtime import batch_chunks, bordered, empty, run_chunks, scratch
from slidenet.ops.window import col2im_add, out_hw, tap, unpad_hw, windows

# Inputs with at most this many channels have their rows copied by the compiled kernel: NumPy
# copies a window in runs of F_w * D numbers, and short runs are slow. From D = 8 on NumPy's runs
# are long enough, and it is faster.
THIN_DEPTH = 4


def rows(x, size, stride, pad, name):
    """im2col rows of the images x (N, H, W, D): (N*H'*W', F_h*F_w*D), in scratch `name`."""
    n, h, w, d = x.shape
    (fh, fw), (ph, pw) = size, pad
    if size == (1, 1) and stride == (1, 1) and pad == (0, 0):
        return x.reshape(-1, d)         # a 1x1 convolution's windows are the pixels themselves
    if pad != (0, 0):
        xp, inner = bordered(name + ".pad", (n, h + 2 * ph, w + 2 * pw, d), x.dtype, (ph, ph, pw, pw))
        inner[...] = x
        x = xp
    view = windows(x, size, stride)
    fast = compiled.kernels(x) if d <= THIN_DEPTH else None
    if fast is not None:
        out = scratch(name, view.shape[:3] + (fh * fw * d,), x.dtype)
        # Tuples of F_h, F_w and D zeros: the sizes the kernel is compiled for (see there).
        fast.im2col_rows(x, (0,) * fh, (0,) * fw, (0,) * d, stride[0], stride[1], out)
        return out.reshape(-1, fh * fw * d)
    out = scratch(name, view.shape, x.dtype)
    if d == 1:
        # One number per pixel: copying tap by tap runs NumPy's inner loop along whole image
        # rows instead of along F_w numbers, which is much faster.
        for i in range(fh):
            for j in range(fw):
                out[:, :, :, i, j] = tap(x, i, j, view.shape[1:3], stride)
    else:
        np.copyto(out, view)
    return out.reshape(-1, fh * fw * d)


def conv_forward_im2col(x, w, b, stride=(1, 1), pad=(0, 0), relu=False, budget=None,
                        filters=None):
    """Convolve K filters over x by im2col.

    x: (N, H, W, D); w: (F_h, F_w, D, K); b: (K,); stride (S_h, S_w); pad (P_h, P_w).
    Returns out (N, H', W', K) with H' = (H + 2P_h - F_h) / S_h + 1 (W' likewise), and a
    ConvCache. relu: return max(0, out) instead. budget: scratch bytes (None: the global one).
    filters: `prepare_filters(w)`, when a caller computed it once for many calls.
    """
    ho, wo = check_shapes(x, w, stride, pad)
    n, h, wd, d = x.shape
    fh, fw, _, k = w.shape
    x = np.ascontiguousarray(x)
    out = empty((n, ho, wo, k), np.result_type(x, w))
    w2 = prepare_filters(w) if filters is None else filters
    bias_row = np.tile(b.astype(out.dtype, copy=False), wo)

    def work(sl):
        np.matmul(rows(x[sl], (fh, fw), stride, pad, "conv.rows"), w2, out=out[sl].reshape(-1, k))
        finish_rows(out[sl], bias_row, relu)

    per_image = ho * wo * fh * fw * d + (h + 2 * pad[0]) * (wd + 2 * pad[1]) * d
    run_chunks(work, batch_chunks(n, per_image * x.itemsize, budget))
    return out, ConvCache("im2col", x, w, tuple(stride), tuple(pad), budget, out if relu else None)


def prepare_filters(w):
    """The filters as im2col's GEMM multiplies by them: w (F_h, F_w, D, K) -> (F_h*F_w*D, K)."""
    return np.ascontiguousarray(w).reshape(-1, w.shape[3])


def conv_backward_im2col(dout, cache, need_dx=True, relu=False):
    """Gradients of a convolution, by im2col's rows: dw = rows^T @ dout, dx by scatter.

    dout: (N, H', W', K); cache: any ConvCache (every algorithm's forward leaves the same one).
    Returns dx (N, H, W, D) or None when need_dx is False, dw (F_h, F_w, D, K), db (K,).
    relu: dout is first multiplied by the mask of the ReLU the forward applied.
    """
    x, w, stride, pad, budget = cache.x, cache.w, cache.stride, cache.pad, cache.budget
    n, h, wd, d = x.shape
    fh, fw, _, k = w.shape
    _, ho, wo, _ = dout.shape
    dout = np.ascontiguousarray(dout)
    dx = empty(x.shape, np.result_type(dout, w)) if need_dx else None
    w2 = np.ascontiguousarray(w).reshape(fh * fw * d, k)

    def work(sl):
        g = dout[sl] if not relu else relu_masked(dout[sl], cache.out[sl],
                                                  scratch("conv.g", dout[sl].shape, dout.dtype))
        g2 = g.reshape(-1, k)
        dw_part = np.matmul(rows(x[sl], (fh, fw), stride, pad, "conv.rows").T, g2)
        db_part = ones[:g2.shape[0]] @ g2       # a GEMV: far faster than g2.sum(axis=0)
        if need_dx:
            _scatter_dx(g2, w2, dx[sl], (fh, fw), stride, pad)
        return dw_part, db_part

    rows_size = ho * wo * fh * fw * d
    padded = (h + 2 * pad[0]) * (wd + 2 * pad[1]) * d
    per_image = rows_size + padded + ho * wo * k + (rows_size + padded if need_dx else 0)
    chunks = batch_chunks(n, per_image * x.itemsize, budget, rows_size * x.itemsize)
    ones = np.ones(max(sl.stop - sl.start for sl in chunks) * ho * wo, dout.dtype)
    dw = np.zeros((fh * fw * d, k), np.result_type(x, dout))
    db = np.zeros(k, dout.dtype)
    for dw_part, db_part in run_chunks(work, chunks):
        dw += dw_part
        db += db_part
    return dx, dw.reshape(w.shape), db


def _scatter_dx(g2, w2, dxs, size, stride, pad):
    """dx of a chunk at any stride: each window's gradient (g2 @ w^T) added back where it came from.

    g2: (c*H'*W', K) output gradient; dxs: (c, H, W, D), written.
    """
    c, h, wd, d = dxs.shape
    (fh, fw), (ph, pw) = size, pad
    ho, wo = out_hw(h, wd, size, stride, pad)
    drows = scratch("conv.drows", (c, ho, wo, fh, fw, d), dxs.dtype)
    np.matmul(g2, w2.T, out=drows.reshape(-1, fh * fw * d))
    dxp = dxs if pad == (0, 0) else scratch("conv.dxpad", (c, h + 2 * ph, wd + 2 * pw, d), dxs.dtype)
    dxp[...] = 0
    col2im_add(drows, dxp, stride)
    if dxp is not dxs:
        dxs[...] = unpad_hw(dxp, pad)
