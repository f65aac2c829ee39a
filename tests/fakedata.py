"""Writers of small data files in the exact on-disk formats that `slidenet.data` reads.

Each writer takes arrays and produces the bytes the real distribution would have: IDX files
(big-endian header, optionally gzipped), CIFAR-10 python batches (pickle protocol 2 with bytes
keys, both as Python 3 writes them and as the original Python 2 files are laid out), folders of
PNG/JPEG images.
"""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
             np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def write_idx(path, array, gz=False):
    """IDX: 0, 0, dtype code, ndim, then each dim as a big-endian uint32, then the data."""
    array = np.asarray(array)
    big = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, IDX_CODES[big], array.ndim]) + struct.pack(f">{array.ndim}I",
                                                                     *array.shape)
    payload = header + array.astype(big).tobytes()
    path = Path(str(path) + ".gz" if gz else path)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_mnist_dir(directory, x_train, y_train, x_test, y_test, gz=False):
    """The four MNIST files; x: uint8 (N, 28, 28), y: uint8 (N,)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in (("train-images-idx3-ubyte", x_train), ("train-labels-idx1-ubyte", y_train),
                        ("t10k-images-idx3-ubyte", x_test), ("t10k-labels-idx1-ubyte", y_test)):
        write_idx(directory / stem, np.asarray(array, dtype=np.uint8), gz=gz)
    return directory


def cifar_rows(images):
    """uint8 (N, 32, 32, 3) -> (N, 3072): the R plane, then G, then B, each row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def write_cifar_dir(directory, batches, test, label_names, python2=False):
    """data_batch_1..len(batches), test_batch and batches.meta.

    batches, test: (images uint8 (N, 32, 32, 3), labels list of int).
    python2=True lays the pickles out as the original files do (Python 2 `str` keys and
    `numpy.core.multiarray` names); otherwise Python 3's protocol 2 (`_codecs.encode` for bytes).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dump = _py2_dumps if python2 else (lambda obj: pickle.dumps(obj, protocol=2))
    named = [(f"data_batch_{i + 1}", b) for i, b in enumerate(batches)] + [("test_batch", test)]
    for name, (images, labels) in named:
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
                 b"data": cifar_rows(images),
                 b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
        (directory / name).write_bytes(dump(batch))
    meta = {b"label_names": [n.encode() for n in label_names], b"num_vis": 3072,
            b"num_cases_per_batch": len(batches[0][1])}
    (directory / "batches.meta").write_bytes(dump(meta))
    return directory


def _py2_dumps(obj):
    """Protocol 2 as Python 2's cPickle wrote it: byte strings are plain `str` opcodes."""
    return b"\x80\x02" + _py2_value(obj) + b"."


def _py2_value(obj):
    if isinstance(obj, bytes):
        return (b"U" + bytes([len(obj)]) if len(obj) < 256
                else b"T" + struct.pack("<I", len(obj))) + obj
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if obj is None:
        return b"N"
    if isinstance(obj, tuple):
        return b"(" + b"".join(_py2_value(v) for v in obj) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(_py2_value(v) for v in obj) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2_value(k) + _py2_value(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, np.ndarray):
        if obj.dtype != np.uint8:
            raise TypeError("only uint8 arrays (the byte order below is '|')")
        dtype = (b"cnumpy\ndtype\n" + _py2_value((obj.dtype.str[1:].encode(), 0, 1)) + b"R"
                 + _py2_value((3, b"|", None, None, None, -1, -1, 0)) + b"b")
        return (b"cnumpy.core.multiarray\n_reconstruct\n"
                + b"cnumpy\nndarray\n" + _py2_value((0,)) + _py2_value(b"b")
                + b"\x87R(" + _py2_value(1) + _py2_value(obj.shape) + dtype
                + _py2_value(False) + _py2_value(obj.tobytes()) + b"tb")
    raise TypeError(f"no Python 2 pickle for {type(obj).__name__}")


def write_image(path, array):
    """uint8 (H, W) or (H, W, 3|4) -> an image file; the format follows the suffix."""
    from PIL import Image
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return Path(path)
