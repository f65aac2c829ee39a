"""Graphs that break ONNX's rules are refused with one clear line, though onnx's checker no
longer judges every file (slidenet.interop.onnx_checks). The oracle is onnx's checker itself:
each hostile graph below is one it refuses, and slidenet's line must carry the checker's own
words. `SCHEMAS` is compared with onnx's operator schemas at every opset."""
import subprocess
import sys

import numpy as np
import pytest

from helpers import import_part

onnx, ort = import_part("ONNX", "onnx", "onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from slidenet.errors import SlidenetError  # noqa: E402
from slidenet.interop import onnx_checks  # noqa: E402
from slidenet.interop.onnx_file import OnnxFileError, light_model  # noqa: E402
from slidenet.interop.onnx_import import ImportRefused, read_onnx  # noqa: E402
from slidenet.interop.onnx_ops import OPS  # noqa: E402


def weights(name, *shape):
    return numpy_helper.from_array(np.full(shape, 0.1, np.float32), name)


def good():
    """Conv 3x3 -> Relu -> Flatten -> Gemm on a 1 x 6 x 6 input: a graph slidenet imports."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc")]
    return nodes, [weights("w", 2, 1, 3, 3), weights("fc", 32, 3)]


def model(nodes, inits, opset=17, ir=8, inputs=None):
    tensor = helper.make_tensor_value_info
    inputs = inputs or [tensor("x", TensorProto.FLOAT, ["N", 1, 6, 6])]
    graph = helper.make_graph(nodes, "g", inputs, [tensor("y", TensorProto.FLOAT, ["N", 3])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=ir)


def swapped():
    nodes, inits = good()
    nodes[0], nodes[1] = nodes[1], nodes[0]
    return model(nodes, inits)


def made_twice():
    nodes, inits = good()
    nodes.insert(1, helper.make_node("Relu", ["x"], ["c"], name="again"))
    return model(nodes, inits)


def initializer_twice():
    nodes, inits = good()
    return model(nodes, inits + [weights("w", 2, 1, 3, 3)])


def overwrites_a_weight():
    nodes, inits = good()
    nodes[1] = helper.make_node("Relu", ["c"], ["w"], name="relu")
    nodes[2] = helper.make_node("Flatten", ["w"], ["f"], name="flat")
    return model(nodes, inits)


def input_twice():
    tensor = helper.make_tensor_value_info
    nodes, inits = good()
    return model(nodes, inits, inputs=[tensor("x", TensorProto.FLOAT, ["N", 1, 6, 6]),
                                       tensor("x", TensorProto.FLOAT, ["N", 1, 6, 6])])


def foreign_domain():
    nodes, inits = good()
    nodes[1].domain = "example.com"
    return model(nodes, inits)


def newer_ir():
    nodes, inits = good()
    return model(nodes, inits, ir=onnx.IR_VERSION + 1)


def with_attributes(*attributes, inputs=("x", "w"), outputs=("c",)):
    def make():
        nodes, inits = good()
        conv = helper.make_node("Conv", list(inputs), list(outputs), name="conv")
        conv.attribute.extend(attributes)
        nodes[0] = conv
        return model(nodes, inits)
    return make


def untyped_attribute():
    attribute = onnx.AttributeProto()
    attribute.name, attribute.i = "group", 1
    return with_attributes(attribute)()


def unnamed_op():
    nodes, inits = good()
    nodes[1].op_type = ""
    return model(nodes, inits)


def output_made_by_none():
    nodes, inits = good()
    nodes[3] = helper.make_node("Gemm", ["f", "fc"], ["z"], name="fc")
    return model(nodes, inits)


# name -> a model onnx's checker refuses (the test checks that it does)
REFUSED_BY_THE_CHECKER = {
    "nodes out of order": swapped,
    "a value made twice": made_twice,
    "an initializer named twice": initializer_twice,
    "a node output that overwrites a weight": overwrites_a_weight,
    "a graph input named twice": input_twice,
    "a domain the model does not import": foreign_domain,
    "an IR version newer than onnx knows": newer_ir,
    "an INT attribute given as INTS": with_attributes(helper.make_attribute("group", [1])),
    "an INTS attribute given as INT": with_attributes(helper.make_attribute("strides", 1)),
    "an attribute without a type": untyped_attribute,
    "an attribute the op does not have": with_attributes(helper.make_attribute("colour", 3)),
    "an attribute given twice": with_attributes(helper.make_attribute("group", 1),
                                                helper.make_attribute("group", 1)),
    "too few inputs": with_attributes(inputs=("x",)),
    "too many inputs": with_attributes(inputs=("x", "w", "w", "w")),
    "a required input left unnamed": with_attributes(inputs=("x", "")),
    "too many outputs": with_attributes(outputs=("c", "c2")),
    "a node with no op": unnamed_op,
    "a graph output no node makes": output_made_by_none,
}


@pytest.mark.parametrize("case", REFUSED_BY_THE_CHECKER)
def test_a_graph_the_checker_refuses_is_refused_in_the_checkers_words(tmp_path, case):
    proto = REFUSED_BY_THE_CHECKER[case]()
    with pytest.raises(Exception):
        onnx.checker.check_model(proto)
    # slidenet asks the checker about the graph without its weights (each initializer an
    # input of its type and shape), whose words may differ: a weight named twice is then an
    # input named twice.
    with pytest.raises(Exception) as checked:
        onnx.checker.check_model(light_model(onnx, proto))
    words = str(checked.value).strip().splitlines()[0]
    path = tmp_path / "hostile.onnx"
    onnx.save(proto, path)
    with pytest.raises(OnnxFileError) as refused:
        read_onnx(path)
    message = str(refused.value)
    assert message == f"{path} is not a valid ONNX model: {words}"
    assert "\n" not in message


@pytest.mark.parametrize("case", ["nodes out of order", "an attribute without a type",
                                  "too few inputs"])
def test_the_command_refuses_a_hostile_graph_with_one_line_and_status_2(tmp_path, case):
    path = tmp_path / "hostile.onnx"
    onnx.save(REFUSED_BY_THE_CHECKER[case](), path)
    done = subprocess.run([sys.executable, "-m", "slidenet", "import", str(path), "--out",
                           str(tmp_path / "m.npz")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
    assert "is not a valid ONNX model" in done.stderr
    assert not (tmp_path / "m.npz").exists()


def test_slidenets_own_checks_find_each_structural_fault_without_the_checker():
    """`_structure` alone (no onnx schemas) names each structural fault of the cases above,
    so that the checker need only run for a graph being refused; node faults are named by
    `node_faults`."""
    structural = ["nodes out of order", "a value made twice", "an initializer named twice",
                  "a node output that overwrites a weight", "a graph input named twice",
                  "a domain the model does not import", "an IR version newer than onnx knows",
                  "a node with no op", "a graph output no node makes"]
    for case in structural:
        assert onnx_checks._structure(onnx, REFUSED_BY_THE_CHECKER[case]()) is not None, case
    for case in set(REFUSED_BY_THE_CHECKER) - set(structural):
        proto = REFUSED_BY_THE_CHECKER[case]()
        assert onnx_checks._structure(onnx, proto) is None, case
        assert onnx_checks.node_faults(onnx, proto.graph.node[0], 17), case
    nodes, inits = good()
    proto = model(nodes, inits)
    assert onnx_checks._structure(onnx, proto) is None
    assert all(onnx_checks.node_faults(onnx, node, 17) == [] for node in proto.graph.node)


def test_a_valid_graph_imports_without_running_the_checker(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the checker ran")
    nodes, inits = good()
    onnx.save(model(nodes, inits), tmp_path / "good.onnx")
    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    imported = read_onnx(tmp_path / "good.onnx")
    assert imported.net.pattern.startswith("INPUT(6x6x1) -> CONV(2, 3x3")


def test_a_reference_to_a_functions_attribute_is_refused_not_a_traceback(tmp_path):
    """The checker lets a node of the main graph say its attribute is a function's
    (ref_attr_name); onnx.helper cannot read its value, and slidenet refuses it by name."""
    attribute = onnx.AttributeProto()
    attribute.name, attribute.ref_attr_name = "group", "g"
    attribute.type = onnx.AttributeProto.INT
    proto = with_attributes(attribute)()
    onnx.checker.check_model(proto)
    onnx.save(proto, tmp_path / "ref.onnx")
    with pytest.raises(ImportRefused, match="Conv 'conv': attribute 'group' refers to a "
                                            "function's attribute"):
        read_onnx(tmp_path / "ref.onnx")


def test_a_reshape_of_opset_4_is_refused_by_name(tmp_path):
    """Opsets 1 to 4 give Reshape its shape as an attribute (a valid graph, which the checker
    accepts); slidenet reads the shape from the second input and says so."""
    nodes, inits = good()
    nodes[2] = helper.make_node("Reshape", ["r"], ["f"], name="flat", shape=[-1, 32])
    nodes[3] = helper.make_node("Gemm", ["f", "fc", "b"], ["y"], name="fc")
    proto = model(nodes, inits + [weights("b", 3)], opset=4, ir=4)
    onnx.checker.check_model(proto)
    onnx.save(proto, tmp_path / "old.onnx")
    with pytest.raises(ImportRefused, match="Reshape 'flat': opsets 1 to 4 give Reshape its "
                                            "shape as an attribute"):
        read_onnx(tmp_path / "old.onnx")


def test_a_graph_refused_for_what_slidenet_lacks_keeps_slidenets_lines(tmp_path):
    """A valid graph with a node slidenet cannot represent: the checker accepts it, and the
    message lists slidenet's own reason."""
    nodes, inits = good()
    nodes[0] = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", dilations=[2, 2])
    proto = model(nodes, inits)
    onnx.checker.check_model(proto)
    onnx.save(proto, tmp_path / "dilated.onnx")
    with pytest.raises(ImportRefused, match="Conv 'conv': dilations=\\[2, 2\\]"):
        read_onnx(tmp_path / "dilated.onnx")


def _schema(op, opset):
    try:
        return onnx.defs.get_schema(op, opset)
    except onnx.defs.SchemaError:
        return None


def test_the_table_of_forms_is_onnxs_schemas_at_every_opset():
    """For every op slidenet reads and every opset onnx knows: the inputs and outputs it may
    have and its attributes with their types, as `onnx.defs` states them (forms slidenet does
    not read stand in for the schema's by a reason)."""
    names = onnx.AttributeProto.AttributeType.Name
    for op in OPS:
        for opset in range(1, onnx.defs.onnx_opset_version() + 1):
            schema, entry = _schema(op, opset), onnx_checks.form(op, opset)
            if schema is None:
                assert entry is None or isinstance(entry[1], str), (op, opset)
                continue
            assert entry is not None, (op, opset)
            if isinstance(entry[1], str):
                continue
            _, inputs, outputs, attributes = entry
            assert inputs == (schema.min_input, schema.max_input), (op, opset)
            assert outputs == (schema.min_output, schema.max_output), (op, opset)
            assert attributes == {name: names(a.type) for name, a in schema.attributes.items()}, \
                (op, opset)


def test_every_op_slidenet_reads_has_its_forms():
    assert set(onnx_checks.SCHEMAS) == set(OPS)


def test_slidenets_refusal_of_a_damaged_file_is_still_one_slidenet_error(tmp_path):
    """A file whose weights claim more than the budget: refused before anything is allocated,
    as before (the checker never saw the weights)."""
    nodes, inits = good()
    proto = model(nodes, inits)
    proto.graph.initializer[0].dims[:] = [100000, 100000, 100, 1]
    onnx.save(proto, tmp_path / "big.onnx")
    with pytest.raises(SlidenetError, match="tensor 'w'"):
        read_onnx(tmp_path / "big.onnx")
