"""How each ONNX op becomes part of a slidenet net: the values a graph is read into, and one
handler per op type (`OPS`), used by `onnx_import`.

A value is a constant (`Const`: a weight, a shape), the image batch on its way through the net
(`Act`, whose layout is tracked), the softmax of the scores (`Probs`), or `Unknown` (what a
refused node would have made). A handler reads a node's attributes and inputs and returns its
outputs; a node that becomes a layer appends a `Piece` (its text in the pattern and its arrays
in slidenet's layout). A handler checks the attributes first, so a node is judged even when an
earlier fault left its input unknown (`Skip`); `Unsupported` carries the reasons, each naming
the attribute at fault.
"""
from dataclasses import dataclass, field, replace
from math import ceil, prod
from typing import Optional, Tuple

import numpy as np

from slidenet import geometry
from slidenet.interop.onnx_file import tensor_array
from slidenet.interop.onnx_graph import rows_dhw_to_hwd
from slidenet.interop.onnx_weights import FileTensor
from slidenet.ops import BATCHNORM_EPSILON

# The dynamic batch size inside shape computations (Shape -> Gather -> ... -> Reshape): a
# number no real dimension has, which only Reshape understands.
BATCH = -(2**62) + 11

class Unsupported(Exception):
    """What is wrong with one node: one or more reasons (the attribute at fault, and why)."""


class Skip(Exception):
    """A node that reads a value an earlier fault left unknown: that fault is already listed."""


@dataclass
class Act:
    """The image batch on its way through the net: an ONNX value computed from the input.

    layout: "input" (before the graph shows whether it is NCHW or NHWC), "NCHW", "NHWC", or
    "flat" (N, n). dims: the sizes after the batch axis, in the tensor's own order.
    flat_from: for a flattened volume, (order, (H, W, D)) with order "DHW" (flattened from
    NCHW) or "HWD" (from NHWC). piece: the index of the CONV, FC or BATCHNORM whose unchanged
    output this is (a Mul or Add can be folded into it), else None. pre: only preprocessing
    (Mul, Add, Transpose) lies between the graph's input and here. source: the index of the
    layer (`Piece`) whose output this is, None for the graph's input: the edges of the graph of
    layers, from which the importer writes branches.
    """
    name: str
    layout: str
    dims: Tuple[int, ...]
    flat_from: Optional[tuple] = None
    piece: Optional[int] = None
    pre: bool = False
    source: Optional[int] = None


class Const:
    """A constant value. `weights`: as it was given, which for a large weight may still lie in
    its file (an `onnx_weights.FileTensor`, read as it is copied into the net); `array`: its
    numbers, read from the file the first time they are asked for."""
    __slots__ = ("weights",)

    def __init__(self, array):
        self.weights = array

    @property
    def array(self):
        if isinstance(self.weights, FileTensor):
            self.weights = np.asarray(self.weights)
        return self.weights


@dataclass
class Probs:
    """The Softmax (or LogSoftmax) of the net's scores: allowed only as an output."""
    act: Act


class Unknown:
    """A value an unsupported node would have made."""


@dataclass
class Piece:
    """One slidenet layer made from one or more ONNX nodes."""
    text: str                           # in the pattern: "CONV(16, 3x3, s=1x1, p=1x1)"
    node: str                           # the node it came from
    shape: Optional[tuple]              # its output in slidenet's terms, (H, W, D) or (n,)
    params: dict = field(default_factory=dict)      # slidenet's layout: W (F_h, F_w, D, K), ...
    buffers: dict = field(default_factory=dict)
    scales: tuple = ()                  # params a per-channel Mul after it multiplies
    shift: Optional[str] = None         # the param a per-channel Add after it adds to
    reads: tuple = ()                   # the `Act.source` of each input: one, or a merge's


def where(node):
    return f"{node.op_type} {(node.name or (node.output[0] if node.output else '?'))!r}"


# AttributeProto's type numbers (fixed by the ONNX standard) of the attributes Conv, the pools
# and the others carry: read straight from the message, the rest through onnx.helper.
_FLOAT, _INT, _STRING, _INTS = 1, 2, 3, 7


def attributes(onnx, node):
    """{name: value} of a node's attributes (strings decoded); `onnx_checks.node_faults` has
    already refused references to a function's attributes."""
    values = {}
    for attribute in node.attribute:
        kind = attribute.type
        if kind == _INTS:
            value = list(attribute.ints)
        elif kind == _INT:
            value = attribute.i
        elif kind == _FLOAT:
            value = attribute.f
        elif kind == _STRING:
            value = attribute.s.decode()
        else:
            value = onnx.helper.get_attribute_value(attribute)
            if isinstance(value, bytes):
                value = value.decode()
        values[attribute.name] = value
    return values


_HINTS = {
    "LSTM": "a recurrent layer (LSTM)", "GRU": "a recurrent layer (GRU)",
    "RNN": "a recurrent layer (RNN)", "ConvTranspose": "a transposed convolution",
    "Pad": "a separate padding node; slidenet's CONV pads equally on both sides of each axis",
    "Resize": "resizing inside the net", "Upsample": "upsampling inside the net",
    "Attention": "attention", "LayerNormalization": "layer normalisation",
    "InstanceNormalization": "instance normalisation",
    "Loop": "a loop", "If": "a branch (If)", "Scan": "a scan",
}


