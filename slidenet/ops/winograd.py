"""Winograd's F(2, 3) down the height axis: two output rows of a 3-tall filter from four products.

Slide a filter of three rows w0, w1, w2 down four input rows d0..d3 and it gives two output rows,

    y0 = d0 w0 + d1 w1 + d2 w2,        y1 = d1 w0 + d2 w1 + d3 w2,

six products. Winograd's minimal filtering algorithm gets the same two rows from four:

    m0 = (d0 - d2) g0,   m1 = (d1 + d2) g1,   m2 = (d2 - d1) g2,   m3 = (d1 - d3) g3,
    y0 = m0 + m1 + m2,   y1 = m1 - m2 - m3,

    with g0 = w0,  g1 = (w0 + w1 + w2) / 2,  g2 = (w0 - w1 + w2) / 2,  g3 = w2.

(Expand y0 and y1 to check: every cross term cancels.) slidenet applies it along the height only.
Each d_i is a whole input row's im2col rows along the width (the F_w x D numbers each window along
the row covers, exactly as in `conv`), each w_i the filter's row i as an (F_w*D x K) matrix, and
each "product" one GEMM over every tile of the chunk. So a 3 x F_w convolution at stride 1 costs
4 GEMMs for every 2 output rows instead of im2col's 3 per row: two thirds of the multiply-adds.
The sums and differences run over whole padded image rows (long contiguous inner loops), and the
rows copied for the GEMMs are 6 times the input instead of im2col's 9.

Backward needs the same algorithm twice, on the same rows. dx at stride 1 is a convolution of
the zero-padded dout with the flipped filters (see `conv`), so it is `rows` of dout times the
flipped filters' g, then `output`. And since <x, dx> = <dout, y> for every filter, the filter
gradient is the gradient of <x, dx> with respect to the flipped filters: dG_a = rows_a^T @ X_a,
where X (`adjoint`) is what `output` does, transposed, to x: X0 = x0, X1 = x0 + x1,
X2 = x0 - x1, X3 = -x1 for the row pair (x0, x1) of each tile, and dw_i = sum over a of
G[a, i] dG_a (`filter_grad`).

Exact in exact arithmetic; in floating point the halves and the extra additions change results
by a few units in the last place, as any other order of summation would.

Each step here is a few NumPy calls over whole rows; when numba is installed, `compiled` does
each in one pass instead, with the same arithmetic in the same order (bitwise equal results).
`conv_forward_winograd` and `conv_backward_winograd` are the pair built from these steps.

The pair itself (`forward`, `backward`) does not depend on the tile: it takes a `Scheme`, the
tile's size and its three passes. `F23` is this module's; `winograd4` holds F(4, 3), four output
rows from six products, whose pair is the same code with its own scheme.
"""
from typing import Callable, NamedTuple

import numpy as np

from slidenet.ops import compiled
from slidenet.ops.im2col import (
    ConvCache, check_shapes, conv_backward_im2col, finish_rows, relu_masked)
from slidenet.ops.runtime import batch_chunks, bordered, empty, run_chunks, scratch
from slidenet.ops.window import windows

# g = G @ (w0, w1, w2): the filter rows' transform above.
G = np.array([[1.0, 0.0, 0.0],
              [0.5, 0.5, 0.5],
              [0.5, -0.5, 0.5],
              [0.0, 0.0, 1.0]])


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


