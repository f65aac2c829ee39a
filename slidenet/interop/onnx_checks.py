"""The parts of onnx's checker that slidenet's reading of a graph relies on, checked by slidenet
itself in one pass over the nodes, without onnx's operator schemas.

    check_structure(onnx, model, path)     # in `onnx_file.read_model`: OnnxFileError or None
    node_faults(node, opset)               # per node, in the walk: [reason, ...]
    judge(onnx, model, path)               # onnx's own checker: only for a graph being refused

Why not onnx.checker.check_model on every file: its first call in a process sets up every
operator schema onnx knows, which costs more than reading a small file whole
(docs/benchmarks.md, "ONNX import time"). What the checker guards that slidenet's walk needs,
and where slidenet checks it instead:

- the graph's structure (`check_structure`): each value defined once (SSA: graph inputs,
  initializers and node outputs), every node reading only values defined before it (the
  nodes in topological order), the graph's outputs defined, every node naming an op, every
  domain imported, an IR version this onnx knows;
- each node of an op slidenet reads (`node_faults`): its number of inputs and outputs, the
  required ones named, and its attributes, each known to that op at the graph's opset, with the
  type the op gives it, once, and a value rather than a reference to a function's attribute.
  `SCHEMAS` holds those facts for the ops of `onnx_ops.OPS`, as onnx's schemas state them
  (tests/test_onnx_checks.py compares the table with `onnx.defs` at every opset);
- each tensor: `onnx_file.tensor_array` checks its type, its dims against its bytes, and the
  budget, before anything is allocated.

Nodes of ops slidenet does not read are refused by the walk as they are, so their attributes
need no check. A graph that fails any of these, or that slidenet refuses for any reason, is
then judged by onnx's checker after all (`judge`): when the checker refuses it, its message is
the one shown, as clear as it was when the checker judged every file.
"""
from slidenet.interop.onnx_file import OnnxFileError, first_line, light_model

MANY = 2**31 - 1        # a variadic op's inputs (Concat, Sum), as onnx counts them

_REMOVED = {"consumed_inputs": "INTS"}      # opset 1's attribute of many ops
_POOL = {"auto_pad": "STRING", "kernel_shape": "INTS", "pads": "INTS", "strides": "INTS"}
_UNARY = [(1, (1, 1), (1, 1), _REMOVED), (6, (1, 1), (1, 1), {})]
_BINARY = [(1, (2, 2), (1, 1), {"axis": "INT", "broadcast": "INT", **_REMOVED}),
           (6, (2, 2), (1, 1), {"axis": "INT", "broadcast": "INT"}),
           (7, (2, 2), (1, 1), {})]
_VALUES = {"value_float": "FLOAT", "value_floats": "FLOATS", "value_int": "INT",
           "value_ints": "INTS", "value_string": "STRING", "value_strings": "STRINGS"}

