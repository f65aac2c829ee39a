"""Convolution as the lecture teaches it, made fast: im2col windows times the filters in one GEMM.

Each filter (F_h x F_w x D, always the full input depth) takes a dot product with every window
of the zero-padded input, plus its bias, giving one activation map per filter. Written as a
matrix product, the windows are the rows of `im2col(x)` (N*H'*W' x F_h*F_w*D), the filters are
the columns of `w` reshaped to (F_h*F_w*D x K), and the product is all K activation maps at once.

The rows are built in batch chunks under a memory budget, so a large batch or image never
multiplies memory; backward rebuilds each chunk's rows instead of keeping them all.
"""
import numpy as np

from slidenet.ops.window import col2im_add, im2col, out_hw, pad_hw, unpad_hw

# Bytes of im2col rows built at once. 64 MiB keeps R1's largest layer in a few chunks while
# the rows of one chunk stay close to the cache-friendly size BLAS likes.
DEFAULT_BUDGET = 64 * 2**20


def _chunks(n, bytes_per_image, budget):
    """Slices of the batch axis whose im2col rows fit in `budget` bytes (at least one image)."""
    step = max(1, int((budget or DEFAULT_BUDGET) // max(1, bytes_per_image)))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def conv_forward(x, w, b, stride=(1, 1), pad=(0, 0), budget=None):
    """Convolve K filters over x.

    x: (N, H, W, D); w: (F_h, F_w, D, K); b: (K,); stride (S_h, S_w); pad (P_h, P_w).
    Returns out (N, H', W', K) with H' = (H + 2P_h - F_h) / S_h + 1 (and W' likewise), and a
    cache for `conv_backward`.
    """
    n, h, wd, d = x.shape
    fh, fw, dw, k = w.shape
    if dw != d:
        raise ValueError(f"filters span depth {dw} but the input has depth {d}")
    ho, wo = out_hw(h, wd, (fh, fw), stride, pad)
    xp = pad_hw(x, pad)
    w2 = w.reshape(fh * fw * d, k)
    out = np.empty((n, ho, wo, k), dtype=x.dtype)
    for sl in _chunks(n, ho * wo * fh * fw * d * x.itemsize, budget):
        rows = im2col(xp[sl], (fh, fw), stride)
        np.matmul(rows, w2, out=out[sl].reshape(-1, k))
    out += b
    return out, (xp, w, stride, pad, budget)


def conv_backward(dout, cache):
    """Gradients of conv_forward.

    dout: (N, H', W', K). Returns dx (N, H, W, D), dw (F_h, F_w, D, K), db (K,).
    """
    xp, w, stride, pad, budget = cache
    fh, fw, d, k = w.shape
    n, ho, wo, _ = dout.shape
    w2 = w.reshape(fh * fw * d, k)
    dw2 = np.zeros_like(w2)
    dxp = np.zeros_like(xp)
    for sl in _chunks(n, ho * wo * fh * fw * d * xp.itemsize, budget):
        rows = im2col(xp[sl], (fh, fw), stride)
        g = dout[sl].reshape(-1, k)
        dw2 += rows.T @ g
        drows = (g @ w2.T).reshape(-1, ho, wo, fh, fw, d)
        col2im_add(drows, dxp[sl], stride)
    db = dout.sum(axis=(0, 1, 2))
    dx = np.ascontiguousarray(unpad_hw(dxp, pad))
    return dx, dw2.reshape(w.shape), db
