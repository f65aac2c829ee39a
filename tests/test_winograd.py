"""Winograd's F(2, 3) and F(4, 3): their algebra, their accuracy in float32, when they run, and
the compiled passes.

The pairs themselves (against the naive loops, finite differences, chunks, threads, numba) are
checked with every other convolution in test_kernels.py.
"""
import os
import subprocess
import sys

import numpy as np
import numpy.polynomial.polynomial as P
import pytest

from harness import without_numba
from helpers import numba_problem, require
from slidenet import ops
from slidenet.gradcheck import TOLERANCE, check_pattern
from slidenet.ops import compiled, conv, naive
from slidenet.ops.conv import winograd, winograd_f23, winograd_f43, winograd_f44

RNG = np.random.default_rng(2023)


def test_the_four_products_give_the_two_rows():
    # The module docstring's identity on plain numbers: y0 = d0 w0 + d1 w1 + d2 w2 and
    # y1 = d1 w0 + d2 w1 + d3 w2 from four products.
    d, w = RNG.standard_normal(4), RNG.standard_normal(3)
    g = winograd_f23.G @ w
    m = np.array([d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]) * g
    assert np.allclose([m[0] + m[1] + m[2], m[1] - m[2] - m[3]],
                       [d[0:3] @ w, d[1:4] @ w], rtol=1e-14)


def toom_cook(points, m):
    """A^T (m x n), G (n x 3), B^T (n x n) of F(m, 3) from its finite points and infinity, built
    as winograd_f43's docstring derives them (Lagrange interpolation of u(z) w(z))."""
    n = m + 2
    at, g, bt = np.zeros((m, n)), np.zeros((n, 3)), np.zeros((n, n))
    for a, p in enumerate(points):
        others = [q for q in points if q != p]
        at[:, a] = [p ** k for k in range(m)]
        g[a] = [p ** j / np.prod([p - q for q in others]) for j in range(3)]
        bt[a, :n - 1] = P.polyfromroots(others)     # M(z) / (z - p), lowest power first
    at[m - 1, n - 1], g[n - 1, 2] = 1, 1
    bt[n - 1] = P.polyfromroots(points)             # M(z)
    return at, g, bt


def passes(scheme):
    """The matrices that `scheme`'s NumPy or compiled passes actually apply, read off one-hot
    inputs: B^T from `rows`, A^T from `output`, and `adjoint`'s (n x m)."""
    m, n = scheme.m, scheme.m + 2
    xp = np.eye(n).reshape(n, n, 1, 1)              # image i: 1 in padded row i
    bt = scheme.rows(xp, 1, "test.rows")[:, :, 0]   # (n, n): entry [a, i]
    out = np.empty((n, m, 1, 1))                    # image a: product a alone
    scheme.output(np.eye(n).reshape(n, n, 1), out)
    x = np.eye(m).reshape(m, m, 1, 1)
    adj = scheme.adjoint(x, "test.adjoint")[:, :, 0]    # (n, m): entry [a, k]
    return out[:, :, 0, 0].T, bt, adj


@pytest.mark.parametrize("fast", [False, True], ids=["numpy", "compiled"])
@pytest.mark.parametrize("scheme,points", [(winograd_f23.F23, (0, 1, -1)),
                                           (winograd_f43.F43, (0, 1, -1, 2, -2))],
                         ids=["F(2, 3)", "F(4, 3)"])
def test_the_passes_compute_the_products_of_their_points(scheme, points, fast):
    # Each product a is the rank-one term A^T[:, a] x G[a, :] x B^T[a, :]; scaling one factor
    # and dividing another by the same number changes nothing, so compare the terms, not the
    # matrices, with the Toom-Cook construction from the points.
    if fast:
        require("NUMBA", numba_problem())
    want = toom_cook(points, scheme.m)
    previous = compiled.set_enabled(fast)
    try:
        at, bt, adj = passes(scheme)
    finally:
        compiled.set_enabled(previous)
    for a in range(scheme.m + 2):
        np.testing.assert_allclose(np.einsum("k,j,i->kji", at[:, a], scheme.G[a], bt[a]),
                                   np.einsum("k,j,i->kji", want[0][:, a], want[1][a], want[2][a]),
                                   atol=1e-14, err_msg=f"product {a}")
    # dw: `adjoint` and `grad` together must be A (= A^T transposed) and G^T.
    np.testing.assert_allclose(adj[:, :, None] * scheme.grad.T[:, None, :],
                               at.T[:, :, None] * scheme.G[:, None, :], atol=1e-14)


