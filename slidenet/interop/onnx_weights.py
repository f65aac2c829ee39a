"""A large weight left in its file until the net's own array is filled from it.

    span = Span(Path("vgg.onnx"), "vgg.onnx", offset, 4096 * 25088 * 4)   # checked in the file
    w = FileTensor(span, "fc1.weight", np.dtype("<f4"), (4096, 25088))
    view = w.T                          # (25088, 4096): transposes and reshapes read nothing
    view.copy_into(net_array)           # the bytes read in blocks of rows into one small buffer

Why: bytes read whole from a file are fresh memory, touched once there and once more in the
net's arrays they are copied into; on a machine where fresh memory is dear (a virtual machine
that hands free pages back to its host) the second touch costs as much as the first. Read in
blocks of rows into one reused buffer of a few MiB, only the net's memory is fresh
(docs/benchmarks.md, "ONNX import time").

A `FileTensor` knows the views the importer makes of a weight: any `transpose` (a Conv's
(K, C, F_h, F_w) -> (F_h, F_w, C, K), a Gemm's B.T), and `reshape` while the view is in the
file's own order (an FC's rows split as (n, D*H*W) -> (n, D, H, W)). Anything else
(`np.asarray(w)`, arithmetic) reads the whole tensor. The file stays untrusted: its size is
checked against the bytes claimed before anything is read, and a file that ends early (it
changed while slidenet read it) is an `OnnxFileError` naming the file and the tensor.
"""
import os
from math import prod
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

BLOCK_BYTES = 2 * 2**20     # bytes of the file read at a time into `copy_into`'s buffer
TILE = 64                   # `copy_tiled` moves tiles of this many by this many


class Span(NamedTuple):
    """The bytes of one tensor in a file, not read yet: `path` (to open), `name` (for
    messages), where they start and how many; `len()` is their count, as for bytes read."""
    path: object
    name: str
    offset: int
    length: int

    def __len__(self):
        return self.length


