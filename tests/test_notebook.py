"""docs/notebook.ipynb runs: every cell executes in a fresh Jupyter kernel (nbclient +
ipykernel, the test extra), in a temporary folder, and the notebook is kept without outputs."""
import json
import shutil
from pathlib import Path

import nbformat
import numpy as np
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "notebook.ipynb"


def test_the_notebook_is_committed_without_outputs():
    raw = json.loads(NOTEBOOK.read_text())
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"]


def test_every_cell_of_the_notebook_runs(tmp_path):
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    notebook = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
    # Raises CellExecutionError, naming the cell and its traceback, at the first cell that fails.
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [cell.get("outputs", []) for cell in notebook.cells if cell.cell_type == "code"]
    assert not any(out.output_type == "error" for cell in outputs for out in cell)
    shown = [kind for cell in outputs for out in cell for kind in out.get("data", {})]
    # The net and the model render as HTML; the three pictures as images.
    assert shown.count("text/html") >= 2 and shown.count("image/png") >= 3
    assert (tmp_path / "digits.npz").is_file() and (tmp_path / "digits.onnx").is_file()
    # The ONNX cell's result: onnxruntime's scores against slidenet's, to float32 rounding.
    last = outputs[-1][-1]["data"]["text/plain"]
    assert float(np.float64(last.replace("np.float32(", "").replace("np.float64(", "")
                            .rstrip(")"))) < 1e-3
