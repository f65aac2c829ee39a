"""IDX files (MNIST, Fashion-MNIST): `read_idx` and the mnist:DIR and fashion-mnist loaders."""
import gzip
import math
import os
import struct
from pathlib import Path

import numpy as np

from slidenet.data.dataset import Dataset, _shape_text
from slidenet.data.files import _existing_dir, _reading, _required_arg
from slidenet.errors import DataError
from slidenet.storage import limits

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
    The size the header claims is checked against the input budget (`slidenet.storage.limits`) before
    the array is allocated, and a gzip stream is decompressed straight into it, never beyond.
    """
    path = Path(path)
    with _reading(path), open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        with (gzip.GzipFile(fileobj=raw) if gzipped else raw) as fh:
            return _read_idx_stream(fh, path, None if gzipped else os.fstat(raw.fileno()).st_size)


def _read_idx_stream(fh, path, file_size):
    """The array in the IDX stream `fh`; file_size: its length in bytes, None when gzipped."""
    magic = _read_up_to(fh, 4)
    if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (its magic number is {magic.hex() or 'missing'})")
    dtype, ndim = _IDX_DTYPES[magic[2]], magic[3]
    header = _read_up_to(fh, 4 * ndim)
    if len(header) < 4 * ndim:
        raise DataError(f"{path} is truncated: its header is cut off")
    dims = struct.unpack(f">{ndim}I", header)
    start = 4 + 4 * ndim
    expected = start + math.prod(dims) * dtype.itemsize
    what = f"{path}: a {_shape_text(dims)} {dtype.name} array"
    if file_size is not None and file_size != expected:
        _wrong_length(path, dims, dtype, expected, file_size)
    limits.check_claim(expected - start, what)
    array = np.empty(dims, dtype)
    got = start + _read_into(fh, memoryview(array.reshape(-1).view(np.uint8)))
    if got < expected:
        _wrong_length(path, dims, dtype, expected, got)
    if _read_up_to(fh, 1):
        raise DataError(f"{path} is longer than its header says: a {_shape_text(dims)} "
                        f"{dtype.name} array needs {expected} bytes, the data goes on beyond")
    return array.astype(dtype.newbyteorder("="), copy=False)


def _wrong_length(path, dims, dtype, expected, length):
    state = "truncated" if length < expected else "longer than its header says"
    raise DataError(f"{path} is {state}: a {_shape_text(dims)} {dtype.name} array needs "
                    f"{expected} bytes, the file has {length}")


def _read_up_to(fh, n):
    """Up to n bytes; fewer only at the end of the stream."""
    parts, left = [], n
    while left:
        part = fh.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _read_into(fh, buffer):
    """Fill `buffer` (a byte memoryview) from `fh`; returns how many bytes arrived."""
    filled = 0
    while filled < len(buffer):
        n = fh.readinto(buffer[filled:])
        if not n:
            break
        filled += n
    return filled


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
