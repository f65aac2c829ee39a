"""The Winograd passes of the block kernels on 512-bit registers, for depths a multiple of 16:
F(4x4, 3x3)'s input and output passes and the stride-2 scheme's (`conv.winograd_s2`).

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

`output_pass()` is `compiled.winograd44_output`'s counterpart, the same way (A^T m A of each
tile in registers, bias, skip and ReLU as it stores the output's pixels, rows and columns past
H', W' dropped; the same sums in the same order):

    fn(m, plane, first, th, tw, out, c, ho, wo, k, bias, use_bias, relu, skip, use_skip)

m the products (36, >= plane), out (c, H', W', K), bias (K,) and skip (c, H', W', K) valid
arrays even where their flag is 0. None as `input_pass()` is, or if its output differs from
`winograd44_output`'s on a check. `s2_input_pass()` and `s2_output_pass()` are the same for
the stride-2 scheme's 81 planes (a 9 x 9 window at stride 8; `winograd_s2_input` /
`winograd_s2_output`, bit for bit). The vector kernels of `conv.winograd_block` and
`conv.winograd_down` call them, and so do `conv.winograd_f44`'s `rows` and `output`.
"""
import ctypes
import threading

import numpy as np

from slidenet.ops import compiled, vgemm

_state = {"done": False, "fn": None, "out": None, "s2": None, "s2out": None}
_lock = threading.Lock()
F16 = "<16 x float>"


def input_pass():
    """The checked ctypes function (see the module docstring), or None."""
    _ready()
    return _state["fn"]


def s2_input_pass():
    """The checked ctypes function fn(x, c, h, w, d, ph, pw, h_in, w_in, th, tw, out, plane):
    `compiled.winograd_s2_input`'s planes (81 of them, each tile's 9 x 9 window at stride 8,
    zeros outside the first h_in rows and w_in columns), or None."""
    _ready()
    return _state.get("s2")


def s2_output_pass():
    """The checked ctypes function with `output_pass()`'s arguments for the stride-2 scheme's
    81 planes: `compiled.winograd_s2_output`'s pixels (called with first 0, the bias on, no
    skip), or None."""
    _ready()
    return _state.get("s2out")


def output_pass():
    """The checked ctypes function (see the module docstring), or None."""
    _ready()
    return _state["out"]


def _ready():
    if not _state["done"]:
        with _lock:
            if not _state["done"]:
                if vgemm.sgemm(16) is not None:
                    _state["fn"], _state["out"] = _build()
                _state["done"] = True


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


def _transform_out(name, m):
    """IR lines computing the four outputs `{name}0..3` of A^T along one axis from the six
    values m[0..5], in `winograd44_output`'s order of operations."""
    c4 = "<float 4.0" + ", float 4.0" * 15 + ">"
    c2 = "<float 2.0" + ", float 2.0" * 15 + ">"
    c8 = "<float 8.0" + ", float 8.0" * 15 + ">"
    return [
        f"  %{name}a = fadd {F16} {m[1]}, {m[2]}",
        f"  %{name}b = fsub {F16} {m[1]}, {m[2]}",
        f"  %{name}c = fadd {F16} {m[3]}, {m[4]}",
        f"  %{name}f = fsub {F16} {m[3]}, {m[4]}",
        f"  %{name}y0 = fadd {F16} {m[0]}, %{name}a",
        f"  %{name}0 = fadd {F16} %{name}y0, %{name}c",         # (m0 + a) + c
        f"  %{name}y1 = fmul {F16} %{name}f, {c2}",
        f"  %{name}1 = fadd {F16} %{name}y1, %{name}b",         # f 2 + b
        f"  %{name}y2 = fmul {F16} %{name}c, {c4}",
        f"  %{name}2 = fadd {F16} %{name}y2, %{name}a",         # c 4 + a
        f"  %{name}y3 = fmul {F16} %{name}f, {c8}",
        f"  %{name}y4 = fadd {F16} %{name}y3, %{name}b",
        f"  %{name}3 = fadd {F16} %{name}y4, {m[5]}",           # (f 8 + b) + m5
    ]


