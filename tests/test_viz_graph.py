"""`slidenet viz` through branches: filters, activations and patches of a graph net's layers.

Oracles: a branch's layers run by hand with the lecture's loops (`ops.naive`); the pixels that
change a unit when each input pixel is nudged (finite differences on a net of positive weights,
so every path that reaches the unit shows); the summary's receptive field column; a brute-force
search of the activations for the top patches; finite differences of the objective that
`maximize` climbs.
"""
import numpy as np
import pytest
from PIL import Image

from helpers import bars, one_line_error, write_bars
from slidenet import Net
from slidenet.cli import main
from slidenet.model import load
from slidenet.notation import zoo
from slidenet.notation.pattern import parse
from slidenet.notation.shapes import infer, walk_infos
from slidenet.ops import naive
from slidenet.viz.activations import activation_maps, activations_figure
from slidenet.viz.filters import filters_figure
from slidenet.viz.maximize import objective_and_gradient
from slidenet.viz.patches import fields, patches_figure, top_patches
from slidenet.viz.probe import forward_to, pick_layer

# A residual block with a grouped CONV, a pool, then a concatenation with a depthwise branch.
GRAPH = ("INPUT(12x12x1) -> CONV(4) -> RELU -> { CONV(4, g=2) -> RELU -> CONV(4) | ID } -> ADD "
         "-> RELU -> POOL -> { CONV(6, 1x1) | DWCONV(3x3) -> CONV(2, 1x1) } -> CONCAT -> FC(3)")
BRANCH_LAYERS = ["conv2", "relu2", "conv3", "id1", "conv4", "dwconv1", "conv5"]


def drawn(fig, label=None):
    axes = [ax for ax in fig.axes if ax.images and (label is None or ax.get_label() == label)]
    return np.ma.getdata(axes[0].images[0].get_array())


@pytest.fixture(scope="module")
def graph():
    net = Net.from_pattern(GRAPH, seed=3, dtype="float64")
    x = np.random.default_rng(0).standard_normal((2, 12, 12, 1))
    return net, x


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """GRAPH trained for 1 epoch on 12x12 bars: a model file, its data and test images."""
    from slidenet.training.loop import TrainConfig, train
    folder = tmp_path_factory.mktemp("graphviz")
    spec = write_bars(folder / "bars.npz", 240, size=12)
    train(TrainConfig(pattern=GRAPH, data=spec, epochs=1, batch_size=16, lr=3e-3, seed=0,
                      out=str(folder / "run")), log=lambda *_: None)
    model = load(str(folder / "run" / "model.npz"))
    x, y = bars(40, seed=1, size=12)
    return {"path": str(folder / "run" / "model.npz"), "data": spec, "folder": folder,
            "model": model, "x": x, "y": y}


# ----------------------------------------------------------------------------- activations

def by_hand(net, x):
    """Every layer's output of GRAPH, computed with the lecture's loops from the weights."""
    p = net.params
    out = {}
    out["conv1"] = naive.conv_forward(x, p["conv1.W"], p["conv1.b"], pad=(1, 1))
    out["relu1"] = naive.relu_forward(out["conv1"])
    out["conv2"] = naive.conv_forward(out["relu1"], p["conv2.W"], p["conv2.b"], pad=(1, 1),
                                      groups=2)
    out["relu2"] = naive.relu_forward(out["conv2"])
    out["conv3"] = naive.conv_forward(out["relu2"], p["conv3.W"], p["conv3.b"], pad=(1, 1))
    out["id1"] = out["relu1"]
    out["add1"] = out["conv3"] + out["id1"]
    out["relu3"] = naive.relu_forward(out["add1"])
    out["maxpool1"] = naive.pool_forward(out["relu3"], (2, 2), (2, 2))
    out["conv4"] = naive.conv_forward(out["maxpool1"], p["conv4.W"], p["conv4.b"])
    out["dwconv1"] = naive.conv_forward(out["maxpool1"], p["dwconv1.W"], p["dwconv1.b"],
                                        pad=(1, 1), groups=4)
    out["conv5"] = naive.conv_forward(out["dwconv1"], p["conv5.W"], p["conv5.b"])
    out["concat1"] = np.concatenate([out["conv4"], out["conv5"]], axis=-1)
    out["fc1"] = naive.fc_forward(out["concat1"], p["fc1.W"], p["fc1.b"])
    return out


