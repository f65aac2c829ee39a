"""Winograd's F(4x4, 3x3): a 4 x 4 block of outputs of a 3 x 3 filter from 36 products.

`winograd_f43` applies F(4, 3) down the height only: each of its six products is a whole
width window (3 x D numbers) times a filter row, so an output costs 6/4 x 3 x D x K
multiply-adds, half the lecture's 9 x D x K. Applying the same F(4, 3) along the width too
turns a 6 x 6 tile of the padded input into 36 numbers per channel, and each product is a
channel vector times a D x K matrix:

    Y = A^T [ (G w G^T) * (B^T d B) ] A        (* entry by entry: 36 GEMMs of D x K)

with F(4, 3)'s B^T, G and A^T (`winograd_f43`'s docstring derives them). That is 36/16 x D x K
multiply-adds an output, a quarter of the lecture's and half of F(4, 3) down the height, and
the GEMMs read 36/16 of the input instead of 6/4 x 3 = 4.5 times it. The price is a narrower
GEMM (inner size D instead of 3 x D) and more float32 rounding: every number passes two
transforms each way (`scripts/conv_accuracy.py` measures it against float64).

The passes (compiled with numba; `ops.compiled`'s `winograd44_*`, the same shared sums as
F(4, 3)'s, first down the height, then along the width):

    rows     xp (c, 4T + 2, 4S + 2, D) -> (36, c*T*S, D)      B^T d B of each tile
    output   (36, c*T*S, K) -> out (c, H', W', K)            A^T m A, bias, ReLU, edges cropped
    adjoint  x (c, H, W, D) -> (36, c*T*S, D)                 A x A^T: `output` transposed

Backward is `winograd`'s argument in two dimensions: dx of a stride-1 convolution is the full
convolution of dout (padded by 2 - P) with the flipped filters, so dx = output(rows(dout) @
U_flip); and the flipped filters' 36 matrices get rows(dout)^T @ adjoint(x), summed over
tiles, from which dw = G^T dU G. One set of rows of dout serves both GEMMs.

Without numba the passes are NumPy tensor products on strided views of the tiles (another
order of the same sums: equal to rounding, not bit for bit). The filters' transform G w G^T
and dw = G^T dU G are computed in float64 and rounded once.
"""
import numpy as np

from slidenet.ops import compiled
from slidenet.ops.conv.common import ConvCache, check_shapes, finish_rows, flipped, relu_masked
from slidenet.ops.conv.im2col import conv_backward_im2col
from slidenet.ops.conv.winograd import tiles
from slidenet.ops.conv.winograd_f43 import AT, BT, G
from slidenet.ops.runtime import batch_chunks, bordered, chunk_bytes, empty, run_chunks, scratch

NAME = "winograd2d"
# `pays`: docs/benchmarks.md, "res18 training: F(4x4, 3x3)", has the measurements.
MIN_SIDE = 8
MIN_DEPTH = 8
# G w G^T for all 36 entries at once: GG[6a + b, 3i + j] = G[a, i] G[b, j].
GG = np.kron(G, G)


def applies(size, stride, pad=(0, 0)):
    """Whether F(4x4, 3x3) computes this convolution: a 3 x 3 filter at stride 1, padded by
    at most 2 (the backward's dx is a full convolution, `full_dx`)."""
    return tuple(size) == (3, 3) and tuple(stride) == (1, 1) and max(pad) < 3


def pays(out_h, out_w, depth, filters, itemsize=4):
    """Whether "auto" takes F(4x4, 3x3) over F(4, 3) for a convolution with this output size,
    depth D and K filters: the compiled passes (NumPy's are for checking, not speed), at least
    MIN_SIDE outputs each way (below, the 36 GEMMs are too short to pay for their calls), at
    least MIN_DEPTH channels (the GEMMs' inner size), and one image's products and row sets
    within `runtime.chunk_bytes()` (this pair cuts the batch into whole images only)."""
    hot = 36 * tiles(out_h, 4) * tiles(out_w, 4) * (depth + filters) * itemsize
    return (min(out_h, out_w) >= MIN_SIDE and depth >= MIN_DEPTH and hot <= chunk_bytes()
            and compiled.kernels() is not None)


def prepare_filters(w, dtype=None):
    """w (3, 3, D, K) -> U (36, D, K) = G w G^T per channel pair, entry 6a + b (float64, rounded
    once to dtype, None: w's)."""
    d, k = w.shape[2:]
    u = GG @ w.astype(np.float64).reshape(9, d * k)
    return np.ascontiguousarray(u.reshape(36, d, k), dtype=dtype or w.dtype)