def _loops(loops, body):
    """IR of nested counted loops [(name, bound)] around `body` (lines that end by branching
    to the innermost loop's `{name}_next`), after the entry's own lines."""
    lines = [f"  %{v}_slot = alloca i64" for v, _ in loops]
    lines += [f"  store i64 0, ptr %{loops[0][0]}_slot", f"  br label %{loops[0][0]}_head"]
    for depth, (v, bound) in enumerate(loops):
        inner = loops[depth + 1][0] if depth + 1 < len(loops) else None
        lines += [f"{v}_head:", f"  %{v} = load i64, ptr %{v}_slot",
                  f"  %{v}_go = icmp slt i64 %{v}, {bound}",
                  f"  br i1 %{v}_go, label %{v}_body, label %{v}_done", f"{v}_body:"]
        lines += ([f"  store i64 0, ptr %{inner}_slot", f"  br label %{inner}_head"] if inner
                  else ["  br label %tile"])
    lines += ["tile:"] + body
    for depth in reversed(range(len(loops))):
        v = loops[depth][0]
        outer = loops[depth - 1][0] if depth else None
        lines += [f"{v}_next:", f"  %{v}_n = add i64 %{v}, 1", f"  store i64 %{v}_n, ptr %{v}_slot",
                  f"  br label %{v}_head", f"{v}_done:"]
        lines += [f"  br label %{outer}_next"] if outer else ["  ret void"]
    return lines


def _transform_out_s2(name, m):
    """IR lines computing the four outputs `{name}0..3` of the stride-2 scheme's A^T along one
    axis from the nine values m[0..8], in `winograd_s2_output`'s order of operations."""
    c2 = "<float 2.0" + ", float 2.0" * 15 + ">"
    c4 = "<float 4.0" + ", float 4.0" * 15 + ">"
    c8 = "<float 8.0" + ", float 8.0" * 15 + ">"
    return [
        f"  %{name}p = fadd {F16} {m[5]}, {m[6]}",
        f"  %{name}q = fsub {F16} {m[5]}, {m[6]}",
        f"  %{name}a0 = fadd {F16} {m[4]}, %{name}p",
        f"  %{name}a1 = fadd {F16} %{name}a0, {m[7]}",
        f"  %{name}0 = fadd {F16} {m[0]}, %{name}a1",           # m0 + ((m4 + p) + v)
        f"  %{name}b0 = fmul {F16} {m[7]}, {c2}",
        f"  %{name}b1 = fadd {F16} %{name}q, %{name}b0",
        f"  %{name}1 = fadd {F16} {m[1]}, %{name}b1",           # m1 + (q + v 2)
        f"  %{name}c0 = fmul {F16} {m[7]}, {c4}",
        f"  %{name}c1 = fadd {F16} %{name}p, %{name}c0",
        f"  %{name}2 = fadd {F16} {m[2]}, %{name}c1",           # m2 + (p + v 4)
        f"  %{name}d0 = fmul {F16} {m[7]}, {c8}",
        f"  %{name}d1 = fadd {F16} %{name}q, %{name}d0",
        f"  %{name}d2 = fadd {F16} %{name}d1, {m[8]}",
        f"  %{name}3 = fadd {F16} {m[3]}, %{name}d2",           # m3 + ((q + v 8) + m8)
    ]


