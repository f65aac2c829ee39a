"""Reading files safely: each damaged, foreign or missing file becomes a DataError naming it."""
import struct
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

from slidenet.errors import DataError

# What a damaged or foreign file raises while we read it; each becomes a DataError naming it.
# NotImplementedError: a zip member compressed by a method zipfile does not know.
_BAD_FILE = (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile, struct.error,
             NotImplementedError)


@contextmanager
def _reading(path, errors=_BAD_FILE):
    """Turn a damaged or foreign file's exceptions into one DataError that names it."""
    try:
        yield
    except errors as err:
        raise DataError(f"cannot read {path}: {err}") from None


def _required_arg(arg, spec, what):
    """The path after "kind:"; what: "directory" or "file"."""
    if not arg:
        kind = spec.partition(":")[0]
        placeholder = "DIR" if what == "directory" else "FILE"
        raise DataError(f"data set {kind} needs a {what}: {kind}:{placeholder}")
    return Path(arg).expanduser()


def _existing_dir(path):
    if not path.is_dir():
        raise DataError(f"no such directory: {path}")
    return path


def _existing_file(path):
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    return path
