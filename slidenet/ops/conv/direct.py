"""Direct convolution for thin inputs: each output pixel as the lecture computes it, no rows.

A first layer sees an RGB or grey image: D = 3 or 1 channels, so a 3x3 window holds 27 or 9
numbers. im2col copies every window into a row (9 times the input) and multiplies the rows by
the filters in one GEMM. The direct pair skips the rows: for every output pixel it takes the
window where it lies in the zero-padded input and forms all K dot products at once,

    out[n, i, j, :] = b + sum over (a, c, d) of xp[n, i*S_h + a, j*S_w + c, d] * w[a, c, d, :],

with the K filters contiguous (channels last), so the loop over them is one vectorised pass and
the window's F_h*F_w*D numbers are broadcast into it. The bias and the ReLU are added in the
same pass. It runs as a compiled kernel, a chunk of images per call on the worker threads,
without the GIL: in float32 with K a multiple of 16, where the host has 512-bit registers
(AVX-512F) and llvmlite, `vdirect`'s (LLVM IR: R output pixels x K/16 vectors of filters as
accumulators in registers, a fused multiply-add per tap; the same numbers to float32 rounding,
not bit for bit, as numba's kernel); otherwise numba's `compiled.direct_conv`.

It pays where the compiler unrolls the whole window, which it does up to DIRECT_MAX_TAPS
numbers (a 3x3 window of 3 channels, a 5x5 one of 1), and where there are enough filters
(DIRECT_MIN_FILTERS) to fill a vector: then it beats im2col's rows + GEMM (with its compiled
passes). Beyond that window the same loops are not unrolled and run many times slower, so the
pair refuses it. docs/benchmarks.md ("Thin first layers", "Where the kernels' thresholds come
from") has the measurements.

Backward (with numba, at stride 1): dw and db by a compiled kernel of their own
(`compiled.direct_dw`) instead of im2col's rows and GEMM. dw[(a, b, e), k] is the sum over the
output pixels of x's number under tap (a, b, e) times pixel's gradient for filter k: with x and
dout laid out planar (one flat row per channel, of the padded width), each of those 27 x K sums
is a dot product of two contiguous rows, the x row shifted by the tap's offset, which the
compiler vectorises. That skips the rows (9 times the input, written and read again), and the
ReLU's mask is applied in the same pass that lays dout out. Strided windows take im2col's
backward. A first layer needs no dx; where one is asked for, it comes from the "full"
convolution at stride 1, else by scatter (and dw, db from im2col's GEMM with it).

Without numba the forward is im2col's: the same numbers to rounding, not bit for bit, since the
GEMM adds the window's products in its own order.
"""
import numpy as np

from slidenet.ops import compiled, vdirect
from slidenet.ops.conv import full_dx
from slidenet.ops.conv.common import ConvCache, check_shapes
from slidenet.ops.conv.im2col import conv_backward_im2col, conv_forward_im2col
from slidenet.ops.runtime import batch_chunks, bordered, empty, run_chunks

# The largest window (F_h * F_w * D numbers) the kernel is compiled well for: beyond it the
# compiler leaves its loops rolled, and the channel loop is no longer vectorised.
DIRECT_MAX_TAPS = 27
# Inputs at most this deep are "thin": deeper ones make windows too large, and their rows GEMMs
# run well anyway.
DIRECT_MAX_DEPTH = 4
# Below this many filters the vectorised loop over them is too short to beat im2col.
DIRECT_MIN_FILTERS = 16


def applies(size, depth):
    """Whether the direct kernel computes this convolution well: an input of at most
    DIRECT_MAX_DEPTH channels whose window holds at most DIRECT_MAX_TAPS numbers."""
    return depth <= DIRECT_MAX_DEPTH and size[0] * size[1] * depth <= DIRECT_MAX_TAPS


def pays(size, depth, filters):
    """Whether "auto" should take the direct pair: it applies and there are enough filters."""
    return applies(size, depth) and filters >= DIRECT_MIN_FILTERS


