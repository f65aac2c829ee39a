"""The pictures of `slidenet viz`, on a tiny model trained here on generated bars.

Each picture is checked against an independent computation: plotted activation maps against
`net.activations`, top patches against a brute-force loop, receptive-field windows against the
pixels a unit's gradient reaches, the slide's frame count against (N + 2P - F) / S + 1.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import bars, train_tiny
from slidenet import Net
from slidenet.cli import main
from slidenet.model import load
from slidenet.viz.activations import activation_maps, activations_figure
from slidenet.viz.curves import curves_figure
from slidenet.viz.filters import filters_figure
from slidenet.viz.maximize import maximize, maximize_figure
from slidenet.viz.patches import fields, patches_figure, strongest, top_patches

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("viz")
    path, spec = train_tiny(folder)
    model = load(str(path))
    net, normalizer, meta = model.net, model.normalizer, model.meta
    x, y = bars(60, seed=1, size=12)
    return {"path": str(path), "data": spec, "folder": folder, "net": net,
            "normalizer": normalizer, "meta": meta, "x": x, "y": y}


def picture(path):
    """The decoded picture as an array; it must not be blank."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 0, f"{path} is blank"
    return pixels


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "slidenet", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def drawn(fig, label=None):
    """The array of the (first) image drawn on the axes labelled `label`, or on the first axes."""
    axes = [ax for ax in fig.axes if ax.images and (label is None or ax.get_label() == label)]
    return np.ma.getdata(axes[0].images[0].get_array())


# ------------------------------------------------------------------------------------- filters

def test_filters_first_layer_tiles_are_the_weights(tiny, tmp_path):
    net = tiny["net"]
    fig = filters_figure(net)
    layout = fig.tiles["conv1"]
    assert (layout.count, layout.rows * layout.cols >= 4) == (4, True)
    image = drawn(fig)
    for k in range(4):
        np.testing.assert_array_equal(layout.tile(image, k), net.params["conv1.W"][:, :, 0, k])
    assert main(["viz", "filters", tiny["path"], "--out", str(tmp_path / "f.png")]) == 0
    picture(tmp_path / "f.png")


def test_filters_deeper_layer_is_a_grid_of_filters_by_input_channels(tiny, tmp_path):
    net = tiny["net"]
    fig = filters_figure(net, "conv2")
    layout = fig.tiles["conv2"]
    assert (layout.count, layout.rows, layout.cols) == (6 * 4, 6, 4)
    w = net.params["conv2.W"]
    image = drawn(fig)
    for f in range(6):
        for c in range(4):
            np.testing.assert_array_equal(layout.tile(image, f * 4 + c), w[:, :, c, f])
    # The same layer by its position in the pattern.
    assert main(["viz", "filters", tiny["path"], "--layer", "4", "--out",
                 str(tmp_path / "f2.png")]) == 0
    picture(tmp_path / "f2.png")


def test_colour_filters_are_rgb_tiles():
    net = Net.from_pattern("INPUT(8x8x3) -> CONV(5, 3x3) -> RELU -> FC(2)", seed=1)
    fig = filters_figure(net)
    assert fig.tiles["conv1"].count == 5
    image = drawn(fig)
    assert image.ndim == 3 and image.shape[-1] == 3
    tile = fig.tiles["conv1"].tile(image, 2)
    w = net.params["conv1.W"][..., 2]
    np.testing.assert_allclose(tile, (w - w.min()) / (w.max() - w.min()), atol=1e-6)


# --------------------------------------------------------------------------------- activations

def test_activation_maps_are_the_nets_own_intermediate_values(tiny, tmp_path):
    net, x = tiny["net"], tiny["normalizer"].normalize(tiny["x"][:1])
    maps = activation_maps(net, x[0])
    assert [info.name for info, _ in maps] == ["conv1", "relu1", "maxpool1", "conv2", "relu2"]
    expected = dict(net.activations(x))
    fig = activations_figure(net, x[0], pixels=tiny["x"][0])
    for info, array in maps:
        np.testing.assert_array_equal(array, expected[info.name][0])
        layout = fig.tiles[info.name]
        assert layout.count == info.output_shape[2]
        image = drawn(fig, info.name)
        for c in range(layout.count):
            np.testing.assert_array_equal(layout.tile(image, c), expected[info.name][0, :, :, c])


def test_activation_tiles_are_one_size_in_every_layer():
    # Maps of 24, 12 and 6 pixels and layers of 8, 3 and 16 channels: on the page every tile
    # is drawn at the same size (the 1-pixel gaps between tiles aside) and square.
    net = Net.from_pattern("INPUT(24x24x1) -> CONV(8) -> RELU -> POOL -> CONV(3) -> RELU -> POOL "
                           "-> CONV(16) -> RELU -> FC(3)")
    image = np.random.default_rng(0).standard_normal((24, 24, 1)).astype(np.float32)
    fig = activations_figure(net, image)
    fig.canvas.draw()
    sizes = []
    for (info, _), ax in zip(activation_maps(net, image), fig.axes[1:]):
        box = ax.get_position(original=False)       # after the equal aspect is applied
        (left, right), (bottom, top) = ax.get_xlim(), sorted(ax.get_ylim())
        layout = fig.tiles[info.name]
        wide = box.width * fig.bbox.width * layout.tile_w / (right - left)
        tall = box.height * fig.bbox.height * layout.tile_h / (top - bottom)
        assert wide == pytest.approx(tall, rel=0.01), info.name
        sizes.append(wide)
    assert max(sizes) / min(sizes) < 1.15, sizes


