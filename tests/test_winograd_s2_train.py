"""Training's stride-2 Winograd (`winograd_s2_train`, res18's downsampling 3x3 CONVs): forward,
dx (with a residual sum's skip) and dw against the naive loops in float64 and float32 (padding
on one side, cropping, windows past the edge, the fused ReLU's mask), chunks and threads, rows a
crop leaves out, where "auto" takes it, the gradcheck on a downsampling block that runs it, and
res18's training gradients against the im2col path."""
import numpy as np
import pytest

from harness import conv3x3_arrays
from slidenet import Net, ops
from slidenet.gradcheck import TOLERANCE, check_net
from slidenet.ops import compiled, naive, runtime
from slidenet.ops.conv import dispatch, winograd_s2, winograd_s2_train
from slidenet.ops.sides import pad_sides, unpad_sides

RNG = np.random.default_rng(7)

# (N, H, W, D, K, before, after): res18's layout (32 -> 16, pad 1 before, none after); the same
# padded evenly; whole windows; a last tile sticking out down and across; cropping (a negative
# after); the smallest output; many channels; one image of several tile rows.
GEOMETRIES = [(2, 16, 16, 16, 8, (1, 1), (0, 0)), (2, 16, 16, 16, 8, (1, 1), (1, 1)),
              (3, 17, 17, 5, 6, (0, 0), (0, 0)), (2, 11, 14, 3, 4, (1, 0), (0, 1)),
              (2, 13, 12, 4, 3, (1, 1), (-2, -1)), (1, 3, 3, 2, 3, (0, 0), (0, 0)),
              (2, 8, 8, 40, 36, (1, 1), (0, 0)), (1, 33, 19, 3, 2, (1, 1), (0, 0))]


@pytest.fixture(autouse=True)
def kernels(numba):
    """Every test here runs the compiled kernels (training takes this pair only with them)."""
    return numba


def lectures(x, wt, b, dout, before, after):
    """The oracle in float64: x padded (or cropped) per side, the rows and columns past the last
    window dropped (rounding down), the naive loops at stride 2; dx back through the padding."""
    xp = pad_sides(x.astype(np.float64), before, after).copy()
    ho, wo = (xp.shape[1] - 3) // 2 + 1, (xp.shape[2] - 3) // 2 + 1
    used = np.ascontiguousarray(xp[:, :2 * ho + 1, :2 * wo + 1])
    w64 = wt.astype(np.float64)
    out = naive.conv_forward(used, w64, b.astype(np.float64), (2, 2), (0, 0))
    if dout is None:
        return out
    d_used, dw, db = naive.conv_backward(dout.astype(np.float64), used, w64, (2, 2), (0, 0))
    dxp = np.zeros(xp.shape)
    dxp[:, :2 * ho + 1, :2 * wo + 1] = d_used
    return out, unpad_sides(dxp, before, after, x.shape).copy(), dw, db


def near(got, want, tolerance):
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * max(np.abs(want).max(), 1e-300))


@pytest.mark.parametrize("n, h, w, d, k, before, after", GEOMETRIES)
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 2e-5)])
def test_forward_dx_dw_are_the_lectures(n, h, w, d, k, before, after, dtype, tolerance):
    x, wt, b = conv3x3_arrays(RNG, n, h, w, d, k, dtype)
    out, cache = winograd_s2_train.forward(x, wt, b, before, after)
    dout = RNG.standard_normal(out.shape).astype(dtype)
    want, dx_want, dw_want, db_want = lectures(x, wt, b, dout, before, after)
    assert out.dtype == np.dtype(dtype) and out.shape == want.shape
    near(out, want, tolerance)
    dx, dw, db = winograd_s2_train.backward(dout, cache)
    assert dx.dtype == dw.dtype == np.dtype(dtype) and dw.shape == wt.shape
    near(dx, dx_want, tolerance)
    near(dw, dw_want, tolerance)
    near(db, db_want, tolerance)
    # The skip is added as dx is written; without dx, the same dw and no dx.
    skip = RNG.standard_normal(x.shape).astype(dtype)
    with_skip = winograd_s2_train.backward(dout, cache, skip=skip)[0]
    near(with_skip, dx_want + skip, tolerance)
    none, dw_alone, _ = winograd_s2_train.backward(dout, cache, need_dx=False)
    assert none is None
    np.testing.assert_array_equal(dw_alone, dw)


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 2e-5)])
def test_the_fused_relu_and_its_mask(dtype, tolerance):
    x, wt, b = conv3x3_arrays(RNG, 2, 16, 16, 16, 8, dtype)
    out, cache = winograd_s2_train.forward(x, wt, b, (1, 1), (0, 0), relu=True)
    dout = RNG.standard_normal(out.shape).astype(dtype)
    plain = lectures(x, wt, b, None, (1, 1), (0, 0))
    near(out, np.maximum(plain, 0), tolerance)
    masked = np.where(out > 0, dout, 0)
    _, dx_want, dw_want, _ = lectures(x, wt, b, masked, (1, 1), (0, 0))
    dx, dw, _ = winograd_s2_train.backward(dout, cache, relu=True)
    near(dx, dx_want, tolerance)
    near(dw, dw_want, tolerance)


