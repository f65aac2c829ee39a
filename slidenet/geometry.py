"""The one output-size formula of the lecture, and the words that explain it.

A filter of size F slid with stride S over an input of size N zero-padded by P on each side
fits ``(N + 2P - F) / S + 1`` times (pooling is the same with P = 0: ``(W - F) / S + 1``).
Kernels, shape inference, the summary and the error messages all use these functions, so the
number a user reads in an error is the number the kernel would have computed.
"""
from fractions import Fraction

from slidenet.errors import GeometryError


def formula(n, f, s, p=0):
    """The formula with the numbers filled in, without its result.

    >>> formula(7, 3, 3)
    '(7 - 3) / 3 + 1'
    >>> formula(32, 5, 1, 2)
    '(32 + 2*2 - 5) / 1 + 1'
    """
    inner = f"{n} - {f}" if p == 0 else f"{n} + 2*{p} - {f}"
    return f"({inner}) / {s} + 1"


def exact_size(n, f, s, p=0):
    """``(n + 2p - f) / s + 1`` as an exact Fraction (may be fractional or <= 0)."""
    return Fraction(n + 2 * p - f, s) + 1


def describe(n, f, s, p=0):
    """``'(7 - 3) / 3 + 1 = 2.33'``: the formula and its value, two decimals when fractional."""
    span = n + 2 * p - f
    if span % s == 0:       # whole: in integers (every layer of a net that fits comes here)
        shown = str(span // s + 1)
    else:
        shown = f"{float(exact_size(n, f, s, p)):.2f}"
    return f"{formula(n, f, s, p)} = {shown}"


def fitting_strides(n, f, p=0, limit=4):
    """Strides (up to `limit`, at most f) with which an f-filter tiles n + 2p exactly."""
    span = n + 2 * p - f
    if span < 0:
        return []
    return [s for s in range(1, max(1, min(f, limit)) + 1) if span % s == 0]


def fitting_pads(n, f, s, limit=None):
    """Smallest paddings (0..f-1) with which stride s tiles the padded input exactly."""
    limit = f - 1 if limit is None else limit
    return [p for p in range(0, limit + 1) if n + 2 * p - f >= 0 and (n + 2 * p - f) % s == 0]


def fitting_sizes(n, f, s, p=0, count=2):
    """The `count` window sizes closest to f with which stride s tiles n + 2p exactly."""
    span = n + 2 * p
    sizes = [g for g in range(1, span + 1) if g != f and (span - g) % s == 0]
    return sorted(sorted(sizes, key=lambda g: (abs(g - f), g))[:count])


def output_size(n, f, s, p=0, what="input", can_pad=True):
    """The whole number of filter positions along one axis, or a GeometryError that teaches.

    n: input size along the axis; f: filter (window) size; s: stride; p: zero padding per side.
    `what` names the axis in messages ("height", "width"); can_pad=False (pooling, which is
    never padded) keeps padding out of the suggested fixes.
    Returns ``(n + 2p - f) / s + 1`` when it is a positive whole number.
    """
    span = n + 2 * p - f
    if span >= 0 and span % s == 0:
        return span // s + 1            # it fits: the common case, in integers (kernels call this)
    if f > n + 2 * p:
        pad_hint = f"; padding p={(f - n + 1) // 2} or a filter of at most {n + 2 * p}" \
            if p == 0 and can_pad else f"; a window of at most {n + 2 * p}"
        raise GeometryError(
            f"the {f}-wide window is larger than the {what} ({n}"
            + (f" + 2*{p} padding = {n + 2 * p}" if p else "")
            + f"): {describe(n, f, s, p)} leaves no room to slide{pad_hint}")
    value = exact_size(n, f, s, p)
    if value.denominator != 1:
        raise GeometryError(
            f"stride {s} does not tile the {what}: {describe(n, f, s, p)} is not a whole number; "
            + suggest(n, f, s, p, can_pad))
    return int(value)


def suggest(n, f, s, p=0, can_pad=True):
    """A fix in words for a geometry that does not tile: other strides, or a padding (when the
    layer can be padded)."""
    hints = []
    strides = fitting_strides(n, f, p)
    if strides:
        listed = " or ".join(str(x) for x in strides)
        hints.append(f"stride {listed} tiles this input")
    sizes = fitting_sizes(n, f, s, p) if s > 1 else []
    if sizes:
        listed = " or ".join(str(g) for g in sizes)
        hints.append(f"a window of {listed} tiles it at stride {s}: {describe(n, sizes[0], s, p)}")
    pads = [q for q in fitting_pads(n, f, s) if q != p] if can_pad else []
    if pads:
        q = pads[0]
        hints.append(f"p={q} makes it {describe(n, f, s, q)}")
    return "; ".join(hints) if hints else "change the filter size, stride or padding"


def same_padding(f):
    """Padding that keeps the size at stride 1: (F - 1) / 2, defined for odd F only."""
    if f % 2 == 0:
        raise GeometryError(
            f"p=same needs an odd filter size: (F - 1) / 2 = ({f} - 1) / 2 = {(f - 1) / 2} "
            f"is not a whole number; use an odd filter such as {f + 1} or an explicit p=")
    return (f - 1) // 2


# ---- windows that do not tile: the rules a pattern may ask for --------------------------
#
# The lecture's rule is that (N + 2P - F) / S + 1 must be a whole number, and a pattern that
# says nothing keeps it. Real nets break it in three documented ways, each asked for by name:
#
#   round=down  PyTorch's default: floor((N + P_before + P_after - F) / S) + 1 windows; the
#               last rows or columns that no window reaches are left out (AlexNet's conv1).
#   round=up    PyTorch's ceil_mode: ceil(...) + 1 windows, the last one reaching past the
#               edge into extra padding, but never one that starts there (GoogLeNet's pools).
#   p=same      TensorFlow's 'same': ceil(N / S) windows, the padding that needs split as
#               evenly as possible, the odd one after (bottom or right).
#
# Each rule gives the padding actually used on each side; an "after" below the padding
# written means the input is cropped there, above it that extra zeros are added.

ROUNDING = ("exact", "down", "up")


def sides_formula(n, f, s, before, after, rule="exact"):
    """The size formula with per-side padding and its rounding, without its result.

    >>> sides_formula(7, 3, 2, 0, 1)
    '(7 + 0 + 1 - 3) / 2 + 1'
    >>> sides_formula(224, 11, 4, 2, 2, "down")
    'floor((224 + 2*2 - 11) / 4) + 1'
    """
    if before == after:
        inner = f"{n} - {f}" if before == 0 else f"{n} + 2*{before} - {f}"
    else:
        inner = f"{n} + {before} + {after} - {f}"
    core = f"({inner}) / {s}"
    if rule == "down":
        core = f"floor({core})"
    elif rule == "up":
        core = f"ceil({core})"
    return f"{core} + 1"


def fit(n, f, s, before, after, rule="exact", what="input", can_pad=True):
    """The number of windows along one axis and the padding they use: (out, before, after).

    n: input size; f: window; s: stride; before, after: zero padding written on each side;
    rule: "exact" (the lecture's: a GeometryError that teaches when the windows do not tile),
    "down" or "up" (see above). `after` in the result is the padding the windows reach: it is
    below the written one (negative: rows cropped) when rounding down leaves rows out, above it
    when rounding up adds a last window past the edge. Returns (out, before, after_used).
    """
    span = n + before + after - f
    if rule == "exact":
        if before == after:
            return output_size(n, f, s, before, what, can_pad), before, after
        if span >= 0 and span % s == 0:
            return span // s + 1, before, after
        value = Fraction(span, s) + 1
        shown = f"{float(value):.2f}" if value.denominator != 1 else str(value)
        raise GeometryError(
            f"the windows do not tile the {what}: {sides_formula(n, f, s, before, after)} = "
            f"{shown} is not a whole number; change the padding, or write round=down or "
            "round=up to leave out or add the last rows")
    if span < 0:
        raise GeometryError(
            f"the {f}-wide window is larger than the {what} with its padding "
            f"({n} + {before} + {after} = {n + before + after}): a window of at most "
            f"{n + before + after} fits")
    if rule == "down":
        out = span // s + 1
    else:
        out = -(-span // s) + 1
        # As PyTorch: the last window must start inside the input or its leading padding.
        if (out - 1) * s >= n + before:
            out -= 1
    return out, before, (out - 1) * s + f - n - before


def same_sides(n, f, s):
    """TensorFlow's 'same' padding along one axis: (before, after), with ceil(n / s) windows.

    >>> same_sides(32, 3, 2)
    (0, 1)
    >>> same_sides(7, 3, 1)
    (1, 1)
    """
    out = -(-n // s)
    total = max((out - 1) * s + f - n, 0)
    return total // 2, total - total // 2
