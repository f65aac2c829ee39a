"""ops.vpass: F(4x4, 3x3)'s input and output passes on 512-bit registers, against the naive
transforms and `compiled.winograd44_input` / `winograd44_output` (bit for bit)."""
import numpy as np
import pytest

from slidenet.ops import compiled, vgemm, vpass
from slidenet.ops.conv import dispatch, winograd_block, winograd_down

RNG = np.random.default_rng(11)

needs_vpass = pytest.mark.skipif(vpass.input_pass() is None,
                                 reason="no llvmlite, no AVX-512F or no numba on this host")

# F(4x4, 3x3)'s B^T, as winograd_f44 and the lecture's Winograd section write it
BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)


def naive_planes(x, ph, pw, t0, th, tw, bt=BT):
    """B^T d B of every tile's 6 x 6 window (zeros outside x) by loops, in float64, as
    (36, c*th*tw*D): entry 6a + b of tile (n, ti, tj) at [6a + b, ((n*th + ti)*tw + tj)*D:]."""
    c, h, w, d = x.shape
    out = np.zeros((36, c * th * tw * d))
    for n in range(c):
        for ti in range(th):
            for tj in range(tw):
                win = np.zeros((6, 6, d))
                for i in range(6):
                    for j in range(6):
                        r, q = 4 * (t0 + ti) - ph + i, 4 * tj - pw + j
                        if 0 <= r < h and 0 <= q < w:
                            win[i, j] = x[n, r, q]
                t = np.einsum("ai,ijd,bj->abd", bt, win, bt)
                base = ((n * th + ti) * tw + tj) * d
                out[:, base:base + d] = t.reshape(36, d)
    return out


@needs_vpass
@pytest.mark.parametrize("c, h, w, d, ph, pw, t0, th, tw", [
    (2, 8, 8, 16, 1, 1, 0, 2, 2),          # padded by 1, as a 3x3 CONV
    (1, 7, 10, 32, 1, 1, 0, 2, 3),         # a last tile past the edge
    (3, 5, 5, 16, 0, 2, 0, 2, 2),          # other padding, cropping
    (1, 16, 12, 48, 1, 1, 2, 2, 3),        # a band of tile rows from t0 on
    (1, 4, 4, 128, 1, 1, 0, 1, 1)])
def test_matches_the_naive_transform_and_the_numba_pass(c, h, w, d, ph, pw, t0, th, tw):
    x = RNG.standard_normal((c, h, w, d)).astype(np.float32)
    n = c * th * tw * d
    got = np.full((36, n + 7), np.nan, np.float32)
    vpass.run(vpass.input_pass(), x, ph, pw, t0, th, tw, got)
    assert np.isnan(got[:, n:]).all()                                   # nothing else written
    want = naive_planes(x.astype(np.float64), ph, pw, t0, th, tw)
    scale = naive_planes(np.abs(x).astype(np.float64), ph, pw, t0, th, tw, np.abs(BT))
    assert np.all(np.abs(got[:, :n] - want) <= 8 * np.finfo(np.float32).eps * scale + 1e-30)
    same = np.zeros_like(got)
    compiled.kernels().winograd44_input(x, ph, pw, t0, th, tw,
                                        np.zeros((6, 4 * th + 2, tw * d), np.float32), same)
    assert np.array_equal(got[:, :n], same[:, :n])                      # bit for bit


# the stride-2 scheme's B^T (winograd_s2's docstring derives it): the odd samples as they are,
# then F(4, 2)'s input transform of the even ones
BT_S2 = np.array([[0, 1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0, 0],
                  [0, 0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1, 0],
                  [2, 0, -1, 0, -2, 0, 1, 0, 0], [0, 0, 2, 0, 1, 0, -1, 0, 0],
                  [0, 0, -2, 0, 3, 0, -1, 0, 0], [0, 0, -1, 0, 0, 0, 1, 0, 0],
                  [0, 0, 2, 0, -1, 0, -2, 0, 1]], np.float64)


@needs_vpass
@pytest.mark.parametrize("c, h, w, d, ph, pw, h_in, w_in, th, tw", [
    (2, 32, 32, 16, 1, 1, 32, 32, 4, 4),   # res18's 32x32x16 -> 16x16
    (1, 9, 13, 32, 1, 0, 9, 13, 2, 2),     # windows past the edge, no padding on the left
    (1, 8, 8, 16, 1, 1, 7, 6, 1, 1)])      # rows and columns cropped (h_in, w_in)
