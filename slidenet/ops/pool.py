"""Max and average pooling: the same sliding window as convolution, reduced by max or mean.

Pooling works on each depth slice independently and has no parameters; the output size is the
lecture's (W - F) / S + 1. Windows may overlap (3x3, s=2): the backward adds overlapping
contributions together.

Nothing is copied into windows: with `tap(x, i, j)` the (i, j) entry of every window at once
(a strided view), the max of a window is the running np.maximum over its F_h * F_w taps, and
the mean is their sum over F_h * F_w. Max pooling keeps no argmax. Backward hands each window's
gradient out tap by tap in row-major order: a tap equal to the window's max takes what is left
of the gradient, leaving zero for the taps after it; the last tap takes whatever no earlier tap
took (it must then be the max). So exactly one entry per window, the first maximum as in the
naive loops, gets the gradient, even when a whole window is zero after a ReLU.

With numba installed, max pooling runs `compiled.max_pool` and `compiled.max_pool_backward`
instead: the same comparisons in one pass over each window, bitwise equal results (where
windows overlap, their gradients are added in another order).
"""
import numpy as np

from slidenet.ops import compiled
from slidenet.ops.runtime import batch_chunks, empty, run_chunks, scratch
from slidenet.ops.window import out_hw, tap


def _taps(size):
    return [(i, j) for i in range(size[0]) for j in range(size[1])]


def pool_forward(x, size, stride, mode="max", relu_mask=False):
    """Pool each depth slice of x with an F_h x F_w window.

    x: (N, H, W, D); size (F_h, F_w); stride (S_h, S_w); mode "max" or "avg".
    Returns out (N, H', W', D) with H' = (H - F_h) / S_h + 1, and a cache.
    For max, the gradient goes to the first maximum of each window in row-major order.
    relu_mask=True (max only; x must be a ReLU's output): the backward also applies that ReLU's
    mask, so the ReLU (or the CONV that fused it) need not. Max pooling hands gradient only to
    a window's maximum, whose ReLU output is the pooled value itself: masking dout by `out > 0`
    is the ReLU's mask on a quarter of the numbers (for 2x2 windows).
    """
    n, h, w, d = x.shape
    ho, wo = out_hw(h, w, size, stride)
    out = empty((n, ho, wo, d), x.dtype)
    reduce = np.maximum if mode == "max" else np.add
    first, *rest = _taps(size)

    fast = compiled.kernels(x) if mode == "max" else None

    def work(sl):
        xs, o = x[sl], out[sl]
        if fast is not None:
            fast.max_pool(xs, *size, *stride, o)
            return
        o[...] = tap(xs, *first, (ho, wo), stride)
        for i, j in rest:
            reduce(o, tap(xs, i, j, (ho, wo), stride), out=o)
        if mode == "avg":
            o /= size[0] * size[1]

    run_chunks(work, batch_chunks(n, h * w * d * x.itemsize))
    return out, (x, out, size, stride, "max+relu" if relu_mask and mode == "max" else mode)


def pool_backward(dout, cache):
    """Gradient of pool_forward. dout: (N, H', W', D). Returns dx (N, H, W, D).

    With pool_forward(..., relu_mask=True), dx also carries the ReLU's mask (see there).
    """
    x, out, size, stride, mode = cache
    n, ho, wo, d = dout.shape
    relu_mask = mode == "max+relu"         # the cache's mode says so (see pool_forward)
    zero_row = np.zeros(wo * d, dout.dtype) if relu_mask else None
    # When the windows tile the input, every input entry is in exactly one window: each tap of
    # dx is written once, with no zeroing and no additions.
    tiles = stride == size and x.shape[1] == ho * size[0] and x.shape[2] == wo * size[1]
    dx = empty(x.shape, dout.dtype)
    if not tiles:
        dx[...] = 0
    taps = _taps(size)
    fast = compiled.kernels(x, dout) if mode != "avg" else None

    def work(sl):
        g, dxs = dout[sl], dx[sl]
        if fast is not None:
            fast.max_pool_backward(x[sl], out[sl], g, *size, *stride, relu_mask, tiles, dxs)
            return
        if mode == "avg":
            share = np.divide(g, size[0] * size[1], out=scratch("pool.share", g.shape, g.dtype))
            for i, j in taps:
                view = tap(dxs, i, j, (ho, wo), stride)
                if tiles:
                    view[...] = share
                else:
                    view += share
            return
        xs, o = x[sl], out[sl]
        hit = scratch("pool.hit", g.shape, bool)
        if relu_mask:
            # Against a row of zeros over whole output rows: NumPy is slow against a scalar 0.
            rows = (g.shape[0] * ho, wo * d)
            np.greater(o.reshape(rows), zero_row, out=hit.reshape(rows))
            g = np.multiply(g, hit, out=scratch("pool.masked", g.shape, g.dtype))
        left = g                                # the gradient no tap has taken yet
        for t, (i, j) in enumerate(taps):
            view = tap(dxs, i, j, (ho, wo), stride)
            if t == len(taps) - 1:
                taken = left
            else:
                np.equal(tap(xs, i, j, (ho, wo), stride), o, out=hit)
                taken = np.multiply(left, hit, out=view if tiles else scratch("pool.taken", g.shape, g.dtype))
                # left - taken is exactly 0 where this tap took it and exactly left elsewhere.
                left = np.subtract(left, taken, out=scratch("pool.left", g.shape, g.dtype))
            if tiles:
                if taken is not view:
                    view[...] = taken
            else:
                view += taken

    run_chunks(work, batch_chunks(n, x.shape[1] * x.shape[2] * d * x.itemsize))
    return dx
