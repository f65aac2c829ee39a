"""res18's prepared forward with the block kernels' GEMMs on 512-bit registers (`ops.vgemm`)
against the same plan calling NumPy's BLAS (`blas.sgemm`), alternating in one process:
docs/benchmarks.md's "res18 inference: the small GEMMs and the passes on 512-bit registers".

    .venv/bin/python scripts/res18_vgemm_ab.py [--batch 64] [--workers 1] [--rounds 10]
    .venv/bin/python scripts/res18_vgemm_ab.py --passes     # ops.vpass's passes on and off
    .venv/bin/python scripts/res18_vgemm_ab.py --stages     # each block kind alone

Each round times `--calls` forwards of one plan (`slidenet bench`'s RES18, random weights and
statistics) with `vgemm` and `vpass` on, then as many with them off (NumPy's BLAS, numba's
passes, the block kernels' limits as before), then the other order next round. Prints the CPU
ms of a forward (all threads) and the wall ms, min and median over the rounds, and how far
apart the two scores are.
`--passes`: the same with `ops.vpass`'s passes on and off (vgemm on in both). `--stages`:
res18's basic and downsampling blocks alone, as the plan runs them (one call where the block
kernels apply, else two or three), random weights, `--batch` images, one worker, CPU ms, min
of 7 runs of 5 calls, alternating twice.
"""
import argparse

import numpy as np

from res18_down_ab import timed                 # this folder's scripts: the same timing,
from res18_infer import switched_forwards      # and res18's forwards under two settings
from slidenet.ops import runtime, vgemm, vpass
from slidenet.ops.conv import dispatch, winograd_block, winograd_down

def use_passes(on):
    """Switch `ops.vpass`'s passes on (the block kernels' vector kernels) or off (numba's)."""
    vpass.input_pass()
    names = ("fn", "out", "s2", "s2out")
    if "built" not in vpass._state:
        vpass._state["built"] = {name: vpass._state.get(name) for name in names}
    for name in names:
        vpass._state[name] = vpass._state["built"][name] if on else None


def use(on):
    """Switch vgemm on (the block kernels call it, and take the smaller images it makes pay)
    or off (NumPy's BLAS and the block kernels' MIN_TILES, as before it), and vpass with it."""
    vgemm.sgemm(16)
    if "built" not in vgemm._state:
        vgemm._state["built"] = vgemm._state["fns"]
    vgemm._state["fns"] = vgemm._state["built"] if on else {}
    use_passes(on)


def conv(rng, d, k, stride, side, relu=True):
    return dispatch.prepare_conv((rng.standard_normal((3, 3, d, k)) * 0.1).astype(np.float32),
                                 rng.standard_normal(k).astype(np.float32), stride, (1, 1),
                                 relu, height=side, width=side)


def block(x, first, second):
    """The basic block as the plan runs it: one call where `winograd_block.applies`, else two."""
    if winograd_block.applies(x, first, second):
        return winograd_block.forward(x, first, second)
    return dispatch.conv_infer(dispatch.conv_infer(x, first), second, skip=x)


def down(x, first, sides, proj, second):
    """The downsampling block as the plan runs it: one call where `winograd_down.applies`, else
    three (the stride-2 CONV, the projection's strided copy and GEMM, the CONV adding it)."""
    if winograd_down.applies(x, first, sides, proj, second):
        return winograd_down.forward(x, first, sides, proj, second)
    h = dispatch.conv_infer(x, first, sides=sides)
    p = x[:, ::2, ::2] @ proj.w + proj.b
    return dispatch.conv_infer(h, second, skip=p)


def stages(batch):
    """Print one block of each kind vgemm serves: vgemm on against off, CPU ms."""
    rng = np.random.default_rng(0)
    for side, d in ((32, 16), (16, 32), (8, 64), (4, 128)):
        x = rng.standard_normal((batch, side, side, d)).astype(np.float32)
        first, second = conv(rng, d, d, (1, 1), side), conv(rng, d, d, (1, 1), side)
        cells = []
        with runtime.workers(1):
            for _ in range(2):
                for name, on in (("vgemm", True), ("blas", False)):
                    use(on)
                    ms = timed(lambda: block(x, first, second))
                    cells.append(f"{name} {ms:.2f}")
        print(f"block {side}x{side}x{d}: " + ", ".join(cells))
    for side, d in ((32, 16), (16, 32), (8, 64)):
        k, half = 2 * d, side // 2
        x = rng.standard_normal((batch, side, side, d)).astype(np.float32)
        first = dispatch.prepare_conv((rng.standard_normal((3, 3, d, k)) * 0.1).astype(np.float32),
                                      rng.standard_normal(k).astype(np.float32), (2, 2), (1, 1),
                                      True, height=side, width=side)
        second = conv(rng, k, k, (1, 1), half, relu=False)
        proj = winograd_down.Projection((rng.standard_normal((d, k)) * 0.1).astype(np.float32),
                                        rng.standard_normal(k).astype(np.float32), (2, 2))
        sides = ((1, 1), (0, 0))
        cells = []
        with runtime.workers(1):
            for _ in range(2):
                for name, on in (("vgemm", True), ("blas", False)):
                    use(on)
                    ms = timed(lambda: down(x, first, sides, proj, second))
                    cells.append(f"{name} {ms:.2f}")
        print(f"down {side}x{side}x{d} -> {k}: " + ", ".join(cells))
    use(True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--stages", action="store_true")
    parser.add_argument("--passes", action="store_true",
                        help="instead: vpass's passes on against off (vgemm on in both)")
    args = parser.parse_args()
    if vgemm.sgemm(16) is None:
        raise SystemExit("vgemm is not available here (no llvmlite or no AVX-512F)")
    if args.stages:
        return stages(args.batch)
    names = ("vpass", "numba passes") if args.passes else ("vgemm", "blas")
    switched_forwards(args.batch, args.workers, args.rounds, args.calls, names,
                      use_passes if args.passes else use)


if __name__ == "__main__":
    main()
