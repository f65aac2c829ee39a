"""What every convolution pair shares: its cache, its shape check, and two passes over output rows.

`ConvCache` is what each pair's forward leaves for its backward (the same fields whichever
algorithm ran, so any pair's backward can read any forward's cache: `full_dx` and the Winograd
pairs hand dw alone to `im2col`'s backward when no dx is needed). `check_shapes` applies
`(N + 2P - F) / S + 1` per axis. `finish_rows` adds the bias and the fused ReLU over whole output
rows; `relu_masked` multiplies dout by the fused ReLU's mask. `flipped` gives the filters and
padding of dx as a stride-1 convolution (`full_dx`, `winograd`). With numba (`compiled`) both passes
run compiled, bitwise equal to the NumPy path. `transformed` is the Winograd pairs' filter
transforms (and their adjoints, for dw): a small float64 product made in per-thread scratch and
rounded once into recycled memory, because fresh temporaries of a MiB or two, made and freed every
step, cost a page fault per 4 KiB on every call.
"""
from typing import NamedTuple, Optional

import numpy as np

from slidenet.ops import compiled
from slidenet.ops.runtime import empty, scratch
from slidenet.ops.window import out_hw

class ConvCache(NamedTuple):
    """What a convolution's backward needs from its forward, and which algorithm ran it."""
    algorithm: str                  # "im2col", "full", "winograd"...: whose backward to run
    x: np.ndarray                   # (N, H, W, D), C-contiguous
    w: np.ndarray                   # (F_h, F_w, D, K)
    stride: tuple                   # (S_h, S_w)
    pad: tuple                      # (P_h, P_w)
    budget: Optional[int]           # scratch bytes per call; None: the global budget
    out: Optional[np.ndarray]       # the output (N, H', W', K) when the forward applied a ReLU


def check_shapes(x, w, stride, pad):
    """(H', W') of the convolution, from (N + 2P - F) / S + 1 per axis; ValueError on a depth
    mismatch, GeometryError when the filter does not tile the input."""
    _, h, wd, d = x.shape
    fh, fw, dw, _ = w.shape
    if dw != d:
        raise ValueError(f"filters span depth {dw} but the input has depth {d}")
    return out_hw(h, wd, (fh, fw), stride, pad)


def finish_rows(out, bias_row, relu):
    """Add the bias to (and, with relu, rectify) output rows in place: out (c, H', W', K).

    Over whole output rows of W' * K numbers, with the bias tiled W' times: NumPy's inner loops
    are fast on long rows and slow on K-long ones or against a scalar 0.
    """
    o = out.reshape(-1, bias_row.size)
    fast = compiled.kernels(o, bias_row)
    if fast is not None:
        fast.add_bias_relu(o, bias_row, relu)
        return
    np.add(o, bias_row, out=o)
    if relu:
        np.maximum(o, np.zeros_like(bias_row), out=o)


def relu_masked(dout, out, into):
    """dout times the ReLU's mask (out > 0), written into `into`; dout, out: (c, H', W', K)."""
    fast = compiled.kernels(dout, out, into)
    if fast is not None:
        fast.relu_mask(dout, out, into)
        return into
    c, ho, wo, k = out.shape
    positive = scratch("conv.mask", (c * ho, wo * k), bool)
    np.greater(out.reshape(-1, wo * k), np.zeros(wo * k, out.dtype), out=positive)
    return np.multiply(dout, positive.reshape(into.shape), out=into)


def flipped(w, pad):
    """What dx of a stride-1 convolution convolves: at stride 1, dx is the "full" convolution of
    dout zero-padded by F - 1 - P with the filters flipped in height and width, D and K swapped.

    w: (F_h, F_w, D, K); pad (P_h, P_w). Returns w_flip (F_h, F_w, K, D), C-contiguous, with
    w_flip[i, j, k, d] = w[F_h-1-i, F_w-1-j, d, k], and dout's padding (F_h-1-P_h, F_w-1-P_w).
    """
    fh, fw = w.shape[:2]
    return (np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2)),
            (fh - 1 - pad[0], fw - 1 - pad[1]))


def transformed(transform, w, shape, dtype):
    """transform (A, B) @ w, with w (B, ...) in any layout viewed as (B, M) in C order: computed
    in float64 and rounded once to `dtype`, returned as `shape` (A*M numbers).

    The float64 copy of w and the float64 product live in this thread's scratch and the result
    in `runtime.empty`'s recycled memory: the Winograd pairs transform their filters on every
    training call, and fresh arrays of that size would be new pages each time. The same
    arithmetic as ``(transform @ w.astype(np.float64).reshape(B, -1)).astype(dtype)``.
    """
    rows = transform.shape[0]
    if w.dtype == np.float64 and w.flags.c_contiguous:
        w64 = w.reshape(transform.shape[1], -1)
    else:
        w64 = scratch("conv.transform_in", w.shape, np.float64)
        w64[...] = w
        w64 = w64.reshape(transform.shape[1], -1)
    product = scratch("conv.transform_out", (rows, w64.shape[1]), np.float64)
    np.matmul(transform, w64, out=product)
    result = empty(shape, dtype)
    np.copyto(result.reshape(product.shape), product, casting="unsafe")
    return result
