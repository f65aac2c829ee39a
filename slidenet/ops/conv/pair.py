"""The second core for one image: a helper thread that takes half of a layer in microseconds.

A batch of one image has no chunks to share between the worker threads, and handing half a
layer to the thread pool costs ~30 us of futex wake-ups plus GIL traffic against ~100-250 us of
work (docs/benchmarks.md, "Batch 1"). Here the hand-over never touches Python or the GIL:

* the helper thread waits in compiled code (numba, no GIL), spinning on one word of a shared
  control array for a while after each task, then sleeping on an Event;
* the calling thread makes one compiled call per layer: it writes the layer's description
  (array addresses and sizes) into the control array, flips the word, does its share, and
  waits for the word to say "done";
* the layer runs in three steps with a two-thread barrier between them: F(4, 3)'s row sets
  (each thread its half of the tiles), the six products (three whole `sgemm` calls each,
  straight into NumPy's own BLAS), the output rows (+ bias, ReLU; each its half of the tiles).
  All compiled, so neither thread needs the GIL.

The word is read and written with atomic operations (compare-and-swap decides who runs the
helper's share): if the helper has not taken the task by the time the caller's first step is
done (asleep, or descheduled on a busy machine), the caller takes it back and runs all of it,
so a late helper costs at most the wait it was never given. Only one caller uses the helper at
a time; any other runs unpaired. Results are the unpaired path's bit for bit (tested): the
passes are the same per tile, and each product is the very `sgemm` call `np.matmul` makes
(splitting a GEMM's rows instead would change its bits: OpenBLAS picks its kernels by size).

Used by `conv.conv_infer` (inference, `Net.prepare()`) for F(4, 3) layers at batch 1 in
float32 when there are two or more workers and numba is installed, and only when turned on
(SLIDENET_PAIR=1 or `set_enabled(True)`): it is off by default until it has been measured on a
quiet machine.
The helper's kernels call BLAS by address, so numba cannot cache them: they compile (seconds
of CPU, docs/benchmarks.md) in the helper thread, which starts only after `START_AFTER`
one-image layers.
"""
import atexit
import ctypes
import os
import threading

import numpy as np

from slidenet.ops import compiled, runtime

# Control array slots (int64).
STATE, SLEEPING, TAKEN_BY_HELPER, ARRIVED = 0, 1, 2, 3
TASK = 8                        # the task's description starts here
SLOTS = 32
IDLE, POSTED, RUNNING, DONE, STOP, HUSH = 0, 1, 2, 3, 4, 5
# How long the helper polls the control word before it goes to sleep: longer than the gap
# between two layers of one prediction or two predictions of a loop, far shorter than between
# the requests of an idle server. Counted in polls, measured when the helper starts.
SPIN_SECONDS = 0.005
MIN_TILES = 2                   # fewer tiles than this: nothing to split
# Layers of one image seen before the helper starts: a loop of predictions or a server, not
# one `slidenet predict` (whose kernels must not wait for the helper's compilation).
START_AFTER = 16
# After the helper missed a task (descheduled on a busy machine), this many layers run
# unpaired, so a helper that cannot get a core stops spinning against the caller.
BACKOFF = 256

# Off unless SLIDENET_PAIR=1 (or `set_enabled(True)`): on a machine whose cores are all busy
# the spinning helper slowed one image down (docs/benchmarks.md, "Round 3"), and it has not yet
# been measured on a quiet one.
_enabled = {"on": os.environ.get("SLIDENET_PAIR", "0") == "1"}
# The helper of this process (pid: a forked child starts its own).
_state = {"kernels": None, "error": None, "thread": None, "ctl": None, "event": None,
          "pid": None, "seen": 0, "skip": 0}
_lock = threading.Lock()        # one caller at a time uses the helper
_start = threading.Lock()


def set_enabled(flag):
    """Pair one-image F(4, 3) layers (True) or not (False); returns the previous setting."""
    previous = _enabled["on"]
    _enabled["on"] = bool(flag)
    return previous


