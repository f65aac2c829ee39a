"""One F(4x4, 3x3) family (docs/benchmarks.md, "F(4x4, 3x3): one kernel family"): CPU time per
call of a 32x32x16 -> 16 layer (3x3, pad 1, ReLU, float32, batch 64, one worker) in the tree on
PYTHONPATH, for running old and new trees alternately:

    PYTHONPATH=OLD .venv/bin/python scripts/winograd44_ab.py old
    PYTHONPATH=.   .venv/bin/python scripts/winograd44_ab.py new

train: training's forward and backward ("winograd2d", the ReLU's mask included); infer:
inference's forward ("winograd44", `conv_infer` from `prepare_conv`). Each is the best of 3
runs of 20 calls, in ms of process CPU time.
"""
import sys
import time

import numpy as np

from slidenet import ops
from slidenet.ops import conv, runtime


def best_ms(f, calls=20, runs=3):
    f()
    f()
    times = []
    for _ in range(runs):
        start = time.process_time()
        for _ in range(calls):
            f()
        times.append((time.process_time() - start) / calls * 1e3)
    return min(times)


def main(label):
    runtime.set_threads(1)
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((64, 32, 32, 16)), 0).astype(np.float32)
    w = (rng.standard_normal((3, 3, 16, 16)) / 12).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    g = rng.standard_normal((64, 32, 32, 16)).astype(np.float32)
    prepared = conv.prepare_conv(w, b, (1, 1), (1, 1), relu=True, height=32, width=32)

    def train():
        out, cache = ops.conv_forward(x, w, b, (1, 1), (1, 1), relu=True)
        ops.conv_backward(g, cache, relu=True)
    _, cache = ops.conv_forward(x, w, b, (1, 1), (1, 1), relu=True)
    trained, inferred = best_ms(train), best_ms(lambda: conv.conv_infer(x, prepared))
    print(f"{label} train {trained:.2f} infer {inferred:.2f} "
          f"({cache.algorithm}, {prepared.algorithm})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tree")
