"""The things a benchmark times, one runner per library: a training step, inference, layers.

Each runner holds one net and random data. `SlidenetRunner` times slidenet's own steps
(`Net.steps`, with CONV -> RELU and the like fused) and, for inference, the prepared net that
`Model.predict` runs (`Net.prepare`), from pixels: the normalisation is timed too.
`TorchRunner` builds the same layers in PyTorch from each kind's `torch_modules` (NCHW,
nn.Conv2d, nn.MaxPool2d, nn.Linear, ...). `OnnxRunner` runs the very net slidenet exports
(`slidenet export`: pixels in, the normalisation and an NHWC -> NCHW transpose inside) in
onnxruntime, which infers but does not train.

`infer` times a batch, `infer_one` one image: the latency of a prediction. A training step
is forward, the softmax loss, backward and a plain SGD update on each side: slidenet's the
optimiser `slidenet train` runs (`training.optim.SGD`), PyTorch's `torch.optim.SGD`.
"""
import time

import numpy as np

from slidenet.bench.machine import torch_module
from slidenet.data import Normalizer
from slidenet.net import Net
from slidenet.ops import softmax_loss
from slidenet.notation.shapes import walk_infos
from slidenet.training.optim import SGD


def onnxruntime_module():
    """The onnxruntime module, or None when it is not installed (the `onnx` extra)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime

LEARNING_RATE = 0.01


def flops(infos):
    """Forward and backward FLOPs per image of each layer, by name: 2 per multiply-add (a
    merge's are its branches')."""
    def total(info, slot):
        return sum(getattr(i, slot) for i in walk_infos([info]))
    return {i.name: (2 * total(i, "madds"), 2 * total(i, "backward_madds")) for i in infos[1:]}


class SlidenetRunner:
    """One net, random data, and the three things timed: a training step, inference, layers."""

    name = "slidenet"

    def __init__(self, pattern, batch, infer_batch, seed=0):
        self.net = Net.from_pattern(pattern, seed=seed)
        rng = np.random.default_rng(seed)
        shape = tuple(self.net.input_shape)
        self.x = rng.standard_normal((batch, *shape), dtype=np.float32)
        self.y = rng.integers(0, self.net.num_outputs, batch)
        # Pixels for inference (0..255 as floats), and a normaliser that keeps them as they are
        # (x / 255 - 0) / (1 / 255): the same arithmetic a real one costs.
        self.pixels = rng.uniform(0, 255, (infer_batch, *shape)).astype(np.float32)
        self.normalizer = Normalizer(np.zeros(shape[2], np.float32),
                                     np.full(shape[2], 1 / 255, np.float32))
        self.opt = SGD(self.net.params)
        self._plan = None

    @property
    def plan(self):
        if self._plan is None:
            self._plan = self.net.prepare()
        return self._plan

    def train_step(self):
        _, dscores = softmax_loss(self.net.forward(self.x, train=True), self.y)
        self.net.backward(dscores, input_grad=False)
        self.opt.step(self.net.grads, LEARNING_RATE)

    def infer(self):
        return self.plan.forward(self.normalizer.normalize(self.pixels))

    def infer_one(self):
        return self.plan.forward(self.normalizer.normalize(self.pixels[:1]))

    def step_times(self, times):
        """A training step, adding each step's forward and backward seconds into `times`
        (keyed by step name, e.g. "conv1+relu1")."""
        self.net._release_caches()              # as Net.forward does
        steps = self.net.steps
        out = self.x
        for step in steps:
            start = time.perf_counter()
            out = step.forward(out, True)
            times[step.name][0] += time.perf_counter() - start
        _, grad = softmax_loss(out, self.y)
        for step in reversed(steps):
            start = time.perf_counter()
            grad = step.backward(grad, need_dx=step is not steps[0])
            times[step.name][1] += time.perf_counter() - start
        self.opt.step(self.net.grads, LEARNING_RATE)


class TorchRunner:
    """The same layers in PyTorch: NCHW, each kind's `torch_modules`, plain SGD."""

    name = "torch"

    def __init__(self, infos, batch, infer_batch, seed=0):
        torch = self.torch = torch_module()
        nn = torch.nn
        torch.manual_seed(seed)
        modules = [m for info in infos[1:] for m in info.spec.type.torch_modules(info, nn)]
        self.model = nn.Sequential(*modules)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE)
        self.loss = nn.CrossEntropyLoss()
        h, w, d = infos[0].output_shape
        self.x = torch.randn(batch, d, h, w)
        self.y = torch.randint(0, int(np.prod(infos[-1].output_shape)), (batch,))
        self.x_infer = torch.randn(infer_batch, d, h, w)
        self.x_one = self.x_infer[:1].clone()

    def train_step(self):
        self.model.train()
        self.opt.zero_grad()
        self.loss(self.model(self.x), self.y).backward()
        self.opt.step()

    def infer(self):
        self.model.eval()
        with self.torch.no_grad():
            return self.model(self.x_infer)

    def infer_one(self):
        self.model.eval()
        with self.torch.no_grad():
            return self.model(self.x_one)


class OnnxRunner:
    """slidenet's export of the same net (its weights too) in onnxruntime: `threads` intra-op
    threads, no spinning (a spinning pool would take the cores from everything else)."""

    name = "onnxruntime"

    def __init__(self, slidenet_runner, threads):
        from slidenet.interop.onnx_export import to_bytes
        ort = onnxruntime_module()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            to_bytes(slidenet_runner.net, slidenet_runner.normalizer), options,
            providers=["CPUExecutionProvider"])
        self.pixels = slidenet_runner.pixels
        self.one = self.pixels[:1].copy()

    def infer(self):
        return self.session.run(["scores"], {"pixels": self.pixels})

    def infer_one(self):
        return self.session.run(["scores"], {"pixels": self.one})
