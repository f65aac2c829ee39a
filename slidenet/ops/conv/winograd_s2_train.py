"""Training's 3 x 3 convolutions at stride 2 (res18's downsampling CONVs) by `winograd_s2`'s
scheme: forward, and dx and dw from one set of dout's transformed tiles.

The forward is `winograd_s2.forward` (81 products for a 4 x 4 output tile, read through the
layer's per-side padding, so no padded copy is made), with the filters transformed on each call
(`filters`: G w G^T in float64, rounded once). The backward is its adjoint, tile by tile:

    dM = A g A^T         (81, tiles, K)   g = dout (masked by the fused ReLU), zero past H', W'
    dU = V^T dM          (81, D, K)       81 GEMMs; V = B^T d B made again, chunk by chunk
    dw = G^T dU G        (3, 3, D, K)     in float64, rounded once (`common.transformed`)
    dV = dM U^T          (81, tiles, D)   81 GEMMs
    dx = B dV B^T        (N, H, W, D)     each 9 x 9 window added back where it came from
                                          (windows 8 apart share a row and a column), the
                                          padding dropped, cropped rows and columns zero

where im2col copies 9 D numbers a window into rows twice (forward, backward), multiplies 144
numbers a tile per D x K three times and scatters 9 window gradients onto each input pixel.
The two adjoint passes are compiled (numba), laid out as `winograd_s2`'s forward passes (whole
rows of tiles, T_w * D or T_w * K numbers, contiguous); a residual sum's other term (`skip`) is
added as dx is written.

The adjoints of `winograd_s2`'s matrices, written out (B^T's rows 0-3 pick the odd samples):

    A (9 x 4), for one axis of dout:  m0..m3 = g0..g3,  m4 = g0,  m5 = g0 + g1 + g2 + g3,
        m6 = g0 - g1 + g2 - g3,  m7 = g0 + 2 g1 + 4 g2 + 8 g3,  m8 = g3
    B (9 x 9), for one axis of dV:    s0 = 2 t4,  s1 = t0,  s3 = t1,  s5 = t2,  s7 = t3,
        s2 = -t4 + 2 t5 - 2 t6 - t7 + 2 t8,  s4 = -2 t4 + t5 + 3 t6 - t8,
        s6 = t4 - t5 - t6 + t7 - 2 t8,  s8 = t8

"auto" takes it in training (`takes`) where inference's `dispatch.choose_infer` takes
`winograd_s2`: a 3 x 3 filter at stride 2, at least `winograd_s2.MIN_DEPTH` input channels,
at least `winograd_s2.MIN_TILES` output tiles a call, and the compiled kernels running.
"""
import threading
from typing import NamedTuple, Optional

import numpy as np

from slidenet.ops import compiled, stacked, vgemm
from slidenet.ops.conv import winograd_s2
from slidenet.ops.conv.common import check_shapes, relu_masked, transformed
from slidenet.ops.runtime import batch_chunks, empty, run_chunks, scratch

LINE = winograd_s2.LINE

__all__ = ["MIN_TILES_PER_IMAGE", "S2Cache", "backward", "filters", "forward", "takes"]


class S2Cache(NamedTuple):
    """What the backward needs: the unpadded input, the filters and their transform, the
    per-side padding, and the output when the forward applied a ReLU (its mask)."""
    algorithm: str                  # "winograd_s2"
    x: np.ndarray                   # (N, H, W, D), C-contiguous, not padded
    w: np.ndarray                   # (3, 3, D, K)
    u: np.ndarray                   # (81, D, K): G w G^T
    before: tuple                   # (P_h, P_w) zeros before the first row and column
    after: tuple                    # after the last ones; negative: that many cropped
    budget: Optional[int]
    out: Optional[np.ndarray]       # (N, H', W', K) when the forward applied a ReLU
    chunks: list                    # the forward's slices of the batch
    kept: list                      # each chunk's V = B^T x B, (81, >= tiles * D)


# Fewer 4 x 4 output tiles an image than this (res18's last downsampling CONV, 4 x 4 outputs:
# one tile), and the backward's 162 GEMMs of one row of tiles a plane lose to im2col's
# (docs/benchmarks.md, "res18 training: the downsampling blocks").
MIN_TILES_PER_IMAGE = 4