def enabled():
    """Whether one-image F(4, 3) layers are paired (`set_enabled`, SLIDENET_PAIR=1)."""
    return _enabled["on"]


def ready(start_after=START_AFTER):
    """Whether the helper is compiled and running. The `start_after`th call starts it: it
    compiles its kernels (seconds; they cannot be cached, since they call BLAS by address) in
    the background, and until then every call runs unpaired, so no prediction waits for it."""
    if _state["pid"] != os.getpid():                # not started, or a forked child
        _state["seen"] += 1
        if _state["seen"] < start_after:
            return False
        with _start:
            if _state["pid"] != os.getpid():
                ctl, event = np.zeros(SLOTS, np.int64), threading.Event()
                _state.update(ctl=ctl, event=event, kernels=None, error=None, pid=os.getpid())
                _state["thread"] = threading.Thread(target=_helper, args=(ctl, event),
                                                    name="slidenet-pair", daemon=True)
                _state["thread"].start()
                atexit.register(_stop, ctl, event, _state["thread"])
    return _state["kernels"] is not None


def _sgemm():
    """NumPy's cblas_sgemm (its OpenBLAS, ILP64 or not) as a ctypes function, or None."""
    from threadpoolctl import ThreadpoolController
    for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
        if lib.internal_api != "openblas":
            continue
        for name, int_type in (("scipy_cblas_sgemm64_", ctypes.c_int64),
                               ("cblas_sgemm64_", ctypes.c_int64),
                               ("scipy_cblas_sgemm", ctypes.c_int), ("cblas_sgemm", ctypes.c_int)):
            fn = getattr(lib.dynlib, name, None)
            if fn is not None:
                i, n, p, f = ctypes.c_int, int_type, ctypes.c_void_p, ctypes.c_float
                fn.argtypes = [i, i, i, n, n, n, f, p, n, p, n, f, p, n]
                fn.restype = None
                return fn
    return None


