"""`slidenet serve` in a real browser: Playwright drives Debian's chromium against a live server.

Each of the page's five interactions is checked against slidenet's Python API: the
probabilities of a drawing against `Model.predict` of the image the page shows, the maps'
colours against `net.activations`, a unit's worked sum against its activation, the sliding
filter's numbers against a dot product done here, the top patches against `viz.top_patches`.
Every test also checks that the page asked no other host for anything. And the page is never
left waiting for good: an answer held back or cut off is named on the page, and the next stroke
is answered as usual.

Needs /usr/bin/chromium (`make browser`, or `apt-get install chromium`). Missing, these tests
fail; SLIDENET_SKIP_BROWSER=1 skips them on a machine without it (never in CI).
"""
import re

import httpx
import numpy as np
import pytest

from helpers import Visit, bars, image_like, import_part, png_bytes, server, table_numbers, train_tiny
from slidenet import Net, geometry
from slidenet.data import Normalizer
from slidenet.errors import GeometryError
from slidenet.model import load, save
from slidenet.viz.patches import top_patches

TILE = 56           # CSS pixels of a map tile's longer side (serve.js)
CELL = 14           # CSS pixels of a strip cell (serve.js)
# How long (ms) a test waits for the page to show a server's answer: Playwright's 5 s default
# is short for a 2-core machine that other work keeps busy. A hang still fails.
ANSWERED = 15_000

(sync_api,) = import_part("BROWSER", "playwright.sync_api")
expect = sync_api.expect


@pytest.fixture(scope="module", autouse=True)
def patient():
    """Every `expect` of this module waits up to ANSWERED for the page."""
    expect.set_options(timeout=ANSWERED)
    yield
    expect.set_options(timeout=5_000)           # Playwright's default, for the other modules


def warm(url, pixels):
    """One prediction before any page is timed: the server compiles its kernels on its first
    (on a busy machine that alone can take seconds), and no test here measures that."""
    answer = httpx.post(url + "/api/predict", content=png_bytes(pixels), timeout=120)
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    path, spec = train_tiny(folder)
    with server(path, cwd=folder) as (_, url):
        warm(url, image_like((12, 12, 1)))
        yield {"url": url, "model": load(str(path)), "folder": folder, "data": spec}


@pytest.fixture
def visit(browser, site):
    seen = Visit.new(browser, site["url"])
    expect(seen.page.locator("#maps .layer")).to_have_count(len(site["model"].net.layers))
    yield seen
    seen.page.context.close()


def upload(visit, pixels, folder, name="image.png"):
    """Choose a PNG of `pixels` in the file field; wait until the page has shown it."""
    before = int(visit.page.locator("body").get_attribute("data-shown") or 0)
    path = folder / name
    path.write_bytes(png_bytes(pixels))
    visit.page.set_input_files("#file", str(path))
    expect(visit.page.locator("body")).to_have_attribute("data-shown", str(before + 1))


def canvas_pixels(locator):
    """RGBA (H, W, 4) of a canvas as drawn."""
    size = locator.evaluate("c => [c.height, c.width]")
    data = locator.evaluate("c => Array.from(c.getContext('2d')"
                            ".getImageData(0, 0, c.width, c.height).data)")
    return np.array(data, dtype=np.uint8).reshape(*size, 4)


def shown_probabilities(page):
    return [float(v) for v in page.locator("#probs .prob .value").all_inner_texts()]


def maps_of(model, pixels):
    return dict(model.net.activations(model.normalizer.normalize(pixels[None])))


def number(page, selector):
    return float(page.locator(selector).inner_text())


# ---- 1. draw or drop an image ----

def stroke(page, y=150):
    """A horizontal stroke across the drawing board at `y` (CSS pixels of its 280), the
    pointer still down at the end; `page.mouse.up()` ends it."""
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + 50, box["y"] + y)
    page.mouse.down()
    for k in range(1, 12):
        page.mouse.move(box["x"] + 50 + 16 * k, box["y"] + y, steps=2)


