"""IDX files (MNIST, Fashion-MNIST): `read_idx` and the mnist:DIR and fashion-mnist loaders."""
import gzip
import struct
from pathlib import Path

import numpy as np

from slidenet.data.dataset import Dataset, _shape_text
from slidenet.data.files import _existing_dir, _reading, _required_arg
from slidenet.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist/"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")

# The third byte of an IDX magic number: the element type (multi-byte types are big-endian).
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path):
    """One IDX file (gzipped or not) as an array in native byte order.

    Layout: two zero bytes, a type code, the number of dimensions, each dimension as a
    big-endian uint32, then the elements in row-major order. The file must be exactly that long.
    """
    path = Path(path)
    with _reading(path):
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file "
                        f"(its magic number is {raw[:4].hex() or 'missing'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{path} is truncated: its header is cut off")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    expected = start + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path} is {state}: a {_shape_text(dims)} {dtype.name} array needs "
                        f"{expected} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(directory, stem):
    # Some copies spell "train-images.idx3-ubyte"; any of them may be gzipped.
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{directory} has no {stem} (nor {stem}.gz)")


def _read_idx_pair(directory, prefix):
    images_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{images_path} holds {images.dtype} {images.shape}, not uint8 (N, H, W)")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise DataError(f"{labels_path} holds {labels.dtype} {labels.shape}, not {len(images)} "
                        f"uint8 labels for the {len(images)} images of {images_path.name}")
    return images[..., None], labels


def _load_idx_dir(directory, class_names, name, spec):
    """train-* and t10k-* images (N, H, W) and labels from one directory."""
    _existing_dir(directory)
    x_train, y_train = _read_idx_pair(directory, "train")
    x_test, y_test = _read_idx_pair(directory, "t10k")
    if class_names is None:
        top = max(int(y_train.max(initial=0)), int(y_test.max(initial=0)))
        class_names = [str(c) for c in range(top + 1)]
    return Dataset(x_train, y_train, x_test, y_test, class_names, name, spec)


def _load_fashion_mnist(arg, spec):
    directory = Path(arg or FASHION_MNIST_DIR).expanduser()
    if not arg and not directory.is_dir():
        raise DataError(f"Fashion-MNIST is not in {directory}: install the Debian package "
                        f"dataset-fashion-mnist, or give its directory: fashion-mnist:DIR")
    return _load_idx_dir(directory, FASHION_MNIST_CLASSES, "fashion-mnist", spec)


def _load_mnist(arg, spec):
    return _load_idx_dir(_required_arg(arg, spec, "directory"), None, "mnist", spec)
