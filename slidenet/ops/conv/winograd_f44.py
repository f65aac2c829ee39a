"""Winograd's F(4x4, 3x3) in both axes: inference's 3x3 convolutions at a quarter of the products.

`winograd_f43` applies F(4, 3) down the height only: each of its six products is a GEMM whose
rows are whole width windows (F_w*D numbers), 18 multiply-adds per D*K for every 4 output pixels
(4.5 per pixel, half of the lecture's 9). Applied along the width as well, the same matrices
give a 4 x 4 tile of output pixels from a 6 x 6 tile of input pixels with 36 products:

    Y = A^T [ (G w G^T) * (B^T d B) ] A        (* entry by entry, each entry a D -> K product)

2.25 multiply-adds per pixel, half of F(4, 3) down the height. B^T, G and A^T are
`winograd_f43`'s (its docstring derives them); here they act on the rows of the tile, then on
its columns. Each of the 36 entries (a, b) is one GEMM over every tile of a chunk:
V[6a + b] (tiles, D) @ U[6a + b] (D, K) -> M[6a + b] (tiles, K), with U = G w G^T computed
once, in float64, rounded once (`prepare_filters`).

Inference only (`conv.conv_infer` runs it for the 3x3 stride-1 layers `choose_infer` gives it;
training keeps F(4, 3) down the height, whose backward exists), and only with the compiled
kernels (`compiled.winograd44_input`, `winograd44_output`): without numba, `choose_infer`
keeps F(4, 3). The input pass copies each image into a zero-bordered buffer (the padding, and
the zeros a last tile reads past the image), then writes B^T d B of every tile; the output pass
writes A^T M A with the bias, a residual sum's other terms (`skip`) and the ReLU, dropping the
rows and columns of a last tile that stick out.

Rounding: both transforms apply F(4, 3)'s sums twice, so float32 results round about as much
again as F(4, 3)'s (tests/test_winograd44.py bounds it on ReLU-like activations against float64
and against im2col's rounding; docs/benchmarks.md has the numbers).
"""
import threading

import numpy as np

from slidenet.ops import compiled
from slidenet.ops.conv import pair
from slidenet.ops.conv.common import check_shapes
from slidenet.ops.conv.winograd_f43 import G
from slidenet.ops.runtime import batch_chunks, chunk_bytes, empty, run_chunks, scratch

LINE = 16                       # numbers: a cache line of float32


def tiles(n):
    """4-wide tiles that cover n outputs; a last tile may stick out past the end."""
    return -(-n // 4)


def applies(size, stride):
    """Whether F(4x4, 3x3) computes this convolution: a 3 x 3 filter at stride 1."""
    return tuple(size) == (3, 3) and tuple(stride) == (1, 1)


def pays(out_w):
    """Whether F(4x4, 3x3) does fewer multiply-adds than F(4, 3) down the height for out_w
    output columns: 36 products per 4-wide tile against 6 products of 3 columns each per column
    (both tile the height alike). True from 3 columns on."""
    return 2 * tiles(out_w) < out_w


def runs(x, filters):
    """Whether the compiled kernels run F(4x4, 3x3) for these arrays (float32 or float64)."""
    return compiled.kernels(x, filters) is not None


def prepare_filters(w, dtype=None):
    """U (36, D, K) = G w G^T of each filter, entry 6a + b, from w (3, 3, D, K); computed in
    float64 and rounded once to `dtype` (None: w's)."""
    u = np.einsum("ai,ijdk,bj->abdk", G, w.astype(np.float64, copy=False), G)
    return np.ascontiguousarray(u.reshape(36, *w.shape[2:]), dtype=dtype or w.dtype)


def forward(x, filters, b, pad=(1, 1), relu=False, budget=None, skip=None, pool=False):
    """The convolution of x with the 3 x 3 filters that `prepare_filters` made, at stride 1.

    x: (N, H, W, D); filters: (36, D, K); b: (K,); pad (P_h, P_w). Returns out (N, H', W', K)
    with H' = H + 2P_h - 2, W' = W + 2P_w - 2: relu(conv(x) + b [+ skip]) (relu when `relu`);
    skip: None or an array of out's shape, a residual sum's other terms. pool=True (not with
    skip): the 2x2 max pool at stride 2 of out instead, (N, H' // 2, W' // 2, K), from the
    products without writing out (CONV -> RELU -> MAXPOOL(2x2)). Needs the compiled
    kernels (`runs`). The batch is cut into chunks of whole images whose GEMM rows and products
    fill about `runtime.chunk_bytes()` (smaller chunks, to stay in L2, were no faster: the
    GEMMs lose to their size what the passes gain); where one image's are more than that, each
    image into bands of rows of tiles.
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
    fast = compiled.kernels(x, filters)

    def work(sl, band=slice(0, th)):
        """Images sl, tile rows `band` of each: the three steps on GEMM rows in scratch."""
        c, bt = sl.stop - sl.start, band.stop - band.start
        rows = c * bt * tw
        # Each plane one cache line longer than its rows: 36 planes at a power-of-two distance
        # would all fall in the same few cache sets.
        v = scratch("conv.w44v", (36, rows * d + LINE), x.dtype)
        fast.winograd44_input(x[sl], pad[0], pad[1], band.start, bt, tw,
                              scratch("conv.w44pad", (4 * bt + 2, 4, tw + 1, d), x.dtype),
                              scratch("conv.w44wide", (6, 4 * bt + 2, tw * d), x.dtype), v)
        prod = scratch("conv.w44m", (36, rows * k + LINE), dtype)
        np.matmul(v[:, :rows * d].reshape(36, rows, d), filters,
                  out=prod[:, :rows * k].reshape(36, rows, k))
        tall = scratch("conv.w44tall", (4, 6, tw * k), dtype)
        if pool:
            fast.winograd44_output_pool(prod, band.start, bt, tw, out[sl], bias, True, relu,
                                        tall, scratch("conv.w44row", (2, 4, tw * k), dtype))
            return
        fast.winograd44_output(prod, band.start, bt, tw, out[sl], bias, True, relu,
                               prod[:1, :1, None, None] if skip is None else skip[sl],
                               skip is not None, tall, scratch("conv.w44row", (4, tw * k), dtype))

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
    buf, wide, tall and row as `forward` gives them.
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
        self.buf = np.empty((4 * self.th + 2, 4, self.tw + 1, d), dtype)
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
        fast.winograd44_input(x, self.pad[0], self.pad[1], 0, self.th, self.tw, self.buf,
                              self.wide, self.v)
        np.matmul(self.vm, filters, out=self.pm)
        if self.pool:
            fast.winograd44_output_pool(self.prod, 0, self.th, self.tw, out, b, True, relu,
                                        self.tall, self.row)
        else:
            fast.winograd44_output(self.prod, 0, self.th, self.tw, out, b, True, relu,
                                   self.no_skip, False, self.tall, self.row[0])
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