def test_winograd4_matrices_are_its_docstring_and_its_passes():
    at, bt, adj = passes(winograd_f43.F43)
    np.testing.assert_array_equal(bt, winograd_f43.BT)
    np.testing.assert_array_equal(at, winograd_f43.AT)
    np.testing.assert_array_equal(adj, winograd_f43.AT.T)
    # The six products give the four rows of plain numbers: y_k = d[k:k+3] @ w.
    d, w = RNG.standard_normal(6), RNG.standard_normal(3)
    y = winograd_f43.AT @ ((winograd_f43.G @ w) * (winograd_f43.BT @ d))
    np.testing.assert_allclose(y, [d[k:k + 3] @ w for k in range(4)], rtol=1e-13)


def relu_activations(n, h, w, d):
    """Like a trained net's ReLU outputs: spatially smooth, non-negative, about half zeros."""
    z = RNG.standard_normal((n, h + 2, w + 2, d))
    z = (z[:, :-2] + z[:, 1:-1] + z[:, 2:]) / 3
    z = (z[:, :, :-2] + z[:, :, 1:-1] + z[:, :, 2:]) / 3
    return np.maximum(z + 0.1, 0)


@pytest.mark.parametrize("h,d,k", [(16, 32, 32), (13, 64, 64)])
def test_float32_winograd4_stays_within_a_few_times_im2col(h, d, k):
    # docs/benchmarks.md "F(4, 3)": on a trained net's layers F(4, 3) rounds 1.6-2.5x as much
    # as im2col forward, 5-6x in dx (im2col's scatter is unusually exact) and 3.4-4.3x in dw,
    # at most 7e-7 of the result. On data like it, over five seeds: at most 9.8e-7, 5.8x
    # im2col's and 3.9x F(2, 3)'s.
    x = relu_activations(4, h, h, d)
    wt = RNG.standard_normal((3, 3, d, k)) * np.sqrt(2 / (9 * d))
    b = RNG.standard_normal(k) * 0.1
    exact, cache64 = ops.conv_forward(x, wt, b, (1, 1), (1, 1), algorithm="im2col")
    exact = exact.copy()
    dout = RNG.standard_normal(exact.shape) * (exact > 0)
    exact_grads = ops.conv_backward(dout, cache64)[:2]
    errors = {}
    for algorithm in ("im2col", "winograd", "winograd4"):
        out, cache = ops.conv_forward(*(a.astype(np.float32) for a in (x, wt, b)), (1, 1), (1, 1),
                                      algorithm=algorithm)
        grads = ops.conv_backward(dout.astype(np.float32), cache)[:2]
        errors[algorithm] = np.array([np.linalg.norm(got - want) / np.linalg.norm(want)
                                      for got, want in zip((out, *grads), (exact, *exact_grads))])
    assert errors["winograd4"].max() < 2e-6
    assert (errors["winograd4"] < 8 * errors["im2col"]).all(), errors
    assert (errors["winograd4"] < 5 * errors["winograd"]).all(), errors


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


def test_auto_runs_winograd_only_where_it_applies_and_pays(monkeypatch):
    # F(2, 3) and F(4, 3) only: F(4x4, 3x3), which "auto" takes in training from 4 x 4 outputs
    # with numba, is kept out (tests/test_kernels.py checks where it is chosen).
    monkeypatch.setattr(winograd_f44, "MIN_SIDE", 10**6)
    calls = []
    for module, name in ((winograd_f23, "F23"), (winograd_f43, "F43")):
        scheme = getattr(module, name)
        monkeypatch.setattr(module, name, scheme._replace(
            rows=lambda *a, scheme=scheme: calls.append(scheme.name) or scheme.rows(*a)))

    def runs(d, k, size=(3, 3), stride=(1, 1), hw=(7, 7)):
        calls.clear()
        x = RNG.standard_normal((2, *hw, d)).astype(np.float32)
        wt = RNG.standard_normal((*size, d, k)).astype(np.float32)
        out, cache = ops.conv_forward(x, wt, np.zeros(k, np.float32), stride, (1, 1))
        ops.conv_backward(np.ones_like(out), cache)
        return set(calls)
    deep = conv.WINOGRAD_MIN_DEPTH
    assert runs(deep, deep) == {"winograd4"}        # 7 rows: two tiles of 4
    assert runs(deep, deep, hw=(6, 6)) == {"winograd"}
    assert runs(deep, 2) == {"winograd4"}
    assert runs(deep, 2, hw=(6, 6)) == set()        # F(2, 3) needs 8 filters
    assert runs(3, deep) == set()                   # an RGB first layer: im2col's forward,
    assert runs(3, conv.WINOGRAD4_THIN_FILTERS) == set()    # or with many filters, "direct"
    assert runs(5, conv.WINOGRAD4_THIN_FILTERS) == {"winograd4"}    # too deep for direct
    assert runs(deep, deep, stride=(2, 2)) == set()
    assert runs(deep, deep, size=(5, 5)) == set()


