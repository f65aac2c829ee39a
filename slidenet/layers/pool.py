"""MAXPOOL(FhxFw, s=S) and AVGPOOL(FhxFw, s=S): the max or the mean of each window, per depth slice.

Pooling slides a window as CONV does but has no parameters and, unless asked, no padding; it
shrinks height and width and keeps the depth:

    H' = (H - F_h) / S_h + 1,  W' likewise,  depth D

``POOL`` is ``MAXPOOL(2x2, s=2)``, the lecture's usual choice; without ``s=`` the windows sit
side by side (S = F). Windows may overlap (3x3, s=2). Both kinds are made by one builder, as
they differ only in their kernels (`slidenet.ops.pool`).

``p=`` pads as PyTorch's pools do (ResNet's ``MAXPOOL(3x3, s=2, p=1)``): a max pool's padding
never wins (it is -inf), an average pool counts its zeros (``count_include_pad``). ``round=``
rounds windows that do not tile (`slidenet.layers.sliding`); AVGPOOL takes round=down only.
"""
import numpy as np

from slidenet import ops
from slidenet.errors import GeometryError
from slidenet.layers import sliding
from slidenet.layers.base import Inferred, Layer, Window, slide, window_at
from slidenet.layers.registry import register
from slidenet.notation import arguments
from slidenet.ops.sides import pad_sides, unpad_sides


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
    """A pooling window of F_h x F_w with stride (S_h, S_w), as written: MAXPOOL, AVGPOOL; with
    p= or round=, the input is padded (or cropped) once to what the windows reach
    (`ops.sides`), and the pooling pair runs on it unpadded."""

    positional = ("size",)
    keywords = {"f": "size", "size": "size", "s": "stride", "stride": "stride", "p": "pad",
                "pad": "pad", "round": "round"}
    fill = 0.0              # what padding holds

    @classmethod
    def read_arguments(cls, values):
        size = arguments.axes(values.get("size"), "window size", (1, 2), minimum=1, default=(2, 2))
        # Without a stride, windows sit side by side: the lecture's 2x2, s=2.
        stride = arguments.axes(values.get("stride"), "stride", (1, 2), minimum=1, default=size)
        # Pooling is unpadded unless p= says otherwise (CONV's default padding is not its).
        pad = sliding.read_padding(values.get("pad"), size, stride) \
            if values.get("pad") is not None else {"pad": (0, 0), "pad_after": (0, 0),
                                                   "same": False}
        return {"size": size, "stride": stride, **pad,
                "round": sliding.read_round(values.get("round"))}

    @classmethod
    def window(cls, spec, input_shape):
        before = spec.pad
        if spec.same and len(input_shape) == 3:
            # p=same pads by the input's size (TensorFlow's rule puts an odd row after), so
            # the padding before the first window is worked out, as CONV's window does.
            try:
                before = sliding.sides(spec, input_shape, can_pad=False).before
            except GeometryError:
                pass            # the shape rule reports it
        return Window(spec.size, spec.stride, before)

    @classmethod
    def infer(cls, spec, walk):
        out_h, out_w, d, formulas, field, jump = sliding.slide(
            spec, cls.window(spec, walk.shape), walk, can_pad=False)
        return Inferred((out_h, out_w, d), size_formulas=formulas, field=field, jump=jump)

    def __init__(self, info, init):
        super().__init__(info, init)
        self.sides = sliding.sides(info.spec, info.input_shape, can_pad=False)
        # Padded or rounded: the input is padded (or cropped) once, and the pooling pair runs
        # unpadded on it, fused with a RELU before it or not.
        self.padded = not self.sides.before == self.sides.after == (0, 0)

    def forward(self, x, train):
        self.input_shape = x.shape
        if self.padded:
            x = pad_sides(x, self.sides.before, self.sides.after, self.fill)
        out, self.cache = self.kernels[0](x, self.info.spec.size, self.info.spec.stride)
        return out

    def backward(self, dout, need_dx=True):
        return self._unpadded(self.kernels[1](dout, self.cache))

    def _unpadded(self, dx):
        if not self.padded:
            return dx
        return unpad_sides(dx, self.sides.before, self.sides.after, self.input_shape)

    def to_onnx(self, graph):
        """kernel_shape, strides and pads per side. Rows that a rounded-down window leaves
        out (a negative "after") are fewer than a stride: ONNX's own floor leaves them out."""
        s = self.info.spec
        attributes = graph.window_attributes(s.size, s.stride, s.pad)
        (bh, bw), (ah, aw) = self.sides.before, self.sides.after
        attributes["pads"] = [bh, bw, max(ah, 0), max(aw, 0)]
        attributes.update(self.onnx_attributes)
        graph.tensor = graph.node(self.onnx_op, [graph.tensor], **attributes)


@register
class MaxPool(_Pool):
    kind = "MAXPOOL"
    aliases = ("POOL",)
    usage = ("MAXPOOL([FhxFw][, s=S][, p=P|B:A|same][, round=down|up]), e.g. MAXPOOL(2x2, s=2) "
             "or ResNet's MAXPOOL(3x3, s=2, p=1, round=down)")
    kernels = (ops.max_pool_forward, ops.max_pool_backward)
    onnx_op = "MaxPool"
    onnx_attributes = {}
    torch_name = "MaxPool2d"
    fill = -np.inf          # a padded cell never wins a window

    @classmethod
    def torch_modules(cls, info, nn):
        s = info.spec
        return [nn.MaxPool2d(s.size, s.stride, s.pad, ceil_mode=s.round == "up")]

    def backward(self, dout, need_dx=True, relu_mask=False):
        """relu_mask=True: x was a ReLU's output, whose mask this backward applies (fusion)."""
        return self._unpadded(ops.max_pool_backward(dout, self.cache, relu_mask=relu_mask))

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
    usage = ("AVGPOOL([FhxFw][, s=S][, p=P|B:A|same][, round=down]), e.g. AVGPOOL(2x2, s=2); "
             "padding counts as zeros")
    kernels = (ops.avg_pool_forward, ops.avg_pool_backward)
    onnx_op = "AveragePool"
    onnx_attributes = {"count_include_pad": 1}
    torch_name = "AvgPool2d"

    @classmethod
    def read_arguments(cls, values):
        args = super().read_arguments(values)
        if args["round"] == "up":
            raise values["round"].error(
                "AVGPOOL takes round=down only: PyTorch's ceil_mode divides the last windows by "
                "fewer cells than the others, which slidenet does not copy")
        return args

    @classmethod
    def torch_modules(cls, info, nn):
        return [nn.AvgPool2d(info.spec.size, info.spec.stride, info.spec.pad)]

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
