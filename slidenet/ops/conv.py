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

A 3-tall filter at stride 1 (the lecture's CONV 3x3, pad 1) takes the same rows through
Winograd's F(2, 3) down the height instead (`winograd`): the same result from two thirds of the
multiply-adds, for the forward, for dx and for dw. `algorithm` chooses: "auto" (Winograd where it
applies and both depths are at least WINOGRAD_MIN_DEPTH), "im2col" or "winograd"; when a call
does not say, `set_algorithm` does (for the whole process: "auto" unless changed).
"""
import numpy as np

from slidenet.ops import winograd
from slidenet.ops.runtime import batch_chunks, bordered, empty, run_chunks, scratch
from slidenet.ops.window import col2im_add, out_hw, tap, unpad_hw, windows

# Below this many input or output channels the GEMMs of F(2, 3) (inner size F_w * D) are too
# narrow for BLAS to run near its peak, and im2col's single wider GEMM wins (an RGB first layer).
WINOGRAD_MIN_DEPTH = 8
ALGORITHMS = ("auto", "im2col", "winograd")
_default = {"algorithm": "auto"}


def set_algorithm(algorithm=None):
    """Set the algorithm of every convolution that does not name one (None: "auto").

    Returns the previous one. "winograd" then fails on layers it cannot compute; "im2col" is
    the plain method everywhere (to compare, or to rule the faster one out).
    """
    _check(algorithm or "auto")
    previous = _default["algorithm"]
    _default["algorithm"] = algorithm or "auto"
    return previous


def _check(algorithm):
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")


def _use_winograd(algorithm, size, stride, d, k):
    """Whether a convolution with this filter size, stride and depths D -> K runs F(2, 3)."""
    _check(algorithm)
    fits = winograd.applies(size, stride)
    if algorithm == "winograd" and not fits:
        raise ValueError(f"Winograd F(2, 3) needs a 3-tall filter at stride 1, "
                         f"not {size[0]}x{size[1]} at stride {stride[0]}x{stride[1]}")
    if algorithm == "auto":
        return fits and min(d, k) >= WINOGRAD_MIN_DEPTH
    return algorithm == "winograd"


def _rows(x, size, stride, pad, name):
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
    rows = scratch(name, view.shape, x.dtype)
    if d == 1:
        # One number per pixel: copying tap by tap runs NumPy's inner loop along whole image
        # rows instead of along F_w numbers, three times faster.
        for i in range(fh):
            for j in range(fw):
                rows[:, :, :, i, j] = tap(x, i, j, view.shape[1:3], stride)
    else:
        np.copyto(rows, view)
    return rows.reshape(-1, fh * fw * d)


def conv_forward(x, w, b, stride=(1, 1), pad=(0, 0), budget=None, relu=False, algorithm=None):
    """Convolve K filters over x.

    x: (N, H, W, D); w: (F_h, F_w, D, K); b: (K,); stride (S_h, S_w); pad (P_h, P_w).
    Returns out (N, H', W', K) with H' = (H + 2P_h - F_h) / S_h + 1 (and W' likewise), and a
    cache for `conv_backward`. budget: scratch bytes for this call (None: the global budget).
    relu: return max(0, out) instead, and let backward apply the ReLU's mask.
    algorithm: "auto", "im2col" or "winograd" (see the module docstring; None: `set_algorithm`'s);
    backward follows the choice made here.
    """
    n, h, wd, d = x.shape
    fh, fw, dw, k = w.shape
    if dw != d:
        raise ValueError(f"filters span depth {dw} but the input has depth {d}")
    ho, wo = out_hw(h, wd, (fh, fw), stride, pad)
    algorithm = algorithm or _default["algorithm"]      # kept in the cache for backward
    fast = _use_winograd(algorithm, (fh, fw), stride, d, k)
    x = np.ascontiguousarray(x)
    out = empty((n, ho, wo, k), np.result_type(x, w))
    if fast:
        g = winograd.filters(np.ascontiguousarray(w, dtype=out.dtype))
    else:
        w2 = np.ascontiguousarray(w).reshape(fh * fw * d, k)
    # Bias and ReLU go over whole output rows (W' * K numbers): NumPy's inner loops are fast
    # on long rows and slow on K-long ones or on a scalar 0.
    bias = b.astype(out.dtype, copy=False)
    bias_row = np.tile(bias, wo)
    zero_row = np.zeros_like(bias_row)

    def product(sl):
        """out[sl] = the convolution of the images sl; True if bias and ReLU are applied too."""
        if not fast:
            np.matmul(_rows(x[sl], (fh, fw), stride, pad, "conv.rows"), w2, out=out[sl].reshape(-1, k))
            return False
        xp, inner = winograd.padded("conv.wpad", sl.stop - sl.start, h, wd, d, pad, x.dtype)
        inner[...] = x[sl]
        r = winograd.rows(xp, fw, "conv.wrows")
        m = np.matmul(r, g, out=scratch("conv.wm", (4, r.shape[1], k), out.dtype))
        return winograd.output(m, out[sl], bias, relu)

    def work(sl):
        if product(sl):
            return
        o = out[sl].reshape(-1, wo * k)
        np.add(o, bias_row, out=o)
        if relu:
            np.maximum(o, zero_row, out=o)

    if fast:
        t, wp = winograd.tiles(ho), wd + 2 * pad[1]
        hot = 4 * t * wo * (fw * d + k)                 # the GEMMs' rows and products
        per_image = hot + (2 * t + 2) * wp * d + 4 * t * wp * d
    else:
        per_image = hot = ho * wo * fh * fw * d + (h + 2 * pad[0]) * (wd + 2 * pad[1]) * d
    run_chunks(work, batch_chunks(n, per_image * x.itemsize, budget, hot * x.itemsize))
    return out, (x, w, stride, pad, budget, out if relu else None, algorithm)


def conv_backward(dout, cache, need_dx=True, relu_masked=False):
    """Gradients of conv_forward.

    dout: (N, H', W', K). Returns dx (N, H, W, D), dw (F_h, F_w, D, K), db (K,).
    need_dx=False skips dx (returned as None): the first layer's input needs no gradient.
    relu_masked=True: dout already carries the fused ReLU's mask (a max pool after the ReLU
    applied it, `pool_forward(..., relu_mask=True)`), so it is not applied again.
    """
    x, w, stride, pad, budget, relu_out, algorithm = cache
    if relu_masked:
        relu_out = None
    n, h, wd, d = x.shape
    fh, fw, _, k = w.shape
    _, ho, wo, _ = dout.shape
    dout = np.ascontiguousarray(dout)
    dx = empty(x.shape, np.result_type(dout, w)) if need_dx else None
    zero_row = np.zeros(wo * k, dout.dtype)
    # dx as a "full" convolution needs stride 1 and P <= F - 1 (a wider padding would crop dout).
    full = need_dx and stride == (1, 1) and pad[0] < fh and pad[1] < fw
    fast = full and _use_winograd(algorithm, (fh, fw), stride, d, k)
    if full:
        back_pad = (fh - 1 - pad[0], fw - 1 - pad[1])
        # w_flip[i, j, k, d] = w[F_h-1-i, F_w-1-j, d, k]: rows of dout's windows times it give dx.
        w_flip = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))
        if fast:
            g_flip = winograd.filters(w_flip.astype(dx.dtype, copy=False))
            padded_out = (2 * winograd.tiles(h) + 2) * (wo + 2 * back_pad[1])
        else:
            w_flip = w_flip.reshape(fh * fw * k, d)
            padded_out = (ho + 2 * back_pad[0]) * (wo + 2 * back_pad[1])
    else:
        w2 = np.ascontiguousarray(w).reshape(fh * fw * d, k)

    def masked(sl, into):
        """dout of the images sl, times the fused ReLU's mask, written into `into`."""
        if relu_out is None:
            into[...] = dout[sl]
            return into
        positive = scratch("conv.mask", ((sl.stop - sl.start) * ho, wo * k), bool)
        np.greater(relu_out[sl].reshape(-1, wo * k), zero_row, out=positive)
        return np.multiply(dout[sl], positive.reshape(into.shape), out=into)

    def work_full(sl):
        # One set of rows serves both products. With grows[p, (i', j'), k] = dout at
        # p + (i', j') - (F - 1 - P), dx = grows @ w_flip and, since dw[i, j] = sum over
        # input positions p of x[p]^T dout[p - (i, j) + P], dw[i, j] = x^T @ grows[:, flipped (i, j)].
        c = sl.stop - sl.start
        bh, bw = back_pad
        gp, inner = bordered("conv.gpad", (c, ho + 2 * bh, wo + 2 * bw, k), dout.dtype, (bh, bh, bw, bw))
        masked(sl, inner)
        db_part = ones[:c * padded_out] @ gp.reshape(-1, k)     # the zero border adds nothing
        view = windows(gp, (fh, fw), (1, 1))
        grows = scratch("conv.grows", view.shape, dout.dtype)
        np.copyto(grows, view)
        grows = grows.reshape(-1, fh * fw * k)
        np.matmul(grows, w_flip, out=dx[sl].reshape(-1, d))
        return x[sl].reshape(-1, d).T @ grows, db_part          # dw as (D, F_h, F_w, K), flipped

    def work_winograd(sl):
        # The same two products through F(2, 3): dx = output(rows @ g_flip), and the gradient
        # of the flipped filters' four g's is rows^T @ adjoint(x) (see `winograd`).
        c = sl.stop - sl.start
        gp, inner = winograd.padded("conv.wgpad", c, ho, wo, k, back_pad, dout.dtype)
        masked(sl, inner)
        db_part = ones[:c * padded_out] @ gp.reshape(-1, k)
        r = winograd.rows(gp, fw, "conv.wgrows")
        m = np.matmul(r, g_flip, out=scratch("conv.wm", (4, r.shape[1], d), dx.dtype))
        winograd.output(m, dx[sl])
        return np.matmul(r.transpose(0, 2, 1), winograd.adjoint(x[sl], "conv.wx")), db_part

    def work_rows(sl):
        g = dout[sl] if relu_out is None else masked(sl, scratch("conv.g", dout[sl].shape, dout.dtype))
        g2 = g.reshape(-1, k)
        dw_part = np.matmul(_rows(x[sl], (fh, fw), stride, pad, "conv.rows").T, g2)
        db_part = ones[:g2.shape[0]] @ g2       # a GEMV: far faster than g2.sum(axis=0)
        if need_dx:
            _scatter_dx(g2, w2, dx[sl], (fh, fw), stride, pad)
        return dw_part, db_part

    # Scratch numbers per image (for the budget) and those one GEMM works on (for the cache).
    if fast:
        t, wp = winograd.tiles(h), wo + 2 * back_pad[1]
        hot = 4 * t * wd * (fw * k + 2 * d)             # rows, products and adjoint(x)
        per_image = hot + padded_out * k + 4 * t * wp * k
        work, dw_shape = work_winograd, (4, fw * k, d)
    elif full:
        per_image = h * wd * fh * fw * k + padded_out * k
        hot = h * wd * fh * fw * k
        work, dw_shape = work_full, (d, fh, fw, k)
    else:
        rows = ho * wo * fh * fw * d
        padded = (h + 2 * pad[0]) * (wd + 2 * pad[1]) * d
        per_image = rows + padded + ho * wo * k + (rows + padded if need_dx else 0)
        hot = rows
        work, dw_shape = work_rows, (fh * fw * d, k)
    chunks = batch_chunks(n, per_image * x.itemsize, budget, hot * x.itemsize)
    largest = max((sl.stop - sl.start for sl in chunks), default=0)
    ones = np.ones(largest * (padded_out if full else ho * wo), dout.dtype)
    dw = np.zeros(dw_shape, np.result_type(x, dout))
    db = np.zeros(k, dout.dtype)
    for dw_part, db_part in run_chunks(work, chunks):
        dw += dw_part.reshape(dw.shape)
        db += db_part
    if fast:
        dw[3] *= -1                     # adjoint() left out X3's minus sign
        dw = winograd.filter_grad(dw).reshape(fh, fw, k, d)     # the flipped filters' gradient
        dw = np.ascontiguousarray(dw[::-1, ::-1].transpose(0, 1, 3, 2))
    elif full:
        dw = np.ascontiguousarray(dw[:, ::-1, ::-1, :].transpose(1, 2, 0, 3))
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
