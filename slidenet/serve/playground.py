"""The pattern playground: a pattern typed in the page, summarised as `slidenet summary --json`.

    summary(b"INPUT(28x28x1) -> CONV(8) -> POOL -> FC(10)")      # summary.summarize's dict
    summary(b"INPUT(7x7x1) -> CONV(1, 3x3, s=3, p=0) -> FC(2)")  # PatternError, with its column

The page sends every keystroke's pattern, so what it may send is bounded: at most MAX_PATTERN
bytes of UTF-8 (the web app refuses more before reading it), brackets nested at most
`limits.MAX_DEPTH` deep and nets of at most `limits.MAX_LAYERS` layers (the parser's own
limits, which it checks before recursing or expanding). No web server is needed in here.
"""
from slidenet.errors import SlidenetError
from slidenet.notation.pattern import parse_sets
from slidenet.notation.summary import summarize
from slidenet.storage.limits import MAX_PATTERN, MAX_SETS

SECTIONS = (("playground", "Write a net"), ("slide", "Slide a filter"))


def summary(body, sets=(), skip_optional=False):
    """What `slidenet summary --json PATTERN [--set ...] [--skip-optional]` prints, as a dict.

    body: the pattern as UTF-8 bytes; sets: "N=2" strings. Raises PatternError (its `column`
    points at the fault) or SlidenetError for anything that is not a net.
    """
    if len(body) > MAX_PATTERN:
        raise SlidenetError(f"the pattern is {len(body):,} bytes; at most {MAX_PATTERN:,} are "
                            "read")
    if len(sets) > MAX_SETS:
        raise SlidenetError(f"{len(sets)} --set bindings; at most {MAX_SETS} are read")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SlidenetError(f"the pattern is not UTF-8 text (byte {err.start})") from None
    return summarize(text, parse_sets(list(sets)), skip_optional)
