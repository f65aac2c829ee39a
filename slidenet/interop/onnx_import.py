"""An ONNX graph built from the lecture's layers, read into a slidenet net and model file.

    slidenet import cnn.onnx --out cnn.npz --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225

The graph is read node by node, in the order ONNX keeps them (every input before its use),
without running anything. Each value is either a constant (a weight, a shape) or the image
batch on its way through the net, an `Act`, whose layout is tracked:

    PyTorch      (N, C, H, W) all the way: Conv, Relu, MaxPool, ..., the Shape, Gather,
                 Unsqueeze, Concat and Reshape it emits around a flatten, Gemm
    tf2onnx      (N, H, W, C), with a Transpose to (N, C, H, W) around each Conv or pool,
                 and MatMul + Add for a Dense layer

Each node that computes something becomes one layer of slidenet's pattern (`Piece`): a Conv
is `CONV(K, FhxFw, s=ShxSw, p=PhxPw)` with its weights turned from (K, C, F_h, F_w) into
(F_h, F_w, C, K); a Gemm or MatMul is `FC(n)`, whose rows are reordered when the volume before
it was flattened in (C, H, W) order, since slidenet flattens (H, W, D). A Mul or Add by a
per-channel constant right after a Conv, Gemm or BatchNormalization is folded into its
weights; before the first layer it is preprocessing, folded into the model's normaliser. A
Softmax at the end is dropped (slidenet's scores are what comes before it).

A node slidenet cannot represent (a dilated or grouped conv, an LSTM, a residual Add, a pool
that does not tile its input) is a fault; every fault is listed, and nothing is written.
"""
import json
from dataclasses import dataclass, field, replace
from math import ceil, prod
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from slidenet import geometry
from slidenet.data.normalize import Normalizer
from slidenet.errors import SlidenetError
from slidenet.interop.onnx_file import Budget, read_model, tensor_array
from slidenet.interop.onnx_graph import PIXELS, require_onnx, rows_dhw_to_hwd
from slidenet.net import Net
from slidenet.pattern import parse
from slidenet.shapes import infer
from slidenet.ops import BATCHNORM_EPSILON

# The dynamic batch size inside shape computations (Shape -> Gather -> ... -> Reshape): a
# number no real dimension has, which only Reshape understands.
BATCH = -(2**62) + 11
LAYOUTS = ("nchw", "nhwc")


class ImportRefused(SlidenetError):
    """A graph with nodes slidenet cannot represent; the message lists every one."""


class Unsupported(Exception):
    """What is wrong with one node: one or more reasons (the attribute at fault, and why)."""


class _Skip(Exception):
    """A node that reads a value an earlier fault left unknown: that fault is already listed."""


@dataclass
class Act:
    """The image batch on its way through the net: an ONNX value computed from the input.

    layout: "input" (before the graph shows whether it is NCHW or NHWC), "NCHW", "NHWC", or
    "flat" (N, n). dims: the sizes after the batch axis, in the tensor's own order.
    flat_from: for a flattened volume, (order, (H, W, D)) with order "DHW" (flattened from
    NCHW) or "HWD" (from NHWC). piece: the index of the CONV, FC or BATCHNORM whose unchanged
    output this is (a Mul or Add can be folded into it), else None. pre: only preprocessing
    (Mul, Add, Transpose) lies between the graph's input and here. taken: the node that read
    this value on into the net; a second reader means the graph branches.
    """
    name: str
    layout: str
    dims: Tuple[int, ...]
    flat_from: Optional[tuple] = None
    piece: Optional[int] = None
    pre: bool = False
    taken: Optional[str] = None


@dataclass
class Const:
    array: np.ndarray


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


@dataclass
class Imported:
    """What `read_onnx` makes of a file: everything `slidenet.model.save` needs."""
    net: Net
    normalizer: Normalizer
    class_names: list
    meta: dict                          # extras for the model file: source, producer, ...


