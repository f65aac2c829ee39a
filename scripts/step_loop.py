"""Milliseconds per training step and per inference batch of a benchmark net, in one process.

    .venv/bin/python scripts/step_loop.py [--net r1] [--steps 10] [--threads 2] [--batch 128]
        [--no-infer]

The same training step and inference as `slidenet bench` (its `SlidenetRunner`: training at
batch 128 unless --batch says otherwise, e.g. 64 for res18's target; inference at 256), without the per-layer timing and the sgemm: after two warm-up steps, the
median of --steps training steps and of --steps inference batches, in wall and in CPU time (all
of this process's threads: less moved by other processes than wall time), and the cores other
processes kept busy meanwhile. One line, so that two trees can be compared by alternating
processes on a shared machine, e.g. main's and a branch's:

    for i in 1 2 3 4 5; do
        PYTHONPATH=../main .venv/bin/python scripts/step_loop.py
        .venv/bin/python scripts/step_loop.py
    done
"""
import argparse
import statistics
import time

from threadpoolctl import threadpool_limits

from slidenet.bench import NETS
from slidenet.bench.machine import OtherLoad
from slidenet.bench.runners import SlidenetRunner
from slidenet.ops import runtime


def milliseconds(fn, count):
    """Median wall and CPU milliseconds of fn()."""
    wall, cpu = [], []
    for _ in range(count):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", choices=sorted(NETS), default="r1", help="which net (default r1)")
    parser.add_argument("--steps", type=int, default=10, help="steps timed (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="kernel worker threads (default 2)")
    parser.add_argument("--batch", type=int, default=128, help="training batch (default 128)")
    parser.add_argument("--no-infer", action="store_true", help="time training steps only")
    args = parser.parse_args()
    runner = SlidenetRunner(NETS[args.net], args.batch, 256)
    # One BLAS thread per worker, also for one worker (runtime.workers leaves BLAS alone then).
    with runtime.workers(args.threads), threadpool_limits(1, "blas"), OtherLoad() as load:
        for _ in range(2):
            runner.train_step()
            if not args.no_infer:
                runner.infer()
        train = milliseconds(runner.train_step, args.steps)
        infer = None if args.no_infer else milliseconds(runner.infer, args.steps)
    digits = 3 if train[0] < 10 else 1
    inference = "" if infer is None else \
        f"inference batch (256) {infer[0]:.1f} ms, CPU {infer[1]:.1f} ms; "
    print(f"{args.net}: training step (batch {args.batch}) {train[0]:.{digits}f} ms, "
          f"CPU {train[1]:.{digits}f} ms; {inference}"
          f"other processes kept {load.cores:.2f} cores busy")


if __name__ == "__main__":
    main()
