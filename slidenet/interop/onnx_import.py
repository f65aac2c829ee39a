"""An ONNX graph built from the lecture's layers, read into a slidenet net and model file.

    slidenet import cnn.onnx --out cnn.npz --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225

The graph is read node by node, in the order ONNX keeps them (every input before its use),
without running anything. Each value is either a constant (a weight, a shape) or the image
batch on its way through the net, an `Act`, whose layout is tracked:

    PyTorch      (N, C, H, W) all the way: Conv, Relu, MaxPool, ..., the Shape, Gather,
                 Unsqueeze, Concat and Reshape it emits around a flatten, Gemm
    tf2onnx      (N, H, W, C), with a Transpose to (N, C, H, W) around each Conv or pool,
                 and MatMul + Add for a Dense layer

Each node that computes something becomes one layer of slidenet's pattern (a `Piece`, made by
the op's handler in `onnx_ops`): a Conv
is `CONV(K, FhxFw, s=ShxSw, p=PhxPw)` with its weights turned from (K, C, F_h, F_w) into
(F_h, F_w, C, K); a Gemm or MatMul is `FC(n)`, whose rows are reordered when the volume before
it was flattened in (C, H, W) order, since slidenet flattens (H, W, D). A Mul or Add by a
per-channel constant right after a Conv, Gemm or BatchNormalization is folded into its
weights (unless another node reads that layer's output too); before the first layer it is
preprocessing, folded into the model's normaliser. A Softmax at the end is dropped (slidenet's
scores are what comes before it).

A graph may branch: each piece records the pieces it reads (`Piece.reads`), an Add (or Sum)
of two activations is ADD and a Concat along the channels is CONCAT, and after the walk
`onnx_branches` writes them as nested branches, `{ CONV -> BN | ID } -> ADD`. DenseNet's
Concat of every earlier feature is read as a Concat of the previous Concat and the new ones.

A node slidenet cannot represent (a dilated conv, an LSTM, an average pool whose ceil_mode
adds a window) is a fault; every fault is listed, once per kind with a count, and nothing is
written. So is a graph whose branches do not nest (`onnx_branches.NotNested`).
"""
import json
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from slidenet.data.normalize import Normalizer
from slidenet.errors import SlidenetError
from slidenet.interop import onnx_branches as branches
from slidenet.interop import onnx_checks as checks
from slidenet.interop.onnx_file import (
    Budget, OnnxFileError, inferred_shapes, read_model, tensor_array)
from slidenet.interop.onnx_graph import PIXELS, require_onnx
from slidenet.interop.onnx_weights import FileTensor, Reads, copy_tiled
from slidenet.interop.onnx_ops import (
    OPS, Act, Const, Probs, Skip, Unknown, Unsupported, attributes, channel_vector,
    slidenet_shape, unknown_op, where)
from slidenet.net import Net
from slidenet.notation.pattern import Tree, parse
from slidenet.notation.shapes import infer, walk_infos

LAYOUTS = ("nchw", "nhwc")
KEEP = object()     # `add_piece`: the output keeps the input's flat_from


