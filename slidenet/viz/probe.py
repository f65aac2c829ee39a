"""Choosing a layer of a net by name or position, and running images up to it.

Layers are named as in `slidenet summary` ("conv1", "relu2", "maxpool1", "fc3") or numbered by
their position in the expanded pattern (INPUT is 0), so `--layer conv2` and `--layer 4` can name
the same layer. `net.layers[i]` is the layer of `net.infos[i + 1]`.

A graph net's branch layers (``{ CONV -> RELU -> CONV | ID } -> ADD``) are named like any other
("conv3"), since names are counted over the whole net. A position names a layer of the
top-level chain only: a branch's layers share their merge's position. The layers that lead to a
branch layer are its path (`info_path`): the top-level chain up to the merge that holds it,
then its own branch up to it (nested branches the same way); running that path is its output.

Which layers a picture can use is asked of each layer kind (`slidenet.layers.base.Layer`):
`has_filters(info)` for the layers whose weights are filters (CONV), `shows_maps(info)` for
those whose outputs are activation maps.
"""
from slidenet.errors import SlidenetError
from slidenet.notation.shapes import walk_infos


def has_filters(info):
    """Whether the layer's weights are filters slid over its input (a CONV)."""
    return info.spec.type.picture == "filters"


def shows_maps(info):
    """Whether the layer's output is H x W x D activation maps worth drawing."""
    return info.spec.type.maps and len(info.output_shape) == 3


def every_info(net):
    """Every LayerInfo after INPUT, branches included (each branch's before its merge)."""
    return list(walk_infos(net.infos))[1:]


def info_path(infos, name):
    """The LayerInfos from the start of `infos` whose outputs lead to layer `name`, ending with
    it: the chain up to the merge that holds it, then its branch up to it. [] if absent."""
    for position, info in enumerate(infos):
        if info.name == name:
            return list(infos[:position + 1])
        for branch in info.branches:
            inner = info_path(branch, name)
            if inner:
                return list(infos[:position]) + inner
    return []


def branch_of(net, name):
    """"branch 2 of add1" for a layer inside a branch (its innermost), else ""."""
    def find(infos):
        for info in infos:
            for number, branch in enumerate(info.branches, 1):
                if any(child.name == name for child in branch):
                    return f"branch {number} of {info.name}"
                inner = find(branch)
                if inner:
                    return inner
        return ""
    return find(net.infos)


def named(net, info):
    """The layer's name as a picture's title gives it: "conv3 (branch 1 of add1)" inside a
    branch, else "conv3"."""
    where = branch_of(net, info.name)
    return f"{info.name} ({where})" if where else info.name


def listing(infos, keep=lambda info: True, top=True):
    """The layers as the error messages list them, branches in braces before their merge as
    the pattern writes them: "1 conv1, { conv2, conv3 | id1 } 2 add1, 3 relu2".
    keep: which layers to name (a merge's braces stay while any of its branch layers is kept;
    a branch with none kept is "-")."""
    parts = []
    for info in infos:
        inner = [listing(branch, keep, False) for branch in info.branches]
        text = f"{info.index} {info.name}" if top else info.name
        shown = text if keep(info) else ""
        if any(inner):
            shown = ("{ " + " | ".join(branch or "-" for branch in inner) + " } " + shown).strip()
        if shown:
            parts.append(shown)
    return ", ".join(parts)


def pick_layer(net, layer, accept=None, spatial=False, why=""):
    """The LayerInfo that `layer` names: a name such as "conv2" (branch layers included), or a
    top-level position as an int or a string of digits.

    accept: a test of a LayerInfo (None: any but INPUT); spatial: the layer's output must still
    be an H x W x D volume. `why` finishes the error sentence ("to show its filters").
    Raises SlidenetError listing the layers that would do.
    """
    def fits(info):
        return (not info.spec.type.is_input and (accept is None or accept(info))
                and (not spatial or len(info.output_shape) == 3))
    text = str(layer).strip()
    found = [info for info in walk_infos(net.infos) if info.name == text.lower()] or \
        [info for info in net.infos if text.isdigit() and info.index == int(text)]
    if not found:
        raise SlidenetError(f"--layer {text}: no such layer; the net's layers are "
                            + listing(net.infos[1:]))
    info = found[0]
    if not fits(info):
        choices = listing(net.infos[1:], fits) or "none in this net"
        raise SlidenetError(f"--layer {text}: {info.name} ({info.spec.text}) cannot be used "
                            f"{why}; choose one of: {choices}")
    return info


def last_layer(net, accept=None, spatial=True):
    """The last layer, branches included (in `every_info`'s order), that `accept` (a test of
    a LayerInfo; None: any) takes, with an H x W x D output if `spatial`; None if none does."""
    fits = [info for info in every_info(net) if (accept is None or accept(info))
            and (not spatial or len(info.output_shape) == 3)]
    return fits[-1] if fits else None


def path_layers(net, target):
    """The Layer objects whose forward, one after another, computes layer `target`'s output:
    `target` is a top-level position (INPUT is 0: no layers) or a layer's name (a branch
    layer's path runs its merge's branch, not the merge)."""
    if isinstance(target, int):
        return list(net.layers[:target])
    path = info_path(net.infos, target)
    if not path:
        raise SlidenetError(f"no layer {target!r}; the net's layers are " + listing(net.infos[1:]))
    layers = {layer.name: layer for layer in net.every_layer()}
    return [layers[info.name] for info in path[1:]]


def forward_to(net, x, target):
    """Evaluation-mode forward of x (batch, H, W, D), already normalised, up to and including
    layer `target`: a top-level position (INPUT is 0) or a name, branch layers included.
    Returns that layer's output (batch, ...)."""
    out = x.astype(net.dtype, copy=False)
    for layer in path_layers(net, target):
        out = layer.forward(out, False)
    return out


def batched(n, size):
    """Slices covering range(n) in blocks of `size`."""
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]
