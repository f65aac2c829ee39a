"""One self-contained HTML page about a trained model: what it is, how it learned, what it sees.

Sections: the summary table with its formulas, the training curves, per-class accuracy and the
confusion matrix on the test split, the first layer's filters, activation maps of a few test
images, the top patches of the last CONV layer, and sample predictions with their
probabilities. Every picture is a PNG inside the page as a base64 data URI and the styles are in
the page, so it opens offline and can be mailed as one file: no scripts, fonts or links.
"""
import base64
import html
import io
from pathlib import Path

import numpy as np

from slidenet import data as datasets
from slidenet.errors import SlidenetError
from slidenet.summary import summary_json
from slidenet.evaluate import evaluate
from slidenet.model import load
from slidenet.viz import grid
from slidenet.viz.activations import activations_figure
from slidenet.viz.curves import curves_figure
from slidenet.viz.filters import filters_figure
from slidenet.viz.patches import patches_figure, top_patches
from slidenet.progress import progress

SECTIONS = (("summary", "Architecture"), ("training", "Training"), ("accuracy", "Test accuracy"),
            ("filters", "Filters"), ("activations", "Activation maps"),
            ("patches", "Top patches"), ("predictions", "Sample predictions"))
MISTAKES = 6            # most confident mistakes shown after the first test images

STYLE = """
:root { --ink: #1d2433; --muted: #5f6b7a; --line: #dde2ea; --card: #ffffff; --accent: #2f6fb3;
        --bad: #c0392b; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f5f8; color: var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
             sans-serif; }
header { background: #1d2433; color: #fff; padding: 28px 0 20px; }
header p { color: #b9c3d3; margin: 4px 0; }
.wrap { max-width: 1120px; margin: 0 auto; padding: 0 24px; }
h1 { margin: 0 0 6px; font-size: 26px; font-weight: 650; }
h2 { margin: 0 0 14px; font-size: 20px; font-weight: 650; }
h3 { margin: 18px 0 8px; font-size: 15px; color: var(--muted); font-weight: 600; }
code, .mono { font-family: ui-monospace, "SF Mono", Menlo, Consolas, monospace; font-size: 13px; }
header code { color: #ffd58a; word-break: break-word; }
nav { display: flex; flex-wrap: wrap; gap: 6px 18px; margin-top: 16px; }
nav a { color: #cfe0ff; text-decoration: none; font-size: 14px; }
nav a:hover { text-decoration: underline; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 18px; }
.stat { background: rgba(255,255,255,0.08); border-radius: 8px; padding: 8px 14px; }
.stat b { display: block; font-size: 20px; color: #fff; }
.stat span { font-size: 12px; color: #b9c3d3; text-transform: uppercase; letter-spacing: .04em; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
          margin: 22px 0; padding: 22px 24px; }
.note { color: var(--muted); font-size: 13.5px; margin: 0 0 12px; }
img.fig { display: block; max-width: 100%; height: auto; margin: 8px auto; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; white-space: nowrap; }
th { color: var(--muted); font-weight: 600; background: #f7f8fb; white-space: normal; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 650; border-top: 2px solid var(--ink); border-bottom: none; }
.bar { display: inline-block; height: 9px; border-radius: 5px; background: var(--accent);
       vertical-align: middle; }
.barbox { display: inline-block; width: 120px; background: #e9edf3; border-radius: 5px;
          margin-right: 8px; vertical-align: middle; }
table.confusion td { text-align: center; min-width: 38px; border: 1px solid #eef1f5;
                     font-variant-numeric: tabular-nums; }
table.confusion th { text-align: center; }
.twocol { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; }
.samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(158px, 1fr)); gap: 12px; }
.sample { border: 1px solid var(--line); border-radius: 8px; padding: 10px; font-size: 12.5px; }
.sample.wrong { border-color: var(--bad); box-shadow: inset 0 0 0 1px var(--bad); }
.sample img { display: block; width: 84px; height: 84px; margin: 0 auto 6px;
              image-rendering: pixelated; border-radius: 4px; background: #000; }
.sample .truth { color: var(--muted); }
.sample .verdict { font-weight: 650; }
.sample.wrong .verdict { color: var(--bad); }
.sample .prob { display: flex; align-items: center; gap: 6px; margin-top: 3px; }
.sample .prob .name { width: 58px; overflow: hidden; text-overflow: ellipsis; }
.sample .prob .barbox { width: 56px; margin: 0; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 10px 0 30px; }
"""


