"""R1's training step with this round's levers on and off, alternating in one process.

    .venv/bin/python scripts/r1_step_ab.py [--batches 1,8,128] [--rounds 9] [--workers 2]
    .venv/bin/python scripts/r1_step_ab.py --parts [--rounds 9]

The levers (docs/benchmarks.md, "R1 training: round 5"), each switched in this process:
    light   `ops.compiled_step`'s kernels: the optimiser's update in one pass, the FC's outer
            product at batch 1, the softmax loss (off: their NumPy paths);
    filters F(4x4, 3x3)'s filter transforms of R1's 64-channel layers on the calling thread
            (off: `winograd_f44.FILTERS_SHARED_FROM` = 0, shared by the workers as before).
The step is `slidenet bench`'s (`SlidenetRunner.train_step`). Modes "all" (both on), "none"
(both off), and each lever off alone, in a rotating order each round; per mode the median
wall and CPU ms (all threads) of the round's steps, then the median and range over rounds.

--parts times the light parts alone instead, CPU µs on one worker (median of the rounds, 300
calls each), the NumPy way and the compiled way: R1's fc1 dW at batch 1 (the broadcast
multiply, `compiled_step.outer`), the update of fc1's W (`p -= lr * g`, `compiled_step.sgd`)
and of all R1's parameters (the bench's old loop, `optim.SGD.step` with the kernels off and
on), fc1's backward at batch 1 with and without the copy into the gradient, the softmax loss.
"""
import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from slidenet.bench import NETS
from slidenet.bench.machine import OtherLoad
from slidenet.bench.runners import LEARNING_RATE, SlidenetRunner
from slidenet.ops import compiled_step, fc, losses, runtime
from slidenet.ops.conv import winograd_f44

KERNELS = compiled_step.kernels
SHARED_FROM = winograd_f44.FILTERS_SHARED_FROM
MODES = {"all": (True, True), "no light": (False, True), "no filters": (True, False),
         "none": (False, False)}


def switch(light, filters):
    compiled_step.kernels = KERNELS if light else (lambda *arrays: None)
    winograd_f44.FILTERS_SHARED_FROM = SHARED_FROM if filters else 0


def cpu_us(fn, rounds, calls=300):
    """Median over rounds of fn()'s CPU microseconds (a round: `calls` calls)."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            fn()
        times.append((time.process_time() - start) / calls * 1e6)
    return statistics.median(times)


def parts(rounds):
    """The light parts alone (--parts), NumPy against compiled."""
    runner = SlidenetRunner(NETS["r1"], 1, 1)
    net = runner.net
    rng = np.random.default_rng(0)
    w, b = net.params["fc1.W"], net.params["fc1.b"]
    x = np.maximum(rng.standard_normal((1, 8, 8, 64), dtype=np.float32), 0)
    d = rng.standard_normal((1, w.shape[1]), dtype=np.float32)
    grad = np.empty_like(w)
    g = rng.standard_normal(w.shape, dtype=np.float32) * 1e-3
    scores = {n: rng.standard_normal((n, 10)).astype(np.float32) for n in (1, 8)}
    labels = {n: rng.integers(0, 10, n) for n in (1, 8)}
    fast = KERNELS(w)
    lr = np.float32(LEARNING_RATE)

    def old_update():
        for key, p in net.params.items():
            p -= LEARNING_RATE * net.grads[key]

    def fc_backward(into):
        if into:
            fc.fc_backward(d, cache, True, relu=True, dw=grad)
        else:
            np.copyto(grad, fc.fc_backward(d, cache, True, relu=True)[1])

    rows = []
    with runtime.workers(1), threadpool_limits(1, "blas"):
        _, cache = fc.fc_forward(x, w, b, relu=True)
        rows.append(("fc1 dW at batch 1: broadcast multiply / compiled outer",
                     cpu_us(lambda: np.multiply(x.reshape(-1)[:, None], d, out=grad), rounds),
                     cpu_us(lambda: fast.outer(x.reshape(-1), d[0], grad), rounds)))
        rows.append(("update of fc1's W: p -= lr * g / compiled sgd",
                     cpu_us(lambda: w.__isub__(LEARNING_RATE * g), rounds),
                     cpu_us(lambda: fast.sgd(w.reshape(-1), g.reshape(-1), lr, lr * 0),
                            rounds)))
        rows.append(("update of all R1's parameters: the bench's old loop / optim.SGD",
                     cpu_us(old_update, rounds, 100),
                     cpu_us(lambda: runner.opt.step(net.grads, LEARNING_RATE), rounds, 100)))
        for label, into in (("fresh dW copied into the gradient", False),
                            ("dW written into the gradient", True)):
            switch(False, True)
            before = cpu_us(lambda: fc_backward(into), rounds)
            switch(True, True)
            rows.append((f"fc1 backward at batch 1, {label}: NumPy / compiled", before,
                         cpu_us(lambda: fc_backward(into), rounds)))
        switch(False, True)
        before = cpu_us(lambda: runner.opt.step(net.grads, LEARNING_RATE), rounds, 100)
        switch(True, True)
        rows.append(("optim.SGD.step, all R1's parameters: kernels off / on", before,
                     cpu_us(lambda: runner.opt.step(net.grads, LEARNING_RATE), rounds, 100)))
        for n in (1, 8):
            switch(False, True)
            before = cpu_us(lambda: losses.softmax_loss(scores[n], labels[n]), rounds)
            switch(True, True)
            rows.append((f"softmax loss, batch {n}: NumPy / compiled", before,
                         cpu_us(lambda: losses.softmax_loss(scores[n], labels[n]), rounds)))
    for label, before, after in rows:
        print(f"  {label:78s} {before:8.1f} {after:8.1f} us")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8,128", help="training batches (default 1,8,128)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds (default 9)")
    parser.add_argument("--workers", type=int, default=2, help="kernel worker threads (default 2)")
    parser.add_argument("--parts", action="store_true", help="time the light parts alone")
    args = parser.parse_args()
    if args.parts:
        parts(args.rounds)
        return
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
