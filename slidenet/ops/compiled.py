"""Optional compiled kernels (numba) for the memory passes around the GEMMs, and one convolution.

Each function here does in one pass, without the GIL, what a NumPy path elsewhere does with
several calls:
    Winograd down the height (`conv.winograd_f23`, `conv.winograd_f43`): build the transformed
        row sets, turn the products into output rows (with bias and ReLU; F(4, 3)'s also adds a
        residual sum's other terms, inference's `skip`), build x's adjoint rows;
    F(4x4, 3x3) in both axes (`conv.winograd_f44`, training's and inference's): B^T d B of every
        tile, A^T m A with the bias, skip, ReLU or 2x2 max pool, and x's adjoint tiles for dw;
        the filter transforms G w G^T and G^T dU G;
    Winograd at stride 2 (`conv.winograd_s2`, inference's): B^T d B of every 9 x 9 window,
        A^T m A with the bias and ReLU;
    im2col (`conv.common`, `conv.im2col`, `window`): the rows of thin inputs, the bias and ReLU
        over output rows, the ReLU's mask, dx's window gradients added back (`col2im_add`);
    pooling (`pool`): max-pool a window, and hand its gradient to the first maximum (2x2
        windows at stride 2 by a pass of their own, the taps unrolled);
    the direct convolution of thin first layers (`conv.direct`): each output pixel's window
        times the filters; its dw and db at stride 1 as dot products of planar rows;
    the FC of a few images in inference (`fc.fc_infer`): W's rows where the input is not zero;
    batch normalisation in training (`batchnorm`): the per-channel sums, the centred squares,
        xhat and the output together; the backward's two sums, and dx.
The arithmetic and the comparisons are the same, in the same order, so results are bitwise
equal to the NumPy path (tested). Two exceptions: pooling windows that overlap add up to four
gradients into one input in another order, and the direct convolution adds a window's products
in another order than im2col's GEMM (its dw, `direct_dw`, sums in vector lanes, the one kernel
compiled with numba's reassociation); they match to rounding. Batch normalisation's sums are
added in float64 in another order than NumPy's GEMVs (so they match to rounding, closer to the
exact sums). F(4x4, 3x3)'s and stride-2 Winograd's NumPy paths (`conv.winograd_f44.NUMPY`,
`conv.winograd_s2.NUMPY`) are einsums, a check rather than a second implementation of the same
passes: the two match to rounding.

Why bother: NumPy runs each of those steps as a separate pass over memory, and every call hands
the GIL to the other worker thread (docs/benchmarks.md, "Thin first layers", measures the
difference). NumPy alone always works: without numba installed, with ``SLIDENET_NUMBA=0`` in the
environment, or after ``set_enabled(False)``, `kernels()` is None and every caller takes its
NumPy path.

numba is imported, and each kernel compiled (once per dtype, cached on disk), only when a
convolution first needs it.
"""
import os
import threading

import numpy as np

_state = {"wanted": os.environ.get("SLIDENET_NUMBA", "1") != "0", "kernels": None, "error": None}
_lock = threading.Lock()


def set_enabled(flag=True):
    """Use the compiled kernels when numba is installed (True) or never (False); returns the previous."""
    previous = _state["wanted"]
    _state["wanted"] = bool(flag)
    return previous


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def kernels(*arrays):
    """The compiled kernels as a namespace, or None when they are disabled or unavailable.

    Given arrays, also None unless all of them are float32 or float64: the kernels are
    compiled and tested for those; anything else takes the NumPy path.
    """
    if not _state["wanted"]:
        return None
    for a in arrays:
        if a.dtype not in _FLOATS:
            return None
    if _state["kernels"] is None and _state["error"] is None:
        with _lock:
            if _state["kernels"] is None and _state["error"] is None:
                try:
                    _state["kernels"] = _compile()
                except ImportError as err:         # numba is not installed: NumPy it is
                    _state["error"] = err
    return _state["kernels"]


def status():
    """One line for reports: whether the compiled kernels are in use, and if not, why."""
    if not _state["wanted"]:
        return "off (disabled)"
    if kernels() is not None:
        import numba
        return f"numba {numba.__version__}"
    return f"off (numba cannot be imported: {_state['error']})"


class _Kernels:
    pass


def jit(fn, fastmath=False):
    """fn compiled by numba without the GIL, cached on disk where a cache can be written
    (else compiled again in each process). For this module's passes and the kernels built on
    them (`conv.winograd_block`, `conv.winograd_down`). fastmath: numba's flags (a set), for
    the one kernel whose sums may be reordered (`direct_dw`)."""
    import numba
    try:
        return numba.njit(nogil=True, cache=True, fastmath=fastmath)(fn)
    except RuntimeError:                        # nowhere to write the cache: compile each run
        return numba.njit(nogil=True, fastmath=fastmath)(fn)


def _compile():
    done = _Kernels()
    done.im2col_rows = jit(im2col_rows)
    done.col2im_add = jit(col2im_add)
    done.add_bias_relu = jit(add_bias_relu)
    done.relu_mask = jit(relu_mask)
    done.direct_conv = jit(direct_conv)
    # Reassociation lets the compiler vectorise direct_dw's dot products (16 partial sums in
    # lanes); contraction gives them FMAs. Neither touches NaN or infinity.
    done.direct_dw = jit(direct_dw, fastmath={"reassoc", "contract"})
    done.fc_one = jit(fc_one)
    done.winograd_rows = jit(winograd_rows)
    done.winograd_output = jit(winograd_output)
    done.winograd_adjoint = jit(winograd_adjoint)
    # The range versions first: the whole-image ones call them as globals of this module.
    global winograd4_rows_of, winograd4_output_of
    winograd4_rows_of, winograd4_output_of = jit(winograd4_rows_of), jit(winograd4_output_of)
    done.winograd4_rows_of, done.winograd4_output_of = winograd4_rows_of, winograd4_output_of
    done.winograd4_rows, done.winograd4_output, done.winograd4_adjoint = (
        jit(winograd4_rows), jit(winograd4_output), jit(winograd4_adjoint))
    done.winograd4_output_pool = jit(winograd4_output_pool)
    done.winograd44_input, done.winograd44_output = jit(winograd44_input), jit(winograd44_output)
    done.winograd44_output_pool = jit(winograd44_output_pool)
    done.winograd44_adjoint = jit(winograd44_adjoint)
    done.winograd44_filters = jit(winograd44_filters)
    done.winograd44_filter_grad = jit(winograd44_filter_grad)
    done.winograd_s2_input, done.winograd_s2_output = (jit(winograd_s2_input),
                                                       jit(winograd_s2_output))
    done.max_pool = jit(max_pool)
    done.max_pool_backward = jit(max_pool_backward)
    done.max_pool22, done.max_pool22_backward = jit(max_pool22), jit(max_pool22_backward)
    done.bn_moments = jit(bn_moments)
    done.bn_normalise = jit(bn_normalise)
    done.bn_backward_sums = jit(bn_backward_sums)
    done.bn_backward_dx = jit(bn_backward_dx)
    return done


# The kernels, as plain Python (numba compiles them; `winograd` documents the arithmetic).

def winograd_rows(xp, fw, out):
    """xp (c, 2T + 2, W_p, D) -> out (4, c, T, W', F_w*D): d0 - d2, d1 + d2, d2 - d1, d1 - d3."""
    c, hp, wp, d = xp.shape
    t = (hp - 2) // 2
    wo = wp - fw + 1
    for n in range(c):
        for ti in range(t):
            r0, r1, r2, r3 = xp[n, 2 * ti], xp[n, 2 * ti + 1], xp[n, 2 * ti + 2], xp[n, 2 * ti + 3]
            for w in range(wo):
                for j in range(fw):
                    for ch in range(d):
                        a0, a1, a2, a3 = r0[w + j, ch], r1[w + j, ch], r2[w + j, ch], r3[w + j, ch]
                        col = j * d + ch
                        out[0, n, ti, w, col] = a0 - a2
                        out[1, n, ti, w, col] = a1 + a2
                        out[2, n, ti, w, col] = a2 - a1
                        out[3, n, ti, w, col] = a1 - a3


