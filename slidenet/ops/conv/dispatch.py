"""The convolution dispatcher: which pair computes a convolution, and the calls that run it.

The lecture's convolution (a filter spanning the full depth, a dot product plus a bias at each
place, one activation map per filter) is computed by one of these pairs; `naive.conv_forward`
is the same thing as loops, and every pair is tested against it.

    "im2col"    `im2col`: windows copied into rows, one GEMM; dx by scattering window gradients
                back (any stride and padding).
    "full"      `full_dx`: im2col's forward; at stride 1, dx is itself a convolution of dout
                with the flipped filters (one GEMM, no scatter), and dw comes from the same rows.
    "winograd"  `winograd_f23`: Winograd's F(2, 3) down the height for 3-tall filters at stride 1:
                two thirds of the multiply-adds, forward and backward
                (both Winograd pairs are `winograd`'s forward and backward with a tile scheme).
    "winograd4" `winograd_f43`: F(4, 3) down the height, the same filters: half the multiply-adds
                (six products for four rows), a few times im2col's float32 rounding.
    "direct"    `direct`: thin inputs (a first layer): each output pixel's window times the
                filters, no rows, compiled; im2col's backward.
    "winograd_s2" `winograd_s2_train`: training's 3x3 CONVs at stride 2 read through their
                per-side padding (`conv_forward(..., sides=)`, where `takes_sides` says so):
                inference's stride-2 Winograd forward, dx and dw from one set of dout's tiles.

`conv_forward` picks the pair and records it in the `ConvCache` it returns; `conv_backward` runs
that pair's backward. The pair is the one named by its `algorithm` argument, or by
`set_algorithm` for the whole process, or by "auto" (docs/benchmarks.md, "F(4, 3)" and "Thin
first layers", has the measurements behind it):

    "direct"    for a thin input (at most 4 channels, 27 numbers a window, 16 filters or more:
                `direct.pays`); without numba its forward is im2col's;
    F(4, 3)     where it applies, its tiles of 4 rows do fewer multiply-adds than F(2, 3)'s tiles
                of 2 (3, 4 and 7 or more output rows: `winograd_f43.pays`), and the input has at
                least WINOGRAD_MIN_DEPTH channels or the layer WINOGRAD4_THIN_FILTERS filters;
    F(2, 3)     else where it applies and both depths are at least WINOGRAD_MIN_DEPTH;
    "full"      else where it applies; "im2col" everywhere else.
"""
from typing import NamedTuple

import numpy as np

from slidenet.ops.conv import (
    direct, full_dx, im2col, pair, winograd, winograd_f23, winograd_f43, winograd_f44,
    winograd_s2, winograd_s2_train)
from slidenet.ops.activations import add_into
from slidenet.ops.conv.common import ConvCache
from slidenet.ops.conv.im2col import conv_backward_im2col, conv_forward_im2col
from slidenet.ops.pool import max_pool_forward
from slidenet.ops.sides import pad_sides

# Below this many input or output channels the GEMMs of F(2, 3) (inner size F_w * D) are too
# narrow for BLAS to run near its peak, and im2col's single wider GEMM wins. F(4, 3), with fewer
# GEMMs, still wins on thin inputs once the layer has WINOGRAD4_THIN_FILTERS filters. First
# layers of 1 to 4 channels go to "direct" before either rule. docs/benchmarks.md ("F(4, 3)",
# "Thin first layers") has the measurements behind each threshold.
WINOGRAD_MIN_DEPTH = 8
WINOGRAD4_THIN_FILTERS = 32
PAIRS = {
    "im2col": (conv_forward_im2col, conv_backward_im2col),
    "full": (full_dx.conv_forward_full, full_dx.conv_backward_full),
    "winograd": (winograd_f23.conv_forward_winograd, winograd_f23.conv_backward_winograd),
    "winograd4": (winograd_f43.conv_forward_winograd4, winograd_f43.conv_backward_winograd4),
    "direct": (direct.conv_forward_direct, direct.conv_backward_direct),
    "winograd2d": (winograd_f44.conv_forward_winograd2d, winograd_f44.conv_backward_winograd2d),
}
ALGORITHMS = ("auto", *PAIRS)
_default = {"algorithm": "auto"}

