"""Winograd's F(4x4, 3x3): a 4 x 4 block of outputs of a 3 x 3 filter from 36 products.

`winograd_f43` applies F(4, 3) down the height only: each of its six products is a GEMM whose
rows are whole width windows (3 x D numbers), 18 multiply-adds per D*K for every 4 output
pixels (4.5 per pixel, half of the lecture's 9). Applied along the width as well, the same
matrices give a 4 x 4 tile of output pixels from a 6 x 6 tile of input pixels with 36
products, each a channel vector times a D x K matrix:

    Y = A^T [ (G w G^T) * (B^T d B) ] A        (* entry by entry: 36 GEMMs of D x K)

B^T, G and A^T are `winograd_f43`'s (its docstring derives them); here they act down the
height of the tile, then along its width. Each of the 36 entries (a, b) is one GEMM over every
tile of a chunk: V[6a + b] (tiles, D) @ U[6a + b] (D, K) -> M[6a + b] (tiles, K), with
U = G w G^T computed once, in float64, rounded once (`prepare_filters`). 2.25 multiply-adds per
pixel: a quarter of the lecture's, half of F(4, 3) down the height; the GEMMs read 36/16 of the
input instead of 4.5 times it. The price is a narrower GEMM (inner size D instead of 3 x D)
and more float32 rounding: every number passes two transforms each way (tests/test_kernels.py
and tests/test_winograd44.py bound it; `scripts/conv_accuracy.py` measures it).

The passes (compiled with numba, `ops.compiled`'s `winograd44_*`: F(4, 3)'s sums, down the
height, then along the width; without numba, `NUMPY`'s einsums with the same signatures, the
same sums in another order, equal to rounding):

    input    x (c, H, W, D) -> (36, c*T_h*T_w, D)            B^T d B of each tile, padding
                                                             and the zeros past the image
                                                             included; a band of tile rows
    output   (36, c*T_h*T_w, K) -> out (c, H', W', K)        A^T m A [+ b][+ skip][ReLU],
                                                             edges cropped
    output_pool  the same, then the 2x2 max pool             (CONV -> RELU -> MAXPOOL(2x2))
    adjoint  x (c, H, W, D) -> (36, c*T*S, D)                A x A^T: `output` transposed

One forward (`forward`) serves inference (`dispatch.conv_infer`, "winograd44", with the
residual skip, the pool and bands of tile rows of large images) and training
(`conv_forward_winograd2d`, "winograd2d", which also keeps a cache). Training's backward is
`winograd`'s argument in two dimensions: dx of a stride-1 convolution is the full convolution
of dout (padded by 2 - P) with the flipped filters, so dx = output(input(dout) @ U_flip); and
the flipped filters' 36 matrices get input(dout)^T @ adjoint(x), summed over tiles, from which
dw = G^T dU G (`filter_grad`). One set of rows of dout serves both GEMMs.
"""
import threading

import numpy as np

from slidenet.ops import compiled, stacked, vpass
from slidenet.ops.conv import pair
from slidenet.ops.conv.common import ConvCache, check_shapes, flipped, relu_masked, transformed
from slidenet.ops.conv.im2col import conv_backward_im2col
from slidenet.ops.conv.winograd_f43 import AT, BT, G
from slidenet.ops.runtime import (
    batch_chunks, bordered, chunk_bytes, empty, run_chunks, scratch, split)

NAME = "winograd2d"             # the training pair's name in `dispatch` (inference's: "winograd44")
LINE = 16                       # numbers: a cache line of float32
# `pays_in_training`: docs/benchmarks.md, "res18 training: F(4x4, 3x3)" and "res18 training: half
# the serial work" (MIN_SIDE 4), have the measurements.
MIN_SIDE = 4
MIN_DEPTH = 8
# The backward's dU over the whole batch at once, split by product, at most this many tiles an
# image (see `conv_backward_winograd2d`; docs/benchmarks.md, "res18 training: half the serial
# work", has the measurements: it pays for one tile an image, not for four or sixteen).
WHOLE_TILES = 1
# Multiply-adds (counted as GG's) from which a filter transform (`prepare_filters`,
# `filter_grad`) is shared by the worker threads: below, a hand-over costs about what the
# second thread saves (R1's 64-channel layers, docs/benchmarks.md "R1 training: round 5").
FILTERS_SHARED_FROM = 4 * 2**20
# G w G^T for all 36 entries at once: GG[6a + b, 3i + j] = G[a, i] G[b, j].
GG = np.kron(G, G)
G64 = np.ascontiguousarray(G, np.float64)