def winograd_output(m, out, bias, use_bias, relu):
    """m (4, c, T, W', K) -> out (c, H', W', K): y0 = m0 + m1 + m2, y1 = m1 - m2 - m3 [+ b][ReLU]."""
    _, c, t, wo, k = m.shape
    ho = out.shape[1]
    zero = out.dtype.type(0)
    for n in range(c):
        for ti in range(t):
            second = 2 * ti + 1 < ho
            for w in range(wo):
                for ch in range(k):
                    m1, m2 = m[1, n, ti, w, ch], m[2, n, ti, w, ch]
                    y0 = m[0, n, ti, w, ch] + m1 + m2
                    y1 = m1 - m2 - m[3, n, ti, w, ch]
                    if use_bias:
                        y0 += bias[ch]
                        y1 += bias[ch]
                    if relu:                    # as np.maximum: a NaN stays NaN
                        if y0 < zero:
                            y0 = zero
                        if y1 < zero:
                            y1 = zero
                    out[n, 2 * ti, w, ch] = y0
                    if second:
                        out[n, 2 * ti + 1, w, ch] = y1


def winograd_adjoint(x, out):
    """x (c, H, W, D) -> out (4, c, T, W, D): x0, x0 + x1, x0 - x1, x1 (x1 = 0 past an odd H)."""
    c, h, wd, d = x.shape
    t = out.shape[2]
    zero = out.dtype.type(0)
    for n in range(c):
        for ti in range(t):
            second = 2 * ti + 1 < h
            for w in range(wd):
                for ch in range(d):
                    x0 = x[n, 2 * ti, w, ch]
                    x1 = x[n, 2 * ti + 1, w, ch] if second else zero
                    out[0, n, ti, w, ch] = x0
                    out[1, n, ti, w, ch] = x0 + x1
                    out[2, n, ti, w, ch] = x0 - x1
                    out[3, n, ti, w, ch] = x1


def max_pool(x, fh, fw, sh, sw, out):
    """out (c, H', W', D) = the max of each F_h x F_w window of x (c, H, W, D), NaN kept as NaN.

    Loops run over the depth innermost, contiguous in memory, as NumPy's taps do.
    """
    c, ho, wo, d = out.shape
    for n in range(c):
        for i in range(ho):
            for j in range(wo):
                o = out[n, i, j]
                first = x[n, i * sh, j * sw]
                for ch in range(d):
                    o[ch] = first[ch]
                for a in range(fh):
                    for b in range(fw):
                        v = x[n, i * sh + a, j * sw + b]
                        for ch in range(d):
                            if v[ch] > o[ch] or v[ch] != v[ch]:     # as np.maximum(o, v)
                                o[ch] = v[ch]


def max_pool22(x, out):
    """`max_pool` of 2x2 windows at stride 2 (R1's and VGG's pools): the same comparisons in
    the same order, with the four taps named, so the loop over the depth has no loop around
    it to run and is vectorised."""
    c, ho, wo, d = out.shape
    for n in range(c):
        for i in range(ho):
            r0, r1 = x[n, 2 * i], x[n, 2 * i + 1]
            for j in range(wo):
                o = out[n, i, j]
                t0, t1, t2, t3 = r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]
                for ch in range(d):
                    m = t0[ch]
                    v = t1[ch]
                    if v > m or v != v:
                        m = v
                    v = t2[ch]
                    if v > m or v != v:
                        m = v
                    v = t3[ch]
                    if v > m or v != v:
                        m = v
                    o[ch] = m


def max_pool22_backward(x, out, g, relu_mask, dx):
    """`max_pool_backward` of 2x2 windows at stride 2 that tile x: each window's gradient to
    its first tap equal to the max, row-major, else to the last; the same order as there."""
    c, ho, wo, d = g.shape
    zero = dx.dtype.type(0)
    for n in range(c):
        for i in range(ho):
            r0, r1 = x[n, 2 * i], x[n, 2 * i + 1]
            q0, q1 = dx[n, 2 * i], dx[n, 2 * i + 1]
            for j in range(wo):
                o, gr = out[n, i, j], g[n, i, j]
                t0, t1, t2, t3 = r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]
                d0, d1, d2, d3 = q0[2 * j], q0[2 * j + 1], q1[2 * j], q1[2 * j + 1]
                for ch in range(d):
                    m = o[ch]
                    left = zero if relu_mask and not m > zero else gr[ch]
                    taken = left if t0[ch] == m else zero
                    d0[ch] = taken
                    left -= taken
                    taken = left if t1[ch] == m else zero
                    d1[ch] = taken
                    left -= taken
                    taken = left if t2[ch] == m else zero
                    d2[ch] = taken
                    d3[ch] = left - taken


def max_pool_backward(x, out, g, fh, fw, sh, sw, relu_mask, tiles, dx):
    """dx (c, H, W, D): each window's gradient g to its first tap equal to the max, row-major
    (the last tap when none is, as after a NaN). relu_mask: windows whose max is not > 0 get
    nothing. tiles: the windows tile x, so every tap is written; otherwise dx must hold zeros
    and gradients are added (overlapping windows)."""
    c, ho, wo, d = g.shape
    zero = dx.dtype.type(0)
    left = np.empty(d, dx.dtype)                # the gradient no tap has taken yet
    for n in range(c):
        for i in range(ho):
            for j in range(wo):
                o, gr = out[n, i, j], g[n, i, j]
                for ch in range(d):
                    left[ch] = zero if relu_mask and not o[ch] > zero else gr[ch]
                for a in range(fh):
                    for b in range(fw):
                        v, into = x[n, i * sh + a, j * sw + b], dx[n, i * sh + a, j * sw + b]
                        last = a == fh - 1 and b == fw - 1
                        for ch in range(d):
                            taken = left[ch] if last or v[ch] == o[ch] else zero
                            left[ch] -= taken
                            if tiles:
                                into[ch] = taken
                            else:
                                into[ch] += taken


# im2col's passes for thin inputs (`im2col.rows`, `finish_rows`, `relu_masked`): the copies and
# the elementwise work around its GEMMs, in one pass each, without the GIL.

def im2col_rows(xp, taps_h, taps_w, depth, sh, sw, out):
    """xp (c, H_p, W_p, D), already zero-padded -> out (c, H', W', F_h*F_w*D): each window as
    one row, in (F_h, F_w, D) order, as `im2col.rows` copies it.

    taps_h, taps_w, depth: tuples of F_h, F_w and D zeros. Their lengths are part of the type,
    so numba compiles one version per filter size and depth, with constant loop counts that
    it unrolls into straight copies; with the sizes known only at run time the same loops copy
    2x slower, slower than NumPy.
    """
    fh, fw, d = len(taps_h), len(taps_w), len(depth)
    c, ho, wo, _ = out.shape
    for n in range(c):
        for i in range(ho):
            for j in range(wo):
                row = out[n, i, j]
                for a in range(fh):
                    src = xp[n, i * sh + a]
                    for b in range(fw):
                        for e in range(d):
                            row[(a * fw + b) * d + e] = src[j * sw + b, e]


