"""`slidenet.fit` on arrays: the same loop as `slidenet train` (same weights, bit for bit), the
float and shape conventions, validation, callbacks, Ctrl-C, saving, and its refusals."""
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import slidenet
from slidenet import Net
from slidenet.training.config import TrainConfig
from slidenet.errors import FileWriteError, PatternError, SlidenetError
from slidenet.model import load
from slidenet.training.loop import train
from helpers import TINY, bars

SETTINGS = dict(epochs=2, batch_size=16, lr=3e-3, seed=5)


@pytest.fixture(scope="module")
def arrays():
    x, y = bars(180)
    xt, yt = bars(60, seed=1)
    return x, y, xt, yt


def write_npz(tmp_path, x, y, xt, yt):
    """The same arrays as `npz:` data; its x_test keeps `train` from holding out a test split,
    so the training part is x, as for fit."""
    path = tmp_path / "bars.npz"
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt)
    return f"npz:{path}"


def fit_quietly(*args, **kw):
    return slidenet.fit(*args, verbose=False, **kw)


def assert_same_weights(model, other):
    """Every array of the two models (parameters, buffers, normaliser, optimiser state,
    generator states) equal bit for bit."""
    assert set(model.state) == set(other.state)
    for name in model.state:
        np.testing.assert_array_equal(model.state[name], other.state[name], err_msg=name)


