"""The first hour of a new user: their own images, honest messages, a net that starts at ln C.

Each test is one defect a student or an engineer met with the README and the docs, and the
behaviour they expected instead.
"""
import math
import os

import numpy as np
import pytest
from PIL import Image

from helpers import bars
import slidenet
from slidenet import Net
from slidenet import data as datasets
from slidenet.cli import main
from slidenet.ops import softmax_loss, svm_loss
from slidenet.storage import modelfile
from slidenet.training.loop import TrainConfig, TrainingDiverged, train

TINY = "INPUT(8x8x1) -> CONV(4) -> RELU -> POOL -> FC(3)"


def quiet(*_):
    pass


def error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# --- 1. the net must end in FC(number of classes) ------------------------------------------

def test_a_net_that_does_not_end_in_fc_is_refused_before_reading_data(tmp_path, capsys):
    args = ["train", "--pattern", "INPUT(28x28x1) -> CONV(3) -> RELU", "--out", str(tmp_path)]
    assert main(args) == 2
    err = error_line(capsys)
    assert "the net must end in FC(number of classes)" in err and "FC(10) for mnist5k" in err
    assert "ends in RELU" in err and "part of the loss" in err
    # Before any data is read: a data folder that does not exist is never reached.
    assert main(args + ["--data", f"folder:{tmp_path / 'missing'}"]) == 2
    assert "must end in FC" in error_line(capsys)


def test_a_folder_names_its_class_count(tmp_path, capsys):
    for name in ("a", "b", "c"):
        (tmp_path / "shapes" / name).mkdir(parents=True)
    assert main(["train", "--pattern", "INPUT(8x8x1) -> CONV(2)", "--data",
                 f"folder:{tmp_path / 'shapes'}", "--out", str(tmp_path / "run")]) == 2
    assert "FC(3) for folder:" in error_line(capsys)


def test_fc_10_on_3_classes_is_refused(tmp_path, npz_data, capsys):
    assert main(["train", "--pattern", "INPUT(8x8x1) -> FC(10)", "--data", npz_data,
                 "--out", str(tmp_path / "run")]) == 2
    assert "has 3 classes but the last FC has 10 outputs: end the pattern with FC(3)" in \
        error_line(capsys)


# --- 2. messages about files are true ------------------------------------------------------

def test_resume_says_best_npz_was_not_rewritten_when_it_was_not(tmp_path, npz_data):
    lines = []
    train(TrainConfig(pattern=TINY, data=npz_data, epochs=3, out=str(tmp_path / "run")), log=quiet)
    model, best = tmp_path / "run" / "model.npz", tmp_path / "run" / "best.npz"
    arrays, meta = modelfile.load(model)
    meta["history"][0].update(val_accuracy=1.0, val_loss=0.0)   # an epoch no epoch can beat
    modelfile.save(model, arrays, meta)
    before = best.read_bytes()
    train(TrainConfig(epochs=4, out=str(tmp_path / "run")), resume=str(model), log=lines.append)
    assert best.read_bytes() == before
    assert lines[-1] == (f"saved {model} (epoch 4 of 4); {best} was not rewritten: no epoch of "
                         "this run beat it")


def test_resume_to_an_epoch_already_done_is_an_error_and_writes_nothing(tmp_path, npz_data, capsys):
    train(TrainConfig(pattern=TINY, data=npz_data, epochs=2, out=str(tmp_path / "run")), log=quiet)
    files = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    assert main(["train", "--resume", str(tmp_path / "run" / "model.npz"), "--epochs", "2"]) == 2
    err = error_line(capsys)
    assert "has already trained 2 epochs" in err and "e.g. --epochs" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == files


