"""`slidenet train --live`: the Watcher that training tells, and the server that shows it.

Oracles: the epoch's mean loss in history.json (the step losses the page draws must average to
it, weighted by batch size), `slidenet.evaluate` of the saved model (the confusion matrix),
`Model.predict` (the guesses and the worst images), the sign of each weight (the filters'
colours), a clock of our own (when weights are copied, images/s and the time left). The page in
Chromium is tested in test_live_browser.py.
"""
import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import warnings

import numpy as np
import pytest
from PIL import Image

from helpers import (CLASSES, LIVE_ADDRESS, TINY_12, live_args, live_training, require,
                     wait_for_exit, write_bars)

from slidenet.data import Normalizer
from slidenet.training.evaluate import evaluate
from slidenet.model import load
from slidenet.net import Net
from slidenet.serve import watch
from slidenet.serve.live import create_live_app
from slidenet.serve.watch import Watcher
from slidenet.training.loop import TrainConfig, Watched, train


with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

PATTERN = TINY_12
NAMES = list(CLASSES)
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")


def bars_data(folder, n=240):
    """A data set of n 12 x 12 bars in `folder`: its spec."""
    return write_bars(folder / "bars.npz", n, size=12)


def decode(uri):
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
    """A run of 3 epochs on the bars, watched."""
    folder = tmp_path_factory.mktemp("live")
    config = TrainConfig(pattern=PATTERN, data=bars_data(folder), epochs=3, batch_size=16,
                         lr=3e-3, seed=0, out=str(folder / "run"))
    watcher = Watcher(epochs=3)
    history = train(config, log=lambda *_: None, observer=watcher)
    return {"watcher": watcher, "history": history, "folder": folder, "config": config}


def test_the_step_losses_average_to_the_epoch_loss(watched_run):
    watcher, history = watched_run["watcher"], watched_run["history"]
    progress = watcher.progress()
    spe = progress["steps_per_epoch"]
    train_images = 240 - len(watcher.watched.y_val)
    assert [s for s, _ in progress["steps"]] == list(range(1, 3 * spe + 1))
    sizes = [16] * (spe - 1) + [train_images - 16 * (spe - 1)]
    for epoch, entry in enumerate(history):
        losses = [loss for _, loss in progress["steps"][epoch * spe:(epoch + 1) * spe]]
        assert np.dot(losses, sizes) / sum(sizes) == pytest.approx(entry["loss"], rel=1e-9)
    on_disk = json.loads((watched_run["folder"] / "run" / "history.json").read_text())
    assert progress["history"] == on_disk and progress["epoch"] == 3 and progress["epochs"] == 3
    assert progress["step"] == 3 * spe and progress["seconds_left"] == 0
    assert progress["lr"] == pytest.approx(history[-1]["lr"])
    assert watcher.progress(since=3 * spe - 2)["steps"] == progress["steps"][-2:]


def test_watching_changes_nothing_in_the_training(watched_run):
    config = watched_run["config"]
    out = watched_run["folder"] / "unwatched"
    from dataclasses import replace
    train(replace(config, out=str(out)), log=lambda *_: None)
    watched = load(str(watched_run["folder"] / "run" / "model.npz"))
    unwatched = load(str(out / "model.npz"))
    for name in watched.state:
        np.testing.assert_array_equal(watched.state[name], unwatched.state[name], err_msg=name)


def test_the_epoch_view_is_evaluate_of_the_saved_model(watched_run):
    watcher = watched_run["watcher"]
    model = load(str(watched_run["folder"] / "run" / "model.npz"))
    x, y = watcher.watched.x_val, watcher.watched.y_val
    view = watcher.epoch_view()
    assert view["epoch"] == 3 and view["classes"] == NAMES
    want = evaluate(model.net, x, y, model.normalizer, 3)
    assert view["confusion"] == want["confusion"]
    assert view["accuracy"] == pytest.approx(want["accuracy"])
    probs = model.predict(x)
    truth = probs[np.arange(len(y)), y]
    shown = [w["probability"] for w in view["worst"]]
    assert shown == pytest.approx(sorted(truth)[:len(shown)], abs=1e-6)
    for w in view["worst"]:
        assert w["label"] == NAMES[y[w["index"]]]
        assert w["predicted"] == NAMES[int(probs[w["index"]].argmax())]
        np.testing.assert_array_equal(decode(w["uri"])[..., 0], x[w["index"], ..., 0])


