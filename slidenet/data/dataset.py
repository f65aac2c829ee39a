"""`Dataset`, the train/test images every loader returns, and the checks and split it rests on."""
from dataclasses import dataclass, field

import numpy as np

from slidenet.errors import DataError


@dataclass(repr=False)
class Dataset:
    """A training and a test set of images with integer labels.

    x_train, x_test: uint8 (N, H, W, D), channels last.
    y_train, y_test: int64 (N,), each in 0 .. len(class_names) - 1.
    name: a short name for messages ("mnist5k", or the folder / file name); spec: what was loaded.
    notes: things the loader wants the user to know (files it left out, ...).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list
    name: str
    spec: str
    notes: list = field(default_factory=list)

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
        negative = np.flatnonzero(y < 0)
        if negative.size:
            raise DataError(f"{self.name}: {part} label {y[negative[0]]} (image {negative[0]}) is "
                            f"negative; labels are class numbers 0, 1, 2, ...")
        outside = y[y >= k]
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


def as_images(x, key="x", where=""):
    """Images as slidenet keeps them, uint8 (N, H, W, D), from uint8 or float pixels.

    x: (N, H, W, D), or (N, H, W) for one channel; uint8 (0..255) as is, or floats in [0, 1]
    (the one float convention of slidenet: `npz:` files, `slidenet.fit`, `Model.evaluate`),
    rounded to the nearest of the 256 levels. Anything else is a DataError that says how to
    store it; key and where name the array in it ("x", "bars.npz: ").
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{where}{key} has shape {x.shape}; expected (N, H, W) or (N, H, W, D)")
    if x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4):
        raise DataError(f"{where}{key} has shape {x.shape}, which looks channels-first "
                        f"(N, D, H, W); slidenet's images are channels-last (N, H, W, D): store "
                        f"np.transpose({key}, (0, 2, 3, 1))")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind == "f" and (x.size == 0 or (np.isfinite(x).all() and x.min() >= 0
                                                 and x.max() <= 1)):
        return np.rint(x * 255).astype(np.uint8)
    raise DataError(f"{where}{key} is {x.dtype}"
                    f"{' with values outside [0, 1]' if x.dtype.kind == 'f' else ''}; "
                    f"store uint8 pixels (0..255) or floats scaled to [0, 1]")


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


def check_fits(dataset, input_shape, num_outputs, training=False):
    """DataError unless the images are exactly `input_shape` (H, W, D) and the net scores the
    data's classes: exactly one output per class for training; at least one to evaluate a
    trained model. The advice fits the caller: a pattern to change when training, other data
    when evaluating a trained model."""
    got, want = _shape_text(dataset.input_shape), _shape_text(input_shape)
    if dataset.input_shape != tuple(int(v) for v in input_shape):
        if training:
            resize = (f", or pass --resize to stretch the images to {want.rsplit('x', 1)[0]}"
                      if dataset.input_shape[2] == input_shape[2] else "")
            raise DataError(f"{dataset.name} images are {got} but the net's INPUT is {want}: "
                            f"start the pattern with INPUT({got}){resize}")
        raise DataError(f"{dataset.name} images are {got} but the model takes {want} images: "
                        f"evaluate it on data like the data it was trained on (--data)")
    classes = dataset.num_classes
    if training and classes != num_outputs:
        raise DataError(f"{dataset.name} has {classes} classes but the last FC has {num_outputs} "
                        f"outputs: end the pattern with FC({classes}), one score per class")
    if classes > num_outputs:
        raise DataError(f"{dataset.name} has {classes} classes but the model scores only "
                        f"{num_outputs}: it was trained on other data; evaluate it on data "
                        "with its classes (--data)")
