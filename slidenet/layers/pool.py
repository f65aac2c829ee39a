"""MAXPOOL(FhxFw, s=S) and AVGPOOL(FhxFw, s=S): the max or the mean of each window, per depth slice.

Pooling slides a window as CONV does but has no parameters and no padding; it shrinks height
and width and keeps the depth:

    H' = (H - F_h) / S_h + 1,  W' likewise,  depth D

``POOL`` is ``MAXPOOL(2x2, s=2)``, the lecture's usual choice; without ``s=`` the windows sit
side by side (S = F). Windows may overlap (3x3, s=2). Both kinds are made by one builder, as
they differ only in their kernels (`slidenet.ops.pool`).
"""
import numpy as np

from slidenet import ops
from slidenet.layers.base import Inferred, Layer, Window, slide, window_at
from slidenet.layers.registry import register
from slidenet.notation import arguments


class Pooling(Layer):
    """What every pooling kind shares: no parameters, a window slid over each depth slice, and a
    kernel pair from `slidenet.ops.pool` that takes (x, size, stride). A kind sets its kernels,
    its ONNX op and `window(spec, input_shape)`."""

    maps = True
    kernels = None          # (forward(x, size, stride) -> out, cache; backward(dout, cache))
    onnx_op = ""            # the ONNX node, with the window's attributes
    torch_name = ""         # MAXPOOL, AVGPOOL: the torch.nn module, built with (size, stride)

    @classmethod
    def infer(cls, spec, walk):
        out_h, out_w, d, formulas, field, jump = slide(spec, cls.window(spec, walk.shape), walk,
                                                       can_pad=False)
        return Inferred((out_h, out_w, d), size_formulas=formulas, field=field, jump=jump)

    def forward(self, x, train):
        window = self.window(self.info.spec, x.shape[1:])
        out, self.cache = self.kernels[0](x, window.size, window.stride)
        return out

    def backward(self, dout, need_dx=True):
        return self.kernels[1](dout, self.cache)

    def to_onnx(self, graph):
        w = self.window(self.info.spec, self.info.input_shape)
        graph.tensor = graph.node(self.onnx_op, [graph.tensor],
                                  **graph.window_attributes(w.size, w.stride, w.pad))


class _Pool(Pooling):
    """A pooling window of F_h x F_w with stride (S_h, S_w), as written: MAXPOOL, AVGPOOL."""

    positional = ("size",)
    keywords = {"f": "size", "size": "size", "s": "stride", "stride": "stride"}

    @classmethod
    def read_arguments(cls, values):
        size = arguments.axes(values.get("size"), "window size", (1, 2), minimum=1, default=(2, 2))
        # Without a stride, windows sit side by side: the lecture's 2x2, s=2.
        stride = arguments.axes(values.get("stride"), "stride", (1, 2), minimum=1, default=size)
        return {"size": size, "stride": stride, "pad": (0, 0)}

    @classmethod
    def window(cls, spec, input_shape):
        return Window(spec.size, spec.stride, spec.pad)

    @classmethod
    def torch_modules(cls, info, nn):
        return [getattr(nn, cls.torch_name)(info.spec.size, info.spec.stride)]


@register
class MaxPool(_Pool):
    kind = "MAXPOOL"
    aliases = ("POOL",)
    usage = "MAXPOOL([FhxFw][, s=S]), e.g. MAXPOOL(2x2, s=2); pooling is never padded"
    kernels = (ops.max_pool_forward, ops.max_pool_backward)
    onnx_op = "MaxPool"
    torch_name = "MaxPool2d"

    def backward(self, dout, need_dx=True, relu_mask=False):
        """relu_mask=True: x was a ReLU's output, whose mask this backward applies (fusion)."""
        return ops.max_pool_backward(dout, self.cache, relu_mask=relu_mask)

    def explain(self, x, i, j, channel):
        """The window at (i, j) of depth slice `channel` and the input that won: {"form":
        "max", "rows", "cols", "window" (F_h x F_w), "winner" ([r, c] in the window: the first
        maximum in row-major order, the one the backward hands the gradient to), "value"}."""
        patch, _, rows, cols = window_at(x, self.window(self.info.spec, x.shape), i, j)
        values = patch[..., channel]
        winner = np.unravel_index(int(values.argmax()), values.shape)
        return {"form": "max", "rows": rows, "cols": cols, "channel": int(channel),
                "window": values.astype(np.float64).tolist(),
                "winner": [int(v) for v in winner], "value": float(values[winner])}


@register
class AvgPool(_Pool):
    kind = "AVGPOOL"
    usage = "AVGPOOL([FhxFw][, s=S]), e.g. AVGPOOL(2x2, s=2); pooling is never padded"
    kernels = (ops.avg_pool_forward, ops.avg_pool_backward)
    onnx_op = "AveragePool"
    torch_name = "AvgPool2d"

    def explain(self, x, i, j, channel):
        return explain_mean(x, self.window(self.info.spec, x.shape), i, j, channel)


def explain_mean(x, window, i, j, channel):
    """The window at (i, j) of depth slice `channel` and its mean: {"form": "mean", "rows",
    "cols", "window" (F_h x F_w), "sum", "count", "value"} (the sum in float64)."""
    patch, _, rows, cols = window_at(x, window, i, j)
    values = patch[..., channel].astype(np.float64)
    total = float(values.sum())
    return {"form": "mean", "rows": rows, "cols": cols, "channel": int(channel),
            "window": values.tolist(), "sum": total, "count": int(values.size),
            "value": total / values.size}
