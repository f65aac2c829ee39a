"""What one `runtime.run_chunks` hand-over costs, and the serial part of a training step.

    .venv/bin/python scripts/handover.py [--net res18] [--batch 64] [--steps 10]

Two numbers, so that two trees can be compared by alternating processes (e.g.
`PYTHONPATH=../main .venv/bin/python scripts/handover.py` against this tree's):

* a hand-over: microseconds of wall time and of the calling thread's CPU for a `run_chunks`
  call of two tiny slices on 2 workers (the least of three rounds of 3,000 calls), against the
  same two slices run in a plain loop;
* a training step's serial work: the calling thread's CPU outside `run_chunks` (the only place
  where the other worker helps), and the step's wall time; medians of --steps steps after
  three warm-up steps, 2 workers x 1 BLAS thread.
"""
import argparse
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from slidenet.bench import NETS
from slidenet.bench.runners import SlidenetRunner
from slidenet.ops import runtime


def handover(calls=3000):
    """(wall us, caller CPU us, plain loop us) of the cheapest of three rounds of `calls`."""
    data = np.ones(2**16, np.float32)
    halves = [slice(0, 2**15), slice(2**15, 2**16)]

    def work(sl):
        np.multiply(data[sl], 1.0, out=data[sl])

    for _ in range(200):
        runtime.run_chunks(work, halves)
    best = None
    for _ in range(3):
        start, start_cpu = time.perf_counter(), time.thread_time()
        for _ in range(calls):
            runtime.run_chunks(work, halves)
        wall = (time.perf_counter() - start) / calls * 1e6
        cpu = (time.thread_time() - start_cpu) / calls * 1e6
        start = time.perf_counter()
        for _ in range(calls):
            for sl in halves:
                work(sl)
        plain = (time.perf_counter() - start) / calls * 1e6
        if best is None or wall < best[0]:
            best = (wall, cpu, plain)
    return best


def serial_step(net, batch, steps):
    """Median (serial CPU ms, wall ms) of a training step: the calling thread's CPU outside
    run_chunks, every module's reference to it wrapped by a timer."""
    runner = SlidenetRunner(NETS[net], batch, batch)
    real = runtime.run_chunks
    inside = [0.0]

    def timed(work, slices):
        start = time.thread_time()
        try:
            return real(work, slices)
        finally:
            inside[0] += time.thread_time() - start

    for module in list(sys.modules.values()):
        if getattr(module, "run_chunks", None) is real:
            module.run_chunks = timed
    for _ in range(3):
        runner.train_step()
    serial, wall = [], []
    for _ in range(steps):
        inside[0] = 0.0
        start, start_cpu = time.perf_counter(), time.thread_time()
        runner.train_step()
        wall.append((time.perf_counter() - start) * 1e3)
        serial.append((time.thread_time() - start_cpu - inside[0]) * 1e3)
    return statistics.median(serial), statistics.median(wall)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", choices=sorted(NETS), default="res18", help="which net (default res18)")
    parser.add_argument("--batch", type=int, default=64, help="training batch (default 64)")
    parser.add_argument("--steps", type=int, default=10, help="steps timed (default 10)")
    args = parser.parse_args()
    with runtime.workers(2), threadpool_limits(1, "blas"):
        wall, cpu, plain = handover()
        serial, step = serial_step(args.net, args.batch, args.steps)
    print(f"hand-over: {wall:.1f} us wall, {cpu:.1f} us caller CPU (plain loop {plain:.1f} us); "
          f"{args.net} step (batch {args.batch}): serial {serial:.1f} ms CPU, wall {step:.1f} ms")


if __name__ == "__main__":
    main()