def read_onnx(path, classes=None, scale=None, mean=None, std=None, input_layout=None):
    """Read the CNN in the .onnx file `path` into an `Imported` net, or raise.

    classes: class names, one per score (default: the file's metadata, else numbers).
    scale, mean, std: the preprocessing the graph's input expects, (pixels * scale - mean) / std
    per channel (one value, or one per channel). Without any: pixels / 255 (scale 1/255, mean
    0, std 1), or the pixels as they are for a file whose metadata says its input is pixels
    0..255 (a slidenet export).
    input_layout: "nchw" or "nhwc", needed only when the graph does not show it (an input that
    goes straight into a Flatten).
    Raises OnnxFileError for a damaged or hostile file and ImportRefused listing every node
    slidenet cannot represent.
    """
    onnx = require_onnx()
    model, folder = read_model(path)
    reader = _Reader(onnx, model, folder, input_layout)
    reader.walk()
    if reader.faults:
        lines = [f"{where}: {reason}" for where, reason in reader.faults]
        count = len({where for where, _ in reader.faults})
        raise ImportRefused(f"{path}: slidenet cannot represent {count} "
                            f"{'part' if count == 1 else 'parts'} of this graph, so nothing was "
                            "written:\n  " + "\n  ".join(lines))
    pattern, hwd = reader.pattern()
    metadata = _metadata(model)
    if scale is None and mean is None and std is None and \
            metadata.get("input", "").startswith(PIXELS):
        scale = 1.0
    normalizer = _normalizer(reader, hwd[2], 1 / 255 if scale is None else scale,
                             (0.0,) if mean is None else mean, (1.0,) if std is None else std,
                             metadata)
    try:
        net = Net.from_pattern(pattern)
    except SlidenetError as err:
        raise ImportRefused(f"{path}: its layers make the pattern {pattern}, which slidenet "
                            f"cannot build: {err}") from None
    net = _as_written(net, metadata) or net
    reader.fill(net)
    names = _class_names(classes, metadata, net.num_outputs, path)
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    meta = {"source": f"onnx:{Path(path).name}", "producer": producer or "unknown",
            "onnx_opset": reader.opset}
    return Imported(net, normalizer, names, meta)


def _metadata(model):
    return {p.key: p.value for p in model.metadata_props}


def _as_written(net, metadata):
    """The net as the metadata's pattern writes it (`[CONV -> RELU]*N`, variables), when that
    pattern is the very net the graph holds (a slidenet export); else None."""
    try:
        pattern, skip = metadata["pattern"], metadata.get("skip_optional") == "true"
        variables = json.loads(metadata.get("variables", "{}"))
        # Shapes only, nothing allocated, until the metadata is known to describe this net.
        infos = infer(parse(pattern, variables, skip), pattern)
    except (KeyError, ValueError, TypeError, AttributeError, SlidenetError):
        return None
    if [(i.spec.type, i.spec.args, i.output_shape) for i in infos] != \
            [(i.spec.type, i.spec.args, i.output_shape) for i in net.infos]:
        return None
    return Net.from_pattern(pattern, skip_optional=skip, **variables)


# ---- reading the graph ----

