"""ops.stacked: stacks of products on vgemm's kernels (and vgemm's transposed-A variant), against
the naive loops and np.matmul; the fallbacks; training's F(4x4, 3x3) on them."""
import numpy as np
import pytest

from harness import without_numba
from slidenet.ops import compiled, naive, stacked, vgemm
from slidenet.ops.conv import winograd_f44

RNG = np.random.default_rng(24)

needs_vgemm = pytest.mark.skipif(vgemm.sgemm(16) is None,
                                 reason="no llvmlite or no AVX-512F on this host")


def naive_products(a, b):
    """C[e, i, j] = sum_t A[e, i, t] B[e, t, j] by loops, in float64; also the same sums of the
    terms' magnitudes (the scale of float32's rounding)."""
    s, m, k = a.shape
    c, scale = np.zeros((s, m, b.shape[2])), np.zeros((s, m, b.shape[2]))
    for e in range(s):
        for i in range(m):
            for t in range(k):
                term = a[e, i, t].astype(np.float64) * b[e, t].astype(np.float64)
                c[e, i] += term
                scale[e, i] += np.abs(term)
    return c, scale


def operands(s, m, k, n, trans, dtype=np.float32):
    """a (s, m, k) (a transposed view when trans), b (s, k, n) with wider rows, out (s, m, n) a
    view with gaps between rows and matrices, NaN everywhere."""
    a = RNG.standard_normal((s, k + 2, m + 3) if trans else (s, m + 1, k + 5)).astype(dtype)
    a = a[:, :k, :m].transpose(0, 2, 1) if trans else a[:, :m, :k]
    b = RNG.standard_normal((s, k, n + 16)).astype(dtype)[:, :, :n]
    room = np.full((s, m + 1, n + 3), np.nan, dtype)
    return a, b, room, room[:, :m, :n]


@needs_vgemm
@pytest.mark.parametrize("trans", [False, True], ids=["A", "A^T"])
@pytest.mark.parametrize("s, m, k, n", [(1, 1, 1, 16), (3, 7, 16, 16), (2, 13, 3, 32),
                                        (4, 29, 17, 64), (2, 37, 64, 128), (3, 5, 9, 48),
                                        (2, 64, 300, 32)])
def test_matches_the_naive_loops(s, m, k, n, trans):
    a, b, room, out = operands(s, m, k, n, trans)
    assert stacked._call(a, b, out)[0] is (vgemm.sgemm_t(n) if trans else vgemm.sgemm(n))
    got = stacked.matmul(a, b, out)
    assert got is out
    want, scale = naive_products(a, b)
    # float32 sums of k terms: within k units of rounding of the terms' magnitudes
    assert np.all(np.abs(out - want) <= 2 * k * np.finfo(np.float32).eps * scale + 1e-30)
    assert np.isnan(room[:, m]).all() and np.isnan(room[:, :, n:]).all()   # nothing else written
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())


@needs_vgemm
@pytest.mark.parametrize("m, n, k", [(1, 16, 1), (7, 16, 16), (13, 32, 5), (29, 64, 33),
                                     (6, 48, 2)])
def test_the_transposed_kernel_alone(m, n, k):
    """vgemm.sgemm_t(n) with cblas_sgemm's arguments: A stored k x m with its own row stride."""
    a = RNG.standard_normal((k, m + 4)).astype(np.float32)
    b = RNG.standard_normal((k, n + 16)).astype(np.float32)
    c = np.full((m + 1, n + 3), np.nan, np.float32)
    vgemm.sgemm_t(n)(101, 112, 111, m, n, k, 1.0, a.ctypes.data, m + 4, b.ctypes.data, n + 16,
                     0.0, c.ctypes.data, n + 3)
    want, scale = naive_products(a[None, :, :m].transpose(0, 2, 1), b[None, :, :n])
    assert np.all(np.abs(c[:m, :n] - want[0]) <= 2 * k * np.finfo(np.float32).eps * scale[0])
    assert np.isnan(c[:m, n:]).all() and np.isnan(c[m]).all()


@pytest.mark.parametrize("case", ["float64", "8 columns", "24 columns", "overlapping",
                                  "no inner size"])
def test_anything_else_is_numpys_own_matmul(case):
    """Where the kernels do not apply, the very np.matmul: the same bits."""
    s, m, k, n, dtype = 3, 9, 16, 32, np.float32
    if case == "float64":
        dtype = np.float64
    elif case == "8 columns":
        n = 8
    elif case == "24 columns":
        n = 24
    elif case == "no inner size":
        k = 0
    elif case == "overlapping":
        k = 48                              # out a view of a's first n columns
    a, b, _, out = operands(s, m, k, n, False, dtype)
    if case == "overlapping":
        out = a[:, :, :n]
        want = np.matmul(a.copy(), b)
    else:
        want = np.matmul(a, b)
    assert stacked._call(a, b, out) is None
    np.testing.assert_array_equal(stacked.matmul(a, b, out), want)


