"""FC(n): fully connected. The input volume is stretched into one vector, times W, plus b.

As in the lecture's 32x32x3 -> 3072 example, a volume is flattened in (height, width, depth)
order, which for channels-last arrays is their memory order:

    parameters: n x (I + 1) with I = H * W * D, e.g. 10 x (3072 + 1) = 30,730

Every FC unit sees the whole input, so its receptive field is the whole image.

Hidden FCs are He-initialised. The scoring FC (the net's last layer) starts with weights 100
times smaller, so every class starts with nearly the same score and the loss at initialisation
is what chance gives: ln C for softmax, C - 1 for the SVM's margins (cs231n's first sanity
check). With He weights there, the scores start far apart and the loss several times higher.
"""
from math import prod

import numpy as np

from slidenet import ops
from slidenet.layers.base import Inferred, Layer, fold
from slidenet.layers.registry import register
from slidenet.notation import arguments

SCORING_SCALE = 0.01        # the scoring FC's initial weights, relative to He's
EXPLAINED = 12              # contributions an explanation lists, the largest first


@register
class FC(Layer):
    """Fully connected: W (I, O) with I the flattened input volume, b (O,); He-initialised."""

    kind = "FC"
    positional = ("outputs",)
    keywords = {"n": "outputs", "bias": "bias"}
    required = ("outputs",)
    usage = "FC(n[, bias=no]), e.g. FC(10)"
    picture = "templates"
    scores = True
    has_bias = True         # dropped when BATCHNORM follows (`pattern` sets bias=False)

    @classmethod
    def read_arguments(cls, values):
        return {"outputs": arguments.whole(values["outputs"], "number of outputs", minimum=1),
                "bias": arguments.yes_no(values.get("bias"), "bias", True)}

    @classmethod
    def infer(cls, spec, walk):
        inputs, n = prod(walk.shape), spec.outputs
        params = (inputs + spec.bias) * n
        # An FC unit sees the whole volume: a window as large as the input, on both axes.
        spatial = walk.shape[:2] if len(walk.shape) == 3 else (1, 1)
        field = tuple(r + (f - 1) * j for r, f, j in zip(walk.field, spatial, walk.jump))
        # A volume is stretched into H*W*D numbers: the formula says where they come from.
        stretched = "*".join(map(str, walk.shape)) if len(walk.shape) == 3 else str(inputs)
        formula = f"{n} x ({stretched} + 1) = {params:,}" if spec.bias else \
            f"{n} x {stretched} = {params:,} (no bias)"
        return Inferred((n,), params, formula, (), inputs * n, 2 * inputs * n, field, walk.jump)

    @classmethod
    def torch_modules(cls, info, nn):
        flatten = [nn.Flatten()] if len(info.input_shape) == 3 else []
        return flatten + [nn.Linear(prod(info.input_shape), info.spec.outputs, bias=info.spec.bias)]

    def __init__(self, info, init):
        super().__init__(info, init)
        inputs = prod(info.input_shape)
        scale = np.sqrt(2 / inputs) * (SCORING_SCALE if init.scoring else 1)
        self.param("W", init.normal((inputs, info.spec.outputs), scale))
        zeros = np.zeros(info.spec.outputs, dtype=init.dtype)
        if info.spec.bias:
            self.param("b", zeros)
        self.no_bias = None if info.spec.bias else zeros

    @property
    def bias(self):
        """b (n,): the parameter, or zeros when BATCHNORM follows."""
        return self.params["b"] if self.no_bias is None else self.no_bias

    def forward(self, x, train, relu=False):
        """x (N, ...) -> (N, n); relu=True applies the next RELU too (fusion)."""
        out, self.cache = ops.fc_forward(x, self.params["W"], self.bias, relu=relu)
        return out

    def backward(self, dout, need_dx=True, relu=False):
        """relu=True: apply the mask of the RELU that forward(relu=True) applied."""
        grad = self.grads["W"]
        dx, dw, db = ops.fc_backward(dout, self.cache, need_dx, relu=relu, dw=grad)
        if dw is not grad:
            grad[...] = dw
        if self.no_bias is None:
            self.grads["b"][...] = db
        return dx

    def to_onnx(self, graph):
        # Gemm takes (N, I) rows; a volume is flattened first, and W's rows follow that order.
        w = graph.flatten(self.params["W"], self.info.input_shape)
        graph.tensor = graph.node("Gemm", [graph.tensor, graph.initializer("W", w),
                                           graph.initializer("b", self.bias)])

    def prepare(self, relu=False, affine=None):
        """Inference: the weights copied once; relu=True applies the next RELU too (fusion);
        affine: a BATCHNORM's per-output (scale, shift) folded into W and b (`folding`). Runs
        `ops.fc_infer` (a few images read only W's rows whose input is not 0)."""
        w, b = self.params["W"].copy(), self.bias.copy()
        if affine is not None:
            w, b = fold(w, b, affine)
        return lambda x: ops.fc_infer(x, w, b, relu=relu)

    def filter_images(self):
        """An FC reading a volume: output o's weights, reshaped to (H, W, D), are a template
        of the whole input (the lecture's linear classifier); (H, W, D, n). Else None."""
        if len(self.info.input_shape) != 3:
            return None
        return self.params["W"].reshape(*self.info.input_shape, -1)

    def explain(self, x, i, j, channel):
        """Unit `channel`: the flattened input times column `channel` of W, summed, plus the
        bias; (i, j) is always (0, 0). Lists the EXPLAINED largest products by size, each with
        where its input sits in x: {"form": "fc", "shape" (of x), "inputs", "top" ([{"at",
        "x", "w", "product"}]), "rest" (the other products' sum), "sum", "bias", "value"}."""
        flat = np.asarray(x, dtype=np.float64).reshape(-1)
        products = flat * self.params["W"][:, channel].astype(np.float64)
        order = np.argsort(-np.abs(products), kind="stable")[:EXPLAINED]
        total, bias = float(products.sum()), float(self.bias[channel])
        top = [{"at": [int(v) for v in np.unravel_index(k, np.shape(x))], "x": float(flat[k]),
                "w": float(self.params["W"][k, channel]), "product": float(products[k])}
               for k in order]
        return {"form": "fc", "channel": int(channel), "shape": list(np.shape(x)),
                "inputs": int(flat.size), "top": top,
                "rest": float(total - products[order].sum()), "sum": total, "bias": bias,
                "value": total + bias}
