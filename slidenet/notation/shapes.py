"""What each layer does to the volume, worked out from INPUT onwards before any weight exists.

For every layer: its output shape, from the lecture's ``(N + 2P - F) / S + 1`` per axis; its
parameter count with the formula behind it; the receptive field of one of its output units on
the input; its multiply-adds and the memory of its output for one image. Each kind's own shape
rule (`Layer.infer` in `slidenet.layers`) does the work; this module walks the net and turns a
geometry that does not fit into a `PatternError` naming the layer and pointing at it.
"""
from dataclasses import dataclass
from math import prod
from typing import Tuple

from slidenet.errors import GeometryError, PatternError
from slidenet.layers import Inferred, Unfit, Walk
from slidenet.notation.spec import LayerSpec
from slidenet.storage.limits import MAX_ACTIVATION, MAX_PARAMS

BYTES_PER_NUMBER = 4            # float32


@dataclass(frozen=True)
class LayerInfo:
    name: str                       # "conv1", "relu2", "maxpool1", "fc3"; INPUT is "input"
    spec: LayerSpec
    index: int                      # position in the expanded net; INPUT is 0
    input_shape: Tuple[int, ...]    # (H, W, D), or (n,) after an FC
    output_shape: Tuple[int, ...]   # (H', W', D'), or (n,) for FC
    params: int
    params_formula: str             # "10 x (5*5*3 + 1) = 760"; "" without parameters
    size_formulas: Tuple[str, ...]  # windows: height's and width's (N + 2P - F) / S + 1
    receptive_field: Tuple[int, int]    # (r_h, r_w) of one output unit, at most the input's
    field_capped: bool              # the window reaches past the input's edges (into padding)
    madds: int                      # multiply-adds of the forward pass, one image
    backward_madds: int             # multiply-adds of the backward pass (dx and dw), one image
    activation_bytes: int           # this layer's output, one image, float32
    branches: tuple = ()            # a merge: one tuple of LayerInfos per branch

    @property
    def window(self):
        """The Window (size, stride, pad) this layer slides over its input, or None."""
        return self.spec.type.window(self.spec, self.input_shape)


def infer(specs, pattern=None):
    """Walk the specs from INPUT and describe every layer.

    specs: the list from `slidenet.notation.pattern.parse`, INPUT first.
    pattern: the source text, so errors can point at the layer with a caret.
    Returns one LayerInfo per spec of the top-level chain; a merge's LayerInfo holds its
    branches' LayerInfos (`branches`). Raises PatternError, e.g. ``layer 1, CONV(3, 3x3, s=3):
    stride 3 does not tile the height: (7 - 3) / 3 + 1 = 2.33 is not a whole number; ...``.
    """
    specs = list(specs)
    if not specs or not specs[0].type.is_input:
        raise PatternError("a net starts with INPUT(HxWxD)", pattern,
                           specs[0].column if specs else 0)
    walk = Walk(specs[0].shape, (1, 1), (1, 1), "")
    state = _State(specs[0].shape[:2], pattern)
    infos, _ = _chain(specs, walk, state, None)
    return infos


class _State:
    """What the walk carries across branches: layer names so far, the parameter total."""

    def __init__(self, image, pattern):
        self.image = image
        self.pattern = pattern
        self.counters = {}
        self.total = 0

    def name(self, spec):
        if spec.type.is_input:
            return "input"
        self.counters[spec.kind] = self.counters.get(spec.kind, 0) + 1
        return f"{spec.kind.lower()}{self.counters[spec.kind]}"


