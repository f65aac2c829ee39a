"""Layers: thin holders of parameters that call the kernels in `slidenet.ops`.

Each layer is built from a `LayerInfo` (its spec and its input/output shapes, already checked by
`slidenet.shapes.infer`), owns its parameters and gradients as plain NumPy arrays under stable
local names ("W", "b", "gamma", "beta"), and remembers what backward needs from the last forward.

`fuse(layers)` lets a CONV or FC that is followed by a RELU apply that ReLU itself while
training: the rectified output is then computed while it is still in cache and its positive
entries are the ReLU's mask, so the RELU layer passes values and gradients straight through and
no separate mask or copy is made. Evaluation (`train=False`) never fuses, so every layer's
output stays what its name says (`Net.activations` shows a CONV's maps before the ReLU).
"""
import numpy as np

from slidenet import ops


class Layer:
    """A layer with no parameters. `forward(x, train) -> out`, `backward(dout) -> dx`.

    `backward(dout, need_dx=False)` says nobody needs dx (the first layer of a training step):
    CONV and FC then skip that product and return None; the others return dx all the same.
    """

    def __init__(self, info):
        self.info = info
        self.name = info.name
        self.params = {}
        self.grads = {}
        self.buffers = {}       # state that is saved but not trained (batchnorm running stats)
        self.cache = None
        self.fused_relu = False     # set by `fuse`: CONV/FC applies the next RELU; RELU is applied
        # Set by `fuse` on a CONV -> RELU -> MAXPOOL: the pool's backward applies the ReLU's mask
        # (on the pooled numbers), so the CONV's backward does not.
        self.pool_masks_relu = False
        self._masked = False        # whether the last forward used that (it fuses only in training)

    def _fusing(self, train):
        """Whether this forward applies the next RELU itself: only while training."""
        return train and self.fused_relu

    def _param(self, key, value):
        self.params[key] = value
        self.grads[key] = np.zeros_like(value)

    def __repr__(self):
        return f"{type(self).__name__}({self.info.spec.text})"


class Conv(Layer):
    """K filters of F_h x F_w x D, He-initialised: W (F_h, F_w, D, K), b (K,)."""

    def __init__(self, info, rng, dtype):
        super().__init__(info)
        s = info.spec
        fh, fw = s.size
        d = info.input_shape[2]
        fan_in = fh * fw * d
        self._param("W", (rng.standard_normal((fh, fw, d, s.filters)) * np.sqrt(2 / fan_in)).astype(dtype))
        self._param("b", np.zeros(s.filters, dtype=dtype))

    def forward(self, x, train):
        self._masked = self._fusing(train) and self.pool_masks_relu
        out, self.cache = ops.conv_forward(x, self.params["W"], self.params["b"],
                                           self.info.spec.stride, self.info.spec.pad,
                                           relu=self._fusing(train))
        return out

    def backward(self, dout, need_dx=True):
        dx, self.grads["W"][...], self.grads["b"][...] = ops.conv_backward(
            dout, self.cache, need_dx, relu_masked=self._masked)
        return dx


class Pool(Layer):
    """MAXPOOL or AVGPOOL over F_h x F_w windows with stride (S_h, S_w); no parameters."""

    def forward(self, x, train):
        mode = "max" if self.info.spec.kind == "MAXPOOL" else "avg"
        self._masked = train and self.pool_masks_relu
        out, self.cache = ops.pool_forward(x, self.info.spec.size, self.info.spec.stride, mode,
                                           relu_mask=self._masked)
        return out

    def backward(self, dout, need_dx=True):
        return ops.pool_backward(dout, self.cache)


class FC(Layer):
    """Fully connected: W (I, O) with I the flattened input volume, b (O,); He-initialised."""

    def __init__(self, info, rng, dtype):
        super().__init__(info)
        inputs = int(np.prod(info.input_shape))
        outputs = info.spec.filters
        self._param("W", (rng.standard_normal((inputs, outputs)) * np.sqrt(2 / inputs)).astype(dtype))
        self._param("b", np.zeros(outputs, dtype=dtype))

    def forward(self, x, train):
        out, self.cache = ops.fc_forward(x, self.params["W"], self.params["b"], relu=self._fusing(train))
        return out

    def backward(self, dout, need_dx=True):
        dx, self.grads["W"][...], self.grads["b"][...] = ops.fc_backward(dout, self.cache, need_dx)
        return dx


