"""A large import stays lean: the weights are held at most twice (the file's, then the net's),
and the tiled copy that turns them into slidenet's layout computes what onnxruntime does.
docs/interop.md's table measures a 507 MiB VGG-11 (scripts/import_memory.py)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import import_part

onnx, ort = import_part("ONNX", "onnx", "onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from slidenet.interop.onnx_import import read_onnx  # noqa: E402

WIDE = 4096         # the first FC: 4096 x 4096 float32 = 64 MiB, most of the file


def wide_net(path):
    """Conv 3x3 (64 filters) on 1 x 8 x 8 -> Relu -> Flatten (64 x 8 x 8 = 4096, in C, H, W
    order) -> Gemm 4096 -> Relu -> Gemm 10, as PyTorch writes it (transB=1)."""
    rng = np.random.default_rng(4)

    def tensor(name, *shape, scale=0.05):
        return numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32) *
                                       np.float32(scale), name)
    inits = [tensor("cw", 64, 1, 3, 3, scale=0.5), tensor("cb", 64), tensor("f1", WIDE, 4096),
             tensor("b1", WIDE), tensor("f2", 10, WIDE), tensor("b2", 10)]
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "f1", "b1"], ["g"], name="fc1", transB=1),
             helper.make_node("Relu", ["g"], ["gr"], name="relu2"),
             helper.make_node("Gemm", ["gr", "f2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(
        nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), path)
    return sum(t.ByteSize() for t in inits)


def test_a_large_fc_in_torch_layout_imports_exactly(tmp_path):
    """The tiled copy (the FC's rows from (C, H, W) to (H, W, C) order, and transposed) and the
    blank net it fills: against onnxruntime on the file itself."""
    path = tmp_path / "wide.onnx"
    wide_net(path)
    imported = read_onnx(path)
    assert imported.net.pattern == ("INPUT(8x8x1) -> CONV(64, 3x3, s=1x1, p=1x1) -> RELU -> "
                                    "FC(4096) -> RELU -> FC(10)")
    pixels = np.random.default_rng(5).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": (pixels / 255).astype(np.float32).transpose(0, 3, 1, 2)})[0]
    got = imported.net.forward(imported.normalizer.normalize(pixels))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


PEAK = r"""
import json, sys
import numpy, onnx
from slidenet.interop.onnx_import import read_onnx
def rss(field="VmRSS"):
    # VmHWM, the peak, belongs to this program's memory; ru_maxrss would carry over the peak
    # of the process it was forked from (pytest's)
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(field))
before = rss()
imported = read_onnx(sys.argv[1])
print(json.dumps({"before": before,
                  "peak": rss("VmHWM")}))
