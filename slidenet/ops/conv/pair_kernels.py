"""`pair`'s compiled side: the helper's loop, the caller's calls, and the shares they run.

Imported only when `pair` starts its helper (it imports numba). Every kernel here is compiled
by numba without the GIL and cached on disk (`compiled.jit`'s rule: where a cache can be
written), so a process after the first loads them instead of compiling for seconds. What kept
the first version from the cache was the GEMM: it called NumPy's BLAS through an address held
as a global. Here the function's address (`blas.sgemm()`, found and checked in each process)
is a number in the control array, `ctl[pair.GEMM]`, called through `sgemm_at`: no constant in
the compiled code, and no ctypes argument, which numba would type at each call (about a
microsecond). The passes the kernels call (`compiled`'s) are this module's globals, set by
`build` before anything compiles. numba checks a cached kernel against its own source file
alone, not against the files of the kernels it calls, so `build` also records which
compiled.py the cache was made with and empties it when that changes (`_refresh`).

The control array `ctl` (int64, `pair.SLOTS`) is shared by the two threads and read and
written with atomic operations (`load`, `store`, `swap`, `add`: LLVM's, sequentially
consistent); the task's description starts at `pair.TASK`. `pair` documents the protocol:
`serve` is the helper's loop, `paired` (F(4, 3)), `paired44` (F(4x4, 3x3)), `paired_fc` (an
FC, by columns) and `paired_direct` (a thin first layer, by output rows) the caller's one call
per layer, each with its share and the taking back of a late helper's.
"""
import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from slidenet.ops import compiled
from slidenet.ops.conv.pair import (
    ARRIVED, DIRECT, DONE, F43, F44, FC, FUTEX, GEMM, GEMM_WIDE, HUSH, IDLE, KIND, POSTED,
    RUNNING, SLEEPING, STATE, STOP, TAKEN_BY_HELPER, TASK)

# How many times the caller of a one-step task (an FC, a direct layer) looks for the helper to
# take it before running it alone (`waited`): about a microsecond.
GRACE = 250
# ctl[SLEEPING]: 0 polling, 1 asleep, WAKING woken by the caller and not yet polling.
WAKING = 2
# futex(2)'s operations on a word only this process uses.
FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 128, 129
# The caller's answers: the helper ran its share, or missed it (awake, yet late), or was
# asleep (woken now; this layer ran on the caller alone).
MISSED, PAIRED, WOKE = 0, 1, 2


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
def futex(typingctx, number, arr, idx, op, value):
    """syscall(number, &arr[idx], op, value, NULL): futex(2) on the 32 bits at arr[idx]'s
    address (its low half on a little-endian machine); number: SYS_futex on this machine."""
    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        ary = context.make_array(sig.args[1])(context, builder, args[1])
        word = cgutils.get_item_pointer(context, builder, sig.args[1], ary, [args[2]])
        call = cgutils.get_or_insert_function(builder.module,
                                              ir.FunctionType(i64, [i64], var_arg=True),
                                              "syscall")
        return builder.call(call, [args[0], builder.ptrtoint(word, i64), args[3], args[4],
                                   ir.Constant(i64, 0)])
    return types.int64(number, arr, idx, op, value), codegen


@intrinsic
def sgemm_at(typingctx, address, wide, m, n, k, a, lda, b, ldb, c, ldc):
    """cblas_sgemm(row-major, no transposes, m, n, k, 1, a, lda, b, ldb, 0, c, ldc), called at
    `address` (`blas.sgemm()`'s function), with 64-bit integer sizes where `wide` is not 0,
    else 32-bit ones: a call by address, so the kernels that make it cache on disk and take
    no ctypes argument (numba types one at every call, about a microsecond)."""
    def codegen(context, builder, sig, args):
        i32, i64, real = ir.IntType(32), ir.IntType(64), ir.FloatType()
        void_p = ir.IntType(8).as_pointer()
        sizes = [context.cast(builder, args[i], sig.args[i], types.int64)
                 for i in (2, 3, 4, 6, 8, 10)]
        head = [ir.Constant(i32, 101), ir.Constant(i32, 111), ir.Constant(i32, 111)]
        one, zero = ir.Constant(real, 1.0), ir.Constant(real, 0.0)
        address = context.cast(builder, args[0], sig.args[0], types.int64)
        is_wide = builder.icmp_signed("!=", context.cast(builder, args[1], sig.args[1],
                                                         types.int64), ir.Constant(i64, 0))
        with builder.if_else(is_wide) as (then, otherwise):
            for block, width in ((then, i64), (otherwise, i32)):
                with block:
                    m_, n_, k_, lda_, ldb_, ldc_ = [v if width is i64 else builder.trunc(v, i32)
                                                    for v in sizes]
                    fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, width, width, width,
                                                           real, void_p, width, void_p, width,
                                                           real, void_p, width])
                    builder.call(builder.inttoptr(address, fnty.as_pointer()),
                                 head + [m_, n_, k_, one, args[5], lda_, args[7], ldb_, zero,
                                         args[9], ldc_])
        return context.get_dummy_value()
    return types.void(address, wide, m, n, k, a, lda, b, ldb, c, ldc), codegen


