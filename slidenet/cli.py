"""The `slidenet` command: parses arguments and hands each subcommand to its module.

Each subcommand lives in `slidenet/commands/<name>.py` and exposes ``register(subparsers)``,
which adds its parser and sets ``func(args) -> int``. A `SlidenetError` (a mistake in the
user's input) becomes one message on stderr and exit status 2; anything else is a bug and keeps
its traceback.
"""
import argparse
import importlib
import keyword
import sys

from slidenet.errors import SlidenetError

# Order here is the order in `slidenet --help`.
COMMANDS = ("summary", "train", "eval", "predict", "gradcheck", "bench", "viz", "report", "export",
            "import")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="slidenet",
        description="Convolutional networks from first principles, in the lecture's notation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        # `import` is a Python keyword, so its module is `import_`.
        module = f"{name}_" if keyword.iskeyword(name) else name
        importlib.import_module(f"slidenet.commands.{module}").register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except SlidenetError as err:
        print(f"slidenet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`slidenet eval ... | head`): stop quietly, as Unix tools do.
        sys.stderr.close()
        return 141
    except KeyboardInterrupt:
        print(f"slidenet {args.command}: interrupted", file=sys.stderr)
        return 130
