"""A thin first layer's forward (`conv.direct`) on 512-bit registers, for K a multiple of 16.

`compiled.direct_conv` (numba) forms each output pixel's K sums with one vector of 16 filters
at a time: per pixel and vector, the window's F_h*F_w*D numbers are broadcast and multiplied
into one accumulator, a single chain of dependent additions, and the compiler does not
interleave pixels. Here R output pixels of a row are computed together: R x V accumulators of
16 filters each (V = 1, 2 or 4 vectors, 16 V filters at a time) live in registers; for each tap
(a, c, e) of the window (unrolled) the V vectors of weights w[a, c, e, :] are loaded once and
each of the R pixels' input numbers is broadcast and added in with a fused multiply-add. The
R x V chains are independent, so the multiply-add units stay busy. Then the bias, the ReLU
(a NaN stays NaN), and the store.

    out[n, i, j, k] = (sum over (a, c, e) of xp[n, i*S_h + a, j*S_w + c, e] * w[a, c, e, k])
                      + bias[k]

The window's products are summed in (a, c, e) order, as `compiled.direct_conv` does, but each
step is a fused multiply-add (one rounding, not two): the same numbers to float32 rounding, not
bit for bit. Each pixel's sums do not depend on which other pixels or images are in the call,
so an image gives the same bits alone as in a batch, and a call on a range of output rows the
same bits as the whole image's.

The loops are written in LLVM's IR and compiled by llvmlite for the host CPU, as `ops.vgemm`'s
GEMM is (and cached on disk through `vgemm.compile_ir`), one function per window shape
(F_h, F_w, D), stride (S_h, S_w) and V; `kernel(fh, fw, d, sh, sw, k)` returns a ctypes
function (it releases the GIL while it runs)

    fn(xp, w, bias, out, c, hp, wp, ho, wo, k, relu)

xp (c, H_p, W_p, D) the zero-padded input, w (F_h, F_w, D, K), bias (K,), out (c, H', W', K),
all float32 and C-contiguous, passed by address; relu 0 or 1. Only xp's rows i*S_h ..
i*S_h + F_h - 1 for i < H' are read, and hp is used only to step from one image to the next:
for output rows i0 .. i1 - 1 of one image, pass xp's address at row i0*S_h, out's at row i0,
c = 1 and ho = i1 - i0 (`run_rows`). From Python, `caller()` calls it through numba (a
fraction of a microsecond, where ctypes takes a few); numba-compiled code calls it through
the intrinsic `call_address()` with `address(fn)` (tests/test_vdirect.py shows both).

None without llvmlite, without AVX-512F on the host, with ``SLIDENET_VGEMM=0`` (as
`vgemm.sgemm`) or ``SLIDENET_VDIRECT=0`` in the environment, where K is not a multiple of 16,
or if the compiled function differs from float64 loops on a check: callers keep
`compiled.direct_conv`.
"""
import ctypes
import os
import threading

import numpy as np

from slidenet.ops import vgemm

F16 = "<16 x float>"
# Output pixels a block takes, by vectors of 16 filters: 16 accumulators (R x V) leave room in
# AVX-512's 32 registers for the weights and broadcasts, and are more independent chains than
# the multiply-add's latency needs. More or fewer ran slower (docs/benchmarks.md, "Thin first
# layers: the forward on 512-bit registers").
ROWS = {1: 16, 2: 8, 4: 4}
_state = {}
_addresses = {}                             # id(fn) -> its address, for the kept functions
_lock = threading.Lock()
_ARGTYPES = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 6 + [ctypes.c_int32]


def vectors(k):
    """Vectors of 16 filters the kernel takes at a time for K filters (4, 2 or 1), or 0 where K
    is not a multiple of 16."""
    if k <= 0 or k % 16:
        return 0
    return 4 if k % 64 == 0 else 2 if k % 32 == 0 else 1


