"""Winograd's F(4, 3) down the height axis: four output rows of a 3-tall filter from six products.

Slide a filter of three rows w0, w1, w2 down six input rows d0..d5 and it gives four output rows,
y_k = d_k w0 + d_(k+1) w1 + d_(k+2) w2 for k = 0..3: twelve products. F(4, 3) gets them from six,

    y = A^T [(G w) * (B^T d)]        (* elementwise: one product per entry of G w)

with these matrices (the interpolation points 0, 1, -1, 2, -2 and infinity, below):

          [4  0 -5  0  1  0]          [ 1/4    0     0  ]
          [0 -4 -4  1  1  0]          [-1/6  -1/6  -1/6 ]        [1  1  1  1  1  0]
    B^T = [0  4 -4 -1  1  0]      G = [-1/6   1/6  -1/6 ]  A^T = [0  1 -1  2 -2  0]
          [0 -2 -1  2  1  0]          [ 1/24  1/12  1/6 ]        [0  1  1  4  4  0]
          [0  2 -1 -2  1  0]          [ 1/24 -1/12  1/6 ]        [0  1 -1  8 -8  1]
          [0  4  0 -5  0  1]          [ 0      0     1  ]

Where they come from. For any four numbers u0..u3, sum_k u_k y_k = sum_i d_i s_i, where s is
the product of the polynomials u(z) = u0 + u1 z + u2 z^2 + u3 z^3 and w(z) = w0 + w1 z + w2 z^2
(s_i collects every u_k w_j with k + j = i). s has degree 5, so six numbers fix it: its values
s(p) = u(p) w(p) at five points p, and its leading coefficient u3 w2 (its "value at infinity").
With M(z) = z(z - 1)(z + 1)(z - 2)(z + 2), which vanishes at the five points, Lagrange gives

    s(z) = sum_p u(p) w(p) / N_p * M(z) / (z - p)  +  u3 w2 M(z),    N_p = prod_(q != p) (p - q).

Read off: A^T's column p evaluates u at p (p^k), its last column picks u3; G's row p is
w(p) / N_p, its last row w2; B^T's row p holds the coefficients of M(z) / (z - p), its last
row those of M(z). Then sum_k u_k y_k = sum_i d_i s_i = u . A^T[(G w) * (B^T d)] for every u,
which is the identity above. (The same construction with the points 0, 1, -1 and infinity gives
`winograd_f23`'s F(2, 3); tests/test_winograd.py rebuilds both from their points.)

Why these points. Larger points mean larger numbers in A^T (8 here) and smaller ones in G
(1/24), so more float32 rounding; 0, 1, -1, 2, -2 are the five integers closest to 0. Every entry of A^T and B^T is then an integer, and every multiply the passes do is by 2, 4 or 8,
which is exact in floating point: only the additions round. The half points 0, 1, -1, 1/2, -1/2
are these mirrored (p -> 1/p reverses the rows: the same rounding, up to powers of 2). Mixed
sets round a little less but their B^T has entries like 5/2 and 3/2 and shares fewer sums:
prototypes of both (float32 against float64, relative error ||float32 - float64|| / ||float64||,
on a trained net's layers as below) gave

    points            conv2 forward / dx / dw          conv4 forward / dx / dw
    0, +-1, +-2       3.2e-7 / 3.6e-7 / 5.1e-7         3.9e-7 / 4.1e-7 / 4.4e-7
    0, +-1, 1/2, -2   2.6e-7 / 3.1e-7 / 4.1e-7         3.5e-7 / 3.5e-7 / 3.6e-7

15-20% less rounding does not pay for a slower transform, so this module uses 0, +-1, +-2.

How accurate. The finished kernels in float32 against float64 (`scripts/conv_accuracy.py`: R1's
layers trained 4 epochs on MNIST, one step on 64 real test digits: ReLU activations, trained
filters, the loss's gradients). In brackets, as a multiple of im2col's error:

    layer                 F(4, 3): forward / dx / dw                 F(2, 3): forward / dx / dw
    conv2 28x28, 32->32   3.1e-7 (1.6x) / 3.6e-7 (5.1x) / 4.9e-7 (4.1x)  1.5e-7 / 1.3e-7 / 1.7e-7
    conv3 14x14, 32->64   3.6e-7 (1.6x) / 6.0e-7 (6.0x) / 6.8e-7 (3.4x)  1.7e-7 / 2.2e-7 / 1.9e-7
    conv4 14x14, 64->64   3.9e-7 (2.5x) / 4.1e-7 (5.7x) / 4.4e-7 (4.3x)  1.9e-7 / 1.4e-7 / 1.1e-7

About 2-3.5x F(2, 3)'s error and at most 6x im2col's (whose dx, a scatter of K-long sums, is
unusually exact; "full"'s dx is 1.3-1.9x im2col's), at most 7e-7 of the result: a few float32
roundings. `conv.choose` uses F(4, 3) by default where it is faster.

How slidenet applies it: as `winograd_f23` does F(2, 3), along the height only. Each d_i is a whole
padded input row's width windows (F_w*D numbers per output column), each w_i the filter's row i
as an (F_w*D x K) matrix, each product one GEMM over every tile of the chunk: 6 GEMMs for every
4 output rows, where im2col does 12 and F(2, 3) 8. The rows copied for the GEMMs are 4.5 times
the input (F(2, 3): 6, im2col: 9). When 4 does not divide the output height, the last tile reads
zero rows past the padded input and its extra output rows are dropped.

The passes compute B^T d, A^T m and the adjoint with shared sums (u = d4 - d2, v = 2(d3 - d1)):

    B^T d:  4(d0 - d2) + u,  (d4 - 4d2) + (d3 - 4d1),  (d4 - 4d2) - (d3 - 4d1),  u + v,  u - v,
            (d5 - d3) - 2v
    A^T m:  with a = m1 + m2, b = m1 - m2, c = m3 + m4, e = m3 - m4:
            y0 = (m0 + a) + c,  y1 = b + 2e,  y2 = a + 4c,  y3 = (b + 8e) + m5
    adjoint (A applied to the four rows x0..x3 of a tile, for dw; see `winograd`):
            X0 = x0,  X1 = (x0 + x2) + (x1 + x3),  X2 = (x0 + x2) - (x1 + x3),
            X3 = (x0 + 4x2) + 2(x1 + 4x3),  X4 = (x0 + 4x2) - 2(x1 + 4x3),  X5 = x3

The filters' transform G w, and dw = G^T dG, are computed in float64 and rounded once.

`conv_forward_winograd4` and `conv_backward_winograd4` are the pair: `winograd.forward` and
`winograd.backward` with this module's scheme, `F43`.
"""
import numpy as np

