"""`pair`'s compiled side: the helper's loop, the caller's calls, and the shares they run.

Imported only when `pair` starts its helper (it imports numba). Every kernel here is compiled
by numba without the GIL and cached on disk (`compiled.jit`'s rule: where a cache can be
written), so a process after the first loads them instead of compiling for seconds. What kept
the first version from the cache was the GEMM: it called NumPy's BLAS through an address held
as a global. Here, as in `conv.winograd_block` (`blas.GemmKernel`), the ctypes function
`blas.sgemm()` is an argument of each kernel, a pointer passed at each call; the passes they
call (`compiled`'s) are this module's globals, set by `build` before anything compiles.

The control array `ctl` (int64, `pair.SLOTS`) is shared by the two threads and read and
written with atomic operations (`load`, `store`, `swap`, `add`: LLVM's, sequentially
consistent); the task's description starts at `pair.TASK`. `pair` documents the protocol:
`serve` is the helper's loop, `paired` (F(4, 3)) and `paired44` (F(4x4, 3x3)) the caller's one
call per layer, each with its share and the taking back of a late helper's.
"""
import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from slidenet.ops import compiled
from slidenet.ops.conv.pair import (
    ARRIVED, DONE, F43, F44, HUSH, IDLE, KIND, POSTED, RUNNING, STATE, STOP, TAKEN_BY_HELPER,
    TASK)


def _slot(context, builder, sig, args):
    ary = context.make_array(sig.args[0])(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1]])


@intrinsic
def load(typingctx, arr, idx):
    """arr[idx], read atomically."""
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_slot(context, builder, sig, args), "seq_cst", 8)
    return types.int64(arr, idx), codegen


@intrinsic
def store(typingctx, arr, idx, value):
    """arr[idx] = value, written atomically."""
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
def add(typingctx, arr, idx, value):
    """Atomic fetch-and-add; returns the value before."""
    def codegen(context, builder, sig, args):
        return builder.atomic_rmw("add", _slot(context, builder, sig, args), args[2], "seq_cst")
    return types.int64(arr, idx, value), codegen


@intrinsic
def pointer(typingctx, address):
    """An int64 address as a pointer, for `numba.carray` and the GEMM."""
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())
    return types.voidptr(address), codegen


# `compiled`'s passes, set by `build` before the kernels below compile (numba reads a
# function's globals when it compiles it; a closure's would keep it from the disk cache).
_rows = _output = _input44 = _output44 = _output44_pool = None
f32 = np.float32


def arrive(ctl, count):
    """A barrier of the two threads: the `count`th arrival of the task."""
    add(ctl, ARRIVED, 1)
    while load(ctl, ARRIVED) < count:
        pass


def phase(gemm, c, step, t0, t1, a0, a1):
    """One thread's share of step 0 (row sets of tiles t0..t1), 1 (products a0..a1) or 2
    (output rows of tiles t0..t1) of F(4, 3) on one image. c: the task's description; gemm:
    `blas.sgemm`."""
    xp, hp, wp, d, fw, g, k, bias = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
    out, ho, wo, t, buf_r, buf_p = c[10], c[11], c[12], c[13], c[14], c[15]
    kk = fw * d
    m = t * wo
    r = numba.carray(pointer(buf_r), (6, 1, t, wo, kk), f32)
    p = numba.carray(pointer(buf_p), (6, 1, t, wo, k), f32)
    if step == 0:
        _rows(numba.carray(pointer(xp), (1, hp, wp, d), f32), fw, r, t0, t1)
    elif step == 1:
        for a in range(a0, a1):         # the very calls np.matmul makes: the same bits
            gemm(101, 111, 111, m, k, kk, f32(1.0), pointer(buf_r + a * m * kk * 4), kk,
                 pointer(g + a * kk * k * 4), k, f32(0.0), pointer(buf_p + a * m * k * 4), k)
    else:
        o = numba.carray(pointer(out), (1, ho, wo, k), f32)
        b = numba.carray(pointer(bias), (k,), f32)
        # No skip: an array that is not o stands in (see `winograd_f43.output`).
        _output(p, o, b, c[8] != 0, c[9] != 0, p[0, :1, :1], False, t0, t1)


