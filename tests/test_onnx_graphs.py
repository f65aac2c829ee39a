"""`slidenet import` of graphs: branches merged by Add and Concat (ResNet, Inception, DenseNet,
MobileNet), pools with ceil_mode, and the graphs slidenet cannot write as one nested pattern.
Oracles: onnxruntime running the same file, and PyTorch's own outputs stored beside the
torch-made fixtures (tests/fixtures/onnx/make_torch_fixtures.py)."""
from pathlib import Path

import numpy as np
import pytest

from helpers import import_part, onnx_graph, random_model

onnx, ort = import_part("ONNX", "onnx", "onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

from slidenet.errors import SlidenetError  # noqa: E402
from slidenet.interop.onnx_export import to_model  # noqa: E402
from slidenet.interop.onnx_import import read_onnx  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "onnx"
RNG = np.random.default_rng(20)


def weights(name, *shape):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.5).astype(np.float32), name)



def onnxruntime_scores(path, pixels, name="x"):
    """What onnxruntime computes for uint8 `pixels` (N, H, W, C) scaled to [0, 1], as NCHW."""
    feed = (pixels / 255).astype(np.float32).transpose(0, 3, 1, 2)
    run = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return run.run(None, {name: feed})[0]


def pixels_for(shape, count=4, seed=3):
    """uint8 images (count, H, W, C) for an NCHW `shape` (C, H, W)."""
    c, h, w = shape
    return np.random.default_rng(seed).integers(0, 256, (count, h, w, c), dtype=np.uint8)


# ---- ceil_mode: round=up ----

