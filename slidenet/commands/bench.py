"""`slidenet bench`: per-step and whole-net speed on R1 and a Fashion-MNIST-size net, against
PyTorch and onnxruntime when they are installed; `--scaling` for how cost grows."""
import json

import numpy as np

from slidenet.bench import NETS, Settings, report, run
from slidenet.errors import SlidenetError
from slidenet.net import Net
from slidenet.ops import conv, runtime, set_conv_algorithm

MAX_BUDGET_MB = 2**20      # 1 TiB of scratch per kernel call: beyond any machine


def register(subparsers):
    parser = subparsers.add_parser(
        "bench", help="time training and inference, layer by layer, against the sgemm peak and PyTorch",
        description="Time each layer's forward and backward, a whole training step (softmax loss, "
                    "SGD) and inference on R1 and a Fashion-MNIST-size net; report images/s, GFLOPS, "
                    "the share of the measured sgemm peak and peak memory. With PyTorch and "
                    "onnxruntime installed, run the same nets in them, alternating round by round, "
                    "and print the ratios; onnxruntime runs the net `slidenet export` writes.")
    parser.add_argument("--net", choices=[*NETS, "all"], help="which net (default: all)")
    parser.add_argument("--pattern", help="benchmark this pattern instead of the built-in nets "
                                          "(default: the nets of --net)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and a smaller sgemm: seconds")
    parser.add_argument("--batch", type=int, help="training batch (default 128)")
    parser.add_argument("--infer-batch", type=int, help="inference batch (default 256)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for each library (default: one per core)")
    parser.add_argument("--rounds", type=int, help="alternating rounds, medians reported (default 5)")
    parser.add_argument("--steps", type=int, help="steps timed per round (default 3)")
    parser.add_argument("--budget", type=float, default=0, metavar="MB",
                        help="slidenet's scratch-memory budget per kernel call, in MiB; "
                             "0 = its own default")
    parser.add_argument("--conv", choices=conv.ALGORITHMS, default="auto",
                        help="slidenet's convolutions: auto (the default: direct for a thin first "
                             "layer, Winograd F(4x4, 3x3), F(4, 3) or F(2, 3) where it applies "
                             "and pays, else the full-convolution dx at stride 1, else im2col), "
                             "or one algorithm everywhere (refused before timing if a layer is "
                             "beyond it; winograd4 is F(4, 3), winograd2d F(4x4, 3x3))")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--latency-calls", type=int,
                        help="single-image predictions timed per round (default 100)")
    parser.add_argument("--scaling", action="store_true",
                        help="instead: how cost grows with batch size (1, 8, 64, 256), input size "
                             "(a VGG-style net, 32 to 224 pixels) and threads (1, 2), each row "
                             "against the other libraries")
    parser.add_argument("--rows", nargs="+", metavar="TABLE:VALUES",
                        help="with --scaling: measure only these rows, e.g. batch:1,8 size:224 "
                             "threads:1 (tables: batch 1,8,64,256; size 32,64,128,224; threads 1,2; default: "
                             "every row)")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="keep N other processes spinning on a core each while the libraries "
                             "are timed (both under the same load): a shared machine on demand")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=main)


def main(args):
    if args.pattern and args.net:
        raise SlidenetError(f"--net {args.net} and --pattern exclude each other: --pattern "
                            "benchmarks the given net instead of the built-in ones; give one")
    net = args.net or "all"
    chosen = {"given": args.pattern} if args.pattern else \
        (dict(NETS) if net == "all" else {net: NETS[net]})
    overrides = {"batch": args.batch, "infer_batch": args.infer_batch, "rounds": args.rounds,
                 "steps": args.steps, "latency_calls": args.latency_calls}
    for name, value in overrides.items():
        if value is not None and value < 1:
            raise SlidenetError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.threads < 0 or args.budget < 0 or args.busy < 0:
        raise SlidenetError("--threads, --budget and --busy must not be negative")
    if args.budget > MAX_BUDGET_MB:
        raise SlidenetError(f"--budget is in MiB: {args.budget:g} MiB is more than any machine "
                            f"has; give at most {MAX_BUDGET_MB:,} (1 TiB), or 0 for the default")
    cores = runtime.available_cores()
    if args.busy > 4 * cores:
        raise SlidenetError(f"--busy {args.busy} would start more spinning processes than four "
                            f"per core ({cores} cores here); give at most {4 * cores}")
    values = {k: v for k, v in overrides.items() if v is not None}
    values.update(threads=args.threads, budget=int(args.budget * 2**20), torch=not args.no_torch,
                  onnx=not args.no_onnx, memory=not args.no_memory, conv=args.conv,
                  busy=args.busy)
    settings = Settings.quick(**values) if args.quick else Settings(**values)
    if args.scaling:
        from slidenet.bench.scaling import report_scaling, run_scaling
        if args.pattern or args.net:
            raise SlidenetError("--scaling measures its own nets (R1 and a VGG-style net): drop "
                                "--net and --pattern")
        from slidenet.bench.scaling import parse_rows
        try:
            rows = parse_rows(args.rows) if args.rows else None
        except ValueError as err:
            raise SlidenetError(str(err)) from None
        result = run_scaling(settings, rows)
        print(json.dumps(result, indent=2) if args.json else report_scaling(result))
        return 0
    if args.rows:
        raise SlidenetError("--rows picks rows of --scaling's tables: add --scaling, or drop --rows")
    _check_algorithm(args.conv, chosen)
    result = run(settings, chosen)
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


def _check_algorithm(algorithm, nets):
    """A named --conv must compute every CONV of the nets: one forward of one image each, before
    anything is timed, and the first CONV it cannot compute named as the user's error."""
    if algorithm == "auto":
        return
    previous = set_conv_algorithm(algorithm)
    try:
        for net_name, pattern in nets.items():
            net = Net.from_pattern(pattern)
            x = np.zeros((1, *net.input_shape), np.float32)
            for layer, info in zip(net.layers, net.infos[1:]):
                try:
                    x = layer.forward(x, False)
                except ValueError as err:
                    if info.window is None or not layer.params:     # not a CONV: a bug
                        raise
                    raise SlidenetError(f"--conv {algorithm} cannot compute {info.name} "
                                        f"({info.spec.text}) of {net_name}: {err}; --conv auto "
                                        f"picks an algorithm for each layer") from None
    finally:
        set_conv_algorithm(previous)
