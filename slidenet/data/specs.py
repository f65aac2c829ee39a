"""The data set specs and `load(spec)`, which hands each kind of spec to its loader."""
from slidenet.data.cifar import _load_cifar10
from slidenet.data.idx import _load_fashion_mnist, _load_mnist
from slidenet.data.images import _load_folder
from slidenet.data.mnist5k import _load_mnist5k
from slidenet.data.npz import _load_npz
from slidenet.errors import DataError

SPECS = ("mnist5k", "fashion-mnist[:DIR]", "mnist:DIR", "cifar10:DIR", "folder:DIR", "npz:FILE")


def load(spec="mnist5k"):
    """The data set named by `spec` (see the `slidenet.data` docstring for the specs)."""
    kind, _, arg = spec.partition(":")
    loaders = {"mnist5k": _load_mnist5k, "fashion-mnist": _load_fashion_mnist,
               "mnist": _load_mnist, "cifar10": _load_cifar10, "folder": _load_folder,
               "npz": _load_npz}
    if kind not in loaders:
        raise DataError(f"unknown data set {spec!r}; valid specs: {', '.join(SPECS)}")
    return loaders[kind](arg, spec)