def test_cropped_rows_are_never_read_and_get_no_gradient():
    x, wt, b = conv3x3_arrays(RNG, 2, 13, 12, 4, 3, "float32")
    clean_out, cache = winograd_s2_train.forward(x, wt, b, (1, 1), (-2, -1))
    clean_out = clean_out.copy()
    dout = RNG.standard_normal(clean_out.shape).astype(np.float32)
    dx, dw, _ = (a.copy() for a in winograd_s2_train.backward(dout, cache))
    assert not dx[:, -2:].any() and not dx[:, :, -1:].any()
    x[:, -2:], x[:, :, -1:] = np.nan, 1e30
    out, cache = winograd_s2_train.forward(x, wt, b, (1, 1), (-2, -1))
    np.testing.assert_array_equal(out, clean_out)
    np.testing.assert_array_equal(winograd_s2_train.backward(dout, cache)[1], dw)


def test_threads_agree_bit_for_bit_and_chunks_to_rounding():
    x, wt, b = conv3x3_arrays(RNG, 7, 21, 18, 16, 8, "float32")
    dout = RNG.standard_normal((7, 10, 9, 8)).astype(np.float32)
    skip = RNG.standard_normal(x.shape).astype(np.float32)
    runs = []
    for threads, budget in ((1, None), (1, 1), (2, 1)):
        with runtime.workers(threads):
            out, cache = winograd_s2_train.forward(x, wt, b, (1, 1), (0, 0), budget=budget)
            runs.append([out.copy()] + [g.copy() for g in
                                        winograd_s2_train.backward(dout, cache, skip=skip)])
    for got, want in zip(runs[2], runs[1]):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(runs[1], runs[0]):         # dw and db summed chunk by chunk
        near(got, want, 1e-5)


def test_auto_takes_it_in_training_where_it_pays():
    w = np.zeros((3, 3, 16, 32), np.float32)

    def taken(n, h, d=16, before=(1, 1), after=(0, 0), stride=(2, 2), size=(3, 3)):
        return dispatch.takes_sides(np.zeros((n, h, h, d), np.float32),
                                    np.zeros(size + (d, 32), np.float32), stride, before, after)
    assert taken(64, 32) and taken(64, 16, 32)          # res18's first two downsampling CONVs
    assert not taken(64, 8, 64)                         # one tile an image: im2col
    assert not taken(64, 32, 8)                         # too thin (winograd_s2.MIN_DEPTH)
    assert not taken(1, 32)                             # too few tiles (winograd_s2.MIN_TILES)
    assert not taken(64, 32, stride=(1, 1)) and not taken(64, 32, size=(1, 1))
    previous = ops.set_conv_algorithm("im2col")
    try:
        assert not taken(64, 32)
    finally:
        ops.set_conv_algorithm(previous)
    previous = compiled.set_enabled(False)
    try:
        assert not taken(64, 32)
    finally:
        compiled.set_enabled(previous)
    with pytest.raises(ValueError):
        ops.conv_forward(np.zeros((1, 32, 32, 16), np.float32), w, np.zeros(32, np.float32),
                         (2, 2), sides=((1, 1), (0, 0)))


