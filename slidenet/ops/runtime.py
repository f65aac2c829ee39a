"""How the kernels run: a memory budget, worker threads, and per-thread scratch buffers.

Convolution copies every window into the rows of a matrix (im2col), nine times the input for a
3x3 filter. Doing that for a whole batch at once costs memory in proportion to the batch and
pushes the rows out of the CPU caches before the matrix multiply reads them back. So the kernels
split the batch into chunks of a few images: each chunk's rows are built into a reused scratch
buffer small enough to stay in cache, multiplied at once, and forgotten. The memory budget caps
the scratch memory of one kernel call over all threads; `chunk_bytes` is the size a chunk aims
for, since BLAS is fastest on rows that are still in the cache.

Worker threads (`set_threads`) process different chunks at the same time. NumPy releases the
GIL in its copies and ufuncs and BLAS releases it in a matrix multiply, so two threads keep two
cores busy, including the copying work that a multi-threaded BLAS alone would leave on one core.
With more than one worker, BLAS itself should run one thread per call
(``OPENBLAS_NUM_THREADS=1``, or ``threadpoolctl.threadpool_limits(1)``), or the two kinds of
thread fight over the cores. The default is one worker: the kernels then run chunk after chunk
on the calling thread and BLAS uses whatever threads it was given.

Scratch buffers are private to a thread and live only inside one kernel call; nothing a kernel
returns or caches ever points into them, so layers and nets can run interleaved safely.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Scratch memory one kernel call may use, over all threads. 64 MiB holds the chunks of every
# layer of R1 many times over; a budget below one image's rows still runs, one image at a time.
DEFAULT_BUDGET = 64 * 2**20
# Bytes of im2col rows a chunk aims for: small enough to stay in a 2-4 MiB L2/L3 slice while
# the GEMM reads them, large enough that the GEMM and the Python loop stay efficient.
DEFAULT_CHUNK_BYTES = 4 * 2**20

_settings = {"budget": DEFAULT_BUDGET, "chunk_bytes": DEFAULT_CHUNK_BYTES, "threads": 1}
_pool = {"executor": None, "size": 0}
_local = threading.local()


def _positive_int(name, value):
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {name}={value!r}")
    return int(value)


def set_memory_budget(nbytes=None):
    """Cap the scratch memory of one kernel call at `nbytes` (None restores the default).

    Returns the previous budget. Smaller budgets mean smaller chunks, never wrong results.
    """
    previous = _settings["budget"]
    _settings["budget"] = DEFAULT_BUDGET if nbytes is None else _positive_int("nbytes", nbytes)
    return previous


def memory_budget():
    """The scratch-memory budget of one kernel call, in bytes."""
    return _settings["budget"]


def set_chunk_bytes(nbytes=None):
    """Set the im2col bytes a chunk aims for (None restores the default); returns the previous."""
    previous = _settings["chunk_bytes"]
    _settings["chunk_bytes"] = DEFAULT_CHUNK_BYTES if nbytes is None else _positive_int("nbytes", nbytes)
    return previous


def set_threads(n=None):
    """Run kernels on `n` worker threads (None: one per CPU core); returns the previous count.

    See the module docstring: with n > 1, limit BLAS to one thread per call.
    """
    previous = _settings["threads"]
    _settings["threads"] = _positive_int("n", (os.cpu_count() or 1) if n is None else n)
    return previous


def threads():
    """The number of worker threads the kernels use."""
    return _settings["threads"]


def scratch(name, shape, dtype):
    """A reusable uninitialised array of `shape`, private to the calling thread.

    Each `name` is one buffer per thread, grown when a larger shape is asked for; two arrays
    needed at the same time inside one kernel must have different names.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buf = buffers.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = buffers[name] = np.empty(nbytes, dtype=np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def batch_chunks(n, bytes_per_image, budget=None):
    """Slices of the batch axis (0..n) for images that each need `bytes_per_image` of scratch.

    A chunk aims for `chunk_bytes` and all worker threads' chunks together stay within
    `budget` (the global memory budget when None); a chunk always holds at least one image.
    """
    budget = memory_budget() if budget is None else budget
    per_chunk = min(_settings["chunk_bytes"], budget // threads())
    step = max(1, int(per_chunk // max(1, bytes_per_image)))
    # Spread the images evenly: 128 in chunks of at most 5 are 26 chunks of 4 or 5, not 25 + 3.
    count = -(-n // step)
    bounds = [n * i // count for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _executor(size):
    if _pool["size"] != size:
        if _pool["executor"] is not None:
            _pool["executor"].shutdown(wait=True)
        _pool["executor"] = ThreadPoolExecutor(size, thread_name_prefix="slidenet")
        _pool["size"] = size
    return _pool["executor"]


def run_chunks(work, slices):
    """Call ``work(sl)`` for every slice and return the results in slice order.

    With several worker threads, thread t takes slices t, t + T, t + 2T, ... (the calling thread
    is thread 0), so a kernel call costs one hand-off per thread, not one per chunk. `work` must
    write only to its own slice of any shared output.
    """
    count = min(threads(), len(slices))
    if count <= 1 or getattr(_local, "worker", False):
        return [work(sl) for sl in slices]

    def part(t):
        _local.worker = True
        try:
            return [(i, work(slices[i])) for i in range(t, len(slices), count)]
        finally:
            _local.worker = False

    futures = [_executor(count - 1).submit(part, t) for t in range(1, count)]
    results = part(0)
    for future in futures:
        results.extend(future.result())
    return [value for _, value in sorted(results, key=lambda pair: pair[0])]
