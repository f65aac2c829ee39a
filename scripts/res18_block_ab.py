"""res18's prepared forward with its residual blocks in one call each (`conv.winograd_block`)
against the same plan running each block as two calls, alternating in one process:
docs/benchmarks.md's "res18 inference: a residual block in one call".

    .venv/bin/python scripts/res18_block_ab.py [--batch 64] [--workers 1] [--rounds 10]
    .venv/bin/python scripts/res18_block_ab.py --stages     # one block of each res18 stage

Each round times `--calls` forwards of one plan (`Net.prepare()` of `slidenet bench`'s RES18
with random weights and statistics) with the block kernel, then as many with
`winograd_block.applies` answering False (the plan's two `conv_infer` calls per block, as main
runs them), then the other order next round. Prints the CPU ms of a forward (all threads) and
the wall ms, min and median over the rounds, for each; and that the two give the same scores
to float32 rounding. `--stages`: one block alone (random weights) at each of res18's four
sizes, 32x32x16 to 4x4x128, `winograd_block.forward` against the two `conv_infer` calls, CPU
ms per `--batch` images on one worker, min of 7 runs of 5 calls, twice each alternating (the
last two sizes are timed past `applies`, which refuses them: the reason is in the numbers).
"""
import argparse
import statistics
import time

import numpy as np

from res18_down_ab import timed             # this folder's scripts: the same timing and
from res18_infer import trained_looking     # trained-looking net
from slidenet.bench import RES18
from slidenet.ops import runtime
from slidenet.ops.conv import dispatch, winograd_block


def stages(batch):
    """Print each res18 stage's block: one call against two, CPU ms (min of 7 runs)."""
    rng = np.random.default_rng(0)
    for side, d in ((32, 16), (16, 32), (8, 64), (4, 128)):
        x = rng.standard_normal((batch, side, side, d)).astype(np.float32)
        first, second = (dispatch.prepare_conv(
            (rng.standard_normal((3, 3, d, d)) * 0.1).astype(np.float32),
            rng.standard_normal(d).astype(np.float32), (1, 1), (1, 1), True, height=side,
            width=side) for _ in range(2))

        def two():
            return dispatch.conv_infer(dispatch.conv_infer(x, first), second, skip=x)

        def one():
            return winograd_block.forward(x, first, second)
        cells = []
        with runtime.workers(1):
            for _ in range(2):
                for name, fn in (("two calls", two), ("block", one)):
                    cells.append(f"{name} {timed(fn):.2f}")
        print(f"{side}x{side}x{d}, bands of {winograd_block.band_images(side, side, d)} "
              f"images: " + ", ".join(cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--stages", action="store_true")
    args = parser.parse_args()
    if args.stages:
        return stages(args.batch)
    plan = trained_looking(RES18).prepare()
    x = np.random.default_rng(1).standard_normal((args.batch, 32, 32, 3)).astype(np.float32)
    applies = winograd_block.applies
    refuse = lambda *a: False                   # noqa: E731: the plan's two calls a block
    times = {"block": ([], []), "two calls": ([], [])}
    with runtime.workers(args.workers):
        scores = {}
        for name, fn in (("block", applies), ("two calls", refuse)):
            winograd_block.applies = fn
            scores[name] = plan.forward(x).copy()
        for r in range(args.rounds):
            order = ("block", "two calls") if r % 2 == 0 else ("two calls", "block")
            for name in order:
                winograd_block.applies = applies if name == "block" else refuse
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(args.calls):
                    plan.forward(x)
                times[name][0].append((time.process_time() - cpu) / args.calls * 1e3)
                times[name][1].append((time.perf_counter() - wall) / args.calls * 1e3)
    winograd_block.applies = applies
    diff = np.abs(scores["block"] - scores["two calls"]).max() / np.abs(scores["block"]).max()
    print(f"batch {args.batch}, {args.workers} worker(s), {args.rounds} rounds of "
          f"{args.calls}; scores agree to {diff:.1e} of the largest")
    for name, (cpu, wall) in times.items():
        print(f"{name}: CPU ms {min(cpu):.2f} (median {statistics.median(cpu):.2f}), "
              f"wall ms {min(wall):.2f} (median {statistics.median(wall):.2f})")


if __name__ == "__main__":
    main()
