"""How fast slidenet trains and infers, measured against the machine and against PyTorch.

    result = run(Settings(threads=2), {"r1": R1})
    print(report(result))

For each net: every layer's forward and backward time in a training step, with its GFLOPS and
the share of the machine's measured sgemm peak (a 2048^3 float32 matmul); the images/s of a
training step (forward, softmax cross-entropy, backward, plain SGD update) and of inference;
and the peak memory of a training process. When PyTorch is installed, the same net runs in
PyTorch (NCHW, nn.Conv2d etc.), alternating with slidenet round by round so both see the same
machine, and the report gives the ratios (medians over the rounds). Peak memory is measured in
a fresh subprocess per library, so neither pays for the other's imports or buffers.

Threads: with `threads=T`, PyTorch gets `torch.set_num_threads(T)` and slidenet T kernel
worker threads with BLAS limited to one thread per call (`slidenet.ops.runtime.workers`).
"""
import json
import os
import platform
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from slidenet.net import Net
from slidenet.ops import compiled, runtime, set_conv_algorithm, softmax_loss
from slidenet.pattern import parse
from slidenet.shapes import infer

R1 = ("INPUT(32x32x3) -> [CONV(32) -> RELU]*2 -> POOL -> [CONV(64) -> RELU]*2 -> POOL -> "
      "FC(256) -> RELU -> FC(10)")
FASHION = ("INPUT(28x28x1) -> [CONV(32) -> RELU]*2 -> POOL -> [CONV(64) -> RELU]*2 -> POOL -> "
           "FC(256) -> RELU -> FC(10)")
NETS = {"r1": R1, "fashion": FASHION}
LEARNING_RATE = 0.01


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
    memory: bool = True         # measure peak RSS in subprocesses
    conv: str = "auto"          # slidenet's convolution algorithm: "auto" or "im2col"

    @classmethod
    def quick(cls, **overrides):
        """A run of seconds, for a first look (and the tests)."""
        values = dict(rounds=2, steps=1, sgemm_size=1024)
        values.update(overrides)
        return cls(**values)

    def thread_count(self):
        return self.threads or os.cpu_count() or 1


def _torch():
    """The torch module, or None when it is not installed (it is never a dependency)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def machine():
    """What the numbers were measured on: CPU, cores, library versions, the BLAS kernel."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": "unknown"}
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    if blas:
        b = blas[0]
        info["blas"] = f"{b['internal_api']} {b.get('version')}, {b.get('architecture')} kernels"
    torch = _torch()
    if torch is not None:
        info["torch"] = torch.__version__
    tuned = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                         "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if k in os.environ}
    if tuned:
        info["env"] = tuned
    return info


def sgemm_gflops(n, threads, repeats=3):
    """Best GFLOPS of an n x n x n float32 matmul with BLAS on `threads` threads."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=out)
        best = min(_seconds(lambda: np.matmul(a, b, out=out)) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


class OtherLoad:
    """How many cores other processes kept busy, on average, while the block ran (Linux).

    The benchmark shares the machine; a busy neighbour slows both libraries, and PyTorch's
    spinning thread pool more than slidenet, so a ratio measured under load is not trusted.
    """

    def __enter__(self):
        self.start = (_busy_seconds(), _own_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        busy, own, wall = _busy_seconds(), _own_seconds(), time.perf_counter()
        self.cores = None if busy is None else \
            max(0.0, (busy - self.start[0]) - (own - self.start[1])) / (wall - self.start[2])


def _busy_seconds():
    """CPU seconds all processes have used since boot, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")     # minus idle, iowait


def _own_seconds():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _seconds(fn, calls=1):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _flops(infos):
    """Forward and backward FLOPs per image for each layer: 2 per multiply-add; the backward
    of a CONV or FC does two products of the forward's size (dx and dw)."""
    return {i.name: (2 * i.madds, 4 * i.madds if i.spec.kind in ("CONV", "FC") else 0)
            for i in infos[1:]}


