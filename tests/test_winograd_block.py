"""A residual block's two F(4x4, 3x3) CONVs in one compiled call (`winograd_block`, inference):
NumPy's BLAS called from compiled code (`blas.sgemm`) against np.matmul; the block against the
naive loops in float64 and against the two calls it replaces; bands and threads; when it
applies; and a residual net's plan, which takes it, against the net's evaluation forward."""
import numpy as np
import pytest

from helpers import assert_plan_takes, random_statistics
from slidenet import Net
from slidenet.ops import blas, compiled, naive, runtime, vgemm
from slidenet.ops.conv import dispatch, winograd_block

RNG = np.random.default_rng(5)


@pytest.fixture(autouse=True)
def kernels(numba):
    """Every test here needs the compiled kernels and NumPy's BLAS from compiled code."""
    if blas.sgemm() is None:
        pytest.skip("NumPy's BLAS has no cblas_sgemm that ctypes can find")
    return numba


def block_arrays(n, h, w, d):
    x = RNG.standard_normal((n, h, w, d)).astype(np.float32)
    ws = [(RNG.standard_normal((3, 3, d, d)) / (3 * np.sqrt(d))).astype(np.float32)
          for _ in range(2)]
    bs = [RNG.standard_normal(d).astype(np.float32) for _ in range(2)]
    return x, ws, bs


def prepared(ws, bs, h, w):
    return [dispatch.prepare_conv(wt, b, (1, 1), (1, 1), relu, height=h, width=w)
            for wt, b, relu in zip(ws, bs, (True, True))]


def lectures(x, ws, bs, relu=True):
    """The oracle in float64: h = relu(conv(x) + b_1), out = [relu](conv(h) + b_2 + x)."""
    x64 = x.astype(np.float64)
    h = np.maximum(naive.conv_forward(x64, ws[0].astype(np.float64), bs[0].astype(np.float64),
                                      (1, 1), (1, 1)), 0)
    out = naive.conv_forward(h, ws[1].astype(np.float64), bs[1].astype(np.float64), (1, 1),
                             (1, 1)) + x64
    return np.maximum(out, 0) if relu else out


def test_sgemm_from_ctypes_is_numpys_product():
    """The C function multiplies row-major float32 matrices as np.matmul does, with leading
    dimensions wider than the rows (a plane of a larger array)."""
    fn = blas.sgemm()
    for m, n, k in [(1, 1, 1), (7, 5, 3), (64, 16, 16), (33, 40, 17)]:
        a = RNG.standard_normal((m, k + 3)).astype(np.float32)
        b = RNG.standard_normal((k, n)).astype(np.float32)
        c = np.full((m, n), np.nan, np.float32)
        fn(blas.ROW_MAJOR, blas.NO_TRANS, blas.NO_TRANS, m, n, k, 1.0, a.ctypes.data, k + 3,
           b.ctypes.data, n, 0.0, c.ctypes.data, n)
        np.testing.assert_allclose(c, a[:, :k] @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 16, 16, 16), (2, 17, 19, 8), (2, 32, 32, 16),
                                   (2, 16, 21, 32), (3, 4, 4, 16), (2, 8, 8, 64),
                                   (19, 4, 4, 128)])
@pytest.mark.parametrize("relu", [True, False])
def test_block_matches_the_naive_loops_and_the_two_calls(shape, relu, monkeypatch):
    """Against float64's naive loops to float32 rounding, and against the two `conv_infer`
    calls it replaces (the second adding x) to a few float32 roundings. Small images (4 x 4,
    8 x 8) are taken with vgemm's GEMMs; without them, MIN_TILES is lowered to reach them."""
    monkeypatch.setattr(winograd_block, "MIN_TILES", 1)
    n, h, w, d = shape
    x, ws, bs = block_arrays(n, h, w, d)
    first, second = prepared(ws, bs, h, w)
    second = second._replace(relu=relu)
    assert winograd_block.applies(x, first, second)
    got = winograd_block.forward(x, first, second, relu)
    want = lectures(x, ws, bs, relu)
    scale = np.abs(want).max()
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 2e-5 * scale
    two = dispatch.conv_infer(dispatch.conv_infer(x, first), second, skip=x)
    assert np.abs(got - two).max() <= 1e-5 * scale


