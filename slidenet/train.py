"""The training loop: minibatch SGD-style training with validation, checkpoints and exact resume.

`train(config)` builds the net from the pattern, loads the data, and for each epoch shuffles
the training split with a seeded generator, runs forward -> loss -> backward -> update on each
minibatch, measures validation accuracy, and writes `OUT/model.npz` (the last epoch, everything
needed to resume) and `OUT/best.npz` (best validation accuracy so far) plus `OUT/history.json`.

Resume is exact: every source of randomness (shuffling, augmentation, dropout) is a Generator
whose state is saved with the model, together with the optimizer state and the epoch, so
training 1 epoch and resuming to 2 gives the same bits as training 2 epochs straight.

Under `mpiexec -n R` the same loop trains data-parallel (`slidenet.distributed`): each rank
computes its part of every batch, the gradients are summed over the ranks before the update,
and rank 0 alone logs and writes the files. Each `if group:` below is that, and nothing else.
"""
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from slidenet import data as datasets
from slidenet import distributed, modelfile, rngstate, shard
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
    group = distributed.world()     # None in one process
    with group.workers(config.threads) if group else runtime.workers(config.threads or None):
        return _train(config, resume, log)


@dataclass
class _Run:
    """Everything one training run works with, set up by `_start`."""
    config: TrainConfig
    net: Net
    normalizer: object          # data.Normalizer
    dataset: object             # data.Dataset
    x_train: np.ndarray         # uint8 (N, H, W, D): the training split minus validation
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    optimizer: object
    schedule: object            # step -> learning rate
    rngs: dict                  # "shuffle", "augment", "dropout" -> Generator
    history: list
    start_epoch: int
    steps_per_epoch: int
    group: object = None        # distributed.Group under mpiexec, else None