from slidenet.ops import compiled
from slidenet.ops.conv import winograd
from slidenet.ops.conv.winograd import Scheme, backward, forward, tiles
from slidenet.ops.runtime import scratch
from slidenet.ops.window import windows

# The matrices of the module docstring, for `filters` (G) and for reading (B^T, A^T: the passes
# below do their arithmetic with shared sums).
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]])
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], dtype=np.float64)


def rows(xp, fw, name):
    """The six transformed row sets (B^T d) of a `winograd.padded` batch, ready for the GEMMs.

    xp: (c, 4T + 2, W_p, D). Returns (6, c*T*W', F_w*D) with W' = W_p - F_w + 1: entry a holds,
    for every tile t and output column, the width window of row a of B^T d, where d_i is padded
    row 4t + i (the sums of the module docstring).
    """
    fast = winograd.compiled_rows(xp, fw, 4, name, "winograd4_rows")
    if fast is not None:
        return fast
    c, t, wp, wo, d = winograd.row_geometry(xp, fw, 4)
    d0, d1, d2, d3, d4, d5 = (xp[:, i:i + 4 * t:4] for i in range(6))    # (c, T, W_p, D)
    b = scratch(name + ".mix", (6, c, t, wp, d), xp.dtype)
    first, second = scratch(name + ".tmp", (2, c, t, wp, d), xp.dtype)
    s, q = first, second
    np.multiply(d2, 4, out=s)
    np.subtract(d4, s, out=s)                   # s = d4 - 4 d2
    np.multiply(d1, 4, out=q)
    np.subtract(d3, q, out=q)                   # q = d3 - 4 d1
    np.add(s, q, out=b[1])
    np.subtract(s, q, out=b[2])
    u, v = first, second                        # s and q are done with: reuse their memory
    np.subtract(d4, d2, out=u)
    np.subtract(d3, d1, out=v)
    np.multiply(v, 2, out=v)                    # v = 2 (d3 - d1)
    np.add(u, v, out=b[3])
    np.subtract(u, v, out=b[4])
    np.subtract(d0, d2, out=b[0])
    np.multiply(b[0], 4, out=b[0])
    np.add(b[0], u, out=b[0])                   # 4 (d0 - d2) + u
    np.subtract(d5, d3, out=b[5])
    np.multiply(v, 2, out=v)
    np.subtract(b[5], v, out=b[5])              # (d5 - d3) - 2v
    # All six sets' width windows in one copy, as in `winograd_f23.rows`.
    out = scratch(name, (6 * c * t, 1, wo, 1, fw, d), xp.dtype)
    np.copyto(out, windows(b.reshape(6 * c * t, 1, wp, d), (1, fw), (1, 1)))
    return out.reshape(6, c * t * wo, fw * d)


