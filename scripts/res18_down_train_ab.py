"""res18's three downsampling blocks in training, this tree's paths for their stride-2 CONVs
(`conv.winograd_s2_train`) and projections (`conv.picked`) on and off in one process: CPU and
wall ms of each block's forward + backward (batch 64, 2 workers x 1 BLAS thread), rounds
alternating which goes first; docs/benchmarks.md's "res18 training: the downsampling blocks".

    .venv/bin/python scripts/res18_down_train_ab.py [--rounds 12] [--step | --layers]

"off" is main's path: `pad_sides`, im2col, `unpad_sides`. `--step`: whole training steps
(`SlidenetRunner.train_step`, as `slidenet bench`) instead of the blocks, 8 a round.
`--layers`: the CONVs alone, each of res18's three stride-2 3x3 CONVs (forward; backward with
dx, a residual skip and dw) and projections (forward and backward), 5 calls a round.
"""
import argparse
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from slidenet import Net
from slidenet.bench import RES18
from slidenet.bench.runners import SlidenetRunner
from slidenet.ops import runtime
from slidenet.ops import conv_backward, conv_forward
from slidenet.ops.conv import picked, winograd_s2_train
from slidenet.ops.sides import pad_sides, unpad_sides

TAKES = winograd_s2_train.takes


def switch(layers, on):
    """This tree's paths on (as built) or off (main's) for every layer in `layers`."""
    winograd_s2_train.takes = TAKES if on else (lambda *args: False)
    for layer, picks in layers:
        layer.picks = picks and on


def timed(fn, calls):
    """Median CPU and wall ms of fn() over `calls` calls."""
    cpu, wall = [], []
    for _ in range(calls):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(cpu), statistics.median(wall)


def layer_cases():
    """{(name, "off" or "on"): fn} for each CONV alone, batch 64, ReLU-like inputs."""
    rng = np.random.default_rng(0)
    cases = {}
    for hw, d in ((32, 16), (16, 32), (8, 64)):
        k, ho = 2 * d, hw // 2
        x = np.maximum(rng.standard_normal((64, hw, hw, d)), 0).astype(np.float32)
        w3 = (rng.standard_normal((3, 3, d, k)) * np.sqrt(2 / (9 * d))).astype(np.float32)
        w1 = (rng.standard_normal((1, 1, d, k)) * np.sqrt(2 / d)).astype(np.float32)
        b = np.zeros(k, np.float32)
        dout = rng.standard_normal((64, ho, ho, k)).astype(np.float32)
        skip = rng.standard_normal(x.shape).astype(np.float32)
        name = f"{hw}x{hw}x{d} -> {ho}x{ho}x{k}"

        def s2_off(x=x, w3=w3, b=b, dout=dout, skip=skip):
            cache = conv_forward(pad_sides(x, (1, 1), (0, 0)), w3, b, (2, 2))[1]
            unpad_sides(conv_backward(dout, cache)[0], (1, 1), (0, 0), x.shape, skip)

        def s2_on(x=x, w3=w3, b=b, dout=dout, skip=skip):
            cache = winograd_s2_train.forward(x, w3, b, (1, 1), (0, 0))[1]
            winograd_s2_train.backward(dout, cache, skip=skip)

        def proj_off(x=x, w1=w1, b=b, dout=dout):
            cache = conv_forward(pad_sides(x, (0, 0), (-1, -1)), w1, b, (2, 2))[1]
            unpad_sides(conv_backward(dout, cache)[0], (0, 0), (-1, -1), x.shape)

        def proj_on(x=x, w1=w1, b=b, dout=dout):
            cache = conv_forward(picked.pick(x, (2, 2), (-1, -1)), w1, b)[1]
            picked.put_back(conv_backward(dout, cache)[0], x.shape, (2, 2), (-1, -1))
        cases[f"3x3 s2 {name}", "off"], cases[f"3x3 s2 {name}", "on"] = s2_off, s2_on
        cases[f"1x1 s2 {name}", "off"], cases[f"1x1 s2 {name}", "on"] = proj_off, proj_on
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--step", action="store_true", help="whole training steps")
    parser.add_argument("--layers", action="store_true", help="the CONVs alone")
    args = parser.parse_args()
    if args.layers:
        print(f"load average {os.getloadavg()[0]:.2f}")
        with runtime.workers(2), threadpool_limits(1, "blas"):
            cases = layer_cases()
            times = {key: [] for key in cases}
            for r in range(args.rounds):
                for side in (("on", "off") if r % 2 == 0 else ("off", "on")):
                    for (name, s), fn in cases.items():
                        if s == side:
                            fn()
                            times[name, side].append(timed(fn, 5)[0])
        print(f"load average {os.getloadavg()[0]:.2f}")
        for name in dict.fromkeys(name for name, _ in cases):
            print(f"{name}: fwd + bwd CPU ms, " + "; ".join(
                f"{side} median {statistics.median(times[name, side]):.2f} "
                f"(min {min(times[name, side]):.2f})" for side in ("off", "on")))
        return
    print(f"load average {os.getloadavg()[0]:.2f}")
    with runtime.workers(2), threadpool_limits(1, "blas"):
        if args.step:
            runner = SlidenetRunner(RES18, 64, 256)
            layers = [(layer, getattr(layer, "picks", False))
                      for layer in runner.net.every_layer()]
            cases = {"steps": runner.train_step}
            calls = 8
        else:
            net = Net.from_pattern(RES18, seed=0)
            layers = [(layer, getattr(layer, "picks", False)) for layer in net.every_layer()]
            x = np.random.default_rng(0).standard_normal((64, 32, 32, 3)).astype(np.float32)
            cases, out = {}, x
            for step in net.steps:
                if step.name.startswith("add") and any(p for layer, p in layers
                                                       if layer in step.parts[0].children):
                    def block(step=step, before=out):
                        y = step.forward(before, True)
                        step.backward(np.ones_like(y))
                    cases[step.name] = block
                out = step.forward(out, True)
            calls = 5
        times = {(name, side): [] for name in cases for side in ("on", "off")}
        for r in range(args.rounds):
            for side in (("on", "off") if r % 2 == 0 else ("off", "on")):
                switch(layers, side == "on")
                for name, fn in cases.items():
                    fn()
                    times[name, side].append(timed(fn, calls))
        switch(layers, True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    for name in cases:
        line = []
        for side in ("off", "on"):
            runs = times[name, side]
            cpu, wall = [c for c, _ in runs], [w for _, w in runs]
            line.append(f"{side}: CPU ms median {statistics.median(cpu):.2f} (min {min(cpu):.2f}), "
                        f"wall median {statistics.median(wall):.2f} (min {min(wall):.2f})")
        print(f"{name}: " + "; ".join(line))


if __name__ == "__main__":
    main()