@intrinsic
def pointer(typingctx, address):
    """An int64 address as a pointer, for `numba.carray` and the GEMM."""
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())
    return types.voidptr(address), codegen


# `compiled`'s passes, set by `build` before the kernels below compile (numba reads a
# function's globals when it compiles it; a closure's would keep it from the disk cache).
_rows = _output = _input44 = _output44 = _output44_pool = _direct = _vdirect = None
f32 = np.float32


def arrive(ctl, count):
    """A barrier of the two threads: the `count`th arrival of the task."""
    add(ctl, ARRIVED, 1)
    while load(ctl, ARRIVED) < count:
        pass


def phase(gemm, c, step, t0, t1, a0, a1):
    """One thread's share of step 0 (row sets of tiles t0..t1), 1 (products a0..a1) or 2
    (output rows of tiles t0..t1) of F(4, 3) on one image. c: the task's description; gemm:
    (address, wide) of `blas.sgemm()` (`sgemm_at`)."""
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
            sgemm_at(gemm[0], gemm[1], m, k, kk, pointer(buf_r + a * m * kk * 4), kk,
                     pointer(g + a * kk * k * 4), k, pointer(buf_p + a * m * k * 4), k)
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
            sgemm_at(gemm[0], gemm[1], rows, k, d, pointer(c[8] + a * vstride * 4), d,
                     pointer(c[12] + a * d * k * 4), k, pointer(c[10] + a * pstride * 4), k)
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


def fc_columns(c, c0, c1):
    """One thread's share of one image's FC (`compiled.fc_one`'s arithmetic, for its columns
    c0..c1 of the output): the same sums, in the same order, so the same bits. c: the task,
    x (I,), w (I, O), b (O,), out (O,) at c[0..3], I and O at c[4], c[5], relu at c[6]."""
    n_in, n_out, width = c[4], c[5], c1 - c0
    x = numba.carray(pointer(c[0]), (n_in,), f32)
    # W, b and out from column c0 on, indexed from 0: an index known not to be negative lets
    # the compiler vectorise (c0 + j would need numba's check for negative indices). W's view
    # is declared n_out wide, as W, so its rows lie where W's do; only width columns are read.
    w = numba.carray(pointer(c[1] + c0 * 4), (n_in, n_out), f32)
    b = numba.carray(pointer(c[2] + c0 * 4), (width,), f32)
    out = numba.carray(pointer(c[3] + c0 * 4), (width,), f32)
    relu = c[6] != 0
    zero = f32(0)
    acc = np.empty(width, f32)          # its own array: the compiler need not fear aliasing
    for j in range(width):
        acc[j] = zero
    for r in range(n_in):
        v = x[r]
        if v != zero:
            for j in range(width):
                acc[j] += v * w[r, j]
    for j in range(width):
        s = acc[j] + b[j]
        if relu and s < zero:
            s = zero
        out[j] = s


