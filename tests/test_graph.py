"""Graph nets: branches merged by ADD or CONCAT, grouped and depthwise CONV, padding per side,
rounded windows, padded pooling, global-average-pool heads, and no bias before BATCHNORM.

Oracles: the lecture's loops (`ops.naive`, and loops written here for padded pooling), closed
forms (PyTorch's and TensorFlow's output-size rules written out with math.floor and ceil),
finite differences (`gradcheck`), and the same net computed by hand from its layers.
"""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from harness import check_kernel
from helpers import bars, write_bars
from slidenet import Net, geometry, ops
from slidenet.errors import PatternError
from slidenet.gradcheck import TOLERANCE, check_pattern
from slidenet.model import load, save
from slidenet.notation.pattern import parse
from slidenet.notation.shapes import infer, walk_infos
from slidenet.notation.summary import summary_json, summary_text
from slidenet.ops import compiled, naive

RESIDUAL = ("INPUT(6x6x3) -> CONV(4) -> { CONV(4) -> BN -> RELU -> CONV(4) | ID } -> ADD -> RELU "
            "-> { CONV(6, s=2, p=1, round=down) -> RELU -> CONV(6) | CONV(6, 1x1, s=2, round=down) } -> ADD "
            "-> FC(3)")
INCEPTION = ("INPUT(6x6x4) -> { CONV(2, 1x1) | CONV(3) -> RELU | MAXPOOL(3x3, s=1, p=1) -> "
             "CONV(2, 1x1) } -> CONCAT -> GLOBALAVGPOOL")
GROUPED = ("INPUT(7x7x4) -> CONV(6, g=2) -> RELU -> DWCONV(3x3, s=2, p=same) -> CONV(4, 1x1) "
           "-> BN -> MAXPOOL(3x3, s=2, p=1, round=up) -> DWCONV(m=2) -> FC(3)")


def error(pattern):
    with pytest.raises(PatternError) as caught:
        infer(parse(pattern), pattern)
    return caught.value


# ---- notation ----------------------------------------------------------------------------

def test_branches_parse_nest_and_repeat():
    pattern = "INPUT(8x8x4) -> [{ [CONV(4) -> RELU]*2 | ID } -> ADD]*3 -> FC(2)"
    specs = parse(pattern)
    merges = [s for s in specs if s.branches]
    assert len(specs) == 5 and [s.kind for s in merges] == ["ADD"] * 3
    first, skip = merges[0].branches
    assert [s.text for s in first] == ["CONV(4)", "RELU"] * 2 and [s.kind for s in skip] == ["ID"]
    nested = parse("INPUT(8x8x4) -> { { CONV(2) | ID } -> ADD | CONV(4, 1x1) } -> CONCAT")
    inner = nested[1].branches[0][0]
    assert inner.kind == "ADD" and [b[0].kind for b in inner.branches] == ["CONV", "ID"]


def test_optional_layers_inside_branches_follow_skip_optional():
    pattern = "INPUT(8x8x4) -> { CONV(4) -> BN? | ID } -> ADD"
    kept, skipped = parse(pattern)[1], parse(pattern, skip_optional=True)[1]
    assert [s.kind for s in kept.branches[0]] == ["CONV", "BATCHNORM"]
    assert [s.kind for s in skipped.branches[0]] == ["CONV"]
    assert kept.branches[0][0].bias is False and skipped.branches[0][0].bias is True


