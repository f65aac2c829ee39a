"""C = A @ B in float32 on the machine's 512-bit vector registers, for B of 16 x j columns.

The Winograd kernels of inference (`conv.winograd_block`, `conv.winograd_down`) make many
small products per band of images: 36 or 81 of (rows x D) @ (D x K) with D, K = 16 or 32 and a
few hundred rows. NumPy's BLAS runs them with the kernels the environment chose
(`OPENBLAS_CORETYPE`), and on so few columns and so short an inner size its packing and its
256-bit kernels leave much of a 512-bit core idle. Here one row of C with 16 columns is one
register of 16 floats: for R rows at a time the kernel keeps R x (K / 16) accumulators, and for
each of the D terms loads one row of B (K / 16 registers) and adds A[r, t] times it into each
row's accumulators (a broadcast and a fused multiply-add): no packing, no copy of A or B.

The loops are written in LLVM's IR and compiled by llvmlite (numba's compiler library) for the
host CPU. numba's own loops were tried for these products and did not vectorise (docs/
benchmarks.md, "res18 inference: the GEMMs are the floor"); the IR says the vectors outright.

    gemm = vgemm.sgemm(n)     # a ctypes function with cblas_sgemm's arguments, or None
    gemm(101, 111, 111, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc)

It takes `blas.sgemm`'s arguments, so the compiled kernels call either through the same
argument, but computes only the row-major, untransposed C = A @ B (alpha 1, beta 0, which is all
those kernels ask), and only for the n (a multiple of 16) that `sgemm(n)` was asked for.
The products are the same sums in another order: equal to `np.matmul`'s to float32 rounding.
None without llvmlite, without 512-bit registers (AVX-512F) on the host, with
``SLIDENET_VGEMM=0`` in the environment, or if the compiled function fails a check against
`np.matmul`: callers keep `blas.sgemm`.
"""
import ctypes
import os
import threading

import numpy as np

from slidenet.errors import SlidenetError
from slidenet.ops import blas

# Rows of C a block takes, by registers per row (16 columns each): R x V accumulators and V
# registers of B within the 32 that AVX-512 has.
ROWS = {1: 8, 2: 6, 4: 6}
_state = {"done": False, "fns": {}}
_lock = threading.Lock()


def sgemm(n):
    """The checked ctypes function for products of n columns, or None where n is not a multiple
    of 16 (and see the module docstring). Columns go 64 or 32 at a time where n allows, else 16."""
    if n <= 0 or n % 16:
        return None
    if not _state["done"]:
        with _lock:
            if not _state["done"]:
                _state["fns"] = _build() if os.environ.get("SLIDENET_VGEMM", "1") != "0" \
                    else {}
                _state["done"] = True
    return _state["fns"].get(4 if n % 64 == 0 else 2 if n % 32 == 0 else 1)


def sgemm_t(n):
    """As `sgemm(n)`, for C = A^T @ B with A stored transposed: cblas_sgemm's row-major call
    with trans_a (A is k x m, row stride lda), which is how training's dw products read their
    rows of dout (`ops.stacked`). None where `sgemm(n)` is None."""
    if sgemm(n) is None:
        return None
    return _state["fns"].get(("t", 4 if n % 64 == 0 else 2 if n % 32 == 0 else 1))