def kernel(fh, fw, d, sh, sw, k):
    """The checked ctypes function for this window, stride and number of filters (see the
    module docstring), or None. Compiled on first use (or loaded from the disk cache)."""
    v = vectors(k)
    if not v or not _host():
        return None
    key = (fh, fw, d, sh, sw, v)
    if key not in _state:
        with _lock:
            if key not in _state:
                _state[key] = _build(*key)
    return _state[key][0]


def _host():
    """Whether the kernels may be built: llvmlite, AVX-512F on the host, and neither
    ``SLIDENET_VGEMM=0`` (the switch of `vgemm`'s kernels, which these share) nor
    ``SLIDENET_VDIRECT=0`` (these alone, to compare them with numba's)."""
    if "host" not in _state:
        ok = (os.environ.get("SLIDENET_VGEMM", "1") != "0"
              and os.environ.get("SLIDENET_VDIRECT", "1") != "0")
        if ok:
            try:
                import llvmlite.binding as llvm
                llvm.initialize_native_target()
                llvm.initialize_native_asmprinter()
                ok = bool(llvm.get_host_cpu_features().get("avx512f", False))
            except (ImportError, OSError, RuntimeError):
                ok = False
        _state["host"] = ok
    return _state["host"]


def _ir(name, fh, fw, d, sh, sw, v):
    """The IR of one function: loops over images, output rows and column blocks of 16 v
    filters; in each, the row's pixels R at a time while a whole block fits, then R // 2, ...,
    1 at a time."""
    r = ROWS[v]
    taps = [(a, c, e) for a in range(fh) for c in range(fw) for e in range(d)]
    lines = [f"define void @{name}(ptr noalias readonly %x, ptr noalias readonly %w, "
             f"ptr noalias readonly %b, ptr noalias %o, i64 %c, i64 %hp, i64 %wp, i64 %ho, "
             f"i64 %wo, i64 %k, i32 %relu) nounwind {{", "entry:",
             f"  %rl = icmp ne i32 %relu, 0",
             f"  %wpd = mul i64 %wp, {d}",                      # floats in a row of xp
             "  %ximg = mul i64 %wpd, %hp",                     # floats in an image of xp
             f"  %xstep = mul i64 %wpd, {sh}",                  # floats per output row
             "  %orow = mul i64 %wo, %k",
             "  %oimg = mul i64 %orow, %ho"]
    lines += [f"  %roff{a} = mul i64 %wpd, {a}" for a in range(fh)]
    lines += [f"  %toff{t} = mul i64 %k, {t}" for t in range(len(taps))]
    slots = ("n", "i", "q", "j")
    lines += [f"  %{s}_slot = alloca i64" for s in slots]
    lines += ["  store i64 0, ptr %n_slot", "  br label %n_head",
              "n_head:", "  %n = load i64, ptr %n_slot", "  %n_go = icmp slt i64 %n, %c",
              "  br i1 %n_go, label %n_body, label %exit",
              "n_body:", "  %xn = mul i64 %n, %ximg", "  %on = mul i64 %n, %oimg",
              "  store i64 0, ptr %i_slot", "  br label %i_head",
              "i_head:", "  %i = load i64, ptr %i_slot", "  %i_go = icmp slt i64 %i, %ho",
              "  br i1 %i_go, label %i_body, label %n_next",
              "i_body:", "  %xi0 = mul i64 %i, %xstep", "  %xi = add i64 %xn, %xi0",
              "  %oi0 = mul i64 %i, %orow", "  %oi = add i64 %on, %oi0",
              "  store i64 0, ptr %q_slot", "  br label %q_head",
              "q_head:", "  %q = load i64, ptr %q_slot", "  %q_go = icmp slt i64 %q, %k",
              "  br i1 %q_go, label %q_body, label %i_next",
              "q_body:", "  store i64 0, ptr %j_slot", "  br label %B0head"]
    sizes = [r]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    for t, rows in enumerate(sizes):
        after = f"B{t + 1}head" if t + 1 < len(sizes) else "q_next"
        lines += _block(f"B{t}", rows, v, taps, d, sw, after)
    lines += ["q_next:", f"  %q_n = add i64 %q, {16 * v}", "  store i64 %q_n, ptr %q_slot",
              "  br label %q_head",
              "i_next:", "  %i_n = add i64 %i, 1", "  store i64 %i_n, ptr %i_slot",
              "  br label %i_head",
              "n_next:", "  %n_n = add i64 %n, 1", "  store i64 %n_n, ptr %n_slot",
              "  br label %n_head",
              "exit:", "  ret void", "}"]
    return "\n".join(lines)


