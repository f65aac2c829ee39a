"""The screenshots of docs/serve.md's playground, `slidenet train --live` and runs side by side.

    .venv/bin/python scripts/live_screenshots.py runs/livedoc docs/img/serve

Opens the playground and types a net and a stride that does not fit; trains the default net
for 8 epochs with --live into RUNS/lr2e-3 and shoots the page after the third epoch; trains it
again with --lr 0.01 into RUNS/lr1e-2; serves RUNS and shoots the runs side by side. Needs
/usr/bin/chromium.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
EPOCHS = "8"


def start(*command):
    """A slidenet process, and the address in the first line that has one."""
    process = subprocess.Popen([sys.executable, "-m", "slidenet", *command, "--port", "0"],
                               stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        found = re.search(r"(http://\S+?)/? ", line)
        if found:
            return process, found.group(1)
    raise SystemExit(f"slidenet {' '.join(command)} printed no address")


def stop(process):
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)


def shoot(page, selector, path):
    page.locator(selector).screenshot(path=str(path))
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900}, device_scale_factor=1)

        process, url = start("serve")
        try:
            page.goto(url)
            page.fill("#pattern-text", "INPUT(32x32x3) -> [CONV(32) -> RELU]*2 -> POOL -> "
                                       "[CONV(64) -> RELU]*2 -> POOL -> FC(256) -> RELU -> FC(10)")
            expect(page.locator("#pattern-summary tr[data-layer]")).to_have_count(14)
            page.fill("#pattern-data", "cifar10:data/cifar10")
            page.wait_for_function("() => document.getElementById('train-command')"
                                   ".textContent.includes('cifar10')")
            shoot(page, "#playground", args.out / "playground.png")
            page.fill("#pattern-text", "INPUT(7x7x1) -> CONV(1, 3x3, s=3, p=0) -> FC(2)")
            expect(page.locator("#pattern-error")).to_be_visible()
            shoot(page, "#playground", args.out / "playground-error.png")
        finally:
            stop(process)

        process, url = start("train", "--epochs", EPOCHS, "--out", str(args.runs / "lr2e-3"),
                             "--live")
        try:
            page.goto(url + "/live")         # / would turn into the explainer when it ends
            expect(page.locator("body")).to_have_attribute("data-epoch-view", "3",
                                                           timeout=600_000)
            expect(page.locator("#samples-body .sample")).to_have_count(8)
            shoot(page, "header", args.out / "live-header.png")
            shoot(page, "#curves", args.out / "live-curves.png")
            shoot(page, "#filters", args.out / "live-filters.png")
            shoot(page, "#samples", args.out / "live-samples.png")
            shoot(page, "#epoch", args.out / "live-epoch.png")
            page.goto(url)
            expect(page.locator("#maps .layer").first).to_be_visible(timeout=600_000)
        finally:
            stop(process)

        subprocess.run([sys.executable, "-m", "slidenet", "train", "--epochs", EPOCHS, "--lr",
                        "0.01", "--out", str(args.runs / "lr1e-2")], check=True,
                       stdout=subprocess.DEVNULL)
        process, url = start("serve", str(args.runs))
        try:
            page.goto(url)
            expect(page.locator("body")).to_have_attribute("data-runs", "2")
            shoot(page, "#curves", args.out / "runs-curves.png")
            shoot(page, "#runs", args.out / "runs-table.png")
        finally:
            stop(process)
        browser.close()


if __name__ == "__main__":
    main()