def _chain(specs, walk, state, branch):
    """Infer one chain of specs from `walk` -> (infos, the walk after it). `branch`: None for
    the net's own chain, else (index of the merge in the net, "branch 2 of ADD")."""
    infos = []
    for position, spec in enumerate(specs):
        index = position if branch is None else branch[0]
        where = f"layer {index}, {spec.text}" if branch is None else \
            f"layer {index} ({branch[1]}), {spec.text}"
        if spec.branches:
            info, walk = _merge(spec, walk, state, index, where)
            infos.append(info)
            continue
        kind = spec.type
        try:
            if kind.is_input and (position or branch):
                raise Unfit("INPUT must come first, and only once")
            step = kind.infer(spec, walk)
            state.total += step.params
            _check_limits(step, state.total)
        except (GeometryError, Unfit) as err:
            raise PatternError(f"{where}: {err}", state.pattern, spec.column) from None
        field = step.field or walk.field
        window = kind.window(spec, walk.shape)
        infos.append(_info(state, spec, index, walk, step, field, window is not None))
        flattened = walk.flattened_by or (where if len(step.shape) == 1 else "")
        # A window's padding before the first row moves where unit 0's field starts.
        start = walk.start if window is None else \
            tuple(s - p * j for s, p, j in zip(walk.start, window.pad, walk.jump))
        walk = Walk(step.shape, field, step.jump or walk.jump, flattened, start)
    return infos, walk


def _merge(spec, walk, state, index, where):
    """A merge (ADD, CONCAT): every branch from `walk`, then the merged volume."""
    ends, children, texts = [], [], []
    for number, branch in enumerate(spec.branches, 1):
        label = f"branch {number} of {spec.kind}"
        if not branch:
            raise PatternError(f"{where}: branch {number} is empty (its layers were skipped or "
                               "repeated *0): write ID for a path that keeps the volume",
                               state.pattern, spec.column)
        infos, end = _chain(branch, walk, state, (index, label))
        children.append(tuple(infos))
        ends.append(end)
        texts.append(_branch_text(branch))
    try:
        shape = spec.type.merge(spec, [end.shape for end in ends], texts)
    except Unfit as err:
        raise PatternError(f"{where}: {err}", state.pattern, spec.column) from None
    # One output unit sees what any branch's unit sees: the union of the branches' fields,
    # from the first pixel any starts at to the last any ends at. Branches padded alike are
    # centred alike, and the union is the largest branch's field; padding that differs per
    # side can shift one branch's field off another's and make it larger.
    start = tuple(min(end.start[a] for end in ends) for a in range(2))
    field = tuple(max(end.start[a] + end.field[a] for end in ends) - start[a] for a in range(2))
    jump = tuple(max(end.jump[a] for end in ends) for a in range(2))
    flattened = next((end.flattened_by for end in ends if end.flattened_by), "")
    info = _info(state, spec, index, walk, Inferred(shape), field, False, tuple(children))
    return info, Walk(shape, field, jump, flattened, start)


def _info(state, spec, index, walk, step, field, slides, branches=()):
    # Past the image edge a window only sees padding, so a unit never sees more than the
    # whole input: that is what an FC unit, or a deep enough CONV unit, covers.
    seen = tuple(min(r, n) for r, n in zip(field, state.image))
    return LayerInfo(
        name=state.name(spec), spec=spec, index=index, input_shape=walk.shape,
        output_shape=step.shape, params=step.params, params_formula=step.params_formula,
        size_formulas=step.size_formulas, receptive_field=seen,
        # Capped only where a window reaches past the edge; an FC sees the whole input anyway.
        field_capped=seen != tuple(field) and slides,
        madds=step.madds, backward_madds=step.backward_madds,
        activation_bytes=prod(step.shape) * BYTES_PER_NUMBER, branches=branches)


def _branch_text(branch):
    """A branch as written, shortened to its ends when long: "CONV(64) -> ... -> CONV(64)"."""
    texts = [spec.text for spec in branch]
    return " -> ".join(texts) if len(texts) <= 3 else f"{texts[0]} -> ... -> {texts[-1]}"


def walk_infos(infos):
    """Every LayerInfo of a net, branches included, in the order the layers were inferred
    (each branch's layers before the merge that holds them)."""
    for info in infos:
        for branch in info.branches:
            yield from walk_infos(branch)
        yield info


def _check_limits(step, total):
    numbers = prod(step.shape)
    if numbers > MAX_ACTIVATION:
        raise Unfit(f"its output {' x '.join(map(str, step.shape))} holds {numbers:,} numbers "
                    f"per image; at most {MAX_ACTIVATION:,} are allowed: use a smaller input, "
                    "fewer filters or a larger stride")
    if total > MAX_PARAMS:
        raise Unfit(f"the net would have {total:,} parameters by here; at most "
                    f"{MAX_PARAMS:,} are allowed")
