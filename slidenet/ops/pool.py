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
windows overlap, their gradients are added in another order); 2x2 windows at stride 2 have a
pass of their own (`max_pool22`, and `max_pool22_backward` where they tile the input).

Two pairs: `max_pool_forward` / `max_pool_backward` and `avg_pool_forward` / `avg_pool_backward`;
`naive.pool_forward` and `naive.pool_backward` are the loops they are tested against.
"""
from typing import NamedTuple

import numpy as np

from slidenet.ops import compiled
from slidenet.ops.runtime import batch_chunks, empty, run_chunks, scratch
from slidenet.ops.window import out_hw, tap


def _taps(size):
    return [(i, j) for i in range(size[0]) for j in range(size[1])]


class PoolCache(NamedTuple):
    """What a pooling backward needs from its forward."""
    x: np.ndarray           # (N, H, W, D)
    out: np.ndarray         # (N, H', W', D)
    size: tuple             # (F_h, F_w)
    stride: tuple           # (S_h, S_w)


def _pool(x, size, stride, reduce, fast, divide=False):
    """out (N, H', W', D): `reduce` over every window's taps (or the compiled max pool),
    divided by the window's size when `divide` (a mean)."""
    n, h, w, d = x.shape
    ho, wo = out_hw(h, w, size, stride)
    out = empty((n, ho, wo, d), x.dtype)
    first, *rest = _taps(size)
    pairs = tuple(size) == tuple(stride) == (2, 2)

    def work(sl):
        xs, o = x[sl], out[sl]
        if fast is not None:
            if pairs:
                fast.max_pool22(xs, o)
            else:
                fast.max_pool(xs, *size, *stride, o)
            return
        o[...] = tap(xs, *first, (ho, wo), stride)
        for i, j in rest:
            reduce(o, tap(xs, i, j, (ho, wo), stride), out=o)
        if divide:
            o /= size[0] * size[1]

    run_chunks(work, batch_chunks(n, h * w * d * x.itemsize))
    return out, PoolCache(x, out, tuple(size), tuple(stride))


def _tiles(cache):
    """Whether the windows tile the input: then every input entry is in exactly one window, so
    each tap of dx is written once, with no zeroing and no additions."""
    x, out, size, stride = cache
    return stride == size and x.shape[1] == out.shape[1] * size[0] \
        and x.shape[2] == out.shape[2] * size[1]


def _new_dx(dout, cache):
    """dx (N, H, W, D) for a backward to fill, zeroed unless the windows tile the input (then
    every entry is written once), and whether they do."""
    tiles = _tiles(cache)
    dx = empty(cache.x.shape, dout.dtype)
    if not tiles:
        dx[...] = 0
    return dx, tiles


def max_pool_forward(x, size, stride):
    """The max of each F_h x F_w window of every depth slice of x.

    x: (N, H, W, D); size (F_h, F_w); stride (S_h, S_w). Returns out (N, H', W', D) with
    H' = (H - F_h) / S_h + 1 (W' likewise), and a PoolCache. The gradient goes to the first
    maximum of each window in row-major order.
    """
    return _pool(x, size, stride, np.maximum, compiled.kernels(x))


def max_pool_backward(dout, cache, relu_mask=False):
    """Gradient of max_pool_forward. dout: (N, H', W', D). Returns dx (N, H, W, D).

    relu_mask=True (x must be a ReLU's output): dx also carries that ReLU's mask, so the ReLU
    (or the CONV that fused it) need not apply it. Max pooling hands gradient only to a
    window's maximum, whose ReLU output is the pooled value itself: masking dout by `out > 0`
    is the ReLU's mask on a quarter of the numbers (for 2x2 windows).
    """
    x, out, size, stride = cache
    n, ho, wo, d = dout.shape
    dx, tiles = _new_dx(dout, cache)
    taps = _taps(size)
    zero_row = np.zeros(wo * d, dout.dtype)
    fast = compiled.kernels(x, dout)
    pairs = tiles and tuple(size) == tuple(stride) == (2, 2)

    def work(sl):
        g, dxs, xs, o = dout[sl], dx[sl], x[sl], out[sl]
        if fast is not None:
            if pairs:
                fast.max_pool22_backward(xs, o, g, relu_mask, dxs)
            else:
                fast.max_pool_backward(xs, o, g, *size, *stride, relu_mask, tiles, dxs)
            return
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


def avg_pool_forward(x, size, stride):
    """The mean of each F_h x F_w window of every depth slice of x.

    x: (N, H, W, D); size (F_h, F_w); stride (S_h, S_w). Returns out (N, H', W', D) with
    H' = (H - F_h) / S_h + 1 (W' likewise), and a PoolCache.
    """
    return _pool(x, size, stride, np.add, None, divide=True)


def avg_pool_backward(dout, cache):
    """Gradient of avg_pool_forward: each window's gradient shared evenly by its F_h * F_w taps.

    dout: (N, H', W', D). Returns dx (N, H, W, D).
    """
    x, _, size, stride = cache
    n, ho, wo, d = dout.shape
    dx, tiles = _new_dx(dout, cache)

    def work(sl):
        g, dxs = dout[sl], dx[sl]
        share = np.divide(g, size[0] * size[1], out=scratch("pool.share", g.shape, g.dtype))
        for i, j in _taps(size):
            view = tap(dxs, i, j, (ho, wo), stride)
            if tiles:
                view[...] = share
            else:
                view += share

    run_chunks(work, batch_chunks(n, x.shape[1] * x.shape[2] * d * x.itemsize))
    return dx
