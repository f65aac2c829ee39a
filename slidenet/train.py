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
import time
from dataclasses import asdict, replace

import numpy as np

from slidenet import data as datasets
from slidenet import modelfile, rngstate
from slidenet.config import DEFAULT_PATTERN, TrainConfig
from slidenet.errors import SlidenetError
from slidenet.evaluate import evaluate
from slidenet.model import load, model_arrays, model_meta
from slidenet.net import Net
from slidenet.ops import runtime
from slidenet.ops.losses import LOSSES
from slidenet.optim import make_optimizer
from slidenet.progress import progress
from slidenet.schedules import make_schedule

__all__ = ["DEFAULT_PATTERN", "TrainConfig", "TrainingDiverged", "train"]


class TrainingDiverged(SlidenetError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train(config, resume=None, log=print):
    """Train as `config` says (or continue the run saved in `resume`). Returns the history list.

    Each history entry: epoch, loss, accuracy, val_accuracy, val_loss, lr, seconds, images_per_s.
    The kernels run on `config.threads` worker threads. Results are deterministic for a given
    count; another count changes the rounding of the sums (about 1e-7), so an exact resume uses
    the same count (the default, one per core, on the same machine).
    """
    with runtime.workers(config.threads or None):
        return _train(config, resume, log)


def _train(config, resume, log):
    state = None
    model = load(resume) if resume is not None else None
    if model is not None and "config" not in model.meta:
        # A model made elsewhere (`slidenet import`) has no run to continue: fine-tune it, with
        # this run's settings and a fresh optimiser, from epoch 0.
        net, normalizer, history, start_epoch = model.net, model.normalizer, [], 0
        config = replace(config, data=_fine_tuning_data(config, model, resume),
                         pattern=net.pattern, variables=net.variables,
                         skip_optional=net.skip_optional)
    elif model is not None:
        net, normalizer, meta, state = model.net, model.normalizer, model.meta, model.state
        saved = TrainConfig(**{**meta["config"], "epochs": config.epochs, "out": config.out,
                               "stop_after": config.stop_after, "threads": config.threads})
        config = saved
        history = meta["history"]
        start_epoch = meta["epoch"]
    else:
        net = Net.from_pattern(config.pattern, seed=config.seed, skip_optional=config.skip_optional,
                               **config.variables)
        history, start_epoch = [], 0
        normalizer = None
    if config.data is None:         # the command line leaves it None when --data is not given
        config = replace(config, data=TrainConfig.data)
    if config.loss not in LOSSES:
        raise SlidenetError(f"unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}")

    dataset = datasets.load(config.data)
    datasets.check_fits(dataset, net.input_shape, net.num_outputs)
    train_idx, val_idx = datasets.split_validation(len(dataset.y_train), config.val_fraction,
                                                   config.seed)
    x_train, y_train = dataset.x_train[train_idx], dataset.y_train[train_idx]
    x_val, y_val = dataset.x_train[val_idx], dataset.y_train[val_idx]
    num_classes = len(dataset.class_names)
    if normalizer is None:
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
            rngstate.restore(rng, state[f"rng/{name}"])

    os.makedirs(config.out, exist_ok=True)
    loss_fn = LOSSES[config.loss]
    best = max((h["val_accuracy"] for h in history), default=-1.0)
    stale = 0
    last_epoch = config.epochs if not config.stop_after else min(config.epochs, start_epoch + config.stop_after)

    for epoch in range(start_epoch, last_epoch):
        began = time.perf_counter()
        seen = correct = 0
        total_loss = 0.0
        step = epoch * steps_per_epoch
        with progress(len(y_train), f"epoch {epoch + 1}/{config.epochs}", unit="img") as bar:
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

        meta = model_meta(net, dataset.class_names, data=config.data, epoch=epoch + 1,
                          config=asdict(config), history=history)
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


def _fine_tuning_data(config, model, path):
    """The data to fine-tune an imported model on: --data, else the one it was imported for."""
    if config.data is None and not model.meta.get("data"):
        raise SlidenetError(
            f"--resume {path}: this model was not trained by slidenet (it came from "
            f"{model.meta.get('source', 'elsewhere')}), so there is no run to continue and no "
            "data set to fine-tune it on: give --data SPEC")
    return config.data or model.meta["data"]


def _write_json(path, value):
    """Atomic JSON write: a crash leaves the previous file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(value, fh, indent=1)
    os.replace(tmp, path)