def _compile():
    fast = compiled.kernels(np.zeros(1, np.float32))
    sgemm = _sgemm()
    # `serve` and `paired` carry their types, so numba compiles them (and all they call) here,
    # in the helper thread, not in the first prediction that uses them.
    if fast is None or sgemm is None:
        raise RuntimeError("numba or NumPy's OpenBLAS is missing")
    import numba
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    def _slot(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1]])

    @intrinsic
    def load(typingctx, arr, idx):
        def codegen(context, builder, sig, args):
            return builder.load_atomic(_slot(context, builder, sig, args), "seq_cst", 8)
        return types.int64(arr, idx), codegen

    @intrinsic
    def store(typingctx, arr, idx, value):
        def codegen(context, builder, sig, args):
            builder.store_atomic(args[2], _slot(context, builder, sig, args), "seq_cst", 8)
            return context.get_dummy_value()
        return types.void(arr, idx, value), codegen

    @intrinsic
    def swap(typingctx, arr, idx, expected, new):
        """Compare-and-swap; returns the value that was there."""
        def codegen(context, builder, sig, args):
            pair = builder.cmpxchg(_slot(context, builder, sig, args), args[2], args[3],
                                   "seq_cst", "seq_cst")
            return builder.extract_value(pair, 0)
        return types.int64(arr, idx, expected, new), codegen

    @intrinsic
    def pointer(typingctx, address):
        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], ir.IntType(8).as_pointer())
        return types.voidptr(address), codegen

    @intrinsic
    def add(typingctx, arr, idx, value):
        """Atomic fetch-and-add; returns the value before."""
        def codegen(context, builder, sig, args):
            return builder.atomic_rmw("add", _slot(context, builder, sig, args), args[2],
                                      "seq_cst")
        return types.int64(arr, idx, value), codegen

    rows, output = fast.winograd4_rows_of, fast.winograd4_output_of
    jit = numba.njit(nogil=True)
    f32 = np.float32

    @jit
    def arrive(ctl, count):
        """A barrier of the two threads: the `count`th arrival of the task."""
        add(ctl, ARRIVED, 1)
        while load(ctl, ARRIVED) < count:
            pass

    @jit
    def phase(c, step, t0, t1, a0, a1):
        """One thread's share of step 0 (row sets of tiles t0..t1), 1 (products a0..a1) or 2
        (output rows of tiles t0..t1) of F(4, 3) on one image. c: the task's description."""
        xp, hp, wp, d, fw, g, k, bias = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
        out, ho, wo, t, buf_r, buf_p = c[10], c[11], c[12], c[13], c[14], c[15]
        kk = fw * d
        m = t * wo
        r = numba.carray(pointer(buf_r), (6, 1, t, wo, kk), f32)
        p = numba.carray(pointer(buf_p), (6, 1, t, wo, k), f32)
        if step == 0:
            rows(numba.carray(pointer(xp), (1, hp, wp, d), f32), fw, r, t0, t1)
        elif step == 1:
            for a in range(a0, a1):         # the very calls np.matmul makes: the same bits
                sgemm(101, 111, 111, m, k, kk, f32(1.0), pointer(buf_r + a * m * kk * 4), kk,
                      pointer(g + a * kk * k * 4), k, f32(0.0), pointer(buf_p + a * m * k * 4),
                      k)
        else:
            o = numba.carray(pointer(out), (1, ho, wo, k), f32)
            b = numba.carray(pointer(bias), (k,), f32)
            # No skip: an array that is not o stands in (see `winograd_f43.output`).
            output(p, o, b, c[8] != 0, c[9] != 0, p[0, :1, :1], False, t0, t1)

    @numba.njit("int64(int64[::1], int64)", nogil=True)
    def serve(ctl, polls):
        """The helper's loop: run posted tasks; 0 after `polls` idle polls, 1 on STOP."""
        idle = 0
        while idle < polls:
            state = load(ctl, STATE)
            if state == POSTED:
                if swap(ctl, STATE, POSTED, RUNNING) == POSTED:
                    c = ctl[TASK:]
                    split, t = c[16], c[13]
                    phase(c, 0, split, t, 0, 0)
                    arrive(ctl, 2)
                    phase(c, 1, 0, 0, 3, 6)
                    arrive(ctl, 4)
                    phase(c, 2, split, t, 0, 0)
                    store(ctl, TAKEN_BY_HELPER, load(ctl, TAKEN_BY_HELPER) + 1)
                    store(ctl, STATE, DONE)
                    idle = 0
                    continue
            elif state == STOP:
                return 1
            elif state == HUSH:             # the caller gave up on us for a while: sleep
                swap(ctl, STATE, HUSH, IDLE)
                return 0
            idle += 1
        return 0

    @numba.njit("int64(int64[::1], int64[::1], boolean)", nogil=True)
    def paired(ctl, task, hush):
        """Run the task (its description in `task`) on both threads: tiles 0..split and
        products 0..2 here, the rest on the helper, or here too if it never took them.
        Returns 1 if the helper ran its share; if not, and `hush`, it is told to sleep."""
        c = ctl[TASK:]
        c[:len(task)] = task
        store(ctl, ARRIVED, 0)
        swap(ctl, STATE, HUSH, IDLE)        # a helper that has not seen its HUSH yet
        store(ctl, STATE, POSTED)
        split, t = task[16], task[13]
        phase(c, 0, 0, split, 0, 0)
        if load(ctl, STATE) == POSTED and swap(ctl, STATE, POSTED, IDLE) == POSTED:
            phase(c, 0, split, t, 0, 0)     # the helper is late: all of it here
            phase(c, 1, 0, 0, 0, 6)
            phase(c, 2, 0, t, 0, 0)
            if hush:
                store(ctl, STATE, HUSH)
            return 0
        arrive(ctl, 2)
        phase(c, 1, 0, 0, 0, 3)
        arrive(ctl, 4)
        phase(c, 2, 0, split, 0, 0)
        while load(ctl, STATE) != DONE:
            pass
        store(ctl, STATE, IDLE)
        return 1

    class Kernels:
        pass
    done = Kernels()
    done.serve, done.paired = serve, paired
    return done


