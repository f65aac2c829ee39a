"""The training loop: minibatch SGD-style training with validation, checkpoints and exact resume.

`train(config)` builds the net from the pattern, loads the data, and for each epoch shuffles
the training split with a seeded generator, runs forward -> loss -> backward -> update on each
minibatch, measures validation accuracy, and writes `OUT/model.npz` (the last epoch, everything
needed to resume) and `OUT/best.npz` (best validation accuracy so far) plus `OUT/history.json`.

Resume is exact: every source of randomness (shuffling, augmentation, dropout) is a Generator
whose state is saved with the model, together with the optimizer state and the epoch, so
training 1 epoch and resuming to 2 gives the same bits as training 2 epochs straight.
"""
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from slidenet import data as datasets
from slidenet import modelfile, writing
from slidenet.errors import SlidenetError
from slidenet.net import Net
from slidenet.ops import runtime, softmax_loss, svm_loss
from slidenet.optim import make_optimizer
from slidenet.schedules import make_schedule

# The default net for 28x28 digits, in the lecture's pattern: [[CONV -> RELU]*2 -> POOL]*2,
# then FC -> RELU -> FC, with twice the filters after the first pool.
DEFAULT_PATTERN = ("INPUT(28x28x1) -> [CONV(16) -> RELU]*2 -> POOL -> [CONV(32) -> RELU]*2 -> POOL "
                   "-> FC(128) -> RELU -> DROPOUT(0.25) -> FC(10)")
LOSSES = {"softmax": softmax_loss, "svm": svm_loss}


class TrainingDiverged(SlidenetError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    pattern: str = DEFAULT_PATTERN          # the net, in the lecture's notation
    variables: dict = field(default_factory=dict)   # N=2, ... for the pattern's variables
    skip_optional: bool = False             # drop layers marked with ?
    data: str = "mnist5k"                   # data spec, see slidenet.data.load
    epochs: int = 15                        # total epochs (a resumed run continues to this)
    batch_size: int = 64
    lr: float = 2e-3                        # peak learning rate
    optimizer: str = "adam"                 # sgd | momentum | nesterov | adam
    momentum: float = 0.9                   # momentum / nesterov only
    weight_decay: float = 5e-4              # L2 on weights (decoupled for adam)
    schedule: str = "warmup-cosine"         # constant | step | cosine | warmup-cosine
    loss: str = "softmax"                   # softmax | svm
    augment: bool = True                    # random crops of the image zero-padded by 2
    flip: bool = False                      # random horizontal flips (off for digits: a flipped 2 is no 2)
    val_fraction: float = 0.1               # share of the training split held out for validation
    patience: int = 0                       # early stopping after this many epochs without gain; 0 = off
    seed: int = 0                           # weights, split, shuffling, augmentation, dropout
    out: str = "runs/latest"                # where model.npz, best.npz and history.json go
    stop_after: int = 0                     # stop after this many epochs in this run (0 = run to `epochs`)
    threads: int = 0                        # kernel worker threads; 0 = one per core (see `train`)


def _progress(total, desc):
    """A tqdm bar on a terminal, nothing when output is redirected."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, unit="img", disable=not sys.stderr.isatty())


def split_validation(n, fraction, seed):
    """Fixed (train_idx, val_idx) of range(n): the same split for the same seed, every run."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_val = int(round(n * fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def evaluate(net, x_uint8, y, normalizer, num_classes, loss="softmax", batch_size=256):
    """Accuracy, mean loss, per-class accuracy and confusion matrix on (x_uint8, y).

    confusion[i, j] counts images of true class i predicted as class j.
    """
    loss_fn = LOSSES[loss]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    total_loss = 0.0
    for start in range(0, len(y), batch_size):
        xb = normalizer.normalize(x_uint8[start:start + batch_size])
        yb = y[start:start + batch_size]
        scores = net.forward(xb, train=False)
        total_loss += loss_fn(scores[:, :num_classes], yb)[0] * len(yb)
        np.add.at(confusion, (yb, scores[:, :num_classes].argmax(axis=1)), 1)
    counts = confusion.sum(axis=1)
    per_class = np.where(counts > 0, np.diag(confusion) / np.maximum(counts, 1), np.nan)
    return {"accuracy": float(np.trace(confusion) / max(1, len(y))),
            "loss": float(total_loss / max(1, len(y))),
            "per_class": per_class.tolist(), "confusion": confusion.tolist()}


def _rng_arrays(prefix, rng):
    """A Generator's state as JSON text in a uint8 array (PCG64 state holds 128-bit ints)."""
    return {prefix: np.frombuffer(json.dumps(rng.bit_generator.state).encode(), dtype=np.uint8)}


def _restore_rng(rng, array):
    rng.bit_generator.state = json.loads(bytes(array).decode())


def model_arrays(net, normalizer, optimizer=None, rngs=None):
    """Everything numeric a model file holds, under prefixed names."""
    arrays = {f"param/{k}": v for k, v in net.params.items()}
    arrays.update({f"buffer/{k}": v for k, v in net.buffers.items()})
    arrays.update({f"norm/{k}": v for k, v in normalizer.to_arrays().items()})
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_arrays().items()})
    for name, rng in (rngs or {}).items():
        arrays.update(_rng_arrays(f"rng/{name}", rng))
    return arrays


