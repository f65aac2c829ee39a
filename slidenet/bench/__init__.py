"""How fast slidenet trains and infers, measured against the machine and against PyTorch.

    result = run(Settings(threads=2), {"r1": R1})
    print(report(result))

For each net: every step's forward and backward time in a training step (a step is a layer, or
layers fused into one, such as conv1+relu1), with its GFLOPS and the share of the machine's
measured sgemm peak (a 2048^3 float32 matmul); the images/s of a training step (forward,
softmax cross-entropy, backward, plain SGD update) and of inference; and the peak memory of a
training process. When PyTorch is installed, the same net runs in PyTorch (NCHW, nn.Conv2d
etc.), alternating with slidenet round by round so both see the same machine, and the report
gives the ratios (medians over the rounds). Peak memory is measured in a fresh subprocess per
library, so neither pays for the other's imports or buffers.

Threads: with `threads=T`, PyTorch gets `torch.set_num_threads(T)` and slidenet T kernel
worker threads with BLAS limited to one thread per call (`slidenet.ops.runtime.workers`). With
the default (`threads=0`, one per core) slidenet runs bare, with no context at all, as a user's
`net.forward` does: its kernels pick the workers and limit BLAS themselves.

Load: `busy=N` keeps N other processes spinning (`machine.BusyCores`) while the libraries are
timed, alternating as always, so both see the same busy machine.

Modules: `machine` (what it ran on, the sgemm peak, other load), `runners` (what is timed, per
library), `report` (the text tables); this one runs it all.
"""
import json
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np

from slidenet.bench.machine import (
    BusyCores, OtherLoad, machine, peak_rss_mb, seconds, sgemm_gflops, torch_module)
from slidenet.bench.report import report
from slidenet.bench.runners import (
    OnnxRunner, SlidenetRunner, TorchRunner, flops, onnxruntime_module)
from slidenet.notation.pattern import parse
from slidenet.notation.shapes import infer
from slidenet.ops import compiled, runtime, set_conv_algorithm
from slidenet.ops.conv import pair
from slidenet.ops.runtime import blas_for_workers

R1 = ("INPUT(32x32x3) -> [CONV(32) -> RELU]*2 -> POOL -> [CONV(64) -> RELU]*2 -> POOL -> "
      "FC(256) -> RELU -> FC(10)")
FASHION = ("INPUT(28x28x1) -> [CONV(32) -> RELU]*2 -> POOL -> [CONV(64) -> RELU]*2 -> POOL -> "
           "FC(256) -> RELU -> FC(10)")
# ResNet-18's layout (a stem, then two basic blocks per stage, projections where a stage
# halves the size) at 32x32 with a quarter of its width: the graph net of issue #20.
_BLOCK = "{{ CONV({k}) -> BN -> RELU -> CONV({k}) -> BN | ID }} -> ADD -> RELU"
_DOWN = ("{{ CONV({k}, s=2, p=1, round=down) -> BN -> RELU -> CONV({k}) -> BN | "
         "CONV({k}, 1x1, s=2, round=down) -> BN }} -> ADD -> RELU")
RES18 = " -> ".join(["INPUT(32x32x3) -> CONV(16) -> BN -> RELU", _BLOCK.format(k=16),
                     _BLOCK.format(k=16)]
                    + [f"{_DOWN.format(k=k)} -> {_BLOCK.format(k=k)}" for k in (32, 64, 128)]
                    + ["GLOBALAVGPOOL -> FC(10)"])
# Each library's warm-up before its timed rounds: calls until this many seconds have passed. A
# process's first few calls run slower (caches, page tables, the core's clock rising after
# idling): one call was not enough to reach the steady state for a one-image prediction.
WARM_SECONDS = 0.25
WARM_CALLS = 1000

NETS = {"r1": R1, "fashion": FASHION, "res18": RES18}

__all__ = ["FASHION", "NETS", "R1", "RES18", "Settings", "report", "run"]


