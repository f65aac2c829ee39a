"""Choosing a layer of a net by name or position, and running images up to it.

Layers are named as in `slidenet summary` ("conv1", "relu2", "maxpool1", "fc3") or numbered by
their position in the expanded pattern (INPUT is 0), so `--layer conv2` and `--layer 4` can name
the same layer. `net.layers[i]` is the layer of `net.infos[i + 1]`.

Which layers a picture can use is asked of each layer kind (`slidenet.layers.base.Layer`):
`has_filters(info)` for the layers whose weights are filters (CONV), `shows_maps(info)` for
those whose outputs are activation maps.
"""
from slidenet.errors import SlidenetError


def has_filters(info):
    """Whether the layer's weights are filters slid over its input (a CONV)."""
    return info.spec.type.picture == "filters"


def shows_maps(info):
    """Whether the layer's output is H x W x D activation maps worth drawing."""
    return info.spec.type.maps and len(info.output_shape) == 3


def pick_layer(net, layer, accept=None, spatial=False, why=""):
    """The LayerInfo that `layer` names: a name such as "conv2", or its position as an int or
    a string of digits.

    accept: a test of a LayerInfo (None: any but INPUT); spatial: the layer's output must still
    be an H x W x D volume. `why` finishes the error sentence ("to show its filters").
    Raises SlidenetError listing the layers that would do.
    """
    infos = net.infos[1:]
    fits = [info for info in infos
            if (accept is None or accept(info)) and (not spatial or len(info.output_shape) == 3)]
    choices = ", ".join(f"{info.index} {info.name}" for info in fits) or "none in this net"
    text = str(layer).strip()
    found = [info for info in net.infos
             if info.name == text.lower() or (text.isdigit() and info.index == int(text))]
    if not found:
        raise SlidenetError(f"--layer {text}: no such layer; the net's layers are "
                            + ", ".join(f"{info.index} {info.name}" for info in infos))
    info = found[0]
    if info not in fits:
        raise SlidenetError(f"--layer {text}: {info.name} ({info.spec.text}) cannot be used "
                            f"{why}; choose one of: {choices}")
    return info


def last_layer(net, accept=None, spatial=True):
    """The deepest layer that `accept` (a test of a LayerInfo; None: any) takes, with an
    H x W x D output if `spatial`; None if there is none."""
    fits = [info for info in net.infos[1:] if (accept is None or accept(info))
            and (not spatial or len(info.output_shape) == 3)]
    return fits[-1] if fits else None


def forward_to(net, x, index):
    """Evaluation-mode forward of x (batch, H, W, D), already normalised, up to and including
    the layer at position `index` (INPUT is 0). Returns that layer's output (batch, ...)."""
    out = x.astype(net.dtype, copy=False)
    for layer in net.layers[:index]:
        out = layer.forward(out, False)
    return out


def batched(n, size):
    """Slices covering range(n) in blocks of `size`."""
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]
