"""Training's F(4x4, 3x3) product stacks, `np.matmul` (NumPy's BLAS, one thread) against
`ops.stacked.matmul` (`ops.vgemm`'s kernels from one compiled loop): docs/benchmarks.md's
"Training's products on 512-bit registers".

    .venv/bin/python scripts/stacked_rates.py [--rounds 7]

Each stack as `winograd_f44`'s training calls it (S products of M x K by K x N; "T": A a
transposed view, as dw's rows of dout), on the shapes R1 (batch 128, 8, 1) and res18 (batch 64)
make. GFLOPS from the least CPU time of --rounds runs of each, alternating, and the largest
difference between the two results relative to the largest entry.
"""
import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from slidenet.ops import stacked

# (S, M, K, N, A transposed): forward (tiles x D) @ (D x K), dx (tiles x K) @ (K x D), dw
# (K x tiles) @ (tiles x D).
SHAPES = [(36, 256, 32, 32, False), (36, 256, 32, 64, False), (36, 128, 64, 64, False),
          (36, 208, 64, 32, False), (36, 448, 32, 32, False), (36, 64, 64, 64, False),
          (36, 16, 64, 64, False), (36, 16, 32, 64, False), (36, 704, 16, 16, False),
          (36, 32, 128, 128, False),
          (36, 32, 256, 32, True), (36, 64, 128, 64, True), (36, 64, 208, 32, True),
          (36, 64, 64, 64, True), (36, 64, 16, 32, True), (36, 16, 512, 16, True),
          (18, 128, 64, 128, True), (36, 64, 1024, 64, True), (36, 32, 4096, 32, True)]


def operands(rng, s, m, k, n, trans):
    """a (S, M, K) (a transposed view when trans), b (S, K, N), out (S, M, N) a view with a
    gap between matrices, as the chunk's scratch is."""
    a = rng.standard_normal((s, k, m) if trans else (s, m, k)).astype(np.float32)
    a = a.transpose(0, 2, 1) if trans else a
    b = rng.standard_normal((s, k, n)).astype(np.float32)
    out = np.empty((s, m * n + 16), np.float32)[:, :m * n].reshape(s, m, n)
    return a, b, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    threadpool_limits(1)
    rng = np.random.default_rng(0)
    for s, m, k, n, trans in SHAPES:
        a, b, out = operands(rng, s, m, k, n, trans)
        ways = {"matmul": lambda: np.matmul(a, b, out=out),
                "stacked": lambda: stacked.matmul(a, b, out)}
        reps = max(1, int(2e8 // (s * m * k * n)))
        best, results = {}, {}
        for name, fn in ways.items():
            fn()
            results[name] = out.copy()
            best[name] = float("inf")
        for _ in range(args.rounds):
            for name, fn in ways.items():
                start = time.process_time()
                for _ in range(reps):
                    fn()
                best[name] = min(best[name], time.process_time() - start)
        flops = 2 * s * m * k * n * reps
        diff = np.abs(results["matmul"] - results["stacked"]).max() / np.abs(
            results["matmul"]).max()
        print(f"{s} x ({m} x {k}{' T' if trans else ''}) @ ({k} x {n}): matmul "
              f"{flops / best['matmul'] / 1e9:.1f} GFLOPS, stacked "
              f"{flops / best['stacked'] / 1e9:.1f}; {best['matmul'] / reps * 1e6:.0f} -> "
              f"{best['stacked'] / reps * 1e6:.0f} us a stack; differ by {diff:.1e}")


if __name__ == "__main__":
    main()