def unknown_op(node):
    what = _HINTS.get(node.op_type, "an operation")
    domain = f" of domain {node.domain!r}" if node.domain not in ("", "ai.onnx") else ""
    return (f"{node.op_type}{domain} is {what}, not one of the lecture's layers slidenet has "
            "(CONV, DWCONV, MAXPOOL, AVGPOOL, GLOBALAVGPOOL, FC, BATCHNORM, DROPOUT, RELU, "
            "RELU6, LEAKYRELU, TANH, SIGMOID, and branches merged by ADD or CONCAT)")


def _number(value):
    """A float32 attribute written as the shortest decimal that reads back to it: 0.01."""
    return np.format_float_positional(np.float32(value), trim="-")


def slidenet_shape(act):
    """The shape slidenet gives this value: (H, W, D) for a volume (flattened or not), (n,)."""
    if act.layout == "NCHW":
        c, h, w = act.dims
        return (h, w, c)
    if act.layout == "NHWC":
        return tuple(act.dims)
    if act.layout == "flat":
        return act.flat_from[1] if act.flat_from else tuple(act.dims)
    return None


# ---- windows: Conv and the pools ----

@dataclass
class Slide:
    """How a Conv or pool slides: per axis (height, width) its stride, the padding before and
    after, the output size, and what the pattern writes for it (", p=..., round=down")."""
    stride: tuple
    before: tuple
    after: tuple
    out: tuple
    text: str


def _window(reader, node, a, act, size, can_grow=True):
    """The `Slide` of a Conv or pool on `act`. Padding may differ per side (p=B:A, as
    TensorFlow's 'same' at stride 2 pads one more after); windows that do not tile the input
    are ONNX's floor, which is round=down (the last rows no window reaches are left out), or
    with ceil_mode=1 its ceil, round=up (a last window past the edge). can_grow=False: a kind
    that cannot add that window (AVGPOOL: PyTorch divides it by fewer cells)."""
    _, h, w = act.dims
    stride = tuple(a.get("strides", [1, 1]))
    if len(stride) != 2 or min(stride) < 1:
        raise Unsupported(f"strides={list(stride)}: slidenet slides 2-D windows by at least 1")
    auto = a.get("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4 or min(pads) < 0:
            raise Unsupported(f"pads={pads}: slidenet pads each side of a 2-D window by 0 or more")
        before, after = tuple(pads[:2]), tuple(pads[2:])
    elif auto == "VALID":
        before = after = (0, 0)
    else:
        before, after = [], []
        for n, f, s in zip((h, w), size, stride):
            total = max((ceil(n / s) - 1) * s + f - n, 0)
            first = total // 2 if auto == "SAME_UPPER" else total - total // 2
            before.append(first)
            after.append(total - first)
        before, after = tuple(before), tuple(after)
    # ceil_mode=1 is slidenet's round=up: one more window where the last rows are left over,
    # unless it would start beyond the input and its leading padding (PyTorch's and
    # onnxruntime's rule, which `geometry.fit` follows).
    rule = "up" if a.get("ceil_mode", 0) else "down"
    out, rounded, grown = [], False, False
    for n, f, s, pb, pa, axis in zip((h, w), size, stride, before, after, ("height", "width")):
        span = n + pb + pa - f
        if span < 0:
            raise Unsupported(f"kernel_shape={list(size)} is larger than the padded {axis} "
                              f"{n + pb + pa}")
        size_out = geometry.fit(n, f, s, pb, pa, rule)[0]
        out.append(size_out)
        rounded |= span % s != 0
        grown |= size_out != span // s + 1
    if grown and not can_grow:
        raise Unsupported("ceil_mode=1: its last window reaches past the padding, and PyTorch "
                          "divides that window by fewer cells than the others; slidenet's "
                          "AVGPOOL rounds down only (round=down)")
    if before == after:
        pad = f"p={before[0]}x{before[1]}"
    else:
        pad = f"p={before[0]}:{after[0]}x{before[1]}:{after[1]}"
    text = f"s={stride[0]}x{stride[1]}, {pad}" + \
        (f", round={'up' if grown else 'down'}" if rounded else "")
    return Slide(stride, before, after, tuple(out), text)


def _conv(reader, node, a, inputs):
    faults = []
    dilations = list(a.get("dilations", [1, 1]))
    if any(d != 1 for d in dilations):
        faults.append(f"dilations={dilations}: a dilated convolution; slidenet's filters "
                      "cover neighbouring pixels only")
    groups = a.get("group", 1)
    if groups < 1:
        faults.append(f"group={groups}: a convolution has at least one group")
    if "kernel_shape" in a and len(a["kernel_shape"]) != 2:
        faults.append(f"kernel_shape={list(a['kernel_shape'])}: a "
                      f"{len(a['kernel_shape'])}-D convolution; slidenet's CONV is 2-D")
    if faults:
        raise Unsupported(*faults)
    x = reader.volume(inputs[0], node)
    weights = reader.weights(inputs[1], "weights")
    c, h, w = x.dims
    if c % groups or weights.ndim != 4 or weights.shape[1] != c // groups or \
            weights.shape[0] % groups:
        raise Unsupported(f"its weights have shape {list(weights.shape)}, not (K, {c // groups}, "
                          f"F_h, F_w) for its {c}-channel input in {groups} group(s)")
    k = weights.shape[0]
    size = tuple(weights.shape[2:])
    if "kernel_shape" in a and tuple(a["kernel_shape"]) != size:
        raise Unsupported(f"kernel_shape={list(a['kernel_shape'])} but its weights are "
                          f"{size[0]}x{size[1]}")
    bias = reader.optional_const(inputs, 2, "bias", np.zeros(k, np.float32))
    if bias.shape != (k,):
        raise Unsupported(f"its bias has shape {list(bias.shape)}, not ({k},)")
    window = _window(reader, node, a, x, size)
    out_h, out_w = window.out
    if groups > 1 and groups == c:      # depthwise: one group per channel, as MobileNet's
        multiplier = f", m={k // c}" if k != c else ""
        text = f"DWCONV({size[0]}x{size[1]}, {window.text}{multiplier})"
    else:
        grouped = f", g={groups}" if groups > 1 else ""
        text = f"CONV({k}, {size[0]}x{size[1]}, {window.text}{grouped})"
    piece = Piece(text, where(node),
                  (out_h, out_w, k),
                  {"W": weights.transpose(2, 3, 1, 0), "b": bias}, scales=("W", "b"), shift="b")
    return reader.add_piece(piece, x, "NCHW", (k, out_h, out_w))


def _pool(kind):
    def handler(reader, node, a, inputs):
        faults = []
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            faults.append(f"dilations={list(a['dilations'])}: a dilated pool; slidenet's "
                          "windows cover neighbouring pixels")
        padded = any(a.get("pads", [0])) or \
            a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "")
        if padded and kind == "AVGPOOL" and not a.get("count_include_pad", 0):
            faults.append("count_include_pad=0: an average over the window's pixels inside the "
                          "image only; slidenet's padded AVGPOOL counts the zeros of the padding "
                          "(count_include_pad=1)")
        size = tuple(a.get("kernel_shape", ()))
        if len(size) != 2:
            faults.append(f"kernel_shape={list(size)}: slidenet pools 2-D windows")
        if len(node.output) > 1 and node.output[1]:
            faults.append("it also outputs the indices of the maxima, which slidenet does not make")
        if faults:
            raise Unsupported(*faults)
        x = reader.volume(inputs[0], node)
        window = _window(reader, node, a, x, size, can_grow=kind != "AVGPOOL")
        c = x.dims[0]
        out_h, out_w = window.out
        text = window.text.replace(", p=0x0", "")
        piece = Piece(f"{kind}({size[0]}x{size[1]}, {text})", where(node), (out_h, out_w, c))
        return reader.add_piece(piece, x, "NCHW", (c, out_h, out_w), foldable=False)
    return handler


