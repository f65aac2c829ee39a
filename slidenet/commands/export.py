"""`slidenet export MODEL --out FILE.onnx`: the model as a standard ONNX file (docs/interop.md)."""
from slidenet.interop.onnx_export import OPSET, export_file


def register(subparsers):
    p = subparsers.add_parser(
        "export", help="write a model as ONNX, for onnxruntime and other tools",
        description="Write MODEL as an ONNX file: input `pixels` float32 (N, H, W, D) with "
                    "values 0..255 (the normalisation is inside the graph), outputs "
                    "`probabilities` and `scores` (N, C); class names and the pattern in its "
                    "metadata. Needs the onnx extra: pip install 'slidenet[onnx]'.")
    p.add_argument("model", help="a model file written by `slidenet train` or `slidenet import`")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=int, default=OPSET,
                   help=f"ONNX opset version to write, {OPSET} or newer")
    p.set_defaults(func=run)


def run(args):
    model, proto = export_file(args.model, args.out, args.opset)
    print(f"wrote {args.out} (ONNX opset {args.opset}, {len(proto.graph.node)} nodes): "
          f"{model.net.pattern}")
    h, w, d = model.input_shape
    print(f"  input  pixels         float32 (N, {h}, {w}, {d}), values 0..255")
    for name in ("probabilities", "scores"):
        print(f"  output {name:<14} float32 (N, {model.net.num_outputs})")
    return 0
