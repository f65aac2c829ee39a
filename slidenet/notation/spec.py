"""What one layer of a pattern says, after parsing and before any shapes are known.

`slidenet.notation.pattern.parse` turns ``"INPUT(32x32x3) -> CONV(10, 5x5) -> FC(10)"`` into a list of
`LayerSpec`; `slidenet.notation.shapes.infer` adds the shapes; `slidenet.net.Net` builds the layers.
Each kind's arguments are read by its own module in `slidenet.layers` (its grammar), with the
defaults applied, so ``CONV(K)`` already says 3x3, stride 1, padding 1: ``spec.size == (3, 3)``.
"""
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class LayerSpec:
    kind: str           # the kind's name as registered, e.g. "CONV" (aliases such as POOL resolved)
    text: str           # the layer as written, e.g. "CONV(32, 5x5, s=2)"
    column: int         # 0-based column of `text` in the pattern
    args: tuple = ()    # (name, value) pairs of the kind's arguments, e.g. (("filters", 32), ...)
    given: frozenset = frozenset()  # the arguments the pattern wrote; the others are defaults
    branches: tuple = ()  # a merge (ADD, CONCAT): one tuple of LayerSpecs per branch

    def __post_init__(self):
        # spec.size, spec.stride, ...: the kind's arguments read as attributes, kept in the
        # instance's own dict (shape inference and building a net read them thousands of times).
        for key, value in self.args:
            object.__setattr__(self, key, value)

    def __getattr__(self, name):
        # Only for a name that is neither a field nor an argument.
        raise AttributeError(f"{self.kind} has no argument {name!r}")

    @cached_property
    def type(self):
        """The layer class registered for this kind (see `slidenet.layers.registry`)."""
        from slidenet.layers.registry import lookup
        return lookup(self.kind)