def filter_grad(du):
    """dU (36, A, B) -> dw (3, 3, A, B) = G^T dU G, summed in float64 and rounded once."""
    dw = GG.T @ du.astype(np.float64).reshape(36, -1)
    return dw.reshape(3, 3, *du.shape[1:]).astype(du.dtype)


def padded(name, c, h, w, d, pad, dtype):
    """A zero-bordered scratch batch for `rows`: c images of h x w x d padded by pad =
    (P_h, P_w), plus zero rows and columns at the bottom and right so that whole tiles of
    4 x 4 outputs (6 x 6 inputs) cover it. Returns (xp, its interior to fill)."""
    ph, pw = pad
    rows_total = 4 * tiles(h + 2 * ph - 2, 4) + 2
    cols_total = 4 * tiles(w + 2 * pw - 2, 4) + 2
    return bordered(name, (c, rows_total, cols_total, d), dtype,
                    (ph, rows_total - ph - h, pw, cols_total - pw - w))


def rows(xp, name):
    """B^T d B of every 6 x 6 tile of xp (c, 4T + 2, 4S + 2, D): (36, c*T*S, D) in scratch."""
    c, hp, wp, d = xp.shape
    t, s = (hp - 2) // 4, (wp - 2) // 4
    out = scratch(name, (36, c, t, s, d), xp.dtype)
    fast = compiled.kernels(xp)
    if fast is not None:
        fast.winograd2d_rows(xp, out)
    else:
        sc, sh, sw, sd = xp.strides
        view = np.lib.stride_tricks.as_strided(
            xp, (c, t, s, 6, 6, d), (sc, 4 * sh, 4 * sw, sh, sw, sd), writeable=False)
        np.copyto(out.reshape(6, 6, c, t, s, d),
                  np.einsum("ai,bj,ctsijd->abctsd", BT.astype(xp.dtype), BT.astype(xp.dtype),
                            view))
    return out.reshape(36, c * t * s, d)


def output(m, out, bias=None, relu=False):
    """out (c, H', W', K) from the products m (36, c*T*S, K): A^T m A of each tile, cropped at
    the edges. With the compiled kernels, also adds bias (K,) and the ReLU in the same pass
    and returns True; the NumPy path leaves both to the caller and returns False."""
    c, ho, wo, k = out.shape
    t, s = tiles(ho, 4), tiles(wo, 4)
    m = m.reshape(36, c, t, s, k)
    fast = compiled.kernels(m, out)
    if fast is not None:
        fast.winograd2d_output(m, out, m[0, 0, 0, 0] if bias is None else bias,
                               bias is not None, relu)
        return True
    at = AT.astype(m.dtype)
    y = np.einsum("ia,jb,abctsk->ctisjk", at, at, m.reshape(6, 6, c, t, s, k))
    out[...] = y.reshape(c, 4 * t, 4 * s, k)[:, :ho, :wo]
    return False


def adjoint(x, name):
    """`output` transposed, on x (c, H, W, D): A x A^T of each 4 x 4 tile (zeros past H and
    W), (36, c*T*S, D) with T = tiles(H, 4), S = tiles(W, 4)."""
    c, h, w, d = x.shape
    t, s = tiles(h, 4), tiles(w, 4)
    out = scratch(name, (36, c, t, s, d), x.dtype)
    fast = compiled.kernels(x)
    if fast is not None:
        fast.winograd2d_adjoint(x, out)
    else:
        whole = np.zeros((c, 4 * t, 4 * s, d), x.dtype)
        whole[:, :h, :w] = x
        a = AT.T.astype(x.dtype)
        np.copyto(out.reshape(6, 6, c, t, s, d),
                  np.einsum("ai,bj,ctisjd->abctsd", a, a, whole.reshape(c, t, 4, s, 4, d)))
    return out.reshape(36, c * t * s, d)


