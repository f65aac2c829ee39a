"""Winograd's F(2, 3) path of convolution against the naive loops, finite differences and im2col."""
import numpy as np
import pytest

from slidenet import ops
from slidenet.gradcheck import TOLERANCE, check_pattern
from slidenet.ops import compiled, conv, naive, runtime, winograd

RNG = np.random.default_rng(2023)
HAVE_NUMBA = compiled.kernels() is not None


@pytest.fixture(autouse=True, params=["numpy", "numba"])
def path(request):
    """Every test here runs on the NumPy transforms and, when numba is installed, the compiled ones."""
    if request.param == "numba" and not HAVE_NUMBA:
        pytest.skip("numba is not installed")
    previous = compiled.set_enabled(request.param == "numba")
    yield request.param
    compiled.set_enabled(previous)

# (H, W, D, F_w, P_h, P_w, K), all with a 3-tall filter at stride 1: even and odd output heights,
# no padding, padding 1 and 2 (the widest the dx-as-convolution allows), filters 1, 2, 3 and 5
# wide, non-square inputs.
GEOMETRIES = [
    (7, 7, 3, 3, 1, 1, 2),      # 7x7 stays 7x7: odd output height, the last tile half used
    (8, 8, 2, 3, 1, 1, 3),      # even output height
    (5, 5, 2, 3, 0, 0, 4),      # no padding: 3x3 output
    (4, 4, 1, 3, 2, 2, 1),      # padding 2: 6x6 output
    (6, 5, 2, 1, 1, 0, 2),      # a 3x1 filter
    (8, 7, 3, 2, 2, 1, 3),      # a 3x2 filter, per-axis padding
    (5, 9, 2, 5, 1, 2, 2),      # a 3x5 filter on a wide input
    (3, 3, 2, 3, 0, 0, 2),      # a single output row
]


@pytest.mark.parametrize("h,w,d,fw,ph,pw,k", GEOMETRIES)
def test_winograd_matches_naive(h, w, d, fw, ph, pw, k):
    x = RNG.standard_normal((3, h, w, d))
    wt = RNG.standard_normal((3, fw, d, k))
    b = RNG.standard_normal(k)
    out, cache = ops.conv_forward(x, wt, b, (1, 1), (ph, pw), algorithm="winograd")
    np.testing.assert_allclose(out, naive.conv_forward(x, wt, b, (1, 1), (ph, pw)), rtol=1e-10, atol=1e-10)
    dout = RNG.standard_normal(out.shape)
    for got, want in zip(ops.conv_backward(dout, cache), naive.conv_backward(dout, x, wt, (1, 1), (ph, pw))):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_winograd_finite_differences():
    x = RNG.standard_normal((2, 5, 4, 2))
    wt = RNG.standard_normal((3, 2, 2, 3))
    b = RNG.standard_normal(3)

    def forward(xv, wv):
        return ops.conv_forward(xv, wv, b, (1, 1), (1, 1), algorithm="winograd")[0]
    out, cache = ops.conv_forward(x, wt, b, (1, 1), (1, 1), algorithm="winograd")
    dout = RNG.standard_normal(out.shape)
    dx, dw, _ = ops.conv_backward(dout, cache)
    for analytic, array, f in ((dx, x, lambda v: forward(v, wt)), (dw, wt, lambda v: forward(x, v))):
        numeric = np.zeros_like(array)
        flat = array.reshape(-1)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + 1e-5
            up = np.sum(f(array) * dout)
            flat[i] = saved - 1e-5
            numeric.reshape(-1)[i] = (up - np.sum(f(array) * dout)) / 2e-5
            flat[i] = saved
        assert np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric) < 1e-8


def test_the_four_products_give_the_two_rows():
    # The module docstring's identity on plain numbers: y0 = d0 w0 + d1 w1 + d2 w2 and
    # y1 = d1 w0 + d2 w1 + d3 w2 from four products.
    d, w = RNG.standard_normal(4), RNG.standard_normal(3)
    g = winograd.G @ w
    m = np.array([d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]) * g
    assert np.allclose([m[0] + m[1] + m[2], m[1] - m[2] - m[3]],
                       [d[0:3] @ w, d[1:4] @ w], rtol=1e-14)


