"""A trained model, as users and every command see it: `slidenet.load(path) -> Model`.

    model = slidenet.load("runs/demo/best.npz")
    model.input_shape                   # (28, 28, 1): (H, W, D) of INPUT
    model.class_names                   # ["0", "1", ..., "9"]
    p = model.predict(images)           # uint8 (N, 28, 28, 1) -> float64 probabilities (N, 10)
                                        # (floats: pixels scaled to [0, 1], as npz: data)
    s = model.scores(images)            # the last layer's scores (N, 10), float64
    model.evaluate(x, y)                # accuracy, loss, per-class accuracy, confusion
    model.net, model.normalizer         # the layers, and the pixel standardisation
    model.meta, model.history           # pattern, data, epoch, config, history, ...
    model.save("digits.npz")            # atomically; `load` reads it back

`slidenet.fit(...)` returns a Model too. In a notebook a Model shows its summary and history
(`_repr_html_`).

A model file (`slidenet.storage.modelfile`) holds the net's parameters and buffers, the normaliser and,
for a file written by `slidenet train`, the optimiser state and the random generators' states,
which is everything `--resume` needs (`Model.state`). `model_arrays` and `model_meta` build
those contents; `save` writes them.
"""
import html

import numpy as np

from slidenet import data as datasets
from slidenet.data.dataset import as_images
from slidenet.data.normalize import Normalizer
from slidenet.errors import DataError, ModelFileError
from slidenet.net import Net
from slidenet.ops.losses import softmax
from slidenet.notation.pattern import parse
from slidenet.notation.shapes import infer, walk_infos
from slidenet.storage import modelfile, modelmeta, rngstate

FORMAT = "slidenet-model"
VERSION = 1
BATCH = 256         # images per forward pass in predict and scores


