"""User-facing errors.

Every mistake a user can make (a pattern that does not parse, a geometry that does not fit, a
missing file) raises a subclass of `SlidenetError`. The CLI turns these into one clear message and
exit status 2; anything else is a bug and keeps its traceback.
"""


class SlidenetError(Exception):
    """A mistake in the user's input, explained in words."""


class PatternError(SlidenetError):
    """A pattern that does not parse or build, pointing at the offending column.

    `str(err)` is the message, then the pattern, then a caret under `column` (0-based).
    """

    def __init__(self, message, pattern=None, column=None):
        self.message = message
        self.pattern = pattern
        self.column = column
        super().__init__(self._render())

    def _render(self):
        if self.pattern is None or self.column is None:
            return self.message
        col = max(0, min(self.column, len(self.pattern)))
        return f"{self.message}\n  {self.pattern}\n  {' ' * col}^"


class GeometryError(SlidenetError):
    """A filter, stride and padding that do not tile the input (see `slidenet.geometry`)."""


class DataError(SlidenetError):
    """A data set or image that is missing, malformed or does not fit the net."""


class ModelFileError(SlidenetError):
    """A model file that is missing, damaged, or not a slidenet model."""


class FileWriteError(SlidenetError):
    """A file slidenet could not write (full disk, no permission, a folder in the way); the
    previous file at that path, if any, is left exactly as it was."""


class OutOfMemory(SlidenetError):
    """A forward or backward pass that needed more memory than the machine could give.

    layer: the layer's name and text ("conv2 (CONV(32))"); batch: images in the failing batch;
    direction: "forward" or "backward"; advice: the fix, which a command words with its own
    flags (`advise`), else a smaller batch in general terms.
    """

    def __init__(self, layer, batch, direction, advice=None):
        self.layer, self.batch, self.direction = layer, batch, direction
        if batch <= 1:
            advice = "even one image does not fit; free some memory or use a smaller net"
        elif advice is None:
            advice = f"free some memory, or use smaller batches (e.g. {batch // 2})"
        super().__init__(f"out of memory in {layer} on the {direction} pass of a batch of "
                         f"{batch} image{'s' if batch != 1 else ''}: {advice}")

    def advise(self, advice):
        """The same error with `advice` as its fix."""
        return OutOfMemory(self.layer, self.batch, self.direction, advice)