_APPLIED = object()     # an Activation's cache when the layer before it applied the ReLU


class Activation(Layer):
    """RELU, LEAKYRELU(a), TANH or SIGMOID: one forward/backward pair from `ops`."""

    KERNELS = {
        "RELU": (ops.relu_forward, ops.relu_backward),
        "TANH": (ops.tanh_forward, ops.tanh_backward),
        "SIGMOID": (ops.sigmoid_forward, ops.sigmoid_backward),
    }

    def forward(self, x, train):
        spec = self.info.spec
        if self._fusing(train):
            self.cache = _APPLIED
            return x
        if spec.kind == "LEAKYRELU":
            out, self.cache = ops.leaky_relu_forward(x, spec.alpha)
        else:
            out, self.cache = self.KERNELS[spec.kind][0](x)
        return out

    def backward(self, dout, need_dx=True):
        if self.cache is _APPLIED:
            return dout
        if self.info.spec.kind == "LEAKYRELU":
            return ops.leaky_relu_backward(dout, self.cache)
        return self.KERNELS[self.info.spec.kind][1](dout, self.cache)


class Dropout(Layer):
    """Inverted dropout with rate p; draws its masks from the net's dropout generator."""

    def __init__(self, info, rng):
        super().__init__(info)
        self.rng = rng

    def forward(self, x, train):
        out, self.cache = ops.dropout_forward(x, self.info.spec.rate, self.rng, train)
        return out

    def backward(self, dout, need_dx=True):
        return ops.dropout_backward(dout, self.cache)


class BatchNorm(Layer):
    """Per-depth-channel batch normalisation: gamma, beta (D,) and running mean/var buffers."""

    def __init__(self, info, dtype):
        super().__init__(info)
        d = info.input_shape[-1]
        self._param("gamma", np.ones(d, dtype=dtype))
        self._param("beta", np.zeros(d, dtype=dtype))
        self.buffers = {"running_mean": np.zeros(d, dtype=dtype),
                        "running_var": np.ones(d, dtype=dtype)}

    def forward(self, x, train):
        out, self.cache = ops.batchnorm_forward(
            x, self.params["gamma"], self.params["beta"],
            self.buffers["running_mean"], self.buffers["running_var"], train)
        return out

    def backward(self, dout, need_dx=True):
        dx, self.grads["gamma"][...], self.grads["beta"][...] = ops.batchnorm_backward(dout, self.cache)
        return dx


def fuse(layers):
    """Mark every CONV or FC directly followed by a RELU (in the list `layers`) to fuse them.

    Changes nothing a forward or backward returns; see the module docstring. Returns `layers`.
    """
    for layer, after in zip(layers, layers[1:]):
        if isinstance(layer, (Conv, FC)) and isinstance(after, Activation) \
                and after.info.spec.kind == "RELU":
            layer.fused_relu = after.fused_relu = True
    for conv, relu, pool in zip(layers, layers[1:], layers[2:]):
        if isinstance(conv, Conv) and conv.fused_relu and relu.fused_relu \
                and isinstance(pool, Pool) and pool.info.spec.kind == "MAXPOOL":
            conv.pool_masks_relu = pool.pool_masks_relu = True
    return layers


def build(info, init_rng, dropout_rng, dtype):
    """The layer for one LayerInfo (never called for INPUT)."""
    kind = info.spec.kind
    if kind == "CONV":
        return Conv(info, init_rng, dtype)
    if kind == "FC":
        return FC(info, init_rng, dtype)
    if kind in ("MAXPOOL", "AVGPOOL"):
        return Pool(info)
    if kind == "DROPOUT":
        return Dropout(info, dropout_rng)
    if kind == "BATCHNORM":
        return BatchNorm(info, dtype)
    return Activation(info)
