"""Every kernel pair through the one harness (tests/harness.py): the naive loops, finite
differences, float32, chunks, threads and the compiled passes. Then the lecture's own numbers."""
import numpy as np
import pytest

from harness import CONV_GEOMETRIES, check_kernel, conv_arrays
from helpers import numba_problem, require
from slidenet import ops
from slidenet.errors import GeometryError
from slidenet.gradcheck import TOLERANCE, numeric_gradient, relative_error, sample
from slidenet.ops import conv, naive
from slidenet.ops.conv import direct, full_dx, winograd, winograd_f44

RNG = np.random.default_rng(1234)

def _applies(algorithm, d, fh, fw, sh, sw, ph, pw):
    if algorithm == "direct":
        return direct.applies((fh, fw), d)
    if algorithm in ("winograd", "winograd4"):
        return winograd.applies((fh, fw), (sh, sw))
    if algorithm == "winograd2d":
        return winograd_f44.applies((fh, fw), (sh, sw), (ph, pw))
    if algorithm == "full":
        return full_dx.applies((fh, fw), (sh, sw), (ph, pw))
    return True


ALGORITHMS = ("im2col", "full", "winograd", "winograd4", "winograd2d", "direct")
# Pairs whose compiled passes add in another order than their NumPy path: the direct
# forward (a window's products, against im2col's GEMM) and F(4x4, 3x3) (NumPy's einsum).
ROUNDED = ("direct", "winograd2d")
CONV_CASES = [pytest.param(algorithm, g, id=f"{algorithm}-{'x'.join(map(str, g))}")
              for g in CONV_GEOMETRIES
              for algorithm in ALGORITHMS
              if _applies(algorithm, *g[2:9])]


@pytest.mark.parametrize("algorithm,geometry", CONV_CASES)
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_conv_pairs(algorithm, geometry, relu):
    h, w, d, fh, fw, sh, sw, ph, pw, k = geometry
    stride, pad = (sh, sw), (ph, pw)

    def forward(x, w, b):
        out, cache = ops.conv_forward(x, w, b, stride, pad, relu=relu, algorithm=algorithm)
        assert cache.algorithm == algorithm
        return out, cache

    def reference(x, w, b):
        out = naive.conv_forward(x, w, b, stride, pad)
        return np.maximum(out, 0) if relu else out

    def reference_backward(dout, x, w, b):
        g = dout * (naive.conv_forward(x, w, b, stride, pad) > 0) if relu else dout
        return naive.conv_backward(g, x, w, stride, pad)

    check_kernel(forward, lambda dout, cache: ops.conv_backward(dout, cache, relu=relu),
                 conv_arrays(h, w, d, fh, fw, k), ("x", "w", "b"), naive=reference,
                 naive_backward=reference_backward, compiled_exact=algorithm not in ROUNDED)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv_without_dx_gives_dw_and_db(algorithm):
    # The first layer of a training step: backward skips dx, and dw and db are unchanged.
    stride, pad = (1, 1), (1, 1)
    check_kernel(lambda x, w, b: ops.conv_forward(x, w, b, stride, pad, algorithm=algorithm),
                 lambda dout, cache: ops.conv_backward(dout, cache, need_dx=False),
                 conv_arrays(6, 5, 2, 3, 3, 3), ("x", "w", "b"),
                 naive_backward=lambda dout, x, w, b: (None, *naive.conv_backward(dout, x, w, stride, pad)[1:]),
                 compiled_exact=algorithm not in ROUNDED)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_prepared_filters_give_the_forward_bit_for_bit(algorithm, dtype):
    # Inference transforms the filters once (`prepare_conv`); the result must be the forward's
    # own, with the ReLU, at any height (the pair is chosen for the height it was prepared for).
    x, w, b = (a.astype(dtype) for a in conv_arrays(9, 6, 3, 3, 3, 4, n=2).values())
    prepared = conv.prepare_conv(w, b, (1, 1), (1, 1), relu=True, algorithm=algorithm, height=9)
    w[...] = 0                                      # a snapshot: later changes do not reach it
    want, _ = ops.conv_forward(x, prepared.w, prepared.b, (1, 1), (1, 1), relu=True,
                               algorithm=algorithm)
    np.testing.assert_array_equal(conv.conv_infer(x, prepared), want)
    assert np.any(want > 0) and not np.any(want < 0)


