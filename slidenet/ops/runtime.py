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
The default is one worker per core this process may use (`available_cores`: its CPU affinity and
cgroup quota), whoever calls: `Net.forward` called bare runs as `slidenet train` does.

A prepared net (`net.InferencePlan`) may instead hand whole slices of a batch to the workers,
each running every layer of its slice (`image_chunks`): a kernel called on a worker thread runs
its chunks in turn on that thread.

With more than one worker, BLAS itself must run one thread per call, or the two kinds of thread
fight over the cores. `blas_for_workers()` sees to it: a cheap context (three calls into the BLAS
library when the outermost one is entered and left) that lowers BLAS's threads to cores //
workers while any slidenet kernel runs, and puts back the caller's setting when the last one
leaves. `Net.forward`/`backward`, the prepared net and every parallel `run_chunks` enter it, so
no caller has to. It only ever lowers the count: a caller's own `threadpool_limits` stays in
force, and BLAS called outside slidenet keeps its threads. (Capping BLAS once for the whole
process would be cheaper still, but would slow down the user's own NumPy matrix products.)

Scratch buffers are private to a thread and live only inside one kernel call; nothing a kernel
returns or caches ever points into them, so layers and nets can run interleaved safely.

Large results (activations, gradients) come from `empty`, which recycles the memory of earlier
results that nothing references any more, much as PyTorch's caching allocator does. Fresh
memory is slow: every new page is a page fault, and on a virtual machine that hands freed
memory back to its host, a fault can cost microseconds; a 32 MiB activation is 8,192 of them.
A buffer is handed out again only when its reference count shows that no array, view or cache
anywhere still uses it, so recycling never changes a result.
"""
import math
import os
import sys
import threading
from contextlib import contextmanager
from queue import SimpleQueue

import numpy as np
from threadpoolctl import threadpool_limits

# Scratch memory one kernel call may use, over all threads. 64 MiB holds the chunks of every
# layer of R1 many times over; a budget below one image's rows still runs, one image at a time.
DEFAULT_BUDGET = 64 * 2**20
# Bytes of im2col rows a chunk aims for: small enough to stay in a 2-4 MiB L2/L3 slice while
# the GEMM reads them, large enough that the GEMM and the Python loop stay efficient.
DEFAULT_CHUNK_BYTES = 4 * 2**20

# Results smaller than this come straight from np.empty; the recycled ones are kept up to
# RECYCLE_LIMIT bytes in all (what is in use counts too: it is free again after the step).
RECYCLE_MIN_BYTES = 2**20
DEFAULT_RECYCLE_LIMIT = 2**30
# Zero-bordered buffers (`bordered`) kept per thread: a few per convolution layer of a net.
BORDERED_KEEP = 16

# threads None: one per available core, counted at first use.
_settings = {"budget": DEFAULT_BUDGET, "chunk_bytes": DEFAULT_CHUNK_BYTES, "threads": None,
             "recycle_limit": DEFAULT_RECYCLE_LIMIT, "cores": None}
# Free and held result buffers, oldest first, and the same buffers by size (bytes -> list,
# oldest first), so that a training step's repeated request finds its exact fit without a scan.
_recycled = {"buffers": [], "by_size": {}, "lock": threading.Lock()}
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


def chunk_bytes():
    """The bytes of GEMM rows a chunk aims for (`set_chunk_bytes`)."""
    return _settings["chunk_bytes"]


def available_cores():
    """The cores this process may run on: its CPU affinity (taskset, a cpuset), lowered to a
    cgroup's CPU quota (a container's --cpus) where there is one; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def set_threads(n=None):
    """Run kernels on `n` worker threads (None: one per available core, the default).

    Returns the previous setting (None where it was the default), for restoring it.
    """
    previous = _settings["threads"]
    _settings["threads"] = None if n is None else _positive_int("n", n)
    return previous


def threads():
    """The number of worker threads the kernels use."""
    count = _settings["threads"]
    return available_cores_cached() if count is None else count


@contextmanager
def workers(count=None):
    """Run the kernels inside the block on `count` worker threads (None: one per core), each
    calling a one-thread BLAS, so workers and BLAS threads never fight over the cores (and
    `count=1` means one thread in all, BLAS's included)."""
    previous = set_threads(count)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        set_threads(previous)


