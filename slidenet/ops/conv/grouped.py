"""Grouped and depthwise convolution: the input's depth split into G groups, each convolved
by its own K / G filters that span only its D / G channels.

    x (N, H, W, D), w (F_h, F_w, D / G, K), b (K,) -> out (N, H', W', K)
    out[..., k] looks at channels g*D/G ... (g+1)*D/G - 1 of x, with g = k // (K / G)
    H' = (H + 2P_h - F_h) / S_h + 1, W' likewise; parameters K x (F_h*F_w*D/G + 1)

G = 1 is the lecture's convolution. AlexNet split its filters in two groups across two GPUs;
ResNeXt uses many. G = D is depthwise (MobileNet): each channel has its own F_h x F_w filter
(or M of them, K = M*D), and no channel is mixed with another; a 1x1 CONV after it mixes them.

A general grouping runs the ordinary convolution pair (`ops.conv`) once per group. Depthwise
runs F_h * F_w shifted multiply-adds over whole volumes (`window.tap`): one filter number per
channel and tap, which a GEMM would only waste. `naive.conv_forward` with `groups` is the oracle.
"""
from typing import NamedTuple

import numpy as np

from slidenet.ops.conv import dispatch
from slidenet.ops.window import out_hw, tap


class GroupedCache(NamedTuple):
    x: np.ndarray           # (N, H, W, D)
    w: np.ndarray           # (F_h, F_w, D / G, K)
    stride: tuple
    pad: tuple
    groups: int
    parts: tuple            # one ConvCache per group; () for depthwise
    out: np.ndarray         # the output when relu was applied (the ReLU's mask), else None


def _check(x, w, groups):
    d, k = x.shape[3], w.shape[3]
    if d % groups or k % groups or w.shape[2] * groups != d:
        raise ValueError(f"groups={groups} must divide the depth {d} and the {k} filters, and "
                         f"w must be (F_h, F_w, {d // max(groups, 1)}, K); got w {w.shape}")


def grouped_conv_forward(x, w, b, stride=(1, 1), pad=(0, 0), groups=1, relu=False):
    """Convolve x with `groups` groups of filters (see the module docstring for shapes).

    relu: return max(0, out) (fusion with the next RELU; the cache keeps out as its mask).
    Returns out (N, H', W', K) and a GroupedCache for `grouped_conv_backward`.
    """
    _check(x, w, groups)
    stride, pad = tuple(stride), tuple(pad)
    if w.shape[2] == 1:
        out, parts = _depthwise_forward(x, w, b, stride, pad), ()
    else:
        dg, kg = x.shape[3] // groups, w.shape[3] // groups
        outs, parts = [], []
        for g in range(groups):
            out_g, cache = dispatch.conv_forward(
                np.ascontiguousarray(x[..., g * dg:(g + 1) * dg]),
                np.ascontiguousarray(w[..., g * kg:(g + 1) * kg]), b[g * kg:(g + 1) * kg],
                stride, pad)
            outs.append(out_g)
            parts.append(cache)
        out, parts = np.concatenate(outs, axis=3), tuple(parts)
    if relu:
        np.maximum(out, 0, out=out)
    return out, GroupedCache(x, w, stride, pad, groups, parts, out if relu else None)


def grouped_conv_backward(dout, cache, need_dx=True, relu=False):
    """dout (N, H', W', K) -> dx (N, H, W, D) (None if not need_dx), dw (F_h, F_w, D/G, K),
    db (K,). relu=True applies the mask of the ReLU the forward applied."""
    if relu:
        dout = dout * (cache.out > 0)
    if not cache.parts:
        return _depthwise_backward(dout, cache, need_dx)
    kg = cache.w.shape[3] // cache.groups
    dxs, dws, dbs = [], [], []
    for g, part in enumerate(cache.parts):
        dx, dw, db = dispatch.conv_backward(np.ascontiguousarray(dout[..., g * kg:(g + 1) * kg]),
                                        part, need_dx)
        dxs.append(dx)
        dws.append(dw)
        dbs.append(db)
    dx = np.concatenate(dxs, axis=3) if need_dx else None
    return dx, np.concatenate(dws, axis=3), np.concatenate(dbs)


def _padded(x, pad, multiplier):
    """x zero-padded, each channel repeated `multiplier` times (depthwise with K = M*D)."""
    (ph, pw) = pad
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    return np.repeat(xp, multiplier, axis=3) if multiplier > 1 else xp


def _depthwise_forward(x, w, b, stride, pad):
    fh, fw, _, k = w.shape
    ho, wo = out_hw(x.shape[1], x.shape[2], (fh, fw), stride, pad)
    xp = _padded(x, pad, k // x.shape[3])
    out = np.empty((x.shape[0], ho, wo, k), dtype=np.result_type(x, w))
    out[...] = b
    for i in range(fh):             # one shifted multiply-add per filter tap
        for j in range(fw):
            out += tap(xp, i, j, (ho, wo), stride) * w[i, j, 0]
    return out


def _depthwise_backward(dout, cache, need_dx):
    x, w, stride, pad = cache.x, cache.w, cache.stride, cache.pad
    fh, fw, _, k = w.shape
    n, h, wd, d = x.shape
    m = k // d
    ho, wo = dout.shape[1:3]
    xp = _padded(x, pad, m)
    dw = np.empty_like(w)
    dxp = np.zeros_like(xp) if need_dx else None
    for i in range(fh):
        for j in range(fw):
            dw[i, j, 0] = np.einsum("nhwk,nhwk->k", tap(xp, i, j, (ho, wo), stride), dout)
            if need_dx:
                tap(dxp, i, j, (ho, wo), stride)[...] += dout * w[i, j, 0]
    db = dout.sum(axis=(0, 1, 2))
    if not need_dx:
        return None, dw, db
    ph, pw = pad
    dx = dxp[:, ph:ph + h, pw:pw + wd]
    if m > 1:
        dx = dx.reshape(n, h, wd, d, m).sum(axis=4)
    return np.ascontiguousarray(dx), dw, db