def _global_pool(text):
    def handler(reader, node, a, inputs):
        x = reader.volume(inputs[0], node)
        c, h, w = x.dims
        return reader.add_piece(Piece(text.format(h=h, w=w), where(node), (1, 1, c)), x, "NCHW",
                                (c, 1, 1), foldable=False)
    return handler


def _reduce_mean(reader, node, a, inputs):
    """A mean over height and width (tf2onnx's GlobalAveragePooling2D) is GLOBALAVGPOOL."""
    axes = a.get("axes")
    if axes is None:
        axes = reader.optional_const(inputs, 1, "axes")
    x = reader.act(inputs[0], node)
    if x.layout not in ("NCHW", "NHWC") or axes is None:
        raise Unsupported("only a mean over the height and width of an image volume is a layer "
                          "slidenet has (GLOBALAVGPOOL)")
    spatial = {2, 3} if x.layout == "NCHW" else {1, 2}
    if {int(v) % 4 for v in np.ravel(axes)} != spatial:
        raise Unsupported(f"axes={list(np.ravel(axes))}: only the mean over height and width "
                          "(GLOBALAVGPOOL) is a layer slidenet has")
    h, w, c = slidenet_shape(x)
    out = reader.add_piece(Piece("GLOBALAVGPOOL", where(node), (1, 1, c)), x, x.layout,
                           (c, 1, 1) if x.layout == "NCHW" else (1, 1, c), foldable=False)
    if a.get("keepdims", 1):
        return out
    return replace(out, layout="flat", dims=(c,), flat_from=("HWD", (1, 1, c)))


# ---- layers of one number at a time ----

def _batchnorm(reader, node, a, inputs):
    faults = []
    if a.get("training_mode", 0):
        faults.append("training_mode=1: a training graph; export the model in eval mode")
    if not a.get("spatial", 1):
        faults.append("spatial=0: statistics per position; slidenet's are per channel")
    if any(node.output[1:]):
        faults.append("it outputs running statistics (a training graph); export in eval mode")
    if faults:
        raise Unsupported(*faults)
    x = reader.act(inputs[0], node)
    if x.layout == "input":
        x = reader.resolve(x, "NCHW")
    if x.layout == "NHWC" or (x.layout == "flat" and x.flat_from and prod(x.flat_from[1][:2]) > 1):
        raise Unsupported("it normalises a tensor whose axis 1 is not the channels; slidenet's "
                          "BATCHNORM works per depth channel")
    channels = x.dims[0]
    gamma, beta, mean, var = (np.asarray(reader.const(v, what), np.float64).reshape(-1)
                              for v, what in zip(inputs[1:5], ("scale", "B", "mean", "var")))
    if any(v.shape != (channels,) for v in (gamma, beta, mean, var)):
        raise Unsupported(f"its scale, B, mean and var are not {channels} numbers each")
    epsilon = float(a.get("epsilon", 1e-5))
    # slidenet divides by sqrt(var + its own epsilon); moving the difference into var keeps
    # sqrt(var + epsilon) as the graph has it.
    if np.float32(epsilon) != np.float32(BATCHNORM_EPSILON):
        var = var + (epsilon - BATCHNORM_EPSILON)
    piece = Piece("BATCHNORM", where(node), slidenet_shape(x), {"gamma": gamma, "beta": beta},
                  {"running_mean": mean, "running_var": var}, scales=("gamma", "beta"),
                  shift="beta")
    return reader.add_piece(piece, x, x.layout, x.dims)


