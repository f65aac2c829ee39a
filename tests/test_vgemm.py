"""ops.vgemm: C = A @ B on 512-bit registers, against the naive loops and np.matmul."""
import os

import numpy as np
import pytest

from slidenet.ops import blas, vgemm

RNG = np.random.default_rng(7)

needs_vgemm = pytest.mark.skipif(vgemm.sgemm(16) is None,
                                 reason="no llvmlite or no AVX-512F on this host")


def naive_product(a, b):
    """C[i, j] = sum_t A[i, t] B[t, j] by loops, in float64."""
    m, k = a.shape
    c = np.zeros((m, b.shape[1]))
    for i in range(m):
        for j in range(b.shape[1]):
            for t in range(k):
                c[i, j] += float(a[i, t]) * float(b[t, j])
    return c


def call(fn, a, b, m, n, k, c):
    """fn on the top-left (m x k) of a, (k x n) of b into (m x n) of c, each with its own
    row stride."""
    fn(101, 111, 111, m, n, k, 1.0, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], 0.0,
       c.ctypes.data, c.shape[1])


@needs_vgemm
@pytest.mark.parametrize("m, n, k", [(1, 16, 1), (7, 16, 16), (8, 16, 3), (13, 32, 16),
                                     (6, 32, 32), (29, 64, 17), (37, 128, 64), (5, 48, 9)])
def test_matches_the_naive_loops(m, n, k):
    a = RNG.standard_normal((m, k + 5)).astype(np.float32)      # strided rows on every side
    b = RNG.standard_normal((k, n + 16)).astype(np.float32)
    c = np.full((m + 1, n + 3), np.nan, np.float32)
    call(vgemm.sgemm(n), a, b, m, n, k, c)
    want = naive_product(a[:, :k], b[:, :n])
    # float32 sums of k terms: within k units of rounding of the terms' magnitudes
    scale = naive_product(np.abs(a[:, :k]), np.abs(b[:, :n]))
    assert np.all(np.abs(c[:m, :n] - want) <= 2 * k * np.finfo(np.float32).eps * scale + 1e-30)
    assert np.isnan(c[:m, n:]).all() and np.isnan(c[m]).all()     # nothing else written


@needs_vgemm
def test_agrees_with_numpys_blas_on_the_block_shapes():
    gemm = blas.sgemm()
    for m, d, k in ((128, 16, 16), (256, 16, 32), (96, 32, 64), (33, 128, 128)):
        a = RNG.standard_normal((m, d)).astype(np.float32)
        b = RNG.standard_normal((d, k)).astype(np.float32)
        got, want = np.empty((m, k), np.float32), np.empty((m, k), np.float32)
        call(vgemm.sgemm(k), a, b, m, k, d, got)
        call(gemm, a, b, m, k, d, want)
        np.testing.assert_allclose(got, a @ b, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_only_whole_registers_of_columns():
    assert vgemm.sgemm(8) is None and vgemm.sgemm(24) is None and vgemm.sgemm(0) is None
    assert blas.gemm_for(8) is blas.sgemm()      # the block kernels keep NumPy's BLAS there


@needs_vgemm
def test_the_block_kernels_take_it_where_it_applies():
    assert blas.gemm_for(16) is vgemm.sgemm(16) and blas.gemm_for(64) is vgemm.sgemm(64)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("SLIDENET_VGEMM", "0")
    monkeypatch.setattr(vgemm, "_state", {"done": False, "fns": {}})
    assert vgemm.sgemm(16) is None
    assert blas.gemm_for(16) is blas.sgemm()


def test_built_wherever_the_host_has_512_bit_registers():
    """A kernel that failed its own check would be None and skip the tests above: on a host
    with llvmlite and AVX-512F it must be there."""
    if os.environ.get("SLIDENET_VGEMM", "1") == "0":
        pytest.skip("switched off by SLIDENET_VGEMM=0")
    llvm = pytest.importorskip("llvmlite.binding")
    llvm.initialize_native_target()
    if not llvm.get_host_cpu_features().get("avx512f", False) or blas.sgemm() is None:
        pytest.skip("no AVX-512F or no NumPy BLAS from ctypes on this host")
    assert vgemm.sgemm(16) is not None and vgemm.sgemm(32) is not None


@needs_vgemm
def test_compiled_code_is_cached_on_disk_and_loaded_from_it(tmp_path, monkeypatch):
    """compile_ir writes the object code under NUMBA_CACHE_DIR; a second build loads it, and
    the function it holds computes what the first one did."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    wide = blas.sgemm().argtypes[3] is vgemm.ctypes.c_int64
    text = vgemm._ir("vgemm_test", 1, 8, "i64" if wide else "i32")
    text = ("declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, "
            "<16 x float>)\n" + text)
    results = []
    for _ in range(2):
        engine = vgemm.compile_ir(text, "test")
        fn = vgemm.ctypes.CFUNCTYPE(None, *blas.sgemm().argtypes)(
            engine.get_function_address("vgemm_test"))
        a = RNG.standard_normal((11, 16)).astype(np.float32)
        b = RNG.standard_normal((16, 16)).astype(np.float32)
        c = np.zeros((11, 16), np.float32)
        fn(101, 111, 111, 11, 16, 16, 1.0, a.ctypes.data, 16, b.ctypes.data, 16, 0.0,
           c.ctypes.data, 16)
        np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)
        results.append(sorted(p.name for p in tmp_path.iterdir()))
    assert len(results[0]) == 1 and results[0][0].startswith("test-") and results[1] == results[0]