def test_divergence_says_where_the_last_good_model_truly_is(tmp_path, npz_data, monkeypatch):
    from slidenet.training import loop
    # Diverging in the first epoch: nothing was saved, even if the folder has an older model.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.npz").write_bytes(b"an older run's file")
    with pytest.raises(TrainingDiverged, match="no model was saved: it diverged before the end "
                                               "of the first epoch"):
        train(TrainConfig(pattern=TINY, data=npz_data, epochs=2, lr=1e9, out=str(tmp_path / "run")),
              log=quiet)
    assert (tmp_path / "run" / "model.npz").read_bytes() == b"an older run's file"
    # Diverging in epoch 2: the file of epoch 1 is named.
    real = loop.LOSSES["softmax"]
    calls = []

    def nan_in_epoch_two(scores, y):
        calls.append(1)
        loss, grad = real(scores, y)
        return (math.nan if len(calls) > 8 else loss), grad
    monkeypatch.setitem(loop.LOSSES, "softmax", nan_in_epoch_two)
    with pytest.raises(TrainingDiverged, match=r"the last good model is .*model.npz \(epoch 1\)"):
        train(TrainConfig(pattern=TINY, data=npz_data, epochs=2, batch_size=32,
                          out=str(tmp_path / "run2")), log=quiet)