def direct_rows(c, i0, i1):
    """One thread's share of one image's direct convolution (`compiled.direct_conv`, called
    on its output rows i0..i1 and the input rows they read): each pixel's sums are the
    one-thread call's. c: the task, xp (1, H_p, W_p, D), w (F_h, F_w, D, K), bias (K,), out
    (1, H', W', K) at c[0..3], H_p, W_p, D, H', W', K at c[4..9], relu at c[10], the window's
    code (`pair.DIRECT_SHAPES`) at c[11], `vdirect`'s kernel's address at c[13] (0: numba's
    `compiled.direct_conv`, else that kernel, as the unpaired path chooses); stride 1."""
    if i1 <= i0:
        return
    wp, d, wo, k = c[5], c[6], c[8], c[9]
    code = c[11]
    fh = 3
    xb = numba.carray(pointer(c[0] + i0 * wp * d * 4), (1, i1 - i0 + fh - 1, wp, d), f32)
    ob = numba.carray(pointer(c[3] + i0 * wo * k * 4), (1, i1 - i0, wo, k), f32)
    bias = numba.carray(pointer(c[2]), (k,), f32)
    relu = c[10] != 0
    if c[13] != 0:                      # the unpaired path's kernel on 512-bit registers
        _vdirect(c[13], c[0] + i0 * wp * d * 4, c[1], c[2], c[3] + i0 * wo * k * 4, 1, c[4],
                 wp, i1 - i0, wo, k, relu)
    elif code == 0:
        w = numba.carray(pointer(c[1]), (3, 3, 3, k), f32)
        _direct(xb, w, bias, (0, 0, 0), (0, 0, 0), (0, 0, 0), (0,), (0,), relu, ob)
    else:
        w = numba.carray(pointer(c[1]), (3, 3, 1, k), f32)
        _direct(xb, w, bias, (0, 0, 0), (0, 0, 0), (0,), (0,), (0,), relu, ob)


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
    elif c[KIND] == FC:
        fc_columns(c, c[7], c[5])
    else:
        direct_rows(c, c[12], c[7])


def serve(ctl, polls):
    """The helper's loop: run posted tasks; after `polls` idle polls (or when told to hush),
    sleep. Returns 1 on STOP; 0 to sleep in Python (where ctl[FUTEX] is 0: no futex(2)).

    Asleep here, on futex(2) with the word ctl[SLEEPING] = 1, the helper needs no GIL to wake:
    the caller's `wake` sets the word to 0 and wakes it from compiled code, and it goes
    straight back to polling."""
    store(ctl, SLEEPING, 0)             # polling: a task posted from now on is seen
    while True:
        idle = 0
        while idle < polls:
            state = load(ctl, STATE)
            if state == POSTED:
                if swap(ctl, STATE, POSTED, RUNNING) == POSTED:
                    helper_share((ctl[GEMM], ctl[GEMM_WIDE]), ctl)
                    store(ctl, TAKEN_BY_HELPER, load(ctl, TAKEN_BY_HELPER) + 1)
                    store(ctl, STATE, DONE)
                    idle = 0
                    continue
            elif state == STOP:
                return 1
            elif state == HUSH:         # the caller gave up on us for a while: sleep
                swap(ctl, STATE, HUSH, IDLE)
                break
            idle += 1
        number = ctl[FUTEX]
        if number == 0:
            return 0
        store(ctl, SLEEPING, 1)
        # A task posted (or STOP) before the word said so: the caller saw us awake.
        state = load(ctl, STATE)
        if state == POSTED or state == STOP:
            store(ctl, SLEEPING, 0)
            continue
        while load(ctl, SLEEPING) == 1:
            futex(number, ctl, SLEEPING, FUTEX_WAIT_PRIVATE, 1)
        store(ctl, SLEEPING, 0)


def wake(ctl):
    """The caller, after posting: wake a sleeping helper (it takes the next tasks, rarely this
    one). True if it was asleep, or woken and not yet polling (ctl[SLEEPING] is 1, then
    WAKING until the helper polls again): a miss then is no reason to send it back to sleep.
    Where ctl[FUTEX] is 0 the caller's Python sets the helper's Event."""
    sleeping = load(ctl, SLEEPING)
    if sleeping == 1 and swap(ctl, SLEEPING, 1, WAKING) == 1:
        if ctl[FUTEX] != 0:
            futex(ctl[FUTEX], ctl, SLEEPING, FUTEX_WAKE_PRIVATE, 1)
        return True
    return sleeping == WAKING


def alone(ctl, hush, asleep):
    """The caller took the task back: tell an awake helper to sleep if `hush`; the answer."""
    if asleep:
        return WOKE
    if hush:
        store(ctl, STATE, HUSH)
    return MISSED


def post(ctl, task, kind):
    """The caller: the task into the control array, then the word that posts it."""
    c = ctl[TASK:]
    c[:len(task)] = task
    publish(ctl, kind)
    return c


def publish(ctl, kind):
    """The caller: post the task written at ctl[TASK:], of this kind."""
    ctl[TASK + KIND] = kind
    store(ctl, ARRIVED, 0)
    swap(ctl, STATE, HUSH, IDLE)        # a helper that has not seen its HUSH yet
    store(ctl, STATE, POSTED)


def taken_back(ctl):
    """The caller, after its first step: True if the helper had not taken the task, which is
    then the caller's alone."""
    return load(ctl, STATE) == POSTED and swap(ctl, STATE, POSTED, IDLE) == POSTED


