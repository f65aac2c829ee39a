"""Training steps with `ops.vpass`'s passes on and off, alternating in one process.

    .venv/bin/python scripts/vpass_train_ab.py [--net res18] [--batch 64] [--rounds 6]
        [--steps 4] [--layer N,H,W,D,K]

One SlidenetRunner (as `scripts/step_loop.py`'s, 2 workers, one BLAS thread each); after two
warm-up steps each way, --rounds rounds of --steps training steps with the passes on, then off
(the numba passes, as SLIDENET_VGEMM=0 gives them, with everything else unchanged); prints the
CPU and wall milliseconds per step of each round, their min and median, and the cores other
processes kept busy. --layer: instead of the net's steps, one F(4x4, 3x3) training layer's
forward and backward (`winograd_f44`, padded by 1, ReLU) of that shape.
"""
import argparse
import statistics
import time

from threadpoolctl import threadpool_limits

from slidenet.bench import NETS
from slidenet.bench.machine import OtherLoad
from slidenet.bench.runners import SlidenetRunner
import numpy as np

from slidenet.ops import runtime, vpass
from slidenet.ops.conv import winograd_f44

OFF = {"done": True, "fn": None, "out": None, "s2": None, "s2out": None}


class layer:
    """One F(4x4, 3x3) training layer of shape "N,H,W,D,K" as a runner: train_step() is its
    forward and backward with ReLU, padded by 1."""

    def __init__(self, shape):
        n, h, w, d, k = (int(v) for v in shape.split(","))
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((n, h, w, d)).astype(np.float32)
        self.w = (rng.standard_normal((3, 3, d, k)) * 0.1).astype(np.float32)
        self.b = np.zeros(k, np.float32)
        self.dout = rng.standard_normal((n, h, w, k)).astype(np.float32)

    def train_step(self):
        _, cache = winograd_f44.conv_forward_winograd2d(self.x, self.w, self.b, (1, 1), (1, 1),
                                                        True)
        winograd_f44.conv_backward_winograd2d(self.dout, cache, True, True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", choices=sorted(NETS), default="res18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--layer", help="N,H,W,D,K: one F(4x4, 3x3) layer instead of the net")
    args = parser.parse_args()
    runner = layer(args.layer) if args.layer else SlidenetRunner(NETS[args.net], args.batch, 256)
    vpass.input_pass()
    states = {"on": dict(vpass._state), "off": OFF}
    times = {"on": [], "off": []}
    with runtime.workers(2), threadpool_limits(1, "blas"), OtherLoad() as load:
        for name in ("on", "off", "on", "off"):
            vpass._state = states[name]
            runner.train_step()
        for _ in range(args.rounds):
            for name in ("on", "off"):
                vpass._state = states[name]
                start, start_cpu = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    runner.train_step()
                times[name].append(((time.process_time() - start_cpu) * 1e3 / args.steps,
                                    (time.perf_counter() - start) * 1e3 / args.steps))
    vpass._state = states["on"]
    for name, rows in times.items():
        cpu = [c for c, _ in rows]
        print(f"{args.layer or f'{args.net} batch {args.batch}'} passes {name:3}: CPU ms/step "
              f"{' '.join(f'{c:.1f}' for c in cpu)}; min {min(cpu):.1f}, median "
              f"{statistics.median(cpu):.1f}; wall median "
              f"{statistics.median(w for _, w in rows):.1f}")
    print(f"other processes kept {load.cores:.2f} cores busy")


if __name__ == "__main__":
    main()
