"""Thin first layers (an RGB or grey input): the direct pair, and im2col's compiled passes.

"auto" gives a thin first layer with enough filters the direct pair (`ops/conv/direct.py`): its
forward without rows, im2col's backward. With numba, im2col copies the rows of a thin input,
adds the bias with the ReLU, and applies the ReLU's mask in compiled passes
(`compiled.im2col_rows`, `add_bias_relu`, `relu_mask`), bitwise equal to its NumPy passes.
Every convolution test in test_kernels.py runs each pair with and without them (the harness's
"compiled" check); here: which layers "auto" gives the direct pair and whether it runs its
kernel, the rows on every kind of geometry, the first layer's backward (no dx) with and
without the ReLU, which inputs take the compiled copy, NaN and infinity handled as NumPy
handles them, and a whole net.
"""

import numpy as np
import pytest

from harness import CONV_GEOMETRIES, check_kernel, conv_arrays, without_numba
from slidenet import Net, ops
from slidenet.ops import compiled, conv, naive, runtime, vdirect
from slidenet.ops.conv import direct, im2col, winograd_f44

RNG = np.random.default_rng(77)
# conftest's `numba` fixture: these fail without numba (SLIDENET_SKIP_NUMBA=1 skips them).
needs_numba = pytest.mark.usefixtures("numba")

# (H, W, D, F_h, F_w, S_h, S_w, P_h, P_w): 1 to 4 channels and one past THIN_DEPTH; square,
# tall and wide filters; strides 1 to 3 per axis; padding 0 to 3; odd, non-square inputs.
ROWS_GEOMETRIES = [
    (32, 32, 3, 3, 3, 1, 1, 1, 1),      # R1's conv1
    (28, 28, 1, 3, 3, 1, 1, 1, 1),      # the default net's conv1
    (9, 7, 2, 3, 3, 2, 2, 1, 1),
    (8, 9, 4, 2, 3, 2, 3, 0, 0),
    (11, 11, 3, 5, 5, 3, 3, 0, 0),
    (6, 5, 1, 3, 1, 1, 1, 1, 0),
    (4, 4, 2, 2, 2, 1, 1, 3, 3),
    (7, 10, 3, 7, 4, 1, 2, 3, 2),
    (5, 6, 4, 1, 1, 2, 2, 0, 0),
    (6, 6, 5, 3, 3, 1, 1, 1, 1),        # deeper than THIN_DEPTH: NumPy copies
]


def test_auto_gives_thin_first_layers_the_direct_pair():
    # R1's conv1 (RGB, 32 filters), the default net's (grey, 16), strided and 5x5 grey ones.
    assert conv.choose((3, 3), (1, 1), (1, 1), 3, 32, "auto") == "direct"
    assert conv.choose((3, 3), (1, 1), (1, 1), 1, 16, "auto") == "direct"
    assert conv.choose((3, 3), (2, 2), (1, 1), 3, 64, "auto") == "direct"
    assert conv.choose((5, 5), (1, 1), (2, 2), 1, 32, "auto") == "direct"
    assert conv.choose((1, 1), (1, 1), (0, 0), 3, 16, "auto") == "direct"
    # Not where it does not pay: a deeper input, a window of more than 27 numbers, few filters.
    assert conv.choose((1, 1), (1, 1), (0, 0), direct.DIRECT_MAX_DEPTH + 1, 32, "auto") == "full"
    assert conv.choose((3, 3), (1, 1), (1, 1), 8, 32, "auto") == "winograd4"
    assert conv.choose((3, 3), (1, 1), (1, 1), 4, 16, "auto") == "full"          # 36 numbers
    assert conv.choose((3, 3), (1, 1), (1, 1), 4, 32, "auto") == "winograd4"     # many filters
    assert conv.choose((5, 5), (1, 1), (2, 2), 3, 32, "auto") == "full"          # 75 numbers
    assert conv.choose((5, 5), (2, 2), (2, 2), 2, 32, "auto") == "im2col"
    assert conv.choose((3, 3), (1, 1), (1, 1), 3, direct.DIRECT_MIN_FILTERS - 1, "auto") == "full"


