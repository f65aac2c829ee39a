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
import re
from collections import OrderedDict

from slidenet.errors import SlidenetError
from slidenet.layers import leaves
from slidenet.net import Net
from slidenet.notation.pattern import parse

HEAD = "head"       # --freeze without a layer: everything before the scoring layer


def scoring_layer(net):
    """The LayerInfo whose outputs are the class scores: the last FC, or for a net that ends
    in a global average pool (SqueezeNet, NiN) the CONV before it that makes one map per class.
    A SlidenetError when there is none that can be replaced."""
    last = net.infos[-1]
    if last.spec.kind == "FC":
        return last
    if tuple(last.output_shape[:2]) == (1, 1):
        weighted = [info for info in net.infos[1:] if info.params]
        head = weighted[-1] if weighted else None
        if head is not None and head.spec.kind == "CONV" and \
                head.output_shape[2] == net.num_outputs and "g=" not in head.spec.text:
            return head
    raise SlidenetError(
        f"the model ends in {last.spec.text} (layer {last.index}), with no FC (nor a CONV "
        "before a global average pool) that scores the classes, so its head cannot be replaced")


def with_classes(net, classes, seed):
    """`net` with its scoring layer scoring `classes` classes: `net` itself when it already
    does, else (new net, line saying what was replaced). The new net has `net`'s weights and
    buffers but for the scoring layer's, which are fresh from `seed`."""
    if net.num_outputs == classes:
        return net, None
    head = scoring_layer(net)
    text = re.sub(r"^(\w+)\(\s*\d+", lambda m: f"{m.group(1)}({classes}", head.spec.text)
    pattern = _pattern_with(net, head, text)
    fresh = Net.from_pattern(pattern, seed=seed, dtype=str(net.dtype),
                             skip_optional=net.skip_optional, **net.variables)
    for source, target in ((net.params, fresh.params), (net.buffers, fresh.buffers)):
        for name, value in source.items():
            if not name.startswith(head.name + "."):
                target[name][...] = value
    line = (f"the data has {classes} classes and the model scores {net.num_outputs}: its "
            f"scoring layer {head.spec.text} ({head.name}, layer {head.index}) is replaced by a "
            f"fresh {text}")
    return fresh, line


def _pattern_with(net, head, text):
    """The net's pattern with the layer `head` (a LayerInfo) written as `text`: in place when
    its text stands once in the pattern (so brackets, repeats and branches stay as written),
    else the layers written out one by one (a chain only)."""
    spec = head.spec
    pattern = net.pattern
    index = net.infos.index(head)
    old = [info.spec.text for info in net.infos]
    if pattern[spec.column:spec.column + len(spec.text)] == spec.text:
        candidate = pattern[:spec.column] + text + pattern[spec.column + len(spec.text):]
        texts = [s.text for s in parse(candidate, net.variables, net.skip_optional)]
        if len(texts) == len(old) and texts[:index] + texts[index + 1:] == \
                old[:index] + old[index + 1:]:
            return candidate
    if len(list(net.every_layer())) != len(net.layers):
        raise SlidenetError(f"the scoring layer {spec.text} ({head.name}) is written inside a "
                            "repeat of a net with branches, so slidenet cannot rewrite it for "
                            "another number of classes; write the net without that repeat")
    return " -> ".join(old[:index] + [text] + old[index + 1:])


def frozen_steps(net, freeze):
    """How many of `net.steps` `freeze` keeps as they are, and a line naming them (None when
    nothing is frozen). freeze: "" (none), HEAD (all but the scoring layer), or the last
    frozen layer's name or position. A fused step is frozen whole: the layers fused after a
    CONV or FC (a RELU, a MAXPOOL) have no weights."""
    if not freeze:
        return 0, None
    infos = net.infos[1:]
    head = scoring_layer(net)
    if freeze == HEAD:
        before = infos[:infos.index(head)]
        last = before[-1].name if before else None
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

    def step_of(name):
        return next(i for i, step in enumerate(net.steps)
                    if any(part.name == name for part in leaves(step.parts)))
    if last is None or last == head.name:
        what = "the scoring layer" if last is not None else "the only layer"
        raise SlidenetError(f"--freeze {freeze}: {what} would be frozen too, and nothing would "
                            "train; name an earlier layer as the last frozen one")
    count = step_of(last) + 1
    if count > step_of(head.name):
        raise SlidenetError(f"--freeze {freeze}: {last} comes after the scoring layer "
                            f"{head.name} or is fused with it, so the scoring layer would be "
                            "frozen too; name an earlier layer as the last frozen one")
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
