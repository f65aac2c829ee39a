"""The one windowing primitive behind convolution and pooling.

Both slide an `F_h x F_w` window with stride `(S_h, S_w)` over a (zero-padded) input and look
at each window; they differ only in what they do with it (a dot product with each filter, the
max, the mean). `windows` gives every window as a strided view, without copying (convolution
copies them into the rows of a matrix, so it becomes one matrix multiply: `conv.im2col.rows`);
`col2im_add`
is the backward of both: it adds each window's gradient back onto the input positions it
covered, as F_h x F_w strided slice additions (overlapping windows simply add up). `tap` is the
other way to look at the same windows: entry (i, j) of every window at once, which is how
pooling reduces a window without ever building it.
"""
import numpy as np

from slidenet.geometry import output_size
from slidenet.ops import compiled


def out_hw(h, w, size, stride, pad=(0, 0)):
    """(H', W') from the lecture's (N + 2P - F) / S + 1, per axis; GeometryError if it does not fit."""
    return (output_size(h, size[0], stride[0], pad[0], "height"),
            output_size(w, size[1], stride[1], pad[1], "width"))


def unpad_hw(xp, pad):
    """The interior of a padded (N, H+2P_h, W+2P_w, D) array (a view)."""
    ph, pw = pad
    return xp[:, ph:xp.shape[1] - ph, pw:xp.shape[2] - pw, :]


def windows(xp, size, stride):
    """Every window of xp as a read-only view.

    xp: (N, H, W, D), already padded. Returns (N, H', W', F_h, F_w, D) where
    ``view[n, i, j] == xp[n, i*S_h : i*S_h + F_h, j*S_w : j*S_w + F_w, :]``.
    """
    n, h, w, d = xp.shape
    (fh, fw), (sh, sw) = size, stride
    ho, wo = (h - fh) // sh + 1, (w - fw) // sw + 1
    s_n, s_h, s_w, s_d = xp.strides
    shape, strides = (n, ho, wo, fh, fw, d), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_d)
    if not xp.flags.c_contiguous:
        return np.lib.stride_tricks.as_strided(xp, shape, strides, writeable=False)
    # The same view, built ten times faster than as_strided builds it (this runs hundreds of
    # times a training step, holding the GIL).
    view = np.ndarray(shape, xp.dtype, xp, 0, strides)
    view.flags.writeable = False
    return view


def tap(xp, i, j, out_size, stride):
    """Entry (i, j) of every window, as a view (N, H', W', D).

    ``tap(xp, i, j)[n, r, c] == windows(xp, ...)[n, r, c, i, j] == xp[n, i + r*S_h, j + c*S_w]``.
    """
    (ho, wo), (sh, sw) = out_size, stride
    return xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]


def col2im_add(dwin, dxp, stride):
    """Add window gradients back onto the input they came from, in place.

    dwin: (N, H', W', F_h, F_w, D) gradient of every window; dxp: (N, H, W, D) padded-input
    gradient, accumulated into. One strided slice addition per filter tap, never np.add.at.
    """
    _, ho, wo, fh, fw, _ = dwin.shape
    fast = compiled.kernels(dwin, dxp)
    if fast is not None:            # the same additions in the same order, in one compiled pass
        fast.col2im_add(dwin, dxp, stride[0], stride[1])
        return dxp
    for i in range(fh):
        for j in range(fw):
            view = tap(dxp, i, j, (ho, wo), stride)
            view += dwin[:, :, :, i, j, :]
    return dxp
