"""One self-contained HTML page about a trained model: what it is, how it learned, what it sees.

Sections: the summary table with its formulas (a graph net's branches indented under "branch
1 of add1", before their merge's row, as `slidenet summary` prints them), the training curves,
per-class accuracy and the confusion matrix on the test split, the first layer's filters,
activation maps of a few test images (every layer's, branch layers included), the top patches
of the last CONV layer (which may sit in a branch), and sample predictions with their
probabilities. Every picture is a PNG inside the page as a base64 data URI and the styles are in
the page, so it opens offline and can be mailed as one file: no scripts, fonts or links.

This module works out what the page says; the markup is the Jinja2 template
`slidenet/serve/templates/report.html`, which shares its frame and stylesheet with the live
page of `slidenet serve` (`slidenet.serve.pages`).
"""
import base64
import io
from pathlib import Path

import numpy as np

from slidenet.errors import SlidenetError
from slidenet.model import load
from slidenet.notation.summary import summary_json
from slidenet.progress import progress
from slidenet.serve import pages
from slidenet.storage import writing
from slidenet.training.evaluate import chance_text, evaluate
from slidenet.viz import grid
from slidenet.viz.activations import activations_figure
from slidenet.viz.curves import curves_figure, load_history
from slidenet.viz.filters import filters_figure
from slidenet.viz.patches import patches_figure, top_patches

SECTIONS = (("summary", "Architecture"), ("training", "Training"), ("accuracy", "Test accuracy"),
            ("filters", "Filters"), ("activations", "Activation maps"),
            ("patches", "Top patches"), ("predictions", "Sample predictions"))
MISTAKES = 6            # most confident mistakes shown after the first test images


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


def run_history(meta, model_path):
    """The history to show for the model at `model_path`: the run's whole history.json beside
    it when that begins with the model's own epochs (best.npz keeps only the epochs up to the
    best one, which hides any overfitting after it), else the model's own."""
    own = meta.get("history") or []
    beside = Path(model_path).parent / "history.json"
    if not own or not beside.is_file():
        return own
    try:
        whole = load_history(beside)
    except SlidenetError:
        return own
    same = [(h.get("epoch"), h.get("loss")) for h in whole[:len(own)]] == \
        [(h.get("epoch"), h.get("loss")) for h in own]
    return whole if same and len(whole) > len(own) else own


def training_section(meta, model_path=None):
    """What the page says about training: None without a history, else the epochs, the
    optimiser's settings in words, the last epoch's speed and the curves (of the whole run,
    `run_history`, when the run went on after the epoch this file holds)."""
    history = run_history(meta, model_path) if model_path else meta.get("history") or []
    if not history:
        return None
    last = history[-1]
    config = meta.get("config", {})
    facts = ", ".join(f"{k} {config[k]}" for k in ("optimizer", "lr", "batch_size", "schedule",
                                                   "weight_decay") if k in config)
    return {"epochs": len(history), "facts": facts, "seconds": last.get("seconds", 0),
            "images_per_s": last.get("images_per_s", 0), "held": epoch_held(meta),
            "after": len(history) > len(meta.get("history") or []),
            "uri": figure_uri(curves_figure(history, "training"))}


def epoch_held(meta):
    """Which epoch a model file holds, of how many the run was set to: "14 of 15"."""
    epoch = meta.get("epoch", len(meta.get("history") or []))
    planned = (meta.get("config") or {}).get("epochs")
    return f"{epoch} of {planned}" if planned and planned != epoch else str(epoch)


def accuracy_section(result, names, count):
    """Accuracy, per-class rows, and the confusion matrix's cells with their shading."""
    confusion = np.array(result["confusion"])
    per_class = [{"name": name, "images": int(total), "accuracy": None if acc != acc else acc}
                 for name, acc, total in zip(names, result["per_class"], confusion.sum(axis=1))]
    rows = []
    for i, row in enumerate(confusion):
        total = max(1, row.sum())
        cells = []
        for j, value in enumerate(row):
            share = value / total
            # Blue on the diagonal (right), red off it (wrong); stronger for a larger share.
            colour = "47,111,179" if i == j else "192,57,43"
            style = f"background:rgba({colour},{0.1 + 0.8 * share:.2f})" if value else ""
            if share > 0.55:
                style += ";color:#fff"
            cells.append({"count": int(value), "style": style, "predicted": names[j]})
        rows.append({"name": names[i], "cells": cells})
    return {"accuracy": result["accuracy"], "loss": result["loss"], "count": count,
            "per_class": per_class, "confusion": rows, "chance": chance_text(result)}


