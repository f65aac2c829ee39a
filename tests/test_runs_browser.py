"""`slidenet serve RUNS/` in Chromium: one line per run on each chart, as many points as the
run has epochs, and a run hidden by its checkbox is gone from the charts. Launching Chromium,
and the rules for a machine without it, are those of test_serve_browser.py."""
import json

import pytest

from helpers import Visit, import_part, server, train_runs

(sync_api,) = import_part("BROWSER", "playwright.sync_api")
expect = sync_api.expect


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return train_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def visit(browser, folder):
    with server(folder, cwd=folder) as (_, url):
        seen = Visit.new(browser, url)
        expect(seen.page.locator("body")).to_have_attribute("data-runs", "2")
        yield seen
        seen.page.context.close()


def test_the_runs_are_overlaid_and_can_be_hidden(visit, folder):
    page = visit.page
    lines = page.locator("#chart-val polyline")
    counts = lines.evaluate_all("ls => ls.map(l => [l.dataset.series, Number(l.dataset.count)])")
    histories = {name: json.loads((folder / name / "history.json").read_text())
                 for name in ("a-lr3e-3", "b-lr1e-2")}
    assert counts == [[name, len(h)] for name, h in histories.items()]
    rows = page.locator("#runs-table tr[data-run]")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.run)") == list(histories)
    lr = page.locator("#runs-table tr[data-run='b-lr1e-2'] td.differs").all_inner_texts()
    assert "0.01" in lr                                   # the setting that differs, in bold
    assert page.locator("#runs-skipped li").count() == 4
    page.locator("#runs-table tr[data-run='a-lr3e-3'] input").uncheck()
    expect(page.locator("#chart-val polyline")).to_have_count(1)
    assert page.locator("#chart-val polyline").get_attribute("data-series") == "b-lr1e-2"
    visit.clean()