def load_model(path):
    """(net, normalizer, meta, arrays) from a model file written by `train`."""
    arrays, meta = modelfile.load(path)
    try:
        net = Net.from_pattern(meta["pattern"], seed=0, dtype=meta.get("dtype", "float32"),
                               skip_optional=meta.get("skip_optional", False), **meta.get("variables", {}))
        for prefix, target in (("param/", net.params), ("buffer/", net.buffers)):
            for name, live in target.items():
                stored = arrays[prefix + name]
                if stored.shape != live.shape:
                    raise KeyError(name)
                live[...] = stored
        normalizer = datasets.Normalizer.from_arrays(
            {k[len("norm/"):]: v for k, v in arrays.items() if k.startswith("norm/")})
    except (KeyError, TypeError, ValueError) as err:
        raise SlidenetError(f"{path}: not a complete slidenet model ({err})") from None
    return net, normalizer, meta, arrays


def train(config, resume=None, log=print):
    """Train as `config` says (or continue the run saved in `resume`, which takes only epochs,
    out, stop_after, threads and patience from `config`). Returns the history list.

    Each history entry: epoch, loss, accuracy, val_accuracy, val_loss, lr, seconds, images_per_s.
    The kernels run on `config.threads` worker threads. Results are deterministic for a given
    count; another count changes the rounding of the sums (about 1e-7), so an exact resume uses
    the same count (the default, one per core, on the same machine).
    """
    with runtime.workers(config.threads or None):
        return _train(config, resume, log)