def figure_uri(fig):
    """A matplotlib Figure as a data:image/png;base64 URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=grid.DPI, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def pixels_uri(pixels):
    """uint8 (H, W, 1 or 3) as a PNG data URI."""
    from PIL import Image
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _e(value):
    return html.escape(str(value))


def _figure(fig, alt):
    return f'<img class="fig" src="{figure_uri(fig)}" alt="{_e(alt)}">'


def _bar(fraction, colour=None):
    width = max(0.0, min(1.0, float(fraction))) * 100
    style = f"width:{width:.1f}%" + (f";background:{colour}" if colour else "")
    return f'<span class="barbox"><span class="bar" style="{style}"></span></span>'


def summary_section(infos):
    """The summary table: shapes, parameters with formulas, output sizes, receptive fields."""
    table = summary_json(infos)
    head = ("layer", "pattern", "output", "parameters", "output size (N + 2P - F) / S + 1",
            "receptive field", "multiply-adds", "memory")
    numeric = {"multiply-adds", "memory"}
    rows = []
    for layer in table["layers"]:
        height, width = layer["size_formulas"] or ("", "")
        size = height if height == width else f"h: {height}<br>w: {width}"
        cells = (layer["name"], f'<code>{_e(layer["text"])}</code>',
                 " x ".join(map(str, layer["output_shape"])), _e(layer["params_formula"] or "-"),
                 size or "-", " x ".join(map(str, layer["receptive_field"])),
                 f'{layer["madds"]:,}', _kib(layer["activation_bytes"]))
        rows.append("<tr>" + "".join(f'<td class="{"num" if h in numeric else ""}">{c}</td>'
                                     for h, c in zip(head, cells)) + "</tr>")
    rows.append(f'<tr class="total"><td>total</td><td></td><td></td>'
                f'<td>{table["total_params"]:,} parameters</td><td></td><td></td>'
                f'<td class="num">{table["total_madds"]:,}</td>'
                f'<td class="num">{_kib(table["total_activation_bytes"])}</td></tr>')
    header = "".join(f'<th class="{"num" if h in numeric else ""}">{h}</th>' for h in head)
    return ('<p class="note">Every shape is worked out from INPUT onwards with the lecture\'s '
            "formulas: a CONV has K x (F*F*D + 1) parameters, and each CONV or POOL shrinks "
            "the volume to (N + 2P - F) / S + 1 per side. Multiply-adds and memory are for one "
            "image at float32.</p>"
            f'<div class="scroll"><table><tr>{header}</tr>{"".join(rows)}</table></div>')


def _kib(n):
    return f"{n / 1024:,.1f} KiB" if n >= 1024 else f"{n} B"


def training_section(meta):
    history = meta.get("history") or []
    if not history:
        return '<p class="note">This model file holds no training history.</p>'
    last = history[-1]
    config = meta.get("config", {})
    facts = ", ".join(f"{k} {_e(config[k])}" for k in ("optimizer", "lr", "batch_size", "schedule",
                                                         "weight_decay") if k in config)
    return (f'<p class="note">{len(history)} epochs ({facts}); the last took '
            f'{last.get("seconds", 0):.1f} s at {last.get("images_per_s", 0):,.0f} images/s.</p>'
            + _figure(curves_figure(history, "training"), "loss, accuracy and learning rate"))


def accuracy_section(result, names, count):
    per_class = result["per_class"]
    confusion = np.array(result["confusion"])
    rows = []
    for name, acc, total in zip(names, per_class, confusion.sum(axis=1)):
        shown = "n/a" if acc != acc else f"{acc:.3f}"
        bar = "" if acc != acc else _bar(acc)
        rows.append(f'<tr><td>{_e(name)}</td><td class="num">{total}</td>'
                    f'<td>{bar}<span class="mono">{shown}</span></td></tr>')
    per_class_table = ('<table><tr><th>class</th><th class="num">images</th><th>accuracy</th></tr>'
                       + "".join(rows) + "</table>")
    cells = []
    for i, row in enumerate(confusion):
        total = max(1, row.sum())
        tds = []
        for j, value in enumerate(row):
            share = value / total
            # Blue on the diagonal (right), red off it (wrong); stronger for a larger share.
            colour = "47,111,179" if i == j else "192,57,43"
            style = f"background:rgba({colour},{0.1 + 0.8 * share:.2f})" if value else ""
            if share > 0.55:
                style += ";color:#fff"
            tds.append(f'<td style="{style}" title="true {_e(names[i])}, predicted '
                       f'{_e(names[j])}">{value if value else ""}</td>')
        cells.append(f"<tr><th>{_e(names[i])}</th>{''.join(tds)}</tr>")
    confusion_table = ('<table class="confusion"><tr><th>true \\ predicted</th>'
                       + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
                       + "".join(cells) + "</table>")
    return (f'<p class="note">Accuracy <b>{result["accuracy"]:.4f}</b> and mean loss '
            f'{result["loss"]:.4f} on {count:,} test images. Rows of the confusion matrix are '
            "the true class, columns the predicted one; shading is the share of the row.</p>"
            f'<div class="twocol"><div><h3>per-class accuracy</h3>{per_class_table}</div>'
            f'<div class="scroll"><h3>confusion matrix</h3>{confusion_table}</div></div>')


def _sample(pixels, truth, probs, names):
    best = np.argsort(-probs)[:3]
    wrong = best[0] != truth
    lines = "".join(f'<div class="prob"><span class="name">{_e(names[c])}</span>'
                    f'{_bar(probs[c], "#c0392b" if (wrong and c == best[0]) else None)}'
                    f'<span class="mono">{probs[c]:.3f}</span></div>' for c in best)
    verdict = f"predicted {_e(names[best[0]])}"
    return (f'<div class="sample{" wrong" if wrong else ""}"><img src="{pixels_uri(pixels)}" '
            f'alt="test image of {_e(names[truth])}"><div class="truth">true: {_e(names[truth])}'
            f'</div><div class="verdict">{verdict}</div>{lines}</div>')


def predictions_section(x, y, probs, names, first):
    """The first test images, then the mistakes made with the highest confidence."""
    shown = "".join(_sample(x[i], y[i], probs[i], names) for i in range(min(first, len(y))))
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y)
    worst = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:MISTAKES]
    mistakes = "".join(_sample(x[i], y[i], probs[i], names) for i in worst)
    return ('<p class="note">Each card: the image, its true class, and the three most probable '
            "classes (softmax of the scores). Red cards are mistakes.</p>"
            f'<h3>the first {min(first, len(y))} test images</h3><div class="samples">{shown}</div>'
            f"<h3>the {len(worst)} most confident mistakes</h3>"
            + (f'<div class="samples">{mistakes}</div>' if len(worst) else
               '<p class="note">None: every test image is classified correctly.</p>'))


def _one_per_class(y, count):
    """Indices of the first test image of each of the first `count` classes present."""
    return [int(np.flatnonzero(y == label)[0]) for label in np.unique(y)[:count]]


def build_report(model_path, data=None, images=3, samples=12):
    """The report page for the model in `model_path`, as an HTML string.

    data: data spec (default: the data the model was trained on); its test split is evaluated.
    images: test images whose activation maps are shown; samples: test images with predictions.
    """
    model = load(model_path)
    net, normalizer, meta = model.net, model.normalizer, model.meta
    dataset = datasets.load(model.data_spec(data))
    datasets.check_fits(dataset, net.input_shape, net.num_outputs)
    x, y, names = dataset.x_test, dataset.y_test, list(dataset.class_names)
    if len(y) == 0:
        raise SlidenetError(f"{dataset.spec} has no test split to report on")
    body = {}
    with progress(len(SECTIONS), "report", unit="section") as bar:
        body["summary"] = summary_section(net.infos)
        bar.update()
        body["training"] = training_section(meta)
        bar.update()
        loss = meta.get("config", {}).get("loss", "softmax")
        result = evaluate(net, x, y, normalizer, len(names), loss)
        body["accuracy"] = accuracy_section(result, names, len(y))
        bar.update()
        body["filters"] = ('<p class="note">The first layer\'s filters are its weights, drawn '
                           "in the input's own space.</p>"
                           + _figure(filters_figure(net), "first-layer filters"))
        bar.update()
        maps = []
        for i in _one_per_class(y, images):
            caption = f"test image {i}, class {names[y[i]]}"
            maps.append(_figure(activations_figure(net, normalizer.normalize(x[i:i + 1])[0],
                                                   pixels=x[i], caption=caption), caption))
        body["activations"] = ('<p class="note">Each image after every CONV, nonlinearity and '
                               "POOL: one tile per depth channel, one colour scale per layer: "
                               "blue to red around zero where a layer has negative values, "
                               "dark to yellow from zero where it has none.</p>" + "".join(maps))
        bar.update()
        found = top_patches(net, x, normalizer)
        body["patches"] = ('<p class="note">For each channel, the test images that activate it '
                           "most, cropped to the receptive field of the strongest unit.</p>"
                           + _figure(patches_figure(found, names, y), "top patches"))
        bar.update()
        probs = model.predict(x)
        body["predictions"] = predictions_section(x, y, probs, names, samples)
        bar.update()
    return _page(model_path, meta, dataset, result, net, body)


def _page(model_path, meta, dataset, result, net, body):
    total = summary_json(net.infos)["total_params"]
    stats = (("test accuracy", f'{result["accuracy"]:.2%}'), ("parameters", f"{total:,}"),
             ("epochs", str(meta.get("epoch", len(meta.get("history") or [])))),
             ("test images", f"{len(dataset.y_test):,}"))
    cards = "".join(f'<div class="stat"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in stats)
    nav = "".join(f'<a href="#{key}">{title}</a>' for key, title in SECTIONS)
    sections = "".join(f'<section id="{key}"><h2>{title}</h2>{body[key]}</section>'
                       for key, title in SECTIONS)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>slidenet report: {_e(Path(model_path).name)}</title>"
            f"<style>{STYLE}</style></head><body>"
            f'<header><div class="wrap"><h1>slidenet report</h1>'
            f"<p><code>{_e(meta['pattern'])}</code></p>"
            f"<p>model <code>{_e(model_path)}</code> &middot; data <code>{_e(dataset.spec)}"
            f"</code> ({len(dataset.class_names)} classes, "
            f"{'x'.join(map(str, dataset.input_shape))} images)</p>"
            f'<div class="cards">{cards}</div><nav>{nav}</nav></div></header>'
            f'<main class="wrap">{sections}</main>'
            f"<footer>made by slidenet; this page is self-contained and works offline</footer>"
            "</body></html>\n")


def write_report(path, text):
    """Write the page to `path`, creating its folder."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise SlidenetError(f"cannot write {path}: {err.strerror or err}") from None
    return path
