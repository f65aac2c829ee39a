"""Fuzzing the loaders: seeded mutations of a valid file of each format either load or raise
slidenet's own error (a SlidenetError), never anything else, and never allocate beyond the
input budget.

Mutations: flipped bytes, truncation, and headers that lie about sizes and counts (an `.npy`
shape, a zip's declared sizes, IDX dimensions inside a valid gzip stream, the lengths and
numbers in a pickle, PNG and JPEG dimensions with a correct checksum). The seeds are fixed, so a
failure names the format, the mutation and the seed, and replays exactly. EXAMPLES bounds the
run to a few seconds in `make test`.
"""
import gzip
import io
import pickletools
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from slidenet import data
from slidenet.errors import SlidenetError
from slidenet.storage import limits, modelfile

from helpers import write_cifar_dir, write_idx, write_image

EXAMPLES = 40               # per format and mutation
BUDGET = 32 * 2**20         # the input budget while fuzzing: a lie above it is refused at once
PEAK = 3 * BUDGET           # what a load may allocate at most (decoding can copy its input twice)


@pytest.fixture(autouse=True)
def small_budget():
    previous = limits.set_budget(BUDGET)
    yield
    limits.set_budget(previous)


# --- mutations: (valid bytes, rng) -> mutated bytes ----------------------------------------

def flip(raw, rng):
    """XOR 1 to 4 random bytes with a non-zero value."""
    out = bytearray(raw)
    for at in rng.integers(0, len(out), size=rng.integers(1, 5)):
        out[at] ^= int(rng.integers(1, 256))
    return bytes(out)


def truncate(raw, rng):
    return raw[:int(rng.integers(0, len(raw)))]


def big_number(rng, width):
    """A value for a `width`-byte unsigned field that claims far more than there is."""
    top = 2 ** (8 * width) - 1
    return min(top, int(rng.choice([top, top // 2, top // 255, 2 ** (8 * width - 2), 65535,
                                    65536 * 3])))


def lie_npz(raw, rng):
    """An .npy header's shape gets other digits (same length: the zip stays well-formed), or a
    zip directory entry declares another uncompressed size."""
    out = bytearray(raw)
    shapes = [i for i in range(len(raw)) if raw.startswith(b"'shape': (", i)]   # none if deflated
    if shapes and rng.random() < 0.5:
        start = shapes[int(rng.integers(len(shapes)))] + len(b"'shape': (")
        end = raw.index(b")", start)
        for i in range(start, end):
            if chr(out[i]).isdigit():
                out[i] = ord(str(int(rng.integers(0, 10)))) if rng.random() < 0.7 else ord("9")
    else:
        entries = [i for i in range(len(raw)) if raw.startswith(b"PK\x01\x02", i)]
        at = entries[int(rng.integers(len(entries)))] + 24     # uncompressed size (uint32)
        out[at:at + 4] = struct.pack("<I", big_number(rng, 4))
    return bytes(out)


def lie_idx(payload, rng):
    """One IDX dimension claims a big number."""
    ndim = payload[3]
    at = 4 + 4 * int(rng.integers(0, ndim))
    return payload[:at] + struct.pack(">I", big_number(rng, 4)) + payload[at + 4:]


def lie_pickle(raw, rng):
    """A number or a counted length in the pickle's opcodes claims far more."""
    ops = [(op, pos) for op, arg, pos in pickletools.genops(io.BytesIO(raw))
           if op.arg is not None and op.arg.n in (1, 2, 4, 8, pickletools.TAKEN_FROM_ARGUMENT1,
                                                   pickletools.TAKEN_FROM_ARGUMENT4,
                                                   pickletools.TAKEN_FROM_ARGUMENT8U)]
    op, pos = ops[int(rng.integers(len(ops)))]
    width = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
             pickletools.TAKEN_FROM_ARGUMENT8U: 8}.get(op.arg.n, op.arg.n)
    value = big_number(rng, width) if width != 4 else big_number(rng, 4) // 2   # signed int4
    return raw[:pos + 1] + value.to_bytes(width, "little") + raw[pos + 1 + width:]