class _Reader:
    def __init__(self, onnx, model, folder, input_layout):
        self.onnx = onnx
        self.graph = model.graph
        self.folder = folder
        self.budget = Budget()
        self.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                         default=1)
        if input_layout is not None and input_layout.lower() not in LAYOUTS:
            raise SlidenetError(f"--input-layout {input_layout!r}: say nchw or nhwc")
        self.fallback_layout = input_layout.upper() if input_layout else None
        self.layout = None          # the input's layout, once the graph shows it
        self.values = {}
        self.pieces = []
        self.pre = []               # (where, op, constant, Act it applied to): preprocessing
        self.faults = []            # (where, reason)
        self.input = None

    # -- the walk --

    def walk(self):
        for tensor in self.graph.initializer:
            self.values[tensor.name] = Const(tensor_array(tensor, self.folder, self.budget))
        if len(self.graph.sparse_initializer):
            self.faults.append(("graph", "it has sparse initializers, which slidenet does not "
                                         "read"))
        self._read_input()
        for node in self.graph.node:
            handler = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            try:
                if handler is None:
                    raise Unsupported(_unknown_op(node))
                inputs = [self._value(name) for name in node.input]
                outputs = handler(self, node, _attributes(self.onnx, node), inputs)
            except Unsupported as fault:
                for reason in fault.args:
                    self.faults.append((_where(node), reason))
                outputs = None
            except _Skip:
                outputs = None
            outputs = outputs if isinstance(outputs, list) else [outputs]
            for i, name in enumerate(node.output):
                if name:
                    value = outputs[i] if i < len(outputs) and outputs[i] is not None else Unknown()
                    if isinstance(value, Act):
                        value.name = name
                    self.values[name] = value
        self._read_outputs()

    def _read_input(self):
        given = [i for i in self.graph.input if i.name not in self.values]
        if len(given) != 1:
            names = ", ".join(i.name for i in given) or "none"
            self.faults.append(("graph inputs", f"{len(given)} inputs ({names}); a slidenet net "
                                "takes one batch of images"))
            return
        value = given[0]
        kind = value.type.WhichOneof("value")
        tensor = value.type.tensor_type
        floats = (self.onnx.TensorProto.FLOAT, self.onnx.TensorProto.DOUBLE,
                  self.onnx.TensorProto.FLOAT16)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        where = f"graph input {value.name!r}"
        if kind != "tensor_type" or tensor.elem_type not in floats:
            self.faults.append((where, "it is not a tensor of floats (images)"))
        elif len(dims) != 4 or any(not d or d < 1 for d in dims[1:]):
            shown = ["N" if d is None else d for d in dims]
            self.faults.append((where, f"its shape is {shown}; slidenet reads a batch of images "
                                "(N, C, H, W) or (N, H, W, C) of fixed size"))
        else:
            self.input = Act(value.name, "input", tuple(dims[1:]), pre=True)
            self.values[value.name] = self.input

    def _read_outputs(self):
        finals = []
        for output in self.graph.output:
            value = self.values.get(output.name)
            where = f"graph output {output.name!r}"
            if isinstance(value, Probs):
                value = value.act
            if isinstance(value, Act):
                if value.taken:
                    self.faults.append((where, f"it is an intermediate value (node "
                                               f"{value.taken} reads it on); a slidenet net has "
                                               "one output, its scores"))
                finals.append(value)
            elif isinstance(value, Const):
                self.faults.append((where, "it is a constant, not computed from the image"))
        if self.faults:
            return
        if not finals:
            self.faults.append(("graph outputs", "no output is computed from the image"))
        elif any(act is not finals[0] for act in finals):
            self.faults.append(("graph outputs", "it has several different outputs; a slidenet "
                                "net has one, its scores (and their softmax)"))
        elif not self.pieces:
            self.faults.append(("graph", "it has no layers"))
        elif len(_hwd(finals[0]) or ()) != 1:
            self.faults.append(("graph outputs", "the net ends on an image volume, not on one "
                                "score per class; slidenet's scores come from an FC (Gemm)"))

    # -- values --

    def _value(self, name):
        if not name:
            return None
        return self.values.get(name, Unknown())

    def act(self, value, node, take=True):
        """The Act a node reads; take=True: the node carries it on into the net."""
        if isinstance(value, (Unknown, type(None))):
            raise _Skip()
        if isinstance(value, Probs):
            raise Unsupported("it reads the output of a Softmax; a softmax can only come last")
        if not isinstance(value, Act):
            raise Unsupported("its data input is a constant, not computed from the image")
        if take:
            if value.taken:
                raise Unsupported(f"it reads {value.name!r}, which node {value.taken} also reads: "
                                  "the graph branches, and a slidenet net is one chain")
            value.taken = _where(node)
        return value

    def const(self, value, what):
        if isinstance(value, (Unknown, type(None))):
            raise _Skip()
        if not isinstance(value, Const):
            raise Unsupported(f"its {what} is computed from the image, not a constant")
        return value.array

    def optional_const(self, inputs, index, what, default=None):
        if index < len(inputs) and inputs[index] is not None:
            return self.const(inputs[index], what)
        return default

    def resolve(self, act, layout):
        """`act` read as `layout` ("NCHW" or "NHWC"); fixes the input's layout if not yet known."""
        if act.layout != "input":
            return act
        if self.layout is None:
            self.layout = layout
        elif self.layout != layout:
            raise Unsupported(f"it reads the input as {layout}, where an earlier node read it as "
                              f"{self.layout}")
        return replace(act, layout=layout)

    def volume(self, value, node):
        """The (N, C, H, W) Act a Conv, pool or BatchNormalization reads."""
        act = self.resolve(self.act(value, node), "NCHW")
        if act.layout != "NCHW":
            shape = "(N, n)" if act.layout == "flat" else "(N, H, W, C)"
            raise Unsupported(f"it reads a {shape} tensor; ONNX's {node.op_type} works on "
                              "(N, C, H, W), and the graph has no Transpose to make it that")
        return act

    def add_piece(self, piece, act_in, layout, dims, foldable=True, **changes):
        """Append a layer; returns the Act of its output."""
        self.pieces.append(piece)
        return replace(act_in, layout=layout, dims=tuple(dims), taken=None, pre=False,
                       piece=len(self.pieces) - 1 if foldable else None, **changes)

    # -- after the walk --

    def input_shape(self):
        """(H, W, D) of the input, once its layout is known."""
        layout = self.layout or self.fallback_layout
        if layout is None:
            raise ImportRefused("the graph does not show whether its input is (N, C, H, W) or "
                                "(N, H, W, C): say --input-layout nchw or nhwc")
        a, b, c = self.input.dims
        return (b, c, a) if layout == "NCHW" else (a, b, c)

    def pattern(self):
        h, w, d = self.input_shape()
        return " -> ".join([f"INPUT({h}x{w}x{d})"] + [p.text for p in self.pieces]), (h, w, d)

    def fill(self, net):
        """Copy each piece's arrays into its layer of `net` (built from `pattern`)."""
        for layer, piece, info in zip(net.layers, self.pieces, net.infos[1:]):
            if piece.shape is not None and tuple(piece.shape) != tuple(info.output_shape):
                raise RuntimeError(f"import bug: {piece.text} from {piece.node} gives "
                                   f"{piece.shape}, slidenet infers {info.output_shape}")
            for store, arrays in ((layer.params, piece.params), (layer.buffers, piece.buffers)):
                for key, array in arrays.items():
                    if np.shape(array) != store[key].shape:
                        raise RuntimeError(f"import bug: {piece.text} {key} is "
                                           f"{np.shape(array)}, slidenet's {store[key].shape}")
                    store[key][...] = array