class ImportRefused(SlidenetError):
    """A graph with nodes slidenet cannot represent; the message lists every one."""


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
    model, folder, raws = read_model(path)
    checks.check_structure(onnx, model, path)
    reader = _Reader(onnx, model, folder, input_layout, raws, path)
    # A constant that folds into nothing, or a division by a zero constant, is judged by the
    # checks below; NumPy's own warnings about it would only be noise on stderr.
    with np.errstate(all="ignore"):
        reader.walk()
    if reader.faults:
        reader.judge()      # a graph that is not valid ONNX at all: onnx's checker says why
        count = len({place for place, _ in reader.faults})
        raise ImportRefused(f"{path}: slidenet cannot represent {count} "
                            f"{'part' if count == 1 else 'parts'} of this graph, so nothing was "
                            "written:\n  " + "\n  ".join(fault_lines(reader.faults)))
    try:
        pattern, hwd, specs = reader.pattern()
    except branches.NotNested as fault:
        raise ImportRefused(f"{path}: slidenet cannot write this graph as one pattern, so "
                            f"nothing was written: {fault}") from None
    metadata = _metadata(model)
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    # The weights now live in the pieces' arrays (views of the file's buffer, or, for a large
    # file, its large weights still in the file): the parsed file can go before the net's own
    # arrays are allocated, so that at most two copies of the weights are alive at once (one,
    # for a large file).
    del model
    reader.model = reader.graph = None
    if scale is None and mean is None and std is None and \
            metadata.get("input", "").startswith(PIXELS):
        scale = 1.0
    normalizer = _normalizer(reader, hwd[2], 1 / 255 if scale is None else scale,
                             (0.0,) if mean is None else mean, (1.0,) if std is None else std,
                             metadata)
    try:
        # Shapes first, nothing allocated: then one net, as the metadata writes it if it can,
        # built on the shapes already inferred (a long pattern is walked once, and not read
        # back from its text: the walk built its parse as it wrote it).
        infos = infer(specs or parse(pattern), pattern)
        net = _as_written(infos, metadata) or Net.from_infos(pattern, infos)
    except SlidenetError as err:
        raise ImportRefused(f"{path}: its layers make the pattern {pattern}, which slidenet "
                            f"cannot build: {err}") from None
    reader.fill(net)
    names = _class_names(classes, metadata, net.num_outputs, path)
    meta = {"source": f"onnx:{Path(path).name}", "producer": producer or "unknown",
            "onnx_opset": reader.opset}
    return Imported(net, normalizer, names, meta)


def fault_lines(faults):
    """One line per kind of fault: the first node's place, how many more nodes of the same op
    have the same reason (35 identical Clip nodes are one line), and the reason. `faults`:
    [(place, reason)] in graph order, place "Op 'name'" or a part of the graph."""
    groups = {}
    for place, reason in faults:
        op = place.split(" ", 1)[0]
        # The values a reason names ('r1' and 'c1') differ from node to node; the kind does not.
        kind = (op, re.sub(r"'[^']*'", "''", reason))
        groups.setdefault(kind, []).append((place, reason))
    lines = []
    for (op, _), members in groups.items():
        more = len(members) - 1
        also = f" and {more} more {op} node{'s' * (more != 1)} like it" if more else ""
        place, reason = members[0]
        lines.append(f"{place}{also}: {reason}")
    return lines


def _metadata(model):
    return {p.key: p.value for p in model.metadata_props}


def _as_written(graph_infos, metadata):
    """The net as the metadata's pattern writes it (`[CONV -> RELU]*N`, variables), when that
    pattern is the very net the graph holds (a slidenet export); else None."""
    try:
        pattern, skip = metadata["pattern"], metadata.get("skip_optional") == "true"
        variables = json.loads(metadata.get("variables", "{}"))
        # Shapes only, nothing allocated, until the metadata is known to describe this net.
        infos = infer(parse(pattern, variables, skip), pattern)
    except (KeyError, ValueError, TypeError, AttributeError, SlidenetError):
        return None
    if [(i.spec.type, i.spec.args, i.output_shape) for i in walk_infos(infos)] != \
            [(i.spec.type, i.spec.args, i.output_shape) for i in walk_infos(graph_infos)]:
        return None
    return Net.from_infos(pattern, infos, skip_optional=skip, **variables)


# ---- reading the graph ----

