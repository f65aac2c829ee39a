"""A thin first layer's kernels (docs/benchmarks.md, "Thin first layers: dw without rows"), each
against what it replaced, in one process, alternating round by round, in CPU time of one thread
(what a shared machine's other work inflates least).

    .venv/bin/python scripts/thin_ab.py [--rounds 9] [--latency]

Layers: R1's conv1 (32x32x3 -> 32, 3x3, pad 1) and res18's (32x32x3 -> 16), with the ReLU.
backward (dw and db, no dx, as a first layer's training step asks): "before" is im2col's rows +
GEMM (`conv_backward_im2col`), "after" the direct pair's `compiled.direct_dw`. forward
(`conv_forward_direct`, docs/benchmarks.md "Thin first layers: the forward on 512-bit
registers"): "before" numba's `compiled.direct_conv` (`vdirect.kernel` made to answer None),
"after" the kernel on 512-bit registers (`ops.vdirect`); "after" alone where the host has no
AVX-512F. Prints min and median µs per call over the rounds, and before / after of the medians.
--latency: R1's prediction of one image (pixels in, `Net.prepare()`, one worker), numba's
forward for conv1 against vdirect's, and onnxruntime's session on one thread, alternating round
by round, in CPU µs per prediction.
"""
import argparse
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from slidenet.ops import compiled, naive, runtime, vdirect
from slidenet.ops.conv.direct import conv_backward_direct, conv_forward_direct
from slidenet.ops.conv.im2col import conv_backward_im2col

CASES = [("R1 conv1", 1, 32), ("R1 conv1", 8, 32), ("R1 conv1", 128, 32), ("res18 conv1", 64, 16)]


def per_call(fn, calls):
    t = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - t) / calls * 1e6


def numba_forward(forward):
    """forward() with `vdirect.kernel` answering None: numba's `compiled.direct_conv` runs."""
    real = vdirect.kernel
    vdirect.kernel = lambda *args: None
    try:
        return forward()
    finally:
        vdirect.kernel = real


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--latency", action="store_true")
    args = parser.parse_args()
    if args.latency:
        return latency(args)
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
            forward = lambda: conv_forward_direct(x, w, b, (1, 1), (1, 1), relu=True)
            before = None
            if vdirect.kernel(3, 3, 3, 1, 1, k) is not None:
                # Both forwards are the lecture's numbers to float32 rounding.
                want = np.maximum(naive.conv_forward(x.astype(np.float64), w.astype(np.float64),
                                                     b.astype(np.float64), (1, 1), (1, 1)), 0)
                assert np.allclose(forward()[0], want, rtol=1e-5, atol=1e-5)
                assert np.allclose(numba_forward(forward)[0], want, rtol=1e-5, atol=1e-5)
                before = lambda: numba_forward(forward)
            passes = [("forward", before, forward)]
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


def latency(args):
    from slidenet.bench import R1, SlidenetRunner
    from slidenet.bench.runners import OnnxRunner
    print(f"load average {os.getloadavg()[0]:.2f}; CPU µs per prediction of one image")
    with runtime.workers(1), threadpool_limits(1):
        sn = SlidenetRunner(R1, 1, 1)
        ort = OnnxRunner(sn, 1)
        ways = {"numba conv1": lambda: numba_forward(sn.infer_one), "vdirect conv1": sn.infer_one,
                "onnxruntime": ort.infer_one}
        for fn in ways.values():
            for _ in range(50):
                fn()
        times = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, fn in ways.items():
                times[name].append(per_call(fn, 300))
    for name, t in times.items():
        print(f"{name:14} min {min(t):6.0f}  median {statistics.median(t):6.0f}  max {max(t):6.0f}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
