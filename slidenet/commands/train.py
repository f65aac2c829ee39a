"""`slidenet train`: train a net on offline data; `--resume` continues a saved run exactly;
`--from MODEL` starts a new run from a model's weights (transfer learning, `training.transfer`).

No flag is silently ignored. A resumed run continues exactly as it began, so the flags that
define the run (the net, the data, the split, the optimizer, ...) cannot change on `--resume`:
giving one with another value than the model's is an error that says so. Only the flags in
`ON_RESUME` apply to a resumed run. `--momentum` applies only to the optimizers that use it.
"""
import argparse
import os
import sys
import time

from slidenet import data as datasets
from slidenet.errors import OutOfMemory, SlidenetError
from slidenet.notation.pattern import parse_sets
from slidenet.storage import modelfile, modelmeta
from slidenet.training.config import check_settings
from slidenet.training.loop import AUTO_BATCH, TrainConfig, TrainingInterrupted, resumable, train

DEFAULTS = TrainConfig()
# The flags a resumed run takes from the command line; every other one is fixed by the model.
ON_RESUME = ("epochs", "stop_after", "patience", "threads", "out")
# TrainConfig fields whose flags default to None here, so that `run` can tell whether they were
# given: on --resume a given one must agree with the model, and an absent one takes its default.
RUN_FLAGS = ("pattern", "skip_optional", "data", "batch_size", "lr", "optimizer", "momentum",
             "weight_decay", "schedule", "loss", "augment", "flip", "erase", "label_smoothing",
             "val_fraction", "seed", "patience", "resize", "freeze")


def register(subparsers):
    p = subparsers.add_parser(
        "train", help="train a net on real images (default: the lecture-style net on mnist5k)",
        description="Train PATTERN on DATA. Writes OUT/model.npz (last epoch, resumable), "
                    "OUT/best.npz (best validation accuracy) and OUT/history.json. With "
                    "--resume MODEL the run saved in MODEL continues exactly as it began: only "
                    "--epochs, --stop-after, --patience, --threads and --out apply, and any "
                    "other flag must agree with the model.")
    p.add_argument("--pattern", help=f"the net in the lecture's notation (default: {DEFAULTS.pattern})")
    p.add_argument("--set", action="append", metavar="N=2",
                   help="bind an upper-case variable of the pattern (repeatable; default: none)")
    p.add_argument("--skip-optional", action="store_true", default=None,
                   help="drop layers marked with ? (default: keep them)")
    p.add_argument("--data", help="mnist5k | fashion-mnist[:DIR] | mnist:DIR | cifar10:DIR | "
                                  f"folder:DIR | npz:FILE (default: {DEFAULTS.data})")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs,
                   help="total epochs of the run, counting those a resumed run has already done "
                        "(--resume of a 5-epoch model with --epochs 8 trains 3 more)")
    p.add_argument("--batch-size", type=int,
                   help=f"images per step (default: {AUTO_BATCH}, or fewer when the training split "
                        "is small, so that an epoch has at least 10 steps)")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default: {DEFAULTS.lr:g})")
    p.add_argument("--optimizer", choices=["sgd", "momentum", "nesterov", "adam"],
                   help=f"update rule (default: {DEFAULTS.optimizer})")
    p.add_argument("--momentum", type=float,
                   help=f"velocity decay of --optimizer momentum and nesterov "
                        f"(default: {DEFAULTS.momentum})")
    p.add_argument("--weight-decay", type=float,
                   help=f"L2 on weights, decoupled for adam (default: {DEFAULTS.weight_decay:g})")
    p.add_argument("--schedule", choices=["constant", "step", "cosine", "warmup-cosine"],
                   help=f"learning rate over the run (default: {DEFAULTS.schedule})")
    p.add_argument("--loss", choices=["softmax", "svm"],
                   help=f"cross-entropy of the softmax, or the multiclass SVM's hinge "
                        f"(default: {DEFAULTS.loss})")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="random crops with zero padding; --no-augment turns them off "
                        f"(default: {'on' if DEFAULTS.augment else 'off'})")
    p.add_argument("--flip", action="store_true", default=None,
                   help="also flip images horizontally, not for digits (default: off)")
    p.add_argument("--erase", type=float, metavar="P",
                   help="random erasing: each training image, with probability P, has a random "
                        f"rectangle set to the mean (default: {DEFAULTS.erase}, off)")
    p.add_argument("--label-smoothing", type=float, metavar="E",
                   help="softmax targets 1 - E + E/C on the true class and E/C on the others "
                        f"(default: {DEFAULTS.label_smoothing}, off)")
    p.add_argument("--val-fraction", type=float,
                   help=f"share of the training split held out for validation "
                        f"(default: {DEFAULTS.val_fraction})")
    p.add_argument("--patience", type=int,
                   help="stop after this many epochs without validation gain, 0 = never "
                        f"(default: {DEFAULTS.patience}; on --resume, the model's)")
    p.add_argument("--seed", type=int,
                   help=f"seed of the weights, the split, shuffling, augmentation and dropout "
                        f"(default: {DEFAULTS.seed})")
    p.add_argument("--out", help=f"output folder (default: {DEFAULTS.out}; on --resume, the "
                                 "model's folder)")
    p.add_argument("--resume", metavar="MODEL",
                   help="continue the run saved in MODEL, exactly, up to --epochs (default: a new run)")
    p.add_argument("--from", dest="source", metavar="MODEL",
                   help="start a new run from MODEL's weights (trained or imported); when the "
                        "data has another number of classes, its scoring layer is replaced by a "
                        "fresh one (default: a new net from --pattern)")
    p.add_argument("--freeze", nargs="?", const="head", metavar="LAYER",
                   help="with --from: train only the scoring layer, or only the layers after "
                        "LAYER (a name such as conv3, or a position); the frozen ones run as in "
                        "inference (default: train every layer)")
    p.add_argument("--stop-after", type=int, default=0, metavar="N",
                   help="stop after N epochs of this run, as an interruption would, to resume "
                        "later; 0 = run to --epochs")
    p.add_argument("--resize", action="store_true", default=None,
                   help="stretch every image to the pattern's INPUT height x width, for a folder "
                        "of images of several sizes (default: refuse other sizes)")
    p.add_argument("--live", action="store_true",
                   help="serve a web page that shows the net learning (curves, filters, maps, "
                        "confusion matrix); when training ends it explains best.npz until Ctrl-C")
    p.add_argument("--host", help="with --live: the address to listen on (default: 127.0.0.1, "
                                  "this machine only)")
    p.add_argument("--port", type=int, help="with --live: the port (default: 8000; 0 picks a "
                                            "free one)")
    p.add_argument("--threads", type=int, default=0,
                   help="kernel worker threads, 0 = one per core (shared among the mpiexec "
                        "processes on a machine); an exact --resume needs the same count")
    p.set_defaults(func=run)