@dataclass
class Settings:
    batch: int = 128            # training batch
    infer_batch: int = 256      # inference batch
    threads: int = 0            # 0: one per core, for both libraries
    rounds: int = 5             # alternating rounds; results are medians over them
    steps: int = 3              # training steps (or inference batches) timed per round
    sgemm_size: int = 2048      # n of the n^3 float32 matmul that measures the peak
    budget: int = 0             # slidenet scratch budget in bytes (0: the default)
    torch: bool = True          # compare with PyTorch when it is installed
    onnx: bool = True           # compare inference with onnxruntime when it is installed
    memory: bool = True         # measure peak RSS in subprocesses
    latency_calls: int = 100    # single-image predictions timed per round (batch-1 latency)
    conv: str = "auto"          # slidenet's convolutions: "auto" or one algorithm everywhere
    busy: int = 0               # processes kept spinning on a core each while timing

    @classmethod
    def quick(cls, **overrides):
        """A run of seconds, for a first look (and the tests)."""
        values = dict(rounds=2, steps=1, sgemm_size=1024, latency_calls=10)
        values.update(overrides)
        return cls(**values)

    def thread_count(self):
        return self.threads or runtime.available_cores()

    def slidenet_context(self):
        """What slidenet's timings run in: nothing (the library's own defaults, as a bare call
        gets them) unless a thread count was given."""
        return (lambda: runtime.workers(self.threads)) if self.threads else nullcontext


def warm_up(call):
    """call() at least once, and again until WARM_SECONDS have passed (at most WARM_CALLS
    times): buffers, caches, thread pools and the core's clock in their steady state."""
    start = time.perf_counter()
    for _ in range(WARM_CALLS):
        call()
        if time.perf_counter() - start >= WARM_SECONDS:
            break


def _alternate(runners, method, settings, contexts, calls=None):
    """Seconds per call of `method` for each runner, alternating them round by round: the
    median over the rounds, and the spread (the fastest and slowest round)."""
    calls = calls or settings.steps
    for runner in runners:
        with contexts[runner.name]():
            warm_up(getattr(runner, method))
    spent = {runner.name: [] for runner in runners}
    for _ in range(settings.rounds):
        for runner in runners:
            with contexts[runner.name]():
                spent[runner.name].append(seconds(getattr(runner, method), calls))
    return {name: (float(np.median(values)), min(values), max(values))
            for name, values in spent.items()}


def step_times(runner, infos, settings, peak):
    """Per-step forward/backward milliseconds, GFLOPS and % of peak (medians over rounds)."""
    per_layer = flops(infos)
    steps = runner.net.steps
    rounds = []
    for _ in range(settings.rounds):
        times = {step.name: [0.0, 0.0] for step in steps}
        runner.step_times(times)
        rounds.append(times)
    rows = []
    for step in steps:
        work = [sum(per_layer[part.name][slot] for part in step.parts) for slot in (0, 1)]
        row = {"layer": step.name, "text": " -> ".join(p.info.spec.text for p in step.parts)}
        for slot, key in ((0, "forward"), (1, "backward")):
            spent = float(np.median([r[step.name][slot] for r in rounds]))
            gflops = work[slot] * settings.batch / spent / 1e9 if spent else 0.0
            row[key] = {"ms": spent * 1e3, "gflops": gflops, "peak_share": gflops / peak}
        rows.append(row)
    return rows


def memory_child(spec):
    """Runs in a fresh interpreter: peak RSS (and slidenet's tracemalloc peak) over a few
    training steps (mode "train") or inference batches (mode "infer") of `lib`."""
    import tracemalloc
    lib, pattern, batch, threads, budget, conv, steps, mode = spec
    method = "train_step" if mode == "train" else "infer"
    traced = None
    if lib in ("torch", "onnxruntime"):
        torch = torch_module()
        if torch is not None:
            torch.set_num_threads(threads)
        runner = TorchRunner(infer(parse(pattern)), batch, batch) if lib == "torch" else \
            OnnxRunner(SlidenetRunner(pattern, 1, batch), threads)
        base = peak_rss_mb()
        for _ in range(steps):
            getattr(runner, method)()
    else:
        if budget:
            runtime.set_memory_budget(budget)
        set_conv_algorithm(conv)
        with runtime.workers(threads):
            runner = SlidenetRunner(pattern, batch, batch)
            base = peak_rss_mb()
            tracemalloc.start()
            for _ in range(steps):
                getattr(runner, method)()
            traced = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    return {"rss_mb": peak_rss_mb(), "before_steps_mb": base, "traced_peak_mb": traced}