DOWN = ("INPUT(10x10x16) -> {{ CONV(16, s=2, p=1, round=down) -> BN -> RELU -> CONV(16) -> BN | "
        "CONV(16, 1x1, s=2, round=down) -> BN }} -> ADD -> RELU -> {head}")


def test_gradcheck_on_a_downsampling_block_that_runs_it(monkeypatch):
    """The block's stride-2 CONV (5 x 5 outputs: 4 tiles an image) runs this pair: counted."""
    monkeypatch.setattr(winograd_s2, "MIN_TILES", 1)   # gradcheck's batch of 2
    calls = []
    real = winograd_s2_train.backward

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(winograd_s2_train, "backward", counted)
    net = Net.from_pattern(DOWN.format(head="FC(3)"), dtype="float64", seed=3)
    errors = check_net(net)
    assert calls and max(errors.values()) < TOLERANCE, errors


def test_res18_like_training_equals_the_im2col_path(monkeypatch):
    """The same net's forward and every gradient, this pair against `pad_sides` + im2col +
    `unpad_sides`, float64: equal to rounding."""
    pattern = DOWN.format(head="GLOBALAVGPOOL -> FC(4)")
    x = RNG.standard_normal((8, 10, 10, 16))
    results = []
    for on in (True, False):
        if not on:
            monkeypatch.setattr(winograd_s2_train, "takes", lambda *args: False)
        net = Net.from_pattern(pattern, dtype="float64", seed=5)
        out = net.forward(x, True).copy()
        dx = net.backward(np.ones_like(out)).copy()
        results.append((out, dx, {k: g.copy() for k, g in net.grads.items()}))
        first = next(layer for layer in net.every_layer() if layer.name == "conv1")
        assert (first.cache.algorithm == "winograd_s2") == on
    (out, dx, grads), (out2, dx2, grads2) = results
    near(out, out2, 1e-12)
    near(dx, dx2, 1e-12)
    for name in grads:
        near(grads[name], grads2[name], 1e-11)


def test_the_plane_products_on_512_bit_registers_agree_with_numpys(monkeypatch):
    """Where `vgemm` runs (float32, 16 x j columns, AVX-512), the forward's and dV's products
    go through it; the results equal NumPy's matmul path to float32 rounding."""
    from slidenet.ops import stacked, vgemm
    if vgemm.sgemm(32) is None or vgemm.sgemm(16) is None:
        pytest.skip("no vgemm on this host (llvmlite, AVX-512F)")
    x, wt, b = conv3x3_arrays(RNG, 4, 32, 32, 16, 32, "float32")
    dout = RNG.standard_normal((4, 16, 16, 32)).astype(np.float32)
    skip = RNG.standard_normal(x.shape).astype(np.float32)
    used = []
    real = winograd_s2_train.plane_products

    def counted(*args):
        used.append(1)
        return real(*args)
    monkeypatch.setattr(winograd_s2_train, "plane_products", counted)
    # dU = V^T dM through `stacked`, which must find vgemm's transposed kernel for it.
    transposed = []
    real_matmul = stacked.matmul

    def spied(a, b, out):
        transposed.append(stacked.gemm_of(a, b, out) is vgemm.sgemm_t(b.shape[2]))
        return real_matmul(a, b, out)
    monkeypatch.setattr(stacked, "matmul", spied)
    out, cache = winograd_s2_train.forward(x, wt, b, (1, 1), (0, 0))
    fast = [out.copy()] + [g.copy() for g in winograd_s2_train.backward(dout, cache, skip=skip)]
    assert len(used) >= 2
    assert transposed and all(transposed)
    monkeypatch.setattr(winograd_s2_train, "_vector_gemm", lambda *args: None)
    out, cache = winograd_s2_train.forward(x, wt, b, (1, 1), (0, 0))
    slow = [out] + list(winograd_s2_train.backward(dout, cache, skip=skip))
    _, dx_want, dw_want, _ = lectures(x, wt, b, dout, (1, 1), (0, 0))
    for got, want in zip(fast, slow):
        near(got, want, 1e-5)
    near(fast[1], dx_want + skip, 2e-5)
    near(fast[2], dw_want, 2e-5)