def test_every_layers_output_through_the_branches_is_the_branch_run_by_hand(graph):
    net, x = graph
    kept = net.activations(x, branches=True)
    expected = by_hand(net, x)
    assert [name for name, _ in kept] == ["input"] + [lay.name for lay in net.every_layer()]
    for name, array in kept[1:]:
        np.testing.assert_allclose(array, expected[name], rtol=1e-10, atol=1e-12, err_msg=name)
    # Its current callers see what they saw: the top-level chain, the same arrays.
    top = net.activations(x)
    assert [name for name, _ in top] == ["input"] + [lay.name for lay in net.layers]
    every = dict(kept)
    for name, array in top:
        np.testing.assert_allclose(array, every[name], rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(net.forward(x), expected["fc1"], rtol=1e-10)


def test_a_chain_nets_activations_are_the_same_with_or_without_branches():
    net = Net.from_pattern("INPUT(8x8x1) -> CONV(3) -> RELU -> POOL -> FC(2)", seed=1)
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 1)).astype(np.float32)
    plain, every = net.activations(x), net.activations(x, branches=True)
    assert [n for n, _ in plain] == [n for n, _ in every]
    for (_, a), (_, b) in zip(plain, every):
        np.testing.assert_array_equal(a, b)


def test_forward_to_a_branch_layer_is_its_output(graph):
    net, x = graph
    expected = by_hand(net, x)
    for name in BRANCH_LAYERS + ["add1", "concat1"]:
        np.testing.assert_allclose(forward_to(net, x, name), expected[name], rtol=1e-10,
                                   atol=1e-12, err_msg=name)