@pytest.mark.parametrize("pattern, message, column", [
    ("INPUT(8x8x4) -> { CONV(8) } -> ADD", "two or more branches separated by '|'", 16),
    ("INPUT(8x8x4) -> { CONV(8) | ID } -> FC(2)", "branches must merge: follow the '}' with -> "
     "ADD or CONCAT", 36),
    ("INPUT(8x8x4) -> { CONV(8) | ID }", "branches must merge", 32),
    ("INPUT(8x8x4) -> CONV(3) -> ADD", "ADD merges branches: write them in braces", 27),
    ("INPUT(8x8x4) -> { CONV(8) | } -> ADD", "expected a layer before '}': a branch that keeps "
     "the volume as it is is written ID", 28),
    ("INPUT(8x8x4) -> { CONV(8) | ID", "this '{' is never closed", 16),
    ("INPUT(8x8x4) -> { CONV(8) | ID -> ADD", "ADD merges branches: write them in braces", 34),
    ("INPUT(8x8x4) -> CONV(8) | ID", "this '|' belongs inside braces", 24),
    ("INPUT(8x8x4) -> { INPUT(2x2x1) | ID } -> ADD", "INPUT appears twice", 18),
    ("INPUT(8x8x4) -> { [CONV(8)]*0 | ID } -> ADD", "branch 1 is empty", 40),
    ("INPUT(8x8x4) -> CONV(8, g=3)", "g=3 must divide the 8 filters", 26),
    ("INPUT(8x8x4) -> CONV(6, g=3)", "g=3 must divide the input's depth 4", 16),
    ("INPUT(8x8x4) -> CONV(4, p=1:2:3)", "padding '1:2:3' should be B:A", 26),
    ("INPUT(8x8x4) -> MAXPOOL(3, round=sideways)", "round=sideways should be round=down", 33),
    ("INPUT(8x8x4) -> AVGPOOL(3, s=2, round=up)", "AVGPOOL takes round=down only", 38),
])
def test_graph_mistakes_are_taught_at_their_column(pattern, message, column):
    err = error(pattern)
    assert message in str(err) and err.column == column, (str(err), err.column)


def test_a_sum_of_unequal_volumes_shows_both_and_the_projection_that_fixes_it():
    err = error("INPUT(8x8x4) -> { CONV(8, s=2, p=same) | ID } -> ADD")
    assert ("branch 1 (CONV(8, s=2, p=same)) ends 4 x 4 x 8 and branch 2 (ID) ends 8 x 8 x 4"
            in str(err))
    assert "{ ... | CONV(8, 1x1, s=2, round=down) } -> ADD" in str(err)
    # The fix it names works.
    fixed = "INPUT(8x8x4) -> { CONV(8, s=2, p=same) | CONV(8, 1x1, s=2, round=down) } -> ADD"
    assert infer(parse(fixed), fixed)[-1].output_shape == (4, 4, 8)
    err = error("INPUT(8x8x4) -> { CONV(8, s=2, p=same) | CONV(8, 1x1) } -> CONCAT")
    assert "one height and width" in str(err) and "4 x 4 x 8" in str(err)


# ---- windows that do not tile ------------------------------------------------------------

@pytest.mark.parametrize("n, f, s, p", [(224, 11, 4, 2), (112, 3, 2, 1), (7, 3, 2, 0),
                                        (28, 2, 2, 0), (13, 3, 2, 0), (10, 4, 3, 1)])
def test_rounding_follows_pytorchs_formulas(n, f, s, p):
    down = math.floor((n + 2 * p - f) / s) + 1
    up = math.ceil((n + 2 * p - f) / s) + 1
    if (up - 1) * s >= n + p:           # PyTorch's ceil_mode: no window starts in the padding
        up -= 1
    assert geometry.fit(n, f, s, p, p, "down")[0] == down
    assert geometry.fit(n, f, s, p, p, "up")[0] == up
    out, before, after = geometry.fit(n, f, s, p, p, "up")
    assert (out - 1) * s + f == n + before + after      # the windows end on the padded edge


