"""GLOBALAVGPOOL: the mean of each depth slice over its whole height and width, 1 x 1 x D.

Average pooling with a window as large as the input, so it needs no arguments:

    H' = (H - H) / 1 + 1 = 1,  W' = (W - W) / 1 + 1 = 1,  depth D,  no parameters

It lets a CONV stack end in one number per channel whatever the input size, so the FC after it
has D x K weights instead of H x W x D x K (`INPUT(8x8x16) -> GLOBALAVGPOOL -> FC(10)`: 170
parameters). Its kernels are the average pool's (`slidenet.ops.pool`) with that window.
"""
from slidenet import ops
from slidenet.layers.base import Window
from slidenet.layers.pool import Pooling, explain_mean
from slidenet.layers.registry import register


@register
class GlobalAvgPool(Pooling):
    """Mean over height and width: (N, H, W, D) -> (N, 1, 1, D)."""

    kind = "GLOBALAVGPOOL"
    kernels = (ops.avg_pool_forward, ops.avg_pool_backward)

    @classmethod
    def window(cls, spec, input_shape):
        return Window(tuple(input_shape[:2]), (1, 1), (0, 0)) if len(input_shape) == 3 else None

    @classmethod
    def torch_modules(cls, info, nn):
        return [nn.AvgPool2d(info.input_shape[:2], 1)]

    def prepare(self):
        """Inference: each image's H*W pixels summed as one reduction and divided once, not
        the pooling kernel's tap-by-tap sums (the same mean, to float rounding)."""
        h, w = self.info.input_shape[:2]

        def run(x):
            total = x.reshape(len(x), h * w, -1).sum(axis=1)
            return (total / x.dtype.type(h * w)).reshape(len(x), 1, 1, -1)
        return run

    def explain(self, x, i, j, channel):
        """The whole of depth slice `channel` and its mean (see `pool.explain_mean`)."""
        return explain_mean(x, self.window(self.info.spec, x.shape), i, j, channel)

    def to_onnx(self, graph):
        graph.tensor = graph.node("GlobalAveragePool", [graph.tensor])
