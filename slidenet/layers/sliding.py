"""What CONV, DWCONV, MAXPOOL and AVGPOOL share: padding per side, the rule for windows that do
not tile, and the shape rule that slides their window.

Written in a pattern:

    p=P, p=PhxPw            the same zero padding on both sides of an axis (as always)
    p=same, p=valid         'same': TensorFlow's rule, ceil(N / S) windows, the padding split
                            evenly with any odd one after (at stride 1 with an odd filter, the
                            lecture's (F - 1) / 2 on both sides); 'valid': none
    p=B:A, p=Bh:AhxBw:Aw    B before (top, left) and A after (bottom, right); an axis may
                            keep one number for both sides: p=0:1x1
    round=down, round=up    windows that do not tile: leave out the last rows (PyTorch's
                            default) or add a last window past the edge (PyTorch's ceil_mode)

Without round= or p=same, a stride that does not tile is the lecture's teaching error.
`geometry.fit` holds the arithmetic; `ops.sides` pads or crops an input to what the rule says.
"""
from typing import NamedTuple, Tuple

from slidenet import geometry
from slidenet.layers.base import slide as _slide_checked
from slidenet.notation import arguments

ROUNDS = {"down": "down", "floor": "down", "up": "up", "ceil": "up"}


class Sides(NamedTuple):
    """How a window slides over one input: its output size and the padding on each side."""
    out: Tuple[int, int]            # (H', W')
    before: Tuple[int, int]         # zero (or -inf) rows on top, columns on the left
    after: Tuple[int, int]          # rows at the bottom, columns on the right; negative: cropped
    formulas: Tuple[str, str]       # the height's and width's formulas with their values

    @property
    def even(self):
        """Both sides alike: the convolution and pooling pairs pad it themselves."""
        return self.before == self.after


def read_padding(value, size, stride):
    """A p= argument -> {"pad": before, "pad_after": after, "same": bool} per axis."""
    if value is not None and ":" in value.text:
        parts = arguments._AXES.split(value.text)
        if len(parts) not in (1, 2):
            raise value.error(f"padding {value.text!r} should be B:A (before:after) for both "
                              "axes, or Bh:AhxBw:Aw")
        before, after, offset = [], [], 0
        for part in parts:
            offset = value.text.find(part, offset)
            pieces = part.split(":") if ":" in part else [part, part]
            if len(pieces) != 2:
                raise value.error(f"padding {part!r} should be B:A, e.g. 0:1 (none before, "
                                  "one after)")
            numbers = [arguments.whole(arguments.Value(piece.strip(), value.column + offset,
                                                       value.pattern), "padding", minimum=0)
                       for piece in pieces]
            before.append(numbers[0])
            after.append(numbers[1])
            offset += len(part)
        if len(parts) == 1:
            before, after = before * 2, after * 2
        return {"pad": tuple(before), "pad_after": tuple(after), "same": False}
    pad = arguments.padding(value, size, stride)
    same = value is not None and value.text.lower() == "same"
    return {"pad": pad, "pad_after": pad, "same": same}


def read_round(value):
    """A round= argument -> "exact" (not given), "down" or "up"."""
    if value is None:
        return "exact"
    rule = ROUNDS.get(value.text.lower())
    if rule is None:
        raise value.error(f"round={value.text} should be round=down (PyTorch's default: the "
                          "last rows no window reaches are left out) or round=up (ceil_mode: "
                          "a last window reaches past the edge)")
    return rule


def sides(spec, input_shape, can_pad=True):
    """The Sides of `spec` (a CONV or pooling LayerSpec) over an input (H, W, D); raises
    GeometryError (the lecture's teaching error) when the windows do not tile and the
    pattern asked for no rule."""
    out, before, after, formulas = [], [], [], []
    for axis, what in enumerate(("height", "width")):
        n, f, s = input_shape[axis], spec.size[axis], spec.stride[axis]
        if spec.same:
            b, a = geometry.same_sides(n, f, s)
            # Even sides tile by construction (the lecture's line then shows); uneven ones
            # are TensorFlow's, whose last window ends on the edge.
            rule = "exact" if n + b + a >= f and (n + b + a - f) % s == 0 else "down"
        else:
            b, a, rule = spec.pad[axis], spec.pad_after[axis], spec.round
        size, b, used = geometry.fit(n, f, s, b, a, rule, what, can_pad)
        if rule == "exact" and b == a:
            formula = geometry.describe(n, f, s, b)     # the lecture's own line, unchanged
        else:
            formula = f"{geometry.sides_formula(n, f, s, b, a, rule)} = {size}"
        out.append(size)
        before.append(b)
        after.append(used)
        formulas.append(formula)
    return Sides(tuple(out), tuple(before), tuple(after), tuple(formulas))


def slide(spec, window, walk, can_pad=True):
    """`base.slide` for a layer whose padding may differ per side or whose windows may be
    rounded: (H', W', D, size formulas, field, jump)."""
    if len(walk.shape) == 1 or (spec.pad == spec.pad_after and spec.round == "exact"
                                and not spec.same):
        return _slide_checked(spec, window, walk, can_pad)
    resolved = sides(spec, walk.shape, can_pad)
    field = tuple(r + (f - 1) * j for r, f, j in zip(walk.field, window.size, walk.jump))
    jump = tuple(j * s for j, s in zip(walk.jump, window.stride))
    return (*resolved.out, walk.shape[2], resolved.formulas, field, jump)


def text(spec, before=None, after=None):
    """Padding as a pattern writes it: "1", "1x0", "0:1" or "0:1x1:0"."""
    before = spec.pad if before is None else before
    after = spec.pad_after if after is None else after
    axes = [str(b) if b == a else f"{b}:{a}" for b, a in zip(before, after)]
    return axes[0] if axes[0] == axes[1] else "x".join(axes)
