"""A downsampling residual block in one compiled call, band by band of images (inference).

ResNet's downsampling block, `{ CONV(k, s=2) -> BN -> RELU -> CONV(k) -> BN | CONV(k, 1x1, s=2)
-> BN } -> ADD -> RELU`, is in inference (BATCHNORM folded, `layers.folding`) a 3 x 3 CONV at
stride 2, a 3 x 3 CONV at stride 1 padded by 1, and a 1x1 projection at stride 2:

    h   = relu(conv_s2(x, U_a) + b_a)                      (N, H', W', K)
    p   = x[:, ::2, ::2] @ W_p                             (the projection, without its bias)
    out = relu(conv(h, U_b) + (b_b + b_p) + p)

Layer by layer it is three calls (`winograd_s2.forward`, a strided copy and a GEMM for the
projection, `winograd_f44.forward` adding the projection), each over the whole batch, with h
and p written out for all of it. Here one compiled call (numba, without the GIL) runs a band of
`band_images` images at a time through: the stride-2 input pass, its 81 GEMMs and output pass
into h; the projection's pixels picked into a small array and one GEMM into p; F(4x4, 3x3)'s
input pass on h, 36 GEMMs and the output pass adding p, the summed biases and the RELU where it
writes out. The GEMMs are `ops.blas.gemm_for(K)`'s (`ops.vgemm` on 512-bit registers where the
host has them and K is a multiple of 16, else NumPy's own BLAS, as `np.matmul`); the passes are
`compiled`'s. The two biases are added once, as their sum: the numbers are the three calls' to
float32 rounding.

float32 only; `applies` says when it runs, and callers keep the three calls otherwise. The
kernel is compiled on first use and cached on disk, as `winograd_block`'s.
"""

import numpy as np

from slidenet.ops import blas, compiled, vgemm, vpass
from slidenet.ops.conv.winograd_s2 import LINE, tiles
from slidenet.ops.runtime import empty, run_chunks, scratch, worker_split

# A band's tiles and products of both CONVs, h and the projection: past a core's L2 cache,
# since at 16 tiles an image the GEMMs need several images for rows (docs/benchmarks.md,
# "res18 inference: the downsampling block in one call").
BAND_BYTES = 4 * 1024 * 1024
# The fewest output tiles per image (4: 8 x 8 outputs): on res18's last downsampling block (1
# tile, 4 x 4 outputs) one call was level with the three calls (docs/benchmarks.md, as above).
MIN_TILES = 4
# The same with `ops.vgemm`'s GEMMs (no packing, nothing lost on short products): the last
# block too.
VECTOR_MIN_TILES = 1


class Projection:
    """A prepared 1x1 projection at stride (S_h, S_w): w (D, K) float32, b (K,), stride."""

    def __init__(self, w, b, stride):
        self.w = np.ascontiguousarray(w.reshape(w.shape[-2], w.shape[-1]))
        self.b = b
        self.stride = tuple(stride)


def kernel():
    """The compiled kernel, or None without numba or without `blas.sgemm`."""
    return _kernel()


def out_size(x, sides):
    """(H', W') of the stride-2 CONV on x through per-side padding sides = (before, after)."""
    (bh, bw), (ah, aw) = sides
    return (x.shape[1] + bh + ah - 3) // 2 + 1, (x.shape[2] + bw + aw - 3) // 2 + 1


def applies(x, first, sides, projection, second):
    """Whether `forward` runs this block: x a float32 C-contiguous batch (N, H, W, D) of 2 or
    more images, whose output (H', W') has at least MIN_TILES tiles of 4 x 4 (VECTOR_MIN_TILES
    where `vgemm.sgemm(K)` is there); first a
    `dispatch.PreparedConv` of "winograd_s2" (D -> K, with its RELU) read
    through sides = (before, after), before (1, 1); projection a `Projection` (D -> K, stride
    (2, 2)) whose picked pixels lie in x; second a "winograd44" PreparedConv (K -> K, padded by
    1); all float32, the compiled kernels on and the kernel available."""
    if not (isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype == np.float32
            and x.flags.c_contiguous and len(x) >= 2):
        return False
    d = x.shape[3]
    if (first.algorithm != "winograd_s2" or not first.relu or tuple(sides[0]) != (1, 1)
            or first.filters.dtype != np.float32 or first.filters.shape[:2] != (81, d)
            or not first.filters.flags.c_contiguous or first.b.dtype != np.float32):
        return False
    k = first.filters.shape[2]
    ho, wo = out_size(x, sides)
    least = VECTOR_MIN_TILES if vgemm.sgemm(k) is not None else MIN_TILES
    if (tiles(ho) * tiles(wo) < least or 2 * (ho - 1) >= x.shape[1]
            or 2 * (wo - 1) >= x.shape[2]):
        return False
    if (projection.stride != (2, 2) or projection.w.shape != (d, k)
            or projection.w.dtype != np.float32 or projection.b.dtype != np.float32):
        return False
    if (second.algorithm != "winograd44" or tuple(second.pad) != (1, 1)
            or second.filters.shape != (36, k, k) or second.filters.dtype != np.float32
            or not second.filters.flags.c_contiguous or second.b.dtype != np.float32):
        return False
    return compiled.kernels() is not None and kernel() is not None


