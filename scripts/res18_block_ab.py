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

import numpy as np

from res18_down_ab import timed                 # this folder's scripts: the same timing,
from res18_infer import switched_forwards      # and res18's forwards under two settings
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
    applies = winograd_block.applies
    refuse = lambda *a: False                   # noqa: E731: the plan's two calls a block

    def switch(block):
        winograd_block.applies = applies if block else refuse
    switched_forwards(args.batch, args.workers, args.rounds, args.calls, ("block", "two calls"),
                      switch)


if __name__ == "__main__":
    main()