def _check(args):
    check_settings({name: getattr(args, name) for name in
                    ("epochs", "batch_size", "patience", "stop_after", "threads", "lr",
                     "val_fraction", "erase", "label_smoothing")}, name=_flag)
    if not args.live and (args.host is not None or args.port is not None):
        raise SlidenetError(f"--{'host' if args.host is not None else 'port'} belongs to --live "
                            "(the page that shows training): add --live, or drop it")
    if args.resume and not os.path.isfile(args.resume):
        raise SlidenetError(f"--resume {args.resume}: no such model file")
    _check_from(args)


def _check_from(args):
    """--from starts a new run from a model's net: it cannot go with a flag that names
    another net, nor with --resume, which continues a run; --freeze needs it."""
    if args.source is None:
        if args.freeze is not None and not args.resume:
            raise SlidenetError("--freeze applies to a run --from MODEL (a new net's random "
                                "layers are not worth keeping); add --from MODEL or drop --freeze")
        return
    if args.resume:
        raise SlidenetError(f"--from and --resume cannot go together: --from {args.source} starts "
                            f"a new run from a model's weights, --resume {args.resume} continues a "
                            "run exactly; to continue a run that began --from, give only --resume "
                            "OUT/model.npz")
    for flag, given in (("--pattern", args.pattern), ("--set", args.set),
                        ("--skip-optional", args.skip_optional)):
        if given is not None:
            raise SlidenetError(f"{flag} cannot go with --from {args.source}: the net is the "
                                "model's (with a fresh scoring layer when the data has another "
                                f"number of classes); drop {flag}, or drop --from to train a new "
                                "net")
    if not os.path.isfile(args.source):
        raise SlidenetError(f"--from {args.source}: no such model file")


def _flag(name):
    return "--" + name.replace("_", "-")


def _shown(name, value):
    """How a setting reads on the command line: '--lr 0.002', '--no-augment', 'no --flip'."""
    if name == "variables":
        return " ".join(f"--set {k}={v}" for k, v in value.items()) or "no --set"
    if isinstance(value, bool):
        if name == "augment":
            return "--augment" if value else "--no-augment"
        return _flag(name) if value else f"no {_flag(name)}"
    if name == "freeze":
        return ("no --freeze" if not value else "--freeze" if value == "head"
                else f"--freeze {value}")
    return f"{_flag(name)} {value!r}" if name == "pattern" else f"{_flag(name)} {value}"


