"""R1's small levers of docs/benchmarks.md ("R1: small levers"), each measured against what it
replaced in one process, alternating round by round, in CPU time (what a shared machine's other
work inflates least).

    .venv/bin/python scripts/r1_ab.py [--rounds 9] [--batches 1,8,128] [--latency-calls 300]
                                      [--workers 1]

"before" puts back, in this process, what this tree replaced: the 36 x 9 float64 GEMM by GG of
F(4x4, 3x3)'s filter transforms (`winograd_f44.prepare_filters`, `filter_grad`), the general
compiled max pool (`compiled.max_pool`, `max_pool_backward`) for 2x2 windows at stride 2,
fc_forward's GEMM for inference of a few images (`ops.fc_infer`), and the normaliser with its
(scale, shift) and their copies along a row computed per call. "after" is this tree.
Prints, per batch, the median CPU ms of a training step (one worker, one BLAS thread: the
arithmetic without hand-overs; --workers 2: two, and the wall ms too) both ways and
after / before; and a one-image prediction
(pixels in, `Net.prepare()`, as `slidenet bench` times batch 1) both ways, in µs.
"""
import argparse
import contextlib
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from slidenet import ops
from slidenet.bench import R1
from slidenet.bench.runners import SlidenetRunner
from slidenet.data import Normalizer
from slidenet.ops import compiled, runtime
from slidenet.ops.conv import dispatch, winograd_f44


def old_prepare_filters(w, dtype=None):
    d, k = w.shape[2:]
    u = winograd_f44.GG @ w.astype(np.float64).reshape(9, d * k)
    return np.ascontiguousarray(u.reshape(36, d, k), dtype=dtype or w.dtype)


def old_filter_grad(du):
    dw = winograd_f44.GG.T @ du.astype(np.float64).reshape(36, -1)
    return dw.reshape(3, 3, *du.shape[1:]).astype(du.dtype)


def old_normalize(self, x, dtype=np.float32):
    mean, std = self.mean.astype(np.float64), self.std.astype(np.float64)
    scale, shift = (1 / (255 * std)).astype(dtype), (-mean / std).astype(dtype)
    if x.ndim < 2 or x.size == 0:
        return x.astype(dtype) * scale + shift
    width = x.shape[-2]
    out = np.multiply(x.reshape(-1, width * x.shape[-1]), np.tile(scale, width), dtype=dtype)
    out += np.tile(shift, width)
    return out.reshape(x.shape)


@contextlib.contextmanager
def before():
    """This process runs the replaced code until the context ends."""
    fast = compiled.kernels()
    saved = (winograd_f44.prepare_filters, winograd_f44.filter_grad,
             dispatch.PREPARE["winograd2d"], fast.max_pool22, fast.max_pool22_backward,
             ops.fc_infer, Normalizer.normalize)
    winograd_f44.prepare_filters = dispatch.PREPARE["winograd2d"] = old_prepare_filters
    winograd_f44.filter_grad = old_filter_grad
    fast.max_pool22 = lambda x, out: fast.max_pool(x, 2, 2, 2, 2, out)
    fast.max_pool22_backward = lambda x, out, g, mask, dx: fast.max_pool_backward(
        x, out, g, 2, 2, 2, 2, mask, True, dx)
    ops.fc_infer = lambda x, w, b, relu=False: ops.fc_forward(x, w, b, relu)[0]
    Normalizer.normalize = old_normalize
    try:
        yield
    finally:
        (winograd_f44.prepare_filters, winograd_f44.filter_grad, dispatch.PREPARE["winograd2d"],
         fast.max_pool22, fast.max_pool22_backward, ops.fc_infer, Normalizer.normalize) = saved


def cpu_ms(fn, calls):
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batches", default="1,8,128")
    parser.add_argument("--latency-calls", type=int, default=300)
    parser.add_argument("--workers", type=int, default=1, help="kernel workers (default 1)")
    args = parser.parse_args()
    modes = (("before", before), ("after", contextlib.nullcontext))
    with runtime.workers(args.workers), threadpool_limits(1, "blas"):
        for batch in [int(b) for b in args.batches.split(",")]:
            runner = SlidenetRunner(R1, batch, 1)
            calls = max(2, 256 // batch)
            times = {name: [] for name, _ in modes}
            walls = {name: [] for name, _ in modes}
            for _ in range(args.rounds):
                for name, mode in modes:
                    with mode():
                        runner.train_step()
                        start = time.perf_counter()
                        times[name].append(cpu_ms(runner.train_step, calls))
                        walls[name].append((time.perf_counter() - start) / calls * 1e3)
            old, new = (statistics.median(times[name]) for name, _ in modes)
            wall = "" if args.workers == 1 else (
                f"; wall {statistics.median(walls['before']):.3f} / "
                f"{statistics.median(walls['after']):.3f} ms")
            print(f"training step, batch {batch}: before {old:.3f} ms "
                  f"({min(times['before']):.3f}-{max(times['before']):.3f}), after {new:.3f} ms "
                  f"({min(times['after']):.3f}-{max(times['after']):.3f}): after / before "
                  f"{new / old:.3f}{wall}")
        runner = SlidenetRunner(R1, 1, 1)
        times = {name: [] for name, _ in modes}
        for _ in range(args.rounds):
            for name, mode in modes:
                with mode():
                    runner.infer_one()
                    times[name].append(cpu_ms(runner.infer_one, args.latency_calls) * 1e3)
        old, new = (statistics.median(times[name]) for name, _ in modes)
        print(f"prediction of one image: before {old:.1f} µs ({min(times['before']):.1f}-"
              f"{max(times['before']):.1f}), after {new:.1f} µs ({min(times['after']):.1f}-"
              f"{max(times['after']):.1f}): after / before {new / old:.3f}")


if __name__ == "__main__":
    main()
