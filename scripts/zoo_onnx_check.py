"""Every zoo net at its full size, once: build it, export it to ONNX, and compare onnxruntime's
scores with slidenet's for two random images (random weights and BATCHNORM statistics); then one
forward and backward in training mode. Slow (minutes a net on a 2-core machine); docs/zoo.md
quotes its result.

    .venv/bin/python scripts/zoo_onnx_check.py
"""
import time

import numpy as np
import onnxruntime as ort

from slidenet import Net
from slidenet.data.normalize import Normalizer
from slidenet.interop.onnx_export import to_model
from slidenet.model import Model
from slidenet.notation import zoo


def main():
    for e in zoo.ENTRIES:
        t = time.time()
        net = Net.from_pattern(e.pattern, seed=0)
        rng = np.random.default_rng(0)
        for name, v in net.buffers.items():
            v[...] = rng.uniform(0.5, 2, v.shape) if "var" in name else rng.normal(0, 0.3, v.shape)
        d = net.input_shape[2]
        model = Model(net, Normalizer(np.full(d, 0.4, np.float32), np.full(d, 0.25, np.float32)), {"pattern": e.pattern})
        x = rng.integers(0, 256, (2, *net.input_shape), dtype=np.uint8)
        proto = to_model(net, model.normalizer, model.class_names)
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        s_ort, = sess.run(["scores"], {"pixels": x.astype(np.float32)})
        s = model.scores(x)
        err = np.abs(s_ort - s).max() / max(1, np.abs(s).max())
        # one training step: forward/backward
        out = net.forward(model.normalizer.normalize(x), train=True)
        dx = net.backward(np.ones_like(out))
        print(f"{e.name:14} scores max |diff| {err:.2e} (scale {np.abs(s).max():.2f}) backward ok {dx.shape} {time.time()-t:.1f}s", flush=True)


if __name__ == "__main__":
    main()