def test_s2_input_pass_matches_the_naive_transform_and_the_numba_pass(c, h, w, d, ph, pw, h_in,
                                                                      w_in, th, tw):
    x = RNG.standard_normal((c, h, w, d)).astype(np.float32)
    n = c * th * tw * d
    got = np.full((81, n + 3), np.nan, np.float32)
    vpass.run_s2(vpass.s2_input_pass(), x, ph, pw, h_in, w_in, th, tw, got)
    assert np.isnan(got[:, n:]).all()
    want = np.zeros((81, n))
    for i, ti, tj in np.ndindex(c, th, tw):
        win = np.zeros((9, 9, d))
        for a, b in np.ndindex(9, 9):
            r, q = 8 * ti - ph + a, 8 * tj - pw + b
            if 0 <= r < h_in and 0 <= q < w_in:
                win[a, b] = x[i, r, q]
        base = ((i * th + ti) * tw + tj) * d
        want[:, base:base + d] = np.einsum("ai,ijd,bj->abd", BT_S2, win, BT_S2).reshape(81, d)
    scale = np.abs(want).max()
    assert np.abs(got[:, :n] - want).max() <= 1e-5 * scale
    same = np.zeros_like(got)
    compiled.kernels().winograd_s2_input(x, ph, pw, h_in, w_in, th, tw, same)
    assert np.array_equal(got[:, :n], same[:, :n])                      # bit for bit


# the stride-2 scheme's A^T: the odd samples' product, then F(4, 2)'s output transform
AT_S2 = np.array([[1, 0, 0, 0, 1, 1, 1, 1, 0], [0, 1, 0, 0, 0, 1, -1, 2, 0],
                  [0, 0, 1, 0, 0, 1, 1, 4, 0], [0, 0, 0, 1, 0, 1, -1, 8, 1]], np.float64)


@needs_vpass
@pytest.mark.parametrize("c, ho, wo, k, relu", [(2, 16, 16, 32, True), (1, 7, 5, 16, False)])
def test_s2_output_pass_matches_the_naive_transform_and_the_numba_pass(c, ho, wo, k, relu):
    th, tw = (ho + 3) // 4, (wo + 3) // 4
    m = RNG.standard_normal((81, c * th * tw * k + 5)).astype(np.float32)
    bias = RNG.standard_normal(k).astype(np.float32)
    got = np.full((c, ho, wo, k), -7.0, np.float32)
    vpass.run_output(vpass.s2_output_pass(), m, 0, th, tw, got, bias, True, relu, got, False)
    want = np.zeros((c, ho, wo, k))
    for n, ti, tj in np.ndindex(c, th, tw):
        base = ((n * th + ti) * tw + tj) * k
        y = np.einsum("pa,abk,qb->pqk", AT_S2, m[:, base:base + k].astype(np.float64).reshape(
            9, 9, k), AT_S2)
        for p, q in np.ndindex(min(4, ho - 4 * ti), min(4, wo - 4 * tj)):
            want[n, 4 * ti + p, 4 * tj + q] = y[p, q]
    want += bias
    want = np.maximum(want, 0) if relu else want
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    same = np.zeros_like(got)
    compiled.kernels().winograd_s2_output(m, th, tw, same, bias, relu)
    assert np.array_equal(got, same)                                    # bit for bit


AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], np.float64)


@needs_vpass
@pytest.mark.parametrize("c, ho, wo, k, use_bias, relu, use_skip", [
    (2, 8, 8, 16, True, True, True), (1, 7, 6, 32, True, False, True),   # cropped last tiles
    (3, 5, 9, 16, False, True, False), (1, 4, 4, 128, True, True, False)])
