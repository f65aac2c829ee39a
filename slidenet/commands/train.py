"""`slidenet train`: train a net on offline data; `--resume` continues a saved run exactly."""
import argparse
import os

from slidenet import distributed
from slidenet.errors import SlidenetError
from slidenet.pattern import parse_sets
from slidenet.train import TrainConfig, train

DEFAULTS = TrainConfig()


def register(subparsers):
    p = subparsers.add_parser(
        "train", help="train a net on real images (default: the lecture-style net on mnist5k)",
        description="Train PATTERN on DATA. Writes OUT/model.npz (last epoch, resumable), "
                    "OUT/best.npz (best validation accuracy) and OUT/history.json.")
    p.add_argument("--pattern", default=DEFAULTS.pattern, help="the net in the lecture's notation")
    p.add_argument("--set", action="append", default=[], metavar="N=2",
                   help="bind an upper-case variable of the pattern (repeatable)")
    p.add_argument("--skip-optional", action="store_true", help="drop layers marked with ?")
    p.add_argument("--data", default=DEFAULTS.data,
                   help="mnist5k | fashion-mnist[:DIR] | mnist:DIR | cifar10:DIR | folder:DIR | npz:FILE")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="total epochs")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak learning rate")
    p.add_argument("--optimizer", default=DEFAULTS.optimizer, choices=["sgd", "momentum", "nesterov", "adam"])
    p.add_argument("--momentum", type=float, default=DEFAULTS.momentum)
    p.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay,
                   help="L2 on weights (decoupled for adam)")
    p.add_argument("--schedule", default=DEFAULTS.schedule,
                   choices=["constant", "step", "cosine", "warmup-cosine"])
    p.add_argument("--loss", default=DEFAULTS.loss, choices=["softmax", "svm"])
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=DEFAULTS.augment,
                   help="random crops with zero padding (default on; --no-augment to turn off)")
    p.add_argument("--flip", action="store_true", help="also flip images horizontally (not for digits)")
    p.add_argument("--val-fraction", type=float, default=DEFAULTS.val_fraction,
                   help="share of the training split held out for validation")
    p.add_argument("--patience", type=int, default=DEFAULTS.patience,
                   help="stop after this many epochs without validation gain (0 = never)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--out", default=None, help=f"output folder (default {DEFAULTS.out})")
    p.add_argument("--resume", metavar="MODEL", help="continue the run saved in MODEL to --epochs")
    p.add_argument("--stop-after", type=int, default=0, metavar="N",
                   help="stop after N epochs of this run, as an interruption would (resume later)")
    p.add_argument("--threads", type=int, default=0,
                   help="kernel worker threads (default: one per core, shared among the mpiexec "
                        "processes on a machine); an exact --resume needs the same count")
    p.set_defaults(func=run)


def _check(args):
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise SlidenetError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if args.threads < 0:
        raise SlidenetError(f"--threads must be 0 (one per core) or more, not {args.threads}")
    if not args.lr > 0:
        raise SlidenetError(f"--lr must be > 0, not {args.lr}")
    if not 0 <= args.val_fraction < 1:
        raise SlidenetError(f"--val-fraction must be in [0, 1), not {args.val_fraction}")
    if args.resume and not os.path.isfile(args.resume):
        raise SlidenetError(f"--resume {args.resume}: no such model file")


def run(args):
    _check(args)
    out = args.out or (os.path.dirname(args.resume) if args.resume else DEFAULTS.out) or "."
    config = TrainConfig(
        pattern=args.pattern, variables=parse_sets(args.set), skip_optional=args.skip_optional,
        data=args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
        schedule=args.schedule, loss=args.loss, augment=args.augment, flip=args.flip,
        val_fraction=args.val_fraction, patience=args.patience, seed=args.seed, out=out,
        stop_after=args.stop_after, threads=args.threads)
    history = train(config, resume=args.resume)
    if history and distributed.rank() == 0:
        last = history[-1]
        print(f"saved {os.path.join(out, 'model.npz')} (epoch {last['epoch']}) and "
              f"{os.path.join(out, 'best.npz')}")
    return 0
