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


def test_import_holds_the_weights_once(tmp_path):
    """Peak resident memory of read_onnx above where the process started: the weights once
    plus 24 MiB, for a file above STREAMED_FROM, whose large weights are read from the file
    straight into the net (before this was made lean: about 7 times the weights; then twice,
    the file's buffer and the net's)."""
    from slidenet.interop.onnx_file import STREAMED_FROM
    path = tmp_path / "wide.onnx"
    weights = wide_net(path)
    assert path.stat().st_size > STREAMED_FROM
    done = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True,
                          text=True, timeout=300, check=True)
    numbers = json.loads(done.stdout.strip().splitlines()[-1])
    above = numbers["peak"] - numbers["before"]
    assert above < weights + 24 * 2**20, (above / 2**20, weights / 2**20)


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


def test_a_branching_import_infers_its_pattern_once_and_never_reads_it_back(monkeypatch):
    """The importer needs the shapes before it builds the net (to check the pattern, and to
    compare it with a slidenet export's own); the net is then built on those shapes, not on a
    second walk of a long nested pattern, and the pattern's parse is built as it is written,
    not read back from its text. Counted on the DenseNet-style fixture, whose imported net still
    predicts what PyTorch computed (the net built on the shared shapes is the one that runs)."""
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
    assert calls == {"parse": 0, "infer": 1}
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


@pytest.mark.parametrize("small_pages", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_blank_nets_arrays_are_its_own_contiguous_writable_and_apart(dtype, small_pages,
                                                                       monkeypatch):
    """A blank net's weights and gradients are views of one buffer each (`layers.Arena`): each
    must still be C-contiguous, writable, of the net's dtype, zero, and share no memory with any
    other array of the net (np.shares_memory, pair by pair), as separate arrays would be; on
    huge pages, or in small pages as a net above 64 MiB is (`runtime.zeroed_buffer`)."""
    from slidenet.net import Net
    from slidenet.ops import runtime
    if small_pages:
        monkeypatch.setattr(runtime, "SMALL_PAGES_FROM", 0)
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


FIXTURES = Path(__file__).parent / "fixtures" / "onnx"


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.onnx")
                                        if p.name != "unsupported.onnx"))
def test_the_parse_built_while_writing_the_pattern_is_the_patterns_parse(name):
    """The oracle is `parse` reading the written pattern back: every fixture (chains, residual,
    Inception, dense and MobileNet blocks, repeats [...]*k, Keras layouts) gives the same
    layer specs, columns, arguments and branches, and the written text is unchanged."""
    import onnx
    from slidenet.interop import onnx_import
    from slidenet.interop.onnx_file import read_model
    from slidenet.notation.pattern import parse
    model, folder, raws = read_model(FIXTURES / name)
    reader = onnx_import._Reader(onnx, model, folder, None, raws, FIXTURES / name)
    with np.errstate(all="ignore"):
        reader.walk()
    assert not reader.faults
    pattern, _, specs = reader.pattern()
    assert specs is not None and specs == parse(pattern)
    assert pattern.startswith("INPUT(") and " -> " in pattern


def test_a_layer_the_tree_cannot_read_falls_back_to_parse_and_its_caret():
    """A text that is not one layer, or a merge written as a plain layer, is refused by the
    tree (the importer then parses the whole pattern for parse's own message)."""
    from slidenet.errors import PatternError
    from slidenet.notation.pattern import Tree, parse
    tree = Tree()
    for text, merges in (("CONV(8) -> RELU", False), ("ADD", False), ("RELU", True),
                         ("CONV(8, 3x3, q=1)", False), ("", False)):
        with pytest.raises(PatternError):
            (tree.merge if merges else tree.layer)(text, 0, *([[], 0] if merges else []))
    items = [tree.layer("INPUT(8x8x3)", 0), tree.layer("CONV(4, 3x3)", 16),
             tree.layer("RELU", 32)]
    pattern = "INPUT(8x8x3) -> CONV(4, 3x3) -> RELU"
    assert tree.specs(items, pattern) == parse(pattern)


