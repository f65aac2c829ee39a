"""The Python API called bare against the same calls inside `runtime.workers()` (what `slidenet
train` runs in) and against PyTorch, alternating in one process: docs/benchmarks.md's "Round 3".

    .venv/bin/python scripts/callers.py [--net r1] [--rounds 5] [--steps 3] [--busy 0] [--no-torch]

Three ways to run R1 (or the Fashion-size net), round by round in a rotated order:

    bare       `net.forward` / `net.backward` and the prepared net's forward (`Model.predict`'s),
               called with no context, the library's defaults as they are
    workers    the same calls inside `runtime.workers()`: one worker per core, BLAS at 1 thread
    torch      PyTorch on `torch.set_num_threads(cores)` (when it is installed)

each timing a training step at batch 128, inference at batch 256 and 100 single-image
predictions per round. `--busy N` keeps N other processes spinning on a core each meanwhile
(`slidenet.bench.machine.BusyCores`). Prints, per measurement, each way's median over the
rounds with its spread (half the range of the rounds as a share of the median) and the ratios.
"""
import argparse
import os
from contextlib import nullcontext

from slidenet.bench import NETS, _alternate, _speeds
from slidenet.bench.machine import BusyCores, OtherLoad, torch_module
from slidenet.bench.runners import SlidenetRunner, TorchRunner
from slidenet.ops import runtime


class Named:
    """A runner under another name, so that one net can be timed two ways."""

    def __init__(self, name, runner):
        self.name, self.runner = name, runner

    def __getattr__(self, attr):
        return getattr(self.runner, attr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", choices=sorted(NETS), default="r1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--latency-calls", type=int, default=100)
    parser.add_argument("--busy", type=int, default=0, help="processes spinning meanwhile")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()

    class Settings:
        rounds, steps = args.rounds, args.steps

    cores = os.cpu_count() or 1
    sn = SlidenetRunner(NETS[args.net], 128, 256)
    runners = [Named("bare", sn), Named("workers", sn)]
    contexts = {"bare": nullcontext, "workers": runtime.workers}
    torch = None if args.no_torch else torch_module()
    if torch is not None:
        torch.set_num_threads(cores)
        runners.append(TorchRunner(sn.net.infos, 128, 256))
        contexts["torch"] = nullcontext
    results = {}
    with BusyCores(args.busy), OtherLoad() as load:
        for method, images, calls in (("train_step", 128, None), ("infer", 256, None),
                                      ("infer_one", 1, args.latency_calls)):
            spent = _alternate(runners, method, Settings, contexts, calls)
            results[method] = _speeds(spent, images, 1.0, 1.0)
            runners = runners[1:] + runners[:1]         # rotate who goes first
    print(f"{args.net}, {cores} cores, bare threads={runtime.threads()}, busy={args.busy}, "
          f"other load {load.cores:.2f} cores (the busy ones included)")
    for method, speeds in results.items():
        cells = []
        for name in ("bare", "workers", "torch"):
            if name in speeds:
                s = speeds[name]
                swing = 50 * (s["spread"][1] - s["spread"][0]) / s["images_per_s"]
                value = f"{s['ms']:.3f} ms" if method == "infer_one" else f"{s['images_per_s']:.0f}/s"
                cells.append(f"{name} {value} ±{swing:.0f}%")
        ratios = [f"{a}/{b} {speeds[a]['images_per_s'] / speeds[b]['images_per_s']:.2f}x"
                  for a, b in (("bare", "workers"), ("bare", "torch"), ("workers", "torch"))
                  if a in speeds and b in speeds]
        print(f"  {method:<10} " + ", ".join(cells) + "; " + ", ".join(ratios))


if __name__ == "__main__":
    main()
