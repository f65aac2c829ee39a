"""The second core for one image: a helper thread that takes half of a layer in microseconds.

A batch of one image has no chunks to share between the worker threads, and handing half a
layer to the thread pool costs ~30 us of futex wake-ups plus GIL traffic against ~100-250 us of
work (docs/benchmarks.md, "Batch 1"). Here the hand-over never touches Python or the GIL:

* the helper thread waits in compiled code (numba, no GIL), spinning on one word of a shared
  control array for a while after each task, then sleeping (futex(2), still in compiled code);
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
max pool where the layer pools), the helper the rest. An FC of one image (`fc.fc_infer`) is
split by columns of its output (`fc_forward`: each column's sum is `compiled.fc_one`'s, in the
same order), a thin first layer (`conv.direct`) by rows of its output (`direct_forward`:
`compiled.direct_conv` on each half's rows): one step each, so no barrier, and the same bits.

After SPIN_SECONDS without a task the helper sleeps on futex(2) (Linux; an Event elsewhere),
and the caller's compiled call wakes it: neither side needs the GIL, so a woken helper polls
again a few microseconds later, whatever the caller's Python is doing.

Used by `conv.conv_infer` (inference, `Net.prepare()`) for F(4, 3) and direct layers, by
`fc.fc_infer` and by `winograd_f44.OneImage` for F(4x4, 3x3) ones, at batch 1 in float32 when
there are two or more workers and numba is installed, and when turned on: SLIDENET_PAIR=1 or
`set_enabled(True)` (always, but for a back-off after a miss), or SLIDENET_PAIR=auto /
`set_enabled("auto")`: also only while the machine has a core to spare (`ops.idle.SpareCore`:
other processes' CPU time, sampled every quarter second), so that a busy machine runs
unpaired. Off by default (SLIDENET_PAIR=0): on a quiet machine "auto" and off measured alike
against onnxruntime (docs/benchmarks.md, "Batch 1 on two threads"); "Batch 1 on two cores,
round 2" measured it faster in a quiet minute and says what a quiet machine's rerun must show
before "auto" is the default.
The compiled side lives in `pair_kernels` (imported when the helper starts): numba caches it on
disk, the GEMM being called by an address in the control array, so only the first
process on a machine compiles it (seconds of CPU, docs/benchmarks.md); the next ones load it in
a fraction of a second, in the helper thread, which starts only after `START_AFTER` one-image
layers.
"""
import atexit
import ctypes
import os
import threading

import numpy as np

from slidenet.ops import blas, compiled, idle, runtime, stacked, vdirect

# Control array slots (int64).
STATE, SLEEPING, TAKEN_BY_HELPER, ARRIVED, FUTEX, GEMM, GEMM_WIDE = 0, 1, 2, 3, 4, 5, 6
TASK = 8                        # the task's description starts here
SLOTS = 64
KIND = 40                       # in the task: what kind of layer it is
F43, F44, FC, DIRECT = 0, 1, 2, 3
# The direct convolutions the helper runs (`compiled.direct_conv` is compiled per window and
# stride): (F_h, F_w, D, S_h, S_w) -> the code `pair_kernels.direct_rows` knows it by. An RGB
# and a grey first layer's 3x3 window at stride 1.
DIRECT_SHAPES = {(3, 3, 3, 1, 1): 0, (3, 3, 1, 1, 1): 1}
IDLE, POSTED, RUNNING, DONE, STOP, HUSH = 0, 1, 2, 3, 4, 5
# futex(2)'s system call number, by machine, for a helper that sleeps and wakes without the GIL
# (`pair_kernels.serve`); elsewhere it sleeps on a `threading.Event`.
SYS_FUTEX = {"x86_64": 202, "aarch64": 98}
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
# quiet is a moment's descheduling: the helper keeps polling (it is not told to sleep), and
# the back-off is a layer or two.
AUTO_BACKOFF = 2

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
    """Pair one-image F(4, 3), F(4x4, 3x3), direct and FC layers: True (always, but for
    `BACKOFF` after a miss), "auto" (also only while the machine has a core to spare:
    `idle.SpareCore`) or False. Returns the previous setting."""
    previous = "auto" if _enabled["on"] and _enabled["watch"] else _enabled["on"]
    _enabled["on"] = bool(flag)
    _enabled["watch"] = flag == "auto"
    return previous


# What became of the layers that could pair, since the process started (for benchmarks,
# `scripts/batch1_steps.py`): paired (the helper ran its share), missed (awake, yet it had not
# taken its share when the caller finished its first step: the caller ran all of it), woke
# (it was asleep: woken, the caller ran this one alone), backoff (not tried: in the back-off
# after a miss), busy (not tried: "auto" saw no core to spare).
counts = dict.fromkeys(("paired", "missed", "woke", "backoff", "busy"), 0)


