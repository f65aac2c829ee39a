"""CONV(K, FhxFw, s=S, p=P): K filters, each spanning the full depth of its input.

Each filter (F_h x F_w x D) slides over the zero-padded input; at every place it takes a dot
product with the window under it and adds its bias, giving one activation map per filter, and
the K maps stacked are the output volume:

    H' = (H + 2P_h - F_h) / S_h + 1,  W' likewise,  depth K
    parameters: K x (F_h * F_w * D + 1), e.g. 10 x (5*5*3 + 1) = 760

With ``g=G`` the filters come in G groups, each spanning D / G channels (AlexNet's two
halves; ``CONV(32, g=32)`` on 32 channels is depthwise, which ``DWCONV`` writes without counting
the channels): parameters K x (F_h * F_w * D / G + 1). A CONV directly followed by BATCHNORM has
no bias (PyTorch's ``bias=False``): BATCHNORM subtracts each channel's mean, which cancels any
bias, so its gradient is zero and it would only collect rounding noise. Padding may differ per
side and windows that do not tile may be rounded (`slidenet.layers.sliding`).

The kernels are `slidenet.ops.conv_forward` / `conv_backward` (which pick an algorithm) and, for
groups, `ops.grouped_conv_forward`; the lecture's loops are `slidenet.ops.naive.conv_forward`
with `groups`.
"""
import numpy as np

