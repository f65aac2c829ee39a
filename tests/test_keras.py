"""Keras 3 CNNs through tf2onnx, both routes (from_keras and --saved-model): each imports and
predicts what Keras predicted, within 1e-5. No TensorFlow here: the fixtures and Keras's
predictions were made by tests/fixtures/onnx/make_keras_fixtures.py."""
from pathlib import Path

import numpy as np
import pytest

from helpers import import_part

import_part("ONNX", "onnx", "onnxruntime")

from slidenet.cli import main  # noqa: E402
from slidenet.interop.onnx_import import read_onnx  # noqa: E402
from slidenet.model import Model  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "onnx"
ROUTES = ("keras", "saved")

PATTERNS = {
    "gray": "INPUT(14x14x1) -> CONV(4, 3x3, s=1x1, p=0x0) -> RELU -> MAXPOOL(2x2, s=2x2) -> "
            "CONV(6, 3x3, s=1x1, p=1x1) -> RELU -> AVGPOOL(2x2, s=2x2) -> FC(16) -> RELU -> "
            "BATCHNORM -> FC(5)",
    "rgb_gap": "INPUT(12x12x3) -> CONV(8, 3x3, s=1x1, p=1x1) -> RELU -> BATCHNORM -> "
               "CONV(8, 3x3, s=1x1, p=0x0) -> MAXPOOL(2x2, s=2x2) -> GLOBALAVGPOOL -> FC(4)",
    "functional": "INPUT(10x10x3) -> CONV(6, 3x3, s=1x1, p=1x1) -> RELU -> MAXPOOL(2x2, s=2x2) "
                  "-> CONV(8, 3x3, s=1x1, p=0x0) -> RELU -> FC(12) -> RELU -> FC(3)",
    # 'same' at stride 2: TensorFlow pads one pixel after, none before (the graph notation's
    # per-side padding); a pool on 5x5 leaves the last row and column out (round=down).
    "same_s2": "INPUT(10x10x1) -> CONV(4, 3x3, s=2x2, p=0:1x0:1) -> RELU -> FC(3)",
    "pool_floor": "INPUT(5x5x2) -> CONV(4, 1x1, s=1x1, p=0x0) -> RELU -> "
                  "MAXPOOL(2x2, s=2x2, round=down) -> FC(3)",
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_a_keras_cnn_predicts_what_keras_predicted(name, route):
    """The graph takes pixels 0..255 (Keras's Rescaling is inside it), so --scale 1."""
    stored = np.load(FIXTURES / f"keras_{name}.npz")
    imported = read_onnx(FIXTURES / f"keras_{name}_{route}.onnx", scale=1.0)
    # BatchNormalization after a Conv2D, and after a Dense before its activation, is folded
    # into their weights by tf2onnx or slidenet; after a Dense's activation it is a BATCHNORM.
    assert imported.net.pattern == PATTERNS[name]
    model = Model(imported.net, imported.normalizer, {"class_names": imported.class_names})
    np.testing.assert_allclose(model.predict(stored["pixels"]), stored["probabilities"],
                               rtol=0, atol=1e-5)
    assert (model.predict(stored["pixels"]).argmax(1) == stored["probabilities"].argmax(1)).all()


def test_the_import_command_on_a_keras_file(tmp_path, capsys):
    out = tmp_path / "gray.npz"
    assert main(["import", str(FIXTURES / "keras_gray_saved.onnx"), "--scale", "1",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "INPUT(14x14x1)" in captured.out
    stored = np.load(FIXTURES / "keras_gray.npz")
    import slidenet
    np.testing.assert_allclose(slidenet.load(out).predict(stored["pixels"]),
                               stored["probabilities"], atol=1e-5)
