"""Max and average pooling: the same sliding window as convolution, reduced by max or mean.

Pooling works on each depth slice independently and has no parameters; the output size is the
lecture's (W - F) / S + 1. Windows may overlap (3x3, s=2): the backward adds overlapping
contributions together.
"""
import numpy as np

from slidenet.ops.window import col2im_add, out_hw, windows


def pool_forward(x, size, stride, mode="max"):
    """Pool each depth slice of x with an F_h x F_w window.

    x: (N, H, W, D); size (F_h, F_w); stride (S_h, S_w); mode "max" or "avg".
    Returns out (N, H', W', D) with H' = (H - F_h) / S_h + 1, and a cache.
    For max, the gradient goes to the first maximum of each window in row-major order.
    """
    n, h, w, d = x.shape
    fh, fw = size
    ho, wo = out_hw(h, w, size, stride)
    view = windows(x, size, stride)
    if mode == "avg":
        return view.mean(axis=(3, 4), dtype=x.dtype), (x.shape, size, stride, mode, None)
    flat = view.reshape(n, ho, wo, fh * fw, d)
    arg = flat.argmax(axis=3)[:, :, :, None, :]
    out = np.take_along_axis(flat, arg, axis=3)[:, :, :, 0, :]
    return out, (x.shape, size, stride, mode, arg)


def pool_backward(dout, cache):
    """Gradient of pool_forward. dout: (N, H', W', D). Returns dx (N, H, W, D)."""
    shape, (fh, fw), stride, mode, arg = cache
    n, ho, wo, d = dout.shape
    if mode == "avg":
        dwin = np.broadcast_to((dout / (fh * fw))[:, :, :, None, None, :], (n, ho, wo, fh, fw, d))
    else:
        dwin = np.zeros((n, ho, wo, fh * fw, d), dtype=dout.dtype)
        np.put_along_axis(dwin, arg, dout[:, :, :, None, :], axis=3)
        dwin = dwin.reshape(n, ho, wo, fh, fw, d)
    if stride == (fh, fw) and shape[1] == ho * fh and shape[2] == wo * fw:
        # Windows tile the input exactly: the backward is a transpose, no additions.
        return np.ascontiguousarray(dwin.transpose(0, 1, 3, 2, 4, 5)).reshape(shape)
    dx = np.zeros(shape, dtype=dout.dtype)
    return col2im_add(dwin, dx, stride)