def _elementwise(text, check=None):
    def handler(reader, node, a, inputs):
        written = text
        if check is not None:
            written = check(a)
        x = reader.act(inputs[0], node)
        return reader.add_piece(Piece(written, where(node), slidenet_shape(x)), x, x.layout, x.dims,
                                foldable=False)
    return handler


def _clip(reader, node, a, inputs):
    """Clip to [0, 6] is ReLU6 (MobileNet's), RELU6; to [0, inf) it is RELU."""
    low = a.get("min") if reader.opset < 11 else reader.optional_const(inputs, 1, "min")
    high = a.get("max") if reader.opset < 11 else reader.optional_const(inputs, 2, "max")
    low = -np.inf if low is None else float(np.ravel(low)[0])
    high = np.inf if high is None else float(np.ravel(high)[0])
    if low != 0 or high not in (6.0, np.inf):
        raise Unsupported(f"min={_number(low)}, max={_number(high)}: slidenet clips only to "
                          "[0, 6] (RELU6) or [0, inf) (RELU)")
    return _elementwise("RELU6" if high == 6 else "RELU")(reader, node, a, inputs)


def _leaky_alpha(a):
    alpha = float(a.get("alpha", 0.01))
    if not 0 <= alpha < 1:
        raise Unsupported(f"alpha={_number(alpha)}: slidenet's LEAKYRELU takes a slope 0 <= a < 1")
    return f"LEAKYRELU({_number(alpha)})"


def _dropout(reader, node, a, inputs):
    ratio = a.get("ratio", 0.5)
    if reader.opset >= 12:
        ratio = reader.optional_const(inputs, 1, "ratio", np.array(0.5))
        training = reader.optional_const(inputs, 2, "training_mode", np.array(False))
        if bool(np.ravel(training)[0]):
            raise Unsupported("training_mode=true: dropout at inference")
        ratio = float(np.ravel(ratio)[0])
    if not 0 <= ratio < 1:
        raise Unsupported(f"ratio={ratio}: slidenet's DROPOUT takes 0 <= p < 1")
    x = reader.act(inputs[0], node)
    # Dropout is the identity at inference: a Mul or Add after it still folds into what came
    # before, which `piece` keeps pointing at.
    index = reader.append(Piece(f"DROPOUT({_number(ratio)})", where(node), slidenet_shape(x)), x)
    return [replace(x, pre=False, source=index), None]


def _softmax(reader, node, a, inputs):
    x = reader.act(inputs[0], node)
    axis = a.get("axis", -1 if reader.opset >= 13 else 1)
    if x.layout != "flat" or axis not in (1, -1):
        raise Unsupported("a softmax over anything but the class scores of a flat (N, C) value")
    return Probs(x)


# ---- moving values around: Identity, Transpose, Flatten, Reshape, Squeeze ----

def _identity(reader, node, a, inputs):
    value = inputs[0] if inputs else None
    if isinstance(value, Const):
        return value
    return replace(reader.act(value, node))


def _transpose(reader, node, a, inputs):
    value = inputs[0]
    if isinstance(value, Const):
        return Const(np.transpose(value.weights, a.get("perm")))     # a weight's stays lazy
    x = reader.act(value, node)
    perm = list(a.get("perm", range(len(x.dims) + 1)[::-1]))
    if perm == list(range(len(x.dims) + 1)):
        return replace(x)
    if perm == [0, 3, 1, 2]:
        x = reader.resolve(x, "NHWC")
        if x.layout == "NHWC":
            h, w, c = x.dims
            return replace(x, layout="NCHW", dims=(c, h, w))
    if perm == [0, 2, 3, 1]:
        x = reader.resolve(x, "NCHW")
        if x.layout == "NCHW":
            c, h, w = x.dims
            return replace(x, layout="NHWC", dims=(h, w, c))
    raise Unsupported(f"perm={perm} on a {x.layout} tensor: slidenet moves only between "
                      "(N, C, H, W) and (N, H, W, C); this would move the batch axis or swap "
                      "height and width")


def _flat(reader, x, node):
    """`x` flattened per image, (N, n), remembering the order of a flattened volume."""
    if x.layout == "flat":
        return replace(x)
    if x.layout == "input":
        layout = reader.layout or reader.fallback_layout
        if layout is None:
            raise Unsupported("it flattens the graph's input directly, so the graph does not show "
                              "whether that is (N, C, H, W) or (N, H, W, C): say --input-layout "
                              "nchw or nhwc")
        x = reader.resolve(x, layout)
    order = "DHW" if x.layout == "NCHW" else "HWD"
    return replace(x, layout="flat", dims=(prod(x.dims),), flat_from=(order, slidenet_shape(x)))


