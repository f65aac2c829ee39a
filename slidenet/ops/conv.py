"""Convolution as the lecture teaches it, made fast: im2col windows times the filters in one GEMM.

Each filter (F_h x F_w x D, always the full input depth) takes a dot product with every window
of the zero-padded input, plus its bias, giving one activation map per filter. Written as a
matrix product, the windows are the rows of `im2col(x)` (N*H'*W' x F_h*F_w*D), the filters are
the columns of `w` reshaped to (F_h*F_w*D x K), and the product is all K activation maps at once.

The rows are built a few images at a time into reused scratch buffers (see `runtime`): a chunk's
rows are still in the CPU cache when the GEMM reads them, and memory does not grow with the
batch. Backward rebuilds each chunk's rows instead of keeping them all.

Backward, for each chunk of dout (N, H', W', K):
    dw = rows^T @ dout                 one GEMM, (F_h*F_w*D x K)
    db = dout summed over N, H', W'
    dx at stride 1 is itself a convolution: dout zero-padded by F - 1 - P, convolved with the
       filters flipped in height and width and with D and K swapped, gives (N, H, W, D) in one
       more GEMM and no scatter. At other strides: drows = dout @ w^T, and each window's row is
       added back onto the input it came from (`col2im_add`).

`relu=True` fuses the ReLU that follows: forward rectifies its output while it is still in
cache, backward masks dout by that output (the ReLU's mask) chunk by chunk.
"""
import numpy as np

from slidenet.ops.runtime import batch_chunks, empty, run_chunks, scratch
from slidenet.ops.window import col2im_add, out_hw, pad_into, unpad_hw, windows


def _rows(x, size, stride, pad, name):
    """im2col rows of the images x (N, H, W, D): (N*H'*W', F_h*F_w*D), in scratch `name`."""
    n, h, w, d = x.shape
    (fh, fw), (ph, pw) = size, pad
    if size == (1, 1) and stride == (1, 1) and pad == (0, 0):
        return x.reshape(-1, d)         # a 1x1 convolution's windows are the pixels themselves
    if pad != (0, 0):
        x = pad_into(scratch(name + ".pad", (n, h + 2 * ph, w + 2 * pw, d), x.dtype), x, pad)
    view = windows(x, size, stride)
    rows = scratch(name, view.shape, x.dtype)
    np.copyto(rows, view)
    return rows.reshape(-1, fh * fw * d)


def conv_forward(x, w, b, stride=(1, 1), pad=(0, 0), budget=None, relu=False):
    """Convolve K filters over x.

    x: (N, H, W, D); w: (F_h, F_w, D, K); b: (K,); stride (S_h, S_w); pad (P_h, P_w).
    Returns out (N, H', W', K) with H' = (H + 2P_h - F_h) / S_h + 1 (and W' likewise), and a
    cache for `conv_backward`. budget: scratch bytes for this call (None: the global budget).
    relu: return max(0, out) instead, and let backward apply the ReLU's mask.
    """
    n, h, wd, d = x.shape
    fh, fw, dw, k = w.shape
    if dw != d:
        raise ValueError(f"filters span depth {dw} but the input has depth {d}")
    ho, wo = out_hw(h, wd, (fh, fw), stride, pad)
    x = np.ascontiguousarray(x)
    w2 = np.ascontiguousarray(w).reshape(fh * fw * d, k)
    out = empty((n, ho, wo, k), np.result_type(x, w))
    # Bias and ReLU go over whole output rows (W' * K numbers): NumPy's inner loops are fast
    # on long rows and slow on K-long ones or on a scalar 0.
    bias_row = np.tile(b.astype(out.dtype, copy=False), wo)
    zero_row = np.zeros_like(bias_row)

    def work(sl):
        np.matmul(_rows(x[sl], (fh, fw), stride, pad, "conv.rows"), w2, out=out[sl].reshape(-1, k))
        o = out[sl].reshape(-1, wo * k)
        np.add(o, bias_row, out=o)
        if relu:
            np.maximum(o, zero_row, out=o)

    per_image = (ho * wo * fh * fw + (h + 2 * pad[0]) * (wd + 2 * pad[1])) * d * x.itemsize
    run_chunks(work, batch_chunks(n, per_image, budget))
    return out, (x, w, stride, pad, budget, out if relu else None)


