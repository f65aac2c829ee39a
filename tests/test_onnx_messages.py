"""What `slidenet import` says about a graph: every kind of fault once with its count, the faults
after the first too, nothing on stderr but the message, and heads that end in global average
pooling. Oracles: onnxruntime runs each graph that imports."""
import subprocess
import sys

import numpy as np
import pytest

from helpers import import_part, onnx_graph

onnx, ort = import_part("ONNX", "onnx", "onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

import slidenet  # noqa: E402

RNG = np.random.default_rng(21)


def weights(name, *shape):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.5).astype(np.float32), name)



def run_cli(*args):
    done = subprocess.run([sys.executable, "-m", "slidenet", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def imports_like_onnxruntime(path, tmp_path, shape):
    """Import `path` by the command (nothing may reach stderr), then compare its
    probabilities with onnxruntime's softmax of the graph's output on the same pixels."""
    status, _, stderr = run_cli("import", path, "--out", tmp_path / "m.npz")
    assert status == 0 and stderr == "", stderr
    model = slidenet.load(tmp_path / "m.npz")
    pixels = RNG.integers(0, 256, (5, *shape[1:], shape[0]), dtype=np.uint8)
    feed = (pixels / 255).astype(np.float32).transpose(0, 3, 1, 2)
    run = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = run.run(None, {"x": feed})[0].astype(np.float64)
    want = np.exp(scores - scores.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(pixels), want, atol=1e-5)
    return model


def test_identical_faults_are_one_line_with_their_count_and_later_faults_are_listed(tmp_path):
    """Five Clip nodes to [-1, 6] between convolutions, then a dilated Conv after them: the
    Clips are one line, and the Conv after the first fault is judged and listed too."""
    nodes, inits, last = [], [], "x"
    for i in range(5):
        inits.append(weights(f"w{i}", 1, 1, 1, 1))
        nodes += [helper.make_node("Conv", [last, f"w{i}"], [f"c{i}"], name=f"conv{i}"),
                  helper.make_node("Clip", [f"c{i}", "lo", "hi"], [f"r{i}"], name=f"clip{i}")]
        last = f"r{i}"
    inits += [numpy_helper.from_array(np.array(-1, np.float32), "lo"),
              numpy_helper.from_array(np.array(6, np.float32), "hi"), weights("wd", 2, 1, 3, 3),
              weights("fc", 2 * 2 * 2, 3)]
    nodes += [helper.make_node("Conv", [last, "wd"], ["d"], name="dilated", dilations=[2, 2]),
              helper.make_node("Flatten", ["d"], ["f"], name="flat"),
              helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    status, _, stderr = run_cli("import", onnx_graph(tmp_path / "g.onnx", nodes, inits), "--out",
                                tmp_path / "never.npz")
    lines = stderr.strip().splitlines()
    assert status == 2 and not (tmp_path / "never.npz").exists()
    assert lines[0].endswith("slidenet cannot represent 6 parts of this graph, so nothing was "
                             "written:")
    assert lines[1].startswith("  Clip 'clip0' and 4 more Clip nodes like it: min=-1, max=6: "
                               "slidenet clips only to [0, 6] (RELU6)")
    assert lines[2].startswith("  Conv 'dilated': dilations=[2, 2]: a dilated convolution")
    assert len(lines) == 3, stderr


@pytest.mark.parametrize("after", ["relu", "flat"])
def test_adding_zero_anywhere_is_dropped_without_a_warning(tmp_path, after):
    """An Add of a zero constant (torch exports them) folds into nothing: it is the identity,
    and nothing but the summary may be printed."""
    inits = [weights("w", 2, 1, 3, 3), weights("b", 2), weights("fc", 3, 2 * 4 * 4),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    names = {"relu": "r", "flat": "f"}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r0" if after == "relu" else "r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f0" if after == "flat" else "f", "fc"], ["y"], name="fc",
                              transB=1)]
    nodes.insert(2 if after == "relu" else 3,
                 helper.make_node("Add", [names[after], "zero"], [names[after] + "0"], name="add"))
    imports_like_onnxruntime(onnx_graph(tmp_path / "g.onnx", nodes, inits), tmp_path, (1, 6, 6))


def test_a_division_by_a_zero_constant_is_one_line_without_a_warning(tmp_path):
    inits = [weights("w", 2, 1, 3, 3), weights("fc", 32, 3),
             numpy_helper.from_array(np.array([1, 0], np.float32).reshape(1, 2, 1, 1), "d")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Div", ["c", "d"], ["q"], name="div"),
             helper.make_node("Flatten", ["q"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    status, _, stderr = run_cli("import", onnx_graph(tmp_path / "g.onnx", nodes, inits), "--out",
                                tmp_path / "never.npz")
    assert status == 2 and "Warning" not in stderr
    assert "  Div 'div': it divides by a constant that holds a zero" in stderr
    assert len(stderr.strip().splitlines()) == 2


def test_a_scale_and_shift_after_an_activation_is_a_batchnorm(tmp_path):
    """Keras's BatchNormalization after Dense(activation='relu'), as tf2onnx writes it: MatMul,
    Add, Relu, then Mul and Add by per-feature constants."""
    inits = [weights("fc1", 36, 5), weights("b1", 5), weights("gamma", 5), weights("beta", 5),
             weights("fc2", 5, 3)]
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc1"], ["m"], name="dense/MatMul"),
             helper.make_node("Add", ["m", "b1"], ["a"], name="dense/BiasAdd"),
             helper.make_node("Relu", ["a"], ["r"], name="dense/Relu"),
             helper.make_node("Mul", ["r", "gamma"], ["s"], name="bn/mul"),
             helper.make_node("Add", ["s", "beta"], ["t"], name="bn/add"),
             helper.make_node("MatMul", ["t", "fc2"], ["y"], name="out/MatMul")]
    path = onnx_graph(tmp_path / "g.onnx", nodes, inits)
    status, _, stderr = run_cli("import", path, "--out", tmp_path / "m.npz", "--input-layout",
                                "nchw")
    assert status == 0 and stderr == "", stderr
    model = slidenet.load(tmp_path / "m.npz")
    assert model.net.pattern == "INPUT(6x6x1) -> FC(5) -> RELU -> BATCHNORM -> FC(3)"
    pixels = RNG.integers(0, 256, (5, 6, 6, 1), dtype=np.uint8)
    run = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = run.run(None, {"x": (pixels / 255).astype(np.float32).transpose(0, 3, 1, 2)})[0]
    np.testing.assert_allclose(model.scores(pixels), want, atol=1e-5)


def test_global_average_pooling_before_the_fc_is_accepted(tmp_path):
    """GlobalAveragePool -> Flatten -> Gemm, and tf2onnx's ReduceMean (keepdims 0) -> MatMul."""
    inits = [weights("w", 4, 1, 3, 3), weights("fc", 3, 4)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1)]
    model = imports_like_onnxruntime(onnx_graph(tmp_path / "g.onnx", nodes, inits), tmp_path,
                                     (1, 6, 6))
    assert model.net.pattern.endswith("RELU -> GLOBALAVGPOOL -> FC(3)")


def test_a_pool_head_without_an_fc_scores_with_the_pool(tmp_path):
    """SqueezeNet's head: a 1x1 Conv to the classes, then the global average pool, no FC; its
    C numbers are the scores."""
    inits = [weights("w", 3, 1, 1, 1), weights("b", 3)]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["y"], name="flat")]
    model = imports_like_onnxruntime(onnx_graph(tmp_path / "g.onnx", nodes, inits), tmp_path,
                                     (1, 6, 6))
    assert model.net.pattern.endswith("RELU -> GLOBALAVGPOOL") and model.net.num_outputs == 3


@pytest.mark.parametrize("node, text", [
    (helper.make_node("Conv", ["x", "w"], ["v"], name="c", pads=[1, 0, 0, 1]),
     "CONV(2, 3x3, s=1x1, p=1:0x0:1)"),
    (helper.make_node("Conv", ["x", "w"], ["v"], name="c", auto_pad="SAME_UPPER",
                      strides=[2, 2]), "CONV(2, 3x3, s=2x2, p=0:1x0:1)"),
    (helper.make_node("Conv", ["x", "w"], ["v"], name="c", auto_pad="SAME_LOWER",
                      strides=[2, 2]), "CONV(2, 3x3, s=2x2, p=1:0x1:0)"),
    (helper.make_node("Conv", ["x", "w"], ["v"], name="c", strides=[2, 2]),
     "CONV(2, 3x3, s=2x2, p=0x0, round=down)"),
    (helper.make_node("MaxPool", ["x"], ["v"], name="p", kernel_shape=[3, 3], strides=[2, 2]),
     "MAXPOOL(3x3, s=2x2, round=down)"),
    (helper.make_node("MaxPool", ["x"], ["v"], name="p", kernel_shape=[3, 3], strides=[2, 2],
                      pads=[1, 1, 1, 1]), "MAXPOOL(3x3, s=2x2, p=1x1, round=down)"),
    (helper.make_node("AveragePool", ["x"], ["v"], name="p", kernel_shape=[2, 2], strides=[2, 2],
                      pads=[1, 1, 1, 1], count_include_pad=1), "AVGPOOL(2x2, s=2x2, p=1x1)"),
])
def test_uneven_padding_and_windows_that_do_not_fit_import_as_onnx_computes(tmp_path, node, text):
    """The graph notation's per-side padding (p=B:A) and round=down: each window an ONNX
    exporter writes, then Flatten and MatMul, against onnxruntime on an 8x8 image."""
    inits = [weights("w", 2, 1, 3, 3)] if node.op_type == "Conv" else []
    nodes = [node, helper.make_node("Flatten", ["v"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    # The FC is sized from what onnxruntime computes for the window alone.
    probe = onnx_graph(tmp_path / "probe.onnx", [node], inits, shape=(1, 8, 8), out="v")
    v = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.zeros((1, 1, 8, 8), np.float32)})[0]
    fc = weights("fc", int(np.prod(v.shape[1:])), 3)
    model = imports_like_onnxruntime(onnx_graph(tmp_path / "g.onnx", nodes, inits + [fc],
                                           shape=(1, 8, 8)), tmp_path, (1, 8, 8))
    assert text in model.net.pattern


def test_relu6_and_grouped_and_depthwise_convolutions_import_as_onnx_computes(tmp_path):
    """MobileNet's pieces: Clip(0, 6) is RELU6; a Conv with group=2, then a depthwise one
    (group = channels), against onnxruntime."""
    inits = [weights("w1", 4, 1, 3, 3), weights("w2", 6, 2, 3, 3), weights("b2", 6),
             weights("w3", 6, 1, 3, 3), weights("fc", 6 * 6 * 6, 3),
             numpy_helper.from_array(np.array(0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6, np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["a", "lo", "hi"], ["b"], name="relu6"),
             helper.make_node("Conv", ["b", "w2", "b2"], ["c"], name="grouped", group=2,
                              pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c", "w3"], ["d"], name="depthwise", group=6,
                              pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["d"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    model = imports_like_onnxruntime(onnx_graph(tmp_path / "g.onnx", nodes, inits), tmp_path,
                                     (1, 6, 6))
    assert model.net.pattern == (
        "INPUT(6x6x1) -> CONV(4, 3x3, s=1x1, p=1x1) -> RELU6 -> CONV(6, 3x3, s=1x1, p=1x1, g=2) "
        "-> DWCONV(3x3, s=1x1, p=1x1) -> FC(3)")


def test_residual_adds_import_as_add_branches(tmp_path):
    """Three residual blocks, the first on the graph's input itself: three ADDs of a CONV and
    the identity, imported by the command (nothing on stderr) as onnxruntime computes them."""
    nodes, inits, last = [], [], "x"
    for i in range(3):
        inits.append(weights(f"w{i}", 1, 1, 3, 3))
        nodes += [helper.make_node("Conv", [last, f"w{i}"], [f"c{i}"], name=f"conv{i}",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Add", [f"c{i}", last], [f"a{i}"], name=f"add{i}")]
        last = f"a{i}"
    inits.append(weights("fc", 36, 3))
    nodes += [helper.make_node("Flatten", [last], ["f"], name="flat"),
              helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    model = imports_like_onnxruntime(onnx_graph(tmp_path / "g.onnx", nodes, inits), tmp_path,
                                     (1, 6, 6))
    block = "{ CONV(1, 3x3, s=1x1, p=1x1) | ID } -> ADD"
    assert model.net.pattern == f"INPUT(6x6x1) -> [{block}]*3 -> FC(3)"