def _flatten(reader, node, a, inputs):
    value = inputs[0]
    if isinstance(value, Const):
        weights = value.weights     # a weight left in its file stays there
        axis = a.get("axis", 1) % max(weights.ndim, 1)
        return Const(weights.reshape(prod(weights.shape[:axis]), -1))
    x = reader.act(value, node)
    axis = a.get("axis", 1)
    if axis < 0:
        axis += len(x.dims) + 1
    if axis != 1:
        raise Unsupported(f"axis={a.get('axis')}: only flattening each image (axis=1) is "
                          "what an FC does")
    return _flat(reader, x, node)


def _reshape(reader, node, a, inputs):
    value = inputs[0]
    target = [int(v) for v in np.ravel(reader.const(inputs[1], "shape"))]
    allow_zero = a.get("allowzero", 0)
    if isinstance(value, Const):
        if BATCH in target:
            raise Unsupported("it reshapes a constant by the batch size")
        source = value.weights      # a weight left in its file stays there
        shape = [source.shape[i] if v == 0 and not allow_zero else v for i, v in enumerate(target)]
        return Const(source.reshape(shape))
    x = reader.act(value, node)
    total = prod(x.dims)
    batch_first = target and (target[0] == BATCH or (target[0] == 0 and not allow_zero))
    if len(target) == 4 and (batch_first or target[0] == -1):
        moved = _one_channel_move(reader, x, target[1:])
        if moved is not None:
            return moved
    if len(target) == 2:
        second = target[1]
        if second == 0 and not allow_zero:
            second = x.dims[0]
        if (batch_first and second in (-1, total)) or (target[0] == -1 and second == total):
            return _flat(reader, x, node)
    shown = ["N" if v == BATCH else v for v in target]
    raise Unsupported(f"shape={shown}: of the reshapes, slidenet follows only flattening each "
                      "image, (N, -1)")


def _one_channel_move(reader, x, dims):
    """A Reshape that moves a 1-channel image between (N, H, W, 1) and (N, 1, H, W): with one
    channel, tf2onnx writes Keras's layout change around a Conv as a Reshape rather than a
    Transpose. The same value in the other layout, or None for any other reshape."""
    dims = list(dims)
    if x.layout == "input":
        a, b, c = x.dims
        if c == 1 and dims == [1, a, b]:
            x = reader.resolve(x, "NHWC")
        elif a == 1 and dims == [b, c, 1]:
            x = reader.resolve(x, "NCHW")
    if x.layout == "NHWC" and x.dims[2] == 1 and dims == [1, *x.dims[:2]]:
        return replace(x, layout="NCHW", dims=(1, *x.dims[:2]))
    if x.layout == "NCHW" and x.dims[0] == 1 and dims == [*x.dims[1:], 1]:
        return replace(x, layout="NHWC", dims=(*x.dims[1:], 1))
    return None


def _squeeze(reader, node, a, inputs):
    axes = a.get("axes")
    if axes is None:
        axes = reader.optional_const(inputs, 1, "axes")
    value = inputs[0]
    if isinstance(value, Const):
        return Const(np.squeeze(value.array, None if axes is None else tuple(np.ravel(axes))))
    x = reader.act(value, node)
    if x.layout in ("NCHW", "NHWC") and slidenet_shape(x)[:2] == (1, 1):
        return _flat(reader, x, node)
    raise Unsupported("it squeezes axes of an image volume larger than 1 x 1")


# ---- FC: Gemm, and MatMul (+ Add) ----

def _fc(reader, node, x, weights, bias):
    """An FC reading flat `x` with ONNX's weights (n_in, n_out) and bias (n_out,)."""
    if x.layout != "flat":
        raise Unsupported("it multiplies a tensor that is not flat (N, n); flatten it first")
    if weights.ndim != 2 or weights.shape[0] != x.dims[0]:
        raise Unsupported(f"its weights have shape {list(weights.shape)}, not ({x.dims[0]}, n) "
                          f"for its {x.dims[0]} inputs")
    out = weights.shape[1]
    if x.flat_from and x.flat_from[0] == "DHW":
        # Flattened from (N, C, H, W): the rows follow (C, H, W); slidenet's follow (H, W, C).
        weights = _rows_to_hwd(weights, x.flat_from[1])
    piece = Piece(f"FC({out})", where(node), (out,), {"W": weights, "b": bias},
                  scales=("W", "b"), shift="b")
    return reader.add_piece(piece, x, "flat", (out,), flat_from=None)


def _rows_to_hwd(weights, shape):
    """`weights` (D*H*W, n), rows in (D, H, W) order, as an (H, W, D, n) view in slidenet's
    order: no copy here (the one copy is into the net's own array, `_Reader.fill`), for an FC
    after a large volume holds most of a net's weights (VGG's first FC: 400 MB)."""
    h, w, d = shape
    out = weights.shape[1]
    if weights.T.flags.c_contiguous:        # PyTorch's Gemm (transB=1): B is (n, D*H*W)
        return weights.T.reshape(out, d, h, w).transpose(2, 3, 1, 0)
    if weights.flags.c_contiguous:
        return weights.reshape(d, h, w, out).transpose(1, 2, 0, 3)
    return rows_dhw_to_hwd(weights, shape)


