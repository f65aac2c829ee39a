"""docs/interop.md's screenshots of `slidenet serve` on an imported ResNet, taken with Playwright.

    slidenet import resnet18.onnx --out resnet18.npz --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225
    .venv/bin/python scripts/serve_imported_screenshots.py resnet18.npz docs/img/serve \\
        [--image PICTURE.png] [--layer add1]

Starts `slidenet serve MODEL` on a free port, drops an image on the page (without --image, a
made-up 224 x 224 picture: a colour ramp with a disc, a square and a line, drawn here), waits
for every layer to be painted, and clicks one unit of an ADD layer: the one whose two numbers,
the branch's and the skip's, are both the largest (worked out here from the same model and
image, `Merge.branch_outputs`). Writes two PNGs, the ADD layer's row of the layers view (its
branches written out, its maps) and the clicked unit (branch + skip = out), and prints how
long the page took to show every layer and to answer the click, and the server's peak memory.
Needs /usr/bin/chromium.
"""
import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from playwright.sync_api import expect

import slidenet
from serve_screenshots import served_page     # this folder's script: run from the repo root

MAX_TILES = 64      # channels the page draws per layer (serve.js)


def made_up_picture(height, width):
    """A picture with edges of several colours and directions, uint8 (H, W, 3)."""
    y, x = np.mgrid[0:height, 0:width]
    ramp = np.stack([x * 255 / width, y * 255 / height, np.full(x.shape, 120.0)], -1)
    image = Image.fromarray(ramp.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    s = width / 224
    draw.ellipse((40 * s, 50 * s, 150 * s, 160 * s), fill=(230, 200, 40))
    draw.rectangle((120 * s, 120 * s, 200 * s, 200 * s), fill=(30, 60, 160))
    draw.line((10 * s, 210 * s, 210 * s, 10 * s), fill=(250, 250, 250), width=round(6 * s))
    return np.asarray(image)


def clearest_unit(model, pixels, layer_name):
    """(row, col, channel) of the ADD layer's unit whose branch and skip numbers are both
    largest (the smaller of the two, largest), for the picture the page will be sent."""
    net = model.net
    layer = next(layer for layer in net.layers if layer.name == layer_name)
    before = net.activations(model.normalizer.normalize(pixels[None]))[layer.info.index - 1][1]
    parts = np.abs(np.stack(layer.branch_outputs(before[0])))        # (branches, H, W, D)
    smallest = parts.min(axis=0)[..., :MAX_TILES]      # a channel the page draws
    return tuple(int(v) for v in np.unravel_index(smallest.argmax(), smallest.shape))


def peak_memory(pid):
    """The server's peak resident memory (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out", type=Path)
    parser.add_argument("--image", type=Path, help="a PNG or JPEG of the model's INPUT size")
    parser.add_argument("--layer", default="add1", help="the ADD layer to click (default add1)")
    parser.add_argument("--prefix", default="resnet18-", help="of the PNGs' names")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = slidenet.load(args.model)
    height, width, _ = model.input_shape
    if args.image:
        pixels = np.asarray(Image.open(args.image).convert("RGB"))
        if pixels.shape[:2] != (height, width):
            sys.exit(f"{args.image} is {pixels.shape[1]}x{pixels.shape[0]}; the model takes "
                     f"{width}x{height}")
    else:
        pixels = made_up_picture(height, width)
    picture = args.out / f"{args.prefix}picture.png"
    Image.fromarray(pixels).save(picture)
    row, col, channel = clearest_unit(model, pixels, args.layer)
    del model

    try:
        with served_page(args.model) as (server, page):
            began = time.perf_counter()
            page.set_input_files("#file", str(picture))
            last = page.locator("#maps .layer").last.get_attribute("data-layer")
            # Every layer painted: the last one's colour scale is written with its maps.
            expect(page.locator(f"#layer-{last} .scale")).not_to_be_empty(timeout=120_000)
            shown = time.perf_counter() - began

            tiles = page.locator(f"#layer-{args.layer} canvas.tile")
            box = tiles.nth(channel).bounding_box()
            map_height, map_width = (int(v) for v in
                                     page.locator(f"#layer-{args.layer} .volume")
                                     .inner_text().split(" x ")[:2])
            began = time.perf_counter()
            tiles.nth(channel).click(position={"x": (col + 0.5) * box["width"] / map_width,
                                               "y": (row + 0.5) * box["height"] / map_height})
            expect(page.locator("#unit-body")).to_have_attribute("data-layer", args.layer,
                                                                 timeout=60_000)
            expect(page.locator("#unit-value")).to_be_visible()
            clicked = time.perf_counter() - began

            _shoot(page, f"#layer-{args.layer}", args.out / f"{args.prefix}add.png")
            _shoot(page, "#unit", args.out / f"{args.prefix}add-unit.png")
            # Before the server stops: its peak memory is read from /proc.
            print(f"{args.layer} channel {channel} at ({row}, {col}); every layer shown "
                  f"{shown:.2f} s after the drop; the click answered in {clicked:.2f} s; server "
                  f"peak memory {peak_memory(server.pid):,.0f} MiB")
    finally:
        picture.unlink(missing_ok=True)


def _shoot(page, selector, path):
    """A screenshot of one element, saved as a PNG of 256 colours (a tenth of the bytes)."""
    data = page.locator(selector).screenshot()
    Image.open(io.BytesIO(data)).convert("RGB").quantize(256).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
