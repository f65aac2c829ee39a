"""The screenshots of docs/serve.md: each view of `slidenet serve`, taken with Playwright.

    .venv/bin/slidenet train --epochs 2 --out runs/servedoc
    .venv/bin/python scripts/serve_screenshots.py runs/servedoc/best.npz docs/img/serve

Starts the server on a free port, draws a 7 on the canvas, clicks units, steps the sliding
filter and asks for top patches, and writes one PNG per view. Needs /usr/bin/chromium.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SEVEN = [(70, 70), (215, 70), (205, 95), (150, 170), (120, 245)]    # a 7, on the 280 px canvas


@contextmanager
def served_page(model):
    """`slidenet serve MODEL` on a free port and a Chromium page on it, 1200 x 900:
    yields (the server's Popen, the page); stops both afterwards."""
    server = subprocess.Popen([sys.executable, "-m", "slidenet", "serve", str(model),
                               "--port", "0"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = re.search(r"on (http://\S+?)/? ", server.stdout.readline()).group(1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                 headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900},
                                    device_scale_factor=1)
            page.goto(url)
            yield server, page
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)


def draw(page, points):
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
    page.mouse.up()
    expect(page.locator("body")).to_have_attribute("data-drawing", "0")


def shoot(page, selector, path):
    page.locator(selector).screenshot(path=str(path))
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with served_page(args.model) as (_, page):
        draw(page, SEVEN)
        shoot(page, "#input", args.out / "input.png")
        shoot(page, "#layers", args.out / "layers.png")

        page.locator("#layer-conv2 canvas.tile").nth(5).click(position={"x": 30, "y": 24})
        expect(page.locator("#unit-body")).to_have_attribute("data-layer", "conv2")
        shoot(page, "#unit", args.out / "unit-conv.png")
        page.locator("#layer-maxpool2 canvas.tile").nth(3).click(position={"x": 30, "y": 30})
        expect(page.locator("#unit-body")).to_have_attribute("data-layer", "maxpool2")
        shoot(page, "#unit", args.out / "unit-pool.png")
        last = page.locator("#maps .layer").last.get_attribute("data-layer")
        page.locator(f"#layer-{last} canvas.strip").click(position={"x": 7 * 14 + 5, "y": 5})
        expect(page.locator("#unit-body")).to_have_attribute("data-layer", last)
        shoot(page, "#unit", args.out / "unit-fc.png")

        for _ in range(5):
            page.click("#slide-next")
        shoot(page, "#slide", args.out / "slide.png")
        page.fill("#slide-form input[name=s]", "3")
        page.fill("#slide-form input[name=p]", "0")
        expect(page.locator("#slide-error")).to_be_visible()
        shoot(page, "#slide", args.out / "slide-error.png")

        page.select_option("#patches-form select[name=layer]", "conv4")
        page.fill("#patches-form input[name=channel]", "3")
        page.click("#patches-form button")
        expect(page.locator("#patches-grid .patch").first).to_be_visible(timeout=120_000)
        shoot(page, "#patches", args.out / "patches.png")

        notes = args.out / "not-an-image.txt"
        notes.write_text("a text file\n")
        page.set_input_files("#file", str(notes))
        expect(page.locator("#error")).to_be_visible()
        notes.unlink()
        shoot(page, "#input", args.out / "error.png")


if __name__ == "__main__":
    main()