def _ir_output(name="output_pass", size=6, transform=_transform_out):
    """An output pass: loops over images, tile rows, tile columns and blocks of 16 channels;
    for each, A^T m A from the size * size planes in registers and the in-bounds pixels stored
    with bias, skip, ReLU. F(4x4, 3x3)'s by default; the stride-2 scheme's is (9,
    `_transform_out_s2`)."""
    lines = [f"define void @{name}(ptr noalias readonly %m, i64 %plane, i64 %first, "
             "i64 %th, i64 %tw, ptr noalias %out, i64 %c, i64 %ho, i64 %wo, i64 %k, "
             "ptr noalias readonly %bias, i64 %use_bias, i64 %relu, ptr noalias readonly %skip, "
             "i64 %use_skip) nounwind {", "entry:", "  %blocks = udiv i64 %k, 16",
             "  %ub = icmp ne i64 %use_bias, 0", "  %ur = icmp ne i64 %relu, 0",
             "  %us = icmp ne i64 %use_skip, 0"]
    body = ["  %tn = mul i64 %n, %th", "  %tr = add i64 %tn, %ti", "  %tt = mul i64 %tr, %tw",
            "  %tix = add i64 %tt, %tj", "  %toff = mul i64 %tix, %k", "  %ch = mul i64 %cb, 16",
            "  %mbase = add i64 %toff, %ch"]
    for e in range(size * size):
        body += [f"  %pl{e} = mul i64 %plane, {e}", f"  %mo{e} = add i64 %pl{e}, %mbase",
                 f"  %mp{e} = getelementptr inbounds float, ptr %m, i64 %mo{e}",
                 f"  %mv{e} = load {F16}, ptr %mp{e}, align 4"]
    for b in range(size):                    # down the height: column b's entries
        body += transform(f"h{b}_", [f"%mv{size * a + b}" for a in range(size)])
    for p in range(4):                       # along the width: output row p
        body += transform(f"y{p}_", [f"%h{b}_{p}" for b in range(size)])
    body += ["  %bp = getelementptr inbounds float, ptr %bias, i64 %ch",
             f"  %bv = load {F16}, ptr %bp, align 4",
             "  %trow = add i64 %first, %ti", "  %r0 = mul i64 %trow, 4", "  %q0 = mul i64 %tj, 4",
             "  %img = mul i64 %n, %ho"]
    for p in range(4):
        for q in range(4):
            t = f"{p}_{q}"
            nxt = f"px{p}_{q + 1}" if q < 3 else (f"px{p + 1}_0" if p < 3 else "cb_next")
            body += [f"  br label %px{t}", f"px{t}:",
                     f"  %r{t} = add i64 %r0, {p}", f"  %q{t} = add i64 %q0, {q}",
                     f"  %rin{t} = icmp slt i64 %r{t}, %ho", f"  %qin{t} = icmp slt i64 %q{t}, %wo",
                     f"  %in{t} = and i1 %rin{t}, %qin{t}",
                     f"  br i1 %in{t}, label %st{t}, label %{nxt}", f"st{t}:",
                     f"  %row{t} = add i64 %img, %r{t}", f"  %rw{t} = mul i64 %row{t}, %wo",
                     f"  %px_{t} = add i64 %rw{t}, %q{t}", f"  %po{t} = mul i64 %px_{t}, %k",
                     f"  %at{t} = add i64 %po{t}, %ch",
                     f"  %vb{t} = fadd {F16} %y{p}_{q}, %bv",
                     f"  %v1{t} = select i1 %ub, {F16} %vb{t}, {F16} %y{p}_{q}",
                     f"  %sp{t} = getelementptr inbounds float, ptr %skip, i64 %at{t}",
                     f"  %sv{t} = load {F16}, ptr %sp{t}, align 4",
                     f"  %vs{t} = fadd {F16} %v1{t}, %sv{t}",
                     f"  %v2{t} = select i1 %us, {F16} %vs{t}, {F16} %v1{t}",
                     f"  %neg{t} = fcmp olt {F16} %v2{t}, zeroinitializer",
                     f"  %vr{t} = select <16 x i1> %neg{t}, {F16} zeroinitializer, {F16} %v2{t}",
                     f"  %v3{t} = select i1 %ur, {F16} %vr{t}, {F16} %v2{t}",
                     f"  %op{t} = getelementptr inbounds float, ptr %out, i64 %at{t}",
                     f"  store {F16} %v3{t}, ptr %op{t}, align 4", f"  br label %{nxt}"]
    lines += _loops((("n", "%c"), ("ti", "%th"), ("tj", "%tw"), ("cb", "%blocks")), body)
    lines.append("}")
    return "\n".join(lines)


