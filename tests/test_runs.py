"""`slidenet serve RUNS/`: several runs' curves side by side, read safely from their files.

Oracles: each run's own history.json and model meta (what the page must show), files made
damaged, too large or not a history on purpose (each skipped with its reason, the rest still
shown), and in Chromium one polyline per run and epoch count.
"""
import json
import os
import warnings

import pytest

from helpers import TINY_12, server, train_runs
from slidenet.serve.runs import Runs, create_runs_app
from slidenet.storage import limits, modelfile
from slidenet.storage.limits import MAX_HISTORY

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return train_runs(tmp_path_factory.mktemp("runs"))


def test_each_run_is_its_own_files(folder):
    answer = Runs(str(folder)).read()
    assert [run["name"] for run in answer["runs"]] == ["a-lr3e-3", "b-lr1e-2"]
    for run in answer["runs"]:
        assert run["history"] == json.loads((folder / run["name"] / "history.json").read_text())
        meta = modelfile.load(folder / run["name"] / "model.npz")[1]
        assert run["pattern"] == meta["pattern"] == TINY_12
        assert run["settings"]["lr"] == meta["config"]["lr"]
        assert run["best_val_accuracy"] == max(h["val_accuracy"] for h in run["history"])
    assert [len(run["history"]) for run in answer["runs"]] == [3, 2]
    why = {s["name"]: s["why"] for s in answer["skipped"]}
    assert set(why) == {"c-broken", "d-nan", "e-large", "f-damaged"}
    assert "not a training history" in why["c-broken"] and "NaN" in why["d-nan"]
    assert f"at most {MAX_HISTORY:,}" in why["e-large"] and "model file" in why["f-damaged"]


def test_a_run_folder_itself_is_a_run_and_runs_past_the_cap_are_named(folder, monkeypatch):
    alone = Runs(str(folder / "a-lr3e-3")).read()
    assert [run["name"] for run in alone["runs"]] == ["a-lr3e-3"]
    monkeypatch.setattr(limits, "MAX_RUNS", 1)
    capped = Runs(str(folder)).read()
    assert [run["name"] for run in capped["runs"]] == ["a-lr3e-3"]
    assert {"name": "b-lr1e-2", "why": "only the first 1 runs are shown"} in capped["skipped"]


def test_a_run_that_goes_on_training_shows_its_new_epochs(folder, tmp_path):
    runs = Runs(str(folder))
    before = runs.read()["runs"][1]
    path = folder / "b-lr1e-2" / "history.json"
    kept = path.read_text()
    try:
        history = json.loads(kept)
        path.write_text(json.dumps(history + [{**history[-1], "epoch": 3}]))
        os.utime(path, ns=(10**18, 10**18))
        assert len(runs.read()["runs"][1]["history"]) == len(before["history"]) + 1
    finally:
        path.write_text(kept)


def test_the_app_answers_json_and_no_request_names_a_file(folder):
    client = TestClient(create_runs_app(str(folder)))
    assert client.get("/api/runs?folder=/etc").json()["folder"] == str(folder)
    assert "/static/runs.js" in client.get("/").text
    assert client.get("/static/../runs.py").status_code == 404
    assert client.get("/a-lr3e-3/history.json").status_code == 404
    assert client.get("/api/model").json()["error"]


def test_serve_a_folder_of_runs_on_the_command_line(folder):
    import urllib.request
    with server(folder, cwd=folder) as (process, url):
        with urllib.request.urlopen(url + "/api/runs", timeout=30) as response:
            assert len(json.loads(response.read())["runs"]) == 2
