"""Batch normalisation per depth channel.

Each channel is normalised over every position of every image in the batch (axes N, H, W of a
(N, H, W, D) volume, or N of an (N, D) vector), then scaled by gamma and shifted by beta.
Training uses the batch statistics and updates running averages; evaluation uses the running
averages.

How it runs: a volume is viewed as rows of whole image rows, (N*H, W*D), in which the channels
repeat every D numbers, so every elementwise step is a long row against a per-channel vector
tiled W times (NumPy is slow on D-long inner loops), done in batch chunks on the worker threads.
A per-channel sum is a GEMV of each chunk (ones @ rows), folded from W*D columns to D channels
and added over chunks in float64. The variance is the mean of (x - mean)^2, a second pass, not
E[x^2] - mean^2, which float32 would ruin when the mean is large. Results and the saved xhat
come from `runtime.empty`: recycled memory, no fresh pages.

With numba (`compiled.kernels`), training takes two passes forward and two backward, each a
compiled loop over a chunk's rows without the GIL, summing in float64: forward, both moments in
one pass (the column sums of c = x - shift and of c^2, shift being the batch's first pixel per
channel, so that E[c^2] - E[c]^2 does not cancel however far the mean is from zero: E[c] is one
pixel's distance from the batch mean), then out written alone; xhat is not stored, the cache keeps x
(which the layer before made anyway) and the mean, and the backward's two passes (the two
column sums, then dx) make xhat again from them, bit for bit as the forward did. The chunks,
the float64 adding over chunks and `reduce` are the same as NumPy's. Without numba the NumPy
steps above run.

Data-parallel training (`slidenet.training.distributed`) passes `reduce`: a function that adds float64
per-channel sums over every rank's part of the global batch. It is called on the sums (and the
count) of the mean, of the variance, and of the backward's two terms, so each rank normalises
with the global batch's statistics (the compiled forward then takes the two-pass variance: the
squares about the global mean, the one shift every rank shares); without it (one process)
nothing changes.
"""
import numpy as np

from typing import Callable, NamedTuple, Optional

from slidenet.ops import compiled
from slidenet.ops.activations import relu_backward
from slidenet.ops.runtime import batch_chunks, empty, run_chunks, scratch

# The epsilon under the square root, 1 / sqrt(var + eps): BATCHNORM's, and so ONNX's on export.
BATCHNORM_EPSILON = 1e-5


class BatchNormCache(NamedTuple):
    """What batchnorm_backward needs. Training: xhat, inv (1 / batch std) and gamma; with the
    compiled passes x and the batch mean instead of xhat (made again, bit for bit). Evaluation
    (fixed running statistics, y = x * gamma * inv + shift): x and the running mean."""
    xhat: Optional[np.ndarray]      # (shape of x), training only
    inv: np.ndarray                 # (D,)
    gamma: np.ndarray               # (D,)
    x: Optional[np.ndarray] = None              # evaluation only
    running_mean: Optional[np.ndarray] = None   # evaluation only
    reduce: Optional[Callable] = None           # data-parallel training: sums over all ranks
    count: Optional[float] = None               # with reduce: values per channel, all ranks
    out: Optional[np.ndarray] = None            # the output, when a fused RELU applied (its mask)
    mean: Optional[np.ndarray] = None           # compiled training: the batch mean (D,), x's
                                                # dtype; x is then kept instead of xhat


def _geometry(shape):
    """(images, rows per image, numbers per row, channels) of an (N, H, W, D) or (N, D) array."""
    if len(shape) == 2:
        return shape[0], 1, shape[1], shape[1]
    n, h, w, d = shape
    return n, h, w * d, d


def _tiled(tile, *vectors):
    """Each (D,) vector tiled `tile` times, (W*D,) rows in their own dtypes; made in one array
    when they share one (the usual case: this runs several times a layer, on the thread that
    the other worker waits for, and np.tile's own overhead was most of its time)."""
    count, d = len(vectors), vectors[0].shape[0]
    if any(v.dtype != vectors[0].dtype for v in vectors):
        return tuple(np.tile(v, tile) for v in vectors)
    rows = np.empty((count, tile, d), vectors[0].dtype)
    for i, v in enumerate(vectors):
        rows[i] = v
    return tuple(rows.reshape(count, tile * d))