class Model:
    """A net, the normaliser its inputs need, and what the model file says about it.

    net: `slidenet.Net`; normalizer: `slidenet.data.Normalizer`; meta: the file's meta dict;
    state: every array of the file by name (for resuming training), or None.
    """

    def __init__(self, net, normalizer, meta, state=None):
        self.net = net
        self.normalizer = normalizer
        self.meta = meta
        self.state = state
        self._plan = None           # net.prepare(), made at the first prediction

    @property
    def plan(self):
        """The net prepared for inference (`Net.prepare`), made once; `predict` and `scores`
        run it. A snapshot of the weights: after changing `net`'s weights, call `refresh()`."""
        if self._plan is None:
            self._plan = self.net.prepare()
        return self._plan

    def refresh(self):
        """Forget the prepared net, so the next prediction uses the weights as they are now."""
        self._plan = None

    @property
    def input_shape(self):
        """(height, width, depth) of the images the model takes."""
        return tuple(self.net.input_shape)

    @property
    def class_names(self):
        """One name per score, in order: the file's class names, and the score's number for
        any score the file names no class for."""
        names = [str(n) for n in self.meta.get("class_names") or []]
        return names + [str(i) for i in range(len(names), self.net.num_outputs)]

    @property
    def resized(self):
        """Whether the model was trained with --resize (every image stretched to INPUT's
        height x width); `load_data`, `slidenet predict` and `viz activations` do the same."""
        config = self.meta.get("config") or {}
        return bool(config.get("resize", False))

    def data_spec(self, given=None):
        """The data set to evaluate on: `given`, else the one the model was trained on (or was
        named for by `slidenet import --data`). A DataError when there is neither."""
        spec = given or self.meta.get("data")
        if not spec:
            source = self.meta.get("source", "elsewhere")
            raise DataError(f"the model names no data set (it came from {source}): give "
                            "--data SPEC, e.g. --data mnist5k or --data folder:DIR")
        return spec

    def scores(self, images, batch_size=BATCH):
        """The last layer's scores (N, C), float64, for images (N, H, W, D): uint8 (or other
        integer) pixels 0..255, or floats scaled to [0, 1] as in `npz:` data sets (rounded to
        the nearest of the 256 levels the model was trained on); in batches of `batch_size`.
        DataError for floats outside [0, 1] or integers outside 0..255."""
        images = self._check(images)
        with np.errstate(over="ignore", invalid="ignore"):      # refused below, in words
            out = [self.plan.forward(self.normalizer.normalize(images[i:i + batch_size]))
                   .astype(np.float64) for i in range(0, len(images), batch_size)]
        scores = np.concatenate(out) if out else np.zeros((0, self.net.num_outputs))
        if not np.isfinite(scores).all():
            # Finite weights can still overflow float32 (weights near 1e38 do).
            raise ModelFileError("the model's scores for these images are not finite numbers "
                                 "(its weights overflow float arithmetic); the model is damaged")
        return scores

    def predict(self, images, batch_size=BATCH):
        """Class probabilities (N, C), float64 (the softmax of `scores`); rows sum to 1."""
        return softmax(self.scores(images, batch_size))

    @property
    def history(self):
        """One dict per epoch trained (epoch, loss, accuracy, val_accuracy, val_loss, lr,
        seconds, images_per_s), as `slidenet train` writes history.json; [] for none."""
        history = self.meta.get("history")
        return list(history) if isinstance(history, list) else []

    @property
    def loss(self):
        """The loss the model was trained with: "softmax" or "svm"."""
        config = self.meta.get("config")
        return (config.get("loss") if isinstance(config, dict) else None) or "softmax"

    def evaluate(self, x, y, batch_size=BATCH):
        """Accuracy and the rest on labelled images, as `slidenet eval` prints them.

        x: uint8 (N, H, W, D) or (N, H, W), or floats in [0, 1] (the rule of `npz:` data and
        `slidenet.fit`); y: class numbers (N,). Returns {"accuracy", "loss", "per_class",
        "confusion"} (see `slidenet.evaluate.evaluate`).
        """
        from slidenet.training.evaluate import evaluate
        images = as_images(x)
        if tuple(images.shape[1:]) != self.input_shape:
            want = "x".join(str(v) for v in self.input_shape)
            raise DataError(f"x holds images of {'x'.join(map(str, images.shape[1:]))}; the model "
                            f"takes {want}")
        labels = class_numbers(y, len(images), self.net.num_outputs)
        return evaluate(self.net, images, labels, self.normalizer, self.net.num_outputs,
                        self.loss, batch_size)

    def save(self, path):
        """Write the model to `path` (a `.npz` model file that `slidenet.load` and every command
        read), atomically through `slidenet.storage.writing`: a failed write keeps the previous file."""
        arrays = model_arrays(self.net, self.normalizer)
        # A run's optimiser and generator states travel with it (what --resume needs).
        arrays.update({k: v for k, v in (self.state or {}).items()
                       if k.startswith(("optim/", "rng/"))})
        modelfile.save(path, arrays, self.meta)
        return path

    def _repr_html_(self):
        """The net's summary table, then the history, for Jupyter."""
        from slidenet.notation.summary import history_html
        title = html.escape(f"Model: {len(self.class_names)} classes "
                            f"({', '.join(self.class_names[:12])}"
                            f"{', ...' if len(self.class_names) > 12 else ''})")
        return (f"<div class='slidenet-model'><p><b>{title}</b></p>{self.net._repr_html_()}"
                f"{history_html(self.history)}</div>")

    def load_data(self, spec=None, path="the model file"):
        """The data set `spec` (default: the one the model was trained on, see `data_spec`), at
        the size the model takes (stretched if it was trained with --resize), checked to fit.

        A recorded data set that is gone is a DataError saying where the spec came from.
        """
        chosen = self.data_spec(spec)
        try:
            dataset = datasets.load(chosen, size=self.input_shape[:2] if self.resized else None,
                                    depth=self.input_shape[2])
        except DataError as err:
            if spec is not None:
                raise
            raise DataError(f"{err}; the data spec {chosen!r} comes from {path}: pass --data "
                            "SPEC to use data that is here") from None
        datasets.check_fits(dataset, self.input_shape, self.net.num_outputs)
        return dataset

    def _check(self, images):
        images = np.asarray(images)
        want = "x".join(str(v) for v in self.input_shape)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise DataError(f"images must be an array (N, H, W, D) of {want} images, got shape "
                            f"{images.shape}")
        if images.dtype.kind not in "uif":
            raise DataError(f"images must hold pixel values: uint8 0..255, or floats scaled to "
                            f"[0, 1]; got {images.dtype}")
        if images.size == 0 or images.dtype == np.uint8:
            return images
        low, high = images.min(), images.max()
        if images.dtype.kind == "f":
            # The convention of `npz:` data sets: floats are pixels scaled to [0, 1]. Floats on
            # 0..255 would otherwise be read as 255 times too bright, without a word.
            if not (np.isfinite(low) and np.isfinite(high) and 0 <= low and high <= 1):
                raise DataError(f"float images must be pixels scaled to [0, 1] (as npz: data "
                                f"stores them); these run from {low:g} to {high:g}: divide "
                                "0..255 pixels by 255, or pass them as uint8")
            return np.rint(images * 255).astype(np.uint8)
        if low < 0 or high > 255:
            raise DataError(f"integer images must hold pixel values 0..255; these run from "
                            f"{low} to {high}")
        return images

    def __repr__(self):
        return f"Model({self.meta.get('pattern')!r}, classes={self.class_names})"


