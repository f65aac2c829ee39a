"""Winograd for a 3 x 3 filter at stride 2 (inference): a 4 x 4 output tile from 81 products.

At stride 2 a 3-tap filter (w0, w1, w2) reads, for output p, the samples 2p, 2p + 1, 2p + 2 of
the padded input. Split the input into its even and odd samples (its two phases):

    y_p = w1 * s[2p + 1]  +  (w0 * s[2p] + w2 * s[2p + 2])

the first term one product per output on the odd samples, the second a 2-tap correlation at
stride 1 on the even samples, which Winograd's F(4, 2) computes for 4 outputs from 5 products
(Toom-Cook at the points 0, 1, -1, 2 and infinity) instead of 8. Four outputs along one axis
then take 4 + 5 = 9 products from a window of 9 samples (the next tile's window starts 8
samples on), and along both axes 81 products for a 4 x 4 tile where the lecture's direct method
takes 144: 5.06 multiply-adds per output pixel per D x K instead of 9. As with F(4x4, 3x3):

    Y = A^T [ (G w G^T) * (B^T d B) ] A        (* entry by entry: 81 GEMMs of D x K)

B^T (9 x 9): rows 0-3 pick the odd samples s1, s3, s5, s7; rows 4-8 are F(4, 2)'s input
transform of the even samples (s0, s2, s4, s6, s8), the inverse Vandermonde matrix transposed,
each row scaled to small integers (its scale moved into G, which is computed once):

    t4 = 2 s0 - s2 - 2 s4 + s6      t5 = 2 s2 + s4 - s6      t6 = -2 s2 + 3 s4 - s6
    t7 = s6 - s2                    t8 = 2 s2 - s4 - 2 s6 + s8

G (9 x 3): rows 0-3 pick w1; rows 4-8 evaluate w0 + a w2 at a = 0, 1, -1, 2 (and w2 for
infinity), divided by the scale of B^T's row. A^T (4 x 9): output p is product p plus the
Vandermonde matrix's column p applied to products 4-8:

    y0 = m0 + (m4 + m5 + m6 + m7)   y1 = m1 + (m5 - m6 + 2 m7)   y2 = m2 + (m5 + m6 + 4 m7)
    y3 = m3 + (m5 - m6 + 8 m7 + m8)

The 81 entries (a, b) are 81 GEMMs over every tile of a chunk, (tiles x D) @ (D x K), with U =
G w G^T computed in float64 and rounded once (`prepare_filters`). Where im2col multiplies rows
of 9D numbers, these GEMMs have an inner size of D: the scheme pays from `MIN_DEPTH` channels
(docs/benchmarks.md, "res18 inference: stride 2 by Winograd").

The passes (compiled, `ops.compiled`'s `winograd_s2_*`, down the height then along the width;
without numba, `NUMPY`'s einsums with the same signatures, equal to rounding):

    input    x (c, H, W, D) -> (81, c*T_h*T_w, D)       B^T d B of each 9 x 9 window (tile
                                                        stride 8), the padding, the cropped
                                                        rows and the zeros past the image
                                                        read as zeros
    output   (81, c*T_h*T_w, K) -> out (c, H', W', K)   A^T m A + b [ReLU], edges cropped

Inference takes it through `dispatch.choose_infer` ("winograd_s2"); training's pair on the same
passes, with the adjoints for dx and dw, is `winograd_s2_train`.
"""
import numpy as np

from slidenet.ops import compiled
from slidenet.ops.conv.common import check_shapes
from slidenet.ops.runtime import batch_chunks, empty, run_chunks, scratch

LINE = 16                       # numbers: a cache line of float32, between the planes
# Below this many input channels the 81 GEMMs (inner size D) are too thin to beat im2col's
# one GEMM of inner size 9D (docs/benchmarks.md, "res18 inference: stride 2 by Winograd").
MIN_DEPTH = 16

BT = np.zeros((9, 9))
for _q in range(4):
    BT[_q, 2 * _q + 1] = 1
BT[4, [0, 2, 4, 6]] = [2, -1, -2, 1]
BT[5, [2, 4, 6]] = [2, 1, -1]
BT[6, [2, 4, 6]] = [-2, 3, -1]
BT[7, [2, 6]] = [-1, 1]
BT[8, [2, 4, 6, 8]] = [2, -1, -2, 1]
G = np.zeros((9, 3))
G[:4, 1] = 1
G[4] = [1 / 2, 0, 0]
G[5] = [1 / 2, 0, 1 / 2]
G[6] = [1 / 6, 0, -1 / 6]
G[7] = [1 / 6, 0, 2 / 6]
G[8] = [0, 0, 1]
AT = np.zeros((4, 9))
AT[:, :4] = np.eye(4)
AT[:, 4:] = [[1, 1, 1, 1, 0], [0, 1, -1, 2, 0], [0, 1, 1, 4, 0], [0, 1, -1, 8, 1]]
# G w G^T for all 81 entries at once: GG[9a + b, 3i + j] = G[a, i] G[b, j].
GG = np.kron(G, G)