def test_auto_picks_winograd_full_or_im2col():
    deep = conv.WINOGRAD_MIN_DEPTH
    # F(4, 3) where 6 products per 4 rows beat 4 per 2: 3, 4 and 7 or more output rows.
    for height, want in ((1, "winograd"), (2, "winograd"), (3, "winograd4"), (4, "winograd4"),
                         (5, "winograd"), (6, "winograd"), (7, "winograd4"), (8, "winograd4"),
                         (9, "winograd4"), (10, "winograd4"), (32, "winograd4")):
        assert conv.choose((3, 3), (1, 1), (1, 1), deep, deep, "auto", height) == want, height
    assert conv.choose((3, 3), (1, 1), (0, 0), deep, deep, "auto", 8) == "winograd"    # 6 rows
    assert conv.choose((3, 3), (1, 1), (1, 1), deep, deep, "auto") == "winograd4"
    assert conv.choose((3, 3), (1, 1), (1, 1), deep, 2, "auto", 8) == "winograd4"     # 2 filters
    assert conv.choose((3, 3), (1, 1), (1, 1), deep, 2, "auto", 6) == "full"
    thin = conv.WINOGRAD4_THIN_FILTERS
    # A first layer (1 or 3 channels) with 16 filters or more: direct, whatever its height.
    assert conv.choose((3, 3), (1, 1), (1, 1), 3, thin, "auto", 32) == "direct"
    assert conv.choose((3, 3), (1, 1), (1, 1), 1, 16, "auto", 6) == "direct"
    assert conv.choose((3, 3), (1, 1), (1, 1), 3, deep, "auto") == "full"    # RGB, 8 filters
    # 5 channels is beyond direct but too thin for F(2, 3): F(4, 3) from 32 filters.
    assert conv.choose((3, 3), (1, 1), (1, 1), 5, thin, "auto", 32) == "winograd4"
    assert conv.choose((3, 3), (1, 1), (1, 1), 5, thin, "auto", 6) == "full"
    assert conv.choose((3, 3), (1, 1), (1, 1), 5, thin - 1, "auto", 32) == "full"
    assert conv.choose((5, 5), (1, 1), (2, 2), deep, deep, "auto") == "full"
    assert conv.choose((3, 3), (2, 2), (1, 1), deep, deep, "auto") == "im2col"
    assert conv.choose((2, 2), (1, 1), (3, 3), 2, 2, "auto") == "im2col"      # P >= F
    assert conv.choose((3, 3), (1, 1), (1, 1), deep, deep, "im2col") == "im2col"


def test_auto_picks_winograd2d_where_it_pays():
    # Training (conv_forward passes the width) takes F(4x4, 3x3) where F(4, 3) would run on
    # an output of at least MIN_SIDE x MIN_SIDE; inference (`prepare_conv`, no width) keeps F(4, 3).
    deep, side = winograd_f44.MIN_DEPTH, winograd_f44.MIN_SIDE
    compiled = winograd_f44.compiled.kernels() is not None
    assert conv.choose((3, 3), (1, 1), (1, 1), deep, deep, "auto", 32, 32) == (
        "winograd2d" if compiled else "winograd4")
    assert conv.choose((3, 3), (1, 1), (1, 1), deep, deep, "auto", side, side) == (
        "winograd2d" if compiled else "winograd4")      # res18's last stage: 4 x 4
    assert conv.choose((3, 3), (1, 1), (1, 1), deep, deep, "auto", side - 1, 32) == "winograd4"
    assert conv.choose((3, 3), (1, 1), (1, 1), deep, deep, "auto", 32, side - 1) == "winograd4"
    assert conv.choose((3, 3), (1, 1), (1, 1), deep, deep, "auto", 32) == "winograd4"
    assert conv.choose((3, 3), (1, 1), (1, 1), deep - 1, 64, "auto", 32, 32) == "winograd4"
    assert conv.choose((3, 3), (1, 1), (3, 3), deep, deep, "auto", 32, 32) != "winograd2d"
    assert conv.choose((3, 3), (2, 2), (1, 1), deep, deep, "auto", 32, 32) == "im2col"
    # One image's products beyond a chunk (a 224 x 224 input): F(4, 3), which cuts bands.
    assert conv.choose((3, 3), (1, 1), (1, 1), 64, 64, "auto", 224, 224) == "winograd4"
    x, w, b = (a.astype(np.float32) for a in conv_arrays(16, 16, deep, 3, 3, deep, n=2).values())
    assert ops.conv_forward(x, w, b, (1, 1), (1, 1))[1].algorithm == (
        "winograd2d" if compiled else "winograd4")
    assert conv.prepare_conv(w, b, (1, 1), (1, 1), height=16).algorithm == "winograd4"


def test_winograd2d_rounds_a_few_times_more_than_f43_in_float32():
    # Two transforms each way: F(4x4, 3x3) rounds more than F(4, 3) down the height. On a
    # res18-like layer (ReLU inputs, 16 channels, 32 x 32) its float32 forward, dx and dw stay
    # within 5e-6 of float64 (relative to each result's norm) and within 4x F(4, 3)'s error.
    rng = np.random.default_rng(7)
    x = np.maximum(rng.standard_normal((4, 32, 32, 16)), 0)
    w = rng.standard_normal((3, 3, 16, 16)) / 12
    b, dout = rng.standard_normal(16), rng.standard_normal((4, 32, 32, 16))

    def errors(algorithm):
        def run(dtype):
            out, cache = ops.conv_forward(x.astype(dtype), w.astype(dtype), b.astype(dtype),
                                          (1, 1), (1, 1), algorithm=algorithm)
            return (out, *ops.conv_backward(dout.astype(dtype), cache)[:2])
        return [np.linalg.norm(single - double) / np.linalg.norm(double)
                for single, double in zip(run(np.float32), run(np.float64))]

    two_d, f43 = errors("winograd2d"), errors("winograd4")
    for what, e, e43 in zip(("forward", "dx", "dw"), two_d, f43):
        assert e < 5e-6, (what, e)
        assert e < 4 * e43, (what, e, e43)


