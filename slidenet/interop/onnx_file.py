"""An .onnx file from anywhere, read as untrusted data: nothing in it is run, and every size it
claims is checked before anything is allocated.

    model, folder, raws = read_model("cnn.onnx")     # onnx.ModelProto, its folder, weights
    w = tensor_array(model.graph.initializer[0], folder, budget, raws[0])

A file up to STREAMED_FROM bytes is read once into a NumPy buffer; `split_weights` leaves each
initializer's raw bytes there (the weights are views of it) and hands protobuf only the rest to
parse. A larger file is walked in blocks instead (`_Stream`): each initializer of at least
LEFT_IN_FILE_FROM bytes stays in the file (`onnx_weights.FileTensor`), to be read in blocks
straight into the net's own array, and only the rest of the file is ever in memory.

Refused, each as one `OnnxFileError` line naming the file: a missing, empty, truncated or
foreign file; a file larger than protobuf can hold; a tensor whose dims say more bytes than
its data holds or than the budget allows; external tensor data whose path leaves the model's
folder (`..`, an absolute path, a link pointing out), whose file is missing, or whose claimed
offset and length reach past the end of that file; a file (or external file) cut while it is
read, naming the tensor whose bytes it no longer holds (`onnx_weights`).
"""
import os
from math import prod
from pathlib import Path

import numpy as np

from slidenet.errors import SlidenetError
from slidenet.interop.onnx_graph import require_onnx
from slidenet.interop.onnx_weights import FileTensor, Span
from slidenet.ops.runtime import huge_page_buffer
from slidenet.storage import limits
from slidenet.storage.limits import MAX_ONNX_FILE_BYTES, MAX_TENSOR_BYTES



class OnnxFileError(SlidenetError):
    """An .onnx file that is damaged, foreign or hostile."""


class Budget:
    """Bytes that the tensors of one file may still claim, all together: slidenet's input
    budget (`slidenet.storage.limits`: half the memory, or $SLIDENET_MAX_INPUT_BYTES), and
    never more than MAX_TENSOR_BYTES."""

    def __init__(self, total=None):
        self.total = min(MAX_TENSOR_BYTES, limits.budget()) if total is None else total
        self.left = self.total

    def take(self, what, nbytes):
        """Take `nbytes` for `what` (its description, or a function that makes it: the text is
        needed only for the message, and a graph has hundreds of tensors)."""
        if nbytes > self.left:
            what = what() if callable(what) else what
            before = self.total - self.left
            raise OnnxFileError(
                f"{what} claims {limits.human(nbytes)}"
                + (f" after {limits.human(before)} of tensors before it" if before else "")
                + f", more than slidenet's input budget of {limits.human(self.total)}: the file "
                f"is damaged, or it is genuine and needs {limits.ENV} raised (or more memory)")
        self.left -= nbytes


def check_claimed_size(what, nbytes, budget):
    """Refuse `what` when the `nbytes` it claims exceed `budget` bytes; called before allocating."""
    if nbytes > budget:
        raise OnnxFileError(f"{what} claims {limits.human(nbytes)}, more than the "
                            f"{limits.human(budget)} slidenet allows for it (a damaged or hostile "
                            "file?)")


