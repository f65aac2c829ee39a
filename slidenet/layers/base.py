"""What every layer kind is made of: the `Layer` base class and the shape walk it takes part in.

A layer kind is one subclass of `Layer` in one module of `slidenet.layers`, registered with
`@register` (see `registry`). The class says everything about its kind:

    grammar      kind, aliases, positional, keywords, required, usage, read_arguments()
    shape rule   infer(spec, walk) -> Inferred: output shape, parameters with their formula, the
                 (N + 2P - F) / S + 1 lines of the summary, multiply-adds, receptive field
    geometry     window(spec, input_shape) -> Window or None: the window it slides, if any
    parameters   __init__(info, init): arrays in self.params, initialised from init.rng
    forward      forward(x, train) -> out, keeping in self.cache what backward needs
    backward     backward(dout, need_dx=True) -> dx, filling self.grads
    pictures     maps (its output is drawn as activation maps), picture ("filters" or
                 "templates": what its weights look like as images), filter_images()
    reference    torch_modules(info, nn): the same layer in PyTorch, for `slidenet bench`
    explanation  explain(x, i, j, channel) -> dict: how one output unit comes from the input
                 (`slidenet serve` shows it); None for a kind that does not explain its units
    exchange     to_onnx(graph): the layer as ONNX nodes, for `slidenet export`

The class-level parts (grammar, shape rule, geometry) run before any weight exists: a pattern
is parsed and every shape inferred without allocating anything.
"""
from dataclasses import dataclass
from math import prod
from typing import NamedTuple, Optional, Tuple

import numpy as np

from slidenet import geometry
from slidenet.ops.runtime import zeroed_buffer


class Unfit(Exception):
    """A layer that cannot follow the one before it; `shapes.infer` adds which layer and where."""


@dataclass(frozen=True)
class Walk:
    """The volume after the layers so far, and how its units sit on the input."""
    shape: Tuple[int, ...]          # (H, W, D), or (n,) after an FC
    field: Tuple[int, int]          # receptive field (r_h, r_w) of one unit
    jump: Tuple[int, int]           # input pixels between neighbouring units, per axis
    flattened_by: str               # "layer 3, FC(10)" once an FC has flattened the volume
    start: Tuple[int, int] = (0, 0)     # the input pixel unit 0's field starts at, per axis
                                        # (negative in the padding): where branches' fields meet


@dataclass(frozen=True)
class Inferred:
    """What one layer makes of the walk so far."""
    shape: Tuple[int, ...]                      # its output: (H', W', D') or (n,)
    params: int = 0
    params_formula: str = ""                    # "10 x (5*5*3 + 1) = 760"
    size_formulas: Tuple[str, ...] = ()         # the height's and width's (N + 2P - F) / S + 1
    madds: int = 0                              # forward multiply-adds, one image
    backward_madds: int = 0                     # backward multiply-adds (dx and dw), one image
    field: Optional[Tuple[int, int]] = None     # None: the same as before this layer
    jump: Optional[Tuple[int, int]] = None


class Window(NamedTuple):
    """The window a layer slides over its input: F, S and P per axis."""
    size: Tuple[int, int]
    stride: Tuple[int, int]
    pad: Tuple[int, int]