def takes(x, w, stride, before, after):
    """Whether "auto" runs this convolution here in training: x (N, H, W, D), w (F_h, F_w, D, K),
    stride, and the padding of each side (before >= 0; after negative: cropped)."""
    if not (winograd_s2.applies(w.shape[:2], stride) and w.shape[2] >= winograd_s2.MIN_DEPTH
            and min(before) >= 0 and _passes(x, w) is not None
            and winograd_s2.pays(x, before, after)):
        return False
    ho = (x.shape[1] + before[0] + after[0] - 3) // 2 + 1
    wo = (x.shape[2] + before[1] + after[1] - 3) // 2 + 1
    return winograd_s2.tiles(ho) * winograd_s2.tiles(wo) >= MIN_TILES_PER_IMAGE


def filters(w):
    """U (81, D, K) = G w G^T from w (3, 3, D, K): float64 sums, rounded once to w's dtype, in
    recycled memory (a training step makes it on every call)."""
    d, k = w.shape[2:]
    return transformed(winograd_s2.GG, w, (81, d, k), w.dtype)


def forward(x, w, b, before, after, relu=False, budget=None):
    """relu(conv(x) + b) at stride 2 through the padding before/after (after negative: rows and
    columns cropped): x (N, H, W, D), w (3, 3, D, K), b (K,). Returns out (N, H', W', K) and an
    S2Cache, which keeps each chunk's transformed input V for the backward's dw.

    `winograd_s2.forward`'s chunks and passes, with V written into recycled memory of its own
    (not a thread's scratch) so that the backward does not make it again."""
    before, after = tuple(before), tuple(after)
    n, h, wd, d = x.shape
    ho, wo = (h + before[0] + after[0] - 3) // 2 + 1, (wd + before[1] + after[1] - 3) // 2 + 1
    if ho < 1 or wo < 1:
        check_shapes(x, np.empty((3, 3, d, 0)), (2, 2), before)  # its error names the misfit
    th, tw = winograd_s2.tiles(ho), winograd_s2.tiles(wo)
    h_in, w_in = h + min(after[0], 0), wd + min(after[1], 0)
    x = np.ascontiguousarray(x)
    u = filters(w)
    k = u.shape[2]
    dtype = np.result_type(x, u)
    out = empty((n, ho, wo, k), dtype)
    bias = b.astype(dtype, copy=False)
    fast = winograd_s2.passes(x, u)
    wide_k = _vector_gemm(k, x, u)
    chunks = batch_chunks(n, 81 * th * tw * (d + k) * x.itemsize, budget)
    kept = [empty((81, (sl.stop - sl.start) * th * tw * d + LINE), x.dtype) for sl in chunks]

    def work(i):
        sl = chunks[i]
        rows = (sl.stop - sl.start) * th * tw
        v = kept[i]
        fast.winograd_s2_input(x[sl], before[0], before[1], h_in, w_in, th, tw, v)
        prod = scratch("conv.ws2m", (81, rows * k + LINE), dtype)
        if wide_k is not None:
            plane_products(wide_k, v, u, prod, rows)
        else:
            np.matmul(v[:, :rows * d].reshape(81, rows, d), u,
                      out=prod[:, :rows * k].reshape(81, rows, k))
        fast.winograd_s2_output(prod, th, tw, out[sl], bias, relu)

    run_chunks(work, list(range(len(chunks))))
    return out, S2Cache("winograd_s2", x, w, u, before, after, budget, out if relu else None,
                        chunks, kept)