def _train(config, resume, log):
    state = None
    if resume is not None:
        net, normalizer, meta, state = load_model(resume)
        saved = TrainConfig(**{**meta["config"], "epochs": config.epochs, "out": config.out,
                               "stop_after": config.stop_after, "threads": config.threads,
                               "patience": config.patience})
        config = saved
        history = meta["history"]
        start_epoch = meta["epoch"]
    else:
        net = Net.from_pattern(config.pattern, seed=config.seed, skip_optional=config.skip_optional,
                               **config.variables)
        history, start_epoch = [], 0
    if config.loss not in LOSSES:
        raise SlidenetError(f"unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}")

    dataset = datasets.load(config.data)
    datasets.check_fits(dataset, net.input_shape, net.num_outputs)
    train_idx, val_idx = split_validation(len(dataset.y_train), config.val_fraction, config.seed)
    x_train, y_train = dataset.x_train[train_idx], dataset.y_train[train_idx]
    x_val, y_val = dataset.x_train[val_idx], dataset.y_train[val_idx]
    num_classes = len(dataset.class_names)
    if resume is None:
        normalizer = datasets.Normalizer.fit(x_train)

    steps_per_epoch = math.ceil(len(y_train) / config.batch_size)
    schedule = make_schedule(config.schedule, config.lr, steps_per_epoch * config.epochs)
    optimizer = make_optimizer(config.optimizer, net.params, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    shuffle_rng = np.random.default_rng([config.seed, 2])
    augment_rng = np.random.default_rng([config.seed, 3])
    rngs = {"shuffle": shuffle_rng, "augment": augment_rng, "dropout": net.dropout_rng}
    if state is not None:
        optimizer.load_state_arrays({k[len("optim/"):]: v for k, v in state.items() if k.startswith("optim/")})
        for name, rng in rngs.items():
            _restore_rng(rng, state[f"rng/{name}"])

    writing.make_folder(config.out)
    loss_fn = LOSSES[config.loss]
    best = max((h["val_accuracy"] for h in history), default=-1.0)
    stale = 0
    last_epoch = config.epochs if not config.stop_after else min(config.epochs, start_epoch + config.stop_after)

    for epoch in range(start_epoch, last_epoch):
        began = time.perf_counter()
        seen = correct = 0
        total_loss = 0.0
        step = epoch * steps_per_epoch
        with _progress(len(y_train), f"epoch {epoch + 1}/{config.epochs}") as bar:
            for idx in datasets.batches(len(y_train), config.batch_size, shuffle_rng):
                xb = normalizer.normalize(x_train[idx])
                if config.augment or config.flip:
                    xb = datasets.augment(xb, augment_rng, crop_pad=2 if config.augment else 0,
                                          flip=config.flip)
                yb = y_train[idx]
                scores = net.forward(xb, train=True)
                loss, dscores = loss_fn(scores, yb)
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}; the last good "
                        f"model is in {config.out}; try a lower learning rate (--lr {config.lr / 10:g})")
                net.backward(dscores, input_grad=False)
                optimizer.step(net.grads, schedule(step))
                step += 1
                seen += len(yb)
                correct += int((scores.argmax(axis=1) == yb).sum())
                total_loss += loss * len(yb)
                bar.update(len(yb))
                bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        seconds = time.perf_counter() - began
        val = evaluate(net, x_val, y_val, normalizer, num_classes, config.loss) if len(y_val) else None
        entry = {"epoch": epoch + 1, "loss": total_loss / seen, "accuracy": correct / seen,
                 "val_accuracy": val["accuracy"] if val else None,
                 "val_loss": val["loss"] if val else None,
                 "lr": schedule(step - 1), "seconds": seconds, "images_per_s": seen / seconds}
        history.append(entry)
        log(f"epoch {epoch + 1:>3}/{config.epochs}  loss {entry['loss']:.4f}  acc {entry['accuracy']:.4f}"
            + (f"  val_acc {entry['val_accuracy']:.4f}" if val else "")
            + f"  {entry['images_per_s']:.0f} img/s  {seconds:.1f}s")

        meta = {"format": "slidenet-model", "version": 1, "pattern": net.pattern,
                "variables": net.variables, "skip_optional": net.skip_optional,
                "dtype": str(net.dtype), "class_names": list(dataset.class_names),
                "data": config.data, "epoch": epoch + 1, "config": asdict(config), "history": history}
        arrays = model_arrays(net, normalizer, optimizer, rngs)
        modelfile.save(os.path.join(config.out, "model.npz"), arrays, meta)
        score = entry["val_accuracy"] if val else -entry["loss"]
        if score > best:
            best, stale = score, 0
            modelfile.save(os.path.join(config.out, "best.npz"), arrays, meta)
        else:
            stale += 1
        _write_json(os.path.join(config.out, "history.json"), history)
        if config.patience and stale >= config.patience:
            log(f"early stop: no validation gain for {config.patience} epochs")
            break
    return history


def _write_json(path, value):
    """Atomic JSON write: a crash or a full disk leaves the previous file."""
    writing.write_json(path, value)
