"""The data set specs: `load(spec)`, which hands each kind of spec to its loader, `resolve`,
which makes a spec's path absolute (as model files keep it), and `class_count`, the number of
classes a spec has when it can be known without reading any image."""
from pathlib import Path

import numpy as np

from slidenet.data.cifar import _load_cifar10
from slidenet.data.dataset import Dataset
from slidenet.data.idx import _load_fashion_mnist, _load_mnist
from slidenet.data.images import _load_folder, _pillow
from slidenet.data.mnist5k import _load_mnist5k
from slidenet.data.npz import _load_npz
from slidenet.errors import DataError

SPECS = ("mnist5k", "fashion-mnist[:DIR]", "mnist:DIR", "cifar10:DIR", "folder:DIR", "npz:FILE")
_LOADERS = {"mnist5k": _load_mnist5k, "fashion-mnist": _load_fashion_mnist, "mnist": _load_mnist,
            "cifar10": _load_cifar10, "folder": _load_folder, "npz": _load_npz}
_TEN = ("mnist5k", "fashion-mnist", "cifar10")       # these always have ten classes


def _split(spec):
    kind, _, arg = spec.partition(":")
    if kind not in _LOADERS:
        raise DataError(f"unknown data set {spec!r}; valid specs: {', '.join(SPECS)}")
    return kind, arg


def load(spec="mnist5k", size=None, depth=None):
    """The data set named by `spec` (see the `slidenet.data` docstring for the specs).

    size (H, W): stretch every image to it (a folder of images of several sizes, `--resize`).
    depth (1 or 3): a folder's images are converted to it, grayscale or RGB, as Keras's
    color_mode does, so a folder of mixed images feeds a net of either depth (a note says how
    many were converted); other data sets keep their own depth.
    """
    kind, arg = _split(spec)
    if kind == "folder":
        return _load_folder(arg, spec, size, depth if depth in (1, 3) else None)
    dataset = _LOADERS[kind](arg, spec)
    if size is not None and dataset.input_shape[:2] != tuple(size):
        return resized(dataset, size)
    return dataset


def resolve(spec):
    """The spec with its path made absolute, so that it still names the same data from
    another folder: "folder:shapes" -> "folder:/home/me/shapes"."""
    kind, arg = _split(spec)
    if not arg:
        return spec
    return f"{kind}:{Path(arg).expanduser().resolve()}"


def class_count(spec):
    """The number of classes of `spec` when it is known without reading images, else None."""
    kind, arg = _split(spec)
    if kind in _TEN:
        return 10
    if kind == "folder" and arg:
        root = Path(arg).expanduser()
        root = root / "train" if (root / "train").is_dir() and (root / "test").is_dir() else root
        if root.is_dir():
            return sum(1 for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) or None
    return None


def resized(dataset, size):
    """The data set with every image stretched to size (H, W), bilinearly (Pillow)."""
    image_module = _pillow()
    height, width = size

    def stretch(x):
        out = np.empty((len(x), height, width, x.shape[3]), np.uint8)
        for i, pixels in enumerate(x):
            image = image_module.fromarray(pixels[..., 0] if x.shape[3] == 1 else pixels)
            out[i] = np.asarray(image.resize((width, height), image_module.BILINEAR)).reshape(
                height, width, x.shape[3])
        return out
    return Dataset(stretch(dataset.x_train), dataset.y_train, stretch(dataset.x_test),
                   dataset.y_test, dataset.class_names, dataset.name, dataset.spec,
                   dataset.notes + [f"every image stretched to {height}x{width} (--resize)"])
