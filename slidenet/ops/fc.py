"""The fully connected layer: stretch the volume into a vector, multiply by W, add b.

As in the lecture's 32x32x3 -> 3072 example, the input volume is flattened in (height, width,
depth) order, which for channels-last arrays is just their memory order.

Each product is split into one block per worker thread (see `runtime`): dw by rows of W; forward
and dx by rows of the batch when it is large, and by columns of the result when it is small
(below COLUMNS_BELOW rows; one row is a GEMV, too short to share). A GEMM packs its whole right-hand matrix (W, or W^T for dx) before it
multiplies: split by rows, every thread would pack all of W for its few rows; split by columns,
each packs its own share. Products too small to pay for a hand-over to another thread
(`runtime.split`'s threshold) run on the calling thread. A batch of one makes dw an outer
product: one multiply per entry, as the GEMM would compute it, without the GEMM's slow path
for an inner size of 1 (with numba by `compiled_step.outer`: NumPy's broadcast multiply is
slow on its broadcast rows). The backward writes dw into the caller's array when given one (the
layer's grads: no fresh array of W's size to fault in, no copy). docs/benchmarks.md ("Small
batches", "R1 training: round 5") has the measurements.

Inference of one image (`fc_infer`, what a prepared net runs) is a product of a vector by W,
whose cost is reading W (R1's fc1: 4 MiB). With the compiled kernels it reads only the rows of
W whose input is not zero (`compiled.fc_one`): after a ReLU, many are; so for up to ROWS_UP_TO
images.
"""
from typing import NamedTuple, Optional

import numpy as np

from slidenet.ops import compiled, compiled_step
from slidenet.ops.runtime import SMALL_WORK, run_chunks, split

# Batches of fewer rows than this split the forward and dx by columns of the result.
COLUMNS_BELOW = 64
# Inference of at most this many images reads W row by row (`fc_infer`): below it a GEMM is
# slow for so few rows, above it the GEMM is faster (docs/benchmarks.md, "R1 at batch 1").
ROWS_UP_TO = 3


class FcCache(NamedTuple):
    """What fc_backward needs from fc_forward."""
    x2: np.ndarray                  # (N, I): the input, flattened in (H, W, D) order
    shape: tuple                    # the input's own shape, (N, H, W, D) or (N, I)
    w: np.ndarray                   # (I, O)
    out: Optional[np.ndarray]       # (N, O) when the forward applied a ReLU (its mask)


def fc_forward(x, w, b, relu=False):
    """x: (N, ...) any volume with I = prod(...) values; w: (I, O); b: (O,).

    Returns out (N, O) = x.reshape(N, I) @ w + b, and an FcCache. relu: return max(0, out)
    instead (the cache then keeps it, for the ReLU's mask in the backward).
    """
    x2 = x.reshape(x.shape[0], -1)
    (n, i), o = x2.shape, w.shape[1]
    out = np.empty((n, o), dtype=np.result_type(x2, w))
    zero = np.zeros(o, out.dtype)

    if 1 < n < COLUMNS_BELOW:
        def work(sl):
            np.matmul(x2, w[:, sl], out=out[:, sl])
            np.add(out[:, sl], b[sl], out=out[:, sl])
            if relu:
                np.maximum(out[:, sl], zero[sl], out=out[:, sl])

        run_chunks(work, split(o, n * i * o))
    else:
        def work(sl):
            np.matmul(x2[sl], w, out=out[sl])
            np.add(out[sl], b, out=out[sl])
            if relu:
                np.maximum(out[sl], zero, out=out[sl])

        run_chunks(work, split(n, n * i * o))
    return out, FcCache(x2, x.shape, w, out if relu else None)


def fc_infer(x, w, b, relu=False):
    """fc_forward's output alone (no cache), for inference: x (N, ...), w (I, O), b (O,) ->
    (N, O). At most ROWS_UP_TO float images with the compiled kernels: `compiled.fc_one`,
    which skips the rows of W whose input is 0 and adds the products in x's order (the GEMM's
    order is its own: the two agree to rounding); else fc_forward's GEMM."""
    if x.shape[0] <= ROWS_UP_TO:
        fast = compiled.kernels(x, w)
        if fast is not None and x.dtype == w.dtype == b.dtype:
            out = np.empty((x.shape[0], w.shape[1]), w.dtype)
            fast.fc_one(np.ascontiguousarray(x).reshape(x.shape[0], -1), np.ascontiguousarray(w),
                        np.ascontiguousarray(b), relu, out)
            return out
    return fc_forward(x, w, b, relu)[0]


def fc_backward(dout, cache, need_dx=True, relu=False, dw=None):
    """dout: (N, O). Returns dx (shape of x), dw (I, O), db (O,).

    need_dx=False skips dx (returned as None). relu=True applies the mask of the ReLU the
    forward fused (it needs forward's relu=True). dw: None, or a C-contiguous (I, O) array of
    the result's dtype to write dw into (and return), e.g. the layer's gradient.
    """
    x2, shape, w, relu_out = cache
    if relu:
        if relu_out is None:
            raise ValueError("relu=True needs a forward with relu=True (its output is the mask)")
        dout = dout * (relu_out > 0)
    (n, i), o = x2.shape, w.shape[1]
    dx = np.empty((n, i), dtype=np.result_type(dout, w)) if need_dx else None
    dtype = np.result_type(x2, dout)
    if dw is None or dw.shape != (i, o) or dw.dtype != dtype or not dw.flags.c_contiguous:
        dw = np.empty((i, o), dtype=dtype)
    fast = compiled_step.kernels(x2, dout) if n == 1 and x2.dtype == dout.dtype else None

    columns = n < COLUMNS_BELOW

    def work(task):
        product, sl = task
        if product == "dw" and fast is not None:
            fast.outer(x2[0, sl], dout[0], dw[sl])
        elif product == "dw" and n == 1:
            np.multiply(x2[0, sl, None], dout, out=dw[sl])      # an outer product
        elif product == "dw":
            np.matmul(x2[:, sl].T, dout, out=dw[sl])
        elif columns:
            np.matmul(dout, w[sl].T, out=dx[:, sl])
        else:
            np.matmul(dout[sl], w.T, out=dx[sl])

    work_size = n * i * o
    tasks = [("dw", sl) for sl in split(i, work_size)]
    if need_dx:
        tasks += [("dx", sl) for sl in split(i if columns else n, work_size)]
    if work_size < SMALL_WORK:
        for task in tasks:                  # not worth a hand-over
            work(task)
    else:
        run_chunks(work, tasks)
    return None if dx is None else dx.reshape(shape), dw, dout.sum(axis=0)