def _gemm(reader, node, a, inputs):
    if a.get("transA", 0):
        raise Unsupported("transA=1: the images would be the columns; slidenet's FC reads rows")
    x = reader.act(inputs[0], node)
    b = reader.weights(inputs[1], "weights B")
    if b.ndim != 2:
        raise Unsupported(f"its weights B have shape {list(b.shape)}, not a matrix")
    weights = b.T if a.get("transB", 0) else b     # a view: the weights are copied once, later
    if a.get("alpha", 1.0) != 1.0:
        weights = np.asarray(weights) * np.float64(a["alpha"])
    c = reader.optional_const(inputs, 2, "bias C", np.zeros(1))
    bias = _per_feature(np.asarray(c, np.float64) * a.get("beta", 1.0), weights.shape[1])
    return _fc(reader, node, x, weights, bias)


def _matmul(reader, node, a, inputs):
    if isinstance(inputs[0], Const) and isinstance(inputs[1], Act):
        raise Unsupported("it multiplies a constant by the activations (weights first); "
                          "slidenet's FC computes x W")
    if isinstance(inputs[1], Act):
        raise Unsupported("it multiplies two activations, which is no layer of a CNN")
    x = reader.act(inputs[0], node)
    weights = reader.weights(inputs[1], "weights")
    return _fc(reader, node, x, weights, np.zeros(weights.shape[1] if weights.ndim == 2 else 1))


def _per_feature(c, n):
    try:
        if np.broadcast_shapes(c.shape, (1, n)) != (1, n):
            raise ValueError
    except ValueError:
        raise Unsupported(f"its bias has shape {list(c.shape)}, not ({n},)") from None
    return np.broadcast_to(c, (1, n))[0].copy()


# ---- arithmetic: shapes, preprocessing, and per-channel scales folded into a layer ----

_ARITHMETIC = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
_WORDS = {"Add": "adds", "Sub": "subtracts", "Mul": "multiplies", "Div": "divides"}


def _arithmetic(reader, node, a, inputs):
    op = node.op_type
    left, right = inputs[0], inputs[1]
    if isinstance(left, Const) and isinstance(right, Const):
        if BATCH in left.array or BATCH in right.array:
            raise Unsupported("it computes with the batch size, which slidenet does not follow")
        if op == "Div" and left.array.dtype.kind in "iu":
            return Const(np.trunc(left.array / right.array).astype(left.array.dtype))
        return Const(_ARITHMETIC[op](left.array, right.array))
    if isinstance(left, Act) and isinstance(right, Act):
        if op == "Add":
            return _merge_sum(reader, node, [left, right])
        what = "a difference of branches" if op == "Sub" else "gating or attention"
        raise Unsupported(f"it {_WORDS[op]} two activations, {left.name!r} and {right.name!r}: "
                          f"{what}; slidenet merges branches by ADD (a sum) or CONCAT only")
    if isinstance(right, Act) and op in ("Sub", "Div"):
        if op == "Div":
            raise Unsupported("it divides a constant by the activations")
        x, c, steps = reader.act(right, node), reader.const(left, "operand"), [("Mul", -1.0)]
        steps.append(("Add", c))
    else:
        act_value, c_value = (left, right) if isinstance(left, Act) else (right, left)
        x, c = reader.act(act_value, node), reader.const(c_value, "operand")
        c = np.asarray(c, np.float64)
        if op == "Div" and not np.all(c):
            raise Unsupported("it divides by a constant that holds a zero")
        steps = [("Add", c) if op == "Add" else ("Add", -c) if op == "Sub" else
                 ("Mul", c) if op == "Mul" else ("Mul", 1 / c)]
    out = replace(x)
    if all(np.all(constant == (1 if kind == "Mul" else 0)) for kind, constant in steps) and \
            not x.pre and x.layout != "input":
        channel_vector(out, steps[0][1], steps[0][0])   # it must not change the shape either
        return out      # adding 0 or multiplying by 1: nothing to fold
    for kind, constant in steps:
        constant = np.asarray(constant, np.float64)
        if x.pre:
            reader.pre.append((where(node), kind, constant, out))
            if x.layout != "input":
                channel_vector(out, constant, kind)     # fail here, at the node, if it cannot
        elif x.piece is not None or _affine(reader, node, out):
            if x.piece is None:     # a BATCHNORM that is only a scale and a shift, made here
                out = x = reader.add_piece(_affine(reader, node, out), out, out.layout, out.dims)
            piece = reader.pieces[x.piece]
            vector = channel_vector(out, constant, kind)
            if kind == "Mul":
                for key in piece.scales:
                    piece.params[key] = np.asarray(piece.params[key], np.float64) * vector
            else:
                shifted = np.asarray(piece.params[piece.shift], np.float64) + vector
                piece.params[piece.shift] = shifted
            if not all(np.isfinite(piece.params[key]).all() for key in piece.scales):
                raise Unsupported(f"folding it into {piece.node} gives weights that are "
                                  "infinite or NaN")
        else:
            raise Unsupported(f"it {_WORDS[op]} {'by ' * (op in ('Mul', 'Div'))}a constant where "
                              "slidenet has no layer to fold "
                              "it into: only right after a Conv, Gemm/MatMul or "
                              "BatchNormalization (or before the first layer, as preprocessing)")
    return out