@pytest.mark.parametrize("pattern", ["INPUT(6x4x3) -> [CONV(4) -> RELU]*2 -> POOL -> CONV(4) -> FC(3)",
                                     "INPUT(7x3x2) -> CONV(3, 3x1) -> RELU -> CONV(2, p=0) -> FC(2)"])
def test_a_net_on_winograd4_in_every_conv_passes_gradcheck(pattern):
    # Output heights 6, 3, 7 and 5: whole tiles of 4 rows and part-filled ones, a 3x1 filter.
    previous = ops.set_conv_algorithm("winograd4")
    try:
        errors = check_pattern(pattern)
    finally:
        ops.set_conv_algorithm(previous)
    assert max(errors.values()) < TOLERANCE


def test_a_net_on_winograd_passes_gradcheck():
    # Depths of 8 make "auto" take F(2, 3) in every CONV, forward and backward.
    errors = check_pattern("INPUT(6x4x8) -> [CONV(8) -> RELU]*2 -> POOL -> CONV(8) -> FC(3)")
    assert max(errors.values()) < TOLERANCE


@pytest.mark.usefixtures("numba")
def test_compiled_max_pool_keeps_nan_as_numpy_does():
    # np.maximum keeps a NaN; the compiled pass must too, and send the gradient where NumPy does.
    x = np.maximum(RNG.integers(-2, 3, (4, 8, 8, 3)), 0).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    results = []
    for flag in (False, True):
        previous = compiled.set_enabled(flag)
        try:
            out, cache = ops.max_pool_forward(x, (2, 2), (2, 2))
            dout = np.random.default_rng(3).standard_normal(out.shape).astype(np.float32)
            results.append((out.copy(), ops.max_pool_backward(dout, cache, relu_mask=True).copy()))
        finally:
            compiled.set_enabled(previous)
    assert np.isnan(results[0][0][0, 0, 0, 0])
    for numpy_result, compiled_result in zip(*results):
        np.testing.assert_array_equal(compiled_result, numpy_result)     # NaN == NaN here


def test_switched_off_by_the_environment():
    code = "from slidenet.ops import compiled; print(compiled.kernels() is None, compiled.status())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "SLIDENET_NUMBA": "0"})
    assert done.stdout.split()[0] == "True" and "off (disabled)" in done.stdout


def test_without_numba_everything_runs_on_numpy():
    # numba made unimportable in a fresh interpreter: the kernels fall back, and say why.
    code = ("import numpy as np\n"
            "from slidenet import ops\n"
            "from slidenet.ops import compiled\n"
            "x = np.ones((2, 6, 6, 8), np.float32)\n"
            "for algorithm in ('winograd', 'winograd4'):\n"
            "    out, cache = ops.conv_forward(x, np.ones((3, 3, 8, 8), np.float32),"
            " np.zeros(8, np.float32), (1, 1), (1, 1), algorithm=algorithm)\n"
            "    ops.conv_backward(out, cache)\n"
            "    assert float(out[0, 2, 2, 0]) == 72.0\n"
            "print(float(out[0, 2, 2, 0]), compiled.kernels() is None, compiled.status())")
    value, none, status = without_numba(code).split(maxsplit=2)
    assert float(value) == 72.0 and none == "True" and status.startswith("off (numba cannot be imported")


