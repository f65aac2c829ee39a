"""RELU, RELU6, LEAKYRELU(a), TANH and SIGMOID: a nonlinearity applied to every number on its own.

They keep the shape and have no parameters. Each calls its pair in `slidenet.ops.activations`,
where the forward sits next to its local derivative.
"""
import numpy as np

from slidenet import arguments, ops
from slidenet.layers.base import Layer, Step
from slidenet.layers.registry import register


class _Elementwise(Layer):
    """One forward/backward pair of `ops`, applied number by number."""

    maps = True
    kernels = (None, None)      # (forward(x) -> (out, cache), backward(dout, cache) -> dx)

    @classmethod
    def infer(cls, spec, walk):
        return Step(walk.shape)

    def forward(self, x, train):
        out, self.cache = self.kernels[0](x)
        return out

    def backward(self, dout, need_dx=True):
        return self.kernels[1](dout, self.cache)


@register
class Relu(_Elementwise):
    """max(0, x)."""
    kind = "RELU"
    kernels = (ops.relu_forward, ops.relu_backward)

    @classmethod
    def torch_modules(cls, info, nn):
        return [nn.ReLU()]

    def to_onnx(self, graph):
        graph.tensor = graph.node("Relu", [graph.tensor])


@register
class Relu6(_Elementwise):
    """min(max(0, x), 6): MobileNet's ReLU, bounded so that low-precision arithmetic keeps it."""
    kind = "RELU6"
    kernels = (ops.relu6_forward, ops.relu6_backward)

    @classmethod
    def torch_modules(cls, info, nn):
        return [nn.ReLU6()]

    def to_onnx(self, graph):
        low = graph.initializer("min", np.zeros((), self.dtype))
        high = graph.initializer("max", np.full((), 6, self.dtype))
        graph.tensor = graph.node("Clip", [graph.tensor, low, high])

    def __init__(self, info, init):
        super().__init__(info, init)
        self.dtype = init.dtype


@register
class Tanh(_Elementwise):
    kind = "TANH"
    kernels = (ops.tanh_forward, ops.tanh_backward)

    @classmethod
    def torch_modules(cls, info, nn):
        return [nn.Tanh()]

    def to_onnx(self, graph):
        graph.tensor = graph.node("Tanh", [graph.tensor])


@register
class Sigmoid(_Elementwise):
    kind = "SIGMOID"
    kernels = (ops.sigmoid_forward, ops.sigmoid_backward)

    @classmethod
    def torch_modules(cls, info, nn):
        return [nn.Sigmoid()]

    def to_onnx(self, graph):
        graph.tensor = graph.node("Sigmoid", [graph.tensor])


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
