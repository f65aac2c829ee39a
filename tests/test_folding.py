"""The inference plan's folded steps (`slidenet.layers.folding`): BATCHNORM folded into the CONV
or FC before it, a merge and its RELU as one step. The oracle is the net's own evaluation
forward, which runs every BATCHNORM as a pass of its own (`ops.batchnorm_forward`), on nets
whose statistics are random, so a fold that got scale, shift or a channel wrong shows."""
import numpy as np
import pytest

from slidenet import Net, ops
from slidenet.bench import RES18
from slidenet.layers import folding
from slidenet.layers.batchnorm import BatchNorm
from slidenet.ops import runtime

RNG = np.random.default_rng(23)
NETS = {
    "residual": "INPUT(12x12x3) -> CONV(8) -> BN -> RELU -> "
                "{ CONV(8) -> BN -> RELU -> CONV(8) -> BN | ID } -> ADD -> RELU -> "
                "{ CONV(16, s=2, p=1, round=down) -> BN -> RELU -> CONV(16) -> BN | "
                "CONV(16, 1x1, s=2, round=down) -> BN } -> ADD -> RELU -> GLOBALAVGPOOL -> FC(5)",
    "concat": "INPUT(10x10x4) -> { CONV(6, 1x1) -> BN -> RELU | CONV(5) -> BN | "
              "{ CONV(4) -> BN -> RELU | ID } -> CONCAT -> MAXPOOL(3x3, s=1, p=1) } -> CONCAT "
              "-> RELU -> POOL -> FC(12) -> BN -> RELU -> FC(3)",
    "grouped": "INPUT(9x9x4) -> CONV(8, g=2) -> BN -> RELU -> DWCONV(3x3, m=2) -> BN -> "
               "CONV(6, 1x1, s=2) -> BN -> RELU -> { BN -> CONV(6) | ID } -> ADD -> FC(4)",
}


def random_net(pattern, dtype="float32", seed=0):
    """A net whose every array is random: weights, biases, gamma, beta and the running
    statistics (variances in [0.3, 3]), as after training."""
    net = Net.from_pattern(pattern, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    for name, p in net.params.items():
        p[...] = rng.normal(1.0 if name.endswith("gamma") else 0.0, 0.3, p.shape)
    for name, b in net.buffers.items():
        b[...] = rng.uniform(0.3, 3, b.shape) if name.endswith("var") else rng.normal(0, 1, b.shape)
    return net


def leaves(steps):
    for step in steps:
        yield from step.parts


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_folded_plan_scores_what_the_unfolded_eval_forward_scores(name, dtype, threads, batch):
    net = random_net(NETS[name], dtype)
    x = RNG.standard_normal((batch, *net.input_shape)).astype(dtype)
    kept = x.copy()
    with runtime.workers(threads):
        want = net.forward(x, train=False)
        got = net.prepare().forward(x)
    tolerance = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * np.abs(want).max())
    np.testing.assert_array_equal(x, kept)      # the in-place sums never write into the input


def test_every_batchnorm_after_a_conv_or_fc_is_folded_away():
    """No BATCHNORM of res18 runs as a step of its own; one that follows no CONV or FC (the
    grouped net's `{ BN -> CONV(6) | ID }`) still does."""
    def standalone(steps):
        found = []
        for step in steps:
            if step.parts[0].merges:
                for branch in step.parts[0].branches:
                    found += standalone(folding.steps(branch))
            elif isinstance(step, BatchNorm):
                found.append(step.name)
        return found
    res18 = Net.from_pattern(RES18)
    plan = res18.prepare()
    assert standalone(step for step, _ in plan.steps) == []
    assert [type(s).__name__ for s, _ in plan.steps][:2] == ["Folded", "MergeRelu"]
    grouped = Net.from_pattern(NETS["grouped"])
    assert standalone(step for step, _ in grouped.prepare().steps) == ["batchnorm4"]


def test_fold_is_the_batchnorm_of_the_conv():
    """base.fold against the definition, on one CONV by hand: BN(conv(x)) = conv'(x)."""
    net = random_net("INPUT(6x6x3) -> CONV(4, bias=yes) -> BN", "float64")
    conv, norm = net.layers
    x = RNG.standard_normal((2, 6, 6, 3))
    y = conv.forward(x, False)
    gamma, beta = norm.params["gamma"], norm.params["beta"]
    mean, var = norm.buffers["running_mean"], norm.buffers["running_var"]
    want = (y - mean) / np.sqrt(var + ops.BATCHNORM_EPSILON) * gamma + beta
    got = conv.prepare(affine=norm.affine())(x)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("relu", [False, True])