def tiles(n):
    """4-wide tiles that cover n outputs; a last tile may stick out past the end."""
    return -(-n // 4)


def applies(size, stride):
    """Whether this scheme computes the convolution: a 3 x 3 filter at stride 2."""
    return tuple(size) == (3, 3) and tuple(stride) == (2, 2)


def runs(*arrays):
    """Whether the compiled passes run for these arrays (float32 or float64)."""
    return compiled.kernels(*arrays) is not None


# Fewer 4 x 4 output tiles than this in a call (one image of 16 x 16 outputs, or 16 images of
# 4 x 4): the 81 GEMMs are too short to beat im2col's one (batch 1 keeps im2col).
MIN_TILES = 32


def pays(x, before=(0, 0), after=None):
    """Whether a call on x (N, H, W, D) has at least MIN_TILES output tiles."""
    n, h, wd, _ = x.shape
    after = before if after is None else after
    ho, wo = (h + before[0] + after[0] - 3) // 2 + 1, (wd + before[1] + after[1] - 3) // 2 + 1
    return n * tiles(ho) * tiles(wo) >= MIN_TILES


def prepare_filters(w, dtype=None):
    """U (81, D, K) = G w G^T of each filter, entry 9a + b, from w (3, 3, D, K); computed in
    float64 and rounded once to `dtype` (None: w's)."""
    d, k = w.shape[2:]
    u = GG @ w.astype(np.float64).reshape(9, d * k)
    return np.ascontiguousarray(u.reshape(81, d, k), dtype=dtype or w.dtype)


class NUMPY:
    """The passes without numba, with `ops.compiled`'s signatures: einsums over strided views of
    the windows. A check and a fallback, not for speed."""

    @staticmethod
    def winograd_s2_input(x, ph, pw, h_in, w_in, th, tw, out):
        x = x[:, :h_in, :w_in]
        c, h, wd, d = x.shape
        hp, wp = 8 * th + 1, 8 * tw + 1
        xp = np.zeros((c, hp, wp, d), x.dtype)
        i1, j1 = min(h, hp - ph), min(wd, wp - pw)
        xp[:, ph:ph + i1, pw:pw + j1] = x[:, :i1, :j1]
        sc, sh, sw, sd = xp.strides
        view = np.lib.stride_tricks.as_strided(
            xp, (c, th, tw, 9, 9, d), (sc, 8 * sh, 8 * sw, sh, sw, sd), writeable=False)
        bt = BT.astype(x.dtype)
        v = np.einsum("ai,bj,ctsijd->abctsd", bt, bt, view)
        out[:, :c * th * tw * d] = v.reshape(81, -1)

    @staticmethod
    def winograd_s2_output(m, th, tw, out, bias, relu):
        c, ho, wo, k = out.shape
        at = AT.astype(out.dtype)
        y = np.einsum("ia,jb,abctsk->ctisjk", at, at,
                      m[:, :c * th * tw * k].reshape(9, 9, c, th, tw, k))
        o = y.reshape(c, 4 * th, 4 * tw, k)[:, :ho, :wo] + bias
        out[...] = np.maximum(o, out.dtype.type(0)) if relu else o


def passes(*arrays):
    """The compiled passes for these arrays, or `NUMPY`'s."""
    return compiled.kernels(*arrays) or NUMPY


def forward(x, filters, b, pad=(0, 0), relu=False, budget=None, after=None):
    """The convolution of x with the 3 x 3 filters that `prepare_filters` made, at stride 2.

    x: (N, H, W, D); filters: (81, D, K); b: (K,); pad (P_h, P_w): zeros before the first row
    and column; after: the padding after the last ones (None: pad), negative to crop (a window
    past the edge reads zeros, so no copy is made either way). Returns out (N, H', W', K), H' =
    (H + P_h + A_h - 3) // 2 + 1 (W' likewise): relu(conv(x) + b) with relu. The batch is cut
    into chunks of whole images whose GEMM rows and products fill about
    `runtime.chunk_bytes()`.
    """
    n, h, wd, d = x.shape
    k = filters.shape[2]
    after = pad if after is None else after
    ho, wo = (h + pad[0] + after[0] - 3) // 2 + 1, (wd + pad[1] + after[1] - 3) // 2 + 1
    if ho < 1 or wo < 1:
        check_shapes(x, np.empty((3, 3, d, 0)), (2, 2), pad)     # its error names the misfit
    th, tw = tiles(ho), tiles(wo)
    # Rows and columns a negative `after` crops read as zeros: a window's transform mixes all
    # its samples, so what lies past the output's last window must not be any number at all.
    h_in, w_in = h + min(after[0], 0), wd + min(after[1], 0)
    x = np.ascontiguousarray(x)
    dtype = np.result_type(x, filters)
    out = empty((n, ho, wo, k), dtype)
    bias = b.astype(dtype, copy=False)
    fast = passes(x, filters)

    def work(sl):
        c = sl.stop - sl.start
        rows = c * th * tw
        v = scratch("conv.ws2v", (81, rows * d + LINE), x.dtype)
        fast.winograd_s2_input(x[sl], pad[0], pad[1], h_in, w_in, th, tw, v)
        prod = scratch("conv.ws2m", (81, rows * k + LINE), dtype)
        np.matmul(v[:, :rows * d].reshape(81, rows, d), filters,
                  out=prod[:, :rows * k].reshape(81, rows, k))
        fast.winograd_s2_output(prod, th, tw, out[sl], bias, relu)

    per_image = 81 * th * tw * (d + k) * x.itemsize
    run_chunks(work, batch_chunks(n, per_image, budget))
    return out
