"""Thin first layers, forward and backward: the numbers of docs/benchmarks.md, "Thin first layers".

    .venv/bin/python scripts/thin_layers.py [--threads 2] [--rounds 7] [--batches 1,128,256]

Two layers: conv1 of R1 (INPUT(32x32x3) -> CONV(32) -> RELU) and of the default net
(INPUT(28x28x1) -> CONV(16) -> RELU), 3x3, stride 1, pad 1, float32, timed as a training step
runs them: the forward with the fused ReLU, and the backward without dx (the first layer's
input needs no gradient) through the ReLU's mask. Three ways, alternating round by round:

    before      "full" (what "auto" chose for them before the direct pair) with the compiled
                kernels off: im2col's rows, GEMM, bias and ReLU, mask, all on NumPy
    im2col      "full" with the compiled kernels on: the same GEMMs, im2col's passes compiled
    direct      "auto" now: the direct pair's forward; its backward (no dx, stride 1) by
                `compiled.direct_dw` (before that kernel: im2col's, as above)

A round takes the fastest of a few calls; the table gives the median of the rounds and their
range, in ms. The machine is shared: the last line says how many cores other processes kept
busy meanwhile.
"""
import argparse
import time

import numpy as np

from slidenet.bench.machine import OtherLoad
from slidenet.ops import compiled, conv, runtime

LAYERS = [("R1 conv1", 32, 3, 32), ("default conv1", 28, 1, 16)]
WAYS = [("before", False, "full"), ("im2col", True, "full"), ("direct", True, None)]


def fastest(fn, calls):
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def measure(args):
    rng = np.random.default_rng(0)
    times = {}
    for name, hw, d, k in LAYERS:
        assert conv.choose((3, 3), (1, 1), (1, 1), d, k) == "direct"
        for n in args.batches:
            x = rng.standard_normal((n, hw, hw, d)).astype(np.float32)
            w = (rng.standard_normal((3, 3, d, k)) * 0.2).astype(np.float32)
            b = (rng.standard_normal(k) * 0.1).astype(np.float32)
            dout = rng.standard_normal((n, hw, hw, k)).astype(np.float32)
            calls = 30 if n == 1 else 3
            for r in range(args.rounds):
                for way, fast, algorithm in WAYS[r % 3:] + WAYS[:r % 3]:
                    def forward():
                        return conv.conv_forward(x, w, b, (1, 1), (1, 1), relu=True,
                                                 algorithm=algorithm)
                    previous = compiled.set_enabled(fast)
                    try:
                        _, cache = forward()
                        times.setdefault((name, n, way, "forward"), []).append(fastest(forward, calls))
                        times.setdefault((name, n, way, "backward"), []).append(fastest(
                            lambda: conv.conv_backward(dout, cache, need_dx=False, relu=True), calls))
                    finally:
                        compiled.set_enabled(previous)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="kernel worker threads (default 2)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    parser.add_argument("--batches", default="1,128,256", help="batch sizes (default 1,128,256)")
    args = parser.parse_args()
    args.batches = [int(v) for v in args.batches.split(",")]
    if compiled.kernels() is None:
        raise SystemExit(f"thin_layers.py compares the compiled kernels with NumPy: {compiled.status()}")
    with OtherLoad() as load, runtime.workers(args.threads):
        times = measure(args)
    print(f"{args.threads} worker threads x 1 BLAS thread; ms, median of {args.rounds} rounds (range)")
    print(f"{'layer':14s} {'batch':>5s} {'step':8s}" + "".join(f"{way:>22s}" for way, _, _ in WAYS)
          + "  before / direct")
    for name, _, _, _ in LAYERS:
        for n in args.batches:
            for step in ("forward", "backward"):
                cells = [np.array(times[(name, n, way, step)]) for way, _, _ in WAYS]
                text = "".join(f"{np.median(v):9.3f} ({v.min():.3f}-{v.max():.3f})".rjust(22)
                               for v in cells)
                print(f"{name:14s} {n:5d} {step:8s}{text}  {np.median(cells[0]) / np.median(cells[2]):6.2f}x")
    if load.cores is not None:
        print(f"other processes kept {load.cores:.2f} cores busy meanwhile")


if __name__ == "__main__":
    main()
