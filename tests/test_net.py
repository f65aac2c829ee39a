"""The Net: building from patterns, parameter dicts, forward/backward, and whole-net gradient checks."""
import subprocess
import sys

import numpy as np
import pytest

from slidenet import Net, ops
from slidenet.errors import DataError, PatternError, SlidenetError
from slidenet.gradcheck import TOLERANCE, check_net, check_pattern

ISSUE_PATTERN = ("INPUT(9x7x2) -> CONV(3, 3x3, s=2, p=1) -> RELU -> MAXPOOL(3x3, s=1) -> CONV(2, 1x1) "
                 "-> AVGPOOL(2x2, s=1) -> CONV(2, 2x1) -> FC(4)")
LECTURE = "INPUT(32x32x3) -> [[CONV(32) -> RELU]*N -> POOL?]*M -> [FC(128) -> RELU]*K -> FC(10)"


def test_lecture_pattern_builds_with_the_expected_parameters():
    net = Net.from_pattern(LECTURE, N=2, M=3, K=2)
    assert sum(p.size for p in net.params.values()) == 130_602
    # Weight then bias for each CONV/FC, in layer order.
    assert list(net.params)[:4] == ["conv1.W", "conv1.b", "conv2.W", "conv2.b"]
    assert list(net.params)[-2:] == ["fc3.W", "fc3.b"]
    assert net.params["conv1.W"].shape == (3, 3, 3, 32)
    assert net.params["fc1.W"].shape == (4 * 4 * 32, 128)
    assert all(p.dtype == np.float32 for p in net.params.values())


def test_forward_backward_shapes_and_live_dicts():
    net = Net.from_pattern("INPUT(8x8x3) -> CONV(4) -> RELU -> POOL -> FC(5)", seed=3)
    x = np.random.default_rng(0).standard_normal((6, 8, 8, 3)).astype(np.float32)
    scores = net.forward(x)
    assert scores.shape == (6, 5) and scores.dtype == np.float32
    grads = net.grads
    dx = net.backward(np.ones_like(scores))
    assert dx.shape == x.shape
    assert net.grads is grads and np.any(grads["fc1.W"] != 0)
    # An in-place update of net.params changes what the net computes.
    net.params["fc1.b"] += 1
    np.testing.assert_allclose(net.forward(x), scores + 1, rtol=1e-5, atol=1e-5)


def test_same_seed_same_weights_and_different_seed_different_weights():
    a = Net.from_pattern("INPUT(8x8x1) -> CONV(2) -> FC(3)", seed=1)
    b = Net.from_pattern("INPUT(8x8x1) -> CONV(2) -> FC(3)", seed=1)
    c = Net.from_pattern("INPUT(8x8x1) -> CONV(2) -> FC(3)", seed=2)
    np.testing.assert_array_equal(a.params["conv1.W"], b.params["conv1.W"])
    assert not np.array_equal(a.params["conv1.W"], c.params["conv1.W"])


def test_he_initialisation_scale():
    net = Net.from_pattern("INPUT(16x16x64) -> CONV(256, 3x3) -> FC(10)", dtype="float64")
    assert abs(net.params["conv1.W"].std() - np.sqrt(2 / (3 * 3 * 64))) < 0.01 * np.sqrt(2 / 576) * 10


def test_wrong_input_shape_names_both_shapes():
    net = Net.from_pattern("INPUT(8x8x3) -> FC(2)")
    with pytest.raises(DataError, match="the input is 8x8x1 but the net's INPUT is 8x8x3"):
        net.forward(np.zeros((1, 8, 8, 1)))


def test_bad_geometry_fails_when_the_net_is_built():
    with pytest.raises(PatternError, match=r"\(7 - 3\) / 3 \+ 1 = 2\.33"):
        Net.from_pattern("INPUT(7x7x1) -> CONV(2, 3x3, s=3, p=0) -> FC(2)")


def test_issue_pattern_passes_gradcheck():
    errors = check_pattern(ISSUE_PATTERN)
    assert set(errors) == {"input", "conv1.W", "conv1.b", "conv2.W", "conv2.b", "conv3.W", "conv3.b",
                           "fc1.W", "fc1.b"}
    assert max(errors.values()) < TOLERANCE


def test_every_layer_kind_passes_gradcheck():
    errors = check_pattern("INPUT(6x6x3) -> CONV(4) -> BATCHNORM -> LEAKYRELU(0.1) -> POOL -> "
                           "CONV(3, 3x1, p=1x0) -> TANH -> DROPOUT(0.3) -> FC(5) -> SIGMOID -> "
                           "BATCHNORM -> RELU -> FC(3)")
    assert max(errors.values()) < TOLERANCE


def test_gradcheck_catches_a_wrong_backward(monkeypatch):
    # A max-pool backward that spreads the gradient like an average must be caught.
    def spread(dout, cache, relu_mask=False):
        return ops.avg_pool_backward(dout, ops.avg_pool_forward(cache.x, cache.size, cache.stride)[1])
    net = Net.from_pattern("INPUT(6x6x2) -> CONV(3) -> RELU -> POOL -> FC(3)", dtype="float64")
    assert max(check_net(net).values()) < TOLERANCE
    monkeypatch.setattr(ops, "max_pool_backward", spread)
    assert max(check_net(net).values()) > 1e-3


def test_gradcheck_cli_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "slidenet", "gradcheck", ISSUE_PATTERN],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "passed" in ok.stdout and "conv3.W" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "slidenet", "gradcheck", "INPUT(7x7x1) -> CONV(2, s=3, p=0)"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "2.33" in bad.stderr


def test_a_net_too_large_to_allocate_is_refused_with_a_message():
    with pytest.raises(SlidenetError, match=r"GiB of float32 weights"):
        Net.from_pattern("INPUT(128x128x64) -> FC(1500)")