def conv_backward(dout, cache, need_dx=True):
    """Gradients of conv_forward.

    dout: (N, H', W', K). Returns dx (N, H, W, D), dw (F_h, F_w, D, K), db (K,).
    need_dx=False skips dx (returned as None): the first layer's input needs no gradient.
    """
    x, w, stride, pad, budget, relu_out = cache
    n, h, wd, d = x.shape
    fh, fw, _, k = w.shape
    _, ho, wo, _ = dout.shape
    dout = np.ascontiguousarray(dout)
    w2 = np.ascontiguousarray(w).reshape(fh * fw * d, k)
    dx = empty(x.shape, np.result_type(dout, w)) if need_dx else None
    # dx as a "full" convolution needs stride 1 and P <= F - 1 (a wider padding would crop dout).
    full = stride == (1, 1) and pad[0] < fh and pad[1] < fw
    if full:
        back_pad = (fh - 1 - pad[0], fw - 1 - pad[1])
        # w_flip[i, j, k, d] = w[F_h-1-i, F_w-1-j, d, k]: rows of dout's windows times it give dx.
        w_flip = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2)).reshape(fh * fw * k, d)

    def dx_chunk(g, dxs):
        """dx of the images whose (masked) output gradient is g, written into dxs."""
        if full:
            np.matmul(_rows(g, (fh, fw), (1, 1), back_pad, "conv.grows"), w_flip,
                      out=dxs.reshape(-1, d))
            return
        c = g.shape[0]
        drows = scratch("conv.drows", (c, ho, wo, fh, fw, d), dxs.dtype)
        np.matmul(g.reshape(-1, k), w2.T, out=drows.reshape(-1, fh * fw * d))
        dxp = dxs if pad == (0, 0) else \
            scratch("conv.dxpad", (c, h + 2 * pad[0], wd + 2 * pad[1], d), dxs.dtype)
        dxp[...] = 0
        col2im_add(drows, dxp, stride)
        if dxp is not dxs:
            dxs[...] = unpad_hw(dxp, pad)

    def work(sl):
        g = dout[sl]
        if relu_out is not None:
            positive = scratch("conv.mask", (g.shape[0] * ho, wo * k), bool)
            np.greater(relu_out[sl].reshape(-1, wo * k), zero_row, out=positive)
            g = np.multiply(g, positive.reshape(g.shape), out=scratch("conv.g", g.shape, g.dtype))
        g2 = g.reshape(-1, k)
        dw_part = _rows(x[sl], (fh, fw), stride, pad, "conv.rows").T @ g2
        db_part = ones[:g2.shape[0]] @ g2       # a GEMV: far faster than g2.sum(axis=0)
        if need_dx:
            dx_chunk(g, dx[sl])
        return dw_part, db_part

    zero_row = np.zeros(wo * k, dout.dtype)
    rows_bytes = ho * wo * fh * fw * d + (h + 2 * pad[0]) * (wd + 2 * pad[1]) * d
    back_bytes = 0 if not need_dx else \
        h * wd * fh * fw * k + (ho + 2 * fh) * (wo + 2 * fw) * k if full else \
        ho * wo * fh * fw * d + (h + 2 * pad[0]) * (wd + 2 * pad[1]) * d
    per_image = (rows_bytes + back_bytes + ho * wo * k) * x.itemsize
    chunks = batch_chunks(n, per_image, budget)
    ones = np.ones(max(sl.stop - sl.start for sl in chunks) * ho * wo, dout.dtype)
    parts = run_chunks(work, chunks)
    dw = parts[0][0]
    db = parts[0][1]
    for dw_part, db_part in parts[1:]:
        dw += dw_part
        db += db_part
    return dx, dw.reshape(w.shape), db
