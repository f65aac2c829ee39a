"""Padding that differs between the two sides of an axis, and cropping.

The convolution and pooling pairs pad both sides of an axis alike, (P_h, P_w). A window rule
that does not tile evenly (TensorFlow's 'same' at stride 2, PyTorch's rounding down or up, a
pattern's p=0:1) needs P_before on one side and P_after on the other, and rounding down needs
the last rows cropped (a negative P_after). `pad_sides` builds that input once, so the pairs
then run it with no padding of their own; `unpad_sides` is its backward.
"""
import numpy as np

from slidenet.ops.runtime import empty, run_chunks, split

# An elementwise copy weighs this much per number in `runtime.split`'s multiply-adds: it is bound
# by memory, so it pays to copy half the batch on the other worker from a few hundred KiB on.
COPY_WEIGHT = 8


def pad_sides(x, before, after, value=0.0):
    """x (N, H, W, D) -> (N, H + b_h + a_h, W + b_w + a_w, D), `value` in the border.

    before (b_h, b_w) >= 0; after (a_h, a_w) may be negative: that many rows (columns) are
    cropped from the bottom (right) instead. value: 0 for convolution and average pooling,
    -inf for max pooling (a padded cell never wins).
    """
    n, h, w, d = x.shape
    (bh, bw), (ah, aw) = before, after
    keep_h, keep_w = h + min(ah, 0), w + min(aw, 0)
    out = empty((n, bh + keep_h + max(ah, 0), bw + keep_w + max(aw, 0), d), x.dtype)

    def images(sl):
        # The border alone is filled (recycled memory holds anything), then the inside copied.
        part = out[sl]
        part[:, :bh] = value
        part[:, bh + keep_h:] = value
        part[:, bh:bh + keep_h, :bw] = value
        part[:, bh:bh + keep_h, bw + keep_w:] = value
        part[:, bh:bh + keep_h, bw:bw + keep_w] = x[sl, :keep_h, :keep_w]
    run_chunks(images, split(n, out.size * COPY_WEIGHT))
    return out


def unpad_sides(dxp, before, after, shape, skip=None):
    """The gradient of `pad_sides`: dxp (N, H', W', D) -> dx of `shape` (N, H, W, D); the
    cropped rows and columns, which no window read, get zero. skip: None, or an array of
    `shape` to return dx + skip instead (a residual sum's other term), in the same pass: the
    bits of adding it after (0 + s where nothing was read)."""
    n, h, w, d = shape
    (bh, bw), (ah, aw) = before, after
    keep_h, keep_w = h + min(ah, 0), w + min(aw, 0)
    dx = empty(shape, dxp.dtype)

    def images(sl):
        part = dx[sl]
        inside = dxp[sl, bh:bh + keep_h, bw:bw + keep_w]
        if skip is None:
            part[:, keep_h:] = 0
            part[:, :keep_h, keep_w:] = 0
            part[:, :keep_h, :keep_w] = inside
            return
        other = skip[sl]
        np.add(other[:, keep_h:], 0, out=part[:, keep_h:])
        np.add(other[:, :keep_h, keep_w:], 0, out=part[:, :keep_h, keep_w:])
        np.add(inside, other[:, :keep_h, :keep_w], out=part[:, :keep_h, :keep_w])
    run_chunks(images, split(n, dx.size * COPY_WEIGHT))
    return dx
