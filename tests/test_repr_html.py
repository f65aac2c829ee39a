"""What a notebook shows: `Net._repr_html_` (the summary table with its formulas) and
`Model._repr_html_` (its summary and history), parsed back and checked against `summary_json`;
and the progress bar inside a Jupyter kernel."""
from html.parser import HTMLParser

import numpy as np

import slidenet
from slidenet import Net, progress
from slidenet.data.normalize import Normalizer
from slidenet.model import Model
from slidenet.notation.summary import summary_json

PATTERN = "INPUT(32x32x3) -> [CONV(8) -> RELU]*2 -> POOL -> CONV(4, 5x4, s=1x2, p=0) -> FC(10)"


class Tables(HTMLParser):
    """Every table's rows of cell texts, unescaped, and every text outside the tables."""

    def __init__(self, markup):
        super().__init__()
        self.tables, self.texts, self._cell = [], [], None
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        else:
            self.texts.append(data)


def test_net_html_is_the_summary_with_its_formulas():
    net = Net.from_pattern(PATTERN)
    parsed = Tables(net._repr_html_())
    (table,) = parsed.tables
    header, rows = table[0], table[1:]
    assert header[:4] == ["layer", "pattern", "output", "parameters"]
    layers = summary_json(net.infos)["layers"]
    assert len(rows) == len(layers)
    for row, layer in zip(rows, layers):
        assert row[0] == layer["name"] and row[1] == layer["text"]
        assert row[2] == " x ".join(map(str, layer["output_shape"]))
        assert row[3] == (layer["params_formula"] or "-")
        for formula in layer["size_formulas"]:
            assert formula in row[4]
    # The non-square CONV writes both axes; the pattern (with its arrows) is shown, escaped.
    assert rows[-2][4] == "h: (16 - 5) / 1 + 1 = 12; w: (16 - 4) / 2 + 1 = 7"
    assert PATTERN in "".join(parsed.texts)
    total = summary_json(net.infos)["total_params"]
    assert f"total parameters: {total:,}" in "".join(parsed.texts)


def test_model_html_escapes_and_shows_the_history():
    net = Net.from_pattern("INPUT(4x4x1) -> FC(2)")
    history = [{"epoch": 1, "loss": 0.5, "accuracy": 0.75, "val_accuracy": None, "val_loss": None,
                "lr": 1e-3, "seconds": 0.25}, {"epoch": 2, "loss": 0.25, "accuracy": 0.875,
                                               "val_accuracy": 0.5, "val_loss": 0.7, "lr": 5e-4,
                                               "seconds": 0.25}]
    meta = {"pattern": net.pattern, "class_names": ["<script>alert(1)</script>", "b&c"],
            "history": history}
    model = Model(net, Normalizer.fit(np.zeros((2, 4, 4, 1), np.uint8)), meta)
    markup = model._repr_html_()
    assert "<script>" not in markup and "&lt;script&gt;" in markup and "b&amp;c" in markup
    summary, table = Tables(markup).tables
    assert len(summary) == 3            # header, input, fc1
    assert table[0] == ["epoch", "loss", "accuracy", "val_accuracy", "val_loss", "lr", "seconds"]
    assert table[1] == ["1", "0.5", "0.75", "-", "-", "0.001", "0.25"]
    assert table[2] == ["2", "0.25", "0.875", "0.5", "0.7", "0.0005", "0.25"]
    assert "not trained yet" in Model(net, model.normalizer, {"pattern": net.pattern})._repr_html_()


def test_a_fitted_model_shows_one_history_row_an_epoch():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 4, 4), np.uint8), np.arange(40) % 2
    model = slidenet.fit("INPUT(4x4x1) -> FC(2)", x, y, epochs=2, verbose=False)
    assert len(Tables(model._repr_html_()).tables[1]) == 1 + 2


def test_progress_shows_in_a_notebook_kernel(monkeypatch):
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    with progress.progress(3, "x") as bar:
        assert not bar.disable
    monkeypatch.setattr(progress, "in_notebook", lambda: False)
    with progress.progress(3, "x") as bar:
        assert bar.disable            # pytest's stderr is no terminal


def test_in_notebook_is_false_outside_a_kernel():
    assert progress.in_notebook() is False


def test_figures_show_in_a_notebook_as_png():
    from io import BytesIO

    from PIL import Image

    from slidenet import viz
    net = Net.from_pattern("INPUT(8x8x1) -> CONV(4) -> FC(2)")
    fig = viz.filters_figure(net)
    png = fig._repr_png_()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = fig.get_size_inches() * fig.dpi
    assert Image.open(BytesIO(png)).size == (round(width), round(height))
    assert viz.slide_figure(5, 3, 1, 0)._repr_png_().startswith(b"\x89PNG")