def _block(tag, rows, v, taps, d, sw, done_next):
    """IR of `rows` output pixels from %j on (while a whole block fits in the row), all their
    V vectors of filters from %q on, then `done_next`."""
    out = [f"{tag}head:", f"  %{tag}j = load i64, ptr %j_slot",
           f"  %{tag}end = add i64 %{tag}j, {rows}",
           f"  %{tag}go = icmp sle i64 %{tag}end, %wo",
           f"  br i1 %{tag}go, label %{tag}body, label %{done_next}",
           f"{tag}body:",
           f"  %{tag}xj0 = mul i64 %{tag}j, {sw * d}",
           f"  %{tag}xj = add i64 %xi, %{tag}xj0"]
    acc = {}
    for t, (a, c, e) in enumerate(taps):
        # The pointers pass through an empty asm statement at each tap, so the compiler
        # neither hoists the weights out of the pixels' loop nor merges the loads of a number
        # that two taps share: either keeps values live for long and spills the accumulators.
        out += [f"  %{tag}xl{t} = call ptr asm sideeffect \"\", \"=r,0\"(ptr %x)",
                f"  %{tag}wl{t} = call ptr asm sideeffect \"\", \"=r,0\"(ptr %w)"]
        for u in range(v):                  # the tap's weights for the V vectors of filters
            out += [f"  %{tag}wo{t}_{u}a = add i64 %toff{t}, %q",
                    f"  %{tag}wo{t}_{u} = add i64 %{tag}wo{t}_{u}a, {16 * u}",
                    f"  %{tag}wp{t}_{u} = getelementptr inbounds float, ptr %{tag}wl{t}, "
                    f"i64 %{tag}wo{t}_{u}",
                    f"  %{tag}wv{t}_{u} = load {F16}, ptr %{tag}wp{t}_{u}, align 4"]
        for p in range(rows):               # each pixel's input number, broadcast
            s = f"{tag}t{t}p{p}"
            out += [f"  %{s}_o0 = add i64 %{tag}xj, %roff{a}",
                    f"  %{s}_o = add i64 %{s}_o0, {(p * sw + c) * d + e}",
                    f"  %{s}p = getelementptr inbounds float, ptr %{tag}xl{t}, i64 %{s}_o",
                    f"  %{s}s = load float, ptr %{s}p, align 4",
                    f"  %{s}i = insertelement {F16} poison, float %{s}s, i64 0",
                    f"  %{s}b = shufflevector {F16} %{s}i, {F16} poison, "
                    f"<16 x i32> zeroinitializer"]
            for u in range(v):
                new = f"%{s}a{u}"
                if t == 0:
                    out.append(f"  {new} = fmul {F16} %{s}b, %{tag}wv{t}_{u}")
                else:
                    out.append(f"  {new} = call {F16} @llvm.fma.v16f32({F16} %{s}b, "
                               f"{F16} %{tag}wv{t}_{u}, {F16} {acc[p, u]})")
                acc[p, u] = new
    for u in range(v):
        out += [f"  %{tag}bo{u} = add i64 %q, {16 * u}",
                f"  %{tag}bp{u} = getelementptr inbounds float, ptr %b, i64 %{tag}bo{u}",
                f"  %{tag}bv{u} = load {F16}, ptr %{tag}bp{u}, align 4"]
    out += [f"  %{tag}rl = insertelement <16 x i1> poison, i1 %rl, i64 0",
            f"  %{tag}rls = shufflevector <16 x i1> %{tag}rl, <16 x i1> poison, "
            f"<16 x i32> zeroinitializer"]
    for p in range(rows):
        out += [f"  %{tag}oj{p}_a = add i64 %{tag}j, {p}",
                f"  %{tag}oj{p}_b = mul i64 %{tag}oj{p}_a, %k",
                f"  %{tag}oj{p} = add i64 %oi, %{tag}oj{p}_b"]
        for u in range(v):
            s = f"{tag}y{p}_{u}"
            out += [f"  %{s}s = fadd {F16} {acc[p, u]}, %{tag}bv{u}",
                    # s < 0 is false for NaN: a NaN stays NaN, as in `compiled.direct_conv`.
                    f"  %{s}n = fcmp olt {F16} %{s}s, zeroinitializer",
                    f"  %{s}m = and <16 x i1> %{s}n, %{tag}rls",
                    f"  %{s}r = select <16 x i1> %{s}m, {F16} zeroinitializer, {F16} %{s}s",
                    f"  %{s}_o0 = add i64 %{tag}oj{p}, %q",
                    f"  %{s}_o = add i64 %{s}_o0, {16 * u}",
                    f"  %{s}p = getelementptr inbounds float, ptr %o, i64 %{s}_o",
                    f"  store {F16} %{s}r, ptr %{s}p, align 4"]
    out += [f"  store i64 %{tag}end, ptr %j_slot", f"  br label %{tag}head"]
    return out


