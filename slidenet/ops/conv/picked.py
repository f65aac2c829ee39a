"""Training's 1x1 CONVs at a stride, with no padding before (a residual block's projection,
res18's `CONV(K, 1x1, s=2, round=down)`): the pixels the windows read, picked once.

A 1x1 window at stride S reads pixel (S i, S j) and nothing else. Those pixels, copied once into
a contiguous (N, H', W', D) array, are a 1x1 convolution at stride 1, whose im2col rows are the
pixels themselves (no copy): one strided copy forward where the per-side padding (a cropped
last row and column) and the windows made two (`pad_sides`, then the rows). Backward, the 1x1
convolution's dx goes back to the picked pixels and every other pixel gets zero, in one pass
over dx where the cropped copy's gradient and `unpad_sides` made two.

    pick(x, stride, after)          (N, H, W, D) -> (N, H', W', D), recycled memory
    put_back(dp, shape, stride)     (N, H', W', D) -> dx (N, H, W, D), zeros elsewhere

Both split the batch between the workers (`ops.sides`' weight for a copy). Bit for bit the
numbers of the padded path: the same products, only fewer copies.
"""
import numpy as np

from slidenet.ops.runtime import empty, run_chunks, split
from slidenet.ops.sides import COPY_WEIGHT


def applies(size, stride, before, after):
    """Whether a CONV of this window reads only picked pixels: 1 x 1, a stride above 1 on some
    axis, nothing padded before, nothing padded after (cropping allowed)."""
    return (tuple(size) == (1, 1) and tuple(stride) != (1, 1) and tuple(before) == (0, 0)
            and max(after) <= 0)


def _view(x, stride, after):
    (sh, sw), (ah, aw) = stride, after
    return x[:, :x.shape[1] + ah:sh, :x.shape[2] + aw:sw]


def pick(x, stride, after=(0, 0)):
    """The pixels a 1x1 window at `stride` reads in x (N, H, W, D), the last -after rows and
    columns cropped first: (N, ceil((H + a_h) / S_h), ceil((W + a_w) / S_w), D), C-contiguous,
    in recycled memory."""
    view = _view(x, stride, after)
    out = empty(view.shape, x.dtype)

    def images(sl):
        np.copyto(out[sl], view[sl])
    run_chunks(images, split(x.shape[0], x.size * COPY_WEIGHT))
    return out


def put_back(dp, shape, stride, after=(0, 0)):
    """The gradient of `pick`: dp (N, H', W', D) -> dx of `shape` (N, H, W, D), dp at the picked
    pixels and zero at every other one, in recycled memory."""
    dx = empty(shape, dp.dtype)
    (sh, sw) = stride

    def images(sl):
        part = dx[sl]
        if sh == 2 and sw == 2:
            # Zero only what is not picked: the odd rows, the odd columns of even rows.
            ph, pw = dp.shape[1:3]
            part[:, 1::2] = 0
            part[:, ::2, 1::2] = 0
            part[:, 2 * ph::2] = 0              # even rows and columns past the last window
            part[:, ::2, 2 * pw::2] = 0
        else:
            part[...] = 0
        _view(part, stride, after)[...] = dp[sl]
    run_chunks(images, split(shape[0], int(np.prod(shape)) * COPY_WEIGHT))
    return dx
