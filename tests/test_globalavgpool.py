"""GLOBALAVGPOOL everywhere a layer works: pattern, summary, kernels, gradcheck, training, model
files and pictures. (It was added as docs/design.md's "Adding a layer kind" says.)"""
import numpy as np

import slidenet
from harness import check_kernel
from slidenet.cli import main
from slidenet.gradcheck import TOLERANCE, check_pattern
from slidenet.net import Net
from slidenet.training.loop import TrainConfig, train

PATTERN = "INPUT(8x8x1) -> CONV(6) -> RELU -> CONV(6) -> RELU -> GLOBALAVGPOOL -> FC(3)"


def test_summary_shows_one_number_per_channel(capsys):
    assert main(["summary", "INPUT(8x8x16) -> GLOBALAVGPOOL -> FC(10)"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("globalavgpool1"))
    assert "1 x 1 x 16" in row and "(8 - 8) / 1 + 1 = 1" in row and "8 x 8" in row
    assert "10 x (1*1*16 + 1) = 170" in out and "total parameters:        170 " in out


def test_the_kernel_is_the_mean_over_height_and_width():
    layer = Net.from_pattern("INPUT(5x4x3) -> GLOBALAVGPOOL -> FC(2)", dtype="float64").layers[0]

    def forward(x):
        return layer.forward(x, True), layer.cache

    check_kernel(forward, lambda dout, cache: layer.backward(dout),
                 {"x": np.random.default_rng(0).standard_normal((4, 5, 4, 3))}, ("x",),
                 naive=lambda x: x.mean(axis=(1, 2), keepdims=True),
                 naive_backward=lambda dout, x: np.broadcast_to(dout / 20, x.shape))


def test_it_is_an_average_pool_as_large_as_its_input():
    x = np.random.default_rng(1).standard_normal((3, 8, 8, 1))
    ds = np.random.default_rng(2).standard_normal((3, 3))
    nets = [Net.from_pattern(PATTERN.replace("GLOBALAVGPOOL", pool), dtype="float64")
            for pool in ("GLOBALAVGPOOL", "AVGPOOL(8x8)")]
    np.testing.assert_array_equal(nets[0].forward(x, train=True), nets[1].forward(x, train=True))
    np.testing.assert_array_equal(nets[0].backward(ds), nets[1].backward(ds))


def test_gradcheck_through_it():
    errors = check_pattern("INPUT(6x5x2) -> CONV(4) -> BATCHNORM -> RELU -> GLOBALAVGPOOL -> FC(3)")
    assert max(errors.values()) < TOLERANCE


def test_after_an_fc_it_explains_itself(capsys):
    assert main(["summary", "INPUT(8x8x1) -> FC(4) -> GLOBALAVGPOOL"]) == 2
    assert "GLOBALAVGPOOL slides a window over an H x W x D volume" in capsys.readouterr().err


def test_trains_saves_loads_and_draws(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(150) % 3
    x = rng.integers(0, 40, (150, 8, 8, 1)).astype(np.uint8)
    x[y == 1] += 150                        # brightness is what a global average can see
    x[y == 2] += 80
    data = tmp_path / "bright.npz"
    np.savez(data, x=x[:120], y=y[:120], x_test=x[120:], y_test=y[120:])
    config = TrainConfig(pattern=PATTERN, data=f"npz:{data}", epochs=8, batch_size=16, lr=1e-2,
                         schedule="constant", augment=False, out=str(tmp_path / "run"))
    history = train(config, log=lambda *_: None)
    assert history[-1]["val_accuracy"] > 0.9
    model = slidenet.load(tmp_path / "run" / "best.npz")
    assert (model.predict(x[120:]).argmax(axis=1) == y[120:]).mean() > 0.9
    from slidenet.viz.activations import activation_maps
    from slidenet.viz.patches import top_patches
    maps = dict((info.name, a) for info, a in activation_maps(model.net, model.normalizer.normalize(x[:1])[0]))
    np.testing.assert_allclose(maps["globalavgpool1"][0, 0], maps["relu2"].mean(axis=(0, 1)), rtol=1e-5)
    found = top_patches(model.net, x[120:], model.normalizer, "globalavgpool1", channels=2)
    for axis in found.field:                        # its one unit sees the whole image
        start, stop = axis.window(0)
        assert start <= 0 and stop >= 8
    for picture in ("activations", "patches"):
        args = ["viz", picture, str(tmp_path / "run" / "best.npz"), "--out", str(tmp_path / f"{picture}.png")]
        if picture == "activations":
            from PIL import Image
            Image.fromarray(x[0, :, :, 0]).save(tmp_path / "digit.png")
            args.insert(3, str(tmp_path / "digit.png"))
        else:
            args += ["--layer", "globalavgpool1", "--channels", "2"]
        assert main(args) == 0 and (tmp_path / f"{picture}.png").stat().st_size > 1000
