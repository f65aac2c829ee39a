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

F(4x4, 3x3) layers (`winograd_f44`, what the prepared net runs for most 3x3 layers) are split
the same way (`paired44`, `phase44`): the caller takes the first half of the rows of tiles of
the input pass, products 0..17 of the 36 and the same rows of the output pass (with its 2x2
max pool where the layer pools), the helper the rest.

Used by `conv.conv_infer` (inference, `Net.prepare()`) for F(4, 3) layers and by
`winograd_f44.OneImage` for F(4x4, 3x3) ones, at batch 1 in float32 when there are two or more
workers and numba is installed, and when turned on: SLIDENET_PAIR=1 or `set_enabled(True)`
(always, but for a back-off after a miss), or SLIDENET_PAIR=auto / `set_enabled("auto")`: also
only while the machine has a core to spare (`ops.idle.SpareCore`: other processes' CPU time,
sampled every quarter second), so that a busy machine runs unpaired. Off by default
(SLIDENET_PAIR=0): on a quiet machine "auto" and off measured alike against onnxruntime
(docs/benchmarks.md, "Batch 1 on two threads"), and the helper's background compilation holds
the GIL for seconds, which a server answering its first requests would feel.
The helper's kernels call BLAS by address, so numba cannot cache them: they compile (seconds
of CPU, docs/benchmarks.md) in the helper thread, which starts only after `START_AFTER`
one-image layers.
"""
import atexit
import os
import threading

import numpy as np

from slidenet.ops import blas, compiled, idle, runtime

# Control array slots (int64).
STATE, SLEEPING, TAKEN_BY_HELPER, ARRIVED = 0, 1, 2, 3
TASK = 8                        # the task's description starts here
SLOTS = 64
KIND = 40                       # in the task: 0 an F(4, 3) layer, 1 an F(4x4, 3x3) one
F43, F44 = 0, 1
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
# With "auto", `idle.SpareCore` catches a machine that stays busy; a miss on a machine it finds
# quiet is a moment's descheduling, so the back-off is a few predictions' layers.
AUTO_BACKOFF = 12

# Off unless SLIDENET_PAIR says 1 (always) or auto: always on, a machine whose cores were all
# busy saw the spinning helper slow one image down (docs/benchmarks.md, "Round 3"); "auto"
# pairs only while `idle.SpareCore` sees a core to spare, and was no faster than off on a quiet
# machine ("Batch 1 on two threads").
_setting = os.environ.get("SLIDENET_PAIR", "0")
_enabled = {"on": _setting != "0", "watch": _setting not in ("0", "1")}
# The helper of this process (pid: a forked child starts its own).
_state = {"kernels": None, "error": None, "thread": None, "ctl": None, "event": None,
          "pid": None, "seen": 0, "skip": 0, "spare": None}
_lock = threading.Lock()        # one caller at a time uses the helper
_start = threading.Lock()


def set_enabled(flag):
    """Pair one-image F(4, 3) and F(4x4, 3x3) layers: True (always, but for `BACKOFF` after a
    miss), "auto" (also only while the machine has a core to spare: `idle.SpareCore`) or False.
    Returns the previous setting."""
    previous = "auto" if _enabled["on"] and _enabled["watch"] else _enabled["on"]
    _enabled["on"] = bool(flag)
    _enabled["watch"] = flag == "auto"
    return previous


def _go():
    """Whether this layer may pair: not in a back-off after a miss, and, with "auto", a core to
    spare on the machine."""
    if _state["skip"]:
        _state["skip"] -= 1
        return False
    if _enabled["watch"]:
        if _state["spare"] is None:
            _state["spare"] = idle.SpareCore(runtime.available_cores_cached())
        return _state["spare"].allow()
    return True


def enabled():
    """Whether one-image F(4, 3) and F(4x4, 3x3) layers may be paired (`set_enabled`,
    SLIDENET_PAIR): True for "auto" too."""
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


def _compile():
    fast = compiled.kernels(np.zeros(1, np.float32))
    sgemm = blas.sgemm()
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
    input44, output44 = fast.winograd44_input, fast.winograd44_output
    output44_pool = fast.winograd44_output_pool
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

    @jit
    def phase44(c, step, t0, t1, a0, a1, scratch):
        """One thread's share of F(4x4, 3x3) on one image: step 0 the input pass over the rows
        of tiles t0..t1, 1 the products a0..a1 of the 36, 2 the output pass (with the pool, if
        the layer has one) over rows of tiles t0..t1. c: the task (`Task44`); scratch: this
        thread's wide, tall and row, one after the other."""
        h, wd, d, th, tw, k = c[1], c[2], c[3], c[6], c[7], c[13]
        vstride, pstride, rows = c[9], c[11], c[6] * c[7]
        if step == 1:
            for a in range(a0, a1):         # the very calls np.matmul makes: the same bits
                sgemm(101, 111, 111, rows, k, d, f32(1.0), pointer(c[8] + a * vstride * 4), d,
                      pointer(c[12] + a * d * k * 4), k, f32(0.0),
                      pointer(c[10] + a * pstride * 4), k)
            return
        bt = t1 - t0
        if bt <= 0:
            return
        x = numba.carray(pointer(c[0]), (1, h, wd, d), f32)
        if step == 0:
            wide = numba.carray(pointer(scratch), (6, 4 * bt + 2, tw * d), f32)
            # Planes as C-contiguous rows from this band's first tile on (a sliced view would
            # not vectorise): the last plane's rows then reach past vstride, into room the
            # caller left after the planes (`winograd_f44.OneImage`).
            v = numba.carray(pointer(c[8] + t0 * tw * d * 4), (36, vstride), f32)
            input44(x, c[4], c[5], t0, bt, tw, wide, v)
            return
        at = scratch + 6 * (4 * th + 2) * tw * d * 4
        tall = numba.carray(pointer(at), (4, 6, tw * k), f32)
        row = numba.carray(pointer(at + 24 * tw * k * 4), (2, 4, tw * k), f32)
        m = numba.carray(pointer(c[10] + t0 * tw * k * 4), (36, pstride), f32)   # as v
        out = numba.carray(pointer(c[14]), (1, c[15], c[16], k), f32)
        bias = numba.carray(pointer(c[17]), (k,), f32)
        if c[19] != 0:
            output44_pool(m, t0, bt, tw, out, bias, True, c[18] != 0, tall, row)
        else:                               # no skip: x stands in, never read
            output44(m, t0, bt, tw, out, bias, True, c[18] != 0, x, False)

    @numba.njit("int64(int64[::1], int64[::1], boolean, float32[:, :, :, ::1], "
                "float32[:, :, :, ::1], float32[:, :, ::1], float32[::1])", nogil=True)
    def paired44(ctl, task, hush, x, out, filters, bias):
        """`paired` for an F(4x4, 3x3) task: rows of tiles 0..split and products 0..17 here,
        the rest on the helper, or here too if it never took them. The task's arrays of this
        call (x, out, filters, bias) are written into it here: their addresses cost
        microseconds each to read in Python."""
        c = ctl[TASK:]
        c[:len(task)] = task
        c[0], c[14] = x.ctypes.data, out.ctypes.data
        c[12], c[17] = filters.ctypes.data, bias.ctypes.data
        c[KIND] = F44
        store(ctl, ARRIVED, 0)
        swap(ctl, STATE, HUSH, IDLE)
        store(ctl, STATE, POSTED)
        split, t, mine = task[20], task[6], task[21]
        phase44(c, 0, 0, split, 0, 0, mine)
        if load(ctl, STATE) == POSTED and swap(ctl, STATE, POSTED, IDLE) == POSTED:
            phase44(c, 0, split, t, 0, 0, mine)     # the helper is late: all of it here
            phase44(c, 1, 0, 0, 0, 36, mine)
            phase44(c, 2, 0, t, 0, 0, mine)
            if hush:
                store(ctl, STATE, HUSH)
            return 0
        arrive(ctl, 2)
        phase44(c, 1, 0, 0, 0, 18, mine)
        arrive(ctl, 4)
        phase44(c, 2, 0, split, 0, 0, mine)
        while load(ctl, STATE) != DONE:
            pass
        store(ctl, STATE, IDLE)
        return 1

    @numba.njit("int64(int64[::1], int64)", nogil=True)
    def serve(ctl, polls):
        """The helper's loop: run posted tasks; 0 after `polls` idle polls, 1 on STOP."""
        idle = 0
        while idle < polls:
            state = load(ctl, STATE)
            if state == POSTED:
                if swap(ctl, STATE, POSTED, RUNNING) == POSTED:
                    c = ctl[TASK:]
                    if c[KIND] == F44:
                        split, t = c[20], c[6]
                        phase44(c, 0, split, t, 0, 0, c[22])
                        arrive(ctl, 2)
                        phase44(c, 1, 0, 0, 18, 36, 0)
                        arrive(ctl, 4)
                        phase44(c, 2, split, t, 0, 0, c[22])
                    else:
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
        c[KIND] = F43
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
    done.serve, done.paired, done.paired44 = serve, paired, paired44
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
    return _go()


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
            _state["skip"] = AUTO_BACKOFF if _enabled["watch"] else BACKOFF    # awake, yet too late: it did not get a core
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


