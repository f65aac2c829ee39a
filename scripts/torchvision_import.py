"""torchvision's classic CNNs, exported by PyTorch and imported by slidenet: docs/interop.md's
support table (issue #21).

Needs torch and torchvision, which slidenet never depends on: run it from a virtual
environment of its own, with slidenet's own venv for the imports.

    python3 -m venv /tmp/tv
    /tmp/tv/bin/pip install torch==2.13.0 onnxscript onnx numpy pillow
    /tmp/tv/bin/pip install --no-deps 'torchvision==0.28.*'
    /tmp/tv/bin/python scripts/torchvision_import.py --folder /tmp/tv-onnx \\
        [--nets resnet18,densenet121] [--exports legacy18,dynamo18] [--images 4]

For each net (random weights, weights=None, and random BatchNorm statistics so that they
matter), in eval mode at 224x224:

1. PyTorch's logits and softmax for a few random images, normalised as torchvision's models
   expect (ImageNet's mean and std);
2. the ONNX file of each exporter asked for: "legacy17", "legacy18" (TorchScript,
   dynamo=False) and "dynamo17", "dynamo18" (dynamo=True; the opset written is recorded, for
   PyTorch keeps 18 where onnx's version converter fails);
3. in fresh processes of slidenet's Python (`--slidenet`, default this repository's .venv):
   `onnx.load` of the file, and slidenet's `read_onnx` of it, alternating, `--rounds` each
   (the median), each with its wall time, its CPU time and peak resident memory above the
   process's start (VmHWM), and the imported net's probabilities for the same images: max
   |dp| against PyTorch's. Both processes import numpy, onnx and slidenet's importer before
   the clock starts, so neither counts module imports (about 0.5 s for onnx, 0.1 s more for
   slidenet here); everything after counts, any one-time set-up in the process included.
   With `--baseline PYTHON` (another checkout's venv, such as main's), `read_onnx` of that
   checkout too, in the same alternation: a second table of both ratios from one run;
4. once per net, the command itself: `slidenet import FILE --out MODEL.npz --mean ... --std
   ...` (exit status and wall time).

Prints one JSON line per file as it goes and a Markdown table at the end (also written to
FOLDER/table.md). torchvision 0.28's import registers fake kernels for its C++ operators
(torch.library.register_fake), which fails with the CPU-only torch wheel; this script makes
that call a no-op while torchvision is imported (its models do not use those operators).
"""
import argparse
import contextlib
import gc
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NETS = ("alexnet", "vgg11", "vgg11_bn", "vgg16", "resnet18", "resnet50", "mobilenet_v2",
        "squeezenet1_1", "googlenet", "densenet121")
EXPORTS = ("legacy17", "legacy18", "dynamo17", "dynamo18")
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])

MEASURE = r'''
import json, sys, time
kind, path, pixels_path = sys.argv[1:4]
import numpy as np, onnx
from slidenet.interop.onnx_import import read_onnx
def rss(field="VmRSS"):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(field))
before = rss()
began, cpu = time.perf_counter(), time.process_time()
result = {}
if kind == "onnx.load":
    model = onnx.load(path)
else:
    stored = np.load(pixels_path)
    imported = read_onnx(path, mean=stored["mean"], std=stored["std"])
seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
peak = rss("VmHWM")
result = {"seconds": seconds, "cpu": cpu, "peak": peak - before, "before": before}
if kind == "read_onnx":
    net = imported.net
    scores = net.forward(imported.normalizer.normalize(stored["pixels"]), train=False)
    scores = scores.astype(np.float64)
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    result.update(dp=float(np.abs(p - stored["probabilities"]).max()),
                  dlogit=float(np.abs(scores - stored["logits"]).max()),
                  top=float(stored["probabilities"].max()),
                  spread_logits=float(np.ptp(stored["logits"])),
                  params=int(sum(v.size for v in net.params.values())),
                  merges=sum(1 for layer in net.every_layer() if layer.merges),
                  pattern=net.pattern)
print(json.dumps(result))
'''


def import_torchvision():
    """torchvision, imported with torch.library.register_fake made a no-op (see above)."""
    import torch
    original = torch.library.register_fake

    def no_op(op, func=None, /, *args, **kwargs):
        return func if func is not None else (lambda f: f)
    torch.library.register_fake = no_op
    try:
        import torchvision
    finally:
        torch.library.register_fake = original
    return torchvision