def _transform_s2(name, d):
    """IR lines computing the nine outputs `{name}0..8` of the stride-2 scheme's B^T along one
    axis from the nine values d[0..8], in `winograd_s2_input`'s order of operations."""
    c2 = "<float 2.0" + ", float 2.0" * 15 + ">"
    c3 = "<float 3.0" + ", float 3.0" * 15 + ">"
    return [
        f"  %{name}0 = bitcast {F16} {d[1]} to {F16}",          # the odd samples as they are
        f"  %{name}1 = bitcast {F16} {d[3]} to {F16}",
        f"  %{name}2 = bitcast {F16} {d[5]} to {F16}",
        f"  %{name}3 = bitcast {F16} {d[7]} to {F16}",
        f"  %{name}a0 = fmul {F16} {d[0]}, {c2}",
        f"  %{name}a1 = fsub {F16} %{name}a0, {d[2]}",
        f"  %{name}a2 = fmul {F16} {d[4]}, {c2}",
        f"  %{name}a3 = fsub {F16} %{name}a1, %{name}a2",
        f"  %{name}4 = fadd {F16} %{name}a3, {d[6]}",          # ((d0 2 - e2) - e4 2) + e6
        f"  %{name}b0 = fmul {F16} {d[2]}, {c2}",
        f"  %{name}b1 = fadd {F16} %{name}b0, {d[4]}",
        f"  %{name}5 = fsub {F16} %{name}b1, {d[6]}",          # (e2 2 + e4) - e6
        f"  %{name}c0 = fmul {F16} {d[4]}, {c3}",
        f"  %{name}c1 = fsub {F16} %{name}c0, %{name}b0",
        f"  %{name}6 = fsub {F16} %{name}c1, {d[6]}",          # (e4 3 - e2 2) - e6
        f"  %{name}7 = fsub {F16} {d[6]}, {d[2]}",             # e6 - e2
        f"  %{name}e0 = fsub {F16} %{name}b0, {d[4]}",
        f"  %{name}e1 = fmul {F16} {d[6]}, {c2}",
        f"  %{name}e2 = fsub {F16} %{name}e0, %{name}e1",
        f"  %{name}8 = fadd {F16} %{name}e2, {d[8]}",          # ((e2 2 - e4) - e6 2) + d8
    ]