def _given(args):
    """{TrainConfig field: value} of the run-defining flags on the command line."""
    given = {name: getattr(args, name) for name in RUN_FLAGS if getattr(args, name) is not None}
    if "data" in given:
        given["data"] = datasets.resolve(given["data"])     # the model keeps it absolute
    if args.set is not None:
        given["variables"] = parse_sets(args.set)
    return given


def _check_resume(args, given):
    """The saved config of --resume MODEL; SlidenetError when a given flag disagrees with it."""
    _, meta = modelfile.load(args.resume)
    modelmeta.check(meta, args.resume)
    saved = meta["config"] if resumable(meta) else {}
    for name, value in given.items():
        if name in ON_RESUME or name not in saved or saved[name] == value:
            continue
        if name in ("pattern", "variables", "skip_optional"):
            why = f"the net is fixed by the model: {_shown(name, saved[name])}"
            fix = "start a new run (without --resume) to train another net"
        else:
            why = f"the model's run continues exactly as it began, with {_shown(name, saved[name])}"
            fix = f"drop {_shown(name, value)}, or start a new run (without --resume) to change it"
        shown = _flag("set") if name == "variables" else _flag(name)
        raise SlidenetError(f"{shown} cannot change on --resume {args.resume}: {why}; {fix}")
    return saved


def _check_fine_tuning(args, given):
    """A model made elsewhere (`slidenet import`) is fine-tuned with this command's settings,
    but its net is what it is: a flag that would change the net cannot apply."""
    for name in ("pattern", "variables", "skip_optional"):
        if name in given:
            shown = _flag("set") if name == "variables" else _flag(name)
            raise SlidenetError(f"{shown} cannot apply to --resume {args.resume}: fine-tuning "
                                "keeps the model's net; start a new run (without --resume) to "
                                "train another net")


def _memory_advice(args, config):
    """The fix for an OutOfMemory, in this command's flags."""
    if args.resume:
        return (f"free some memory, or start a new run with a smaller --batch-size (a resumed "
                f"run keeps its batch size, {config.batch_size})")
    smaller = config.batch_size // 2 if config.batch_size else AUTO_BATCH // 2
    return f"try a smaller batch, e.g. --batch-size {max(1, smaller)}"


def _train(args, config):
    """Train, with the live page when --live asks for it (rank 0's, under mpiexec)."""
    from slidenet.training import distributed
    group = distributed.world()
    if not args.live:
        return train(config, resume=args.resume)
    if group and group.rank:
        history = train(config, resume=args.resume)
    else:
        from slidenet.commands.serve import needs_extra
        needs_extra("slidenet train --live")
        from slidenet.serve.live import train_live
        history = train_live(config, args.resume, args.host or "127.0.0.1",
                             8000 if args.port is None else args.port, train)
    if group:
        _together(group)
    return history


def _together(group):
    """Under mpiexec with --live, the ranks end together once rank 0's page is stopped: a rank
    that ended first would wait for rank 0 inside MPI_Finalize, where Ctrl-C cannot reach it
    cleanly. The Ctrl-C that stops the page reaches every rank; they wait on regardless."""
    request = group.comm.Ibarrier()
    while True:
        try:
            while not request.Test():
                time.sleep(0.1)
            return
        except KeyboardInterrupt:
            continue


def run(args):
    _check(args)
    given = _given(args)
    values = {**vars(DEFAULTS), **given}
    if args.resume:
        saved = _check_resume(args, given)
        values.update({k: v for k, v in saved.items() if k in values and k not in ON_RESUME})
        values["patience"] = given.get("patience", saved.get("patience", DEFAULTS.patience))
        if not saved:
            _check_fine_tuning(args, given)
            values["data"] = given.get("data")     # the model's own, unless --data says
    if args.source:
        values.update(source=args.source, data=given.get("data"))   # default: the model's data
    if "momentum" in given and values["optimizer"] not in ("momentum", "nesterov"):
        raise SlidenetError(f"--momentum applies to --optimizer momentum or nesterov, not "
                            f"{values['optimizer']}, which does not use it; drop --momentum")
    out = args.out or (os.path.dirname(args.resume) if args.resume else DEFAULTS.out) or "."
    config = TrainConfig(**{**values, "epochs": args.epochs, "out": out,
                            "stop_after": args.stop_after, "threads": args.threads})
    try:
        _train(args, config)
    except OutOfMemory as err:
        raise err.advise(_memory_advice(args, config)) from None
    except TrainingInterrupted as stop:
        print(f"slidenet train: interrupted; {stop.hint}", file=sys.stderr)
        return 130
    return 0