def drawn(page):
    """Wait until every stroke's answer is shown (body's data-drawing, serve.js)."""
    expect(page.locator("body")).to_have_attribute("data-drawing", "0")


def test_drawing_shows_the_probabilities_as_you_draw(visit, site):
    page, model = visit.page, site["model"]
    box = page.locator("#draw").bounding_box()
    stroke(page)
    # Still drawing, and the probabilities are already there.
    expect(page.locator("#probs .prob")).to_have_count(3)
    page.mouse.up()
    drawn(page)

    # The stroke, resized to 12 x 12: bright along row 150 / 280 * 12 = 6, black far off it.
    # data-drawing is "0" only once the last stroke's answer is painted (serve.js sets it
    # after the answer is shown), so what is on the canvas now is that answer.
    seen = canvas_pixels(page.locator("#seen"))[..., :1]       # the image as the net sees it
    assert seen[6, 4:8, 0].min() > 100 and seen[0].max() == 0 and seen[11].max() == 0, \
        f"the image as the net sees it, rows 0, 6 and 11: {seen[[0, 6, 11], :, 0].tolist()}"
    np.testing.assert_allclose(shown_probabilities(page), model.predict(seen[None])[0],
                               atol=5e-4 + 1e-6)

    before = shown_probabilities(page)
    page.mouse.move(box["x"] + 140, box["y"] + 20)                  # a vertical stroke
    page.mouse.down()
    page.mouse.move(box["x"] + 140, box["y"] + 260, steps=12)
    page.mouse.up()
    drawn(page)
    seen = canvas_pixels(page.locator("#seen"))[..., :1]
    assert seen[2:10, 6, 0].min() > 100 and seen[6, 4:8, 0].min() > 100    # a cross now
    assert shown_probabilities(page) != before
    np.testing.assert_allclose(shown_probabilities(page), model.predict(seen[None])[0],
                               atol=5e-4 + 1e-6)
    visit.clean()


def shows_the_drawing(page, model):
    """The probabilities shown are `Model.predict` of the image the page shows."""
    seen = canvas_pixels(page.locator("#seen"))[..., :1]
    assert seen.max() > 100                                    # a stroke, not the blank board
    np.testing.assert_allclose(shown_probabilities(page), model.predict(seen[None])[0],
                               atol=5e-4 + 1e-6)


def test_an_answer_that_never_comes_is_named_and_the_next_stroke_is_answered(visit, site):
    """A stroke's request the server never answers: the page waits for a slow answer, then
    gives up on it and says so, instead of "drawing" for good; the next stroke is answered."""
    page = visit.page
    page.clock.install()                            # the page's timers run on this clock
    held = []
    page.route("**/api/look", lambda route: held.append(route))    # neither answered nor refused
    box = page.locator("#draw").bounding_box()
    with page.expect_request("**/api/look"):
        page.mouse.click(box["x"] + 140, box["y"] + 140)        # a dot: one request
    page.clock.fast_forward(1_000)                  # slow, but still waited for
    assert page.locator("body").get_attribute("data-drawing") == "1"
    expect(page.locator("#error")).to_be_hidden()
    page.clock.fast_forward(10 * 60_000)
    drawn(page)
    expect(page.locator("#error")).to_contain_text("the server did not answer within")
    assert len(held) == 1
    held[0].abort()                                 # the page has gone on without it
    page.unroute("**/api/look")
    stroke(page, y=100)
    page.mouse.up()
    drawn(page)
    expect(page.locator("#error")).to_be_hidden()
    shows_the_drawing(page, site["model"])
    visit.only_local()


def test_a_request_cut_off_is_named_and_the_next_stroke_is_answered(visit, site):
    page = visit.page
    page.route("**/api/look", lambda route: route.abort("connectionreset"))
    stroke(page)
    page.mouse.up()
    drawn(page)
    expect(page.locator("#error")).to_contain_text("the server did not answer (")
    page.unroute("**/api/look")
    stroke(page, y=100)
    page.mouse.up()
    drawn(page)
    expect(page.locator("#error")).to_be_hidden()
    shows_the_drawing(page, site["model"])
    visit.only_local()          # the browser logs the reset connection itself


