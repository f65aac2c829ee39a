"""The training loop and the train / eval / predict commands, on small generated data."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import CLASSES, TINY, assert_same_models, bars
from slidenet import Net
from slidenet.model import load
from slidenet.ops import softmax_loss
from slidenet.training.loop import TrainConfig, train
from slidenet.training.optim import make_optimizer

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "slidenet", *args], capture_output=True, text=True)


def test_a_tiny_net_overfits_a_tiny_batch():
    x, y = bars(12)
    net = Net.from_pattern("INPUT(8x8x1) -> CONV(8) -> RELU -> POOL -> FC(16) -> RELU -> FC(3)", seed=0)
    opt = make_optimizer("adam", net.params)
    xf = (x / 255.0).astype(np.float32)
    for _ in range(150):
        loss, d = softmax_loss(net.forward(xf, train=True), y)
        net.backward(d)
        opt.step(net.grads, 3e-3)
    assert loss < 0.05
    assert (net.forward(xf).argmax(axis=1) == y).all()


def config(tmp_path, data, **kw):
    base = dict(pattern=TINY, data=data, epochs=2, batch_size=16, lr=3e-3, augment=True,
                seed=5, out=str(tmp_path / "run"))
    base.update(kw)
    return TrainConfig(**base)


def test_resume_is_bit_identical_to_straight_training(tmp_path, npz_data):
    straight = config(tmp_path / "a", npz_data, schedule="warmup-cosine")
    train(straight, log=lambda *_: None)
    interrupted = config(tmp_path / "b", npz_data, schedule="warmup-cosine", stop_after=1)
    assert len(train(interrupted, log=lambda *_: None)) == 1
    resumed = config(tmp_path / "b", npz_data, epochs=2)
    train(resumed, resume=str(tmp_path / "b" / "run" / "model.npz"), log=lambda *_: None)
    assert_same_models(load(str(tmp_path / "a" / "run" / "model.npz")),
                       load(str(tmp_path / "b" / "run" / "model.npz")))


def test_erasing_and_label_smoothing_change_the_run_and_resume_exactly(tmp_path, npz_data):
    options = {"erase": 0.5, "label_smoothing": 0.1, "schedule": "warmup-cosine"}
    train(config(tmp_path / "a", npz_data, **options), log=lambda *_: None)
    train(config(tmp_path / "b", npz_data, stop_after=1, **options), log=lambda *_: None)
    train(config(tmp_path / "b", npz_data, epochs=2),
          resume=str(tmp_path / "b" / "run" / "model.npz"), log=lambda *_: None)
    a = load(str(tmp_path / "a" / "run" / "model.npz"))
    assert_same_models(a, load(str(tmp_path / "b" / "run" / "model.npz")))
    assert {k: a.meta["config"][k] for k in ("erase", "label_smoothing")} == \
        {"erase": 0.5, "label_smoothing": 0.1}
    train(config(tmp_path / "plain", npz_data, schedule="warmup-cosine"), log=lambda *_: None)
    plain = load(str(tmp_path / "plain" / "run" / "model.npz"))
    assert not np.array_equal(a.state["param/conv1.W"], plain.state["param/conv1.W"])


def test_resume_after_a_finished_run_continues_exactly(tmp_path, npz_data):
    # With a constant schedule, "1 epoch, then resume to 2" equals "2 epochs" too.
    train(config(tmp_path / "a", npz_data, schedule="constant", optimizer="momentum"), log=lambda *_: None)
    train(config(tmp_path / "b", npz_data, schedule="constant", optimizer="momentum", epochs=1), log=lambda *_: None)
    train(config(tmp_path / "b", npz_data, epochs=2),
          resume=str(tmp_path / "b" / "run" / "model.npz"), log=lambda *_: None)
    assert_same_models(load(str(tmp_path / "a" / "run" / "model.npz")),
                       load(str(tmp_path / "b" / "run" / "model.npz")))


def test_training_learns_and_writes_its_files(tmp_path, npz_data):
    history = train(config(tmp_path, npz_data, epochs=8, augment=False, lr=1e-2), log=lambda *_: None)
    out = tmp_path / "run"
    assert {"model.npz", "best.npz", "history.json"} <= set(os.listdir(out))
    assert json.loads((out / "history.json").read_text()) == history
    assert history[-1]["accuracy"] > 0.8 and history[-1]["val_accuracy"] > 0.8
    assert history[-1]["loss"] < history[0]["loss"]


def test_cli_train_eval_predict(tmp_path, npz_data):
    out = tmp_path / "cli"
    r = run_cli("train", "--pattern", TINY, "--data", npz_data, "--epochs", "5", "--batch-size", "16",
                "--lr", "1e-2", "--no-augment", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "epoch   5/5" in r.stdout
    r = run_cli("eval", str(out / "best.npz"), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert {"accuracy", "loss", "per_class", "confusion"} <= set(result)
    confusion = np.array(result["confusion"])
    assert confusion.shape == (3, 3) and confusion.sum() == 60
    assert np.isclose(result["accuracy"], np.trace(confusion) / 60)
    assert result["accuracy"] > 0.8

    from PIL import Image
    x, y = bars(3, seed=9)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(x[i, :, :, 0]).save(paths[-1])
    r = run_cli("predict", str(out / "best.npz"), *paths, "--top", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.count(",") == 1 for line in lines)
    assert sum(line.split(": ")[1].startswith(CLASSES[y[i]]) for i, line in enumerate(lines)) >= 2


def test_divergence_stops_with_advice_and_keeps_the_last_good_model(tmp_path, npz_data):
    out = tmp_path / "div"
    good = run_cli("train", "--pattern", TINY, "--data", npz_data, "--epochs", "1", "--out", str(out))
    assert good.returncode == 0, good.stderr
    before = (out / "model.npz").read_bytes()
    bad = run_cli("train", "--pattern", TINY, "--data", npz_data, "--epochs", "2", "--optimizer", "sgd",
                  "--lr", "1e30", "--schedule", "constant", "--out", str(out))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "lower learning rate" in bad.stderr
    assert (out / "model.npz").read_bytes() == before


@pytest.mark.parametrize("args, needle", [
    (["--data", "nosuch"], "nosuch"),
    (["--data", "folder:/no/such/dir"], "/no/such/dir"),
    (["--pattern", "INPUT(9x9x1) -> FC(3)"], "9x9x1"),
    (["--pattern", "INPUT(8x8x1) -> FC(2)"], "3 classes"),
    (["--epochs", "0"], "--epochs"),
    (["--resume", "/no/model.npz"], "/no/model.npz"),
])
def test_bad_training_input_exits_2_with_one_clear_message(tmp_path, npz_data, args, needle):
    base = ["train", "--pattern", TINY, "--data", npz_data, "--epochs", "1", "--out", str(tmp_path / "o")]
    r = run_cli(*base, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and needle in r.stderr


def test_eval_and_predict_refuse_bad_files(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a model at all")
    for args in (["eval", str(junk)], ["predict", str(junk), str(junk)]):
        r = run_cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "junk.npz" in r.stderr


# ---- what train says about its own results (#25) --------------------------------------------

def test_resuming_a_finished_warmup_cosine_run_says_the_rate_jumps(npz_data, tmp_path):
    import math
    settings = dict(pattern=TINY, data=npz_data, batch_size=16, lr=3e-3, seed=0,
                    out=str(tmp_path / "run"))
    train(TrainConfig(epochs=2, **settings), log=lambda *_: None)
    lines = []
    train(TrainConfig(epochs=4, **settings), resume=str(tmp_path / "run" / "model.npz"),
          log=lines.append)
    # 162 training images in batches of 16: 11 steps an epoch. The first run's schedule spans
    # 22 steps (warm-up 1), the resumed one's 44 (warm-up 2); the resumed run starts at step 22.
    before = 3e-3 * 0.5 * (1 + math.cos(math.pi * (21 - 1) / 21))
    after = 3e-3 * 0.5 * (1 + math.cos(math.pi * (22 - 2) / 42))
    assert load(str(tmp_path / "run" / "model.npz")).meta["history"][1]["lr"] == \
        pytest.approx(before)
    (note,) = [line for line in lines if "schedule was laid over" in line]
    assert (f"the warmup-cosine schedule was laid over 2 epochs and now spans 4, from its "
            f"start: the learning rate goes from {before:.2g} (the end of epoch 2) to "
            f"{after:.2g}") in note


def test_a_small_validation_split_is_noted(npz_data, tmp_path):
    lines = []
    train(TrainConfig(pattern=TINY, data=npz_data, epochs=1, out=str(tmp_path / "r")),
          log=lines.append)
    assert any("note: only 18 validation images: one more right answer moves val_acc by 0.056"
               in line for line in lines)


def test_overfitting_and_chance_level_validation_are_warned_about():
    from types import SimpleNamespace
    from slidenet.training.loop import _closing

    def run(*epochs):
        return SimpleNamespace(dataset=SimpleNamespace(num_classes=3), history=[
            {"epoch": i + 1, "accuracy": a, "val_accuracy": v} for i, (a, v) in enumerate(epochs)])
    (line,) = _closing(run((0.6, 0.55), (0.99, 0.6)))
    assert line.startswith("warning: training accuracy 0.990 but the best validation accuracy "
                           "only 0.600: the net memorises its training images (overfitting)")
    (line,) = _closing(run((0.99, 0.33)))
    assert "the best validation accuracy, 0.330, is no better than a guess among 3 classes " \
           "(0.333)" in line
    assert _closing(run((0.9, 0.85))) == [] and _closing(run((0.9, None))) == []


def test_eval_states_the_chance_level_and_labels_every_column(npz_data, tmp_path, capsys):
    from slidenet.cli import main
    from slidenet.training.evaluate import evaluate
    train(TrainConfig(pattern=TINY, data=npz_data, epochs=1, out=str(tmp_path / "r")),
          log=lambda *_: None)
    path = str(tmp_path / "r" / "model.npz")
    assert main(["eval", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    model = load(path)
    xt, yt = bars(60, seed=1)
    result = evaluate(model.net, xt, yt, model.normalizer, 3)
    majority = np.bincount(yt).max() / len(yt)              # 20 of 60 in each class
    assert lines[2].startswith(f"chance 0.3333 (a guess among 3 classes); always the most "
                               f"common class {majority:.4f}")
    assert ("no better" in lines[2]) == (result["accuracy"] <= 1 / 3)
    assert lines[4].split() == ["class", "0", "1", "2"]
    for i, (name, line) in enumerate(zip(CLASSES, lines[5:8])):
        words = line.split()
        assert words[:2] == [str(i), name] and len(words) == 3 + 3
        assert [int(v) for v in words[3:]] == result["confusion"][i]


def test_chance_levels_are_a_guess_and_the_majority_class():
    from slidenet.training.evaluate import chance, chance_text
    confusion = np.array([[5, 0, 0, 0], [1, 1, 0, 0], [2, 0, 0, 0], [1, 0, 0, 0]])
    assert chance(confusion) == {"guess": 0.25, "majority": 0.5}
    text = chance_text({"accuracy": 0.6, "chance": chance(confusion)})
    assert text == "chance 0.2500 (a guess among 4 classes); always the most common class 0.5000"
    assert "learned nothing" in chance_text({"accuracy": 0.5, "chance": chance(confusion)})
