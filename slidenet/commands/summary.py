"""`slidenet summary PATTERN`: each layer's shape, parameters and cost, before any weight exists."""
import json
import os

from slidenet.errors import SlidenetError
from slidenet.notation.pattern import parse, parse_sets
from slidenet.notation.shapes import infer
from slidenet.notation.summary import summarize, summary_text
from slidenet.storage import modelfile, modelmeta


def register(subparsers):
    parser = subparsers.add_parser(
        "summary", help="shapes, parameters and costs of a pattern, layer by layer",
        description="Work out every layer of a pattern from INPUT onwards: output volume, "
                    "parameters, (N + 2P - F) / S + 1, receptive field, multiply-adds, memory.")
    parser.add_argument("pattern", metavar="PATTERN",
                        help="e.g. 'INPUT(32x32x3) -> [CONV(32) -> RELU]*N -> POOL -> FC(10)', "
                             "or a model file (its net)")
    parser.add_argument("--set", action="append", default=[], metavar="N=2",
                        help="bind an UPPER-CASE repeat count in the pattern "
                             "(repeatable; default: none)")
    parser.add_argument("--skip-optional", action="store_true",
                        help="drop the layers and groups marked '?'")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args):
    pattern, variables, skip = args.pattern, parse_sets(args.set), args.skip_optional
    if pattern.lower().endswith(".npz") or os.path.isfile(pattern):
        # A model file: the net it holds (its weights are not needed).
        if variables or skip:
            raise SlidenetError("--set and --skip-optional belong to a pattern; a model file "
                                "already says how its pattern was expanded")
        _, meta = modelfile.load(pattern)
        modelmeta.check(meta, pattern)
        pattern, variables = meta["pattern"], meta.get("variables", {})
        skip = meta.get("skip_optional", False)
    if args.json:
        print(json.dumps(summarize(pattern, variables, skip), indent=2))
        return 0
    print(summary_text(infer(parse(pattern, variables, skip_optional=skip), pattern)))
    return 0