def test_a_stroke_is_sent_without_waiting_for_the_browsers_idle_time(browser, site):
    """Chromium's canvas.toBlob encodes in the page's idle time: it waits up to 1 s for some,
    and on a busy machine gives the encoding up to 5.7 s more (CanvasAsyncBlobCreator), all the
    while the page shows "drawing". Here a browser with no idle time at all: toBlob answers
    after 10 minutes. The stroke must still be answered at once."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script("""(() => {
        const encode = HTMLCanvasElement.prototype.toBlob;
        HTMLCanvasElement.prototype.toBlob = function (...args) {
            setTimeout(() => encode.apply(this, args), 600000);
        };
    })();""")
    seen = Visit.open(context, site["url"])
    page = seen.page
    page.goto(site["url"] + "/")
    stroke(page)
    page.mouse.up()
    drawn(page)
    shows_the_drawing(page, site["model"])
    seen.clean()
    context.close()


def test_an_image_file_is_shown_as_the_net_sees_it(visit, site):
    page, model = visit.page, site["model"]
    pixels = image_like((12, 12, 1), seed=3)
    upload(visit, pixels, site["folder"])
    np.testing.assert_array_equal(canvas_pixels(page.locator("#seen"))[..., 0], pixels[..., 0])
    np.testing.assert_allclose(shown_probabilities(page), model.predict(pixels[None])[0],
                               atol=5e-4 + 1e-6)
    best = int(model.predict(pixels[None])[0].argmax())
    assert page.locator("#probs .prob.best .name").inner_text() == model.class_names[best]
    visit.clean()


# ---- 2. the whole net at once ----

def test_every_layer_is_shown_in_order_on_one_scale_per_layer(visit, site):
    page, model = visit.page, site["model"]
    pixels = image_like((12, 12, 1), seed=4)
    upload(visit, pixels, site["folder"])
    maps = maps_of(model, pixels)
    rows = page.locator("#maps .layer")
    infos = model.net.infos[1:]
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.layer)") == [i.name for i in infos]
    sizes = set()
    for info in infos:
        row = page.locator(f"#layer-{info.name}")
        head = row.locator(".layer-head").inner_text()
        assert info.spec.text in head and " x ".join(map(str, info.output_shape)) in head
        out = maps[info.name][0]
        if out.ndim == 3:
            tiles = row.locator("canvas.tile")
            assert tiles.count() == out.shape[2]
            for c in range(out.shape[2]):
                box = tiles.nth(c).bounding_box()
                sizes.add((round(box["width"]), round(box["height"])))
            assert f"{max(abs(out.min()), out.max()) if out.min() < 0 else out.max():.3f}" in head
            for c in range(out.shape[2]):
                _check_colours(canvas_pixels(tiles.nth(c))[..., :3], out[..., c], out)
        else:
            strip = canvas_pixels(row.locator("canvas.strip"))[..., :3].reshape(-1, 3)
            _check_colours(strip[:len(out)], out, out)
    assert sizes == {(TILE, TILE)}          # the same tile size in every layer
    visit.clean()


def _check_colours(rgb, values, layer):
    """The colours follow the numbers on the layer's one scale: red for positive and blue for
    negative numbers when the layer has any below zero, else brighter for larger numbers."""
    rgb = rgb.reshape(-1, 3).astype(float)
    values = values.reshape(-1)
    if layer.min() < 0:
        limit = max(-layer.min(), layer.max())
        strong = np.abs(values) > 0.25 * limit
        red = rgb[:, 0] > rgb[:, 2]
        assert np.array_equal(red[strong], values[strong] > 0)
    else:
        brightness = rgb @ [0.3, 0.59, 0.11]
        order = np.argsort(values, kind="stable")
        assert np.all(np.diff(brightness[order]) >= -3)     # rounding to whole RGB values
        assert np.all(brightness[values == values.max()] == brightness.max())


# ---- 3. one unit ----

def test_clicking_a_conv_unit_works_out_its_sum(visit, site):
    page, model = visit.page, site["model"]
    pixels = image_like((12, 12, 1), seed=5)
    upload(visit, pixels, site["folder"])
    maps = maps_of(model, pixels)
    # conv2 is 6 x 6: a click 33 px right and 12 px down a 56 px tile is row 1, column 3.
    page.locator("#layer-conv2 canvas.tile").nth(3).click(position={"x": 33, "y": 12})
    body = page.locator("#unit-body")
    expect(body).to_have_attribute("data-layer", "conv2")
    assert [body.get_attribute(f"data-{k}") for k in ("row", "col", "channel")] == ["1", "3", "3"]
    activation = float(maps["conv2"][0, 1, 3, 3])
    # Shown to 4 decimals: the worked sum and the map agree to that precision.
    assert abs(number(page, "#unit-value") - activation) <= 0.5e-4 + 1e-6
    assert abs(number(page, "#unit-activation") - activation) <= 0.5e-4 + 1e-6
    assert abs(number(page, "#unit-sum") + number(page, "#unit-bias")
               - number(page, "#unit-value")) <= 1.5e-4
    # The window of every one of maxpool1's 4 channels, rows 0..2 and columns 2..4.
    triples = body.locator(".triple")
    assert triples.count() == 4
    padded = np.pad(maps["maxpool1"][0], ((1, 1), (1, 1), (0, 0)))
    for d in range(4):
        shown = [float(v) for v in triples.nth(d).locator("table").first.locator("td")
                 .all_inner_texts()]
        np.testing.assert_allclose(shown, padded[1:4, 3:6, d].reshape(-1), atol=5e-4 + 1e-6)
    # Its receptive field, rows -1..6 and columns 3..10, lit up on the input (clipped at 0).
    assert _field_box(page.locator("#field")) == pytest.approx(
        [0, 100 * 3 / 12, 100 * 7 / 12, 100 * 8 / 12], abs=0.01)
    assert "rows -1..6, columns 3..10" in page.locator("#unit-field").inner_text()
    visit.clean()


def _field_box(locator):
    """[top, left, height, width] of a field box, in % of the image."""
    style = locator.get_attribute("style")
    return [float(re.search(rf"(?:^|;)\s*{key}:\s*([\d.]+)%", style).group(1))
            for key in ("top", "left", "height", "width")]


def test_clicking_a_pool_unit_shows_the_window_and_its_winner(visit, site):
    page, model = visit.page, site["model"]
    pixels = image_like((12, 12, 1), seed=6)
    upload(visit, pixels, site["folder"])
    maps = maps_of(model, pixels)
    page.locator("#layer-maxpool1 canvas.tile").nth(2).click(position={"x": 40, "y": 50})
    expect(page.locator("#unit-body")).to_have_attribute("data-layer", "maxpool1")
    # 56 px over 6 units: row 5, column 4; the window is relu1 rows 10..11, columns 8..9.
    window = maps["relu1"][0, 10:12, 8:10, 2]
    assert abs(number(page, "#unit-value") - float(window.max())) <= 0.5e-4 + 1e-6
    assert abs(float(maps["maxpool1"][0, 5, 4, 2]) - number(page, "#unit-activation")) <= 0.5e-4 + 1e-6
    cells = [float(v) for v in page.locator("#unit-body table.cells td").all_inner_texts()]
    np.testing.assert_allclose(cells, window.reshape(-1), atol=5e-4 + 1e-6)
    winner = int(np.argmax(window.reshape(-1)))             # the first maximum, row by row
    tds = page.locator("#unit-body table.cells td")
    assert tds.nth(winner).get_attribute("class") == "win"
    assert page.locator("#unit-body td.win").count() == 1
    visit.clean()


def test_clicking_an_fc_unit_works_out_its_sum(visit, site):
    page, model = visit.page, site["model"]
    pixels = image_like((12, 12, 1), seed=7)
    upload(visit, pixels, site["folder"])
    maps = maps_of(model, pixels)
    page.locator("#layer-fc1 canvas.strip").click(position={"x": 2 * CELL + 5, "y": 5})
    expect(page.locator("#unit-body")).to_have_attribute("data-channel", "2")
    activation = float(maps["fc1"][0, 2])
    assert abs(number(page, "#unit-value") - activation) <= 0.5e-4 + 1e-6
    assert abs(number(page, "#unit-sum") + number(page, "#unit-bias") - activation) <= 1.5e-4
    assert _field_box(page.locator("#field")) == [0, 0, 100, 100]      # the whole image
    visit.clean()


# ---- 4. sliding a filter ----

def test_the_slide_stepper_works_out_each_position(visit):
    page = visit.page
    expect(page.locator("#slide-formula")).to_contain_text("(7 + 2*1 - 3) / 2 + 1 = 4")
    padded, w = table_numbers(page.locator("#slide-input")), table_numbers(page.locator("#slide-filter"))
    assert padded.shape == (9, 9) and w.shape == (3, 3)
    assert not padded[0].any() and not padded[:, -1].any()         # the zero border
    assert table_numbers(page.locator("#slide-output")).shape == (4, 4)
    for _ in range(6):
        page.click("#slide-next")
    i, j = divmod(6, 4)
    dot = int((padded[2 * i:2 * i + 3, 2 * j:2 * j + 3] * w).sum())
    caption = page.locator("#slide-caption").inner_text()
    assert caption.startswith(f"output ({i}, {j}) \u2190 rows 2..4, columns 4..6")
    assert caption.endswith(f"= {dot}")
    assert page.locator("#slide-output td.now").inner_text() == str(dot)
    assert page.locator("#slide-output td.done").count() == 6
    assert page.locator("#slide-input td.window").count() == 9
    # The lecture's stride that does not fit: slidenet's own teaching error.
    page.fill("#slide-form input[name=s]", "3")
    page.fill("#slide-form input[name=p]", "0")
    with pytest.raises(GeometryError) as taught:
        geometry.output_size(7, 3, 3, 0, "input")
    assert "(7 - 3) / 3 + 1 = 2.33" in str(taught.value)
    expect(page.locator("#slide-error")).to_have_text(str(taught.value))
    expect(page.locator("#slide-view")).to_be_hidden()
    page.fill("#slide-form input[name=p]", "1")
    expect(page.locator("#slide-formula")).to_contain_text("(7 + 2*1 - 3) / 3 + 1 = 3")
    expect(page.locator("#slide-error")).to_be_hidden()
    visit.only_local()      # the refused geometry's 400 is logged by the browser itself


def test_a_late_answer_for_an_earlier_slide_does_not_replace_the_latest(visit):
    """Changes of the form in a row ask again each time, and answers can come back out of
    order: earlier answers, held back until after the last one's, must not be shown over it."""
    page = visit.page
    form = page.locator("#slide-form")
    expect(page.locator("#slide-formula")).to_contain_text("(7 + 2*1 - 3) / 2 + 1 = 4")
    answered = int(form.get_attribute("data-answered"))
    asked, held = [], []
    page.on("request", lambda r: "/api/slide?" in r.url and asked.append(r.url))

    def hold(route):                # S = 3, P = 1 (which fits) is held back; the rest pass
        query = route.request.url.split("?", 1)[1].split("&")
        if "s=3" in query and "p=1" in query:
            held.append(route)
        else:
            route.continue_()

    page.route("**/api/slide?*", hold)
    with page.expect_request(lambda r: "s=3&p=1" in r.url):
        page.fill("#slide-form input[name=s]", "3")
    page.fill("#slide-form input[name=p]", "0")              # S = 3, P = 0 does not fit
    expect(page.locator("#slide-error")).to_contain_text("(7 - 3) / 3 + 1 = 2.33")
    assert len(held) == 1
    held[0].continue_()                                      # the earlier answer, late
    expect(form).to_have_attribute("data-answered", str(answered + len(asked)))
    expect(page.locator("#slide-error")).to_be_visible()
    expect(page.locator("#slide-error")).to_contain_text("(7 - 3) / 3 + 1 = 2.33")
    expect(page.locator("#slide-view")).to_be_hidden()
    page.unroute("**/api/slide?*")
    visit.only_local()      # the refused geometry's 400 is logged by the browser itself


