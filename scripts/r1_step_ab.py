"""R1's training step with this round's levers on and off, alternating in one process.

    .venv/bin/python scripts/r1_step_ab.py [--batches 1,8,128] [--rounds 9] [--workers 2]

The levers (docs/benchmarks.md, "R1 training: round 5"), each switched in this process:
    light   `ops.compiled_step`'s kernels: the optimiser's update in one pass, the FC's outer
            product at batch 1, the softmax loss (off: their NumPy paths);
    filters F(4x4, 3x3)'s filter transforms of R1's 64-channel layers on the calling thread
            (off: `winograd_f44.FILTERS_SHARED_FROM` = 0, shared by the workers as before).
The step is `slidenet bench`'s (`SlidenetRunner.train_step`). Modes "all" (both on), "none"
(both off), and each lever off alone, in a rotating order each round; per mode the median
wall and CPU ms (all threads) of the round's steps, then the median and range over rounds.
"""
import argparse
import statistics
import time

from threadpoolctl import threadpool_limits

from slidenet.bench import NETS
from slidenet.bench.machine import OtherLoad
from slidenet.bench.runners import SlidenetRunner
from slidenet.ops import compiled_step, runtime
from slidenet.ops.conv import winograd_f44

KERNELS = compiled_step.kernels
SHARED_FROM = winograd_f44.FILTERS_SHARED_FROM
MODES = {"all": (True, True), "no light": (False, True), "no filters": (True, False),
         "none": (False, False)}


def switch(light, filters):
    compiled_step.kernels = KERNELS if light else (lambda *arrays: None)
    winograd_f44.FILTERS_SHARED_FROM = SHARED_FROM if filters else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8,128", help="training batches (default 1,8,128)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds (default 9)")
    parser.add_argument("--workers", type=int, default=2, help="kernel worker threads (default 2)")
    args = parser.parse_args()
    for batch in [int(b) for b in args.batches.split(",")]:
        runner = SlidenetRunner(NETS["r1"], batch, 1)
        steps = max(3, 400 // batch)
        wall = {m: [] for m in MODES}
        cpu = {m: [] for m in MODES}
        names = list(MODES)
        with runtime.workers(args.workers), threadpool_limits(1, "blas"), OtherLoad() as load:
            for mode in names:
                switch(*MODES[mode])
                runner.train_step()                 # compiles, warms
            for r in range(args.rounds):
                for mode in names[r % len(names):] + names[:r % len(names)]:
                    switch(*MODES[mode])
                    runner.train_step()
                    w, c = [], []
                    for _ in range(steps):
                        start, start_cpu = time.perf_counter(), time.process_time()
                        runner.train_step()
                        w.append((time.perf_counter() - start) * 1e3)
                        c.append((time.process_time() - start_cpu) * 1e3)
                    wall[mode].append(statistics.median(w))
                    cpu[mode].append(statistics.median(c))
        switch(True, True)
        print(f"batch {batch}, {args.rounds} rounds of {steps} steps, {args.workers} workers, "
              f"other processes kept {load.cores:.2f} cores busy:")
        for mode in names:
            print(f"  {mode:11s} wall {statistics.median(wall[mode]):8.3f} ms "
                  f"({min(wall[mode]):.3f}-{max(wall[mode]):.3f}), "
                  f"CPU {statistics.median(cpu[mode]):8.3f} ms "
                  f"({min(cpu[mode]):.3f}-{max(cpu[mode]):.3f})")


if __name__ == "__main__":
    main()