@pytest.mark.parametrize("algorithm", ["winograd", "winograd4"])
@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize("fast", [True, False], ids=["compiled", "numpy"])
def test_large_images_run_in_bands_as_whole_images_do(algorithm, pad, fast, monkeypatch):
    """An image whose GEMM rows exceed runtime.chunk_bytes runs in bands of tiles, each padded
    on its own: the same numbers as the naive loops, and bit for bit the whole-image result."""
    if fast:
        require("NUMBA", numba_problem())
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 13, 9, 5)).astype(np.float32)     # 13 + 2p - 2 rows: odd tiles
    w = rng.standard_normal((3, 3, 5, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    bands = []
    band = winograd.band
    monkeypatch.setattr(winograd, "band", lambda *a: bands.append(a[3]) or band(*a))
    previous = compiled.set_enabled(fast)
    try:
        whole, _ = ops.conv_forward(x, w, b, (1, 1), (pad, pad), relu=True, algorithm=algorithm)
        assert not bands
        whole = whole.copy()
        before = ops.runtime.set_chunk_bytes(1)                     # one tile a band
        try:
            for threads in (1, 2):
                with ops.runtime.workers(threads):
                    banded, _ = ops.conv_forward(x, w, b, (1, 1), (pad, pad), relu=True,
                                                 algorithm=algorithm)
                np.testing.assert_array_equal(banded, whole)
            tiles = -(-(13 + 2 * pad - 2) // (4 if algorithm == "winograd4" else 2))
            assert len(bands) == 2 * 2 * tiles                  # 2 runs x 2 images x tiles
        finally:
            ops.runtime.set_chunk_bytes(before)
    finally:
        compiled.set_enabled(previous)
    want = np.maximum(naive.conv_forward(x.astype(np.float64), w.astype(np.float64),
                                             b.astype(np.float64), (1, 1), (pad, pad)), 0)
    np.testing.assert_allclose(whole, want, rtol=1e-4, atol=1e-4)


# Output heights 8, 10, 4 (one tile, one pooled row pair) and 16 rows: whole and part-filled
# last tiles (a tile of 2 rows makes one pooled row).
@pytest.mark.parametrize("h, w, pad", [(8, 8, 1), (10, 6, 1), (6, 10, 0), (14, 10, 2)])
@pytest.mark.parametrize("band", [False, True], ids=["chunks", "bands"])
def test_a_pooled_winograd4_forward_is_its_output_then_the_max_pool(h, w, pad, band):
    """CONV -> RELU -> MAXPOOL(2x2) at inference: the products pooled as the output rows are
    made, bit for bit the max pool of the F(4, 3) output; a NaN stays a NaN."""
    require("NUMBA", numba_problem())
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, h, w, 6)).astype(np.float32)
    x[1, 2, 3, 4] = np.nan
    wt = rng.standard_normal((3, 3, 6, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    prepared = conv.prepare_conv(wt, b, (1, 1), (pad, pad), relu=True, algorithm="winograd4")
    full = conv.conv_infer(x, prepared).copy()
    want, _ = ops.max_pool_forward(full, (2, 2), (2, 2))
    before = ops.runtime.set_chunk_bytes(1) if band else None
    try:
        got = conv.conv_infer(x, prepared, pool=True)
    finally:
        if band:
            ops.runtime.set_chunk_bytes(before)
    assert got.shape == want.shape == (3, full.shape[1] // 2, full.shape[2] // 2, 5)
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got).any()
    ref = naive.pool_forward(np.maximum(naive.conv_forward(
        x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64), (1, 1), (pad, pad)), 0),
        (2, 2), (2, 2))
    # Winograd's transforms mix a tile's six input rows, so a NaN reaches more outputs than
    # in the naive loops: compare where both are numbers.
    finite = ~np.isnan(ref) & ~np.isnan(got)
    assert finite.mean() > 0.5
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("algorithm", ["winograd", "winograd4"])
@pytest.mark.parametrize("fast", [True, False], ids=["compiled", "numpy"])
def test_a_residual_skip_runs_in_bands_as_in_whole_images(algorithm, fast):
    """relu(conv(x) + b + skip) with the image cut into bands: bit for bit the whole image's."""
    if fast:
        require("NUMBA", numba_problem())
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 11, 7, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    skip = rng.standard_normal((2, 11, 7, 3)).astype(np.float32)
    prepared = conv.prepare_conv(w, b, (1, 1), (1, 1), relu=True, algorithm=algorithm)
    previous = compiled.set_enabled(fast)
    try:
        whole = conv.conv_infer(x, prepared, skip=skip).copy()
        before = ops.runtime.set_chunk_bytes(1)
        try:
            banded = conv.conv_infer(x, prepared, skip=skip)
        finally:
            ops.runtime.set_chunk_bytes(before)
    finally:
        compiled.set_enabled(previous)
    np.testing.assert_array_equal(banded, whole)
    want = np.maximum(naive.conv_forward(x.astype(np.float64), w.astype(np.float64),
                                         b.astype(np.float64), (1, 1), (1, 1)) + skip, 0)
    np.testing.assert_allclose(whole, want, rtol=1e-4, atol=1e-4)
