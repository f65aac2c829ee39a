"""res18 inference through the Python API against onnxruntime, alternating in one process:
docs/benchmarks.md's "res18 inference (issue #20 item 5)".

    .venv/bin/python scripts/res18_infer.py [--batches 1,8,64,256] [--rounds 7] [--threads 2]
    .venv/bin/python scripts/res18_infer.py --net r1        # the chain net, for regressions
    .venv/bin/python scripts/res18_infer.py --work          # CPU ms a forward, one worker
    .venv/bin/python scripts/res18_infer.py --work --workers 2  # CPU and wall ms, 2 workers

The net (`slidenet bench --net res18`, or R1) gets random weights and random BATCHNORM
statistics, as after training, and is saved as a model file and exported with `slidenet
export`. Each round times, for each batch size, `Model.predict` on uint8 images (as README
calls it: the conversion to floats and the normalisation are timed), the prepared net alone
(`net.prepare().forward` on normalised floats) and onnxruntime on the exported model (float
pixels in; 2 intra-op threads, spinning off, as `slidenet bench` runs it), one after the other.
Prints each round's images/s and the ratios, then the median ratio and its range, and how many
cores other processes kept busy meanwhile. `--work` instead prints the CPU time of one prepared
forward on one worker thread (`runtime.workers(1)`, median of 5), which a busy neighbour moves
less than wall time; `--work --workers 2` the CPU time of all threads and the wall time with
two workers (which the depth-first forward changes and one worker does not show). Runs
unchanged on an older tree (PYTHONPATH=/work/main), which is how it compares two branches.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import slidenet
from slidenet.bench import R1, RES18
from slidenet.bench.machine import OtherLoad
from slidenet.data import Normalizer
from slidenet.model import save
from slidenet.net import Net
from slidenet.ops import runtime


def trained_looking(pattern, seed=0):
    """The net with random weights, gamma, beta and running statistics."""
    net = Net.from_pattern(pattern, seed=seed)
    rng = np.random.default_rng(seed)
    for name, p in net.params.items():
        p[...] = rng.normal(1.0 if name.endswith("gamma") else 0.0,
                            0.3 if name.endswith(("gamma", "beta")) else 0.05, p.shape)
    for name, b in net.buffers.items():
        b[...] = (rng.uniform(0.5, 2, b.shape) if name.endswith("var")
                  else rng.normal(0, 0.3, b.shape))
    return net


def switched_forwards(batch, workers, rounds, calls, names, switch):
    """res18's prepared forward of `batch` images under two settings, alternating round by
    round: switch(True) gives names[0]'s, switch(False) names[1]'s. Prints how far the scores
    differ and each setting's CPU and wall ms a forward (min and median of the rounds); leaves
    names[0]'s setting on."""
    plan = trained_looking(RES18).prepare()
    x = np.random.default_rng(1).standard_normal((batch, 32, 32, 3)).astype(np.float32)
    times = {name: ([], []) for name in names}
    with runtime.workers(workers):
        scores = {}
        for name in names:
            switch(name == names[0])
            scores[name] = plan.forward(x).copy()
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                switch(name == names[0])
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(calls):
                    plan.forward(x)
                times[name][0].append((time.process_time() - cpu) / calls * 1e3)
                times[name][1].append((time.perf_counter() - wall) / calls * 1e3)
    switch(True)
    first, second = (scores[name] for name in names)
    diff = np.abs(first - second).max() / np.abs(second).max()
    print(f"batch {batch}, {workers} worker(s), {rounds} rounds of {calls}; scores agree to "
          f"{diff:.1e} of the largest")
    for name, (cpu, wall) in times.items():
        print(f"{name}: CPU ms {min(cpu):.2f} (median {statistics.median(cpu):.2f}), "
              f"wall ms {min(wall):.2f} (median {statistics.median(wall):.2f})")


def per_second(fn, images, calls):
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return images * calls / (time.perf_counter() - start)


