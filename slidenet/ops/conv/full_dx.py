"""Convolution whose dx is itself a convolution: the "full" convolution of dout at stride 1.

The forward is im2col's. The backward differs: at stride 1, every input pixel p received
x[p] * w[i, j] in the outputs p - (i, j) + P, so

    dx[p] = sum over (i, j) of dout[p - (i, j) + P] @ w[i, j]^T,

which is dout, zero-padded by F - 1 - P, convolved with the filters flipped in height and width
and with D and K swapped. One GEMM on the rows of the padded dout gives dx, with no scatter:

    grows = im2col rows of dout padded by (F_h - 1 - P_h, F_w - 1 - P_w)   (N*H*W, F_h*F_w*K)
    dx    = grows @ w_flip,  w_flip[i, j, k, d] = w[F_h-1-i, F_w-1-j, d, k]

The same rows serve dw: dw[i, j] = sum over p of x[p]^T dout[p - (i, j) + P], which is
x^T @ grows taken at the flipped tap (F_h-1-i, F_w-1-j). It needs P < F on both axes (a wider
padding would crop dout). When dx is not needed (the first layer), im2col's backward computes
dw alone, from the input's rows.
"""
import numpy as np

from slidenet.ops.conv.common import flipped, relu_masked
from slidenet.ops.conv.im2col import conv_backward_im2col, conv_forward_im2col
from slidenet.ops.runtime import batch_chunks, bordered, empty, run_chunks, scratch
from slidenet.ops.window import windows


def applies(size, stride, pad):
    """Whether dx is a full convolution: stride 1 and padding below the filter size."""
    return tuple(stride) == (1, 1) and pad[0] < size[0] and pad[1] < size[1]


def conv_forward_full(x, w, b, stride=(1, 1), pad=(0, 0), relu=False, budget=None, filters=None):
    """im2col's forward (same arguments and result), recording this pair for the backward."""
    if not applies(w.shape[:2], stride, pad):
        raise ValueError(f"a full-convolution dx needs stride 1 and padding below the filter "
                         f"size, not stride {stride[0]}x{stride[1]}, pad {pad[0]}x{pad[1]} with "
                         f"a {w.shape[0]}x{w.shape[1]} filter")
    out, cache = conv_forward_im2col(x, w, b, stride, pad, relu, budget, filters)
    return out, cache._replace(algorithm="full")


def conv_backward_full(dout, cache, need_dx=True, relu=False):
    """Gradients of the convolution: dx as a full convolution of dout, dw from the same rows.

    dout: (N, H', W', K). Returns dx (N, H, W, D) (None when need_dx is False), dw (F_h, F_w,
    D, K), db (K,). relu: dout is first multiplied by the mask of the forward's ReLU.
    """
    if not need_dx:
        return conv_backward_im2col(dout, cache, need_dx, relu)
    x, w, budget = cache.x, cache.w, cache.budget
    w_flip, (bh, bw) = flipped(w, cache.pad)
    n, h, wd, d = x.shape
    fh, fw, _, k = w.shape
    _, ho, wo, _ = dout.shape
    w_flip = w_flip.reshape(fh * fw * k, d)
    dout = np.ascontiguousarray(dout)
    dx = empty(x.shape, np.result_type(dout, w))
    padded_out = (ho + 2 * bh) * (wo + 2 * bw)

    def work(sl):
        c = sl.stop - sl.start
        gp, inner = bordered("conv.gpad", (c, ho + 2 * bh, wo + 2 * bw, k), dout.dtype, (bh, bh, bw, bw))
        if relu:
            relu_masked(dout[sl], cache.out[sl], inner)
        else:
            inner[...] = dout[sl]
        db_part = ones[:c * padded_out] @ gp.reshape(-1, k)     # the zero border adds nothing
        view = windows(gp, (fh, fw), (1, 1))
        grows = scratch("conv.grows", view.shape, dout.dtype)
        np.copyto(grows, view)
        grows = grows.reshape(-1, fh * fw * k)
        np.matmul(grows, w_flip, out=dx[sl].reshape(-1, d))
        return x[sl].reshape(-1, d).T @ grows, db_part          # dw as (D, F_h, F_w, K), flipped

    rows_size = h * wd * fh * fw * k
    chunks = batch_chunks(n, (rows_size + padded_out * k) * x.itemsize, budget,
                          rows_size * x.itemsize)
    ones = np.ones(max(sl.stop - sl.start for sl in chunks) * padded_out, dout.dtype)
    dw = np.zeros((d, fh, fw, k), np.result_type(x, dout))
    db = np.zeros(k, dout.dtype)
    for dw_part, db_part in run_chunks(work, chunks):
        dw += dw_part.reshape(dw.shape)
        db += db_part
    # The rows were of dout's windows, so tap (i, j) of dw sits at the flipped (F-1-i, F-1-j).
    return dx, np.ascontiguousarray(dw[:, ::-1, ::-1, :].transpose(1, 2, 0, 3)), db