def test_the_pictures_are_the_last_weights_guesses_and_maps(watched_run):
    watcher = watched_run["watcher"]
    model = load(str(watched_run["folder"] / "run" / "model.npz"))
    pictures = watcher.pictures()
    # The filters: one tile per filter, red where the weight is clearly positive, blue where
    # clearly negative (on one diverging scale for this one-channel input).
    w = model.net.params["conv1.W"]                 # (3, 3, 1, 4)
    shown = pictures["filters"]
    assert shown["layer"] == "conv1" and shown["shape"] == [3, 3, 1, 4]
    rgb = decode(shown["uri"]).astype(int)
    px = watch.FILTER_PIXELS
    limit = np.abs(w).max()
    for k in range(4):
        for r in range(3):
            for c in range(3):
                red, _, blue = rgb[r * px + px // 2, k * 4 * px + c * px + px // 2]
                value = w[r, c, 0, k]
                if value > 0.3 * limit:
                    assert red > blue + 40, (k, r, c, value)
                elif value < -0.3 * limit:
                    assert blue > red + 40, (k, r, c, value)
    x, y = watcher.watched.x_val, watcher.watched.y_val
    samples = pictures["samples"]
    assert len(samples) == watch.SAMPLES
    assert {s["label"] for s in samples} == set(NAMES)          # every class is shown
    for s in samples:
        probs = model.predict(x[s["index"]][None])[0]
        assert s["label"] == NAMES[y[s["index"]]]
        assert [t["name"] for t in s["top"]] == [NAMES[c] for c in np.argsort(-probs)]
        assert [t["probability"] for t in s["top"]] == pytest.approx(np.sort(probs)[::-1], abs=1e-6)
        relu = dict(model.net.activations(model.normalizer.normalize(x[s["index"]][None])))["relu1"]
        assert s["maps"]["layer"] == "relu1" and s["maps"]["low"] == 0
        assert s["maps"]["high"] == pytest.approx(float(relu.max()), rel=1e-5)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _watched(steps_per_epoch=10, epochs=4):
    net = Net.from_pattern("INPUT(6x6x1) -> CONV(2) -> RELU -> FC(2)")
    x = np.zeros((4, 6, 6, 1), np.uint8)
    return Watched(net, Normalizer.fit(x), x, np.array([0, 1, 0, 1]), ["a", "b"],
                   TrainConfig(epochs=epochs, batch_size=8), steps_per_epoch, 0, [])


def test_weights_are_copied_only_while_a_page_watches_and_not_too_often():
    clock = Clock()
    watcher = Watcher(clock=clock)
    watched = _watched()
    watcher.start(watched)
    assert watcher.progress()["pictures"] == 1              # the initial weights
    for step in range(1, 6):                                 # nobody is watching
        clock.now += 5
        watcher.step(step, 1.0, 8, 0.1)
    assert watcher.progress()["pictures"] == 1
    watcher.pictures()                                       # a page asks ...
    watched.net.params["conv1.W"][...] += 1.0
    clock.now += 1
    watcher.step(6, 1.0, 8, 0.1)                             # ... but the copy is fresh enough?
    assert watcher.progress()["pictures"] == 2               # no: 26 s old
    clock.now += watch.SNAPSHOT_EVERY / 2
    watcher.step(7, 1.0, 8, 0.1)
    assert watcher.progress()["pictures"] == 2               # only half SNAPSHOT_EVERY later
    clock.now += watch.SNAPSHOT_EVERY
    watcher.step(8, 1.0, 8, 0.1)
    assert watcher.progress()["pictures"] == 3
    np.testing.assert_array_equal(watcher.weights[1]["conv1.W"], watched.net.params["conv1.W"])
    assert watcher.weights[1]["conv1.W"] is not watched.net.params["conv1.W"]
    clock.now += watch.WATCHED_FOR + 1                       # the page has gone
    watcher.step(9, 1.0, 8, 0.1)
    assert watcher.progress()["pictures"] == 3
    watcher.epoch({"epoch": 1})                              # an epoch's end always copies
    assert watcher.progress()["pictures"] == 4 and watcher.progress()["epoch_view"] == 1


def test_images_per_second_and_time_left_come_from_the_recent_steps():
    clock = Clock()
    watcher = Watcher(clock=clock)
    watcher.start(_watched(steps_per_epoch=10, epochs=4))    # 40 steps in all
    for step in range(1, 11):
        clock.now += 0.5                                     # 8 images every 0.5 s
        watcher.step(step, 1.0, 8, 0.1)
    progress = watcher.progress()
    assert progress["images_per_s"] == pytest.approx(16.0)
    assert progress["seconds_left"] == pytest.approx(30 * 0.5)
    clock.now += watch.RATE_WINDOW + 5                       # a slow step: the old ones age out
    watcher.step(11, 1.0, 8, 0.1)
    clock.now += 2.0
    watcher.step(12, 1.0, 8, 0.1)
    assert watcher.progress()["seconds_left"] == pytest.approx(28 * 2.0)


def test_the_live_app_answers_json_and_refuses_bad_requests():
    watcher = Watcher(epochs=4)
    client = TestClient(create_live_app(watcher, trusted_hosts=["127.0.0.1", "localhost"]),
                        base_url="http://127.0.0.1")
    before = client.get("/api/progress").json()
    assert before["state"] == "starting" and before["epochs"] == 4 and before["history"] == []
    assert client.get("/api/pictures").json()["version"] == 0
    assert client.get("/api/epoch").json() == {"epoch": 0}
    watcher.start(_watched())
    assert client.get("/api/progress").json()["state"] == "training"
    bad = client.get("/api/progress?since=abc")
    assert bad.status_code == 400 and "whole number" in bad.json()["error"]
    assert client.get("/api/nothing").status_code == 404
    assert client.get("/api/nothing").json()["error"]
    assert client.get("/static/../watch.py").status_code == 404
    assert client.get("/api/progress", headers={"Host": "evil.example"}).status_code == 400
    page = client.get("/")
    assert page.status_code == 200 and "/static/live.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.post("/api/summary", content=b"INPUT(4x4x1) -> FC(2)").json()["total_params"] == 34


# ---- the command ----

def get(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode()


def wait_until(url, test, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = json.loads(get(url + "/api/progress"))
        if test(progress):
            return progress
        time.sleep(0.2)
    raise AssertionError(f"not reached: {progress}")


def test_live_training_then_the_explainer_then_ctrl_c_exits_0(tmp_path):
    data = bars_data(tmp_path)
    process, url = live_training(live_args(data, tmp_path / "run", 2), tmp_path)
    try:
        progress = wait_until(url, lambda p: p["done"])
        assert progress["state"] == "finished" and progress["best"].endswith("best.npz")
        on_disk = json.loads((tmp_path / "run" / "history.json").read_text())
        assert progress["history"] == on_disk and len(on_disk) == 2
        assert len(progress["steps"]) == 2 * progress["steps_per_epoch"]
        # / is now the explainer of best.npz; the live page stays at /live.
        assert "/static/serve.js" in get(url + "/")
        assert json.loads(get(url + "/api/model"))["pattern"] == PATTERN
        assert "/static/live.js" in get(url + "/live")
    finally:
        process.send_signal(signal.SIGINT)
        status, out, err = wait_for_exit(process, timeout=60)
    assert status == 0, err
    assert "now explains" in out and out.rstrip().endswith("slidenet train: stopped")
    assert "Traceback" not in err


def test_ctrl_c_while_training_is_the_usual_interruption(tmp_path):
    data = bars_data(tmp_path, n=600)
    process, url = live_training(live_args(data, tmp_path / "run", 200), tmp_path)
    try:
        wait_until(url, lambda p: p["epoch"] >= 1)
    finally:
        process.send_signal(signal.SIGINT)
        status, out, err = wait_for_exit(process, timeout=60)
    assert status == 130 and "Traceback" not in err, err
    assert "slidenet train: interrupted" in err and "--resume" in err
    assert (tmp_path / "run" / "model.npz").is_file()
    assert "now explains" not in out


def test_a_resumed_run_shows_the_history_so_far(tmp_path):
    data = bars_data(tmp_path)
    done = subprocess.run([sys.executable, "-m", "slidenet", "train", *live_args(
        data, tmp_path / "run", 2)[:-3], "--stop-after", "1"], capture_output=True, text=True,
        timeout=120, cwd=tmp_path)
    assert done.returncode in (0, 130) and (tmp_path / "run" / "model.npz").is_file(), done.stderr
    process, url = live_training(["--resume", str(tmp_path / "run" / "model.npz"), "--epochs",
                                  "2", "--live", "--port", "0"], tmp_path)
    try:
        progress = wait_until(url, lambda p: p["done"])
        assert [h["epoch"] for h in progress["history"]] == [1, 2]
        assert progress["start_epoch"] == 1
        assert [s for s, _ in progress["steps"]][0] == progress["steps_per_epoch"] + 1
    finally:
        process.send_signal(signal.SIGINT)
        status, _, err = wait_for_exit(process, timeout=60)
    assert status == 0, err


def test_under_mpiexec_rank_0_serves_and_all_ranks_end_together(tmp_path):
    require("MPI", None if os.access(MPIEXEC, os.X_OK) else f"no mpiexec at {MPIEXEC}")
    data = bars_data(tmp_path)
    process, url = live_training(live_args(data, tmp_path / "run", 2), tmp_path,
                                 command=(MPIEXEC, "-n", "2"))
    try:
        progress = wait_until(url, lambda p: p["done"])
        assert progress["state"] == "finished" and len(progress["history"]) == 2
        assert json.loads((tmp_path / "run" / "history.json").read_text()) == progress["history"]
        assert len(progress["steps"]) == 2 * progress["steps_per_epoch"]
    finally:
        process.send_signal(signal.SIGINT)
        status, out, err = wait_for_exit(process, timeout=60)
    assert status == 0, (out, err)
    assert LIVE_ADDRESS not in out and "slidenet train: stopped" in out   # rank 0's only


def test_host_and_port_belong_to_live(tmp_path):
    done = subprocess.run([sys.executable, "-m", "slidenet", "train", "--port", "0"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and "--port belongs to --live" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_painter_runs_kernels_on_its_own_thread(monkeypatch):
    from slidenet.ops import runtime
    net = Net.from_pattern("INPUT(16x16x3) -> CONV(8) -> RELU -> POOL -> FC(4)", seed=1)
    x = np.random.default_rng(0).standard_normal((32, 16, 16, 3)).astype(np.float32)
    with runtime.workers(2):
        runtime.set_memory_budget(1)            # one image a chunk: many chunks to share out
        try:
            shared = net.forward(x).copy()
            handed = []
            real = runtime._executor
            monkeypatch.setattr(runtime, "_executor", lambda n: handed.append(n) or real(n))
            with runtime.on_this_thread():
                alone = net.forward(x).copy()
            assert handed == []                     # no chunk went to a worker thread
            net.forward(x)
            assert handed                           # outside the block they do again
        finally:
            runtime.set_memory_budget(None)
    np.testing.assert_array_equal(alone, shared)