def _where(node):
    return f"{node.op_type} {(node.name or (node.output[0] if node.output else '?'))!r}"


def _attributes(onnx, node):
    values = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        values[attribute.name] = value.decode() if isinstance(value, bytes) else value
    return values


_HINTS = {
    "LSTM": "a recurrent layer (LSTM)", "GRU": "a recurrent layer (GRU)",
    "RNN": "a recurrent layer (RNN)", "ConvTranspose": "a transposed convolution",
    "Pad": "a separate padding node; slidenet's CONV pads equally on both sides of each axis",
    "Resize": "resizing inside the net", "Upsample": "upsampling inside the net",
    "Attention": "attention", "LayerNormalization": "layer normalisation",
    "InstanceNormalization": "instance normalisation", "Clip": "a clipped activation (ReLU6?)",
    "Loop": "a loop", "If": "a branch (If)", "Scan": "a scan",
}


def _unknown_op(node):
    what = _HINTS.get(node.op_type, "an operation")
    domain = f" of domain {node.domain!r}" if node.domain not in ("", "ai.onnx") else ""
    return (f"{node.op_type}{domain} is {what}, not one of the lecture's layers slidenet has "
            "(CONV, MAXPOOL, AVGPOOL, GLOBALAVGPOOL, FC, BATCHNORM, DROPOUT, RELU, LEAKYRELU, "
            "TANH, SIGMOID)")


def _number(value):
    """A float32 attribute written as the shortest decimal that reads back to it: 0.01."""
    return np.format_float_positional(np.float32(value), trim="-")


def _hwd(act):
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

