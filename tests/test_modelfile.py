"""Model files: exact round trips, every kind of damage refused, and atomic replacement."""
import json
import os
import signal
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import slidenet
from slidenet.errors import ModelFileError
from slidenet.storage import limits, modelfile, modelmeta

ARRAYS = {
    "conv1.W": np.random.default_rng(0).standard_normal((5, 5, 3, 8)).astype(np.float32),
    "conv1.b": np.linspace(-1, 1, 8),
    "fc2.W": np.arange(12, dtype=np.int64).reshape(3, 4),
    "pixels": np.array([[0, 128, 255]], dtype=np.uint8),
    "scalar": np.float32(0.5),
    "count": np.int64(7),
    "flag": np.array([True, False]),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "names": np.array(["T-shirt/top", "Trouser"]),
}
META = {"pattern": "INPUT(28x28x1) -> CONV(8) -> FC(10)", "epoch": 3, "accuracy": 0.97,
        "history": [{"loss": 1.5}, {"loss": 0.25}], "note": "ünïcode ✓", "nothing": None}


def assert_same(loaded, original):
    assert set(loaded) == set(original)
    for name, value in original.items():
        value = np.asarray(value)
        assert loaded[name].dtype == value.dtype, name
        assert loaded[name].shape == value.shape, name
        np.testing.assert_array_equal(loaded[name], value)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.npz"
    modelfile.save(path, ARRAYS, META)
    return path


def test_round_trip_is_exact(saved):
    arrays, meta = modelfile.load(saved)
    assert_same(arrays, ARRAYS)
    assert meta == META


def test_non_contiguous_and_big_endian_arrays_round_trip(tmp_path):
    arrays = {"t": np.arange(12.0).reshape(3, 4).T, "be": np.arange(3, dtype=">i4")}
    modelfile.save(tmp_path / "m.npz", arrays, {})
    loaded, _ = modelfile.load(tmp_path / "m.npz")
    assert_same(loaded, arrays)


def test_save_creates_parent_directories_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "runs" / "a" / "model.npz"
    modelfile.save(path, ARRAYS, META)
    modelfile.save(path, {"x": np.ones(2)}, {"v": 2})
    assert os.listdir(path.parent) == ["model.npz"]
    arrays, meta = modelfile.load(path)
    assert_same(arrays, {"x": np.ones(2)})
    assert meta == {"v": 2}


def test_file_is_an_ordinary_npz_with_meta_and_checksum(saved):
    with np.load(saved, allow_pickle=False) as archive:
        assert set(archive.files) == set(ARRAYS) | {"__meta__", "__checksum__"}
        assert json.loads(archive["__meta__"].tobytes()) == META
        assert len(str(archive["__checksum__"])) == 64


@pytest.mark.parametrize("name", ["__meta__", "__x", "", 3])
def test_reserved_or_bad_names_are_refused_on_save(tmp_path, name):
    with pytest.raises(ValueError):
        modelfile.save(tmp_path / "m.npz", {name: np.ones(1)}, {})


def test_object_arrays_are_refused_on_save(tmp_path):
    with pytest.raises(ValueError, match="objects"):
        modelfile.save(tmp_path / "m.npz", {"x": np.array([{}], dtype=object)}, {})
    assert not (tmp_path / "m.npz").exists()


def refused(path, match):
    with pytest.raises(ModelFileError, match=match) as info:
        modelfile.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_file_is_refused(tmp_path):
    refused(tmp_path / "nope.npz", "no such model file")


def test_directory_is_refused(tmp_path):
    refused(tmp_path, "directory")


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "m.npz").write_bytes(b"")
    refused(tmp_path / "m.npz", "empty")


@pytest.mark.parametrize("content", [b"hello, this is text\n", b"\x89PNG\r\n\x1a\n" + bytes(64)],
                         ids=["text", "png"])
def test_foreign_files_are_refused(tmp_path, content):
    (tmp_path / "m.npz").write_bytes(content)
    refused(tmp_path / "m.npz", "not an .npz archive")


def test_a_single_npy_is_refused(tmp_path):
    np.save(tmp_path / "m.npy", np.ones(3))
    refused(tmp_path / "m.npy", "not an .npz")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_truncated_file_is_refused(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:int(len(data) * keep)])
    refused(saved, "not a slidenet model file|damaged")


def test_flipped_byte_in_the_middle_is_refused(saved):
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0xFF
    saved.write_bytes(bytes(data))
    refused(saved, "damaged|not a slidenet model file")


def test_any_flipped_byte_is_refused_or_harmless(saved):
    """A flip in zip bookkeeping that nobody reads (timestamps, attributes) changes nothing;
    every other flip must be refused, never returned as different numbers or a traceback."""
    original = saved.read_bytes()
    for offset in range(0, len(original), 11):
        data = bytearray(original)
        data[offset] ^= 0xFF
        saved.write_bytes(bytes(data))
        try:
            arrays, meta = modelfile.load(saved)
        except ModelFileError:
            continue
        assert_same(arrays, ARRAYS)
        assert meta == META


