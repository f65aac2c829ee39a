"""Inverted dropout: drop each unit with probability `rate` while training, scale the rest.

Scaling the kept units by 1 / (1 - rate) at training time keeps the expected activation the
same, so nothing changes at test time (the layer is the identity there).
"""
import numpy as np


def dropout_forward(x, rate, rng, train, part=None):
    """x: any shape. rng: numpy.random.Generator. Returns out (shape of x) and the mask (or None).

    part: None, or (a `slidenet.ops.shard.Part`) x holds rows part.start:part.stop of a batch of
    part.total: the draw is made for the whole batch and these rows kept, so that every part
    advances `rng` as one process would and gets that process's mask rows.
    """
    if not train or rate == 0:
        return x, None
    if part is None:
        draw = rng.random(x.shape, dtype=np.float64)
    else:
        draw = rng.random((part.total,) + x.shape[1:], dtype=np.float64)[part.rows]
    mask = (draw >= rate).astype(x.dtype) / x.dtype.type(1 - rate)
    return x * mask, mask


def dropout_backward(dout, mask):
    """The same mask scales the gradient; identity when nothing was dropped."""
    return dout if mask is None else dout * mask