def work(net, batches, workers=1):
    """Print the CPU milliseconds of one prepared forward per batch size, on `workers` worker
    threads (all threads' CPU time; with more than one, the wall milliseconds too)."""
    from slidenet.ops import runtime
    plan, rng, cells = net.prepare(), np.random.default_rng(1), []
    with runtime.workers(workers):
        for batch in [int(b) for b in batches.split(",")]:
            x = rng.standard_normal((batch, *net.input_shape)).astype(np.float32)
            plan.forward(x)
            calls, times, walls = max(2, 256 // batch), [], []
            for _ in range(5):
                start, wall = time.process_time(), time.perf_counter()
                for _ in range(calls):
                    plan.forward(x)
                times.append((time.process_time() - start) / calls * 1e3)
                walls.append((time.perf_counter() - wall) / calls * 1e3)
            cells.append(f"batch {batch}: {statistics.median(times):.2f}" + (
                f" (wall {statistics.median(walls):.2f})" if workers > 1 else ""))
    who = "one worker" if workers == 1 else f"{workers} workers"
    print(f"{slidenet.__file__}: CPU ms a forward, {who}: " + ", ".join(cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", choices=("res18", "r1"), default="res18")
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=512, help="images per timing (about)")
    parser.add_argument("--work", action="store_true", help="CPU ms a forward, one worker")
    parser.add_argument("--workers", type=int, default=1,
                        help="with --work: worker threads (CPU ms of all, and wall ms)")
    args = parser.parse_args()
    if args.work:
        return work(trained_looking(RES18 if args.net == "res18" else R1), args.batches,
                    args.workers)
    import onnxruntime as ort
    net = trained_looking(RES18 if args.net == "res18" else R1)
    folder = tempfile.mkdtemp()
    model_path, onnx_path = os.path.join(folder, "m.npz"), os.path.join(folder, "m.onnx")
    d = net.input_shape[2]
    save(model_path, net, Normalizer(np.full(d, 0.47, np.float32), np.full(d, 0.25, np.float32)),
         [str(i) for i in range(net.num_outputs)])
    slidenet_cmd = os.path.join(os.path.dirname(sys.executable), "slidenet")
    subprocess.run([slidenet_cmd, "export", model_path, "--out", onnx_path], check=True,
                   stdout=subprocess.DEVNULL)
    model = slidenet.load(model_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    plan = model.net.prepare()
    rng = np.random.default_rng(1)
    print(f"{args.net}, slidenet {slidenet.__file__}, onnxruntime {ort.__version__}, "
          f"{args.threads} threads; env OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    for batch in [int(b) for b in args.batches.split(",")]:
        pixels = rng.integers(0, 256, (batch, *net.input_shape)).astype(np.uint8)
        floats = pixels.astype(np.float32)
        normalised = model.normalizer.normalize(floats)
        got = model.scores(pixels)
        want = session.run(["scores"], {"pixels": floats})[0]
        assert np.allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max()), "scores differ"
        calls = max(2, args.images // batch)
        ratios, plan_ratios, rows = [], [], []
        with OtherLoad() as load:
            for _ in range(args.rounds):
                api = per_second(lambda: model.predict(pixels, batch_size=batch), batch, calls)
                bare = per_second(lambda: plan.forward(normalised), batch, calls)
                onnx = per_second(lambda: session.run(["scores"], {"pixels": floats}), batch, calls)
                ratios.append(api / onnx)
                plan_ratios.append(bare / onnx)
                rows.append((api, bare, onnx))
        print(f"batch {batch}: " + "  ".join(f"{a:,.0f}/{p:,.0f}/{o:,.0f}" for a, p, o in rows)
              + "  (predict / prepared / onnxruntime, images/s per round)")
        print(f"  predict vs onnxruntime {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}); prepared vs onnxruntime "
              f"{statistics.median(plan_ratios):.2f}x "
              f"({min(plan_ratios):.2f}-{max(plan_ratios):.2f}); "
              f"medians {statistics.median(r[0] for r in rows):,.0f} / "
              f"{statistics.median(r[1] for r in rows):,.0f} / "
              f"{statistics.median(r[2] for r in rows):,.0f} images/s; other load "
              f"{load.cores:.2f} cores")


if __name__ == "__main__":
    main()
