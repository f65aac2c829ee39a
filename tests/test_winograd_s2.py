"""Winograd at stride 2 (`winograd_s2`, inference's downsampling 3x3 CONVs): its matrices
against the stride-2 correlation, its forward against the naive loops in float64 and float32
(padding on one side, cropping, windows past the edge), chunks and threads, its NumPy passes,
where `prepare_conv` chooses it, when `conv_infer` hands a call to im2col, and a residual net's
plan against its evaluation forward."""
import numpy as np
import pytest

from harness import conv3x3_arrays, without_numba
from slidenet import Net, ops
from slidenet.ops import compiled, naive, runtime
from slidenet.ops.conv import dispatch, winograd_s2
from slidenet.ops.sides import pad_sides

RNG = np.random.default_rng(2)

# (N, H, W, D, K, before, after): res18's layout (32 -> 16, pad 1 before, none after); the
# same padded evenly; whole windows, no padding; a last tile sticking out down and across;
# cropping (a negative after); the smallest output; many channels.
GEOMETRIES = [(2, 16, 16, 16, 8, (1, 1), (0, 0)), (2, 16, 16, 16, 8, (1, 1), (1, 1)),
              (3, 17, 17, 5, 6, (0, 0), (0, 0)), (2, 11, 14, 3, 4, (1, 0), (0, 1)),
              (2, 13, 12, 4, 3, (1, 1), (-2, -1)), (1, 3, 3, 2, 3, (0, 0), (0, 0)),
              (2, 8, 8, 40, 36, (1, 1), (0, 0))]


@pytest.fixture(autouse=True)
def kernels(numba):
    """Every test here runs the compiled kernels (inference takes this scheme only with them)."""
    return numba


def lectures(x, wt, b, before, after):
    """The oracle: x padded (or cropped) per side, the rows and columns past the last window
    dropped (rounding down), then the naive loops at stride 2, in float64."""
    xp = pad_sides(x.astype(np.float64), before, after)
    ho, wo = (xp.shape[1] - 3) // 2 + 1, (xp.shape[2] - 3) // 2 + 1
    return naive.conv_forward(xp[:, :2 * ho + 1, :2 * wo + 1], wt.astype(np.float64),
                              b.astype(np.float64), (2, 2), (0, 0))


def test_the_matrices_compute_the_stride_2_correlation():
    """One axis: 4 outputs of a 3-tap filter at stride 2 from 9 products of a 9-sample window;
    both axes: a 4 x 4 tile from 81, the 3 x 3 windows of the direct method, exact in float64."""
    for _ in range(5):
        s, g = RNG.standard_normal(9), RNG.standard_normal(3)
        y = winograd_s2.AT @ ((winograd_s2.G @ g) * (winograd_s2.BT @ s))
        np.testing.assert_allclose(y, [g @ s[2 * p:2 * p + 3] for p in range(4)], atol=1e-14)
        d, w = RNG.standard_normal((9, 9)), RNG.standard_normal((3, 3))
        u, v = winograd_s2.G @ w @ winograd_s2.G.T, winograd_s2.BT @ d @ winograd_s2.BT.T
        want = [[np.sum(w * d[2 * i:2 * i + 3, 2 * j:2 * j + 3]) for j in range(4)]
                for i in range(4)]
        np.testing.assert_allclose(winograd_s2.AT @ (u * v) @ winograd_s2.AT.T, want,
                                   atol=1e-13)
    assert set(np.unique(winograd_s2.BT)) <= {-2, -1, 0, 1, 2, 3}   # integers: exact sums


@pytest.mark.parametrize("n, h, w, d, k, before, after", GEOMETRIES)
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("relu", [False, True])
def test_forward_is_the_lectures_convolution(n, h, w, d, k, before, after, dtype, tolerance,
                                             relu):
    x, wt, b = conv3x3_arrays(RNG, n, h, w, d, k, dtype)
    want = lectures(x, wt, b, before, after)
    if relu:
        want = np.maximum(want, 0)
    got = winograd_s2.forward(x, winograd_s2.prepare_filters(wt), b, before, relu, None, after)
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * np.abs(want).max())