def without_timing(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")} for h in history]


# ------------------------------------------------------------------- one implementation

def test_fit_gives_train_s_weights_on_the_same_arrays(tmp_path, arrays):
    x, y, xt, yt = arrays
    config = TrainConfig(pattern=TINY, data=write_npz(tmp_path, *arrays), out=str(tmp_path / "run"),
                         **SETTINGS)
    history = train(config, log=lambda *_: None)
    by_train = load(str(tmp_path / "run" / "model.npz"))
    model = fit_quietly(TINY, x, y, **SETTINGS)
    assert_same_weights(model, by_train)
    assert without_timing(model.history) == without_timing(history)


def test_fit_has_the_command_s_defaults(tmp_path, arrays):
    # Only the net, the data and the epochs given: every other setting is each side's default.
    x, y, _, _ = arrays
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "slidenet", "train", "--pattern", TINY, "--data",
                           write_npz(tmp_path, *arrays), "--epochs", "1", "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_weights(fit_quietly(TINY, x, y, epochs=1), load(str(out / "model.npz")))
    defaults = TrainConfig()
    signature = inspect.signature(slidenet.fit).parameters
    for name in ("epochs", "lr", "optimizer", "weight_decay", "schedule", "loss", "augment", "flip",
                 "patience", "seed", "threads"):
        assert signature[name].default == getattr(defaults, name), name
    assert signature["validation"].default == defaults.val_fraction


def test_a_net_is_trained_in_place_like_its_pattern(arrays):
    x, y, _, _ = arrays
    net = Net.from_pattern(TINY, seed=5)
    model = fit_quietly(net, x, y, **SETTINGS)
    assert model.net is net
    assert_same_weights(model, fit_quietly(TINY, x, y, **SETTINGS))


# ------------------------------------------------------------------- the arrays it takes

def test_floats_in_0_1_and_n_h_w_are_the_same_images(arrays):
    x, y, _, _ = arrays
    want = fit_quietly(TINY, x, y, epochs=1, seed=2)
    for same in (x / 255.0, (x / 255.0).astype(np.float32), x[..., 0]):
        assert_same_weights(fit_quietly(TINY, same, y, epochs=1, seed=2), want)


def test_validation_arrays_are_what_val_accuracy_measures(arrays):
    x, y, xt, yt = arrays
    model = fit_quietly(TINY, x, y, validation=(xt, yt), epochs=3, lr=1e-2, augment=False)
    # The oracle: the returned net's own predictions counted by hand.
    by_hand = float((model.predict(xt).argmax(axis=1) == yt).mean())
    assert model.history[-1]["val_accuracy"] == pytest.approx(by_hand)
    assert model.evaluate(xt, yt)["accuracy"] == pytest.approx(by_hand)
    assert model.evaluate(xt / 255.0, yt)["accuracy"] == pytest.approx(by_hand)
    assert len(model.history) == 3 and by_hand > 0.6


def test_no_validation_trains_on_every_image(arrays, capsys):
    x, y, _, _ = arrays
    model = slidenet.fit(TINY, x, y, validation=None, epochs=1, batch_size=18)
    printed = capsys.readouterr().out
    assert "180 training, 0 validation images" in printed and "10 steps an epoch" in printed
    assert model.history[0]["val_accuracy"] is None


def test_class_names_reach_the_model(arrays):
    x, y, _, _ = arrays
    model = fit_quietly(TINY, x, y, epochs=1, class_names=["row", "column", "dot"])
    assert model.class_names == ["row", "column", "dot"]


# ------------------------------------------------------------------- callbacks and Ctrl-C

def test_callbacks_see_every_epoch_and_can_stop(arrays):
    x, y, _, _ = arrays
    seen, also = [], []

    class Recorder:
        def on_epoch_end(self, entry):
            also.append(entry["epoch"])

    model = fit_quietly(TINY, x, y, epochs=3, callbacks=[seen.append, Recorder()])
    assert seen == model.history and also == [1, 2, 3]
    stopped = fit_quietly(TINY, x, y, epochs=5, callbacks=[lambda entry: entry["epoch"] == 2])
    assert [h["epoch"] for h in stopped.history] == [1, 2]


def test_a_callback_cannot_change_the_history(arrays):
    x, y, _, _ = arrays
    model = fit_quietly(TINY, x, y, epochs=1, callbacks=[lambda entry: entry.update(loss=-1)])
    assert model.history[0]["loss"] > 0


def test_ctrl_c_returns_the_model_so_far(arrays, capsys):
    x, y, _, _ = arrays
    net = Net.from_pattern(TINY, seed=5)
    steps = {"n": 0}
    backward = net.backward

    def interrupted_backward(*args, **kw):
        steps["n"] += 1
        if steps["n"] == 15:        # the 4th step of epoch 2 (11 steps an epoch)
            raise KeyboardInterrupt
        return backward(*args, **kw)

    net.backward = interrupted_backward
    model = slidenet.fit(net, x, y, **SETTINGS)
    note = capsys.readouterr().out
    assert "interrupted during epoch 2" in note and "1 finished epoch)" in note
    assert [h["epoch"] for h in model.history] == [1]
    # The weights as they stood: 14 steps, which differ from 11 (one epoch) and from none.
    for name, value in model.net.params.items():
        np.testing.assert_array_equal(model.state[f"param/{name}"], value)
    one_epoch = fit_quietly(TINY, x, y, **{**SETTINGS, "epochs": 1})
    assert not np.array_equal(model.net.params["conv1.W"], one_epoch.net.params["conv1.W"])


# ------------------------------------------------------------------- saving

def test_save_and_load_give_the_same_model(tmp_path, arrays):
    x, y, xt, yt = arrays
    model = fit_quietly(TINY, x, y, epochs=1, class_names=["row", "column", "dot"])
    path = model.save(str(tmp_path / "m.npz"))
    again = slidenet.load(path)
    np.testing.assert_array_equal(again.predict(xt), model.predict(xt))
    assert again.class_names == model.class_names
    assert without_timing(again.history) == without_timing(model.history)
    assert again.meta["source"] == "slidenet.fit"


def test_save_is_atomic(tmp_path, arrays, monkeypatch):
    x, y, _, _ = arrays
    model = fit_quietly(TINY, x, y, epochs=1)
    path = tmp_path / "m.npz"
    model.save(str(path))
    before = path.read_bytes()
    from slidenet.storage import modelfile

    def full_disk(fh, entries):
        fh.write(b"PK half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(modelfile, "_write_npz", full_disk)
    with pytest.raises(FileWriteError, match="unchanged"):
        model.save(str(path))
    assert path.read_bytes() == before


def test_out_writes_what_train_writes(tmp_path, arrays):
    x, y, _, _ = arrays
    model = fit_quietly(TINY, x, y, out=str(tmp_path / "run"), **SETTINGS)
    assert_same_weights(load(str(tmp_path / "run" / "model.npz")), model)
    assert without_timing(json.loads((tmp_path / "run" / "history.json").read_text())) == \
        without_timing(model.history)


def test_train_resume_of_a_fit_model_asks_for_data(tmp_path, arrays):
    x, y, xt, yt = arrays
    path = fit_quietly(TINY, x, y, epochs=1).save(str(tmp_path / "m.npz"))
    cli = [sys.executable, "-m", "slidenet", "train", "--resume", path, "--epochs", "1"]
    refused = subprocess.run(cli, capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "trained by slidenet.fit on arrays in memory" in refused.stderr
    tuned = subprocess.run(cli + ["--data", write_npz(tmp_path, *arrays), "--out", "t"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr


# ------------------------------------------------------------------- refusals

@pytest.mark.parametrize("change, needle", [
    (dict(y=np.eye(3)[np.arange(180) % 3]), r"one-hot\?.*y.argmax\(axis=1\)"),
    (dict(y=np.arange(180) % 4), r"y\[3\] is 3, outside the classes 0..2"),
    (dict(y=np.zeros(7, int)), "180 of them"),
    (dict(x=np.zeros((180, 1, 8, 8), np.uint8)), "channels-first"),
    (dict(x=np.full((180, 8, 8), 2.0)), "values outside \\[0, 1\\]"),
    (dict(x=np.zeros((180, 9, 9), np.uint8)), r"images are 9x9x1 but the net's INPUT is 8x8x1"),
    (dict(epochs=0), "epochs must be at least 1, not 0"),
    (dict(lr=-1.0), "lr must be > 0"),
    (dict(batch_size=2.5), "batch_size must be a whole number"),
    (dict(optimizer="rmsprop"), "optimizer must be one of sgd, momentum, nesterov, adam"),
    (dict(momentum=0.5), "momentum applies to optimizer='momentum' or 'nesterov'"),
    (dict(validation=1.5), r"validation must be in \[0, 1\)"),
    (dict(validation=(np.zeros((5, 9, 9), np.uint8), np.zeros(5, int))), "x_val holds images of 9x9x1"),
    (dict(validation=(np.zeros((5, 8, 8), np.uint8), np.zeros(4, int))), "y_val must hold"),
    (dict(validation="10%"), "validation must be a fraction"),
    (dict(net=42), "fit takes a pattern string or a slidenet.Net, not int"),
    (dict(net="INPUT(8x8x1) -> FC(3"), "unbalanced"),
    (dict(net="INPUT(8x8x1) -> CONV(4)"), "the net must end in FC\\(number of classes\\)"),
    (dict(callbacks=[3]), "callback 3 is neither a function"),
    (dict(seed=-1), "seed must be a whole number 0 or more"),
])
def test_bad_arguments_are_one_clear_error(arrays, change, needle):
    x, y, _, _ = arrays
    call = {"net": TINY, "x": x, "y": y, "epochs": 1, **change}
    with pytest.raises(SlidenetError, match=needle) as info:
        fit_quietly(call.pop("net"), call.pop("x"), call.pop("y"), **call)
    # One line, but for a pattern's caret under the column at fault (PatternError's layout).
    assert "\n" not in str(info.value) or isinstance(info.value, PatternError)


def test_evaluate_refuses_other_images(arrays):
    x, y, _, _ = arrays
    model = fit_quietly(TINY, x, y, epochs=1)
    with pytest.raises(SlidenetError, match="takes 8x8x1"):
        model.evaluate(np.zeros((2, 9, 9), np.uint8), [0, 1])
    with pytest.raises(SlidenetError, match="outside the classes"):
        model.evaluate(x[:2], [0, 7])


def test_the_readme_s_python_section_runs(tmp_path, monkeypatch, capsys):

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From Python and notebooks", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["model"]
    assert [h["epoch"] for h in model.history] == [1, 2]
    assert slidenet.load("digits.npz").evaluate(namespace["x"], namespace["y"]) == \
        model.evaluate(namespace["x"], namespace["y"])
    eval_cli = subprocess.run([sys.executable, "-m", "slidenet", "eval", "digits.npz", "--data",
                               "mnist5k"], capture_output=True, text=True)
    assert eval_cli.returncode == 0, eval_cli.stderr


def test_callbacks_see_the_epoch_that_patience_stops_at(arrays):
    x, y, _, _ = arrays
    seen = []
    # SGD steps this small are below float32's resolution of the weights: no weight moves, so no
    # validation score does, and patience 1 stops after epoch 2.
    model = fit_quietly(TINY, x, y, epochs=6, lr=1e-9, optimizer="sgd", patience=1,
                        callbacks=[seen.append])
    assert [h["epoch"] for h in model.history] == [1, 2] and seen == model.history


def test_a_real_sigint_returns_the_model_and_the_program_goes_on(tmp_path):
    # What a notebook's "interrupt kernel" does: SIGINT to the process while the kernels run.
    import signal
    script = tmp_path / "long_fit.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import slidenet\n"
        "from helpers import TINY, bars\n"
        "x, y = bars(180)\n"
        "model = slidenet.fit(TINY, x, y, epochs=100000)\n"
        "print('returned', len(model.history), flush=True)\n")
    child = subprocess.Popen([sys.executable, "-u", str(script)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            if line.startswith("epoch   2/"):
                child.send_signal(signal.SIGINT)
                break
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert "slidenet.fit: interrupted during epoch" in out and "Traceback" not in err
    finished = int(out.split("returned ")[1].split()[0])
    assert finished >= 2 and f"holds the {finished} finished epochs)" in out