def col2im_add(dwin, dxp, sh, sw):
    """dxp (N, H, W, D) += every window's gradient dwin (N, H', W', F_h, F_w, D) where the
    window lay: tap (i, j) after tap (i, j - 1), as `window.col2im_add`'s slice additions, so
    each input adds its (up to F_h x F_w) terms in the same order."""
    n, ho, wo, fh, fw, d = dwin.shape
    for i in range(fh):
        for j in range(fw):
            for b in range(n):
                for y in range(ho):
                    row = dxp[b, y * sh + i]
                    for x in range(wo):
                        col = x * sw + j
                        for ch in range(d):
                            row[col, ch] += dwin[b, y, x, i, j, ch]


def add_bias_relu(o, bias_row, relu):
    """o (R, W'*K) += bias_row (W'*K,) in place, then max(0, o) with relu (a NaN stays NaN)."""
    rows, m = o.shape
    zero = o.dtype.type(0)
    for r in range(rows):
        for q in range(m):
            v = o[r, q] + bias_row[q]
            if relu and v < zero:
                v = zero
            o[r, q] = v


def relu_mask(dout, out, into):
    """into = dout * (out > 0) over (c, H', W', K): dout times 1 or 0, as NumPy multiplies by
    a boolean mask (so 0 * inf is NaN there too)."""
    c, ho, wo, k = out.shape
    zero = out.dtype.type(0)
    one, nil = dout.dtype.type(1), dout.dtype.type(0)
    for n in range(c):
        for i in range(ho):
            for j in range(wo):
                for ch in range(k):
                    into[n, i, j, ch] = dout[n, i, j, ch] * (one if out[n, i, j, ch] > zero else nil)


# The direct convolution of `direct`: the one kernel here with no NumPy twin. Without numba that
# pair runs im2col's GEMM, which adds the window's products in its own order, so the two agree
# to rounding, not bit for bit (tested so).

def direct_conv(xp, w, bias, taps_h, taps_w, depth, steps_h, steps_w, relu, out):
    """out (c, H', W', K) = the convolution of the zero-padded xp (c, H_p, W_p, D) with w
    (F_h, F_w, D, K), plus bias (K,), rectified with relu; `direct` documents it.

    Each output pixel's K numbers at once: for each channel, the window's F_h*F_w*D products
    summed in (F_h, F_w, D) order, then the bias, then the ReLU (a NaN stays NaN). taps_h,
    taps_w, depth, steps_h, steps_w: tuples whose lengths are F_h, F_w, D, S_h and S_w (see
    `im2col_rows`): the window's loops unroll, and the loop over the K channels, innermost and
    contiguous, is vectorised, with the window's numbers broadcast.
    """
    fh, fw, d = len(taps_h), len(taps_w), len(depth)
    sh, sw = len(steps_h), len(steps_w)
    c, ho, wo, k = out.shape
    zero = out.dtype.type(0)
    for n in range(c):
        for i in range(ho):
            for j in range(wo):
                o = out[n, i, j]
                for ch in range(k):
                    s = zero
                    for a in range(fh):
                        for b in range(fw):
                            for e in range(d):
                                s += xp[n, i * sh + a, j * sw + b, e] * w[a, b, e, ch]
                    s += bias[ch]
                    if relu and s < zero:
                        s = zero
                    o[ch] = s


def direct_dw(x, g, out, taps_h, taps_w, depth, pad_h, pad_w, relu, dw, db):
    """dw (F_h*F_w*D, K) and db (K,) += the gradients of a thin convolution at stride 1 over a
    chunk: x (c, H, W, D) the forward's input (unpadded), g (c, H', W', K) dout, out the
    forward's output (its ReLU's mask where relu, else unused); pad_h, pad_w: the padding.
    taps_h, taps_w, depth: tuples whose lengths are F_h, F_w and D (see `direct_conv`).

    dw[(a, b, e), k] = sum over pixels (i, j) of xp[i + a, j + b, e] * g[i, j, k]: with each
    image laid out planar, one channel of x zero-padded in a flat row of H_p*W_p numbers and one
    channel of g in a flat row of the same width W_p (zeros in the W_p - W' columns past each
    output row), that sum is a dot product of two contiguous rows, the x row shifted by
    a*W_p + b. The D channels of x share each load of g (D sums at once, D <= 4). Products are
    summed in lanes, in another order than the GEMM's or the naive loops' (they agree to
    rounding); each image's sums are added into dw in image order. Indices are unsigned so
    that the compiler knows they are not negative (numba would otherwise wrap them).
    """
    fh, fw, d = len(taps_h), len(taps_w), len(depth)
    c, h, wd, _ = x.shape
    _, ho, wo, k = g.shape
    hp, wp = h + 2 * pad_h, wd + 2 * pad_w
    uwp = np.uint64(wp)
    span = (ho - 1) * wp + wo               # the flat positions that hold an output pixel
    zero, one = dw.dtype.type(0), dw.dtype.type(1)
    xq = np.zeros((d, hp * wp), dw.dtype)   # borders stay zero; the interior is rewritten
    gq = np.zeros((k, span), dw.dtype)      # the W_p - W' gap columns stay zero
    for n in range(c):
        for r in range(h):
            row = np.uint64(r + pad_h) * uwp + np.uint64(pad_w)
            for s in range(wd):
                for e in range(d):
                    xq[e, row + np.uint64(s)] = x[n, r, s, e]
        for i in range(ho):
            for j in range(wo):
                q = np.uint64(i) * uwp + np.uint64(j)
                gp, op = g[n, i, j], out[n, i, j]
                for ch in range(k):
                    # As `relu_mask`: times 1 or 0, so an infinite gradient behind a 0 is NaN.
                    gq[ch, q] = gp[ch] * (one if (not relu or op[ch] > zero) else zero)
        x0, x1, x2, x3 = xq[0], xq[min(1, d - 1)], xq[min(2, d - 1)], xq[min(3, d - 1)]
        # Four filters at a time: each load of x serves four sums, each load of g up to four.
        for c0 in range(0, k - 3, 4):
            g0, g1, g2, g3 = gq[c0], gq[c0 + 1], gq[c0 + 2], gq[c0 + 3]
            t = 0
            for a in range(fh):
                for b in range(fw):
                    off = np.uint64(a) * uwp + np.uint64(b)
                    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
                    for q in range(span):
                        u = np.uint64(q) + off
                        v0, v1, v2, v3 = g0[q], g1[q], g2[q], g3[q]
                        y = x0[u]
                        s00 += y * v0
                        s10 += y * v1
                        s20 += y * v2
                        s30 += y * v3
                        if d > 1:
                            y = x1[u]
                            s01 += y * v0
                            s11 += y * v1
                            s21 += y * v2
                            s31 += y * v3
                        if d > 2:
                            y = x2[u]
                            s02 += y * v0
                            s12 += y * v1
                            s22 += y * v2
                            s32 += y * v3
                        if d > 3:
                            y = x3[u]
                            s03 += y * v0
                            s13 += y * v1
                            s23 += y * v2
                            s33 += y * v3
                    dw[t, c0 + 0] += s00
                    dw[t, c0 + 1] += s10
                    dw[t, c0 + 2] += s20
                    dw[t, c0 + 3] += s30
                    if d > 1:
                        dw[t + 1, c0 + 0] += s01
                        dw[t + 1, c0 + 1] += s11
                        dw[t + 1, c0 + 2] += s21
                        dw[t + 1, c0 + 3] += s31
                    if d > 2:
                        dw[t + 2, c0 + 0] += s02
                        dw[t + 2, c0 + 1] += s12
                        dw[t + 2, c0 + 2] += s22
                        dw[t + 2, c0 + 3] += s32
                    if d > 3:
                        dw[t + 3, c0 + 0] += s03
                        dw[t + 3, c0 + 1] += s13
                        dw[t + 3, c0 + 2] += s23
                        dw[t + 3, c0 + 3] += s33
                    t += d
        for ch in range(k - k % 4, k):        # the last k % 4 filters one at a time
            gr = gq[ch]
            t = 0
            for a in range(fh):
                for b in range(fw):
                    off = np.uint64(a) * uwp + np.uint64(b)
                    s0 = s1 = s2 = s3 = zero
                    for q in range(span):
                        gv = gr[q]
                        u = np.uint64(q) + off
                        s0 += x0[u] * gv
                        if d > 1:
                            s1 += x1[u] * gv
                        if d > 2:
                            s2 += x2[u] * gv
                        if d > 3:
                            s3 += x3[u] * gv
                    dw[t, ch] += s0
                    if d > 1:
                        dw[t + 1, ch] += s1
                    if d > 2:
                        dw[t + 2, ch] += s2
                    if d > 3:
                        dw[t + 3, ch] += s3
                    t += d
        for ch in range(k):
            gr = gq[ch]
            s0 = zero
            for q in range(span):
                s0 += gr[q]
            db[ch] += s0