class _Reader:
    """One walk over a graph. The handlers of `onnx_ops.OPS` read their inputs through it
    (`act`, `const`, `volume`, `resolve`) and append layers with `add_piece`; it keeps the
    values by name, the pieces, the preprocessing seen before the first layer, and the faults."""

    def __init__(self, onnx, model, folder, input_layout, raws=None, path=None):
        self.onnx = onnx
        self.path = path
        self.judged = False         # onnx's checker has accepted the graph (`judge`)
        self.graph = model.graph
        self.folder = folder
        self.budget = Budget()
        self.files = {}             # external data files checked so far (`tensor_array`)
        self.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                         default=1)
        if input_layout is not None and input_layout.lower() not in LAYOUTS:
            raise SlidenetError(f"--input-layout {input_layout!r}: say nchw or nhwc")
        self.fallback_layout = input_layout.upper() if input_layout else None
        self.layout = None          # the input's layout, once the graph shows it
        self.folded = []            # (BATCHNORM running mean, the bias before it) to subtract
        self.values = {}
        self.pieces = []
        self.pre = []               # (place, op, constant, Act it applied to): preprocessing
        self.faults = []            # (place, reason)
        self.input = None
        self.model = model
        self.raws = raws or [None] * len(model.graph.initializer)
        self.shapes = None          # value name -> dims, from shape inference after a fault
        self.concats = {}           # a Concat's input names -> its output's (DenseNet's)
        self.final = None           # the Act of the scores, once the walk is done
        self.items = None           # the pieces nested as branches (`onnx_branches.nest`)

    # -- the walk --

    def walk(self):
        try:
            for tensor, raw in zip(self.graph.initializer, self.raws):
                self.values[tensor.name] = Const(tensor_array(tensor, self.folder, self.budget,
                                                              raw, self.files))
        except OnnxFileError:
            self.judge()    # a tensor the checker refuses too (an undefined type): its words
            raise
        self.raws = None
        if len(self.graph.sparse_initializer):
            self.faults.append(("graph", "it has sparse initializers, which slidenet does not "
                                         "read"))
        # How many nodes read each value on (Shape reads only its size): a layer whose output
        # more than one node reads keeps it, so no Mul or Add after it may fold into it (nor
        # into the normaliser, for the input).
        nodes = self.graph.node
        readers = Counter(name for node in nodes if node.op_type != "Shape"
                          for name in node.input if name)
        self._read_input(readers)
        # Once per node: the names looked up once, not once per node.
        onnx, opset, values, faults = self.onnx, self.opset, self.values, checks.node_faults
        get, unknown = values.get, Unknown()
        for node in nodes:
            domain = node.domain
            handler = OPS.get(node.op_type) if not domain or domain == "ai.onnx" else None
            try:
                if handler is None:
                    raise Unsupported(unknown_op(node))
                reasons = faults(onnx, node, opset)
                if reasons:
                    raise Unsupported(*reasons)
                # An input no node made is Unknown (an earlier fault); "" is an omitted one.
                inputs = [get(name, unknown) if name else None for name in node.input]
                outputs = handler(self, node, attributes(onnx, node), inputs)
            except Unsupported as fault:
                for reason in fault.args:
                    self.faults.append((where(node), reason))
                outputs = self._after_fault(node)
            except Skip:
                outputs = None
            if not isinstance(outputs, list):
                outputs = [outputs]
            for i, name in enumerate(node.output):
                if name:
                    value = outputs[i] if i < len(outputs) else None
                    if value is None:
                        value = Unknown()
                    elif isinstance(value, Act):
                        value.name = name
                        if readers[name] > 1:
                            value = Act(name, value.layout, value.dims, value.flat_from, None,
                                        False, value.source)
                    values[name] = value
        self._read_outputs()

    def _after_fault(self, node):
        """What a refused node would have output, as far as ONNX's shape inference knows it, so
        that the nodes after it are judged too and their faults listed (not only the first)."""
        self.judge()
        if self.shapes is None:
            self.shapes = inferred_shapes(self.onnx, self.model)
        acts = [v for v in (self.values.get(name) for name in node.input) if isinstance(v, Act)]
        outputs = []
        for name in node.output:
            dims = self.shapes.get(name)
            if not acts or dims is None or any(not d for d in dims[1:]) or len(dims) not in (2, 4):
                outputs.append(None)
                continue
            layout = acts[0].layout if acts[0].layout in ("NCHW", "NHWC") else "NCHW"
            outputs.append(Act(name, layout if len(dims) == 4 else "flat", tuple(dims[1:])))
        return outputs

    def _read_input(self, readers):
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
        place = f"graph input {value.name!r}"
        if kind != "tensor_type" or tensor.elem_type not in floats:
            self.faults.append((place, "it is not a tensor of floats (images)"))
        elif len(dims) != 4 or any(not d or d < 1 for d in dims[1:]):
            shown = ["N" if d is None else d for d in dims]
            self.faults.append((place, f"its shape is {shown}; slidenet reads a batch of images "
                                "(N, C, H, W) or (N, H, W, C) of fixed size"))
        else:
            self.input = Act(value.name, "input", tuple(dims[1:]), pre=readers[value.name] < 2)
            self.values[value.name] = self.input

    def _read_outputs(self):
        finals = []
        for output in self.graph.output:
            value = self.values.get(output.name)
            place = f"graph output {output.name!r}"
            if isinstance(value, Probs):
                value = value.act
            if isinstance(value, Act):
                after = [p.node for p in self.pieces if value.source is not None and
                         value.source in p.reads]
                if after:
                    self.faults.append((place, f"it is an intermediate value (node "
                                               f"{after[0]} reads it on); a slidenet net has "
                                               "one output, its scores"))
                finals.append(value)
            elif isinstance(value, Const):
                self.faults.append((place, "it is a constant, not computed from the image"))
        if self.faults:
            return
        if not finals:
            self.faults.append(("graph outputs", "no output is computed from the image"))
        elif any(act is not finals[0] for act in finals):
            self.faults.append(("graph outputs", "it has several different outputs; a slidenet "
                                "net has one, its scores (and their softmax)"))
        elif not self.pieces:
            self.faults.append(("graph", "it has no layers"))
        elif finals[0].source is None:
            self.faults.append(("graph outputs", "the output is the input itself, no layer "
                                "computes it"))
        elif len(slidenet_shape(finals[0]) or ()) != 1 and \
                tuple(slidenet_shape(finals[0])[:2]) != (1, 1):
            # A 1 x 1 x C volume is a global-average-pool head (SqueezeNet, NiN): its C numbers
            # are the scores. A larger volume is no score per class.
            self.faults.append(("graph outputs", "the net ends on an image volume, not on one "
                                "score per class; slidenet's scores come from an FC (Gemm) or "
                                "a global average pool"))
        if finals and not self.faults:
            self.final = finals[0]

    def judge(self):
        """Raise OnnxFileError when onnx's checker refuses the graph; run once, and only for a
        graph with faults (`onnx_checks`: slidenet's own checks pass every other graph)."""
        if not self.judged:
            checks.judge(self.onnx, self.model, self.path)
            self.judged = True

    # -- values --

    def act(self, value, node):
        """The Act a node reads (any number of nodes may read one: the graph branches)."""
        if isinstance(value, (Unknown, type(None))):
            raise Skip()
        if isinstance(value, Probs):
            raise Unsupported("it reads the output of a Softmax; a softmax can only come last")
        if not isinstance(value, Act):
            raise Unsupported("its data input is a constant, not computed from the image")
        return value

    def const(self, value, what):
        if isinstance(value, (Unknown, type(None))):
            raise Skip()
        if not isinstance(value, Const):
            raise Unsupported(f"its {what} is computed from the image, not a constant")
        return value.array

    def weights(self, value, what):
        """`const` for a layer's weights: a large weight may stay in its file (a
        `FileTensor`, whose transposes and reshapes read nothing) until `fill` copies it into
        the net."""
        if isinstance(value, (Unknown, type(None))):
            raise Skip()
        if not isinstance(value, Const):
            raise Unsupported(f"its {what} is computed from the image, not a constant")
        return value.weights

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

    def append(self, piece, *acts_in):
        """Append a layer reading `acts_in`; returns its index (the `Act.source` of its output)."""
        piece.reads = tuple(act.source for act in acts_in)
        self.pieces.append(piece)
        return len(self.pieces) - 1

    def add_piece(self, piece, act_in, layout, dims, foldable=True, flat_from=KEEP):
        """Append a layer; returns the Act of its output (flat_from: as `act_in`'s, unless
        given). Built field by field: one per node, and a dataclass replace costs several
        times more."""
        index = self.append(piece, act_in)
        return Act(act_in.name, layout, tuple(dims),
                   act_in.flat_from if flat_from is KEEP else flat_from,
                   index if foldable else None, False, index)

    def add_merge(self, piece, acts_in, layout, dims):
        """Append ADD or CONCAT, the merge of branches ending in `acts_in`; returns its Act."""
        index = self.append(piece, *acts_in)
        first = acts_in[0]
        return Act(first.name, layout, tuple(dims), first.flat_from, None, False, index)

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
        """(The pattern of the layers read, branches nested ({ A | B } -> ADD), (H, W, D) of
        its INPUT, and `parse(pattern)` built as the pattern is written, or None where a
        layer's text is not what it should be); NotNested for a graph that is not branches
        nested in one chain."""
        h, w, d = self.input_shape()
        self.items = branches.nest(self.pieces, self.final.source)
        head = f"INPUT({h}x{w}x{d})"
        tree = Tree()
        rest, items = branches.written(self.items, self.pieces, tree,
                                       len(head) + len(branches.ARROW))
        pattern = f"{head}{branches.ARROW}{rest}"
        try:
            specs = tree.specs([tree.layer(head, 0), *items], pattern)
        except SlidenetError:
            specs = None        # `parse(pattern)` says what is wrong, caret and all
        return pattern, (h, w, d), specs

    def fill(self, net):
        """Copy each piece's arrays into its layer of `net` (built from `pattern`).

        A CONV or FC before BATCHNORM has no bias in slidenet; the bias the graph gives it is
        folded into that BATCHNORM's running mean (mean - b), which computes the same."""
        dropped = net.dropped_biases()
        pieces = list(branches.in_order(self.items, self.pieces))
        infos = list(walk_infos(net.infos[1:]))
        layers = list(net.every_layer())
        if not len(pieces) == len(infos) == len(layers):
            raise RuntimeError(f"import bug: {len(pieces)} layers read, the net has "
                               f"{len(layers)}")
        with Reads() as reads:     # one buffer and each file opened once, for all
            for layer, piece, info in zip(layers, pieces, infos):
                if piece is None:       # an ID branch
                    continue
                if piece.shape is not None and tuple(piece.shape) != tuple(info.output_shape):
                    raise RuntimeError(f"import bug: {piece.text} from {piece.node} gives "
                                       f"{piece.shape}, slidenet infers {info.output_shape}")
                for store, arrays in ((layer.params, piece.params), (layer.buffers, piece.buffers)):
                    for key, array in arrays.items():
                        name = f"{layer.name}.{key}"
                        if name in dropped and key not in store:
                            folded = net.buffers[f"{dropped[name]}.running_mean"]
                            self.folded.append((folded, np.asarray(array)))
                            continue
                        target = store[key]
                        if np.ndim(array) == 4 and target.ndim == 2 and \
                                np.size(array) == target.size:      # an FC's rows as (H, W, D)
                            target = target.reshape(np.shape(array))
                        if np.shape(array) != target.shape:
                            raise RuntimeError(f"import bug: {piece.text} {key} is "
                                               f"{np.shape(array)}, slidenet's {store[key].shape}")
                        _copy(target, array, reads)
        for mean, bias in self.folded:      # after BATCHNORM's own statistics are in
            mean -= bias.astype(mean.dtype)
        for piece in self.pieces:           # their copies can go now
            piece.params.clear()
            piece.buffers.clear()


def _copy(target, source, reads):
    """target[...] = source, for a `source` that is a transposed view of ONNX's weights (its
    last two axes, D and K, are its first two in the file): a weight left in its file is read
    in blocks straight into `target` (`FileTensor.copy_into`, sharing `reads`' buffer and open
    files); one in memory is copied tile by tile (`copy_tiled`: several times faster for VGG's
    400 MB FC than one strided pass)."""
    if isinstance(source, FileTensor):
        source.copy_into(target, reads)
    else:
        copy_tiled(target, source)


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
    for place, kind, constant, act in reader.pre:
        if act.layout == "input":
            act = replace(act, layout=reader.layout or reader.fallback_layout or "NCHW")
        try:
            vector = channel_vector(act, constant, kind)
        except Unsupported as fault:
            raise ImportRefused(f"{place}: {fault.args[0]}") from None
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