def test_float32_winograd_is_as_accurate_as_im2col():
    x = RNG.standard_normal((4, 16, 16, 32))
    wt = RNG.standard_normal((3, 3, 32, 32)) * 0.1
    b = RNG.standard_normal(32)
    exact, cache64 = ops.conv_forward(x, wt, b, (1, 1), (1, 1), algorithm="im2col")
    dout = RNG.standard_normal(exact.shape)
    exact_grads = ops.conv_backward(dout, cache64)
    errors = {}
    for algorithm in ("im2col", "winograd"):
        args = [a.astype(np.float32) for a in (x, wt, b)]
        out, cache = ops.conv_forward(*args, (1, 1), (1, 1), algorithm=algorithm)
        grads = ops.conv_backward(dout.astype(np.float32), cache)
        errors[algorithm] = [np.linalg.norm(got - want) / np.linalg.norm(want)
                             for got, want in zip((out, *grads), (exact, *exact_grads))]
    # float32 rounding is ~6e-8 per operation; the extra additions may double it, no more.
    assert max(errors["winograd"]) < 1e-6
    for win, im2 in zip(errors["winograd"], errors["im2col"]):
        assert win < 4 * im2


@pytest.fixture
def settings():
    saved = (runtime.memory_budget(), runtime.threads())
    yield
    runtime.set_memory_budget(saved[0])
    runtime.set_threads(saved[1])


@pytest.mark.parametrize("relu", [False, True])
def test_chunks_threads_and_fused_relu_keep_the_result(settings, relu):
    x = RNG.standard_normal((7, 9, 6, 8))
    wt = RNG.standard_normal((3, 3, 8, 5))
    b = RNG.standard_normal(5)
    dout = RNG.standard_normal((7, 9, 6, 5))

    def everything():
        out, cache = ops.conv_forward(x, wt, b, (1, 1), (1, 1), relu=relu, algorithm="winograd")
        return (out, *ops.conv_backward(dout, cache))
    whole = everything()
    plain = naive.conv_forward(x, wt, b, (1, 1), (1, 1))
    g = dout * (plain > 0) if relu else dout
    want = (np.maximum(plain, 0) if relu else plain, *naive.conv_backward(g, x, wt, (1, 1), (1, 1)))
    for got, expected in zip(whole, want):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    runtime.set_memory_budget(1)            # one image per chunk
    one_thread = everything()
    for got, expected in zip(one_thread, whole):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    runtime.set_threads(3)                  # which thread ran a chunk never changes a number
    for got, expected in zip(everything(), one_thread):
        np.testing.assert_array_equal(got, expected)


def test_auto_takes_winograd_only_where_it_applies_and_pays(monkeypatch):
    calls = []
    real_rows = winograd.rows
    monkeypatch.setattr(winograd, "rows", lambda *a: calls.append(1) or real_rows(*a))
    deep = conv.WINOGRAD_MIN_DEPTH

    def runs_winograd(d, k, size=(3, 3), stride=(1, 1)):
        calls.clear()
        x = RNG.standard_normal((2, 7, 7, d)).astype(np.float32)
        wt = RNG.standard_normal((*size, d, k)).astype(np.float32)
        out, cache = ops.conv_forward(x, wt, np.zeros(k, np.float32), stride, (1, 1))
        ops.conv_backward(np.ones_like(out), cache)
        return bool(calls)
    assert runs_winograd(deep, deep)
    assert not runs_winograd(3, deep)               # an RGB first layer stays on im2col
    assert not runs_winograd(deep, deep, stride=(2, 2))
    assert not runs_winograd(deep, deep, size=(5, 5))


def test_winograd_refuses_what_it_cannot_compute():
    x, wt, b = np.zeros((1, 7, 7, 2)), np.zeros((3, 3, 2, 2)), np.zeros(2)
    with pytest.raises(ValueError, match="3-tall filter at stride 1, not 3x3 at stride 2x2"):
        ops.conv_forward(x, wt, b, (2, 2), (1, 1), algorithm="winograd")
    with pytest.raises(ValueError, match="algorithm must be one of auto, im2col, winograd"):
        ops.conv_forward(x, wt, b, (1, 1), (1, 1), algorithm="fft")


