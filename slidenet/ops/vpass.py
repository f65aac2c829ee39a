"""F(4x4, 3x3)'s input pass on 512-bit registers, for depths that are a multiple of 16.

`compiled.winograd44_input` computes B^T d B of every tile's 6 x 6 window in two passes over
rows of numbers (down the height, then along the width), gathering each tile's columns into
rows between them, since numba vectorises long rows and not a tile's 16 channels. Here 16
channels of one pixel are one register: for each tile and block of 16 channels the 36 pixels
of its window are loaded (zeros outside x: the padding and past the last tile), transformed in
registers, the same sums in the same order as `winograd44_input`'s, and stored into the 36
planes. No gather, no scratch.

The loops are written in LLVM's IR and compiled by llvmlite for the host CPU, as `ops.vgemm`'s
GEMM is; `input_pass()` is a ctypes function

    fn(x, c, h, w, d, ph, pw, t0, th, tw, out, plane)

x (c, H, W, D) float32 C-contiguous, ph, pw the padding before, tiles t0 .. t0 + th - 1 of the
height and 0 .. tw - 1 of the width, out the planes (36, >= plane) float32: entry 6a + b of tile
(n, ti, tj) at out[6a + b, ((n*th + ti)*tw + tj)*D : ... + D], as `winograd44_input` writes
them. None where `vgemm.sgemm` is None (no llvmlite, no AVX-512F, `SLIDENET_VGEMM=0`) or if the
compiled function's planes differ from `winograd44_input`'s on a check: callers keep that.
"""
import ctypes
import threading

import numpy as np

from slidenet.ops import compiled, vgemm

_state = {"done": False, "fn": None}
_lock = threading.Lock()
F16 = "<16 x float>"


def input_pass():
    """The checked ctypes function (see the module docstring), or None."""
    if not _state["done"]:
        with _lock:
            if not _state["done"]:
                _state["fn"] = _build() if vgemm.sgemm(16) is not None else None
                _state["done"] = True
    return _state["fn"]


def _transform(name, d):
    """IR lines computing the six outputs `{name}0..5` of B^T along one axis from the six
    values d[0..5] (names of <16 x float>), in `winograd44_input`'s order of operations."""
    c4 = "<float 4.0" + ", float 4.0" * 15 + ">"
    c2 = "<float 2.0" + ", float 2.0" * 15 + ">"
    return [
        f"  %{name}s0 = fmul {F16} {c4}, {d[2]}",
        f"  %{name}s = fsub {F16} {d[4]}, %{name}s0",          # s_ = d4 - 4 d2
        f"  %{name}p0 = fmul {F16} {c4}, {d[1]}",
        f"  %{name}p = fsub {F16} {d[3]}, %{name}p0",          # p = d3 - 4 d1
        f"  %{name}u = fsub {F16} {d[4]}, {d[2]}",             # u = d4 - d2
        f"  %{name}v0 = fsub {F16} {d[3]}, {d[1]}",
        f"  %{name}v = fmul {F16} %{name}v0, {c2}",            # v = (d3 - d1) 2
        f"  %{name}a0 = fsub {F16} {d[0]}, {d[2]}",
        f"  %{name}a1 = fmul {F16} %{name}a0, {c4}",
        f"  %{name}0 = fadd {F16} %{name}a1, %{name}u",        # (d0 - d2) 4 + u
        f"  %{name}1 = fadd {F16} %{name}s, %{name}p",
        f"  %{name}2 = fsub {F16} %{name}s, %{name}p",
        f"  %{name}3 = fadd {F16} %{name}u, %{name}v",
        f"  %{name}4 = fsub {F16} %{name}u, %{name}v",
        f"  %{name}b0 = fsub {F16} {d[5]}, {d[3]}",
        f"  %{name}b1 = fmul {F16} %{name}v, {c2}",
        f"  %{name}5 = fsub {F16} %{name}b0, %{name}b1",       # (d5 - d3) - v 2
    ]