def _window(reader, node, a, act, size, default_pads=True):
    """(stride, pad) per axis of a Conv or pool on `act`, checked to tile the input exactly."""
    _, h, w = act.dims
    stride = tuple(a.get("strides", [1, 1]))
    if len(stride) != 2 or min(stride) < 1:
        raise Unsupported(f"strides={list(stride)}: slidenet slides 2-D windows by at least 1")
    auto = a.get("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
            raise Unsupported(f"pads={pads}: more padding on one side than the other; slidenet "
                              "pads each axis equally on both sides")
        pad = (pads[0], pads[1])
    elif auto == "VALID":
        pad = (0, 0)
    else:
        pad = []
        for n, f, s, axis in zip((h, w), size, stride, ("height", "width")):
            total = max((ceil(n / s) - 1) * s + f - n, 0)
            if total % 2:
                raise Unsupported(f"auto_pad={auto} pads the {axis} by {total} in all, which "
                                  "cannot be split equally between its two sides")
            pad.append(total // 2)
        pad = tuple(pad)
    for n, f, s, p, axis in zip((h, w), size, stride, pad, ("height", "width")):
        exact = geometry.exact_size(n, f, s, p)
        if exact < 1 or exact.denominator != 1:
            raise Unsupported(
                f"kernel_shape={list(size)}, strides={list(stride)}, pads={list(pad)} on the "
                f"{axis} {n}: {geometry.describe(n, f, s, p)} is not a whole number of windows; "
                "ONNX drops the windows that do not fit, slidenet's must tile the input exactly")
    return stride, pad


def _conv(reader, node, a, inputs):
    faults = []
    dilations = list(a.get("dilations", [1, 1]))
    if any(d != 1 for d in dilations):
        faults.append(f"dilations={dilations}: a dilated convolution; slidenet's filters "
                      "cover neighbouring pixels only")
    if a.get("group", 1) != 1:
        faults.append(f"group={a['group']}: a grouped (or depthwise) convolution; slidenet's "
                      "filters span the full depth of their input")
    if "kernel_shape" in a and len(a["kernel_shape"]) != 2:
        faults.append(f"kernel_shape={list(a['kernel_shape'])}: a "
                      f"{len(a['kernel_shape'])}-D convolution; slidenet's CONV is 2-D")
    if faults:
        raise Unsupported(*faults)
    x = reader.volume(inputs[0], node)
    weights = reader.const(inputs[1], "weights")
    c, h, w = x.dims
    if weights.ndim != 4 or weights.shape[1] != c:
        raise Unsupported(f"its weights have shape {list(weights.shape)}, not (K, {c}, F_h, F_w) "
                          f"for its {c}-channel input")
    k = weights.shape[0]
    size = tuple(weights.shape[2:])
    if "kernel_shape" in a and tuple(a["kernel_shape"]) != size:
        raise Unsupported(f"kernel_shape={list(a['kernel_shape'])} but its weights are "
                          f"{size[0]}x{size[1]}")
    bias = reader.optional_const(inputs, 2, "bias", np.zeros(k, np.float32))
    if bias.shape != (k,):
        raise Unsupported(f"its bias has shape {list(bias.shape)}, not ({k},)")
    stride, pad = _window(reader, node, a, x, size)
    out_h = (h + 2 * pad[0] - size[0]) // stride[0] + 1
    out_w = (w + 2 * pad[1] - size[1]) // stride[1] + 1
    piece = Piece(f"CONV({k}, {size[0]}x{size[1]}, s={stride[0]}x{stride[1]}, "
                  f"p={pad[0]}x{pad[1]})", _where(node), (out_h, out_w, k),
                  {"W": weights.transpose(2, 3, 1, 0), "b": bias}, scales=("W", "b"), shift="b")
    return reader.add_piece(piece, x, "NCHW", (k, out_h, out_w))


def _pool(kind):
    def handler(reader, node, a, inputs):
        faults = []
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            faults.append(f"dilations={list(a['dilations'])}: a dilated pool; slidenet's "
                          "windows cover neighbouring pixels")
        if any(a.get("pads", [0])) or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", ""):
            faults.append(f"pads={list(a.get('pads', []))} auto_pad={a.get('auto_pad', 'NOTSET')}: "
                          "a padded pool; slidenet's pooling is never padded")
        size = tuple(a.get("kernel_shape", ()))
        if len(size) != 2:
            faults.append(f"kernel_shape={list(size)}: slidenet pools 2-D windows")
        if len(node.output) > 1 and node.output[1]:
            faults.append("it also outputs the indices of the maxima, which slidenet does not make")
        if faults:
            raise Unsupported(*faults)
        x = reader.volume(inputs[0], node)
        stride, _ = _window(reader, node, {"strides": a.get("strides", [1, 1])}, x, size)
        c, h, w = x.dims
        out_h, out_w = (h - size[0]) // stride[0] + 1, (w - size[1]) // stride[1] + 1
        piece = Piece(f"{kind}({size[0]}x{size[1]}, s={stride[0]}x{stride[1]})", _where(node),
                      (out_h, out_w, c))
        return reader.add_piece(piece, x, "NCHW", (c, out_h, out_w), foldable=False)
    return handler


def _global_pool(text):
    def handler(reader, node, a, inputs):
        x = reader.volume(inputs[0], node)
        c, h, w = x.dims
        return reader.add_piece(Piece(text.format(h=h, w=w), _where(node), (1, 1, c)), x, "NCHW",
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
    h, w, c = _hwd(x)
    out = reader.add_piece(Piece("GLOBALAVGPOOL", _where(node), (1, 1, c)), x, x.layout,
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
    piece = Piece("BATCHNORM", _where(node), _hwd(x), {"gamma": gamma, "beta": beta},
                  {"running_mean": mean, "running_var": var}, scales=("gamma", "beta"),
                  shift="beta")
    return reader.add_piece(piece, x, x.layout, x.dims)


def _elementwise(text, check=None):
    def handler(reader, node, a, inputs):
        written = text
        if check is not None:
            written = check(a)
        x = reader.act(inputs[0], node)
        return reader.add_piece(Piece(written, _where(node), _hwd(x)), x, x.layout, x.dims,
                                foldable=False)
    return handler


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
    out = replace(x, taken=None, pre=False)
    reader.pieces.append(Piece(f"DROPOUT({_number(ratio)})", _where(node), _hwd(x)))
    return [out, None]


def _softmax(reader, node, a, inputs):
    x = reader.act(inputs[0], node, take=False)
    axis = a.get("axis", -1 if reader.opset >= 13 else 1)
    if x.layout != "flat" or axis not in (1, -1):
        raise Unsupported("a softmax over anything but the class scores of a flat (N, C) value")
    return Probs(x)


# ---- moving values around: Identity, Transpose, Flatten, Reshape, Squeeze ----

def _identity(reader, node, a, inputs):
    value = inputs[0] if inputs else None
    if isinstance(value, Const):
        return value
    return replace(reader.act(value, node), taken=None)


def _transpose(reader, node, a, inputs):
    value = inputs[0]
    if isinstance(value, Const):
        return Const(np.transpose(value.array, a.get("perm")))
    x = reader.act(value, node)
    perm = list(a.get("perm", range(len(x.dims) + 1)[::-1]))
    if perm == list(range(len(x.dims) + 1)):
        return replace(x, taken=None)
    if perm == [0, 3, 1, 2]:
        x = reader.resolve(x, "NHWC")
        if x.layout == "NHWC":
            h, w, c = x.dims
            return replace(x, layout="NCHW", dims=(c, h, w), taken=None)
    if perm == [0, 2, 3, 1]:
        x = reader.resolve(x, "NCHW")
        if x.layout == "NCHW":
            c, h, w = x.dims
            return replace(x, layout="NHWC", dims=(h, w, c), taken=None)
    raise Unsupported(f"perm={perm} on a {x.layout} tensor: slidenet moves only between "
                      "(N, C, H, W) and (N, H, W, C); this would move the batch axis or swap "
                      "height and width")


def _flat(reader, x, node):
    """`x` flattened per image, (N, n), remembering the order of a flattened volume."""
    if x.layout == "flat":
        return replace(x, taken=None)
    if x.layout == "input":
        layout = reader.layout or reader.fallback_layout
        if layout is None:
            raise Unsupported("it flattens the graph's input directly, so the graph does not show "
                              "whether that is (N, C, H, W) or (N, H, W, C): say --input-layout "
                              "nchw or nhwc")
        x = reader.resolve(x, layout)
    order = "DHW" if x.layout == "NCHW" else "HWD"
    return replace(x, layout="flat", dims=(prod(x.dims),), flat_from=(order, _hwd(x)), taken=None)


def _flatten(reader, node, a, inputs):
    value = inputs[0]
    if isinstance(value, Const):
        axis = a.get("axis", 1) % max(value.array.ndim, 1)
        return Const(value.array.reshape(prod(value.array.shape[:axis]), -1))
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
        source = value.array
        shape = [source.shape[i] if v == 0 and not allow_zero else v for i, v in enumerate(target)]
        return Const(source.reshape(shape))
    x = reader.act(value, node)
    total = prod(x.dims)
    batch_first = target and (target[0] == BATCH or (target[0] == 0 and not allow_zero))
    if len(target) == 2:
        second = target[1]
        if second == 0 and not allow_zero:
            second = x.dims[0]
        if (batch_first and second in (-1, total)) or (target[0] == -1 and second == total):
            return _flat(reader, x, node)
    shown = ["N" if v == BATCH else v for v in target]
    raise Unsupported(f"shape={shown}: of the reshapes, slidenet follows only flattening each "
                      "image, (N, -1)")


def _squeeze(reader, node, a, inputs):
    axes = a.get("axes")
    if axes is None:
        axes = reader.optional_const(inputs, 1, "axes")
    value = inputs[0]
    if isinstance(value, Const):
        return Const(np.squeeze(value.array, None if axes is None else tuple(np.ravel(axes))))
    x = reader.act(value, node)
    if x.layout in ("NCHW", "NHWC") and _hwd(x)[:2] == (1, 1):
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
    if x.flat_from and x.flat_from[0] == "DHW":
        # Flattened from (N, C, H, W): the rows follow (C, H, W); slidenet's follow (H, W, C).
        weights = rows_dhw_to_hwd(weights, x.flat_from[1])
    out = weights.shape[1]
    piece = Piece(f"FC({out})", _where(node), (out,), {"W": weights, "b": bias},
                  scales=("W", "b"), shift="b")
    return reader.add_piece(piece, x, "flat", (out,), flat_from=None)


def _gemm(reader, node, a, inputs):
    if a.get("transA", 0):
        raise Unsupported("transA=1: the images would be the columns; slidenet's FC reads rows")
    x = reader.act(inputs[0], node)
    b = np.asarray(reader.const(inputs[1], "weights B"), np.float64)
    if b.ndim != 2:
        raise Unsupported(f"its weights B have shape {list(b.shape)}, not a matrix")
    weights = (b.T if a.get("transB", 0) else b) * a.get("alpha", 1.0)
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
    weights = np.asarray(reader.const(inputs[1], "weights"), np.float64)
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
        what = ("a residual (skip) connection" if op in ("Add", "Sub")
                else "gating or attention")
        raise Unsupported(f"it {_WORDS[op]} two activations, {left.name!r} and {right.name!r}: "
                          f"{what}; a slidenet net is one chain of layers")
    if isinstance(right, Act) and op in ("Sub", "Div"):
        if op == "Div":
            raise Unsupported("it divides a constant by the activations")
        x, c, steps = reader.act(right, node), reader.const(left, "operand"), [("Mul", -1.0)]
        steps.append(("Add", c))
    else:
        act_value, c_value = (left, right) if isinstance(left, Act) else (right, left)
        x, c = reader.act(act_value, node), reader.const(c_value, "operand")
        c = np.asarray(c, np.float64)
        steps = [{"Add": ("Add", c), "Sub": ("Add", -c), "Mul": ("Mul", c),
                  "Div": ("Mul", 1 / c)}[op]]
    out = replace(x, taken=None)
    for kind, constant in steps:
        constant = np.asarray(constant, np.float64)
        if x.pre:
            reader.pre.append((_where(node), kind, constant, out))
            if x.layout != "input":
                _channel_vector(out, constant, kind)     # fail here, at the node, if it cannot
        elif x.piece is not None:
            piece = reader.pieces[x.piece]
            vector = _channel_vector(out, constant, kind)
            if kind == "Mul":
                for key in piece.scales:
                    piece.params[key] = np.asarray(piece.params[key], np.float64) * vector
            else:
                shifted = np.asarray(piece.params[piece.shift], np.float64) + vector
                piece.params[piece.shift] = shifted
        else:
            raise Unsupported(f"it {_WORDS[op]} by a constant where slidenet has no layer to fold "
                              "it into: only right after a Conv, Gemm/MatMul or "
                              "BatchNormalization (or before the first layer, as preprocessing)")
    return out


def _channel_vector(act, constant, kind):
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
        return Const(tensor_array(attribute.t, reader.folder, reader.budget))
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
        x = reader.act(value, node, take=False)
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


def _concat(reader, node, a, inputs):
    if any(isinstance(v, Act) for v in inputs):
        raise Unsupported("it joins activations (a branch or an Inception block); a slidenet "
                          "net is one chain")
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
        return Const(value.array.astype(target))
    x = reader.act(value, node)
    if np.dtype(target).kind != "f":
        raise Unsupported(f"it casts the activations to {np.dtype(target).name}")
    return replace(x, taken=None)


OPS = {
    "Conv": _conv,
    "MaxPool": _pool("MAXPOOL"),
    "AveragePool": _pool("AVGPOOL"),
    "GlobalAveragePool": _global_pool("GLOBALAVGPOOL"),
    "GlobalMaxPool": _global_pool("MAXPOOL({h}x{w}, s=1x1)"),
    "ReduceMean": _reduce_mean,
    "BatchNormalization": _batchnorm,
    "Relu": _elementwise("RELU"),
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


# ---- the normaliser and the class names ----

def _normalizer(reader, depth, scale, mean, std, metadata):
    """slidenet's Normalizer for what the graph expects, (pixels * scale - mean) / std, followed
    by the graph's own preprocessing (Mul and Add before its first layer).

    Normalizer computes x / (255 s) - m / s per channel, so with the whole affine map
    pixels * alpha + beta: s = 1 / (255 alpha) and m = -beta * s.
    """
    mean, std = _per_channel("--mean", mean, depth), _per_channel("--std", std, depth)
    if not scale or not np.isfinite(scale) or np.any(std == 0):
        raise SlidenetError("--scale and every --std must be non-zero numbers")
    alpha, beta = np.full(depth, scale) / std, -mean / std
    graph_alpha, graph_beta = np.ones(depth), np.zeros(depth)
    for where, kind, constant, act in reader.pre:
        if act.layout == "input":
            act = replace(act, layout=reader.layout or reader.fallback_layout or "NCHW")
        try:
            vector = _channel_vector(act, constant, kind)
        except Unsupported as fault:
            raise ImportRefused(f"{where}: {fault.args[0]}") from None
        if kind == "Mul":
            graph_alpha, graph_beta = graph_alpha * vector, graph_beta * vector
        else:
            graph_beta = graph_beta + vector
    alpha, beta = graph_alpha * alpha, graph_alpha * beta + graph_beta
    if np.any(alpha == 0):
        raise ImportRefused("the preprocessing multiplies a channel by 0, which no normaliser "
                            "can express")
    exact = _exported_normalizer(metadata, depth)
    identity = scale == 1 and not mean.any() and np.all(std == 1)
    if exact is not None and identity:
        want = exact.affine(np.float32)
        if np.array_equal(want[0], alpha.astype(np.float32)) and \
                np.array_equal(want[1], beta.astype(np.float32)):
            return exact        # a file slidenet exported: its normaliser, to the last bit
    s = 1 / (255 * alpha)
    return Normalizer((0.0 - beta * s).astype(np.float32), s.astype(np.float32))


def _per_channel(option, values, depth):
    values = np.asarray(values, np.float64).reshape(-1)
    if len(values) == 1:
        return np.repeat(values, depth)
    if len(values) != depth:
        raise SlidenetError(f"{option} takes one number or one per channel ({depth}), not "
                            f"{len(values)}")
    return values


def _exported_normalizer(metadata, depth):
    """The normaliser a slidenet export wrote into the metadata, if any."""
    try:
        stored = json.loads(metadata["normalizer"])
        mean = np.array(stored["mean"], np.float32)
        std = np.array(stored["std"], np.float32)
    except (KeyError, ValueError, TypeError):
        return None
    if mean.shape != (depth,) or std.shape != (depth,) or np.any(std == 0):
        return None
    return Normalizer(mean, std)


def _class_names(classes, metadata, count, path):
    if classes is not None:
        names = [c.strip() for c in classes]
        if len(names) != count or not all(names):
            raise SlidenetError(f"--classes names {len(names)} classes, but {path} scores "
                                f"{count}: give {count} names, separated by commas")
        return names
    try:
        names = json.loads(metadata["class_names"])
    except (KeyError, ValueError):
        return []
    if isinstance(names, list) and len(names) == count and all(isinstance(n, str) for n in names):
        return names
    return []
