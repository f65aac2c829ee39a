"""How cost grows: `slidenet bench --scaling`, every row measured against PyTorch and onnxruntime
in the same run (alternating rounds, as `slidenet bench` does).

    batch size      R1 at batch 1, 8, 64, 256: training and inference images/s, peak memory
    input size      a VGG-style net on 32x32, 64x64, 128x128 and 224x224 images at batch 8
    threads         R1 on 1 and 2 threads: training at batch 128, inference at batch 256

Peak memory is the resident set of a fresh process doing the work (`memory_child`), so every
library pays only for itself. `rows` (`slidenet bench --scaling --rows batch:1,8 size:224`)
measures only the rows named.
"""
from dataclasses import replace

from slidenet.bench import (
    R1, _alternate, _speeds, peak_memory, runners_for)
from slidenet.bench.machine import BusyCores, machine
from slidenet.bench.runners import flops
from slidenet.ops import runtime

# Three blocks of [CONV -> RELU]*2 -> POOL, VGG's shape at a size that fits this machine.
VGG = ("INPUT({s}x{s}x3) -> [CONV(32) -> RELU]*2 -> POOL -> [CONV(64) -> RELU]*2 -> POOL -> "
       "[CONV(128) -> RELU]*2 -> POOL -> FC(256) -> RELU -> FC(10)")
BATCHES = (1, 8, 64, 256)
SIZES = (32, 64, 128, 224)
THREADS = (1, 2)


def measure(pattern, settings, batch, infer_batch, memory=True):
    """Training and inference images/s of every library for one net and batch, and the peak
    memory of a process that trains (slidenet, torch) or infers (onnxruntime) it."""
    trainers, inferers, contexts = runners_for(pattern, settings, batch, infer_batch)
    infos = trainers[0].net.infos
    per_layer = flops(infos)
    work = sum(f + b for f, b in per_layer.values()), sum(f for f, _ in per_layer.values())
    with runtime.workers(settings.thread_count()):
        trainers[0].train_step()            # numba's first compile, outside the timing
    with BusyCores(settings.busy):
        row = {"train": _speeds(_alternate(trainers, "train_step", settings, contexts,
                                           calls_per_round(settings, batch)), batch,
                                work[0] * batch, 1.0),
               "infer": _speeds(_alternate(inferers, "infer", settings, contexts,
                                           calls_per_round(settings, infer_batch)), infer_batch,
                                work[1] * infer_batch, 1.0)}
    if memory:
        row["memory"] = {r.name: peak_memory(r.name, pattern, settings, batch=batch)
                         for r in trainers}
        if len(inferers) > len(trainers):
            row["memory"]["onnxruntime"] = peak_memory("onnxruntime", pattern, settings,
                                                       mode="infer", batch=infer_batch)
    return row


def calls_per_round(settings, batch):
    """Calls timed per round at this batch: `--steps`, and for small batches as many as make
    `--latency-calls` images (100 by default, as `slidenet bench` times one image), so that a
    round of one-image calls is not a millisecond dominated by the switch from another
    library's round (its threads still spinning, its data in the caches)."""
    return max(settings.steps, settings.latency_calls // batch)


TABLES = {"batch": BATCHES, "size": SIZES, "threads": THREADS}


def parse_rows(words):
    """["batch:1,8", "size:224"] -> {"batch": (1, 8), "size": (224,), "threads": ()}: the rows
    to measure (a table not named has none). ValueError with the fix for anything else."""
    rows = {key: () for key in TABLES}
    for word in words:
        key, _, values = word.partition(":")
        if key not in TABLES:
            raise ValueError(f"--rows {word!r}: a row is TABLE:VALUES with TABLE one of "
                             f"{', '.join(TABLES)} (e.g. batch:1,8 size:224)")
        try:
            picked = tuple(int(v) for v in values.split(","))
        except ValueError:
            picked = ()
        if not picked or any(v not in TABLES[key] for v in picked):
            raise ValueError(f"--rows {word!r}: {key} has the rows "
                             f"{','.join(map(str, TABLES[key]))}; name some of them")
        rows[key] = tuple(sorted(set(rows[key]) | set(picked)))
    return rows


def run_scaling(settings, rows=None):
    """The three tables as plain data: {"batch": [...], "size": [...], "threads": [...]}.

    rows: {table: values} from `parse_rows`, to measure only those (None: every row)."""
    rows = TABLES if rows is None else rows
    out = {"machine": machine(), "batch": [], "size": [], "threads": []}
    for batch in rows["batch"]:
        out["batch"].append({"batch": batch, **measure(R1, settings, batch, batch, settings.memory)})
    for size in rows["size"]:
        out["size"].append({"size": size, **measure(VGG.format(s=size), settings, 8, 8,
                                                    settings.memory)})
    for threads in rows["threads"]:
        local = replace(settings, threads=threads)
        out["threads"].append({"threads": threads, **measure(R1, local, settings.batch,
                                                             settings.infer_batch, False)})
    return out


def report_scaling(result):
    """The tables as text: images/s per library, slidenet's ratios, peak memory in MB."""
    m = result.get("machine", {})
    lines = [f"machine: {m['cpu']}, {m['cores']} cores; numpy {m['numpy']} ({m['blas']})"] \
        if m else []
    if "env" in m:
        lines.append("environment: " + ", ".join(f"{k}={v}" for k, v in m["env"].items()))
    if "warning" in m:
        lines.append("warning: " + m["warning"])
    for key, label in (("batch", "R1, batch"), ("size", "VGG-style net at batch 8, input"),
                       ("threads", "R1 (train 128, infer 256), threads")):
        if not result[key]:
            continue
        lines += ["", f"{label}:", f"  {key:>7} {'train img/s (slidenet torch ratio)':>38} "
                  f"{'infer img/s (slidenet torch onnxruntime; ratios)':>58}  peak MB"]
        for row in result[key]:
            train, infer = row["train"], row["infer"]
            t = _three(train, ("slidenet", "torch"))
            i = _three(infer, ("slidenet", "torch", "onnxruntime"))
            memory = " ".join(f"{lib[:5]} {m['rss_mb']:.0f}" for lib, m in row.get("memory", {}).items()
                              if "rss_mb" in m)
            lines.append(f"  {row[key]:>7} {t:>38} {i:>58}  {memory}")
    return "\n".join(lines)


def _three(speeds, libs):
    """'1234 1000 1.23x': slidenet's images/s, the others', and slidenet's ratio to each."""
    present = [lib for lib in libs if lib in speeds]
    numbers = " ".join(f"{speeds[lib]['images_per_s']:.0f}" for lib in present)
    ratios = " ".join(f"{speeds['slidenet']['images_per_s'] / speeds[lib]['images_per_s']:.2f}x"
                      for lib in present[1:])
    return f"{numbers}  {ratios}".rstrip()