def tiles(out_h, m=2):
    """Tiles of m rows that cover out_h output rows; a last tile may stick out past the end."""
    return -(-out_h // m)


def filters(w, transform=G):
    """w (3, F_w, D, K) -> g (m + 2, F_w*D, K): the filter matrices of the products, g = G w.

    Computed in float64 and rounded once: in float32, G's 1/6 and 1/24 (F(4, 3)) would each be
    rounded before they are even used.
    """
    _, fw, d, k = w.shape
    g = np.tensordot(transform, w.astype(np.float64, copy=False), axes=(1, 0))
    return np.ascontiguousarray(g.reshape(len(transform), fw * d, k), dtype=w.dtype)


def filter_grad(dg, transform):
    """The gradient of the filter rows from the g's: dg (m + 2, ...) -> (3, ...) = transform @ dg,
    summed in float64 and rounded once."""
    dw = np.tensordot(transform, dg.astype(np.float64, copy=False), axes=(1, 0))
    return dw.astype(dg.dtype, copy=False)


def padded(name, c, h, w, d, pad, dtype, m=2):
    """A zero-bordered scratch image batch for `rows`, and its interior (a view) to fill.

    The result holds c images of h x w x d padded by pad = (P_h, P_w), plus zero rows at the
    bottom when m does not divide the output height, so that the last tile has its m + 2 input
    rows.
    """
    ph, pw = pad
    rows_total = m * tiles(h + 2 * ph - 2, m) + 2
    return bordered(name, (c, rows_total, w + 2 * pw, d), dtype, (ph, rows_total - ph - h, pw, pw))


def rows(xp, fw, name):
    """The four transformed row sets of a `padded` batch, ready for the GEMMs.

    xp: (c, 2T + 2, W_p, D). Returns (4, c*T*W', F_w*D) with W' = W_p - F_w + 1: entry a holds,
    for every tile t and output column, the width window of d0 - d2, d1 + d2, d2 - d1 or d1 - d3
    (a = 0..3), where d_i is padded row 2t + i.
    """
    c, hp, wp, d = xp.shape
    t = (hp - 2) // 2
    wo = wp - fw + 1
    fast = compiled.kernels(xp)
    if fast is not None:
        out = scratch(name, (4, c, t, wo, fw * d), xp.dtype)
        fast.winograd_rows(xp, fw, out)
        return out.reshape(4, c * t * wo, fw * d)
    r = [xp[:, i:i + 2 * t:2] for i in range(4)]      # (c, T, W_p, D): whole rows, contiguous
    mixed = scratch(name + ".mix", (4, c, t, wp, d), xp.dtype)
    np.subtract(r[0], r[2], out=mixed[0])
    np.add(r[1], r[2], out=mixed[1])
    np.subtract(r[2], r[1], out=mixed[2])
    np.subtract(r[1], r[3], out=mixed[3])
    # All four sets' width windows in one copy: each (set, image, tile) row is one "image" of
    # height 1 to `windows`.
    out = scratch(name, (4 * c * t, 1, wo, 1, fw, d), xp.dtype)
    np.copyto(out, windows(mixed.reshape(4 * c * t, 1, wp, d), (1, fw), (1, 1)))
    return out.reshape(4, c * t * wo, fw * d)


def output(m, out, bias=None, relu=False):
    """Write the output rows from the four products: y0 = m0 + m1 + m2, y1 = m1 - m2 - m3.

    m: (4, c*T*W', K); out: (c, H', W', K) with T = tiles(H'), written (an odd H' drops the last
    tile's second row). With the compiled kernels, also adds bias (K,) and applies the ReLU in
    the same pass and returns True; the NumPy path leaves both to the caller and returns False.
    """
    c, ho, wo, k = out.shape
    m = m.reshape(4, c, tiles(ho), wo, k)
    fast = compiled.kernels(m, out)
    if fast is not None:
        # Without a bias the kernel still needs a (K,) array of the right type: any row of m.
        fast.winograd_output(m, out, m[0, 0, 0, 0] if bias is None else bias, bias is not None, relu)
        return True
    even, odd = out[:, 0::2], out[:, 1::2]
    np.add(m[0], m[1], out=even)
    even += m[2]
    half = ho // 2
    np.subtract(m[1, :, :half], m[2, :, :half], out=odd)
    odd -= m[3, :, :half]
    return False


def adjoint(x, name):
    """`output` transposed, applied to x (c, H, W, D): (4, c*T*W, D) with T = tiles(H).

    For the rows (x0, x1) = (x[2t], x[2t + 1]) of each tile (x1 = 0 past an odd H):
    X0 = x0, X1 = x0 + x1, X2 = x0 - x1, and X3 = x1 (the minus sign of X3 = -x1 is left out:
    `F23.grad` carries it, so that this pass only copies and adds).
    """
    c, h, w, d = x.shape
    t, half = tiles(h), h // 2
    out = scratch(name, (4, c, t, w, d), x.dtype)
    fast = compiled.kernels(x)
    if fast is not None:
        fast.winograd_adjoint(x, out)
        return out.reshape(4, c * t * w, d)
    out[0] = x[:, 0::2]
    out[3, :, :half] = x[:, 1::2]
    if half < t:
        out[3, :, half:] = 0
    np.add(out[0], out[3], out=out[1])
    np.subtract(out[0], out[3], out=out[2])
    return out.reshape(4, c * t * w, d)


# The adjoint leaves out X3's minus sign: fold it into G^T's last column.
F23 = Scheme("winograd", "F(2, 3)", 2, G, G.T * [1, 1, 1, -1], rows, output, adjoint)


def conv_forward_winograd(x, w, b, stride=(1, 1), pad=(0, 0), relu=False, budget=None,
                          filters=None):
    """Convolve K 3-tall filters over x at stride 1 by F(2, 3) down the height.

    Arguments and result as `im2col.conv_forward_im2col`: x (N, H, W, D), w (3, F_w, D, K),
    b (K,) -> out (N, H', W', K) and a ConvCache. ValueError for any other filter or stride.
    filters: `prepare_filters(w)` (the four g's), when a caller computed it once for many calls.
    """
    return forward(F23, x, w, b, stride, pad, relu, budget, filters)


def prepare_filters(w, dtype=None, scheme=None):
    """The m + 2 g's the forward's GEMMs multiply by (its `filters`), from w (3, F_w, D, K).

    scheme: F23 (None) or `winograd4.F43`; dtype: the output's (None: w's).
    """
    transform = (scheme or F23).G
    return filters(np.ascontiguousarray(w, dtype=dtype or w.dtype), transform)


def conv_backward_winograd(dout, cache, need_dx=True, relu=False):
    """Gradients of the convolution through F(2, 3): dx = output(rows(dout) @ g_flip), and the
    flipped filters' four g's get rows^T @ adjoint(x) (see the module docstring).

    dout: (N, H', W', K). Returns dx (N, H, W, D) (None when need_dx is False), dw (3, F_w,
    D, K), db (K,). relu: dout is first multiplied by the mask of the forward's ReLU. Without
    dx, im2col's backward computes dw alone, from the input's rows.
    """
    return backward(F23, dout, cache, need_dx, relu)


def forward(scheme, x, w, b, stride=(1, 1), pad=(0, 0), relu=False, budget=None, filters=None):
    """The forward of any F(m, 3) down the height: `conv_forward_winograd`'s, with its scheme.

    filters: `prepare_filters(w, scheme=scheme)`, when a caller computed it once for many calls.
    """
    fh, fw, d, k = w.shape
    if not applies((fh, fw), stride):
        raise ValueError(f"Winograd {scheme.label} needs a 3-tall filter at stride 1, "
                         f"not {fh}x{fw} at stride {stride[0]}x{stride[1]}")
    ho, wo = check_shapes(x, w, stride, pad)
    n, h, wd, _ = x.shape
    m, products = scheme.m, scheme.m + 2
    x = np.ascontiguousarray(x)
    out = empty((n, ho, wo, k), np.result_type(x, w))
    g = prepare_filters(w, out.dtype, scheme) if filters is None else filters
    bias = b.astype(out.dtype, copy=False)
    bias_row = np.tile(bias, wo)

    def work(sl):
        xp, inner = padded("conv.wpad", sl.stop - sl.start, h, wd, d, pad, x.dtype, m)
        inner[...] = x[sl]
        r = scheme.rows(xp, fw, "conv.wrows")
        prod = np.matmul(r, g, out=scratch("conv.wm", (products, r.shape[1], k), out.dtype))
        if not scheme.output(prod, out[sl], bias, relu):
            finish_rows(out[sl], bias_row, relu)

    t, wp = tiles(ho, m), wd + 2 * pad[1]
    hot = products * t * wo * (fw * d + k)          # the GEMMs' rows and products
    per_image = hot + (m * t + 2) * wp * d + products * t * wp * d
    run_chunks(work, batch_chunks(n, per_image * x.itemsize, budget, hot * x.itemsize))
    return out, ConvCache(scheme.name, x, w, tuple(stride), tuple(pad), budget, out if relu else None)


def backward(scheme, dout, cache, need_dx=True, relu=False):
    """The backward of any F(m, 3) down the height: `conv_backward_winograd`'s, with its scheme."""
    if not need_dx:
        return conv_backward_im2col(dout, cache, need_dx, relu)
    x, w, pad, budget = cache.x, cache.w, cache.pad, cache.budget
    n, h, wd, d = x.shape
    fh, fw, _, k = w.shape
    _, ho, wo, _ = dout.shape
    m, products = scheme.m, scheme.m + 2
    dout = np.ascontiguousarray(dout)
    dx = empty(x.shape, np.result_type(dout, w))
    back_pad = (fh - 1 - pad[0], fw - 1 - pad[1])   # dx is a stride-1 "full" convolution
    w_flip = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))
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