def lie_png(raw, rng):
    """IHDR's width or height claims a big number, with the chunk's CRC made right again."""
    out = bytearray(raw)
    at = 16 + 4 * int(rng.integers(0, 2))
    out[at:at + 4] = struct.pack(">I", big_number(rng, 4) // 2)
    out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    return bytes(out)


def lie_jpeg(raw, rng):
    """The frame header (SOF0) claims another height or width."""
    out = bytearray(raw)
    sof = raw.index(b"\xff\xc0")
    at = sof + 5 + 2 * int(rng.integers(0, 2))
    out[at:at + 2] = struct.pack(">H", big_number(rng, 2))
    return bytes(out)


# --- the formats: a valid file, its loader and its lie --------------------------------------

def npz_bytes(compressed):
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(
        buffer, x=rng.integers(0, 255, (10, 8, 8), dtype=np.uint8), y=np.arange(10) % 2,
        x_test=rng.integers(0, 255, (5, 8, 8), dtype=np.uint8), y_test=np.arange(5) % 2,
        class_names=np.array(["a", "b"]))
    return buffer.getvalue()


MODEL_ARRAYS = {"param/conv1.W": np.linspace(-1, 1, 72, dtype=np.float32).reshape(3, 3, 2, 4),
                "param/conv1.b": np.zeros(4, np.float32), "norm/mean": np.array([0.5])}


def model_bytes(tmp_path):
    modelfile.save(tmp_path / "valid.npz", MODEL_ARRAYS, {"pattern": "INPUT(8x8x2) -> CONV(4)"})
    return (tmp_path / "valid.npz").read_bytes()


def load_npz_data(path):
    dataset = data.load(f"npz:{path}")
    assert dataset.x_train.dtype == np.uint8 and dataset.x_train.ndim == 4


def load_model(path):
    arrays, meta = modelfile.load(path)
    # The checksum makes any change that still loads a change of nothing but zip metadata.
    assert set(arrays) == set(MODEL_ARRAYS)
    for name, value in MODEL_ARRAYS.items():
        np.testing.assert_array_equal(arrays[name], value)
    assert meta == {"pattern": "INPUT(8x8x2) -> CONV(4)"}


def idx_payload(tmp_path):
    """A valid uncompressed IDX file's bytes: uint8 (6, 5, 4)."""
    array = np.random.default_rng(1).integers(0, 255, (6, 5, 4), dtype=np.uint8)
    return write_idx(tmp_path / "valid-idx", array).read_bytes()


def load_idx(path):
    assert isinstance(data.read_idx(path), np.ndarray)


def cifar_batch_bytes(tmp_path):
    rng = np.random.default_rng(2)
    parts = [(rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8), [0, 1]) for _ in range(5)]
    write_cifar_dir(tmp_path / "cifar", parts, parts[0], [f"c{i}" for i in range(10)])
    return (tmp_path / "cifar" / "data_batch_1").read_bytes()


def load_cifar_batch(path):
    # The mutated file replaces data_batch_1 of an otherwise valid directory.
    target = path.parent / "cifar" / "data_batch_1"
    target.write_bytes(path.read_bytes())
    dataset = data.load(f"cifar10:{target.parent}")
    assert dataset.x_train.shape[1:] == (32, 32, 3)


def image_bytes(tmp_path, suffix):
    pixels = np.random.default_rng(3).integers(0, 255, (12, 10, 3), dtype=np.uint8)
    return write_image(tmp_path / f"valid{suffix}", pixels).read_bytes()


def load_image_file(path):
    assert data.load_image(path, (12, 10, 3), resize=True).shape == (12, 10, 3)


FORMATS = {
    # name: (valid bytes from tmp_path, file name, loader, the lie about sizes and counts)
    "npz": (lambda t: npz_bytes(False), "data.npz", load_npz_data, lie_npz),
    "npz-compressed": (lambda t: npz_bytes(True), "data.npz", load_npz_data, lie_npz),
    "model": (model_bytes, "model.npz", load_model, lie_npz),
    "idx": (idx_payload, "images-idx3-ubyte", load_idx, lie_idx),
    "idx-gzip": (lambda t: gzip.compress(idx_payload(t), mtime=0), "images-idx3-ubyte.gz",
                 load_idx, lambda raw, rng: gzip.compress(lie_idx(gzip.decompress(raw), rng),
                                                          mtime=0)),
    "cifar": (cifar_batch_bytes, "batch", load_cifar_batch, lie_pickle),
    "png": (lambda t: image_bytes(t, ".png"), "image.png", load_image_file, lie_png),
    "jpeg": (lambda t: image_bytes(t, ".jpg"), "image.jpg", load_image_file, lie_jpeg),
}
MUTATIONS = ("flip", "truncate", "lie")