def test_output_pass_matches_the_naive_transform_and_the_numba_pass(c, ho, wo, k, use_bias,
                                                                    relu, use_skip):
    """y = A^T m A of each tile [+ b][+ skip][ReLU], pixels past H', W' dropped: against
    float64 loops to float32 rounding and `compiled.winograd44_output` bit for bit."""
    th, tw = (ho + 3) // 4, (wo + 3) // 4
    m = RNG.standard_normal((36, c * th * tw * k + 5)).astype(np.float32)
    m[3, 7] = np.nan                                    # a NaN stays a NaN through the ReLU
    bias = RNG.standard_normal(k).astype(np.float32)
    skip = RNG.standard_normal((c, ho, wo, k)).astype(np.float32)
    got = np.full((c, ho, wo, k), -7.0, np.float32)
    vpass.run_output(vpass.output_pass(), m, 0, th, tw, got, bias, use_bias, relu, skip,
                     use_skip)
    want = np.zeros((c, ho, wo, k))
    for n in range(c):
        for ti in range(th):
            for tj in range(tw):
                base = ((n * th + ti) * tw + tj) * k
                tile = m[:, base:base + k].astype(np.float64).reshape(6, 6, k)
                y = np.zeros((4, 4, k))         # only the nonzero terms: a NaN stays in
                for p, q, a, b in np.ndindex(4, 4, 6, 6):               # its own outputs
                    if AT[p, a] and AT[q, b]:
                        y[p, q] += AT[p, a] * AT[q, b] * tile[a, b]
                for p in range(min(4, ho - 4 * ti)):
                    for q in range(min(4, wo - 4 * tj)):
                        want[n, 4 * ti + p, 4 * tj + q] = y[p, q]
    want += bias if use_bias else 0
    want += skip if use_skip else 0
    want = np.where(want < 0, 0, want) if relu else want
    finite = np.isfinite(want)
    assert np.array_equal(np.isnan(got), ~finite)
    assert np.allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5 * np.abs(want[finite]).max())
    same = np.zeros_like(got)
    compiled.kernels().winograd44_output(m, 0, th, tw, same, bias, use_bias, relu, skip,
                                         use_skip)
    assert np.array_equal(got, same, equal_nan=True)                   # bit for bit


@needs_vpass
def test_the_block_kernel_gives_the_numba_pass_bits(monkeypatch):
    x = RNG.standard_normal((3, 16, 16, 32)).astype(np.float32)
    first, second = (dispatch.prepare_conv(
        (RNG.standard_normal((3, 3, 32, 32)) * 0.1).astype(np.float32),
        RNG.standard_normal(32).astype(np.float32), (1, 1), (1, 1), True, height=16, width=16)
        for _ in range(2))
    vector = winograd_block.forward(x, first, second)
    monkeypatch.setattr(vpass, "_state", {"done": True, "fn": None, "out": None})   # numba's
    assert np.array_equal(winograd_block.forward(x, first, second), vector)


@needs_vpass
def test_the_downsampling_kernel_gives_the_numba_passes_bits(monkeypatch):
    x = RNG.standard_normal((3, 16, 16, 16)).astype(np.float32)
    first = dispatch.prepare_conv((RNG.standard_normal((3, 3, 16, 32)) * 0.1).astype(np.float32),
                                  RNG.standard_normal(32).astype(np.float32), (2, 2), (1, 1),
                                  True, height=16, width=16)
    second = dispatch.prepare_conv((RNG.standard_normal((3, 3, 32, 32)) * 0.1).astype(
        np.float32), RNG.standard_normal(32).astype(np.float32), (1, 1), (1, 1), False,
        height=8, width=8)
    proj = winograd_down.Projection((RNG.standard_normal((16, 32)) * 0.1).astype(np.float32),
                                    RNG.standard_normal(32).astype(np.float32), (2, 2))
    sides = ((1, 1), (0, 0))
    assert winograd_down.applies(x, first, sides, proj, second)
    vector = winograd_down.forward(x, first, sides, proj, second)
    monkeypatch.setattr(vpass, "_state", {"done": True, "fn": None, "out": None, "s2": None,
                                          "s2out": None})
    assert np.array_equal(winograd_down.forward(x, first, sides, proj, second), vector)


def test_none_without_vgemm(monkeypatch):
    monkeypatch.setattr(vgemm, "_state", {"done": True, "fns": {}})
    monkeypatch.setattr(vpass, "_state", {"done": False, "fn": None, "out": None})
    assert vpass.input_pass() is None and vpass.output_pass() is None
    assert vpass.s2_input_pass() is None and vpass.s2_output_pass() is None


def test_built_wherever_vgemm_is():
    """A pass that failed its own check would be None and skip the tests above."""
    if vgemm.sgemm(16) is None or compiled.kernels() is None:
        pytest.skip("no vgemm or no numba on this host")
    assert vpass.input_pass() is not None and vpass.output_pass() is not None
    assert vpass.s2_input_pass() is not None and vpass.s2_output_pass() is not None