def phase44(gemm, c, step, t0, t1, a0, a1, scratch):
    """One thread's share of F(4x4, 3x3) on one image: step 0 the input pass over the rows of
    tiles t0..t1, 1 the products a0..a1 of the 36, 2 the output pass (with the pool, if the
    layer has one) over rows of tiles t0..t1. c: the task (`winograd_f44.OneImage.pair_task`);
    scratch: this thread's wide, tall and row, one after the other."""
    h, wd, d, th, tw, k = c[1], c[2], c[3], c[6], c[7], c[13]
    vstride, pstride, rows = c[9], c[11], c[6] * c[7]
    if step == 1:
        for a in range(a0, a1):         # the very calls np.matmul makes: the same bits
            gemm(101, 111, 111, rows, k, d, f32(1.0), pointer(c[8] + a * vstride * 4), d,
                 pointer(c[12] + a * d * k * 4), k, f32(0.0),
                 pointer(c[10] + a * pstride * 4), k)
        return
    bt = t1 - t0
    if bt <= 0:
        return
    x = numba.carray(pointer(c[0]), (1, h, wd, d), f32)
    if step == 0:
        wide = numba.carray(pointer(scratch), (6, 4 * bt + 2, tw * d), f32)
        # Planes as C-contiguous rows from this band's first tile on (a sliced view would not
        # vectorise): the last plane's rows then reach past vstride, into room the caller
        # left after the planes (`winograd_f44.OneImage`).
        v = numba.carray(pointer(c[8] + t0 * tw * d * 4), (36, vstride), f32)
        _input44(x, c[4], c[5], t0, bt, tw, wide, v)
        return
    at = scratch + 6 * (4 * th + 2) * tw * d * 4
    tall = numba.carray(pointer(at), (4, 6, tw * k), f32)
    row = numba.carray(pointer(at + 24 * tw * k * 4), (2, 4, tw * k), f32)
    m = numba.carray(pointer(c[10] + t0 * tw * k * 4), (36, pstride), f32)   # as v
    out = numba.carray(pointer(c[14]), (1, c[15], c[16], k), f32)
    bias = numba.carray(pointer(c[17]), (k,), f32)
    if c[19] != 0:
        _output44_pool(m, t0, bt, tw, out, bias, True, c[18] != 0, tall, row)
    else:                               # no skip: x stands in, never read
        _output44(m, t0, bt, tw, out, bias, True, c[18] != 0, x, False)


def helper_share(gemm, ctl):
    """The helper's share of the posted task (its kind in `ctl[TASK + KIND]`)."""
    c = ctl[TASK:]
    if c[KIND] == F44:
        split, t = c[20], c[6]
        phase44(gemm, c, 0, split, t, 0, 0, c[22])
        arrive(ctl, 2)
        phase44(gemm, c, 1, 0, 0, 18, 36, 0)
        arrive(ctl, 4)
        phase44(gemm, c, 2, split, t, 0, 0, c[22])
    elif c[KIND] == F43:
        split, t = c[16], c[13]
        phase(gemm, c, 0, split, t, 0, 0)
        arrive(ctl, 2)
        phase(gemm, c, 1, 0, 0, 3, 6)
        arrive(ctl, 4)
        phase(gemm, c, 2, split, t, 0, 0)


def serve(ctl, polls, gemm):
    """The helper's loop: run posted tasks; 0 after `polls` idle polls (or when told to hush),
    1 on STOP."""
    idle = 0
    while idle < polls:
        state = load(ctl, STATE)
        if state == POSTED:
            if swap(ctl, STATE, POSTED, RUNNING) == POSTED:
                helper_share(gemm, ctl)
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


def post(ctl, task, kind):
    """The caller: the task into the control array, then the word that posts it."""
    c = ctl[TASK:]
    c[:len(task)] = task
    c[KIND] = kind
    store(ctl, ARRIVED, 0)
    swap(ctl, STATE, HUSH, IDLE)        # a helper that has not seen its HUSH yet
    store(ctl, STATE, POSTED)
    return c


def taken_back(ctl):
    """The caller, after its first step: True if the helper had not taken the task, which is
    then the caller's alone."""
    return load(ctl, STATE) == POSTED and swap(ctl, STATE, POSTED, IDLE) == POSTED


