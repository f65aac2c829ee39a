"""The fully connected layer: stretch the volume into a vector, multiply by W, add b.

As in the lecture's 32x32x3 -> 3072 example, the input volume is flattened in (height, width,
depth) order, which for channels-last arrays is just their memory order.
"""


def fc_forward(x, w, b):
    """x: (N, ...) any volume with I = prod(...) values; w: (I, O); b: (O,).

    Returns out (N, O) = x.reshape(N, I) @ w + b, and a cache.
    """
    x2 = x.reshape(x.shape[0], -1)
    return x2 @ w + b, (x2, x.shape, w)


def fc_backward(dout, cache):
    """dout: (N, O). Returns dx (shape of x), dw (I, O), db (O,)."""
    x2, shape, w = cache
    return (dout @ w.T).reshape(shape), x2.T @ dout, dout.sum(axis=0)