@pytest.mark.parametrize("nbytes", [1, 4097, 3 * 2**20 + 5])
def test_a_buffer_in_small_pages_is_zeros_of_the_size_asked(nbytes, monkeypatch):
    """Above SMALL_PAGES_FROM `zeroed_buffer` maps memory of its own: exactly `nbytes`
    writable zeros, which stay what is written (and unmap with their last view)."""
    from slidenet.ops import runtime
    monkeypatch.setattr(runtime, "SMALL_PAGES_FROM", 0)
    buffer = runtime.zeroed_buffer(nbytes)
    assert buffer.dtype == np.uint8 and buffer.shape == (nbytes,) and buffer.flags.writeable
    assert not buffer.any()
    buffer[::4096] = 7
    buffer[-1] = 9
    assert buffer.sum() == 7 * len(range(0, nbytes - 1, 4096)) + 9


@pytest.mark.parametrize("nbytes", [100, 5 * 2**20 + 3, 64 * 2**20])
@pytest.mark.parametrize("zeroed", [True, False])
def test_a_huge_page_buffer_starts_on_a_huge_page_and_holds_what_was_asked(nbytes, zeroed):
    """From 4 MiB to 64 MiB the buffer starts on a 2 MiB boundary; any size gives exactly
    `nbytes` writable bytes, zeros when asked (the arena's promise)."""
    from slidenet.ops.runtime import HUGE_PAGE, huge_page_buffer
    buffer = huge_page_buffer(nbytes, zeroed)
    assert buffer.dtype == np.uint8 and buffer.shape == (nbytes,) and buffer.flags.writeable
    if nbytes >= 2 * HUGE_PAGE:
        assert buffer.ctypes.data % HUGE_PAGE == 0
    if zeroed:
        assert not buffer.any()
    buffer[-1] = 7
    assert buffer[-1] == 7


# ---- a large file: its large weights read from the file straight into the net ----

@pytest.fixture
def streamed(monkeypatch):
    """Every file walked in blocks (`_Stream`) as a file above 64 MiB is, with tensors of 64
    bytes and more left in it, the walk reading 40 bytes at a time and the copies 300: every
    boundary of the new path met by a small file."""
    from slidenet.interop import onnx_file, onnx_weights
    monkeypatch.setattr(onnx_file, "STREAMED_FROM", 0)
    monkeypatch.setattr(onnx_file, "LEFT_IN_FILE_FROM", 64)
    monkeypatch.setattr(onnx_file, "WALK_BLOCK", 40)
    monkeypatch.setattr(onnx_weights, "BLOCK_BYTES", 300)
    copies = []
    real = onnx_weights.FileTensor.copy_into
    monkeypatch.setattr(onnx_weights.FileTensor, "copy_into",
                        lambda self, target, *reads: copies.append(self.tensor) or
                        real(self, target, *reads))
    return copies


def read_whole(path):
    """read_onnx of a file read whole into memory, as a file below STREAMED_FROM is."""
    from slidenet.interop import onnx_file
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_file, "STREAMED_FROM", 2**62)
        return read_onnx(path)


