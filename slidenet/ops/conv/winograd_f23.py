"""Winograd's F(2, 3) down the height axis: two output rows of a 3-tall filter from four products.

Slide a filter of three rows w0, w1, w2 down four input rows d0..d3 and it gives two output rows,

    y0 = d0 w0 + d1 w1 + d2 w2,        y1 = d1 w0 + d2 w1 + d3 w2,

six products. Winograd's minimal filtering algorithm gets the same two rows from four:

    m0 = (d0 - d2) g0,   m1 = (d1 + d2) g1,   m2 = (d2 - d1) g2,   m3 = (d1 - d3) g3,
    y0 = m0 + m1 + m2,   y1 = m1 - m2 - m3,

    with g0 = w0,  g1 = (w0 + w1 + w2) / 2,  g2 = (w0 - w1 + w2) / 2,  g3 = w2.

(Expand y0 and y1 to check: every cross term cancels.) As `winograd` applies any F(m, 3), each
d_i is a whole padded input row's width windows and each product one GEMM: 4 GEMMs for every 2
output rows instead of im2col's 3 per row, two thirds of the multiply-adds. The sums and
differences run over whole padded image rows (long contiguous inner loops), and the rows copied
for the GEMMs are 6 times the input instead of im2col's 9.

For dw, `adjoint` is what `output` does, transposed, to x: X0 = x0, X1 = x0 + x1,
X2 = x0 - x1, X3 = -x1 for the row pair (x0, x1) of each tile, and dw_i = sum over a of
G[a, i] dG_a.

Each pass here is a few NumPy calls over whole rows; when numba is installed, `compiled` does
each in one pass instead, with the same arithmetic in the same order (bitwise equal results).
`conv_forward_winograd` and `conv_backward_winograd` are `winograd.forward` and
`winograd.backward` with this module's scheme, `F23`.
"""
import numpy as np

from slidenet.ops import compiled
from slidenet.ops.conv import winograd
from slidenet.ops.conv.winograd import Scheme, backward, forward, tiles
from slidenet.ops.runtime import scratch
from slidenet.ops.window import windows

# g = G @ (w0, w1, w2): the filter rows' transform above.
G = np.array([[1.0, 0.0, 0.0],
              [0.5, 0.5, 0.5],
              [0.5, -0.5, 0.5],
              [0.0, 0.0, 1.0]])


def rows(xp, fw, name):
    """The four transformed row sets of a `winograd.padded` batch, ready for the GEMMs.

    xp: (c, 2T + 2, W_p, D). Returns (4, c*T*W', F_w*D) with W' = W_p - F_w + 1: entry a holds,
    for every tile t and output column, the width window of d0 - d2, d1 + d2, d2 - d1 or d1 - d3
    (a = 0..3), where d_i is padded row 2t + i.
    """
    fast = winograd.compiled_rows(xp, fw, 2, name, "winograd_rows")
    if fast is not None:
        return fast
    c, t, wp, wo, d = winograd.row_geometry(xp, fw, 2)
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


def output(m, out, bias=None, relu=False, skip=None):
    """Write the output rows from the four products: y0 = m0 + m1 + m2, y1 = m1 - m2 - m3.

    m: (4, c*T*W', K); out: (c, H', W', K) with T = tiles(H', 2), written (an odd H' drops the last
    tile's second row). With the compiled kernels, also adds bias (K,) and applies the ReLU in
    the same pass and returns True; the NumPy path leaves both to the caller and returns False,
    as every path does when given skip (a residual sum's other terms: the caller adds it).
    """
    c, ho, wo, k = out.shape
    m = m.reshape(4, c, tiles(ho, 2), wo, k)
    fast = compiled.kernels(m, out)
    if fast is not None and skip is None:
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
    """`output` transposed, applied to x (c, H, W, D): (4, c*T*W, D) with T = tiles(H, 2).

    For the rows (x0, x1) = (x[2t], x[2t + 1]) of each tile (x1 = 0 past an odd H):
    X0 = x0, X1 = x0 + x1, X2 = x0 - x1, and X3 = x1 (the minus sign of X3 = -x1 is left out:
    `F23.grad` carries it, so that this pass only copies and adds).
    """
    c, h, w, d = x.shape
    t, half = tiles(h, 2), h // 2
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
                          filters=None, *, skip=None):
    """Convolve K 3-tall filters over x at stride 1 by F(2, 3) down the height.

    Arguments and result as `winograd.forward`: x (N, H, W, D), w (3, F_w, D, K),
    b (K,) -> out (N, H', W', K) and a ConvCache. ValueError for any other filter or stride.
    filters: `prepare_filters(w)` (the four g's), when a caller computed it once for many calls.
    skip: see `winograd.forward`.
    """
    return forward(F23, x, w, b, stride, pad, relu, budget, filters, skip=skip)


def prepare_filters(w, dtype=None):
    """The four g's the forward's GEMMs multiply by (its `filters`), from w (3, F_w, D, K)."""
    return winograd.prepare_filters(w, F23, dtype)


def conv_backward_winograd(dout, cache, need_dx=True, relu=False):
    """Gradients of the convolution through F(2, 3): dx = output(rows(dout) @ g_flip), and the
    flipped filters' four g's get rows^T @ adjoint(x) (see the module docstring).

    dout: (N, H', W', K). Returns dx (N, H, W, D) (None when need_dx is False), dw (3, F_w,
    D, K), db (K,). relu: dout is first multiplied by the mask of the forward's ReLU. Without
    dx, im2col's backward computes dw alone, from the input's rows.
    """
    return backward(F23, dout, cache, need_dx, relu)