def _channel_sums(parts, d):
    """Add per-chunk column sums (each (W*D,)) over chunks and fold them to D channels, in float64."""
    total = np.sum([np.asarray(p, np.float64) for p in parts], axis=0)
    return total.reshape(-1, d).sum(axis=0)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, train, momentum=0.9,
                      eps=BATCHNORM_EPSILON, reduce=None, relu=False):
    """x: (N, H, W, D) or (N, D); gamma, beta, running_mean, running_var: (D,).

    Returns out (shape of x) and a BatchNormCache. When training, running_mean and running_var
    are updated in place: r = momentum * r + (1 - momentum) * batch statistic.
    reduce: None, or float64 (k,) -> (k,) adding sums over the parts of a global batch that x
    is one of (training only; see the module docstring). relu: return max(0, out) instead, made
    in the pass that writes out (BATCHNORM -> RELU); the cache keeps it for the mask.
    """
    n, h, width, d = _geometry(x.shape)
    x = np.ascontiguousarray(x)
    rows = x.reshape(n * h, width)
    tile = width // d
    out = empty(x.shape, np.result_type(x, gamma))
    out_rows = out.reshape(n * h, width)
    chunks = batch_chunks(n, 2 * h * width * x.itemsize)

    def by_chunk(work):
        return run_chunks(lambda sl: work(slice(sl.start * h, sl.stop * h)), chunks)

    if not train:
        zero_row = np.zeros(width, out.dtype)   # max against a row: faster than against 0
        scale = gamma / np.sqrt(running_var + eps)
        scale_row = np.tile(scale.astype(out.dtype), tile)
        shift_row = np.tile((beta - running_mean * scale).astype(out.dtype), tile)

        def apply(rs):
            np.multiply(rows[rs], scale_row, out=out_rows[rs])
            out_rows[rs] += shift_row
            if relu:
                np.maximum(out_rows[rs], zero_row, out=out_rows[rs])
        by_chunk(apply)
        inv = 1 / np.sqrt(running_var + eps)
        return out, BatchNormCache(None, inv, gamma, x, running_mean.copy(),
                                   out=out if relu else None)

    m = n * h * tile
    fast = compiled.kernels(x, gamma, beta)
    if fast is not None:
        return _compiled_forward(fast, x, rows, out, out_rows, by_chunk, gamma, beta, running_mean,
                                 running_var, momentum, eps, reduce, m, tile, d, relu)
    zero_row = np.zeros(width, out.dtype)
    ones = np.ones(max(sl.stop - sl.start for sl in chunks) * h, x.dtype)
    sums = _channel_sums(by_chunk(lambda rs: ones[:rs.stop - rs.start] @ rows[rs]), d)
    if reduce is not None:      # data-parallel: the sums and the count over the global batch
        sums = reduce(np.append(sums, m))
        sums, m = sums[:-1], sums[-1]
    mean = sums / m
    mean_row = np.tile(mean.astype(x.dtype), tile)

    def squares(rs):
        centred = np.subtract(rows[rs], mean_row, out=scratch("bn.centred", rows[rs].shape, x.dtype))
        centred *= centred
        return ones[:rs.stop - rs.start] @ centred
    squared = _channel_sums(by_chunk(squares), d)
    if reduce is not None:
        squared = reduce(squared)
    var = squared / m
    inv = (1 / np.sqrt(var + eps)).astype(x.dtype)
    inv_row = np.tile(inv, tile)
    gamma_row = np.tile(gamma.astype(out.dtype), tile)
    beta_row = np.tile(beta.astype(out.dtype), tile)
    xhat = empty(x.shape, x.dtype)
    xhat_rows = xhat.reshape(n * h, width)

    def normalise(rs):
        np.subtract(rows[rs], mean_row, out=xhat_rows[rs])
        xhat_rows[rs] *= inv_row
        np.multiply(xhat_rows[rs], gamma_row, out=out_rows[rs])
        out_rows[rs] += beta_row
        if relu:
            np.maximum(out_rows[rs], zero_row, out=out_rows[rs])
    by_chunk(normalise)
    _update_running(running_mean, running_var, mean, var, momentum)
    return out, BatchNormCache(xhat, inv, gamma, reduce=reduce, count=m,
                               out=out if relu else None)