def test_interrupted_says_how_to_resume(tmp_path, npz_data, monkeypatch, capsys):
    from slidenet.training import loop
    real = loop._checkpoint

    def stop_after_saving(run, epoch, improved):
        real(run, epoch, improved)
        raise KeyboardInterrupt
    monkeypatch.setattr(loop, "_checkpoint", stop_after_saving)
    out = tmp_path / "run"
    assert main(["train", "--pattern", TINY, "--data", npz_data, "--epochs", "3", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted; the last checkpoint is {out / 'model.npz'} (epoch 1); continue with: " \
           f"slidenet train --resume {out / 'model.npz'} --epochs 3" in err


# --- 3. your own folder of images ----------------------------------------------------------

def _mixed_folder(root):
    """Two classes drawn in every way people keep images: sizes, modes, formats, hidden files."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("line", "blob")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(12):
            size = (16, 16) if i % 3 else (24, 20)          # mixed sizes
            pixels = rng.integers(0, 40, size).astype(np.uint8)
            if label == 0:
                pixels[size[0] // 2, 2:-2] = 230
            else:
                pixels[4:9, 4:9] = 230
            image = Image.fromarray(pixels)
            fmt = ("png", "jpg", "bmp", "gif")[i % 4]
            if i % 5 == 0:
                image = image.convert("RGB")                # mixed modes
            image.save(folder / f"{i}.{fmt}")
        Image.fromarray(np.zeros((3, 3), np.uint8)).save(folder / ".hidden.png")
        (folder / "._9.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")   # macOS metadata
        (folder / "notes.txt").write_text("not an image")


def test_a_mixed_folder_trains_with_resize_and_says_what_it_left_out(tmp_path, capsys):
    _mixed_folder(tmp_path / "shapes")
    pattern = "INPUT(16x16x3) -> CONV(8) -> RELU -> POOL -> FC(2)"
    args = ["train", "--pattern", pattern, "--data", f"folder:{tmp_path / 'shapes'}",
            "--epochs", "2", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = error_line(capsys)
    assert "all images must have one size" in err and "--resize" in err
    assert main(args + ["--resize"]) == 0
    out = capsys.readouterr().out
    # 24 images (hidden and ._ files are no data): every 5th of a class is a test image (4), and
    # 10% of the other 20 validate; the text file is reported.
    assert "shapes: 18 training, 2 validation and 4 test images of 16x16x3, 2 classes" in out
    assert "left out 2 files that are not an image" in out and "notes.txt" in out
    dataset = datasets.load(f"folder:{tmp_path / 'shapes'}", size=(16, 16))
    assert len(dataset.y_train) + len(dataset.y_test) == 24


def test_transparent_images_are_composited_onto_the_training_background(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 255                 # white everywhere...
    rgba[1:3, 1:3, 3] = 255             # ...but only the centre is opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    notes = []
    on_black = datasets.load_image(tmp_path / "a.png", (4, 4, 1), background=0, notes=notes)
    assert on_black[..., 0].tolist() == [[0, 0, 0, 0], [0, 255, 255, 0], [0, 255, 255, 0], [0, 0, 0, 0]]
    assert "composited onto black" in notes[0]
    on_white = datasets.load_image(tmp_path / "a.png", (4, 4, 1), background=255)
    assert (on_white == 255).all()


def test_npz_rules_are_explained(tmp_path):
    channels_first = np.zeros((5, 1, 16, 16), np.uint8)
    np.savez(tmp_path / "cf.npz", x=channels_first, y=np.zeros(5, int))
    with pytest.raises(slidenet.errors.DataError, match=r"looks channels-first.*np.transpose\(x, "
                                                        r"\(0, 2, 3, 1\)\)"):
        datasets.load(f"npz:{tmp_path / 'cf.npz'}")
    np.savez(tmp_path / "neg.npz", x=np.zeros((5, 4, 4), np.uint8), y=np.array([0, 1, -1, 0, 1]),
             x_test=np.zeros((2, 4, 4), np.uint8), y_test=np.array([0, 1]))
    with pytest.raises(slidenet.errors.DataError, match=r"label -1 \(image 2\) is negative; labels "
                                                        r"are class numbers 0, 1, 2"):
        datasets.load(f"npz:{tmp_path / 'neg.npz'}")


# --- 4. the data path in a model works from anywhere -----------------------------------------

def test_a_relative_data_path_is_stored_resolved(tmp_path, monkeypatch, capsys):
    x, y = bars(120)
    (tmp_path / "work").mkdir()
    np.savez(tmp_path / "work" / "bars.npz", x=x, y=y)
    monkeypatch.chdir(tmp_path / "work")
    assert main(["train", "--pattern", TINY, "--data", "npz:bars.npz", "--epochs", "1",
                 "--out", "run"]) == 0
    model = tmp_path / "work" / "run" / "best.npz"
    assert slidenet.load(model).meta["data"] == f"npz:{tmp_path / 'work' / 'bars.npz'}"
    monkeypatch.chdir(tmp_path)                 # another folder: eval still finds the data
    capsys.readouterr()
    assert main(["eval", str(model)]) == 0
    os.remove(tmp_path / "work" / "bars.npz")   # gone: the message says where the spec came from
    assert main(["eval", str(model)]) == 2
    err = error_line(capsys)
    assert f"comes from {model}" in err and "pass --data SPEC" in err


# --- 5. the loss at initialisation is chance ------------------------------------------------

@pytest.mark.parametrize("classes", [2, 3, 10])
def test_the_loss_at_initialisation_is_chance(classes):
    rng = np.random.default_rng(classes)
    x = rng.standard_normal((256, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, classes, 256)
    for seed in range(3):
        net = Net.from_pattern(f"INPUT(16x16x3) -> [CONV(16) -> RELU -> POOL]*2 -> FC(32) -> RELU "
                               f"-> FC({classes})", seed=seed)
        scores = net.forward(x)
        assert abs(softmax_loss(scores, y)[0] - math.log(classes)) < 0.1
        assert abs(svm_loss(scores, y)[0] - (classes - 1)) < 0.1


def test_the_first_lines_say_the_split_and_the_initial_loss(tmp_path, npz_data):
    lines = []
    train(TrainConfig(pattern=TINY, data=npz_data, epochs=1, out=str(tmp_path / "run")),
          log=lines.append)
    assert lines[0] == "bars: 162 training, 18 validation and 60 test images of 8x8x1, 3 classes"
    params = sum(info.params for info in Net.from_pattern(TINY).infos)     # 40 + 195
    assert lines[1].startswith(f"net: {params} parameters; batch 16, 11 steps an epoch; initial loss ")
    assert lines[1].endswith("(chance: ln 3 = 1.099)")
    initial = float(lines[1].split("initial loss ")[1].split()[0])
    assert abs(initial - math.log(3)) < 0.1


def test_a_small_two_class_task_learns_with_the_defaults(tmp_path):
    # 80 images of 16x16: a line or a blob. Before, 10 epochs ended below chance (one step an
    # epoch at batch 64, the scoring layer He-initialised); now the defaults must learn it.
    rng = np.random.default_rng(0)
    y = np.arange(100) % 2
    x = rng.integers(0, 60, (100, 16, 16, 3)).astype(np.uint8)
    for i in range(100):
        r, c = rng.integers(3, 13, 2)
        if y[i]:
            x[i, r - 2:r + 2, c - 2:c + 2] = 230
        else:
            x[i, r, 2:14] = 230
    np.savez(tmp_path / "two.npz", x=x[:80], y=y[:80], x_test=x[80:], y_test=y[80:])
    train(TrainConfig(pattern="INPUT(16x16x3) -> [CONV(8) -> RELU -> POOL]*2 -> FC(2)",
                      data=f"npz:{tmp_path / 'two.npz'}", epochs=10, out=str(tmp_path / "run")),
          log=quiet)
    model = slidenet.load(tmp_path / "run" / "model.npz")
    assert (model.predict(x[80:]).argmax(axis=1) == y[80:]).mean() >= 0.9


# --- 7 and 8. advice that can be followed, and the small ones --------------------------------

def test_predict_explains_sizes_folders_missing_files_and_inverted_images(tmp_path, npz_data, capsys):
    train(TrainConfig(pattern=TINY, data=npz_data, epochs=1, out=str(tmp_path / "run")), log=quiet)
    model = str(tmp_path / "run" / "best.npz")
    x, _ = bars(3, seed=4)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(x[i, :, :, 0]).save(folder / f"{i}.png")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(255 - x[0, :, :, 0]).save(tmp_path / "inverted.png")
    capsys.readouterr()
    # A folder is its images; a missing file is reported and the others still classified.
    assert main(["predict", model, str(folder), str(tmp_path / "missing.png")]) == 2
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == [str(folder / f"{i}.png") for i in range(3)]
    assert "no such file" in err and "missing.png" in err
    assert main(["predict", model, str(tmp_path / "big.png")]) == 2
    assert "pass --resize" in capsys.readouterr().err
    assert main(["predict", model, str(tmp_path / "inverted.png")]) == 0
    assert "pass --invert" in capsys.readouterr().err
    assert main(["predict", model, str(tmp_path / "inverted.png"), "--invert"]) == 0
    assert "--invert" not in capsys.readouterr().err
    assert main(["predict", model, str(folder), "--top", "0"]) == 2
    assert "--top must be at least 1" in capsys.readouterr().err


def test_pool_advice_never_suggests_padding(capsys):
    assert main(["summary", "INPUT(3x3x1) -> POOL(4x4) -> FC(2)"]) == 2
    err = capsys.readouterr().err
    assert "a window of at most 3" in err and "padding" not in err.split("\n")[0].split(":", 2)[2]


def test_small_flags_that_were_accepted_silently(tmp_path, npz_data, capsys):
    assert main(["train", "--pattern", TINY, "--data", npz_data, "--patience", "-1"]) == 2
    assert "--patience must be 0 or more" in error_line(capsys)
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"slidenet {slidenet.__version__}"


def test_curves_and_report_read_a_model_file(tmp_path, npz_data, capsys):
    train(TrainConfig(pattern=TINY, data=npz_data, epochs=3, out=str(tmp_path / "run")), log=quiet)
    best = tmp_path / "run" / "best.npz"
    assert main(["viz", "curves", str(best), "--out", str(tmp_path / "c.png")]) == 0
    from slidenet.report import epoch_held
    meta = modelfile.load(best)[1]
    held = epoch_held(meta)
    assert held == (str(meta["epoch"]) if meta["epoch"] == 3 else f"{meta['epoch']} of 3")