_ONES = {}


def _ones(count, dtype):
    """A read-only vector of `count` ones (the backward's db is a GEMV by it), made once per
    size: the same few sizes every training step, and a fresh one is new pages each time."""
    key = (count, np.dtype(dtype).str)
    ones = _ONES.get(key)
    if ones is None:
        if len(_ONES) > 64:                 # a bound, for callers of many sizes
            _ONES.clear()
        ones = _ONES[key] = np.ones(count, dtype)
        ones.flags.writeable = False
    return ones


def tiles(n):
    """4-wide tiles that cover n outputs; a last tile may stick out past the end."""
    return -(-n // 4)


def applies(size, stride, pad=(0, 0)):
    """Whether F(4x4, 3x3) computes this convolution: a 3 x 3 filter at stride 1 (for
    training's backward, whose dx is a full convolution, padded by at most 2)."""
    return tuple(size) == (3, 3) and tuple(stride) == (1, 1) and max(pad) < 3


def pays(out_w):
    """Whether F(4x4, 3x3) does fewer multiply-adds than F(4, 3) down the height for out_w
    output columns: 36 products per 4-wide tile against 6 products of 3 columns each per column
    (both tile the height alike). True from 3 columns on."""
    return 2 * tiles(out_w) < out_w


def pays_in_training(out_h, out_w, depth, filters, itemsize=4):
    """Whether training's "auto" takes F(4x4, 3x3) over F(4, 3) for a convolution with this
    output size, depth D and K filters: the compiled passes (NumPy's are for checking, not
    speed), at least MIN_SIDE outputs each way (below, the 36 GEMMs are too short to pay for
    their calls), at least MIN_DEPTH channels (the GEMMs' inner size), and one image's products
    and row sets within `runtime.chunk_bytes()` (the backward cuts the batch into whole images
    only)."""
    hot = 36 * tiles(out_h) * tiles(out_w) * (depth + filters) * itemsize
    return (min(out_h, out_w) >= MIN_SIDE and depth >= MIN_DEPTH and hot <= chunk_bytes()
            and compiled.kernels() is not None)


def runs(x, filters):
    """Whether the compiled kernels run F(4x4, 3x3) for these arrays (float32 or float64)."""
    return compiled.kernels(x, filters) is not None


def prepare_filters(w, dtype=None):
    """U (36, D, K) = G w G^T of each filter, entry 6a + b, from w (3, 3, D, K) in any layout
    (fastest C-contiguous: the compiled loops run along K); computed in float64 and rounded once to `dtype`
    (None: w's). A float32 U, with numba: G's sums along each axis in turn in float64 numbers
    (`compiled.winograd44_filters`), on the worker threads by blocks of D; else (and for float64,
    which gradcheck's finite differences see: its exact arithmetic as before) one float64
    product by GG (`transformed`)."""
    d, k = w.shape[2:]
    dtype = np.dtype(dtype or w.dtype)
    fast = compiled.kernels(w) if dtype == np.float32 else None
    if fast is None:
        return transformed(GG, w, (36, d, k), dtype)
    u = empty((36, d, k), dtype)
    run_chunks(lambda sl: fast.winograd44_filters(G64, w, sl.start, sl.stop, u),
               _filter_slices(d, 36 * 9 * d * k))        # as work: GG's multiply-adds
    return u


def _filter_slices(n, work):
    """`split`'s slices of a filter transform's n rows, one slice below FILTERS_SHARED_FROM."""
    return split(n) if work >= FILTERS_SHARED_FROM else [slice(0, n)]


def filter_grad(du, out=None):
    """dU (36, A, B) -> dw (3, 3, A, B) = G^T dU G, summed in float64 and rounded once (with
    numba and float32, G^T's sums along each axis in turn, `compiled.winograd44_filter_grad`; as
    `prepare_filters`). out: where to write it (any layout, e.g. a flipped view; None: a new
    array)."""
    fast = compiled.kernels(du) if du.dtype == np.float32 else None
    dw = empty((3, 3, *du.shape[1:]), du.dtype) if out is None else out
    if fast is None:
        dw[...] = transformed(GG.T, du, (3, 3, *du.shape[1:]), du.dtype)
        return dw
    run_chunks(lambda sl: fast.winograd44_filter_grad(G64, du, sl.start, sl.stop, dw),
               _filter_slices(du.shape[1], 9 * du.size))
    return dw


class NUMPY:
    """The passes without numba, with `ops.compiled`'s signatures (wide, tall: unused):
    einsums over strided views of the tiles. A check and a fallback, not for speed."""

    @staticmethod
    def winograd44_input(x, ph, pw, t0, th, tw, wide, out):
        c, h, wd, d = x.shape
        hp, wp = 4 * th + 2, 4 * tw + 2
        xp = np.zeros((c, hp, wp, d), x.dtype)
        top = 4 * t0 - ph                       # x's row at xp's row 0
        i0, i1, j1 = max(0, top), min(h, top + hp), min(wd, wp - pw)
        if i1 > i0 and j1 > 0:
            xp[:, i0 - top:i1 - top, pw:pw + j1] = x[:, i0:i1, :j1]
        sc, sh, sw, sd = xp.strides
        view = np.lib.stride_tricks.as_strided(
            xp, (c, th, tw, 6, 6, d), (sc, 4 * sh, 4 * sw, sh, sw, sd), writeable=False)
        bt = BT.astype(x.dtype)
        v = np.einsum("ai,bj,ctsijd->abctsd", bt, bt, view)
        out[:, :c * th * tw * d] = v.reshape(36, -1)

    @staticmethod
    def _tiles(m, c, th, tw, k, dtype):
        """A^T m A of every tile: (c, 4T_h, 4T_w, K)."""
        at = AT.astype(dtype)
        y = np.einsum("ia,jb,abctsk->ctisjk", at, at,
                      m[:, :c * th * tw * k].reshape(6, 6, c, th, tw, k))
        return y.reshape(c, 4 * th, 4 * tw, k)

    @staticmethod
    def winograd44_output(m, first, th, tw, out, bias, use_bias, relu, skip, use_skip):
        c, ho, wo, k = out.shape
        r0 = 4 * first
        r1 = min(ho, r0 + 4 * th)
        o = out[:, r0:r1]
        o[...] = NUMPY._tiles(m, c, th, tw, k, out.dtype)[:, :r1 - r0, :wo]
        if use_bias:
            np.add(o, bias, out=o)
        if use_skip:
            np.add(o, skip[:, r0:r1], out=o)
        if relu:
            np.maximum(o, out.dtype.type(0), out=o)

    @staticmethod
    def winograd44_output_pool(m, first, th, tw, out, bias, use_bias, relu, tall, wide):
        c, ph, pw, k = out.shape
        p0, p1 = 2 * first, min(ph, 2 * (first + th))
        if p1 <= p0:
            return
        y = NUMPY._tiles(m, c, th, tw, k, out.dtype)[:, :2 * (p1 - p0), :2 * pw]
        if use_bias:
            y += bias
        if relu:
            np.maximum(y, out.dtype.type(0), out=y)
        out[:, p0:p1] = y.reshape(c, p1 - p0, 2, pw, 2, k).max(axis=(2, 4))

    @staticmethod
    def winograd44_adjoint(x, out):
        c, h, w, d = x.shape
        t, s = out.shape[2], out.shape[3]
        whole = np.zeros((c, 4 * t, 4 * s, d), x.dtype)
        whole[:, :h, :w] = x
        a = AT.T.astype(x.dtype)
        np.copyto(out.reshape(6, 6, c, t, s, d),
                  np.einsum("ai,bj,ctisjd->abctsd", a, a, whole.reshape(c, t, 4, s, 4, d)))


def passes(*arrays):
    """The compiled passes for these arrays, or `NUMPY`'s."""
    return compiled.kernels(*arrays) or NUMPY


def rows(fast, x, pad, first, th, tw, name):
    """B^T d B of the tiles of x (c, H, W, D) padded by pad, tile rows first .. first + th - 1
    of T_w = tw columns of tiles: (36, c*th*tw, D), a view of scratch `name`. Each plane is
    one cache line longer than its rows: 36 planes at a power-of-two distance would all fall
    in the same few cache sets."""
    c, d = x.shape[0], x.shape[3]
    n = c * th * tw
    v = scratch(name, (36, n * d + LINE), x.dtype)
    fn = vpass.input_pass() if _vector(fast, d, x) else None
    if fn is not None:
        vpass.run(fn, x, pad[0], pad[1], first, th, tw, v)
    else:
        fast.winograd44_input(x, pad[0], pad[1], first, th, tw,
                              scratch(name + "wide", (6, 4 * th + 2, tw * d), x.dtype), v)
    return v[:, :n * d].reshape(36, n, d)


def _vector(fast, d, *arrays):
    """Whether `ops.vpass`'s passes stand in for `fast`'s (the same bits, each tile's 16
    channels in a register): the compiled passes, depth d a multiple of 16, float32
    C-contiguous arrays."""
    return fast is not NUMPY and d % 16 == 0 and all(
        a.dtype == np.float32 and a.flags.c_contiguous for a in arrays)


def output(fast, m, first, th, tw, out, bias, use_bias, relu, skip, use_skip):
    """`fast.winograd44_output`'s arguments and pixels; `ops.vpass`'s output pass where it
    stands in (`_vector`)."""
    fn = vpass.output_pass() if _vector(fast, out.shape[3], m, out, bias, skip) else None
    if fn is not None:
        vpass.run_output(fn, m, first, th, tw, out, bias, use_bias, relu, skip, use_skip)
    else:
        fast.winograd44_output(m, first, th, tw, out, bias, use_bias, relu, skip, use_skip)


def forward(x, filters, b, pad=(1, 1), relu=False, budget=None, skip=None, pool=False):
    """The convolution of x with the 3 x 3 filters that `prepare_filters` made, at stride 1.

    x: (N, H, W, D); filters: (36, D, K); b: (K,); pad (P_h, P_w). Returns out (N, H', W', K)
    with H' = H + 2P_h - 2, W' = W + 2P_w - 2: relu(conv(x) + b [+ skip]) (relu when `relu`);
    skip: None or an array of out's shape, a residual sum's other terms. pool=True (not with
    skip): the 2x2 max pool at stride 2 of out instead, (N, H' // 2, W' // 2, K), from the
    products without writing out (CONV -> RELU -> MAXPOOL(2x2)). The compiled passes where
    they run (`runs`), else `NUMPY`'s. The batch is cut into chunks of whole images whose GEMM
    rows and products fill about `runtime.chunk_bytes()` (smaller chunks, to stay in L2, were
    no faster: the GEMMs lose to their size what the passes gain); where one image's are more
    than that, each image into bands of rows of tiles.
    """
    n, h, wd, d = x.shape
    k = filters.shape[2]
    if (n == 1 and skip is None and filters.shape[1] == d and h + 2 * pad[0] >= 3
            and wd + 2 * pad[1] >= 3):
        fast = compiled.kernels(x, filters)
        if fast is not None and x.flags.c_contiguous and x.dtype == filters.dtype == b.dtype:
            layer = one_image(h, wd, d, k, pad, pool, x.dtype)
            if layer is not None:
                return layer.run(fast, x, filters, b, relu)
    ho, wo = check_shapes(x, np.empty((3, 3, filters.shape[1], 0)), (1, 1), pad)
    th, tw = tiles(ho), tiles(wo)
    x = np.ascontiguousarray(x)
    dtype = np.result_type(x, filters)
    if pool and skip is not None:
        raise ValueError("F(4x4, 3x3) pools or adds a skip, not both")
    out = empty((n, ho // 2, wo // 2, k) if pool else (n, ho, wo, k), dtype)
    bias = b.astype(dtype, copy=False)
    fast = passes(x, filters)

    def work(sl, band=slice(0, th)):
        """Images sl, tile rows `band` of each: the three steps on GEMM rows in scratch."""
        bt = band.stop - band.start
        v = rows(fast, x[sl], pad, band.start, bt, tw, "conv.w44v")
        prod = scratch("conv.w44m", (36, v.shape[1] * k + LINE), dtype)
        stacked.matmul(v, filters, prod[:, :v.shape[1] * k].reshape(36, v.shape[1], k))
        tall = scratch("conv.w44tall", (4, 6, tw * k), dtype)
        if pool:
            fast.winograd44_output_pool(prod, band.start, bt, tw, out[sl], bias, True, relu,
                                        tall, scratch("conv.w44row", (2, 4, tw * k), dtype))
            return
        output(fast, prod, band.start, bt, tw, out[sl], bias, True, relu,
               prod[:1, :1, None, None] if skip is None else skip[sl], skip is not None)

    per_row = 36 * tw * (d + k) * x.itemsize       # one row of tiles' GEMM rows and products
    if per_row * th > chunk_bytes() and th > 1:
        # A large image: bands of tile rows, each image on its own (as `winograd.band`), so
        # that the scratch stays near `runtime.chunk_bytes()` however large the image.
        bands = batch_chunks(th, per_row, budget)
        run_chunks(lambda task: work(slice(task[0], task[0] + 1), task[1]),
                   [(i, band) for i in range(n) for band in bands])
    else:
        run_chunks(work, batch_chunks(n, per_row * th, budget))
    return out


class OneImage:
    """One image through one layer shape, its scratch made once: batch 1 spends a few
    microseconds per layer in Python (shape checks, scratch lookups, views, the chunk
    scheduler) next to kernels of tens, so a prediction's layers keep theirs here. The same
    three kernel calls as `forward`, in the same order on the same numbers: the same bits.

    Arrays (T_h, T_w: the rows and columns of tiles): v (36, T_h*T_w*D + LINE) and its GEMM
    view vm (36, T_h*T_w, D); prod (36, T_h*T_w*K + LINE) and pm (36, T_h*T_w, K); the passes'
    wide, tall and row as `forward` gives them.
    """

    def __init__(self, h, wd, d, k, pad, pool, dtype):
        self.pad, self.pool = pad, pool
        self.ho, self.wo = h + 2 * pad[0] - 2, wd + 2 * pad[1] - 2
        self.th, self.tw = tiles(self.ho), tiles(self.wo)
        self.k = k
        rows = self.th * self.tw
        # Room for rows * D (K) numbers past the last plane: `pair` views the planes from a
        # band's first tile on as whole (36, stride) arrays.
        self.v = np.empty(36 * (rows * d + LINE) + rows * d, dtype)[:36 * (rows * d + LINE)] \
            .reshape(36, rows * d + LINE)
        self.vm = self.v[:, :rows * d].reshape(36, rows, d)
        self.prod = np.empty(36 * (rows * k + LINE) + rows * k, dtype)[:36 * (rows * k + LINE)] \
            .reshape(36, rows * k + LINE)
        self.pm = self.prod[:, :rows * k].reshape(36, rows, k)
        self.wide = np.empty((6, 4 * self.th + 2, self.tw * d), dtype)
        self.tall = np.empty((4, 6, self.tw * k), dtype)
        self.row = np.empty((2, 4, self.tw * k), dtype)
        self.no_skip = self.prod[:1, :1, None, None]
        self.shape = (1, self.ho // 2, self.wo // 2, k) if pool else (1, self.ho, self.wo, k)
        self.d, self.dtype = d, dtype
        self.halves = None                  # `pair`'s scratch for its two threads, when paired
        self.h, self.wd = h, wd
        self.task = None                    # `pair`'s description of a call

    def pair_task(self):
        """`pair`'s task for this layer (int64, `pair.phase44` reads it): its sizes and the
        addresses of its scratch, made once with the two threads' scratch (`pair.scratch44`
        float32 numbers each); the call's arrays (x, out, filters, bias: slots 0, 14, 12, 17)
        and relu (18) are filled in per call."""
        if self.task is None:
            size = pair.scratch44(self.th, self.tw, self.d, self.k)
            self.halves = (np.empty(size, np.float32), np.empty(size, np.float32))
            self.task = np.array(
                [0, self.h, self.wd, self.d, self.pad[0], self.pad[1], self.th, self.tw,
                 self.v.ctypes.data, self.v.shape[1], self.prod.ctypes.data,
                 self.prod.shape[1], 0, self.k, 0, self.shape[1], self.shape[2], 0, 0,
                 int(self.pool), self.th - self.th // 2, self.halves[0].ctypes.data,
                 self.halves[1].ctypes.data], np.int64)
        return self.task

    def run(self, fast, x, filters, b, relu):
        """`forward(x, filters, b, pad, relu, pool=pool)` of one image x (1, H, W, D); on two
        threads (`pair`) where it applies, the same bits."""
        if pair.applies44(x, filters, b, self.th):
            out = pair.winograd44_forward(self, x, filters, b, relu)
            if out is not None:
                return out
        out = empty(self.shape, x.dtype)
        fast.winograd44_input(x, self.pad[0], self.pad[1], 0, self.th, self.tw,
                              self.wide, self.v)
        # `pair` gives its threads the GEMM that stacked.matmul calls here: the same bits.
        stacked.matmul(self.vm, filters, self.pm)
        if self.pool:
            fast.winograd44_output_pool(self.prod, 0, self.th, self.tw, out, b, True, relu,
                                        self.tall, self.row)
        else:
            fast.winograd44_output(self.prod, 0, self.th, self.tw, out, b, True, relu,
                                   self.no_skip, False)
        return out


# Each thread's OneImage per layer shape (a thread's layers run one at a time). At most
# ONE_IMAGE_LAYERS shapes, and only small images: a large one's scratch belongs to `scratch`.
ONE_IMAGE_LAYERS = 32
ONE_IMAGE_BYTES = 1 << 21
_one = threading.local()


def one_image(h, wd, d, k, pad, pool, dtype):
    """This thread's OneImage for a layer of this shape, or None for an image too large to
    keep scratch for (F(4x4, 3x3)'s rows and products above ONE_IMAGE_BYTES)."""
    layers = getattr(_one, "layers", None)
    if layers is None:
        layers = _one.layers = {}
    key = (h, wd, d, k, pad[0], pad[1], pool, dtype)
    layer = layers.get(key)
    if layer is None:
        if 36 * tiles(h + 2 * pad[0] - 2) * tiles(wd + 2 * pad[1] - 2) * (d + k) \
                * np.dtype(dtype).itemsize > ONE_IMAGE_BYTES:
            return None
        if len(layers) >= ONE_IMAGE_LAYERS:
            layers.clear()
        layer = layers[key] = OneImage(h, wd, d, k, tuple(pad), pool, dtype)
    return layer
def conv_forward_winograd2d(x, w, b, stride=(1, 1), pad=(0, 0), relu=False, budget=None,
                            filters=None):
    """Training's forward ("winograd2d"): `forward`, and the cache for the backward.

    x: (N, H, W, D); w: (3, 3, D, K); b: (K,); pad (P_h, P_w). Returns out (N, H', W', K) with
    H' = H + 2P_h - 2, W' = W + 2P_w - 2, and a ConvCache. relu: return max(0, out). budget:
    scratch bytes (None: the global one). filters: `prepare_filters(w)`, computed once for
    many calls. ValueError for any other filter, stride or a wider padding.
    """
    if not applies(w.shape[:2], stride, pad):
        raise ValueError(f"Winograd F(4x4, 3x3) needs a 3x3 filter at stride 1 padded by at "
                         f"most 2, not {w.shape[0]}x{w.shape[1]} at stride "
                         f"{stride[0]}x{stride[1]}, pad {pad[0]}x{pad[1]}")
    check_shapes(x, w, stride, pad)
    dtype = np.result_type(x, w)
    u = prepare_filters(w, dtype) if filters is None else filters
    out = forward(x, u, b, tuple(pad), relu, budget)
    return out, ConvCache(NAME, x, w, tuple(stride), tuple(pad), budget, out if relu else None)


def padded(name, c, h, w, d, pad, dtype):
    """A zero-bordered scratch batch of c images of h x w x d padded by pad = (P_h, P_w), plus
    zero rows and columns at the bottom and right so that whole tiles of 4 x 4 outputs (6 x 6
    inputs) cover it. Returns (xp, its interior to fill)."""
    ph, pw = pad
    rows_total = 4 * tiles(h + 2 * ph - 2) + 2
    cols_total = 4 * tiles(w + 2 * pw - 2) + 2
    return bordered(name, (c, rows_total, cols_total, d), dtype,
                    (ph, rows_total - ph - h, pw, cols_total - pw - w))


def conv_backward_winograd2d(dout, cache, need_dx=True, relu=False, skip=None):
    """Gradients of the F(4x4, 3x3) forward: dx = output(input(dout) @ U_flip), and the flipped
    filters' 36 matrices get input(dout)^T @ adjoint(x) (the module docstring).

    dout: (N, H', W', K). Returns dx (N, H, W, D) (None when need_dx is False), dw (3, 3, D, K),
    db (K,). relu: dout is first multiplied by the mask of the forward's ReLU. skip: None, or
    an array of dx's shape added to dx in the output pass that writes it (the other branches'
    gradients of a residual sum: `dispatch.conv_backward`). Without dx, im2col's backward
    computes dw alone, from the input's rows.
    """
    if not need_dx:
        return conv_backward_im2col(dout, cache, need_dx, relu)
    x, w, budget = cache.x, cache.w, cache.budget
    # dx is a stride-1 "full" convolution with the flipped filters, copied contiguous first:
    # the compiled transform reads a transposed view several times slower than the copy costs.
    w_flip, back_pad = flipped(w, cache.pad)
    n, h, wd, d = x.shape
    k = w.shape[3]
    _, ho, wo, _ = dout.shape
    dout = np.ascontiguousarray(dout)
    dx = empty(x.shape, np.result_type(dout, w))
    u_flip = prepare_filters(w_flip, dx.dtype)      # (36, K, D)
    t, s = tiles(h), tiles(wd)
    padded_out = (4 * t + 2) * (4 * s + 2)
    fast = passes(x, dout, dx)

    # Few tiles an image (a 4 x 4 output): dU's 36 GEMMs would sum over only a
    # chunk's few tiles each, and every chunk would add a whole (36, K, D) partial. Instead
    # each chunk keeps its rows of dout and of adjoint(x) in whole-batch arrays, and the 36
    # GEMMs run once over every tile of the batch, split over the workers by product.
    whole = t * s <= WHOLE_TILES
    if whole:
        every_r = empty((36, n * t * s, k), dout.dtype)
        every_x = empty((36, n * t * s, d), x.dtype)

    def work(sl):
        c = sl.stop - sl.start
        # dout padded by 2 - P once, for the ReLU's mask and db; the input pass adds no more.
        gp, inner = padded("conv.w2gpad", c, ho, wo, k, back_pad, dout.dtype)
        if relu:
            relu_masked(dout[sl], cache.out[sl], inner)
        else:
            inner[...] = dout[sl]
        db_part = ones[:c * padded_out] @ gp.reshape(-1, k)     # the zero border adds nothing
        r = rows(fast, gp, (0, 0), 0, t, s, "conv.w2grows")
        prod = scratch("conv.w2m", (36, r.shape[1] * d), dx.dtype)
        stacked.matmul(r, u_flip, prod.reshape(36, r.shape[1], d))
        # The unused skip is a stand-in of its rank, never dx itself (an output array that
        # might overlap an input makes numba's loop check for it and run scalar).
        output(fast, prod, 0, t, s, dx[sl], prod[0, :d], False, False,
               prod[:1, :1, None, None] if skip is None else skip[sl], skip is not None)
        xt = scratch("conv.w2x", (36, c, t, s, d), x.dtype)
        fast.winograd44_adjoint(x[sl], xt)
        if whole:
            tiles_of = slice(sl.start * t * s, sl.stop * t * s)
            every_r[:, tiles_of] = r
            every_x[:, tiles_of] = xt.reshape(36, c * t * s, d)
            return None, db_part
        part = empty((36, k, d), np.result_type(x, dout))       # recycled, as du
        return stacked.matmul(r.transpose(0, 2, 1), xt.reshape(36, c * t * s, d), part), db_part

    hot = 36 * t * s * (k + 2 * d)                  # rows, products and adjoint(x)
    per_image = hot + padded_out * k
    chunks = batch_chunks(n, per_image * x.itemsize, budget, hot * x.itemsize)
    ones = _ones(max(sl.stop - sl.start for sl in chunks) * padded_out, dout.dtype)
    # dU in recycled memory (a fresh (36, K, D) array is new pages every step): the whole
    # batch's GEMMs write all of it; else the chunks' partials are added to the first one.
    du = empty((36, k, d), np.result_type(x, dout))
    db = np.zeros(k, dout.dtype)
    parts = run_chunks(work, chunks)
    for i, (du_part, db_part) in enumerate(parts):
        if du_part is not None:
            if i == 0:
                du[...] = du_part
            else:
                du += du_part
        db += db_part
    if whole:
        run_chunks(lambda ps: stacked.matmul(every_r[ps].transpose(0, 2, 1), every_x[ps], du[ps]),
                   split(36, 36 * n * t * s * k * d))
    dw_flip = filter_grad(du)                       # (3, 3, K, D), contiguous: written fast
    dw = empty(w.shape, du.dtype)
    np.copyto(dw, dw_flip[::-1, ::-1].transpose(0, 1, 3, 2))
    return dx, dw, db