def test_npz_without_our_keys_is_refused(tmp_path):
    np.savez(tmp_path / "m.npz", w=np.ones(3))
    refused(tmp_path / "m.npz", "not a slidenet model file")


def test_checksum_mismatch_is_refused(saved, tmp_path):
    with np.load(saved, allow_pickle=False) as archive:
        entries = {name: archive[name] for name in archive.files}
    entries["conv1.b"] = entries["conv1.b"] + 1e-12
    np.savez(tmp_path / "forged.npz", **entries)
    refused(tmp_path / "forged.npz", "checksum")


def test_meta_that_is_not_a_json_object_is_refused(tmp_path):
    entries = {"w": np.ones(2), "__meta__": np.frombuffer(b"[1, 2]", np.uint8)}
    entries["__checksum__"] = np.array(modelfile.checksum(entries))
    np.savez(tmp_path / "m.npz", **entries)
    refused(tmp_path / "m.npz", "JSON object")


class Marker:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_object_array_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    entries = {"w": np.array([Marker(marker)], dtype=object),
               "__meta__": np.frombuffer(b"{}", np.uint8)}
    np.savez(tmp_path / "m.npz", **entries, __checksum__=np.array("0" * 64))
    refused(tmp_path / "m.npz", "damaged")
    assert not marker.exists()


def test_compressed_npz_with_valid_checksum_loads(tmp_path):
    # Someone re-saving our arrays with savez_compressed still has a good model file.
    entries = {"w": np.arange(5.0), "__meta__": np.frombuffer(b'{"a": 1}', np.uint8)}
    entries["__checksum__"] = np.array(modelfile.checksum(entries))
    np.savez_compressed(tmp_path / "m.npz", **entries)
    arrays, meta = modelfile.load(tmp_path / "m.npz")
    assert_same(arrays, {"w": np.arange(5.0)})
    assert meta == {"a": 1}


