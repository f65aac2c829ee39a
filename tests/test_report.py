"""`slidenet report`: one self-contained HTML page with every section, on a tiny trained model."""
import base64
import io
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import CLASSES, bars, train_tiny
from slidenet.cli import main
from slidenet.model import load
from slidenet.report import SECTIONS
from slidenet.training.evaluate import evaluate

SECTIONS_WANTED = (("summary", "Architecture"), ("training", "Training"),
                   ("accuracy", "Test accuracy"), ("filters", "Filters"),
                   ("activations", "Activation maps"), ("patches", "Top patches"),
                   ("predictions", "Sample predictions"))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    path, spec = train_tiny(folder)
    out = folder / "report.html"
    assert main(["report", str(path), "--data", spec, "--images", "2", "--samples", "6",
                 "--out", str(out)]) == 0
    return {"html": out.read_text(encoding="utf-8"), "path": path, "folder": folder}


def test_every_section_is_there(page):
    text = page["html"]
    assert SECTIONS == SECTIONS_WANTED
    for key, title in SECTIONS_WANTED:
        assert f'<section id="{key}"><h2>{title}</h2>' in text
    # The summary's formulas, with the numbers of this net.
    assert "4 x (3*3*1 + 1) = 40" in text and "(12 + 2*1 - 3) / 1 + 1 = 12" in text
    assert len(re.findall(r'class="sample( wrong)?"', text)) >= 6
    assert all(name in text for name in CLASSES)


def test_accuracy_and_confusion_are_the_evaluation(page):
    model = load(str(page["path"]))
    net, normalizer = model.net, model.normalizer
    x, y = bars(60, seed=1, size=12)
    result = evaluate(net, x, y, normalizer, 3)
    assert f"Accuracy <b>{result['accuracy']:.4f}</b>" in page["html"]
    table = page["html"].split('<table class="confusion">')[1].split("</table>")[0]
    cells = [int(v) if v else 0 for v in re.findall(r'title="true [^"]*">(\d*)</td>', table)]
    assert np.array(cells).reshape(3, 3).tolist() == result["confusion"]


def test_the_page_is_self_contained(page):
    text = page["html"]
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert "url(" not in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) >= 6 + 4     # samples, and curves, filters, maps, patches
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as image:
            assert np.asarray(image.convert("L"), dtype=float).std() > 0


def test_bad_arguments_exit_2_with_one_clear_line(page):
    for args, words in ((["missing.npz"], "no such model file"),
                        ([str(page["path"]), "--data", "npz:nowhere.npz"], "nowhere.npz"),
                        ([str(page["path"]), "--images", "0"], "--images must be at least 1")):
        done = subprocess.run([sys.executable, "-m", "slidenet", "report", *args],
                              capture_output=True, text=True, timeout=120, cwd=page["folder"])
        assert done.returncode == 2 and "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("slidenet report: error: ")
        assert words in lines[0]


def test_a_best_file_shows_the_whole_runs_history_from_history_json(tmp_path):
    """best.npz keeps the epochs up to the best one; the run's history.json beside it has
    them all, and hides no overfitting."""
    import json
    from slidenet.storage import modelfile
    from slidenet.report import run_history, training_section
    path, _ = train_tiny(tmp_path)                          # two epochs
    arrays, meta = modelfile.load(path)
    whole = json.loads((path.parent / "history.json").read_text())
    assert len(whole) == 2
    best = path.parent / "best-at-1.npz"
    modelfile.save(best, arrays, {**meta, "epoch": 1, "history": meta["history"][:1]})
    assert run_history(load(str(best)).meta, best) == whole
    section = training_section(load(str(best)).meta, best)
    assert section["epochs"] == 2 and section["after"] and section["held"] == "1 of 2"
    # Another run's history.json (its first epoch differs) is not taken for this file's.
    (tmp_path / "other").mkdir()
    other = tmp_path / "other" / "best.npz"
    modelfile.save(other, arrays, {**meta, "epoch": 1, "history": [
        {**meta["history"][0], "loss": meta["history"][0]["loss"] + 1}]})
    (tmp_path / "other" / "history.json").write_text(json.dumps(whole))
    assert len(run_history(load(str(other)).meta, other)) == 1


def test_the_accuracy_section_states_the_chance_level(page):
    x, y = bars(60, seed=1)
    majority = np.bincount(y).max() / len(y)
    assert (f"chance 0.3333 (a guess among 3 classes); always the most common class "
            f"{majority:.4f}") in page["html"]


GRAPH = ("INPUT(12x12x1) -> CONV(4) -> RELU -> { CONV(4, g=2) -> RELU -> CONV(4) | ID } -> ADD "
         "-> RELU -> POOL -> { CONV(6, 1x1) | DWCONV(3x3) -> CONV(2, 1x1) } -> CONCAT -> FC(3)")


def test_a_graph_nets_report_shows_its_branches_as_the_summary_does(tmp_path):
    from helpers import write_bars
    from slidenet.notation.summary import summary_text
    from slidenet.training.loop import TrainConfig, train
    spec = write_bars(tmp_path / "bars.npz", 240, size=12)
    train(TrainConfig(pattern=GRAPH, data=spec, epochs=1, batch_size=16, lr=3e-3, seed=0,
                      out=str(tmp_path / "run")), log=lambda *_: None)
    path, out = tmp_path / "run" / "model.npz", tmp_path / "report.html"
    assert main(["report", str(path), "--images", "1", "--samples", "3", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    table = text.split('<section id="summary">')[1].split("</table>")[0]
    # The oracle: `slidenet summary`'s text table, its indentation (two spaces a level) and its
    # cells: name or branch title, pattern, parameters, receptive field.
    lines = summary_text(load(str(path)).net.infos).splitlines()[2:]
    expected = []
    for line in lines[:lines.index("")]:
        cells = re.split(r"\s{2,}", line.strip())
        depth = (len(line) - len(line.lstrip())) // 2
        expected.append((depth, cells[0]) if cells[0].startswith("branch") else
                        (depth, cells[0], cells[1], cells[3], cells[-3].replace(" ", "")))
    found = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S)[1:-1]:
        pad = re.search(r"padding-left:calc\(8px \+ ([\d.]+)em\)", row)
        depth = round(float(pad.group(1)) / 1.2) if pad else 0
        cells = [re.sub(r"<[^>]+>", "", cell).strip()
                 for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)]
        found.append((depth, cells[0]) if len(cells) == 1 else
                     (depth, cells[0], cells[1], cells[3], cells[5].replace(" ", "")))
    assert found == expected
    assert (2, "conv3", "CONV(4)", "4 x (3*3*4 + 1) = 148", "7x7") in found
    assert (1, "branch 2 of concat1") in found and "depth 6 + 2 = 8" in table
    assert "(conv1)" in text.split('<section id="filters">')[1]