def test_the_fused_add_relu_equals_the_layers_one_by_one(relu):
    """ADD -> RELU as one step: the sum written into the projection branch's output and
    rectified there, against the merge's `combine` and the RELU layer run one by one."""
    pattern = ("INPUT(8x8x4) -> { CONV(4) -> RELU | ID | CONV(4, 1x1) } -> ADD"
               + (" -> RELU" if relu else ""))
    net = random_net(pattern)
    x = RNG.standard_normal((3, 8, 8, 4)).astype(np.float32)
    kept = x.copy()
    add = net.layers[0]
    out = add.forward(x, False)
    want = net.layers[1].forward(out, False) if relu else out
    steps = folding.steps(net.layers)
    assert [type(s).__name__ for s in steps] == (["MergeRelu"] if relu else ["Add"])
    got = steps[0].prepare()(x)
    np.testing.assert_array_equal(got, want)    # the same additions in the same order
    np.testing.assert_array_equal(x, kept)
    assert not np.shares_memory(got, x)


def test_add_into_against_numpy():
    a, b, c = (RNG.standard_normal((5, 3, 4, 6)).astype(np.float32) for _ in range(3))
    want = np.maximum((a + b) + c, 0)
    got = ops.add_into(a.copy(), [b, c], relu=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ops.relu_inplace(b.copy()), np.maximum(b, 0))


def test_preparing_changes_no_weight_and_no_gradient():
    """Folding reads the weights and never writes them: a prepared net trains bit for bit as
    its unprepared twin, and the plan is a snapshot of the statistics."""
    pattern = NETS["residual"]
    net, twin = random_net(pattern), random_net(pattern)
    before = {k: v.copy() for k, v in {**net.params, **net.buffers}.items()}
    plan = net.prepare()
    x = RNG.standard_normal((4, 12, 12, 3)).astype(np.float32)
    first = plan.forward(x).copy()
    for k, v in {**net.params, **net.buffers}.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    dscores = RNG.standard_normal((4, 5)).astype(np.float32)
    for n in (net, twin):
        n.forward(x, train=True)
        n.backward(dscores)
    for k in net.grads:
        np.testing.assert_array_equal(net.grads[k], twin.grads[k], err_msg=k)
    net.buffers["batchnorm2.running_mean"] += 5.0     # the plan does not see later changes
    np.testing.assert_array_equal(plan.forward(x), first)


@pytest.mark.parametrize("algorithm, size, depth", [
    ("im2col", (3, 3), 5), ("full", (3, 3), 5), ("winograd", (3, 3), 9), ("winograd4", (3, 3), 9),
    ("winograd4", (3, 1), 3), ("direct", (3, 3), 3), ("im2col", (1, 1), 6)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("numba", [False, True])
def test_conv_infer_adds_the_skip_as_the_sum_after_it_would(algorithm, size, depth, relu, numba):
    """relu(conv(x) + b + skip) in the pass that writes the output, bit for bit the conv's own
    output plus skip, rectified after (output heights 7 and 6: a last F(4, 3) tile that sticks
    out past the output, and one that does not)."""
    from slidenet.ops import compiled
    previous = compiled.set_enabled(numba)
    try:
        for height in (7, 6):
            x = RNG.standard_normal((3, height, 8, depth)).astype(np.float32)
            w = RNG.standard_normal((*size, depth, 16)).astype(np.float32)
            b = RNG.standard_normal(16).astype(np.float32)
            pad = (size[0] // 2, size[1] // 2)
            plain = ops.prepare_conv(w, b, (1, 1), pad, False, algorithm, height)
            fused = ops.prepare_conv(w, b, (1, 1), pad, relu, algorithm, height)
            conv = ops.conv_infer(x, plain)
            skip = RNG.standard_normal(conv.shape).astype(np.float32)
            kept = skip.copy()
            want = conv + skip
            if relu:
                want = np.maximum(want, 0)
            np.testing.assert_array_equal(ops.conv_infer(x, fused, skip=skip), want)
            np.testing.assert_array_equal(skip, kept)
    finally:
        compiled.set_enabled(previous)


def test_a_residual_branch_ends_by_writing_the_block_output():
    """In res18's blocks the last folded CONV of the first branch takes the skip: the plan's
    ADD -> RELU runs no sum of its own (an ADD whose branches all end in a RELU does)."""
    res18 = Net.from_pattern(RES18)
    add = res18.layers[3]
    steps = [folding.steps(branch) for branch in add.branches]
    assert folding.takes_skip(steps[0][-1]) and not folding.takes_skip(steps[0][0])
    assert steps[1] == [] or not folding.takes_skip(steps[1][-1])
    net = random_net("INPUT(6x6x4) -> { CONV(4) -> RELU | CONV(4) -> BN -> RELU } -> ADD -> RELU")
    assert not any(folding.takes_skip(s[-1]) for s in
                   (folding.steps(branch) for branch in net.layers[0].branches))