def _affine(reader, node, x):
    """A per-channel scale and shift where no layer is there to fold it into (Keras's
    BatchNormalization after a Dense and its activation, as tf2onnx writes it: Mul then Add):
    a BATCHNORM with mean 0 and variance 1 - epsilon, whose gamma and beta the Mul and Add set.
    None where a BATCHNORM cannot stand (a flattened volume: its channels repeat per pixel)."""
    shape = slidenet_shape(x)
    if x.layout not in ("NCHW", "NHWC", "flat") or \
            (x.layout == "flat" and len(shape) == 3 and prod(shape[:2]) > 1):
        return None
    n = shape[-1]
    return Piece("BATCHNORM", where(node), shape, {"gamma": np.ones(n), "beta": np.zeros(n)},
                 {"running_mean": np.zeros(n), "running_var": np.full(n, 1 - BATCHNORM_EPSILON)},
                 scales=("gamma", "beta"), shift="beta")


def channel_vector(act, constant, kind):
    """The per-channel numbers of a constant that `act` is multiplied by (or added to); an
    Unsupported when the constant varies within a channel or would change the shape."""
    full = (1, *act.dims)
    try:
        fits = np.broadcast_shapes(constant.shape, full) == full
    except ValueError:
        fits = False
    if not fits:
        raise Unsupported(f"{kind} by a constant of shape {list(constant.shape)} does not fit "
                          f"the value's shape {['N', *act.dims]}")
    values = np.broadcast_to(constant, full)[0]
    if act.layout == "NCHW":
        axis = 0
    elif act.layout == "NHWC":
        axis = 2
    elif act.flat_from:
        order, (h, w, d) = act.flat_from
        values = values.reshape((d, h, w) if order == "DHW" else (h, w, d))
        axis = 0 if order == "DHW" else 2
    else:
        return values.copy()            # (n,): one number per feature
    per_channel = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    if not np.all(per_channel == per_channel[:, :1]):
        raise Unsupported(f"{kind} by a constant that varies across the image (shape "
                          f"{list(constant.shape)}); slidenet scales each channel by one number")
    return per_channel[:, 0].copy()


# ---- constants and shape computations ----

def _constant(reader, node, a, inputs):
    attribute = next((x for x in node.attribute), None)
    if attribute is None:
        raise Unsupported("a Constant without a value")
    if attribute.name == "value":
        return Const(tensor_array(attribute.t, reader.folder, reader.budget, files=reader.files))
    if attribute.name in ("value_float", "value_floats"):
        return Const(np.array(a[attribute.name], np.float32))
    if attribute.name in ("value_int", "value_ints"):
        return Const(np.array(a[attribute.name], np.int64))
    raise Unsupported(f"a Constant given as {attribute.name}, which slidenet does not read")


def _shape(reader, node, a, inputs):
    value = inputs[0]
    if isinstance(value, Const):
        shape = np.array(value.array.shape, np.int64)
    else:
        x = reader.act(value, node)
        shape = np.array([BATCH, *x.dims], np.int64)
    start, end = a.get("start", 0), a.get("end", None)
    return Const(shape[start:end])


def _gather(reader, node, a, inputs):
    data = reader.const(inputs[0], "data")
    indices = reader.const(inputs[1], "indices")
    return Const(np.take(data, indices.astype(np.int64), axis=a.get("axis", 0)))


def _unsqueeze(reader, node, a, inputs):
    axes = a.get("axes")
    if axes is None:
        axes = reader.const(inputs[1], "axes")
    data = reader.const(inputs[0], "data")
    rank = data.ndim + len(np.ravel(axes))
    for axis in sorted(int(v) % rank for v in np.ravel(axes)):
        data = np.expand_dims(data, axis)
    return Const(data)


# ---- merges: Add (and Sum) of activations, Concat along the channels ----

def _volume(act):
    return " x ".join(str(n) for n in slidenet_shape(act) or act.dims)


def _resolved(reader, acts, layout):
    """`acts` with the graph's input among them read in the layout of the others (or
    `layout` when all are the input)."""
    known = next((act.layout for act in acts if act.layout != "input"), layout)
    if known not in ("NCHW", "NHWC"):
        return acts
    return [reader.resolve(act, known) for act in acts]


def _merge_sum(reader, node, acts):
    """A sum of activations (a residual connection): ADD, which takes volumes of one shape."""
    acts = _resolved(reader, acts, "NCHW")
    first = acts[0]
    for act in acts[1:]:
        if act.layout != first.layout or act.dims != first.dims or \
                (act.layout == "flat" and act.flat_from != first.flat_from):
            raise Unsupported(f"it adds {first.name!r} ({_volume(first)}) and {act.name!r} "
                              f"({_volume(act)}): slidenet's ADD sums volumes of one shape, "
                              "number by number, and does not broadcast")
    piece = Piece("ADD", where(node), slidenet_shape(first))
    return reader.add_merge(piece, acts, first.layout, first.dims)


