"""`slidenet gradcheck PATTERN`: backprop against finite differences, in float64.

Exits 0 when every relative error is below 1e-6, 1 otherwise.
"""
from slidenet.gradcheck import TOLERANCE, check_pattern
from slidenet.notation.pattern import parse_sets


def register(subparsers):
    p = subparsers.add_parser(
        "gradcheck", help="check every gradient of a net against finite differences",
        description="Build PATTERN in float64 and compare the analytic gradient of the input and "
                    "of every parameter with centred finite differences.")
    p.add_argument("pattern", help="the net, e.g. 'INPUT(9x7x2) -> CONV(3, 3x3, s=2) -> FC(4)'")
    p.add_argument("--set", action="append", default=[], metavar="N=2",
                   help="bind an upper-case variable of the pattern (repeatable; default: none)")
    p.add_argument("--skip-optional", action="store_true",
                   help="drop layers marked with ? (default: keep them)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and test inputs")
    p.set_defaults(func=run)


def run(args):
    errors = check_pattern(args.pattern, skip_optional=args.skip_optional, seed=args.seed,
                           **parse_sets(args.set))
    width = max(len(name) for name in errors)
    for name, err in errors.items():
        print(f"{name:<{width}}  max relative error {err:.2e}  {'ok' if err < TOLERANCE else 'FAIL'}")
    worst = max(errors.values())
    print(f"{'passed' if worst < TOLERANCE else 'failed'}: worst {worst:.2e} (tolerance {TOLERANCE:g})")
    return 0 if worst < TOLERANCE else 1