# op -> its forms, oldest first: (the opset it starts at, (min, max) inputs, (min, max) outputs,
# {attribute: type}); or (the opset it starts at, why slidenet does not read that form).
SCHEMAS = {
    "Conv": [(1, (2, 3), (1, 1), {**_POOL, "dilations": "INTS", "group": "INT"})],
    "MaxPool": [(1, (1, 1), (1, 1), _POOL),
                (8, (1, 1), (1, 2), {**_POOL, "storage_order": "INT"}),
                (10, (1, 1), (1, 2), {**_POOL, "storage_order": "INT", "dilations": "INTS",
                                      "ceil_mode": "INT"})],
    "AveragePool": [(1, (1, 1), (1, 1), _POOL),
                    (7, (1, 1), (1, 1), {**_POOL, "count_include_pad": "INT"}),
                    (10, (1, 1), (1, 1), {**_POOL, "count_include_pad": "INT",
                                          "ceil_mode": "INT"}),
                    (19, (1, 1), (1, 1), {**_POOL, "count_include_pad": "INT",
                                          "ceil_mode": "INT", "dilations": "INTS"})],
    "GlobalAveragePool": [(1, (1, 1), (1, 1), {})],
    "GlobalMaxPool": [(1, (1, 1), (1, 1), {})],
    "ReduceMean": [(1, (1, 1), (1, 1), {"axes": "INTS", "keepdims": "INT"}),
                   (18, (1, 2), (1, 1), {"keepdims": "INT", "noop_with_empty_axes": "INT"})],
    "BatchNormalization": [
        (1, (5, 5), (1, 5), {"epsilon": "FLOAT", "momentum": "FLOAT", "is_test": "INT",
                             "spatial": "INT", **_REMOVED}),
        (6, (5, 5), (1, 5), {"epsilon": "FLOAT", "momentum": "FLOAT", "is_test": "INT",
                             "spatial": "INT"}),
        (7, (5, 5), (1, 5), {"epsilon": "FLOAT", "momentum": "FLOAT", "spatial": "INT"}),
        (9, (5, 5), (1, 5), {"epsilon": "FLOAT", "momentum": "FLOAT"}),
        (14, (5, 5), (1, 3), {"epsilon": "FLOAT", "momentum": "FLOAT", "training_mode": "INT"})],
    "Relu": _UNARY,
    "Tanh": _UNARY,
    "Sigmoid": _UNARY,
    "Clip": [(1, (1, 1), (1, 1), {"min": "FLOAT", "max": "FLOAT", **_REMOVED}),
             (6, (1, 1), (1, 1), {"min": "FLOAT", "max": "FLOAT"}),
             (11, (1, 3), (1, 1), {})],
    "LeakyRelu": [(1, (1, 1), (1, 1), {"alpha": "FLOAT", **_REMOVED}),
                  (6, (1, 1), (1, 1), {"alpha": "FLOAT"})],
    "Dropout": [(1, (1, 1), (1, 2), {"ratio": "FLOAT", "is_test": "INT", **_REMOVED}),
                (6, (1, 1), (1, 2), {"ratio": "FLOAT", "is_test": "INT"}),
                (7, (1, 1), (1, 2), {"ratio": "FLOAT"}),
                (12, (1, 3), (1, 2), {"seed": "INT"})],
    "Softmax": [(1, (1, 1), (1, 1), {"axis": "INT"})],
    "LogSoftmax": [(1, (1, 1), (1, 1), {"axis": "INT"})],
    "Identity": [(1, (1, 1), (1, 1), {})],
    "Transpose": [(1, (1, 1), (1, 1), {"perm": "INTS"})],
    "Flatten": [(1, (1, 1), (1, 1), {"axis": "INT"})],
    "Reshape": [(1, "opsets 1 to 4 give Reshape its shape as an attribute, which slidenet does "
                    "not read: export at opset 5 or later"),
                (5, (2, 2), (1, 1), {}),
                (14, (2, 2), (1, 1), {"allowzero": "INT"})],
    "Squeeze": [(1, (1, 1), (1, 1), {"axes": "INTS"}), (13, (1, 2), (1, 1), {})],
    "Unsqueeze": [(1, (1, 1), (1, 1), {"axes": "INTS"}), (13, (2, 2), (1, 1), {})],
    "Gemm": [(1, (3, 3), (1, 1), {"alpha": "FLOAT", "beta": "FLOAT", "broadcast": "INT",
                                  "transA": "INT", "transB": "INT"}),
             (7, (3, 3), (1, 1), {"alpha": "FLOAT", "beta": "FLOAT", "transA": "INT",
                                  "transB": "INT"}),
             (11, (2, 3), (1, 1), {"alpha": "FLOAT", "beta": "FLOAT", "transA": "INT",
                                   "transB": "INT"})],
    "MatMul": [(1, (2, 2), (1, 1), {})],
    "Add": _BINARY,
    "Sub": _BINARY,
    "Mul": _BINARY,
    "Div": _BINARY,
    "Sum": [(1, (1, MANY), (1, 1), _REMOVED), (6, (1, MANY), (1, 1), {})],
    "Constant": [(1, (0, 0), (1, 1), {"value": "TENSOR"}),
                 (11, (0, 0), (1, 1), {"value": "TENSOR", "sparse_value": "SPARSE_TENSOR"}),
                 (12, (0, 0), (1, 1), {"value": "TENSOR", "sparse_value": "SPARSE_TENSOR",
                                       **_VALUES})],
    "Shape": [(1, (1, 1), (1, 1), {}), (15, (1, 1), (1, 1), {"start": "INT", "end": "INT"})],
    "Gather": [(1, (2, 2), (1, 1), {"axis": "INT"})],
    "Concat": [(1, (1, MANY), (1, 1), {"axis": "INT"})],
    "Slice": [(1, (1, 1), (1, 1), {"starts": "INTS", "ends": "INTS", "axes": "INTS"}),
              (10, (3, 5), (1, 1), {})],
    "Cast": [(1, "opsets 1 to 5 name Cast's type as text, which slidenet does not read: export "
                 "at opset 6 or later"),
             (6, (1, 1), (1, 1), {"to": "INT"}),
             (19, (1, 1), (1, 1), {"to": "INT", "saturate": "INT"}),
             (24, (1, 1), (1, 1), {"to": "INT", "saturate": "INT", "round_mode": "STRING"})],
}


def form(op, opset):
    """The form of `op` at `opset` (see SCHEMAS), or None for an op SCHEMAS does not hold."""
    found = None
    for entry in SCHEMAS.get(op, ()):
        if entry[0] > opset:
            break
        found = entry
    return found


_READY = {}     # (op, opset) -> its form, each attribute's type also as onnx's number