def waited(ctl, asleep):
    """The caller of a one-step task, before its share: a moment's wait (GRACE polls, a
    microsecond or two) for an awake helper to take the task, which a polling helper does in
    well under that. True if it did not, and the task is the caller's alone: it then runs the
    whole layer in one call (as fast as unpaired), not its half and then the other."""
    if not asleep:
        for _ in range(GRACE):
            if load(ctl, STATE) != POSTED:
                break
    return taken_back(ctl)


def finish(ctl):
    """The caller, after its share: wait for the helper's."""
    while load(ctl, STATE) != DONE:
        pass
    store(ctl, STATE, IDLE)


def paired(ctl, hush, task):
    """Run an F(4, 3) task (its description in `task`) on both threads: tiles 0..split and
    products 0..2 here, the rest on the helper, or here too if it never took them. Returns
    PAIRED, MISSED (then, if `hush`, the helper is told to sleep) or WOKE."""
    c = post(ctl, task, F43)
    asleep = wake(ctl)
    gemm = (ctl[GEMM], ctl[GEMM_WIDE])
    split, t = task[16], task[13]
    phase(gemm, c, 0, 0, split, 0, 0)
    if taken_back(ctl):
        phase(gemm, c, 0, split, t, 0, 0)   # the helper is late: all of it here
        phase(gemm, c, 1, 0, 0, 0, 6)
        phase(gemm, c, 2, 0, t, 0, 0)
        return alone(ctl, hush, asleep)
    arrive(ctl, 2)
    phase(gemm, c, 1, 0, 0, 0, 3)
    arrive(ctl, 4)
    phase(gemm, c, 2, 0, split, 0, 0)
    finish(ctl)
    return PAIRED


def paired44(ctl, hush, task, x, out, filters, bias):
    """`paired` for an F(4x4, 3x3) task: rows of tiles 0..split and products 0..17 here, the
    rest on the helper, or here too if it never took them. The task's arrays of this call (x,
    out, filters, bias) are written into it here: their addresses cost microseconds each to
    read in Python."""
    task[0], task[14] = x.ctypes.data, out.ctypes.data
    task[12], task[17] = filters.ctypes.data, bias.ctypes.data
    c = post(ctl, task, F44)
    asleep = wake(ctl)
    gemm = (ctl[GEMM], ctl[GEMM_WIDE])
    split, t, mine = task[20], task[6], task[21]
    phase44(gemm, c, 0, 0, split, 0, 0, mine)
    if taken_back(ctl):
        phase44(gemm, c, 0, split, t, 0, 0, mine)   # the helper is late: all of it here
        phase44(gemm, c, 1, 0, 0, 0, 36, mine)
        phase44(gemm, c, 2, 0, t, 0, 0, mine)
        return alone(ctl, hush, asleep)
    arrive(ctl, 2)
    phase44(gemm, c, 1, 0, 0, 0, 18, mine)
    arrive(ctl, 4)
    phase44(gemm, c, 2, 0, split, 0, 0, mine)
    finish(ctl)
    return PAIRED


