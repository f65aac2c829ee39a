"""The lecture's kernels as plain loops: the reference every fast kernel is tested against.

Read these first. They do exactly what the lecture describes, one output number at a time:
slide the filter to each position, take the dot product over the full depth, add the bias; take
the max or the mean of each pooling window. They are slow on purpose and never used in training.
Shapes follow the fast kernels: x (N, H, W, D), conv weights (F_h, F_w, D, K).
"""
import numpy as np

from slidenet.ops.window import out_hw


def conv_forward(x, w, b, stride=(1, 1), pad=(0, 0), groups=1):
    """out[n, i, j, k] = sum(xp[n, i*S_h : i*S_h+F_h, j*S_w : j*S_w+F_w, :] * w[..., k]) + b[k].

    The lecture's convolution: each filter spans the full depth (groups=1). With G groups
    (grouped convolution, AlexNet's two halves; G = D is depthwise), filter k spans only the
    D / G channels of its group g = k // (K / G), and w is (F_h, F_w, D / G, K).
    """
    n, h, wd, d = x.shape
    fh, fw, dg, k = w.shape
    (sh, sw), (ph, pw) = stride, pad
    ho, wo = out_hw(h, wd, (fh, fw), stride, pad)
    xp = np.zeros((n, h + 2 * ph, wd + 2 * pw, d), dtype=x.dtype)
    xp[:, ph:ph + h, pw:pw + wd, :] = x
    out = np.zeros((n, ho, wo, k), dtype=x.dtype)
    per_group = k // groups
    for img in range(n):
        for f in range(k):                      # one activation map per filter
            g = f // per_group                  # its group (0 when groups=1: the full depth)
            for i in range(ho):
                for j in range(wo):
                    patch = xp[img, i * sh:i * sh + fh, j * sw:j * sw + fw, g * dg:(g + 1) * dg]
                    out[img, i, j, f] = np.sum(patch * w[:, :, :, f]) + b[f]
    return out


def conv_backward(dout, x, w, stride=(1, 1), pad=(0, 0), groups=1):
    """Each output number passes its gradient back to the patch (of its group's channels) and
    the filter that made it."""
    n, h, wd, d = x.shape
    fh, fw, dg, k = w.shape
    (sh, sw), (ph, pw) = stride, pad
    _, ho, wo, _ = dout.shape
    xp = np.zeros((n, h + 2 * ph, wd + 2 * pw, d), dtype=x.dtype)
    xp[:, ph:ph + h, pw:pw + wd, :] = x
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    db = np.zeros(k, dtype=w.dtype)
    per_group = k // groups
    for img in range(n):
        for f in range(k):
            g = f // per_group
            for i in range(ho):
                for j in range(wo):
                    grad = dout[img, i, j, f]
                    window = (img, slice(i * sh, i * sh + fh), slice(j * sw, j * sw + fw),
                              slice(g * dg, (g + 1) * dg))
                    dxp[window] += grad * w[:, :, :, f]
                    dw[:, :, :, f] += grad * xp[window]
                    db[f] += grad
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


def fc_backward(dout, x, w):
    """Each output's gradient flows to every input through its weight, and to its weight from
    every input: dx[n, i] = sum_o dout[n, o] w[i, o]; dw[i, o] = sum_n x[n, i] dout[n, o]."""
    flat = x.reshape(x.shape[0], -1)
    dx, dw = np.zeros_like(flat), np.zeros_like(w)
    for img in range(flat.shape[0]):
        for o in range(w.shape[1]):
            dx[img] += dout[img, o] * w[:, o]
            dw[:, o] += dout[img, o] * flat[img]
    return dx.reshape(x.shape), dw, dout.sum(axis=0)


# The nonlinearities, each as its formula: forward(x), and backward(dout, x) = dout * f'(x).
def relu_forward(x):
    return np.where(x > 0, x, 0.0)


def relu_backward(dout, x):
    return dout * (x > 0)


def leaky_relu_forward(x, alpha=0.01):
    return np.where(x > 0, x, alpha * x)


def leaky_relu_backward(dout, x, alpha=0.01):
    return dout * np.where(x > 0, 1.0, alpha)


def tanh_forward(x):
    return (np.exp(x) - np.exp(-x)) / (np.exp(x) + np.exp(-x))


def tanh_backward(dout, x):
    return dout * (1 - tanh_forward(x) ** 2)


def sigmoid_forward(x):
    return 1 / (1 + np.exp(-x))


def sigmoid_backward(dout, x):
    s = sigmoid_forward(x)
    return dout * s * (1 - s)


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """Training mode, channel by channel: (x - mean) / sqrt(var + eps) * gamma + beta, with the
    mean and variance of that channel over every image and position."""
    out = np.zeros_like(x)
    for c in range(x.shape[-1]):
        v = x[..., c]
        out[..., c] = (v - v.mean()) / np.sqrt(v.var() + eps) * gamma[c] + beta[c]
    return out


def batchnorm_backward(dout, x, gamma, eps=1e-5):
    """The chain rule through the mean and the variance, channel by channel (m values each):
    dx = gamma / sqrt(var + eps) * (dout - mean(dout) - xhat * mean(dout * xhat))."""
    dx, dgamma, dbeta = np.zeros_like(x), np.zeros_like(gamma), np.zeros_like(gamma)
    for c in range(x.shape[-1]):
        v, g = x[..., c], dout[..., c]
        xhat = (v - v.mean()) / np.sqrt(v.var() + eps)
        dgamma[c], dbeta[c] = (g * xhat).sum(), g.sum()
        dx[..., c] = gamma[c] / np.sqrt(v.var() + eps) * (g - g.mean() - xhat * (g * xhat).mean())
    return dx, dgamma, dbeta
