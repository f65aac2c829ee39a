"""MAXPOOL(FhxFw, s=S) and AVGPOOL(FhxFw, s=S): the max or the mean of each window, per depth slice.

Pooling slides a window as CONV does but has no parameters and no padding; it shrinks height
and width and keeps the depth:

    H' = (H - F_h) / S_h + 1,  W' likewise,  depth D

``POOL`` is ``MAXPOOL(2x2, s=2)``, the lecture's usual choice; without ``s=`` the windows sit
side by side (S = F). Windows may overlap (3x3, s=2). Both kinds are made by one builder, as
they differ only in their kernels (`slidenet.ops.pool`).
"""
import numpy as np

from slidenet import arguments, ops
from slidenet.layers.base import Layer, Step, Window, slide, window_at
from slidenet.layers.registry import register


class _Pool(Layer):
    """A pooling window of F_h x F_w with stride (S_h, S_w); no parameters."""

    positional = ("size",)
    keywords = {"f": "size", "size": "size", "s": "stride", "stride": "stride"}
    maps = True

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
    def infer(cls, spec, walk):
        out_h, out_w, d, formulas, field, jump = slide(spec, cls.window(spec, walk.shape), walk,
                                                       can_pad=False)
        return Step((out_h, out_w, d), size_formulas=formulas, field=field, jump=jump)


@register
class MaxPool(_Pool):
    kind = "MAXPOOL"
    aliases = ("POOL",)
    usage = "MAXPOOL([FhxFw][, s=S]), e.g. MAXPOOL(2x2, s=2); pooling is never padded"

    @classmethod
    def torch_modules(cls, info, nn):
        return [nn.MaxPool2d(info.spec.size, info.spec.stride)]

    def forward(self, x, train):
        out, self.cache = ops.max_pool_forward(x, self.info.spec.size, self.info.spec.stride)
        return out

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

    def to_onnx(self, graph):
        s = self.info.spec
        graph.tensor = graph.node("MaxPool", [graph.tensor],
                                  **graph.window_attributes(s.size, s.stride, s.pad))


@register
class AvgPool(_Pool):
    kind = "AVGPOOL"
    usage = "AVGPOOL([FhxFw][, s=S]), e.g. AVGPOOL(2x2, s=2); pooling is never padded"

    @classmethod
    def torch_modules(cls, info, nn):
        return [nn.AvgPool2d(info.spec.size, info.spec.stride)]

    def forward(self, x, train):
        out, self.cache = ops.avg_pool_forward(x, self.info.spec.size, self.info.spec.stride)
        return out

    def backward(self, dout, need_dx=True):
        return ops.avg_pool_backward(dout, self.cache)

    def explain(self, x, i, j, channel):
        return explain_mean(x, self.window(self.info.spec, x.shape), i, j, channel)

    def to_onnx(self, graph):
        s = self.info.spec
        graph.tensor = graph.node("AveragePool", [graph.tensor],
                                  **graph.window_attributes(s.size, s.stride, s.pad))


def explain_mean(x, window, i, j, channel):
    """The window at (i, j) of depth slice `channel` and its mean: {"form": "mean", "rows",
    "cols", "window" (F_h x F_w), "sum", "count", "value"} (the sum in float64)."""
    patch, _, rows, cols = window_at(x, window, i, j)
    values = patch[..., channel].astype(np.float64)
    total = float(values.sum())
    return {"form": "mean", "rows": rows, "cols": cols, "channel": int(channel),
            "window": values.tolist(), "sum": total, "count": int(values.size),
            "value": total / values.size}