from slidenet import ops
from slidenet.errors import GeometryError
from slidenet.layers import sliding
from slidenet.layers.base import Inferred, Layer, Unfit, Window, by_channel, fold, window_at
from slidenet.layers.registry import register
from slidenet.notation import arguments
from slidenet.ops.conv import picked
from slidenet.ops.sides import pad_sides, unpad_sides


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
                "p": "pad", "pad": "pad", "g": "groups", "groups": "groups", "round": "round",
                "bias": "bias"}
    required = ("filters",)
    usage = ("CONV(K[, FhxFw][, s=S][, p=P|B:A|same|valid][, g=G][, round=down|up][, bias=no]), "
             "e.g. CONV(10, 5x5, s=1, p=2)")
    maps = True
    picture = "filters"
    has_bias = True         # dropped when BATCHNORM follows (`pattern` sets bias=False)

    @classmethod
    def read_arguments(cls, values):
        size = arguments.axes(values.get("size"), "filter size", (1, 2), minimum=1, default=(3, 3),
                              hint="F or FhxFw; the depth always spans the whole input, so leave it out")
        stride = arguments.axes(values.get("stride"), "stride", (1, 2), minimum=1, default=(1, 1))
        filters = cls._read_filters(values)
        groups = arguments.whole(values["groups"], "groups", minimum=1) \
            if values.get("groups") is not None else 1
        if filters and filters % groups:
            raise values["groups"].error(f"g={groups} must divide the {filters} filters: each "
                                         "group has K / G of them")
        return {"filters": filters, "size": size, "stride": stride,
                **sliding.read_padding(values.get("pad"), size, stride),
                "round": sliding.read_round(values.get("round")), "groups": groups,
                "bias": arguments.yes_no(values.get("bias"), "bias", True)}

    @classmethod
    def _read_filters(cls, values):
        return arguments.whole(values["filters"], "number of filters", minimum=1)

    @classmethod
    def shape_of(cls, spec, depth):
        """(K, G): filters and groups of this layer on an input of `depth` channels."""
        return spec.filters, spec.groups

    @classmethod
    def window(cls, spec, input_shape):
        before = spec.pad
        if len(input_shape) == 3 and (spec.same or spec.pad != spec.pad_after):
            try:
                before = sliding.sides(spec, input_shape).before
            except GeometryError:
                pass            # the shape rule reports it
        return Window(spec.size, spec.stride, before)

    @classmethod
    def infer(cls, spec, walk):
        try:
            out_h, out_w, d, formulas, field, jump = sliding.slide(
                spec, cls.window(spec, walk.shape), walk)
        except GeometryError as err:
            if "pad" in spec.given or spec.pad != (0, 0) or "round" in spec.given:
                raise
            # The formula shows P = 0; say that it was chosen, not written.
            raise GeometryError(f"{err} (no p= was given, and {_default_pad_reason(spec)})") from None
        (k, g), (fh, fw) = cls.shape_of(spec, d), spec.size
        if d % g:
            raise Unfit(f"g={g} must divide the input's depth {d}: each group of filters spans "
                        f"D / G channels; g={_divisor(d, g)} would")
        # Each filter spans its group's D / G channels (the full depth when G = 1), plus a bias.
        span = f"{fh}*{fw}*{d}" if g == 1 else f"{fh}*{fw}*{d}/{g}"
        params = k * (fh * fw * (d // g) + spec.bias)
        formula = f"{k} x ({span} + 1) = {params:,}" if spec.bias else \
            f"{k} x {span} = {params:,} (no bias{_why_no_bias(spec)})"
        madds = out_h * out_w * k * fh * fw * (d // g)
        return Inferred((out_h, out_w, k), params, formula, formulas, madds, 2 * madds, field, jump)

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
        s, d = info.spec, info.input_shape[2]
        (k, g), resolved = cls.shape_of(s, d), sliding.sides(s, info.input_shape)
        if resolved.even:
            return [nn.Conv2d(d, k, s.size, s.stride, resolved.before, groups=g, bias=s.bias)]
        (bh, bw), (ah, aw) = resolved.before, resolved.after
        return [nn.ZeroPad2d((bw, aw, bh, ah)), nn.Conv2d(d, k, s.size, s.stride, 0, groups=g,
                                                          bias=s.bias)]

    def __init__(self, info, init):
        super().__init__(info, init)
        fh, fw = info.spec.size
        d = info.input_shape[2]
        k, self.groups = self.shape_of(info.spec, d)
        self.sides = sliding.sides(info.spec, info.input_shape)
        # One group: the convolution pairs, fused with a RELU after it; padding that differs
        # per side (or crops) is made once by `ops.sides`, and the pair then pads nothing.
        # Groups run `ops.grouped_conv_forward` on their own.
        self.fusable = self.groups == 1
        self.pad = self.sides.before if self.sides.even else (0, 0)
        # A 1x1 window at a stride with nothing padded before (a projection): training picks
        # the pixels it reads (`conv.picked`), no padded copy and no rows.
        self.picks = self.fusable and picked.applies(info.spec.size, info.spec.stride,
                                                     self.sides.before, self.sides.after)
        self.input_shape = None
        fan_in = fh * fw * d // self.groups
        self.param("W", init.normal((fh, fw, d // self.groups, k), np.sqrt(2 / fan_in)))
        if info.spec.bias:
            self.param("b", np.zeros(k, dtype=init.dtype))
        self.no_bias = None if info.spec.bias else np.zeros(k, dtype=init.dtype)

    @property
    def bias(self):
        """b (K,): the parameter, or zeros when BATCHNORM follows."""
        return self.params["b"] if self.no_bias is None else self.no_bias

    def forward(self, x, train, relu=False):
        """x (N, H, W, D) -> (N, H', W', K); relu=True applies the next RELU too (fusion)."""
        stride = self.info.spec.stride
        self.input_shape = x.shape
        if self.picks:
            # A projection: the pixels its windows read, one copy, a 1x1 CONV at stride 1.
            out, self.cache = ops.conv_forward(picked.pick(x, stride, self.sides.after),
                                               self.params["W"], self.bias, relu=relu)
            return out
        if self.fusable and not self.sides.even and ops.conv.takes_sides(
                x, self.params["W"], stride, self.sides.before, self.sides.after):
            # Read through the per-side padding, no padded copy (training's stride-2 Winograd).
            out, self.cache = ops.conv_forward(x, self.params["W"], self.bias, stride, relu=relu,
                                               sides=(self.sides.before, self.sides.after))
            return out
        x = self._padded(x)
        if self.fusable:
            out, self.cache = ops.conv_forward(x, self.params["W"], self.bias, stride, self.pad,
                                               relu=relu)
        else:
            out, self.cache = ops.grouped_conv_forward(x, self.params["W"], self.bias, stride,
                                                       self.pad, self.groups, relu=relu)
        return out

    def _padded(self, x):
        """x with the padding of both sides made, when they differ (else x itself)."""
        return x if self.sides.even else pad_sides(x, self.sides.before, self.sides.after)

    def backward(self, dout, need_dx=True, relu=False, skip=None):
        """relu=True: apply the mask of the RELU that forward(relu=True) applied. skip: None, or
        an array of the input's shape to return dx + skip (a residual block's other branches'
        gradient, `merge.Add`), added by the kernel as it writes dx where it can."""
        if self.picks:
            dx, dw, db = ops.conv_backward(dout, self.cache, need_dx, relu=relu)
            if dx is not None:
                dx = picked.put_back(dx, self.input_shape, self.info.spec.stride,
                                     self.sides.after)
                if skip is not None:
                    dx = ops.add_forward([dx, skip])
            self.grads["W"][...] = dw
            if self.no_bias is None:
                self.grads["b"][...] = db
            return dx
        through = self.fusable and self.cache.algorithm == "winograd_s2"    # no padded copy
        in_kernel = skip is not None and self.fusable and (self.sides.even or through)
        backward = ops.conv_backward if self.fusable else ops.grouped_conv_backward
        if in_kernel:
            dx, dw, db = backward(dout, self.cache, need_dx, relu=relu, skip=skip)
        else:
            dx, dw, db = backward(dout, self.cache, need_dx, relu=relu)
        if dx is not None and not self.sides.even and not through:
            dx = unpad_sides(dx, self.sides.before, self.sides.after, self.input_shape, skip)
        elif skip is not None and not in_kernel:
            dx = ops.add_forward([dx, skip])
        self.grads["W"][...] = dw
        if self.no_bias is None:
            self.grads["b"][...] = db
        return dx

    def to_onnx(self, graph):
        s = self.info.spec
        w = graph.conv_weights(self.params["W"])
        inputs = [graph.tensor, graph.initializer("W", w)]
        if self.no_bias is None:
            inputs.append(graph.initializer("b", self.params["b"]))
        attributes = graph.window_attributes(s.size, s.stride, self.sides.before)
        (bh, bw), (ah, aw) = self.sides.before, self.sides.after
        # Rows a rounded-down window leaves out (a negative "after") are fewer than a stride:
        # ONNX's own floor leaves them out.
        attributes["pads"] = [bh, bw, max(ah, 0), max(aw, 0)]
        if self.groups > 1:
            attributes["group"] = self.groups
        graph.tensor = graph.node("Conv", inputs, **attributes)

    def prepare(self, relu=False, affine=None, pool=False):
        """Inference: the filters prepared once for the algorithm the kernels choose;
        relu=True applies the next RELU too (fusion); affine: a BATCHNORM's per-channel
        (scale, shift) folded into the filters and bias (`folding`). The result runs
        run(x) -> out, or run(x, skip) -> relu(conv(x) + b + skip) for a residual sum.
        pool=True (a fusable CONV only): run(x) -> a 2x2 MAXPOOL at stride 2 of that output
        (`ops.conv_infer`)."""
        w, b = self.params["W"], self.bias
        if affine is not None:
            w, b = fold(w, b, affine)
        stride = self.info.spec.stride
        if pool and self.fusable:
            pooled = ops.prepare_conv(w, b, stride, self.pad, relu,
                                      height=self.info.input_shape[0],
                                      width=self.info.input_shape[1])
            return lambda x: ops.conv_infer(self._padded(x), pooled, pool=True)
        if not self.fusable:
            w, b = w.copy(), b.copy()

            def grouped(x, skip=None):
                out = ops.grouped_conv_forward(self._padded(x), w, b, stride, self.pad,
                                               self.groups, relu=relu and skip is None)[0]
                return out if skip is None else ops.add_into(out, [skip], relu)
            return grouped
        if self.info.spec.size == (1, 1) and self.sides.before == (0, 0) and \
                max(self.sides.after) <= 0:
            # A 1x1 window at stride S reads every S-th pixel and nothing else (a projection
            # of a residual block): those pixels, picked once, are a 1x1 convolution at stride
            # 1, whose rows are the pixels themselves; no padded or cropped copy is made.
            (sh, sw), (ah, aw) = stride, self.sides.after
            picked = ops.prepare_conv(w, b, (1, 1), (0, 0), relu, height=self.info.output_shape[0])
            h, wd = self.info.input_shape[:2]

            def projection(x, skip=None):
                return ops.conv_infer(np.ascontiguousarray(x[:, :h + ah:sh, :wd + aw:sw]),
                                      picked, skip=skip)
            # Its prepared 1x1 CONV, for a step that runs a downsampling block in one kernel
            # (`merge.Add.prepare`, `conv.winograd_down`).
            projection.projection = (picked, (sh, sw))
            return projection
        prepared = ops.prepare_conv(w, b, stride, self.pad, relu, height=self.info.input_shape[0],
                                    width=self.info.input_shape[1])
        if not self.sides.even:
            # The kernel pads (`conv_infer`'s sides), or reads through the padding without a
            # padded copy (Winograd at stride 2, res18's downsampling CONVs).
            sides = (self.sides.before, self.sides.after)

            def through(x, skip=None):
                return ops.conv_infer(x, prepared, skip=skip, sides=sides)
            through.prepared, through.sides = prepared, sides     # as `run.prepared` below
            return through

        def run(x, skip=None):
            return ops.conv_infer(self._padded(x), prepared, skip=skip)
        # Its prepared CONV, for a step that runs a whole residual block in one kernel
        # (`merge.Add.prepare`, `conv.winograd_block`).
        run.prepared = prepared
        return run

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
        w = self.params["W"][..., channel].astype(np.float64)             # (F_h, F_w, D / G)
        if self.groups > 1:         # the channels of this filter's group
            span = w.shape[2]
            group = channel // (self.params["W"].shape[3] // self.groups)
            patch = patch[..., group * span:(group + 1) * span]
        products = patch.astype(np.float64) * w
        total, bias = float(products.sum()), float(self.bias[channel])
        return {"form": "dot", "rows": rows, "cols": cols, "channel": int(channel),
                "window": by_channel(patch), "filter": by_channel(w),
                "products": by_channel(products), "outside": outside.tolist(),
                "sum": total, "bias": bias, "value": total + bias}


def _why_no_bias(spec):
    return "" if "bias" in spec.given else ": BATCHNORM follows"


def _divisor(d, g):
    """The divisor of d nearest to g (a suggestion for g=)."""
    return min((x for x in range(1, d + 1) if d % x == 0), key=lambda x: (abs(x - g), x))


@register
class DepthwiseConv(Conv):
    """DWCONV: one F_h x F_w filter per input channel (M per channel with m=M), G = D groups;
    the same layer as CONV(M*D, g=D), written without counting the channels."""

    kind = "DWCONV"
    positional = ("size",)
    keywords = {"f": "size", "size": "size", "s": "stride", "stride": "stride", "p": "pad",
                "pad": "pad", "m": "multiplier", "round": "round", "bias": "bias"}
    required = ()
    usage = ("DWCONV([FhxFw][, s=S][, p=P|B:A|same|valid][, m=M][, round=down|up]): depthwise, "
             "M filters per channel (default 1), e.g. DWCONV(3x3, s=2)")

    @classmethod
    def read_arguments(cls, values):
        multiplier = arguments.whole(values["multiplier"], "multiplier m", minimum=1) \
            if values.get("multiplier") is not None else 1
        args = super().read_arguments({k: v for k, v in values.items() if k != "multiplier"})
        return {**args, "multiplier": multiplier}

    @classmethod
    def _read_filters(cls, values):
        return 0            # M x the input's depth, known once shapes are

    @classmethod
    def shape_of(cls, spec, depth):
        return spec.multiplier * depth, depth