def _go():
    """Whether this layer may pair: not in a back-off after a miss, and, with "auto", a core to
    spare on the machine."""
    if _state["skip"]:
        _state["skip"] -= 1
        counts["backoff"] += 1
        return False
    if _enabled["watch"]:
        if _state["spare"] is None:
            _state["spare"] = idle.SpareCore(runtime.available_cores_cached())
        if not _state["spare"].allow():
            counts["busy"] += 1
            return False
    return True


def _after(code):
    """Count a paired call's outcome (`pair_kernels`' MISSED 0, PAIRED 1, WOKE 2); after a miss
    (the helper awake, yet too late: it did not get a core), the back-off."""
    if code == 1:
        counts["paired"] += 1
    elif code == 2:
        counts["woke"] += 1
    else:
        counts["missed"] += 1
        _state["skip"] = AUTO_BACKOFF if _enabled["watch"] else BACKOFF


def enabled():
    """Whether one-image layers may be paired (`set_enabled`, SLIDENET_PAIR): True for "auto"
    too."""
    return _enabled["on"]


def ready(start_after=START_AFTER):
    """Whether the helper is compiled and running. The `start_after`th call starts it: it
    loads its kernels from numba's disk cache (or compiles them, seconds, in the first process)
    in the background, and until then every call runs unpaired, so no prediction waits."""
    if _state["pid"] != os.getpid():                # not started, or a forked child
        _state["seen"] += 1
        if _state["seen"] < start_after:
            return False
        with _start:
            if _state["pid"] != os.getpid():
                ctl, event = np.zeros(SLOTS, np.int64), threading.Event()
                ctl[FUTEX] = _futex_number()
                ctl[GEMM] = ctl[GEMM_WIDE] = 0          # set once the kernels are built
                _state.update(ctl=ctl, event=event, kernels=None, error=None, pid=os.getpid())
                _state["thread"] = threading.Thread(target=_helper, args=(ctl, event),
                                                    name="slidenet-pair", daemon=True)
                _state["thread"].start()
                atexit.register(_stop, ctl, event, _state["thread"])
    return _state["kernels"] is not None


def _compile():
    """The compiled kernels (`pair_kernels`, loaded from numba's disk cache after the first
    process) and the GEMM they take."""
    fast, gemm = compiled.kernels(np.zeros(1, np.float32)), blas.sgemm()
    if fast is None or gemm is None:
        raise RuntimeError("numba or NumPy's OpenBLAS is missing")
    from slidenet.ops.conv import pair_kernels
    kernels = pair_kernels.build(fast)
    # Where the kernels find the GEMM: its address, and whether its sizes are 64-bit integers.
    kernels.gemm = _address(gemm)
    return kernels


def _address(gemm):
    """Where the kernels find a GEMM (a ctypes function with cblas_sgemm's arguments): its
    address, and whether its sizes are 64-bit integers."""
    return ctypes.cast(gemm, ctypes.c_void_p).value, int(gemm.argtypes[3] is ctypes.c_int64)


def _futex_number():
    """SYS_futex here, or 0 where the helper must sleep on an Event (not Linux, another
    machine, a big-endian one: the futex word is the low half of an int64 slot)."""
    import platform
    import sys
    if not sys.platform.startswith("linux") or sys.byteorder != "little" \
            or os.environ.get("SLIDENET_PAIR_FUTEX", "1") == "0":
        return 0
    return SYS_FUTEX.get(platform.machine(), 0)


def _stop(ctl, event, thread):
    """At exit, before the interpreter frees anything: the helper told to return (woken if it
    sleeps), and joined, so it never polls memory that is being freed."""
    ctl[STATE] = STOP
    kernels = _state["kernels"]
    if kernels is not None:
        kernels.wake(ctl)
    event.set()
    thread.join(1.0)


def _run(call, *args):
    """Make a caller's compiled call (`pair_kernels.paired*`, which posts the task and wakes a
    sleeping helper itself) and count its outcome."""
    kernels, ctl = _state["kernels"], _state["ctl"]
    # With "auto" a miss is a moment's descheduling: the helper keeps polling.
    code = call(ctl, not _enabled["watch"], *args)
    if code == 2 and not ctl[FUTEX]:
        _state["event"].set()           # no futex(2): it sleeps in Python
    _after(code)


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
    ctl[GEMM], ctl[GEMM_WIDE] = kernels.gemm
    _state["kernels"] = kernels
    while True:
        if kernels.serve(ctl, polls) == 1:
            return
        event.clear()
        ctl[SLEEPING] = 1
        if ctl[STATE] == POSTED:            # posted while we were deciding to sleep
            ctl[SLEEPING] = 0
            continue
        event.wait()                # `serve` sets ctl[SLEEPING] to 0 ("polling") when it starts