def conv_forward_winograd2d(x, w, b, stride=(1, 1), pad=(0, 0), relu=False, budget=None,
                            filters=None):
    """Convolve K 3 x 3 filters over x at stride 1 by F(4x4, 3x3).

    x: (N, H, W, D); w: (3, 3, D, K); b: (K,); pad (P_h, P_w). Returns out (N, H', W', K) with
    H' = H + 2P_h - 2, W' = W + 2P_w - 2, and a ConvCache. relu: return max(0, out). budget:
    scratch bytes (None: the global one). filters: `prepare_filters(w)`, computed once for
    many calls. ValueError for any other filter, stride or a wider padding.

    The batch is cut into chunks of whole images whose products fill about
    `runtime.chunk_bytes()`, so that the rows are still in cache when the GEMMs read them.
    """
    if not applies(w.shape[:2], stride, pad):
        raise ValueError(f"Winograd F(4x4, 3x3) needs a 3x3 filter at stride 1 padded by at "
                         f"most 2, not {w.shape[0]}x{w.shape[1]} at stride "
                         f"{stride[0]}x{stride[1]}, pad {pad[0]}x{pad[1]}")
    ho, wo = check_shapes(x, w, stride, pad)
    n, h, wd, d = x.shape
    k = w.shape[3]
    x = np.ascontiguousarray(x)
    out = empty((n, ho, wo, k), np.result_type(x, w))
    u = prepare_filters(w, out.dtype) if filters is None else filters
    bias = b.astype(out.dtype, copy=False)
    t, s = tiles(ho, 4), tiles(wo, 4)

    def work(sl):
        xp, inner = padded("conv.w2pad", sl.stop - sl.start, h, wd, d, pad, x.dtype)
        inner[...] = x[sl]
        r = rows(xp, "conv.w2rows")
        prod = np.matmul(r, u, out=scratch("conv.w2m", (36, r.shape[1], k), out.dtype))
        if not output(prod, out[sl], bias, relu):       # the NumPy path
            finish_rows(out[sl], np.tile(bias, wo), relu)

    hot = 36 * t * s * (d + k)
    per_image = hot + (4 * t + 2) * (4 * s + 2) * d
    run_chunks(work, batch_chunks(n, per_image * x.itemsize, budget, hot * x.itemsize))
    return out, ConvCache(NAME, x, w, tuple(stride), tuple(pad), budget, out if relu else None)


def conv_backward_winograd2d(dout, cache, need_dx=True, relu=False):
    """Gradients of the F(4x4, 3x3) forward: dx = output(rows(dout) @ U_flip), and the flipped
    filters' 36 matrices get rows(dout)^T @ adjoint(x) (the module docstring).

    dout: (N, H', W', K). Returns dx (N, H, W, D) (None when need_dx is False), dw (3, 3, D, K),
    db (K,). relu: dout is first multiplied by the mask of the forward's ReLU. Without dx,
    im2col's backward computes dw alone, from the input's rows.
    """
    if not need_dx:
        return conv_backward_im2col(dout, cache, need_dx, relu)
    x, w, budget = cache.x, cache.w, cache.budget
    w_flip, back_pad = flipped(w, cache.pad)        # dx is a stride-1 "full" convolution
    n, h, wd, d = x.shape
    k = w.shape[3]
    _, ho, wo, _ = dout.shape
    dout = np.ascontiguousarray(dout)
    dx = empty(x.shape, np.result_type(dout, w))
    u_flip = prepare_filters(w_flip, dx.dtype)      # (36, K, D)
    t, s = tiles(h, 4), tiles(wd, 4)
    padded_out = (4 * t + 2) * (4 * s + 2)

    def work(sl):
        c = sl.stop - sl.start
        gp, inner = padded("conv.w2gpad", c, ho, wo, k, back_pad, dout.dtype)
        if relu:
            relu_masked(dout[sl], cache.out[sl], inner)
        else:
            inner[...] = dout[sl]
        db_part = ones[:c * padded_out] @ gp.reshape(-1, k)     # the zero border adds nothing
        r = rows(gp, "conv.w2grows")
        prod = np.matmul(r, u_flip, out=scratch("conv.w2m", (36, r.shape[1], d), dx.dtype))
        output(prod, dx[sl])
        return np.matmul(r.transpose(0, 2, 1), adjoint(x[sl], "conv.w2x")), db_part

    hot = 36 * t * s * (k + 2 * d)                  # rows, products and adjoint(x)
    per_image = hot + padded_out * k
    chunks = batch_chunks(n, per_image * x.itemsize, budget, hot * x.itemsize)
    ones = np.ones(max(sl.stop - sl.start for sl in chunks) * padded_out, dout.dtype)
    du = np.zeros((36, k, d), np.result_type(x, dout))
    db = np.zeros(k, dout.dtype)
    for du_part, db_part in run_chunks(work, chunks):
        du += du_part
        db += db_part
    dw_flip = filter_grad(du)                       # (3, 3, K, D)
    return dx, np.ascontiguousarray(dw_flip[::-1, ::-1].transpose(0, 1, 3, 2)), db
