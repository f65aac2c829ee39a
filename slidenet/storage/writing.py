"""Writing files: every file slidenet writes goes through `write_file`, atomically.

The bytes go to a temporary file beside the target, are flushed to the disk (fsync), and the
temporary file is then renamed over the target (os.replace, atomic on POSIX and Windows); syncing
the folder makes the rename itself durable. So at any moment, a crash included, the target is
either the previous file, byte for byte, or the new one complete. On any failure the temporary
file is removed.

A target that is a symbolic link is written through: the file it points at is replaced (beside
itself, atomically) and the link stays. A target that is not a regular file (a device such as
/dev/null, a FIFO, a socket) is refused, since renaming over it would replace it.

What the world can refuse (a full disk, a read-only file system, a folder without write
permission, a target that is a folder, a parent that is a file) becomes a `FileWriteError` that
names the path and says why in words, and whether a previous file was kept.
"""
import errno
import json
import os
import secrets
import shutil
import stat
from pathlib import Path

from slidenet.errors import FileWriteError
from slidenet.storage.limits import human


def write_file(path, write):
    """Atomically write `path`, calling `write(fh)` with a binary file open on a temporary file
    beside it. Creates missing folders. Returns `path` as a Path.

    Raises FileWriteError when the world refuses; whatever else `write` raises (a bug, a
    KeyboardInterrupt) passes through. Either way the temporary file is removed and a previous
    file at `path` is left untouched.
    """
    shown = Path(path)
    path = _target(shown)
    _create_folder(path.parent)
    existed = path.exists()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if existed:
            _copy_mode(path, temporary)
        os.replace(temporary, path)
    except BaseException as err:
        _remove(temporary)
        if isinstance(err, OSError):
            kept = f"; {shown} is unchanged" if existed else ""
            raise FileWriteError(f"cannot write {shown}: {reason(err, path.parent)}{kept}") \
                from None
        raise
    _sync_folder(path.parent)
    return shown


# What stat says a path is, for the ones a file cannot replace.
_NOT_FILES = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))


def _target(path):
    """The regular file that writing `path` replaces: `path` itself, or, for a symbolic link,
    the file it points at (the link stays a link). FileWriteError for a folder, a device, a
    FIFO or a socket (renaming over one would swap it for a regular file: `--out /dev/null`
    run as root would destroy /dev/null), and for a link that points nowhere."""
    try:
        mode = os.stat(path).st_mode        # follows links
    except FileNotFoundError:
        if path.is_symlink():
            raise FileWriteError(f"cannot write {path}: it is a symbolic link to "
                                 f"{os.readlink(path)}, which does not exist; remove the link "
                                 "or give another name") from None
        return path
    except OSError:
        return path                         # not there to be read: the write will say why
    if stat.S_ISDIR(mode):
        raise FileWriteError(f"cannot write {path}: it is a folder; give a file name")
    for test, kind in _NOT_FILES:
        if test(mode):
            raise FileWriteError(f"cannot write {path}: it is {kind}, not a regular file, and "
                                 "slidenet replaces the file it writes; give a file name")
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def write_bytes(path, data):
    """`write_file` of a bytes object."""
    return write_file(path, lambda fh: fh.write(data))


def write_text(path, text):
    """`write_file` of a str, as UTF-8."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, value):
    """`write_file` of `value` as indented JSON."""
    return write_text(path, json.dumps(value, indent=1))


def make_folder(folder):
    """Create `folder` and its parents if missing, and check that a file can be created in it,
    so a run that will write there fails before its work rather than after. Returns a Path.

    FileWriteError when a parent is a file, or the folder cannot be created or written.
    """
    folder = _create_folder(Path(folder))
    probe = folder / f".slidenet-probe.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        with open(probe, "xb"):
            pass
    except OSError as err:
        raise FileWriteError(f"cannot write in {folder}: {reason(err, folder)}") from None
    finally:
        _remove(probe)
    return folder


def _create_folder(folder):
    """`folder`, created with its parents if missing; FileWriteError when a file is in the way
    or the file system refuses."""
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        where = "" if blocker == folder else f", so {folder} cannot be a folder"
        raise FileWriteError(f"cannot write in {folder}: {blocker} is a file, not a folder{where}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FileWriteError(f"cannot create the folder {folder}: "
                             f"{reason(err, _nearest_existing(folder))}") from None
    return folder


def reason(err, folder):
    """Why the OSError `err` happened while writing in `folder`, in words."""
    code = err.errno
    if code == errno.ENOSPC:
        free = _free_space(folder)
        return "the disk is full" + (f" ({free} free on it)" if free else "")
    if code == getattr(errno, "EDQUOT", None):
        return "your disk quota is used up"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied (you may not write in {folder})"
    if code == errno.EROFS:
        return f"{folder} is on a read-only file system"
    if code == errno.EISDIR:
        return "a folder is in the way"
    if code == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    if code == errno.ENAMETOOLONG:
        return "the name is too long for the file system"
    return err.strerror or str(err) or type(err).__name__


def _file_in_the_way(folder):
    """The first of `folder` and its parents that exists and is not a folder, or None."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def _nearest_existing(folder):
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate
    return folder


def _free_space(folder):
    try:
        return human(shutil.disk_usage(folder).free)
    except OSError:
        return None


def _copy_mode(source, target):
    """Give the new file the permissions of the one it replaces (rename would not)."""
    os.chmod(target, stat.S_IMODE(os.stat(source).st_mode))


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass        # never created, or already gone


def _sync_folder(folder):
    """Make the rename itself durable; only POSIX can open a folder to sync it. The new file is
    already in place, and some file systems cannot sync a folder, so a failure here is ignored."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