def _start(config, resume):
    """The run's net, data, optimiser and generators: new from `config`, or as `resume` saved
    them (then `config` only says where to go: epochs, out, stop_after, threads)."""
    state = None
    if resume is not None:
        model = load(resume)
        net, normalizer, meta, state = model.net, model.normalizer, model.meta, model.state
        config = TrainConfig(**{**meta["config"], "epochs": config.epochs, "out": config.out,
                                "stop_after": config.stop_after, "threads": config.threads})
        history, start_epoch = meta["history"], meta["epoch"]
    else:
        net = Net.from_pattern(config.pattern, seed=config.seed, skip_optional=config.skip_optional,
                               **config.variables)
        history, start_epoch = [], 0
    if config.loss not in LOSSES:
        raise SlidenetError(f"unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}")
    group = distributed.world()
    if group:
        group.check_batch_size(config.batch_size)

    dataset = datasets.load(config.data)
    datasets.check_fits(dataset, net.input_shape, net.num_outputs)
    train_idx, val_idx = datasets.split_validation(len(dataset.y_train), config.val_fraction,
                                                   config.seed)
    x_train, y_train = dataset.x_train[train_idx], dataset.y_train[train_idx]
    if resume is None:
        normalizer = datasets.Normalizer.fit(x_train)

    steps_per_epoch = math.ceil(len(y_train) / config.batch_size)
    schedule = make_schedule(config.schedule, config.lr, steps_per_epoch * config.epochs)
    optimizer = make_optimizer(config.optimizer, net.params, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    rngs = {"shuffle": np.random.default_rng([config.seed, 2]),
            "augment": np.random.default_rng([config.seed, 3]), "dropout": net.dropout_rng}
    if state is not None:
        optimizer.load_state_arrays({k[len("optim/"):]: v for k, v in state.items() if k.startswith("optim/")})
        for name, rng in rngs.items():
            rngstate.restore(rng, state[f"rng/{name}"])
    if group:   # same setup everywhere, and rank 0's weights (the rest is checked per epoch)
        group.check_setup(asdict(config), dataset)
        group.broadcast_({**net.params, **net.buffers})
    return _Run(config, net, normalizer, dataset, x_train, y_train, dataset.x_train[val_idx],
                dataset.y_train[val_idx], optimizer, schedule, rngs, history, start_epoch,
                steps_per_epoch, group)


def _train(config, resume, log):
    run = _start(config, resume)
    config = run.config
    if run.group:   # rank 0 alone logs and writes
        log = log if run.group.rank == 0 else (lambda *_: None)
        log(run.group.describe())
    if not run.group or run.group.rank == 0:
        os.makedirs(config.out, exist_ok=True)
    best = max((h["val_accuracy"] for h in run.history), default=-1.0)
    stale = 0
    last_epoch = config.epochs if not config.stop_after else \
        min(config.epochs, run.start_epoch + config.stop_after)
    for epoch in range(run.start_epoch, last_epoch):
        entry = _epoch(run, epoch)
        run.history.append(entry)
        log(f"epoch {epoch + 1:>3}/{config.epochs}  loss {entry['loss']:.4f}  acc {entry['accuracy']:.4f}"
            + (f"  val_acc {entry['val_accuracy']:.4f}" if entry["val_accuracy"] is not None else "")
            + f"  {entry['images_per_s']:.0f} img/s  {entry['seconds']:.1f}s")
        score = entry["val_accuracy"] if entry["val_accuracy"] is not None else -entry["loss"]
        improved = score > best
        _checkpoint(run, epoch, improved)
        best, stale = (score, 0) if improved else (best, stale + 1)
        if config.patience and stale >= config.patience:
            log(f"early stop: no validation gain for {config.patience} epochs")
            break
    return run.history


def _epoch(run, epoch):
    """Train one epoch, then validate: its history entry."""
    config, net, group = run.config, run.net, run.group
    loss_fn = LOSSES[config.loss]
    began = time.perf_counter()
    seen = correct = 0
    total_loss = 0.0
    step = epoch * run.steps_per_epoch
    with progress(len(run.y_train), f"epoch {epoch + 1}/{config.epochs}", unit="img",
                  show=group.shows_progress if group else None,
                  file=sys.stdout if group else None) as bar:
        for idx in datasets.batches(len(run.y_train), config.batch_size, run.rngs["shuffle"]):
            part = group.part(len(idx)) if group else None     # this rank's rows of the batch
            if part:
                idx = idx[part.rows]
            xb = run.normalizer.normalize(run.x_train[idx])
            if config.augment or config.flip:
                xb = datasets.augment(xb, run.rngs["augment"], crop_pad=2 if config.augment else 0,
                                      flip=config.flip, part=part)
            yb = run.y_train[idx]
            shard.use(part)     # what DROPOUT and BATCHNORM consult (None: the whole batch)
            scores = net.forward(xb, train=True)
            loss, dscores = loss_fn(scores, yb)
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}; the last good "
                    f"model is in {config.out}; try a lower learning rate (--lr {config.lr / 10:g})")
            if part:    # the part's share of the global batch's mean loss
                dscores *= part.weight
            net.backward(dscores, input_grad=False)
            grads, n, hits = net.grads, len(yb), int((scores.argmax(axis=1) == yb).sum())
            if group:
                grads, loss, hits, n = group.sum_step(net.grads, part, loss, hits, n)
            run.optimizer.step(grads, run.schedule(step))
            step += 1
            seen += n
            correct += hits
            total_loss += loss * n
            bar.update(n)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        shard.use(None)
    seconds = time.perf_counter() - began
    scorer = group.evaluate if group else evaluate      # under MPI: a shard per rank
    val = scorer(net, run.x_val, run.y_val, run.normalizer, len(run.dataset.class_names),
                 config.loss) if len(run.y_val) else None
    return {"epoch": epoch + 1, "loss": total_loss / seen, "accuracy": correct / seen,
            "val_accuracy": val["accuracy"] if val else None,
            "val_loss": val["loss"] if val else None,
            "lr": run.schedule(step - 1), "seconds": seconds, "images_per_s": seen / seconds}


def _checkpoint(run, epoch, improved):
    """Write OUT/model.npz (everything needed to resume), OUT/best.npz when validation
    improved, and OUT/history.json."""
    out = run.config.out
    meta = model_meta(run.net, run.dataset.class_names, data=run.config.data, epoch=epoch + 1,
                      config=asdict(run.config), history=run.history)
    arrays = model_arrays(run.net, run.normalizer, run.optimizer, run.rngs)
    if run.group:   # every rank holds this same state; rank 0 alone writes it
        run.group.check_same(arrays, f"their state after epoch {epoch + 1}",
                             "the ranks should compute identical updates; this is a bug, "
                             "please report it")
        if run.group.rank:
            return
    modelfile.save(os.path.join(out, "model.npz"), arrays, meta)
    if improved:
        modelfile.save(os.path.join(out, "best.npz"), arrays, meta)
    _write_json(os.path.join(out, "history.json"), run.history)


def _write_json(path, value):
    """Atomic JSON write: a crash leaves the previous file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(value, fh, indent=1)
    os.replace(tmp, path)