def applies44(x, filters, bias, tile_rows):
    """Whether one image's F(4x4, 3x3) layer can run paired: one float32 image (C-contiguous,
    as filters and bias), at least
    MIN_TILES rows of tiles to split, two workers or more, and the helper `ready`."""
    if not (_enabled["on"] and x.dtype == np.float32 and tile_rows >= MIN_TILES
            and filters.flags.c_contiguous and bias.flags.c_contiguous
            and runtime.threads() >= 2 and ready()):
        return False
    return _go()


def scratch44(th, tw, d, k):
    """Floats one thread's share of an F(4x4, 3x3) layer needs, for `phase44`: its input pass's
    wide (6, 4T_h + 2, T_w*D), its output pass's tall (4, 6, T_w*K) and row (2, 4, T_w*K), one
    after the other (sized for all T_h rows)."""
    return 6 * (4 * th + 2) * tw * d + 32 * tw * k


def winograd44_forward(layer, x, filters, b, relu):
    """`layer.run` (a `winograd_f44.OneImage`) of one float32 image on two threads, the same
    bits; None when the helper is in use by another caller (run unpaired then).
    x (1, H, W, D), filters (36, D, K) and b (K,): float32, C-contiguous."""
    if not _lock.acquire(blocking=False):
        return None
    try:
        kernels, ctl, event = _state["kernels"], _state["ctl"], _state["event"]
        out = runtime.empty(layer.shape, np.float32)
        task = layer.pair_task()
        task[18] = relu
        asleep = bool(ctl[SLEEPING])
        if asleep:
            event.set()
        if not kernels.paired44(ctl, task, not asleep, x, out, filters, b) and not asleep:
            _state["skip"] = AUTO_BACKOFF if _enabled["watch"] else BACKOFF
        return out
    finally:
        _lock.release()