def peak_memory(lib, pattern, settings, steps=3, mode="train", batch=None):
    """`memory_child` in a fresh subprocess; {"error": ...} if it failed."""
    spec = [lib, pattern, batch or settings.batch, settings.thread_count(), settings.budget,
            settings.conv, steps, mode]
    code = ("import json, sys; from slidenet.bench import memory_child; "
            "print(json.dumps(memory_child(json.loads(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def runners_for(pattern, settings, batch, infer_batch):
    """(trainers, inferers, contexts): the libraries that train and infer this net, each
    measured on `settings.thread_count()` threads."""
    threads = settings.thread_count()
    sn = SlidenetRunner(pattern, batch, infer_batch)
    trainers, inferers = [sn], [sn]
    contexts = {"slidenet": settings.slidenet_context()}
    torch = torch_module() if settings.torch else None
    if torch is not None:
        torch.set_num_threads(threads)
        runner = TorchRunner(sn.net.infos, batch, infer_batch)
        trainers.append(runner)
        inferers.append(runner)
        contexts["torch"] = nullcontext
    if settings.onnx and onnxruntime_module() is not None:
        inferers.append(OnnxRunner(sn, threads))
        contexts["onnxruntime"] = nullcontext
    return trainers, inferers, contexts


def _speeds(spent, images, work, peak):
    """Seconds (median, fastest, slowest) per call -> images/s with its spread, and GFLOPS."""
    return {name: {"ms": s * 1e3, "images_per_s": images / s, "spread": [images / hi, images / lo],
                   "gflops": work / s / 1e9, "peak_share": work / s / 1e9 / peak}
            for name, (s, lo, hi) in spent.items()}


def _ratios(result):
    """slidenet's speed over each other library's, for each measurement both made."""
    ratios = {}
    for key in ("train", "infer", "latency"):
        libs = result.get(key, {})
        if "slidenet" in libs:
            ratios[key] = {name: libs["slidenet"]["images_per_s"] / lib["images_per_s"]
                           for name, lib in libs.items() if name != "slidenet"}
    return ratios


def bench_net(pattern, settings, peak):
    """Everything about one net: steps, training, inference and batch-1 latency, memory,
    ratios."""
    trainers, inferers, contexts = runners_for(pattern, settings, settings.batch,
                                               settings.infer_batch)
    sn = trainers[0]
    infos = sn.net.infos
    per_layer = flops(infos)
    train_flops = sum(f + b for f, b in per_layer.values())
    infer_flops = sum(f for f, _ in per_layer.values())
    result = {"pattern": pattern, "batch": settings.batch, "infer_batch": settings.infer_batch}
    with BusyCores(settings.busy):
        with contexts["slidenet"](), blas_for_workers():
            result["layers"] = step_times(sn, infos, settings, peak)
        result["train"] = _speeds(_alternate(trainers, "train_step", settings, contexts),
                                  settings.batch, train_flops * settings.batch, peak)
        result["infer"] = _speeds(_alternate(inferers, "infer", settings, contexts),
                                  settings.infer_batch, infer_flops * settings.infer_batch, peak)
        with contexts["slidenet"]():
            if runtime.threads() > 1 and pair.enabled():
                pair.wait_ready(120)    # turned on: the steady state of a server, compiled
        result["latency"] = _speeds(_alternate(inferers, "infer_one", settings, contexts,
                                               settings.latency_calls), 1, infer_flops, peak)
    if settings.memory:
        result["memory"] = {r.name: peak_memory(r.name, pattern, settings) for r in trainers}
    result["ratio"] = _ratios(result)
    return result


def run(settings, nets):
    """Benchmark each pattern of `nets` (name -> pattern); returns a JSON-able dict."""
    if settings.budget:
        runtime.set_memory_budget(settings.budget)
    threads = settings.thread_count()
    previous = set_conv_algorithm(settings.conv)
    try:
        with OtherLoad() as load:
            peak = sgemm_gflops(settings.sgemm_size, threads)
            results = {name: bench_net(pattern, settings, peak) for name, pattern in nets.items()}
    finally:
        set_conv_algorithm(previous)
    with settings.slidenet_context()():
        workers = runtime.threads()
    mode = f"{workers} kernel worker{'s' * (workers > 1)} x 1 BLAS thread"
    if not settings.threads:
        mode += ", called bare"
    return {"machine": machine(), "settings": asdict(settings), "threads": threads,
            "slidenet_threads": mode, "compiled": compiled.status(),
            "sgemm": {"n": settings.sgemm_size, "gflops": peak}, "other_load_cores": load.cores,
            "nets": results}
