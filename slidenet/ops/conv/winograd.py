"""Winograd's F(m, 3) down the height axis: the pair that any tile scheme plugs into.

A 3-tall filter slid down m + 2 input rows gives m output rows, 3m products in the lecture's
way. Winograd's minimal filtering gets them from m + 2 products: transform the input rows
(B^T d), transform the filter rows (g = G w), multiply entry by entry, transform back
(y = A^T m). slidenet applies it along the height only: each input "row" d_i is a whole padded
image row's width windows (the F_w x D numbers each output column reads, as in `im2col`), each
filter row w_i is an (F_w*D x K) matrix, and each product is one GEMM over every tile of a chunk.

A tile scheme (`Scheme`) says how big its tiles are and gives its three passes: `rows`
(B^T d, ready for the GEMMs), `output` (A^T m, with the bias and ReLU when compiled) and
`adjoint` (`output` transposed, for dw). `winograd_f23` (F(2, 3)) and `winograd_f43` (F(4, 3))
are the two schemes; `forward` and `backward` here are the pair for either.

Backward needs the same algorithm twice, on the same rows. dx at stride 1 is a convolution of
the zero-padded dout with the flipped filters (see `full_dx`), so it is the scheme's `rows` of
dout times the flipped filters' g, then `output`. And since <x, dx> = <dout, y> for every filter,
the filter gradient is the gradient of <x, dx> with respect to the flipped filters:
dG_a = rows_a^T @ X_a, where X = `adjoint`(x), and dw = G^T dG (`filter_grad`).

Exact in exact arithmetic; in floating point the transforms change results by a few units in
the last place, as any other order of summation would. The filters' transform and dw = G^T dG
are computed in float64 and rounded once.
"""
from typing import Callable, NamedTuple

import numpy as np

from slidenet.ops import compiled
from slidenet.ops.activations import add_into
from slidenet.ops.conv.common import (
    ConvCache, check_shapes, finish_rows, flipped, relu_masked, transformed)
from slidenet.ops.conv.im2col import conv_backward_im2col
from slidenet.ops.runtime import batch_chunks, bordered, chunk_bytes, empty, run_chunks, scratch

class Scheme(NamedTuple):
    """One F(m, 3) down the height: what `forward` and `backward` need to know of the tile."""
    name: str               # the algorithm's name in the dispatcher and the ConvCache
    label: str              # "F(2, 3)": for messages
    m: int                  # output rows per tile; each tile reads m + 2 input rows
    G: np.ndarray           # (m + 2, 3): the filter rows' transform, g_a = sum_i G[a, i] w_i
    grad: np.ndarray        # (3, m + 2): dw_i = sum_a grad[i, a] dg_a (G^T, with any sign
                            # that `adjoint` leaves out folded in)
    rows: Callable          # rows(xp, fw, name) -> (m + 2, c*T*W', F_w*D), from a `padded` batch
    output: Callable        # output(m, out, bias=None, relu=False) -> True if it added b, ReLU
    adjoint: Callable       # adjoint(x, name) -> (m + 2, c*T*W, D): `output` transposed, on x


def applies(size, stride):
    """Whether F(m, 3) down the height computes this convolution: a 3-tall filter at stride 1."""
    return size[0] == 3 and tuple(stride) == (1, 1)


