"""The `slidenet` command: parses arguments and hands each subcommand to its module.

Each subcommand lives in `slidenet/commands/<name>.py` and exposes ``register(subparsers)``,
which adds its parser and sets ``func(args) -> int``. A `SlidenetError` (a mistake in the
user's input) becomes one message on stderr and exit status 2; anything else is a bug and keeps
its traceback. Under `mpiexec`, either ends every process of the job (`distributed.fail`).
"""
import argparse
import importlib
import sys

from slidenet import distributed
from slidenet.errors import SlidenetError

# Order here is the order in `slidenet --help`.
COMMANDS = ("summary", "train", "eval", "predict", "gradcheck", "bench", "viz", "report")
# The commands that run data-parallel under `mpiexec -n R` (docs/distributed.md).
DISTRIBUTED = ("train", "eval")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="slidenet",
        description="Convolutional networks from first principles, in the lecture's notation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"slidenet.commands.{name}").register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if distributed.launched_size() > 1 and args.command not in DISTRIBUTED:
            raise SlidenetError(f"{args.command} runs in one process; start it without mpiexec "
                                f"(only {' and '.join(DISTRIBUTED)} run data-parallel)")
        if args.command in DISTRIBUTED:
            # Under mpiexec, join the job before any check, so that an error on one rank ends
            # them all (`distributed.fail`); in one process this is None and does nothing.
            distributed.world()
        return args.func(args) or 0
    except SlidenetError as err:
        return distributed.fail(args.command, f"error: {err}", 2,
                                every_rank=getattr(err, "every_rank", False))
    except BrokenPipeError:
        # The reader went away (`slidenet eval ... | head`): stop quietly, as Unix tools do.
        sys.stderr.close()
        return 141
    except KeyboardInterrupt:
        return distributed.fail(args.command, "interrupted", 130)
