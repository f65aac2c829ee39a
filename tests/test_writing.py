"""Every file slidenet writes goes through `slidenet.storage.writing`: atomic, and a refusal of the world
(full disk, read-only file system, no permission, a folder or file in the way) is exit 2 with the
path and the reason, the previous file byte-identical and no temporary file left.

Tests run as root here, and chmod does not stop root, so a full disk and a read-only file system
are simulated: `full_disk` and `refuse_writes` replace `open` for the files created in one
folder, and the OSError they raise is exactly the one the kernel gives (ENOSPC, EROFS, EACCES).
"""
import builtins
import errno
import io
import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY, one_line_error, write_bars
from slidenet.cli import main
from slidenet.errors import FileWriteError
from slidenet.storage import modelfile, writing
from slidenet.training.loop import TrainConfig, train


class _Quota(io.FileIO):
    """A file on a disk with `left` bytes free: a write beyond them fails with ENOSPC."""

    def __init__(self, path, mode, left):
        super().__init__(path, mode)
        self.left = left

    def write(self, data):
        size = memoryview(data).nbytes
        if size > self.left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left -= size
        return super().write(data)


def _writing_in(folder, file, mode):
    """Whether open(file, mode) would create or change a file in `folder`."""
    return (isinstance(file, (str, os.PathLike)) and Path(file).parent == Path(folder)
            and any(c in mode for c in "wxa+"))


def full_disk(monkeypatch, folder, free=0):
    """Files created in `folder` from now on have `free` bytes between them.

    A buffered write beyond them fails with ENOSPC, as the kernel's write would; bytes written
    straight to the descriptor (Pillow's encoders do that) are caught by fsync, which reports
    ENOSPC as file systems with delayed allocation do.
    """
    real_open, real_fsync = builtins.open, os.fsync
    budget = {"left": free}
    quotas = {}

    def fake_open(file, mode="r", *args, **kwargs):
        if not _writing_in(folder, file, mode):
            return real_open(file, mode, *args, **kwargs)
        raw = _Quota(file, mode.replace("b", "").replace("t", ""), budget["left"])
        quotas[raw.fileno()] = budget["left"]
        budget["left"] = 0
        return io.BufferedWriter(raw)

    def fake_fsync(fd):
        if fd in quotas and os.fstat(fd).st_size > quotas[fd]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "fsync", fake_fsync)