def test_a_net_on_winograd_passes_gradcheck():
    # Depths of 8 make "auto" take F(2, 3) in every CONV, forward and backward.
    errors = check_pattern("INPUT(6x4x8) -> [CONV(8) -> RELU]*2 -> POOL -> CONV(8) -> FC(3)")
    assert max(errors.values()) < TOLERANCE


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("h,w,d,fw,ph,pw,k", GEOMETRIES)
def test_compiled_transforms_equal_numpy_bit_for_bit(h, w, d, fw, ph, pw, k, dtype):
    # Same arithmetic in the same order: not close, equal. Forward with bias and fused ReLU,
    # and the backward (rows of dout, dx's output sums, x's adjoint rows).
    x = RNG.standard_normal((3, h, w, d)).astype(dtype)
    wt = RNG.standard_normal((3, fw, d, k)).astype(dtype)
    b = RNG.standard_normal(k).astype(dtype)
    results = []
    for flag in (False, True):
        compiled.set_enabled(flag)
        out, cache = ops.conv_forward(x, wt, b, (1, 1), (ph, pw), relu=True, algorithm="winograd")
        dout = np.random.default_rng(5).standard_normal(out.shape).astype(dtype)
        results.append([out.copy(), *ops.conv_backward(dout, cache)])
    assert (results[0][0] == 0).any() and (results[0][0] > 0).any()
    for numpy_result, compiled_result in zip(*results):
        np.testing.assert_array_equal(compiled_result, numpy_result)


def test_switched_off_by_the_environment():
    import subprocess
    import sys
    code = "from slidenet.ops import compiled; print(compiled.kernels() is None, compiled.status())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "SLIDENET_NUMBA": "0"})
    assert done.stdout.split()[0] == "True" and "off (disabled)" in done.stdout


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("hw,size,stride", [((8, 8), (2, 2), (2, 2)), ((7, 7), (3, 3), (2, 2)),
                                            ((8, 9), (2, 3), (1, 2)), ((6, 6), (3, 3), (3, 3))])
@pytest.mark.parametrize("relu_mask", [False, True])
def test_compiled_max_pool_equals_numpy_bit_for_bit(hw, size, stride, relu_mask):
    # Integer values after a ReLU: ties and all-zero windows everywhere; one NaN window too.
    x = np.maximum(RNG.integers(-2, 3, (4, *hw, 3)), 0).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    dout = None
    results = []
    for flag in (False, True):
        compiled.set_enabled(flag)
        out, cache = ops.pool_forward(x, size, stride, relu_mask=relu_mask)
        dout = RNG.standard_normal(out.shape).astype(np.float32) if dout is None else dout
        results.append((out.copy(), ops.pool_backward(dout, cache).copy()))
    np.testing.assert_array_equal(results[1][0], results[0][0])     # NaN == NaN here
    # Windows that overlap add up to 4 gradients into one entry, window by window here and tap
    # by tap in NumPy: the same numbers summed in another order.
    same = np.testing.assert_array_equal if size == stride else \
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    same(results[1][1], results[0][1])
    if not relu_mask:       # and against the lecture's loops (which know nothing of NaN)
        x[0, 0, 0, 0] = 0
        compiled.set_enabled(True)
        out, cache = ops.pool_forward(x, size, stride)
        np.testing.assert_array_equal(out, naive.pool_forward(x, size, stride))
        same(ops.pool_backward(dout, cache), naive.pool_backward(dout, x, size, stride))


def test_other_dtypes_take_the_numpy_path(path):
    # The compiled kernels are built for float32 and float64 only; integers pool through NumPy.
    x = RNG.integers(-5, 5, (2, 6, 6, 3))
    out, cache = ops.pool_forward(x, (2, 2), (2, 2))
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, naive.pool_forward(x, (2, 2), (2, 2)))
    dout = RNG.standard_normal(out.shape)
    want = naive.pool_backward(dout, x.astype(np.float64), (2, 2), (2, 2))
    np.testing.assert_array_equal(ops.pool_backward(dout, cache), want)
    assert compiled.kernels(x) is None and (compiled.kernels(dout) is None) == (path == "numpy")


def test_without_numba_everything_runs_on_numpy():
    # numba made unimportable in a fresh interpreter: the kernels fall back, and say why.
    import subprocess
    import sys
    code = ("import sys; sys.modules['numba'] = None\n"
            "import numpy as np\n"
            "from slidenet import ops\n"
            "from slidenet.ops import compiled\n"
            "x = np.ones((2, 6, 6, 8), np.float32)\n"
            "out, cache = ops.conv_forward(x, np.ones((3, 3, 8, 8), np.float32), np.zeros(8, np.float32),"
            " (1, 1), (1, 1), algorithm='winograd')\n"
            "ops.conv_backward(out, cache)\n"
            "print(float(out[0, 2, 2, 0]), compiled.kernels() is None, compiled.status())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    value, none, status = done.stdout.split(maxsplit=2)
    assert float(value) == 72.0 and none == "True" and status.startswith("off (numba cannot be imported")