def _ir():
    """The pass: loops over images, tile rows, tile columns and blocks of 16 channels."""
    lines = ["define void @input_pass(ptr noalias readonly %x, i64 %c, i64 %h, i64 %w, i64 %d, "
             "i64 %ph, i64 %pw, i64 %t0, i64 %th, i64 %tw, ptr noalias %out, i64 %plane) "
             "nounwind {", "entry:"]
    loops = (("n", "%c"), ("ti", "%th"), ("tj", "%tw"), ("cb", "%blocks"))
    lines += [f"  %{v}_slot = alloca i64" for v, _ in loops]
    lines += ["  %blocks = udiv i64 %d, 16", "  %hm1 = sub i64 %h, 1", "  %wm1 = sub i64 %w, 1",
              "  store i64 0, ptr %n_slot", "  br label %n_head"]
    for depth, (v, bound) in enumerate(loops):
        inner = loops[depth + 1][0] if depth + 1 < len(loops) else None
        lines += [f"{v}_head:", f"  %{v} = load i64, ptr %{v}_slot",
                  f"  %{v}_go = icmp slt i64 %{v}, {bound}",
                  f"  br i1 %{v}_go, label %{v}_body, label %{v}_done", f"{v}_body:"]
        if inner:
            lines += [f"  store i64 0, ptr %{inner}_slot", f"  br label %{inner}_head"]
        else:
            lines += ["  br label %tile"]
    # the body: one tile's 16 channels
    lines += ["tile:", "  %trow = add i64 %t0, %ti", "  %r4 = mul i64 %trow, 4",
              "  %r0 = sub i64 %r4, %ph", "  %c4 = mul i64 %tj, 4", "  %q0 = sub i64 %c4, %pw",
              "  %ch = mul i64 %cb, 16", "  %img = mul i64 %n, %h"]
    for i in range(6):
        lines += [f"  %ri{i} = add i64 %r0, {i}",
                  f"  %rin{i} = icmp ult i64 %ri{i}, %h",           # 0 <= row < h
                  f"  %rcl{i} = select i1 %rin{i}, i64 %ri{i}, i64 0",
                  f"  %rrow{i} = add i64 %img, %rcl{i}",
                  f"  %rbase{i} = mul i64 %rrow{i}, %w"]
    for j in range(6):
        lines += [f"  %qj{j} = add i64 %q0, {j}",
                  f"  %qin{j} = icmp ult i64 %qj{j}, %w",
                  f"  %qcl{j} = select i1 %qin{j}, i64 %qj{j}, i64 0"]
    for i in range(6):
        for j in range(6):
            t = f"{i}_{j}"
            lines += [f"  %pix{t} = add i64 %rbase{i}, %qcl{j}",
                      f"  %off{t} = mul i64 %pix{t}, %d",
                      f"  %at{t} = add i64 %off{t}, %ch",
                      f"  %ptr{t} = getelementptr inbounds float, ptr %x, i64 %at{t}",
                      f"  %ld{t} = load {F16}, ptr %ptr{t}, align 4",
                      f"  %in{t} = and i1 %rin{i}, %qin{j}",
                      f"  %px{t} = select i1 %in{t}, {F16} %ld{t}, {F16} zeroinitializer"]
    for j in range(6):                       # down the height: column j's six pixels
        lines += _transform(f"h{j}_", [f"%px{i}_{j}" for i in range(6)])
    for a in range(6):                       # along the width: row a of the height's outputs
        lines += _transform(f"g{a}_", [f"%h{j}_{a}" for j in range(6)])
    lines += ["  %tn = mul i64 %n, %th", "  %tr = add i64 %tn, %ti", "  %tt = mul i64 %tr, %tw",
              "  %tix = add i64 %tt, %tj", "  %toff = mul i64 %tix, %d",
              "  %obase = add i64 %toff, %ch"]
    for a in range(6):
        for b in range(6):
            e = 6 * a + b
            lines += [f"  %pl{e} = mul i64 %plane, {e}",
                      f"  %oo{e} = add i64 %pl{e}, %obase",
                      f"  %op{e} = getelementptr inbounds float, ptr %out, i64 %oo{e}",
                      f"  store {F16} %g{a}_{b}, ptr %op{e}, align 4"]
    lines += ["  br label %cb_next"]
    for depth in reversed(range(len(loops))):
        v = loops[depth][0]
        outer = loops[depth - 1][0] if depth else None
        lines += [f"{v}_next:", f"  %{v}_n = add i64 %{v}, 1", f"  store i64 %{v}_n, ptr %{v}_slot",
                  f"  br label %{v}_head", f"{v}_done:"]
        lines += [f"  br label %{outer}_next"] if outer else ["  ret void"]
    lines.append("}")
    # cb_next is emitted by the loop above; the tile body jumps to it
    return "\n".join(lines)


def _build():
    try:
        import llvmlite.binding as llvm
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        module = llvm.parse_assembly(_ir())
        module.verify()
        machine = llvm.Target.from_default_triple().create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
            opt=3)
        builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(3))
        builder.getModulePassManager().run(module, builder)
        engine = llvm.create_mcjit_compiler(module, machine)
        engine.finalize_object()
        i, p = ctypes.c_int64, ctypes.c_void_p
        argtypes = [p, i, i, i, i, i, i, i, i, i, p, i]
        fn = ctypes.CFUNCTYPE(None, *argtypes)(engine.get_function_address("input_pass"))
        fn.argtypes, fn.restype = argtypes, None
        if not _checks(fn):
            return None
        _state["engine"] = engine           # the compiled code lives as long as the engine
        return fn
    except (ImportError, OSError, RuntimeError, AttributeError, TypeError, ValueError):
        return None


def run(fn, x, ph, pw, t0, th, tw, out):
    """fn (`input_pass()`) on x (c, H, W, D) into out (36, plane) from Python (tests)."""
    fn(x.ctypes.data, x.shape[0], x.shape[1], x.shape[2], x.shape[3], ph, pw, t0, th, tw,
       out.ctypes.data, out.shape[1])


def _checks(fn):
    """Whether fn writes `winograd44_input`'s planes on a padded, cropped geometry."""
    fast = compiled.kernels()
    if fast is None:
        return False
    rng = np.random.default_rng(0)
    for c, h, w, d, ph, pw, th, tw in ((2, 7, 9, 16, 1, 1, 2, 3), (1, 8, 8, 32, 0, 2, 2, 2)):
        x = rng.standard_normal((c, h, w, d)).astype(np.float32)
        want = np.zeros((36, c * th * tw * d + 8), np.float32)
        got = np.full_like(want, np.nan)
        fast.winograd44_input(x, ph, pw, 0, th, tw, np.zeros((6, 4 * th + 2, tw * d),
                                                             np.float32), want)
        run(fn, x, ph, pw, 0, th, tw, got)
        n = c * th * tw * d
        if not (np.array_equal(got[:, :n], want[:, :n]) and np.isnan(got[:, n:]).all()):
            return False
    return True