def test_switched_off_it_is_numpys_matmul(monkeypatch):
    """SLIDENET_VGEMM=0 (as a host without llvmlite or AVX-512F): no kernel, np.matmul's bits;
    the compiled kernels turned off: the same."""
    a, b, _, out = operands(36, 20, 32, 32, True)
    monkeypatch.setenv("SLIDENET_VGEMM", "0")
    monkeypatch.setattr(vgemm, "_state", {"done": False, "fns": {}})
    assert vgemm.sgemm_t(32) is None and stacked._call(a, b, out) is None
    np.testing.assert_array_equal(stacked.matmul(a, b, out), np.matmul(a, b))
    monkeypatch.undo()
    previous = compiled.set_enabled(False)
    try:
        np.testing.assert_array_equal(stacked.matmul(a, b, out), np.matmul(a, b))
    finally:
        compiled.set_enabled(previous)


def test_without_numba_or_llvmlite_training_keeps_numpys_matmul():
    """Neither numba nor llvmlite importable: no kernel, every stack np.matmul's bits, and the
    training pair still runs (its NumPy passes)."""
    got = without_numba("""
sys.modules['llvmlite'] = None
import numpy as np
from slidenet.ops import stacked, vgemm
from slidenet.ops.conv import winograd_f44
rng = np.random.default_rng(0)
a = rng.standard_normal((36, 64, 20)).astype(np.float32).transpose(0, 2, 1)
b = rng.standard_normal((36, 64, 32)).astype(np.float32)
out = np.empty((36, 20, 32), np.float32)
x = rng.standard_normal((2, 8, 8, 16)).astype(np.float32)
w = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
y, cache = winograd_f44.conv_forward_winograd2d(x, w, np.zeros(16, np.float32), (1, 1), (1, 1))
dx, dw, db = winograd_f44.conv_backward_winograd2d(np.ones_like(y), cache)
print(vgemm.sgemm(32) is None, vgemm.sgemm_t(32) is None, stacked._call(a, b, out) is None,
      np.array_equal(stacked.matmul(a, b, out), np.matmul(a, b)), dw.shape)
""")
    assert got.split() == ["True", "True", "True", "True", "(3,", "3,", "16,", "16)"]


def training_step(x, wt, b, dout):
    """winograd2d's forward and backward: out, dx, dw, db (copies)."""
    out, cache = winograd_f44.conv_forward_winograd2d(x, wt, b, (1, 1), (1, 1))
    out = out.copy()
    dx, dw, db = winograd_f44.conv_backward_winograd2d(dout, cache)
    return out, dx.copy(), dw.copy(), db.copy()


@pytest.mark.parametrize("n, h, d, k", [(3, 8, 16, 32), (2, 4, 32, 16), (5, 2, 16, 16)])
def test_training_on_the_kernels_is_the_lectures_convolution(n, h, d, k, numba, monkeypatch):
    """Training's F(4x4, 3x3) forward, dx and dw (its products through `stacked`: the forward,
    dx, the chunks' dw and the whole batch's, at 2 x 2 outputs) against the naive loops, in
    float32, with the kernels and with SLIDENET_VGEMM=0."""
    x = RNG.standard_normal((n, h, h, d)).astype(np.float32)
    wt = RNG.standard_normal((3, 3, d, k)).astype(np.float32)
    b = RNG.standard_normal(k).astype(np.float32)
    dout = RNG.standard_normal((n, h, h, k)).astype(np.float32)
    x64, w64, b64 = x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64)
    want = (naive.conv_forward(x64, w64, b64, (1, 1), (1, 1)),
            *naive.conv_backward(dout.astype(np.float64), x64, w64, (1, 1), (1, 1)))
    taken = []
    call = stacked._call
    monkeypatch.setattr(stacked, "_call", lambda *arrays: taken.append(call(*arrays))
                        or taken[-1])
    on = training_step(x, wt, b, dout)
    if vgemm.sgemm(16) is not None:
        assert len(taken) >= 3 and all(c is not None for c in taken)
    monkeypatch.setenv("SLIDENET_VGEMM", "0")
    monkeypatch.setattr(vgemm, "_state", {"done": False, "fns": {}})
    taken.clear()
    off = training_step(x, wt, b, dout)
    assert taken and all(c is None for c in taken)
    for got in (on, off):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=0, atol=3e-5 * np.abs(w).max())
