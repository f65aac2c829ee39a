"""The float32 GEMM of the BLAS that NumPy runs, as a C function that compiled kernels can call.

A compiled kernel (numba) that runs several steps over a band of images in one call, with no
Python between them (`conv.winograd_block`), needs the GEMM between its passes from compiled
code. NumPy does not export its BLAS to numba (numba's own `np.dot` needs SciPy), so this module
finds `cblas_sgemm` in the library NumPy loaded (threadpoolctl's handle on it), under the names
NumPy's and OpenBLAS's builds give it (NumPy's wheels prefix `scipy_` and suffix `64_` for their
64-bit-integer OpenBLAS). `conv.pair`'s helper thread calls it too, at batch 1.

The function is checked once against `np.matmul` on a small product before it is handed out;
anything unexpected (no such library or symbol, another BLAS, a wrong result, or
``SLIDENET_BLAS_CALL=0`` in the environment) gives None, and callers keep their NumPy path.
It is the same library with the same kernels (and `OPENBLAS_CORETYPE`) as `np.matmul`.
"""
import ctypes
import os
import threading

import numpy as np

from slidenet.ops import compiled

# Row-major, no transpose: CBLAS's enum values.
ROW_MAJOR, NO_TRANS = 101, 111
# The symbol as NumPy's wheels (64-bit integers, `64_`), OpenBLAS's ILP64 builds and its
# usual builds name it, with the width of its integer arguments.
NAMES = (("scipy_cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm64_", ctypes.c_int64),
         ("scipy_cblas_sgemm", ctypes.c_int), ("cblas_sgemm", ctypes.c_int))
_state = {"done": False, "sgemm": None}
_lock = threading.Lock()


def sgemm():
    """The checked ctypes function cblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda,
    b, ldb, beta, c, ldc) of NumPy's BLAS, or None (see the module docstring)."""
    if not _state["done"]:
        with _lock:
            if not _state["done"]:
                _state["sgemm"] = _find() if os.environ.get("SLIDENET_BLAS_CALL", "1") != "0" \
                    else None
                _state["done"] = True
    return _state["sgemm"]


def _find():
    try:
        from threadpoolctl import ThreadpoolController
        np.ones((2, 2), np.float32) @ np.ones((2, 2), np.float32)      # NumPy's BLAS loaded
        for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
            if lib.internal_api != "openblas":
                continue
            for name, int_type in NAMES:
                fn = getattr(lib.dynlib, name, None)
                if fn is not None:
                    i, n, p, f = ctypes.c_int, int_type, ctypes.c_void_p, ctypes.c_float
                    fn.argtypes = [i, i, i, n, n, n, f, p, n, p, n, f, p, n]
                    fn.restype = None
                    return fn if _checks(fn) else None
    except (ImportError, OSError, AttributeError, TypeError, ValueError):
        return None
    return None


def _checks(fn):
    """Whether fn computes a (3 x 5) @ (5 x 4) float32 product as np.matmul does."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    c = np.full((3, 4), np.nan, np.float32)
    fn(ROW_MAJOR, NO_TRANS, NO_TRANS, 3, 4, 5, 1.0, a.ctypes.data, 5, b.ctypes.data, 4, 0.0,
       c.ctypes.data, 4)
    return bool(np.allclose(c, a @ b, rtol=1e-5, atol=1e-6))


def gemm_for(n):
    """The GEMM for a compiled kernel whose products all have n columns: `vgemm.sgemm(n)` (512-bit
    registers, for n a multiple of 16) where the host has it, else `sgemm()`; either may be
    None. Both take cblas_sgemm's arguments; the kernels call them row-major, untransposed,
    alpha 1, beta 0, which is all `vgemm` computes."""
    from slidenet.ops import vgemm
    return vgemm.sgemm(n) or sgemm()


class GemmKernel:
    """A compiled kernel that calls `sgemm()` between its passes, built on first use.

        kernel = GemmKernel(build)     # build(fast) -> the kernel, fast = compiled.kernels()
        run = kernel()                 # the kernel, or None without numba or without sgemm
        run(kernel.gemm, ...)          # the kernel takes the GEMM as its first argument
        run(gemm_for(n), ...)          # or the one for its products' n columns

    Built once per process, under a lock, since the first calls may come from worker threads
    at once."""

    def __init__(self, build):
        self._build = build
        self._lock = threading.Lock()
        self._done = False
        self._kernel = None
        self.gemm = None

    def __call__(self):
        if not self._done:
            with self._lock:
                if not self._done:
                    fast, gemm = compiled.kernels(), sgemm()
                    self._kernel = None if fast is None or gemm is None else self._build(fast)
                    self.gemm = gemm
                    self._done = True
        return self._kernel