def read_model(path):
    """(onnx.ModelProto, the folder external data must stay in, [each initializer's raw bytes,
    or None]), or an OnnxFileError.

    External tensor data is not read here: `tensor_array` reads it, after checking it. Nor is
    the graph judged: `onnx_checks.check_structure` does that next.
    """
    onnx = require_onnx()
    from google.protobuf.message import DecodeError
    path = Path(path)
    if not path.exists():
        raise OnnxFileError(f"no such file: {path}")
    if not path.is_file():
        raise OnnxFileError(f"{path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise OnnxFileError(f"{path} is empty, not an ONNX model")
    check_claimed_size(f"{path}", size, MAX_ONNX_FILE_BYTES)
    model = onnx.ModelProto()
    data = None
    if size > STREAMED_FROM:
        # The large initializers stay in the file, each checked to lie inside it (the walk
        # never passes its size); the net's arrays are filled from it (`FileTensor`).
        with open(path, "rb") as fh:
            stream = _Stream(fh, size, path)
            light, raws = split_weights(stream, lambda start, stop: _kept(stream, start, stop))
    else:
        # One read (`_read_whole`), never more than the size checked above. Read-only: the
        # weights are views of it, never written. The initializers' raw bytes stay where they
        # lie in the file's buffer, viewed by NumPy; protobuf parses the rest (a few
        # kilobytes), so the weights are in memory once, and never copied out of protobuf.
        data = _read_whole(path, size, path)
        light, raws = split_weights(data)
    if light is None and data is None:      # laid out otherwise: protobuf judges it whole
        data = _read_whole(path, size, path)
    try:
        model.ParseFromString(light if light is not None else data.tobytes())
    except (DecodeError, ValueError, RuntimeError) as err:
        raise OnnxFileError(f"{path} is not an ONNX model, or it is truncated "
                            f"({first_line(err) or 'protobuf cannot parse it'})") from None
    if model.ir_version < 3 or not model.HasField("graph") or not model.opset_import:
        raise OnnxFileError(f"{path} is not an ONNX model, or it is truncated (it has no "
                            + ("graph" if not model.HasField("graph") else
                               "opset" if not model.opset_import else "valid IR version") + ")")
    folder = path.resolve().parent
    # Every external file is vetted before anything else reads the graph (each file once: a
    # graph of hundreds of tensors keeps them in one or two files).
    files = {}
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _external_file(tensor, folder, f"tensor {tensor.name!r}", files)
    # The graph's structure is judged next, by `onnx_checks.check_structure`; each weight by
    # `tensor_array` as it is read.
    return model, folder, raws if light is not None else [None] * len(model.graph.initializer)


HUGE_PAGES_UP_TO = 64 * 2**20      # bytes: a file read into NumPy's buffer, on huge pages
STREAMED_FROM = 64 * 2**20         # bytes: a larger file (or external file) is walked in blocks
LEFT_IN_FILE_FROM = 2**20          # bytes: of a walked file, a tensor this large stays there
WALK_BLOCK = 256 * 2**10           # bytes: read at a time by the walk (`_Stream`)


def _read_whole(path, size, name):
    """The `size` bytes of the file at `path` as a read-only uint8 array (OnnxFileError when
    the file no longer holds them).

    Up to HUGE_PAGES_UP_TO, one read straight into a NumPy array, for which NumPy asks the
    kernel for huge pages (starting on one, `runtime.huge_page_buffer`): several times faster to
    fill than a bytes object. A larger file is
    read into a bytes object, as onnx.load reads it: there huge pages were the slower
    (docs/benchmarks.md, "ONNX import time")."""
    with open(path, "rb") as fh:
        if size > HUGE_PAGES_UP_TO:
            data = np.frombuffer(fh.read(size), np.uint8)
        else:
            data = huge_page_buffer(size, zeroed=False)
            data = data[:fh.readinto(data)]
    if len(data) != size:
        raise OnnxFileError(f"{name} changed while it was read ({len(data):,} of {size:,} "
                            "bytes)")
    data.flags.writeable = False
    return data


class _Stream:
    """A file of `size` bytes (as stat gave it), read forward in blocks of WALK_BLOCK into one
    reused buffer, for `split_weights`: `stream[i]` is a byte (an int), `stream[a:b]` a
    memoryview of bytes (valid until the next read); bytes never asked for (the large
    initializers' raw data) are never read. A file that ends before `size` changed while it
    was read: an OnnxFileError."""

    def __init__(self, fh, size, name):
        self.fh, self.size, self.name = fh, size, name
        self.buffer = memoryview(bytearray(min(WALK_BLOCK, size)))
        self.start = self.stop = 0

    def __len__(self):
        return self.size

    def _fill(self, at, need):
        """Read the block at `at`, which must hold `need` bytes."""
        self.fh.seek(at)
        self.start, self.stop = at, at + self.fh.readinto(self.buffer[:self.size - at])
        if self.stop < at + need:
            self._ended(self.stop)

    def _ended(self, at):
        raise OnnxFileError(f"{self.name} changed while it was read (it ends at byte {at:,}, "
                            f"not {self.size:,})")

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop = key.start, key.stop
            if not (self.start <= start and stop <= self.stop):
                if stop - start > len(self.buffer):     # a large piece: read on its own
                    self.fh.seek(start)
                    data = self.fh.read(stop - start)
                    if len(data) != stop - start:
                        self._ended(start + len(data))
                    return memoryview(data)
                self._fill(start, stop - start)
            return self.buffer[start - self.start:stop - self.start]
        if not self.start <= key < self.stop:
            self._fill(key, 1)
        return self.buffer[key - self.start]


def _kept(stream, start, stop):
    """What `read_model` keeps of an initializer's raw data at stream[start:stop]: its place
    (a `Span`) when it is large, else its bytes (uint8)."""
    if stop - start >= LEFT_IN_FILE_FROM:
        return Span(Path(stream.name).resolve(), str(stream.name), start, stop - start)
    return np.frombuffer(stream[start:stop].tobytes(), np.uint8)


def _varint(data, at, end):
    """(value, next position) of the varint at `at`; ValueError past `end` or over 10 bytes.
    data: a memoryview of bytes (indexing it gives ints; a NumPy array's scalars are slower)."""
    value = shift = 0
    for i in range(at, min(end, at + 10)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise ValueError("a varint runs past its message")


def _fields(data, start, end):
    """(field number, wire type, start of the field, start of its payload, end) for each field
    of the protobuf message in data[start:end]; ValueError for anything malformed."""
    at = start
    while at < end:
        # A tag or length under 128 is one byte (nearly every tag, most lengths): read inline,
        # the rest by `_varint` (once per field of the file).
        tag = data[at]
        if tag < 0x80:
            payload = at + 1
        else:
            tag, payload = _varint(data, at, end)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            if payload < end and data[payload] < 0x80:
                length, payload = data[payload], payload + 1
            else:
                length, payload = _varint(data, payload, end)
            stop = payload + length
        elif wire == 0:
            _, stop = _varint(data, payload, end)
        elif wire == 1:
            stop = payload + 8
        elif wire == 5:
            stop = payload + 4
        else:
            raise ValueError("groups are not written by ONNX")
        if stop > end or number == 0:
            raise ValueError("a field runs past its message")
        yield number, wire, at, payload, stop
        at = stop


def _length_delimited(number, body):
    """A protobuf field `number` of wire type 2 holding the bytes `body`."""
    head, value = bytearray(), (number << 3) | 2
    for part in (value, len(body)):
        while part >= 0x80:
            head.append(part & 0x7F | 0x80)
            part >>= 7
        head.append(part)
    return bytes(head) + body


GRAPH, INITIALIZER, RAW_DATA = 7, 5, 9      # ModelProto.graph, GraphProto.initializer, ...


def split_weights(data, keep=None):
    """(the ONNX file in `data` (uint8, or a `_Stream` over the file) without its initializers'
    raw_data, [what `keep(start, stop)` makes of each initializer's raw bytes at
    data[start:stop] (by default a view of them in `data`), or None where it has none]);
    (None, None) when the file is not laid out as expected, and protobuf is then left to
    parse (and judge) it whole."""
    if keep is None:
        array = data
        keep = lambda start, stop: array[start:stop]     # noqa: E731
    if isinstance(data, np.ndarray):
        data = memoryview(data)
    try:
        raws, model = [], bytearray()
        graphs = 0
        for number, wire, start, payload, stop in _fields(data, 0, len(data)):
            if number != GRAPH or wire != 2:
                model += data[start:stop].tobytes()
                continue
            graphs += 1
            graph = bytearray()
            for g_number, g_wire, g_start, g_payload, g_stop in _fields(data, payload, stop):
                if g_number != INITIALIZER or g_wire != 2:
                    graph += data[g_start:g_stop].tobytes()
                    continue
                tensor, raw = bytearray(), None
                for t_number, t_wire, t_start, t_payload, t_stop in \
                        _fields(data, g_payload, g_stop):
                    if t_number == RAW_DATA and t_wire == 2:
                        # Kept where it lies, while the walk is there (a `_Stream` reads on
                        # from it); the last one counts, as in protobuf.
                        raw = keep(t_payload, t_stop)
                    else:
                        tensor += data[t_start:t_stop].tobytes()
                raws.append(raw)
                graph += _length_delimited(INITIALIZER, bytes(tensor))
            model += _length_delimited(GRAPH, bytes(graph))
        if graphs != 1:
            return None, None
        return bytes(model), raws
    except ValueError:
        return None, None


def _copy_fields(source, target, leave=()):
    """Copy every set field of the protobuf message `source` into `target`, but `leave`."""
    for field, value in source.ListFields():
        if field.name in leave:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def light_model(onnx, model):
    """`model` without its initializers' data: each initializer becomes a graph input of its
    type and shape, so the checker and shape inference see the same graph at a tiny cost."""
    light = onnx.ModelProto()
    _copy_fields(model, light, leave=("graph",))
    _copy_fields(model.graph, light.graph, leave=("initializer",))
    named = {value.name for value in model.graph.input}
    for tensor in model.graph.initializer:
        if tensor.name not in named:
            light.graph.input.append(onnx.helper.make_tensor_value_info(
                tensor.name, tensor.data_type, list(tensor.dims)))
    return light


def inferred_shapes(onnx, model):
    """{value name: [dims]} as ONNX's shape inference finds them (None for a dimension it
    does not know); {} when inference fails. Only for messages about refused graphs."""
    try:
        inferred = onnx.shape_inference.infer_shapes(light_model(onnx, model))
    except Exception:       # inference is a help for the message, never a reason to fail
        return {}
    shapes = {}
    for value in (*inferred.graph.value_info, *inferred.graph.output):
        if value.type.WhichOneof("value") == "tensor_type" and \
                value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None
                                  for d in value.type.tensor_type.shape.dim]
    return shapes


def _tensors(graph):
    """The graph's initializers and the tensors its nodes hold as attributes."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors


def first_line(err):
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


_DTYPES = {}        # TensorProto.data_type -> the NumPy dtype of a type slidenet reads


def tensor_array(tensor, folder, budget, raw=None, files=None):
    """A TensorProto's numbers as a NumPy array, checked before anything is allocated.

    The dims times the element size must fit the `budget` (a `Budget`) and match the bytes
    the tensor holds, inline or in an external file inside `folder`. raw: its raw_data as
    `split_weights` found it in the file (uint8 array, or a `Span` of the file for a large
    tensor left there), when that took it out of the tensor. A large tensor left in its file
    (this one's or an external one) is returned as a `FileTensor`, read when it is used.
    files: {} kept by the caller across the tensors of one model, so that each external file
    is checked (inside `folder`, a regular file) once, not once per tensor.
    """
    onnx = require_onnx()
    what = f"tensor {tensor.name!r}"
    dtype = _DTYPES.get(tensor.data_type)
    if dtype is None:
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        except (KeyError, TypeError, ValueError):
            raise OnnxFileError(f"{what} has data type {tensor.data_type}, which is not numbers "
                                "slidenet reads") from None
        if dtype.kind not in "biuf" or dtype.itemsize > 8:
            raise OnnxFileError(f"{what} holds "
                                f"{onnx.TensorProto.DataType.Name(tensor.data_type)}, not "
                                "numbers slidenet reads")
        _DTYPES[tensor.data_type] = dtype
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise OnnxFileError(f"{what} has a negative dimension {dims}")
    count = prod(dims)
    nbytes = count * dtype.itemsize
    budget.take(lambda: f"{what} ({' x '.join(map(str, dims)) or 'a scalar'} {dtype.name})",
                nbytes)
    if tensor.HasField("segment"):
        raise OnnxFileError(f"{what} is split into segments, which slidenet does not read")
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raw = _external_bytes(tensor, folder, nbytes, what, files, budget)
    elif raw is not None or tensor.HasField("raw_data"):
        raw = tensor.raw_data if raw is None else raw
        if len(raw) != nbytes:
            where = f"{raw.name}: " if isinstance(raw, Span) else ""
            raise OnnxFileError(f"{where}{what}: its dims {dims} say {nbytes:,} bytes of "
                                f"{dtype.name} but it holds {len(raw):,}")
    else:
        return _typed_field(tensor, dtype, count, dims, what)
    if isinstance(raw, Span):
        return FileTensor(raw, tensor.name, dtype.newbyteorder("<"), dims)
    # A view on the bytes (no copy): read-only, which suits weights that are only read.
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    if not array.dtype.isnative:
        array = array.astype(dtype)
    return array.reshape(dims)


def _typed_field(tensor, dtype, count, dims, what):
    """The numbers of a tensor kept in float_data, int64_data, ... rather than raw_data."""
    field = {"f": "float_data" if dtype.itemsize == 4 else "double_data",
             "i": "int64_data" if dtype.itemsize == 8 else "int32_data",
             "u": "uint64_data" if dtype.itemsize == 8 else "int32_data",
             "b": "int32_data"}[dtype.kind]
    if dtype == np.float16:
        field = "int32_data"
    values = getattr(tensor, field)
    if len(values) != count:
        raise OnnxFileError(f"{what}: its dims {dims} say {count:,} numbers but it holds "
                            f"{len(values):,}")
    if dtype == np.float16:     # float16 bits are stored one per int32
        return np.array(values, dtype=np.uint16).view(np.float16).reshape(dims)
    return np.array(values, dtype=dtype).reshape(dims)


class _External:
    """An external data file of one model, checked: its path and size, and its bytes once read
    whole (`_external_bytes`)."""

    def __init__(self, path, size):
        self.path, self.size, self.data = path, size, None


def _external_bytes(tensor, folder, nbytes, what, files=None, budget=None):
    """`nbytes` from the external file a tensor names, which must lie inside `folder`.

    With `files` (the files of one model) and a `budget` the file's size fits, a file up to
    STREAMED_FROM bytes is read whole at its first tensor, as the model file is (`read_model`),
    and every tensor is a view of it: one read rather than one open, seek and read per tensor
    (DenseNet's 430). Of a larger file, a tensor of LEFT_IN_FILE_FROM bytes or more stays
    there (a `Span`, read straight into the net's array), and a smaller one is read alone."""
    target, location, offset, length = _external_file(tensor, folder, what, files)
    if length != nbytes:
        raise OnnxFileError(f"{what}: its dims say {nbytes:,} bytes but its external data "
                            f"claims {length:,}")
    external = files.get(location) if files is not None else None
    size = external.size if external is not None else target.stat().st_size
    if size > STREAMED_FROM and length >= LEFT_IN_FILE_FROM:
        return Span(target, location, offset, length)
    if external is not None and budget is not None and external.size <= budget.total and \
            external.size <= STREAMED_FROM:
        if external.data is None:
            external.data = _read_whole(target, external.size, location)
        return external.data[offset:offset + length]
    with open(target, "rb") as fh:
        fh.seek(offset)
        raw = fh.read(length)
    if len(raw) != length:
        raise OnnxFileError(f"{what}: its external data file {location!r} ended early")
    return raw


def _external_file(tensor, folder, what, files=None):
    """(path, location, offset, length) of a tensor's external data, checked: the file lies
    inside `folder` and holds the bytes claimed. files: {location: `_External`} of the files
    already checked for this model, filled in here (None: check every time)."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    if not location:
        raise OnnxFileError(f"{what} says its data is external but names no file")
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise OnnxFileError(f"{what}: its external offset or length is not a number") from None
    if files is not None and location in files:
        target, size = files[location].path, files[location].size
    else:
        target, size = _external_target(folder, location, what)
        if files is not None:
            files[location] = _External(target, size)
    if length is None:
        length = size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise OnnxFileError(f"{what}: its external data claims bytes {offset:,} to "
                            f"{offset + length:,} of {location!r}, which has {size:,}")
    return target, location, offset, length


def _external_target(folder, location, what):
    """(path, size) of the external data file `location`, which must be a regular file
    inside `folder`."""
    # Resolve links too: a link inside the folder that points out of it is refused as well.
    target = (folder / location).resolve()
    if os.path.isabs(location) or not target.is_relative_to(folder):
        raise OnnxFileError(f"{what}: its external data {location!r} lies outside the model's "
                            f"folder {folder}; slidenet reads only files beside the model")
    if not target.is_file():
        raise OnnxFileError(f"{what}: its external data file {location!r} is missing (or not "
                            "a regular file)")
    return target, target.stat().st_size