def _ready(onnx, op, opset):
    key = (op, opset)
    if key not in _READY:
        entry = form(op, opset)
        if entry is not None and len(entry) == 4:
            at, inputs, outputs, attributes = entry
            entry = (at, inputs, outputs, {name: (kind, getattr(onnx.AttributeProto, kind))
                                           for name, kind in attributes.items()})
        _READY[key] = entry
    return _READY[key]


def node_faults(onnx, node, opset):
    """Why a node of an op slidenet reads does not have that op's form at `opset`: [reason, ...],
    empty when it has. The attribute types are onnx's AttributeProto names (INT, INTS, ...)."""
    entry = _ready(onnx, node.op_type, opset)
    if entry is None:
        return []
    if len(entry) == 2:
        return [entry[1]]
    _, (low, high), (out_low, out_high), attributes = entry
    faults = []
    count = len(node.input)
    if not low <= count <= high:
        faults.append(f"it has {count} input{'s' * (count != 1)}, where ONNX's "
                      f"{node.op_type} takes {_range(low, high)}")
    elif "" in node.input[:low if high < MANY else count]:
        faults.append(f"a required input is unnamed (its first {low} must be named)")
    count = len(node.output)
    if not out_low <= count <= out_high:
        faults.append(f"it has {count} output{'s' * (count != 1)}, where ONNX's "
                      f"{node.op_type} makes {_range(out_low, out_high)}")
    elif "" in node.output[:out_low]:
        faults.append("its output is unnamed")
    seen = set()
    for attribute in node.attribute:
        name = attribute.name
        if name in seen:
            faults.append(f"attribute {name!r} appears more than once")
        seen.add(name)
        want = attributes.get(name)
        if want is None:
            known = ", ".join(sorted(attributes)) or "none"
            faults.append(f"attribute {name!r} is not one of {node.op_type}'s at opset {opset} "
                          f"({known})")
        elif attribute.ref_attr_name:
            faults.append(f"attribute {name!r} refers to a function's attribute, which only a "
                          "function's body may")
        elif attribute.type != want[1]:
            faults.append(f"attribute {name!r} is {_type_name(onnx, attribute.type)}, where "
                          f"{node.op_type} takes {want[0]}")
    return faults


def _type_name(onnx, number):
    types = onnx.AttributeProto.AttributeType
    return types.Name(number) if number in types.values() else f"of type {number}"


def _range(low, high):
    if low == high:
        return f"{low}"
    return f"{low} or more" if high == MANY else f"{low} to {high}"


def check_structure(onnx, model, path):
    """Raise OnnxFileError when `model`'s graph is not one ONNX allows, as onnx's checker would
    (then with the checker's own message): see the module's docstring for what is checked."""
    problem = _structure(onnx, model)
    if problem is not None:
        judge(onnx, model, path)
        raise OnnxFileError(f"{path} is not a valid ONNX model: {problem}")


def _structure(onnx, model):
    """The first way `model` breaks ONNX's rules of structure, as one line; None if it keeps
    them all."""
    if model.ir_version > onnx.IR_VERSION:
        return (f"its IR version {model.ir_version} is newer than the {onnx.IR_VERSION} this "
                "onnx package knows")
    graph = model.graph
    domains = {entry.domain or "ai.onnx" for entry in model.opset_import}
    defined = set()
    for value in graph.input:
        if value.name in defined:
            return f"graph input {value.name!r} is named twice"
        defined.add(value.name)
    initializers = set()
    for tensor in graph.initializer:
        if tensor.name in initializers:
            return f"initializer {tensor.name!r} is named twice"
        initializers.add(tensor.name)
    defined |= initializers
    for index, node in enumerate(graph.node):
        if not node.op_type:
            return f"{_place(index, node)} names no op"
        if (node.domain or "ai.onnx") not in domains:
            return (f"{_place(index, node)} is of domain {node.domain!r}, which the model does "
                    "not import")
        for name in node.input:
            if name and name not in defined:
                return (f"{_place(index, node)} reads {name!r}, which no graph input, "
                        "initializer or node before it makes (the nodes are out of order, or it "
                        "is missing)")
        for name in node.output:
            if name in defined:
                return (f"{_place(index, node)} makes {name!r}, which is already defined (each "
                        "value once)")
            if name:
                defined.add(name)
    for value in graph.output:
        if value.name not in defined:
            return f"graph output {value.name!r} is made by no node"
    return None


def _place(index, node):
    return f"node {index} ({node.op_type or 'no op'} {node.name!r})"


def judge(onnx, model, path):
    """Raise OnnxFileError with onnx's checker's message when it refuses `model` (judged
    without its weights, `light_model`); return when it accepts it."""
    try:
        onnx.checker.check_model(light_model(onnx, model))
    except Exception as err:        # the checker's own ValidationError, and C++ errors it wraps
        raise OnnxFileError(f"{path} is not a valid ONNX model: {first_line(err)}") from None