def summary_rows(layers, depth=0):
    """The summary's rows for the page, flattened from `summary_json`'s "layers": each layer's
    dict with its "depth" (0 for the net's own chain), "branch" "" and "merge_formula" ("" but
    for a merge); each branch first as a title row {"branch": "branch 1 of add1", "depth"}
    followed by its layers, then the merge itself."""
    rows = []
    for layer in layers:
        for number, branch in enumerate(layer.get("branches", ()), 1):
            rows.append({"branch": f"branch {number} of {layer['name']}", "depth": depth + 1})
            rows += summary_rows(branch, depth + 2)
        rows.append({"branch": "", "merge_formula": "", **layer, "depth": depth})
    return rows


def _sample(pixels, truth, probs, names):
    """One card: the image, its true class, the three most probable classes."""
    best = np.argsort(-probs)[:3]
    return {"uri": pixels_uri(pixels), "truth": names[truth], "wrong": bool(best[0] != truth),
            "top": [{"name": names[c], "probability": float(probs[c])} for c in best]}


def predictions_section(x, y, probs, names, first):
    """The first test images, then the mistakes made with the highest confidence."""
    shown = [_sample(x[i], y[i], probs[i], names) for i in range(min(first, len(y)))]
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y)
    worst = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:MISTAKES]
    return shown, [_sample(x[i], y[i], probs[i], names) for i in worst]


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
    dataset = model.load_data(data, model_path)
    x, y, names = dataset.x_test, dataset.y_test, list(dataset.class_names)
    if len(y) == 0:
        raise SlidenetError(f"{dataset.spec} has no test split to report on")
    page = {}
    with progress(len(SECTIONS), "report", unit="section") as bar:
        page["summary"] = summary_json(net.infos)
        page["summary_rows"] = summary_rows(page["summary"]["layers"])
        page["branched"] = any(row["branch"] for row in page["summary_rows"])
        bar.update()
        page["training"] = training_section(meta, model_path)
        bar.update()
        loss = meta.get("config", {}).get("loss", "softmax")
        result = evaluate(net, x, y, normalizer, len(names), loss)
        page["accuracy"] = accuracy_section(result, names, len(y))
        bar.update()
        fig = filters_figure(net)
        page["filters_uri"], page["filters_layer"] = figure_uri(fig), next(iter(fig.tiles))
        bar.update()
        page["activations"] = []
        for i in _one_per_class(y, images):
            caption = f"test image {i}, class {names[y[i]]}"
            fig = activations_figure(net, normalizer.normalize(x[i:i + 1])[0], pixels=x[i],
                                     caption=caption)
            page["activations"].append({"uri": figure_uri(fig), "caption": caption})
        bar.update()
        page["patches_uri"] = figure_uri(patches_figure(top_patches(net, x, normalizer), names, y))
        bar.update()
        page["first"], page["mistakes"] = predictions_section(x, y, model.predict(x), names,
                                                              samples)
        bar.update()
    stats = (("test accuracy", f'{result["accuracy"]:.2%}'),
             ("parameters", f'{page["summary"]["total_params"]:,}'),
             ("epoch", epoch_held(meta)),
             ("test images", f"{len(dataset.y_test):,}"))
    return pages.render("report.html", inline_style=True, pattern=meta["pattern"],
                        model_name=Path(model_path).name, model_path=str(model_path),
                        data_spec=dataset.spec, class_names=names,
                        data_shape=dataset.input_shape, stats=stats, sections=SECTIONS,
                        **page) + "\n"


def write_report(path, text):
    """Write the page to `path` atomically (`slidenet.storage.writing`), creating its folder."""
    return writing.write_text(path, text)
