"""A downsampling residual block in one compiled call (`winograd_down`, inference): against the
naive loops in float64 and against the three calls it replaces; bands and threads; when it
applies; and res18's plan, which takes it, against the net's evaluation forward."""
import numpy as np
import pytest

from helpers import assert_plan_takes, random_statistics
from slidenet.ops import blas, compiled, naive, runtime, vgemm
from slidenet.ops.conv import dispatch, winograd_down, winograd_s2

RNG = np.random.default_rng(11)


@pytest.fixture(autouse=True)
def kernels(numba):
    """Every test here needs the compiled kernels and NumPy's BLAS from compiled code."""
    if blas.sgemm() is None:
        pytest.skip("NumPy's BLAS has no cblas_sgemm that ctypes can find")
    return numba


def arrays(n, h, w, d, k):
    x = RNG.standard_normal((n, h, w, d)).astype(np.float32)
    wa = (RNG.standard_normal((3, 3, d, k)) / (3 * np.sqrt(d))).astype(np.float32)
    wb = (RNG.standard_normal((3, 3, k, k)) / (3 * np.sqrt(k))).astype(np.float32)
    wp = (RNG.standard_normal((1, 1, d, k)) / np.sqrt(d)).astype(np.float32)
    bs = [RNG.standard_normal(k).astype(np.float32) for _ in range(3)]
    return x, (wa, wb, wp), bs


def sides_of(h, w):
    """PyTorch's round-down padding of 1 at stride 2: `after` crops a row a window leaves out."""
    return (1, 1), (1 - (h + 2 - 3) % 2, 1 - (w + 2 - 3) % 2)


def prepared(x, ws, bs):
    _, h, w, d = x.shape
    sides = sides_of(h, w)
    ho, wo = winograd_down.out_size(x, sides)
    first = dispatch.prepare_conv(ws[0], bs[0], (2, 2), (1, 1), True, height=h, width=w)
    second = dispatch.prepare_conv(ws[1], bs[1], (1, 1), (1, 1), True, height=ho, width=wo)
    return first, sides, winograd_down.Projection(ws[2], bs[2], (2, 2)), second


def lectures(x, ws, bs, sides, relu=True):
    """The oracle in float64, the lecture's loops on padded copies."""
    x64 = x.astype(np.float64)
    (bh, bw), (ah, aw) = sides
    xp = np.pad(x64, ((0, 0), (bh, max(ah, 0)), (bw, max(aw, 0)), (0, 0)))
    if ah < 0:
        xp = xp[:, :ah]
    if aw < 0:
        xp = xp[:, :, :aw]
    f = [a.astype(np.float64) for a in ws]
    b = [a.astype(np.float64) for a in bs]
    h = np.maximum(naive.conv_forward(xp, f[0], b[0], (2, 2), (0, 0)), 0)
    ho, wo = h.shape[1:3]
    proj = naive.conv_forward(x64[:, :2 * ho - 1, :2 * wo - 1], f[2], b[2], (2, 2), (0, 0))
    out = naive.conv_forward(h, f[1], b[1], (1, 1), (1, 1)) + proj
    return np.maximum(out, 0) if relu else out


@pytest.mark.parametrize("shape", [(3, 32, 32, 16, 32), (2, 16, 16, 32, 64), (2, 8, 8, 64, 128),
                                   (2, 17, 22, 16, 12), (3, 15, 18, 16, 24)])
@pytest.mark.parametrize("relu", [True, False])
def test_block_matches_the_naive_loops_and_the_three_calls(shape, relu, monkeypatch):
    """Against float64's naive loops to float32 rounding, and against the three calls it
    replaces to a few float32 roundings; small images too (`MIN_TILES` lowered: the kernel
    computes them, it is not used on them for speed)."""
    monkeypatch.setattr(winograd_down, "MIN_TILES", 1)
    n, h, w, d, k = shape
    x, ws, bs = arrays(n, h, w, d, k)
    first, sides, projection, second = prepared(x, ws, bs)
    second = second._replace(relu=relu)
    assert winograd_down.applies(x, first, sides, projection, second)
    got = winograd_down.forward(x, first, sides, projection, second, relu)
    want = lectures(x, ws, bs, sides, relu)
    scale = np.abs(want).max()
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 2e-5 * scale
    ho, wo = got.shape[1:3]
    proj = x[:, :2 * ho:2, :2 * wo:2] @ projection.w + projection.b
    h1 = winograd_s2.forward(x, first.filters, first.b, sides[0], True, None, sides[1])
    three = dispatch.conv_infer(h1, second, skip=proj)
    assert np.abs(got - three).max() <= 1e-5 * scale


def test_bands_and_threads_give_the_same_numbers(monkeypatch):
    x, ws, bs = arrays(5, 32, 32, 16, 16)
    first, sides, projection, second = prepared(x, ws, bs)
    whole = winograd_down.forward(x, first, sides, projection, second)
    for images in (1, 2):
        monkeypatch.setattr(winograd_down, "BAND_BYTES", 1)
        monkeypatch.setattr(winograd_down, "band_images", lambda *a, i=images: i)
        for workers in (1, 2):
            with runtime.workers(workers):
                got = winograd_down.forward(x, first, sides, projection, second)
            np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


def test_applies_only_where_it_computes_the_block():
    x, ws, bs = arrays(2, 32, 32, 16, 32)
    first, sides, projection, second = prepared(x, ws, bs)
    assert winograd_down.applies(x, first, sides, projection, second)
    small = x[:, :8, :8].copy()                         # 4 x 4 outputs: 1 tile
    # taken there only with vgemm's GEMMs (VECTOR_MIN_TILES), which lose nothing on few rows
    assert (winograd_down.applies(small, first, ((1, 1), (0, 0)), projection, second)
            == (vgemm.sgemm(32) is not None))
    assert not winograd_down.applies(x[:1], first, sides, projection, second)
    assert not winograd_down.applies(x.astype(np.float64), first, sides, projection, second)
    assert not winograd_down.applies(x, first._replace(relu=False), sides, projection, second)
    assert not winograd_down.applies(x, first, ((0, 0), (0, 0)), projection, second)
    odd = winograd_down.Projection(ws[2], bs[2], (1, 1))
    assert not winograd_down.applies(x, first, sides, odd, second)
    assert not winograd_down.applies(x, first, sides, projection,
                                     second._replace(algorithm="winograd4"))
    previous = compiled.set_enabled(False)
    try:
        assert not winograd_down.applies(x, first, sides, projection, second)
    finally:
        compiled.set_enabled(previous)


@pytest.mark.parametrize("side", [32, 16, 34])
def test_a_downsampling_block_in_a_plan_takes_the_kernel(monkeypatch, side):
    """res18's downsampling block in a pattern: the plan runs it through `winograd_down`
    (counted) and its scores equal the net's evaluation forward; with the kernel refused, the
    plan's three calls give the same scores."""
    from slidenet import Net
    net = Net.from_pattern(
        f"INPUT({side}x{side}x3) -> CONV(16) -> BN -> RELU -> "
        "{ CONV(32, s=2, p=1, round=down) -> BN -> RELU -> CONV(32) -> BN | "
        "CONV(32, 1x1, s=2, round=down) -> BN } -> ADD -> RELU -> GLOBALAVGPOOL -> FC(4)", seed=3)
    random_statistics(net, RNG)
    assert_plan_takes(monkeypatch, winograd_down, net,
                      RNG.standard_normal((6, side, side, 3)).astype(np.float32))
