"""BATCHNORM (or BN): each depth channel normalised over the batch, then scaled and shifted.

Training normalises with the batch's own mean and variance of each channel (over N, H and W)
and keeps running averages of both; evaluation uses those running averages. Parameters gamma
and beta (D,) each, so 2 x D in all; the running statistics are saved buffers, not trained.
"""
import numpy as np

from slidenet import ops
from slidenet.layers.base import Inferred, Layer
from slidenet.layers.registry import register
from slidenet.ops import shard


@register
class BatchNorm(Layer):
    """Per-depth-channel batch normalisation: gamma, beta (D,) and running mean/var buffers."""

    kind = "BATCHNORM"
    aliases = ("BN",)
    cancels_bias = True

    @classmethod
    def infer(cls, spec, walk):
        channels = walk.shape[-1]
        # One gamma and one beta per channel (per feature after an FC).
        return Inferred(walk.shape, 2 * channels, f"2 x {channels} = {2 * channels:,}")

    @classmethod
    def torch_modules(cls, info, nn):
        channels = info.input_shape[-1]
        return [nn.BatchNorm2d(channels) if len(info.input_shape) == 3 else nn.BatchNorm1d(channels)]

    def __init__(self, info, init):
        super().__init__(info, init)
        d = info.input_shape[-1]
        self.param("gamma", np.ones(d, dtype=init.dtype))
        self.param("beta", np.zeros(d, dtype=init.dtype))
        self.buffers = {"running_mean": np.zeros(d, dtype=init.dtype),
                        "running_var": np.ones(d, dtype=init.dtype)}

    def forward(self, x, train, relu=False):
        """relu: max(0, out), made where out is written (`fusion.BatchNormRelu`)."""
        # Data-parallel training: the statistics of the global batch, not of this rank's part.
        part = shard.current() if train else None
        out, self.cache = ops.batchnorm_forward(
            x, self.params["gamma"], self.params["beta"],
            self.buffers["running_mean"], self.buffers["running_var"], train,
            reduce=part.reduce if part else None, relu=relu)
        return out

    def backward(self, dout, need_dx=True, relu=False):
        dx, self.grads["gamma"][...], self.grads["beta"][...] = ops.batchnorm_backward(
            dout, self.cache, relu)
        return dx

    def prepare(self, relu=False):
        """Inference (a BATCHNORM that no CONV or FC before it absorbs): the evaluation
        forward, rectified in the same pass when relu."""
        def run(x):
            out = self.forward(x, False, relu)
            self.cache = None
            return out
        return run

    def affine(self):
        """The evaluation forward as y = x * scale + shift per channel: (scale, shift), (D,)
        each in float64, scale = gamma / sqrt(running_var + eps), shift = beta - running_mean *
        scale. What `folding` folds into the CONV or FC before this layer."""
        gamma, beta = (self.params[k].astype(np.float64) for k in ("gamma", "beta"))
        mean, var = (self.buffers[k].astype(np.float64) for k in ("running_mean", "running_var"))
        scale = gamma / np.sqrt(var + ops.BATCHNORM_EPSILON)
        return scale, beta - mean * scale

    def to_onnx(self, graph):
        # Inference form: the running averages, per depth channel (axis 1 of NCHW, or of (N, n)).
        arrays = [self.params["gamma"], self.params["beta"], self.buffers["running_mean"],
                  self.buffers["running_var"]]
        names = [graph.initializer(key, array)
                 for key, array in zip(("gamma", "beta", "mean", "var"), arrays)]
        graph.tensor = graph.node("BatchNormalization", [graph.tensor, *names],
                                  epsilon=ops.BATCHNORM_EPSILON)
