"""What each layer does to the volume, worked out from INPUT onwards before any weight exists.

For every layer: its output shape, from the lecture's ``(N + 2P - F) / S + 1`` per axis; its
parameter count with the formula behind it; the receptive field of one of its output units on
the input; its multiply-adds and the memory of its output for one image. A geometry that does
not fit becomes a `PatternError` naming the layer and pointing at it in the pattern.
"""
from dataclasses import dataclass
from math import prod
from typing import Optional, Tuple

from slidenet import geometry
from slidenet.errors import GeometryError, PatternError
from slidenet.spec import LayerSpec

BYTES_PER_NUMBER = 4            # float32
MAX_PARAMS = 2_000_000_000      # beyond this a net is a typo, not an experiment
MAX_ACTIVATION = 1_000_000_000  # numbers in one layer's output for one image (4 GB at float32)

_ELEMENTWISE = ("RELU", "LEAKYRELU", "TANH", "SIGMOID", "DROPOUT")


@dataclass(frozen=True)
class LayerInfo:
    name: str                       # "conv1", "relu2", "maxpool1", "fc3"; INPUT is "input"
    spec: LayerSpec
    index: int                      # position in the expanded net; INPUT is 0
    input_shape: Tuple[int, ...]    # (H, W, D), or (n,) after an FC
    output_shape: Tuple[int, ...]   # (H', W', D'), or (n,) for FC
    params: int
    params_formula: str             # "10 x (5*5*3 + 1) = 760"; "" without parameters
    size_formulas: Tuple[str, ...]  # CONV/POOL: height's and width's (N + 2P - F) / S + 1
    receptive_field: Tuple[int, int]    # (r_h, r_w) of one output unit, at most the input's
    madds: int                      # multiply-adds of the forward pass, one image
    activation_bytes: int           # this layer's output, one image, float32


class _Unfit(Exception):
    """A layer that cannot follow the one before it; infer() adds which layer and where."""


@dataclass(frozen=True)
class _Step:
    """What one layer makes of the walk so far."""
    shape: Tuple[int, ...]
    params: int = 0
    params_formula: str = ""
    size_formulas: Tuple[str, ...] = ()
    madds: int = 0
    field: Optional[Tuple[int, int]] = None     # None: the same as before this layer
    jump: Optional[Tuple[int, int]] = None


@dataclass(frozen=True)
class _Walk:
    """The volume after the layers so far, and how its units sit on the input."""
    shape: Tuple[int, ...]          # (H, W, D), or (n,) after an FC
    field: Tuple[int, int]          # receptive field (r_h, r_w) of one unit
    jump: Tuple[int, int]           # input pixels between neighbouring units, per axis
    flattened_by: str               # "layer 3, FC(10)" once an FC has flattened the volume


def infer(specs, pattern=None):
    """Walk the specs from INPUT and describe every layer.

    specs: the list from `slidenet.pattern.parse`, INPUT first.
    pattern: the source text, so errors can point at the layer with a caret.
    Returns one LayerInfo per spec. Raises PatternError, e.g. ``layer 1, CONV(3, 3x3, s=3):
    stride 3 does not tile the height: (7 - 3) / 3 + 1 = 2.33 is not a whole number; ...``.
    """
    specs = list(specs)
    if not specs or specs[0].kind != "INPUT":
        raise PatternError("a net starts with INPUT(HxWxD)", pattern,
                           specs[0].column if specs else 0)
    walk = _Walk(specs[0].shape, (1, 1), (1, 1), "")
    image = specs[0].shape[:2]
    infos, counters, total = [], {}, 0
    for index, spec in enumerate(specs):
        where = f"layer {index}, {spec.text}"
        try:
            step = _step(spec, walk, index)
            total += step.params
            _check_limits(step, total)
        except (GeometryError, _Unfit) as err:
            raise PatternError(f"{where}: {err}", pattern, spec.column) from None
        counters[spec.kind] = counters.get(spec.kind, 0) + 1
        name = "input" if spec.kind == "INPUT" else f"{spec.kind.lower()}{counters[spec.kind]}"
        field = step.field or walk.field
        # Past the image edge a window only sees padding, so a unit never sees more than the
        # whole input: that is what an FC unit, or a deep enough CONV unit, covers.
        seen = tuple(min(r, n) for r, n in zip(field, image))
        infos.append(LayerInfo(
            name=name, spec=spec, index=index, input_shape=walk.shape, output_shape=step.shape,
            params=step.params, params_formula=step.params_formula,
            size_formulas=step.size_formulas, receptive_field=seen, madds=step.madds,
            activation_bytes=prod(step.shape) * BYTES_PER_NUMBER))
        flattened = walk.flattened_by or (where if len(step.shape) == 1 else "")
        walk = _Walk(step.shape, field, step.jump or walk.jump, flattened)
    return infos


