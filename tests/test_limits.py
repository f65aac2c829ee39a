"""Claimed sizes are checked before anything is allocated, in every format slidenet reads.

Each hostile file here claims far more than it holds (or more than the budget). The oracle for
"before anything is allocated" is tracemalloc, which counts every NumPy buffer (even one the OS
never backs with pages): the peak while a hostile file is refused must stay small.
"""
import gzip
import io
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from slidenet import data
from slidenet.cli import main
from slidenet.errors import DataError, ModelFileError, SlidenetError
from slidenet.storage import limits, modelfile

from helpers import _py2_value, write_cifar_dir, write_idx, write_image, write_mnist_dir

MiB = 2**20


@pytest.fixture(autouse=True)
def default_budget(monkeypatch):
    """Each test starts from the default budget and leaves it there."""
    monkeypatch.delenv(limits.ENV, raising=False)
    previous = limits.set_budget(None)
    yield
    limits.set_budget(previous)


def refused_without_allocating(error, match, func, *args):
    """Assert func(*args) raises `error` matching `match` with a small allocation peak."""
    tracemalloc.start()
    try:
        with pytest.raises(error, match=match) as info:
            func(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"{peak / MiB:.0f} MiB allocated before refusing"
    assert "\n" not in str(info.value)
    return str(info.value)


# --- the budget -----------------------------------------------------------------------------

def test_default_budget_is_half_the_physical_memory():
    memory = limits.physical_memory()
    assert memory is None or memory > 0
    assert limits.budget() == (memory // 2 if memory else limits.FALLBACK)


@pytest.mark.parametrize("text, expected", [("1500000", 1500000), ("512M", 512 * MiB),
                                            ("2G", 2 * 2**30), ("1.5GiB", 3 * 2**29),
                                            ("64k", 64 * 1024)])
def test_budget_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv(limits.ENV, text)
    assert limits.budget() == expected


@pytest.mark.parametrize("text", ["lots", "-5", "0", "3X"])
def test_a_bad_budget_in_the_environment_is_named(monkeypatch, text):
    monkeypatch.setenv(limits.ENV, text)
    with pytest.raises(SlidenetError, match=limits.ENV):
        limits.budget()


def test_set_budget_wins_over_the_environment_and_restores(monkeypatch):
    monkeypatch.setenv(limits.ENV, "1G")
    previous = limits.set_budget(1234)
    assert limits.budget() == 1234
    limits.set_budget(previous)
    assert limits.budget() == 2**30


def test_a_claim_over_the_budget_shows_the_numbers_and_the_setting():
    limits.set_budget(MiB)
    with pytest.raises(DataError) as info:
        limits.check_claim(3 * 2**30, "x.idx: a 3x1024x1024x1024 uint8 array")
    message = str(info.value)
    assert "x.idx: a 3x1024x1024x1024 uint8 array needs 3.0 GiB" in message
    assert "budget of 1.0 MiB" in message and f"{limits.ENV}=3G" in message
    assert limits.check_claim(MiB, "fits") == MiB


# --- .npz: data files and model files -------------------------------------------------------

def npy_bytes(shape, dtype, payload):
    """A .npy file whose header claims `shape` and `dtype`, followed by `payload`."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + payload


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def lying_npz(path):
    """x claims 200000 x 1000 float64 (1.6 GB) and holds 16 bytes; y is honest."""
    y = io.BytesIO()
    np.lib.format.write_array(y, np.zeros(3, np.int64))
    return write_zip(path, {"x.npy": npy_bytes((200000, 1000), "<f8", bytes(16)),
                            "y.npy": y.getvalue()})


def test_npz_member_that_claims_gigabytes_is_refused(tmp_path):
    path = lying_npz(tmp_path / "lying.npz")
    message = refused_without_allocating(DataError, "x.npy", data.load, f"npz:{path}")
    assert "200000x1000 float64" in message and "1,600,000,000 bytes" in message
    assert "holds 16" in message


def test_npz_member_over_a_small_budget_names_the_budget(tmp_path):
    limits.set_budget(MiB)
    path = lying_npz(tmp_path / "lying.npz")
    message = refused_without_allocating(DataError, "input budget", data.load, f"npz:{path}")
    assert "1.5 GiB" in message and "200000x1000 float64" in message


def test_honest_npz_over_the_budget_is_refused_and_loads_under_a_larger_one(tmp_path):
    path = tmp_path / "big.npz"
    x = np.zeros((40, 64, 64, 1), np.uint8)     # 160 KiB
    np.savez(path, x=x, y=np.arange(40) % 2)
    limits.set_budget(100 * 1024)
    refused_without_allocating(DataError, "input budget", data.load, f"npz:{path}")
    limits.set_budget(MiB)
    assert data.load(f"npz:{path}").x_train.shape[1:] == (64, 64, 1)


def test_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    # 64 MiB of zeros deflate to about 64 KiB; the zip's own directory declares the 64 MiB.
    limits.set_budget(16 * MiB)
    member = npy_bytes((64 * MiB,), "|u1", bytes(64 * MiB))
    path = write_zip(tmp_path / "bomb.npz", {"x.npy": member, "y.npy": member},
                     zipfile.ZIP_DEFLATED)
    del member
    assert path.stat().st_size < MiB
    message = refused_without_allocating(DataError, "input budget", data.load, f"npz:{path}")
    assert "128.0 MiB" in message


def test_model_file_whose_header_lies_is_refused_through_the_cli(tmp_path, capsys):
    path = tmp_path / "model.npz"
    modelfile.save(path, {"param/conv1.W": np.zeros((3, 3, 1, 4), np.float32)}, {"x": 1})
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["param/conv1.W.npy"] = npy_bytes((2**20, 2**20), "<f4", bytes(144))
    write_zip(path, members)
    refused_without_allocating(ModelFileError, "conv1.W.npy", modelfile.load, path)
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "1048576x1048576 float32" in err and str(path) in err


def test_hostile_npz_through_train_is_exit_2_with_the_numbers(tmp_path, capsys):
    path = lying_npz(tmp_path / "lying.npz")
    assert main(["train", "--data", f"npz:{path}", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "200000x1000 float64" in err
    assert not (tmp_path / "run").exists()


# --- IDX, plain and gzipped -----------------------------------------------------------------

def idx_header(dims, code=0x08):
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def test_plain_idx_that_claims_more_than_its_length(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_header((60000, 2**16, 2**16)) + bytes(100))
    message = refused_without_allocating(DataError, "truncated", data.read_idx, path)
    assert "60000x65536x65536 uint8" in message


def test_gzipped_idx_that_claims_terabytes(tmp_path):
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(idx_header((2**20, 2**20, 2**4), 0x0E) + bytes(100)))
    message = refused_without_allocating(DataError, "input budget", data.read_idx, path)
    assert "1048576x1048576x16 float64" in message


def test_gzip_bomb_behind_an_honest_header_is_refused_before_inflating(tmp_path):
    limits.set_budget(4 * MiB)
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(idx_header((64, 1024, 1024)) + bytes(64 * MiB)))
    refused_without_allocating(DataError, "64x1024x1024 uint8 array needs 64.0 MiB",
                               data.read_idx, path)


def test_gzip_stream_longer_than_its_header_is_not_inflated_to_the_end(tmp_path):
    path = tmp_path / "long.gz"
    path.write_bytes(gzip.compress(idx_header((2, 2)) + bytes(256 * MiB)))
    refused_without_allocating(DataError, "longer than its header says", data.read_idx, path)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_idx_with_a_zero_dimension_is_an_empty_array(tmp_path, gz):
    # Found by the fuzz tests: reading into an empty array must not fail.
    path = write_idx(tmp_path / "empty", np.zeros((0, 28, 28), np.uint8), gz=gz)
    assert data.read_idx(path).shape == (0, 28, 28)


def test_idx_budget_through_mnist_loader(tmp_path):
    rng = np.random.default_rng(0)
    write_mnist_dir(tmp_path, rng.integers(0, 255, (50, 28, 28)), np.zeros(50),
                    rng.integers(0, 255, (5, 28, 28)), np.zeros(5), gz=True)
    limits.set_budget(20_000)       # the training images need 39,200 bytes
    message = refused_without_allocating(DataError, "input budget", data.load, f"mnist:{tmp_path}")
    assert "50x28x28 uint8" in message


# --- CIFAR-10 pickles -----------------------------------------------------------------------

CIFAR_NAMES = [f"class{i}" for i in range(10)]


def array_pickle(shape, dtype_name, state_data):
    """The opcodes of a pickled numpy array as the CIFAR files hold it, with any claims."""
    dtype = (b"cnumpy\ndtype\n" + _py2_value((dtype_name, 0, 1)) + b"R"
             + _py2_value((3, b"|", None, None, None, -1, -1, 0)) + b"b")
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_value((0,))
            + _py2_value(b"b") + b"\x87R(" + _py2_value(1) + _py2_value(shape) + dtype
            + _py2_value(False) + state_data + b"tb")


def batch_pickle(array_opcodes):
    return (b"\x80\x02}(" + _py2_value(b"data") + array_opcodes + _py2_value(b"labels")
            + _py2_value([0, 1]) + b"u.")


@pytest.fixture
def cifar_dir(tmp_path):
    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8), [0, 1]) for _ in range(5)]
    return write_cifar_dir(tmp_path / "cifar", parts, parts[0], CIFAR_NAMES)


@pytest.mark.parametrize("content, match", [
    # An object array: numpy would allocate 2**60 pointers to fill from the pickle's list.
    (batch_pickle(array_pickle((2**30, 2**30), b"O8", _py2_value([1, 2]))), "dtype 'O8'"),
    # uint8 that claims 2**60 bytes and holds 3.
    (batch_pickle(array_pickle((2**30, 2**30), b"u1", _py2_value(b"abc"))), "holds 3 bytes"),
    # A counted bytes opcode (BINBYTES8) that claims 32 TiB.
    (b"\x80\x04\x8e" + struct.pack("<Q", 2**45) + b"abc", "bytes8"),
    # A memo index of 2**32 - 16: the Unpickler would grow its memo to that many entries.
    (b"\x80\x02N" + b"r" + struct.pack("<I", 2**32 - 16) + b".", "memo entry"),
    # A protocol-4 frame that claims more than the file.
    (b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"N.", "frame claims"),
])
def test_cifar_pickle_claims_are_checked_before_building(cifar_dir, content, match):
    (cifar_dir / "data_batch_2").write_bytes(content)
    message = refused_without_allocating(DataError, match, data.load, f"cifar10:{cifar_dir}")
    assert "data_batch_2" in message


def test_cifar_over_the_budget_is_refused_before_reading(cifar_dir):
    limits.set_budget(10_000)       # each batch file is about 6 KiB
    refused_without_allocating(DataError, "CIFAR-10 batches, 7 files", data.load,
                               f"cifar10:{cifar_dir}")


# --- images ---------------------------------------------------------------------------------

def test_image_over_the_budget_is_refused_before_decoding(tmp_path):
    path = write_image(tmp_path / "big.png", np.zeros((600, 800), np.uint8))
    limits.set_budget(MiB)          # decoding takes 800 x 600 x 4 bytes = 1.8 MiB
    message = refused_without_allocating(DataError, "800x600 pixels", data.load_image, path,
                                         (600, 800, 1))
    assert "input budget" in message


def allocation_peak(func, *args):
    """(what func(*args) returned or raised, the tracemalloc peak meanwhile)."""
    tracemalloc.start()
    try:
        try:
            outcome = func(*args)
        except DataError as err:
            outcome = err
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_png_chunk_that_claims_gigabytes_is_not_read_at_that_length(tmp_path):
    # Found by the fuzz tests: Pillow reads the rest of the last IDAT chunk at the length its
    # header claims, and reading that from a file allocates the claim first.
    path = write_image(tmp_path / "a.png", np.zeros((12, 10, 3), np.uint8))
    raw = bytearray(path.read_bytes())
    assert raw[37:41] == b"IDAT"
    raw[33] = 0xFE                  # its length: 4,261,412,864 + the real one
    path.write_bytes(bytes(raw))
    outcome, peak = allocation_peak(data.load_image, path, (12, 10, 3))
    assert peak < 8 * MiB and isinstance(outcome, (np.ndarray, DataError))


def test_folder_of_images_over_the_budget_together(tmp_path):
    for cls in ("a", "b"):
        for i in range(4):
            write_image(tmp_path / cls / f"{i}.png", np.full((64, 64), 40 * i, np.uint8))
    # Room to decode any one image (3 full-size copies of 4 bytes a pixel and a pointer a row,
    # data.images._decoded_bytes) beside three held ones (64 x 64 x 1 bytes each), not more.
    limits.set_budget(3 * 64 * (64 * 4 + 8) + 3 * 64 * 64)
    refused_without_allocating(DataError, "the images up to", data.load, f"folder:{tmp_path}")