def _ir(name="input_pass", size=6, step=4, transform=_transform):
    """An input pass: loops over images, tile rows, tile columns and blocks of 16 channels; for
    each, the size x size window at (step ti - ph, step tj - pw) (zeros outside the first h_in
    rows and w_in columns), `transform` down the height, then along the width, into the
    size * size planes. F(4x4, 3x3)'s (6, 4; tile rows from t0, h_in = H, w_in = W) by default;
    the stride-2 scheme's is (9, 8) with h_in, w_in as arguments and t0 = 0."""
    if name == "input_pass":
        args = "i64 %ph, i64 %pw, i64 %t0, i64 %th, i64 %tw"
        head = ["  %hlim = add i64 %h, 0", "  %wlim = add i64 %w, 0"]
    else:
        args = "i64 %ph, i64 %pw, i64 %h_in, i64 %w_in, i64 %th, i64 %tw"
        head = ["  %hlim = add i64 %h_in, 0", "  %wlim = add i64 %w_in, 0", "  %t0 = add i64 0, 0"]
    lines = [f"define void @{name}(ptr noalias readonly %x, i64 %c, i64 %h, i64 %w, i64 %d, "
             f"{args}, ptr noalias %out, i64 %plane) nounwind {{", "entry:",
             "  %blocks = udiv i64 %d, 16"] + head
    body = ["  %trow = add i64 %t0, %ti", f"  %r4 = mul i64 %trow, {step}",
            "  %r0 = sub i64 %r4, %ph", f"  %c4 = mul i64 %tj, {step}", "  %q0 = sub i64 %c4, %pw",
            "  %ch = mul i64 %cb, 16", "  %img = mul i64 %n, %h"]
    for i in range(size):
        body += [f"  %ri{i} = add i64 %r0, {i}",
                 f"  %rin{i} = icmp ult i64 %ri{i}, %hlim",        # 0 <= row < h_in
                 f"  %rcl{i} = select i1 %rin{i}, i64 %ri{i}, i64 0",
                 f"  %rrow{i} = add i64 %img, %rcl{i}",
                 f"  %rbase{i} = mul i64 %rrow{i}, %w"]
    for j in range(size):
        body += [f"  %qj{j} = add i64 %q0, {j}",
                 f"  %qin{j} = icmp ult i64 %qj{j}, %wlim",
                 f"  %qcl{j} = select i1 %qin{j}, i64 %qj{j}, i64 0"]
    for i in range(size):
        for j in range(size):
            t = f"{i}_{j}"
            body += [f"  %pix{t} = add i64 %rbase{i}, %qcl{j}",
                     f"  %off{t} = mul i64 %pix{t}, %d",
                     f"  %at{t} = add i64 %off{t}, %ch",
                     f"  %ptr{t} = getelementptr inbounds float, ptr %x, i64 %at{t}",
                     f"  %ld{t} = load {F16}, ptr %ptr{t}, align 4",
                     f"  %in{t} = and i1 %rin{i}, %qin{j}",
                     f"  %px{t} = select i1 %in{t}, {F16} %ld{t}, {F16} zeroinitializer"]
    for j in range(size):                    # down the height: column j's pixels
        body += transform(f"h{j}_", [f"%px{i}_{j}" for i in range(size)])
    for a in range(size):                    # along the width: row a of the height's outputs
        body += transform(f"g{a}_", [f"%h{j}_{a}" for j in range(size)])
    body += ["  %tn = mul i64 %n, %th", "  %tr = add i64 %tn, %ti", "  %tt = mul i64 %tr, %tw",
             "  %tix = add i64 %tt, %tj", "  %toff = mul i64 %tix, %d",
             "  %obase = add i64 %toff, %ch"]
    for a in range(size):
        for b in range(size):
            e = size * a + b
            body += [f"  %pl{e} = mul i64 %plane, {e}",
                     f"  %oo{e} = add i64 %pl{e}, %obase",
                     f"  %op{e} = getelementptr inbounds float, ptr %out, i64 %oo{e}",
                     f"  store {F16} %g{a}_{b}, ptr %op{e}, align 4"]
    body += ["  br label %cb_next"]
    lines += _loops((("n", "%c"), ("ti", "%th"), ("tj", "%tw"), ("cb", "%blocks")), body)
    lines.append("}")
    return "\n".join(lines)


def _build():
    """(input pass, output pass), each compiled and checked, or None; the stride-2 passes go
    into `_state` the same way."""
    try:
        engine = vgemm.compile_ir("\n".join((
            _ir(), _ir_output(), _ir("s2_input_pass", 9, 8, _transform_s2),
            _ir_output("s2_output_pass", 9, _transform_out_s2))), "vpass")
        i, p = ctypes.c_int64, ctypes.c_void_p
        argtypes = [p, i, i, i, i, i, i, i, i, i, p, i]
        fn = ctypes.CFUNCTYPE(None, *argtypes)(engine.get_function_address("input_pass"))
        fn.argtypes, fn.restype = argtypes, None
        outtypes = [p, i, i, i, i, p, i, i, i, i, p, i, i, p, i]
        out = ctypes.CFUNCTYPE(None, *outtypes)(engine.get_function_address("output_pass"))
        out.argtypes, out.restype = outtypes, None
        s2types = [p, i, i, i, i, i, i, i, i, i, i, p, i]
        s2 = ctypes.CFUNCTYPE(None, *s2types)(engine.get_function_address("s2_input_pass"))
        s2.argtypes, s2.restype = s2types, None
        _state["engine"] = engine           # the compiled code lives as long as the engine
        _state["s2"] = s2 if _checks_s2(s2) else None
        s2out = ctypes.CFUNCTYPE(None, *outtypes)(engine.get_function_address("s2_output_pass"))
        s2out.argtypes, s2out.restype = outtypes, None
        _state["s2out"] = s2out if _checks_output(s2out, 9) else None
        return (fn if _checks(fn) else None), (out if _checks_output(out) else None)
    except (ImportError, OSError, RuntimeError, AttributeError, TypeError, ValueError):
        return None, None


