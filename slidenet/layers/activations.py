"""RELU, RELU6, LEAKYRELU(a), TANH and SIGMOID: a nonlinearity applied to every number on its own.

They keep the shape and have no parameters. Each calls its pair in `slidenet.ops.activations`,
where the forward sits next to its local derivative.
"""
import numpy as np

from slidenet import ops
from slidenet.layers.base import Inferred, Layer
from slidenet.layers.registry import register
from slidenet.notation import arguments


class _Elementwise(Layer):
    """One forward/backward pair of `ops`, applied number by number."""

    maps = True
    kernels = (None, None)      # (forward(x) -> (out, cache), backward(dout, cache) -> dx)
    torch_name = ""             # the same layer in torch.nn, built without arguments
    onnx_op = ""                # the same layer as one ONNX node, without attributes

    @classmethod
    def infer(cls, spec, walk):
        return Inferred(walk.shape)

    @classmethod
    def torch_modules(cls, info, nn):
        return [getattr(nn, cls.torch_name)()]

    def forward(self, x, train):
        out, self.cache = self.kernels[0](x)
        return out

    def backward(self, dout, need_dx=True):
        return self.kernels[1](dout, self.cache)

    def to_onnx(self, graph):
        graph.tensor = graph.node(self.onnx_op, [graph.tensor])


def _elementwise(name, kind, kernels, torch_name, onnx_op, doc):
    """A registered kind that is one `ops` pair and nothing else (as stax builds its layers)."""
    return register(type(name, (_Elementwise,), {
        "__doc__": doc, "__module__": __name__, "kind": kind, "kernels": kernels,
        "torch_name": torch_name, "onnx_op": onnx_op}))


Relu = _elementwise("Relu", "RELU", (ops.relu_forward, ops.relu_backward), "ReLU", "Relu",
                    "max(0, x).")
Tanh = _elementwise("Tanh", "TANH", (ops.tanh_forward, ops.tanh_backward), "Tanh", "Tanh",
                    "tanh(x).")
Sigmoid = _elementwise("Sigmoid", "SIGMOID", (ops.sigmoid_forward, ops.sigmoid_backward),
                       "Sigmoid", "Sigmoid", "1 / (1 + exp(-x)).")


@register
class Relu6(_Elementwise):
    """min(max(0, x), 6): MobileNet's ReLU, bounded so that low-precision arithmetic keeps it."""
    kind = "RELU6"
    kernels = (ops.relu6_forward, ops.relu6_backward)
    torch_name = "ReLU6"

    def __init__(self, info, init):
        super().__init__(info, init)
        self.dtype = init.dtype

    def to_onnx(self, graph):
        low = graph.initializer("min", np.zeros((), self.dtype))
        high = graph.initializer("max", np.full((), 6, self.dtype))
        graph.tensor = graph.node("Clip", [graph.tensor, low, high])


@register
class LeakyRelu(_Elementwise):
    """x where x > 0, a * x elsewhere (a = 0.01 unless given)."""
    kind = "LEAKYRELU"
    positional = ("alpha",)
    keywords = {"a": "alpha", "alpha": "alpha"}
    usage = "LEAKYRELU([a]) with 0 <= a < 1, e.g. LEAKYRELU(0.01)"

    @classmethod
    def read_arguments(cls, values):
        return {"alpha": arguments.fraction(values.get("alpha"), "slope a", 0.01)}

    @classmethod
    def torch_modules(cls, info, nn):
        return [nn.LeakyReLU(info.spec.alpha)]

    def forward(self, x, train):
        out, self.cache = ops.leaky_relu_forward(x, self.info.spec.alpha)
        return out

    def backward(self, dout, need_dx=True):
        return ops.leaky_relu_backward(dout, self.cache)

    def to_onnx(self, graph):
        graph.tensor = graph.node("LeakyRelu", [graph.tensor], alpha=self.info.spec.alpha)