def _update_running(running_mean, running_var, mean, var, momentum):
    """r = momentum * r + (1 - momentum) * batch statistic, in place, for both (D,) vectors."""
    running_mean *= momentum
    running_mean += (1 - momentum) * mean
    running_var *= momentum
    running_var += (1 - momentum) * var


def _compiled_forward(fast, x, rows, out, out_rows, by_chunk, gamma, beta, running_mean,
                      running_var, momentum, eps, reduce, m, tile, d, relu):
    """`batchnorm_forward`'s training with the compiled passes (the module docstring): rows
    and out_rows (N*H, W*D) views of x and out; by_chunk runs a function of a row slice over
    the batch chunks. Returns what `batchnorm_forward` returns; its cache keeps x and the mean
    instead of xhat, which the backward makes again."""
    width = rows.shape[1]

    def moments(shift):
        """The per-channel sums of x - shift and of its squares (shift: (D,) float64)."""
        shift_row, = _tiled(tile, shift)

        def chunk(rs):
            acc = np.empty((2, width), np.float64)
            fast.bn_moments(rows[rs], shift_row, acc[0], acc[1])
            return acc
        both = np.sum(by_chunk(chunk), axis=0).reshape(2, -1, d).sum(axis=1)
        return both[0], both[1]

    if reduce is None:
        # One pass: both moments about one of the batch's own values per channel (its first
        # pixel), so that E[c^2] - E[c]^2 of c = x - shift does not cancel even when the mean
        # is far from zero (float64 sums; c is within a few standard deviations of 0).
        shift = rows[0, :d].astype(np.float64)
        sums, squared = moments(shift)
        centred = sums / m
        mean = shift + centred
        var = np.maximum(squared / m - centred * centred, 0.0)
    else:
        # Data-parallel: every rank must centre on the same values, and only the global mean
        # is: the sums first (with the count), then the squares about the global mean.
        sums, _ = moments(np.zeros(d))
        sums = reduce(np.append(sums, m))
        sums, m = sums[:-1], sums[-1]
        mean = sums / m
        _, squared = moments(mean)
        var = reduce(squared) / m
    inv = (1 / np.sqrt(var + eps)).astype(x.dtype)
    # As the NumPy path: x - mean and the scaling in x's dtype, the affine step in out's.
    mean_x = mean.astype(x.dtype)
    mean_x_row, inv_row, gamma_row, beta_row = _tiled(
        tile, mean_x, inv, gamma.astype(out.dtype), beta.astype(out.dtype))
    by_chunk(lambda rs: fast.bn_normalise(rows[rs], mean_x_row, inv_row, gamma_row, beta_row,
                                          out_rows[rs], relu))
    _update_running(running_mean, running_var, mean, var, momentum)
    return out, BatchNormCache(None, inv, gamma, x, reduce=reduce, count=m,
                               out=out if relu else None, mean=mean_x)