class _BlasLimit:
    """Lowers the BLAS libraries' threads while slidenet's kernels run: `blas_for_workers()`.

    Process-wide, like OpenBLAS's own setting: a count of the threads inside, the caller's
    setting saved when the first enters, put back when the last leaves. Where a BLAS keeps its
    count per thread (OpenMP builds), slidenet's pool threads set theirs once (`pool_thread`).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.libraries = None       # [(get, set, per_thread)], found at first use
        self.inside = 0
        self.saved = None           # the caller's counts, while a limit is in force
        self.limit = None

    def _find(self):
        from threadpoolctl import ThreadpoolController
        found = []
        for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
            raw = _openblas_calls(lib) if lib.internal_api == "openblas" and \
                getattr(lib, "threading_layer", None) != "openmp" else None
            per_thread = getattr(lib, "threading_layer", None) == "openmp"
            # threadpoolctl lets only one Python thread set OpenBLAS's process-wide count;
            # any thread that runs a kernel must be able to, so the library is called directly.
            found.append(raw or (lib.get_num_threads, lib.set_num_threads, per_thread))
        return found

    def __enter__(self):
        count = threads()
        with self.lock:
            self.inside += 1
            if count <= 1:
                return self
            if self.libraries is None:
                self.libraries = self._find()
            want = threads_per_worker(count)
            if self.limit is not None and self.limit <= want:
                return self
            if self.saved is None:
                # A per-thread count is the calling thread's own: left to the caller.
                self.saved = [None if per_thread else get()
                              for get, _, per_thread in self.libraries]
            for (_, set_, _), had in zip(self.libraries, self.saved):
                if had is not None and had > want:
                    set_(want)
            self.limit = want
        return self

    def __exit__(self, *exc):
        with self.lock:
            self.inside -= 1
            if self.inside == 0 and self.saved is not None:
                for (_, set_, _), had in zip(self.libraries, self.saved):
                    if had is not None and had > self.limit:
                        set_(had)
                self.saved = self.limit = None

    def pool_thread(self):
        """In a pool thread, once: a per-thread BLAS count limited for good (the thread runs
        nothing but kernels)."""
        for _, set_, per_thread in self.libraries or ():
            if per_thread:
                set_(1)


def _openblas_calls(lib):
    """OpenBLAS's own get/set of its process-wide thread count, or None if not found."""
    import ctypes
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            get = getattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype, set_.restype = ctypes.c_int, None
                set_.argtypes = [ctypes.c_int]
                return get, set_, False
    return None