# How each pair's forward wants its filters, computed once by `prepare_conv`.
PREPARE = {"im2col": im2col.prepare_filters, "full": im2col.prepare_filters,
           "winograd": winograd_f23.prepare_filters, "winograd4": winograd_f43.prepare_filters,
           "direct": lambda w: w, "winograd2d": winograd_f44.prepare_filters}

__all__ = ["ALGORITHMS", "ConvCache", "PreparedConv", "choose", "conv_backward", "conv_forward",
           "conv_infer", "prepare_conv", "set_algorithm", "takes_sides"]


def set_algorithm(algorithm=None):
    """Set the algorithm of every convolution that does not name one (None: "auto").

    Returns the previous one. A named algorithm then fails on layers it cannot compute; "im2col"
    is the plain method everywhere (to compare, or to rule the faster ones out).
    """
    _check(algorithm or "auto")
    previous = _default["algorithm"]
    _default["algorithm"] = algorithm or "auto"
    return previous


def _check(algorithm):
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")


def choose(size, stride, pad, depth, filters, algorithm=None, height=None, width=None):
    """The pair ("im2col", "full", "winograd", "winograd4", "winograd2d" or "direct") that
    computes this convolution.

    size (F_h, F_w), stride, pad: the geometry; depth D and filters K; algorithm: "auto", a
    pair's name, or None for `set_algorithm`'s choice; height: the input's H (None: a tall one);
    width: the input's W, given by `conv_forward` only: "auto" then takes F(4x4, 3x3) where
    F(4, 3) would run and `winograd_f44.pays_in_training` ("winograd2d", training's pair of
    `winograd_f44`; inference's `prepare_conv` asks `choose_infer` instead, for the same
    module's forward alone, "winograd44", which also adds a residual sum and pools).
    """
    algorithm = algorithm or _default["algorithm"]
    _check(algorithm)
    if algorithm != "auto":
        return algorithm
    if direct.pays(size, depth, filters):
        return "direct"
    if winograd.applies(size, stride):
        pays = height is None or winograd_f43.pays(height + 2 * pad[0] - 2)
        if pays and (depth >= WINOGRAD_MIN_DEPTH or filters >= WINOGRAD4_THIN_FILTERS):
            if (width is not None and height is not None
                    and winograd_f44.applies(size, stride, pad)
                    and winograd_f44.pays_in_training(height + 2 * pad[0] - 2,
                                                      width + 2 * pad[1] - 2, depth, filters)):
                return "winograd2d"
            return "winograd4"
        if min(depth, filters) >= WINOGRAD_MIN_DEPTH:
            return "winograd"
    return "full" if full_dx.applies(size, stride, pad) else "im2col"


def takes_sides(x, w, stride, before, after, algorithm=None):
    """Whether `conv_forward(..., sides=(before, after))` reads x through padding that differs
    per side (or crops) without a padded copy: training's stride-2 Winograd
    (`winograd_s2_train.takes`: a 3 x 3 filter at stride 2 on at least 16 channels, at least
    4 output tiles an image, compiled kernels), under "auto" only. Else the caller pads x
    first (`ops.sides.pad_sides`) and unpads dx (`unpad_sides`)."""
    return ((algorithm or _default["algorithm"]) == "auto"
            and winograd_s2_train.takes(x, w, stride, before, after))


def conv_forward(x, w, b, stride=(1, 1), pad=(0, 0), budget=None, relu=False, algorithm=None,
                 sides=None):
    """Convolve K filters over x.

    x: (N, H, W, D); w: (F_h, F_w, D, K); b: (K,); stride (S_h, S_w); pad (P_h, P_w).
    Returns out (N, H', W', K) with H' = (H + 2P_h - F_h) / S_h + 1 (and W' likewise), and a
    ConvCache for `conv_backward`. budget: scratch bytes for this call (None: the global
    budget). relu: return max(0, out) instead (the cache then keeps out for the ReLU's mask).
    algorithm: see `choose`. sides: None, or (before, after), padding per side that x does
    not have yet (pad is then ignored), for a call `takes_sides` takes: training's stride-2
    Winograd (`winograd_s2_train`), whose cache is an `S2Cache`.
    """
    if sides is not None:
        if not takes_sides(x, w, stride, *sides, algorithm=algorithm):
            raise ValueError("conv_forward takes sides only where takes_sides says so")
        return winograd_s2_train.forward(x, w, b, *sides, relu, budget)
    name = choose(w.shape[:2], stride, pad, w.shape[2], w.shape[3], algorithm, x.shape[1],
                  x.shape[2])
    return PAIRS[name][0](x, w, b, tuple(stride), tuple(pad), relu, budget)