def tiles(out_h, m):
    """Tiles of m rows that cover out_h output rows; a last tile may stick out past the end."""
    return -(-out_h // m)


def filters(w, transform):
    """w (3, F_w, D, K) -> g (m + 2, F_w*D, K): the filter matrices of the products, g = G w.

    Computed in float64 and rounded once: in float32, G's 1/6 and 1/24 (F(4, 3)) would each be
    rounded before they are even used.
    """
    _, fw, d, k = w.shape
    return transformed(transform, w, (len(transform), fw * d, k), w.dtype)


def filter_grad(dg, transform):
    """The gradient of the filter rows from the g's: dg (m + 2, ...) -> (3, ...) = transform @ dg,
    summed in float64 and rounded once."""
    return transformed(transform, dg, (transform.shape[0], *dg.shape[1:]), dg.dtype)


def padded(name, c, h, w, d, pad, dtype, m):
    """A zero-bordered scratch image batch for `rows`, and its interior (a view) to fill.

    The result holds c images of h x w x d padded by pad = (P_h, P_w), plus zero rows at the
    bottom when m does not divide the output height, so that the last tile has its m + 2 input
    rows.
    """
    ph, pw = pad
    rows_total = m * tiles(h + 2 * ph - 2, m) + 2
    return bordered(name, (c, rows_total, w + 2 * pw, d), dtype, (ph, rows_total - ph - h, pw, pw))


def row_geometry(xp, fw, m):
    """The sizes a scheme's `rows` works with, from a `padded` batch xp (c, mT + 2, W_p, D):
    (c, T, W_p, W', D) with W' = W_p - F_w + 1 output columns."""
    c, hp, wp, d = xp.shape
    return c, (hp - 2) // m, wp, wp - fw + 1, d


def compiled_rows(xp, fw, m, name, kernel):
    """A scheme's `rows` by its compiled kernel (`compiled.kernels()`'s attribute `kernel`):
    (m + 2, c*T*W', F_w*D) in scratch `name`; None without numba (the scheme's NumPy path)."""
    fast = compiled.kernels(xp)
    if fast is None:
        return None
    c, t, _, wo, d = row_geometry(xp, fw, m)
    out = scratch(name, (m + 2, c, t, wo, fw * d), xp.dtype)
    getattr(fast, kernel)(xp, fw, out)
    return out.reshape(m + 2, c * t * wo, fw * d)


def prepare_filters(w, scheme, dtype=None):
    """The m + 2 g's a scheme's GEMMs multiply by (the forward's `filters`), from w (3, F_w, D, K).

    dtype: the output's (None: w's).
    """
    return filters(np.ascontiguousarray(w, dtype=dtype or w.dtype), scheme.G)


def forward(scheme, x, w, b, stride=(1, 1), pad=(0, 0), relu=False, budget=None, filters=None,
            pool=False, *, skip=None):
    """Convolve K 3-tall filters over x at stride 1 by the scheme's F(m, 3) down the height.

    x: (N, H, W, D); w: (3, F_w, D, K); b: (K,); stride (1, 1); pad (P_h, P_w).
    Returns out (N, H', W', K) with H' = H + 2P_h - 2, W' = W + 2P_w - F_w + 1, and a ConvCache
    named for the scheme. relu: return max(0, out). budget: scratch bytes (None: the global
    one). filters: `prepare_filters(w, scheme)`, when a caller computed it once for many calls.
    skip: None, or an array of out's shape added after the bias and before the ReLU, in the pass
    that writes the output (inference: the other terms of a residual sum, relu(conv(x) + b +
    skip)). ValueError for any other filter height or stride.

    pool=True (inference, F(4, 3) with the compiled kernels only: `pools`; not with skip):
    return the 2x2 max pool at stride 2 of out instead, (N, H' // 2, W' // 2, K), computed from
    the products without writing out; the cache is then None.

    The batch is cut into chunks of whole images whose GEMM rows fill about
    `runtime.chunk_bytes()`, so that the rows are still in cache when the GEMMs read them. Where
    one image's rows alone are more than that (large images: a 224 x 224 x 32 input has ~40 MB
    of them), each image is cut into bands of tiles instead (`band`), each band padded on its
    own.
    """
    fh, fw, d, k = w.shape
    if not applies((fh, fw), stride):
        raise ValueError(f"Winograd {scheme.label} needs a 3-tall filter at stride 1, "
                         f"not {fh}x{fw} at stride {stride[0]}x{stride[1]}")
    ho, wo = check_shapes(x, w, stride, pad)
    n, h, wd, _ = x.shape
    m, products = scheme.m, scheme.m + 2
    x = np.ascontiguousarray(x)
    dtype = np.result_type(x, w)
    if pool and (skip is not None or not pools(scheme, x, w)):
        raise ValueError("a pooled Winograd forward needs F(4, 3), the compiled kernels and "
                         "no skip")
    out = empty((n, ho // 2, wo // 2, k) if pool else (n, ho, wo, k), dtype)
    g = prepare_filters(w, scheme, out.dtype) if filters is None else filters
    bias = b.astype(out.dtype, copy=False)

    def work(sl):
        xp, inner = padded("conv.wpad", sl.stop - sl.start, h, wd, d, pad, x.dtype, m)
        inner[...] = x[sl]
        r = scheme.rows(xp, fw, "conv.wrows")
        prod = np.matmul(r, g, out=scratch("conv.wm", (products, r.shape[1], k), out.dtype))
        if pool:
            compiled.kernels().winograd4_output_pool(
                prod.reshape(products, sl.stop - sl.start, -1, wo, k), out[sl], bias, True, relu)
        else:
            _write(scheme, prod, out[sl], bias, relu, None if skip is None else skip[sl])

    t, wp = tiles(ho, m), wd + 2 * pad[1]
    hot = products * t * wo * (fw * d + k)          # the GEMMs' rows and products
    per_image = hot + (m * t + 2) * wp * d + products * t * wp * d
    if hot * x.itemsize > chunk_bytes() and t > 1:
        def band_work(task):
            band(scheme, x, task[0], task[1], out, g, bias, pad, fw, relu, pool, skip)

        per_tile = -(-per_image // t)
        bands = batch_chunks(t, per_tile * x.itemsize, budget, -(-hot // t) * x.itemsize)
        run_chunks(band_work, [(i, sl) for i in range(n) for sl in bands])
    else:
        run_chunks(work, batch_chunks(n, per_image * x.itemsize, budget, hot * x.itemsize))
    if pool:
        return out, None
    return out, ConvCache(scheme.name, x, w, tuple(stride), tuple(pad), budget, out if relu else None)


def pools(scheme, x, w):
    """Whether `forward(..., pool=True)` runs: F(4, 3) with the compiled kernels."""
    return scheme.m == 4 and compiled.kernels(x, w) is not None


def _write(scheme, prod, rows, bias, relu, extra):
    """The output rows (c, H', W', K) from the products, with the bias, `extra` (a residual
    sum's other terms, or None) and the ReLU: in the scheme's output pass where it can, else
    after it, with the same additions in the same order."""
    if not scheme.output(prod, rows, bias, relu, extra):     # the NumPy path
        finish_rows(rows, np.tile(bias, rows.shape[2]), relu and extra is None)
        if extra is not None:
            add_into(rows, [extra], relu)


def band(scheme, x, image, tiles_slice, out, g, bias, pad, fw, relu, pool=False, skip=None):
    """One band of one image through the forward: the output rows of tiles t0..t1 (a slice).

    x: (N, H, W, D); out: (N, H', W', K), written in rows m*t0 .. min(m*t1, H'); g: the
    scheme's filters; bias (K,). The band's input rows, m*t0 - P_h .. m*t1 + 2 - P_h, are
    copied into a zero-bordered buffer whose zero rows are those outside the image. pool:
    out is the pooled (N, H' // 2, W' // 2, K), written in rows 2*t0 .. min(2*t1, H' // 2).
    skip: as `forward`'s, (N, H', W', K).
    """
    m, products = scheme.m, scheme.m + 2
    h, d, k = x.shape[1], x.shape[3], out.shape[3]
    t0, t1 = tiles_slice.start, tiles_slice.stop
    first = m * t0 - pad[0]                         # the band's first input row (may be < 0)
    rows_total = m * (t1 - t0) + 2
    top = min(rows_total, max(0, -first))          # zero rows above the image
    inside = max(0, min(h, first + rows_total) - (first + top))
    xp, inner = bordered("conv.wband", (1, rows_total, x.shape[2] + 2 * pad[1], d), x.dtype,
                         (top, rows_total - top - inside, pad[1], pad[1]))
    inner[0] = x[image, first + top:first + top + inside]
    r = scheme.rows(xp, fw, "conv.wrows")
    prod = np.matmul(r, g, out=scratch("conv.wm", (products, r.shape[1], k), out.dtype))
    if pool:
        rows = out[image:image + 1, 2 * t0:min(2 * t1, out.shape[1])]
        wo = r.shape[1] // (t1 - t0)
        compiled.kernels().winograd4_output_pool(
            prod.reshape(products, 1, t1 - t0, wo, k), rows, bias, True, relu)
        return
    span = slice(m * t0, min(m * t1, out.shape[1]))
    _write(scheme, prod, out[image:image + 1, span], bias, relu,
           None if skip is None else skip[image:image + 1, span])


def backward(scheme, dout, cache, need_dx=True, relu=False):
    """Gradients of the scheme's forward: dx = output(rows(dout) @ g_flip), and the flipped
    filters' g's get rows^T @ adjoint(x) (see the module docstring).

    dout: (N, H', W', K). Returns dx (N, H, W, D) (None when need_dx is False), dw (3, F_w,
    D, K), db (K,). relu: dout is first multiplied by the mask of the forward's ReLU. Without
    dx, im2col's backward computes dw alone, from the input's rows.
    """
    if not need_dx:
        return conv_backward_im2col(dout, cache, need_dx, relu)
    x, w, budget = cache.x, cache.w, cache.budget
    w_flip, back_pad = flipped(w, cache.pad)        # dx is a stride-1 "full" convolution
    n, h, wd, d = x.shape
    fh, fw, _, k = w.shape
    _, ho, wo, _ = dout.shape
    m, products = scheme.m, scheme.m + 2
    dout = np.ascontiguousarray(dout)
    dx = empty(x.shape, np.result_type(dout, w))
    g_flip = filters(w_flip.astype(dx.dtype, copy=False), scheme.G)
    padded_out = (m * tiles(h, m) + 2) * (wo + 2 * back_pad[1])

    def work(sl):
        c = sl.stop - sl.start
        gp, inner = padded("conv.wgpad", c, ho, wo, k, back_pad, dout.dtype, m)
        if relu:
            relu_masked(dout[sl], cache.out[sl], inner)
        else:
            inner[...] = dout[sl]
        db_part = ones[:c * padded_out] @ gp.reshape(-1, k)     # the zero border adds nothing
        r = scheme.rows(gp, fw, "conv.wgrows")
        prod = np.matmul(r, g_flip, out=scratch("conv.wm", (products, r.shape[1], d), dx.dtype))
        scheme.output(prod, dx[sl])
        return np.matmul(r.transpose(0, 2, 1), scheme.adjoint(x[sl], "conv.wx")), db_part

    t, wp = tiles(h, m), wo + 2 * back_pad[1]
    hot = products * t * wd * (fw * k + 2 * d)      # rows, products and adjoint(x)
    per_image = hot + padded_out * k + products * t * wp * k
    chunks = batch_chunks(n, per_image * x.itemsize, budget, hot * x.itemsize)
    ones = np.ones(max(sl.stop - sl.start for sl in chunks) * padded_out, dout.dtype)
    dg = np.zeros((products, fw * k, d), np.result_type(x, dout))
    db = np.zeros(k, dout.dtype)
    for dg_part, db_part in run_chunks(work, chunks):
        dg += dg_part
        db += db_part
    dw_flip = filter_grad(dg, scheme.grad).reshape(fh, fw, k, d)
    return dx, np.ascontiguousarray(dw_flip[::-1, ::-1].transpose(0, 1, 3, 2)), db
