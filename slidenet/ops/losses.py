"""Losses on class scores: softmax cross-entropy and the multiclass SVM (hinge).

scores: (N, C) for N examples and C classes; y: (N,) integer labels in [0, C).
Each returns the mean loss over the batch and its gradient with respect to the scores.
"""
import numpy as np

from slidenet.ops import compiled_step


def log_softmax(scores):
    """log(e^{s_ij} / sum_j e^{s_ij}) for scores (N, C), computed without overflow."""
    shifted = scores - scores.max(axis=1, keepdims=True)   # the same softmax, no overflow
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(scores):
    """Class probabilities (N, C), float64, from scores (N, C): each row sums to 1."""
    return np.exp(log_softmax(np.asarray(scores, dtype=np.float64)))


def softmax_loss(scores, y, smoothing=0.0):
    """L = mean_i -sum_j t_ij log(e^{s_ij} / sum_k e^{s_ik}); dL/ds = (softmax - t) / N.

    scores: (N, C); y: (N,) class numbers. The target t_i is the one-hot vector of y_i (the
    lecture's cross-entropy, -log p_{i,y_i}), or with `smoothing` e (label smoothing, Szegedy et
    al. 2016) 1 - e + e/C on the true class and e/C on every other: the net is never pushed to
    make one score infinitely larger than the rest.

    Without smoothing, with the compiled kernels, one pass per row (`compiled_step.softmax_loss`:
    the same formula, its sums in another order, so equal to rounding); else the NumPy below.
    """
    n, c = scores.shape
    if not smoothing and n and isinstance(y, np.ndarray) and y.dtype.kind in "iu" \
            and y.shape == (n,):
        fast = compiled_step.kernels(scores)
        if fast is not None:
            dscores = np.empty_like(scores, order="C")
            picked = np.empty(n, scores.dtype)
            if fast.softmax_loss(scores, y, scores.dtype.type(n), dscores, picked):
                return float(-picked.mean()), dscores
    log_probs = log_softmax(scores)
    rows = np.arange(n)
    dscores = np.exp(log_probs)
    if smoothing:
        spread = smoothing / c
        loss = -((1 - smoothing) * log_probs[rows, y] + spread * log_probs.sum(axis=1)).mean()
        dscores -= spread
        dscores[rows, y] -= 1 - smoothing
    else:
        loss = -log_probs[rows, y].mean()
        dscores[rows, y] -= 1
    return float(loss), (dscores / n).astype(scores.dtype, copy=False)


def svm_loss(scores, y, margin=1.0):
    """L = mean_i sum_{j != y_i} max(0, s_ij - s_{i,y_i} + margin).

    dL/ds_ij = 1/N for each violated margin; the correct class gets minus their count.
    """
    n = scores.shape[0]
    rows = np.arange(n)
    margins = np.maximum(0, scores - scores[rows, y][:, None] + margin)
    margins[rows, y] = 0
    loss = margins.sum() / n
    dscores = (margins > 0).astype(scores.dtype)
    dscores[rows, y] = -dscores.sum(axis=1)
    return float(loss), dscores / scores.dtype.type(n)


# The losses `slidenet train --loss` can choose, by name.
LOSSES = {"softmax": softmax_loss, "svm": svm_loss}