def paired_fc(ctl, hush, x, w, b, relu, out):
    """One image's FC on both threads: x (I,), w (I, O), b (O,) -> out (O,), rectified with
    relu; the first half of the columns here (a multiple of 16), the rest on the helper; or
    all of it here if the helper has not taken its half after `waited`. Returns as
    `paired`."""
    n_in, n_out = w.shape
    split = max(16, (n_out // 2) // 16 * 16)
    c = ctl[TASK:]
    c[0], c[1], c[2], c[3] = x.ctypes.data, w.ctypes.data, b.ctypes.data, out.ctypes.data
    c[4], c[5], c[6], c[7] = n_in, n_out, relu, split
    publish(ctl, FC)
    asleep = wake(ctl)
    if waited(ctl, asleep):
        fc_columns(c, 0, n_out)
        return alone(ctl, hush, asleep)
    fc_columns(c, 0, split)
    finish(ctl)
    return PAIRED


def paired_direct(ctl, hush, xp, w, bias, out, relu, code, entry):
    """One image's direct convolution (stride 1, a window of `pair.DIRECT_SHAPES`) on both
    threads: xp (1, H_p, W_p, D) padded, w (F_h, F_w, D, K), bias (K,) -> out (1, H', W', K);
    the first half of the output rows here, the rest on the helper; or all of it here if the
    helper has not taken its half after `waited`. Returns as `paired`."""
    _, hp, wp, d = xp.shape
    _, ho, wo, k = out.shape
    split = ho - ho // 2
    c = ctl[TASK:]
    c[0], c[1], c[2], c[3] = xp.ctypes.data, w.ctypes.data, bias.ctypes.data, out.ctypes.data
    c[4], c[5], c[6], c[7], c[8], c[9] = hp, wp, d, ho, wo, k
    c[10], c[11], c[12], c[13] = relu, code, split, entry
    publish(ctl, DIRECT)
    asleep = wake(ctl)
    if waited(ctl, asleep):
        direct_rows(c, 0, ho)
        return alone(ctl, hush, asleep)
    direct_rows(c, 0, split)
    finish(ctl)
    return PAIRED


class Kernels:
    """What `build` returns: serve, paired, paired44, paired_fc, paired_direct."""


def _jit(fn):
    """`compiled.jit`: numba, no GIL, cached on disk where a cache can be written."""
    return compiled.jit(fn)


_built = []


def build(fast):
    """The kernels, compiled (or loaded from the disk cache) now, with `fast`'s passes. Once
    per process (a forked child's helper takes its parent's)."""
    if _built:
        return _built[0]
    global _rows, _output, _input44, _output44, _output44_pool
    global arrive, phase, phase44, helper_share, post, taken_back, finish, publish
    global fc_columns, direct_rows, _direct, wake, alone, waited, _vdirect
    from slidenet.ops import vdirect
    _vdirect = vdirect.call_address()
    _rows, _output = fast.winograd4_rows_of, fast.winograd4_output_of
    _input44, _output44 = fast.winograd44_input, fast.winograd44_output
    _output44_pool, _direct = fast.winograd44_output_pool, fast.direct_conv
    fc_columns, direct_rows, publish = _jit(fc_columns), _jit(direct_rows), _jit(publish)
    wake, alone, waited = _jit(wake), _jit(alone), _jit(waited)
    arrive, phase, phase44 = _jit(arrive), _jit(phase), _jit(phase44)
    helper_share, post = _jit(helper_share), _jit(post)
    taken_back, finish = _jit(taken_back), _jit(finish)
    done = Kernels()
    done.serve, done.paired, done.paired44 = _jit(serve), _jit(paired), _jit(paired44)
    done.paired_fc, done.paired_direct, done.wake = _jit(paired_fc), _jit(paired_direct), wake
    _refresh([fc_columns, direct_rows, publish, wake, alone, waited, arrive, phase, phase44,
              helper_share, post, taken_back, finish, done.serve, done.paired, done.paired44,
              done.paired_fc, done.paired_direct])
    # Compiled (or loaded) now, in the helper thread, not in the first call that needs them.
    ints, images = types.int64[::1], types.float32[:, :, :, ::1]
    vector, matrix = types.float32[::1], types.float32[:, ::1]
    done.serve.compile((ints, types.int64))
    done.paired.compile((ints, types.boolean, ints))
    done.paired44.compile((ints, types.boolean, ints, images, images, types.float32[:, :, ::1],
                           vector))
    done.paired_fc.compile((ints, types.boolean, vector, matrix, vector, types.boolean, vector))
    done.paired_direct.compile((ints, types.boolean, images, images, vector, images,
                                types.boolean, types.int64, types.int64))
    wake.compile((ints,))               # `pair._stop` calls it at exit
    _built.append(done)
    return done


def _refresh(kernels):
    """numba checks a cached kernel against its own source file alone, and these hold
    `compiled`'s passes (inlined where they call them): when compiled.py is not the one they
    were cached with (an edit, another branch), their caches are emptied first and they compile
    again, so a pass that changed never runs here in its old form."""
    import hashlib
    import os
    with open(compiled.__file__, "rb") as f:
        stamp = hashlib.sha256(f.read()).hexdigest()
    folder = getattr(getattr(kernels[0], "_cache", None), "_cache_path", None)
    if folder is None:                          # no disk cache: compiled afresh anyway
        return
    path = os.path.join(folder, "pair_kernels.compiled-sha256")
    try:
        with open(path) as f:
            if f.read() == stamp:
                return
    except OSError:
        pass
    for kernel in kernels:
        flush = getattr(getattr(kernel, "_cache", None), "flush", None)
        if flush is not None:
            flush()
    try:
        with open(path + ".tmp", "w") as f:
            f.write(stamp)
        os.replace(path + ".tmp", path)
    except OSError:                             # read-only: compiled again next time too
        pass
