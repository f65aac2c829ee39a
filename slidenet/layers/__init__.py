"""Layer kinds: one module each, all registered in one registry.

    input           INPUT(HxWxD)
    conv            CONV(K, FhxFw, s=S, p=P, g=G) and DWCONV (depthwise)
    pool            MAXPOOL / POOL and AVGPOOL (FhxFw, s=S)
    globalavgpool   GLOBALAVGPOOL: the mean over height and width, 1 x 1 x D
    fc              FC(n)
    activations     RELU, LEAKYRELU(a), TANH, SIGMOID
    dropout         DROPOUT(p)
    batchnorm       BATCHNORM / BN
    merge           ID, ADD and CONCAT: branches in braces and how they merge
    sliding         (no kind) padding per side and the rules for windows that do not tile

`base` defines what a kind is made of (the `Layer` class), `registry` holds the kinds, and
`fusion` runs neighbouring layers as one step (`folding`, in inference, also folds BATCHNORM
into the CONV or FC before it). To add a kind, write its module (see
docs/design.md, "Adding a layer kind") and import it below: importing registers it.
"""
# Importing a kind's module registers it; the order here is the order of `kinds()`.
from slidenet.layers import input as _input  # noqa: F401  (INPUT; "input" would shadow a builtin)
from slidenet.layers import activations, batchnorm, conv, dropout, fc, globalavgpool, merge, pool  # noqa: F401
from slidenet.layers.base import Arena, Inferred, Init, Layer, Unfit, Walk, Window
from slidenet.layers.folding import steps as inference_steps
from slidenet.layers.fusion import fuse
from slidenet.layers.registry import RegistryError, kinds, lookup, names, register

__all__ = ["Arena", "Inferred", "Init", "Layer", "RegistryError", "Unfit", "Walk", "Window", "build", "fuse", "inference_steps",
           "kinds", "leaves", "lookup", "names", "register"]


def build(info, init):
    """The layer object for one LayerInfo (never INPUT), its parameters drawn from `init`; a
    merge (ADD, CONCAT) builds its branches' layers too."""
    kind = info.spec.type
    if kind.merges:
        return kind(info, init, build, fuse)
    return kind(info, init)


def leaves(layers):
    """Every layer of `layers` and of their branches, depth first, each branch's layers before
    the merge that holds them: the layers that own parameters."""
    for layer in layers:
        if layer.merges:
            yield from leaves(layer.children)
        yield layer