def _ir(name, v, r, int_type, trans_a=False):
    """The IR of one function: columns in blocks of 16 v, rows in blocks of r, the rows left
    over in blocks of r // 2, r // 4, ... 1. trans_a: A is stored transposed (k x m, row
    stride lda), so A[i, t] is at t * lda + i and a block's r numbers of one term lie side by
    side."""
    f16 = "<16 x float>"
    lines = [f"define void @{name}(i32 %order, i32 %ta, i32 %tb, {int_type} %m0, "
             f"{int_type} %n0, {int_type} %k0, float %alpha, ptr noalias readonly %a, "
             f"{int_type} %lda0, ptr noalias readonly %b, {int_type} %ldb0, float %beta, "
             f"ptr noalias %c, {int_type} %ldc0) nounwind {{", "entry:"]
    for p in ("m", "n", "k", "lda", "ldb", "ldc"):
        lines.append(f"  %{p} = sext {int_type} %{p}0 to i64" if int_type != "i64"
                     else f"  %{p} = add i64 %{p}0, 0")
    lines += [f"  %acc_{i}_{j} = alloca {f16}, align 64" for i in range(r) for j in range(v)]
    lines += ["  %j = alloca i64", "  %i = alloca i64", "  %kk = alloca i64",
              "  store i64 0, ptr %j", "  br label %jhead",
              "jhead:", "  %jv = load i64, ptr %j", "  %jgo = icmp slt i64 %jv, %n",
              "  br i1 %jgo, label %jbody, label %exit",
              "jbody:", "  store i64 0, ptr %i", "  br label %B0head"]

    def block(tag, rows, step_next, done_next):
        """Rows `rows` at a time from %i while a whole block fits, then `done_next`."""
        out = [f"{tag}head:", f"  %{tag}iv = load i64, ptr %i",
               f"  %{tag}end = add i64 %{tag}iv, {rows}",
               f"  %{tag}go = icmp sle i64 %{tag}end, %m",
               f"  br i1 %{tag}go, label %{tag}zero, label %{done_next}",
               f"{tag}zero:"]
        out += [f"  store {f16} zeroinitializer, ptr %acc_{i}_{j}, align 64"
                for i in range(rows) for j in range(v)]
        out += ["  store i64 0, ptr %kk", f"  br label %{tag}khead",
                f"{tag}khead:", f"  %{tag}kv = load i64, ptr %kk",
                f"  %{tag}kgo = icmp slt i64 %{tag}kv, %k",
                f"  br i1 %{tag}kgo, label %{tag}kbody, label %{tag}store",
                f"{tag}kbody:", f"  %{tag}brow = mul i64 %{tag}kv, %ldb",
                f"  %{tag}bcol = add i64 %{tag}brow, %jv"]
        for j in range(v):
            out += [f"  %{tag}bo{j} = add i64 %{tag}bcol, {16 * j}",
                    f"  %{tag}bp{j} = getelementptr inbounds float, ptr %b, i64 %{tag}bo{j}",
                    f"  %{tag}bv{j} = load {f16}, ptr %{tag}bp{j}, align 4"]
        for i in range(rows):
            out.append(f"  %{tag}ar{i} = add i64 %{tag}iv, {i}")
            if trans_a:
                out += [f"  %{tag}ao{i} = mul i64 %{tag}kv, %lda",
                        f"  %{tag}ak{i} = add i64 %{tag}ao{i}, %{tag}ar{i}"]
            else:
                out += [f"  %{tag}ao{i} = mul i64 %{tag}ar{i}, %lda",
                        f"  %{tag}ak{i} = add i64 %{tag}ao{i}, %{tag}kv"]
            out += [f"  %{tag}ap{i} = getelementptr inbounds float, ptr %a, i64 %{tag}ak{i}",
                    f"  %{tag}as{i} = load float, ptr %{tag}ap{i}, align 4",
                    f"  %{tag}ai{i} = insertelement {f16} poison, float %{tag}as{i}, i64 0",
                    f"  %{tag}sp{i} = shufflevector {f16} %{tag}ai{i}, {f16} poison, "
                    f"<16 x i32> zeroinitializer"]
            for j in range(v):
                out += [f"  %{tag}o{i}_{j} = load {f16}, ptr %acc_{i}_{j}, align 64",
                        f"  %{tag}n{i}_{j} = call {f16} @llvm.fma.v16f32({f16} %{tag}sp{i}, "
                        f"{f16} %{tag}bv{j}, {f16} %{tag}o{i}_{j})",
                        f"  store {f16} %{tag}n{i}_{j}, ptr %acc_{i}_{j}, align 64"]
        out += [f"  %{tag}kn = add i64 %{tag}kv, 1", f"  store i64 %{tag}kn, ptr %kk",
                f"  br label %{tag}khead", f"{tag}store:"]
        for i in range(rows):
            out += [f"  %{tag}cr{i} = add i64 %{tag}iv, {i}",
                    f"  %{tag}co{i} = mul i64 %{tag}cr{i}, %ldc",
                    f"  %{tag}cj{i} = add i64 %{tag}co{i}, %jv"]
            for j in range(v):
                out += [f"  %{tag}cc{i}_{j} = add i64 %{tag}cj{i}, {16 * j}",
                        f"  %{tag}cp{i}_{j} = getelementptr inbounds float, ptr %c, "
                        f"i64 %{tag}cc{i}_{j}",
                        f"  %{tag}cv{i}_{j} = load {f16}, ptr %acc_{i}_{j}, align 64",
                        f"  store {f16} %{tag}cv{i}_{j}, ptr %{tag}cp{i}_{j}, align 4"]
        out += [f"  store i64 %{tag}end, ptr %i", f"  br label %{step_next}"]
        return out

    sizes = [r]                     # then halves for the rows left over: 6, 3, 1 or 8, 4, 2, 1
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    for t, rows in enumerate(sizes):
        after = f"B{t + 1}head" if t + 1 < len(sizes) else "jnext"
        lines += block(f"B{t}", rows, f"B{t}head", after)
    lines += ["jnext:", f"  %jn = add i64 %jv, {16 * v}", "  store i64 %jn, ptr %j",
              "  br label %jhead", "exit:", "  ret void", "}"]
    return "\n".join(lines)


