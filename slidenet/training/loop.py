"""The training loop: minibatch SGD-style training with validation, checkpoints and exact resume.

`train(config)` builds the net from the pattern, loads the data, and for each epoch shuffles
the training split with a seeded generator, runs forward -> loss -> backward -> update on each
minibatch, measures validation accuracy, and writes `OUT/model.npz` (the last epoch, everything
needed to resume) and `OUT/best.npz` (best validation accuracy so far) plus `OUT/history.json`.

Resume is exact: every source of randomness (shuffling, augmentation, dropout) is a Generator
whose state is saved with the model, together with the optimizer state and the epoch, so
training 1 epoch and resuming to 2 gives the same bits as training 2 epochs straight.

The same loop trains on arrays in memory (`slidenet.fit`): `run(config, dataset=...)` takes a
`Dataset` instead of reading `config.data`, a net instead of building one, an explicit
validation set instead of the fraction, callbacks after each epoch, and `config.out=None` for no
files. The command and `fit` differ only in where the images come from.

Under `mpiexec -n R` the same loop trains data-parallel (`slidenet.training.distributed`): each rank
computes its part of every batch, the gradients are summed over the ranks before the update,
and rank 0 alone logs and writes the files. Each `if group:` below is that, and nothing else.

An `Observer` passed to `train` or `run` hears of the run as it goes (`slidenet train --live`
shows it in the browser, slidenet.serve.watch): once at the start, after every step, after every
epoch. Its calls run on the training thread between steps, so they must be quick; under MPI only
rank 0's observer is called.
"""
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from functools import partial

import numpy as np

from slidenet import data as datasets
from slidenet.errors import SlidenetError
from slidenet.model import load, model_arrays, model_meta
from slidenet.net import Net
from slidenet.ops import runtime, shard
from slidenet.ops.losses import LOSSES
from slidenet.progress import progress
from slidenet.storage import modelfile, rngstate, writing
from slidenet.training import distributed, transfer
from slidenet.training.config import DEFAULT_PATTERN, TrainConfig
from slidenet.training.evaluate import evaluate
from slidenet.training.optim import make_optimizer
from slidenet.training.schedules import make_schedule

__all__ = ["DEFAULT_PATTERN", "Observer", "TrainConfig", "TrainingDiverged",
           "TrainingInterrupted", "Watched", "run", "train"]