def threads_per_worker(count=None):
    """BLAS threads each of `count` workers (default: `threads()`) may use: cores // count."""
    return max(1, available_cores_cached() // (count or threads()))


def available_cores_cached():
    """`available_cores()`, counted once per process."""
    if _settings["cores"] is None:
        _settings["cores"] = available_cores()
    return _settings["cores"]


_blas_limit = _BlasLimit()


def blas_for_workers():
    """A context: while it is open (in any thread), BLAS runs at most cores // workers threads
    per call, so that slidenet's worker threads and BLAS's never outnumber the cores. Nested
    and concurrent uses are cheap; the caller's setting comes back when the last one closes.
    With one worker it changes nothing."""
    return _blas_limit


@contextmanager
def on_this_thread():
    """Run the kernels inside the block on the calling thread alone, leaving the worker
    threads to whoever else uses them (`slidenet train --live` draws its pictures this way,
    beside the training that keeps the workers busy)."""
    previous = getattr(_local, "worker", False)
    _local.worker = True
    try:
        yield
    finally:
        _local.worker = previous


def scratch(name, shape, dtype):
    """A reusable uninitialised array of `shape`, private to the calling thread.

    Each `name` is one buffer per thread, grown when a larger shape is asked for; two arrays
    needed at the same time inside one kernel must have different names.
    """
    # Called a few hundred times a training step, while holding the GIL that the other worker
    # threads wait for: math.prod and the ndarray constructor are ten times faster than
    # np.prod and a view + reshape.
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buf = buffers.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = buffers[name] = np.empty(nbytes, dtype=np.uint8)
    return np.ndarray(shape, dtype, buf)


def bordered(name, shape, dtype, pad):
    """A per-thread scratch batch of zero-padded images, and its interior (a view) to fill.

    shape: (N, H, W, D) including the border; pad: (top, bottom, left, right) rows and columns
    of zeros. One buffer per exact shape and pad, zeroed when it is made: callers write only
    the interior, so the border stays zero and is never cleared again. Clearing it costs four
    tiny NumPy calls per chunk, and tiny calls are what two worker threads pay most for (each
    one hands the GIL over). The BORDERED_KEEP most recently used buffers are kept per thread.
    """
    key = (name, tuple(shape), np.dtype(dtype).str, tuple(pad))
    kept = getattr(_local, "bordered", None)
    if kept is None:
        kept = _local.bordered = {}
    buf = kept.pop(key, None)
    if buf is None:
        while len(kept) >= BORDERED_KEEP:
            kept.pop(next(iter(kept)))          # the least recently used
        buf = np.zeros(shape, dtype)
    kept[key] = buf                             # now the most recently used
    top, bottom, left, right = pad
    return buf, buf[:, top:shape[1] - bottom, left:shape[2] - right]


def set_recycle_limit(nbytes=None):
    """Keep at most `nbytes` of recycled result memory (None: the default, 0: recycle nothing).

    Returns the previous limit. Free buffers beyond the limit are released at once.
    """
    previous = _settings["recycle_limit"]
    _settings["recycle_limit"] = DEFAULT_RECYCLE_LIMIT if nbytes is None else int(nbytes)
    with _recycled["lock"]:
        _trim(0)
    return previous


def _in_use(buffers, i):
    # References: the two lists' (`buffers` and its size's in `by_size`) and getrefcount's own
    # argument. Any array viewing the buffer (our result, a view of it, a cache holding it) adds
    # one through its `.base`.
    return sys.getrefcount(buffers[i]) > 3


def _drop(i):
    """Forget buffer i of `_recycled["buffers"]` (in both lists); returns its size in bytes."""
    buffers, by_size = _recycled["buffers"], _recycled["by_size"]
    nbytes = buffers[i].nbytes
    same = by_size[nbytes]
    for j in range(len(same)):          # no loop variable may hold a buffer (refcounts)
        if same[j] is buffers[i]:
            del same[j]
            break
    if not same:
        del by_size[nbytes]
    del buffers[i]
    return nbytes


def _trim(extra):
    """Drop free buffers, oldest first, until the kept bytes plus `extra` fit the limit."""
    buffers = _recycled["buffers"]
    total = sum(b.nbytes for b in buffers) + extra
    i = 0
    while total > _settings["recycle_limit"] and i < len(buffers):
        if _in_use(buffers, i):
            i += 1
        else:
            total -= _drop(i)


def empty(shape, dtype):
    """np.empty(shape, dtype), reusing the memory of a large earlier result nobody holds now.

    For the arrays a kernel returns; see the module docstring.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < RECYCLE_MIN_BYTES or _settings["recycle_limit"] <= 0:
        return np.empty(shape, dtype)
    with _recycled["lock"]:
        # An exact fit first: the oldest free buffer of this size, as the scan below would
        # find it (both lists keep the buffers oldest first).
        same = _recycled["by_size"].get(nbytes, ())
        for i in range(len(same)):
            if not _in_use(same, i):
                return same[i].view(dtype).reshape(shape)
        buffers = _recycled["buffers"]
        best = None
        for i in range(len(buffers)):      # no loop variable may hold a buffer (refcounts)
            size = buffers[i].nbytes
            # Not much larger than needed, so a big buffer is not tied up by a small array.
            if nbytes <= size <= 2 * nbytes and (best is None or size < buffers[best].nbytes) \
                    and not _in_use(buffers, i):
                best = i
                if size == nbytes:          # no fit is better: stop looking (a training
                    break                   # step asks for the same sizes every time)
        if best is None:
            _trim(nbytes)
            buffers.append(np.empty(nbytes, dtype=np.uint8))
            _recycled["by_size"].setdefault(nbytes, []).append(buffers[-1])
            best = len(buffers) - 1
        return buffers[best][:nbytes].view(dtype).reshape(shape)


HUGE_PAGE = 2**21       # bytes: the kernel's transparent huge page on x86-64 and arm64
ALIGN_UP_TO = 64 * 2**20    # bytes: a larger buffer loses 2 of hundreds of huge pages at most


def huge_page_buffer(nbytes, zeroed=True):
    """A uint8 array of `nbytes` (zeros, or as found when not `zeroed`) that starts on a
    HUGE_PAGE boundary when it is large enough for huge pages (NumPy asks the kernel for them
    from 4 MiB) and at most ALIGN_UP_TO: every whole 2 MiB of it can then be one huge page,
    where an unaligned buffer loses the one at each end to 4 KiB pages, hundreds of page faults
    for a few MiB (docs/benchmarks.md, "ONNX import time"). The 2 MiB it allocates more are
    never touched. A larger buffer is NumPy's own, as before."""
    make = np.zeros if zeroed else np.empty
    if not 2 * HUGE_PAGE <= nbytes <= ALIGN_UP_TO:
        return make(nbytes, np.uint8)
    raw = make(nbytes + HUGE_PAGE, np.uint8)
    skip = -raw.ctypes.data % HUGE_PAGE
    return raw[skip:skip + nbytes]


SMALL_PAGES_FROM = ALIGN_UP_TO     # bytes: a larger `zeroed_buffer` is in small pages


def zeroed_buffer(nbytes):
    """A uint8 array of `nbytes` zeros for a blank net's weights (`layers.Arena`): up to
    SMALL_PAGES_FROM on huge pages (`huge_page_buffer`), above it in the operating system's
    small pages: an anonymous mapping of its own (no file behind it, so nothing can cut it
    short), which NumPy does not ask huge pages for. On a virtual machine that hands free
    memory back to its host, a fresh huge page of a large buffer can cost several times its
    512 small pages when first written, and an import writes every page of the net's weights
    once (docs/benchmarks.md, "ONNX import time"). Pages are made only when written, either
    way, and the mapping is unmapped when the last view of it goes."""
    if nbytes <= SMALL_PAGES_FROM:
        return huge_page_buffer(nbytes)
    import mmap
    return np.frombuffer(mmap.mmap(-1, nbytes), np.uint8)


def batch_chunks(n, bytes_per_image, budget=None, hot_bytes_per_image=None):
    """Slices of the batch axis (0..n) for images that each need `bytes_per_image` of scratch.

    All worker threads' chunks together stay within `budget` (the global memory budget when
    None), and the data one step works on at a time (`hot_bytes_per_image` per image, e.g.
    the rows of one GEMM; all the scratch when None) aims for `chunk_bytes`. A chunk always
    holds at least one image.
    """
    if n <= 1:                      # one image (batch 1 runs here on every layer): one chunk
        return [slice(0, n)]
    budget = memory_budget() if budget is None else budget
    hot = bytes_per_image if hot_bytes_per_image is None else hot_bytes_per_image
    step = max(1, min(int(budget // threads() // max(1, bytes_per_image)),
                      int(_settings["chunk_bytes"] // max(1, hot))))
    # Spread the images evenly (128 in chunks of at most 5: 26 chunks of 4 or 5, not 25 + 3),
    # over a multiple of the thread count, so that no thread is left with the last chunk alone;
    # on a worker thread (a slice of a depth-first forward) the chunks run one after the
    # other, and smaller chunks would only make thinner GEMMs.
    count = max(1, -(-n // step))
    sharing = 1 if getattr(_local, "worker", False) else threads()
    count = min(max(n, 1), -(-count // sharing) * sharing)
    bounds = [n * i // count for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


# Multiply-adds below which a product runs on the calling thread: handing it to another costs
# more than it saves.
SMALL_WORK = 2**20


def split(n, work=None):
    """The range 0..n in one even slice per worker thread, for a kernel that is one big GEMM.

    work: its multiply-adds; below SMALL_WORK, handing it to threads costs more than it saves.
    """
    parts = 1 if work is not None and work < SMALL_WORK else min(threads(), max(1, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def worker_split(n):
    """`split(n)`, or the whole range as one slice on a worker thread (a slice of a depth-first
    forward), where `run_chunks` would run split's slices one after the other: for a kernel
    whose cost per item falls with the slice (its GEMMs' rows), one call of all n is cheaper
    than several of fewer."""
    return [slice(0, n)] if getattr(_local, "worker", False) else split(n)


# Images a worker takes through a whole prepared net at a time (`image_chunks`): at least
# NET_SLICE_LEAST (below, a forward's cost per image rises: thinner GEMMs, more calls per
# image), at most NET_SLICE_MOST (more slices cost more calls into every step, each holding
# the GIL for its Python part, for no gain: the cost per image is flat from 16 images on).
# docs/benchmarks.md, "res18 inference: depth first".
NET_SLICE_LEAST = 16
NET_SLICE_MOST = 32


def image_chunks(n):
    """Slices of a batch of n images for running a whole inference plan per slice, one slice
    per worker at a time (`net.InferencePlan.forward`), or None where the batch is better run
    layer by layer (one worker, or fewer than NET_SLICE_LEAST images for each worker).

    Depth first, each worker runs every layer of its images without a hand-over per layer,
    where layer by layer each kernel call hands its chunks to the workers and waits for the
    slowest. The count is the fewest multiple of the workers that keeps each slice within
    NET_SLICE_MOST images.
    """
    count = threads()
    if count <= 1 or getattr(_local, "worker", False) or n < count * NET_SLICE_LEAST:
        return None
    parts = count * -(-n // (count * NET_SLICE_MOST))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


class _Helpers:
    """`size` daemon threads that run the callables handed to `submit`, each by the next idle
    thread, in the order handed.

    A plain queue and nothing more: a kernel call hands over one callable per helper, tens of
    times per layer, and concurrent.futures' Future and work item for each cost several times
    the hand-over itself. The callables report their own results (`run_chunks`' tasks put them
    into a queue of their call) and must not raise.
    """

    def __init__(self, size):
        self.size = size
        self.tasks = SimpleQueue()
        self.threads = [threading.Thread(target=self._serve, name=f"slidenet_{i}", daemon=True)
                        for i in range(size)]
        for thread in self.threads:
            thread.start()

    def _serve(self):
        for task in iter(self.tasks.get, None):
            task()
            del task                # holds nothing of the last call while waiting for the next

    def submit(self, task):
        self.tasks.put(task)

    def shutdown(self):
        for _ in self.threads:
            self.tasks.put(None)
        for thread in self.threads:
            thread.join()


def _executor(size):
    if _pool["size"] != size:
        if _pool["executor"] is not None:
            _pool["executor"].shutdown()
        _pool["executor"] = _Helpers(size)
        _pool["size"] = size
    return _pool["executor"]


def _forget_helpers():
    # A forked child has none of its parent's threads: it starts helpers of its own.
    _pool["executor"], _pool["size"] = None, 0


os.register_at_fork(after_in_child=_forget_helpers)


def run_chunks(work, slices):
    """Call ``work(sl)`` for every slice and return the results in slice order.

    With several worker threads (the calling thread is one of them), each takes the next slice
    not yet taken until none is left: a thread slowed down by anything else on the machine
    simply takes fewer, and one that has not started when the caller has taken the last slice
    is called off, not waited for. A kernel call costs one hand-off per thread, not one per
    chunk. `work` must write only to its own slice of any shared output; which thread ran a
    slice never changes its result.
    """
    if len(slices) == 1:
        return [work(slices[0])]
    count = min(threads(), len(slices))
    if count <= 1 or getattr(_local, "worker", False):
        return [work(sl) for sl in slices]
    order, lock = iter(range(len(slices))), threading.Lock()
    # What the threads run, held here only: a called-off task may wait in the helpers' queue
    # after the call returns, and must not keep `work`'s arrays alive meanwhile (their
    # reference counts tell `empty` whether it may recycle them).
    job = {"work": work, "started": 0}
    finished = SimpleQueue()        # (results, error) of each helper that started

    def take():
        with lock:
            return next(order, None)

    def part(run):
        done = []
        _local.worker = True
        try:
            for i in iter(take, None):
                done.append((i, run(slices[i])))
        except BaseException:
            with lock:                  # a failed chunk: the other threads stop taking more
                for _ in order:
                    pass
            raise
        finally:
            _local.worker = False
        return done

    def helper():
        with lock:
            run = job.get("work")
            if run is None:             # called off: the caller has finished without it
                return
            job["started"] += 1
        if not getattr(_local, "limited", False):
            _blas_limit.pool_thread()
            _local.limited = True
        try:
            outcome = (part(run), None)
        except BaseException as error:
            outcome = ([], error)
        del run                         # before the caller learns that this part is done
        finished.put(outcome)

    with _blas_limit:
        helpers = _executor(count - 1)
        for _ in range(1, count):
            helpers.submit(helper)
        try:
            results = part(work)
        finally:
            # A helper that has not started by the time the caller ran out of chunks is not
            # waited for: on a busy machine it may not get a core for milliseconds, and the
            # chunks are all done. One that has started may still be writing: wait for it.
            with lock:
                started = job["started"]
                job.clear()
            outcomes = [finished.get() for _ in range(started)]
    for done, error in outcomes:
        if error is not None:
            raise error
        results.extend(done)
    return [value for _, value in sorted(results, key=lambda pair: pair[0])]