# ---- 5. what a channel looks for ----

def test_top_patches_are_those_of_viz_patches(visit, site):
    page, model = visit.page, site["model"]
    page.select_option("#patches-form select[name=layer]", "conv2")
    page.fill("#patches-form input[name=channel]", "4")
    page.click("#patches-form button")
    patches = page.locator("#patches-grid .patch")
    expect(patches).to_have_count(9)
    x, y = bars(60, seed=1, size=12)
    found = top_patches(model.net, x, model.normalizer, "conv2", channels=6)
    values = [float(v) for v in page.locator("#patches-grid .patch .value").all_inner_texts()]
    np.testing.assert_allclose(values, found.values[4], atol=5e-4 + 1e-6)
    for rank in range(9):
        image = int(found.images[4, rank])
        label = ["row", "column", "square"][y[image]]
        assert f"image {image}: {label}" in patches.nth(rank).inner_text()
    assert "8 x 8 receptive field" in page.locator("#patches-status").inner_text()
    visit.clean()


# ---- refusals ----

def test_bad_uploads_are_explained_on_the_page(visit, site):
    page, folder = visit.page, site["folder"]
    (folder / "notes.txt").write_text("not an image\n")
    page.set_input_files("#file", str(folder / "notes.txt"))
    expect(page.locator("#error")).to_contain_text("notes.txt: the file is not a PNG or JPEG image")
    (folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(10 * 2**20))
    page.set_input_files("#file", str(folder / "huge.png"))
    expect(page.locator("#error")).to_contain_text("huge.png: the image is larger than 10 MB")
    # The server goes on serving.
    upload(visit, image_like((12, 12, 1), seed=8), folder)
    expect(page.locator("#error")).to_be_hidden()
    visit.only_local()


