"""`slidenet bench`: per-layer and whole-net speed on R1 and a Fashion-MNIST-size net, vs PyTorch."""
import json

from slidenet.bench import NETS, Settings, report, run
from slidenet.errors import SlidenetError
from slidenet.ops.conv import ALGORITHMS


def register(subparsers):
    parser = subparsers.add_parser(
        "bench", help="time training and inference, layer by layer, against the sgemm peak and PyTorch",
        description="Time each layer's forward and backward, a whole training step (softmax loss, "
                    "SGD) and inference on R1 and a Fashion-MNIST-size net; report images/s, GFLOPS, "
                    "the share of the measured sgemm peak and peak memory. With PyTorch installed, "
                    "run the same nets in PyTorch, alternating round by round, and print the ratios.")
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
    parser.add_argument("--conv", choices=ALGORITHMS, default="auto",
                        help="slidenet's convolutions: auto (the default: Winograd F(4, 3) or "
                             "F(2, 3) where it applies and pays, else the full-convolution dx at "
                             "stride 1, else im2col), or one algorithm everywhere (it fails where "
                             "it cannot apply; winograd4 is F(4, 3))")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
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
                 "steps": args.steps}
    for name, value in overrides.items():
        if value is not None and value < 1:
            raise SlidenetError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.threads < 0 or args.budget < 0:
        raise SlidenetError("--threads and --budget must not be negative")
    values = {k: v for k, v in overrides.items() if v is not None}
    values.update(threads=args.threads, budget=int(args.budget * 2**20), torch=not args.no_torch,
                  memory=not args.no_memory, conv=args.conv)
    settings = Settings.quick(**values) if args.quick else Settings(**values)
    result = run(settings, chosen)
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0