def _build(fh, fw, d, sh, sw, v):
    """(the checked ctypes function, its engine), or (None, None)."""
    name = f"vdirect_{fh}x{fw}x{d}_s{sh}x{sw}_v{v}"
    try:
        engine = vgemm.compile_ir("declare <16 x float> @llvm.fma.v16f32(<16 x float>, "
                                  "<16 x float>, <16 x float>)\n"
                                  + _ir(name, fh, fw, d, sh, sw, v), "vdirect")
        fn = ctypes.CFUNCTYPE(None, *_ARGTYPES)(engine.get_function_address(name))
        fn.argtypes, fn.restype = _ARGTYPES, None
        if not _checks(fn, fh, fw, d, sh, sw, v):
            return None, None
        _addresses[id(fn)] = ctypes.cast(fn, ctypes.c_void_p).value
        return fn, engine                   # the compiled code lives as long as the engine
    except (ImportError, OSError, RuntimeError, AttributeError, TypeError, ValueError):
        return None, None


def caller():
    """A numba-compiled call(address, xp, w, bias, out, relu) of the function at `address(fn)`
    on whole images (as `run`), or None without numba. It is one function for every kernel
    (the address is an argument), cached on disk like `compiled`'s kernels, and costs a
    fraction of a microsecond per call where `run`'s ctypes call costs a few (the four
    addresses through NumPy's `.ctypes`): a first layer of one image pays that per prediction."""
    if "caller" not in _state:
        with _lock:
            if "caller" not in _state:
                try:
                    from slidenet.ops import compiled
                    global _call_address
                    _call_address = call_address()
                    _state["caller"] = compiled.jit(_call)
                except ImportError:
                    _state["caller"] = None
    return _state["caller"]


_call_address = None                        # numba's intrinsic, set by `caller`


def _call(address, xp, w, bias, out, relu):
    c, hp, wp, _ = xp.shape
    _, ho, wo, k = out.shape
    _call_address(address, xp.ctypes.data, w.ctypes.data, bias.ctypes.data, out.ctypes.data,
                  c, hp, wp, ho, wo, k, relu)


def call_address():
    """numba's intrinsic call_address(entry, xp, w, bias, out, c, hp, wp, ho, wo, k, relu),
    all integers (the arrays by address): in numba-compiled code, a call of the kernel at
    `entry` (`address(fn)`) with its C signature, e.g. on a range of rows (`run_rows`). Raises
    ImportError without numba."""
    if "intrinsic" in _state:
        return _state["intrinsic"]
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def call_address(typingctx, address, x, w, b, o, c, hp, wp, ho, wo, k, relu):
        ints = (address, x, w, b, o, c, hp, wp, ho, wo, k, relu)
        if not all(isinstance(t, (types.Integer, types.Boolean)) for t in ints):
            return None

        def codegen(context, builder, signature, args):
            i64, i32 = ir.IntType(64), ir.IntType(32)
            values = [context.cast(builder, v, t, types.int64) for v, t in
                      zip(args, signature.args)]
            fnty = ir.FunctionType(ir.VoidType(), [i64] * 10 + [i32])
            target = builder.inttoptr(values[0], fnty.as_pointer())
            builder.call(target, values[1:11] + [builder.trunc(values[11], i32)])
            return context.get_dummy_value()

        return types.none(*ints), codegen

    _state["intrinsic"] = call_address
    return call_address