def backward(dout, cache, need_dx=True, relu=False, skip=None):
    """Gradients of `forward`: dout (N, H', W', K) -> dx (N, H, W, D) (None without need_dx),
    dw (3, 3, D, K), db (K,). relu: dout is first masked by the fused ReLU's output. skip: None,
    or an array of x's shape: dx + skip is returned, added as dx is written."""
    x, u = cache.x, cache.u
    (ph, pw), (ah, aw) = cache.before, cache.after
    n, h, wd, d = x.shape
    _, ho, wo, k = dout.shape
    th, tw = winograd_s2.tiles(ho), winograd_s2.tiles(wo)
    h_in, w_in = h + min(ah, 0), wd + min(aw, 0)
    dout = np.ascontiguousarray(dout)
    dtype = np.result_type(dout, u)
    dx = empty(x.shape, dtype) if need_dx else None
    fast = _passes(x, dout)
    ut = u.transpose(0, 2, 1)       # (81, K, D): BLAS reads it transposed, no copy
    wide_d = _vector_gemm(d, x, u) if need_dx else None
    # `vgemm` multiplies untransposed rows only: U^T copied once, (81, K, D), C-contiguous.
    ut_rows = np.ascontiguousarray(ut) if wide_d is not None else None

    def work(i):
        sl = cache.chunks[i]
        rows = (sl.stop - sl.start) * th * tw
        g = dout[sl] if not relu else relu_masked(dout[sl], cache.out[sl],
                                                  scratch("conv.ws2g", dout[sl].shape, dtype))
        dm = scratch("conv.ws2dm", (81, rows * k + LINE), dtype)
        fast.s2_output_adjoint(g, th, tw, dm)
        dm3 = dm[:, :rows * k].reshape(81, rows, k)
        v = cache.kept[i]
        # dU = V^T dM: A read transposed, which `stacked` runs on vgemm's transposed kernel.
        du = stacked.matmul(v[:, :rows * d].reshape(81, rows, d).transpose(0, 2, 1), dm3,
                            np.empty((81, d, k), dtype))
        g2 = g.reshape(-1, k)
        db = np.ones(g2.shape[0], dtype) @ g2
        if need_dx:
            dv = scratch("conv.ws2dv", (81, rows * d + LINE), dtype)
            if wide_d is not None:
                plane_products(wide_d, dm, ut_rows, dv, rows)
            else:
                np.matmul(dm3, ut, out=dv[:, :rows * d].reshape(81, rows, d))
            fast.s2_input_adjoint(dv, ph, pw, h_in, w_in, th, tw, dx[sl],
                                  skip[sl] if skip is not None else dx[sl], skip is not None)
        return du, db

    du, db = None, None
    for du_part, db_part in run_chunks(work, list(range(len(cache.chunks)))):
        du = du_part if du is None else du + du_part
        db = db_part if db is None else db + db_part
    dw = transformed(winograd_s2.GG.T, du, cache.w.shape, dtype)
    return dx, dw, db


def _vector_gemm(cols, *arrays):
    """`vgemm.sgemm(cols)`, the products of `cols` columns on 512-bit registers, for float32
    arrays where the host has it and the compiled kernels run; else None (NumPy's matmul)."""
    if any(a.dtype != np.float32 for a in arrays) or _passes(*arrays) is None:
        return None
    gemm = vgemm.sgemm(cols)
    if gemm is not None and "plane_products" not in _jitted:
        with _lock:
            if "plane_products" not in _jitted:
                _jitted["plane_products"] = compiled.jit(_plane_products)
    return gemm


def plane_products(gemm, a, b, c, rows):
    """c[e] = a[e] @ b[e] for the 81 planes: a (81, >= rows * I) holding (rows, I) row-major, b
    (81, I, J) C-contiguous, c (81, >= rows * J) likewise; by `gemm` (`vgemm.sgemm(J)`), from
    one compiled loop."""
    _jitted["plane_products"](gemm, a, b, c, rows, b.shape[1], b.shape[2])


def _plane_products(gemm, a, b, c, rows, inner, cols):
    for e in range(a.shape[0]):
        gemm(101, 111, 111, rows, cols, inner, 1.0, a[e].ctypes.data, inner, b[e].ctypes.data,
             cols, 0.0, c[e].ctypes.data, cols)


_lock = threading.Lock()
_jitted = {}


class _Passes:
    pass


def _passes(*arrays):
    """The compiled adjoint passes (numba), or None where `compiled.kernels` gives none."""
    if compiled.kernels(*arrays) is None:
        return None
    if "passes" not in _jitted:
        with _lock:
            if "passes" not in _jitted:
                global _write_row       # s2_input_adjoint calls it as a global
                _write_row = compiled.jit(_write_row)
                done = _Passes()
                done.s2_output_adjoint = compiled.jit(s2_output_adjoint)
                done.s2_input_adjoint = compiled.jit(s2_input_adjoint)
                _jitted["passes"] = done
    return _jitted["passes"]