def batchnorm_backward(dout, cache, relu=False):
    """Returns dx (shape of dout), dgamma (D,), dbeta (D,).

    relu: dout is first multiplied by the mask of the RELU the forward fused (it needs the
    forward's relu=True); with the compiled passes, inside the backward's two passes.

    With m values per channel: dx = inv / m * (m * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)),
    where dxhat = dout * gamma; that is, dx = gamma * inv * (dout - dbeta / m - xhat * dgamma / m).
    After an evaluation forward the statistics are constants: dx = dout * gamma * inv.
    With the forward's `reduce`, m, sum(dxhat) and sum(dxhat * xhat) are those of the global
    batch, while dgamma and dbeta stay this part's own (the gradient sum adds them up).
    """
    if relu and cache.out is None:
        raise ValueError("relu=True needs a forward with relu=True (its output is the mask)")
    kept_x = cache.mean is not None         # the compiled forward: x and the mean, no xhat
    if cache.xhat is None and not kept_x:
        if relu:
            dout = relu_backward(dout, cache.out)
        return _eval_backward(dout, cache)
    fast = compiled.kernels(dout, cache.gamma, cache.x) if kept_x else None
    if kept_x and fast is None:             # numba switched off since the forward
        xhat = ((cache.x - cache.mean) * cache.inv).astype(cache.x.dtype, copy=False)
        cache, kept_x = cache._replace(xhat=xhat, mean=None), False
    if relu and fast is None:
        dout = relu_backward(dout, cache.out)
    inv, gamma = cache.inv, cache.gamma
    n, h, width, d = _geometry(dout.shape)
    tile = width // d
    m = n * h * tile
    dout = np.ascontiguousarray(dout)
    g_rows = dout.reshape(n * h, width)
    # What xhat is made from: the kept x (compiled), or xhat itself (NumPy).
    base_rows = (cache.x if kept_x else cache.xhat).reshape(n * h, width)
    chunks = batch_chunks(n, 2 * h * width * dout.itemsize)
    # The fused RELU's mask, read by the compiled passes (any array of rows when there is none).
    mask_rows = (cache.out if relu else base_rows).reshape(n * h, width)
    if fast is not None:
        mean_row, inv_row = _tiled(tile, cache.mean, inv)
    else:
        ones = np.ones(max(sl.stop - sl.start for sl in chunks) * h, dout.dtype)

    def sums(sl):
        rs = slice(sl.start * h, sl.stop * h)
        g = g_rows[rs]
        if fast is not None:
            acc = np.empty((2, width), np.float64)
            fast.bn_backward_sums(g, base_rows[rs], mean_row, inv_row, acc[0], acc[1],
                                  mask_rows[rs], relu)
            return acc
        ones_c = ones[:rs.stop - rs.start]
        both = np.multiply(g, base_rows[rs], out=scratch("bn.gx", g.shape, dout.dtype))
        return np.stack([ones_c @ g, ones_c @ both])
    # (chunks, 2, W*D) -> per channel, in float64: the column sums of g and of g * xhat.
    dbeta, dgamma = np.sum(np.asarray(run_chunks(sums, chunks), np.float64),
                           axis=0).reshape(2, -1, d).sum(axis=1)
    dtype = np.result_type(dout, gamma)
    sum_g, sum_gx = dbeta, dgamma
    if cache.reduce is not None:    # data-parallel: dx needs the global batch's two sums
        both = cache.reduce(np.concatenate([dbeta, dgamma]))
        sum_g, sum_gx, m = both[:d], both[d:], cache.count
    mean_g_row, mean_gx_row, scale_row = _tiled(
        tile, (sum_g / m).astype(dtype), (sum_gx / m).astype(dtype), (gamma * inv).astype(dtype))
    dx = empty(dout.shape, dtype)
    dx_rows = dx.reshape(n * h, width)

    def grad(sl):
        rs = slice(sl.start * h, sl.stop * h)
        if fast is not None:
            fast.bn_backward_dx(g_rows[rs], base_rows[rs], mean_row, inv_row, mean_g_row,
                                mean_gx_row, scale_row, dx_rows[rs], mask_rows[rs], relu)
            return
        np.multiply(base_rows[rs], mean_gx_row, out=dx_rows[rs])
        np.subtract(g_rows[rs], dx_rows[rs], out=dx_rows[rs])
        dx_rows[rs] -= mean_g_row
        dx_rows[rs] *= scale_row
    run_chunks(grad, chunks)
    return dx, dgamma.astype(gamma.dtype), dbeta.astype(gamma.dtype)


def _eval_backward(dout, cache):
    """The gradients of y = (x - running_mean) * inv * gamma + beta, a fixed affine map per
    channel (what activation maximisation differentiates through)."""
    axes = tuple(range(dout.ndim - 1))
    xhat = (cache.x - cache.running_mean) * cache.inv
    dx = (dout * (cache.gamma * cache.inv)).astype(dout.dtype, copy=False)
    return dx, (dout * xhat).sum(axis=axes).astype(cache.gamma.dtype), \
        dout.sum(axis=axes).astype(cache.gamma.dtype)