def test_conv_lecture_shapes():
    # 32x32x3 with ten 5x5 filters, stride 1, pad 2 -> 32x32x10; 32 1x1 filters on 56x56x64.
    out, _ = ops.conv_forward(np.zeros((1, 32, 32, 3)), np.zeros((5, 5, 3, 10)), np.zeros(10), (1, 1), (2, 2))
    assert out.shape == (1, 32, 32, 10)
    out, _ = ops.conv_forward(np.zeros((1, 56, 56, 64)), np.zeros((1, 1, 64, 32)), np.zeros(32))
    assert out.shape == (1, 56, 56, 32)


def test_conv_stride_that_does_not_fit_teaches():
    with pytest.raises(GeometryError, match=r"\(7 - 3\) / 3 \+ 1 = 2\.33"):
        ops.conv_forward(np.zeros((1, 7, 7, 1)), np.zeros((3, 3, 1, 1)), np.zeros(1), (3, 3))


def test_a_named_algorithm_refuses_what_it_cannot_compute():
    x, w, b = np.zeros((1, 7, 7, 2)), np.zeros((3, 3, 2, 2)), np.zeros(2)
    with pytest.raises(ValueError, match="3-tall filter at stride 1, not 3x3 at stride 2x2"):
        ops.conv_forward(x, w, b, (2, 2), (1, 1), algorithm="winograd")
    with pytest.raises(ValueError, match="stride 1 and padding below the filter size"):
        ops.conv_forward(x, w, b, (2, 2), (1, 1), algorithm="full")
    with pytest.raises(ValueError, match="27 numbers per window, not a 3x3 window of 4 channels"):
        ops.conv_forward(np.zeros((1, 7, 7, 4)), np.zeros((3, 3, 4, 2)), b, (1, 1), (1, 1),
                         algorithm="direct")
    with pytest.raises(ValueError, match="3x3 filter at stride 1 padded by at most 2, not 3x3 at "
                                         "stride 1x1, pad 3x3"):
        ops.conv_forward(x, w, b, (1, 1), (3, 3), algorithm="winograd2d")
    with pytest.raises(ValueError, match="algorithm must be one of auto, im2col, full, winograd, "
                                         "winograd4, direct, winograd2d"):
        ops.conv_forward(x, w, b, (1, 1), (1, 1), algorithm="fft")
    _, cache = ops.conv_forward(x, w, b, (1, 1), (1, 1))
    with pytest.raises(ValueError, match="relu=True needs a forward with relu=True"):
        ops.conv_backward(np.zeros((1, 7, 7, 2)), cache, relu=True)


# (H, W, D, F_h, F_w, S_h, S_w): tiling, overlapping (3x3 s=2), odd sizes, per-axis values.
POOL_GEOMETRIES = [
    (8, 8, 3, 2, 2, 2, 2),
    (6, 10, 4, 2, 2, 2, 2),
    (7, 7, 2, 3, 3, 2, 2),
    (9, 7, 2, 3, 3, 1, 1),
    (6, 9, 1, 2, 3, 2, 3),
    (7, 6, 2, 3, 2, 2, 1),
    (5, 5, 1, 5, 5, 1, 1),
]


POOLS = {"max": (ops.max_pool_forward, ops.max_pool_backward),
         "avg": (ops.avg_pool_forward, ops.avg_pool_backward)}


@pytest.mark.parametrize("kind", POOLS)
@pytest.mark.parametrize("h,w,d,fh,fw,sh,sw", POOL_GEOMETRIES)
def test_pool_pair(h, w, d, fh, fw, sh, sw, kind):
    size, stride = (fh, fw), (sh, sw)
    forward, backward = POOLS[kind]
    # Overlapping max-pool windows add up to several gradients into one entry, in another order
    # in the compiled pass than tap by tap: equal to rounding, not bit for bit.
    check_kernel(lambda x: forward(x, size, stride), backward,
                 {"x": RNG.standard_normal((3, h, w, d))}, ("x",),
                 naive=lambda x: naive.pool_forward(x, size, stride, kind),
                 naive_backward=lambda dout, x: naive.pool_backward(dout, x, size, stride, kind),
                 compiled_exact=kind == "avg" or size == stride)


@pytest.mark.parametrize("hw,size,stride", [((8, 8), (2, 2), (2, 2)), ((7, 7), (3, 3), (2, 2)),
                                            ((8, 9), (2, 3), (1, 2))])
def test_max_pool_ties_follow_the_naive_rule(hw, size, stride):
    # Integer values: many tied windows (all-zero ones after a ReLU among them). The gradient
    # goes to exactly one entry of each window, the first maximum, as in the loops. Finite
    # differences mean nothing at a tie, so they are off here.
    x = RNG.integers(0, 2, (6, *hw, 2)).astype(np.float64)
    check_kernel(lambda x: ops.max_pool_forward(x, size, stride), ops.max_pool_backward,
                 {"x": x}, ("x",), naive=lambda x: naive.pool_forward(x, size, stride, "max"),
                 naive_backward=lambda dout, x: naive.pool_backward(dout, x, size, stride, "max"),
                 fd=False, dtypes=False, compiled_exact=size == stride)
    out, cache = ops.max_pool_forward(np.zeros((1, 4, 4, 1)), (2, 2), (2, 2))
    assert ops.max_pool_backward(np.ones_like(out), cache).sum() == out.size


@pytest.mark.parametrize("hw,size,stride", [((8, 8), (2, 2), (2, 2)), ((7, 7), (3, 3), (2, 2)),
                                            ((8, 9), (2, 3), (1, 2))])
