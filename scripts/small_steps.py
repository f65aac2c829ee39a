"""Small batches, step by step, against PyTorch and onnxruntime: where slidenet loses.

    .venv/bin/python scripts/small_steps.py --net r1 --batch 8 [--threads 2] [--rounds 7]
    .venv/bin/python scripts/small_steps.py --vgg 224 --batch 8 --no-train --ort-profile

Each round times, alternating: slidenet's training step (each fused step's forward and
backward, as `slidenet bench` times them) and PyTorch's; slidenet's prepared net (each step)
and onnxruntime's session. Prints medians over the rounds, in ms, with the fastest and slowest
round. --ort-profile adds onnxruntime's own per-node times (SessionOptions.enable_profiling),
summed by op over its runs. --threads 0 calls slidenet bare (its default workers).
"""
import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import nullcontext

import numpy as np

from slidenet.bench import R1, runners_for, Settings
from slidenet.bench.runners import OnnxRunner, onnxruntime_module
from slidenet.bench.scaling import VGG
from slidenet.ops import runtime
from slidenet.ops.runtime import blas_for_workers


def timed(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def ort_profile(sn, threads, calls):
    ort = onnxruntime_module()
    from slidenet.interop.onnx_export import to_bytes
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(to_bytes(sn.net, sn.normalizer), options,
                                   providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(["scores"], {"pixels": sn.pixels})
    for _ in range(calls):
        session.run(["scores"], {"pixels": sn.pixels})
    path = session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    per_node = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["name"][:-len("_kernel_time")], e["args"].get("op_name"))].append(e["dur"])
    print(f"onnxruntime per node (µs, median of its last {calls} runs):")
    for (name, op), durs in per_node.items():
        print(f"  {name:<40} {op:<12} {statistics.median(durs[-calls:]):9.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", default="r1")
    parser.add_argument("--vgg", type=int, help="the VGG-style net of --scaling at this size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=0, help="calls per round (0: by size)")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-infer", action="store_true")
    parser.add_argument("--ort-profile", action="store_true")
    args = parser.parse_args()
    pattern = VGG.format(s=args.vgg) if args.vgg else R1
    settings = Settings(threads=args.threads, rounds=args.rounds)
    threads = settings.thread_count()
    trainers, inferers, contexts = runners_for(pattern, settings, args.batch, args.batch)
    sn = trainers[0]
    ctx = contexts["slidenet"]
    calls = args.calls or max(1, int(64 // args.batch * (32 / (args.vgg or 32)) ** 2))
    names = [s.name for s in sn.net.steps]
    fwd, bwd, inf = defaultdict(list), defaultdict(list), defaultdict(list)
    whole = defaultdict(list)
    with ctx():
        sn.train_step(); sn.infer()
    for r in inferers[1:]:
        r.infer()
        if hasattr(r, "train_step"):
            r.train_step()
    for _ in range(args.rounds):
        if not args.no_train:
            with ctx(), blas_for_workers():
                times = {n: [0.0, 0.0] for n in names}
                for _ in range(calls):
                    sn.step_times(times)
                for n in names:
                    fwd[n].append(times[n][0] / calls)
                    bwd[n].append(times[n][1] / calls)
            with ctx():
                whole["slidenet train"].append(timed(sn.train_step, calls))
            for r in trainers[1:]:
                whole[f"{r.name} train"].append(timed(r.train_step, calls))
        if not args.no_infer:
            with ctx(), blas_for_workers():
                x = sn.normalizer.normalize(sn.pixels)
                for step, run in sn.plan.steps:
                    given = x
                    inf[step.name].append(timed(lambda: run(given), calls))
                    x = run(x)
            with ctx():
                whole["slidenet infer"].append(timed(sn.infer, calls))
            for r in inferers[1:]:
                whole[f"{r.name} infer"].append(timed(r.infer, calls))
    ms = lambda v: f"{statistics.median(v) * 1e3:8.3f} ({min(v) * 1e3:.3f}-{max(v) * 1e3:.3f})"
    print(f"{'net ' + (f'vgg{args.vgg}' if args.vgg else 'r1')} batch {args.batch}, threads "
          f"{threads}{' bare' if not args.threads else ''}, {args.rounds} rounds x {calls} calls; "
          f"load avg {os.getloadavg()[0]:.1f}; ms median (fastest-slowest)")
    for n in names:
        cells = []
        if n in fwd:
            cells += [f"fwd {ms(fwd[n])}", f"bwd {ms(bwd[n])}"]
        if n in inf:
            cells.append(f"infer {ms(inf[n])}")
        print(f"  {n:<24} " + "  ".join(cells))
    if not args.no_train:
        print(f"  {'sum of steps':<24} fwd {sum(statistics.median(fwd[n]) for n in names) * 1e3:8.3f}"
              f"  bwd {sum(statistics.median(bwd[n]) for n in names) * 1e3:8.3f}")
    if not args.no_infer:
        print(f"  {'sum of steps':<24} infer {sum(statistics.median(inf[n]) for n in names) * 1e3:8.3f}")
    base = {k.split()[1]: statistics.median(v) for k, v in whole.items() if k.startswith("slidenet")}
    for k, v in whole.items():
        mode = k.split()[1]
        print(f"  {k:<24} {ms(v)}   slidenet speed / its: {statistics.median(v) / base[mode]:.2f}x")
    if args.ort_profile and not args.no_infer:
        ort_profile(sn, threads, max(3, calls))


if __name__ == "__main__":
    main()
