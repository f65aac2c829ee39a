"""The pattern playground: `slidenet serve` with no model, and POST /api/summary.

Oracles: what `slidenet summary --json` prints for the same pattern (the API must answer exactly
that), the lecture's worked numbers (a 7 x 7 input under a 3 x 3 filter at stride 3 does not
tile; 760 parameters for ten 5 x 5 x 3 filters), and in Chromium the page's table and caret
against the API's answer. The explainer's copy of the playground is checked in the same way.
"""
import html
import json
import re
import urllib.request
import warnings

import numpy as np
import pytest

from helpers import server
from slidenet.cli import main
from slidenet.data import Normalizer
from slidenet.model import load, save
from slidenet.net import Net
from slidenet.notation.pattern import MAX_DEPTH
from slidenet.serve.app import create_app, create_playground_app
from slidenet.storage.limits import MAX_PATTERN


with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

STRIDE_3 = "INPUT(7x7x1) -> CONV(1, 3x3, s=3, p=0) -> FC(2)"


@pytest.fixture(scope="module")
def client():
    return TestClient(create_playground_app())


def cli_json(capsys, *args):
    assert main(["summary", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("pattern, sets", [
    ("INPUT(32x32x3) -> CONV(10, 5x5, s=1, p=2)", []),
    ("INPUT(28x28x1) -> [[CONV(8) -> RELU]*N -> POOL?]*2 -> FC(32) -> RELU -> FC(10)", ["N=2"]),
    ("INPUT(64x48x3) -> CONV(8, 5x5, p=0) -> MAXPOOL(2x2) -> GLOBALAVGPOOL -> FC(5)", []),
])
def test_summary_is_what_the_cli_prints(client, capsys, pattern, sets):
    query = "&".join(f"set={s}" for s in sets)
    answer = client.post(f"/api/summary?{query}", content=pattern.encode())
    assert answer.status_code == 200
    assert answer.json() == cli_json(capsys, pattern, *[a for s in sets for a in ("--set", s)])


def test_the_lecture_numbers_come_back(client):
    layers = client.post("/api/summary", content=b"INPUT(32x32x3) -> CONV(10, 5x5, s=1, p=2)").json()["layers"]
    assert layers[1]["output_shape"] == [32, 32, 10] and layers[1]["params"] == 760
    assert layers[1]["size_formulas"][0] == "(32 + 2*2 - 5) / 1 + 1 = 32"


def test_skip_optional_drops_the_marked_layers(client, capsys):
    pattern = "INPUT(16x16x1) -> CONV(4) -> POOL? -> FC(3)"
    kept = client.post("/api/summary", content=pattern.encode()).json()
    skipped = client.post("/api/summary?skip_optional=1", content=pattern.encode()).json()
    assert len(kept["layers"]) == 4 and len(skipped["layers"]) == 3
    assert skipped == cli_json(capsys, pattern, "--skip-optional")


def test_a_pattern_that_is_no_net_gets_the_teaching_error_and_its_column(client, capsys):
    answer = client.post("/api/summary", content=STRIDE_3.encode())
    assert answer.status_code == 400
    body = answer.json()
    assert body["column"] == STRIDE_3.index("CONV")
    assert "2.33" in body["message"] and "p=1 makes it (7 + 2*1 - 3) / 3 + 1 = 3" in body["message"]
    # `error` is what the CLI prints after "slidenet summary: error: ", caret and all.
    assert main(["summary", STRIDE_3]) == 2
    assert capsys.readouterr().err.strip().endswith(body["error"].strip())
    assert body["error"].splitlines()[-1] == "  " + " " * body["column"] + "^"


@pytest.mark.parametrize("body, status, words", [
    (b"", 400, "empty pattern"),
    (b"INPUT(28x28x1) -> CONV(8) ->", 400, None),
    (b"INPUT(28x28x1) -> [CONV(8)]*N -> FC(2)", 400, "N"),
    (b"\xff\xfe", 400, "not UTF-8"),
    (b"[" * (MAX_DEPTH + 5) + b"CONV(1)" + b"]" * (MAX_DEPTH + 5), 400, "nested"),
    (b"[" * 9000, 400, "nested"),
    (b"INPUT(8x8x1) -> " * 700, 413, "10 kB"),
    (b"INPUT(28x28x1) -> [CONV(8)]*999999 -> FC(2)", 400, None),
])
def test_bad_patterns_are_refused_with_json(client, body, status, words):
    answer = client.post("/api/summary", content=body)
    assert answer.status_code == status, answer.text
    found = answer.json()
    assert isinstance(found["error"], str) and found["error"]
    if status == 400:
        assert "column" in found
    if words:
        assert words in found["error"]


def test_a_claimed_long_pattern_is_refused_before_it_is_read(client):
    answer = client.post("/api/summary", content=b"x" * (MAX_PATTERN + 1))
    assert answer.status_code == 413
    answer = client.post("/api/summary", content=b"INPUT(8x8x1) -> FC(2)",
                         headers={"Content-Length": str(MAX_PATTERN + 1)})
    assert answer.status_code in (400, 413)


def test_the_playground_page_is_local_and_holds_the_default_net(client):
    from slidenet.training.config import DEFAULT_PATTERN
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert DEFAULT_PATTERN in html.unescape(page.text)
    for link in re.findall(r'(?:src|href)="([^"]*)"', page.text):
        assert link.startswith(("/", "#")) and not link.startswith("//"), link
        if link.startswith("/static/"):
            assert client.get(link).status_code == 200
    assert client.get("/api/slide?n=7&f=3&s=2&p=1").json()["out"] == 4
    assert client.get("/api/model").status_code == 404        # no model here
    assert client.get("/static/../playground.py").status_code == 404


def test_with_a_model_the_playground_is_one_more_view(tmp_path):
    net = Net.from_pattern("INPUT(8x8x1) -> CONV(2) -> POOL -> FC(3)")
    save(str(tmp_path / "m.npz"), net, Normalizer.fit(np.zeros((2, 8, 8, 1), np.uint8)),
         ["a", "b", "c"])
    client = TestClient(create_app(load(str(tmp_path / "m.npz"))))
    page = html.unescape(client.get("/").text)
    assert 'id="playground"' in page and "/static/playground.js" in page
    assert '<textarea id="pattern-text"' in page and net.pattern in page
    assert client.post("/api/summary", content=net.pattern.encode()).json()["total_params"] == \
        sum(info.params for info in net.infos)


def test_serve_with_no_model_prints_its_address_and_stops_on_ctrl_c(tmp_path):
    with server(None, cwd=tmp_path) as (process, url):
        request = urllib.request.Request(url + "/api/summary", data=b"INPUT(8x8x1) -> FC(2)",
                                         method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["total_params"] == 8 * 8 * 2 + 2