def s2_output_adjoint(g, th, tw, out):
    """g (c, H', W', K) -> out (81, >= c*T_h*T_w*K): A g A^T of each 4 x 4 tile of g (zeros past
    H', W'), entry 9a + b in plane 9a + b, tile (n, t_i, t_j) at ((n*T_h + t_i)*T_w + t_j)*K.
    Along the width one dout row at a time into tall (4, 9, T_w*K), then down the height; the
    arrays indexed whole, so that the compiler vectorises the loops."""
    c, ho, wo, k = g.shape
    two, four, eight = g.dtype.type(2), g.dtype.type(4), g.dtype.type(8)
    span = tw * k
    wide = np.zeros((4, span), g.dtype)
    tall = np.zeros((4, 9, span), g.dtype)
    for n in range(c):
        for ti in range(th):
            r = 4 * ti
            rows = min(4, ho - r)
            for pr in range(4):
                if pr >= rows:
                    tall[pr] = 0
                    continue
                wide[:, :] = 0
                for tj in range(tw):
                    for s in range(min(4, wo - 4 * tj)):
                        for ch in range(k):
                            wide[s, tj * k + ch] = g[n, r + pr, 4 * tj + s, ch]
                for e in range(span):           # A along the width
                    a, b, cc, dd = wide[0, e], wide[1, e], wide[2, e], wide[3, e]
                    tall[pr, 0, e] = a
                    tall[pr, 1, e] = b
                    tall[pr, 2, e] = cc
                    tall[pr, 3, e] = dd
                    tall[pr, 4, e] = a
                    tall[pr, 5, e] = ((a + b) + cc) + dd
                    tall[pr, 6, e] = ((a - b) + cc) - dd
                    tall[pr, 7, e] = ((a + b * two) + cc * four) + dd * eight
                    tall[pr, 8, e] = dd
            base = (n * th + ti) * span
            for b in range(9):                  # A down the height
                for e in range(span):
                    a, bb, cc, dd = tall[0, b, e], tall[1, b, e], tall[2, b, e], tall[3, b, e]
                    q = base + e
                    out[b, q] = a
                    out[9 + b, q] = bb
                    out[18 + b, q] = cc
                    out[27 + b, q] = dd
                    out[36 + b, q] = a
                    out[45 + b, q] = ((a + bb) + cc) + dd
                    out[54 + b, q] = ((a - bb) + cc) - dd
                    out[63 + b, q] = ((a + bb * two) + cc * four) + dd * eight
                    out[72 + b, q] = dd