def build(torchvision, name, generator):
    """torchvision's `name` with random weights and random BatchNorm statistics, in eval mode.
    (The scoring layer is rescaled later, `spread_scores`.)"""
    import torch
    from torch import nn
    options = {"weights": None}
    if name == "googlenet":
        options.update(aux_logits=False, init_weights=True, transform_input=False)
    net = getattr(torchvision.models, name)(**options)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return net.eval()


def spread_scores(net, x, torch):
    """PyTorch's logits for `x`, after rescaling the scoring layer (the last Linear, or
    SqueezeNet's last Conv, followed only by ReLU and pooling, which commute with a positive
    scale) so that the logits of each image spread with a standard deviation of 2 across the
    classes. Randomly initialised nets score near-uniform (p about 1/1000 everywhere) or
    saturated (p = 1): either way |dp| would say little. Returns the logits, float64."""
    from torch import nn
    last = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    with torch.no_grad():
        logits = net(x).double()
        scale = 2.0 / float(logits.std(1).mean())
        last.weight.mul_(scale)
        if last.bias is not None:
            last.bias.mul_(scale)
        return net(x).double()


def export(net, path, exporter):
    """The ONNX file of one exporter; returns (seconds, the opset written)."""
    import onnx
    import torch
    kind, opset = exporter[:-2], int(exporter[-2:])
    sample = torch.randn(1, 3, 224, 224)
    began = time.perf_counter()
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        if kind == "legacy":
            torch.onnx.export(net, (sample,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        else:
            torch.onnx.export(net, (sample,), str(path), dynamo=True, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("N", min=1, max=1024)},))
    seconds = time.perf_counter() - began
    written = onnx.load(str(path), load_external_data=False).opset_import
    return seconds, max(o.version for o in written if o.domain in ("", "ai.onnx"))


