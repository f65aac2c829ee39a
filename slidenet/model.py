"""A trained model, as users and every command see it: `slidenet.load(path) -> Model`.

    model = slidenet.load("runs/demo/best.npz")
    model.input_shape                   # (28, 28, 1): (H, W, D) of INPUT
    model.class_names                   # ["0", "1", ..., "9"]
    p = model.predict(images)           # uint8 (N, 28, 28, 1) -> float64 probabilities (N, 10)
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
from slidenet.storage import modelfile, rngstate

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
        """The last layer's scores (N, C), float64, for images (N, H, W, D) of pixel values
        0..255 (uint8, or floats on that scale), in batches of `batch_size`."""
        images = self._check(images)
        out = [self.plan.forward(self.normalizer.normalize(images[i:i + batch_size]))
               .astype(np.float64) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.net.num_outputs))

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
        resize = (self.meta.get("config") or {}).get("resize", False)
        try:
            dataset = datasets.load(chosen, size=self.input_shape[:2] if resize else None)
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
            raise DataError(f"images must hold pixel values 0..255, got {images.dtype}")
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
    try:
        net = Net.from_pattern(meta["pattern"], seed=0, dtype=meta.get("dtype", "float32"),
                               skip_optional=meta.get("skip_optional", False), blank=True,
                               **meta.get("variables", {}))
        for prefix, target in (("param/", net.params), ("buffer/", net.buffers)):
            for name, live in target.items():
                stored = arrays[prefix + name]
                if stored.shape != live.shape:
                    raise KeyError(name)
                live[...] = stored
        normalizer = Normalizer.from_arrays(
            {k[len("norm/"):]: v for k, v in arrays.items() if k.startswith("norm/")})
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: not a complete slidenet model ({err})") from None
    return Model(net, normalizer, meta, arrays)


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
