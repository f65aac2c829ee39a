"""The lecture's kernels as plain loops: the reference every fast kernel is tested against.

Read these first. They do exactly what the lecture describes, one output number at a time:
slide the filter to each position, take the dot product over the full depth, add the bias; take
the max or the mean of each pooling window. They are slow on purpose and never used in training.
Shapes follow the fast kernels: x (N, H, W, D), conv weights (F_h, F_w, D, K).
"""
import numpy as np

from slidenet.ops.window import out_hw


def conv_forward(x, w, b, stride=(1, 1), pad=(0, 0)):
    """out[n, i, j, k] = sum(xp[n, i*S_h : i*S_h+F_h, j*S_w : j*S_w+F_w, :] * w[..., k]) + b[k]."""
    n, h, wd, d = x.shape
    fh, fw, _, k = w.shape
    (sh, sw), (ph, pw) = stride, pad
    ho, wo = out_hw(h, wd, (fh, fw), stride, pad)
    xp = np.zeros((n, h + 2 * ph, wd + 2 * pw, d), dtype=x.dtype)
    xp[:, ph:ph + h, pw:pw + wd, :] = x
    out = np.zeros((n, ho, wo, k), dtype=x.dtype)
    for img in range(n):
        for f in range(k):                      # one activation map per filter
            for i in range(ho):
                for j in range(wo):
                    patch = xp[img, i * sh:i * sh + fh, j * sw:j * sw + fw, :]
                    out[img, i, j, f] = np.sum(patch * w[:, :, :, f]) + b[f]
    return out


def conv_backward(dout, x, w, stride=(1, 1), pad=(0, 0)):
    """Each output number passes its gradient back to the patch and the filter that made it."""
    n, h, wd, d = x.shape
    fh, fw, _, k = w.shape
    (sh, sw), (ph, pw) = stride, pad
    _, ho, wo, _ = dout.shape
    xp = np.zeros((n, h + 2 * ph, wd + 2 * pw, d), dtype=x.dtype)
    xp[:, ph:ph + h, pw:pw + wd, :] = x
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    db = np.zeros(k, dtype=w.dtype)
    for img in range(n):
        for f in range(k):
            for i in range(ho):
                for j in range(wo):
                    g = dout[img, i, j, f]
                    window = (img, slice(i * sh, i * sh + fh), slice(j * sw, j * sw + fw))
                    dxp[window] += g * w[:, :, :, f]
                    dw[:, :, :, f] += g * xp[window]
                    db[f] += g
    return dxp[:, ph:ph + h, pw:pw + wd, :], dw, db


def pool_forward(x, size, stride, mode="max"):
    """out[n, i, j, c] = max (or mean) of x[n, i*S_h : i*S_h+F_h, j*S_w : j*S_w+F_w, c]."""
    n, h, w, d = x.shape
    (fh, fw), (sh, sw) = size, stride
    ho, wo = out_hw(h, w, size, stride)
    reduce = np.max if mode == "max" else np.mean
    out = np.zeros((n, ho, wo, d), dtype=x.dtype)
    for img in range(n):
        for c in range(d):                      # each depth slice on its own
            for i in range(ho):
                for j in range(wo):
                    out[img, i, j, c] = reduce(x[img, i * sh:i * sh + fh, j * sw:j * sw + fw, c])
    return out


def pool_backward(dout, x, size, stride, mode="max"):
    """Max sends the gradient to the window's first maximum (row-major); mean spreads it evenly."""
    n, h, w, d = x.shape
    (fh, fw), (sh, sw) = size, stride
    _, ho, wo, _ = dout.shape
    dx = np.zeros_like(x)
    for img in range(n):
        for c in range(d):
            for i in range(ho):
                for j in range(wo):
                    rows, cols = slice(i * sh, i * sh + fh), slice(j * sw, j * sw + fw)
                    g = dout[img, i, j, c]
                    if mode == "max":
                        r, q = np.unravel_index(np.argmax(x[img, rows, cols, c]), (fh, fw))
                        dx[img, i * sh + r, j * sw + q, c] += g
                    else:
                        dx[img, rows, cols, c] += g / (fh * fw)
    return dx


def fc_forward(x, w, b):
    """Each output is the dot product of the stretched input (H, W, D order) with a column of W."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    out = np.zeros((n, w.shape[1]), dtype=x.dtype)
    for img in range(n):
        for o in range(w.shape[1]):
            out[img, o] = np.dot(flat[img], w[:, o]) + b[o]
    return out
