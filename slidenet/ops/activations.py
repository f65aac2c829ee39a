"""Element-wise nonlinearities, each next to its local derivative.

Every forward returns (out, cache); every backward takes (dout, cache) and returns dx, the
upstream gradient times the local derivative. Shapes are whatever the input's shape is.
"""
import numpy as np

from slidenet.ops import compiled
from slidenet.ops.runtime import empty, run_chunks, split


# An elementwise pass weighs, in `runtime.split`'s multiply-adds, this much per number: it is
# bound by memory (8-12 bytes moved a number), so it pays to hand half of a pass to the other
# worker from a few hundred KiB on, not only from SMALL_WORK numbers (4 MiB of float32). The
# training passes below (the residual sums and the RELU's mask) use it.
PASS_WEIGHT = 8


def _long_rows(a):
    """a as (rows, long row) and a zero row to compare with: NumPy's max and compare run
    several times faster against an array than against a scalar 0."""
    rows = a.reshape(a.shape[0], -1) if a.ndim > 1 and a.shape[0] else a.reshape(1, -1)
    return rows, np.zeros(rows.shape[1], dtype=a.dtype)


def relu_forward(x):
    """max(0, x). The cache is the output: its positive entries are where gradient flows."""
    rows, zero = _long_rows(x)
    out = empty(x.shape, x.dtype)
    result = out.reshape(rows.shape)
    run_chunks(lambda sl: np.maximum(rows[sl], zero, out=result[sl]), split(len(rows), rows.size))
    return out, out


def relu_inplace(x):
    """max(0, x) written over x (inference: nothing needs x afterwards); returns x."""
    return add_into(x, (), relu=True)


def add_into(total, parts, relu=False):
    """total += every array of `parts` (each total's shape), then max(0, total) when relu, in
    place and in one pass over each chunk of rows (a residual sum and its RELU, inference).
    Returns total."""
    rows, zero = _long_rows(total)
    others = [part.reshape(rows.shape) for part in parts]

    def work(sl):
        for other in others:
            np.add(rows[sl], other[sl], out=rows[sl])
        if relu:
            np.maximum(rows[sl], zero, out=rows[sl])
    run_chunks(work, split(len(rows), rows.size))
    return total


def add_forward(parts, relu=False):
    """The sum of `parts` (arrays of one shape, at least two), then max(0, sum) when relu, in
    a new array (recycled memory) and in one pass over each chunk of rows: ADD in training, and
    the sum of its branches' gradients. The same additions in the same order as
    parts[0] + parts[1] + ..., so bit for bit that sum."""
    total = empty(parts[0].shape, np.result_type(*parts))
    rows, zero = _long_rows(total)
    ins = [part.reshape(rows.shape) for part in parts]

    def work(sl):
        np.add(ins[0][sl], ins[1][sl], out=rows[sl])
        for other in ins[2:]:
            np.add(rows[sl], other[sl], out=rows[sl])
        if relu:
            np.maximum(rows[sl], zero, out=rows[sl])
    run_chunks(work, split(len(rows), rows.size * PASS_WEIGHT))
    return total


def relu_backward(dout, out):
    """d max(0, x)/dx = 1 where x > 0, else 0: dout times that mask (as NumPy multiplies by a
    boolean, so 0 * inf is NaN), by the compiled pass where there is one."""
    rows, zero = _long_rows(out)
    grads = dout.reshape(rows.shape)
    dx = empty(dout.shape, dout.dtype)
    result = dx.reshape(rows.shape)
    fast = compiled.kernels(dout, out)

    def work(sl):
        if fast is not None:        # rows as (r, 1, 1, row): the kernel's inner loop is long
            shape = (sl.stop - sl.start, 1, 1, rows.shape[1])
            fast.relu_mask(grads[sl].reshape(shape), rows[sl].reshape(shape),
                           result[sl].reshape(shape))
        else:
            np.multiply(grads[sl], np.greater(rows[sl], zero), out=result[sl])
    run_chunks(work, split(len(rows), rows.size * PASS_WEIGHT))
    return dx


def leaky_relu_forward(x, alpha=0.01):
    """x where x > 0, alpha * x elsewhere."""
    return np.where(x > 0, x, alpha * x).astype(x.dtype, copy=False), (x, alpha)


def leaky_relu_backward(dout, cache):
    """Local derivative 1 where x > 0, alpha elsewhere."""
    x, alpha = cache
    return np.where(x > 0, dout, alpha * dout).astype(dout.dtype, copy=False)


def tanh_forward(x):
    """tanh(x); the cache is the output, since d tanh/dx = 1 - tanh^2."""
    out = np.tanh(x)
    return out, out


def tanh_backward(dout, out):
    return dout * (1 - out * out)


def sigmoid_forward(x):
    """1 / (1 + e^-x), computed without overflow for large |x|."""
    e = np.exp(-np.abs(x))
    out = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
    return out, out


def sigmoid_backward(dout, out):
    """d sigma/dx = sigma (1 - sigma)."""
    return dout * out * (1 - out)


def relu6_forward(x):
    """min(max(0, x), 6) (MobileNet's ReLU6); the cache is x, for its local derivative."""
    return np.clip(x, 0, 6).astype(x.dtype, copy=False), x


def relu6_backward(dout, x):
    """d relu6/dx = 1 where 0 < x < 6, else 0."""
    return (dout * ((x > 0) & (x < 6))).astype(dout.dtype, copy=False)
