"""Convolution algorithms against each other, alternating in one process: docs/benchmarks.md's
"F(4, 3)" tables.

    .venv/bin/python scripts/conv_speed.py net [--rounds 9] [--algorithms im2col,winograd,winograd4]
    .venv/bin/python scripts/conv_speed.py sweep [--rounds 5]
    .venv/bin/python scripts/conv_speed.py onnx [--rounds 9] [--algorithms auto-f23,auto]

`net`: R1 (docs/benchmarks.md), a training step at batch 128 and inference at batch 256, with
every CONV on one algorithm (or "auto", or "auto-f23": auto as before F(4, 3)); each round runs every algorithm once, in a rotated order, and each
layer's forward and backward time is taken inside the step, as `slidenet bench` does. Prints the
median over the rounds and the spread (fastest - slowest round).

`sweep`: one 3x3 convolution at stride 1, pad 1 followed by a ReLU (forward + backward at
batch 128, forward alone at batch 256) for maps of 4 to 32 pixels a side and 8 to 128 channels
in and out, maps of 1 to 7 pixels at 64 channels, and first layers of 1 and 3 channels (their
backward skips dx, as a net's first layer does); each algorithm alternating; prints the ms and
which one was fastest in its fastest round (the least disturbed by other processes).

`onnx`: R1's inference at batch 256 (pixels 0..255 in, normalised inside, as `slidenet export`
writes it) in slidenet with each algorithm and in onnxruntime on the exported graph (2 intra-op
threads), alternating; needs the onnx extra.

All run on 2 kernel worker threads, each calling a one-thread BLAS (`--threads`), and print the
cores other processes kept busy meanwhile: the machine may be shared.
"""
import argparse
import time
from collections import defaultdict

import numpy as np

from slidenet.bench import NETS
from slidenet.bench.machine import OtherLoad
from slidenet.bench.runners import SlidenetRunner
from slidenet.ops import compiled, conv, runtime
from slidenet.ops.conv import winograd_f43

PAYS = winograd_f43.pays
QUIET = 0.1             # cores other processes may keep busy during a round that counts (net)


def use(algorithm):
    """Run every convolution on `algorithm`: a pair's name, "auto", or "auto-f23" (auto as it was
    before F(4, 3): F(2, 3) wherever auto takes Winograd)."""
    winograd_f43.pays = (lambda out_h: False) if algorithm == "auto-f23" else PAYS
    conv.set_algorithm("auto" if algorithm == "auto-f23" else algorithm)


def rotated(items, i):
    return items[i % len(items):] + items[:i % len(items)]


def spread(values):
    return f"{np.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def bench_net(algorithms, rounds, steps):
    runner = SlidenetRunner(NETS["r1"], 128, 256)
    names = [s.name for s in runner.net.steps]
    layers = {a: defaultdict(list) for a in algorithms}       # name -> [(forward, backward) per round]
    whole = {a: {"train": [], "infer": []} for a in algorithms}
    loads = []                                                  # other processes' cores, per round
    for algorithm in algorithms:                               # warm up: compile, fill buffers
        use(algorithm)
        runner.train_step()
        runner.infer()
    for r in range(rounds):
        with OtherLoad() as load:
            for algorithm in rotated(algorithms, r):
                use(algorithm)
                times = defaultdict(lambda: [0.0, 0.0])
                for _ in range(steps):
                    runner.step_times(times)
                for name in names:
                    layers[algorithm][name].append([t / steps * 1e3 for t in times[name]])
                for key, fn in (("train", runner.train_step), ("infer", runner.infer)):
                    start = time.perf_counter()
                    for _ in range(steps):
                        fn()
                    whole[algorithm][key].append((time.perf_counter() - start) / steps * 1e3)
        loads.append(load.cores or 0.0)
    use("auto")
    # Rounds during which other processes kept more than QUIET cores busy measure the neighbours
    # as much as the kernels: leave them out, unless fewer than 3 rounds were quiet.
    kept = [r for r, cores in enumerate(loads) if cores < QUIET]
    if len(kept) < 3:
        kept = list(range(rounds))
    print(f"R1, ms: median of {len(kept)} of {rounds} rounds x {steps} steps (fastest-slowest "
          f"round); rounds kept: other load below {QUIET} cores (all, if fewer than 3 were); "
          f"other load per round: {', '.join(f'{c:.2f}' for c in loads)}\n")
    print("| layer | " + " | ".join(f"{a} forward | {a} backward" for a in algorithms) + " |")
    print("|---|" + "---:|" * (2 * len(algorithms)))
    for name in names:
        cells = []
        for algorithm in algorithms:
            values = np.array(layers[algorithm][name])[kept]
            cells += [spread(list(values[:, 0])), spread(list(values[:, 1]))]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for key, what in (("train", "training step, batch 128"), ("infer", "inference, batch 256")):
        print(f"{what}: " + "; ".join(f"{a} {spread([whole[a][key][r] for r in kept])} ms"
                                      for a in algorithms))


