"""The values written inside a layer's parentheses, read into numbers that a layer can use.

``CONV(10, 5x5, s=2, p=same)`` has four arguments; each is a `Value`: its text as written and
its column in the pattern, so every mistake becomes a `PatternError` whose caret points at it.
The readers here are what every layer kind's grammar is made of (`slidenet.layers`):

    whole(v, "number of filters", minimum=1)        "10"    -> 10
    axes(v, "filter size", (1, 2), minimum=1)       "5x3"   -> (5, 3);  "5" -> (5, 5)
    padding(v, size, stride)                        "same"  -> (2, 2) for a 5x5 filter
    fraction(v, "dropout probability p", 0.5)       "0.25"  -> 0.25
"""
import re
from dataclasses import dataclass

from slidenet.errors import GeometryError, PatternError
from slidenet.geometry import same_padding
from slidenet.storage.limits import MAX_NUMBER


# ASCII only: \d and str.isdigit accept digits int() and float() would then choke on.
WHOLE = re.compile(r"[0-9]+")
DECIMAL = re.compile(r"[0-9]*\.?[0-9]+|[0-9]+\.")
# "5x5", "5 X 5" and the lecture's own "5 × 5".
_AXES = re.compile(r"\s*[xX\u00d7]\s*")


@dataclass(frozen=True)
class Value:
    """One argument or count as written, and where it sits in the pattern."""
    text: str
    column: int
    pattern: str

    def error(self, message):
        return PatternError(message, self.pattern, self.column)


def whole(value, what, minimum):
    """A whole number from `minimum` to MAX_NUMBER, or a PatternError saying what is wrong."""
    text = value.text
    if WHOLE.fullmatch(text):
        if len(text.lstrip("0")) > 6 or int(text) > MAX_NUMBER:
            raise value.error(f"{what} {text} is too large (at most {MAX_NUMBER:,})")
        if int(text) < minimum:
            raise value.error(f"{what} must be at least {minimum}, got {text}")
        return int(text)
    if text.startswith("-") and WHOLE.fullmatch(text[1:]):
        raise value.error(f"{what} must be at least {minimum}, got {text}")
    if DECIMAL.fullmatch(text.lstrip("-")):
        raise value.error(f"{what} must be a whole number, got {text}")
    raise value.error(f"{what} must be a whole number, got {text!r}")


def axes(value, what, counts, minimum, default=None, hint="F or FhxFw"):
    """``"3"`` -> (3, 3), ``"3x1"`` -> (3, 1), ``"32x32x3"`` -> (32, 32, 3) when counts is (3,).

    counts: how many numbers may be written; one number stands for both axes. None (the
    argument was not given) returns `default`.
    """
    if value is None:
        return default
    parts = _AXES.split(value.text)
    if len(parts) not in counts:
        raise value.error(f"{what} {value.text!r} should be {hint}")
    numbers, offset = [], 0
    for part in parts:
        offset = value.text.find(part, offset)
        numbers.append(whole(Value(part, value.column + offset, value.pattern), what, minimum))
        offset += len(part)
    return tuple(numbers * 2) if len(numbers) == 1 else tuple(numbers)


def padding(value, size, stride):
    """Zero padding per axis (P_h, P_w) for a window of `size` at `stride`.

    Not given: (F - 1) / 2 along an axis with odd F and stride 1, which keeps the size (the
    lecture's usual choice); 0 otherwise, so that the lecture's 7x7 input with a 3x3 filter at
    stride 3 is (7 - 3) / 3 + 1 and fails as the lecture says it does. ``same`` is (F - 1) / 2
    (odd F only), ``valid`` is 0, numbers are taken as written.
    """
    if value is None:
        return tuple((f - 1) // 2 if f % 2 and s == 1 else 0 for f, s in zip(size, stride))
    word = value.text.lower()
    if word == "valid":
        return (0, 0)
    if word == "same":
        try:
            return tuple(same_padding(f) for f in size)
        except GeometryError as err:
            raise value.error(str(err)) from None
    return axes(value, "padding", (1, 2), minimum=0, hint="P, PhxPw, same or valid")


def fraction(value, what, default):
    """A number in [0, 1), such as a dropout probability; `default` when not given."""
    if value is None:
        return default
    number = float(value.text) if DECIMAL.fullmatch(value.text) else None
    if number is None or not 0 <= number < 1:
        raise value.error(f"{what} must be a number from 0 up to (not including) 1, "
                          f"got {value.text!r}")
    return number


def yes_no(value, what, default):
    """``yes``/``no`` (or true/false) -> bool; `default` when not given."""
    if value is None:
        return default
    word = value.text.lower()
    if word in ("yes", "true"):
        return True
    if word in ("no", "false"):
        return False
    raise value.error(f"{what}={value.text} should be {what}=no or {what}=yes")
