"""float32 rounding of each convolution algorithm on a trained net: the numbers in docs/benchmarks.md.

    .venv/bin/slidenet train --pattern 'INPUT(28x28x1) -> [CONV(32) -> RELU]*2 -> POOL -> [CONV(64) -> RELU]*2 -> POOL -> FC(256) -> RELU -> FC(10)' --epochs 4 --out runs/r1-mnist
    .venv/bin/python scripts/conv_accuracy.py runs/r1-mnist/best.npz [--images 64]

Runs one training step of the model on its first test images and keeps, for every CONV, what
its kernels were given: the input x (ReLU activations past the first layer), the trained
filters and bias, and the gradient of the loss at its output (after its ReLU's mask). Then, for
every algorithm that applies, it computes the forward, dx and dw in float32 from those float32
arrays, and prints the relative error against the same arithmetic in float64 (im2col):
||float32 - float64|| / ||float64||.
"""
import argparse

import numpy as np

from slidenet import data as datasets
from slidenet import ops
from slidenet.model import load
from slidenet.ops import conv

ALGORITHMS = ("im2col", "full", "winograd", "winograd4")


def captured_layers(model, images):
    """Run one training step; return each CONV's (x, w, b, stride, pad, dout), in order."""
    dataset = datasets.load(model.meta.get("data", "mnist5k"))
    x = model.normalizer.normalize(dataset.x_test[:images])
    y = dataset.y_test[:images]
    layers, grads = [], []
    real_forward, real_backward = ops.conv_forward, ops.conv_backward

    def forward(x, w, b, stride, pad, relu=False, **kwargs):
        layers.append([np.array(x), np.array(w), np.array(b), tuple(stride), tuple(pad)])
        return real_forward(x, w, b, stride, pad, relu=relu, **kwargs)

    def backward(dout, cache, need_dx=True, relu=False):
        grads.append(np.array(dout * (cache.out > 0) if relu else dout))
        return real_backward(dout, cache, need_dx, relu=relu)

    # The CONV layers call ops.conv_forward / conv_backward by name: listen in for one step.
    ops.conv_forward, ops.conv_backward = forward, backward
    try:
        _, dscores = ops.softmax_loss(model.net.forward(x, train=True), y)
        model.net.backward(dscores, input_grad=False)
    finally:
        ops.conv_forward, ops.conv_backward = real_forward, real_backward
    return [(*layer, dout) for layer, dout in zip(layers, reversed(grads))]


def errors(x, w, b, stride, pad, dout, algorithm):
    """Relative errors of (forward, dx, dw) in float32 against float64."""
    wide = [a.astype(np.float64) for a in (x, w, b, dout)]
    exact, cache = ops.conv_forward(*wide[:3], stride, pad, algorithm="im2col")
    exact = [exact.copy(), *ops.conv_backward(wide[3], cache)[:2]]
    out, cache = ops.conv_forward(x, w, b, stride, pad, algorithm=algorithm)
    got = [out, *ops.conv_backward(dout, cache)[:2]]
    return [float(np.linalg.norm(g - e) / np.linalg.norm(e)) for g, e in zip(got, exact)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a model file written by slidenet train")
    parser.add_argument("--images", type=int, default=64, help="test images in the step (64)")
    args = parser.parse_args()
    model = load(args.model)
    print(f"{args.model}: {model.meta['pattern']}, {args.images} test images\n")
    print("Relative error in float32 (in brackets: as a multiple of im2col's)\n")
    print("| layer | input -> filters | algorithm | forward | dx | dw |")
    print("|---|---|---|---:|---:|---:|")
    for i, (x, w, b, stride, pad, dout) in enumerate(captured_layers(model, args.images), 1):
        shape = "x".join(map(str, x.shape[1:]))
        base = None
        for algorithm in ALGORITHMS:
            try:
                conv.choose(w.shape[:2], stride, pad, w.shape[2], w.shape[3], algorithm)
                errs = errors(x, w, b, stride, pad, dout, algorithm)
            except ValueError:                  # the algorithm does not apply to this layer
                continue
            base = base or errs
            cells = " | ".join(f"{e:.1e} ({e / r:.1f}x)" for e, r in zip(errs, base))
            print(f"| conv{i} | {shape} -> {w.shape[3]} | {algorithm} | {cells} |")


if __name__ == "__main__":
    main()
