"""`slidenet train --live` in Chromium: the page grows while the net learns, then explains it.

The curves' points are counted against the steps and epochs trained, the confusion matrix on the
page against `slidenet.evaluate` of the saved model, the guesses under the validation images
against `Model.predict`; once training has finished, the page at / must have become the
explainer of best.npz. Launching Chromium, and the rules for a machine without it, are those of
test_serve_browser.py.
"""
import json
import signal
import urllib.request

import numpy as np
import pytest

from helpers import (CLASSES, Visit, bars, import_part, live_args, live_training,
                     wait_for_exit, write_bars)
from slidenet.data import split_validation
from slidenet.training.evaluate import evaluate
from slidenet.model import load

(sync_api,) = import_part("BROWSER", "playwright.sync_api")
expect = sync_api.expect

EPOCHS = 12
IMAGES = 1200
STEP_SECONDS = 0.01    # 68 steps an epoch: 8 s or more of training, however fast the machine


@pytest.fixture
def run(tmp_path):
    data = write_bars(tmp_path / "bars.npz", IMAGES, size=12)
    process, url = live_training(live_args(data, tmp_path / "run", EPOCHS), tmp_path,
                                 step_seconds=STEP_SECONDS)
    yield process, url, tmp_path
    process.send_signal(signal.SIGINT)
    status, out, err = wait_for_exit(process, timeout=60)
    assert status == 0 and "Traceback" not in err, err


def test_the_page_grows_while_training_then_explains_best_npz(browser, run):
    process, url, folder = run
    visit = Visit.new(browser, url)
    page = visit.page

    # While training: the loss curve gains points as steps are trained.
    loss_steps = page.locator('#chart-loss polyline[data-series="each step"]')
    expect(loss_steps).to_have_count(1, timeout=60_000)
    first = int(loss_steps.get_attribute("data-count"))
    assert page.locator("body").get_attribute("data-done") is None, "finished too soon"
    page.wait_for_function(
        f"() => Number(document.querySelector('#chart-loss polyline[data-series=\"each step\"]')"
        f"?.dataset.count) > {first}", timeout=60_000)
    expect(page.locator("#filters-image")).to_be_visible()
    expect(page.locator("#samples-body .sample")).to_have_count(8)
    expect(page.locator("#confusion table tr")).to_have_count(len(CLASSES) + 1, timeout=60_000)
    assert page.locator("#stat-speed").inner_text() not in ("", "-")

    # Finished: / reloads as the explainer of best.npz.
    expect(page.locator("#maps .layer")).to_have_count(len(load(str(folder / "run" / "best.npz")).net.layers),
                                                       timeout=180_000)
    assert "/static/serve.js" in page.content()

    # /live keeps the whole run: every step, every epoch, the last epoch's numbers.
    page.goto(url + "/live")
    expect(page.locator("body")).to_have_attribute("data-done", "finished")
    expect(page.locator("body")).to_have_attribute("data-epoch-view", str(EPOCHS))
    expect(page.locator("body")).to_have_attribute("data-pictures", str(json.loads(
        urllib.request.urlopen(url + "/api/progress").read())["pictures"]))
    history = json.loads((folder / "run" / "history.json").read_text())
    spe = json.loads(urllib.request.urlopen(url + "/api/progress").read())["steps_per_epoch"]
    assert int(loss_steps.get_attribute("data-count")) == EPOCHS * spe
    accuracy = page.locator('#chart-accuracy polyline[data-series="validation"]')
    assert int(accuracy.get_attribute("data-count")) == len(history) == EPOCHS

    model = load(str(folder / "run" / "model.npz"))
    x, y = bars(IMAGES, seed=0, size=12)
    _, val = split_validation(len(y), 0.1, 0)
    want = evaluate(model.net, x[val], y[val], model.normalizer, len(CLASSES))["confusion"]
    shown = page.locator("#confusion table tr").evaluate_all(
        "rows => rows.slice(1).map(r => Array.from(r.querySelectorAll('td'), c => Number(c.textContent)))")
    assert shown == want
    for card in page.locator("#samples-body .sample").all():
        index = int(card.get_attribute("data-index"))
        probs = model.predict(x[val][index][None])[0]
        assert card.locator(".verdict").inner_text() == f"guess: {CLASSES[int(np.argmax(probs))]}"
    visit.clean()
    page.context.close()


def test_a_lost_answer_does_not_stop_the_page(browser, run):
    """The first /api/pictures request is cut off: the page says so and goes on polling (before,
    the failed request ended its polling loop, and the page froze)."""
    process, url, folder = run
    visit = Visit.new(browser, url)
    page = visit.page
    cut = []

    def cut_first(route):
        if not cut:
            cut.append(route.request.url)
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/api/pictures", cut_first)
    page.goto(url + "/live")
    loss_steps = page.locator('#chart-loss polyline[data-series="each step"]')
    expect(loss_steps).to_have_count(1, timeout=60_000)
    page.wait_for_function("() => document.body.dataset.pictures !== undefined", timeout=60_000)
    assert cut, "the page never asked for the pictures"
    after = int(loss_steps.get_attribute("data-count"))
    page.wait_for_function(
        f"() => Number(document.querySelector('#chart-loss polyline[data-series=\"each step\"]')"
        f"?.dataset.count) > {after}", timeout=60_000)
    expect(page.locator("body")).to_have_attribute("data-done", "finished", timeout=180_000)
    visit.only_local()          # the browser logs the reset connection itself
    page.context.close()