class PreparedConv(NamedTuple):
    """A convolution made ready for many inference calls: its pair chosen and its filters
    transformed once (`prepare_conv`), for `conv_infer`."""
    algorithm: str
    w: np.ndarray           # (F_h, F_w, D, K)
    b: np.ndarray           # (K,)
    stride: tuple
    pad: tuple
    relu: bool
    filters: np.ndarray     # what the pair's GEMMs multiply by


def prepare_conv(w, b, stride=(1, 1), pad=(0, 0), relu=False, algorithm=None, height=None,
                 width=None):
    """The PreparedConv of these weights (w and b are copied: later changes do not reach it).

    height: the input's H, for `choose` (None: a tall one); conv_infer then runs the pair chosen
    for it on inputs of any height. width: the input's W, or None; given, "auto" may choose
    the inference-only F(4x4, 3x3) ("winograd44", `choose_infer`).
    """
    name = choose(w.shape[:2], stride, pad, w.shape[2], w.shape[3], algorithm, height)
    if width is not None and (algorithm or _default["algorithm"]) == "auto":
        name = choose_infer(name, w, stride, pad, width)
    w, b = w.copy(), b.copy()
    prepare = INFER_PREPARE[name] if name in INFER_PREPARE else PREPARE[name]
    return PreparedConv(name, w, b, tuple(stride), tuple(pad), relu, prepare(w))


# The inference-only schemes' filters, as `prepare_conv` computes them once.
INFER_PREPARE = {"winograd44": winograd_f44.prepare_filters,
                 "winograd_s2": winograd_s2.prepare_filters}


# Below this many input channels F(4x4, 3x3)'s 36 GEMMs (inner size D) are too thin to beat
# F(4, 3)'s 6 (inner size 3D): docs/benchmarks.md, "res18 inference: Winograd F(4x4, 3x3)
# in both axes".
WINOGRAD44_MIN_DEPTH = 8


def choose_infer(name, w, stride, pad, width):
    """Inference's choice for a convolution `choose` gave `name`: "winograd44" (F(4x4, 3x3),
    `winograd_f44`) where "auto" chose F(4, 3) and F(4x4, 3x3) applies (a 3 x 3 filter at stride
    1), pays across the output width (`winograd_f44.pays`), the input has at least
    WINOGRAD44_MIN_DEPTH channels and the compiled kernels run; "winograd_s2" (`winograd_s2`)
    where "auto" chose im2col for a 3 x 3 filter at stride 2 on at least `winograd_s2.MIN_DEPTH`
    channels and the compiled kernels run; else `name`."""
    if (name == "winograd4" and winograd_f44.applies(w.shape[:2], stride)
            and winograd_f44.pays(width + 2 * pad[1] - 2) and w.shape[2] >= WINOGRAD44_MIN_DEPTH
            and winograd_f44.runs(w, w)):
        return "winograd44"
    if (name == "im2col" and winograd_s2.applies(w.shape[:2], stride)
            and w.shape[2] >= winograd_s2.MIN_DEPTH and winograd_s2.runs(w)):
        return "winograd_s2"
    return name