def s2_input_adjoint(dv, ph, pw, h_in, w_in, th, tw, dx, skip, add):
    """dv (81, >= c*T_h*T_w*D) -> dx (c, H, W, D): B dV B^T of each tile added onto its 9 x 9
    window (rows and columns 8t - P .. 8t - P + 8 of x; neighbouring windows share one row and
    one column), what falls on the padding dropped; rows from h_in and columns from w_in on
    (cropped) and pixels no window reads get zero. With add, skip (dx's shape) is added to every
    pixel as it is written (skip may be dx itself when add is False: it is not read).

    Along the width first: for each row a of a row of tiles' entries, the even window columns
    over the whole row of tiles (contiguous, T_w * D numbers), then every column placed into
    wide (9, (8 T_w + 1) * D) one column at a time (one source and one destination a loop, as
    `winograd_s2_input` gathers), a tile's column 0 adding the last column of the tile before
    it; then down the height, each output row of x made from views of wide's rows indexed from
    0 (loops the compiler vectorises) and written with the skip in one pass."""
    c, h, wd, d = dx.shape
    two, three = dx.dtype.type(2), dx.dtype.type(3)
    span = tw * d
    cols = 8 * tw + 1                           # a row of windows' columns, padding included
    wide = np.zeros((9, cols * d), dx.dtype)    # B along the width, per row a of the tile
    carry = np.zeros(cols * d, dx.dtype)        # a tile row's last row, shared with the next
    even = np.zeros((4, span), dx.dtype)        # a row of tiles' columns 0, 2, 4 and 6
    s0, s2, s4, s6 = even[0], even[1], even[2], even[3]
    # Columns of x that windows reach, the rest (cropped, or past the last window) get zero.
    reach_w = max(0, min(w_in, cols - pw))
    reach_h = max(0, min(h_in, 8 * th + 1 - ph))
    start, count = pw * d, reach_w * d
    line = np.zeros(count, dx.dtype)            # an even sample's row
    flat = dx.reshape(c, h, wd * d)
    other = skip.reshape(c, h, wd * d)
    zero = dx.dtype.type(0)
    for n in range(c):
        for ti in range(th):
            base = (n * th + ti) * span
            for a in range(9):                  # B along the width
                t0, t1 = dv[9 * a, base:base + span], dv[9 * a + 1, base:base + span]
                t2, t3 = dv[9 * a + 2, base:base + span], dv[9 * a + 3, base:base + span]
                t4, t5 = dv[9 * a + 4, base:base + span], dv[9 * a + 5, base:base + span]
                t6, t7 = dv[9 * a + 6, base:base + span], dv[9 * a + 7, base:base + span]
                t8 = dv[9 * a + 8, base:base + span]
                for e in range(span):           # the even columns, over the row of tiles
                    v4, v5, v6, v7, v8 = t4[e], t5[e], t6[e], t7[e], t8[e]
                    s0[e] = v4 * two
                    s2[e] = (((v5 * two - v4) - v6 * two) - v7) + v8 * two
                    s4[e] = ((v5 - v4 * two) + v6 * three) - v8
                    s6[e] = (((v4 - v5) - v6) + v7) - v8 * two
                row = wide[a]
                for ch in range(d):             # each tile's 9 columns into their places,
                    row[ch] = s0[ch]            # column by column
                for tj in range(1, tw):
                    at, src = 8 * tj * d, tj * d
                    for ch in range(d):
                        row[at + ch] = t8[src - d + ch] + s0[src + ch]
                for j in range(1, 8):
                    col = t0 if j == 1 else t1 if j == 3 else t2 if j == 5 else t3 if j == 7 \
                        else s2 if j == 2 else s4 if j == 4 else s6
                    for tj in range(tw):
                        at, src = (8 * tj + j) * d, tj * d
                        for ch in range(d):
                            row[at + ch] = col[src + ch]
                last = 8 * tw * d
                for ch in range(d):
                    row[last + ch] = t8[span - d + ch]
            # Views of the columns x keeps, indexed from 0: loops the compiler can vectorise.
            u0, u1 = wide[0, start:start + count], wide[1, start:start + count]
            u2, u3 = wide[2, start:start + count], wide[3, start:start + count]
            u4, u5 = wide[4, start:start + count], wide[5, start:start + count]
            u6, u7 = wide[6, start:start + count], wide[7, start:start + count]
            u8, cy = wide[8, start:start + count], carry[start:start + count]
            for i in range(8):                  # B down the height: rows 8t .. 8t + 7
                r = 8 * ti + i - ph
                if r < 0 or r >= reach_h:
                    continue
                src = line
                if i == 0:
                    for z in range(count):
                        line[z] = cy[z] + u4[z] * two
                elif i == 1:
                    src = u0
                elif i == 2:
                    for z in range(count):
                        line[z] = (((u5[z] * two - u4[z]) - u6[z] * two) - u7[z]) + u8[z] * two
                elif i == 3:
                    src = u1
                elif i == 4:
                    for z in range(count):
                        line[z] = ((u5[z] - u4[z] * two) + u6[z] * three) - u8[z]
                elif i == 5:
                    src = u2
                elif i == 6:
                    for z in range(count):
                        line[z] = (((u4[z] - u5[z]) - u6[z]) + u7[z]) - u8[z] * two
                else:
                    src = u3
                _write_row(src, count, flat[n, r], other[n, r], add, zero)
            cy[:] = u8                          # row 8t + 8: the next tile row's row 0
        r = 8 * th - ph
        if 0 <= r < reach_h:
            _write_row(carry[start:start + count], count, flat[n, r], other[n, r], add, zero)
        for r in range(max(reach_h, 0), h):     # rows no window reads (or cropped)
            _write_row(carry, 0, flat[n, r], other[n, r], add, zero)
        carry[:] = 0


def _write_row(line, count, dst, skip, add, zero):
    """dst[:count] = line[:count], the rest zero; plus skip with add."""
    if add:
        for z in range(count):
            dst[z] = line[z] + skip[z]
        for z in range(count, dst.shape[0]):
            dst[z] = zero + skip[z]
    else:
        for z in range(count):
            dst[z] = line[z]
        for z in range(count, dst.shape[0]):
            dst[z] = zero