def run(fn, x, ph, pw, t0, th, tw, out):
    """fn (`input_pass()`) on x (c, H, W, D) into out (36, plane) from Python."""
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


def run_output(fn, m, first, th, tw, out, bias, use_bias, relu, skip, use_skip):
    """fn (`output_pass()`) on m (36, plane) into out (c, H', W', K) from Python."""
    c, ho, wo, k = out.shape
    fn(m.ctypes.data, m.shape[1], first, th, tw, out.ctypes.data, c, ho, wo, k,
       bias.ctypes.data, int(use_bias), int(relu), skip.ctypes.data, int(use_skip))


def _checks_output(fn, size=6):
    """Whether fn writes `winograd44_output`'s pixels (size 6) or `winograd_s2_output`'s
    (size 9, bias on, no skip), bit for bit, cropping, with and without bias, skip and
    ReLU."""
    fast = compiled.kernels()
    if fast is None:
        return False
    rng = np.random.default_rng(0)
    for c, ho, wo, k, flags in ((2, 7, 6, 16, (True, True, True)), (1, 8, 8, 32, (False,
                                                                                   False, True)),
                                (1, 5, 9, 16, (True, True, False))):
        th, tw = (ho + 3) // 4, (wo + 3) // 4
        if size == 9:
            flags = (True, flags[1], False)
        m = rng.standard_normal((size * size, c * th * tw * k + 8)).astype(np.float32)
        bias = rng.standard_normal(k).astype(np.float32)
        skip = rng.standard_normal((c, ho, wo, k)).astype(np.float32)
        want = np.zeros((c, ho, wo, k), np.float32)
        got = np.full_like(want, np.nan)
        if size == 9:
            fast.winograd_s2_output(m, th, tw, want, bias, flags[1])
        else:
            fast.winograd44_output(m, 0, th, tw, want, bias, flags[0], flags[1], skip, flags[2])
        run_output(fn, m, 0, th, tw, got, bias, flags[0], flags[1], skip, flags[2])
        if not np.array_equal(got, want):
            return False
    return True


def run_s2(fn, x, ph, pw, h_in, w_in, th, tw, out):
    """fn (`s2_input_pass()`) on x (c, H, W, D) into out (81, plane) from Python (tests)."""
    fn(x.ctypes.data, x.shape[0], x.shape[1], x.shape[2], x.shape[3], ph, pw, h_in, w_in, th,
       tw, out.ctypes.data, out.shape[1])


def _checks_s2(fn):
    """Whether fn writes `winograd_s2_input`'s planes, bit for bit, padded and cropped."""
    fast = compiled.kernels()
    if fast is None:
        return False
    rng = np.random.default_rng(0)
    for c, h, w, d, ph, pw, h_in, w_in, th, tw in ((2, 9, 11, 16, 1, 1, 9, 11, 2, 2),
                                                   (1, 8, 8, 32, 1, 0, 7, 8, 1, 1)):
        x = rng.standard_normal((c, h, w, d)).astype(np.float32)
        n = c * th * tw * d
        want = np.zeros((81, n + 8), np.float32)
        got = np.full_like(want, np.nan)
        fast.winograd_s2_input(x, ph, pw, h_in, w_in, th, tw, want)
        run_s2(fn, x, ph, pw, h_in, w_in, th, tw, got)
        if not (np.array_equal(got[:, :n], want[:, :n]) and np.isnan(got[:, n:]).all()):
            return False
    return True