def band_images(ho, wo, d, k):
    """Images per band: their tiles, products, h and projection within BAND_BYTES (at least
    one)."""
    t = tiles(ho) * tiles(wo)
    per_image = 4 * (81 * t * (d + k) + 36 * t * 2 * k + ho * wo * (2 * k + d))
    return max(1, BAND_BYTES // per_image)


def forward(x, first, sides, projection, second, relu=True):
    """out = [relu](conv(relu(conv_s2(x) + b_1)) + b_2 + x[:, ::2, ::2] @ W_p + b_p) for a block
    that `applies`; x (N, H, W, D) -> out (N, H', W', K). The batch is split once between the
    worker threads (not at all on a worker thread: `runtime.worker_split`), each running
    bands of `band_images` images."""
    n, h, w, d = x.shape
    k = first.filters.shape[2]
    ho, wo = out_size(x, sides)
    th, tw = tiles(ho), tiles(wo)
    (ph, pw), (ah, aw) = sides
    h_in, w_in = h + min(ah, 0), w + min(aw, 0)
    per = band_images(ho, wo, d, k)
    bias = (second.b + projection.b).astype(np.float32)
    out = empty((n, ho, wo, k), np.float32)
    run, gemm = kernel(), blas.gemm_for(k)
    passes = (vpass.s2_input_pass(), vpass.s2_output_pass(), vpass.input_pass(),
              vpass.output_pass()) if d % 16 == 0 and k % 16 == 0 else (None,)
    vector = _kernel_vector() if None not in passes else None

    def work(sl):
        t = per * th * tw
        v1 = scratch("down.v1", (81, t * d + LINE), np.float32)
        m1 = scratch("down.m1", (81, t * k + LINE), np.float32)
        v2 = scratch("down.v2", (36, t * k + LINE), np.float32)
        m2 = scratch("down.m2", (36, t * k + LINE), np.float32)
        mid = scratch("down.h", (per, ho, wo, k), np.float32)
        pick = scratch("down.pick", (per, ho, wo, d), np.float32)
        skip = scratch("down.skip", (per, ho, wo, k), np.float32)
        if vector is not None:
            vector(gemm, *passes, x[sl], ph, pw, h_in, w_in, first.filters, first.b,
                   projection.w, second.filters, bias, bool(relu), out[sl], per, mid, pick,
                   skip, v1, m1, v2, m2)
            return
        wide = scratch("down.wide", (6, 4 * th + 2, tw * k), np.float32)
        run(gemm, x[sl], ph, pw, h_in, w_in, first.filters, first.b, projection.w,
            second.filters, bias, bool(relu), out[sl], per, mid, pick, skip, v1, m1, v2, m2,
            wide)

    run_chunks(work, worker_split(n))
    return out


# The compiled passes `_down` calls, set by `_build` before it is compiled (numba reads a
# function's globals when it compiles it).
_s2_input = _s2_output = _input = _output = None


def _build(fast):
    """The kernel, numba-compiled (cached on disk) with `fast`'s passes."""
    global _s2_input, _s2_output, _input, _output
    _s2_input, _s2_output = fast.winograd_s2_input, fast.winograd_s2_output
    _input, _output = fast.winograd44_input, fast.winograd44_output
    return compiled.jit(_down)


_kernel = blas.GemmKernel(_build)


def _build_vector(fast):
    """`_down_vector`, numba-compiled (cached on disk); its passes are arguments."""
    return compiled.jit(_down_vector)


_kernel_vector = blas.GemmKernel(_build_vector)


def _down(gemm, x, ph, pw, h_in, w_in, ua, ba, wp, ub, bias, relu, out, per, mid, pick, skip,
          v1, m1, v2, m2, wide):
    """x (c, H, W, D); out (c, H', W', K); ua (81, D, K), ba (K,): the stride-2 CONV; wp (D, K):
    the projection; ub (36, K, K), bias (K,): the second CONV and both biases summed; mid,
    skip (>= per, H', W', K), pick (>= per, H', W', D): a band's h, projection and picked
    pixels; v1, m1 (81, ...), v2, m2 (36, ...): a band's tiles and products; wide: the F(4x4,
    3x3) input pass's scratch. gemm: `blas.gemm_for(K)`."""
    c, _, _, d = x.shape
    _, ho, wo, k = out.shape
    th, tw = (ho + 3) // 4, (wo + 3) // 4
    for i0 in range(0, c, per):
        i1 = min(c, i0 + per)
        b = i1 - i0
        rows = b * th * tw
        xb = x[i0:i1]
        hb = mid[:b]
        pb = pick[:b]
        sb = skip[:b]
        _s2_input(xb, ph, pw, h_in, w_in, th, tw, v1)
        for e in range(81):
            gemm(101, 111, 111, rows, k, d, 1.0, v1[e].ctypes.data, d, ua[e].ctypes.data, k,
                 0.0, m1[e].ctypes.data, k)
        _s2_output(m1, th, tw, hb, ba, True)
        for n in range(b):                      # the pixels a 1x1 window at stride 2 reads
            for i in range(ho):
                src, dst = xb[n, 2 * i], pb[n, i]
                for j in range(wo):
                    for q in range(d):
                        dst[j, q] = src[2 * j, q]
        gemm(101, 111, 111, b * ho * wo, k, d, 1.0, pb.ctypes.data, d, wp.ctypes.data, k, 0.0,
             sb.ctypes.data, k)
        _input(hb, 1, 1, 0, th, tw, wide, v2)
        for e in range(36):
            gemm(101, 111, 111, rows, k, k, 1.0, v2[e].ctypes.data, k, ub[e].ctypes.data, k,
                 0.0, m2[e].ctypes.data, k)
        _output(m2, 0, th, tw, out[i0:i1], bias, True, relu, sb, True)


def _down_vector(gemm, s2in, s2out, inpass, outpass, x, ph, pw, h_in, w_in, ua, ba, wp, ub,
                 bias, relu, out, per, mid, pick, skip, v1, m1, v2, m2):
    """`_down` with `ops.vpass`'s passes (ctypes functions: the stride-2 scheme's input and
    output passes, F(4x4, 3x3)'s) for D and K multiples of 16: the same numbers, bit for
    bit."""
    c, h, w, d = x.shape
    _, ho, wo, k = out.shape
    th, tw = (ho + 3) // 4, (wo + 3) // 4
    for i0 in range(0, c, per):
        i1 = min(c, i0 + per)
        b = i1 - i0
        rows = b * th * tw
        xb = x[i0:i1]
        hb = mid[:b]
        pb = pick[:b]
        sb = skip[:b]
        s2in(xb.ctypes.data, b, h, w, d, ph, pw, h_in, w_in, th, tw, v1.ctypes.data,
             v1.shape[1])
        for e in range(81):
            gemm(101, 111, 111, rows, k, d, 1.0, v1[e].ctypes.data, d, ua[e].ctypes.data, k,
                 0.0, m1[e].ctypes.data, k)
        s2out(m1.ctypes.data, m1.shape[1], 0, th, tw, hb.ctypes.data, b, ho, wo, k,
              ba.ctypes.data, 1, 1, hb.ctypes.data, 0)
        for n in range(b):                      # the pixels a 1x1 window at stride 2 reads
            for i in range(ho):
                src, dst = xb[n, 2 * i], pb[n, i]
                for j in range(wo):
                    for q in range(d):
                        dst[j, q] = src[2 * j, q]
        gemm(101, 111, 111, b * ho * wo, k, d, 1.0, pb.ctypes.data, d, wp.ctypes.data, k, 0.0,
             sb.ctypes.data, k)
        inpass(hb.ctypes.data, b, ho, wo, k, 1, 1, 0, th, tw, v2.ctypes.data, v2.shape[1])
        for e in range(36):
            gemm(101, 111, 111, rows, k, k, 1.0, v2[e].ctypes.data, k, ub[e].ctypes.data, k,
                 0.0, m2[e].ctypes.data, k)
        ob = out[i0:i1]
        outpass(m2.ctypes.data, m2.shape[1], 0, th, tw, ob.ctypes.data, b, ho, wo, k,
                bias.ctypes.data, 1, 1 if relu else 0, sb.ctypes.data, 1)
