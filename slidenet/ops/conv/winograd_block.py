"""A residual block's two F(4x4, 3x3) CONVs in one compiled call, band by band of images.

ResNet's basic block at stride 1, `{ CONV -> BN -> RELU -> CONV -> BN | ID } -> ADD -> RELU`,
is in inference (BATCHNORM folded, `layers.folding`) two convolutions of 3 x 3 filters padded
by 1 and the identity:

    h   = relu(conv(x, U_a) + b_a)
    out = relu(conv(h, U_b) + b_b + x)

Layer by layer, each CONV runs `winograd_f44.forward`: the input pass writes every tile's 36
entries for a chunk of about `runtime.chunk_bytes()` (10-12 images of 32x32x16: 2.6 MB), the
GEMMs read them and write as many products, the output pass reads those; at that size the
planes live in the shared L3 cache, and each chunk costs a few Python calls. Here one compiled
call (numba, without the GIL) runs both CONVs over a band of `band_images` images at a time,
small enough that the band's tiles, products and h stay in a core's L2 cache: the input pass,
the 36 GEMMs (`ops.blas.gemm_for`: `ops.vgemm`'s on 512-bit registers where the host has them
and D is a multiple of 16, else NumPy's own BLAS, called from the compiled loop) and the output
pass of the first CONV into h, then the same three of the second CONV, adding x and applying
the RELU where it writes out. h is never written for the whole batch.

The passes are `winograd_f44`'s compiled ones and the GEMMs the same products `np.matmul`
computes, so the numbers are the two-call path's to float32 rounding (a GEMM's sums may be
grouped otherwise). float32 only; `applies` says when it runs, and callers keep the
two calls otherwise. The kernel is compiled on first use and cached on disk as `compiled`'s
are; the GEMM is its first argument, a C function pointer passed at each call (either GEMM).
"""

import numpy as np

from slidenet.ops import blas, compiled, vgemm, vpass
from slidenet.ops.conv.winograd_f44 import LINE, tiles
from slidenet.ops.runtime import empty, run_chunks, scratch, worker_split

# A band's tiles and products (both CONVs reuse them): about half a core's L2 cache.
BAND_BYTES = 640 * 1024
# The fewest rows of a band's GEMMs (tiles): on small images (4 x 4: one tile each) a band
# within BAND_BYTES has a few rows for each D x D filter matrix that the GEMM reads, and larger
# bands ran faster (docs/benchmarks.md, "res18 inference: the small GEMMs on 512-bit registers").
BAND_ROWS = 64
# The fewest tiles per image (16: 16 x 16 images): on smaller images a band's GEMMs get too
# few rows, and the block ran slower than the two calls (docs/benchmarks.md, "res18
# inference: a residual block in one call").
MIN_TILES = 16
# The same with `ops.vgemm`'s GEMMs, which do not pack their operands and lose nothing on short
# products: every image size (res18's 8 x 8 and 4 x 4 blocks too).
VECTOR_MIN_TILES = 1


def kernel():
    """The compiled block kernel, or None without numba or without `blas.sgemm`."""
    return _kernel()


def applies(x, first, second):
    """Whether `forward` runs this block: x a float32 C-contiguous batch of 2 or more images
    (N, H, W, D) of at least MIN_TILES tiles of 4 x 4 outputs each (VECTOR_MIN_TILES where
    `vgemm.sgemm(D)` is there), one image's tiles and
    products within BAND_BYTES (a larger image keeps `winograd_f44.forward`'s bands of tile
    rows, whose scratch stays within `runtime.chunk_bytes()`); first and second
    `dispatch.PreparedConv`s of F(4x4, 3x3) ("winograd44"), padded by 1, from D to D channels
    (the identity's sum needs the same depth), float32, the first with its RELU; the compiled
    kernels on (`compiled.set_enabled`) and the block kernel available."""
    if not (isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype == np.float32
            and x.flags.c_contiguous and len(x) >= 2):
        return False
    d = x.shape[3]
    count = tiles(x.shape[1]) * tiles(x.shape[2])
    least = VECTOR_MIN_TILES if vgemm.sgemm(d) is not None else MIN_TILES
    if count < least or 36 * count * 2 * d * 4 > BAND_BYTES:
        return False
    for p in (first, second):
        if (p.algorithm != "winograd44" or tuple(p.pad) != (1, 1) or tuple(p.stride) != (1, 1)
                or p.filters.dtype != np.float32 or p.filters.shape != (36, d, d)
                or p.b.dtype != np.float32 or not p.filters.flags.c_contiguous):
            return False
    return bool(first.relu) and compiled.kernels() is not None and kernel() is not None


