"""The pattern playground in Chromium: typing shows what `slidenet summary --json` says.

The table, the totals and the caret on the page are checked against the API's answer and
against the CLI's error for the same pattern; the train command against what the page's
settings say; the sliding filter against a dot product done here. Launching Chromium, and the
rules for a machine without it, are those of test_serve_browser.py.
"""
import pytest

from helpers import Visit, import_part, server, table_numbers
from slidenet.cli import main
from slidenet.training.config import DEFAULT_PATTERN
from slidenet.notation.summary import summarize

(sync_api,) = import_part("BROWSER", "playwright.sync_api")
expect = sync_api.expect

STRIDE_3 = "INPUT(7x7x1) -> CONV(1, 3x3, s=3, p=0) -> FC(2)"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with server(None, cwd=tmp_path_factory.mktemp("playground")) as (_, url):
        yield url


@pytest.fixture
def visit(browser, site):
    seen = Visit.new(browser, site, permissions=("clipboard-read", "clipboard-write"))
    expect(seen.page.locator("body")).to_have_attribute("data-summarised", "1")
    yield seen
    seen.page.context.close()


def typed(page, text):
    """Replace the pattern with `text` and wait until its answer is shown."""
    page.fill("#pattern-text", text)
    expect(page.locator("#pattern-summary tr[data-layer], #pattern-error:visible").first).to_be_visible()
    page.wait_for_function("t => document.getElementById('train-command').textContent"
                           ".includes(t)", arg=" ".join(text.split()))


def rows(page):
    return page.locator("#pattern-summary tr[data-layer]").evaluate_all(
        "rows => rows.map(r => Array.from(r.cells, c => c.textContent))")


def test_the_default_net_is_summarised_as_the_cli_does(visit):
    page = visit.page
    expected = summarize(DEFAULT_PATTERN)
    shown = rows(page)
    assert [r[0] for r in shown] == [layer["name"] for layer in expected["layers"]]
    for row, layer in zip(shown, expected["layers"]):
        assert row[1] == layer["text"] and row[2] == " x ".join(map(str, layer["output_shape"]))
        assert row[3] == (layer["params_formula"] or "-")
        assert row[5].rstrip("*") == " x ".join(map(str, layer["receptive_field"]))
        if layer["size_formulas"]:
            assert layer["size_formulas"][0] in row[4]
    assert f"total parameters {expected['total_params']:,}" in page.locator("#pattern-totals").inner_text()
    visit.clean()


def test_typing_a_net_updates_the_table_and_an_error_shows_its_caret(visit, capsys):
    page = visit.page
    typed(page, "INPUT(32x32x3) -> CONV(10, 5x5, s=1, p=2)")
    assert rows(page)[1][:4] == ["conv1", "CONV(10, 5x5, s=1, p=2)", "32 x 32 x 10", "10 x (5*5*3 + 1) = 760"]
    assert page.locator("#pattern-error").is_hidden()

    typed(page, STRIDE_3)
    box = page.locator("#pattern-error")
    expect(box).to_be_visible()
    lines = box.inner_text().splitlines()
    assert main(["summary", STRIDE_3]) == 2
    cli = capsys.readouterr().err.strip().splitlines()
    assert lines[0] in cli[0] and "2.33" in lines[0] and "p=1 makes it" in lines[0]
    assert lines[1].strip() == STRIDE_3 and lines[2].index("^") == cli[2].index("^")
    assert lines[2].index("^") - 2 == STRIDE_3.index("CONV")
    assert page.locator("#pattern-summary tr").count() == 0
    visit.only_local()          # the refused pattern's 400 is logged by the browser itself


def test_the_copy_button_copies_the_train_command(visit):
    page = visit.page
    typed(page, "INPUT(28x28x1) -> [CONV(8) -> RELU]*N -> POOL? -> FC(10)")
    page.fill("#pattern-set", "N=2")
    page.check("#pattern-skip")
    want = summarize("INPUT(28x28x1) -> [CONV(8) -> RELU]*N -> POOL? -> FC(10)", {"N": 2}, True)
    expect(page.locator("#pattern-summary tr[data-layer]")).to_have_count(len(want["layers"]))
    expected = ("slidenet train --pattern 'INPUT(28x28x1) -> [CONV(8) -> RELU]*N -> POOL? -> "
                "FC(10)' --set N=2 --skip-optional")
    expect(page.locator("#train-command")).to_have_text(expected)
    page.click("#copy-command")
    expect(page.locator("#copy-status")).to_have_text("copied")
    assert page.evaluate("navigator.clipboard.readText()") == expected
    assert [r[0] for r in rows(page)] == [layer["name"] for layer in want["layers"]]
    visit.only_local()      # N unbound until --set came: a 400 the browser logs itself


def test_the_slide_stepper_is_on_the_playground(visit):
    page = visit.page
    expect(page.locator("#slide-formula")).to_contain_text("(7 + 2*1 - 3) / 2 + 1 = 4")
    padded, w = table_numbers(page.locator("#slide-input")), table_numbers(page.locator("#slide-filter"))
    page.click("#slide-next")
    dot = int((padded[0:3, 2:5] * w).sum())
    assert page.locator("#slide-caption").inner_text().endswith(f"= {dot}")
    visit.clean()