def test_activations_command_writes_a_picture(tiny, tmp_path):
    Image.fromarray(tiny["x"][0, :, :, 0]).save(tmp_path / "bar.png")
    out = tmp_path / "maps.png"
    assert main(["viz", "activations", tiny["path"], str(tmp_path / "bar.png"),
                 "--out", str(out)]) == 0
    picture(out)


# ------------------------------------------------------------------------------------- patches

def test_receptive_windows_are_where_a_units_gradient_reaches():
    # All-positive weights and average pooling: every input pixel in a unit's field reaches it.
    net = Net.from_pattern("INPUT(14x14x1) -> CONV(1, 3x3, p=1) -> AVGPOOL(2) -> "
                           "CONV(1, 3x3, s=2, p=1) -> CONV(1, 1x1)", dtype="float64")
    for name in net.params:
        net.params[name][...] = 1.0
    info = net.infos[-1]
    field_h, field_w = fields(net.infos, info.index)
    assert (field_h.size, field_w.size) == info.receptive_field == (8, 8)
    x = np.ones((1, 14, 14, 1))
    out = net.forward(x)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            dout = np.zeros_like(out)
            dout[0, i, j, 0] = 1.0
            reached = net.backward(dout)[0, :, :, 0] != 0
            rows, cols = field_h.window(i), field_w.window(j)
            expected = np.zeros((14, 14), dtype=bool)
            expected[max(rows[0], 0):rows[1], max(cols[0], 0):cols[1]] = True
            np.testing.assert_array_equal(reached, expected, err_msg=f"unit ({i}, {j})")


def brute_force_top(acts, channel, k):
    """(image, i, j, value) of the k images whose strongest unit of `channel` is highest: each
    image's first maximum in row-major order, ties to the lower image index."""
    best = []
    for n in range(acts.shape[0]):
        top = (0, 0, -np.inf)
        for i in range(acts.shape[1]):
            for j in range(acts.shape[2]):
                if acts[n, i, j, channel] > top[2]:
                    top = (i, j, acts[n, i, j, channel])
        best.append((n,) + top)
    best.sort(key=lambda t: (-t[3], t[0]))
    return best[:k]


def tied_images(tiny):
    """The test bars twice over (ties between images) and flat images (ties within one)."""
    flat = np.broadcast_to(np.arange(0, 250, 50, dtype=np.uint8)[:, None, None, None],
                           (5, 12, 12, 1))
    return np.concatenate([tiny["x"][:20], flat, tiny["x"][:20]])


def one_by_one(net, normalizer, x, name):
    """The layer's maps for each image computed alone, as `batch_size=1` computes them, so
    equal images give bit-equal maps and ties are exact."""
    return np.concatenate([dict(net.activations(normalizer.normalize(x[n:n + 1])))[name]
                           for n in range(len(x))])


def test_each_images_strongest_unit_is_its_first_maximum(tiny):
    net, normalizer, x = tiny["net"], tiny["normalizer"], tied_images(tiny)
    index = [info.name for info in net.infos].index("relu2")
    values, positions = strongest(net, x, normalizer, index, batch_size=1)
    acts = one_by_one(net, normalizer, x, "relu2")
    for n in range(len(x)):
        for c in range(acts.shape[3]):
            i, j, value = brute_force_top(acts[n:n + 1], c, 1)[0][1:]
            assert tuple(positions[n, c]) == (i, j) and values[n, c] == value


def test_top_patches_are_the_arg_max_activations(tiny):
    net, normalizer, x = tiny["net"], tiny["normalizer"], tied_images(tiny)
    found = top_patches(net, x, normalizer, layer="relu2", batch_size=1)
    info = found.info
    assert info.name == "relu2" and list(found.channels) == list(range(6))
    acts = one_by_one(net, normalizer, x, "relu2")
    r_h, r_w = info.receptive_field
    assert found.crops.shape == (6, 9, r_h, r_w, 1)
    padded = np.pad(x, ((0, 0), (12, 12), (12, 12), (0, 0)), constant_values=128)
    field_h, field_w = found.field
    for n, c in enumerate(found.channels):
        for rank, (img, i, j, value) in enumerate(brute_force_top(acts, c, 9)):
            assert found.images[n, rank] == img
            assert tuple(found.positions[n, rank]) == (i, j)
            assert found.values[n, rank] == pytest.approx(value)
            top, left = field_h.offset + i * field_h.jump, field_w.offset + j * field_w.jump
            window = padded[img, 12 + top:12 + top + r_h, 12 + left:12 + left + r_w]
            np.testing.assert_array_equal(found.crops[n, rank], window)


