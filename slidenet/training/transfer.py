"""Transfer learning: a new run that starts from a model's weights (`slidenet train --from`).

The model may come from `slidenet train` or `slidenet import`. Its net is kept as it is, with
one exception: when the data has another number of classes, the scoring layer (the last FC,
whose outputs are the class scores) is replaced by a fresh one with as many outputs as the data
has classes, initialised from the run's seed like any new layer. Every other weight, buffer and
the model's normaliser (the input scaling its weights were learned with) are carried over.

Freezing (`--freeze`) keeps the first layers as they are: their steps run in evaluation mode
(no dropout; batch normalisation on its running statistics, which do not move) and the
backward pass stops before them, so the optimiser holds only the trainable parameters and the
frozen ones stay bitwise unchanged. `--freeze` alone freezes everything but the scoring layer;
`--freeze LAYER` names the last frozen layer.
"""
from collections import OrderedDict

from slidenet.errors import SlidenetError
from slidenet.layers import leaves
from slidenet.net import Net
from slidenet.notation.pattern import parse

HEAD = "head"       # --freeze without a layer: everything before the scoring layer


def with_classes(net, classes, seed):
    """`net` with its scoring layer scoring `classes` classes: `net` itself when it already
    does, else (new net, line saying what was replaced). The new net has `net`'s weights and
    buffers but for the scoring layer's, which are fresh from `seed`."""
    if net.num_outputs == classes:
        return net, None
    last = net.infos[-1]
    if last.spec.kind != "FC":
        raise SlidenetError(
            f"the model ends in {last.spec.text} (layer {last.index}), not in the FC that scores "
            f"the classes, so its head cannot be replaced for {classes} classes")
    pattern = _pattern_with_head(net, f"FC({classes})")
    fresh = Net.from_pattern(pattern, seed=seed, dtype=str(net.dtype),
                             skip_optional=net.skip_optional, **net.variables)
    head = fresh.infos[-1].name
    for source, target in ((net.params, fresh.params), (net.buffers, fresh.buffers)):
        for name, value in source.items():
            if not name.startswith(head + "."):
                target[name][...] = value
    line = (f"the data has {classes} classes and the model scores {net.num_outputs}: its "
            f"scoring layer {last.spec.text} ({last.name}, layer {last.index}) is replaced by a "
            f"fresh FC({classes})")
    return fresh, line


def _pattern_with_head(net, text):
    """The net's pattern with its last layer written as `text`: in place when the last layer's
    text stands once in the pattern (so brackets and repeats stay as written), else the layers
    written out one by one."""
    spec = net.infos[-1].spec
    pattern = net.pattern
    if pattern[spec.column:spec.column + len(spec.text)] == spec.text:
        candidate = pattern[:spec.column] + text + pattern[spec.column + len(spec.text):]
        specs = parse(candidate, net.variables, net.skip_optional)
        old = [info.spec.text for info in net.infos]
        if len(specs) == len(old) and [s.text for s in specs[:-1]] == old[:-1]:
            return candidate
    return " -> ".join([info.spec.text for info in net.infos[:-1]] + [text])


def frozen_steps(net, freeze):
    """How many of `net.steps` `freeze` keeps as they are, and a line naming them (None when
    nothing is frozen). freeze: "" (none), HEAD (all but the scoring layer), or the last
    frozen layer's name or position. A fused step is frozen whole: the layers fused after a
    CONV or FC (a RELU, a MAXPOOL) have no weights."""
    if not freeze:
        return 0, None
    infos = net.infos[1:]
    if freeze == HEAD:
        last = infos[-2].name if len(infos) > 1 else None
    else:
        text = str(freeze).strip()
        found = [info.name for info in infos
                 if info.name == text.lower() or (text.isdigit() and info.index == int(text))]
        # A layer inside a branch, by name: the branch block it is in is frozen whole.
        found += [layer.name for layer in net.every_layer() if layer.name == text.lower()]
        if not found:
            raise SlidenetError(f"--freeze {text}: no such layer; the net's layers are "
                                + ", ".join(f"{info.index} {info.name}" for info in infos))
        last = found[0]
    if last is None or last == infos[-1].name:
        what = "the scoring layer" if last is not None else "the only layer"
        raise SlidenetError(f"--freeze {freeze}: {what} would be frozen too, and nothing would "
                            "train; name an earlier layer as the last frozen one")
    count = next(i for i, step in enumerate(net.steps)
                 if any(part.name == last for part in leaves(step.parts))) + 1
    if count >= len(net.steps):
        raise SlidenetError(f"--freeze {freeze}: {last} is fused with the scoring layer, "
                            "so nothing would train; name an earlier layer")
    frozen = [part.info for step in net.steps[:count] for part in step.parts]
    trained = [part.name for step in net.steps[count:] for part in leaves(step.parts)]
    return count, (f"frozen: layers {frozen[0].index}-{frozen[-1].index} ({frozen[0].name} to "
                   f"{frozen[-1].name}), evaluated as in inference; trained: "
                   + ", ".join(trained))


def trainable(net, frozen):
    """The params of the steps after the first `frozen` (the layers inside their branches
    too): what the optimiser updates."""
    names = {f"{part.name}." for step in net.steps[frozen:] for part in leaves(step.parts)}
    return OrderedDict((name, value) for name, value in net.params.items()
                       if name[:name.index(".") + 1] in names)
