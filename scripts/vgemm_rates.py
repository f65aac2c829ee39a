"""The block kernels' GEMM shapes, NumPy's BLAS (`blas.sgemm`, one thread) against `ops.vgemm`,
each called from a compiled loop as the kernels call them: docs/benchmarks.md's "res18
inference: the small GEMMs on 512-bit registers".

    .venv/bin/python scripts/vgemm_rates.py

For each stack of E products (rows x D) @ (D x K) (res18's: the 36 of F(4x4, 3x3) and the 81
of the stride-2 scheme, on a band's rows), GFLOPS from the least CPU time of 7 runs, both
alternating, and the largest difference between the two products relative to the largest
entry.
"""
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from slidenet.ops import blas, vgemm


@numba.njit(nogil=True)
def loop(gemm, v, u, m, reps):
    e_count, rows, d = v.shape
    k = u.shape[2]
    for _ in range(reps):
        for e in range(e_count):
            gemm(101, 111, 111, rows, k, d, 1.0, v[e].ctypes.data, d, u[e].ctypes.data, k, 0.0,
                 m[e].ctypes.data, k)


def main():
    threadpool_limits(1)                # as the kernels run it: one BLAS thread per worker
    rng = np.random.default_rng(0)
    shapes = [(36, 128, 16, 16), (36, 768, 16, 16), (81, 256, 16, 32), (36, 256, 32, 32),
              (81, 128, 32, 64), (36, 128, 64, 64), (36, 256, 64, 64), (81, 64, 64, 128),
              (36, 17, 128, 128), (36, 32, 128, 128), (36, 64, 128, 128)]
    for e_count, rows, d, k in shapes:
        v = rng.standard_normal((e_count, rows, d)).astype(np.float32)
        u = rng.standard_normal((e_count, d, k)).astype(np.float32)
        out = {"blas": np.zeros((e_count, rows, k), np.float32)}
        out["vgemm"] = out["blas"].copy()
        gemms = {"blas": blas.sgemm(), "vgemm": vgemm.sgemm(k)}
        reps = max(1, int(3e7 // (e_count * rows * d * k)))
        times = {name: [] for name in gemms}
        for name, gemm in gemms.items():
            loop(gemm, v, u, out[name], 1)
        for _ in range(7):
            for name, gemm in gemms.items():
                start = time.process_time()
                loop(gemm, v, u, out[name], reps)
                times[name].append(time.process_time() - start)
        flops = 2 * e_count * rows * d * k * reps
        diff = np.abs(out["blas"] - out["vgemm"]).max() / np.abs(out["blas"]).max()
        print(f"{e_count} x ({rows} x {d}) @ ({d} x {k}): BLAS "
              f"{flops / min(times['blas']) / 1e9:.1f} GFLOPS, vgemm "
              f"{flops / min(times['vgemm']) / 1e9:.1f}; differ by {diff:.1e}")


if __name__ == "__main__":
    main()