class Arena:
    """Zeros for the arrays of a blank net, handed out as views of one buffer of `count` numbers of
    `dtype`: hundreds of layers cost one allocation rather than one each, and NumPy asks the
    kernel for huge pages for a buffer of 4 to 64 MiB (which starts on one,
    `runtime.huge_page_buffer`), which fill several times faster when the weights are written
    in; a larger one is in small pages (`runtime.zeroed_buffer`), whose first writes cost less
    on a virtual machine (docs/benchmarks.md, "ONNX import time"). Pages are touched only when
    written: a net that only predicts never touches its gradients'. Past its end, or for
    another dtype, each array is its own."""

    ALIGN = 16      # numbers: each array starts on a 64-byte line (float32)

    def __init__(self, count, dtype):
        dtype = np.dtype(dtype)
        self.buffer = zeroed_buffer(count * dtype.itemsize).view(dtype)
        self.used = 0

    def zeros(self, shape, dtype):
        """A C-contiguous, writable array of zeros of `shape` and `dtype`."""
        count = prod(shape)
        end = self.used + count
        if np.dtype(dtype) != self.buffer.dtype or end > self.buffer.size:
            return np.zeros(shape, dtype)
        view = self.buffer[self.used:end].reshape(shape)
        self.used = -(-end // self.ALIGN) * self.ALIGN
        return view


class Init(NamedTuple):
    """What building a layer may draw on."""
    rng: np.random.Generator            # initial weights, drawn layer by layer in net order
    dropout_rng: np.random.Generator    # dropout masks (its own stream: adding dropout never
                                        # changes the initial weights)
    dtype: np.dtype
    scoring: bool = False               # the net's last layer: its outputs are the class scores
    blank: bool = False                 # zeros, nothing drawn: weights about to be overwritten
    arena: Optional[Arena] = None       # where a blank net's weights come from
    grads_arena: Optional[Arena] = None     # and its gradients: apart, so that their pages
                                            # (huge pages too) are not touched with the weights'

    def normal(self, shape, scale):
        """Initial weights: normal with standard deviation `scale`, in `dtype` (zeros when
        `blank`: a model file or an import fills them next, and a large net's draws in float64
        would cost time and several times the weights' memory)."""
        if self.blank:
            return self.zeros(shape, self.dtype)
        return (self.rng.standard_normal(shape) * scale).astype(self.dtype)

    def zeros(self, shape, dtype):
        """Zeros for weights, from the weights' arena when there is one."""
        if self.arena is not None:
            return self.arena.zeros(shape, dtype)
        return np.zeros(shape, dtype)

    def grad_zeros(self, shape, dtype):
        """Zeros for a gradient, from the gradients' arena when there is one."""
        if self.grads_arena is not None:
            return self.grads_arena.zeros(shape, dtype)
        return np.zeros(shape, dtype)


def slide(spec, window, walk, can_pad=True):
    """Slide `window` over walk's volume -> (H', W', D, size formulas, field, jump).

    Unfit when the volume was already flattened; GeometryError when the window does not tile
    (its advice leaves padding out when can_pad is False, as for pooling).
    """
    if len(walk.shape) == 1:
        raise Unfit(
            f"{spec.kind} slides a window over an H x W x D volume, but "
            f"{walk.flattened_by} already flattened it into a vector of {walk.shape[0]:,} "
            "numbers; put every CONV and POOL before the first FC")
    (h, w, d), (fh, fw), (sh, sw), (ph, pw) = walk.shape, *window
    out_h = geometry.output_size(h, fh, sh, ph, "height", can_pad)
    out_w = geometry.output_size(w, fw, sw, pw, "width", can_pad)
    formulas = (geometry.describe(h, fh, sh, ph), geometry.describe(w, fw, sw, pw))
    # Receptive field recurrence: r_out = r_in + (F - 1) * jump_in, jump_out = jump_in * S.
    field = tuple(r + (f - 1) * j for r, f, j in zip(walk.field, window.size, walk.jump))
    jump = tuple(j * s for j, s in zip(walk.jump, window.stride))
    return out_h, out_w, d, formulas, field, jump


class Layer:
    """A layer kind (class level) and one layer of a net (instance level).

    Instances own their parameters and gradients as plain NumPy arrays under stable local names
    ("W", "b", "gamma", "beta"); `Net` exposes them as "conv1.W" and so on. `backward` must be
    right for whichever mode (train or not) the last forward ran in.
    `backward(dout, need_dx=False)` says nobody needs dx (the first layer of a training step):
    CONV and FC then skip that product and return None; the others return dx all the same.
    """

    kind = None             # the name in patterns, upper case: "CONV"
    aliases = ()            # other names for it: ("POOL",)
    positional = ()         # argument fields in the order they may be written without a name
    keywords = {}           # keyword (lower case) -> field: {"s": "stride", "stride": "stride"}
    required = ()           # fields that must be given
    usage = ""              # how to write it: "CONV(K[, FhxFw][, s=S][, p=P]), e.g. ..."
    is_input = False        # INPUT: starts every net, builds no layer object
    maps = False            # its output is worth drawing as activation maps
    picture = None          # "filters" or "templates": its weights drawn as images
    scores = False          # it can be a net's last layer, the one whose outputs are class scores
    merges = False          # ADD, CONCAT: merges the branches written before it (`merge.py`)
    has_bias = False        # CONV, FC: a bias that a following BATCHNORM cancels
    cancels_bias = False    # BATCHNORM: subtracts each channel's mean, so a bias before it is moot
    fusable = True          # may run fused with its neighbours (`fusion.fuse`)

    # ---- the kind, before any weight exists ----

    @classmethod
    def read_arguments(cls, values):
        """{field: arguments.Value} as written -> {field: value} with defaults applied."""
        return {}

    @classmethod
    def infer(cls, spec, walk):
        """The Inferred this layer takes from `walk` (a Walk); raise Unfit or GeometryError."""
        raise NotImplementedError

    @classmethod
    def window(cls, spec, input_shape):
        """The Window this layer slides over an input of (H, W, D), or None if it slides none."""
        return None

    @classmethod
    def notes(cls, info):
        """Lines for the summary that explain a choice made for the user (a default padding)."""
        return []

    @classmethod
    def torch_modules(cls, info, nn):
        """The same layer as a list of torch.nn modules (NCHW), for benchmarks and tests."""
        raise NotImplementedError(f"{cls.kind} has no PyTorch counterpart")

    # ---- one layer of a net ----

    def __init__(self, info, init):
        self.info = info
        self.name = info.name
        self.params = {}
        self.grads = {}
        self.buffers = {}       # state that is saved but not trained (batchnorm running stats)
        self.cache = None
        self._grad_zeros = init.grad_zeros

    def param(self, key, value):
        """Add a parameter (and its gradient, zeros of the same shape)."""
        self.params[key] = value
        # Zeros, not zeros_like: the operating system hands out zeroed pages only when they
        # are first written, so a net that never trains (a model loaded to predict, an import)
        # does not pay for its gradients' memory.
        self.grads[key] = self._grad_zeros(value.shape, value.dtype)

    def forward(self, x, train):
        raise NotImplementedError

    def backward(self, dout, need_dx=True):
        raise NotImplementedError

    def to_onnx(self, graph):
        """Write this layer into an ONNX graph being exported (`slidenet.interop.onnx_graph.Graph`):
        add its nodes and weights with `graph.node` and `graph.initializer`, starting from
        `graph.tensor`, and set `graph.tensor` to its output. Every kind but INPUT has one
        (`register` checks)."""
        raise NotImplementedError(f"{self.info.spec.kind} cannot be exported to ONNX")

    def prepare(self):
        """This layer for inference only: a function x -> out, with whatever can be computed
        once computed now (a CONV's transformed filters). Later changes to the weights do not
        reach it. The default runs the evaluation forward and keeps no cache."""
        def run(x):
            out = self.forward(x, False)
            self.cache = None
            return out
        return run

    def filter_images(self):
        """The weights as images, (F_h, F_w, D, K) like a CONV's W, when `picture` says they
        are; else None."""
        return None

    @property
    def parts(self):
        """The layers this step of a net runs: itself (a fused step has several)."""
        return (self,)

    def __repr__(self):
        return f"{type(self).__name__}({self.info.spec.text})"

    # ---- explaining one unit ----

    def explain(self, x, i, j, channel):
        """How the output unit at position (i, j), depth `channel` comes from x, this layer's
        input for ONE image ((H, W, D), or (n,) after an FC), as a plain dict of numbers and
        lists (JSON-ready) with a "form" key saying how to read it; None if the kind does not
        explain its units. Numbers are float64 worked out from the layer's own arrays, so the
        value agrees with the kernel's output to that output's rounding."""
        return None


def window_at(x, window, i, j):
    """The input window of output position (i, j): (patch, outside, rows, cols).

    x: (H, W, D); window: a Window. patch (F_h, F_w, D) holds x under the window, zero where it
    lies in the padding; outside (F_h, F_w) bool marks those padding cells; rows and cols are the
    window's [start, stop) in x's coordinates (start negative in the padding).
    """
    (fh, fw), (sh, sw), (ph, pw) = window
    r0, c0 = i * sh - ph, j * sw - pw
    patch = np.zeros((fh, fw, x.shape[2]), dtype=x.dtype)
    outside = np.ones((fh, fw), dtype=bool)
    rs, re_ = max(r0, 0), min(r0 + fh, x.shape[0])
    cs, ce = max(c0, 0), min(c0 + fw, x.shape[1])
    if rs < re_ and cs < ce:
        patch[rs - r0:re_ - r0, cs - c0:ce - c0] = x[rs:re_, cs:ce]
        outside[rs - r0:re_ - r0, cs - c0:ce - c0] = False
    return patch, outside, [r0, r0 + fh], [c0, c0 + fw]


def by_channel(a):
    """(F_h, F_w, D) -> nested lists (D, F_h, F_w) of floats: one F_h x F_w table per channel."""
    return np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0).tolist()


def fold(w, b, affine):
    """w (..., K), b (K,) and a per-channel (scale, shift) (K,) each -> (w * scale,
    b * scale + shift), computed in float64 and rounded once to w's dtype: a BATCHNORM folded
    into the CONV or FC before it (`layers.folding`)."""
    scale, shift = affine
    folded_w = (w.astype(np.float64) * scale).astype(w.dtype)
    folded_b = (b.astype(np.float64) * scale + shift).astype(w.dtype)
    return folded_w, folded_b
