"""A thin first layer's kernels (docs/benchmarks.md, "Thin first layers: dw without rows"), each
against what it replaced, in one process, alternating round by round, in CPU time of one thread
(what a shared machine's other work inflates least).

    .venv/bin/python scripts/thin_ab.py [--rounds 9]

Layers: R1's conv1 (32x32x3 -> 32, 3x3, pad 1) and res18's (32x32x3 -> 16), with the ReLU.
backward (dw and db, no dx, as a first layer's training step asks): "before" is im2col's rows +
GEMM (`conv_backward_im2col`), "after" the direct pair's `compiled.direct_dw`. forward: the
direct pair's `compiled.direct_conv` alone (nothing replaced it; for the record). Prints min and
median µs per call over the rounds, and before / after of the medians.
"""
import argparse
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from slidenet.ops import compiled, naive, runtime
from slidenet.ops.conv.direct import conv_backward_direct, conv_forward_direct
from slidenet.ops.conv.im2col import conv_backward_im2col

CASES = [("R1 conv1", 1, 32), ("R1 conv1", 8, 32), ("R1 conv1", 128, 32), ("res18 conv1", 64, 16)]


def per_call(fn, calls):
    t = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - t) / calls * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    if compiled.kernels() is None:
        raise SystemExit("numba is off: nothing to compare")
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f}; numba {compiled.status()}; µs per call, one thread")
    print(f"{'layer':12} {'N':>4} {'pass':9} {'before min/med':>16} {'after min/med':>16} {'before/after':>12}")
    with runtime.workers(1), threadpool_limits(1):
        for name, n, k in CASES:
            x = rng.standard_normal((n, 32, 32, 3)).astype(np.float32)
            w = (rng.standard_normal((3, 3, 3, k)) * 0.3).astype(np.float32)
            b = rng.standard_normal(k).astype(np.float32) * 0.1
            out, cache = conv_forward_direct(x, w, b, (1, 1), (1, 1), relu=True)
            dout = rng.standard_normal(out.shape).astype(np.float32)
            # Both ways agree with the lecture's loops before anything is timed.
            _, dw_want, db_want = naive.conv_backward(dout * (out > 0), x, w, (1, 1), (1, 1))
            for fn in (conv_backward_im2col, conv_backward_direct):
                _, dw, db = fn(dout, cache, need_dx=False, relu=True)
                assert np.allclose(dw, dw_want, rtol=1e-4, atol=1e-3 * np.abs(dw_want).max())
                assert np.allclose(db, db_want, rtol=1e-4, atol=1e-3 * np.abs(db_want).max())
            calls = max(1, 256 // n)
            passes = [("forward", None, lambda: conv_forward_direct(x, w, b, (1, 1), (1, 1), relu=True))]
            if n >= 64:
                passes.append(("backward",
                               lambda: conv_backward_im2col(dout, cache, need_dx=False, relu=True),
                               lambda: conv_backward_direct(dout, cache, need_dx=False, relu=True)))
            for label, before, after in passes:
                times = {"before": [], "after": []}
                for _ in range(args.rounds):
                    if before is not None:
                        times["before"].append(per_call(before, calls))
                    times["after"].append(per_call(after, calls))
                a = times["after"]
                if times["before"]:
                    bt = times["before"]
                    print(f"{name:12} {n:4d} {label:9} {min(bt):7.0f} /{statistics.median(bt):7.0f} "
                          f"{min(a):7.0f} /{statistics.median(a):7.0f} "
                          f"{statistics.median(bt) / statistics.median(a):11.2f}x")
                else:
                    print(f"{name:12} {n:4d} {label:9} {'':16} {min(a):7.0f} /{statistics.median(a):7.0f}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
