"""The `slidenet` command: parses arguments and hands each subcommand to its module.

Each subcommand lives in `slidenet/commands/<name>.py` and exposes ``register(subparsers)``,
which adds its parser and sets ``func(args) -> int``. The error contract (docs/design.md):

- a `SlidenetError` (a mistake in the user's input, or a file the world would not let us
  write) becomes one message on stderr and exit status 2;
- so do an OSError (a file we could not read, a device that failed) and a MemoryError (more
  than the machine could give): faults of the world, not of slidenet;
- Ctrl-C is exit 130, a closed pipe 141;
- anything else is a bug and keeps its traceback, so that it gets reported and fixed.

Under `mpiexec`, an error ends every process of the job (`distributed.fail`).
"""
import argparse
import importlib
import keyword
import math
import sys

from slidenet import __version__
from slidenet.errors import SlidenetError
from slidenet.training import distributed

# Order here is the order in `slidenet --help`.
COMMANDS = ("summary", "train", "eval", "predict", "gradcheck", "bench", "viz", "report",
            "serve", "export", "import", "zoo")
# The commands that run data-parallel under `mpiexec -n R` (docs/distributed.md).
DISTRIBUTED = ("train", "eval")


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default after its help, unless the help already says it.

    A switch (store_true) is off unless given, and an option whose default is None says in its
    help what happens without it; neither gets a "(default: ...)".
    """

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or any(default is v for v in (None, False, argparse.SUPPRESS))
                or not action.option_strings or default == []):
            return text
        shown = "on" if default is True else default
        return f"{text} (default: {shown})"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with `HelpFormatter`; subcommands' parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser():
    parser = ArgumentParser(
        prog="slidenet",
        description="Convolutional networks from first principles, in the lecture's notation.")
    parser.add_argument("--version", action="version", version=f"slidenet {__version__}",
                        help="print slidenet's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        # `import` is a Python keyword, so its module is `import_`.
        module = f"{name}_" if keyword.iskeyword(name) else name
        importlib.import_module(f"slidenet.commands.{module}").register(sub)
    return parser


def _actions(parser, args):
    """Every option action of the (sub)command `args` chose, through nested subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None))
            if chosen is not None:
                yield from _actions(chosen, args)
        elif action.option_strings:
            yield action


def _check_values(parser, args):
    """SlidenetError for what argparse lets through: `--epochs=--` (argparse reads a value
    of "--" as the end of options and stores an empty list), a float flag of nan or inf
    (`--budget 1e999`), and a negative --seed."""
    for action in _actions(parser, args):
        value = getattr(args, action.dest, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise SlidenetError(f"{action.option_strings[-1]} must be a finite number, not "
                                f"{value}")
        if action.nargs is not None or not isinstance(value, list):
            continue
        if isinstance(action, argparse._StoreAction) or (
                isinstance(action, argparse._AppendAction)
                and any(isinstance(v, list) for v in value)):
            flag = action.option_strings[-1]
            raise SlidenetError(f"{flag}=-- gives {flag} no value: write {flag} "
                                f"{action.metavar or action.dest.upper()}")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < 2**64:
        raise SlidenetError(f"--seed must be a whole number from 0 to 2**64 - 1, not {seed}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_values(parser, args)
        if distributed.launched_size() > 1 and args.command not in DISTRIBUTED:
            raise SlidenetError(f"{args.command} runs in one process; start it without mpiexec "
                                f"(only {' and '.join(DISTRIBUTED)} run data-parallel)")
        if args.command in DISTRIBUTED:
            # Under mpiexec, join the job before any check, so that an error on one rank ends
            # them all (`distributed.fail`); in one process this is None and does nothing.
            distributed.world()
        return args.func(args) or 0
    except SlidenetError as err:
        return _error(args, err)
    except BrokenPipeError:
        # The reader went away (`slidenet eval ... | head`): stop quietly, as Unix tools do.
        sys.stderr.close()
        return 141
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        return _error(args, f"{where}{err.strerror or err}")
    except MemoryError:
        more = " (try a smaller --batch-size)" if getattr(args, "batch_size", None) else ""
        return _error(args, f"out of memory: this machine could not give {args.command} the "
                            f"memory it needed{more}")
    except KeyboardInterrupt:
        return distributed.fail(args.command, "interrupted", 130)


def _error(args, message):
    """One line on stderr and exit 2; under mpiexec, every rank of the job ends."""
    return distributed.fail(args.command, f"error: {message}", 2,
                            every_rank=getattr(message, "every_rank", False))