def address(fn):
    """The entry address of a function from `kernel` (an int), for compiled callers."""
    found = _addresses.get(id(fn))
    return found if found is not None else ctypes.cast(fn, ctypes.c_void_p).value


def run(fn, xp, w, bias, relu, out):
    """fn on whole images: xp (c, H_p, W_p, D), w (F_h, F_w, D, K), bias (K,), out
    (c, H', W', K), all float32 and C-contiguous."""
    c, hp, wp, _ = xp.shape
    _, ho, wo, k = out.shape
    fn(xp.ctypes.data, w.ctypes.data, bias.ctypes.data, out.ctypes.data, c, hp, wp, ho, wo, k,
       int(relu))


def run_rows(fn, xp, w, bias, relu, out, i0, i1, sh):
    """fn on output rows i0 .. i1 - 1 of image 0 of xp (1, H_p, W_p, D) into out
    (1, H', W', K): the same bits as those rows of the whole image's call."""
    if i1 <= i0:
        return
    _, hp, wp, d = xp.shape
    _, ho, wo, k = out.shape
    fn(xp.ctypes.data + i0 * sh * wp * d * 4, w.ctypes.data, bias.ctypes.data,
       out.ctypes.data + i0 * wo * k * 4, 1, hp, wp, i1 - i0, wo, k, int(relu))


def reference(xp, w, bias, stride, relu):
    """The convolution in float64 loops over the window (the check's oracle): xp (c, H_p,
    W_p, D), w (F_h, F_w, D, K) -> (c, H', W', K) float64."""
    c, hp, wp, _ = xp.shape
    fh, fw, _, k = w.shape
    sh, sw = stride
    ho, wo = (hp - fh) // sh + 1, (wp - fw) // sw + 1
    out = np.zeros((c, ho, wo, k))
    x64, w64 = xp.astype(np.float64), w.astype(np.float64)
    for a in range(fh):
        for b in range(fw):
            win = x64[:, a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw, :]
            out += win @ w64[a, b]
    out += bias
    return np.maximum(out, 0) if relu else out


def _checks(fn, fh, fw, d, sh, sw, v):
    """Whether fn agrees with `reference` on shapes that take every path (pixels in whole
    blocks and left over, one and more column blocks, two images, with and without ReLU), and
    on a range of rows."""
    rng = np.random.default_rng(0)
    k = 16 * v * 2
    for c, hp, wp, relu in ((2, fh + 2 * sh + 1, fw + sw * (ROWS[v] + 6), True),
                            (1, fh, fw, False), (1, fh + sh, fw + 3 * sw, True)):
        xp = rng.standard_normal((c, hp, wp, d)).astype(np.float32)
        w = rng.standard_normal((fh, fw, d, k)).astype(np.float32)
        bias = rng.standard_normal(k).astype(np.float32)
        want = reference(xp, w, bias, (sh, sw), relu)
        out = np.full((c + 1, *want.shape[1:]), np.nan, np.float32)
        run(fn, xp, w, bias, relu, out[:c])
        if not (np.allclose(out[:c], want, rtol=1e-5, atol=1e-5) and np.isnan(out[c]).all()):
            return False
        if want.shape[1] > 1:
            part = np.full_like(out[:1], np.nan)
            run_rows(fn, xp[:1], w, bias, relu, part, 1, want.shape[1], sh)
            if not (np.array_equal(part[0, 1:], out[0, 1:]) and np.isnan(part[0, 0]).all()):
                return False
    return True
