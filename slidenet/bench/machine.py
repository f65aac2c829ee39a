"""What the benchmark runs on, and how busy the machine was: CPU, libraries, sgemm peak, load."""
import os
import platform
import resource
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits


def torch_module():
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
    torch = torch_module()
    if torch is not None:
        info["torch"] = torch.__version__
    tuned = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                         "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if k in os.environ}
    if tuned:
        info["env"] = tuned
    warning = blas_kernel_warning(blas[0].get("architecture") if blas else None)
    if warning:
        info["warning"] = warning
    return info


# OpenBLAS core types whose SGEMM kernels use AVX-512.
AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids")


def blas_kernel_warning(architecture, environ=None, flags=None):
    """A line to print when OPENBLAS_CORETYPE holds OpenBLAS to kernels older than the CPU:
    AVX2 kernels (Haswell, Zen) on a CPU with AVX-512. None when there is nothing to say.

    OpenBLAS picks its kernels once, when it loads, so slidenet (imported after NumPy) cannot
    change them; it can only say so. On this project's machine the AVX-512 kernels ran its
    GEMMs about twice as fast (docs/benchmarks.md, "Small batches").
    """
    environ = os.environ if environ is None else environ
    forced = environ.get("OPENBLAS_CORETYPE")
    if not forced or not architecture or architecture.lower() in AVX512_CORES:
        return None
    if flags is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line.split(":", 1)[1].split() for line in f
                              if line.startswith("flags")), [])
        except OSError:
            flags = []
    if "avx512f" not in flags:
        return None
    return (f"OPENBLAS_CORETYPE={forced} holds OpenBLAS to its {architecture} kernels on a CPU "
            "with AVX-512, whose SkylakeX kernels run slidenet's GEMMs about twice as fast: "
            "unset it (env -u OPENBLAS_CORETYPE ...) unless it is there for a reason")


def seconds(fn, calls=1):
    """Mean wall seconds of `calls` calls of fn()."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def sgemm_gflops(n, threads, repeats=3):
    """Best GFLOPS of an n x n x n float32 matmul with BLAS on `threads` threads."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=out)
        best = min(seconds(lambda: np.matmul(a, b, out=out)) for _ in range(repeats))
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


def peak_rss_mb():
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


# A loop that keeps one core busy, and ends by itself (within milliseconds) when the process
# that started it is gone, even one killed before it could stop its spinners.
SPIN = ("import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n"
        "    for _ in range(100000):\n        pass\n")


class BusyCores:
    """`count` processes that each keep one core busy while the block runs: the benchmark of a
    shared machine (another job, a notebook, an MPI rank too many) on demand.

    Each is a fresh interpreter spinning in a loop (`SPIN`); they are started before the block
    and stopped (by their own process ids) after it, also when the block fails. Both libraries of
    an alternating benchmark run under the same load.
    """

    def __init__(self, count):
        self.count = count
        self.processes = []

    def __enter__(self):
        import subprocess
        import sys
        try:
            for _ in range(self.count):
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        except BaseException:
            self.__exit__()
            raise
        if self.processes:
            time.sleep(0.2)             # let them start spinning before anything is timed
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()
        self.processes = []
