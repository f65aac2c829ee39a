"""ONNX in and out (`slidenet export`, `slidenet import`), checked against independent oracles:
onnxruntime running the exported or fixture graph, and PyTorch's own outputs stored with the
torch-made fixtures (tests/fixtures/onnx: each file with the script that made it)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import import_part, random_model

# The `onnx` extra is part of `all`, which `make test` and CI install: without it these tests
# fail rather than vanish. SLIDENET_SKIP_ONNX=1 skips them on purpose (never in CI).
onnx, ort = import_part("ONNX", "onnx", "onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import slidenet  # noqa: E402
from slidenet.cli import main  # noqa: E402
from slidenet.errors import SlidenetError  # noqa: E402
from slidenet.interop import onnx_graph  # noqa: E402
from slidenet.interop.onnx_export import to_bytes, to_model  # noqa: E402
from slidenet.interop.onnx_file import (  # noqa: E402
    Budget, OnnxFileError, check_claimed_size, tensor_array)
from slidenet.interop.onnx_import import read_onnx  # noqa: E402
from slidenet.layers import Inferred, Layer, RegistryError, kinds, register  # noqa: E402
from slidenet.model import Model, model_arrays, save  # noqa: E402
from slidenet.net import Net  # noqa: E402
from slidenet.ops.losses import softmax  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "onnx"
TOLERANCE = 1e-5

# Between them, every layer kind, with per-axis sizes, strides and paddings, overlapping pools,
# BATCHNORM on a volume and after an FC, an FC after a volume and after an FC.
EVERY_KIND = [
    "INPUT(9x13x3) -> CONV(6, 3x5, s=1x2, p=1x2) -> BATCHNORM -> LEAKYRELU(0.1) -> "
    "MAXPOOL(3x3, s=2) -> CONV(5, 1x1) -> TANH -> AVGPOOL(2x1, s=1x1) -> DROPOUT(0.3) -> "
    "FC(7) -> BATCHNORM -> SIGMOID -> FC(4)",
    "INPUT(8x8x2) -> CONV(4) -> RELU -> AVGPOOL(3x3, s=1) -> GLOBALAVGPOOL -> FC(3)",
    "INPUT(12x10x1) -> [CONV(8, 5x3, s=1, p=2x1) -> RELU]*2 -> MAXPOOL -> FC(16) -> RELU -> "
    "DROPOUT(0.5) -> FC(10)",
]
# Graphs (export only: importing them is its own issue): branches merged by sum and by
# concatenation, grouped and depthwise CONV, padding per side, rounded windows, padded pools,
# ReLU6 and a global-average-pool head.
GRAPHS = [
    "INPUT(9x9x3) -> CONV(8, s=2, p=1, round=down) -> BN -> RELU6 -> MAXPOOL(3x3, s=2, p=1, "
    "round=down) -> { CONV(8) -> BN -> RELU -> CONV(8, g=2) | ID } -> ADD -> RELU -> "
    "{ CONV(4, 1x1) | DWCONV(3x3, p=0:2x1:1) -> CONV(4, 1x1, bias=no) | AVGPOOL(3x3, s=1, p=1) } "
    "-> CONCAT -> CONV(5, 1x1) -> GLOBALAVGPOOL",
    "INPUT(8x8x2) -> CONV(6, s=2, p=same) -> DWCONV(m=2, s=2, round=up) -> "
    "{ CONV(12, 1x1, s=2, round=down) | MAXPOOL(2x2, s=2, round=up) -> CONV(12, 1x1) } -> ADD -> FC(3)",
]



def images(shape, count=100, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


def session(model):
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def run_cli(*args):
    """`slidenet ARGS` in a fresh process: (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "slidenet", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


# ---- export ----

@pytest.mark.parametrize("pattern", EVERY_KIND + GRAPHS)
def test_onnxruntime_computes_what_slidenet_predicts(pattern):
    model = random_model(pattern)
    proto = to_model(model.net, model.normalizer, model.class_names)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    x = images(model.input_shape)
    probabilities, scores = session(proto).run(["probabilities", "scores"],
                                               {"pixels": x.astype(np.float32)})
    np.testing.assert_allclose(probabilities, model.predict(x), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(scores, model.scores(x), rtol=1e-4, atol=TOLERANCE)
    one, = session(proto).run(["probabilities"], {"pixels": x[:1].astype(np.float32)})
    np.testing.assert_allclose(one, model.predict(x[:1]), atol=TOLERANCE)   # the batch is dynamic


def test_the_patterns_above_hold_every_layer_kind():
    used = {type(layer) for pattern in EVERY_KIND + GRAPHS
            for layer in Net.from_pattern(pattern).every_layer()}
    assert used == {cls for cls in kinds().values() if not cls.is_input}


def test_a_float64_net_exports_too():
    model = random_model(EVERY_KIND[1], dtype="float64")
    x = images(model.input_shape)
    probabilities, = session(to_model(model.net, model.normalizer)).run(
        ["probabilities"], {"pixels": x.astype(np.float32)})
    np.testing.assert_allclose(probabilities, model.predict(x), atol=TOLERANCE)


def test_rows_of_the_first_fc_follow_onnx_flatten_order():
    """slidenet flattens (H, W, D); Flatten of NCHW gives (D, H, W). The oracle: the same
    product written both ways on one volume."""
    rng = np.random.default_rng(0)
    volume, weights = rng.standard_normal((3, 4, 5)), rng.standard_normal((60, 7))
    slidenet_order = volume.reshape(-1) @ weights
    reordered = onnx_graph.rows_hwd_to_dhw(weights, (3, 4, 5))
    onnx_order = volume.transpose(2, 0, 1).reshape(-1) @ reordered
    np.testing.assert_allclose(onnx_order, slidenet_order)
    np.testing.assert_array_equal(onnx_graph.rows_dhw_to_hwd(reordered, (3, 4, 5)), weights)


def test_without_the_row_permutation_the_export_would_be_silently_wrong(monkeypatch):
    """The classic bug, made on purpose: the net is asymmetric (H != W, D > 1), so rows left in
    slidenet's order give other scores, and the comparison with onnxruntime catches it."""
    model = random_model("INPUT(5x7x3) -> CONV(4, 3x3) -> RELU -> FC(6)")
    x = images(model.input_shape)
    right, = session(to_model(model.net, model.normalizer)).run(["probabilities"],
                                                                {"pixels": x.astype(np.float32)})
    np.testing.assert_allclose(right, model.predict(x), atol=TOLERANCE)
    monkeypatch.setattr(onnx_graph, "rows_hwd_to_dhw", lambda weights, shape: weights)
    wrong, = session(to_model(model.net, model.normalizer)).run(["probabilities"],
                                                                {"pixels": x.astype(np.float32)})
    assert np.abs(wrong - model.predict(x)).max() > 100 * TOLERANCE


def test_a_net_that_ends_on_a_volume_exports_its_scores_in_hwd_order():
    model = random_model("INPUT(3x4x2) -> CONV(3) -> RELU")
    x = images(model.input_shape, 10)
    scores, = session(to_model(model.net, model.normalizer)).run(
        ["scores"], {"pixels": x.astype(np.float32)})
    expected = model.net.forward(model.normalizer.normalize(x)).reshape(len(x), -1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_metadata_holds_the_pattern_and_class_names():
    model = random_model(EVERY_KIND[1])
    proto = to_model(model.net, model.normalizer, ["cat", "dog", "bird"])
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["pattern"] == EVERY_KIND[1]
    assert json.loads(meta["class_names"]) == ["cat", "dog", "bird"]
    assert ort.InferenceSession(proto.SerializeToString()).get_modelmeta() \
        .custom_metadata_map["pattern"] == EVERY_KIND[1]


def test_to_bytes_is_a_model_onnxruntime_runs():
    model = random_model(EVERY_KIND[2])
    x = images(model.input_shape, 5)
    probabilities, = session(to_bytes(model.net, model.normalizer)).run(
        ["probabilities"], {"pixels": x.astype(np.float32)})
    np.testing.assert_allclose(probabilities, model.predict(x), atol=TOLERANCE)


@pytest.fixture
def saved_model(tmp_path):
    model = random_model(EVERY_KIND[0])
    path = tmp_path / "model.npz"
    save(path, model.net, model.normalizer, model.class_names)
    return path


def test_export_command(saved_model, tmp_path, capsys):
    out = tmp_path / "net.onnx"
    assert main(["export", str(saved_model), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (ONNX opset 17" in printed and "pixels" in printed
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    model = slidenet.load(saved_model)
    x = images(model.input_shape)
    probabilities, = session(proto).run(["probabilities"], {"pixels": x.astype(np.float32)})
    np.testing.assert_allclose(probabilities, model.predict(x), atol=TOLERANCE)
    assert main(["export", str(saved_model), "--out", str(out), "--opset", "19"]) == 0
    assert onnx.load(out).opset_import[0].version == 19
    assert main(["export", str(saved_model), "--out", str(out), "--opset", "9"]) == 2
    assert "--opset 9" in capsys.readouterr().err


# ---- round trips ----

@pytest.mark.parametrize("pattern", EVERY_KIND)
def test_export_then_import_gives_the_same_model(pattern, tmp_path):
    model = random_model(pattern)
    path = tmp_path / "net.onnx"
    onnx.save(to_model(model.net, model.normalizer, model.class_names), path)
    back = read_onnx(path)
    assert back.net.pattern == pattern              # as written, [...]*2 and all
    assert [layer.info.spec.type for layer in back.net.layers] == \
        [layer.info.spec.type for layer in model.net.layers]
    assert [layer.info.spec.args for layer in back.net.layers] == \
        [layer.info.spec.args for layer in model.net.layers]
    assert back.class_names == model.class_names
    original, returned = model_arrays(model.net, model.normalizer), \
        model_arrays(back.net, back.normalizer)
    assert original.keys() == returned.keys()
    for key in original:
        np.testing.assert_array_equal(returned[key], original[key], err_msg=key)
    x = images(model.input_shape)
    np.testing.assert_array_equal(Model(back.net, back.normalizer, {}).predict(x), model.predict(x))


# ---- import: fixtures in the forms PyTorch and tf2onnx write ----

def nchw_input(pixels, mean, std):
    return ((pixels / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)


def import_fixture(tmp_path, name, *options):
    out = tmp_path / f"{name}.npz"
    assert main(["import", str(FIXTURES / f"{name}.onnx"), "--out", str(out), *options]) == 0
    return slidenet.load(out)


MEAN2, STD2 = np.array([0.4, 0.6]), np.array([0.2, 0.3])

# name, options, what the graph is fed (from uint8 pixels), whether its output is already
# probabilities, and the pattern the graph is (written from the fixture script, by hand).
FIXTURE_CASES = [
    ("pytorch_style", ["--mean", "0.4", "0.6", "--std", "0.2", "0.3"],
     lambda p: nchw_input(p, MEAN2, STD2), False,
     "INPUT(9x7x2) -> CONV(4, 3x3, s=1x1, p=1x1) -> BATCHNORM -> RELU -> MAXPOOL(3x3, s=2x2) -> "
     "CONV(5, 1x1, s=1x1, p=0x0) -> SIGMOID -> FC(12) -> DROPOUT(0.25) -> TANH -> FC(3)"),
    ("pytorch_gap", [], lambda p: nchw_input(p, 0.0, 1.0), False,
     "INPUT(8x8x1) -> CONV(6, 5x5, s=1x1, p=2x2) -> RELU -> AVGPOOL(2x2, s=2x2) -> "
     "GLOBALAVGPOOL -> FC(4)"),
    ("keras_style", ["--scale", "1"], lambda p: p.astype(np.float32), True,
     "INPUT(10x8x3) -> CONV(6, 3x3, s=1x1, p=1x1) -> RELU -> MAXPOOL(2x2, s=2x2) -> FC(16) -> "
     "RELU -> FC(4)"),
    ("keras_gap", [], lambda p: (p / 255.0).astype(np.float32), True,
     "INPUT(6x6x2) -> CONV(5, 3x3, s=1x1, p=0x0) -> LEAKYRELU(0.2) -> GLOBALAVGPOOL -> FC(3)"),
]


@pytest.mark.parametrize("name, options, feed, probabilities, pattern", FIXTURE_CASES,
                         ids=[case[0] for case in FIXTURE_CASES])
def test_imported_fixture_predicts_what_onnxruntime_computes(tmp_path, name, options, feed,
                                                             probabilities, pattern):
    model = import_fixture(tmp_path, name, *options)
    assert model.net.pattern == pattern
    x = images(model.input_shape)
    runtime = ort.InferenceSession(str(FIXTURES / f"{name}.onnx"))
    out, = runtime.run(None, {runtime.get_inputs()[0].name: feed(x)})
    expected = out if probabilities else softmax(out)
    np.testing.assert_allclose(model.predict(x), expected, rtol=0, atol=TOLERANCE)
    assert model.meta["source"] == f"onnx:{name}.onnx"


@pytest.mark.parametrize("name, expected", [("torch_cnn_legacy", "torch_cnn"),
                                            ("torch_cnn_dynamo", "torch_cnn"),
                                            ("torch_gap_legacy", "torch_gap")])
def test_a_pytorch_cnn_predicts_what_pytorch_predicted(tmp_path, name, expected):
    """The oracle is PyTorch itself: its outputs for these pixels, stored by the script that
    exported the fixture. (torch_cnn_dynamo keeps its weights in an external .data file.)"""
    stored = np.load(FIXTURES / f"{expected}_expected.npz")
    model = import_fixture(tmp_path, name, "--mean", *map(str, stored["mean"]),
                           "--std", *map(str, stored["std"]))
    pixels = stored["pixels"]
    np.testing.assert_allclose(model.predict(pixels), stored["probabilities"], rtol=0,
                               atol=TOLERANCE)
    np.testing.assert_allclose(model.scores(pixels), stored["logits"], rtol=1e-4, atol=1e-4)
    runtime = ort.InferenceSession(str(FIXTURES / f"{name}.onnx"))
    logits, = runtime.run(None, {"input": nchw_input(pixels, stored["mean"], stored["std"])})
    np.testing.assert_allclose(model.predict(pixels), softmax(logits), atol=TOLERANCE)


def test_torch_cnn_becomes_the_lecture_pattern(tmp_path):
    model = import_fixture(tmp_path, "torch_cnn_legacy")
    assert model.net.pattern == (
        "INPUT(12x10x3) -> CONV(8, 3x3, s=1x1, p=1x1) -> RELU -> BATCHNORM -> "
        "MAXPOOL(2x2, s=2x2) -> CONV(12, 3x5, s=1x1, p=1x2) -> LEAKYRELU(0.1) -> "
        "AVGPOOL(2x3, s=2x1) -> FC(32) -> BATCHNORM -> TANH -> FC(5)")
    assert model.meta["producer"].startswith("pytorch")


def test_preprocessing_options_map_onto_the_normalizer():
    """(pixels * S - M) / Sd for the graph is (pixels / 255 - mean) / std for slidenet: the
    normaliser must give what the options say, per channel."""
    imported = read_onnx(FIXTURES / "pytorch_style.onnx", scale=1 / 127.5, mean=[1.0, 0.5],
                         std=[0.5, 2.0])
    pixels = images((9, 7, 2), 5)
    want = (pixels / 127.5 - np.array([1.0, 0.5])) / np.array([0.5, 2.0])
    np.testing.assert_allclose(imported.normalizer.normalize(pixels, np.float64), want,
                               rtol=1e-5, atol=1e-5)


def test_class_names_from_the_command_line(tmp_path, capsys):
    model = import_fixture(tmp_path, "pytorch_gap", "--classes", "a, b,c,d")
    assert model.class_names == ["a", "b", "c", "d"]
    out = tmp_path / "x.npz"
    assert main(["import", str(FIXTURES / "pytorch_gap.onnx"), "--out", str(out),
                 "--classes", "a,b"]) == 2
    assert "--classes names 2 classes" in capsys.readouterr().err and not out.exists()


# ---- an imported model in every command ----

@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """torch_cnn imported, and a small data set of its 12 x 10 x 3 images in 5 classes."""
    folder = tmp_path_factory.mktemp("imported")
    stored = np.load(FIXTURES / "torch_cnn_expected.npz")
    path = folder / "cnn.npz"
    assert main(["import", str(FIXTURES / "torch_cnn_legacy.onnx"), "--out", str(path),
                 "--mean", *map(str, stored["mean"]), "--std", *map(str, stored["std"]),
                 "--classes", "zero,one,two,three,four"]) == 0
    x = stored["pixels"]
    y = stored["probabilities"].argmax(axis=1)      # labels the net gets right: fine-tuning
    data = folder / "data.npz"                      # must keep what it already knows
    np.savez(data, x=x[:80], y=y[:80], x_test=x[80:], y_test=y[80:],
             class_names=np.array(["zero", "one", "two", "three", "four"]))
    return path, f"npz:{data}", folder


def test_imported_model_evaluates_and_predicts(imported, capsys, tmp_path):
    path, data, _ = imported
    assert main(["eval", str(path), "--data", data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0
    assert main(["eval", str(path)]) == 2
    assert "names no data set (it came from onnx:torch_cnn_legacy.onnx): give --data" in \
        capsys.readouterr().err
    Image = pytest.importorskip("PIL.Image")
    pixels = np.load(FIXTURES / "torch_cnn_expected.npz")["pixels"][0]
    Image.fromarray(pixels).save(tmp_path / "one.png")
    assert main(["predict", str(path), str(tmp_path / "one.png"), "--top", "1"]) == 0
    best = int(np.load(FIXTURES / "torch_cnn_expected.npz")["probabilities"][0].argmax())
    assert ["zero", "one", "two", "three", "four"][best] in capsys.readouterr().out
    assert main(["summary", slidenet.load(path).net.pattern]) == 0
    assert "fc1" in capsys.readouterr().out


def test_imported_model_draws_and_reports(imported, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path, data, _ = imported
    assert main(["viz", "filters", str(path), "--out", str(tmp_path / "f.png")]) == 0
    assert main(["viz", "patches", str(path), "--data", data, "--channels", "2",
                 "--out", str(tmp_path / "p.png")]) == 0
    assert main(["report", str(path), "--data", data, "--images", "1", "--samples", "2",
                 "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "holds no training history" in page and "CONV(12, 3x5" in page
    assert (tmp_path / "f.png").stat().st_size > 0 and (tmp_path / "p.png").stat().st_size > 0


def test_imported_model_fine_tunes_with_train_resume(imported, capsys):
    path, data, folder = imported
    out = folder / "tuned"
    assert main(["train", "--resume", str(path), "--epochs", "1", "--lr", "1e-4",
                 "--no-augment", "--out", str(out)]) == 2
    assert "not trained by slidenet (it came from onnx:torch_cnn_legacy.onnx), so there is no " \
        "run to continue and no data set to fine-tune it on: give --data SPEC" in \
        capsys.readouterr().err
    assert main(["train", "--resume", str(path), "--data", data, "--epochs", "2", "--lr", "1e-4",
                 "--batch-size", "16", "--no-augment", "--out", str(out)]) == 0
    tuned = slidenet.load(out / "model.npz")
    original = slidenet.load(path)
    assert tuned.meta["epoch"] == 2 and [h["epoch"] for h in tuned.meta["history"]] == [1, 2]
    assert tuned.net.pattern == original.net.pattern
    np.testing.assert_array_equal(tuned.normalizer.mean, original.normalizer.mean)
    # It starts from the imported weights: Adam moves each by about lr per step at most, and
    # 2 epochs of 72 images in batches of 16 are 10 steps.
    moved = {k: np.abs(tuned.net.params[k] - original.net.params[k]).max()
             for k in original.net.params}
    assert 0 < max(moved.values()) < 10 * 1e-4 * 3, moved
    # The fine-tuned file is an ordinary run now: it resumes exactly.
    assert main(["train", "--resume", str(out / "model.npz"), "--epochs", "3"]) == 0
    assert slidenet.load(out / "model.npz").meta["epoch"] == 3


def test_import_data_option_is_the_default_data(imported, tmp_path, capsys):
    _, data, _ = imported
    path = tmp_path / "with-data.npz"
    stored = np.load(FIXTURES / "torch_cnn_expected.npz")
    assert main(["import", str(FIXTURES / "torch_cnn_legacy.onnx"), "--out", str(path),
                 "--mean", *map(str, stored["mean"]), "--std", *map(str, stored["std"]),
                 "--data", data]) == 0
    capsys.readouterr()
    assert main(["eval", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0


# ---- what slidenet cannot represent ----

def test_every_unsupported_node_is_listed(tmp_path):
    out = tmp_path / "never.npz"
    status, stdout, stderr = run_cli("import", FIXTURES / "unsupported.onnx", "--out", out)
    assert status == 2 and "Traceback" not in stderr and not out.exists()
    lines = stderr.strip().splitlines()
    # The nodes after the first fault are judged too (their input's shape comes from ONNX's
    # shape inference): the Reshape to a sequence is a fault of its own. The grouped Conv
    # imports (CONV(K, g=G)), and so does the residual Add (ADD, tests/test_onnx_graphs.py).
    assert lines[0].endswith("slidenet cannot represent 3 parts of this graph, so nothing was "
                             "written:")
    assert lines[1].startswith("  Conv '/conv2/Conv': dilations=[2, 2]: a dilated convolution")
    assert lines[2].startswith("  Reshape '/Reshape': shape=[0, -1, 4]: of the reshapes")
    assert lines[3].startswith("  LSTM '/lstm/LSTM': LSTM is a recurrent layer")
    assert len(lines) == 4


def small_graph(tmp_path, nodes, initializers=(), output="y", opset=17, shape=(1, 8, 8)):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])]
    outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", "C"])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8)
    path = tmp_path / "g.onnx"
    onnx.save(model, path)
    return path


def conv_weights(k=2, c=1, f=3):
    return [numpy_helper.from_array(np.ones((k, c, f, f), np.float32), "w")]


@pytest.mark.parametrize("node, reason", [
    (helper.make_node("AveragePool", ["x"], ["y"], name="p", kernel_shape=[3, 3],
                      strides=[2, 2], ceil_mode=1),
     "AveragePool 'p': ceil_mode=1: its last window reaches past the padding"),
    (helper.make_node("AveragePool", ["x"], ["y"], name="p", kernel_shape=[2, 2],
                      pads=[1, 1, 1, 1]),
     "AveragePool 'p': count_include_pad=0: an average over the window's pixels inside the "
     "image only"),
    (helper.make_node("Transpose", ["x"], ["y"], name="t", perm=[0, 1, 3, 2]),
     "Transpose 't': perm=[0, 1, 3, 2]"),
    (helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="u"),
     "ConvTranspose 'u': ConvTranspose is a transposed convolution"),
])
def test_a_node_slidenet_cannot_represent_is_named_with_its_attribute(tmp_path, node, reason):
    path = small_graph(tmp_path, [node], conv_weights())
    with pytest.raises(SlidenetError) as caught:
        read_onnx(path)
    assert reason in str(caught.value)


def test_an_input_flattened_at_once_needs_its_layout(tmp_path):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w"], ["y"], name="fc")]
    weights = [numpy_helper.from_array(np.ones((2 * 3 * 4, 5), np.float32), "w")]
    path = small_graph(tmp_path, nodes, weights, shape=(2, 3, 4))
    with pytest.raises(SlidenetError, match="say --input-layout nchw or nhwc"):
        read_onnx(path)
    assert read_onnx(path, input_layout="nchw").net.pattern == "INPUT(3x4x2) -> FC(5)"
    assert read_onnx(path, input_layout="nhwc").net.pattern == "INPUT(2x3x4) -> FC(5)"


# ---- hostile files ----

def refused(tmp_path, path):
    """Run `slidenet import` on `path`: it must fail with exit 2 and one line, no traceback."""
    status, stdout, stderr = run_cli("import", path, "--out", tmp_path / "never.npz")
    assert status == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "never.npz").exists()
    return stderr


def test_a_truncated_file_is_refused(tmp_path):
    data = (FIXTURES / "torch_cnn_legacy.onnx").read_bytes()
    for cut in (len(data) // 2, len(data) - 3, 40):
        (tmp_path / "cut.onnx").write_bytes(data[:cut])
        message = refused(tmp_path, tmp_path / "cut.onnx")
        assert "is not an ONNX model, or it is truncated" in message


@pytest.mark.parametrize("content", [b"", b"hello, this is text\n",
                                     b"\x89PNG\r\n\x1a\n" + bytes(64), bytes(range(256)) * 4])
def test_a_file_that_is_not_onnx_is_refused(tmp_path, content):
    path = tmp_path / "foreign.onnx"
    path.write_bytes(content)
    message = refused(tmp_path, path)
    assert "not an ONNX model" in message


def test_a_directory_or_missing_file_is_refused(tmp_path):
    assert "is not a file" in refused(tmp_path, tmp_path)
    assert "no such file" in refused(tmp_path, tmp_path / "nothing.onnx")


def external_model(folder, location, length=None, dims=(2, 1, 3, 3), offset=0):
    """A one-Conv graph whose weight lives in an external file at `location`."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(dims))
    weight.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset)}
    entries["length"] = str(4 * int(np.prod(dims)) if length is None else length)
    for key, value in entries.items():
        weight.external_data.add(key=key, value=value)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C"])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../outside.bin", "sub/../../outside.bin", "link.bin",
                                      "ABSOLUTE"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    secret = tmp_path / "outside.bin"
    secret.write_bytes(np.ones(18, np.float32).tobytes())
    (folder / "link.bin").symlink_to(secret)
    location = str(secret) if location == "ABSOLUTE" else location
    message = refused(tmp_path, external_model(folder, location))
    assert "lies outside the model's folder" in message


def test_external_data_that_claims_more_than_its_file_is_refused(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.ones(18, np.float32).tobytes())
    assert "which has 72" in refused(tmp_path, external_model(tmp_path, "w.bin", offset=8))
    assert "which has 72" in refused(tmp_path, external_model(tmp_path, "w.bin", length=10**12))
    message = refused(tmp_path, external_model(tmp_path, "w.bin", length=72,
                                               dims=(10**6, 10**6, 10, 10)))
    assert "claims" in message and "input budget" in message


def test_external_data_inside_the_folder_is_read(tmp_path):
    weights = np.arange(18, dtype=np.float32).reshape(2, 1, 3, 3)
    (tmp_path / "w.bin").write_bytes(bytes(8) + weights.tobytes())
    path = external_model(tmp_path, "w.bin", offset=8)
    reader_model = onnx.load(path, load_external_data=False)
    assert reader_model.graph.initializer[0].data_location == TensorProto.EXTERNAL
    with pytest.raises(SlidenetError, match="ends on an image volume"):
        read_onnx(path)     # the file is read (the weights are fine); the graph has no FC


def test_claimed_sizes_are_checked_before_allocating(tmp_path):
    huge = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[100000, 100000, 100],
                       raw_data=np.ones(4, np.float32).tobytes())
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c")
    # The ONNX checker sees the graph without its weights (the import reads each weight once,
    # itself): slidenet's own check refuses the claim.
    assert "tensor 'w' (100000 x 100000 x 100 float32) claims 3.6 TiB" in \
        refused(tmp_path, small_graph(tmp_path, [node], [huge]))
    with pytest.raises(OnnxFileError, match=r"tensor 'w' \(100000 x 100000 x 100 float32\) "
                                            r"claims 3.6 TiB, more than slidenet's input budget"):
        tensor_array(huge, tmp_path, Budget())
    short = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    short.raw_data = short.raw_data[:-4]
    with pytest.raises(OnnxFileError, match="say 72 bytes of float32 but it holds 68"):
        tensor_array(short, tmp_path, Budget())
    with pytest.raises(OnnxFileError, match="claims 2.0 KiB, more than the 1.0 KiB"):
        check_claimed_size("tensor 'w'", 2048, 1024)
    budget = Budget(100)
    budget.take("a", 60)
    with pytest.raises(OnnxFileError, match="'b' claims 60 bytes after 60 bytes of tensors before "
                                            "it, more than slidenet's input budget of 100 bytes"):
        budget.take("'b'", 60)
    from slidenet.storage import limits  # the shared setting decides the default
    previous = limits.set_budget(5000)
    try:
        assert Budget().total == 5000
    finally:
        limits.set_budget(previous)


# ---- without the extra, and the registry ----

def test_without_the_onnx_package_the_commands_say_how_to_install_it(saved_model, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)      # import onnx now raises ImportError
    assert main(["export", str(saved_model), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "pip install 'slidenet[onnx]'" in capsys.readouterr().err
    assert main(["import", str(FIXTURES / "pytorch_gap.onnx"),
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert "pip install 'slidenet[onnx]'" in capsys.readouterr().err


def test_a_kind_without_onnx_export_is_refused_at_registration():
    class Half(Layer):
        kind = "HALFDONE"

        @classmethod
        def infer(cls, spec, walk):
            return Inferred(walk.shape)

        def forward(self, x, train):
            return x

        def backward(self, dout, need_dx=True):
            return dout

    with pytest.raises(RegistryError, match="Half: no to_onnx"):
        register(Half)
    assert "HALFDONE" not in kinds()


def test_slidenet_imports_without_onnx():
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None; "
            "import slidenet.cli; slidenet.cli.build_parser(); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ})
    assert done.stdout.strip() == "ok", done.stderr


def test_metadata_that_lies_about_the_pattern_is_not_believed(tmp_path):
    model = random_model(EVERY_KIND[2])
    proto = to_model(model.net, model.normalizer)
    for prop in proto.metadata_props:
        if prop.key == "pattern":
            prop.value = "INPUT(12x10x1) -> FC(10)"
        if prop.key == "variables":
            prop.value = "[1, 2]"
    onnx.save(proto, tmp_path / "lying.onnx")
    back = read_onnx(tmp_path / "lying.onnx")
    assert back.net.pattern.startswith("INPUT(12x10x1) -> [CONV(8, 5x3, s=1x1, p=2x1) -> "
                                       "RELU]*2 -> MAXPOOL")
    x = images(model.input_shape)
    np.testing.assert_array_equal(Model(back.net, back.normalizer, {}).predict(x), model.predict(x))


def test_preprocessing_and_per_channel_arithmetic_fold_into_layers(tmp_path):
    """Sub and Div before the first layer are preprocessing; Mul and Sub right after a Conv fold
    into its weights; Cast, GlobalMaxPool, Squeeze and LogSoftmax are followed too. The oracle
    is onnxruntime on the same graph."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.uniform(0.3, 0.7, (1, 2, 1, 1)).astype(np.float32), "m"),
             numpy_helper.from_array(rng.uniform(0.2, 0.4, (1, 2, 1, 1)).astype(np.float32), "s"),
             numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
             numpy_helper.from_array(rng.uniform(0.5, 2, (3, 1, 1)).astype(np.float32), "k"),
             numpy_helper.from_array(rng.standard_normal((1, 3, 1, 1)).astype(np.float32), "o"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
             numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["x32", "m"], ["centred"]),
             helper.make_node("Div", ["centred", "s"], ["scaled"]),
             helper.make_node("Conv", ["scaled", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "k"], ["ck"]),
             helper.make_node("Sub", ["ck", "o"], ["co"]),
             helper.make_node("Relu", ["co"], ["r"]),
             helper.make_node("GlobalMaxPool", ["r"], ["g"]),
             helper.make_node("Squeeze", ["g", "axes"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1),
             helper.make_node("LogSoftmax", ["logits"], ["y"], axis=1)]
    path = small_graph(tmp_path, nodes, inits, shape=(2, 6, 5))
    imported = read_onnx(path)
    assert imported.net.pattern == ("INPUT(6x5x2) -> CONV(3, 3x3, s=1x1, p=1x1) -> RELU -> "
                                    "MAXPOOL(6x5, s=1x1) -> FC(4)")
    pixels = images((6, 5, 2))
    log_probabilities, = session(onnx.load(path)).run(
        None, {"x": (pixels / 255.0).transpose(0, 3, 1, 2).astype(np.float32)})
    predicted = Model(imported.net, imported.normalizer, {}).predict(pixels)
    np.testing.assert_allclose(predicted, np.exp(log_probabilities), atol=TOLERANCE)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")      # torch on its own exporters
def test_live_pytorch_export_imports_and_predicts_the_same(tmp_path):
    """Optional: runs only where PyTorch is installed (it is not a slidenet dependency; the
    fixtures above cover the same ground without it)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(7)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(2, 5, (3, 5), stride=(1, 2), padding=(1, 2)), nn.BatchNorm2d(5),
                        nn.Tanh(), nn.MaxPool2d(3, stride=2), nn.Conv2d(5, 4, 1), nn.Sigmoid(),
                        nn.Flatten(), nn.Linear(4 * 3 * 3, 6), nn.LeakyReLU(0.05),
                        nn.Dropout(0.4), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2)
    path = tmp_path / "live.onnx"
    torch.onnx.export(net, (torch.randn(1, 2, 7, 13),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], dynamic_axes={"input": {0: "N"}})
    imported = read_onnx(path)
    assert imported.net.pattern.startswith("INPUT(7x13x2) -> CONV(5, 3x5, s=1x2, p=1x2)")
    pixels = images((7, 13, 2))
    with torch.no_grad():
        expected = torch.softmax(net(torch.tensor(pixels / 255.0, dtype=torch.float32)
                                     .permute(0, 3, 1, 2)), 1).numpy()
    np.testing.assert_allclose(Model(imported.net, imported.normalizer, {}).predict(pixels),
                               expected, atol=TOLERANCE)


def test_an_external_file_is_checked_once_and_every_tensors_range_each_time(tmp_path,
                                                                            monkeypatch):
    """Hundreds of tensors in one .data file: the file is resolved and checked once per model
    (`files`), but each tensor's own offset and length are still checked against its size."""
    from slidenet.interop import onnx_file
    numbers = np.arange(18, dtype=np.float32)
    (tmp_path / "w.bin").write_bytes(numbers.tobytes())            # 72 bytes
    resolved = []
    real = onnx_file._external_target
    monkeypatch.setattr(onnx_file, "_external_target",
                        lambda *args: resolved.append(args[1]) or real(*args))

    def tensor(name, offset, length):
        t = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=[length // 4])
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", "w.bin"), ("offset", str(offset)),
                           ("length", str(length))):
            t.external_data.add(key=key, value=value)
        return t
    files, budget = {}, Budget()
    first = tensor_array(tensor("a", 0, 36), tmp_path, budget, files=files)
    second = tensor_array(tensor("b", 36, 36), tmp_path, budget, files=files)
    np.testing.assert_array_equal(np.concatenate([first, second]), numbers)
    with pytest.raises(OnnxFileError, match="claims bytes 40 to 76 of 'w.bin', which has 72"):
        tensor_array(tensor("c", 40, 36), tmp_path, budget, files=files)
    assert resolved == ["w.bin"]