def _sum(reader, node, a, inputs):
    if all(isinstance(v, Const) for v in inputs):
        return Const(sum(v.array for v in inputs[1:]) + inputs[0].array)
    if len(inputs) == 1:
        return replace(reader.act(inputs[0], node))
    if not all(isinstance(v, Act) for v in inputs):
        if any(isinstance(v, (Unknown, type(None))) for v in inputs):
            raise Skip()
        raise Unsupported("it sums activations and constants together; slidenet folds a "
                          "constant only as a per-channel Add of its own")
    return _merge_sum(reader, node, [reader.act(v, node) for v in inputs])


def _concat_acts(reader, node, a, inputs):
    """Activations stacked along the channels: CONCAT (an Inception block, a Fire module, a
    dense block). DenseNet's Concat(x0, n1, n2) of all earlier features is read as
    Concat(Concat(x0, n1), n2) when an earlier Concat joined exactly x0 and n1, so that each
    layer of the block is one branch beside the identity: [{ ID | ... } -> CONCAT]*k."""
    names = tuple(node.input)
    for length in range(len(names) - 1, 1, -1):
        earlier = reader.concats.get(names[:length])
        if earlier is not None and isinstance(reader.values.get(earlier), Act):
            inputs = [reader.values[earlier], *inputs[length:]]
            break
    reader.concats[names] = node.output[0] if node.output else None
    acts = [reader.act(v, node) for v in inputs]
    if len(acts) == 1:
        return replace(acts[0])
    axis = a.get("axis", 1)
    acts = _resolved(reader, acts, "NCHW" if axis in (1, -3) else "NHWC")
    first = acts[0]
    channels = {"NCHW": (1, -3), "NHWC": (3, -1)}.get(first.layout)
    if channels is None or axis not in channels:
        shape = "(N, n)" if first.layout == "flat" else f"{first.layout} (N, ...)"
        raise Unsupported(f"axis={axis} of a {shape} tensor: slidenet's CONCAT stacks image "
                          "volumes along their channels only")
    for act in acts[1:]:
        if act.layout != first.layout or slidenet_shape(act)[:2] != slidenet_shape(first)[:2]:
            raise Unsupported(f"it stacks {first.name!r} ({_volume(first)}) and {act.name!r} "
                              f"({_volume(act)}): slidenet's CONCAT stacks volumes of one "
                              "height and width")
    h, w, _ = slidenet_shape(first)
    depth = sum(slidenet_shape(act)[2] for act in acts)
    dims = (depth, h, w) if first.layout == "NCHW" else (h, w, depth)
    return reader.add_merge(Piece("CONCAT", where(node), (h, w, depth)), acts, first.layout, dims)


def _concat(reader, node, a, inputs):
    if any(isinstance(v, Act) for v in inputs):
        if not all(isinstance(v, Act) for v in inputs):
            if any(isinstance(v, (Unknown, type(None))) for v in inputs):
                raise Skip()
            raise Unsupported("it joins activations and constants; slidenet's CONCAT stacks "
                              "volumes computed from the image")
        return _concat_acts(reader, node, a, inputs)
    arrays = [reader.const(v, "inputs") for v in inputs]
    return Const(np.concatenate([np.atleast_1d(x) for x in arrays], axis=a.get("axis", 0)))


def _slice(reader, node, a, inputs):
    data = reader.const(inputs[0], "data")
    if reader.opset < 10:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = reader.const(inputs[1], "starts"), reader.const(inputs[2], "ends")
        axes = reader.optional_const(inputs, 3, "axes")
        steps = reader.optional_const(inputs, 4, "steps")
    axes = range(len(np.ravel(starts))) if axes is None else np.ravel(axes)
    steps = [1] * len(np.ravel(starts)) if steps is None else np.ravel(steps)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(np.ravel(starts), np.ravel(ends), axes, steps):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return Const(data[tuple(index)])


def _cast(reader, node, a, inputs):
    value = inputs[0]
    target = reader.onnx.helper.tensor_dtype_to_np_dtype(a["to"])
    if isinstance(value, Const):
        array = value.array
        cast = array.astype(target)
        if np.dtype(target).kind in "iu" and np.any(array == BATCH):
            # tf2onnx casts Flatten's shape to int32, which would lose the batch-size marker:
            # it stays itself, the other numbers are cast.
            cast = np.where(array == BATCH, BATCH, cast.astype(np.int64))
        return Const(cast)
    x = reader.act(value, node)
    if np.dtype(target).kind != "f":
        raise Unsupported(f"it casts the activations to {np.dtype(target).name}")
    return replace(x)


OPS = {
    "Conv": _conv,
    "MaxPool": _pool("MAXPOOL"),
    "AveragePool": _pool("AVGPOOL"),
    "GlobalAveragePool": _global_pool("GLOBALAVGPOOL"),
    "GlobalMaxPool": _global_pool("MAXPOOL({h}x{w}, s=1x1)"),
    "ReduceMean": _reduce_mean,
    "BatchNormalization": _batchnorm,
    "Relu": _elementwise("RELU"),
    "Clip": _clip,
    "LeakyRelu": _elementwise("LEAKYRELU", _leaky_alpha),
    "Tanh": _elementwise("TANH"),
    "Sigmoid": _elementwise("SIGMOID"),
    "Dropout": _dropout,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Identity": _identity,
    "Transpose": _transpose,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _arithmetic,
    "Sum": _sum,
    "Sub": _arithmetic,
    "Mul": _arithmetic,
    "Div": _arithmetic,
    "Constant": _constant,
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Slice": _slice,
    "Cast": _cast,
}