def chain_net(path, matmul=False):
    """Conv 3x3 (12 filters) on 3 x 6 x 5 -> Relu -> Flatten (360, in C, H, W order) -> FC 40
    (Gemm transB=1 as PyTorch writes it, or MatMul + Add as tf2onnx) -> Relu -> Gemm 7."""
    rng = np.random.default_rng(8)

    def tensor(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3,
                                       name)
    inits = [tensor("cw", 12, 3, 3, 3), tensor("cb", 12),
             tensor("f1", *((360, 40) if matmul else (40, 360))), tensor("b1", 40),
             tensor("f2", 7, 40), tensor("b2", 7)]
    first = [helper.make_node("MatMul", ["f", "f1"], ["m"], name="fc1"),
             helper.make_node("Add", ["m", "b1"], ["g"], name="fc1b")] if matmul else \
        [helper.make_node("Gemm", ["f", "f1", "b1"], ["g"], name="fc1", transB=1)]
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"), *first,
             helper.make_node("Relu", ["g"], ["gr"], name="relu2"),
             helper.make_node("Gemm", ["gr", "f2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), path)


@pytest.mark.parametrize("matmul", [False, True])
def test_weights_left_in_the_file_import_exactly(tmp_path, streamed, matmul):
    """The oracles: onnxruntime on the file itself, and the same file read whole (a file
    below STREAMED_FROM), bit for bit; the Conv's and both FCs' weights came from the file
    in blocks (the biases, 48 bytes and less, were read with the graph)."""
    path = tmp_path / "chain.onnx"
    chain_net(path, matmul)
    whole = read_whole(path)
    assert streamed == []
    imported = read_onnx(path)
    assert sorted(streamed) == ["cw", "f1", "f2"]
    assert imported.net.pattern == whole.net.pattern
    for name, value in whole.net.params.items():
        np.testing.assert_array_equal(imported.net.params[name], value, err_msg=name)
    pixels = np.random.default_rng(9).integers(0, 256, (5, 6, 5, 3), dtype=np.uint8)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": (pixels / 255).astype(np.float32).transpose(0, 3, 1, 2)})[0]
    got = imported.net.forward(imported.normalizer.normalize(pixels))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


VIEWS = [lambda a: a, lambda a: a.T, lambda a: a.transpose(2, 3, 1, 0),
         lambda a: a.transpose((1, 0, 3, 2)), lambda a: a.reshape(5, 36).T,
         lambda a: a.reshape(5, 2, 3, 6).transpose(2, 3, 1, 0),
         lambda a: a.reshape(30, 6).reshape(10, 3, 6).transpose(1, 2, 0),
         lambda a: a.T.reshape(6, 3, 2, 5)]       # not in the file's order: read whole


@pytest.mark.parametrize("view", range(len(VIEWS)))
@pytest.mark.parametrize("block", [1, 150, 2**20])
def test_a_file_tensors_views_are_numpys(tmp_path, monkeypatch, view, block):
    """FileTensor against NumPy's own views of the same numbers (the oracle): shape, the
    whole tensor read (`np.asarray`) and `copy_into` in blocks of one row up to the whole."""
    from slidenet.interop import onnx_weights
    from slidenet.interop.onnx_weights import FileTensor, Span
    monkeypatch.setattr(onnx_weights, "BLOCK_BYTES", block)
    numbers = np.random.default_rng(3).standard_normal((5, 6, 2, 3)).astype(np.float32)
    (tmp_path / "w.bin").write_bytes(b"head" + numbers.astype("<f4").tobytes() + b"tail")
    lazy = FileTensor(Span(tmp_path / "w.bin", "w.bin", 4, numbers.nbytes), "w",
                      np.dtype("<f4"), numbers.shape)
    want, got = VIEWS[view](numbers), VIEWS[view](lazy)
    assert got.shape == want.shape and np.ndim(got) == want.ndim and np.size(got) == want.size
    np.testing.assert_array_equal(np.asarray(got), want)
    if isinstance(got, FileTensor):
        target = np.full(want.shape, np.nan, np.float32)
        got.copy_into(target)
        np.testing.assert_array_equal(target, want)


def test_a_file_that_changes_after_it_was_walked_is_refused_naming_the_tensor(tmp_path,
                                                                              streamed):
    """The file is cut between the walk (which found each large tensor inside it) and the
    copy into the net: an OnnxFileError naming the file and the tensor, no traceback, nothing
    read past the end; the same for a file removed meanwhile, and for a tensor whose bytes end
    early while read (the file cut under the open handle)."""
    from slidenet.interop import onnx_import
    from slidenet.interop.onnx_file import OnnxFileError
    path = tmp_path / "chain.onnx"
    chain_net(path)
    real = onnx_import._Reader.fill

    def cut_first(self, net):
        path.write_bytes(path.read_bytes()[:300])
        return real(self, net)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_import._Reader, "fill", cut_first)
        with pytest.raises(OnnxFileError, match=r"chain.onnx: tensor '(cw|f1|f2)' lies at bytes "
                                                r"[\d,]+ to [\d,]+, but the file now has 300: it "
                                                "changed while slidenet read it"):
            read_onnx(path)
    chain_net(path)

    def remove_first(self, net):
        path.unlink()
        return real(self, net)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_import._Reader, "fill", remove_first)
        with pytest.raises(OnnxFileError, match=r"chain.onnx: tensor '(cw|f1|f2)' cannot be read "
                                                r"\(No such file or directory\)"):
            read_onnx(path)
    from slidenet.interop.onnx_weights import FileTensor, Reads, Span
    (tmp_path / "w.bin").write_bytes(bytes(40))
    lazy = FileTensor(Span(tmp_path / "w.bin", "w.bin", 0, 40), "w", np.dtype("<f4"), (10,))
    with Reads() as reads:
        fh = reads.open(lazy)
        (tmp_path / "w.bin").write_bytes(bytes(20))
        with pytest.raises(OnnxFileError, match=r"w.bin: tensor 'w' ended early \(at byte 20\)"):
            lazy.copy_into(np.empty(10, np.float32), reads)
        assert fh.closed is False
    assert fh.closed