def band_images(h, w, d):
    """Images per band: their tiles and products within BAND_BYTES, or more where that leaves
    a band's GEMMs fewer than BAND_ROWS rows (at least one)."""
    count = tiles(h) * tiles(w)
    return max(1, BAND_BYTES // (36 * count * 2 * d * 4), -(-BAND_ROWS // count))


def forward(x, first, second, relu=True):
    """out = relu(conv(relu(conv(x) + b_1)) + b_2 + x) (the last relu when `relu`) for a block
    that `applies`; x (N, H, W, D) -> out (N, H, W, D). The batch is split once between the
    worker threads (not at all on a worker thread: `runtime.worker_split`), each running
    bands of `band_images` images."""
    n, h, w, d = x.shape
    th, tw = tiles(h), tiles(w)
    per = band_images(h, w, d)
    out = empty(x.shape, np.float32)
    run, gemm = kernel(), blas.gemm_for(d)
    inpass, outpass = (vpass.input_pass(), vpass.output_pass()) if d % 16 == 0 else (None, None)
    vector = _kernel_vector() if inpass is not None and outpass is not None else None

    def work(sl):
        rows = per * th * tw * d
        v = scratch("block.v", (36, rows + LINE), np.float32)
        m = scratch("block.m", (36, rows + LINE), np.float32)
        mid = scratch("block.h", (per, h, w, d), np.float32)
        if vector is not None:
            vector(gemm, inpass, outpass, x[sl], first.filters, first.b, second.filters, second.b,
                   bool(relu), out[sl], per, mid, v, m)
            return
        wide = scratch("block.wide", (6, 4 * th + 2, tw * d), np.float32)
        run(gemm, x[sl], first.filters, first.b, second.filters, second.b, bool(relu),
            out[sl], per, mid, v, m, wide)

    run_chunks(work, worker_split(n))
    return out


# The compiled passes `_block` calls, set by `_build` before it is compiled (numba reads a
# function's globals when it compiles it; a closure's would keep it from the disk cache).
_input = _output = None


def _build(fast):
    """The kernel, numba-compiled (cached on disk) with `fast`'s passes; its first argument
    is the ctypes function `blas.sgemm`, a pointer passed at each call."""
    global _input, _output
    _input, _output = fast.winograd44_input, fast.winograd44_output
    return compiled.jit(_block)


_kernel = blas.GemmKernel(_build)


def _build_vector(fast):
    """`_block_vector`, numba-compiled (cached on disk); its passes are arguments."""
    return compiled.jit(_block_vector)


_kernel_vector = blas.GemmKernel(_build_vector)


def _block(gemm, x, ua, ba, ub, bb, relu, out, per, mid, v, m, wide):
    """x, out (c, H, W, D); ua, ub (36, D, D); ba, bb (D,); mid (>= per, H, W, D): h of a
    band; v, m (36, >= per*T_h*T_w*D + LINE): a band's tiles and products; wide: the input
    pass's scratch. gemm: `blas.gemm_for(D)`."""
    c, h, w, d = x.shape
    th, tw = (h + 3) // 4, (w + 3) // 4
    for i0 in range(0, c, per):
        i1 = min(c, i0 + per)
        rows = (i1 - i0) * th * tw
        hb = mid[:i1 - i0]
        xb = x[i0:i1]
        _input(xb, 1, 1, 0, th, tw, wide, v)
        for e in range(36):
            gemm(101, 111, 111, rows, d, d, 1.0, v[e].ctypes.data, d, ua[e].ctypes.data, d, 0.0,
                 m[e].ctypes.data, d)
        _output(m, 0, th, tw, hb, ba, True, True, xb, False)
        _input(hb, 1, 1, 0, th, tw, wide, v)
        for e in range(36):
            gemm(101, 111, 111, rows, d, d, 1.0, v[e].ctypes.data, d, ub[e].ctypes.data, d, 0.0,
                 m[e].ctypes.data, d)
        _output(m, 0, th, tw, out[i0:i1], bb, True, relu, xb, True)


def _block_vector(gemm, inpass, outpass, x, ua, ba, ub, bb, relu, out, per, mid, v, m):
    """`_block` with `ops.vpass`'s passes (inpass, outpass: ctypes functions) for D a multiple
    of 16: the same numbers, bit for bit, each tile's 16 channels in a register, without the
    numba passes' rows between their two axes; no scratch for them."""
    c, h, w, d = x.shape
    th, tw = (h + 3) // 4, (w + 3) // 4
    for i0 in range(0, c, per):
        i1 = min(c, i0 + per)
        rows = (i1 - i0) * th * tw
        hb = mid[:i1 - i0]
        xb = x[i0:i1]
        inpass(xb.ctypes.data, i1 - i0, h, w, d, 1, 1, 0, th, tw, v.ctypes.data, v.shape[1])
        for e in range(36):
            gemm(101, 111, 111, rows, d, d, 1.0, v[e].ctypes.data, d, ua[e].ctypes.data, d, 0.0,
                 m[e].ctypes.data, d)
        outpass(m.ctypes.data, m.shape[1], 0, th, tw, hb.ctypes.data, i1 - i0, h, w, d,
                ba.ctypes.data, 1, 1, xb.ctypes.data, 0)
        inpass(hb.ctypes.data, i1 - i0, h, w, d, 1, 1, 0, th, tw, v.ctypes.data, v.shape[1])
        for e in range(36):
            gemm(101, 111, 111, rows, d, d, 1.0, v[e].ctypes.data, d, ub[e].ctypes.data, d, 0.0,
                 m[e].ctypes.data, d)
        ob = out[i0:i1]
        outpass(m.ctypes.data, m.shape[1], 0, th, tw, ob.ctypes.data, i1 - i0, h, w, d,
                bb.ctypes.data, 1, 1 if relu else 0, xb.ctypes.data, 1)
