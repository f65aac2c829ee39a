"""Batch normalisation per depth channel.

Each channel is normalised over every position of every image in the batch (axes N, H, W of a
(N, H, W, D) volume, or N of an (N, D) vector), then scaled by gamma and shifted by beta.
Training uses the batch statistics and updates running averages; evaluation uses the running
averages.
"""
import numpy as np


def batchnorm_forward(x, gamma, beta, running_mean, running_var, train, momentum=0.9, eps=1e-5):
    """x: (N, H, W, D) or (N, D); gamma, beta, running_mean, running_var: (D,).

    Returns out (shape of x) and a cache. When training, running_mean and running_var are
    updated in place: r = momentum * r + (1 - momentum) * batch statistic.
    """
    axes = tuple(range(x.ndim - 1))
    if not train:
        inv = 1 / np.sqrt(running_var + eps)
        return (x - running_mean) * (gamma * inv) + beta, None
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    inv = (1 / np.sqrt(var + eps)).astype(x.dtype)
    xhat = (x - mean) * inv
    running_mean *= momentum
    running_mean += (1 - momentum) * mean
    running_var *= momentum
    running_var += (1 - momentum) * var
    return xhat * gamma + beta, (xhat, inv, gamma)


def batchnorm_backward(dout, cache):
    """Returns dx (shape of dout), dgamma (D,), dbeta (D,).

    With m values per channel: dx = inv / m * (m * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)),
    where dxhat = dout * gamma.
    """
    xhat, inv, gamma = cache
    axes = tuple(range(dout.ndim - 1))
    m = dout.size // dout.shape[-1]
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    dx = (inv / m) * (m * dout * gamma - gamma * dbeta - xhat * (gamma * dgamma))
    return dx.astype(dout.dtype, copy=False), dgamma, dbeta