def _stop(ctl, event, thread):
    """At exit, before the interpreter frees anything: the helper told to return, and joined,
    so it never polls memory that is being freed."""
    ctl[STATE] = STOP
    event.set()
    thread.join(1.0)


def _helper(ctl, event):
    try:
        kernels = _compile()
    except Exception as err:        # no numba, no OpenBLAS, a numba that fails: never paired

        _state["error"] = err
        return
    import time
    idle = np.zeros(SLOTS, np.int64)                # no task: idle polls, timed once warm
    kernels.serve(idle, 1000)
    start = time.perf_counter()
    kernels.serve(idle, 1_000_000)
    polls = max(1000, int(SPIN_SECONDS * 1_000_000 / max(1e-9, time.perf_counter() - start)))
    _state["kernels"] = kernels
    while True:
        if kernels.serve(ctl, polls) == 1:
            return
        event.clear()
        ctl[SLEEPING] = 1
        if ctl[STATE] == POSTED:            # posted while we were deciding to sleep
            ctl[SLEEPING] = 0
            continue
        event.wait()
        ctl[SLEEPING] = 0


def applies(x, out_h, filters):
    """Whether a batch of x can run paired: one float32 image, F(4, 3) tiles to split, two
    workers or more, the compiled kernels, and the helper `ready`."""
    if not (_enabled["on"] and x.shape[0] == 1 and x.dtype == np.float32 and filters.dtype == np.float32
            and filters.shape[-1] >= 2 and runtime.threads() >= 2 and -(-out_h // 4) >= MIN_TILES
            and compiled.kernels(x) is not None and ready()):
        return False
    if _state["skip"]:
        _state["skip"] -= 1
        return False
    return True


def winograd4_forward(x, w, b, pad, relu, filters):
    """F(4, 3)'s forward of one float32 image (1, H, W, D) on two threads, or None when the
    helper is in use by another caller (run unpaired then). Output as `conv_forward_winograd4`:
    (1, H', W', K), bias added, rectified when relu."""
    if not _lock.acquire(blocking=False):
        return None
    try:
        from slidenet.ops.conv import winograd
        kernels, ctl, event = _state["kernels"], _state["ctl"], _state["event"]
        fh, fw, d, k = w.shape
        _, h, wd, _ = x.shape
        ho, wo = h + 2 * pad[0] - 2, wd + 2 * pad[1] - fw + 1
        t = -(-ho // 4)
        xp, inner = winograd.padded("pair.xp", 1, h, wd, d, pad, x.dtype, 4)
        inner[...] = x
        out = runtime.empty((1, ho, wo, k), np.float32)
        bias = np.ascontiguousarray(b, np.float32)
        buffers = runtime.scratch("pair.buffers", (6 * t * wo * (fw * d + k),), np.float32)
        g = np.ascontiguousarray(filters)
        task = np.array([xp.ctypes.data, xp.shape[1], xp.shape[2], d, fw, g.ctypes.data, k,
                         bias.ctypes.data, 1, int(relu), out.ctypes.data, ho, wo, t,
                         buffers.ctypes.data, buffers.ctypes.data + 6 * t * wo * fw * d * 4,
                         t // 2 + t % 2], np.int64)     # the caller's tiles: the larger half
        asleep = bool(ctl[SLEEPING])
        if asleep:
            event.set()                 # it will spin for the next layers, if not for this one
        if not kernels.paired(ctl, task, not asleep) and not asleep:
            _state["skip"] = BACKOFF    # awake, yet too late: it did not get a core
        return out
    finally:
        _lock.release()


def wait_ready(timeout):
    """Start the helper now and wait until it runs (for tests and benchmarks); its state."""
    import time
    deadline = time.monotonic() + timeout
    while not ready(start_after=0) and _state["error"] is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return _state["kernels"] is not None


def helper_runs():
    """How many halves the helper thread has run in this process (for tests)."""
    return 0 if _state["ctl"] is None else int(_state["ctl"][TAKEN_BY_HELPER])


def retry_now():
    """Forget a back-off: the next one-image layer tries to pair (for benchmarks)."""
    _state["skip"] = 0
