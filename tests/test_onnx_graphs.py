"""`slidenet import` of graphs: branches merged by Add and Concat (ResNet, Inception, DenseNet,
MobileNet), pools with ceil_mode, and the graphs slidenet cannot write as one nested pattern.
Oracles: onnxruntime running the same file, and PyTorch's own outputs stored beside the
torch-made fixtures (tests/fixtures/onnx/make_torch_fixtures.py)."""
from pathlib import Path

import numpy as np
import pytest

from helpers import import_part

onnx, ort = import_part("ONNX", "onnx", "onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from slidenet.errors import SlidenetError  # noqa: E402
from slidenet.interop.onnx_export import to_model  # noqa: E402
from slidenet.interop.onnx_import import read_onnx  # noqa: E402
from slidenet.model import Model  # noqa: E402
from slidenet.net import Net  # noqa: E402
from slidenet.data.normalize import Normalizer  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "onnx"
RNG = np.random.default_rng(20)


def weights(name, *shape):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.5).astype(np.float32), name)


def save_graph(path, nodes, inits, shape=(1, 8, 8), out="y", opset=17):
    """A graph of `nodes` reading x (N, *shape), saved to `path`."""
    model = helper.make_model(
        helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                    ["N", *shape])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", "C"])], inits),
        opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


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
    probe = save_graph(tmp_path / "probe.onnx", [pool], [], shape=(1, n, n), out="v")
    v = onnxruntime_scores(probe, pixels)
    fc = (RNG.standard_normal((int(np.prod(v.shape[1:])), 3)) * 0.5).astype(np.float32)
    nodes = [pool, helper.make_node("Flatten", ["v"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    path = save_graph(tmp_path / "g.onnx", nodes, [numpy_helper.from_array(fc, "fc")],
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
