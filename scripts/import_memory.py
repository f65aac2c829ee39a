"""Peak memory and time of `slidenet import` on a large ONNX file, against `onnx.load` of the
same file: docs/interop.md's "Lean import" table.

    .venv/bin/python scripts/import_memory.py [--folder /tmp/vgg11] [--rounds 3] [--external]

Writes (once) a VGG-11-shaped chain at 224x224 as PyTorch exports it (Conv, Relu, MaxPool,
Flatten, Gemm with transB=1, Dropout): 132.9 million float32 weights, 507 MiB, random numbers
(their values do not matter here), with onnx.helper alone; --external keeps the weights in a
side file as PyTorch does past 2 GiB. Then each measurement runs in a fresh Python process, which
reports its peak resident memory (VmHWM, what the operating system saw, NumPy and protobuf
alike) and its wall time:

    onnx.load       onnx.load(path) (with its external data)
    read_onnx       slidenet.interop.onnx_import.read_onnx(path): the net in memory
    slidenet import the whole command: read_onnx, then the model file written (and checksummed)

Each process first imports what it needs and records its resident memory before the work, so
the table shows the work's own peak above that (and the total). Rounds alternate the three.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]

MEASURE = r'''
import json, sys, time
kind, path, out = sys.argv[1:4]
import numpy, onnx
from slidenet.interop.onnx_import import read_onnx
from slidenet.commands import import_
def rss(field="VmRSS"):
    # VmHWM, the peak, belongs to this program's memory; ru_maxrss would carry over the peak
    # of the process it was forked from (pytest's)
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(field))
before = rss()
began = time.perf_counter()
if kind == "onnx.load":
    model = onnx.load(path)
elif kind == "read_onnx":
    imported = read_onnx(path)
else:
    from slidenet.cli import main
    assert main(["import", path, "--out", out]) == 0
seconds = time.perf_counter() - began
peak = rss("VmHWM")
print(json.dumps({"seconds": seconds, "peak": peak, "before": before}))
'''


def write_vgg11(path, external):
    """The chain, its weights from a seeded generator, saved with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(11)
    nodes, inits, last, channels, size = [], [], "input", 3, 224

    def tensor(name, *shape):
        inits.append(numpy_helper.from_array(
            rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01), name))
        return name

    for i, item in enumerate(VGG11):
        if item == "M":
            nodes.append(helper.make_node("MaxPool", [last], [f"p{i}"], name=f"/pool{i}",
                                          kernel_shape=[2, 2], strides=[2, 2]))
            last, size = f"p{i}", size // 2
            continue
        nodes.append(helper.make_node(
            "Conv", [last, tensor(f"conv{i}.weight", item, channels, 3, 3),
                     tensor(f"conv{i}.bias", item)], [f"c{i}"], name=f"/conv{i}",
            kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"/relu{i}"))
        last, channels = f"r{i}", item
    nodes.append(helper.make_node("Flatten", [last], ["flat"], name="/flatten"))
    last, width = "flat", channels * size * size
    for j, out in enumerate((4096, 4096, 1000)):
        nodes.append(helper.make_node("Gemm", [last, tensor(f"fc{j}.weight", out, width),
                                               tensor(f"fc{j}.bias", out)], [f"g{j}"],
                                      name=f"/fc{j}", transB=1))
        last, width = f"g{j}", out
        if j < 2:
            nodes += [helper.make_node("Relu", [last], [f"gr{j}"], name=f"/fcrelu{j}"),
                      helper.make_node("Dropout", [f"gr{j}"], [f"d{j}"], name=f"/drop{j}")]
            last = f"d{j}"
    graph = helper.make_graph(
        nodes, "vgg11", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                       ["N", 3, 224, 224])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8, producer_name="pytorch")
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data")
    else:
        onnx.save(model, path)
    return sum(t.ByteSize() for t in inits)


def measure(kind, path, out):
    done = subprocess.run([sys.executable, "-c", MEASURE, kind, str(path), str(out)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", default="/tmp/slidenet-vgg11")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--external", action="store_true")
    args = parser.parse_args()
    path = Path(args.folder) / ("vgg11_external.onnx" if args.external else "vgg11.onnx")
    if not path.exists():
        write_vgg11(path, args.external)
    weights = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    print(f"{path}: {weights / 2**20:.0f} MiB on disk")
    kinds = ["onnx.load", "read_onnx", "slidenet import"]
    results = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds[r % 3:] + kinds[:r % 3]:
            results[kind].append(measure(kind, path, Path(args.folder) / "vgg11.npz"))
    print(f"{'what':<16} {'seconds (median, min-max)':<28} {'peak RSS MiB (median)':<22} "
          f"{'above start MiB':<16}")
    for kind in kinds:
        rows = results[kind]
        secs = [r["seconds"] for r in rows]
        peak = statistics.median(r["peak"] for r in rows) / 2**20
        above = statistics.median(r["peak"] - r["before"] for r in rows) / 2**20
        print(f"{kind:<16} {statistics.median(secs):6.2f} ({min(secs):.2f}-{max(secs):.2f})"
              f"{'':<12} {peak:8.0f}{'':<14} {above:8.0f}")


if __name__ == "__main__":
    main()
