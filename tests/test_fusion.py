"""Fused steps (CONV -> RELU, FC -> RELU, CONV -> RELU -> MAXPOOL, RELU -> MAXPOOL) against the
same layers run one by one: the same outputs, the same gradients, ties and all-zero windows
included."""
import sys

import numpy as np
import pytest

from slidenet.layers import fusion
from slidenet.net import Net

RNG = np.random.default_rng(7)
SMALL = "INPUT(10x10x3) -> [CONV(4) -> RELU]*2 -> POOL -> CONV(6, 3x3, s=2, p=1) -> RELU -> FC(8) -> RELU -> FC(3)"
POOLS = ("INPUT(9x9x2) -> CONV(3) -> RELU -> MAXPOOL(3x3, s=2) -> CONV(4) -> RELU -> POOL "
         "-> CONV(2) -> RELU -> AVGPOOL(2x2, s=1) -> FC(3)")
NORMED = "INPUT(8x8x2) -> CONV(3) -> BATCHNORM -> RELU -> POOL -> FC(6) -> RELU -> FC(3)"
# Residual blocks and their RELUs (AddRelu), one nested inside a branch, three branches in one.
BLOCKS = ("INPUT(6x6x2) -> CONV(3) -> { CONV(3) -> BN -> RELU -> CONV(3) | ID } -> ADD -> RELU -> "
          "{ { CONV(3) | ID } -> ADD -> RELU | CONV(3, 1x1) | ID } -> ADD -> RELU -> FC(3)")


def steps(pattern):
    return [type(step).__name__ for step in Net.from_pattern(pattern).steps]


def test_which_runs_are_fused():
    assert steps("INPUT(6x6x1) -> CONV(2) -> RELU -> POOL -> RELU -> FC(4) -> TANH -> FC(2) -> RELU") == \
        ["ConvReluMaxPool", "Relu", "FC", "Tanh", "FCRelu"]
    assert steps(NORMED) == ["Conv", "BatchNormRelu", "MaxPool", "FCRelu", "FC"]
    assert steps("INPUT(6x6x1) -> CONV(2) -> RELU -> AVGPOOL -> FC(2)") == ["ConvRelu", "AvgPool", "FC"]
    assert fusion.fuse([]) == []
    assert steps(BLOCKS) == ["Conv", "AddRelu", "AddRelu", "FC"]


def unfused(pattern):
    net = Net.from_pattern(pattern, dtype="float64")
    net.steps = list(net.layers)            # every layer as its own step
    return net


@pytest.mark.parametrize("pattern", [SMALL, POOLS, NORMED, BLOCKS])
def test_fused_net_matches_the_layers_one_by_one(pattern):
    fused, plain = Net.from_pattern(pattern, dtype="float64"), unfused(pattern)
    h, w, d = fused.input_shape
    # Integer inputs: ties and windows that are all zero after the ReLU.
    x = RNG.integers(-1, 2, (4, h, w, d)).astype(np.float64)
    ds = RNG.standard_normal((4, 3))
    for _ in range(2):      # a training step, then evaluation, then training again
        np.testing.assert_allclose(fused.forward(x, train=True), plain.forward(x, train=True), rtol=1e-12)
        np.testing.assert_allclose(fused.backward(ds), plain.backward(ds), rtol=1e-10, atol=1e-12)
        for name in plain.grads:
            np.testing.assert_allclose(fused.grads[name], plain.grads[name], rtol=1e-10, atol=1e-12,
                                       err_msg=name)
        np.testing.assert_allclose(fused.forward(x), plain.forward(x), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pattern", [BLOCKS, NORMED])
def test_fused_relus_are_bit_for_bit_the_layers(pattern, dtype):
    # ADD -> RELU and BATCHNORM -> RELU make the same sums and the same masks as the layers.
    fused, plain = Net.from_pattern(pattern, dtype=dtype), Net.from_pattern(pattern, dtype=dtype)
    plain.steps = list(plain.layers)
    x = RNG.standard_normal((3, *fused.input_shape)).astype(dtype)
    ds = RNG.standard_normal((3, 3)).astype(dtype)
    np.testing.assert_array_equal(fused.forward(x, train=True), plain.forward(x, train=True))
    np.testing.assert_array_equal(fused.backward(ds), plain.backward(ds))
    for name in plain.grads:
        np.testing.assert_array_equal(fused.grads[name], plain.grads[name], err_msg=name)


def test_activations_show_each_layer_unfused():
    net = Net.from_pattern(SMALL, dtype="float64")
    kept = dict(net.activations(RNG.standard_normal((3, 10, 10, 3))))
    # A CONV's activations are its maps before the ReLU that the fused step applies.
    assert (kept["conv1"] < 0).any() and not (kept["relu1"] < 0).any()
    np.testing.assert_array_equal(kept["relu1"], np.maximum(kept["conv1"], 0))


def test_input_grad_false_skips_only_the_first_dx():
    net = Net.from_pattern(SMALL)
    x = RNG.standard_normal((2, 10, 10, 3)).astype(np.float32)
    ds = RNG.standard_normal((2, 3)).astype(np.float32)
    net.forward(x, train=True)
    dx = net.backward(ds)
    grads = {k: g.copy() for k, g in net.grads.items()}
    net.forward(x, train=True)
    assert net.backward(ds, input_grad=False) is None and dx.shape == x.shape
    for name, g in grads.items():
        np.testing.assert_allclose(net.grads[name], g, rtol=1e-4, atol=1e-6)


def test_conv_relu_maxpool_frees_the_conv_output_before_the_conv_backward():
    # The pool's backward is the last use of the CONV's output; once it has run, that array
    # must be free for the CONV's dx (runtime.empty reuses memory nobody references).
    net = Net.from_pattern("INPUT(8x8x2) -> CONV(3) -> RELU -> POOL -> FC(3)", dtype="float64")
    step = net.steps[0]
    conv, _, pool = step.parts
    net.forward(RNG.standard_normal((2, 8, 8, 2)), train=True)
    out = conv.cache.out
    assert out is not None and pool.cache.x is out
    holders = sys.getrefcount(out)
    seen = {}
    original = conv.backward

    def spy(dout, need_dx=True, relu=False):
        seen["refs"] = sys.getrefcount(out)
        return original(dout, need_dx, relu)
    conv.backward = spy
    net.backward(RNG.standard_normal((2, 3)))
    assert seen["refs"] == holders - 2      # neither the CONV's cache nor the pool's holds it
