"""The data-parallel measurements of docs/distributed.md: `python -m slidenet.bench.distributed`.

Four measurements on this machine, then the cost model that carries them to R machines:

1. training throughput of the default net on mnist5k: 1 process x 1 thread, 1 process x
   2 threads, and `mpiexec -n 2` x 1 thread (images/s of the epochs after the first, median
   over rounds that alternate the three);
2. under `mpiexec -n 2`, per net (the default net and the benchmark's R1): the gradient bytes
   of a step, the time of their sum (slidenet's watched Iallreduce, and a plain blocking
   Allreduce beside it) and the compute time of a step on each rank;
3. in one process on one thread, the compute time of a step at per-rank batches 64 .. 1, which
   is what each of R ranks does when R shares a global batch of 64;
4. how far apart the weights of the default net are after k steps on mnist5k: 2 processes
   against 1 process, and, for scale, 1 process on 1 thread against 2 threads (sums rounded
   in another order).

The cost model: a ring allreduce sends and receives 2 (R - 1) / R x G bytes per rank and step
in 2 (R - 1) messages, so it takes 2 (R - 1) / R x G / bandwidth + 2 (R - 1) x latency; a step
on R ranks takes t(B / R) + that, and the efficiency is t(B) / (R x that step time).
Prints Markdown. It takes a few minutes; run it on a quiet machine (it reports the other load).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from slidenet.bench import R1
from slidenet.bench.machine import OtherLoad
from slidenet.net import Net
from slidenet.ops import runtime, softmax_loss
from slidenet.training.config import DEFAULT_PATTERN

NETS = {"default": DEFAULT_PATTERN, "R1": R1}
GLOBAL_BATCH = 64
PER_RANK = (64, 32, 16, 8, 4, 2, 1)
WEAK_BATCH = 32
# Links of the cost model: (name, bytes per second, seconds of latency per message). The
# latencies are typical, not measured here: TCP over 10 Gbit/s Ethernet, RDMA at 100 Gbit/s.
LINKS = (("10 Gbit/s", 10e9 / 8, 25e-6), ("100 Gbit/s", 100e9 / 8, 5e-6))
RANKS = (2, 8, 64)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m slidenet.bench.distributed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of training runs")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per training run (the first is not counted)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker()
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    drift = _drift(mpiexec)
    throughput = _throughput(mpiexec, args.rounds, args.epochs)
    with OtherLoad() as load:
        sums = json.loads(subprocess.run(
            [mpiexec, "-n", "2", sys.executable, "-m", "slidenet.bench.distributed", "--worker"],
            capture_output=True, text=True, check=True).stdout)
        compute = _compute_times()
    print(_report(throughput, sums, compute, load.cores, drift))
    return 0


def _drift(mpiexec, steps=(1, 10, 60)):
    """{k: (2 processes vs 1, 1 thread vs 2 threads)}: the largest max |a - b| / max |b| over
    the weight arrays after k steps of batch 64 on mnist5k's first 64 k images."""
    from slidenet import data as datasets
    from slidenet.model import load
    mnist = datasets.load("mnist5k")
    folder = tempfile.mkdtemp(prefix="slidenet-dist-drift-")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = {}
    try:
        for k in steps:
            path = os.path.join(folder, f"{k}.npz")
            np.savez(path, x=mnist.x_train[:64 * k], y=mnist.y_train[:64 * k],
                     x_test=mnist.x_test[:10], y_test=mnist.y_test[:10],
                     class_names=np.array(mnist.class_names))
            runs = {}
            for name, launcher, threads in (("one", [], 2), ("thread", [], 1),
                                            ("two", [mpiexec, "-n", "2"], 1)):
                out = os.path.join(folder, f"{k}-{name}")
                subprocess.run(launcher + [sys.executable, "-m", "slidenet", "train", "--data",
                                           f"npz:{path}", "--epochs", "1", "--val-fraction", "0",
                                           "--threads", str(threads), "--out", out],
                               capture_output=True, text=True, check=True, env=env)
                runs[name] = load(os.path.join(out, "model.npz")).net.params
            result[k] = tuple(max(float(np.abs(runs[a][n] - runs["one"][n]).max()
                                        / np.abs(runs["one"][n]).max()) for n in runs["one"])
                              for a in ("two", "thread"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _throughput(mpiexec, rounds, epochs):
    """{setup: (median images/s, other cores busy)} of `slidenet train` runs."""
    slidenet = [sys.executable, "-m", "slidenet", "train", "--epochs", str(epochs)]
    setups = {"1 process x 1 thread": ([], 1), "1 process x 2 threads": ([], 2),
              "2 processes x 1 thread": ([mpiexec, "-n", "2"], 1)}
    # One thread means one core: BLAS, which slidenet leaves alone on one worker, too.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    rates = {name: [] for name in setups}
    loads = {name: [] for name in setups}
    folder = tempfile.mkdtemp(prefix="slidenet-dist-bench-")
    try:
        for _ in range(rounds):
            for name, (launcher, threads) in setups.items():
                out = os.path.join(folder, "run")
                with OtherLoad() as load:
                    subprocess.run(launcher + slidenet + ["--threads", str(threads), "--out", out],
                                   capture_output=True, text=True, check=True,
                                   env=env if threads == 1 else None)
                with open(os.path.join(out, "history.json")) as fh:
                    rates[name] += [h["images_per_s"] for h in json.load(fh)[1:]]
                loads[name].append(load.cores)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {name: (statistics.median(rates[name]),
                   max((v for v in loads[name] if v is not None), default=None)) for name in setups}


def _worker():
    """Under mpiexec: per net, gradient bytes, sum times and the step's compute time (JSON)."""
    from slidenet.training import distributed
    group = distributed.world()
    result = {}
    with group.workers(1):
        for name, pattern in NETS.items():
            net = Net.from_pattern(pattern, seed=0)
            flat = np.zeros(sum(p.size for p in net.params.values()) + 3, np.float32)
            result[name] = {"params": int(flat.size - 3), "bytes": int(flat.nbytes),
                            "watched": _sum_seconds(group, lambda: group.sum_(flat, "bench")),
                            "blocking": _sum_seconds(group, lambda: group.comm.Allreduce(
                                group.MPI.IN_PLACE, flat)),
                            "step": _step_seconds(net, GLOBAL_BATCH // group.size)}
    if group.rank == 0:
        print(json.dumps(result))
    return 0


def _sum_seconds(group, fn, repeats=30, warm=5):
    """(median, fastest) seconds of fn() started together on all ranks: the fastest is the
    undisturbed cost, the median includes waiting for a rank that other work delayed."""
    times = []
    for i in range(warm + repeats):
        group.comm.Barrier()
        start = time.perf_counter()
        fn()
        if i >= warm:
            times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def _step_seconds(net, batch, repeats=5):
    """Seconds of a forward and backward at `batch` random images: the fastest of `repeats`,
    the one least disturbed by other work on the machine."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *net.input_shape), dtype=np.float32)
    y = rng.integers(0, net.num_outputs, batch)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        _, dscores = softmax_loss(net.forward(x, train=True), y)
        net.backward(dscores, input_grad=False)
        if i:
            times.append(time.perf_counter() - start)
    return min(times)


def _compute_times(rounds=5):
    """{net: {per-rank batch b: seconds of a step}} in this process, on one thread.

    Each measurement runs a whole global batch in steps of b (and counts b / 64 of it), and
    the rounds alternate the batch sizes, so that other work on the machine slows all of them
    alike; the fastest round counts. The first round warms up and is not counted.
    """
    from threadpoolctl import threadpool_limits
    nets = {name: Net.from_pattern(pattern, seed=0) for name, pattern in NETS.items()}
    rng = np.random.default_rng(0)
    best = {name: {b: float("inf") for b in PER_RANK} for name in nets}
    with runtime.workers(1), threadpool_limits(limits=1, user_api="blas"):
        for round_ in range(rounds + 1):
            for name, net in nets.items():
                x = rng.standard_normal((GLOBAL_BATCH, *net.input_shape), dtype=np.float32)
                y = rng.integers(0, net.num_outputs, GLOBAL_BATCH)
                for b in PER_RANK:
                    start = time.perf_counter()
                    for i in range(0, GLOBAL_BATCH, b):
                        _, dscores = softmax_loss(net.forward(x[i:i + b], train=True), y[i:i + b])
                        net.backward(dscores, input_grad=False)
                    if round_:
                        seconds = (time.perf_counter() - start) * b / GLOBAL_BATCH
                        best[name][b] = min(best[name][b], seconds)
    return best


def ring_seconds(ranks, nbytes, bandwidth, latency):
    """A ring allreduce of `nbytes` over `ranks`: 2 (R - 1) / R x bytes through each link in
    2 (R - 1) messages."""
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def _report(throughput, sums, compute, load, drift):
    lines = ["## How far apart the weights are after k steps (default net, mnist5k, batch 64)", "",
             "| steps | 2 processes vs 1 process | 1 process: 1 thread vs 2 threads |",
             "|---|---|---|"]
    lines += [f"| {k} | {a:.1e} | {b:.1e} |" for k, (a, b) in drift.items()]
    lines += ["", "## Training throughput here (default net, mnist5k, batch 64)", "",
             "| setup | images/s | other load (cores) |", "|---|---|---|"]
    for name, (rate, load) in throughput.items():
        lines.append(f"| {name} | {rate:,.0f} | {'' if load is None else f'{load:.2f}'} |")
    lines += ["", f"## The gradient sum of a step, 2 processes here (global batch {GLOBAL_BATCH})", "",
              "Sums: median / fastest of 30; the share uses the fastest.", "",
              "| net | parameters | gradient bytes | sum (watched Iallreduce) | sum (blocking Allreduce) "
              "| compute per rank (batch 32, fastest of 5) | sum's share of the step |", "|---|---|---|---|---|---|---|"]
    for name, s in sums.items():
        (median, fastest), blocking = s["watched"], s["blocking"]
        share = fastest / (fastest + s["step"])
        lines.append(f"| {name} | {s['params']:,} | {s['bytes'] / 2**20:.2f} MiB | "
                     f"{median * 1e3:.2f} / {fastest * 1e3:.2f} ms | "
                     f"{blocking[0] * 1e3:.2f} / {blocking[1] * 1e3:.2f} ms | "
                     f"{s['step'] * 1e3:.1f} ms | {share:.1%} |")
    if load is not None:
        lines += ["", f"Other processes kept {load:.2f} cores busy on average meanwhile."]
    lines += ["", "## Compute time of a step on one thread, by per-rank batch (fastest of 5)", "",
              "| net | " + " | ".join(f"b={b}" for b in PER_RANK) + " |",
              "|---|" + "---|" * len(PER_RANK)]
    for name, times in compute.items():
        lines.append(f"| {name} | " + " | ".join(f"{times[b] * 1e3:.1f} ms" for b in PER_RANK) + " |")
    lines += ["", f"## Cost model: global batch {GLOBAL_BATCH} over R ranks, ring allreduce", "",
              "| net | link | R | per-rank batch | compute | allreduce | step | speed-up | efficiency |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, times in compute.items():
        one = times[GLOBAL_BATCH]
        for link, bandwidth, latency in LINKS:
            for r in RANKS:
                b = GLOBAL_BATCH // r
                comm = ring_seconds(r, sums[name]["bytes"], bandwidth, latency)
                step = times[b] + comm
                lines.append(f"| {name} | {link} | {r} | {b} | {times[b] * 1e3:.1f} ms | "
                             f"{comm * 1e3:.2f} ms | {step * 1e3:.1f} ms | {one / step:.1f}x | "
                             f"{one / step / r:.0%} |")
    b = WEAK_BATCH
    lines += ["", f"## The same with a global batch that grows with R: {b} per rank", "",
              "| net | link | R | global batch | compute | allreduce | efficiency |",
              "|---|---|---|---|---|---|---|"]
    for name, times in compute.items():
        for link, bandwidth, latency in LINKS:
            for r in RANKS:
                comm = ring_seconds(r, sums[name]["bytes"], bandwidth, latency)
                lines.append(f"| {name} | {link} | {r} | {b * r} | {times[b] * 1e3:.1f} ms | "
                             f"{comm * 1e3:.2f} ms | {times[b] / (times[b] + comm):.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
