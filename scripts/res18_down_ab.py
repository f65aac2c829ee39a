"""res18's three downsampling blocks, one compiled call (`conv.winograd_down`) against the three
calls a plan otherwise makes: CPU ms per `--batch` images on one worker, min of 7 runs of 5
calls, alternating twice, for each `--bands` (BAND_BYTES in KiB): docs/benchmarks.md's "res18
inference: the downsampling block in one call".

    .venv/bin/python scripts/res18_down_ab.py [--batch 64] [--bands 640 2048]
    .venv/bin/python scripts/res18_down_ab.py --plan [--workers 1]   # res18's whole forward

`--plan`: one prepared res18 (`slidenet bench`'s RES18, trained-looking random weights), 12
rounds of 4 forwards with `winograd_down.applies` as it is and answering False (the three
calls), alternating which goes first; CPU ms of a forward (all threads), min and median.
"""
import argparse
import statistics
import time

import numpy as np

from slidenet.ops import runtime
from slidenet.ops.conv import dispatch, winograd_down, winograd_s2


def timed(fn):
    """The least CPU ms of fn() over 7 runs of 5 calls, after one call."""
    fn()
    runs = []
    for _ in range(7):
        start = time.process_time()
        for _ in range(5):
            fn()
        runs.append((time.process_time() - start) / 5 * 1e3)
    return min(runs)


def plan_ab(batch, workers):
    """Print res18's forward with the block in one call against three calls (CPU ms)."""
    from res18_infer import trained_looking     # this folder's script
    from slidenet.bench import RES18
    plan = trained_looking(RES18).prepare()
    x = np.random.default_rng(0).standard_normal((batch, 32, 32, 3)).astype(np.float32)
    real = winograd_down.applies
    times = {"one call": [], "three calls": []}
    with runtime.workers(workers):
        one = plan.forward(x)
        winograd_down.applies = lambda *args: False
        three = plan.forward(x)
        print(f"scores differ by {np.abs(one - three).max() / np.abs(three).max():.1e} of the "
              "largest")
        for r in range(12):
            for name in (("one call", "three calls") if r % 2 == 0 else
                         ("three calls", "one call")):
                winograd_down.applies = real if name == "one call" else (lambda *args: False)
                start = time.process_time()
                for _ in range(4):
                    plan.forward(x)
                times[name].append((time.process_time() - start) / 4 * 1e3)
    winograd_down.applies = real
    for name, runs in times.items():
        print(f"{name}: CPU ms a forward, min {min(runs):.2f}, median "
              f"{statistics.median(runs):.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bands", type=int, nargs="+", default=[640, 2048])
    ap.add_argument("--plan", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    if args.plan:
        plan_ab(args.batch, args.workers)
        return
    rng = np.random.default_rng(0)
    for side, d in ((32, 16), (16, 32), (8, 64)):
        k = 2 * d
        x = rng.standard_normal((args.batch, side, side, d)).astype(np.float32)
        sides = ((1, 1), (0, 0))
        first = dispatch.prepare_conv((rng.standard_normal((3, 3, d, k)) * 0.1).astype(np.float32),
                                      rng.standard_normal(k).astype(np.float32), (2, 2), (1, 1),
                                      True, height=side, width=side)
        second = dispatch.prepare_conv((rng.standard_normal((3, 3, k, k)) * 0.1).astype(
            np.float32), rng.standard_normal(k).astype(np.float32), (1, 1), (1, 1), True,
            height=side // 2, width=side // 2)
        proj = winograd_down.Projection((rng.standard_normal((d, k)) * 0.1).astype(np.float32),
                                        rng.standard_normal(k).astype(np.float32), (2, 2))
        picked = dispatch.prepare_conv(proj.w.reshape(1, 1, d, k), proj.b, (1, 1), (0, 0), False,
                                       height=side // 2)

        def three():
            h = winograd_s2.forward(x, first.filters, first.b, sides[0], True, None, sides[1])
            p = dispatch.conv_infer(np.ascontiguousarray(x[:, ::2, ::2]), picked)
            return dispatch.conv_infer(h, second, skip=p)

        def one():
            return winograd_down.forward(x, first, sides, proj, second)
        cells = []
        with runtime.workers(1):
            for _ in range(2):
                cells.append(f"three calls {timed(three):.2f}")
                for band in args.bands:
                    winograd_down.BAND_BYTES = band * 1024
                    per = winograd_down.band_images(side // 2, side // 2, d, k)
                    cells.append(f"one call ({band} KiB, {per} images) {timed(one):.2f}")
        print(f"{side}x{side}x{d} -> {k}: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
