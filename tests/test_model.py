"""The public model API, `slidenet.load(path) -> Model`, on a file written by slidenet 0.1.0.

The oracle is the lecture's loops (`slidenet.ops.naive`) run by hand on the file's own arrays.
"""
from pathlib import Path

import numpy as np
import pytest

import slidenet
from slidenet.errors import DataError, ModelFileError
from slidenet.ops import naive
from slidenet.storage import modelfile

OLD = Path(__file__).parent / "fixtures" / "model-0.1.0.npz"


def by_hand(arrays, images):
    """The fixture's net, INPUT(8x8x2) -> CONV(3) -> BATCHNORM -> RELU -> MAXPOOL(3x3, s=1) ->
    CONV(4, 3x3, s=1, p=1) -> LEAKYRELU(0.1) -> AVGPOOL -> FC(5) -> SIGMOID -> TANH ->
    DROPOUT(0.2) -> FC(3), evaluated with the naive loops and textbook formulas in float64."""
    a = {k: v.astype(np.float64) for k, v in arrays.items()}
    x = (images / 255.0 - a["norm/normalizer.mean"]) / a["norm/normalizer.std"]
    x = naive.conv_forward(x, a["param/conv1.W"], a["param/conv1.b"], (1, 1), (1, 1))
    mean, var = a["buffer/batchnorm1.running_mean"], a["buffer/batchnorm1.running_var"]
    x = (x - mean) / np.sqrt(var + 1e-5) * a["param/batchnorm1.gamma"] + a["param/batchnorm1.beta"]
    x = naive.pool_forward(np.maximum(x, 0), (3, 3), (1, 1), "max")
    x = naive.conv_forward(x, a["param/conv2.W"], a["param/conv2.b"], (1, 1), (1, 1))
    x = naive.pool_forward(np.where(x > 0, x, 0.1 * x), (2, 2), (2, 2), "avg")
    x = np.tanh(naive.sigmoid_forward(naive.fc_forward(x, a["param/fc1.W"], a["param/fc1.b"])))
    scores = naive.fc_forward(x, a["param/fc2.W"], a["param/fc2.b"])
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return scores, e / e.sum(axis=1, keepdims=True)


def test_a_model_file_from_0_1_0_loads_and_predicts_as_the_loops_do():
    model = slidenet.load(OLD)
    arrays, meta = modelfile.load(OLD)
    assert model.input_shape == (8, 8, 2) and model.class_names == ["a", "b", "c"]
    # CONV(3) -> BATCHNORM has no bias now: the file's conv1.b is folded into batchnorm1's
    # running mean (by_hand below still adds it, the way 0.1.0 computed), and it and its Adam
    # state are left out of what --resume reads.
    dropped = {"param/conv1.b", "optim/m/conv1.b", "optim/v/conv1.b"}
    assert np.abs(arrays["param/conv1.b"]).max() > 1e-3      # a real bias to fold
    assert model.meta["pattern"] == meta["pattern"] and model.state.keys() == arrays.keys() - dropped
    assert "conv1.b" not in model.net.params
    images = np.random.default_rng(1).integers(0, 256, (7, 8, 8, 2), dtype=np.uint8)
    scores, probs = by_hand(arrays, images)
    np.testing.assert_allclose(model.scores(images), scores, rtol=1e-5, atol=1e-6)
    got = model.predict(images, batch_size=3)       # batches of 3: 3 + 3 + 1
    assert got.dtype == np.float64 and got.shape == (7, 3)
    np.testing.assert_allclose(got, probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-12)


def test_predict_refuses_images_of_another_shape():
    model = slidenet.load(OLD)
    with pytest.raises(DataError, match=r"\(N, H, W, D\) of 8x8x2 images, got shape \(8, 8, 2\)"):
        model.predict(np.zeros((8, 8, 2), np.uint8))
    assert model.predict(np.zeros((0, 8, 8, 2), np.uint8)).shape == (0, 3)


def test_load_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        slidenet.load(tmp_path / "missing.npz")
    arrays, meta = modelfile.load(OLD)
    del arrays["param/fc2.W"]
    modelfile.save(tmp_path / "partial.npz", arrays, meta)
    with pytest.raises(ModelFileError, match="not a complete slidenet model"):
        slidenet.load(tmp_path / "partial.npz")


def test_float_images_are_pixels_scaled_to_0_1_as_in_npz_data():
    """One convention with `npz:` data sets: floats are pixels in [0, 1]; uint8 are 0..255."""
    model = slidenet.load(OLD)
    pixels = np.random.default_rng(2).integers(0, 256, (5, 8, 8, 2), dtype=np.uint8)
    arrays, _ = modelfile.load(OLD)
    _, probs = by_hand(arrays, pixels)                      # the loops, on 0..255
    for floats in (pixels / 255.0, (pixels / 255.0).astype(np.float32)):
        np.testing.assert_allclose(model.predict(floats), probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.predict(pixels.astype(np.int64)), probs, rtol=1e-5,
                               atol=1e-7)
    with pytest.raises(DataError, match=r"float images must be pixels scaled to \[0, 1\] .* "
                                        r"run from 0 to 255: divide 0..255 pixels by 255"):
        model.predict(pixels.astype(np.float64) * 0 + np.linspace(0, 255, 8)[None, :, None, None])
    with pytest.raises(DataError, match="run from nan"):
        model.predict(np.full((1, 8, 8, 2), np.nan))
    with pytest.raises(DataError, match="integer images must hold pixel values 0..255; these run "
                                        "from -1 to 300"):
        model.predict(np.array([-1, 300] * 64).reshape(1, 8, 8, 2))