def test_max_pool_backward_with_the_relu_mask(hw, size, stride):
    # x is a ReLU's output with ties and all-zero windows; relu_mask=True must give the ReLU's
    # backward of the max pool's backward: pool, then the mask (x > 0), as in the loops.
    x = np.maximum(RNG.integers(-1, 3, (6, *hw, 3)), 0).astype(np.float64)
    check_kernel(lambda x: ops.max_pool_forward(x, size, stride),
                 lambda dout, cache: ops.max_pool_backward(dout, cache, relu_mask=True),
                 {"x": x}, ("x",),
                 naive_backward=lambda dout, x: naive.pool_backward(dout, x, size, stride) * (x > 0),
                 fd=False, dtypes=False, compiled_exact=size == stride)


def test_max_pool_2x2_nan_and_ties_compiled_as_numpy(numba):
    # The 2x2 stride-2 passes (`compiled.max_pool22`) against the NumPy taps: NaN in every tap
    # position, ties, all-zero windows, with and without the ReLU's mask, bit for bit.
    x = np.maximum(RNG.integers(-1, 3, (3, 8, 6, 5)), 0).astype(np.float32)
    for i, j in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        x[i % 3, 2 + i, 2 * j + j, j] = np.nan
    dout = RNG.standard_normal((3, 4, 3, 5)).astype(np.float32)
    results = []
    for on in (True, False):
        previous = ops.compiled.set_enabled(on)
        try:
            out, cache = ops.max_pool_forward(x, (2, 2), (2, 2))
            results.append((out, *(ops.max_pool_backward(dout, cache, relu_mask=mask)
                                   for mask in (False, True))))
        finally:
            ops.compiled.set_enabled(previous)
    for fast, plain in zip(*results):
        np.testing.assert_array_equal(fast, plain)
    assert np.isnan(results[0][0]).sum() == 4


def test_pool_lecture_example():
    out, _ = ops.max_pool_forward(np.zeros((1, 224, 224, 64), np.float32), (2, 2), (2, 2))
    assert out.shape == (1, 112, 112, 64)
    # The lecture's 4x4 single depth slice, max pool 2x2 stride 2 -> [[6, 8], [3, 4]].
    x = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]], float).reshape(1, 4, 4, 1)
    out, _ = ops.max_pool_forward(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(out[0, :, :, 0], [[6, 8], [3, 4]])


def test_integer_images_pool_on_numpy():
    # The compiled kernels are built for float32 and float64 only; integers take NumPy's path.
    x = RNG.integers(-5, 5, (2, 6, 6, 3))
    out, cache = ops.max_pool_forward(x, (2, 2), (2, 2))
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, naive.pool_forward(x, (2, 2), (2, 2)))
    dout = RNG.standard_normal(out.shape)
    want = naive.pool_backward(dout, x.astype(np.float64), (2, 2), (2, 2))
    np.testing.assert_array_equal(ops.max_pool_backward(dout, cache), want)


# A batch of one (dw an outer product), small batches (products split by columns) and one of
# fc.COLUMNS_BELOW rows or more (split by rows).
@pytest.mark.parametrize("shape", [(1, 4, 4, 70), (5, 4, 5, 2), (6, 40), (9, 4, 4, 70),
                                   (ops.fc.COLUMNS_BELOW, 40)])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_fc_pair(shape, relu):
    inputs = int(np.prod(shape[1:]))
    # Arrays of the test's own seed, not the module's stream (so no other test's draws decide
    # them), drawn again while a ReLU's input lies within 1e-3 of its kink, where the centred
    # differences (h = 1e-5) would straddle it.
    rng = np.random.default_rng([shape[0], inputs, relu])
    while True:
        x, w = rng.standard_normal(shape), rng.standard_normal((inputs, 30))
        b = rng.standard_normal(30)
        if not relu or np.abs(naive.fc_forward(x, w, b)).min() > 1e-3:
            break

    def reference(x, w, b):
        out = naive.fc_forward(x, w, b)
        return np.maximum(out, 0) if relu else out

    def reference_backward(dout, x, w, b):
        return naive.fc_backward(dout * (naive.fc_forward(x, w, b) > 0) if relu else dout, x, w)

    check_kernel(lambda x, w, b: ops.fc_forward(x, w, b, relu=relu),
                 lambda dout, cache: ops.fc_backward(dout, cache, relu=relu),
                 {"x": x, "w": w, "b": b}, ("x", "w", "b"),
                 naive=reference, naive_backward=reference_backward)


@pytest.mark.parametrize("n, inputs, outputs", [(1, 4096, 256), (8, 4096, 32), (64, 1024, 16)])
def test_fc_pair_split_over_threads(n, inputs, outputs):
    """Products large enough (runtime.SMALL_WORK) to be shared by the worker threads: a batch of
    one, a small batch (by columns), a large one (by rows)."""
    assert n * inputs * outputs >= ops.runtime.SMALL_WORK
    check_kernel(lambda x, w, b: ops.fc_forward(x, w, b, relu=True),
                 lambda dout, cache: ops.fc_backward(dout, cache, relu=True),
                 {"x": RNG.standard_normal((n, inputs)),
                  "w": RNG.standard_normal((inputs, outputs)) / 30,
                  "b": RNG.standard_normal(outputs)}, ("x", "w", "b"),
                 naive=lambda x, w, b: np.maximum(naive.fc_forward(x, w, b), 0),
                 naive_backward=lambda dout, x, w, b: naive.fc_backward(
                     dout * (naive.fc_forward(x, w, b) > 0), x, w),
                 fd_samples=8)