def test_activation_figure_draws_branch_layers_with_their_own_maps(graph):
    net, x = graph
    expected = by_hand(net, x[:1])
    maps = activation_maps(net, x[0])
    assert [info.name for info, _ in maps] == [
        "conv1", "relu1", "conv2", "relu2", "conv3", "add1", "relu3", "maxpool1", "conv4",
        "dwconv1", "conv5", "concat1"]
    fig = activations_figure(net, x[0])
    for info, array in maps:
        np.testing.assert_allclose(array, expected[info.name][0], rtol=1e-10, atol=1e-12)
        image, layout = drawn(fig, info.name), fig.tiles[info.name]
        for c in range(layout.count):
            np.testing.assert_array_equal(layout.tile(image, c), array[:, :, c])
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_label() == "conv3"]
    assert titles[0].startswith("conv3 (branch 1 of add1)  CONV(4)")
    one = activations_figure(net, x[0], layer="dwconv1")
    assert list(one.tiles) == ["dwconv1"]
    np.testing.assert_allclose(one.tiles["dwconv1"].tile(drawn(one, "dwconv1"), 3),
                               expected["dwconv1"][0, :, :, 3], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------- filters

def test_a_grouped_branch_convs_filters_are_its_weights_by_group(graph):
    net, _ = graph
    w = net.params["conv2.W"]                      # (3, 3, 2, 4): 2 groups of 2 channels
    fig = filters_figure(net, "conv2")
    layout = fig.tiles["conv2"]
    assert (layout.count, layout.rows, layout.cols) == (8, 4, 2)
    image = drawn(fig)
    for f in range(4):
        for c in range(2):
            np.testing.assert_array_equal(layout.tile(image, f * 2 + c), w[:, :, c, f])
    assert "2 groups" in fig.axes[0].get_title()


def test_depthwise_filters_are_one_tile_each(graph):
    net, _ = graph
    w = net.params["dwconv1.W"]                    # (3, 3, 1, 4)
    fig = filters_figure(net, "dwconv1")
    layout = fig.tiles["dwconv1"]
    assert layout.count == 4 and layout.rows == 1
    image = drawn(fig)
    for k in range(4):
        np.testing.assert_array_equal(layout.tile(image, k), w[:, :, 0, k])
    assert "depthwise" in fig.axes[0].get_title()


def test_filters_in_pixel_space_follow_the_path_through_a_merge():
    # conv1 in a branch reads the image itself: RGB tiles. conv3, after a residual block that
    # keeps the shape, reads maps: a grid of filters by input channel.
    net = Net.from_pattern("INPUT(8x8x3) -> { CONV(4) | CONV(3, 1x1) -> RELU -> CONV(4) } -> "
                           "ADD -> { CONV(4, p=1) | ID } -> ADD -> CONV(2)", seed=2)
    first = filters_figure(net, "conv1")
    assert first.tiles["conv1"].count == 4 and drawn(first).shape[-1] == 3
    fig = filters_figure(net, "conv5")
    assert (fig.tiles["conv5"].rows, fig.tiles["conv5"].cols) == (2, 4)
    assert filters_figure(net).tiles.keys() == {"conv1"}


# -------------------------------------------------------------------------- receptive fields

# Positive weights, average pooling and no RELU: every pixel of a unit's field reaches it.
# Padding that differs per side shifts one branch's field off the other's (add1): the union is
# larger than either branch's. p=same at stride 2 on an even size pads only after.
FIELDS = [("INPUT(20x20x1) -> CONV(2, 3x3, p=1) -> { CONV(2, 2x2, p=0:1) | CONV(2, 2x2, p=1:0) } "
           "-> ADD -> { CONV(2, 3x3, p=1) -> AVGPOOL(2) -> CONV(2, 3x3, p=1) | CONV(2, 2x2, s=2) } "
           "-> ADD -> { CONV(2, 3x3, p=1, g=2) | ID } -> ADD -> { CONV(2, 1x1) | DWCONV(3x3, "
           "p=same) } -> CONCAT -> AVGPOOL(3x3, s=2, p=same) -> CONV(2, 3x3, s=2, p=same)", 17),
          ("INPUT(8x8x1) -> AVGPOOL(3x3, s=2, p=same) -> CONV(2, 2x2, p=0:1)", 2),
          # Branches inside a branch.
          ("INPUT(9x9x1) -> CONV(2) -> { CONV(2) -> { CONV(2, 5x5, p=2) | AVGPOOL(3x3, s=1, "
           "p=1) } -> ADD | ID } -> ADD -> CONV(1, 3x3, s=2, p=1)", 8)]


@pytest.mark.parametrize("pattern, layers", FIELDS)
def test_receptive_fields_through_branches_are_the_pixels_that_move_a_unit(pattern, layers):
    net = Net.from_pattern(pattern, dtype="float64")
    for name in net.params:
        net.params[name][...] = 1.0
    side = net.input_shape[0]
    pixels = side * side
    x = np.ones((1, side, side, 1))
    nudged = np.repeat(x, pixels, axis=0)
    nudged[np.arange(pixels), np.arange(pixels) // side, np.arange(pixels) % side, 0] += 1.0
    checked = 0
    for info in list(walk_infos(net.infos))[1:]:
        if len(info.output_shape) != 3:
            continue
        # Any channel: a CONCAT channel sees only its own branch's field, inside the union.
        base = forward_to(net, x, info.name)
        moved = (forward_to(net, nudged, info.name) != base).any(axis=-1)   # (pixels, H', W')
        field_h, field_w = fields(net.infos, info.name)
        for i in range(info.output_shape[0]):
            for j in range(info.output_shape[1]):
                rows, cols = field_h.window(i), field_w.window(j)
                reached = moved[:, i, j].reshape(side, side)
                # The window is the smallest rectangle holding every pixel that moves the unit
                # (the union of two shifted squares leaves its corners out).
                seen_rows, seen_cols = np.flatnonzero(reached.any(1)), np.flatnonzero(reached.any(0))
                assert (seen_rows[0], seen_rows[-1] + 1) == (max(rows[0], 0), min(rows[1], side)), \
                    f"{info.name} unit ({i}, {j})"
                assert (seen_cols[0], seen_cols[-1] + 1) == (max(cols[0], 0), min(cols[1], side)), \
                    f"{info.name} unit ({i}, {j})"
        # Its size is the summary's receptive field column.
        assert (min(field_h.size, side), min(field_w.size, side)) == info.receptive_field, \
            info.name
        checked += 1
    assert checked == layers
    if layers == 17:
        assert dict((i.name, i.receptive_field) for i in walk_infos(net.infos))["add1"] == (5, 5)


@pytest.mark.parametrize("entry", zoo.ENTRIES, ids=lambda entry: entry.name)
def test_patch_fields_agree_with_the_summary_on_every_zoo_net(entry):
    infos = infer(parse(entry.pattern), entry.pattern)
    image = infos[0].output_shape[:2]
    for info in list(walk_infos(infos))[1:]:
        if len(info.output_shape) == 3:
            sizes = tuple(min(f.size, n) for f, n in zip(fields(infos, info.name), image))
            assert sizes == info.receptive_field, info.name


# --------------------------------------------------------------------------------- patches

def brute_force_top(acts, channel, k):
    best = []
    for n in range(acts.shape[0]):
        flat = acts[n, :, :, channel]
        i, j = np.unravel_index(np.argmax(flat), flat.shape)
        best.append((n, i, j, flat[i, j]))
    best.sort(key=lambda t: (-t[3], t[0]))
    return best[:k]


def test_top_patches_of_a_branch_layer_are_its_strongest_units(trained):
    model, x = trained["model"], trained["x"]
    net, normalizer = model.net, model.normalizer
    found = top_patches(net, x, normalizer, layer="conv3", channels=4, batch_size=7)
    assert found.info.name == "conv3" and found.title == "conv3 (branch 1 of add1)"
    # The oracle: conv3's maps, one image at a time, from the activations through branches.
    acts = np.concatenate([dict(net.activations(normalizer.normalize(x[n:n + 1]),
                                                branches=True))["conv3"] for n in range(len(x))])
    field_h, field_w = found.field
    assert (field_h.size, field_w.size) == found.info.receptive_field == (7, 7)
    padded = np.pad(x, ((0, 0), (8, 8), (8, 8), (0, 0)), constant_values=128)
    for n, c in enumerate(found.channels):
        for rank, (img, i, j, value) in enumerate(brute_force_top(acts, c, 9)):
            assert found.images[n, rank] == img
            assert tuple(found.positions[n, rank]) == (i, j)
            assert found.values[n, rank] == pytest.approx(value, rel=1e-5)
            top, left = field_h.window(i)[0], field_w.window(j)[0]
            np.testing.assert_array_equal(found.crops[n, rank],
                                          padded[img, 8 + top:8 + top + 7, 8 + left:8 + left + 7])
    fig = patches_figure(found)
    assert sorted(fig.tiles) == [f"conv3 channel {c}" for c in range(4)]
    assert fig._suptitle.get_text().startswith("conv3 (branch 1 of add1)")


# -------------------------------------------------------------------------------- maximize

def test_the_gradient_maximize_climbs_at_a_branch_layer_is_exact(graph):
    net, _ = graph
    x = np.random.default_rng(4).standard_normal((2, 12, 12, 1))
    objective, grad = objective_and_gradient(net, x, "conv3", np.array([1, 2]))
    expected = by_hand(net, x)["conv3"]
    np.testing.assert_allclose(objective, [expected[0, :, :, 1].mean(),
                                           expected[1, :, :, 2].mean()], rtol=1e-10)
    eps = 1e-6
    for n, (i, j) in enumerate([(3, 4), (0, 11)]):
        up, down = x.copy(), x.copy()
        up[n, i, j, 0] += eps
        down[n, i, j, 0] -= eps
        numeric = (objective_and_gradient(net, up, "conv3", np.array([1, 2]))[0][n]
                   - objective_and_gradient(net, down, "conv3", np.array([1, 2]))[0][n]) / (2 * eps)
        assert grad[n, i, j, 0] == pytest.approx(numeric, rel=1e-5, abs=1e-9)


# ----------------------------------------------------------------------------- the command

def test_viz_commands_take_branch_layers(trained, tmp_path):
    path = trained["path"]
    Image.fromarray(trained["x"][0, :, :, 0]).save(tmp_path / "bar.png")
    for args in (["filters", path, "--layer", "conv2"],
                 ["filters", path, "--layer", "dwconv1"],
                 ["activations", path, str(tmp_path / "bar.png"), "--layer", "conv3"],
                 ["activations", path, str(tmp_path / "bar.png")],
                 ["patches", path, "--data", trained["data"], "--layer", "conv5",
                  "--channels", "2"],
                 ["maximize", path, "--layer", "relu2", "--steps", "3", "--channels", "2"]):
        out = tmp_path / f"{args[0]}-{args[-1]}.png"
        assert main(["viz", *args, "--out", str(out)]) == 0, args
        with Image.open(out) as image:
            assert np.asarray(image.convert("L")).std() > 0


def test_a_position_names_a_top_level_layer_and_a_name_any_layer(graph):
    net, _ = graph
    assert pick_layer(net, "conv3").name == "conv3"
    assert pick_layer(net, "3").name == "add1"        # conv2 shares its merge's position
    assert pick_layer(net, "ID1").name == "id1"


@pytest.mark.parametrize("args, words", [
    (["filters", "{path}", "--layer", "conv9"],
     ["no such layer; the net's layers are 1 conv1, 2 relu1, { conv2, relu2, conv3 | "
      "id1 } 3 add1, 4 relu3, 5 maxpool1, { conv4 | dwconv1, conv5 } 6 concat1, 7 fc1"]),
    (["patches", "{path}", "--layer", "fc9"], ["no such layer", "{ conv2, relu2, conv3 | id1 }"]),
    (["activations", "{path}", "{folder}/bar.png", "--layer", "conv0"], ["no such layer"]),
    (["filters", "{path}", "--layer", "relu2"],
     ["cannot be used to show its filters; choose one of: 1 conv1, { conv2, conv3 | - }, "
      "{ conv4 | dwconv1, conv5 }, 7 fc1"]),
    (["activations", "{path}", "{folder}/bar.png", "--layer", "id1"],
     ["id1 (ID) cannot be used for activation maps"]),
    (["patches", "{path}", "--layer", "fc1"], ["no H x W positions"]),
])
def test_unknown_or_unfit_layers_are_one_line_listing_branch_layers(trained, capsys, args, words):
    Image.fromarray(trained["x"][0, :, :, 0]).save(trained["folder"] / "bar.png")
    argv = ["viz"] + [a.format(**trained) for a in args]
    one_line_error(capsys, argv + ["--out", str(trained["folder"] / "never.png")], *words)
    assert not (trained["folder"] / "never.png").exists()


def test_the_graph_net_commands_of_visualisation_md_do_what_it_says(tmp_path, monkeypatch):
    """docs/visualisation.md's "Graph nets" block, command by command, in a fresh folder."""
    import re
    import shlex
    from pathlib import Path
    from slidenet import data
    doc = (Path(__file__).resolve().parent.parent / "docs" / "visualisation.md").read_text(
        encoding="utf-8")
    block = re.search(r"## Graph nets.*?```sh\n(.*?)```", doc, flags=re.S).group(1)
    commands = [shlex.split(line) for line in block.strip().splitlines()]
    assert [c[:3] for c in commands[:2]] == [["slidenet", "train", "--data"],
                                             ["slidenet", "viz", "filters"]]
    monkeypatch.chdir(tmp_path)
    test = data.load("mnist5k")
    Image.fromarray(test.x_test[list(test.y_test).index(7), :, :, 0]).save("seven.png")
    for command in commands:
        assert command[0] == "slidenet"
        assert main(command[1:]) == 0, command
        out = command[command.index("--out") + 1]
        if out.endswith(".png"):
            with Image.open(out) as image:
                assert np.asarray(image.convert("L")).std() > 0, out
    report = Path("graph-report.html").read_text(encoding="utf-8")
    assert "branch 3 of concat1" in report and "28x28x16 + 28x28x16" in report
    # What the text says of conv3: the second CONV of the residual branch, 7 x 7 pixels.
    model = load("runs/graph/best.npz")
    info = pick_layer(model.net, "conv3")
    assert info.receptive_field == (7, 7) and info.spec.text == "CONV(16)"
    assert (model.net.params["dwconv1.W"].shape) == (5, 5, 1, 16)