def conv_forward_direct(x, w, b, stride=(1, 1), pad=(0, 0), relu=False, budget=None,
                        filters=None):
    """Convolve K filters over a thin input x directly, one output pixel at a time.

    x: (N, H, W, D); w: (F_h, F_w, D, K); b: (K,); stride (S_h, S_w); pad (P_h, P_w).
    Returns out (N, H', W', K) with H' = (H + 2P_h - F_h) / S_h + 1 (W' likewise), and a
    ConvCache. relu: return max(0, out) instead. budget: scratch bytes (None: the global one).
    ValueError where the window is too large for the kernel (see `applies`). filters: the
    weights as they are (the kernel reads w itself); taken for the pairs' common signature.
    """
    fh, fw, d, k = w.shape
    if not applies((fh, fw), d):
        raise ValueError(f"a direct convolution needs at most {DIRECT_MAX_DEPTH} input channels "
                         f"and {DIRECT_MAX_TAPS} numbers per window, not a {fh}x{fw} window of "
                         f"{d} channels ({fh * fw * d}); im2col computes it faster")
    ho, wo = check_shapes(x, w, stride, pad)
    fast = compiled.kernels(x, w)
    if fast is None:
        out, cache = conv_forward_im2col(x, w, b, stride, pad, relu, budget)
        return out, cache._replace(algorithm="direct")
    n, h, wd, _ = x.shape
    (sh, sw), (ph, pw) = stride, pad
    x = np.ascontiguousarray(x)
    out = empty((n, ho, wo, k), np.result_type(x, w))
    wt = np.ascontiguousarray(w, dtype=out.dtype)
    bias = np.ascontiguousarray(b, dtype=out.dtype)
    # Tuples whose lengths are the sizes the kernel is compiled for (see `compiled.direct_conv`).
    sizes = ((0,) * fh, (0,) * fw, (0,) * d, (0,) * sh, (0,) * sw)
    padded = (h + 2 * ph, wd + 2 * pw, d)
    # In float32 with K a multiple of 16, the kernel on 512-bit registers where the host has
    # them (`vdirect`: R pixels by K/16 vectors of filters at once); else numba's.
    vector = (vdirect.kernel(fh, fw, d, sh, sw, k)
              if x.dtype == np.float32 and out.dtype == np.float32 else None)
    # Called through numba (a fraction of a microsecond) rather than ctypes (a few).
    call = vdirect.caller() if vector is not None else None
    entry = vdirect.address(vector) if call is not None else 0

    def work(sl):
        xp = x[sl]
        if pad != (0, 0):
            xp, inner = bordered("conv.dpad", (sl.stop - sl.start, *padded), x.dtype, (ph, ph, pw, pw))
            inner[...] = x[sl]
        if call is not None:
            call(entry, xp, wt, bias, out[sl], relu)
        elif vector is not None:
            vdirect.run(vector, xp, wt, bias, relu, out[sl])
        else:
            fast.direct_conv(xp, wt, bias, *sizes, relu, out[sl])

    per_image = (padded[0] * padded[1] * d + ho * wo * k) * x.itemsize
    run_chunks(work, batch_chunks(n, per_image, budget))
    return out, ConvCache("direct", x, w, tuple(stride), tuple(pad), budget, out if relu else None)


def conv_backward_direct(dout, cache, need_dx=True, relu=False):
    """Gradients of the direct convolution: without dx at stride 1, dw and db by the compiled
    `compiled.direct_dw` (im2col's without numba, or at other strides); dx (rarely asked of a
    first layer) as the "full" convolution at stride 1, else by im2col's scatter.

    dout: (N, H', W', K). Returns dx (N, H, W, D) (None when need_dx is False), dw (F_h, F_w,
    D, K), db (K,). relu: dout is first multiplied by the mask of the forward's ReLU.
    """
    if need_dx and full_dx.applies(cache.w.shape[:2], cache.stride, cache.pad):
        return full_dx.conv_backward_full(dout, cache, need_dx, relu)
    fast = compiled.kernels(cache.x, dout)
    if need_dx or fast is None or tuple(cache.stride) != (1, 1):
        return conv_backward_im2col(dout, cache, need_dx, relu)
    return None, *_direct_dw(fast, dout, cache, relu)


def _direct_dw(fast, dout, cache, relu):
    """dw (F_h, F_w, D, K) and db (K,) by `compiled.direct_dw`, chunk by chunk on the workers,
    the chunks' sums added in batch order."""
    x, w, (ph, pw) = cache.x, cache.w, cache.pad
    n, h, wd, d = x.shape
    fh, fw, _, k = w.shape
    _, ho, wo, _ = dout.shape
    dtype = np.result_type(x, dout)
    dout = np.ascontiguousarray(dout)
    mask = cache.out if relu else dout          # read only where relu
    sizes = ((0,) * fh, (0,) * fw, (0,) * d)

    def work(sl):
        dw_part, db_part = np.zeros((fh * fw * d, k), dtype), np.zeros(k, dtype)
        fast.direct_dw(x[sl], dout[sl], mask[sl], *sizes, ph, pw, relu, dw_part, db_part)
        return dw_part, db_part

    # The kernel's planar copies: x padded (H_p * W_p * D) and dout (about H' * W_p * K).
    per_image = ((h + 2 * ph) * (wd + 2 * pw) * d + ho * (wd + 2 * pw) * k) * np.dtype(dtype).itemsize
    dw = np.zeros((fh * fw * d, k), dtype)
    db = np.zeros(k, dout.dtype)
    for dw_part, db_part in run_chunks(work, batch_chunks(n, per_image, cache.budget)):
        dw += dw_part
        db += db_part
    return dw.reshape(w.shape), db
