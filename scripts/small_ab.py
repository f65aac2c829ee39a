"""Two changes of docs/benchmarks.md's "Small batches and large images", each measured against
what it replaced in one process, alternating round by round.

    .venv/bin/python scripts/small_ab.py fc --old OLD/slidenet/ops/fc.py [--rounds 7]
    .venv/bin/python scripts/small_ab.py bands [--size 224] [--rounds 5]
    .venv/bin/python scripts/small_ab.py pool [--size 32] [--batch 1] [--rounds 9]
    .venv/bin/python scripts/small_ab.py latency [--rounds 9] [--calls 300]

fc: R1's fc1 (4096 -> 256, ReLU) forward and backward at batch 1, 8 and 64, this tree's
`ops/fc.py` against another version of the file (e.g. main's, from a checkout or `git show
main:slidenet/ops/fc.py > old_fc.py`), microseconds. bands: the VGG-style net of `--scaling`
at batch 8, the prepared net with the Winograd bands and with whole images (chunk_bytes seen
by the Winograd forward made infinite), alternating with onnxruntime's session; ms per call.
pool: R1 (--size 32) or the VGG-style net (other sizes), the prepared net with CONV -> RELU ->
MAXPOOL pooled inside the F(4, 3) output and with the pool run after the CONV, alternating
with onnxruntime; ms per call and onnxruntime's time over each. latency: R1's prediction of
one image (pixels in, `Net.prepare()`) against onnxruntime's session, alternating round by
round; the ratio is onnxruntime's time over slidenet's, per round (with SLIDENET_PAIR=1 or auto,
after the helper thread is compiled and running).
"""
import argparse
import importlib.util
import statistics
import time

import numpy as np

from slidenet.ops import fc as new_fc
from slidenet.ops.runtime import blas_for_workers


def timed(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def fc(args):
    spec = importlib.util.spec_from_file_location("old_fc", args.old)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 256), dtype=np.float32)
    b = rng.standard_normal(256, dtype=np.float32)
    for n in (1, 8, 64):
        x = rng.standard_normal((n, 4096), dtype=np.float32)
        d = rng.standard_normal((n, 256), dtype=np.float32)
        res = {k: [] for k in ("old fwd", "new fwd", "old bwd", "new bwd")}
        calls = max(3, 15 // n * 10)
        with blas_for_workers():
            for _ in range(args.rounds):
                for name, mod in (("old", old), ("new", new_fc)):
                    res[name + " fwd"].append(timed(lambda: mod.fc_forward(x, w, b, relu=True), calls))
                    _, cache = mod.fc_forward(x, w, b, relu=True)
                    res[name + " bwd"].append(timed(lambda: mod.fc_backward(d, cache, relu=True), calls))
        print(f"batch {n}: " + "  ".join(f"{k} {statistics.median(v) * 1e6:.0f} µs "
                                         f"({min(v) * 1e6:.0f}-{max(v) * 1e6:.0f})"
                                         for k, v in res.items()))


def bands(args):
    from slidenet.bench import SlidenetRunner
    from slidenet.bench.runners import OnnxRunner
    from slidenet.bench.scaling import VGG
    from slidenet.ops.conv import winograd
    sn = SlidenetRunner(VGG.format(s=args.size), 8, 8)
    ort = OnnxRunner(sn, 2)
    real = winograd.chunk_bytes
    variants = {"bands": real, "whole images": lambda: float("inf")}
    sn.infer(), ort.infer()
    res = {}
    for _ in range(args.rounds):
        for name, chunk in variants.items():
            winograd.chunk_bytes = chunk
            res.setdefault(name, []).append(timed(sn.infer, 2))
        res.setdefault("onnxruntime", []).append(timed(ort.infer, 2))
    winograd.chunk_bytes = real
    theirs = statistics.median(res["onnxruntime"])
    for name, v in res.items():
        print(f"{name:<14} {statistics.median(v) * 1e3:8.2f} ms ({min(v) * 1e3:.2f}-"
              f"{max(v) * 1e3:.2f})  onnxruntime / it {theirs / statistics.median(v):.2f}x")


def pool(args):
    from slidenet.bench import R1, SlidenetRunner
    from slidenet.bench.runners import OnnxRunner
    from slidenet.bench.scaling import VGG
    from slidenet.layers.fusion import ConvReluMaxPool
    sn = SlidenetRunner(R1 if args.size == 32 else VGG.format(s=args.size), args.batch, args.batch)
    ort = OnnxRunner(sn, 2)
    fused = sn.plan

    def separate(step, run):
        if not isinstance(step, ConvReluMaxPool):
            return step, run
        conv, pooling = step.parts[0].prepare(relu=True), step.parts[2].prepare()
        return step, lambda v: pooling(conv(v))

    steps = {"pooled": fused.steps, "separate": [separate(*pair) for pair in fused.steps]}
    calls = max(1, 300 // args.batch // max(1, (args.size // 32) ** 2))
    res = {}
    for _ in range(2):
        sn.infer(), ort.infer()
    for _ in range(args.rounds):
        for name, chosen in steps.items():
            fused.steps = chosen
            res.setdefault(name, []).append(timed(sn.infer, calls))     # pixels in, as onnxruntime
        res.setdefault("onnxruntime", []).append(timed(ort.infer, calls))
    fused.steps = steps["pooled"]
    theirs = statistics.median(res["onnxruntime"])
    print(f"{'R1' if args.size == 32 else f'VGG {args.size}'} batch {args.batch}, {args.rounds} "
          f"rounds x {calls} calls:")
    for name, v in res.items():
        print(f"  {name:<12} {statistics.median(v) * 1e3:8.3f} ms ({min(v) * 1e3:.3f}-"
              f"{max(v) * 1e3:.3f})  onnxruntime / it {theirs / statistics.median(v):.2f}x")


def latency(args):
    from slidenet.bench import R1, SlidenetRunner
    from slidenet.bench.runners import OnnxRunner
    from slidenet.ops.conv import pair
    sn = SlidenetRunner(R1, 1, 1)
    ort = OnnxRunner(sn, 2)
    if pair.enabled():              # SLIDENET_PAIR=1 or auto: its helper compiled first
        pair.wait_ready(300)
    for _ in range(50):
        sn.infer_one(), ort.infer_one()
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(timed(sn.infer_one, args.calls))
        theirs.append(timed(ort.infer_one, args.calls))
    ratios = [t / o for o, t in zip(ours, theirs)]
    print(f"slidenet {statistics.median(ours) * 1e3:.3f} ms ({min(ours) * 1e3:.3f}-"
          f"{max(ours) * 1e3:.3f})  onnxruntime {statistics.median(theirs) * 1e3:.3f} ms "
          f"({min(theirs) * 1e3:.3f}-{max(theirs) * 1e3:.3f})  onnxruntime / slidenet "
          f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("fc")
    one.add_argument("--old", required=True, help="the other ops/fc.py")
    one.add_argument("--rounds", type=int, default=7)
    two = sub.add_parser("bands")
    two.add_argument("--size", type=int, default=224)
    two.add_argument("--rounds", type=int, default=5)
    three = sub.add_parser("pool")
    three.add_argument("--size", type=int, default=32)
    three.add_argument("--batch", type=int, default=1)
    three.add_argument("--rounds", type=int, default=9)
    four = sub.add_parser("latency")
    four.add_argument("--rounds", type=int, default=9)
    four.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    {"fc": fc, "bands": bands, "pool": pool, "latency": latency}[args.what](args)


if __name__ == "__main__":
    main()
