"""INPUT(HxWxD): the volume a net starts from, e.g. the lecture's 32x32x3 image.

It comes first, once, and builds no layer object: it only fixes the shape every later layer's
shape rule starts from.
"""
from slidenet.layers.base import Inferred, Layer
from slidenet.layers.registry import register
from slidenet.notation import arguments


@register
class Input(Layer):
    kind = "INPUT"
    positional = ("shape",)
    required = ("shape",)
    usage = "INPUT(HxWxD), e.g. INPUT(32x32x3)"
    is_input = True

    @classmethod
    def read_arguments(cls, values):
        return {"shape": arguments.axes(values["shape"], "INPUT size", (3,), minimum=1,
                                        hint="height x width x depth, e.g. 32x32x3")}

    @classmethod
    def infer(cls, spec, walk):
        return Inferred(spec.shape)