class SlidenetRunner:
    """One net, random data, and the three things timed: a training step, inference, layers."""

    name = "slidenet"

    def __init__(self, pattern, batch, infer_batch, seed=0):
        self.net = Net.from_pattern(pattern, seed=seed)
        rng = np.random.default_rng(seed)
        shape = tuple(self.net.input_shape)
        self.x = rng.standard_normal((batch, *shape), dtype=np.float32)
        self.y = rng.integers(0, self.net.num_outputs, batch)
        self.x_infer = rng.standard_normal((infer_batch, *shape), dtype=np.float32)

    def train_step(self):
        _, dscores = softmax_loss(self.net.forward(self.x, train=True), self.y)
        self.net.backward(dscores, input_grad=False)
        for key, p in self.net.params.items():
            p -= LEARNING_RATE * self.net.grads[key]

    def infer(self):
        return self.net.forward(self.x_infer)

    def layer_step(self, times):
        """A training step, adding each layer's forward and backward seconds into `times`."""
        self.net._release_caches()              # as Net.forward does
        out = self.x
        for layer in self.net.layers:
            start = time.perf_counter()
            out = layer.forward(out, True)
            times[layer.name][0] += time.perf_counter() - start
        _, grad = softmax_loss(out, self.y)
        for layer in reversed(self.net.layers):
            start = time.perf_counter()
            grad = layer.backward(grad, need_dx=layer is not self.net.layers[0])
            times[layer.name][1] += time.perf_counter() - start
        for key, p in self.net.params.items():
            p -= LEARNING_RATE * self.net.grads[key]


class TorchRunner:
    """The same layers in PyTorch: NCHW, nn.Conv2d / nn.MaxPool2d / nn.Linear, SGD."""

    name = "torch"

    def __init__(self, infos, batch, infer_batch, seed=0):
        torch = self.torch = _torch()
        nn = torch.nn
        torch.manual_seed(seed)
        modules = []
        for info in infos[1:]:
            s, kind = info.spec, info.spec.kind
            if kind == "CONV":
                modules.append(nn.Conv2d(info.input_shape[2], s.filters, s.size, s.stride, s.pad))
            elif kind in ("MAXPOOL", "AVGPOOL"):
                modules.append((nn.MaxPool2d if kind == "MAXPOOL" else nn.AvgPool2d)(s.size, s.stride))
            elif kind == "FC":
                if len(info.input_shape) == 3:
                    modules.append(nn.Flatten())
                modules.append(nn.Linear(int(np.prod(info.input_shape)), s.filters))
            elif kind == "BATCHNORM":
                channels = info.input_shape[-1]
                modules.append(nn.BatchNorm2d(channels) if len(info.input_shape) == 3
                               else nn.BatchNorm1d(channels))
            elif kind == "DROPOUT":
                modules.append(nn.Dropout(s.rate))
            elif kind == "LEAKYRELU":
                modules.append(nn.LeakyReLU(s.alpha))
            else:
                modules.append({"RELU": nn.ReLU, "TANH": nn.Tanh, "SIGMOID": nn.Sigmoid}[kind]())
        self.model = nn.Sequential(*modules)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE)
        self.loss = nn.CrossEntropyLoss()
        h, w, d = infos[0].output_shape
        self.x = torch.randn(batch, d, h, w)
        self.y = torch.randint(0, int(np.prod(infos[-1].output_shape)), (batch,))
        self.x_infer = torch.randn(infer_batch, d, h, w)

    def train_step(self):
        self.model.train()
        self.opt.zero_grad()
        self.loss(self.model(self.x), self.y).backward()
        self.opt.step()

    def infer(self):
        self.model.eval()
        with self.torch.no_grad():
            return self.model(self.x_infer)


def _alternate(runners, method, settings, contexts):
    """Median seconds per call of `method` for each runner, alternating them round by round."""
    for runner in runners:
        with contexts[runner.name]():
            getattr(runner, method)()       # warm up: buffers, caches, thread pools
    seconds = {runner.name: [] for runner in runners}
    for _ in range(settings.rounds):
        for runner in runners:
            with contexts[runner.name]():
                seconds[runner.name].append(_seconds(getattr(runner, method), settings.steps))
    return {name: float(np.median(values)) for name, values in seconds.items()}