"""


def test_import_holds_the_weights_at_most_twice(tmp_path):
    """Peak resident memory of read_onnx above where the process started: at most twice the
    weights plus 40 MB (before this was made lean: about 7 times the weights)."""
    path = tmp_path / "wide.onnx"
    weights = wide_net(path)
    done = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True,
                          text=True, timeout=300, check=True)
    numbers = json.loads(done.stdout.strip().splitlines()[-1])
    above = numbers["peak"] - numbers["before"]
    assert above < 2 * weights + 40 * 2**20, (above / 2**20, weights / 2**20)


def test_the_wire_walk_finds_every_raw_tensor_where_protobuf_does(tmp_path):
    """split_weights against protobuf's own parse of the same file: the same initializers, each
    raw_data byte for byte, and the rest of the model unchanged; a cut file is left to
    protobuf (None)."""
    from slidenet.interop.onnx_file import split_weights
    path = tmp_path / "wide.onnx"
    wide_net(path)
    data = np.fromfile(path, dtype=np.uint8)
    light, raws = split_weights(data)
    whole = onnx.load(path)
    rest = onnx.ModelProto()
    rest.ParseFromString(light)
    assert len(raws) == len(whole.graph.initializer) == len(rest.graph.initializer) == 6
    for tensor, kept, raw in zip(whole.graph.initializer, rest.graph.initializer, raws):
        assert raw.tobytes() == tensor.raw_data and not kept.raw_data
        assert (kept.name, list(kept.dims), kept.data_type) == \
            (tensor.name, list(tensor.dims), tensor.data_type)
    for tensor in whole.graph.initializer:
        tensor.ClearField("raw_data")
    assert rest == whole
    assert split_weights(data[:len(data) // 2]) == (None, None)
    assert split_weights(np.frombuffer(b"\x89PNG\r\n\x1a\n" + bytes(64), np.uint8)) == (None, None)


def test_a_branching_import_parses_and_infers_its_pattern_once(monkeypatch):
    """The importer needs the shapes before it builds the net (to check the pattern, and to
    compare it with a slidenet export's own); the net is then built on those shapes, not on a
    second parse and walk of a long nested pattern. Counted on the DenseNet-style fixture, whose
    imported net still predicts what PyTorch computed (the net built on the shared shapes is
    the one that runs)."""
    import slidenet.notation.pattern as pattern_module
    import slidenet.notation.shapes as shapes_module
    from slidenet.interop import onnx_import
    from slidenet import net as net_module
    calls = {"parse": 0, "infer": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper
    parse, infer = counted("parse", pattern_module.parse), counted("infer", shapes_module.infer)
    for module in (pattern_module, onnx_import, net_module):
        monkeypatch.setattr(module, "parse", parse)
    for module in (shapes_module, onnx_import, net_module):
        monkeypatch.setattr(module, "infer", infer)
    folder = Path(__file__).parent / "fixtures" / "onnx"
    expected = np.load(folder / "torch_dense_expected.npz")
    imported = read_onnx(folder / "torch_dense_legacy18.onnx", mean=expected["mean"],
                         std=expected["std"])
    assert "CONCAT" in imported.net.pattern
    assert calls == {"parse": 1, "infer": 1}
    scores = imported.net.forward(imported.normalizer.normalize(expected["pixels"]))
    p = np.exp(scores - scores.max(1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), expected["probabilities"],
                               atol=1e-5)


def test_a_net_built_on_shapes_already_inferred_is_the_patterns_blank_net():
    """`Net.from_infos` against `Net.from_pattern(blank=True)`: the same layers, names, array
    shapes, fused steps and blank weights (nothing drawn)."""
    from slidenet.net import Net
    from slidenet.notation.pattern import parse
    from slidenet.notation.shapes import infer
    pattern = ("INPUT(12x12x3) -> CONV(8) -> RELU -> { CONV(8) -> BATCHNORM -> RELU | ID } "
               "-> ADD -> { CONV(4, 1x1) | MAXPOOL(3x3, s=1x1, p=1x1) } -> CONCAT -> "
               "GLOBALAVGPOOL -> FC(5)")
    shared = Net.from_infos(pattern, infer(parse(pattern), pattern))
    alone = Net.from_pattern(pattern, blank=True)
    assert [(k, v.shape) for k, v in shared.params.items()] == \
        [(k, v.shape) for k, v in alone.params.items()]
    assert list(shared.buffers) == list(alone.buffers)
    assert [type(s).__name__ for s in shared.steps] == [type(s).__name__ for s in alone.steps]
    for name, value in alone.params.items():        # zeros (BATCHNORM's gamma: ones)
        np.testing.assert_array_equal(shared.params[name], value)
    x = np.random.default_rng(0).standard_normal((2, 12, 12, 3)).astype(np.float32)
    for net in (shared, alone):
        for value in net.params.values():
            value[...] = 0.01
    np.testing.assert_array_equal(shared.forward(x), alone.forward(x))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_blank_nets_arrays_are_its_own_contiguous_writable_and_apart(dtype):
    """A blank net's weights and gradients are views of one buffer each (`layers.Arena`): each
    must still be C-contiguous, writable, of the net's dtype, zero, and share no memory with any
    other array of the net (np.shares_memory, pair by pair), as separate arrays would be."""
    from slidenet.net import Net
    pattern = ("INPUT(8x8x3) -> CONV(6) -> BATCHNORM -> RELU -> { CONV(6, 1x1) | ID } -> ADD "
               "-> { DWCONV(3x3) -> CONV(4, 1x1) | CONV(3) } -> CONCAT -> FC(7) -> FC(5)")
    net = Net.from_pattern(pattern, blank=True, dtype=dtype)
    arrays = [*net.params.values(), *net.grads.values(), *net.buffers.values()]
    assert len(arrays) == 2 * len(net.params) + len(net.buffers) > 20
    for array in arrays:
        assert array.flags.c_contiguous and array.flags.writeable and array.dtype == dtype
    for name, array in net.params.items():
        if not name.endswith(".gamma"):
            assert not array.any(), name
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:]:
            assert not np.shares_memory(a, b)
    assert any(a.base is not None for a in net.params.values())     # the arena is in use


def test_the_budget_names_the_tensor_only_when_it_refuses():
    """The budget's message is made only for a refusal (a graph has hundreds of tensors), and
    then names the tensor, its dims and its type."""
    import pytest
    from slidenet.interop.onnx_file import Budget, OnnxFileError
    made = []

    def text():
        made.append(1)
        return "tensor 'w' (4 x 4 float32)"
    budget = Budget(100)
    budget.take(text, 64)
    assert not made and budget.left == 36
    with pytest.raises(OnnxFileError, match=r"tensor 'w' \(4 x 4 float32\) claims 64"):
        budget.take(text, 64)
    budget.take("a plain description", 36)
    assert budget.left == 0