def applies(x, out_h, filters):
    """Whether a batch of x can run paired: one float32 image, F(4, 3) tiles to split, two
    workers or more, the compiled kernels, and the helper `ready`."""
    if not (_enabled["on"] and x.shape[0] == 1 and x.dtype == np.float32
            and filters.dtype == np.float32
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
        kernels = _state["kernels"]
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
        ctl = _state["ctl"]
        ctl[GEMM], ctl[GEMM_WIDE] = kernels.gemm    # the unpaired F(4, 3)'s: np.matmul's
        _run(kernels.paired, task)
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
        kernels = _state["kernels"]
        out = runtime.empty(layer.shape, np.float32)
        task = layer.pair_task()
        task[18] = relu
        # The products' GEMM is the one the unpaired layer's `stacked.matmul` calls (vgemm's
        # where it applies), so both threads' products are its bits.
        gemm = stacked.gemm_of(layer.vm, filters, layer.pm)
        ctl = _state["ctl"]
        ctl[GEMM], ctl[GEMM_WIDE] = kernels.gemm if gemm is None else _address(gemm)
        _run(kernels.paired44, task, x, out, filters, b)
        return out
    finally:
        _lock.release()


# An FC of fewer multiply-adds than this (R1's fc2: 2,560) is not worth a hand-over.
FC_MIN_WORK = 1 << 16


def _may_pair():
    """The conditions every paired layer shares: turned on, two workers or more, the helper
    `ready`, and `_go`."""
    return _enabled["on"] and runtime.threads() >= 2 and ready() and _go()


def fc_forward(x, w, b, relu):
    """One float32 image's FC (`fc.fc_infer`'s `compiled.fc_one`) on two threads, by columns
    of the output, the same bits; None where it does not apply or the helper is in use by
    another caller (run unpaired then). x (1, I), w (I, O), b (O,) -> (1, O)."""
    if not (x.shape[0] == 1 and x.dtype == w.dtype == b.dtype == np.float32
            and w.shape[1] >= 32 and w.size >= FC_MIN_WORK and x.flags.c_contiguous
            and w.flags.c_contiguous and b.flags.c_contiguous and _may_pair()):
        return None
    if not _lock.acquire(blocking=False):
        return None
    try:
        kernels = _state["kernels"]
        out = np.empty((1, w.shape[1]), np.float32)
        _run(kernels.paired_fc, x.reshape(-1), w, b, bool(relu), out.reshape(-1))
        return out
    finally:
        _lock.release()


def direct_forward(x, w, b, pad, relu):
    """One float32 image's direct convolution (`conv.direct`, stride 1, a window of
    DIRECT_SHAPES) on two threads, by rows of the output, the same bits; None where it does
    not apply or the helper is in use by another caller (run unpaired then).
    x (1, H, W, D), w (F_h, F_w, D, K), b (K,), pad (P_h, P_w) -> (1, H', W', K)."""
    fh, fw, d, k = w.shape
    code = DIRECT_SHAPES.get((fh, fw, d, 1, 1))
    if not (code is not None and x.ndim == 4 and x.shape[0] == 1 and x.shape[3] == d
            and x.dtype == w.dtype == b.dtype == np.float32 and w.flags.c_contiguous
            and b.flags.c_contiguous and x.shape[1] + 2 * pad[0] - fh + 1 >= 4
            and x.shape[2] + 2 * pad[1] - fw + 1 >= 1 and _may_pair()):
        return None
    if not _lock.acquire(blocking=False):
        return None
    try:
        kernels = _state["kernels"]
        _, h, wd, _ = x.shape
        (ph, pw) = pad
        xp, inner = runtime.bordered("pair.direct", (1, h + 2 * ph, wd + 2 * pw, d), x.dtype,
                                     (ph, ph, pw, pw))
        inner[...] = x
        out = runtime.empty((1, h + 2 * ph - fh + 1, wd + 2 * pw - fw + 1, k), np.float32)
        # The kernel the unpaired path runs (`conv.direct`): `vdirect`'s where it has one.
        vector = vdirect.kernel(fh, fw, d, 1, 1, k)
        entry = vdirect.address(vector) if vector is not None else 0
        _run(kernels.paired_direct, xp, w, b, out, bool(relu), code, entry)
        return out
    finally:
        _lock.release()