def _step(spec, walk, index):
    if spec.kind == "INPUT":
        if index:
            raise _Unfit("INPUT must come first, and only once")
        return _Step(spec.shape)
    if spec.kind == "CONV":
        return _conv(spec, walk)
    if spec.kind in ("MAXPOOL", "AVGPOOL"):
        return _pool(spec, walk)
    if spec.kind == "FC":
        return _fc(spec, walk)
    if spec.kind == "BATCHNORM":
        channels = walk.shape[-1]
        # One gamma and one beta per channel (per feature after an FC).
        return _Step(walk.shape, 2 * channels, f"2 x {channels} = {2 * channels:,}")
    if spec.kind in _ELEMENTWISE:
        return _Step(walk.shape)
    raise _Unfit(f"unknown layer kind {spec.kind!r}")


def _window(spec, walk):
    """Slide spec's window over walk's volume -> (H', W', D, formulas, field, jump)."""
    if len(walk.shape) == 1:
        raise _Unfit(
            f"{spec.kind} slides a window over an H x W x D volume, but "
            f"{walk.flattened_by} already flattened it into a vector of {walk.shape[0]:,} "
            "numbers; put every CONV and POOL before the first FC")
    (h, w, d), (fh, fw), (sh, sw), (ph, pw) = walk.shape, spec.size, spec.stride, spec.pad
    out_h = geometry.output_size(h, fh, sh, ph, "height")
    out_w = geometry.output_size(w, fw, sw, pw, "width")
    formulas = (geometry.describe(h, fh, sh, ph), geometry.describe(w, fw, sw, pw))
    # Receptive field recurrence: r_out = r_in + (F - 1) * jump_in, jump_out = jump_in * S.
    field = tuple(r + (f - 1) * j for r, f, j in zip(walk.field, spec.size, walk.jump))
    jump = tuple(j * s for j, s in zip(walk.jump, spec.stride))
    return out_h, out_w, d, formulas, field, jump


def _conv(spec, walk):
    out_h, out_w, d, formulas, field, jump = _window(spec, walk)
    k, (fh, fw) = spec.filters, spec.size
    # Each filter spans the full input depth and has one bias.
    params = k * (fh * fw * d + 1)
    return _Step((out_h, out_w, k), params, f"{k} x ({fh}*{fw}*{d} + 1) = {params:,}",
                 formulas, out_h * out_w * k * fh * fw * d, field, jump)


def _pool(spec, walk):
    out_h, out_w, d, formulas, field, jump = _window(spec, walk)
    return _Step((out_h, out_w, d), size_formulas=formulas, field=field, jump=jump)


def _fc(spec, walk):
    inputs, n = prod(walk.shape), spec.filters
    params = (inputs + 1) * n
    # An FC unit sees the whole volume: a window as large as the input, on both axes.
    spatial = walk.shape[:2] if len(walk.shape) == 3 else (1, 1)
    field = tuple(r + (f - 1) * j for r, f, j in zip(walk.field, spatial, walk.jump))
    return _Step((n,), params, f"{n} x ({inputs} + 1) = {params:,}", (), inputs * n, field,
                 walk.jump)


def _check_limits(step, total):
    numbers = prod(step.shape)
    if numbers > MAX_ACTIVATION:
        raise _Unfit(f"its output {' x '.join(map(str, step.shape))} holds {numbers:,} numbers "
                     f"per image; at most {MAX_ACTIVATION:,} are allowed: use a smaller input, "
                     "fewer filters or a larger stride")
    if total > MAX_PARAMS:
        raise _Unfit(f"the net would have {total:,} parameters by here; at most "
                     f"{MAX_PARAMS:,} are allowed")