# A child process that saves a big model and stops at `stage`, waiting to be killed.
SAVER = """
import os, sys, time
import numpy as np
from slidenet.storage import modelfile

stage, path = sys.argv[1], sys.argv[2]

def pause():
    print("paused", flush=True)
    time.sleep(60)

if stage == "mid-write":
    write_array = np.lib.format.write_array
    def write_then_pause(*args, **kwargs):
        write_array(*args, **kwargs)
        pause()
    np.lib.format.write_array = write_then_pause
else:
    fsync = os.fsync
    def fsync_then_pause(fd):
        fsync(fd)
        pause()
    os.fsync = fsync_then_pause

modelfile.save(path, {"big.W": np.full((1000, 1000), 7.0), "big.b": np.ones(1000)},
               {"version": "new"})
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("stage", ["mid-write", "before-rename"])
def test_kill_during_save_leaves_the_old_file_loadable(saved, stage):
    child = subprocess.Popen([sys.executable, "-c", SAVER, stage, str(saved)],
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"paused\n"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    (temporary,) = saved.parent.glob(".model.npz.*.tmp")
    if stage == "mid-write":
        with pytest.raises(ModelFileError):
            modelfile.load(temporary)
    arrays, meta = modelfile.load(saved)
    assert_same(arrays, ARRAYS)
    assert meta == META
    # The leftover temporary file does not get in the way of the next save.
    modelfile.save(saved, {"x": np.ones(1)}, {"version": "next"})
    assert modelfile.load(saved)[1] == {"version": "next"}


def test_members_are_stored_uncompressed(saved):
    with zipfile.ZipFile(saved) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}


# --- a hostile meta: its checksum matches, since anyone can recompute it ----------------------

OLD = Path(__file__).parent / "fixtures" / "model-0.1.0.npz"


def forged(tmp_path, arrays=None, **changes):
    """The 0.1.0 fixture, or `arrays`, with `changes` in its meta, saved with a good checksum."""
    old_arrays, meta = modelfile.load(OLD)
    meta.update(changes)
    path = tmp_path / "forged.npz"
    modelfile.save(path, old_arrays if arrays is None else arrays, meta)
    return path


def test_a_meta_claiming_a_bigger_net_is_refused_before_any_weight_exists(tmp_path):
    path = forged(tmp_path, pattern="INPUT(100x100x1) -> FC(80000) -> FC(10)")
    implied = (100 * 100 * 1 + 1) * 80000 + (80000 + 1) * 10      # (in + 1) x out, twice
    held = sum(a.size for n, a in modelfile.load(OLD)[0].items() if n.startswith("param/"))
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=f"implies {implied:,} weights but the file "
                                                 f"holds {held:,}"):
            slidenet.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak        # the 3.2 GB of weights were never allocated


def test_a_meta_whose_one_image_exceeds_the_budget_is_refused(tmp_path):
    arrays = {"param/fc1.W": np.zeros((3, 3), np.float32), "param/fc1.b": np.zeros(3, np.float32),
              "norm/normalizer.mean": np.zeros(3, np.float32),
              "norm/normalizer.std": np.ones(3, np.float32)}
    path = forged(tmp_path, arrays, pattern="INPUT(3000x3000x3) -> GLOBALAVGPOOL -> FC(3)")
    previous = limits.set_budget(64 * 2**20)
    try:
        with pytest.raises(ModelFileError, match="one image through its net needs 103.0 MiB"):
            slidenet.load(path)          # 3000 * 3000 * 3 * 4 bytes of INPUT, and 3 + 3 numbers
    finally:
        limits.set_budget(previous)
    assert slidenet.load(path).input_shape == (3000, 3000, 3)


def test_meta_nested_100000_deep_is_refused_not_a_recursion_error(tmp_path):
    deep = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    entries = {"w": np.ones(2), "__meta__": np.frombuffer(deep, np.uint8)}
    entries["__checksum__"] = np.array(modelfile.checksum(entries))
    np.savez(tmp_path / "m.npz", **entries)
    refused(tmp_path / "m.npz", "nests more than 16 deep")
    sixteen = modelmeta.read_json(b'{"a": ' + b"[" * 15 + b"]" * 15 + b"}", "x")["a"]
    for _ in range(14):
        (sixteen,) = sixteen
    assert sixteen == []
    with pytest.raises(ModelFileError, match="nests more than 16 deep"):
        modelmeta.read_json(b"[" * 17 + b"]" * 17, "x")


BAD_META = {
    "class_names": (5, "class_names is 5, not a list of names"),
    "epoch": ("two", 'epoch is "two", not a whole number'),
    "history": ([1], "every epoch needs epoch, loss, accuracy; found 1"),
    "dtype": ("float16", 'dtype is "float16", not float32 or float64'),
    "variables": ({"N": "2"}, "variables is"),
    "skip_optional": ("yes", "skip_optional is"),
    "pattern": (["INPUT(8x8x2)"], "pattern is"),
    "config": ({"lr": "fast"}, 'config holds {"lr": "fast"}'),
    "data": (7, "data is 7, not a string"),
}


@pytest.mark.parametrize("field", sorted(BAD_META))
def test_a_meta_field_of_the_wrong_type_is_refused(tmp_path, field):
    value, needle = BAD_META[field]
    path = forged(tmp_path, **{field: value})
    with pytest.raises(ModelFileError) as info:
        slidenet.load(path)
    assert needle in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("entry", [{"epoch": 1, "loss": "low", "accuracy": 0.5},
                                   {"epoch": "one", "loss": 1.0, "accuracy": 0.5},
                                   {"epoch": 1, "loss": 1.0, "accuracy": [0.5]}])
def test_a_bad_history_entry_is_refused(tmp_path, entry):
    with pytest.raises(ModelFileError, match="history: an epoch's .* not a number"):
        slidenet.load(forged(tmp_path, history=[entry]))


@pytest.mark.parametrize("command", [["eval"], ["predict"], ["summary"], ["report"],
                                     ["viz", "curves"], ["viz", "filters"]])
@pytest.mark.parametrize("change", [{"class_names": 5}, {"epoch": "two"},
                                    {"pattern": "INPUT(100x100x1) -> FC(80000) -> FC(10)"}])
def test_every_command_refuses_a_hostile_meta_in_one_line(tmp_path, capsys, command, change):
    from slidenet.cli import main
    if command[-1] in ("summary", "curves") and "pattern" in change:
        return                          # neither builds the net: they allocate nothing for it
    path = forged(tmp_path, **change)
    image = tmp_path / "x.npy"
    argv = [*command, str(path)] + ([str(image)] if command == ["predict"] else [])
    argv += ["--out", str(tmp_path / "out.png")] if command[0] in ("viz", "report") else []
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err


@pytest.mark.parametrize("name, value, needle", [
    ("param/fc2.W", np.nan, "param/fc2.W holds values that are not finite numbers"),
    ("param/conv1.b", np.inf, "param/conv1.b holds values that are not finite"),
    ("buffer/batchnorm1.running_var", -np.inf, "buffer/batchnorm1.running_var holds"),
    ("norm/normalizer.mean", np.nan, "norm/normalizer.mean holds"),
    ("norm/normalizer.std", 0.0, "std is [0.0, 0.0]; each must be above 0"),
])
def test_predict_refuses_weights_that_are_not_finite_or_a_std_of_0(tmp_path, capsys, name,
                                                                   value, needle):
    from slidenet.cli import main
    arrays, _ = modelfile.load(OLD)
    arrays[name] = np.full_like(arrays[name], value)
    path = forged(tmp_path, arrays)
    np.save(tmp_path / "x.npy", np.zeros((8, 8, 2), np.uint8))
    assert main(["predict", str(path), str(tmp_path / "x.npy")]) == 2
    captured = capsys.readouterr()
    assert "nan" not in captured.out.lower() and captured.out == ""
    assert needle in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err


def test_scores_that_overflow_are_refused(tmp_path):
    model = slidenet.load(OLD)
    model.net.params["fc2.W"][...] = 3e38           # finite, but the sums overflow float32
    model.refresh()
    with pytest.raises(ModelFileError, match="scores for these images are not finite"):
        model.predict(np.full((1, 8, 8, 2), 255, np.uint8))
