"""The GEMMs of res18's prepared forward alone, at the shapes its kernels give them:
docs/benchmarks.md's "res18 inference: the GEMMs are the floor".

    .venv/bin/python scripts/res18_gemms.py [--batch 64] [--rounds 7]

For each kind of 3x3 layer of res18 at batch 64 (`slidenet bench`'s RES18), the stack of GEMMs
its kernel runs on one chunk of images, as `np.matmul` runs it there: F(4x4, 3x3) (stride 1)
36 planes of (tiles x D) @ (D x K), Winograd at stride 2 81 planes of the same; a chunk is as
many images as the kernel puts in one on one worker (`runtime.batch_chunks` with the kernel's
bytes per image: 10-11 images of 32x32x16). Prints the CPU ms of those GEMMs per `--batch`
images on one thread (min and median of `--rounds` runs of several calls) and their GFLOPS, and beside them the whole layer (`winograd_f44.forward`, or
`winograd_s2.forward`, with the bias and the ReLU, padding 1, without a residual skip) the same
way, so that what is not GEMM is their difference; then a 2048^3 float32 matmul for the BLAS's
peak, and which BLAS kernels NumPy runs (threadpoolctl: OpenBLAS's core type, which
OPENBLAS_CORETYPE sets). The numbers are random: a GEMM's time does not depend on them.
"""
import argparse
import statistics
import time

import numpy as np
import threadpoolctl

from slidenet.ops import runtime
from slidenet.ops.conv import winograd_f44, winograd_s2

# (name, planes, image side after the conv, D, K): res18's 3x3 layers, F(4x4, 3x3) tiles of
# 4 x 4 outputs, stride-2 Winograd tiles of 4 x 4 outputs too.
LAYERS = [("3x3, 32x32x16 -> 16 (F(4x4, 3x3))", 36, 32, 16, 16),
          ("3x3 s2, 32x32x16 -> 32 (stride-2 Winograd)", 81, 16, 16, 32),
          ("3x3, 16x16x32 -> 32 (F(4x4, 3x3))", 36, 16, 32, 32),
          ("3x3 s2, 16x16x32 -> 64 (stride-2 Winograd)", 81, 8, 32, 64),
          ("3x3, 8x8x64 -> 64 (F(4x4, 3x3))", 36, 8, 64, 64),
          ("3x3 s2, 8x8x64 -> 128 (stride-2 Winograd)", 81, 4, 64, 128),
          ("3x3, 4x4x128 -> 128 (F(4x4, 3x3))", 36, 4, 128, 128)]


def timed(fn, calls, rounds):
    """CPU seconds of one call: (min, median) over rounds of `calls` calls each."""
    fn()
    runs = []
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(calls):
            fn()
        runs.append((time.thread_time() - start) / calls)
    return min(runs), statistics.median(runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with threadpoolctl.threadpool_limits(1, user_api="blas"), runtime.workers(1):
        blas = [(i.get("internal_api"), i.get("version"), i.get("architecture"))
                for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
        print(f"BLAS: {blas}; one thread; CPU ms per {args.batch} images")
        for name, planes, side, d, k in LAYERS:
            # The kernels' bytes per image: every plane's rows and products (float32).
            per_image = planes * (side // 4) ** 2 * (d + k) * 4
            chunk = runtime.batch_chunks(args.batch, per_image)[0]
            images = chunk.stop - chunk.start
            rows = images * (side // 4) ** 2
            v = rng.standard_normal((planes, rows, d)).astype(np.float32)
            u = rng.standard_normal((planes, d, k)).astype(np.float32)
            m = np.empty((planes, rows, k), np.float32)
            best, median = timed(lambda: np.matmul(v, u, out=m), 10, args.rounds)
            scale = args.batch / images
            flops = 2 * planes * rows * d * k
            x = rng.standard_normal((args.batch, 2 * side if planes == 81 else side,
                                     2 * side if planes == 81 else side, d)).astype(np.float32)
            w = rng.standard_normal((3, 3, d, k)).astype(np.float32)
            b = rng.standard_normal(k).astype(np.float32)
            stride2 = planes == 81
            filters = (winograd_s2 if stride2 else winograd_f44).prepare_filters(w)

            def layer():
                if stride2:
                    return winograd_s2.forward(x, filters, b, (1, 1), True, after=(0, 0))
                return winograd_f44.forward(x, filters, b, (1, 1), True)
            whole, _ = timed(layer, 3, args.rounds)
            print(f"{name}, {images} images: {planes} x ({rows} x {d}) @ ({d} x {k}): "
                  f"{best * scale * 1e3:.3f} ms (median {median * scale * 1e3:.3f}), "
                  f"{flops / best / 1e9:.0f} GFLOPS; the layer {whole * 1e3:.3f} ms")
        a = rng.standard_normal((2048, 2048)).astype(np.float32)
        best, _ = timed(lambda: a @ a, 2, 3)
        print(f"2048^3 float32 matmul: {2 * 2048 ** 3 / best / 1e9:.0f} GFLOPS")


if __name__ == "__main__":
    main()
