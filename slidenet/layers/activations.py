"""RELU, LEAKYRELU(a), TANH and SIGMOID: a nonlinearity applied to every number on its own.

They keep the shape and have no parameters. Each calls its pair in `slidenet.ops.activations`,
where the forward sits next to its local derivative.
"""
from slidenet import ops
from slidenet.notation import arguments
from slidenet.layers.base import Inferred, Layer
from slidenet.layers.registry import register


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


@register
class Relu(_Elementwise):
    """max(0, x)."""
    kind = "RELU"
    kernels = (ops.relu_forward, ops.relu_backward)
    torch_name = "ReLU"
    onnx_op = "Relu"


@register
class Tanh(_Elementwise):
    kind = "TANH"
    kernels = (ops.tanh_forward, ops.tanh_backward)
    torch_name = "Tanh"
    onnx_op = "Tanh"


@register
class Sigmoid(_Elementwise):
    kind = "SIGMOID"
    kernels = (ops.sigmoid_forward, ops.sigmoid_backward)
    torch_name = "Sigmoid"
    onnx_op = "Sigmoid"


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
