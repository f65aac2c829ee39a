"""The two halves `ops.conv.pair` splits R1's fc1 and conv1 into, each timed on one thread: a
lower bound on what they take paired, which a busy machine (no core to spare) can still measure
(docs/benchmarks.md, "Batch 1 on two cores, round 2").

    .venv/bin/python scripts/pair_halves.py [--calls 2000] [--rounds 5]

Prints CPU µs per call (median of the rounds): the unpaired kernel on the whole layer
(`compiled.fc_one`, `compiled.direct_conv`) and each thread's share (`pair_kernels.fc_columns`,
`pair_kernels.direct_rows`) on the same inputs, the prediction's own (a random image through
R1's prepared net).
"""
import argparse
import statistics
import time

import numpy as np

from slidenet.bench import R1
from slidenet.net import Net
from slidenet.ops import compiled
from slidenet.ops.conv import pair


def timed(fn, calls, rounds):
    seen = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            fn()
        seen.append((time.process_time() - start) / calls * 1e6)
    return statistics.median(seen)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pair.set_enabled(True)
    if not pair.wait_ready(300):
        raise SystemExit(f"the helper's kernels did not build: {pair._state['error']}")
    from slidenet.ops.conv import pair_kernels
    net = Net.from_pattern(R1)
    plan = net.prepare()
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    inputs, out = [], x
    for _, run in plan.steps:
        inputs.append(out)
        out = run(out)
    fast = compiled.kernels(x)
    ctl = np.zeros(pair.SLOTS, np.int64)
    task = ctl[pair.TASK:]

    def report(name, whole, first, second):
        print(f"{name}: whole {timed(whole, args.calls, args.rounds):.1f} µs; the caller's half "
              f"{timed(first, args.calls, args.rounds):.1f}, the helper's "
              f"{timed(second, args.calls, args.rounds):.1f}")

    fc1 = next(layer for layer in net.layers if type(layer).__name__ == "FC")
    w, b = fc1.params["W"].copy(), fc1.bias.copy()
    fx = inputs[[step.name for step, _ in plan.steps].index("fc1+relu5")].reshape(1, -1)
    fo = np.empty((1, w.shape[1]), np.float32)
    split = max(16, (w.shape[1] // 2) // 16 * 16)           # as `pair_kernels.paired_fc`
    task[:8] = [fx.ctypes.data, w.ctypes.data, b.ctypes.data, fo.ctypes.data, w.shape[0],
                w.shape[1], 1, split]
    report(f"fc1 {w.shape[0]} -> {w.shape[1]} ({np.count_nonzero(fx)} inputs not 0)",
           lambda: fast.fc_one(fx, w, b, True, fo),
           lambda: pair_kernels.fc_columns(task, 0, split),
           lambda: pair_kernels.fc_columns(task, split, w.shape[1]))

    conv1 = plan.steps[0][1].prepared
    h, wd, d = x.shape[1:]
    k = conv1.w.shape[3]
    xp = np.zeros((1, h + 2, wd + 2, d), np.float32)
    xp[:, 1:-1, 1:-1] = x
    co = np.empty((1, h, wd, k), np.float32)
    sizes = ((0,) * 3, (0,) * 3, (0,) * d, (0,), (0,))
    task[:13] = [xp.ctypes.data, conv1.w.ctypes.data, conv1.b.ctypes.data, co.ctypes.data,
                 h + 2, wd + 2, d, h, wd, k, 1, pair.DIRECT_SHAPES[(3, 3, d, 1, 1)], 0]
    half = h - h // 2                                       # as `pair_kernels.paired_direct`
    report(f"conv1 {h}x{wd}x{d} -> {k} (direct)",
           lambda: fast.direct_conv(xp, conv1.w, conv1.b, *sizes, True, co),
           lambda: pair_kernels.direct_rows(task, 0, half),
           lambda: pair_kernels.direct_rows(task, half, h))


if __name__ == "__main__":
    main()