def output(m, out, bias=None, relu=False, skip=None):
    """Write the output rows from the six products: y = A^T m (the sums of the module docstring).

    m: (6, c*T*W', K); out: (c, H', W', K) with T = tiles(H', 4), written (a last tile that
    sticks out past H' drops its extra rows). With the compiled kernels, also adds bias (K,),
    then skip (out's shape, a residual sum's other terms), and applies the ReLU in the same
    pass and returns True; the NumPy path leaves all three to the caller and returns False.
    """
    c, ho, wo, k = out.shape
    t = tiles(ho, 4)
    m = m.reshape(6, c, t, wo, k)
    fast = compiled.kernels(m, out) if skip is None else compiled.kernels(m, out, skip)
    if fast is not None:
        # Without a bias (or skip) the kernel still needs an array of the right type to ignore:
        # a piece of m, never of out (compiled code checks for overlap and, finding out read
        # as skip, gives up the vector instructions of the whole pass).
        fast.winograd4_output(m, out, m[0, 0, 0, 0] if bias is None else bias, bias is not None,
                              relu, m[0, :1, :1] if skip is None else skip, skip is not None)
        return True
    a, b, cc, e = scratch("conv.w4sums", (4, c, t, wo, k), m.dtype)
    np.add(m[1], m[2], out=a)
    np.subtract(m[1], m[2], out=b)
    np.add(m[3], m[4], out=cc)
    np.subtract(m[3], m[4], out=e)
    y = [out[:, i::4] for i in range(4)]        # output row 4t + i of every tile t
    n = [part.shape[1] for part in y]           # tiles that have row i
    np.add(m[0, :, :n[0]], a[:, :n[0]], out=y[0])
    y[0] += cc[:, :n[0]]
    np.multiply(e[:, :n[1]], 2, out=y[1])       # 2e + b: the same number as b + 2e
    y[1] += b[:, :n[1]]
    np.multiply(cc[:, :n[2]], 4, out=y[2])
    y[2] += a[:, :n[2]]
    np.multiply(e[:, :n[3]], 8, out=y[3])
    y[3] += b[:, :n[3]]
    y[3] += m[5, :, :n[3]]
    return False


def adjoint(x, name):
    """`output` transposed, applied to x (c, H, W, D): (6, c*T*W, D) with T = tiles(H, 4).

    For the rows x0..x3 = x[4t], ..., x[4t + 3] of each tile (zeros past H), the X0..X5 of the
    module docstring.
    """
    c, h, w, d = x.shape
    t = tiles(h, 4)
    out = scratch(name, (6, c, t, w, d), x.dtype)
    fast = compiled.kernels(x)
    if fast is not None:
        fast.winograd4_adjoint(x, out)
        return out.reshape(6, c * t * w, d)
    x1, x2, first, second = scratch(name + ".tmp", (4, c, t, w, d), x.dtype)
    for into, i in ((out[0], 0), (x1, 1), (x2, 2), (out[5], 3)):
        part = x[:, i::4]
        into[:, :part.shape[1]] = part
        into[:, part.shape[1]:] = 0             # the last tile's rows past H
    x0, x3 = out[0], out[5]
    np.add(x0, x2, out=first)                   # x0 + x2
    np.add(x1, x3, out=second)                  # x1 + x3
    np.add(first, second, out=out[1])
    np.subtract(first, second, out=out[2])
    np.multiply(x2, 4, out=first)
    first += x0                                 # x0 + 4 x2
    np.multiply(x3, 4, out=second)
    second += x1
    second *= 2                                 # 2 (x1 + 4 x3)
    np.add(first, second, out=out[3])
    np.subtract(first, second, out=out[4])
    return out.reshape(6, c * t * w, d)


F43 = Scheme("winograd4", "F(4, 3)", 4, G, G.T, rows, output, adjoint)


def pays(out_h):
    """Whether F(4, 3) does fewer multiply-adds than F(2, 3) for out_h output rows: 6 products
    per tile of 4 rows against 4 per tile of 2, part-filled last tiles counted whole. True for
    3, 4 and 7 rows or more; 1, 2, 5 and 6 rows are a tie or a loss."""
    return 6 * tiles(out_h, 4) < 4 * tiles(out_h, 2)


def conv_forward_winograd4(x, w, b, stride=(1, 1), pad=(0, 0), relu=False, budget=None,
                           filters=None, pool=False, *, skip=None):
    """Convolve K 3-tall filters over x at stride 1 by F(4, 3) down the height.

    Arguments and result as `winograd.forward`: x (N, H, W, D), w (3, F_w, D, K),
    b (K,) -> out (N, H', W', K) with H' = H + 2P_h - 2, W' = W + 2P_w - F_w + 1, and a
    ConvCache. ValueError for any other filter or stride. filters: `prepare_filters(w)` (the
    six g's), when a caller computed it once for many calls. pool: the 2x2 max pool of out
    instead, with no cache; skip: a residual sum's other terms (both: see `winograd.forward`).
    """
    return forward(F43, x, w, b, stride, pad, relu, budget, filters, pool, skip=skip)


def prepare_filters(w, dtype=None):
    """The six g's the forward's GEMMs multiply by (its `filters`), from w (3, F_w, D, K)."""
    return winograd.prepare_filters(w, F43, dtype)


def conv_backward_winograd4(dout, cache, need_dx=True, relu=False):
    """Gradients of the convolution through F(4, 3), as `winograd_f23.conv_backward_winograd`:
    dx = output(rows(dout) @ g_flip), and the flipped filters' six g's get rows^T @ adjoint(x).

    dout: (N, H', W', K). Returns dx (N, H, W, D) (None when need_dx is False), dw (3, F_w,
    D, K), db (K,). relu: dout is first multiplied by the mask of the forward's ReLU.
    """
    return backward(F43, dout, cache, need_dx, relu)