def layer_times(runner, infos, settings, peak):
    """Per-layer forward/backward milliseconds, GFLOPS and % of peak (medians over rounds)."""
    flops = _flops(infos)
    rounds = []
    for _ in range(settings.rounds):
        times = {layer.name: [0.0, 0.0] for layer in runner.net.layers}
        runner.layer_step(times)
        rounds.append(times)
    rows = []
    for info, layer in zip(infos[1:], runner.net.layers):
        row = {"layer": layer.name, "text": info.spec.text}
        for slot, key in ((0, "forward"), (1, "backward")):
            seconds = float(np.median([r[layer.name][slot] for r in rounds]))
            gflops = flops[layer.name][slot] * settings.batch / seconds / 1e9 if seconds else 0.0
            row[key] = {"ms": seconds * 1e3, "gflops": gflops, "peak_share": gflops / peak}
        rows.append(row)
    return rows


def _peak_rss_mb():
    """Peak resident memory of this process so far, in MiB.

    VmHWM belongs to this process's own address space; ru_maxrss would also count the parent
    it was forked from (Linux carries it across exec), so it is only the fallback.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # KiB on Linux


def _memory_child(spec):
    """Runs in a fresh interpreter: peak RSS (and the tracemalloc peak) over a few steps."""
    import tracemalloc
    lib, pattern, batch, threads, budget, conv, steps = spec
    if lib == "torch":
        torch = _torch()
        torch.set_num_threads(threads)
        runner = TorchRunner(infer(parse(pattern)), batch, 1)
        base = _peak_rss_mb()
        for _ in range(steps):
            runner.train_step()
        traced = None
    else:
        if budget:
            runtime.set_memory_budget(budget)
        set_conv_algorithm(conv)
        with runtime.workers(threads):
            runner = SlidenetRunner(pattern, batch, 1)
            base = _peak_rss_mb()
            tracemalloc.start()
            for _ in range(steps):
                runner.train_step()
            traced = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    return {"rss_mb": _peak_rss_mb(), "before_steps_mb": base, "traced_peak_mb": traced}


def peak_memory(lib, pattern, settings, steps=3):
    """`_memory_child` in a fresh subprocess; None if it failed."""
    spec = [lib, pattern, settings.batch, settings.thread_count(), settings.budget, settings.conv, steps]
    code = ("import json, sys; from slidenet.bench import _memory_child; "
            "print(json.dumps(_memory_child(json.loads(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_net(pattern, settings, peak):
    """Everything about one net: layers, training and inference speed, memory, ratios."""
    threads = settings.thread_count()
    sn = SlidenetRunner(pattern, settings.batch, settings.infer_batch)
    infos = sn.net.infos
    runners = [sn]
    contexts = {"slidenet": lambda: runtime.workers(threads)}
    torch = _torch() if settings.torch else None
    if torch is not None:
        torch.set_num_threads(threads)
        runners.append(TorchRunner(infos, settings.batch, settings.infer_batch))
        contexts["torch"] = nullcontext
    flops = _flops(infos)
    train_flops = sum(f + b for f, b in flops.values()) * settings.batch
    infer_flops = sum(f for f, _ in flops.values()) * settings.infer_batch
    result = {"pattern": pattern, "batch": settings.batch, "infer_batch": settings.infer_batch}
    with runtime.workers(threads):
        result["layers"] = layer_times(sn, infos, settings, peak)
    for method, batch, work in (("train_step", settings.batch, train_flops),
                                ("infer", settings.infer_batch, infer_flops)):
        seconds = _alternate(runners, method, settings, contexts)
        key = "train" if method == "train_step" else "infer"
        result[key] = {name: {"ms": s * 1e3, "images_per_s": batch / s, "gflops": work / s / 1e9,
                              "peak_share": work / s / 1e9 / peak} for name, s in seconds.items()}
    if settings.memory:
        result["memory"] = {r.name: peak_memory(r.name, pattern, settings) for r in runners}
    if torch is not None:
        result["ratio"] = {key: result[key]["slidenet"]["images_per_s"] / result[key]["torch"]["images_per_s"]
                           for key in ("train", "infer")}
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
    with runtime.workers(threads):
        workers = runtime.threads()
    mode = f"{workers} kernel worker{'s' * (workers > 1)} x 1 BLAS thread"
    return {"machine": machine(), "settings": asdict(settings), "threads": threads,
            "slidenet_threads": mode, "compiled": compiled.status(),
            "sgemm": {"n": settings.sgemm_size, "gflops": peak}, "other_load_cores": load.cores,
            "nets": results}


def report(result):
    """The result of `run` as text tables."""
    m = result["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores; python {m['python']}, numpy {m['numpy']} "
             f"({m['blas']})" + (f", torch {m['torch']}" if "torch" in m else ""),
             f"threads: {result['threads']} per library (slidenet: {result['slidenet_threads']}); "
             f"sgemm {result['sgemm']['n']}^3 float32: {result['sgemm']['gflops']:.1f} GFLOPS "
             "(the peak below)",
             f"slidenet convolutions: {result['settings']['conv']}"
             + (" (Winograd F(2, 3) where it applies)" if result['settings']['conv'] == "auto" else "")
             + f"; compiled kernels: {result['compiled']} (SLIDENET_NUMBA=0 turns them off)",
             "GFLOPS count a direct convolution's multiply-adds, whatever the algorithm"]
    if "env" in m:
        lines.append("environment: " + ", ".join(f"{k}={v}" for k, v in m["env"].items()))
    load = result.get("other_load_cores")
    if load is not None:
        warn = "  <- the machine was busy: rerun when it is quiet" if load > 0.1 * result["threads"] else ""
        lines.append(f"other processes kept {load:.2f} cores busy during the run{warn}")
    for name, net in result["nets"].items():
        lines += ["", f"{name}: {net['pattern']}",
                  f"slidenet layers, training step at batch {net['batch']} (median of rounds):",
                  f"  {'layer':<22}{'fwd ms':>9}{'GFLOPS':>8}{'peak':>6}"
                  f"{'bwd ms':>10}{'GFLOPS':>8}{'peak':>6}"]
        for row in net["layers"]:
            f, b = row["forward"], row["backward"]
            lines.append(f"  {row['layer'] + ' ' + row['text']:<22}{f['ms']:9.1f}{_g(f)}"
                         f"{b['ms']:10.1f}{_g(b)}")
        libs = list(net["train"])
        head = f"  {'':<28}" + "".join(f"{lib:>12}" for lib in libs)
        lines += ["", head + ("       ratio" if "ratio" in net else "")]
        for key, label in (("train", f"train images/s (batch {net['batch']})"),
                           ("infer", f"infer images/s (batch {net['infer_batch']})")):
            cells = "".join(f"{net[key][lib]['images_per_s']:12.0f}" for lib in libs)
            ratio = f"{net['ratio'][key]:11.2f}x" if "ratio" in net else ""
            lines.append(f"  {label:<28}{cells}{ratio}")
            cells = "".join(f"{net[key][lib]['gflops']:6.1f} ({net[key][lib]['peak_share']:3.0%})"
                            for lib in libs)
            lines.append(f"  {'  GFLOPS (share of peak)':<28}{cells}")
        if "memory" in net:
            cells = "".join(f"{_mb(net['memory'][lib]):>12}" for lib in libs)
            lines.append(f"  {'peak RSS MB, training':<28}{cells}")
            traced = net["memory"]["slidenet"].get("traced_peak_mb")
            if traced is not None:
                lines.append(f"  {'  slidenet traced peak MB':<28}{traced:12.0f}")
    return "\n".join(lines)


def _g(cell):
    if not cell["gflops"]:
        return f"{'':>8}{'':>6}"
    return f"{cell['gflops']:8.1f}{cell['peak_share']:6.0%}"


def _mb(memory):
    return memory.get("error", "failed")[:12] if "rss_mb" not in memory else f"{memory['rss_mb']:.0f}"
