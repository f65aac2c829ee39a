"""CONV(K, FhxFw, s=S, p=P): K filters, each spanning the full depth of its input.

Each filter (F_h x F_w x D) slides over the zero-padded input; at every place it takes a dot
product with the window under it and adds its bias, giving one activation map per filter, and
the K maps stacked are the output volume:

    H' = (H + 2P_h - F_h) / S_h + 1,  W' likewise,  depth K
    parameters: K x (F_h * F_w * D + 1), e.g. 10 x (5*5*3 + 1) = 760

The kernels are `slidenet.ops.conv_forward` / `conv_backward` (which pick an algorithm); the
lecture's loops are `slidenet.ops.naive.conv_forward`.
"""
import numpy as np

from slidenet import ops
from slidenet.errors import GeometryError
from slidenet.layers.base import Inferred, Layer, Window, by_channel, slide, window_at
from slidenet.layers.registry import register
from slidenet.notation import arguments


def _axes(a, b):
    return str(a) if a == b else f"{a}x{b}"


def _default_pad_reason(spec):
    """Why the default padding of this CONV is 0: an even filter, or a stride above 1."""
    (fh, fw), (sh, sw) = spec.size, spec.stride
    if fh % 2 == 0 or fw % 2 == 0:
        return f"a {fh}x{fw} filter has no centred padding, so it is 0"
    return f"at stride {_axes(sh, sw)} the default padding is 0"


@register
class Conv(Layer):
    """K filters of F_h x F_w x D, He-initialised: W (F_h, F_w, D, K), b (K,)."""

    kind = "CONV"
    positional = ("filters", "size")
    keywords = {"k": "filters", "f": "size", "size": "size", "s": "stride", "stride": "stride",
                "p": "pad", "pad": "pad"}
    required = ("filters",)
    usage = "CONV(K[, FhxFw][, s=S][, p=P|same|valid]), e.g. CONV(10, 5x5, s=1, p=2)"
    maps = True
    picture = "filters"

    @classmethod
    def read_arguments(cls, values):
        size = arguments.axes(values.get("size"), "filter size", (1, 2), minimum=1, default=(3, 3),
                              hint="F or FhxFw; the depth always spans the whole input, so leave it out")
        stride = arguments.axes(values.get("stride"), "stride", (1, 2), minimum=1, default=(1, 1))
        return {"filters": arguments.whole(values["filters"], "number of filters", minimum=1),
                "size": size, "stride": stride,
                "pad": arguments.padding(values.get("pad"), size, stride)}

    @classmethod
    def window(cls, spec, input_shape):
        return Window(spec.size, spec.stride, spec.pad)

    @classmethod
    def infer(cls, spec, walk):
        try:
            out_h, out_w, d, formulas, field, jump = slide(spec, cls.window(spec, walk.shape), walk)
        except GeometryError as err:
            if "pad" in spec.given or spec.pad != (0, 0):
                raise
            # The formula shows P = 0; say that it was chosen, not written.
            raise GeometryError(f"{err} (no p= was given, and {_default_pad_reason(spec)})") from None
        k, (fh, fw) = spec.filters, spec.size
        params = k * (fh * fw * d + 1)          # each filter spans the full depth, plus a bias
        madds = out_h * out_w * k * fh * fw * d
        return Inferred((out_h, out_w, k), params, f"{k} x ({fh}*{fw}*{d} + 1) = {params:,}",
                    formulas, madds, 2 * madds, field, jump)

    @classmethod
    def notes(cls, info):
        """Why the padding is 0 when the pattern gave none and an odd filter at stride 1 would
        have kept the size: the default only centres odd filters at stride 1. (The chosen P is
        in every row's (N + 2P - F) / S + 1.)"""
        s = info.spec
        (fh, fw), (sh, sw), (ph, pw) = s.size, s.stride, s.pad
        if "pad" in s.given or ((sh, sw) == (1, 1) and fh % 2 and fw % 2):
            return []
        h, w = info.input_shape[:2]
        out = " x ".join(map(str, info.output_shape[:2]))
        why = []
        if fh % 2 == 0 or fw % 2 == 0:
            why.append(f"a {fh}x{fw} filter has no centred padding")
        if (sh, sw) != (1, 1):
            why.append(f"at stride {_axes(sh, sw)} no padding keeps the size")
        change = "" if (h, w) == info.output_shape[:2] else f": {h} x {w} becomes {out}"
        return [f"no p= given, so p={_axes(ph, pw)} ({'; '.join(why)}){change}; write p= to choose"]

    @classmethod
    def torch_modules(cls, info, nn):
        s = info.spec
        return [nn.Conv2d(info.input_shape[2], s.filters, s.size, s.stride, s.pad)]

    def __init__(self, info, init):
        super().__init__(info, init)
        fh, fw = info.spec.size
        d = info.input_shape[2]
        fan_in = fh * fw * d
        self.param("W", init.normal((fh, fw, d, info.spec.filters), np.sqrt(2 / fan_in)))
        self.param("b", np.zeros(info.spec.filters, dtype=init.dtype))

    def forward(self, x, train, relu=False):
        """x (N, H, W, D) -> (N, H', W', K); relu=True applies the next RELU too (fusion)."""
        out, self.cache = ops.conv_forward(x, self.params["W"], self.params["b"],
                                           self.info.spec.stride, self.info.spec.pad, relu=relu)
        return out

    def backward(self, dout, need_dx=True, relu=False):
        """relu=True: apply the mask of the RELU that forward(relu=True) applied."""
        dx, self.grads["W"][...], self.grads["b"][...] = ops.conv_backward(
            dout, self.cache, need_dx, relu=relu)
        return dx

    def to_onnx(self, graph):
        s = self.info.spec
        w = graph.conv_weights(self.params["W"])
        graph.tensor = graph.node("Conv", [graph.tensor, graph.initializer("W", w),
                                           graph.initializer("b", self.params["b"])],
                                  **graph.window_attributes(s.size, s.stride, s.pad))

    def prepare(self, relu=False):
        """Inference: the filters prepared once for the algorithm the kernels choose;
        relu=True applies the next RELU too (fusion)."""
        prepared = ops.prepare_conv(self.params["W"], self.params["b"], self.info.spec.stride,
                                    self.info.spec.pad, relu, height=self.info.input_shape[0])
        return lambda x: ops.conv_infer(x, prepared)

    def filter_images(self):
        return self.params["W"]

    def explain(self, x, i, j, channel):
        """The lecture's sentence in numbers: filter `channel` over the window at (i, j) of
        every input channel, the element-wise products, their sum, plus the bias.

        x (H, W, D) -> {"form": "dot", "rows", "cols" (the window's [start, stop) in x),
        "window", "filter", "products" (each D tables of F_h x F_w), "outside" (F_h x F_w:
        padding), "sum", "bias", "value"}. Products of float32 numbers are exact in float64, so
        `value` is the exact dot product; the kernel's float32 output is it, rounded.
        """
        patch, outside, rows, cols = window_at(x, self.window(self.info.spec, x.shape), i, j)
        w = self.params["W"][..., channel].astype(np.float64)             # (F_h, F_w, D)
        products = patch.astype(np.float64) * w
        total, bias = float(products.sum()), float(self.params["b"][channel])
        return {"form": "dot", "rows": rows, "cols": cols, "channel": int(channel),
                "window": by_channel(patch), "filter": by_channel(w),
                "products": by_channel(products), "outside": outside.tolist(),
                "sum": total, "bias": bias, "value": total + bias}
