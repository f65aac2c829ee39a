"""The input budget and every cap: how much a file, a pattern or a request may claim before
slidenet allocates anything for it.

Every format slidenet reads says up front how big its contents are: an `.npy` header its shape
and dtype, a zip member its uncompressed size, an IDX header its dimensions, a pickled array its
shape, an image its width and height. A damaged or hostile file can claim terabytes in a few
bytes. Each reader works out the claimed size first and calls `check_claim`, which refuses a claim
above the budget with the numbers, before a single byte is allocated.

The budget is half of this machine's physical memory unless the environment variable
SLIDENET_MAX_INPUT_BYTES says otherwise (a number of bytes, optionally with a K, M, G or T suffix
in powers of 1024) or `set_budget` is called. A file that is genuine but large can be read by
raising it.

The caps below are fixed: a claim beyond them is a typo, a damaged file or an attack, never a
CNN, whatever the memory. Each is checked by the module named beside it, and nowhere else.
"""
import math
import os
import re
import zipfile

import numpy as np

from slidenet.errors import DataError, SlidenetError

ENV = "SLIDENET_MAX_INPUT_BYTES"
SHARE = 0.5                 # of physical memory, by default
FALLBACK = 4 * 2**30        # when the OS does not say how much memory there is
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

_budget = None              # set by set_budget; None: the environment or the default

# The notation (`notation.arguments`, `notation.pattern`, `notation.shapes`).
MAX_NUMBER = 100_000            # largest filter count, window, stride, padding, output count or repeat
MAX_LAYERS = 1000               # largest expanded net, INPUT included
MAX_DEPTH = 32                  # deepest bracket nesting; deeper is a typo, and would exhaust recursion
MAX_PARAMS = 2_000_000_000      # beyond this a net is a typo, not an experiment
MAX_ACTIVATION = 1_000_000_000  # numbers in one layer's output for one image (4 GB at float32)
# Building a net (`net`): weights beyond this are refused with a message rather than a
# MemoryError halfway through initialisation (`summary` still describes such a net).
MAX_WEIGHT_BYTES = 4 * 2**30
# Files and requests.
MAX_PIXELS = 4096 * 4096        # one image (`data.images`), refused before it is decoded
MAX_ONNX_FILE_BYTES = 2**31 - 1  # one .onnx file (`interop.onnx_file`): protobuf's own limit
MAX_TENSOR_BYTES = MAX_WEIGHT_BYTES  # one ONNX tensor: more is a damaged file, not a CNN
MAX_UPLOAD = 10 * 2**20         # bytes of one image uploaded to `slidenet serve` (`serve.app`)
BIG_DECODE = 32 * 2**20         # an upload costing more to decode waits for the one big slot
MAX_WAITING = 4                 # ... and at most this many wait; the next is refused (503)
MAX_URL = 8 * 2**10             # bytes of a request's path and query (`serve.guard`): 414 beyond
MAX_HEAD = 2 * 2**20            # bytes of a request's head the HTTP layer (h11) reads
# A model file's meta (`storage.modelmeta`): JSON, untrusted once anyone recomputes the checksum.
MAX_META_DEPTH = 16             # a model's meta nests 4 deep (config -> variables); 16 is generous
MAX_META_TEXT = 100_000         # characters in the pattern, a class name or the data spec
MAX_CLASSES = 1_000_000         # class names in a model file


def physical_memory():
    """Bytes of RAM in this machine, or None where the OS does not say."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def default_budget():
    """SHARE of physical memory, or FALLBACK when that is unknown."""
    memory = physical_memory()
    return int(memory * SHARE) if memory else FALLBACK


def parse_bytes(text):
    """'1500000', '512M', '2G', '1.5 GiB' -> bytes; SlidenetError on anything else."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not found:
        raise SlidenetError(f"{ENV}={text!r} is not a size: give bytes, or a number with K, M, "
                            f"G or T (e.g. {ENV}=8G)")
    value = int(float(found.group(1)) * _UNITS[found.group(2).upper()])
    if value < 1:
        raise SlidenetError(f"{ENV}={text!r}: the budget must be at least one byte")
    return value


def budget():
    """The input budget in bytes: `set_budget`, else $SLIDENET_MAX_INPUT_BYTES, else the default."""
    if _budget is not None:
        return _budget
    text = os.environ.get(ENV, "").strip()
    return parse_bytes(text) if text else default_budget()


def set_budget(nbytes):
    """Set the budget (bytes, or None to go back to the environment or the default); returns the
    previous setting so a caller can restore it."""
    global _budget
    previous = _budget
    _budget = None if nbytes is None else int(nbytes)
    return previous


def human(nbytes):
    """1536 -> '1.5 KiB'."""
    value = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def check_claim(nbytes, what, error=DataError):
    """Refuse `what` (a phrase naming the file and the thing, e.g. "x.npz: member x.npy, a
    60000x28x28 uint8 array") if it claims more than the budget. Returns nbytes.

    Call it with the claimed size, before allocating: that is the point.
    """
    limit = budget()
    if nbytes > limit:
        raise error(f"{what} needs {human(nbytes)}, more than slidenet's input budget of "
                    f"{human(limit)}: the file is damaged, or it is genuine and needs "
                    f"{ENV}={math.ceil(nbytes / 2**30)}G (or more memory)")
    return nbytes


def array_bytes(shape, dtype):
    """Bytes of an array of `shape` and `dtype`, in exact integers (no overflow)."""
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise ValueError(f"shape {shape!r} is not a tuple of non-negative integers")
    return math.prod(shape) * np.dtype(dtype).itemsize


def _npy_header(member):
    """(shape, dtype, header bytes) of the `.npy` file open in `member`, reading only its header."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"unknown .npy format version {version}")
    return shape, dtype, member.tell()


def check_npz(path, error=DataError):
    """Check every claim of the `.npz` at `path` before numpy allocates anything for it.

    The zip's declared uncompressed sizes together must fit the budget (zipfile never returns
    more than a member declares, so this also bounds a zip bomb), and each `.npy` member's header
    must claim no more data than the member holds. Damage that stops the headers from being read
    raises what zipfile or numpy raise (ValueError, zipfile.BadZipFile, ...) for the caller to
    word; a claim too large raises `error`.
    """
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        check_claim(sum(info.file_size for info in members),
                    f"{path} ({len(members)} arrays unpacked)", error)
        for info in members:
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                try:
                    shape, dtype, header = _npy_header(member)
                except RecursionError:
                    raise ValueError(f"{info.filename}: its header nests too deeply") from None
            claimed = array_bytes(shape, dtype)
            if claimed > info.file_size - header:
                shape_text = "x".join(map(str, shape)) or "scalar"
                check_claim(claimed, f"{path}: {info.filename}, a {shape_text} {dtype} array",
                            error)
                raise error(f"{path} is damaged: {info.filename} claims a {shape_text} {dtype} "
                            f"array of {claimed:,} bytes but holds {info.file_size - header:,}")