def _pool_then_fc(tmp_path, pool, n, pixels):
    """`pool` on a 1 x n x n image, flattened into an FC: the saved graph and what it computes
    for `pixels`, by onnxruntime running the pool alone (ONNX's own shape inference does not
    know PyTorch's last-window rule, so onnxruntime refuses the whole graph where it applies)
    and NumPy multiplying by the FC's weights."""
    probe = onnx_graph(tmp_path / "probe.onnx", [pool], [], shape=(1, n, n), out="v")
    v = onnxruntime_scores(probe, pixels)
    fc = (RNG.standard_normal((int(np.prod(v.shape[1:])), 3)) * 0.5).astype(np.float32)
    nodes = [pool, helper.make_node("Flatten", ["v"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    path = onnx_graph(tmp_path / "g.onnx", nodes, [numpy_helper.from_array(fc, "fc")],
                      shape=(1, n, n))
    return path, v.shape[2:], v.reshape(len(v), -1).astype(np.float64) @ fc


def pytorch_ceil_size(n, f, s, p):
    """PyTorch's pooling output size with ceil_mode=True, as its documentation states it: the
    ceiling, less one when the last window would start past the input and its left padding."""
    out = -(-(n + 2 * p - f) // s) + 1
    return out - 1 if (out - 1) * s >= n + p else out


@pytest.mark.parametrize("n, f, s, p", [(n, f, s, p) for n in (5, 6, 7, 8) for f in (2, 3)
                                        for s in (2, 3) for p in range(f // 2 + 1)])
def test_ceil_mode_max_pools_import_as_round_up_with_pytorchs_last_window_rule(tmp_path, n, f, s,
                                                                               p):
    """Every small MaxPool with ceil_mode=1 imports to what onnxruntime computes, and its
    output size is PyTorch's documented rule (the oracle of the rule itself)."""
    pool = helper.make_node("MaxPool", ["x"], ["v"], name="p", kernel_shape=[f, f],
                            strides=[s, s], pads=[p] * 4, ceil_mode=1)
    pixels = pixels_for((1, n, n))
    path, size, want = _pool_then_fc(tmp_path, pool, n, pixels)
    assert tuple(size) == (pytorch_ceil_size(n, f, s, p),) * 2
    imported = read_onnx(path)
    assert imported.net.infos[1].output_shape[:2] == tuple(size)
    span = n + 2 * p - f
    grows = pytorch_ceil_size(n, f, s, p) > span // s + 1
    assert ("round=up" in imported.net.pattern) == grows
    assert ("round=down" in imported.net.pattern) == (span % s != 0 and not grows)
    got = imported.net.forward(imported.normalizer.normalize(pixels), train=False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_ceil_mode_average_pool_imports_where_no_window_is_added(tmp_path):
    """AVGPOOL rounds down only; ceil_mode=1 where PyTorch's rule adds no window is round=down."""
    pool = helper.make_node("AveragePool", ["x"], ["v"], name="p", kernel_shape=[3, 3],
                            strides=[3, 3], pads=[1] * 4, ceil_mode=1, count_include_pad=1)
    pixels = pixels_for((1, 8, 8))
    path, _, want = _pool_then_fc(tmp_path, pool, 8, pixels)
    imported = read_onnx(path)
    assert "AVGPOOL(3x3, s=3x3, p=1x1, round=down)" in imported.net.pattern
    np.testing.assert_allclose(imported.net.forward(imported.normalizer.normalize(pixels), False),
                               want, rtol=1e-5, atol=1e-5)


def test_a_ceil_mode_average_pool_that_adds_a_window_is_refused(tmp_path):
    pool = helper.make_node("AveragePool", ["x"], ["v"], name="p", kernel_shape=[3, 3],
                            strides=[2, 2], ceil_mode=1)
    path, _, _ = _pool_then_fc(tmp_path, pool, 8, pixels_for((1, 8, 8)))
    with pytest.raises(SlidenetError) as caught:
        read_onnx(path)
    assert "AveragePool 'p': ceil_mode=1: its last window reaches past the padding" in \
        str(caught.value)


# ---- round trips: slidenet's own export of graph nets, read back ----

def structure(net):
    """Every layer (branches before their merge) with its output and number of branches."""
    return [(type(layer).kind, layer.info.output_shape, len(getattr(layer, "branches", ())))
            for layer in net.every_layer()]


ROUND_TRIPS = {
    "residual": "INPUT(12x12x3) -> CONV(8, s=2, p=1, round=down) -> BN -> RELU -> "
                "MAXPOOL(3x3, s=2, p=1, round=up) -> [{ CONV(8) -> BN -> RELU -> CONV(8) -> BN "
                "| ID } -> ADD -> RELU]*2 -> { CONV(12, s=2, p=1, round=down) -> BN -> RELU -> "
                "CONV(12) -> BN | CONV(12, 1x1, s=2, round=down) -> BN } -> ADD -> RELU -> "
                "GLOBALAVGPOOL -> FC(4)",
    "inception": "INPUT(10x10x3) -> CONV(8) -> RELU -> { CONV(4, 1x1) -> RELU | CONV(4, 1x1) "
                 "-> RELU -> CONV(6) -> RELU | CONV(2, 1x1) -> RELU -> CONV(3, 5x5, p=2) -> RELU "
                 "| MAXPOOL(3x3, s=1, p=1) -> CONV(3, 1x1) -> RELU } -> CONCAT -> "
                 "MAXPOOL(3x3, s=2, round=up) -> DROPOUT(0.4) -> FC(5)",
    "dense": "INPUT(8x8x2) -> CONV(6) -> [{ ID | BN -> RELU -> CONV(8, 1x1) -> BN -> RELU -> "
             "CONV(4, bias=no) } -> CONCAT]*3 -> BN -> RELU -> CONV(8, 1x1, bias=no) -> "
             "AVGPOOL(2x2) -> [{ ID | BN -> RELU -> CONV(4) } -> CONCAT]*2 -> BN -> RELU -> "
             "GLOBALAVGPOOL -> FC(3)",
    "mobilenet": "INPUT(12x12x3) -> CONV(8, s=2, p=1, round=down) -> BN -> RELU6 -> "
                 "DWCONV(3x3) -> BN -> RELU6 -> CONV(8, 1x1) -> BN -> { CONV(24, 1x1) -> BN -> "
                 "RELU6 -> DWCONV(3x3) -> BN -> RELU6 -> CONV(8, 1x1) -> BN | ID } -> ADD -> "
                 "CONV(16, 1x1) -> BN -> RELU6 -> GLOBALAVGPOOL -> DROPOUT(0.2) -> FC(3)",
    "nested": "INPUT(9x9x2) -> CONV(6) -> RELU -> { { CONV(6) -> TANH | ID } -> ADD -> "
              "{ CONV(2, 1x1) | AVGPOOL(3x3, s=1, p=1) -> CONV(4, 1x1) } -> CONCAT | "
              "CONV(6, 1x1) -> SIGMOID | ID } -> ADD -> FC(3)",
}


@pytest.mark.parametrize("name", ROUND_TRIPS)
@pytest.mark.parametrize("with_metadata", [True, False])
def test_slidenets_own_graph_exports_import_with_the_same_scores(tmp_path, name, with_metadata):
    """Export, then import: the same nested pattern and the same scores, and onnxruntime
    running the file agrees. Without the metadata (as a foreign file), the pattern is
    rebuilt from the nodes alone: ONNX's Sum is ADD and Concat is CONCAT."""
    model = random_model(ROUND_TRIPS[name])
    proto = to_model(model.net, model.normalizer, model.class_names)
    if not with_metadata:
        del proto.metadata_props[:]
    path = tmp_path / "net.onnx"
    onnx.save(proto, path)
    imported = read_onnx(path, scale=None if with_metadata else 1.0)
    net = imported.net
    assert structure(net) == structure(model.net)
    pixels = pixels_for(tuple(np.roll(model.input_shape, 1)), count=6)
    got = net.forward(imported.normalizer.normalize(pixels), train=False)
    np.testing.assert_allclose(got, model.scores(pixels), rtol=1e-4, atol=1e-5)
    run = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, = run.run(["scores"], {"pixels": pixels.astype(np.float32)})
    np.testing.assert_allclose(got, scores, rtol=1e-4, atol=1e-5)


# ---- graphs as PyTorch writes them ----

def bn(name, c):
    """A BatchNormalization's four constants with statistics that matter."""
    return [numpy_helper.from_array(RNG.uniform(0.5, 1.5, c).astype(np.float32), f"{name}.g"),
            numpy_helper.from_array(RNG.normal(0, 0.3, c).astype(np.float32), f"{name}.b"),
            numpy_helper.from_array(RNG.normal(0, 0.3, c).astype(np.float32), f"{name}.m"),
            numpy_helper.from_array(RNG.uniform(0.5, 2, c).astype(np.float32), f"{name}.v")]


def bn_node(name, x, y):
    return helper.make_node("BatchNormalization", [x] + [f"{name}.{k}" for k in "gbmv"], [y],
                            name=name)


def imports_like_onnxruntime(path, shape):
    """Import `path`; its scores on a few images must be onnxruntime's. Returns the net."""
    imported = read_onnx(path)
    pixels = pixels_for(shape, count=5)
    got = imported.net.forward(imported.normalizer.normalize(pixels), train=False)
    np.testing.assert_allclose(got, onnxruntime_scores(path, pixels), rtol=1e-4, atol=1e-5)
    return imported.net


def test_a_dense_block_concatenating_every_earlier_feature_imports_as_nested_concats(tmp_path):
    """torchvision's DenseNet: layer i reads Concat(x0, n1, ..., n(i-1)) and the block ends in
    Concat(x0, n1, n2, n3). Read as Concat(previous concat, new features): the zoo's form."""
    inits = [weights("w0", 4, 2, 3, 3), weights("fc", 10, 3)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["x0"], name="stem", pads=[1] * 4)]
    features, depth = ["x0"], 4
    for i in range(1, 4):
        read = "x0" if i == 1 else f"cat{i}"
        if i > 1:
            nodes.append(helper.make_node("Concat", list(features), [read], name=f"cat{i}",
                                          axis=1))
        inits += bn(f"bn{i}", depth) + [weights(f"w{i}", 2, depth, 3, 3), weights(f"b{i}", 2)]
        nodes += [bn_node(f"bn{i}", read, f"n{i}a"),
                  helper.make_node("Relu", [f"n{i}a"], [f"n{i}r"], name=f"relu{i}"),
                  helper.make_node("Conv", [f"n{i}r", f"w{i}", f"b{i}"], [f"n{i}"],
                                   name=f"conv{i}", pads=[1] * 4)]
        features.append(f"n{i}")
        depth += 2
    nodes += [helper.make_node("Concat", features, ["out"], name="block", axis=1),
              helper.make_node("GlobalAveragePool", ["out"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flat"),
              helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    net = imports_like_onnxruntime(onnx_graph(tmp_path / "g.onnx", nodes, inits, (2, 6, 6)),
                                   (2, 6, 6))
    branch = "{ ID | BATCHNORM -> RELU -> CONV(2, 3x3, s=1x1, p=1x1) } -> CONCAT"
    assert net.pattern == (f"INPUT(6x6x2) -> CONV(4, 3x3, s=1x1, p=1x1) -> [{branch}]*3 -> "
                           "GLOBALAVGPOOL -> FC(3)")


def test_a_bias_before_batchnorm_inside_a_branch_is_folded_and_a_scale_on_a_shared_value_is_not(
        tmp_path):
    """A Conv with a bias, then BatchNormalization, inside a residual branch (slidenet's CONV
    before BATCHNORM has no bias: it moves into the running mean); and a Mul by a per-channel
    constant on a Conv's output that the skip path also reads, which must not scale the Conv
    (it becomes a BATCHNORM of its own)."""
    inits = [weights("w0", 3, 1, 3, 3), weights("b0", 3), weights("w1", 3, 3, 3, 3),
             weights("b1", 3), numpy_helper.from_array(
                 RNG.uniform(0.5, 2, (1, 3, 1, 1)).astype(np.float32), "k"),
             weights("fc", 3 * 6 * 6, 4)] + bn("bn1", 3)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1] * 4),
             helper.make_node("Mul", ["c0", "k"], ["m"], name="scale"),
             helper.make_node("Conv", ["m", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
             bn_node("bn1", "c1", "n1"),
             helper.make_node("Add", ["n1", "c0"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    net = imports_like_onnxruntime(onnx_graph(tmp_path / "g.onnx", nodes, inits, (1, 6, 6)),
                                   (1, 6, 6))
    assert "{ BATCHNORM -> CONV(3, 3x3, s=1x1, p=1x1) -> BATCHNORM | ID } -> ADD" in net.pattern
    convs = [layer for layer in net.every_layer() if type(layer).kind == "CONV"]
    assert "b" in convs[0].params and "b" not in convs[1].params     # moved into the mean


def test_a_sum_of_three_branches_and_an_add_of_a_value_to_itself_import(tmp_path):
    """ONNX's n-ary Sum, and Add(x, x) (two identity branches)."""
    inits = [weights("w0", 2, 1, 3, 3), weights("w1", 2, 2, 1, 1), weights("fc", 2 * 6 * 6, 3)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="conv0", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1"], ["b"], name="conv1"),
             helper.make_node("Tanh", ["r"], ["t"], name="tanh"),
             helper.make_node("Sum", ["b", "r", "t"], ["s"], name="sum"),
             helper.make_node("Add", ["s", "s"], ["d"], name="double"),
             helper.make_node("Flatten", ["d"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    net = imports_like_onnxruntime(onnx_graph(tmp_path / "g.onnx", nodes, inits, (1, 6, 6)),
                                   (1, 6, 6))
    assert "{ CONV(2, 1x1, s=1x1, p=0x0) | ID | TANH } -> ADD -> { ID | ID } -> ADD -> FC(3)" \
        in net.pattern


# ---- graphs slidenet cannot write ----

def test_a_graph_that_is_not_nested_branches_is_refused_naming_the_merge(tmp_path, capsys):
    """a and b branch from the input; a also feeds a second merge after the first: no
    nesting of { | } -> ADD writes that (it is not series-parallel)."""
    inits = [weights("w1", 1, 1, 3, 3), weights("w2", 1, 1, 3, 3), weights("fc", 36, 3)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1] * 4),
             helper.make_node("Conv", ["x", "w2"], ["b"], name="conv2", pads=[1] * 4),
             helper.make_node("Add", ["a", "b"], ["s1"], name="s1"),
             helper.make_node("Tanh", ["a"], ["t"], name="tanh"),
             helper.make_node("Add", ["s1", "t"], ["s2"], name="s2"),
             helper.make_node("Flatten", ["s2"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    path = onnx_graph(tmp_path / "g.onnx", nodes, inits, (1, 6, 6))
    with pytest.raises(SlidenetError) as caught:
        read_onnx(path)
    message = str(caught.value)
    assert message == (
        f"{path}: slidenet cannot write this graph as one pattern, so nothing was written: "
        "Add 's1' joins branches that do not all start from one value (of the branches from "
        "Conv 'conv1', some reach it and others other merges): the graph is not branches "
        "{ A | B } -> ADD (or CONCAT) nested in one chain")
    from slidenet.cli import main
    assert main(["import", str(path), "--out", str(tmp_path / "never.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Add 's1' joins branches" in err and "Traceback" not in err
    assert not (tmp_path / "never.npz").exists()


def test_a_branch_that_never_joins_is_refused(tmp_path):
    """A value read by two nodes where one of them leads nowhere (an unused head)."""
    inits = [weights("w1", 1, 1, 3, 3), weights("fc", 36, 3)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1] * 4),
             helper.make_node("Sigmoid", ["a"], ["unused"], name="aux"),
             helper.make_node("Flatten", ["a"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    with pytest.raises(SlidenetError, match="Sigmoid 'aux' ends a branch that never joins the "
                                            "others"):
        read_onnx(onnx_graph(tmp_path / "g.onnx", nodes, inits, (1, 6, 6)))


@pytest.mark.parametrize("op", ["Add", "Concat"])
def test_a_merge_of_unequal_volumes_names_both(tmp_path, op):
    """A residual Add whose skip was not projected (6x6x2 + 3x3x2), and a Concat of volumes
    of different height and width: one line each, naming both values and their volumes."""
    inits = [weights("w1", 2, 1, 3, 3), weights("w2", 2, 2, 3, 3), weights("fc", 18, 3)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1] * 4),
             helper.make_node("Conv", ["a", "w2"], ["b"], name="conv2", pads=[1] * 4,
                              strides=[2, 2]),
             helper.make_node(op, ["b", "a"], ["s"], name="merge", **(
                 {"axis": 1} if op == "Concat" else {})),
             helper.make_node("Flatten", ["s"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    with pytest.raises(SlidenetError) as caught:
        read_onnx(onnx_graph(tmp_path / "g.onnx", nodes, inits, (1, 6, 6)))
    lines = str(caught.value).splitlines()
    assert len(lines) == 2 and "cannot represent 1 part of this graph" in lines[0]
    if op == "Add":
        assert lines[1] == ("  Add 'merge': it adds 'b' (3 x 3 x 2) and 'a' (6 x 6 x 2): "
                            "slidenet's ADD sums volumes of one shape, number by number, and "
                            "does not broadcast")
    else:
        assert lines[1] == ("  Concat 'merge': it stacks 'b' (3 x 3 x 2) and 'a' (6 x 6 x 2): "
                            "slidenet's CONCAT stacks volumes of one height and width")


# ---- PyTorch's own exports of torchvision's blocks ----

TORCH_NETS = ("resnet", "inception", "dense", "mobilenet")
EXPORTS = ("legacy17", "legacy18", "dynamo18")


@pytest.mark.parametrize("net", TORCH_NETS)
@pytest.mark.parametrize("exporter", EXPORTS)
def test_torch_exported_graph_nets_predict_what_pytorch_predicted(net, exporter):
    """The oracle is PyTorch: its outputs for these pixels, stored by make_torch_fixtures.py
    (both exporters; opsets 17 and 18), and onnxruntime running the same file."""
    stored = np.load(FIXTURES / f"torch_{net}_expected.npz")
    path = FIXTURES / f"torch_{net}_{exporter}.onnx"
    assert onnx.load(path).opset_import[0].version == int(exporter[-2:])
    imported = read_onnx(path, mean=stored["mean"], std=stored["std"])
    assert "{" in imported.net.pattern
    pixels = stored["pixels"]
    scores = imported.net.forward(imported.normalizer.normalize(pixels), train=False)
    probabilities = np.exp(scores - scores.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities, stored["probabilities"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores, stored["logits"], rtol=1e-4, atol=1e-4)
    feed = ((pixels / 255 - stored["mean"]) / stored["std"]).astype(np.float32)
    logits, = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": feed.transpose(0, 3, 1, 2)})
    np.testing.assert_allclose(scores, logits, rtol=1e-4, atol=1e-4)


def test_torchvisions_blocks_become_the_zoos_forms():
    """A dense block is [{ ID | ... } -> CONCAT]*k; a residual block { ... | ID } -> ADD (and
    MobileNet's x + conv(x), { ID | ... } -> ADD); an Inception block four branches; a
    projected skip a 1x1 CONV with the stride; ceil_mode a round=up pool."""
    def pattern(net):
        stored = np.load(FIXTURES / f"torch_{net}_expected.npz")
        return read_onnx(FIXTURES / f"torch_{net}_legacy17.onnx", mean=stored["mean"],
                         std=stored["std"]).net.pattern
    dense = pattern("dense")
    layer = ("{ ID | BATCHNORM -> RELU -> CONV(8, 1x1, s=1x1, p=0x0) -> RELU -> "
             "CONV(4, 3x3, s=1x1, p=1x1) } -> CONCAT")
    assert f"[{layer}]*3 -> BATCHNORM" in dense and f"[{layer}]*2 -> BATCHNORM" in dense
    resnet = pattern("resnet")
    assert "| ID } -> ADD -> RELU" in resnet and \
        "| CONV(12, 1x1, s=2x2, p=0x0) } -> ADD -> RELU -> GLOBALAVGPOOL -> FC(5)" in resnet
    assert pattern("mobilenet").count("{ ID | CONV(") == 2      # expansions 3 and 2 differ
    inception = pattern("inception")
    assert "| MAXPOOL(3x3, s=1x1, p=1x1) -> CONV(3, 1x1, s=1x1, p=0x0) -> RELU } -> CONCAT" in \
        inception and "MAXPOOL(2x2, s=2x2, round=up)" in inception
    assert inception.endswith("RELU -> GLOBALAVGPOOL")


def test_branches_in_keras_layout_merge_along_the_last_axis(tmp_path):
    """tf2onnx keeps Keras's (N, H, W, C) between layers: each Conv between Transposes, a
    residual Add of two NHWC values and a Concat along axis 3, against onnxruntime."""
    inits = [weights("w1", 3, 2, 3, 3), weights("w2", 3, 3, 1, 1), weights("fc", 5 * 5 * 6, 3)]

    def conv(x, w, y, **kw):
        return [helper.make_node("Transpose", [x], [f"{y}.t"], perm=[0, 3, 1, 2]),
                helper.make_node("Conv", [f"{y}.t", w], [f"{y}.c"], name=y, **kw),
                helper.make_node("Transpose", [f"{y}.c"], [y], perm=[0, 2, 3, 1])]
    nodes = (conv("x", "w1", "a") + [helper.make_node("Relu", ["a"], ["r"], name="relu")]
             + conv("r", "w2", "b")
             + [helper.make_node("Add", ["b", "r"], ["s"], name="add"),
                helper.make_node("Concat", ["s", "r"], ["c"], name="cat", axis=3),
                helper.make_node("Reshape", ["c", "shape"], ["f"], name="flat"),
                helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")])
    inits.append(numpy_helper.from_array(np.array([-1, 150], np.int64), "shape"))
    path = onnx_graph(tmp_path / "g.onnx", nodes, inits, (7, 7, 2))
    imported = read_onnx(path)
    assert imported.net.pattern == (
        "INPUT(7x7x2) -> CONV(3, 3x3, s=1x1, p=0x0) -> RELU -> { { CONV(3, 1x1, s=1x1, p=0x0) "
        "| ID } -> ADD | ID } -> CONCAT -> FC(3)")
    pixels = np.random.default_rng(4).integers(0, 256, (5, 7, 7, 2), dtype=np.uint8)
    want, = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": (pixels / 255).astype(np.float32)})
    np.testing.assert_allclose(imported.net.forward(imported.normalizer.normalize(pixels), False),
                               want, rtol=1e-4, atol=1e-5)