# ---- a colour model: no drawing, any image file ----

def test_a_colour_model_takes_image_files(browser, tmp_path):
    net = Net.from_pattern("INPUT(10x10x3) -> CONV(4) -> RELU -> AVGPOOL -> FC(2)", seed=1)
    pixels = np.random.default_rng(9).integers(0, 255, (10, 10, 3)).astype(np.uint8)
    save(tmp_path / "colour.npz", net, Normalizer.fit(pixels[None]), ["warm", "cool"])
    model = load(str(tmp_path / "colour.npz"))
    with server(tmp_path / "colour.npz", cwd=tmp_path) as (_, url):
        warm(url, pixels)
        context = browser.new_context()
        seen = Visit.open(context, url)
        page = seen.page
        page.goto(url + "/")
        assert page.locator("#draw").count() == 0
        upload(seen, pixels, tmp_path)
        np.testing.assert_array_equal(canvas_pixels(page.locator("#seen"))[..., :3], pixels)
        np.testing.assert_allclose(shown_probabilities(page), model.predict(pixels[None])[0],
                                   atol=5e-4 + 1e-6)
        page.locator("#layer-avgpool1 canvas.tile").nth(1).click(position={"x": 5, "y": 50})
        expect(page.locator("#unit-body")).to_have_attribute("data-layer", "avgpool1")
        maps = maps_of(model, pixels)
        assert abs(number(page, "#unit-value") - float(maps["avgpool1"][0, 4, 0, 1])) <= 0.5e-4 + 1e-6
        assert page.locator("#unit-body table.cells td").count() == 4
        seen.clean()
        context.close()


