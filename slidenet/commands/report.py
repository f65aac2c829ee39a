"""`slidenet report MODEL`: one self-contained HTML page about a trained model."""
import importlib.util

from slidenet.errors import SlidenetError


def register(subparsers):
    p = subparsers.add_parser(
        "report", help="one offline HTML page: summary, curves, accuracy, filters, maps, patches",
        description="Write a self-contained HTML report of MODEL (pictures embedded, no links): "
                    "the summary with its formulas, training curves, per-class accuracy and "
                    "the confusion matrix on the test split, filters, activation maps, top "
                    "patches and sample predictions.")
    p.add_argument("model", help="a model file written by `slidenet train` (model.npz, best.npz)")
    p.add_argument("--data", help="data spec (default: the data the model was trained on)")
    p.add_argument("--images", type=int, default=3,
                   help="test images whose activation maps are shown")
    p.add_argument("--samples", type=int, default=12,
                   help="test images shown with their predictions")
    p.add_argument("--out", default="report.html", help="the page to write")
    p.set_defaults(func=run)


def run(args):
    for name in ("images", "samples"):
        if getattr(args, name) < 1:
            raise SlidenetError(f"--{name} must be at least 1, not {getattr(args, name)}")
    for package in ("matplotlib", "PIL", "jinja2"):
        if importlib.util.find_spec(package) is None:
            raise SlidenetError(f"the report needs matplotlib, Pillow and Jinja2, and {package} "
                                "is not installed: pip install 'slidenet[viz]'")
    from slidenet.report import build_report, write_report
    page = build_report(args.model, args.data, images=args.images, samples=args.samples)
    path = write_report(args.out, page)
    print(f"wrote {path} ({len(page) / 1024:,.0f} KiB)")
    return 0