def test_cropped_rows_are_never_read():
    """A window's transform mixes all its samples, so the rows a negative `after` crops must
    read as zeros: filled with NaN and huge numbers, the output does not change."""
    x, wt, b = conv3x3_arrays(RNG, 2, 13, 12, 4, 3, "float32")
    u = winograd_s2.prepare_filters(wt)
    clean = winograd_s2.forward(x, u, b, (1, 1), False, None, (-2, -1)).copy()
    x[:, -2:], x[:, :, -1:] = np.nan, 1e30
    np.testing.assert_array_equal(winograd_s2.forward(x, u, b, (1, 1), False, None, (-2, -1)),
                                  clean)


def test_chunks_agree_with_the_whole_batch_and_threads_bit_for_bit():
    x, wt, b = conv3x3_arrays(RNG, 7, 21, 18, 16, 8, "float32")
    u = winograd_s2.prepare_filters(wt)
    with runtime.workers(1):
        whole = winograd_s2.forward(x, u, b, (1, 1), True).copy()
    runs = []
    for threads in (1, 2):
        with runtime.workers(threads):
            runs.append(winograd_s2.forward(x, u, b, (1, 1), True, budget=1).copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_allclose(runs[0], whole, rtol=0, atol=1e-5 * np.abs(whole).max())
    np.testing.assert_array_equal(winograd_s2.forward(x[3:4], u, b, (1, 1), True), runs[0][3:4])


@pytest.mark.parametrize("n, h, w, d, k, before, after", GEOMETRIES[:5])
def test_the_numpy_passes_agree_with_the_compiled_ones(n, h, w, d, k, before, after,
                                                        monkeypatch):
    x, wt, b = conv3x3_arrays(RNG, n, h, w, d, k, "float64")
    u = winograd_s2.prepare_filters(wt)
    fast = winograd_s2.forward(x, u, b, before, True, None, after).copy()
    used = []

    def numpy_passes(*arrays):
        used.append(1)
        return winograd_s2.NUMPY
    monkeypatch.setattr(winograd_s2, "passes", numpy_passes)
    slow = winograd_s2.forward(x, u, b, before, True, None, after)
    assert used
    np.testing.assert_allclose(slow, np.maximum(lectures(x, wt, b, before, after), 0),
                               rtol=0, atol=1e-12 * np.abs(slow).max())
    np.testing.assert_allclose(slow, fast, rtol=0, atol=1e-13 * np.abs(slow).max())


def test_float32_rounds_within_a_few_times_im2col():
    """Against the float64 result, on ReLU-like inputs and He-scaled filters of res18's three
    downsampling shapes: within 8x im2col's error (the transforms' small integers add little)."""
    for h, d, k in ((32, 16, 32), (16, 32, 64), (8, 64, 128)):
        x = np.maximum(RNG.standard_normal((4, h, h, d)), 0).astype(np.float32)
        wt = (RNG.standard_normal((3, 3, d, k)) * np.sqrt(2 / (9 * d))).astype(np.float32)
        b = np.zeros(k, np.float32)
        exact = lectures(x, wt, b, (1, 1), (0, 0))
        ours = winograd_s2.forward(x, winograd_s2.prepare_filters(wt), b, (1, 1), False, None,
                                   (0, 0))
        rows = ops.conv_forward(pad_sides(x, (1, 1), (0, 0)), wt, b, (2, 2), (0, 0),
                                algorithm="im2col")[0]
        error = np.abs(ours - exact).max() / np.abs(exact).max()
        assert error < 8 * max(np.abs(rows - exact).max() / np.abs(exact).max(), 1e-7)


def test_prepare_conv_chooses_it_for_inference_where_it_applies_and_pays():
    def chosen(d, k=32, stride=(2, 2), size=(3, 3), algorithm=None, width=True):
        wt = np.zeros((*size, d, k), np.float32)
        p = ops.prepare_conv(wt, np.zeros(k, np.float32), stride, (1, 1), algorithm=algorithm,
                             height=32, width=32 if width else None)
        return p.algorithm
    assert chosen(16) == chosen(64, 128) == "winograd_s2"
    assert chosen(8) == "im2col"                        # too thin: im2col's wider GEMM wins
    assert chosen(16, width=False) == "im2col"          # training's choice, or no width
    assert chosen(16, algorithm="im2col") == "im2col"   # a named algorithm is kept
    assert chosen(16, stride=(1, 1)) == "winograd44"
    assert chosen(16, size=(5, 5)) == "im2col"
    assert "winograd_s2" not in dispatch.ALGORITHMS     # inference alone: training never names it


def test_conv_infer_hands_what_it_does_not_take_to_im2col():
    """A skip, few output tiles (batch 1 of a small image), or the compiled kernels turned off
    after `prepare_conv`: im2col on the padded input, the same convolution."""
    x, wt, b = conv3x3_arrays(RNG, 2, 32, 32, 16, 8, "float32")
    p = ops.prepare_conv(wt, b, (2, 2), (0, 0), relu=True, height=32, width=32)
    assert p.algorithm == "winograd_s2"
    sides = ((1, 1), (0, 0))
    want = np.maximum(lectures(x, wt, b, *sides), 0)
    tolerance = 2e-5 * np.abs(want).max()
    calls = []
    original = winograd_s2.forward

    def counted(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)
    winograd_s2.forward = counted
    try:
        np.testing.assert_allclose(ops.conv_infer(x, p, sides=sides), want, atol=tolerance)
        assert calls == [2]                             # 2 x 4 x 4 tiles: it pays
        small = ops.conv_infer(x[:1], p, sides=sides)   # 16 tiles: im2col's
        np.testing.assert_allclose(small, want[:1], atol=tolerance)
        skip = RNG.standard_normal(want.shape).astype(np.float32)
        summed = ops.conv_infer(x, p, skip=skip, sides=sides)
        np.testing.assert_allclose(summed, np.maximum(lectures(x, wt, b, *sides) + skip, 0),
                                   atol=tolerance)
        previous = compiled.set_enabled(False)
        try:
            slow = ops.conv_infer(x, p, sides=sides)
        finally:
            compiled.set_enabled(previous)
        np.testing.assert_allclose(slow, want, atol=tolerance)
        assert calls == [2]                             # none of those three ran it
    finally:
        winograd_s2.forward = original


def test_a_residual_net_scores_as_its_evaluation_forward(monkeypatch):
    """res18's downsampling block at 16 channels: the plan runs the stride-2 CONV by this
    scheme (on the unpadded input), the evaluation forward by training's kernels. (The block
    in one call, `winograd_down`, is refused here: tests/test_winograd_down.py tests it.)"""
    from slidenet.ops.conv import winograd_down
    monkeypatch.setattr(winograd_down, "applies", lambda *args: False)
    pattern = ("INPUT(16x16x3) -> CONV(16) -> BN -> RELU -> "
               "{ CONV(24, s=2, p=1, round=down) -> BN -> RELU -> CONV(24) -> BN | "
               "CONV(24, 1x1, s=2, round=down) -> BN } -> ADD -> RELU -> GLOBALAVGPOOL -> FC(5)")
    for dtype, tolerance in (("float64", 1e-10), ("float32", 1e-4)):
        net = Net.from_pattern(pattern, seed=4, dtype=dtype)
        for name, p in net.params.items():
            p[...] = RNG.standard_normal(p.shape) * 0.3
        for name, b in net.buffers.items():
            b[...] = RNG.uniform(0.5, 1.5, b.shape)
        x = RNG.standard_normal((8, 16, 16, 3)).astype(dtype)     # 8 x 2 x 2 output tiles
        shapes = []
        original = winograd_s2.forward

        def counted(*args, **kwargs):
            shapes.append(args[0].shape[1:])
            return original(*args, **kwargs)
        winograd_s2.forward = counted
        try:
            got = net.prepare().forward(x)
        finally:
            winograd_s2.forward = original
        want = net.forward(x)
        assert shapes == [(16, 16, 16)]                 # once, on the unpadded input
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * np.abs(want).max())


def test_without_numba_the_plan_keeps_im2col():
    out = without_numba(
        "import numpy as np\n"
        "from slidenet import ops\n"
        "p = ops.prepare_conv(np.ones((3, 3, 16, 32), np.float32), np.zeros(32, np.float32),\n"
        "                     (2, 2), (1, 1), height=32, width=32)\n"
        "print(p.algorithm)\n")
    assert out.strip() == "im2col"
