"""The fixtures every test module may take; what they are made of is in helpers.py.

    npz_data    a fresh `.npz` data set of 8x8 bars (180 training, 60 test images): its spec
    numba       the compiled kernels; a test that takes it fails without numba (skips under
                SLIDENET_SKIP_NUMBA=1, never in CI: helpers.require)
    browser     Debian's Chromium under Playwright, one per test module (the BROWSER part's
                rule: missing, the tests fail; SLIDENET_SKIP_BROWSER=1 skips them, never in CI)

The batch-1 helper thread (`ops.conv.pair`, off by default) is off in the tests, and in the
commands they start, unless SLIDENET_PAIR names a setting: its compilation (seconds of CPU in
the background) would slow every test process that predicts a few images; tests/test_pair.py
turns it on where it tests it, and its results are the unpaired bits either way.
"""
import os

import pytest

from helpers import CHROMIUM, CHROMIUM_ARGS, import_part, numba_problem, require, write_bars


if "SLIDENET_PAIR" not in os.environ:
    os.environ["SLIDENET_PAIR"] = "0"           # for the CLI's subprocesses too
    from slidenet.ops.conv import pair
    pair.set_enabled(False)


@pytest.fixture
def npz_data(tmp_path):
    return write_bars(tmp_path / "bars.npz", 180)


@pytest.fixture
def numba():
    require("NUMBA", numba_problem())
    from slidenet.ops import compiled
    return compiled.kernels()


@pytest.fixture(scope="module")
def browser():
    (sync_api,) = import_part("BROWSER", "playwright.sync_api")
    require("BROWSER", None if os.path.exists(CHROMIUM) else f"{CHROMIUM} is missing")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
