"""Model files: one uncompressed .npz that is checked on load and replaced atomically on save.

Inside the archive, next to the caller's arrays (``conv1.W``, ``normalizer.mean``, ...):

    __meta__      uint8 (n,): the meta dict as UTF-8 JSON
    __checksum__  0-d unicode: SHA-256 (hex) of every other entry, see `checksum`

Reading never unpickles anything (``allow_pickle=False``), so a file from elsewhere can at worst
be refused. Every size the archive claims is checked against the input budget
(`slidenet.storage.limits`) before an array is allocated. Any damage (truncation, a flipped byte, a
foreign file, a header that lies about its size) is a `ModelFileError` naming the file, never a
traceback. Saving goes through `slidenet.storage.writing`, so a failed save keeps the previous file.
"""
import hashlib
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from slidenet.errors import ModelFileError
from slidenet.storage import limits, writing
from slidenet.storage.modelmeta import read_json

META = "__meta__"
CHECKSUM = "__checksum__"

# What numpy and zipfile raise on a damaged or foreign archive. Sizes are checked before numpy
# allocates (`limits.check_npz`), so a header that lies about its size is refused, not a
# MemoryError. NotImplementedError: a member compressed by a method zipfile does not know.
_DAMAGE = (OSError, ValueError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error,
           NotImplementedError)


def checksum(entries):
    """SHA-256 hex digest of `entries` (name -> array) in a canonical form: for each name in
    sorted order, a JSON line [name, dtype.str, shape, nbytes], then the array's bytes in C
    order. Equal arrays give equal digests whatever their memory layout."""
    digest = hashlib.sha256()
    for name in sorted(entries):
        array = np.ascontiguousarray(entries[name])
        header = [name, array.dtype.str, list(array.shape), array.nbytes]
        digest.update(json.dumps(header).encode("utf-8") + b"\n")
        digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def save(path, arrays, meta):
    """Write `arrays` (name -> numeric ndarray) and `meta` (a JSON-able dict) to `path`.

    Atomic (`slidenet.storage.writing.write_file`): a crash or a failed write at any moment leaves either
    the old file or the new one, never a mix; a disk that is full or read-only is a
    `FileWriteError` naming `path`. Parent directories are created. Names starting with "__"
    are reserved.
    """
    entries = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise ValueError(f"array name {name!r}: names are non-empty strings not starting "
                             f"with '__'")
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise ValueError(f"array {name!r} holds Python objects; a model file holds numbers")
        entries[name] = array
    entries[META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), np.uint8)
    entries[CHECKSUM] = np.array(checksum(entries))
    return writing.write_file(path, lambda fh: _write_npz(fh, entries))


def _write_npz(fh, entries):
    """The layout of np.savez (one NAME.npy member each, stored uncompressed), written by hand
    so any name is allowed and nothing can be pickled."""
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in entries.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def load(path):
    """(arrays, meta) from a file written by `save`, after checking its checksum."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"no such model file: {path}")
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory, not a model file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path} is empty, not a model file")
    with open(path, "rb") as fh:
        # np.load would try anything that is neither zip nor .npy as a pickle; say what it is.
        if fh.read(2) != b"PK":
            raise ModelFileError(f"{path} is not a slidenet model file (not an .npz archive)")
    try:
        limits.check_npz(path, ModelFileError)
        archive = np.load(path, allow_pickle=False)
    except _DAMAGE as err:
        raise ModelFileError(f"{path} is not a slidenet model file ({_reason(err)})") from None
    with archive:
        if META not in archive.files or CHECKSUM not in archive.files:
            raise ModelFileError(f"{path} is an .npz archive but not a slidenet model file "
                                 f"(it has no {META} and {CHECKSUM})")
        try:
            entries = {name: archive[name] for name in archive.files}
        except _DAMAGE as err:
            raise ModelFileError(f"{path} is damaged ({_reason(err)})") from None
    stored = entries.pop(CHECKSUM)
    if stored.shape != () or stored.dtype.kind != "U" or str(stored) != checksum(entries):
        raise ModelFileError(f"{path} is damaged: its contents do not match its checksum")
    try:
        text = entries.pop(META).tobytes().decode("utf-8")
    except UnicodeDecodeError:
        text = "null"
    meta = read_json(text, f"{path}: its {META}")
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: its {META} is not a JSON object")
    return entries, meta


def _reason(err):
    """The first line of an exception's message, for a one-line error."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
