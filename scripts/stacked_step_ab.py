"""Training steps with F(4x4, 3x3)'s products on `ops.vgemm` (through `ops.stacked`) against
NumPy's BLAS, in one process, alternating round by round: docs/benchmarks.md's "Training's
products on 512-bit registers".

    .venv/bin/python scripts/stacked_step_ab.py [--net r1] [--batch 128] [--rounds 9]
                                                [--steps 5] [--workers 2]

"off" makes `ops.stacked` find no kernel for any stack in this process (every stack is
`np.matmul`, as with SLIDENET_VGEMM=0, while the other users of `ops.vgemm` keep it), "on" puts
it back. The same net, weights and batch both ways. Prints the
least and the median of the rounds' CPU ms (all threads) and wall ms a step, each way, and the
load average.
"""
import argparse
import os
import statistics
import time

from threadpoolctl import threadpool_limits

from slidenet.bench import NETS
from slidenet.bench.runners import SlidenetRunner
from slidenet.ops import runtime, stacked, vgemm


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", choices=sorted(NETS), default="r1")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5, help="steps a round (default 5)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    runner = SlidenetRunner(NETS[args.net], args.batch, 256)
    if vgemm.sgemm(16) is None:
        raise SystemExit("no vgemm kernels on this host (llvmlite, AVX-512F, SLIDENET_VGEMM)")
    modes = {"off": lambda a, b, out: None, "on": stacked._call}
    cpu, wall = {m: [] for m in modes}, {m: [] for m in modes}
    loads = [os.getloadavg()[0]]
    with runtime.workers(args.workers), threadpool_limits(1, "blas"):
        for mode in modes:                              # warm both ways
            stacked._call = modes[mode]
            for _ in range(2):
                runner.train_step()
        for _ in range(args.rounds):
            for mode in modes:
                stacked._call = modes[mode]
                start, start_cpu = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    runner.train_step()
                wall[mode].append((time.perf_counter() - start) * 1e3 / args.steps)
                cpu[mode].append((time.process_time() - start_cpu) * 1e3 / args.steps)
            loads.append(os.getloadavg()[0])
    stacked._call = modes["on"]
    line = [f"{args.net} batch {args.batch}, {args.workers} workers:"]
    for mode in modes:
        line.append(f"{mode} CPU {min(cpu[mode]):.2f} (median {statistics.median(cpu[mode]):.2f})"
                    f" wall {min(wall[mode]):.2f} ({statistics.median(wall[mode]):.2f}) ms;")
    ratio = statistics.median(cpu["on"]) / statistics.median(cpu["off"])
    line.append(f"on/off CPU median {ratio:.3f}; load average {min(loads):.1f}-{max(loads):.1f}")
    print(" ".join(line))


if __name__ == "__main__":
    main()
