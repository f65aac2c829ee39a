"""A stack of float32 products out[e] = a[e] @ b[e] on `ops.vgemm`'s kernels, in one compiled loop.

Training's F(4x4, 3x3) (`conv.winograd_f44`) makes its products per chunk of images as stacks
of 36: the forward's (tiles x D) @ (D x K), dx's (tiles x K) @ (K x D) and dw's (K x tiles) @
(tiles x D), the last with A a transposed view of dout's rows. `np.matmul` hands each to
NumPy's BLAS, whose packing and 256-bit kernels (the environment's `OPENBLAS_CORETYPE`) leave
much of a 512-bit core idle on such small products, as the inference block kernels found
(docs/benchmarks.md, "res18 inference: the small GEMMs on 512-bit registers"). Here the stack
runs through `vgemm.sgemm(N)` (or `vgemm.sgemm_t(N)` for a transposed A) in a numba loop that
takes the GEMM as an argument, as `blas.GemmKernel`'s kernels do: one call from Python per
stack, not one ctypes call per product, and no GIL while it runs.

    matmul(a, b, out)       # a (S, M, K), b (S, K, N) -> out (S, M, N), as np.matmul(a, b, out=out)

It applies to float32 arrays whose matrices are row-major with unit column steps (a may be a
transposed view: a[e] stored K x M), N a multiple of 16, and out not overlapping a or b; any
other case, or no kernel (no numba or the compiled kernels turned off, no llvmlite or
AVX-512F, ``SLIDENET_VGEMM=0``), is `np.matmul` itself. The sums are the same in another order:
equal to `np.matmul`'s to float32 rounding (tests/test_stacked.py).
"""
import numpy as np

from slidenet.ops import blas, compiled, vgemm

NO_TRANS, TRANS = 111, 112
_F32 = np.dtype(np.float32)


def _products(gemm, trans_a, count, m, n, k, a, a_step, lda, b, b_step, ldb, c, c_step, ldc):
    """gemm on each of `count` products; a, b, c: the stacks (their addresses are taken here:
    NumPy's `.ctypes.data` costs more than the dispatch), *_step: bytes from one matrix to the
    next."""
    pa, pb, pc = a.ctypes.data, b.ctypes.data, c.ctypes.data
    for e in range(count):
        gemm(101, trans_a, 111, m, n, k, 1.0, pa + e * a_step, lda, pb + e * b_step, ldb, 0.0,
             pc + e * c_step, ldc)


_kernel = blas.GemmKernel(lambda fast: compiled.jit(_products))


def matmul(a, b, out):
    """out[e] = a[e] @ b[e] for a (S, M, K), b (S, K, N), out (S, M, N); returns out."""
    call = _call(a, b, out)
    run = None if call is None or compiled.kernels() is None else _kernel()
    if run is None:
        return np.matmul(a, b, out=out)
    run(*call)
    return out


def gemm_of(a, b, out):
    """The function `matmul(a, b, out)` calls for each product (cblas_sgemm's arguments), or None
    where it runs `np.matmul`. `conv.pair` hands the same function to its helper thread, so that
    one image's layer split over two threads gives the bits of one."""
    call = _call(a, b, out)
    if call is None or compiled.kernels() is None or _kernel() is None:
        return None
    return call[0]


def _call(a, b, out):
    """`_products`' arguments for this stack, or None where the kernels do not apply."""
    if not (a.dtype == b.dtype == out.dtype == _F32 and a.ndim == b.ndim == out.ndim == 3):
        return None
    count, m, k = a.shape
    n = b.shape[2]
    if b.shape[:2] != (count, k) or out.shape != (count, m, n) or min(count, m, k) == 0:
        return None
    gemm_n, gemm_t = vgemm.sgemm(n), vgemm.sgemm_t(n)
    if gemm_n is None:
        return None
    sa, sb, so = a.strides, b.strides, out.strides
    if (sb[2] != 4 or so[2] != 4 or sb[1] < 4 * n or so[1] < 4 * n
            or min(*sa, *sb, *so) < 0 or any(s % 4 for s in (*sa, sb[0], sb[1], so[0], so[1]))):
        return None
    if sa[2] == 4 and sa[1] >= 4 * k:
        gemm, trans_a, lda = gemm_n, NO_TRANS, sa[1] // 4
    elif sa[1] == 4 and sa[2] >= 4 * m and gemm_t is not None:
        gemm, trans_a, lda = gemm_t, TRANS, sa[2] // 4
    else:
        return None
    if np.may_share_memory(out, a) or np.may_share_memory(out, b):
        return None
    return (gemm, trans_a, count, m, n, k, a, sa[0], lda, b, sb[0], sb[1] // 4, out, so[0],
            so[1] // 4)