def refuse_writes(monkeypatch, folder, code):
    """Creating a file in `folder` fails as on a read-only file system (EROFS) or a folder
    without write permission (EACCES)."""
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        if _writing_in(folder, file, mode):
            raise OSError(code, os.strerror(code), str(file))
        return real_open(file, mode, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", fake_open)


def snapshot(folder):
    """{name: bytes} of every file in `folder`: equal snapshots mean nothing changed or was left."""
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


# --- the helper itself -------------------------------------------------------------------

def test_write_creates_missing_folders_and_leaves_only_the_file(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    assert writing.write_bytes(target, b"hello") == target
    assert target.read_bytes() == b"hello"
    assert os.listdir(target.parent) == ["out.bin"]


def test_rewrite_replaces_the_file_and_keeps_its_permissions(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    target.chmod(0o640)
    writing.write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("free", [0, 3, 4096])
def test_full_disk_keeps_the_previous_file_and_says_so(tmp_path, monkeypatch, free):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous contents")
    before = snapshot(tmp_path)
    full_disk(monkeypatch, tmp_path, free)
    with pytest.raises(FileWriteError) as err:
        writing.write_bytes(target, bytes(10_000))
    message = str(err.value)
    assert str(target) in message and "the disk is full" in message and "unchanged" in message
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("code, reason", [(errno.EROFS, "read-only file system"),
                                          (errno.EACCES, "permission denied")])
def test_read_only_or_forbidden_folder(tmp_path, monkeypatch, code, reason):
    target = tmp_path / "out.json"
    target.write_text("[1]")
    refuse_writes(monkeypatch, tmp_path, code)
    with pytest.raises(FileWriteError, match=reason) as err:
        writing.write_json(target, [2])
    assert str(target) in str(err.value)
    assert snapshot(tmp_path) == {"out.json": b"[1]"}


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="chmod stops only non-root users")
def test_real_read_only_folder(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"kept")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(FileWriteError, match="permission denied"):
            writing.write_bytes(target, b"new")
    finally:
        tmp_path.chmod(0o700)
    assert snapshot(tmp_path) == {"out.bin": b"kept"}


def test_target_that_is_a_folder(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileWriteError, match="it is a folder"):
        writing.write_bytes(tmp_path / "taken", b"x")
    assert list((tmp_path / "taken").iterdir()) == []


@pytest.mark.parametrize("below", [(), ("deeper", "still")])
def test_parent_that_is_a_file(tmp_path, below):
    blocker = tmp_path / "plain"
    blocker.write_bytes(b"a file")
    with pytest.raises(FileWriteError) as err:
        writing.write_bytes(blocker.joinpath(*below, "out.bin"), b"x")
    assert f"{blocker} is a file, not a folder" in str(err.value)
    assert snapshot(tmp_path) == {"plain": b"a file"}


def test_a_failing_writer_passes_its_error_through_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")

    def half_then_bug(fh):
        fh.write(b"half")
        raise ValueError("a bug in the writer")
    with pytest.raises(ValueError, match="a bug in the writer"):
        writing.write_file(target, half_then_bug)
    assert snapshot(tmp_path) == {"out.bin": b"previous"}


def test_make_folder_fails_before_the_work_on_a_read_only_folder(tmp_path, monkeypatch):
    refuse_writes(monkeypatch, tmp_path / "run", errno.EROFS)
    (tmp_path / "run").mkdir()
    with pytest.raises(FileWriteError, match="read-only"):
        writing.make_folder(tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []


# --- every writer goes through it ----------------------------------------------------------

def _figure():
    from matplotlib.figure import Figure
    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def _write_model(path):
    modelfile.save(path, {"w": np.arange(6.0)}, {"note": "x"})


def _write_history(path):
    from slidenet.training.loop import _write_json
    _write_json(str(path), [{"epoch": 1, "loss": 0.5}])


def _write_picture(path):
    from slidenet.viz import grid
    grid.save(_figure(), path)


def _write_gif(path):
    from slidenet.viz.slide import save_slide_gif
    save_slide_gif(path, 5, 3, 2, 1)


def _write_report(path):
    from slidenet.report import write_report
    write_report(path, "<!DOCTYPE html><p>report</p>")


def _write_export(path):
    # The model file to export lives in a folder of its own: the test compares path's folder.
    from slidenet.data.normalize import Normalizer
    from slidenet.interop.onnx_export import export_file
    from slidenet.model import save
    from slidenet.net import Net
    source = Path(tempfile.mkdtemp()) / "model.npz"
    save(source, Net.from_pattern("INPUT(6x6x1) -> CONV(2) -> RELU -> POOL -> FC(3)"),
         Normalizer(np.array([0.5], np.float32), np.array([0.25], np.float32)), ["a", "b", "c"])
    export_file(source, path)


WRITERS = {"model": (_write_model, "model.npz"), "history": (_write_history, "history.json"),
           "picture": (_write_picture, "filters.png"), "gif": (_write_gif, "slide.gif"),
           "report": (_write_report, "report.html"), "export": (_write_export, "model.onnx")}


@pytest.mark.parametrize("kind", WRITERS)
@pytest.mark.parametrize("fault", ["full-disk", "read-only"])
def test_every_writer_keeps_the_previous_file(tmp_path, monkeypatch, kind, fault):
    write, name = WRITERS[kind]
    write(tmp_path / name)
    before = snapshot(tmp_path)
    assert list(before) == [name]
    if fault == "full-disk":
        full_disk(monkeypatch, tmp_path, free=len(before[name]) // 2)     # fills up halfway
    else:
        refuse_writes(monkeypatch, tmp_path, errno.EROFS)
    with pytest.raises(FileWriteError) as err:
        write(tmp_path / name)
    assert str(tmp_path / name) in str(err.value)
    assert snapshot(tmp_path) == before


# --- through the command line ---------------------------------------------------------------

@pytest.fixture
def data_spec(tmp_path):
    return write_bars(tmp_path / "bars.npz", 60, test=30)


def test_train_out_that_is_a_file(tmp_path, capsys, data_spec):
    taken = tmp_path / "taken"
    taken.write_text("my notes")
    one_line_error(capsys, ["train", "--pattern", TINY, "--data", data_spec, "--epochs", "1",
                            "--out", str(taken)], str(taken), "is a file, not a folder")
    assert taken.read_text() == "my notes"


def test_train_on_a_full_disk_keeps_the_last_epochs_files(tmp_path, capsys, monkeypatch,
                                                          data_spec):
    out = tmp_path / "run"
    train(TrainConfig(pattern=TINY, data=data_spec, epochs=1, batch_size=16, out=str(out)),
          log=lambda *_: None)
    before = snapshot(out)
    assert set(before) == {"model.npz", "best.npz", "history.json"}
    full_disk(monkeypatch, out, free=1000)
    one_line_error(capsys, ["train", "--resume", str(out / "model.npz"), "--epochs", "2"],
                   str(out / "model.npz"), "the disk is full", "unchanged")
    assert snapshot(out) == before


def test_train_into_a_read_only_folder_fails_before_training(tmp_path, capsys, monkeypatch,
                                                            data_spec):
    out = tmp_path / "run"
    out.mkdir()
    refuse_writes(monkeypatch, out, errno.EROFS)
    err = one_line_error(capsys, ["train", "--pattern", TINY, "--data", data_spec,
                                  "--epochs", "1", "--out", str(out)], str(out), "read-only")
    assert "epoch" not in capsys.readouterr().out + err
    assert list(out.iterdir()) == []


def test_viz_out_that_is_a_folder(tmp_path, capsys):
    (tmp_path / "pictures").mkdir()
    one_line_error(capsys, ["viz", "slide", "--out", str(tmp_path / "pictures")],
                   str(tmp_path / "pictures"), "it is a folder")


def test_viz_curves_on_a_full_disk(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.json").write_text(json.dumps([{"epoch": 1, "loss": 1.0, "accuracy": 0.5}]))
    assert main(["viz", "curves", str(run), "--out", str(tmp_path / "pics" / "c.png")]) == 0
    before = snapshot(tmp_path / "pics")
    full_disk(monkeypatch, tmp_path / "pics", free=10)
    one_line_error(capsys, ["viz", "curves", str(run), "--out", str(tmp_path / "pics" / "c.png")],
                   "c.png", "the disk is full")
    assert snapshot(tmp_path / "pics") == before


# --- targets that are not regular files -----------------------------------------------------

def _no_replace(monkeypatch):
    """Fail the test rather than rename anything over a device (a regression must not
    destroy /dev/full on the machine that runs the tests)."""
    def refuse(*args):
        raise AssertionError(f"os.replace{args}")
    monkeypatch.setattr(writing.os, "replace", refuse)


@pytest.mark.parametrize("device", ["/dev/full", "/dev/null"])
def test_a_device_is_refused_and_left_a_device(monkeypatch, device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    _no_replace(monkeypatch)
    with pytest.raises(FileWriteError, match=f"cannot write {device}: it is a character device, "
                                             "not a regular file"):
        writing.write_bytes(device, b"x" * 56_000)
    assert stat.S_ISCHR(os.stat(device).st_mode)


def test_a_fifo_and_a_link_to_one_are_refused(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "link").symlink_to(fifo)
    for target in (fifo, tmp_path / "link"):
        with pytest.raises(FileWriteError, match="it is a named pipe \\(FIFO\\), not a regular"):
            writing.write_bytes(target, b"data")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and (tmp_path / "link").is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["link", "pipe"]


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "model.npz").write_bytes(b"old")
    (tmp_path / "latest.npz").symlink_to(tmp_path / "real" / "model.npz")
    assert writing.write_bytes(tmp_path / "latest.npz", b"new") == tmp_path / "latest.npz"
    assert (tmp_path / "latest.npz").is_symlink()
    assert (tmp_path / "real" / "model.npz").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path / "real")) == ["model.npz"]


def test_a_dangling_symlink_is_refused(tmp_path):
    (tmp_path / "out.png").symlink_to(tmp_path / "gone" / "x.png")
    with pytest.raises(FileWriteError, match="symbolic link to .*gone/x.png, which does not "
                                             "exist"):
        writing.write_bytes(tmp_path / "out.png", b"data")
    assert not (tmp_path / "gone").exists()


def test_cli_out_onto_dev_full_is_exit_2(monkeypatch, capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    _no_replace(monkeypatch)
    assert main(["viz", "slide", "--out", "/dev/full"]) == 2
    err = capsys.readouterr().err
    assert "/dev/full: it is a character device" in err and len(err.strip().splitlines()) == 1
