"""Thin first layers, forward and backward: the numbers of docs/benchmarks.md, "Thin first layers".

    .venv/bin/python scripts/thin_layers.py [--threads 2] [--rounds 7] [--batches 1,128,256] [--direct]

Two layers: conv1 of R1 (INPUT(32x32x3) -> CONV(32) -> RELU) and of the default net
(INPUT(28x28x1) -> CONV(16) -> RELU), 3x3, stride 1, pad 1, float32. For each batch, round by
round and alternating which goes first, it times the convolution as "auto" runs it in a
training step: the forward with the fused ReLU, and the backward without dx (the first layer's
input needs no gradient) through the ReLU's mask. Twice: with im2col's compiled passes off
(`compiled.set_enabled(False)`: the NumPy passes, as before they existed) and on. A round takes
the fastest of a few calls; the table gives the median of the rounds and their range, in ms.

--direct also times a direct convolution (no rows, no GEMM: numba, one output pixel at a time,
its K channels vectorised, the window's loops unrolled), the kernel that was tried for these
layers and dropped, against im2col's forward with the compiled passes.

The machine is shared: the last line says how many cores other processes kept busy meanwhile.
"""
import argparse
import time

import numpy as np

from slidenet.bench.machine import OtherLoad
from slidenet.ops import compiled, conv, runtime
from slidenet.ops.runtime import batch_chunks, bordered, empty, run_chunks

LAYERS = [("R1 conv1", 32, 3, 32), ("default conv1", 28, 1, 16)]


def fastest(fn, calls):
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def direct_kernel():
    """The direct convolution, compiled: out (c, H', W', K) from the padded xp (c, H_p, W_p, D)."""
    import numba

    @numba.njit(nogil=True, cache=True)
    def direct(xp, w, bias, taps_h, taps_w, depth, out):
        # Tuple lengths are compile-time sizes (see compiled.im2col_rows): the window's loops
        # unroll, and the loop over the K channels, innermost, is vectorised.
        fh, fw, d = len(taps_h), len(taps_w), len(depth)
        c, ho, wo, k = out.shape
        zero = out.dtype.type(0)
        for n in range(c):
            for i in range(ho):
                for j in range(wo):
                    o = out[n, i, j]
                    for ch in range(k):
                        s = zero
                        for a in range(fh):
                            for b in range(fw):
                                for e in range(d):
                                    s += xp[n, i + a, j + b, e] * w[a, b, e, ch]
                        s += bias[ch]
                        o[ch] = s if s > zero else zero
    return direct


def direct_forward(kernel, x, w, b):
    """The direct convolution at stride 1, pad 1 with the ReLU, in batch chunks on the workers."""
    n, h, wd, d = x.shape
    fh, fw, _, k = w.shape
    out = empty((n, h, wd, k), x.dtype)
    sizes = ((0,) * fh, (0,) * fw, (0,) * d)

    def work(sl):
        xp, inner = bordered("direct.pad", (sl.stop - sl.start, h + 2, wd + 2, d), x.dtype,
                             (1, 1, 1, 1))
        inner[...] = x[sl]
        kernel(xp, w, b, *sizes, out[sl])

    run_chunks(work, batch_chunks(n, ((h + 2) * (wd + 2) * d + h * wd * k) * x.itemsize))
    return out


def measure(args):
    rng = np.random.default_rng(0)
    kernel = direct_kernel() if args.direct else None
    times = {}
    for name, hw, d, k in LAYERS:
        for n in args.batches:
            x = rng.standard_normal((n, hw, hw, d)).astype(np.float32)
            w = (rng.standard_normal((3, 3, d, k)) * 0.2).astype(np.float32)
            b = (rng.standard_normal(k) * 0.1).astype(np.float32)
            dout = rng.standard_normal((n, hw, hw, k)).astype(np.float32)
            calls = 30 if n == 1 else 3

            def forward():
                return conv.conv_forward(x, w, b, (1, 1), (1, 1), relu=True)

            for r in range(args.rounds):
                for flag in (False, True) if r % 2 == 0 else (True, False):
                    previous = compiled.set_enabled(flag)
                    try:
                        _, cache = forward()
                        key = (name, n, "compiled" if flag else "NumPy")
                        times.setdefault(key + ("forward",), []).append(fastest(forward, calls))
                        times.setdefault(key + ("backward",), []).append(fastest(
                            lambda: conv.conv_backward(dout, cache, need_dx=False, relu=True), calls))
                    finally:
                        compiled.set_enabled(previous)
                if kernel is not None:
                    out = direct_forward(kernel, x, w, b)
                    np.testing.assert_allclose(out, forward()[0], rtol=1e-4, atol=1e-4)
                    times.setdefault((name, n, "direct", "forward"), []).append(
                        fastest(lambda: direct_forward(kernel, x, w, b), calls))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="kernel worker threads (default 2)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    parser.add_argument("--batches", default="1,128,256", help="batch sizes (default 1,128,256)")
    parser.add_argument("--direct", action="store_true", help="also time the direct convolution")
    args = parser.parse_args()
    args.batches = [int(v) for v in args.batches.split(",")]
    if compiled.kernels() is None:
        raise SystemExit(f"thin_layers.py compares the compiled passes with NumPy's: {compiled.status()}")
    with OtherLoad() as load, runtime.workers(args.threads):
        times = measure(args)
    print(f"{args.threads} worker threads x 1 BLAS thread; medians of {args.rounds} rounds (range), ms")
    print(f"{'layer':14s} {'batch':>5s} {'step':8s} {'NumPy passes':>22s} {'compiled passes':>22s} {'speed-up':>8s}")
    for name, _, _, _ in LAYERS:
        for n in args.batches:
            for step in ("forward", "backward"):
                cells = []
                for kind in ("NumPy", "compiled"):
                    v = np.array(times[(name, n, kind, step)])
                    cells.append((np.median(v), f"{np.median(v):7.3f} ({v.min():.3f}-{v.max():.3f})"))
                print(f"{name:14s} {n:5d} {step:8s} {cells[0][1]:>22s} {cells[1][1]:>22s} "
                      f"{cells[0][0] / cells[1][0]:7.2f}x")
            if (name, n, "direct", "forward") in times:
                v = np.array(times[(name, n, "direct", "forward")])
                print(f"{'':14s} {n:5d} direct forward: {np.median(v):.3f} ({v.min():.3f}-{v.max():.3f})")
    print(f"other processes kept {load.cores:.2f} cores busy meanwhile" if load.cores is not None else "")


if __name__ == "__main__":
    main()