def test_a_large_tensor_that_lies_about_its_size_is_refused_before_reading(tmp_path,
                                                                          streamed):
    """Dims that claim more bytes than the tensor's raw data holds, a raw data length that
    claims more than the file holds (a cut file), a walk that finds the file shorter than its
    size said: each an OnnxFileError naming the file or the tensor, nothing read past the
    end of the file (the new path's lies; the file read whole meets the same ones in
    tests/test_onnx.py)."""
    from slidenet.interop.onnx_file import OnnxFileError, _Stream
    path = tmp_path / "chain.onnx"
    chain_net(path)
    model = onnx.load(path)
    weight = next(t for t in model.graph.initializer if t.name == "f1")
    weight.dims[1] = 361                # 40 x 361 float32 claimed, 40 x 360 held
    onnx.save(model, path)
    with pytest.raises(OnnxFileError, match=r"chain.onnx: tensor 'f1': its dims \[40, 361\] "
                                            "say 57,760 bytes of float32 but it holds 57,600"):
        read_onnx(path)
    assert streamed == []
    chain_net(path)
    data = path.read_bytes()
    for cut in (len(data) - 3, len(data) // 2, 200):
        path.write_bytes(data[:cut])
        with pytest.raises(OnnxFileError, match="is not an ONNX model, or it is truncated"):
            read_onnx(path)
    with open(path, "rb") as fh:        # 200 bytes, said to be 500
        stream = _Stream(fh, 500, "chain.onnx")
        assert stream[199] == data[199]
        with pytest.raises(OnnxFileError, match="chain.onnx changed while it was read"):
            stream[300]
        with pytest.raises(OnnxFileError, match="chain.onnx changed while it was read"):
            stream[150:260]


def test_a_large_external_tensor_is_read_straight_into_the_net(tmp_path, streamed):
    """onnx's external data (`.data` beside the model): the large tensors read from it in
    blocks, checked against its size first, and the net the same as from one file; an
    external file cut after it was checked names the tensor and the file."""
    from slidenet.interop import onnx_import
    from slidenet.interop.onnx_file import OnnxFileError
    path = tmp_path / "chain.onnx"
    chain_net(path)
    whole = read_whole(path)
    model = onnx.load(path)
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.data", size_threshold=64)
    external = read_onnx(tmp_path / "ext.onnx")
    assert sorted(streamed) == ["cw", "f1", "f2"]
    for name, value in whole.net.params.items():
        np.testing.assert_array_equal(external.net.params[name], value, err_msg=name)
    real = onnx_import._Reader.fill

    def cut_first(self, net):
        (tmp_path / "ext.data").write_bytes((tmp_path / "ext.data").read_bytes()[:100])
        return real(self, net)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_import._Reader, "fill", cut_first)
        with pytest.raises(OnnxFileError, match=r"ext.data: tensor '(cw|f1|f2)' lies at bytes "
                                                r"[\d,]+ to [\d,]+, but the file now has 100"):
            read_onnx(tmp_path / "ext.onnx")