class TrainingDiverged(SlidenetError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; `hint` says where the last checkpoint is and how to continue;
    `run` is the run as it stood (its net holds the weights as they were when Ctrl-C came)."""

    def __init__(self, hint, run=None):
        super().__init__(hint)
        self.hint = hint
        self.run = run


@dataclass(frozen=True)
class Watched:
    """What an Observer is shown of a run when it starts. The net is the live one: read it only
    inside an Observer call (between steps), never from another thread."""
    net: Net
    normalizer: object          # data.Normalizer
    x_val: np.ndarray           # uint8 (N, H, W, D): the validation images
    y_val: np.ndarray           # int (N,)
    class_names: list
    config: TrainConfig         # the run's settings (a resumed run's own)
    steps_per_epoch: int
    start_epoch: int            # epochs done before this run (a resumed run's)
    history: list               # the entries so far; train appends to this same list


class Observer:
    """Hears of a training run as it goes; every method is called on the training thread.

    start(watched)                  once, before the first step (a `Watched`)
    step(step, loss, images, lr)    after each update: the global step (1-based), the batch's
                                    mean loss, its image count and the learning rate it used
    epoch(entry, confusion)         after each epoch's checkpoint: its history entry, and the
                                    validation confusion matrix its validation pass counted
                                    (C x C lists, row: true class; None without validation)
    """

    def start(self, watched):
        pass

    def step(self, step, loss, images, lr):
        pass

    def epoch(self, entry, confusion=None):
        pass


def train(config, resume=None, log=print, observer=None):
    """Train as `config` says (or continue the run saved in `resume`, which takes only epochs,
    out, stop_after, threads and patience from `config`). Returns the history list.
    `run` is the same with more choices, and returns the whole run. observer: an `Observer`
    told of every step and epoch (rank 0's only, under MPI).

    Each history entry: epoch, loss, accuracy, val_accuracy, val_loss, lr, seconds, images_per_s.
    The kernels run on `config.threads` worker threads. Results are deterministic for a given
    count; another count changes the rounding of the sums (about 1e-7), so an exact resume uses
    the same count (the default, one per core, on the same machine).
    """
    return run(config, resume, log, observer=observer).history


def run(config, resume=None, log=print, *, dataset=None, net=None, validation=None,
        callbacks=(), observer=None):
    """The training loop of `train`, returning the `Run` (net, normaliser, history, ...).

    dataset: a `Dataset` to train on instead of loading `config.data` (its test part unused).
    net: a `Net` to train, from its weights as they are, instead of building `config.pattern`.
    validation: (x, y), uint8 (N, H, W, D) and int (N,), to validate on instead of holding out
        `config.val_fraction` of the training images.
    callbacks: see `slidenet.fit`; each is called with a copy of every epoch's history entry.
    observer: an `Observer`, told of the start, every step and every epoch.
    config.out None: write no files.
    """
    group = distributed.world()     # None in one process
    # Overflow on the way to a NaN loss is what TrainingDiverged reports, in one clear line.
    with group.workers(config.threads) if group else runtime.workers(config.threads or None), \
            np.errstate(over="ignore", invalid="ignore"):
        return _train(config, resume, log, _Given(dataset, net, validation, tuple(callbacks),
                                                  observer or Observer()))


@dataclass
class _Given:
    """What `run` was handed instead of reading it from the config (see `run`)."""
    dataset: object = None
    net: object = None
    validation: tuple = None
    callbacks: tuple = ()
    observer: object = None


@dataclass
class Run:
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
    saved: dict                 # file name -> epoch, for the files this run has written
    resume: str = None          # the model file this run continues, if any
    group: object = None        # distributed.Group under mpiexec, else None
    callbacks: tuple = ()       # called after each epoch (see `run`)
    planned: int = None         # a resumed run's total epochs as it was first planned
    frozen: int = 0             # the net's first steps that do not train (--freeze)
    notes: tuple = ()           # lines for the opening: a replaced head, what is frozen
    observer: Observer = None   # told of every step and epoch (rank 0's only)
    confusion: list = None      # the last validation pass's confusion matrix, for the observer


AUTO_BATCH = 64                 # the batch size, unless the training split is small
FEW_VALIDATION = 50             # fewer validation images than this: their accuracy says little
OVERFIT_GAP = 0.3               # training accuracy this far above validation: a warning
MIN_STEPS = 10                  # ... then smaller, so that an epoch has at least this many steps


def auto_batch_size(images, group=None):
    """64 images a step; for a training split of fewer than 640, as many as give 10 steps an
    epoch (at least 8): 80 images of your own would otherwise be one step an epoch. Under
    mpiexec, rounded down to a multiple of the number of processes (each takes a share)."""
    batch = max(1, min(AUTO_BATCH, max(8, images // MIN_STEPS)))
    return max(group.size, batch - batch % group.size) if group else batch


def _check_scores(net, spec, dataset=None):
    """The net must end in the FC whose outputs are the class scores; say so before any data
    is read, with the number of classes when it is known without reading images."""
    last = net.infos[-1]
    # An FC, or a 1 x 1 x C volume (a global-average-pool head, as NiN and SqueezeNet end).
    if last.spec.type.scores or tuple(last.output_shape[:2]) == (1, 1):
        return
    classes = dataset.num_classes if dataset is not None else datasets.class_count(spec)
    spec = spec or "the data"
    want = f"FC({classes}) for {spec}" if classes else "FC(C), C the number of classes of the data"
    raise SlidenetError(
        f"the net must end in FC(number of classes), the layer whose outputs are the class "
        f"scores: {want}; this one ends in {last.spec.text} (layer {last.index}). The softmax "
        "(or SVM) is part of the loss, not a layer")


def _start(config, resume, given):
    """The run's net, data, optimiser and generators: new from `config`, or as `resume` saved
    them (then `config` only says where to go: epochs, out, stop_after, threads)."""
    state, planned, dataset, notes = None, None, None, []
    model = load(resume) if resume is not None else None
    if config.source and resume is None:
        net, normalizer, dataset, config, note = _transfer(config)
        history, start_epoch = [], 0
        notes += [note] if note else []
    elif model is not None and not resumable(model.meta):
        # A model made elsewhere (`slidenet import`) has no run to continue: fine-tune it, with
        # this run's settings and a fresh optimiser, from epoch 0.
        net, normalizer, history, start_epoch = model.net, model.normalizer, [], 0
        config = replace(config, data=_fine_tuning_data(config, model, resume),
                         pattern=net.pattern, variables=net.variables,
                         skip_optional=net.skip_optional)
    elif model is not None:
        net, normalizer, meta, state = model.net, model.normalizer, model.meta, model.state
        if config.epochs <= meta["epoch"]:
            raise SlidenetError(
                f"{resume} has already trained {meta['epoch']} epoch{'s' * (meta['epoch'] != 1)} and "
                f"--epochs {config.epochs} "
                f"counts all epochs, the saved ones too: ask for more, e.g. --epochs "
                f"{meta['epoch'] + max(1, config.epochs)}")
        config = TrainConfig(**{**meta["config"], "epochs": config.epochs, "out": config.out,
                                "stop_after": config.stop_after, "threads": config.threads,
                                "patience": config.patience})
        history, start_epoch = meta["history"], meta["epoch"]
        planned = meta["config"].get("epochs")
    elif given.net is not None:
        net, history, start_epoch, normalizer = given.net, [], 0, None
    else:
        net = Net.from_pattern(config.pattern, seed=config.seed, skip_optional=config.skip_optional,
                               **config.variables)
        if given.dataset is None:
            config = replace(config, data=datasets.resolve(config.data or TrainConfig.data))
        history, start_epoch = [], 0
        normalizer = None
    if config.loss not in LOSSES:
        raise SlidenetError(f"unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}")
    if config.label_smoothing and config.loss != "softmax":
        raise SlidenetError(f"label smoothing spreads the softmax loss's targets; the {config.loss} "
                            f"loss has none: drop --label-smoothing or use --loss softmax")
    if dataset is None:
        dataset = given.dataset
    _check_scores(net, config.data, dataset)
    frozen, note = transfer.frozen_steps(net, config.freeze)
    notes += [note] if note else []

    if dataset is None:
        dataset = datasets.load(config.data, size=net.input_shape[:2] if config.resize else None,
                                depth=net.input_shape[2])
    datasets.check_fits(dataset, net.input_shape, net.num_outputs, training=True)
    if given.validation is None:
        train_idx, val_idx = datasets.split_validation(len(dataset.y_train), config.val_fraction,
                                                       config.seed)
        x_train, y_train = dataset.x_train[train_idx], dataset.y_train[train_idx]
        x_val, y_val = dataset.x_train[val_idx], dataset.y_train[val_idx]
    else:
        x_train, y_train = dataset.x_train, dataset.y_train
        x_val, y_val = given.validation
    if normalizer is None:
        normalizer = datasets.Normalizer.fit(x_train)
    group = distributed.world()
    if not config.batch_size:
        config = replace(config, batch_size=auto_batch_size(len(y_train), group))
    if group:
        group.check_batch_size(config.batch_size)

    steps_per_epoch = math.ceil(len(y_train) / config.batch_size)
    schedule = make_schedule(config.schedule, config.lr, steps_per_epoch * config.epochs)
    optimizer = make_optimizer(config.optimizer, transfer.trainable(net, frozen),
                               momentum=config.momentum, weight_decay=config.weight_decay)
    rngs = {"shuffle": np.random.default_rng([config.seed, 2]),
            "augment": np.random.default_rng([config.seed, 3]), "dropout": net.dropout_rng}
    if state is not None:
        optimizer.load_state_arrays({k[len("optim/"):]: v for k, v in state.items() if k.startswith("optim/")})
        for name, rng in rngs.items():
            rngstate.restore(rng, state[f"rng/{name}"])
    if group:   # same setup everywhere, and rank 0's weights (the rest is checked per epoch)
        group.check_setup(asdict(config), dataset)
        group.broadcast_({**net.params, **net.buffers})
    return Run(config, net, normalizer, dataset, x_train, y_train, x_val, y_val, optimizer,
               schedule, rngs, history, start_epoch, steps_per_epoch, {}, resume, group,
               given.callbacks, planned, frozen, tuple(notes))


def _transfer(config):
    """A run --from a model: its net (with a fresh scoring layer when the data has another
    number of classes), its normaliser, the data, the config naming them, and the line that
    says what was replaced (or None)."""
    model = load(config.source)
    spec = config.data or model.meta.get("data")
    if not spec:
        raise SlidenetError(f"--from {config.source}: the model names no data set to train on "
                            "(it came from elsewhere): give --data SPEC")
    spec = datasets.resolve(spec)
    net = model.net
    dataset = datasets.load(spec, size=net.input_shape[:2] if config.resize else None,
                            depth=net.input_shape[2])
    net, note = transfer.with_classes(net, dataset.num_classes, config.seed)
    config = replace(config, data=spec, pattern=net.pattern, variables=net.variables,
                     skip_optional=net.skip_optional)
    return net, model.normalizer, dataset, config, note


def resumable(meta):
    """Whether a model file's meta holds a run that `train --resume` continues: one trained by
    `slidenet train` (its config names its data). One imported from ONNX, or trained by
    `slidenet.fit` on arrays in memory, is fine-tuned on --data instead."""
    config = meta.get("config")
    return isinstance(config, dict) and bool(config.get("data"))


def chance_loss(loss, classes):
    """The loss of equal scores for every class: ln C for softmax, C - 1 for the SVM (margin 1)."""
    return math.log(classes) if loss == "softmax" else classes - 1.0


def _opening(run):
    """What the run starts from, in two lines: the data and its split, the net and its batch,
    and the loss at initialisation against the loss of chance (cs231n's first sanity check)."""
    config, ds = run.config, run.dataset
    shape = "x".join(map(str, ds.input_shape))
    test = f" and {len(ds.y_test):,} test" if len(ds.y_test) else ""
    lines = [f"{ds.name}: {len(run.y_train):,} training, {len(run.y_val):,} validation{test} "
             f"images of {shape}, {ds.num_classes} classes"]
    lines += [f"  note: {note}" for note in ds.notes]
    lines += list(run.notes)
    params = sum(value.size for value in run.net.params.values())
    steps = f"batch {config.batch_size}, {run.steps_per_epoch} steps an epoch"
    if run.resume is not None:
        lines.append(f"net: {params:,} parameters; {steps}; continuing {run.resume} from epoch "
                     f"{run.start_epoch} to {config.epochs}")
        lines += [f"  note: {note}" for note in _schedule_note(run)]
        return lines
    # One batch: it is what the user's memory is known to hold.
    sample = run.normalizer.normalize(run.x_train[:config.batch_size])
    loss = LOSSES[config.loss](run.net.forward(sample), run.y_train[:config.batch_size])[0]
    chance = chance_loss(config.loss, ds.num_classes)
    name = f"ln {ds.num_classes}" if config.loss == "softmax" else f"{ds.num_classes} - 1"
    lines.append(f"net: {params:,} parameters; {steps}; initial loss {loss:.3f} "
                 f"(chance: {name} = {chance:.3f})")
    if 0 < len(run.y_val) < FEW_VALIDATION:
        lines.append(f"  note: only {len(run.y_val)} validation images: one more right answer "
                     f"moves val_acc by {1 / len(run.y_val):.3f}, so it (and the best epoch "
                     "kept in best.npz) says little; use more images, or a larger "
                     "--val-fraction")
    return lines


def _schedule_note(run):
    """For a resumed run whose total epochs changed: what that does to the learning rate. The
    schedule is laid over the new total from step 0 (so the run is the one a new run of that
    many epochs would make), which after a finished warmup-cosine run is a jump back up."""
    config = run.config
    if not run.planned or run.planned == config.epochs or config.schedule == "constant":
        return []
    step = run.start_epoch * run.steps_per_epoch
    before = make_schedule(config.schedule, config.lr, run.steps_per_epoch * run.planned)(step - 1)
    after = run.schedule(step)
    if abs(after - before) <= 0.1 * max(after, before):
        return []
    return [f"the {config.schedule} schedule was laid over {run.planned} epochs and now spans "
            f"{config.epochs}, from its start: the learning rate goes from {before:.2g} (the "
            f"end of epoch {run.start_epoch}) to {after:.2g}, not on from where it was "
            f"(docs/training.md, \"Resuming\")"]


def _closing(run):
    """A warning when validation says the net learned little that carries over: a training
    accuracy far above the best validation accuracy (overfitting), or a best validation
    accuracy no better than a guess among the classes."""
    scored = [h for h in run.history if h.get("val_accuracy") is not None]
    if not scored:
        return []
    best = max(h["val_accuracy"] for h in scored)
    train_acc = run.history[-1]["accuracy"]
    guess = 1 / run.dataset.num_classes
    if best <= guess:
        return [f"warning: the best validation accuracy, {best:.3f}, is no better than a guess "
                f"among {run.dataset.num_classes} classes ({guess:.3f}): the net has learned "
                "nothing that carries over to new images; more images, more epochs or a "
                "smaller net"]
    if train_acc - best >= OVERFIT_GAP:
        return [f"warning: training accuracy {train_acc:.3f} but the best validation accuracy "
                f"only {best:.3f}: the net memorises its training images (overfitting), which "
                "more images, augmentation (--flip), DROPOUT or a smaller net help with"]
    return []


def _train(config, resume, log, given):
    run = _start(config, resume, given)
    config = run.config
    run.observer = given.observer
    if run.group:   # rank 0 alone logs, writes and is watched
        log = log if run.group.rank == 0 else (lambda *_: None)
        run.observer = run.observer if run.group.rank == 0 else Observer()
        log(run.group.describe())
    for line in _opening(run):
        log(line)
    if config.out is not None and (not run.group or run.group.rank == 0):
        writing.make_folder(config.out)
    run.observer.start(Watched(run.net, run.normalizer, run.x_val, run.y_val,
                               list(run.dataset.class_names), config, run.steps_per_epoch,
                               run.start_epoch, run.history))
    try:
        _epochs(run, log)
    except KeyboardInterrupt:
        raise TrainingInterrupted(_resume_hint(run), run) from None
    for line in _closing(run):
        log(line)
    if config.out is not None:
        log(_saved_line(run))
    return run


def _epochs(run, log):
    config = run.config
    best = max((_score(h) for h in run.history), default=(-math.inf, -math.inf))
    stale = 0
    last_epoch = config.epochs if not config.stop_after else \
        min(config.epochs, run.start_epoch + config.stop_after)
    for epoch in range(run.start_epoch, last_epoch):
        entry = _epoch(run, epoch)
        run.history.append(entry)
        log(f"epoch {epoch + 1:>3}/{config.epochs}  loss {entry['loss']:.4f}  acc {entry['accuracy']:.4f}"
            + (f"  val_acc {entry['val_accuracy']:.4f}" if entry["val_accuracy"] is not None else "")
            + f"  {entry['images_per_s']:.0f} img/s  {entry['seconds']:.1f}s")
        score = _score(entry)
        improved = score > best
        _checkpoint(run, epoch, improved)
        run.observer.epoch(entry, run.confusion)
        best, stale = (score, 0) if improved else (best, stale + 1)
        asked = _call_back(run.callbacks, entry)      # every epoch, the last one too
        if config.patience and stale >= config.patience:
            log(f"early stop: no validation gain for {config.patience} epochs")
            break
        if asked:
            log(f"stopped by a callback after epoch {epoch + 1}")
            break


def _call_back(callbacks, entry):
    """Call each callback with a copy of the epoch's entry; True when one asks to stop."""
    stop = False
    for callback in callbacks:
        hook = getattr(callback, "on_epoch_end", callback)
        stop = hook(dict(entry)) is True or stop
    return stop


def _score(entry):
    """How good an epoch is, to keep the best one: validation accuracy, ties broken by the
    lower validation loss (with no validation split: the lower training loss)."""
    if entry["val_accuracy"] is None:
        return (-entry["loss"], 0.0)
    return (entry["val_accuracy"], -entry["val_loss"])


def _saved_line(run):
    """Which files this run wrote, truly: best.npz only if this run improved on it."""
    out, saved = run.config.out, run.saved
    if not saved:
        return f"saved nothing in {out}"
    line = f"saved {os.path.join(out, 'model.npz')} (epoch {saved['model.npz']} of {run.config.epochs})"
    if "best.npz" in saved:
        line += f" and {os.path.join(out, 'best.npz')} (epoch {saved['best.npz']}, the best validation score)"
    else:
        line += f"; {os.path.join(out, 'best.npz')} was not rewritten: no epoch of this run beat it"
    return line


def _epoch(run, epoch):
    """Train one epoch, then validate: its history entry."""
    config, net, group = run.config, run.net, run.group
    loss_fn = LOSSES[config.loss]
    if config.label_smoothing:
        loss_fn = partial(loss_fn, smoothing=config.label_smoothing)
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
                xb = datasets.augment(xb, run.rngs["augment"],
                                      crop_pad=datasets.crop_padding(run.x_train.shape[1:3])
                                      if config.augment else 0, flip=config.flip, part=part)
            if config.erase:
                xb = datasets.erase(xb, run.rngs["augment"], config.erase, part=part)
            yb = run.y_train[idx]
            shard.use(part)     # what DROPOUT and BATCHNORM consult (None: the whole batch)
            scores = net.forward(xb, train=True, frozen=run.frozen)
            loss, dscores = loss_fn(scores, yb)
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}; "
                    f"{_last_good(run)}; try a lower learning rate (--lr {config.lr / 10:g})")
            if part:    # the part's share of the global batch's mean loss
                dscores *= part.weight
            net.backward(dscores, input_grad=False, frozen=run.frozen)
            grads, n, hits = net.grads, len(yb), int((scores.argmax(axis=1) == yb).sum())
            if group:
                grads, loss, hits, n = group.sum_step(net.grads, part, loss, hits, n)
            lr = run.schedule(step)
            run.optimizer.step(grads, lr)
            step += 1
            run.observer.step(step, loss, n, lr)
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
    run.confusion = val["confusion"] if val else None
    return {"epoch": epoch + 1, "loss": total_loss / seen, "accuracy": correct / seen,
            "val_accuracy": val["accuracy"] if val else None,
            "val_loss": val["loss"] if val else None,
            "lr": run.schedule(step - 1), "seconds": seconds, "images_per_s": seen / seconds}


def _checkpoint(run, epoch, improved):
    """Write OUT/model.npz (everything needed to resume), OUT/best.npz when validation
    improved, and OUT/history.json."""
    out = run.config.out
    if out is None:     # slidenet.fit without out=: the model stays in memory
        return
    meta, arrays = run_meta(run), model_arrays(run.net, run.normalizer, run.optimizer, run.rngs)
    if run.group:   # every rank holds this same state
        run.group.check_same(arrays, f"their state after epoch {epoch + 1}",
                             "the ranks should compute identical updates; this is a bug, "
                             "please report it")
    # Every rank knows what was written, for its messages; rank 0 alone writes.
    run.saved["model.npz"] = epoch + 1
    if improved:
        run.saved["best.npz"] = epoch + 1
    if run.group and run.group.rank:
        return
    modelfile.save(os.path.join(out, "model.npz"), arrays, meta)
    if improved:
        modelfile.save(os.path.join(out, "best.npz"), arrays, meta)
    _write_json(os.path.join(out, "history.json"), run.history)


def run_meta(run):
    """The meta of the run's model file, after the epochs in its history."""
    epoch = run.history[-1]["epoch"] if run.history else run.start_epoch
    return model_meta(run.net, run.dataset.class_names, data=run.config.data, epoch=epoch,
                      config=asdict(run.config), history=run.history)


def _resume_hint(run):
    """Where the last checkpoint of an interrupted run is, and the command that continues it."""
    if "model.npz" in run.saved:
        path = os.path.join(run.config.out, "model.npz")
        return (f"the last checkpoint is {path} (epoch {run.saved['model.npz']}); continue with: "
                f"slidenet train --resume {path} --epochs {run.config.epochs}")
    if run.resume is not None:
        return (f"nothing new was saved; {run.resume} is as it was; continue with: "
                f"slidenet train --resume {run.resume} --epochs {run.config.epochs}")
    return "no checkpoint was written yet (one is written at the end of each epoch)"


def _last_good(run):
    """Where the last good model is, truly, for the message of a run that diverged."""
    if "model.npz" in run.saved:
        return (f"the last good model is {os.path.join(run.config.out, 'model.npz')} "
                f"(epoch {run.saved['model.npz']})")
    if run.resume is not None:
        return f"nothing was saved; {run.resume} is as it was (epoch {run.start_epoch})"
    return "no model was saved: it diverged before the end of the first epoch"


def _fine_tuning_data(config, model, path):
    """The data to fine-tune an imported model on: --data, else the one it was imported for."""
    if config.data is None and not model.meta.get("data") and "config" in model.meta:
        raise SlidenetError(
            f"--resume {path}: this model was trained by slidenet.fit on arrays in memory, so "
            "there is no data set to continue on: give --data SPEC to fine-tune it, or continue "
            "in Python with slidenet.fit(model.net, x, y, ...)")
    if config.data is None and not model.meta.get("data"):
        raise SlidenetError(
            f"--resume {path}: this model was not trained by slidenet (it came from "
            f"{model.meta.get('source', 'elsewhere')}), so there is no run to continue and no "
            "data set to fine-tune it on: give --data SPEC")
    return config.data or model.meta["data"]


def _write_json(path, value):
    """Atomic JSON write: a crash or a full disk leaves the previous file."""
    writing.write_json(path, value)