def finish(ctl):
    """The caller, after its share: wait for the helper's."""
    while load(ctl, STATE) != DONE:
        pass
    store(ctl, STATE, IDLE)


def paired(ctl, task, hush, gemm):
    """Run an F(4, 3) task (its description in `task`) on both threads: tiles 0..split and
    products 0..2 here, the rest on the helper, or here too if it never took them. Returns 1 if
    the helper ran its share; if not, and `hush`, it is told to sleep."""
    c = post(ctl, task, F43)
    split, t = task[16], task[13]
    phase(gemm, c, 0, 0, split, 0, 0)
    if taken_back(ctl):
        phase(gemm, c, 0, split, t, 0, 0)   # the helper is late: all of it here
        phase(gemm, c, 1, 0, 0, 0, 6)
        phase(gemm, c, 2, 0, t, 0, 0)
        if hush:
            store(ctl, STATE, HUSH)
        return 0
    arrive(ctl, 2)
    phase(gemm, c, 1, 0, 0, 0, 3)
    arrive(ctl, 4)
    phase(gemm, c, 2, 0, split, 0, 0)
    finish(ctl)
    return 1


def paired44(ctl, task, hush, x, out, filters, bias, gemm):
    """`paired` for an F(4x4, 3x3) task: rows of tiles 0..split and products 0..17 here, the
    rest on the helper, or here too if it never took them. The task's arrays of this call (x,
    out, filters, bias) are written into it here: their addresses cost microseconds each to
    read in Python."""
    task[0], task[14] = x.ctypes.data, out.ctypes.data
    task[12], task[17] = filters.ctypes.data, bias.ctypes.data
    c = post(ctl, task, F44)
    split, t, mine = task[20], task[6], task[21]
    phase44(gemm, c, 0, 0, split, 0, 0, mine)
    if taken_back(ctl):
        phase44(gemm, c, 0, split, t, 0, 0, mine)   # the helper is late: all of it here
        phase44(gemm, c, 1, 0, 0, 0, 36, mine)
        phase44(gemm, c, 2, 0, t, 0, 0, mine)
        if hush:
            store(ctl, STATE, HUSH)
        return 0
    arrive(ctl, 2)
    phase44(gemm, c, 1, 0, 0, 0, 18, mine)
    arrive(ctl, 4)
    phase44(gemm, c, 2, 0, split, 0, 0, mine)
    finish(ctl)
    return 1


class Kernels:
    """What `build` returns: serve, paired, paired44, compiled for `gemm`'s type."""


def _jit(fn, signature=None):
    """`compiled.jit`, for a signature too (compiled now, in the thread that asks)."""
    if signature is None:
        return compiled.jit(fn)
    try:
        return numba.njit(signature, nogil=True, cache=True)(fn)
    except RuntimeError:                        # nowhere to write the cache: compile each run
        return numba.njit(signature, nogil=True)(fn)


_built = []


def build(fast, gemm):
    """The kernels, compiled (or loaded from the disk cache) now, with `fast`'s passes; gemm:
    `blas.sgemm()`, whose ctypes type is part of their signatures. Once per process (a forked
    child's helper takes its parent's)."""
    if _built:
        return _built[0]
    global _rows, _output, _input44, _output44, _output44_pool
    global arrive, phase, phase44, helper_share, post, taken_back, finish
    _rows, _output = fast.winograd4_rows_of, fast.winograd4_output_of
    _input44, _output44 = fast.winograd44_input, fast.winograd44_output
    _output44_pool = fast.winograd44_output_pool
    arrive, phase, phase44 = _jit(arrive), _jit(phase), _jit(phase44)
    helper_share, post = _jit(helper_share), _jit(post)
    taken_back, finish = _jit(taken_back), _jit(finish)
    g = numba.typeof(gemm)
    ints, images = types.int64[::1], types.float32[:, :, :, ::1]
    done = Kernels()
    done.serve = _jit(serve, types.int64(ints, types.int64, g))
    done.paired = _jit(paired, types.int64(ints, ints, types.boolean, g))
    done.paired44 = _jit(paired44, types.int64(ints, ints, types.boolean, images, images,
                                               types.float32[:, :, ::1], types.float32[::1], g))
    _built.append(done)
    return done