def test_a_model_of_many_classes_lists_its_most_probable(browser, tmp_path):
    """An ImageNet-sized head (here 25 classes, over the page's 10 listed): the 10 most probable
    classes, most probable first, each with `Model.predict`'s probability; the class names in
    short at the top and under the scores."""
    net = Net.from_pattern("INPUT(10x10x3) -> CONV(4) -> RELU -> AVGPOOL -> FC(25)", seed=2)
    net.params["fc1.W"][...] *= 40         # probabilities far enough apart to have an order
    pixels = np.random.default_rng(10).integers(0, 255, (10, 10, 3)).astype(np.uint8)
    names = [f"k{c}" for c in range(25)]
    save(tmp_path / "many.npz", net, Normalizer.fit(pixels[None]), names)
    model = load(str(tmp_path / "many.npz"))
    with server(tmp_path / "many.npz", cwd=tmp_path) as (_, url):
        warm(url, pixels)
        context = browser.new_context()
        seen = Visit.open(context, url)
        page = seen.page
        page.goto(url + "/")
        expect(page.locator("header, main").first).to_contain_text("classes: k0, k1, k2, ..., k24 (25)")
        upload(seen, pixels, tmp_path)
        probabilities = model.predict(pixels[None])[0]
        top = np.argsort(-probabilities, kind="stable")[:10]
        rows = page.locator("#probs .prob")
        expect(rows).to_have_count(10)
        assert [rows.nth(i).get_attribute("data-class") for i in range(10)] == \
            [names[c] for c in top]
        np.testing.assert_allclose(shown_probabilities(page), probabilities[top], atol=5e-4 + 1e-6)
        assert page.locator("#probs .prob.best").get_attribute("data-class") == names[top[0]]
        expect(page.locator("#probs .listed")).to_have_text("the 10 most probable of 25 classes")
        expect(page.locator("#layer-fc1 .classes")).to_have_text(
            "the score of each class, in order: k0, k1, k2, ..., k24")
        seen.clean()
        context.close()