# A few images' FC in inference (`fc.fc_infer`): no NumPy twin either; the products are added in
# the order of x, which is not the GEMM's, so the two agree to rounding.

def fc_one(x, w, b, relu, out):
    """out (N, O) = x (N, I) @ w (I, O) + b (O,), rectified with relu (a NaN stays NaN), for a
    few images (N of at most `fc.ROWS_UP_TO`).

    Image by image, W's rows are added into its sums one at a time, in order, each times its
    input; a row whose input is 0 is skipped, since it would add 0 (W is finite: model files refuse
    anything else). After a ReLU, and a max pool of ReLUs, many inputs are 0, so fewer of W's
    rows are read: for so few images reading W is the whole cost of the layer. The loop over
    O is innermost and contiguous, so it is vectorised. Each image's sums are added in the
    same order whatever N is: an image gets the same bits alone as in a batch.
    """
    n, i = x.shape
    o = out.shape[1]
    zero = out.dtype.type(0)
    acc = np.empty(o, out.dtype)        # its own array: the compiler need not fear aliasing
    for m in range(n):
        for c in range(o):
            acc[c] = zero
        for r in range(i):
            v = x[m, r]
            if v != zero:
                for c in range(o):
                    acc[c] += v * w[r, c]
        for c in range(o):
            s = acc[c] + b[c]
            if relu and s < zero:
                s = zero
            out[m, c] = s


# Winograd's F(4, 3) (`winograd4` documents the arithmetic; the order of every addition here is
# the NumPy path's). Multiplying by 2, 4 or 8 is exact, so only the additions round.