@pytest.mark.parametrize("n", [1, 5, ops.fc.COLUMNS_BELOW])
def test_fc_backward_writes_dw_into_the_given_array(n):
    """`fc_backward(..., dw=grad)` writes dw into grad (the layer's gradient, no fresh array)
    with the bits of a fresh result; an array of another dtype or shape is left alone."""
    rng = np.random.default_rng(n)
    x = np.maximum(rng.standard_normal((n, 4, 4, 70)), 0).astype(np.float32)
    w = rng.standard_normal((4 * 4 * 70, 30)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    dout = rng.standard_normal((n, 30)).astype(np.float32)
    _, cache = ops.fc_forward(x, w, b, relu=True)
    fresh = ops.fc_backward(dout, cache, relu=True)
    grad = np.full(w.shape, np.nan, np.float32)
    given = ops.fc_backward(dout, cache, relu=True, dw=grad)
    assert given[1] is grad
    for got, want in zip(given, fresh):
        np.testing.assert_array_equal(got, want)
    for other in (np.zeros(w.shape, np.float64), np.zeros((30, w.shape[0]), np.float32)):
        kept = other.copy()
        result = ops.fc_backward(dout, cache, relu=True, dw=other)
        assert result[1] is not other
        np.testing.assert_array_equal(other, kept)
        np.testing.assert_array_equal(result[1], fresh[1])


@pytest.mark.parametrize("n", [1, 7, 130])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_loss_compiled_against_the_formula(numba, n, dtype):
    """The compiled softmax loss (`compiled_step.softmax_loss`) against the formula in float64
    written out here, and against the NumPy path, to rounding: loss and gradient."""
    from slidenet.ops import compiled
    rng = np.random.default_rng(n)
    scores = (rng.standard_normal((n, 10)) * 5).astype(dtype)
    y = rng.integers(0, 10, n)
    loss, dscores = ops.softmax_loss(scores, y)
    assert dscores.dtype == dtype
    s = scores.astype(np.float64)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    want = -np.log(p[np.arange(n), y]).mean()
    onehot = np.eye(10)[y]
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, want, rtol=tolerance)
    np.testing.assert_allclose(dscores, (p - onehot) / n, rtol=0, atol=tolerance / n)
    previous = compiled.set_enabled(False)
    try:
        plain_loss, plain = ops.softmax_loss(scores, y)
    finally:
        compiled.set_enabled(previous)
    np.testing.assert_allclose(loss, plain_loss, rtol=tolerance)
    np.testing.assert_allclose(dscores, plain, rtol=0, atol=tolerance / n)


def test_softmax_loss_compiled_leaves_odd_cases_to_numpy(numba):
    """Where the compiled loss cannot say what NumPy says, NumPy's path answers: a label of -1
    (NumPy's last class), a label past the classes (IndexError), a NaN or infinite score."""
    from slidenet.ops import compiled
    scores = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)

    def both(s, y):
        fast = ops.softmax_loss(s, y)
        previous = compiled.set_enabled(False)
        try:
            return fast, ops.softmax_loss(s, y)
        finally:
            compiled.set_enabled(previous)

    (loss, d), (want, want_d) = both(scores, np.array([0, -1, 2]))
    assert loss == want
    np.testing.assert_array_equal(d, want_d)
    with pytest.raises(IndexError):
        ops.softmax_loss(scores, np.array([0, 4, 2]))
    for bad in (np.nan, np.inf):
        odd = scores.copy()
        odd[1, 2] = bad
        with np.errstate(invalid="ignore"):     # inf - inf: NumPy's NaN is what is wanted
            (loss, d), (want, want_d) = both(odd, np.array([0, 1, 2]))
        assert np.isnan(loss) and np.isnan(want)
        np.testing.assert_array_equal(d, want_d)


@pytest.mark.parametrize("shape", [(1, 4, 4, 64), (1, 300), (1, 7), (3, 5, 5, 4),
                                   (ops.fc.ROWS_UP_TO, 20)])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_fc_infer_few_images(numba, shape, relu):
    """Inference of a few images (`fc_infer`): the compiled product reads only W's rows whose
    input is not 0. Against the naive loops in float64 and to float32 rounding, an input half
    zeros (as after a ReLU), all zeros and none; a NaN input still gives NaN; each image the
    same bits alone as in the batch. Without the compiled kernels, fc_forward's GEMM, the same
    numbers to rounding."""
    inputs = int(np.prod(shape[1:]))
    w, b = RNG.standard_normal((inputs, 40)) / 10, RNG.standard_normal(40)
    for x in (np.maximum(RNG.standard_normal(shape), 0), np.zeros(shape),
              RNG.standard_normal(shape)):
        want = naive.fc_forward(x, w, b)
        want = np.maximum(want, 0) if relu else want
        np.testing.assert_allclose(ops.fc_infer(x, w, b, relu), want, rtol=1e-12, atol=1e-12)
        x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
        got = ops.fc_infer(x32, w32, b32, relu)
        assert got.dtype == np.float32 and got.shape == (shape[0], 40)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        for i in range(shape[0]):
            np.testing.assert_array_equal(ops.fc_infer(x32[i:i + 1], w32, b32, relu), got[i:i + 1])
        previous = ops.compiled.set_enabled(False)
        try:
            np.testing.assert_allclose(ops.fc_infer(x32, w32, b32, relu), got, rtol=1e-5,
                                       atol=1e-5)
        finally:
            ops.compiled.set_enabled(previous)
    x = np.maximum(RNG.standard_normal(shape), 0).astype(np.float32)
    x.reshape(len(x), -1)[0, 3] = np.nan
    got = ops.fc_infer(x, w.astype(np.float32), b.astype(np.float32), relu)
    assert np.isnan(got[0]).all() and not np.isnan(got[1:]).any()
    big = np.zeros((ops.fc.ROWS_UP_TO + 1, inputs))         # beyond: fc_forward's GEMM
    np.testing.assert_array_equal(ops.fc_infer(big, w, b, relu), ops.fc_forward(big, w, b, relu)[0])