def test_bands_and_threads_give_the_same_numbers(monkeypatch):
    """Bands of one image, of two (the last one short) and one band, on one worker or two:
    every image computed as in one band, to float32 rounding of the GEMMs' row counts."""
    x, ws, bs = block_arrays(5, 16, 16, 8)
    first, second = prepared(ws, bs, 16, 16)
    whole = winograd_block.forward(x, first, second)
    per_image = 36 * 16 * 2 * 8 * 4
    monkeypatch.setattr(winograd_block, "BAND_ROWS", 1)
    for images in (1, 2):
        monkeypatch.setattr(winograd_block, "BAND_BYTES", images * per_image)
        assert winograd_block.band_images(16, 16, 8) == images
        for workers in (1, 2):
            with runtime.workers(workers):
                got = winograd_block.forward(x, first, second)
            np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


def test_bands_keep_enough_rows_for_their_gemms():
    """Within BAND_BYTES, and larger where that would leave fewer than BAND_ROWS tiles."""
    assert winograd_block.band_images(32, 32, 16) == 2            # 640 KiB: 2 x 64 tiles
    assert winograd_block.band_images(4, 4, 128) == winograd_block.BAND_ROWS   # 1 tile each
    assert winograd_block.band_images(8, 8, 64) * 4 >= winograd_block.BAND_ROWS


def test_applies_only_where_it_computes_the_block():
    x, ws, bs = block_arrays(2, 16, 16, 8)
    first, second = prepared(ws, bs, 16, 16)
    assert winograd_block.applies(x, first, second)
    assert not winograd_block.applies(x[:1], first, second)                  # one image
    assert not winograd_block.applies(x.astype(np.float64), first, second)   # float64
    assert not winograd_block.applies(x[:, ::2, ::2].copy(), first, second)  # 8x8: 4 tiles
    x16, ws16, bs16 = block_arrays(2, 4, 4, 16)        # 4x4, 16 channels: 1 tile, vgemm's
    assert (winograd_block.applies(x16, *prepared(ws16, bs16, 4, 4))
            == (vgemm.sgemm(16) is not None))
    assert not winograd_block.applies(x[:, :, :, :4].copy(), first, second)  # other depth
    big = np.zeros((2, 128, 128, 8), np.float32)        # one image's tiles past BAND_BYTES
    assert not winograd_block.applies(big, first, second)
    assert not winograd_block.applies(x, first._replace(relu=False), second)
    assert not winograd_block.applies(x, first._replace(algorithm="winograd4"), second)
    wide = dispatch.prepare_conv(np.ones((3, 3, 8, 12), np.float32), np.ones(12, np.float32),
                                 (1, 1), (1, 1), True, height=16, width=16)
    assert not winograd_block.applies(x, wide, second)                       # D -> K != D
    previous = compiled.set_enabled(False)
    try:
        assert not winograd_block.applies(x, first, second)
    finally:
        compiled.set_enabled(previous)


def test_a_residual_nets_plan_takes_the_block(monkeypatch):
    """ResNet's basic block in a pattern: the plan runs it through `winograd_block` (counted)
    and its scores equal the net's evaluation forward; with the block's kernel refused, the
    plan's two calls give the same scores."""
    net = Net.from_pattern("INPUT(16x16x3) -> CONV(8) -> BN -> RELU -> "
                           "{ CONV(8) -> BN -> RELU -> CONV(8) -> BN | ID } -> ADD -> RELU -> "
                           "GLOBALAVGPOOL -> FC(4)", seed=3)
    random_statistics(net, RNG)
    assert_plan_takes(monkeypatch, winograd_block, net,
                      RNG.standard_normal((6, 16, 16, 3)).astype(np.float32))


def test_without_numpys_blas_from_compiled_code_the_block_is_two_calls(monkeypatch):
    """SLIDENET_BLAS_CALL=0: no C function, so no block kernel; `applies` says no, and a plan
    runs the block as its two calls."""
    monkeypatch.setenv("SLIDENET_BLAS_CALL", "0")
    monkeypatch.setattr(blas, "_state", {"done": False, "sgemm": None})
    monkeypatch.setattr(winograd_block, "_kernel", blas.GemmKernel(winograd_block._build))
    assert blas.sgemm() is None
    x, ws, bs = block_arrays(2, 16, 16, 8)
    first, second = prepared(ws, bs, 16, 16)
    assert winograd_block.kernel() is None
    assert not winograd_block.applies(x, first, second)
