"""CIFAR-10 python batches, read by an Unpickler that can build a batch and nothing else."""
import io
import math
import pickle
import pickletools

import numpy as np

from slidenet.data.dataset import Dataset
from slidenet.data.files import _BAD_FILE, _existing_dir, _existing_file, _reading, _required_arg
from slidenet.errors import DataError
from slidenet.storage import limits


def _latin1_encode(text, encoding):
    """`_codecs.encode` as Python 3 uses it in protocol-2 pickles of bytes, and nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("it calls _codecs.encode with unexpected arguments")
    return text.encode("latin1")


class _Dtype:
    """What a pickled `numpy.dtype('u1', 0, 1)` becomes: a marker that the array is uint8.

    Only uint8 is admitted: any other dtype (objects above all, whose arrays numpy would fill
    from the pickle's own list, allocated at whatever size it claims) is refused.
    """

    def __init__(self, name, align=0, copy=1):
        if name not in ("u1", b"u1"):
            shown = name.decode("latin1") if isinstance(name, bytes) else name
            raise pickle.UnpicklingError(f"it holds an array of dtype {shown!r}; a CIFAR-10 batch "
                                         f"holds uint8")

    def __setstate__(self, state):
        pass        # byte order and flags: nothing to choose for single bytes


class _Array:
    """What numpy's array reconstructor becomes: it checks the shape, the dtype and the number
    of bytes the pickled array claims, then views those bytes as that uint8 array (`.array`).
    The bytes are already in memory (their length was checked against the file), so the claim
    must match them exactly and nothing larger is ever allocated."""

    def __init__(self, subtype, shape, typecode):
        if subtype is not np.ndarray:
            raise pickle.UnpicklingError("it rebuilds an array of an unknown type")
        self.array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("it holds an array in an unknown layout")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _Dtype) or not isinstance(raw, bytes):
            raise pickle.UnpicklingError("it holds an array that is not uint8 bytes")
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise pickle.UnpicklingError(f"it holds an array of shape {shape!r}")
        if math.prod(shape) != len(raw):
            raise pickle.UnpicklingError(
                f"an array claims shape {shape} ({math.prod(shape):,} bytes) but holds "
                f"{len(raw):,} bytes")
        self.array = np.frombuffer(raw, np.uint8).reshape(shape, order="F" if fortran else "C")


# Every global a CIFAR-10 batch refers to: a numpy uint8 array (Python 2 wrote the original
# files, naming numpy.core; numpy 2 names numpy._core) and, in Python 3 protocol 2, the codec call
# that rebuilds bytes. The Unpickler calls only what this table holds, and the array pieces are
# stand-ins that check before they build.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _Array,
    ("numpy._core.multiarray", "_reconstruct"): _Array,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _Dtype,
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


def _check_opcodes(raw):
    """Walk the pickle's opcodes without building anything, so that no claim in it can make the
    Unpickler allocate more than the file holds: every counted string or bytes must lie within
    the file (genops checks that), and so must every frame, and a memo index may not exceed the
    number of opcodes before it (the Unpickler grows its memo to the largest index it sees)."""
    for count, (opcode, arg, position) in enumerate(pickletools.genops(io.BytesIO(raw))):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and arg > count:
            raise pickle.UnpicklingError(f"it stores memo entry {arg:,} after {count} opcodes")
        if opcode.name == "FRAME" and arg > len(raw) - position:
            raise pickle.UnpicklingError(f"a frame claims {arg:,} bytes, more than the file holds")


def _read_pickle(path):
    """A CIFAR pickle; Python 2 `str` keys come back as bytes, as in the original files.

    The file's size is checked against the input budget, then its opcodes (`_check_opcodes`),
    then it is unpickled with arrays built by `_Array`.
    """
    with _reading(path, _BAD_FILE + (pickle.UnpicklingError, TypeError, AttributeError,
                                     IndexError, KeyError)):
        limits.check_claim(path.stat().st_size, str(path))
        raw = path.read_bytes()
        _check_opcodes(raw)
        found = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    if isinstance(found, dict):
        found = {k: v.array if isinstance(v, _Array) else v for k, v in found.items()}
    return found


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
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    sizes = [(directory / n).stat().st_size for n in names if (directory / n).is_file()]
    limits.check_claim(sum(sizes), f"{directory} (CIFAR-10 batches, {len(sizes)} files)")
    parts = [_cifar_batch(directory / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _cifar_batch(directory / "test_batch")
    return Dataset(np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]),
                   np.ascontiguousarray(x_test), y_test, _cifar_names(directory / "batches.meta"),
                   "cifar10", spec)