# ---- after the second hour (#25): the invert hint, names, layout, no stale state ----

def test_a_dark_on_light_image_gets_the_invert_hint_and_toggle(visit, site):
    page, model = visit.page, site["model"]
    pixels = 255 - image_like((12, 12, 1), seed=10)      # light paper, dark strokes
    upload(visit, pixels, site["folder"])
    trained = float(np.mean(model.normalizer.mean))
    assert abs(pixels.mean() / 255 - trained) > 0.4      # what `slidenet predict` warns about
    expect(page.locator("#hint")).to_be_visible()
    expect(page.locator("#hint")).to_contain_text("tick invert")
    before = int(page.locator("body").get_attribute("data-shown"))
    page.check("#invert")
    expect(page.locator("body")).to_have_attribute("data-shown", str(before + 1))
    flipped = 255 - pixels
    np.testing.assert_array_equal(canvas_pixels(page.locator("#seen"))[..., 0], flipped[..., 0])
    np.testing.assert_allclose(shown_probabilities(page), model.predict(flipped[None])[0],
                               atol=5e-4 + 1e-6)
    expect(page.locator("#hint")).to_be_hidden()
    # A unit clicked now is worked out on the inverted image.
    page.locator("#layer-conv1 canvas.tile").nth(0).click(position={"x": 31, "y": 31})
    expect(page.locator("#unit-body")).to_have_attribute("data-layer", "conv1")
    assert page.locator("#unit-body").get_attribute("data-row") == "6"
    activation = float(maps_of(model, flipped)["conv1"][0, 6, 6, 0])
    assert abs(number(page, "#unit-activation") - activation) <= 0.5e-4 + 1e-6
    visit.clean()


def test_the_last_layer_is_named_by_its_classes(visit, site):
    page, model = visit.page, site["model"]
    upload(visit, image_like((12, 12, 1), seed=11), site["folder"])
    last = model.net.infos[-1].name
    strip = page.locator(f"#layer-{last} canvas.strip")
    strip.hover(position={"x": 2 * CELL + 5, "y": 5})
    expect(page.locator("#hover")).to_contain_text(f"{last} score of class square: ")
    expect(page.locator(f"#layer-{last} .classes")).to_have_text(
        "the score of each class, in order: row, column, square")
    strip.click(position={"x": 1 * CELL + 5, "y": 5})
    expect(page.locator("#unit-body")).to_contain_text("the score of class column (unit 1)")
    expect(page.locator("#unit-body .sums")).to_contain_text("the score of class column is")
    assert "map" not in page.locator("#unit-body .sums").inner_text()
    visit.clean()


