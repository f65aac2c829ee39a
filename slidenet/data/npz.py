"""The npz:FILE loader: arrays x, y (optionally x_test, y_test, class_names) from np.savez."""
import numpy as np

from slidenet.data.dataset import Dataset, _split_dataset, as_images
from slidenet.data.files import _existing_file, _reading, _required_arg
from slidenet.errors import DataError
from slidenet.storage import limits


def _npz_images(x, key, path):
    """(N, H, W) or (N, H, W, D), uint8 or float in [0, 1] -> uint8 (N, H, W, D)."""
    return as_images(x, key, f"{path}: ")


def _npz_labels(y, key, path):
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise DataError(f"{path}: {key} should be a 1-D integer array, not {y.dtype} {y.shape}")
    return y.astype(np.int64)


def _load_npz(arg, spec):
    """x (N, H, W[, D]) and y (N,); with x_test and y_test, else a fixed 80/20 split.

    class_names, if present, is a 1-D string array; otherwise the classes are "0", "1", ...
    """
    path = _existing_file(_required_arg(arg, spec, "file"))
    with _reading(path):
        with open(path, "rb") as fh:
            # np.load would try anything that is neither zip nor .npy as a pickle.
            if fh.read(2) != b"PK":
                raise DataError(f"{path} is not an .npz archive (np.savez writes one)")
        limits.check_npz(path)
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    if "x" not in arrays or "y" not in arrays or ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path} should hold arrays x and y, and optionally both x_test and "
                        f"y_test (it has: {', '.join(sorted(arrays)) or 'nothing'})")
    parts = {key: (_npz_labels if key.startswith("y") else _npz_images)(arrays[key], key, path)
             for key in ("x", "y", "x_test", "y_test") if key in arrays}
    if len(parts["x"]) != len(parts["y"]):
        raise DataError(f"{path}: x has {len(parts['x'])} images but y has "
                        f"{len(parts['y'])} labels")
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{path}: class_names should be a 1-D array of strings")
        names = [n.decode() if isinstance(n, bytes) else n for n in names.tolist()]
    else:
        top = max((int(y.max(initial=0)) for key, y in parts.items() if key.startswith("y")))
        names = [str(c) for c in range(top + 1)]
    name = path.stem
    if "x_test" not in parts:
        return _split_dataset(parts["x"], parts["y"], names, name, spec)
    return Dataset(parts["x"], parts["y"], parts["x_test"], parts["y_test"], names, name, spec)
