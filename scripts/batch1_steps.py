"""Batch 1, step by step: each step of R1's prepared net (`Net.prepare()`, what `predict` and
`serve` run) on one image, with its 3x3 layers (F(4x4, 3x3)) split over two threads
(`ops.conv.pair`) and on one thread, alternating: docs/benchmarks.md's "Round 3" and "Batch 1
on two threads".

    .venv/bin/python scripts/batch1_steps.py [--rounds 7] [--calls 300] [--always] [--auto]

Each round times every step `--calls` times in a row on the output of the step before (the
prediction's own inputs), once paired (2 workers, the helper running) and once on one worker;
prints per step the median over the rounds in microseconds, both ways, and the whole forward:
wall time, and the process's CPU time (`time.process_time`: both threads' while paired, so the
helper's polling shows) which a shared machine's other work does not inflate as much; and the
cores other processes used meanwhile (/proc/stat less this process), each way; and what became
of the layers that could pair (`pair.counts`: paired, missed, woke, backoff, busy). The helper runs
always (as SLIDENET_PAIR=1, but for its back-off after a miss), or with --auto only while a core
is spare (SLIDENET_PAIR=auto).
"""
import argparse
import statistics
import time

import numpy as np

from slidenet.bench import R1
from slidenet.net import Net
from slidenet.ops import idle, runtime
from slidenet.ops.conv import pair


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--always", action="store_true",
                        help="try to pair on every call, also after a miss (no back-off)")
    parser.add_argument("--auto", action="store_true",
                        help="pair as SLIDENET_PAIR=auto does: only while a core is spare")
    args = parser.parse_args()
    net = Net.from_pattern(R1)
    plan = net.prepare()
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    pair.set_enabled("auto" if args.auto else True)
    with runtime.workers(2):
        ready = pair.wait_ready(300)
    inputs, out = [], x
    for _, run in plan.steps:
        inputs.append(out)
        out = run(out)
    names = [step.name for step, _ in plan.steps] + ["whole forward"]
    modes = ("paired", "one thread")
    times = {(name, mode): [] for name in names for mode in modes}
    cpu = {(name, mode): [] for name in names for mode in modes}
    outcomes = {}                           # (step, mode) -> `pair.counts` during its calls
    others = {mode: [] for mode in modes}   # cores other processes used meanwhile
    for _ in range(args.rounds):
        for mode, count in (("paired", 2), ("one thread", 1)):
            with runtime.workers(count):
                busy, own, began = idle.machine_seconds(), time.process_time(), time.perf_counter()
                for (step, run), given in zip(plan.steps, inputs):
                    before = dict(pair.counts)
                    start, used = time.perf_counter(), time.process_time()
                    for _ in range(args.calls):
                        if args.always:
                            pair.retry_now()            # every call tries to pair
                        run(given)
                    times[step.name, mode].append((time.perf_counter() - start) / args.calls)
                    cpu[step.name, mode].append((time.process_time() - used) / args.calls)
                    _count(outcomes, step.name, mode, before)
                before = dict(pair.counts)
                start, used = time.perf_counter(), time.process_time()
                for _ in range(args.calls):
                    if args.always:
                        pair.retry_now()
                    plan.forward(x)
                times["whole forward", mode].append((time.perf_counter() - start) / args.calls)
                cpu["whole forward", mode].append((time.process_time() - used) / args.calls)
                _count(outcomes, "whole forward", mode, before)
                if busy is not None:
                    others[mode].append(((idle.machine_seconds() - busy)
                                         - (time.process_time() - own))
                                        / (time.perf_counter() - began))
    print(f"helper ready: {ready}; halves it ran: {pair.helper_runs()}; µs per call, median "
          f"of {args.rounds} rounds (fastest-slowest)")
    for mode in modes:
        if others[mode]:
            print(f"other processes while {mode}: {statistics.median(others[mode]):.2f} cores "
                  f"({min(others[mode]):.2f}-{max(others[mode]):.2f})")
    for clock, table in (("wall", times), ("CPU", cpu)):
        print(f"{clock} time")
        for name in names:
            cells = []
            for mode in modes:
                v = [t * 1e6 for t in table[name, mode]]
                cells.append(f"{mode} {statistics.median(v):7.1f} ({min(v):.0f}-{max(v):.0f})")
            print(f"  {name:<28}" + "   ".join(cells))
    print("what became of the layers that could pair, paired rounds (`pair.counts`)")
    for name in names:
        seen = outcomes.get((name, "paired"))
        if seen and any(seen.values()):
            print(f"  {name:<28}" + ", ".join(f"{k} {v}" for k, v in seen.items() if v))


def _count(outcomes, name, mode, before):
    """Add `pair.counts` since `before` to outcomes[name, mode]."""
    seen = outcomes.setdefault((name, mode), dict.fromkeys(pair.counts, 0))
    for key, value in pair.counts.items():
        seen[key] += value - before[key]


if __name__ == "__main__":
    main()