def test_a_conv_units_rows_line_up_and_patches_sit_on_a_3_by_3_grid(visit, site):
    page = visit.page
    upload(visit, image_like((12, 12, 1), seed=12), site["folder"])
    page.locator("#layer-conv2 canvas.tile").nth(1).click(position={"x": 20, "y": 20})
    triples = page.locator("#unit-body .triple")
    expect(triples).to_have_count(4)
    lefts = []
    for d in range(4):
        boxes = [t.bounding_box() for t in triples.nth(d).locator("table").all()]
        assert len(boxes) == 3
        assert len({round(b["y"]) for b in boxes}) == 1          # one row: window x filter = products
        lefts.append(tuple(round(b["x"]) for b in boxes))
    assert len(set(lefts)) == 1                                  # and the columns line up
    page.select_option("#patches-form select[name=layer]", "conv2")
    page.click("#patches-form button")
    patches = page.locator("#patches-grid .patch img")
    expect(patches).to_have_count(9)
    boxes = [patches.nth(k).bounding_box() for k in range(9)]
    xs = sorted({round(b["x"]) for b in boxes})
    ys = sorted({round(b["y"]) for b in boxes})
    assert len(xs) == 3 and len(ys) == 3
    visit.clean()


def test_a_new_image_leaves_nothing_of_the_last_one(visit, site):
    page = visit.page
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + 60, box["y"] + 140)
    page.mouse.down()
    page.mouse.move(box["x"] + 220, box["y"] + 140, steps=6)
    page.mouse.up()
    drawn(page)
    page.locator("#layer-conv1 canvas.tile").nth(0).click(position={"x": 20, "y": 20})
    expect(page.locator("#unit-body")).to_have_attribute("data-layer", "conv1")
    page.locator("#layer-conv1 canvas.tile").nth(0).hover(position={"x": 30, "y": 30})
    expect(page.locator("#hover")).not_to_have_text("")
    expect(page.locator("#field")).to_be_visible()
    upload(visit, image_like((12, 12, 1), seed=13), site["folder"])
    expect(page.locator("#hover")).to_have_text("")
    expect(page.locator("#field")).to_be_hidden()
    assert page.locator("#unit-body").get_attribute("data-layer") is None
    assert page.locator(".picked").count() == 0
    assert canvas_pixels(page.locator("#draw"))[..., :3].max() == 0     # the drawing is gone
    visit.clean()


def test_nothing_scrolls_sideways_on_a_420_pixel_screen(browser, site):
    context = browser.new_context(viewport={"width": 420, "height": 800})
    page = context.new_page()
    seen = Visit(page, site["url"])
    page.on("console", lambda m: m.type == "error" and seen.errors.append(m.text))
    page.on("request", lambda r: seen.requests.append(r.url))
    page.goto(site["url"] + "/")
    wide = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert page.evaluate(wide) <= 0
    upload(seen, image_like((12, 12, 1), seed=14), site["folder"])
    for layer, x in (("conv2", 20), ("maxpool1", 20)):
        page.locator(f"#layer-{layer} canvas.tile").nth(0).click(position={"x": x, "y": 20})
        expect(page.locator("#unit-body")).to_have_attribute("data-layer", layer)
        assert page.evaluate(wide) <= 0, layer
    page.locator(f"#layer-{site['model'].net.infos[-1].name} canvas.strip").click(
        position={"x": 5, "y": 5})
    page.click("#patches-form button")
    expect(page.locator("#patches-grid .patch")).to_have_count(9)
    assert page.evaluate(wide) <= 0
    seen.clean()
    context.close()