def bench_sweep(algorithms, rounds, clock, cases=None):
    kind = "CPU ms (all threads)" if clock is time.process_time else "ms"
    print(f"One 3x3 CONV + ReLU, stride 1, pad 1, {kind}: median of {rounds} rounds "
          "(fastest-slowest)\n")
    print("| map | D -> K | " + " | ".join(f"{a} train" for a in algorithms) + " | "
          + " | ".join(f"{a} infer" for a in algorithms) + " | fastest train | fastest infer |")
    print("|---|---|" + "---:|" * (2 * len(algorithms)) + "---|---|")
    cases = cases or [(28, 1, 32), (32, 3, 32)] + \
        [(size, depth, depth) for size in (32, 16, 8, 4) for depth in (8, 16, 32, 64, 128)] + \
        [(size, 64, 64) for size in (7, 6, 5, 3, 2, 1)]
    for size, depth, filters in cases:
        spent = sweep_case(algorithms, rounds, size, depth, filters, clock)
        cells = [spread(spent[a]["train"]) for a in algorithms] + \
            [spread(spent[a]["infer"]) for a in algorithms]
        # The fastest round of each: what the work costs when nothing else got in its way.
        best = [min(algorithms, key=lambda a: min(spent[a][k])) for k in ("train", "infer")]
        print(f"| {size}x{size} | {depth} -> {filters} | " + " | ".join(cells)
              + f" | {best[0]} | {best[1]} |", flush=True)


def sweep_case(algorithms, rounds, size, depth, filters, clock):
    """{algorithm: {"train": [ms per round], "infer": [...]}} for one convolution."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, size, size, depth), dtype=np.float32)
    w = rng.standard_normal((3, 3, depth, filters), dtype=np.float32) * 0.1
    b = np.zeros(filters, np.float32)
    dout = rng.standard_normal((128, size, size, filters), dtype=np.float32)
    first = depth < 8                   # a first layer: its backward skips dx

    def train(a):
        _, cache = conv.conv_forward(x[:128], w, b, (1, 1), (1, 1), relu=True, algorithm=a)
        conv.conv_backward(dout, cache, need_dx=not first, relu=True)

    def infer(a):
        conv.conv_forward(x, w, b, (1, 1), (1, 1), relu=True, algorithm=a)
    repeat = max(1, 2 * 32 * 32 * 64 // (size * size * depth))     # small cases: several calls
    spent = {a: {"train": [], "infer": []} for a in algorithms}
    for a in algorithms:
        train(a)
        infer(a)
    for r in range(rounds):
        for a in rotated(algorithms, r):
            for key, fn in (("train", train), ("infer", infer)):
                start = clock()
                for _ in range(repeat):
                    fn(a)
                spent[a][key].append((clock() - start) / repeat * 1e3)
    return spent


def bench_onnx(algorithms, rounds, steps, threads):
    import onnxruntime as ort

    from slidenet.data import Normalizer
    from slidenet.interop.onnx_export import to_bytes
    from slidenet.net import Net
    net = Net.from_pattern(NETS["r1"], seed=0)
    normalizer = Normalizer(np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(to_bytes(net, normalizer), options,
                                   providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3)).astype(np.float32)

    def slidenet_infer():
        return net.forward(normalizer.normalize(pixels))

    def onnx_infer():
        return session.run(["scores"], {"pixels": pixels})[0]
    runs = {a: slidenet_infer for a in algorithms}
    runs["onnxruntime"] = onnx_infer
    spent = {name: [] for name in runs}
    for name in runs:                                           # warm up
        use("auto" if name == "onnxruntime" else name)
        runs[name]()
    np.testing.assert_allclose(onnx_infer(), slidenet_infer(), rtol=1e-3, atol=1e-3)
    for r in range(rounds):
        for name in rotated(list(runs), r):
            use("auto" if name == "onnxruntime" else name)
            start = time.perf_counter()
            for _ in range(steps):
                runs[name]()
            spent[name].append((time.perf_counter() - start) / steps * 1e3)
    use("auto")
    print(f"R1 inference, batch 256, ms: median of {rounds} rounds x {steps} batches "
          f"(fastest-slowest); onnxruntime {ort.__version__}, {threads} intra-op threads\n")
    ort_ms = float(np.median(spent["onnxruntime"]))
    for name, values in spent.items():
        print(f"{name:12s} {spread(values)} ms  {256 / np.median(values) * 1e3:7.0f} images/s  "
              f"{ort_ms / np.median(values):.2f}x onnxruntime")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["net", "sweep", "onnx"])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=3, help="steps per round (net)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--algorithms", default="im2col,winograd,winograd4")
    parser.add_argument("--cases", help="sweep: the convolutions, as SIDExDEPTHxFILTERS,... "
                                         "(default: the list in the module docstring)")
    parser.add_argument("--cpu", action="store_true",
                        help="sweep: CPU time of this process instead of wall time (steadier "
                             "when other processes share the cores; best with --threads 1)")
    args = parser.parse_args()
    algorithms = args.algorithms.split(",")
    print(f"{args.threads} kernel workers x 1 BLAS thread; compiled kernels: {compiled.status()}")
    with OtherLoad() as load, runtime.workers(args.threads):
        if args.what == "net":
            bench_net(algorithms, args.rounds, args.steps)
        elif args.what == "onnx":
            bench_onnx(algorithms, args.rounds, args.steps, args.threads)
        else:
            cases = args.cases and [tuple(map(int, c.split("x"))) for c in args.cases.split(",")]
            bench_sweep(algorithms, args.rounds, time.process_time if args.cpu else time.perf_counter,
                        cases)
    print(f"\nother processes kept {load.cores:.2f} cores busy meanwhile")


if __name__ == "__main__":
    main()