def test_fc_flattens_in_height_width_depth_order():
    x = RNG.standard_normal((3, 4, 5, 2))
    w, b = RNG.standard_normal((40, 6)), RNG.standard_normal(6)
    out, _ = ops.fc_forward(x, w, b)
    # (height, width, depth) order: input [h, w, d] meets weight row h*W*D + w*D + d.
    assert np.isclose(out[0, 0] - b[0], sum(x[0, i, j, c] * w[i * 10 + j * 2 + c, 0]
                                            for i in range(4) for j in range(5) for c in range(2)))


@pytest.mark.parametrize("name,args", [("relu", ()), ("leaky_relu", (0.1,)), ("tanh", ()),
                                       ("sigmoid", ())])
def test_activation_pairs(name, args):
    x = RNG.standard_normal((3, 5, 4, 2)) * 2
    x[np.abs(x) < 1e-3] = 0.5          # keep clear of the kink at 0
    forward, backward = getattr(ops, f"{name}_forward"), getattr(ops, f"{name}_backward")
    reference = getattr(naive, f"{name}_forward")
    reference_backward = getattr(naive, f"{name}_backward")
    check_kernel(lambda x: forward(x, *args), backward, {"x": x}, ("x",),
                 naive=lambda x: reference(x, *args),
                 naive_backward=lambda dout, x: reference_backward(dout, x, *args))


def test_activation_values():
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(ops.relu_forward(x)[0], [0, 0, 3])
    np.testing.assert_allclose(ops.leaky_relu_forward(x, 0.1)[0], [-0.2, 0, 3])
    np.testing.assert_allclose(ops.sigmoid_forward(np.array([0.0, 1000.0, -1000.0]))[0], [0.5, 1, 0])


def test_dropout_pair():
    # One fixed mask (the same generator state every call), so the pair is a smooth function.
    rate = 0.3

    def forward(x):
        return ops.dropout_forward(x, rate, np.random.default_rng(4), train=True)

    def reference(x):
        keep = np.random.default_rng(4).random(x.shape, dtype=np.float64) >= rate
        return x * keep / (1 - rate)

    check_kernel(forward, ops.dropout_backward, {"x": RNG.standard_normal((4, 6, 6, 3))}, ("x",),
                 naive=reference, naive_backward=lambda dout, x: reference(dout), chunks=False,
                 threads=False)


def test_dropout_is_inverted_and_identity_at_test_time():
    x = np.ones((200, 50))
    rng = np.random.default_rng(0)
    out, mask = ops.dropout_forward(x, 0.3, rng, train=True)
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(out[kept], 1 / 0.7)
    same, none = ops.dropout_forward(x, 0.3, rng, train=False)
    assert same is x and none is None


