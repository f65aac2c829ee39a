"""Convolution: one forward/backward pair per algorithm, and a small dispatcher that picks one.

The lecture's convolution (a filter spanning the full depth, a dot product plus a bias at each
place, one activation map per filter) is computed by one of these pairs; `naive.conv_forward`
is the same thing as loops, and every pair is tested against it.

    "im2col"    `im2col`: windows copied into rows, one GEMM; dx by scattering window gradients
                back (any stride and padding).
    "full"      `fullconv`: im2col's forward; at stride 1, dx is itself a convolution of dout
                with the flipped filters (one GEMM, no scatter), and dw comes from the same rows.
    "winograd"  `winograd`: Winograd's F(2, 3) down the height for 3-tall filters at stride 1:
                two thirds of the multiply-adds, forward and backward.
    "winograd4" `winograd4`: F(4, 3) down the height, the same filters: half the multiply-adds
                (six products for four rows), a few times im2col's float32 rounding.

`conv_forward` picks the pair and records it in the `ConvCache` it returns; `conv_backward` runs
that pair's backward. The pair is the one named by its `algorithm` argument, or by
`set_algorithm` for the whole process, or by "auto" (docs/benchmarks.md, "F(4, 3)", has the
measurements behind it):

    F(4, 3)     where it applies, its tiles of 4 rows do fewer multiply-adds than F(2, 3)'s tiles
                of 2 (3, 4 and 7 or more output rows: `winograd4.pays`), and the input has at
                least WINOGRAD_MIN_DEPTH channels or the layer WINOGRAD4_THIN_FILTERS filters;
    F(2, 3)     else where it applies and both depths are at least WINOGRAD_MIN_DEPTH;
    "full"      else where it applies; "im2col" everywhere else.
"""
from slidenet.ops import fullconv, winograd, winograd4
from slidenet.ops.im2col import ConvCache, conv_backward_im2col, conv_forward_im2col

# Below this many input or output channels the GEMMs of F(2, 3) (inner size F_w * D) are too
# narrow for BLAS to run near its peak, and im2col's single wider GEMM wins. F(4, 3), with fewer
# GEMMs, still wins with 1 to 8 filters; on fewer input channels (a first layer of 1 or 3) it wins
# from WINOGRAD4_THIN_FILTERS filters (inference 23-48% faster on 28-32 px maps), with 16 not.
WINOGRAD_MIN_DEPTH = 8
WINOGRAD4_THIN_FILTERS = 32
PAIRS = {
    "im2col": (conv_forward_im2col, conv_backward_im2col),
    "full": (fullconv.conv_forward_full, fullconv.conv_backward_full),
    "winograd": (winograd.conv_forward_winograd, winograd.conv_backward_winograd),
    "winograd4": (winograd4.conv_forward_winograd4, winograd4.conv_backward_winograd4),
}
ALGORITHMS = ("auto", *PAIRS)
_default = {"algorithm": "auto"}

__all__ = ["ALGORITHMS", "ConvCache", "choose", "conv_backward", "conv_forward", "set_algorithm"]


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


def choose(size, stride, pad, depth, filters, algorithm=None, height=None):
    """The pair ("im2col", "full", "winograd" or "winograd4") that computes this convolution.

    size (F_h, F_w), stride, pad: the geometry; depth D and filters K; algorithm: "auto", a
    pair's name, or None for `set_algorithm`'s choice; height: the input's H (None: a tall one).
    """
    algorithm = algorithm or _default["algorithm"]
    _check(algorithm)
    if algorithm != "auto":
        return algorithm
    if winograd.applies(size, stride):
        pays = height is None or winograd4.pays(height + 2 * pad[0] - 2)
        if pays and (depth >= WINOGRAD_MIN_DEPTH or filters >= WINOGRAD4_THIN_FILTERS):
            return "winograd4"
        if min(depth, filters) >= WINOGRAD_MIN_DEPTH:
            return "winograd"
    return "full" if fullconv.applies(size, stride, pad) else "im2col"


def conv_forward(x, w, b, stride=(1, 1), pad=(0, 0), budget=None, relu=False, algorithm=None):
    """Convolve K filters over x.

    x: (N, H, W, D); w: (F_h, F_w, D, K); b: (K,); stride (S_h, S_w); pad (P_h, P_w).
    Returns out (N, H', W', K) with H' = (H + 2P_h - F_h) / S_h + 1 (and W' likewise), and a
    ConvCache for `conv_backward`. budget: scratch bytes for this call (None: the global
    budget). relu: return max(0, out) instead (the cache then keeps out for the ReLU's mask).
    algorithm: see `choose`.
    """
    name = choose(w.shape[:2], stride, pad, w.shape[2], w.shape[3], algorithm, x.shape[1])
    return PAIRS[name][0](x, w, b, tuple(stride), tuple(pad), relu, budget)


def conv_backward(dout, cache, need_dx=True, relu=False):
    """Gradients of conv_forward, by the pair its cache names.

    dout: (N, H', W', K). Returns dx (N, H, W, D), dw (F_h, F_w, D, K), db (K,).
    need_dx=False skips dx (returned as None): the first layer's input needs no gradient.
    relu=True applies the mask of the ReLU the forward fused (it needs forward's relu=True);
    leave it False when something after the ReLU already applied it (a max pool's backward,
    `pool.max_pool_backward(..., relu_mask=True)`).
    """
    if relu and cache.out is None:
        raise ValueError("relu=True needs a forward with relu=True (its output is the mask)")
    return PAIRS[cache.algorithm][1](dout, cache, need_dx, relu)
