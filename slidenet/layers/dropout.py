"""DROPOUT(p): while training, each number is dropped with probability p and the rest are scaled
by 1 / (1 - p) (inverted dropout), so the layer is the identity at test time.

Masks come from the net's dropout generator, a stream of its own (`Init.dropout_rng`), so
adding a DROPOUT never changes the initial weights, and a resumed run draws the same masks.
"""
from slidenet import ops
from slidenet.layers.base import Inferred, Layer
from slidenet.layers.registry import register
from slidenet.notation import arguments
from slidenet.ops import shard


@register
class Dropout(Layer):
    kind = "DROPOUT"
    positional = ("rate",)
    keywords = {"p": "rate", "rate": "rate"}
    usage = "DROPOUT([p]) with 0 <= p < 1, e.g. DROPOUT(0.5)"

    @classmethod
    def read_arguments(cls, values):
        return {"rate": arguments.fraction(values.get("rate"), "dropout probability p", 0.5)}

    @classmethod
    def infer(cls, spec, walk):
        return Inferred(walk.shape)

    @classmethod
    def torch_modules(cls, info, nn):
        return [nn.Dropout(info.spec.rate)]

    def __init__(self, info, init):
        super().__init__(info, init)
        self.rng = init.dropout_rng

    def forward(self, x, train):
        # Data-parallel training: this rank's rows of the global batch's mask (`slidenet.ops.shard`).
        out, self.cache = ops.dropout_forward(x, self.info.spec.rate, self.rng, train,
                                              part=shard.current() if train else None)
        return out

    def backward(self, dout, need_dx=True):
        return ops.dropout_backward(dout, self.cache)

    def to_onnx(self, graph):
        # ONNX's Dropout is the identity unless asked to train, so inference drops it; the node
        # stays so that the net (and its p) survives a round trip through ONNX.
        ratio = graph.initializer("ratio", self.info.spec.rate)
        graph.tensor = graph.node("Dropout", [graph.tensor, ratio])