@pytest.mark.parametrize("shape", [(9, 5, 4, 3), (13, 6), (5, 3, 3, 70)])
def test_batchnorm_pair(shape):
    d = shape[-1]
    check_kernel(lambda x, gamma, beta: ops.batchnorm_forward(x, gamma, beta, np.zeros(d), np.ones(d),
                                                              train=True),
                 ops.batchnorm_backward,
                 {"x": RNG.standard_normal(shape) * 2 + 1, "gamma": RNG.standard_normal(d),
                  "beta": RNG.standard_normal(d)}, ("x", "gamma", "beta"),
                 naive=lambda x, gamma, beta: naive.batchnorm_forward(x, gamma, beta),
                 naive_backward=lambda dout, x, gamma, beta: naive.batchnorm_backward(dout, x, gamma),
                 compiled_exact=False)       # float64 sums in another order than the GEMVs'


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_batchnorm_relu_pair(train):
    # BATCHNORM -> RELU fused: max(0, out) as it is written, its mask in the backward's passes.
    shape, d = (7, 4, 5, 3), 3
    rng = np.random.default_rng(11)
    stats = (rng.standard_normal(d), rng.uniform(0.5, 2, d))

    def forward(x, gamma, beta):
        return ops.batchnorm_forward(x, gamma, beta, stats[0].copy(), stats[1].copy(), train=train,
                                     relu=True)

    def reference(x, gamma, beta):
        if train:
            return np.maximum(naive.batchnorm_forward(x, gamma, beta), 0)
        return np.maximum((x - stats[0]) / np.sqrt(stats[1] + ops.BATCHNORM_EPSILON) * gamma
                          + beta, 0)

    def reference_backward(dout, x, gamma, beta):
        g = dout * (reference(x, gamma, beta) > 0)
        if train:
            return naive.batchnorm_backward(g, x, gamma)
        xhat = (x - stats[0]) / np.sqrt(stats[1] + ops.BATCHNORM_EPSILON)
        return (g * gamma / np.sqrt(stats[1] + ops.BATCHNORM_EPSILON),
                (g * xhat).sum(axis=(0, 1, 2)), g.sum(axis=(0, 1, 2)))

    check_kernel(forward, lambda dout, cache: ops.batchnorm_backward(dout, cache, relu=True),
                 {"x": rng.standard_normal(shape) * 2 + 1, "gamma": rng.standard_normal(d),
                  "beta": rng.standard_normal(d)}, ("x", "gamma", "beta"),
                 naive=reference, naive_backward=reference_backward, compiled_exact=False)
    _, cache = ops.batchnorm_forward(np.ones(shape), np.ones(d), np.zeros(d), np.zeros(d),
                                     np.ones(d), train=train)
    with pytest.raises(ValueError, match="relu=True needs a forward with relu=True"):
        ops.batchnorm_backward(np.ones(shape), cache, relu=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("numba", [True, False], ids=["compiled", "numpy"])
def test_batchnorm_relu_is_bit_for_bit_the_two_layers(dtype, numba):
    # The fused mask (inside BATCHNORM's compiled passes, or relu_backward first without them)
    # makes the same numbers as BATCHNORM's backward after RELU's.
    from slidenet.ops import compiled
    if numba:
        require("NUMBA", numba_problem())
    rng = np.random.default_rng(5)
    x, dout = (rng.standard_normal((6, 5, 4, 8)).astype(dtype) for _ in range(2))
    gamma, beta = rng.standard_normal(8).astype(dtype), rng.standard_normal(8).astype(dtype)
    previous = compiled.set_enabled(numba)
    try:
        stats = [np.zeros(8, dtype), np.ones(8, dtype)]
        fused, cache = ops.batchnorm_forward(x, gamma, beta, *stats, train=True, relu=True)
        fused_grads = ops.batchnorm_backward(dout, cache, relu=True)
        out, cache = ops.batchnorm_forward(x, gamma, beta, *stats, train=True)
        rectified, relu_cache = ops.relu_forward(out)
        grads = ops.batchnorm_backward(ops.relu_backward(dout, relu_cache), cache)
    finally:
        compiled.set_enabled(previous)
    np.testing.assert_array_equal(fused, rectified)
    for a, b in zip(fused_grads, grads):
        np.testing.assert_array_equal(a, b)


def _batchnorm_both_ways(x, gamma, beta, dout, reduce, workers, numba):
    """Training forward and backward with the compiled passes on or off, on `workers` threads,
    one image per chunk: (out, running mean, running var, dx, dgamma, dbeta)."""
    from slidenet.ops import compiled, runtime
    d = x.shape[-1]
    rm, rv = np.zeros(d, x.dtype), np.ones(d, x.dtype)
    previous, budget = compiled.set_enabled(numba), runtime.set_memory_budget(1)
    try:
        with runtime.workers(workers):
            out, cache = ops.batchnorm_forward(x, gamma, beta, rm, rv, train=True, reduce=reduce)
            dx, dgamma, dbeta = ops.batchnorm_backward(dout, cache)
    finally:
        compiled.set_enabled(previous)
        runtime.set_memory_budget(budget)
    return out.copy(), rm, rv, dx.copy(), dgamma, dbeta


@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (11, 7)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("ranks", [1, 2], ids=["alone", "reduce"])
def test_compiled_batchnorm_matches_numpy_and_the_naive_loops(shape, dtype, workers, ranks):
    # With `reduce` as two ranks holding the same part (it doubles every sum and the count),
    # the global batch is x twice: the naive loops on [x; x] give the oracle, dx its first
    # half and dgamma, dbeta half of its sums (each rank's own).
    require("NUMBA", numba_problem())
    rng = np.random.default_rng(7)
    d = shape[-1]
    x64 = rng.standard_normal(shape) * 3 + 2
    gamma64, beta64 = rng.standard_normal(d), rng.standard_normal(d)
    dout64 = rng.standard_normal(shape)
    reduce = None if ranks == 1 else (lambda sums: 2 * np.asarray(sums, np.float64))
    args = [a.astype(dtype) for a in (x64, gamma64, beta64, dout64)]
    fast = _batchnorm_both_ways(*args[:3], args[3], reduce, workers, True)
    plain = _batchnorm_both_ways(*args[:3], args[3], reduce, workers, False)
    whole_x, whole_dout = np.concatenate([x64] * ranks), np.concatenate([dout64] * ranks)
    want_out = naive.batchnorm_forward(whole_x, gamma64, beta64)[:shape[0]]
    dx, dgamma, dbeta = naive.batchnorm_backward(whole_dout, whole_x, gamma64)
    axes = tuple(range(len(shape) - 1))
    want = (want_out, 0.1 * x64.mean(axis=axes), 0.9 + 0.1 * x64.var(axis=axes),
            dx[:shape[0]], dgamma / ranks, dbeta / ranks)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)
    names = ("out", "running mean", "running var", "dx", "dgamma", "dbeta")
    for name, a, b, c in zip(names, fast, plain, want):
        assert a.dtype == dtype, name
        np.testing.assert_allclose(a, c, **tol, err_msg=f"{name}: compiled against the naive loops")
        np.testing.assert_allclose(a, b, **tol, err_msg=f"{name}: compiled against NumPy")