@pytest.mark.parametrize("n, f, s", [(32, 3, 2), (7, 3, 1), (224, 7, 2), (9, 3, 2), (8, 1, 2)])
def test_same_is_tensorflows(n, f, s):
    before, after = geometry.same_sides(n, f, s)
    total = max((math.ceil(n / s) - 1) * s + f - n, 0)
    assert (before, after) == (total // 2, total - total // 2)
    spec = parse(f"INPUT({n}x{n}x1) -> CONV(1, {f}x{f}, s={s}, p=same)")
    assert infer(spec)[1].output_shape[:2] == (math.ceil(n / s),) * 2


def test_old_patterns_keep_their_meaning_and_their_teaching_error():
    err = error("INPUT(7x7x3) -> CONV(10, 3x3, s=3, p=0) -> FC(10)")
    assert "stride 3 does not tile the height: (7 - 3) / 3 + 1 = 2.33" in str(err)
    err = error("INPUT(224x224x3) -> CONV(96, 11x11, s=4, p=2)")
    assert "(224 + 2*2 - 11) / 4 + 1 = 55.25" in str(err)
    infos = infer(parse("INPUT(224x224x3) -> CONV(96, 11x11, s=4, p=2, round=down)"))
    assert infos[1].output_shape == (55, 55, 96)
    assert infos[1].size_formulas[0] == "floor((224 + 2*2 - 11) / 4) + 1 = 55"
    # Odd filters at stride 1 with p=same: the lecture's padding, the lecture's line.
    infos = infer(parse("INPUT(7x7x1) -> CONV(4, 5x5, p=same)"))
    assert infos[1].size_formulas[0] == "(7 + 2*2 - 5) / 1 + 1 = 7"


def test_per_side_padding_shapes_and_formula():
    infos = infer(parse("INPUT(8x7x1) -> CONV(2, 3x3, s=2, p=0:1x1)"))
    assert infos[1].output_shape == (4, 4, 2)
    assert infos[1].size_formulas == ("(8 + 0 + 1 - 3) / 2 + 1 = 4", "(7 + 2*1 - 3) / 2 + 1 = 4")
    x = np.random.default_rng(0).standard_normal((2, 8, 7, 1))
    net = Net.from_pattern("INPUT(8x7x1) -> CONV(2, 3x3, s=2, p=0:1x1)", dtype="float64")
    padded = np.pad(x, ((0, 0), (0, 1), (1, 1), (0, 0)))
    want = naive.conv_forward(padded, net.params["conv1.W"], net.params["conv1.b"], (2, 2))
    np.testing.assert_allclose(net.forward(x), want, rtol=1e-12)


def _pool_loops(x, size, stride, before, out, reduce):
    """Pooling as loops over the cells of each window that lie in x (padding is skipped by a
    max; an average counts it as zeros, as PyTorch's count_include_pad)."""
    n, h, w, d = x.shape
    result = np.zeros((n, *out, d))
    for i in range(out[0]):
        for j in range(out[1]):
            r0, c0 = i * stride[0] - before[0], j * stride[1] - before[1]
            rows = slice(max(r0, 0), min(r0 + size[0], h))
            cols = slice(max(c0, 0), min(c0 + size[1], w))
            cells = x[:, rows, cols, :]
            result[:, i, j] = cells.max(axis=(1, 2)) if reduce == "max" else \
                cells.sum(axis=(1, 2)) / (size[0] * size[1])
    return result


@pytest.mark.parametrize("text, kind", [("MAXPOOL(3x3, s=2, p=1, round=down)", "max"),
                                        ("MAXPOOL(3x3, s=2, round=up)", "max"),
                                        ("MAXPOOL(3x2, s=2, p=0:1)", "max"),
                                        ("AVGPOOL(3x3, s=2, p=1, round=down)", "avg")])
def test_padded_pooling_against_loops(text, kind):
    x = np.random.default_rng(0).standard_normal((2, 8, 7, 3)) - 2    # mostly negative
    net = Net.from_pattern(f"INPUT(8x7x3) -> {text}", dtype="float64")
    layer = net.layers[0]
    want = _pool_loops(x, layer.info.spec.size, layer.info.spec.stride, layer.sides.before,
                       layer.sides.out, kind)
    np.testing.assert_allclose(net.forward(x).reshape(want.shape), want, rtol=1e-12)
    errors = check_pattern(f"INPUT(8x7x3) -> {text} -> FC(2)")
    assert max(errors.values()) < TOLERANCE


# ---- grouped and depthwise kernels -------------------------------------------------------

@pytest.mark.parametrize("depth, filters, groups, stride, pad", [
    (4, 6, 2, (1, 1), (1, 1)), (6, 6, 3, (2, 1), (0, 1)), (5, 5, 5, (1, 1), (1, 1)),
    (3, 6, 3, (2, 2), (1, 0)), (4, 4, 1, (1, 1), (0, 0))])
def test_grouped_conv_kernel(depth, filters, groups, stride, pad):
    rng = np.random.default_rng(depth * filters)
    x = rng.standard_normal((2, 7, 5, depth))
    w = rng.standard_normal((3, 3, depth // groups, filters))
    b = rng.standard_normal(filters)
    check_kernel(lambda x, w, b: ops.grouped_conv_forward(x, w, b, stride, pad, groups),
                 ops.grouped_conv_backward, {"x": x, "w": w, "b": b}, wrt=("x", "w", "b"),
                 naive=lambda x, w, b: naive.conv_forward(x, w, b, stride, pad, groups),
                 naive_backward=lambda dout, x, w, b: naive.conv_backward(
                     dout, x, w, stride, pad, groups))


def test_naive_grouped_conv_is_per_group_convolution():
    # The oracle itself, against the lecture's convolution run on each group's channels.
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((1, 5, 5, 4)), rng.standard_normal((3, 3, 2, 6)), np.zeros(6)
    got = naive.conv_forward(x, w, b, (1, 1), (1, 1), 2)
    want = np.concatenate([naive.conv_forward(x[..., :2], w[..., :3], b[:3], (1, 1), (1, 1)),
                           naive.conv_forward(x[..., 2:], w[..., 3:], b[3:], (1, 1), (1, 1))], 3)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_grouped_and_depthwise_parameters():
    infos = infer(parse("INPUT(8x8x32) -> CONV(64, g=4) -> DWCONV -> DWCONV(5x5, m=2) -> "
                        "CONV(64, g=64)"))
    assert [i.params for i in infos[1:]] == [64 * (9 * 8 + 1), 64 * (9 + 1), 128 * (25 + 1),
                                             64 * (9 * 2 + 1)]
    assert infos[1].params_formula == "64 x (3*3*32/4 + 1) = 4,672"
    assert [i.output_shape[2] for i in infos[1:]] == [64, 64, 128, 64]


# ---- whole nets: gradients, fusion, bias, heads -----------------------------------------

@pytest.mark.parametrize("pattern", [RESIDUAL, INCEPTION, GROUPED])
def test_gradcheck_on_graph_nets(pattern):
    errors = check_pattern(pattern)
    assert max(errors.values()) < TOLERANCE, errors
    assert "input" in errors and len(errors) == 1 + len(Net.from_pattern(pattern).params)


def test_a_residual_net_equals_its_layers_by_hand():
    net = Net.from_pattern("INPUT(5x5x2) -> CONV(3) -> { CONV(3) -> RELU -> CONV(3) | ID } -> "
                           "ADD -> { CONV(2, 1x1) | AVGPOOL(3x3, s=1, p=1) } -> CONCAT -> FC(2)",
                           dtype="float64", seed=4)
    p = net.params
    x = np.random.default_rng(5).standard_normal((3, 5, 5, 2))
    a = naive.conv_forward(x, p["conv1.W"], p["conv1.b"], (1, 1), (1, 1))
    f = naive.conv_forward(np.maximum(naive.conv_forward(a, p["conv2.W"], p["conv2.b"], (1, 1),
                                                         (1, 1)), 0),
                           p["conv3.W"], p["conv3.b"], (1, 1), (1, 1))
    a = a + f
    padded = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
    pooled = naive.pool_forward(padded, (3, 3), (1, 1), "avg")
    a = np.concatenate([naive.conv_forward(a, p["conv4.W"], p["conv4.b"], (1, 1), (0, 0)),
                        pooled], axis=3)
    want = naive.fc_forward(a, p["fc1.W"], p["fc1.b"])
    np.testing.assert_allclose(net.forward(x), want, rtol=1e-10)
    np.testing.assert_allclose(net.prepare().forward(x), want, rtol=1e-10)


@pytest.mark.parametrize("pattern", [RESIDUAL, INCEPTION, GROUPED])
def test_no_step_writes_into_the_gradient_it_is_given(pattern):
    # ADD hands every branch the same gradient array, not a copy each: that is right only if
    # no step's backward writes into its dout. Every step here gets a read-only one (NumPy
    # paths: the compiled passes write only the arrays they are given to fill).
    net = Net.from_pattern(pattern, dtype="float64")
    steps = [step for layer in net.every_layer() if layer.merges
             for branch in layer.branch_steps for step in branch] + list(net.steps)
    for step in steps:
        def frozen(dout, *args, _backward=step.backward, **kwargs):
            dout = dout.view()
            dout.flags.writeable = False
            return _backward(dout, *args, **kwargs)
        step.backward = frozen
    x = np.random.default_rng(3).standard_normal((2, *net.input_shape))
    previous = compiled.set_enabled(False)
    try:
        scores = net.forward(x, train=True)
        net.backward(np.ones_like(scores))
    finally:
        compiled.set_enabled(previous)
    assert all(np.isfinite(g).all() for g in net.grads.values())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_residual_sum_added_by_the_first_conv_backward_is_the_plain_sum(dtype, monkeypatch):
    # A block whose first branch starts on a bare CONV: the other branch's gradient is added
    # as the CONV's backward writes its dx (F(4x4, 3x3)'s output pass for 3x3 at stride 1 and
    # 8 channels, after the pair for a stride-2 CONV padded per side, a grouped CONV). Every
    # gradient, the input's included, must be the bits of the two dx's summed after.
    from slidenet.layers import merge
    pattern = ("INPUT(8x8x8) -> { CONV(8) -> BN -> RELU -> CONV(8) -> BN | ID } -> ADD -> RELU "
               "-> { CONV(16, s=2, p=1, round=down) -> BN -> RELU -> CONV(16) -> BN | "
               "CONV(16, 1x1, s=2, round=down) -> BN } -> ADD -> RELU "
               "-> { CONV(16, g=4) -> RELU | ID } -> ADD -> GLOBALAVGPOOL -> FC(3)")
    x = np.random.default_rng(8).standard_normal((4, 8, 8, 8)).astype(dtype)
    assert merge._takes_skip(Net.from_pattern(pattern, dtype=dtype).layers[0].branch_steps[0])
    results, algorithms = [], []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(merge, "_takes_skip", lambda steps: False)
        net = Net.from_pattern(pattern, seed=2, dtype=dtype)
        scores = net.forward(x, train=True)
        algorithms.append(net.layers[0].branch_steps[0][0].cache.algorithm)
        dx = net.backward(np.ones_like(scores), input_grad=True)
        results.append((dx.copy(), {k: g.copy() for k, g in net.grads.items()}))
    (dx_fused, grads_fused), (dx_plain, grads_plain) = results
    np.testing.assert_array_equal(dx_fused, dx_plain)
    for key in grads_plain:
        np.testing.assert_array_equal(grads_fused[key], grads_plain[key], err_msg=key)
    if dtype == "float32" and compiled.kernels() is not None:
        assert algorithms == ["winograd2d"] * 2          # the output pass's skip was exercised


def test_fused_branches_equal_unfused_layers():
    net = Net.from_pattern(INCEPTION, dtype="float64")
    assert type(net.layers[0].branch_steps[1][0]).__name__ == "ConvRelu"
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 4))
    np.testing.assert_allclose(net.forward(x), net.activations(x)[-1][1].reshape(2, -1),
                               rtol=1e-12)


def test_conv_or_fc_before_batchnorm_has_no_bias():
    net = Net.from_pattern("INPUT(6x6x2) -> CONV(4) -> BN -> RELU -> CONV(4) -> FC(8) -> "
                           "BATCHNORM -> FC(3)")
    assert "conv1.b" not in net.params and "conv2.b" in net.params
    assert "fc1.b" not in net.params and "fc2.b" in net.params
    assert net.dropped_biases() == {"conv1.b": "batchnorm1", "fc1.b": "batchnorm2"}
    info = net.infos[1]
    assert info.params == 4 * 3 * 3 * 2 and "no bias" in info.params_formula
    errors = check_pattern(net.pattern)
    assert max(errors.values()) < TOLERANCE


def test_a_net_may_end_on_a_global_average_pool():
    net = Net.from_pattern("INPUT(6x6x3) -> CONV(5, 1x1) -> RELU -> GLOBALAVGPOOL", seed=1)
    x = np.random.default_rng(0).standard_normal((4, 6, 6, 3)).astype(np.float32)
    scores = net.forward(x)
    assert scores.shape == (4, 5) and net.num_outputs == 5
    by_hand = np.maximum(np.einsum("nhwd,dk->nhwk", x, net.params["conv1.W"][0, 0])
                         + net.params["conv1.b"], 0).mean(axis=(1, 2))
    np.testing.assert_allclose(scores, by_hand, rtol=1e-5, atol=1e-6)
    assert net.backward(np.ones((4, 5), np.float32)).shape == x.shape


# ---- summary -----------------------------------------------------------------------------

def test_summary_shows_branches_indented_with_their_numbers():
    infos = infer(parse(RESIDUAL), RESIDUAL)
    text = summary_text(infos)
    lines = text.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("  branch 1 of add1"))
    assert lines[title + 1].startswith("    conv2 ") and "no bias" in lines[title + 1]
    assert any(line.startswith("add1 ") and "6x6x4 + 6x6x4" in line for line in lines)
    every = list(walk_infos(infos))
    total = sum(i.params for i in every)
    assert f"total parameters:        {total:,}" in text
    assert total == sum(a.size for a in Net.from_pattern(RESIDUAL).params.values())
    # The merge sees what its widest branch sees: conv2 -> conv3 after conv1 is 7x7, capped 6.
    add = infos[2]
    assert add.receptive_field == tuple(max(b[-1].receptive_field[a] for b in add.branches)
                                        for a in range(2))
    data = summary_json(infos)
    assert data["total_madds"] == sum(i.madds for i in every)
    assert [layer["name"] for layer in data["layers"][2]["branches"][1]] == ["id1"]
    json.dumps(data)