def class_numbers(y, count, classes, key="y"):
    """y as int64 class numbers (count,), each in 0 .. classes - 1; a DataError that says how
    to fix anything else (one-hot rows, floats, the wrong length)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == classes and y.shape[0] == count:
        raise DataError(f"{key} has shape {y.shape}, one row per image (one-hot?); give class "
                        f"numbers (N,): {key}.argmax(axis=1)")
    if y.ndim != 1 or len(y) != count:
        raise DataError(f"{key} must hold one class number per image: {count} of them, got an "
                        f"array of shape {y.shape}")
    if y.size and y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
            y = y.astype(np.int64)
        else:
            raise DataError(f"{key} must hold integer class numbers, not {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if bad.size:
        raise DataError(f"{key}[{bad[0]}] is {y[bad[0]]}, outside the classes 0..{classes - 1}")
    return y.astype(np.int64)


def load(path):
    """The model in a file written by `slidenet train` (or `save`): a `Model`.

    Raises ModelFileError when the file is missing, damaged, or not a complete slidenet model.
    """
    arrays, meta = modelfile.load(path)
    modelmeta.check(meta, path)
    dtype, variables = meta.get("dtype", "float32"), meta.get("variables", {})
    skip = meta.get("skip_optional", False)
    # The pattern's shapes, worked out without allocating, against the arrays present: a meta
    # that claims a bigger net than the file holds is refused before any weight exists.
    infos = infer(parse(meta["pattern"], variables, skip), meta["pattern"])
    modelmeta.check_sizes(walk_infos(infos), arrays, dtype, path)
    try:
        net = Net.from_pattern(meta["pattern"], seed=0, dtype=dtype, skip_optional=skip, blank=True,
                               **variables)
        for prefix, target in (("param/", net.params), ("buffer/", net.buffers)):
            for name, live in target.items():
                stored = arrays[prefix + name]
                if stored.shape != live.shape:
                    raise KeyError(name)
                live[...] = stored
        normalizer = Normalizer.from_arrays(
            {k[len("norm/"):]: v for k, v in arrays.items() if k.startswith("norm/")})
        # The numbers as the file holds them, a bias that is folded below included.
        _check_numbers(arrays, normalizer, net.input_shape[-1], path)
        arrays = _fold_dropped_biases(net, arrays)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: not a complete slidenet model ({err})") from None
    return Model(net, normalizer, meta, arrays)


def _check_numbers(arrays, normalizer, depth, path):
    """ModelFileError unless every weight, buffer and the normaliser are finite numbers, and
    the normaliser has one positive std per input channel: a NaN weight would make every
    prediction NaN, and a std of 0 divides by zero."""
    for name, array in arrays.items():
        if not name.startswith(("param/", "buffer/", "norm/")):
            continue
        if array.dtype.kind not in "biuf" or not np.isfinite(array).all():
            raise ModelFileError(f"{path}: {name} holds values that are not finite numbers "
                                 "(NaN, infinity or not numbers at all); the file is damaged, "
                                 "or it was saved from a run that diverged")
    if normalizer.mean.shape != (depth,) or normalizer.std.shape != (depth,):
        raise ModelFileError(f"{path}: its normaliser has {normalizer.mean.size} means and "
                             f"{normalizer.std.size} stds for an INPUT of depth {depth}")
    if not (normalizer.std > 0).all():
        raise ModelFileError(f"{path}: its normaliser's std is {normalizer.std.tolist()}; each "
                             "must be above 0 (slidenet fits 1 for a constant channel), so the "
                             "file is damaged")


def _fold_dropped_biases(net, arrays):
    """A file written before a CONV or FC directly followed by BATCHNORM lost its bias still
    holds that bias ("param/conv1.b"), and its BATCHNORM's running mean was measured with it.
    Evaluation computes (y + b - mean) / sd; the net now computes y without b, so the bias is
    folded into the mean (mean - b) and the outputs stay the same (to float rounding). In
    training, each batch's own mean cancels b exactly. The bias and its optimiser state are
    left out of the arrays returned (what `--resume` reads)."""
    dropped = net.dropped_biases()
    for name, batchnorm in dropped.items():
        old = arrays.get(f"param/{name}")
        if old is not None:
            mean = net.buffers[f"{batchnorm}.running_mean"]
            if old.shape != mean.shape:
                raise KeyError(name)
            mean -= old.astype(mean.dtype)
    if not any(f"param/{name}" in arrays for name in dropped):
        return arrays
    return {key: value for key, value in arrays.items()
            if not any(key == f"param/{name}" or (key.startswith("optim/")
                                                  and key.endswith(f"/{name}"))
                       for name in dropped)}


def model_arrays(net, normalizer, optimizer=None, rngs=None):
    """Everything numeric a model file holds, under prefixed names: param/, buffer/, norm/,
    optim/ (the optimiser's state) and rng/ (generator states, see `rngstate`)."""
    arrays = {f"param/{k}": v for k, v in net.params.items()}
    arrays.update({f"buffer/{k}": v for k, v in net.buffers.items()})
    arrays.update({f"norm/{k}": v for k, v in normalizer.to_arrays().items()})
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_arrays().items()})
    for name, rng in (rngs or {}).items():
        arrays[f"rng/{name}"] = rngstate.state_array(rng)
    return arrays


def model_meta(net, class_names, **extra):
    """The meta dict of a model file: the net's pattern and dtype, the class names, and
    `extra` (data, epoch, config, history for a training run)."""
    return {"format": FORMAT, "version": VERSION, "pattern": net.pattern,
            "variables": net.variables, "skip_optional": net.skip_optional,
            "dtype": str(net.dtype), "class_names": list(class_names), **extra}


def save(path, net, normalizer, class_names, **extra):
    """Write a model file for `net` that `load` reads back (atomically; see `modelfile.save`)."""
    modelfile.save(path, model_arrays(net, normalizer), model_meta(net, class_names, **extra))
