"""FC(n): fully connected. The input volume is stretched into one vector, times W, plus b.

As in the lecture's 32x32x3 -> 3072 example, a volume is flattened in (height, width, depth)
order, which for channels-last arrays is their memory order:

    parameters: n x (I + 1) with I = H * W * D, e.g. 10 x (3072 + 1) = 30,730

Every FC unit sees the whole input, so its receptive field is the whole image.
"""
from math import prod

import numpy as np

from slidenet import arguments, ops
from slidenet.layers.base import Layer, Step
from slidenet.layers.registry import register


@register
class FC(Layer):
    """Fully connected: W (I, O) with I the flattened input volume, b (O,); He-initialised."""

    kind = "FC"
    positional = ("outputs",)
    keywords = {"n": "outputs"}
    required = ("outputs",)
    usage = "FC(n), e.g. FC(10)"
    picture = "templates"

    @classmethod
    def read_arguments(cls, values):
        return {"outputs": arguments.whole(values["outputs"], "number of outputs", minimum=1)}

    @classmethod
    def infer(cls, spec, walk):
        inputs, n = prod(walk.shape), spec.outputs
        params = (inputs + 1) * n
        # An FC unit sees the whole volume: a window as large as the input, on both axes.
        spatial = walk.shape[:2] if len(walk.shape) == 3 else (1, 1)
        field = tuple(r + (f - 1) * j for r, f, j in zip(walk.field, spatial, walk.jump))
        return Step((n,), params, f"{n} x ({inputs} + 1) = {params:,}", (), inputs * n,
                    2 * inputs * n, field, walk.jump)

    @classmethod
    def torch_modules(cls, info, nn):
        flatten = [nn.Flatten()] if len(info.input_shape) == 3 else []
        return flatten + [nn.Linear(prod(info.input_shape), info.spec.outputs)]

    def __init__(self, info, init):
        super().__init__(info, init)
        inputs = prod(info.input_shape)
        w = init.rng.standard_normal((inputs, info.spec.outputs)) * np.sqrt(2 / inputs)
        self.param("W", w.astype(init.dtype))
        self.param("b", np.zeros(info.spec.outputs, dtype=init.dtype))

    def forward(self, x, train, relu=False):
        """x (N, ...) -> (N, n); relu=True applies the next RELU too (fusion)."""
        out, self.cache = ops.fc_forward(x, self.params["W"], self.params["b"], relu=relu)
        return out

    def backward(self, dout, need_dx=True, relu=False):
        """relu=True: apply the mask of the RELU that forward(relu=True) applied."""
        dx, self.grads["W"][...], self.grads["b"][...] = ops.fc_backward(
            dout, self.cache, need_dx, relu=relu)
        return dx

    def to_onnx(self, graph):
        # Gemm takes (N, I) rows; a volume is flattened first, and W's rows follow that order.
        w = graph.flatten(self.params["W"], self.info.input_shape)
        graph.tensor = graph.node("Gemm", [graph.tensor, graph.initializer("W", w),
                                           graph.initializer("b", self.params["b"])])

    def filter_images(self):
        """An FC reading a volume: output o's weights, reshaped to (H, W, D), are a template
        of the whole input (the lecture's linear classifier); (H, W, D, n). Else None."""
        if len(self.info.input_shape) != 3:
            return None
        return self.params["W"].reshape(*self.info.input_shape, -1)
