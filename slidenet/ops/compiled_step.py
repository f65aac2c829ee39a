"""Optional compiled kernels (numba) for the light parts of a training step.

`compiled` holds the passes around a convolution's GEMMs; this module holds what is left of a
step once the layers have run, each a handful of NumPy calls whose cost at batch 1 and 8 is
the calls themselves and the temporary arrays between them, not arithmetic:
    `outer`: the FC's dw at batch 1, x times dout (one multiply an entry, as NumPy's broadcast
        multiply, whose inner loop over a broadcast row runs ~5x slower);
    `sgd`, `momentum`, `nesterov`, `adam`: one optimiser update of one parameter array, in one
        pass and in place, with the same float operations in the same order as
        `training.optim`'s NumPy expressions (bit for bit, tested), and no scratch array;
    `softmax_loss`: the softmax cross-entropy's log-probabilities of the true classes and its
        gradient, in one pass per row (to rounding of `losses.softmax_loss`'s NumPy path:
        another order of the sums; the mean is NumPy's, in the scores' dtype).

Each is compiled on first use (cached on disk where it can be), and only where `compiled`'s
kernels are on (`compiled.set_enabled`, ``SLIDENET_NUMBA``); `kernels(*arrays)` returns None
otherwise, or for arrays that are not float32 or float64, and the caller takes its NumPy path.
Scalars are passed in the arrays' dtype, converted once by the caller, as NumPy converts a
Python float against a float32 array (a "weak" scalar), so the roundings are NumPy's.
"""
import threading

import numpy as np

from slidenet.ops import compiled

_state = {"kernels": None}
_lock = threading.Lock()


class _Kernels:
    pass


def kernels(*arrays):
    """The compiled step kernels as a namespace, or None (then the caller runs NumPy)."""
    if compiled.kernels(*arrays) is None:
        return None
    if _state["kernels"] is None:
        with _lock:
            if _state["kernels"] is None:
                done = _Kernels()
                for fn in (outer, sgd, momentum, nesterov, adam, softmax_loss):
                    setattr(done, fn.__name__, compiled.jit(fn))
                _state["kernels"] = done
    return _state["kernels"]


def outer(x, d, out):
    """out[i, o] = x[i] * d[o]: x (I,), d (O,), out (I, O)."""
    for i in range(x.shape[0]):
        xi = x[i]
        for o in range(d.shape[0]):
            out[i, o] = xi * d[o]


def sgd(p, g, lr, wd):
    """p -= lr * (g + wd * p), in place: p, g (P,) (flat views); lr, wd scalars of p's dtype
    (wd 0: the gradient alone, as `optim.SGD` without weight decay)."""
    zero = wd * 0
    for i in range(p.shape[0]):
        step = p[i] * wd + g[i] if wd != zero else g[i]
        p[i] -= step * lr


def momentum(p, g, v, lr, wd, mu):
    """v = mu * v - lr * (g + wd * p); p += v, in place: p, g, v (P,)."""
    zero = wd * 0
    for i in range(p.shape[0]):
        step = (p[i] * wd + g[i] if wd != zero else g[i]) * lr
        vi = v[i] * mu - step
        v[i] = vi
        p[i] += vi


def nesterov(p, g, v, lr, wd, mu, mu1):
    """v_prev = v; v = mu * v - lr * (g + wd * p); p += -mu * v_prev + (1 + mu) * v, in place,
    in `optim.Nesterov`'s order (p -= mu * v_prev, then p += (1 + mu) * v); mu1 = 1 + mu."""
    zero = wd * 0
    for i in range(p.shape[0]):
        step = (p[i] * wd + g[i] if wd != zero else g[i]) * lr
        vi = v[i] * mu
        pi = p[i] - vi
        vi -= step
        v[i] = vi
        p[i] = pi + vi * mu1


def adam(p, g, m, v, keep, b1, one_b1, b2, one_b2, bias2, eps, rate):
    """Adam's step in place (`optim.Adam`'s order): p *= keep (AdamW's decay, keep = 1 - lr * wd,
    1 for none); m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g^2;
    p -= m / (sqrt(v / bias2) + eps) * rate, with bias2 = 1 - b2^t and rate = lr / (1 - b1^t).
    p, g, m, v (P,); the rest scalars of p's dtype."""
    one = keep * 0 + 1
    for i in range(p.shape[0]):
        pi = p[i] * keep if keep != one else p[i]
        gi = g[i]
        mi = m[i] * b1 + gi * one_b1
        vi = v[i] * b2 + gi * gi * one_b2
        m[i] = mi
        v[i] = vi
        p[i] = pi - mi / (np.sqrt(vi / bias2) + eps) * rate


def softmax_loss(scores, y, count, dscores, picked):
    """The softmax cross-entropy's pieces, one pass per row: into picked (N,) each row's
    log(e^{s_{i,y_i}} / sum_j e^{s_ij}), and into dscores (N, C) the gradient of the mean loss,
    (softmax - onehot(y)) / N; both in scores' dtype (the caller takes -mean(picked), as NumPy
    would: a float32 loss has float32's resolution). scores (N, C), y (N,), count: N in scores'
    dtype. Returns False (and leaves the outputs unfinished) when a label is not in [0, C), or
    a row's log-sum is not finite (a NaN or infinite score): the caller's NumPy path then says
    what it says there."""
    n, c = scores.shape
    for i in range(n):
        if not 0 <= y[i] < c:
            return False
    for i in range(n):
        top = scores[i, 0]
        for j in range(1, c):
            if scores[i, j] > top:
                top = scores[i, j]
        sum_exp = scores[i, 0] * 0
        for j in range(c):
            sum_exp += np.exp(scores[i, j] - top)
        log_sum = np.log(sum_exp)
        if not np.isfinite(log_sum) or not np.isfinite(top):
            return False
        for j in range(c):
            log_p = (scores[i, j] - top) - log_sum
            dscores[i, j] = np.exp(log_p)
            if j == y[i]:
                picked[i] = log_p
                dscores[i, j] -= 1
        for j in range(c):
            dscores[i, j] /= count
    return True