def _loads_or_is_refused(case, action, outcomes):
    """Run action(): it loads (counted in outcomes["loaded"]) or raises a SlidenetError with a
    message (outcomes["refused"]); anything else is a defect. Either way it allocates less than
    PEAK."""
    tracemalloc.start()
    try:
        action()
        outcomes["loaded"] += 1
    except SlidenetError as err:
        assert str(err).strip(), case
        outcomes["refused"] += 1
    except Exception as err:        # anything but slidenet's own error is a defect
        pytest.fail(f"{case}: {type(err).__name__}: {err}")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK, f"{case}: {peak / 2**20:.0f} MiB allocated"


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("kind", FORMATS)
def test_mutated_files_load_or_raise_slidenet_errors(tmp_path, kind, mutation):
    make, name, load, lie = FORMATS[kind]
    valid = make(tmp_path)
    path = tmp_path / name
    path.write_bytes(valid)
    load(path)                      # the unmutated file loads
    mutate = {"flip": flip, "truncate": truncate, "lie": lie}[mutation]
    outcomes = {"loaded": 0, "refused": 0}
    for seed in range(EXAMPLES):
        rng = np.random.default_rng([seed, len(kind), len(mutation)])
        path.write_bytes(mutate(valid, rng))
        _loads_or_is_refused(f"{kind}, {mutation}, seed {seed}", lambda: load(path), outcomes)
    # Truncation and lies about sizes must be noticed at least some of the time.
    if mutation != "flip":
        assert outcomes["refused"] > 0, outcomes


# --- a hostile meta: anyone can recompute a model file's checksum (#25) ---------------------

HOSTILE_VALUES = (5, -1, 2**70, 1.5, "two", "", None, True, [], {}, [1, "a", None], {"a": []},
                  "INPUT(100x100x1) -> FC(80000) -> FC(10)", "INPUT(8x8x2) -> [RELU]*999 -> FC(3)",
                  "x" * 200_000)
# Nested 20 deep, more than a meta may be (storage.limits.MAX_META_DEPTH).
DEEP = 0
for _ in range(20):
    DEEP = [DEEP]
HOSTILE_VALUES += (DEEP,)


def _paths(value, prefix=()):
    """Every (path of keys and indexes) inside a JSON value, the value's own path first."""
    yield prefix
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _paths(child, prefix + (key,))


def _replace(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


def test_a_model_whose_meta_is_altered_loads_or_is_refused(tmp_path):
    """Changes of any field of a real model's meta (a new value of another type, or a claim of
    a bigger net), re-checksummed: `slidenet.load` loads it or raises a SlidenetError,
    within the budget, and a loaded one predicts."""
    from pathlib import Path
    import slidenet
    fixture = Path(__file__).parent / "fixtures" / "model-0.1.0.npz"
    arrays, meta = modelfile.load(fixture)
    paths = [p for p in _paths(meta) if p]
    # Every top-level field with every hostile value, then seeded fields at any depth.
    cases = [((key,), new) for key in sorted(meta) for new in HOSTILE_VALUES]
    for seed in range(2 * EXAMPLES):
        rng = np.random.default_rng([seed, 25])
        cases.append((paths[int(rng.integers(len(paths)))],
                      HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]))
    outcomes = {"loaded": 0, "refused": 0}
    images = np.zeros((2, 8, 8, 2), np.uint8)
    for path, new in cases:
        modelfile.save(tmp_path / "m.npz", arrays, _replace(meta, path, new))

        def use():
            model = slidenet.load(tmp_path / "m.npz")
            model.predict(images)
            str(model)

        _loads_or_is_refused(f"meta{list(path)} = {str(new)[:40]!r}", use, outcomes)
    assert outcomes["loaded"] and outcomes["refused"], outcomes