def conv_infer(x, prepared, budget=None, pool=False, *, skip=None, sides=None):
    """conv_forward's output alone (no cache), with the filters `prepare_conv` made.

    sides: None, or (before, after), padding that differs per side and that x does not have
    yet (`ops.sides.pad_sides`'s arguments): "winograd_s2" reads x through it, the others pad a
    copy first.

    skip: None, or an array of the output's shape added before the ReLU: relu(conv(x) + b +
    skip), a residual block's sum ending in its RELU. The Winograd pairs add it in the pass
    that writes the output; the others add it (and rectify) over their output afterwards.

    A batch of one image has no chunks to share: through the thread pool, splitting its rows
    costs more in hand-overs than it saves (docs/benchmarks.md, "Batch 1"). An F(4, 3) layer
    of one float32 image is split with `pair` instead, whose hand-over stays in compiled code.

    "winograd44" (F(4x4, 3x3), `choose_infer`) adds the skip, or pools, in its output pass
    too; it runs F(4, 3) if the compiled kernels have been turned off since `prepare_conv`.

    pool=True (not with skip): the 2x2 max pool at stride 2 of that output (CONV -> RELU ->
    MAXPOOL(2x2));
    F(4, 3) with the compiled kernels pools its products directly, without writing the
    CONV's output (`winograd.forward`), bit for bit the same numbers; such a layer is not
    split by `pair`, which writes whole output rows.
    """
    p = prepared
    if pool and skip is not None:
        raise ValueError("conv_infer pools or adds a skip, not both")
    if p.algorithm == "winograd_s2":
        if skip is None and not pool and winograd_s2.runs(x, p.filters) and \
                winograd_s2.pays(x, sides[0] if sides else p.pad, sides[1] if sides else p.pad):
            before, after = sides if sides else (p.pad, p.pad)
            return winograd_s2.forward(x, p.filters, p.b, before, p.relu, budget, after)
        # A call it does not take (a skip, a pool, few tiles, no compiled kernels): im2col.
        p = p._replace(algorithm="im2col", filters=im2col.prepare_filters(p.w))
    if sides is not None:
        x = pad_sides(x, *sides)
    if p.algorithm == "winograd44" and not winograd_f44.runs(x, p.filters):
        # The compiled kernels were turned off after prepare_conv: F(4, 3) from the filters.
        p = p._replace(algorithm="winograd4", filters=winograd_f43.prepare_filters(p.w))
    if p.algorithm == "winograd44":
        return winograd_f44.forward(x, p.filters, p.b, p.pad, p.relu, budget, skip, pool)
    if pool:
        if p.algorithm == "winograd4" and winograd.pools(winograd_f43.F43, x, p.w):
            return winograd_f43.conv_forward_winograd4(x, p.w, p.b, p.stride, p.pad, p.relu,
                                                       budget, p.filters, pool=True)[0]
        return max_pool_forward(conv_infer(x, p, budget), (2, 2), (2, 2))[0]
    if skip is not None:
        if p.algorithm in ("winograd", "winograd4"):
            return PAIRS[p.algorithm][0](x, p.w, p.b, p.stride, p.pad, p.relu, budget,
                                         filters=p.filters, skip=skip)[0]
        out = PAIRS[p.algorithm][0](x, p.w, p.b, p.stride, p.pad, False, budget,
                                    filters=p.filters)[0]
        return add_into(out, [skip], p.relu)
    if p.algorithm == "winograd4" and pair.applies(x, x.shape[1] + 2 * p.pad[0] - 2, p.filters):
        out = pair.winograd4_forward(x, p.w, p.b, p.pad, p.relu, p.filters)
        if out is not None:
            return out
    return PAIRS[p.algorithm][0](x, p.w, p.b, p.stride, p.pad, p.relu, budget, filters=p.filters)[0]


def conv_backward(dout, cache, need_dx=True, relu=False, skip=None):
    """Gradients of conv_forward, by the pair its cache names.

    dout: (N, H', W', K). Returns dx (N, H, W, D), dw (F_h, F_w, D, K), db (K,).
    need_dx=False skips dx (returned as None): the first layer's input needs no gradient.
    relu=True applies the mask of the ReLU the forward fused (it needs forward's relu=True);
    leave it False when something after the ReLU already applied it (a max pool's backward,
    `pool.max_pool_backward(..., relu_mask=True)`). skip: None, or an array of x's shape:
    return dx + skip instead (training's residual sum: the other branches' gradients of the
    volume before the branches), added in F(4x4, 3x3)'s output pass as it writes dx, after
    the other pairs; the same bits as adding them after. Not with need_dx=False.
    """
    if relu and cache.out is None:
        raise ValueError("relu=True needs a forward with relu=True (its output is the mask)")
    if cache.algorithm == "winograd_s2":         # training's stride-2 Winograd: an S2Cache
        if skip is not None and not need_dx:
            raise ValueError("skip is added to dx: it needs need_dx=True")
        return winograd_s2_train.backward(dout, cache, need_dx, relu, skip)
    if skip is None:
        return PAIRS[cache.algorithm][1](dout, cache, need_dx, relu)
    if not need_dx:
        raise ValueError("skip is added to dx: it needs need_dx=True")
    if cache.algorithm == "winograd2d":
        return winograd_f44.conv_backward_winograd2d(dout, cache, need_dx, relu, skip=skip)
    dx, dw, db = PAIRS[cache.algorithm][1](dout, cache, need_dx, relu)
    np.add(dx, skip, out=dx)        # dx is the pair's own new array
    return dx, dw, db