# ---- training, files, commands -----------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "slidenet", *args], capture_output=True,
                          text=True)


def test_graph_model_trains_saves_loads_evaluates_and_predicts(tmp_path):
    data = write_bars(tmp_path / "bars.npz", 150)
    xt, _ = bars(60, seed=1)
    pattern = ("INPUT(8x8x1) -> CONV(8) -> BN -> RELU -> { CONV(8) -> RELU -> CONV(8, g=2) | ID } "
               "-> ADD -> RELU -> { CONV(4, 1x1) | DWCONV(3x3, p=same) } -> CONCAT -> "
               "MAXPOOL(3x3, s=2, p=1, round=down) -> CONV(3, 1x1) -> GLOBALAVGPOOL")
    out = tmp_path / "run"
    r = run_cli("train", "--pattern", pattern, "--data", data, "--epochs", "6",
                "--batch-size", "16", "--lr", "1e-2", "--no-augment", "--out", str(out))
    assert r.returncode == 0, r.stderr
    r = run_cli("eval", str(out / "best.npz"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] > 0.7
    model = load(str(out / "best.npz"))
    assert "conv1.b" not in model.net.params and "conv4.W" in model.net.params
    again = tmp_path / "again.npz"
    save(str(again), model.net, model.normalizer, model.class_names)
    np.testing.assert_array_equal(load(str(again)).scores(xt[:5]), model.scores(xt[:5]))
    r = run_cli("train", "--resume", str(out / "model.npz"), "--epochs", "7")
    assert r.returncode == 0, r.stderr


def test_serve_explains_a_sum_by_its_branches_and_a_concatenation_by_its_source():
    from slidenet.data.normalize import Normalizer
    from slidenet.model import Model
    from slidenet.serve.explain import Explainer
    net = Net.from_pattern("INPUT(6x6x1) -> CONV(3) -> { CONV(3) -> RELU | ID } -> ADD -> "
                           "{ CONV(2, 1x1) | MAXPOOL(3x3, s=1, p=1) } -> CONCAT -> FC(2)", seed=3)
    model = Model(net, Normalizer(np.array([0.5], np.float32), np.array([0.25], np.float32)),
                  {"pattern": net.pattern, "class_names": ["a", "b"]})
    pixels = np.random.default_rng(0).integers(0, 256, (6, 6, 1)).astype(np.uint8)
    explainer = Explainer(model)
    x = model.normalizer.normalize(pixels[None])
    conv1 = net.layers[0].forward(x, False)
    add = explainer.unit(pixels, "add1", 2, 4, 1)["explanation"]
    skip = conv1[0, 2, 4, 1]
    branch = np.maximum(net.layers[1].branches[0][0].forward(conv1, False), 0)[0, 2, 4, 1]
    assert add["form"] == "sum" and [p["text"] for p in add["parts"]] == ["CONV(3) -> RELU", "ID"]
    np.testing.assert_allclose([p["value"] for p in add["parts"]], [branch, skip], rtol=1e-6)
    answer = explainer.unit(pixels, "concat1", 3, 1, 4)
    concat = answer["explanation"]
    assert concat["form"] == "concat" and concat["branch"] == 2 and concat["channel_in_branch"] == 2
    assert concat["text"] == "MAXPOOL(3x3, s=1, p=1)" and concat["depths"] == [2, 3]
    np.testing.assert_allclose(concat["value"], answer["activation"], rtol=1e-6)
    # The page's layer list names each merge with its branches, and counts their weights.
    described = explainer.describe()
    assert described["layers"][1]["text"] == "{ CONV(3) -> RELU | ID } -> ADD"
    assert described["params"] == sum(a.size for a in net.params.values())


def test_a_units_field_through_branches_is_where_its_gradient_reaches():
    from slidenet.viz.patches import fields
    pattern = ("INPUT(13x13x1) -> CONV(2, 3x3) -> { CONV(2, 3x3, s=2, p=1, round=down) -> "
               "CONV(2, 5x5) | CONV(2, 1x1, s=2, round=down) } -> ADD -> "
               "{ ID | AVGPOOL(3x3, s=1, p=1) } -> CONCAT")
    net = Net.from_pattern(pattern, dtype="float64", seed=2)
    x = np.random.default_rng(0).standard_normal((1, 13, 13, 1))
    out = net.forward(x, train=True)
    height, width = fields(net.infos, len(net.infos) - 1)
    for i, j in ((0, 0), (3, 2), (6, 6)):
        dout = np.zeros_like(out)
        dout[0, i, j, 3] = 1.0          # an AVGPOOL channel: the widest branch (the ID's
                                        # channels 0 and 1 see only what ADD's output sees)
        net.forward(x, train=True)
        reach = np.nonzero(np.abs(net.backward(dout))[0, :, :, 0] > 0)
        rows = [max(v, 0) for v in height.window(i)]
        cols = [max(v, 0) for v in width.window(j)]
        # The gradient reaches exactly the field (clipped to the image), for generic weights.
        assert (reach[0].min(), reach[0].max() + 1) == (rows[0], min(rows[1], 13))
        assert (reach[1].min(), reach[1].max() + 1) == (cols[0], min(cols[1], 13))