def _build():
    """{1: fn, 2: fn, 4: fn}, by registers per row of a column block, and the same keyed
    ("t", v) for A transposed, compiled and checked; or {}."""
    gemm = blas.sgemm()
    if gemm is None:
        return {}
    try:
        import llvmlite.binding as llvm
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        if not llvm.get_host_cpu_features().get("avx512f", False):
            return {}
        int_type = "i64" if gemm.argtypes[3] is ctypes.c_int64 else "i32"
        body = "\n".join([_ir(f"vgemm{v}", v, ROWS[v], int_type) for v in ROWS]
                         + [_ir(f"vgemmt{v}", v, ROWS[v], int_type, True) for v in ROWS])
        engine = compile_ir("declare <16 x float> @llvm.fma.v16f32(<16 x float>, "
                            "<16 x float>, <16 x float>)\n" + body, "vgemm")
        fns = {}
        for trans_a, v in [(False, v) for v in ROWS] + [(True, v) for v in ROWS]:
            name = f"vgemmt{v}" if trans_a else f"vgemm{v}"
            fn = ctypes.CFUNCTYPE(None, *gemm.argtypes)(engine.get_function_address(name))
            fn.argtypes, fn.restype = gemm.argtypes, None
            if not _checks(fn, 16 * v, trans_a):
                return {}
            fns[("t", v) if trans_a else v] = fn
        _state["engine"] = engine           # the compiled code lives as long as the engine
        return fns
    except (ImportError, OSError, RuntimeError, AttributeError, TypeError, ValueError):
        return {}


def compile_ir(text, tag):
    """An llvmlite execution engine holding the IR `text` compiled for the host CPU (keep it
    alive as long as its functions are called).

    The object code is cached on disk beside numba's caches (`__pycache__` here, or
    NUMBA_CACHE_DIR), named by a hash of the IR, the CPU, its features and llvmlite's version,
    and written atomically: a later process loads it in milliseconds instead of optimising and
    compiling again (a few tenths of a second). Where nothing can be written, each process
    compiles. The caller still checks the functions before it hands them out."""
    import hashlib

    import llvmlite
    import llvmlite.binding as llvm
    cpu, features = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
    key = hashlib.sha256("\0".join((text, cpu, features, llvmlite.__version__)).encode())
    folder = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(os.path.dirname(__file__),
                                                                "__pycache__")
    path = os.path.join(folder, f"{tag}-{key.hexdigest()[:24]}.o")
    try:
        with open(path, "rb") as fh:
            cached = fh.read()
    except OSError:
        cached = None
    module = llvm.parse_assembly(text)
    module.verify()
    machine = llvm.Target.from_default_triple().create_target_machine(cpu=cpu,
                                                                      features=features, opt=3)
    if cached is None:
        builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(3))
        builder.getModulePassManager().run(module, builder)
    engine = llvm.create_mcjit_compiler(module, machine)

    def store(_module, data):
        if cached is None:
            try:
                from slidenet.storage.writing import write_bytes
                os.makedirs(folder, exist_ok=True)
                write_bytes(path, bytes(data))
            except (OSError, SlidenetError):
                pass                            # no cache: the next process compiles again

    engine.set_object_cache(store, lambda _module: cached)
    engine.finalize_object()
    return engine


def _checks(fn, width, trans_a=False):
    """Whether fn computes C = A @ B as np.matmul does on shapes that take every path (columns
    in blocks of `width`): rows in whole blocks and left over, one and more column blocks,
    strided operands, and leaves C's other columns alone. trans_a: A stored transposed."""
    rng = np.random.default_rng(0)
    for m, n, k in ((13, width, 5), (8, 2 * width, 16), (29, 4 * width, 33), (1, width, 1),
                    (7, width, 2), (15, width, 3)):
        a = rng.standard_normal((k, m + 3) if trans_a else (m, k + 3)).astype(np.float32)
        b = rng.standard_normal((k, n + 16)).astype(np.float32)
        c = np.full((m, n + 5), np.nan, np.float32)
        fn(101, 112 if trans_a else 111, 111, m, n, k, 1.0, a.ctypes.data, a.shape[1],
           b.ctypes.data, n + 16, 0.0, c.ctypes.data, n + 5)
        a_mk = a[:, :m].T if trans_a else a[:, :k]
        if not (np.allclose(c[:, :n], a_mk @ b[:, :n], rtol=1e-5, atol=1e-5)
                and np.isnan(c[:, n:]).all()):
            return False
    return True