def winograd4_rows(xp, fw, out):
    """xp (c, 4T + 2, W_p, D) -> out (6, c, T, W', F_w*D): the rows of B^T d, width windows.

    Each tile's six transformed rows are built once into a small buffer, then copied out F_w
    times (once per filter column), instead of recomputing the sums for every copy.
    """
    winograd4_rows_of(xp, fw, out, 0, (xp.shape[1] - 2) // 4)


def winograd4_rows_of(xp, fw, out, t0, t1):
    """`winograd4_rows` for tiles t0..t1 only (`ops.conv.pair` splits one image's tiles)."""
    c, hp, wp, d = xp.shape
    wo = wp - fw + 1
    two, four = xp.dtype.type(2), xp.dtype.type(4)
    b = np.empty((6, wp, d), xp.dtype)
    for n in range(c):
        for ti in range(t0, t1):
            r = 4 * ti
            for x in range(wp):
                for ch in range(d):
                    d0, d1, d2 = xp[n, r, x, ch], xp[n, r + 1, x, ch], xp[n, r + 2, x, ch]
                    d3, d4, d5 = xp[n, r + 3, x, ch], xp[n, r + 4, x, ch], xp[n, r + 5, x, ch]
                    s = d4 - four * d2
                    q = d3 - four * d1
                    u = d4 - d2
                    v = (d3 - d1) * two
                    b[0, x, ch] = (d0 - d2) * four + u
                    b[1, x, ch] = s + q
                    b[2, x, ch] = s - q
                    b[3, x, ch] = u + v
                    b[4, x, ch] = u - v
                    b[5, x, ch] = (d5 - d3) - v * two
            for a in range(6):
                for w in range(wo):
                    for j in range(fw):
                        for ch in range(d):
                            out[a, n, ti, w, j * d + ch] = b[a, w + j, ch]


def winograd4_output(m, out, bias, use_bias, relu, skip, use_skip):
    """m (6, c, T, W', K) -> out (c, H', W', K): y = A^T m [+ b][+ skip][ReLU]; rows past H'
    dropped. skip (c, H', W', K): a residual sum's other terms (inference), read with use_skip."""
    winograd4_output_of(m, out, bias, use_bias, relu, skip, use_skip, 0, m.shape[2])


def winograd4_output_of(m, out, bias, use_bias, relu, skip, use_skip, t0, t1):
    """`winograd4_output` for tiles t0..t1 only (`ops.conv.pair` splits one image's tiles)."""
    _, c, t, wo, k = m.shape
    ho = out.shape[1]
    zero, two = out.dtype.type(0), out.dtype.type(2)
    four, eight = out.dtype.type(4), out.dtype.type(8)
    for n in range(c):
        for ti in range(t0, t1):
            r = 4 * ti
            rows = min(4, ho - r)               # rows of this tile inside the output
            for w in range(wo):
                for ch in range(k):
                    m1, m2 = m[1, n, ti, w, ch], m[2, n, ti, w, ch]
                    m3, m4 = m[3, n, ti, w, ch], m[4, n, ti, w, ch]
                    a = m1 + m2
                    b = m1 - m2
                    cc = m3 + m4
                    e = m3 - m4
                    y0 = (m[0, n, ti, w, ch] + a) + cc
                    y1 = e * two + b
                    y2 = cc * four + a
                    y3 = (e * eight + b) + m[5, n, ti, w, ch]
                    if use_bias:
                        y0 += bias[ch]
                        y1 += bias[ch]
                        y2 += bias[ch]
                        y3 += bias[ch]
                    if use_skip:
                        y0 += skip[n, r, w, ch]
                        if rows > 1:
                            y1 += skip[n, r + 1, w, ch]
                        if rows > 2:
                            y2 += skip[n, r + 2, w, ch]
                        if rows > 3:
                            y3 += skip[n, r + 3, w, ch]
                    if relu:                    # as np.maximum: a NaN stays NaN
                        y0 = zero if y0 < zero else y0
                        y1 = zero if y1 < zero else y1
                        y2 = zero if y2 < zero else y2
                        y3 = zero if y3 < zero else y3
                    out[n, r, w, ch] = y0
                    if rows > 1:
                        out[n, r + 1, w, ch] = y1
                    if rows > 2:
                        out[n, r + 2, w, ch] = y2
                    if rows > 3:
                        out[n, r + 3, w, ch] = y3


def winograd4_output_pool(m, out, bias, use_bias, relu):
    """m (6, c, T, W', K) -> out (c, P_h, P_w, K): `winograd4_output`'s rows, then the max of
    each 2x2 window at stride 2 (P_h = H' // 2, P_w = W' // 2), without writing the rows.

    Inference's CONV -> RELU -> MAXPOOL(2x2): a tile's four output rows make two pooled rows.
    The same sums, bias and ReLU as `winograd4_output`, and the same comparisons in the same
    order as `max_pool`, so the result is bit for bit the two kernels' one after the other.
    The sums are written out again rather than shared through a small jitted function: numba
    left both passes' loops scalar when they called one (ten times slower, even inlined).
    """
    _, c, t, wo, k = m.shape
    ph, pw = out.shape[1], out.shape[2]
    zero, two = out.dtype.type(0), out.dtype.type(2)
    four, eight = out.dtype.type(4), out.dtype.type(8)
    y = np.empty((4, 2, k), out.dtype)          # a tile's four rows at the window's 2 columns
    for n in range(c):
        for ti in range(t):
            if 2 * ti >= ph:
                break
            lower = 2 * ti + 1 < ph             # the tile's second pooled row is inside
            for j in range(pw):
                for col in range(2):
                    w = 2 * j + col
                    for ch in range(k):
                        m1, m2 = m[1, n, ti, w, ch], m[2, n, ti, w, ch]
                        m3, m4 = m[3, n, ti, w, ch], m[4, n, ti, w, ch]
                        a = m1 + m2
                        b = m1 - m2
                        cc = m3 + m4
                        e = m3 - m4
                        y0 = (m[0, n, ti, w, ch] + a) + cc
                        y1 = e * two + b
                        y2 = cc * four + a
                        y3 = (e * eight + b) + m[5, n, ti, w, ch]
                        if use_bias:
                            y0 += bias[ch]
                            y1 += bias[ch]
                            y2 += bias[ch]
                            y3 += bias[ch]
                        if relu:
                            y0 = zero if y0 < zero else y0
                            y1 = zero if y1 < zero else y1
                            y2 = zero if y2 < zero else y2
                            y3 = zero if y3 < zero else y3
                        y[0, col, ch] = y0
                        y[1, col, ch] = y1
                        y[2, col, ch] = y2
                        y[3, col, ch] = y3
                for half in range(2 if lower else 1):
                    o = out[n, 2 * ti + half, j]
                    for ch in range(k):
                        o[ch] = y[2 * half, 0, ch]
                    for a in range(2):
                        for b in range(2):
                            for ch in range(k):
                                v = y[2 * half + a, b, ch]
                                if v > o[ch] or v != v:     # as max_pool: NaN kept
                                    o[ch] = v


def winograd4_adjoint(x, out):
    """x (c, H, W, D) -> out (6, c, T, W, D): X0..X5 of each tile's rows x0..x3 (0 past H)."""
    c, h, wd, d = x.shape
    t = out.shape[2]
    zero, two, four = x.dtype.type(0), x.dtype.type(2), x.dtype.type(4)
    for n in range(c):
        for ti in range(t):
            r = 4 * ti
            for w in range(wd):
                for ch in range(d):
                    x0 = x[n, r, w, ch]
                    x1 = x[n, r + 1, w, ch] if r + 1 < h else zero
                    x2 = x[n, r + 2, w, ch] if r + 2 < h else zero
                    x3 = x[n, r + 3, w, ch] if r + 3 < h else zero
                    e = x0 + x2
                    o = x1 + x3
                    f = x2 * four + x0
                    g = (x3 * four + x1) * two
                    out[0, n, ti, w, ch] = x0
                    out[1, n, ti, w, ch] = e + o
                    out[2, n, ti, w, ch] = e - o
                    out[3, n, ti, w, ch] = f + g
                    out[4, n, ti, w, ch] = f - g
                    out[5, n, ti, w, ch] = x3


# F(4x4, 3x3)'s filter transforms (`conv.winograd_f44`): U = G w G^T of every filter and its
# adjoint dw = G^T dU G, in float64 numbers rounded once to the output's dtype, by the separable
# sums (G's rows along the height, then along the width: half the multiply-adds of the 36 x 9
# Kronecker product) over a whole row of K (or B) numbers at a time, so the loops vectorise; a
# range of D (or A) per call, so the workers share a layer. The NumPy path's one float64 GEMM
# by GG sums in another order: the two agree to float64 rounding, so in float32 they almost
# always round alike. w may be any strided view, but reads fastest C-contiguous.

def winograd44_filters(g, w, d0, d1, out):
    """out[6a + b, d, k] = sum_ij G[a, i] G[b, j] w[i, j, d, k] for d in d0..d1; g: G (6, 3)
    float64; w (3, 3, D, K); out (36, D, K)."""
    k_count = w.shape[3]
    t = np.empty((6, 3, k_count))
    for d in range(d0, d1):
        for a in range(6):
            for j in range(3):
                for k in range(k_count):
                    t[a, j, k] = (g[a, 0] * np.float64(w[0, j, d, k])
                                  + g[a, 1] * np.float64(w[1, j, d, k])
                                  + g[a, 2] * np.float64(w[2, j, d, k]))
        for a in range(6):
            for b in range(6):
                for k in range(k_count):
                    out[6 * a + b, d, k] = (g[b, 0] * t[a, 0, k] + g[b, 1] * t[a, 1, k]
                                            + g[b, 2] * t[a, 2, k])


def winograd44_filter_grad(g, du, a0, a1, out):
    """out[i, j, r, c] = sum_ab G[a, i] G[b, j] du[6a + b, r, c] for r in a0..a1; g: G (6, 3)
    float64; du (36, R, C); out (3, 3, R, C)."""
    c_count = du.shape[2]
    s = np.empty((6, 3, c_count))
    for r in range(a0, a1):
        for a in range(6):
            for j in range(3):
                for c in range(c_count):
                    acc = 0.0
                    for b in range(6):
                        acc += g[b, j] * np.float64(du[6 * a + b, r, c])
                    s[a, j, c] = acc
        for i in range(3):
            for j in range(3):
                for c in range(c_count):
                    acc = 0.0
                    for a in range(6):
                        acc += g[a, i] * s[a, j, c]
                    out[i, j, r, c] = acc


# Batch normalisation in training (`batchnorm`). Arrays are the module's rows, (R, W*D), with
# the D channels repeating every D numbers; the per-channel vectors come tiled to W*D (`_row`s),
# so every inner loop runs over a whole contiguous row and vectorises. The sums are per column,
# in float64; `batchnorm` adds them over chunks and folds the W copies of each channel.

def bn_moments(x, shift_row, acc, acc_sq):
    """acc, acc_sq (W*D,) float64 = the column sums of x - shift_row and of (x - shift_row)^2,
    x (R, W*D), shift_row float64: both moments in one pass. The shift (the running mean, the
    same on every rank) keeps E[c^2] - E[c]^2 of the centred c = x - shift from cancelling."""
    rows, m = x.shape
    for q in range(m):
        acc[q] = 0.0
        acc_sq[q] = 0.0
    for r in range(rows):
        for q in range(m):
            c = np.float64(x[r, q]) - shift_row[q]
            acc[q] += c
            acc_sq[q] += c * c


def bn_normalise(x, mean_row, inv_row, gamma_row, beta_row, out, relu):
    """out = ((x - mean_row) * inv_row) * gamma_row + beta_row over (R, W*D), xhat in x's dtype
    and never stored (the backward makes it again, bit for bit); relu: out = max(0, out) as
    well (BATCHNORM -> RELU; a NaN stays NaN, as np.maximum)."""
    rows, m = x.shape
    zero = out.dtype.type(0)
    for r in range(rows):
        for q in range(m):
            v = (x[r, q] - mean_row[q]) * inv_row[q]
            o = v * gamma_row[q] + beta_row[q]
            if relu and o < zero:
                o = zero
            out[r, q] = o


def bn_backward_sums(g, x, mean_row, inv_row, acc_g, acc_gx, out, relu):
    """acc_g, acc_gx (W*D,) float64 = the column sums of g and of g * xhat, over (R, W*D), where
    xhat = (x - mean_row) * inv_row as `bn_normalise` made it; relu: of g * (out > 0) instead
    (the mask of a fused RELU, as `relu_mask` applies it)."""
    rows, m = g.shape
    zero = out.dtype.type(0)
    one, nil = g.dtype.type(1), g.dtype.type(0)
    for q in range(m):
        acc_g[q] = 0.0
        acc_gx[q] = 0.0
    for r in range(rows):
        for q in range(m):
            v = g[r, q]
            if relu:
                v = v * (one if out[r, q] > zero else nil)
            acc_g[q] += v
            acc_gx[q] += v * np.float64((x[r, q] - mean_row[q]) * inv_row[q])


def bn_backward_dx(g, x, mean_row, inv_row, mean_g_row, mean_gx_row, scale_row, dx, out, relu):
    """dx = (g - xhat * mean_gx_row - mean_g_row) * scale_row over (R, W*D), in NumPy's order,
    xhat made again from x as in `bn_backward_sums`; relu: g masked by out > 0 first."""
    rows, m = g.shape
    zero = out.dtype.type(0)
    one, nil = g.dtype.type(1), g.dtype.type(0)
    for r in range(rows):
        for q in range(m):
            v = g[r, q]
            if relu:
                v = v * (one if out[r, q] > zero else nil)
            xhat = (x[r, q] - mean_row[q]) * inv_row[q]
            dx[r, q] = ((v - xhat * mean_gx_row[q]) - mean_g_row[q]) * scale_row[q]


# Winograd's F(4x4, 3x3) in both axes (`conv.winograd_f44` documents it; training's forward and
# dx, and inference's forward): F(4, 3)'s sums of `winograd4_rows` and `winograd4_output_of`,
# down the height and then along the width, in both passes. The 36 entries of a tile go to 36
# planes, the rows of the 36 GEMMs: a tile's entry is row (n * T_h + t_h) * T_w + t_w of its
# plane, D (or K) numbers. Every pass runs over whole rows of tiles, T_w * D numbers contiguous
# in memory, so that its loops vectorise: over a tile's D channels alone (16 in a thin layer)
# they ran 3-4 times slower.

def winograd44_input(x, ph, pw, t0, th, tw, wide, out):
    """x (c, H, W, D), C-contiguous -> out (36, >= c*T_h*T_w*D): B^T d B of each tile's 6 x 6
    input pixels, entry 6a + b (row a, column b) in plane 6a + b, for the T_h rows of tiles
    from row t0 on (all of them, or a band of a large image). Pixels outside x (the padding
    ph, pw, and past the last tile) are zeros.

    For each row of tiles, the pass down the height reads the six rows of x it covers (whole
    rows, W*D numbers: long loops) into wide (6, 4T_h + 2, T_w*D), used as scratch: row a of
    the tiles in wide[a]'s first (4T_w + 2)*D numbers, the padding's columns zero. Then, one a
    at a time, column j of every tile is gathered into a row of T_w*D numbers and the pass
    along the width writes out's planes (the gathered rows are a small array of the pass's own,
    which ran faster than any view of a caller's scratch).
    """
    c, h, wd, d = x.shape
    zero, two, four = x.dtype.type(0), x.dtype.type(2), x.dtype.type(4)
    span = tw * d
    width = (4 * tw + 2) * d                    # a row of tiles' columns, padding included
    inner = min(wd, 4 * tw + 2 - pw) * d        # x's numbers in it, from column pw on
    left = pw * d
    flat = x.reshape(c, h, wd * d)
    tall = wide.reshape(6, wide.shape[1] * wide.shape[2])
    g = np.empty((6, span), x.dtype)            # its own: LLVM then knows it aliases nothing
    none = np.zeros(wd * d, x.dtype)            # a row above or below x
    for a in range(6):                          # the padding's columns: zero once
        for z in range(left):
            tall[a, z] = zero
        for z in range(left + inner, width):
            tall[a, z] = zero
    for n in range(c):
        for ti in range(th):
            r = 4 * (t0 + ti) - ph
            x0 = flat[n, r] if 0 <= r < h else none
            x1 = flat[n, r + 1] if 0 <= r + 1 < h else none
            x2 = flat[n, r + 2] if 0 <= r + 2 < h else none
            x3 = flat[n, r + 3] if 0 <= r + 3 < h else none
            x4 = flat[n, r + 4] if 0 <= r + 4 < h else none
            x5 = flat[n, r + 5] if 0 <= r + 5 < h else none
            h0, h1, h2 = tall[0, left:], tall[1, left:], tall[2, left:]
            h3, h4, h5 = tall[3, left:], tall[4, left:], tall[5, left:]
            for z in range(inner):              # B^T down the height: rows 4t .. 4t + 5
                d0, d1, d2, d3, d4, d5 = x0[z], x1[z], x2[z], x3[z], x4[z], x5[z]
                s_ = d4 - four * d2
                p = d3 - four * d1
                u = d4 - d2
                v = (d3 - d1) * two
                h0[z] = (d0 - d2) * four + u
                h1[z] = s_ + p
                h2[z] = s_ - p
                h3[z] = u + v
                h4[z] = u - v
                h5[z] = (d5 - d3) - v * two
            base = (n * th + ti) * span
            for a in range(6):                  # B^T along the width: columns 4t .. 4t + 5
                for j in range(6):
                    gj = g[j]
                    for si in range(tw):
                        src = (4 * si + j) * d
                        for ch in range(d):
                            gj[si * d + ch] = tall[a, src + ch]
                g0, g1, g2, g3, g4, g5 = g[0], g[1], g[2], g[3], g[4], g[5]
                o0, o1 = out[6 * a, base:base + span], out[6 * a + 1, base:base + span]
                o2, o3 = out[6 * a + 2, base:base + span], out[6 * a + 3, base:base + span]
                o4, o5 = out[6 * a + 4, base:base + span], out[6 * a + 5, base:base + span]
                for e in range(span):
                    d0, d1, d2, d3, d4, d5 = g0[e], g1[e], g2[e], g3[e], g4[e], g5[e]
                    s_ = d4 - four * d2
                    p = d3 - four * d1
                    u = d4 - d2
                    v = (d3 - d1) * two
                    o0[e] = (d0 - d2) * four + u
                    o1[e] = s_ + p
                    o2[e] = s_ - p
                    o3[e] = u + v
                    o4[e] = u - v
                    o5[e] = (d5 - d3) - v * two


def winograd44_output(m, first, th, tw, out, bias, use_bias, relu, skip, use_skip):
    """m (36, >= c*T_h*T_w*K) -> out (c, H', W', K): y = A^T m A of each tile [+ b][+ skip]
    [ReLU], rows and columns past H', W' dropped; m holds the T_h rows of tiles from row
    `first` on. skip (c, H', W', K): a residual sum's other terms, read with use_skip.

    The pass down the height writes a row of tiles into tall (4, 6, T_w*K); the pass along the
    width one output row into wide (4, T_w*K), its column 4t + s at [s, t*K:(t + 1)*K]; the
    bias, skip and ReLU are applied as that row is copied into out. Both are arrays of the
    pass's own, not the caller's scratch: LLVM then knows they alias nothing, and the loops ran
    faster than on arrays passed in.
    """
    c, ho, wo, k = out.shape
    zero, two = out.dtype.type(0), out.dtype.type(2)
    four, eight = out.dtype.type(4), out.dtype.type(8)
    span = tw * k
    tall = np.empty((4, 6, span), out.dtype)      # the pass's own: see above
    wide = np.empty((4, span), out.dtype)
    for n in range(c):
        for ti in range(th):
            r = 4 * (first + ti)
            rows = min(4, ho - r)
            base = (n * th + ti) * span
            for b in range(6):                  # A^T down the height
                m0, m1 = m[b, base:base + span], m[6 + b, base:base + span]
                m2, m3 = m[12 + b, base:base + span], m[18 + b, base:base + span]
                m4, m5 = m[24 + b, base:base + span], m[30 + b, base:base + span]
                h0, h1, h2, h3 = tall[0, b], tall[1, b], tall[2, b], tall[3, b]
                for e in range(span):
                    a_ = m1[e] + m2[e]
                    b_ = m1[e] - m2[e]
                    cc = m3[e] + m4[e]
                    f = m3[e] - m4[e]
                    h0[e] = (m0[e] + a_) + cc
                    h1[e] = f * two + b_
                    h2[e] = cc * four + a_
                    h3[e] = (f * eight + b_) + m5[e]
            for p in range(rows):               # A^T along the width, one output row
                t0, t1, t2 = tall[p, 0], tall[p, 1], tall[p, 2]
                t3, t4, t5 = tall[p, 3], tall[p, 4], tall[p, 5]
                y0, y1, y2, y3 = wide[0], wide[1], wide[2], wide[3]
                for e in range(span):
                    a_ = t1[e] + t2[e]
                    b_ = t1[e] - t2[e]
                    cc = t3[e] + t4[e]
                    f = t3[e] - t4[e]
                    y0[e] = (t0[e] + a_) + cc
                    y1[e] = f * two + b_
                    y2[e] = cc * four + a_
                    y3[e] = (f * eight + b_) + t5[e]
                o = out[n, r + p]
                for tj in range(tw):
                    for s in range(min(4, wo - 4 * tj)):
                        col = 4 * tj + s
                        src, dst = wide[s, tj * k:tj * k + k], o[col]
                        for ch in range(k):
                            v = src[ch]
                            if use_bias:
                                v += bias[ch]
                            if use_skip:
                                v += skip[n, r + p, col, ch]
                            if relu:            # as np.maximum: a NaN stays NaN
                                v = zero if v < zero else v
                            dst[ch] = v


def winograd44_output_pool(m, first, th, tw, out, bias, use_bias, relu, tall, wide):
    """m (36, >= c*T_h*T_w*K) -> out (c, P_h, P_w, K): `winograd44_output`'s rows [+ b][ReLU],
    then the max of each 2x2 window at stride 2 (P_h = H' // 2, P_w = W' // 2), without writing
    the rows: inference's CONV -> RELU -> MAXPOOL(2x2); m: T_h rows of tiles from row `first`
    on. The same sums as `winograd44_output` and the comparisons of `max_pool` in its order, so
    the result is the two kernels' bit for bit. tall (4, 6, T_w*K) as there; wide (2, 4, T_w*K):
    a window's two output rows."""
    c, ph, pw, k = out.shape
    zero, two = out.dtype.type(0), out.dtype.type(2)
    four, eight = out.dtype.type(4), out.dtype.type(8)
    span = tw * k
    for n in range(c):
        for ti in range(th):
            if 2 * (first + ti) >= ph:
                break
            base = (n * th + ti) * span
            for b in range(6):                  # A^T down the height
                m0, m1 = m[b, base:base + span], m[6 + b, base:base + span]
                m2, m3 = m[12 + b, base:base + span], m[18 + b, base:base + span]
                m4, m5 = m[24 + b, base:base + span], m[30 + b, base:base + span]
                h0, h1, h2, h3 = tall[0, b], tall[1, b], tall[2, b], tall[3, b]
                for e in range(span):
                    a_ = m1[e] + m2[e]
                    b_ = m1[e] - m2[e]
                    cc = m3[e] + m4[e]
                    f = m3[e] - m4[e]
                    h0[e] = (m0[e] + a_) + cc
                    h1[e] = f * two + b_
                    h2[e] = cc * four + a_
                    h3[e] = (f * eight + b_) + m5[e]
            for half in range(2):
                if 2 * (first + ti) + half >= ph:
                    break
                for a in range(2):              # A^T along the width: rows 2 half + a
                    p = 2 * half + a
                    t0, t1, t2 = tall[p, 0], tall[p, 1], tall[p, 2]
                    t3, t4, t5 = tall[p, 3], tall[p, 4], tall[p, 5]
                    y0, y1, y2, y3 = wide[a, 0], wide[a, 1], wide[a, 2], wide[a, 3]
                    for e in range(span):
                        a_ = t1[e] + t2[e]
                        b_ = t1[e] - t2[e]
                        cc = t3[e] + t4[e]
                        f = t3[e] - t4[e]
                        y0[e] = (t0[e] + a_) + cc
                        y1[e] = f * two + b_
                        y2[e] = cc * four + a_
                        y3[e] = (f * eight + b_) + t5[e]
                o_row = out[n, 2 * (first + ti) + half]
                for tj in range(tw):
                    for side in range(2):
                        j = 2 * tj + side
                        if j >= pw:
                            break
                        o = o_row[j]
                        lo = tj * k
                        for ch in range(k):
                            best = zero
                            for a in range(2):
                                for bb in range(2):
                                    v = wide[a, 2 * side + bb, lo + ch]
                                    if use_bias:
                                        v += bias[ch]
                                    if relu:    # as np.maximum: a NaN stays NaN
                                        v = zero if v < zero else v
                                    if (a == 0 and bb == 0) or v > best or v != v:
                                        best = v    # as max_pool: the first, then any larger
                            o[ch] = best


def winograd44_adjoint(x, out):
    """x (c, H, W, D) -> out (36, c, T, S, D): A x A^T of each 4 x 4 tile (zeros past H and W),
    `winograd44_output` transposed (training's dw): X0..X5 of F(4, 3)'s adjoint down the
    height, then along the width. out's layout is the planes' of `winograd44_input`."""
    c, hh, ww, d = x.shape
    t, s = out.shape[2], out.shape[3]
    sd = s * d
    zero, two, four = x.dtype.type(0), x.dtype.type(2), x.dtype.type(4)
    flat = x.reshape(c, hh, ww * d)
    o = out.reshape(36, c, t, sd)
    h = np.empty((6, ww * d), x.dtype)          # a tile row's adjoint down the height
    g = np.zeros((4, sd), x.dtype)              # one of its rows, column j of every tile
    for n in range(c):
        for ti in range(t):
            r = 4 * ti
            for z in range(ww * d):
                x0 = flat[n, r, z]
                x1 = flat[n, r + 1, z] if r + 1 < hh else zero
                x2 = flat[n, r + 2, z] if r + 2 < hh else zero
                x3 = flat[n, r + 3, z] if r + 3 < hh else zero
                e = x0 + x2
                od = x1 + x3
                f = x2 * four + x0
                gg = (x3 * four + x1) * two
                h[0, z] = x0
                h[1, z] = e + od
                h[2, z] = e - od
                h[3, z] = f + gg
                h[4, z] = f - gg
                h[5, z] = x3
            for a in range(6):
                for si in range(s):
                    for j in range(min(4, ww - 4 * si)):    # columns past W stay zero
                        src = (4 * si + j) * d
                        for ch in range(d):
                            g[j, si * d + ch] = h[a, src + ch]
                for z in range(sd):
                    x0, x1, x2, x3 = g[0, z], g[1, z], g[2, z], g[3, z]
                    e = x0 + x2
                    od = x1 + x3
                    f = x2 * four + x0
                    gg = (x3 * four + x1) * two
                    o[6 * a, n, ti, z] = x0
                    o[6 * a + 1, n, ti, z] = e + od
                    o[6 * a + 2, n, ti, z] = e - od
                    o[6 * a + 3, n, ti, z] = f + gg
                    o[6 * a + 4, n, ti, z] = f - gg
                    o[6 * a + 5, n, ti, z] = x3


# Winograd for a 3 x 3 filter at stride 2 (`conv.winograd_s2` documents the arithmetic): 81
# products for a 4 x 4 output tile from a 9 x 9 input window, windows 8 apart. The passes are
# laid out as F(4x4, 3x3)'s: down the height over whole rows, then along the width over rows of
# T_w * D (or K) numbers, each window's column j gathered into a row of its own first.

def winograd_s2_input(x, ph, pw, h_in, w_in, th, tw, out):
    """x (c, H, W, D), C-contiguous -> out (81, >= c*T_h*T_w*D): B^T d B of each tile's 9 x 9
    window (rows and columns 8t - P .. 8t - P + 8 of x), entry 9a + b in plane 9a + b; pixels
    outside x's first h_in rows and w_in columns (the padding ph, pw, rows a cropping leaves
    out, and past the last window) are zeros."""
    c, rows_x, wd, d = x.shape
    h = h_in                                    # rows from h_in on read as zeros
    two, three = x.dtype.type(2), x.dtype.type(3)
    span = tw * d
    width = (8 * tw + 1) * d                    # a row of windows' columns, padding included
    inner = max(0, min(w_in, 8 * tw + 1 - pw)) * d
    left = pw * d
    flat = x.reshape(c, rows_x, wd * d)
    tall = np.zeros((9, width), x.dtype)        # the padding's columns stay zero
    g = np.empty((9, span), x.dtype)
    none = np.zeros(wd * d, x.dtype)
    for n in range(c):
        for ti in range(th):
            r = 8 * ti - ph
            s0 = flat[n, r] if 0 <= r < h else none
            s1 = flat[n, r + 1] if 0 <= r + 1 < h else none
            s2 = flat[n, r + 2] if 0 <= r + 2 < h else none
            s3 = flat[n, r + 3] if 0 <= r + 3 < h else none
            s4 = flat[n, r + 4] if 0 <= r + 4 < h else none
            s5 = flat[n, r + 5] if 0 <= r + 5 < h else none
            s6 = flat[n, r + 6] if 0 <= r + 6 < h else none
            s7 = flat[n, r + 7] if 0 <= r + 7 < h else none
            s8 = flat[n, r + 8] if 0 <= r + 8 < h else none
            h0, h1, h2 = tall[0, left:], tall[1, left:], tall[2, left:]
            h3, h4, h5 = tall[3, left:], tall[4, left:], tall[5, left:]
            h6, h7, h8 = tall[6, left:], tall[7, left:], tall[8, left:]
            for z in range(inner):              # B^T down the height
                e2, e4, e6 = s2[z], s4[z], s6[z]
                h0[z] = s1[z]
                h1[z] = s3[z]
                h2[z] = s5[z]
                h3[z] = s7[z]
                h4[z] = ((s0[z] * two - e2) - e4 * two) + e6
                h5[z] = (e2 * two + e4) - e6
                h6[z] = (e4 * three - e2 * two) - e6
                h7[z] = e6 - e2
                h8[z] = ((e2 * two - e4) - e6 * two) + s8[z]
            base = (n * th + ti) * span
            for a in range(9):                  # B^T along the width
                for j in range(9):
                    gj = g[j]
                    for si in range(tw):
                        src = (8 * si + j) * d
                        for ch in range(d):
                            gj[si * d + ch] = tall[a, src + ch]
                g0, g1, g2, g3, g4 = g[0], g[1], g[2], g[3], g[4]
                g5, g6, g7, g8 = g[5], g[6], g[7], g[8]
                o0, o1 = out[9 * a, base:base + span], out[9 * a + 1, base:base + span]
                o2, o3 = out[9 * a + 2, base:base + span], out[9 * a + 3, base:base + span]
                o4, o5 = out[9 * a + 4, base:base + span], out[9 * a + 5, base:base + span]
                o6, o7 = out[9 * a + 6, base:base + span], out[9 * a + 7, base:base + span]
                o8 = out[9 * a + 8, base:base + span]
                for e in range(span):
                    e2, e4, e6 = g2[e], g4[e], g6[e]
                    o0[e] = g1[e]
                    o1[e] = g3[e]
                    o2[e] = g5[e]
                    o3[e] = g7[e]
                    o4[e] = ((g0[e] * two - e2) - e4 * two) + e6
                    o5[e] = (e2 * two + e4) - e6
                    o6[e] = (e4 * three - e2 * two) - e6
                    o7[e] = e6 - e2
                    o8[e] = ((e2 * two - e4) - e6 * two) + g8[e]


def winograd_s2_output(m, th, tw, out, bias, relu):
    """m (81, >= c*T_h*T_w*K) -> out (c, H', W', K): y = A^T m A of each tile + b [ReLU], rows
    and columns past H', W' dropped. As `winograd44_output`: down the height into tall
    (4, 9, T_w*K), along the width one output row at a time into wide (4, T_w*K)."""
    c, ho, wo, k = out.shape
    zero, two = out.dtype.type(0), out.dtype.type(2)
    four, eight = out.dtype.type(4), out.dtype.type(8)
    span = tw * k
    tall = np.empty((4, 9, span), out.dtype)
    wide = np.empty((4, span), out.dtype)
    for n in range(c):
        for ti in range(th):
            r = 4 * ti
            rows = min(4, ho - r)
            base = (n * th + ti) * span
            for b in range(9):                  # A^T down the height
                m0, m1 = m[b, base:base + span], m[9 + b, base:base + span]
                m2, m3 = m[18 + b, base:base + span], m[27 + b, base:base + span]
                m4, m5 = m[36 + b, base:base + span], m[45 + b, base:base + span]
                m6, m7 = m[54 + b, base:base + span], m[63 + b, base:base + span]
                m8 = m[72 + b, base:base + span]
                y0, y1, y2, y3 = tall[0, b], tall[1, b], tall[2, b], tall[3, b]
                for e in range(span):
                    p = m5[e] + m6[e]
                    q = m5[e] - m6[e]
                    v = m7[e]
                    y0[e] = m0[e] + ((m4[e] + p) + v)
                    y1[e] = m1[e] + (q + v * two)
                    y2[e] = m2[e] + (p + v * four)
                    y3[e] = m3[e] + ((q + v * eight) + m8[e])
            for pr in range(rows):              # A^T along the width, one output row
                t0, t1, t2 = tall[pr, 0], tall[pr, 1], tall[pr, 2]
                t3, t4, t5 = tall[pr, 3], tall[pr, 4], tall[pr, 5]
                t6, t7, t8 = tall[pr, 6], tall[pr, 7], tall[pr, 8]
                w0, w1, w2, w3 = wide[0], wide[1], wide[2], wide[3]
                for e in range(span):
                    p = t5[e] + t6[e]
                    q = t5[e] - t6[e]
                    v = t7[e]
                    w0[e] = t0[e] + ((t4[e] + p) + v)
                    w1[e] = t1[e] + (q + v * two)
                    w2[e] = t2[e] + (p + v * four)
                    w3[e] = t3[e] + ((q + v * eight) + t8[e])
                o = out[n, r + pr]
                for tj in range(tw):
                    for s in range(min(4, wo - 4 * tj)):
                        src, dst = wide[s, tj * k:tj * k + k], o[4 * tj + s]
                        for ch in range(k):
                            val = src[ch] + bias[ch]
                            if relu:            # as np.maximum: a NaN stays NaN
                                val = zero if val < zero else val
                            dst[ch] = val