@pytest.mark.parametrize("dtype,mean", [(np.float32, 1e4), (np.float64, 1e8)])
def test_compiled_batchnorm_keeps_the_two_pass_variance(dtype, mean):
    # Standard deviation 1 around a large mean: E[x^2] - mean^2 would subtract two numbers near
    # mean^2 whose last place is far above 1 (float32 at 1e8: 8; even float64 at 1e16: 2), so
    # the variance would come out as garbage even with float64 sums; the mean of (x - mean)^2 keeps it.
    require("NUMBA", numba_problem())
    x = (mean + np.random.default_rng(3).standard_normal((16, 8, 8, 4))).astype(dtype)
    x64 = x.astype(np.float64)              # the values the kernel sees, exactly
    ones, zeros = np.ones(4, dtype), np.zeros(4, dtype)
    out, _, rv, *_ = _batchnorm_both_ways(x, ones, zeros, np.ones(x.shape, dtype), None, 2, True)
    var = ((x64 - x64.mean(axis=(0, 1, 2))) ** 2).mean(axis=(0, 1, 2))
    assert 0.8 < var.min() and var.max() < 1.2
    want = (x64 - x64.mean(axis=(0, 1, 2))) / np.sqrt(var + 1e-5)
    assert np.abs(out - want).max() < (1e-2 if dtype == np.float32 else 1e-6)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * var, rtol=1e-4)


@pytest.mark.parametrize("relu", [False, True])
def test_compiled_batchnorm_backward_without_numba_after_a_compiled_forward(relu):
    # The compiled forward keeps x and the mean, not xhat; a backward that finds numba switched
    # off since then makes xhat in NumPy, and must give the compiled backward's gradients.
    require("NUMBA", numba_problem())
    from slidenet.ops import compiled
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((6, 5, 4, 8)) * 2 + 3).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    gamma, beta = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    stats = [np.zeros(8, np.float32), np.ones(8, np.float32)]
    _, cache = ops.batchnorm_forward(x, gamma, beta, *stats, train=True, relu=relu)
    want = ops.batchnorm_backward(dout, cache, relu=relu)
    previous = compiled.set_enabled(False)
    try:
        got = ops.batchnorm_backward(dout, cache, relu=relu)
    finally:
        compiled.set_enabled(previous)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # And both are the naive loops' gradients.
    g = dout * (cache.out > 0) if relu else dout
    naive_dx, naive_dgamma, naive_dbeta = naive.batchnorm_backward(g.astype(np.float64),
                                                                  x.astype(np.float64), gamma)
    np.testing.assert_allclose(want[0], naive_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(want[1], naive_dgamma, rtol=1e-4, atol=1e-4)


def _loss_gradient_error(loss_fn, scores, y):
    _, analytic = loss_fn(scores, y)
    numeric = numeric_gradient(lambda: loss_fn(scores, y)[0], scores, sample(scores.size, 100, RNG))
    return relative_error(analytic.reshape(-1), numeric)


def test_softmax_loss_known_value_and_gradient():
    # Equal scores over C classes: the loss is log(C), the first sanity check of cs231n.
    loss, _ = ops.softmax_loss(np.zeros((4, 10)), np.array([0, 1, 2, 3]))
    assert np.isclose(loss, np.log(10))
    assert _loss_gradient_error(ops.softmax_loss, RNG.standard_normal((5, 4)),
                                np.array([0, 3, 1, 1, 2])) < TOLERANCE
    np.testing.assert_allclose(ops.softmax(np.array([[0.0, np.log(3)]])), [[0.25, 0.75]])


def test_label_smoothing_is_cross_entropy_with_spread_targets():
    scores, y = RNG.standard_normal((6, 5)), np.array([0, 4, 1, 1, 2, 3])
    e = 0.1
    # The oracle: -sum_j t_ij log p_ij with t = (1 - e) one-hot + e / C, written out.
    targets = np.full((6, 5), e / 5)
    targets[np.arange(6), y] += 1 - e
    p = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    loss, dscores = ops.softmax_loss(scores, y, smoothing=e)
    assert np.isclose(loss, -(targets * np.log(p)).sum(axis=1).mean())
    np.testing.assert_allclose(dscores, (p - targets) / 6, atol=1e-12)
    assert _loss_gradient_error(lambda s, t: ops.softmax_loss(s, t, smoothing=e), scores, y) \
        < TOLERANCE
    # Equal scores are still chance, ln C; and no smoothing is the plain loss.
    assert np.isclose(ops.softmax_loss(np.zeros((3, 10)), np.arange(3), smoothing=0.3)[0],
                      np.log(10))
    assert ops.softmax_loss(scores, y, smoothing=0.0)[0] == ops.softmax_loss(scores, y)[0]


def test_svm_loss_known_value_and_gradient():
    # The cs231n example: scores (3.2, 5.1, -1.7) for a cat -> max(0, 5.1-3.2+1) + max(0, -1.7-3.2+1) = 2.9.
    loss, _ = ops.svm_loss(np.array([[3.2, 5.1, -1.7]]), np.array([0]))
    assert np.isclose(loss, 2.9)
    assert _loss_gradient_error(ops.svm_loss, RNG.standard_normal((6, 5)),
                                np.array([0, 4, 1, 1, 2, 3])) < TOLERANCE