def spy(monkeypatch, name):
    """The depth of the input each call of compiled kernel `name` gets, in a list that grows."""
    calls = []
    fast = compiled.kernels()
    real = getattr(fast, name)
    monkeypatch.setattr(fast, name, lambda *a: calls.append(a[0].shape[-1]) or real(*a))
    return calls


@needs_numba
def test_a_thin_first_layer_runs_the_direct_kernel(monkeypatch):
    calls = spy(monkeypatch, "direct_conv")
    # float32 with 16 filters: the kernel on 512-bit registers where the host has it (vdirect),
    # numba's direct_conv where not; either is "the direct kernel".
    real = vdirect.caller()
    monkeypatch.setattr(vdirect, "caller", lambda: lambda entry, xp, *a: calls.append(
        xp.shape[-1]) or real(entry, xp, *a))
    net = Net.from_pattern("INPUT(12x12x3) -> CONV(16) -> RELU -> POOL -> CONV(16) -> FC(4)")
    x = RNG.standard_normal((5, 12, 12, 3)).astype(np.float32)
    with runtime.workers(1):            # one worker: one chunk
        net.backward(np.ones((5, 4), np.float32) - net.forward(x, train=True), input_grad=False)
    assert calls == [3]                 # conv1 only, one chunk; conv2 has 16 input channels
    assert [layer.cache.algorithm for layer in net.layers if hasattr(layer, "cache")
            and hasattr(layer.cache, "algorithm")] == ["direct", "winograd"]


def _rows_both_ways(x, size, stride, pad):
    results = []
    for flag in (False, True):
        previous = compiled.set_enabled(flag)
        try:
            results.append(im2col.rows(x, size, stride, pad, "test.rows").copy())
        finally:
            compiled.set_enabled(previous)
    return results


