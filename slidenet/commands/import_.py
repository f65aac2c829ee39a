"""`slidenet import FILE.onnx --out MODEL`: a CNN trained elsewhere as a slidenet model file.

(The module is `import_` because `import` is a Python keyword; the command is `slidenet import`.)
"""
from slidenet.interop.onnx_import import read_onnx
from slidenet.model import save


def register(subparsers):
    p = subparsers.add_parser(
        "import", help="read a CNN from an ONNX file (PyTorch, Keras via tf2onnx) into a model",
        description="Read the CNN in FILE.onnx, built from the lecture's layers, into a slidenet "
                    "model file that every command takes (summary, eval, predict, viz, report, "
                    "train --resume to fine-tune). Say what the graph expects of its input: "
                    "(pixels * SCALE - MEAN) / STD per channel; the default is pixels / 255. A "
                    "graph with layers slidenet does not have is refused with a list of them.")
    p.add_argument("onnx", metavar="FILE.onnx", help="the ONNX model to read")
    p.add_argument("--out", required=True, metavar="MODEL.npz", help="the model file to write")
    p.add_argument("--classes", metavar="a,b,...",
                   help="class names, one per score, separated by commas (default: the file's "
                        "metadata, else 0, 1, ...)")
    p.add_argument("--scale", type=float, metavar="S",
                   help="the graph's input is pixels (0..255) times S, before --mean and --std "
                        "(default 1/255; 1 for a file slidenet exported)")
    p.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="subtracted after --scale: one number, or one per channel (default 0)")
    p.add_argument("--std", type=float, nargs="+", metavar="S",
                   help="divided by after --mean: one number, or one per channel (default 1)")
    p.add_argument("--input-layout", choices=["nchw", "nhwc"],
                   help="the input's layout, needed only when the graph does not show it (an "
                        "input that goes straight into Flatten; default: what the graph shows)")
    p.add_argument("--data", metavar="SPEC",
                   help="the data set the model is for (e.g. mnist5k): eval, viz patches, "
                        "report and train --resume then use it by default (default: none)")
    p.set_defaults(func=run)


def run(args):
    classes = args.classes.split(",") if args.classes is not None else None
    imported = read_onnx(args.onnx, classes, args.scale, args.mean, args.std, args.input_layout)
    extra = dict(imported.meta, **({"data": args.data} if args.data else {}))
    save(args.out, imported.net, imported.normalizer, imported.class_names, **extra)
    net = imported.net
    print(f"imported {args.onnx} ({imported.meta['producer']}): {net.pattern}")
    print(f"  {sum(p.size for p in net.params.values()):,} parameters, "
          f"{net.num_outputs} classes; normaliser mean "
          f"{_numbers(imported.normalizer.mean)} std {_numbers(imported.normalizer.std)}")
    print(f"wrote {args.out}")
    return 0


def _numbers(values):
    return "[" + " ".join(f"{v:.4g}" for v in values) + "]"