class FileTensor:
    """A tensor of `dtype` whose bytes lie in the file at `path` from `offset`, in C order of
    the shape `stored`, viewed as `stored` transposed by `order` (shape: `.shape`). path and
    offset have been checked against the file (it held the bytes when it was walked)."""

    def __init__(self, span, tensor, dtype, stored, order=None):
        self.span = span
        self.tensor = tensor            # the tensor's name, for messages
        self.dtype = np.dtype(dtype)
        self.stored = tuple(int(d) for d in stored)
        self.order = tuple(range(len(self.stored))) if order is None else tuple(order)
        self.shape = tuple(self.stored[i] for i in self.order)
        self.ndim = len(self.shape)
        self.size = prod(self.shape)
        self.nbytes = self.size * self.dtype.itemsize

    def __repr__(self):
        return (f"FileTensor({self.tensor!r} of {self.span.name}, {self.shape} "
                f"{self.dtype.name})")

    @property
    def flags(self):
        """As NumPy's: c_contiguous when the view is in the file's own order."""
        return SimpleNamespace(c_contiguous=self.order == tuple(range(self.ndim)))

    def transpose(self, *axes):
        if len(axes) == 1 and not isinstance(axes[0], (int, np.integer)):
            axes = axes[0]
        axes = tuple(range(self.ndim))[::-1] if axes is None or not len(axes) else \
            tuple(int(a) % max(self.ndim, 1) for a in axes)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"axes {axes} do not permute a {self.ndim}-D tensor")
        return FileTensor(self.span, self.tensor, self.dtype, self.stored,
                          tuple(self.order[a] for a in axes))

    @property
    def T(self):
        return self.transpose()

    def reshape(self, *shape):
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        shape = tuple(int(d) for d in shape)
        if shape.count(-1) == 1:
            known = prod(d for d in shape if d != -1)
            shape = tuple(self.size // known if d == -1 and known else d for d in shape)
        if prod(shape) != self.size or any(d < 0 for d in shape):
            raise ValueError(f"cannot reshape {self.shape} into {shape}")
        if shape == self.shape:
            return self
        if self.flags.c_contiguous:
            return FileTensor(self.span, self.tensor, self.dtype, shape)
        return np.asarray(self).reshape(shape)

    def __array__(self, dtype=None, copy=None):
        """The whole tensor read (checked), as the view says."""
        data = np.empty(self.nbytes, np.uint8)
        with Reads() as reads:
            self._read(reads.open(self), self.span.offset, data)
        array = data.view(self.dtype).reshape(self.stored).transpose(self.order)
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        return array if dtype is None else array.astype(dtype, copy=False)

    def copy_into(self, target, reads=None):
        """target[...] = this tensor, read in blocks of whole rows (of the stored first axis)
        of about BLOCK_BYTES, each transposed into its place in `target` (shape `.shape`).
        reads: the `Reads` (buffer, open files) the copies of one net share."""
        if reads is None:
            with Reads() as reads:
                return self.copy_into(target, reads)
        if tuple(target.shape) != self.shape:
            raise ValueError(f"{self!r} cannot fill an array of shape {target.shape}")
        rows = self.stored[0] if self.stored else 1
        row = self.nbytes // rows if rows else 0
        if not row:
            return
        per = min(rows, max(1, BLOCK_BYTES // row))
        if per > 16:            # whole cache lines of float32 where rows become columns
            per -= per % 16
        buffer = reads.buffer(per * row)
        axis = self.order.index(0) if self.stored else 0
        fh = reads.open(self)
        for start in range(0, rows, per):
            stop = min(rows, start + per)
            part = buffer[:(stop - start) * row]
            self._read(fh, self.span.offset + start * row, part)
            block = part.view(self.dtype).reshape((stop - start, *self.stored[1:]))
            place = target[(slice(None),) * axis + (slice(start, stop),)] \
                if self.stored else target
            _place(place, block.transpose(self.order))

    def _read(self, fh, offset, out):
        """out[:] = the file's bytes from `offset` (an OnnxFileError when it ends first)."""
        from slidenet.interop.onnx_file import OnnxFileError
        fh.seek(offset)
        view, got = memoryview(out), 0
        while got < len(out):
            n = fh.readinto(view[got:])
            if not n:
                raise OnnxFileError(f"{self.span.name}: tensor {self.tensor!r} ended early "
                                    f"(at byte {offset + got:,}): the file changed while "
                                    "slidenet read it")
            got += n


class Reads:
    """What the copies of one net's weights share (a context: the files are closed on leaving
    it): one buffer, grown only for a row larger than any before, and each file opened once,
    its size checked against each tensor's bytes before they are read."""

    def __init__(self):
        self._buffer = np.empty(0, np.uint8)
        self.files = {}         # path -> (open file, its size when opened)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for fh, _ in self.files.values():
            fh.close()
        self.files.clear()

    def buffer(self, nbytes):
        """A uint8 buffer of at least `nbytes`: the same memory every time it is big enough."""
        if self._buffer.nbytes < nbytes:
            self._buffer = np.empty(nbytes, np.uint8)
        return self._buffer

    def open(self, tensor):
        """The open file of `tensor` (a FileTensor), checked to hold the bytes it claims."""
        from slidenet.interop.onnx_file import OnnxFileError
        span = tensor.span
        if span.path not in self.files:
            try:
                fh = open(span.path, "rb", buffering=0)
            except OSError as err:      # gone (or made unreadable) since it was walked
                raise OnnxFileError(f"{span.name}: tensor {tensor.tensor!r} cannot be read "
                                    f"({err.strerror or err}): the file changed while "
                                    "slidenet read it") from None
            self.files[span.path] = (fh, os.fstat(fh.fileno()).st_size)
        fh, size = self.files[span.path]
        end = span.offset + span.length
        if size < end:
            raise OnnxFileError(f"{span.name}: tensor {tensor.tensor!r} lies at bytes "
                                f"{span.offset:,} to {end:,}, but the file now has {size:,}: "
                                "it changed while slidenet read it")
        return fh


def _place(target, source):
    """target[...] = source, for one block: a plane (its last two axes) at a time, so that
    NumPy's inner loop runs along a plane's rows and not across the leading axes."""
    if source.ndim < 3:
        target[...] = source
        return
    for index in np.ndindex(source.shape[:-2]):
        target[index] = source[index]


def copy_tiled(target, source):
    """target[...] = source, for a `source` that is a transposed view (its last two axes are
    not its memory's): tile by tile along the last two axes, so that the rows each tile reads
    and writes stay in the cache and its pages in the TLB, rather than one pass that strides
    across all of them."""
    source = np.asarray(source)
    if source.ndim < 2 or source.flags.c_contiguous or source.nbytes < 2**20:
        target[...] = source
        return
    rows, cols = source.shape[-2:]
    for i in range(0, rows, TILE):
        for j in range(0, cols, TILE):
            target[..., i:i + TILE, j:j + TILE] = source[..., i:i + TILE, j:j + TILE]