@needs_numba
@pytest.mark.parametrize("geometry", ROWS_GEOMETRIES, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_rows_are_numpys_rows(geometry, dtype):
    h, w, d, fh, fw, sh, sw, ph, pw = geometry
    x = RNG.standard_normal((3, h, w, d)).astype(dtype)
    plain, fast = _rows_both_ways(x, (fh, fw), (sh, sw), (ph, pw))
    np.testing.assert_array_equal(fast, plain)
    # And both are the windows of the lecture: one row per output pixel, in (F_h, F_w, D) order.
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    ho, wo = (h + 2 * ph - fh) // sh + 1, (w + 2 * pw - fw) // sw + 1
    i, j = ho - 1, wo // 2
    window = xp[2, i * sh:i * sh + fh, j * sw:j * sw + fw, :]
    np.testing.assert_array_equal(plain.reshape(3, ho, wo, -1)[2, i, j], window.reshape(-1))


@needs_numba
def test_only_thin_inputs_take_the_compiled_copy(monkeypatch):
    calls = spy(monkeypatch, "im2col_rows")
    for d in range(1, im2col.THIN_DEPTH + 3):
        x = RNG.standard_normal((2, 7, 7, d)).astype(np.float32)
        w = RNG.standard_normal((3, 3, d, 4)).astype(np.float32)
        out, cache = ops.conv_forward(x, w, np.zeros(4, np.float32), (1, 1), (1, 1), relu=True)
        ops.conv_backward(np.ones_like(out), cache, need_dx=False, relu=True)
    # Forward and backward each built rows once per chunk, for the thin depths only.
    assert sorted(set(calls)) == list(range(1, im2col.THIN_DEPTH + 1))


FIRST_LAYER_CASES = [pytest.param(g, id="x".join(map(str, g))) for g in CONV_GEOMETRIES
                     if g[2] <= im2col.THIN_DEPTH]


@pytest.mark.parametrize("geometry", FIRST_LAYER_CASES)
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_first_layer_backward_without_dx(geometry, relu):
    # A training step's first layer: dw and db only, through the mask of the fused ReLU, checked
    # every way (naive loops, finite differences, float32, chunks, threads, compiled = NumPy),
    # on the direct pair where it applies and on "auto"'s choice where not.
    h, w, d, fh, fw, sh, sw, ph, pw, k = geometry
    stride, pad = (sh, sw), (ph, pw)
    algorithm = "direct" if direct.applies((fh, fw), d) else None

    def reference_backward(dout, x, w, b):
        g = dout * (naive.conv_forward(x, w, b, stride, pad) > 0) if relu else dout
        return (None, *naive.conv_backward(g, x, w, stride, pad)[1:])

    check_kernel(lambda x, w, b: ops.conv_forward(x, w, b, stride, pad, relu=relu,
                                                  algorithm=algorithm),
                 lambda dout, cache: ops.conv_backward(dout, cache, need_dx=False, relu=relu),
                 conv_arrays(h, w, d, fh, fw, k, n=4), ("x", "w", "b"),
                 naive_backward=reference_backward, compiled_exact=algorithm is None)


@needs_numba
def test_compiled_bias_relu_and_mask_treat_nan_and_infinity_as_numpy_does():
    # A NaN input stays NaN through the bias and the ReLU; inf * 0 is NaN in the mask, as in
    # NumPy's multiply by a boolean; a gradient behind a negative output is a zero.
    x = RNG.standard_normal((2, 6, 6, 3)).astype(np.float32)
    x[0, 2, 2, 1] = np.nan
    w = RNG.standard_normal((3, 3, 3, 5)).astype(np.float32)
    b = np.array([-9, 9, -9, 9, 0], np.float32)     # channels 0 and 2 rectified to 0, 1 and 3 not
    results = []
    for flag in (False, True):
        previous = compiled.set_enabled(flag)
        try:
            out, cache = ops.conv_forward(x, w, b, (1, 1), (1, 1), relu=True, algorithm="im2col")
            dout = np.full_like(out, 0.5)
            dout[1, 0, 0, :] = np.inf
            dout[1, 3, 3, :] = -np.inf
            with np.errstate(invalid="ignore"):         # inf * 0 on the NumPy path
                masked = im2col.relu_masked(dout, out, np.empty_like(out)).copy()
            results.append((out.copy(), masked))
        finally:
            compiled.set_enabled(previous)
    (out, masked), (fast_out, fast_masked) = results
    assert np.isnan(out[0, 2, 2]).all() and (out[1] >= 0).all()
    assert np.isnan(masked[1, 0, 0, [0, 2]]).all() and (masked[1, 3, 3, [1, 3]] == -np.inf).all()
    assert (masked[1, 1, 1, [0, 2]] == 0).all() and (masked[1, 1, 1, [1, 3]] == 0.5).all()
    np.testing.assert_array_equal(fast_out, out)             # NaN == NaN here
    np.testing.assert_array_equal(fast_masked, masked)


@needs_numba
@pytest.mark.parametrize("pattern", [
    "INPUT(12x12x3) -> [CONV(8) -> RELU]*2 -> POOL -> FC(5)",
    "INPUT(10x10x1) -> CONV(6, 5x5, p=2) -> RELU -> POOL -> CONV(4, s=2) -> RELU -> FC(3)",
])
def test_a_net_trains_bit_for_bit_with_or_without_numba(pattern, monkeypatch):
    # A whole training step (the first layer without dx, fused ReLUs, Winograd behind it where
    # it applies, pools that tile): every gradient the same with the compiled passes or without.
    # F(4x4, 3x3) is kept out: "auto" takes it only with numba, and its NumPy path adds in
    # another order (test_kernels checks the two agree to rounding).
    monkeypatch.setattr(winograd_f44, "MIN_SIDE", 10**6)
    x = RNG.standard_normal((6, *Net.from_pattern(pattern).infos[0].output_shape)).astype(np.float32)
    grads = []
    for flag in (False, True):
        previous = compiled.set_enabled(flag)
        try:
            net = Net.from_pattern(pattern, seed=3)
            scores = net.forward(x, train=True)
            net.backward(np.cos(scores), input_grad=False)
            grads.append({name: g.copy() for name, g in net.grads.items()})
        finally:
            compiled.set_enabled(previous)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        np.testing.assert_array_equal(grads[1][name], grads[0][name], err_msg=name)


def test_without_numba_the_direct_pair_runs_im2col():
    # numba made unimportable in a fresh interpreter: "auto" still names the direct pair for a
    # thin first layer, whose forward is then im2col's, and the numbers are the naive loops'.
    code = ("import numpy as np\n"
            "from slidenet import ops\n"
            "from slidenet.ops import compiled, naive\n"
            "rng = np.random.default_rng(0)\n"
            "x, w, b = rng.standard_normal((2, 6, 6, 3)), rng.standard_normal((3, 3, 3, 16)), rng.standard_normal(16)\n"
            "out, cache = ops.conv_forward(x, w, b, (1, 1), (1, 1), relu=True)\n"
            "_, dw, db = ops.conv_backward(np.ones_like(out), cache, need_dx=False, relu=True)\n"
            "want = np.maximum(naive.conv_forward(x, w, b, (1, 1), (1, 1)), 0)\n"
            "_, dw_want, _ = naive.conv_backward((want > 0) * 1.0, x, w, (1, 1), (1, 1))\n"
            "print(cache.algorithm, np.allclose(out, want), np.allclose(dw, dw_want), compiled.kernels() is None)")
    assert without_numba(code).split() == ["direct", "True", "True", "True"]


# (H, W, D, F_h, F_w, P_h, P_w, K) at stride 1 for the direct pair's compiled dw and db: RGB and
# grey, 2 and 4 channels, windows of 1 to 27 numbers, padding 0 to 2, odd and non-square
# inputs, filter counts that are and are not multiples of the kernel's four at a time.
DW_GEOMETRIES = [
    (32, 32, 3, 3, 3, 1, 1, 32),        # R1's conv1
    (9, 7, 3, 3, 3, 1, 1, 16),
    (7, 10, 1, 5, 5, 2, 2, 6),
    (6, 5, 2, 3, 3, 0, 0, 5),
    (5, 8, 4, 1, 1, 0, 0, 17),
    (8, 6, 1, 3, 1, 2, 0, 3),
    (4, 4, 3, 3, 2, 1, 0, 9),
]


@needs_numba
@pytest.mark.parametrize("geometry", DW_GEOMETRIES, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_direct_dw_is_the_naive_loops(geometry, relu, dtype, monkeypatch):
    # A first layer's dw and db (no dx) by `compiled.direct_dw`, against the lecture's loops on
    # the same numbers (the ReLU's mask from the naive forward), in float64 and float32.
    h, w, d, fh, fw, ph, pw, k = geometry
    calls = spy(monkeypatch, "direct_dw")
    x = RNG.standard_normal((3, h, w, d)).astype(dtype)
    wt = RNG.standard_normal((fh, fw, d, k)).astype(dtype)
    b = RNG.standard_normal(k).astype(dtype)
    out, cache = direct.conv_forward_direct(x, wt, b, (1, 1), (ph, pw), relu=relu)
    dout = RNG.standard_normal(out.shape).astype(dtype)
    dx, dw, db = direct.conv_backward_direct(dout, cache, need_dx=False, relu=relu)
    assert dx is None and calls, "the compiled dw kernel did not run"
    x64, w64, b64, g64 = (a.astype(np.float64) for a in (x, wt, b, dout))
    if relu:
        g64 = g64 * (naive.conv_forward(x64, w64, b64, (1, 1), (ph, pw)) > 0)
    _, dw_want, db_want = naive.conv_backward(g64, x64, w64, (1, 1), (ph, pw))
    assert dw.dtype == dtype and db.dtype == dtype and dw.shape == wt.shape
    # float32: the sums of up to 3 * 32 * 32 products, each to rounding.
    tol = 1e-12 if dtype == np.float64 else 2e-5
    scale = np.sqrt(h * w * 3)
    np.testing.assert_allclose(dw, dw_want, rtol=0, atol=tol * scale * np.abs(x64).max() * np.abs(g64).max())
    np.testing.assert_allclose(db, db_want, rtol=0, atol=tol * scale * np.abs(g64).max())


@needs_numba
def test_direct_dw_adds_images_in_any_chunks_to_the_same_sums():
    # Chunks of the batch on one or two workers, a budget small enough for one image a chunk:
    # the same dw to rounding as one chunk (the chunks' sums are added in batch order).
    x = RNG.standard_normal((7, 12, 11, 3)).astype(np.float32)
    w = RNG.standard_normal((3, 3, 3, 16)).astype(np.float32)
    b = RNG.standard_normal(16).astype(np.float32)
    dout = RNG.standard_normal((7, 12, 11, 16)).astype(np.float32)
    results = []
    for workers, budget in ((1, None), (2, 1), (1, 1)):
        with runtime.workers(workers):
            out, cache = direct.conv_forward_direct(x, w, b, (1, 1), (1, 1), relu=True, budget=budget)
            results.append(direct.conv_backward_direct(dout, cache, need_dx=False, relu=True)[1:])
    for dw, db in results[1:]:
        np.testing.assert_allclose(dw, results[0][0], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(db, results[0][1], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(results[1][0], results[2][0])     # same chunks: same bits


@needs_numba
def test_direct_dw_treats_nan_and_infinity_as_im2col_does():
    # An infinite gradient behind a rectified output is inf * 0 = NaN in the mask, as NumPy's
    # multiply by a boolean makes it; a NaN input makes NaN sums; everything else is finite.
    x = RNG.standard_normal((2, 6, 6, 3))
    x[1, 2, 3, 0] = np.nan
    w = RNG.standard_normal((3, 3, 3, 8))
    b = np.array([-9, 9, -9, 9, 0, 0, 0, 0], np.float64)     # filters 0 and 2 rectified everywhere
    out, cache = direct.conv_forward_direct(x, w, b, (1, 1), (1, 1), relu=True)
    dout = np.full_like(out, 0.5)
    dout[0, 1, 1, :] = np.inf
    with np.errstate(invalid="ignore"):
        _, dw_want, db_want = im2col.conv_backward_im2col(dout, cache, need_dx=False, relu=True)
        _, dw, db = direct.conv_backward_direct(dout, cache, need_dx=False, relu=True)
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(dw_want))
    np.testing.assert_array_equal(np.isnan(db), np.isnan(db_want))
    assert np.isnan(db[[0, 2]]).all() and np.isnan(dw[..., 0]).all()
    finite = np.isfinite(dw_want)
    np.testing.assert_allclose(dw[finite], dw_want[finite], rtol=1e-12, atol=1e-12)


def test_direct_pair_at_stride_2_takes_im2col_backward():
    # The compiled dw is for stride 1; a strided first layer's gradients are im2col's, and right.
    x = RNG.standard_normal((2, 9, 7, 3))
    w = RNG.standard_normal((3, 3, 3, 16))
    b = RNG.standard_normal(16)
    out, cache = direct.conv_forward_direct(x, w, b, (2, 2), (1, 1), relu=False)
    dout = RNG.standard_normal(out.shape)
    _, dw, db = direct.conv_backward_direct(dout, cache, need_dx=False)
    _, dw_want, db_want = naive.conv_backward(dout, x, w, (2, 2), (1, 1))
    np.testing.assert_allclose(dw, dw_want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, db_want, rtol=1e-12, atol=1e-12)