def test_patches_command_draws_nine_tiles_per_channel(tiny, tmp_path):
    out = tmp_path / "patches.png"
    assert main(["viz", "patches", tiny["path"], "--data", tiny["data"], "--layer", "conv2",
                 "--channels", "4", "--out", str(out)]) == 0
    picture(out)
    fig = patches_figure(top_patches(tiny["net"], tiny["x"], tiny["normalizer"], "conv2",
                                     channels=4))
    assert sorted(fig.tiles) == [f"conv2 channel {c}" for c in range(4)]
    assert all(layout.count == 9 for layout in fig.tiles.values())


# ------------------------------------------------------------------------------------ maximize

def test_gradient_ascent_raises_each_channels_activation(tiny, tmp_path):
    net, normalizer = tiny["net"], tiny["normalizer"]
    result = maximize(net, normalizer, "conv2", steps=30)
    assert list(result.channels) == list(range(6))
    assert (result.end > result.start).all()
    assert result.pixels.min() >= -1e-6 and result.pixels.max() <= 1 + 1e-6
    # The recorded objective is the mean activation the net computes for the returned image.
    acts = dict(net.activations(result.images.astype(np.float32)))["conv2"]
    np.testing.assert_allclose(result.end, [acts[c, :, :, c].mean() for c in range(6)],
                               rtol=1e-4, atol=1e-5)
    assert maximize_figure(result).tiles["conv2"].count == 6
    out = tmp_path / "max.png"
    assert main(["viz", "maximize", tiny["path"], "--layer", "fc1", "--steps", "10",
                 "--out", str(out)]) == 0
    picture(out)


# -------------------------------------------------------------------------------------- curves

def test_curves_plot_the_history(tiny, tmp_path):
    run = tiny["folder"] / "run"
    history = json.loads((run / "history.json").read_text())
    fig = curves_figure(history)
    lines = {(ax.get_title(), line.get_label()): line.get_ydata()
             for ax in fig.axes for line in ax.lines}
    np.testing.assert_allclose(lines[("loss", "training")], [h["loss"] for h in history])
    np.testing.assert_allclose(lines[("accuracy", "validation")],
                               [h["val_accuracy"] for h in history])
    out = tmp_path / "curves.png"
    assert main(["viz", "curves", str(run), "--out", str(out)]) == 0
    picture(out)


# --------------------------------------------------------------------------------------- slide

@pytest.mark.parametrize("n, f, s, p, side", [(5, 3, 2, 1, 3), (7, 3, 1, 0, 5), (4, 2, 2, 0, 2)])
def test_slide_has_one_frame_per_output_position(tmp_path, n, f, s, p, side):
    out = tmp_path / "slide.gif"
    assert main(["viz", "slide", "--input", str(n), "--filter", str(f), "--stride", str(s),
                 "--pad", str(p), "--out", str(out)]) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == side * side
        frames = []
        for k in range(gif.n_frames):
            gif.seek(k)
            frames.append(np.asarray(gif.convert("RGB"), dtype=np.int16))
    assert frames[0].std() > 0
    assert all(np.abs(a - b).max() > 0 for a, b in zip(frames, frames[1:]))


# ---------------------------------------------------------------------------------- bad input

def test_bad_slide_geometry_is_the_summarys_teaching_error(tmp_path):
    done = cli("viz", "slide", "--input", 7, "--filter", 3, "--stride", 3, "--pad", 0,
               cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "stride 3 does not tile the input: (7 - 3) / 3 + 1 = 2.33 is not a whole number" \
        in done.stderr
    summary = cli("summary", "INPUT(7x7x1) -> CONV(1, 3x3, s=3, p=0)")
    assert summary.stderr.splitlines()[0].split("the height: ")[1] in done.stderr


@pytest.mark.parametrize("args, words", [
    (["viz", "filters", "{folder}/missing.npz"], "no such model file"),
    (["viz", "filters", "{path}", "--layer", "conv9"], "no such layer"),
    (["viz", "filters", "{path}", "--layer", "99"], "no such layer"),
    (["viz", "filters", "{path}", "--layer", "relu1"], "cannot be used to show its filters"),
    (["viz", "patches", "{path}", "--layer", "fc1"], "no H x W positions"),
    (["viz", "activations", "{path}", "{folder}/big.png"], "is 20x20x1 but the net's INPUT is "
                                                          "12x12x1"),
    (["viz", "curves", "{folder}"], "no history"),
    (["viz", "slide", "--input", "5", "--filter", "7", "--pad", "0"], "leaves no room to slide"),
    (["viz", "slide", "--input", "0"], "--input must be a whole number of at least 1"),
])
def test_bad_arguments_exit_2_with_one_clear_line(tiny, args, words):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tiny["folder"] / "big.png")
    done = cli(*[a.format(**tiny) for a in args], cwd=tiny["folder"])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slidenet viz: error: ")
    assert words in lines[0]