def measure(python, kind, path, pixels, cwd=ROOT):
    """One measurement in a fresh process of `python`. cwd: where it runs; a baseline runs
    outside this repository (in the folder), so that it imports its own checkout's slidenet
    (python -c puts its working directory first on the path), and writes no bytecode."""
    env = None if cwd == ROOT else dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([python, "-c", MEASURE, kind, str(path), str(pixels)],
                          capture_output=True, text=True, cwd=cwd, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarised(runs):
    """The first run's numbers, with "seconds" the median of all runs and "spread" (min, max)."""
    if any("error" in run for run in runs):
        return next(run for run in runs if "error" in run)
    times = sorted(run["seconds"] for run in runs)
    cpus = sorted(run["cpu"] for run in runs)
    return {**runs[0], "seconds": times[len(times) // 2], "spread": (times[0], times[-1]),
            "cpu": cpus[len(cpus) // 2], "peak": max(run["peak"] for run in runs)}


def command(python, path, folder):
    """`slidenet import` as a user types it: (exit status, seconds, its first line)."""
    slidenet = Path(python).parent / "slidenet"
    args = [str(slidenet), "import", str(path), "--out", str(folder / "imported.npz"),
            "--mean", *map(str, MEAN), "--std", *map(str, STD)]
    began = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - began
    first = (done.stdout or done.stderr).strip().splitlines()[:1]
    return done.returncode, seconds, (first[0][:200] if first else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/tv-onnx"))
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--exports", default=",".join(EXPORTS))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="timings per file (median)")
    parser.add_argument("--slidenet", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--keep", action="store_true", help="keep the .onnx files")
    parser.add_argument("--baseline", metavar="PYTHON",
                        help="also time read_onnx with this Python (another checkout's venv, "
                        "such as main's), alternating with the others: its ratio in one run")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torchvision = import_torchvision()
    args.folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.nets.split(","):
        generator = torch.Generator().manual_seed(21)
        torch.manual_seed(21)
        net = build(torchvision, name, generator)
        pixels = np.random.default_rng(21).integers(0, 256, (args.images, 224, 224, 3),
                                                    dtype=np.uint8)
        x = ((pixels / 255 - MEAN) / STD).transpose(0, 3, 1, 2)
        logits = spread_scores(net, torch.tensor(x, dtype=torch.float32), torch)
        stored = args.folder / f"{name}_expected.npz"
        np.savez(stored, pixels=pixels, mean=MEAN, std=STD, logits=logits.numpy(),
                 probabilities=torch.softmax(logits, 1).numpy())
        files = []
        for exporter in args.exports.split(","):
            path = args.folder / f"{name}_{exporter}.onnx"
            try:
                seconds, opset = export(net, path, exporter)
            except Exception as err:            # a reference script: report and go on
                rows.append({"net": name, "export": exporter, "error": f"export: {err}"[:300]})
                print(json.dumps(rows[-1]), flush=True)
                continue
            files.append((exporter, path, seconds, opset))
        del net
        gc.collect()
        os.sync()       # the files just written reach the disk before anything is timed
        for index, (exporter, path, seconds, opset) in enumerate(files):
            size = path.stat().st_size + sum(p.stat().st_size for p in
                                             args.folder.glob(f"{path.name}.data"))
            row = {"net": name, "export": exporter, "opset": opset, "export_s": seconds,
                   "mib": size / 2**20}
            loads, imports, baselines = [], [], []
            for _ in range(args.rounds):        # alternating, each in a fresh process
                loads.append(measure(args.slidenet, "onnx.load", path, stored))
                imports.append(measure(args.slidenet, "read_onnx", path, stored))
                if args.baseline:
                    baselines.append(measure(args.baseline, "read_onnx", path, stored,
                                             cwd=args.folder))
            row["load"], row["import"] = summarised(loads), summarised(imports)
            if baselines:
                row["baseline"] = summarised(baselines)
            if index == 0:
                row["command"] = command(args.slidenet, path, args.folder)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("import", "baseline")} |
                             {kind: {k: v for k, v in row[kind].items() if k != "pattern"}
                              for kind in ("import", "baseline") if kind in row}), flush=True)
            if not args.keep:
                path.unlink()
                for extra in args.folder.glob(f"{path.name}.data"):
                    extra.unlink()
    table = markdown(rows)
    if args.baseline:
        table += "\n" + baseline_markdown(rows)
    (args.folder / "table.md").write_text(table)
    (args.folder / "rows.json").write_text(json.dumps(rows, indent=1))
    print(table)


def _s(seconds):
    """Seconds with two decimals, three under 0.1 s (a small file loads in 0.005 s)."""
    return f"{seconds:.3f}" if seconds < 0.1 else f"{seconds:.2f}"


def baseline_markdown(rows):
    """`read_onnx` of this checkout and of `--baseline`'s, each against `onnx.load`, medians of
    the same alternating run: wall clock and CPU."""
    lines = ["| net | export | `onnx.load` s | import s, baseline (min-max) | import s, this "
             "(min-max) | baseline / load | this / load | CPU: baseline / load | CPU: this / "
             "load | max abs dp, baseline / this |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        load, got, base = row.get("load", {}), row.get("import", {}), row.get("baseline", {})
        if any("error" in r or not r for r in (load, got, base)):
            continue
        lines.append(
            f"| {row['net']} | {row['export']} | {_s(load['seconds'])} | "
            f"{_s(base['seconds'])} ({_s(base['spread'][0])}-{_s(base['spread'][1])}) | "
            f"{_s(got['seconds'])} ({_s(got['spread'][0])}-{_s(got['spread'][1])}) | "
            f"{base['seconds'] / load['seconds']:.1f} | {got['seconds'] / load['seconds']:.1f} | "
            f"{base['cpu'] / load['cpu']:.1f} | {got['cpu'] / load['cpu']:.1f} | "
            f"{base['dp']:.1e} / {got['dp']:.1e} |")
    return "\n".join(lines) + "\n"


def markdown(rows):
    lines = ["| net | export | opset | file MiB | `onnx.load` s | import s (min-max) | import / "
             "load | CPU s, import (load) | import peak MiB (onnx.load's) | max abs dp | "
             "largest p | max abs d logit / logit range | merges |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['net']} | {row['export']} | | | | | | | | {row['error']} | | "
                         "| |")
            continue
        load, got = row["load"], row["import"]
        if "error" in got:
            lines.append(f"| {row['net']} | {row['export']} | {row['opset']} | "
                         f"{row['mib']:.0f} | {load.get('seconds', 0):.2f} | refused: "
                         f"{got['error']} | | | | | | | |")
            continue
        lines.append(f"| {row['net']} | {row['export']} | {row['opset']} | {row['mib']:.0f} | "
                     f"{_s(load['seconds'])} | {_s(got['seconds'])} "
                     f"({_s(got['spread'][0])}-{_s(got['spread'][1])}) | "
                     f"{got['seconds'] / load['seconds']:.1f} | "
                     f"{_s(got['cpu'])} ({_s(load['cpu'])}) | "
                     f"{got['peak'] / 2**20:,.0f} ({load['peak'] / 2**20:,.0f}) | "
                     f"{got['dp']:.1e} | {got['top']:.2f} | "
                     f"{got['dlogit']:.1e} / {got['spread_logits']:.1f} | {got['merges']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
