"""CIFAR-10 python batches, read by an Unpickler that can build a batch and nothing else."""
import pickle

import numpy as np

from slidenet.data.dataset import Dataset
from slidenet.data.files import _BAD_FILE, _existing_dir, _existing_file, _reading, _required_arg
from slidenet.errors import DataError


def _latin1_encode(text, encoding):
    """`_codecs.encode` as Python 3 uses it in protocol-2 pickles of bytes, and nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("it calls _codecs.encode with unexpected arguments")
    return text.encode("latin1")


# numpy's own array reconstructor, from whichever module this numpy keeps it in.
_reconstruct = np.empty(0).__reduce__()[0]

# Every global a CIFAR-10 batch refers to: a numpy uint8 array (Python 2 wrote the original
# files, naming numpy.core; numpy 2 names numpy._core) and, in Python 3 protocol 2, the codec call
# that rebuilds bytes. The Unpickler calls only what this table holds.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """An Unpickler that can build a CIFAR batch and nothing that runs other code."""

    def find_class(self, module, name):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch "
                                         f"never does; refused without running it") from None


def _read_pickle(path):
    """A CIFAR pickle; Python 2 `str` keys come back as bytes, as in the original files."""
    with _reading(path, _BAD_FILE + (pickle.UnpicklingError, TypeError, AttributeError,
                                     IndexError, KeyError)):
        with open(path, "rb") as fh:
            return _BatchUnpickler(fh, encoding="bytes").load()


def _cifar_batch(path):
    """One batch: images uint8 (N, 32, 32, 3) and labels (N,).

    b'data' is uint8 (N, 3072): 1024 red values (row-major 32x32), then green, then blue.
    """
    if not path.is_file():
        raise DataError(f"{path.parent} has no {path.name}; cifar10:DIR wants the extracted "
                        f"cifar-10-batches-py directory")
    batch = _read_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch: no b'data' and b'labels'")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        raise DataError(f"{path}: b'data' should be a uint8 (N, 3072) array")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: b'labels' should be {len(data)} integers")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_names(path):
    meta = _read_pickle(_existing_file(path))
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
        raise DataError(f"{path} is not CIFAR-10 metadata: no b'label_names' list")
    return [n.decode("utf-8", "replace") for n in names]


def _load_cifar10(arg, spec):
    directory = _existing_dir(_required_arg(arg, spec, "directory"))
    parts = [_cifar_batch(directory / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _cifar_batch(directory / "test_batch")
    return Dataset(np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]),
                   np.ascontiguousarray(x_test), y_test, _cifar_names(directory / "batches.meta"),
                   "cifar10", spec)
