"""Fusion: neighbouring layers that run faster as one step, each written out as its own layer.

A RELU right after a CONV or FC is cheapest inside it: the output is rectified while it is
still in the CPU cache, and its positive entries are the ReLU's mask, so no mask or copy is
made. A MAXPOOL right after a RELU can apply that ReLU's mask in its own backward, on the
pooled numbers (a quarter of them for 2x2 windows): gradient only reaches a window's maximum,
and that maximum passed the ReLU exactly when the pooled value is above zero.

`fuse(layers)` returns the steps a net runs: the same layers, with these runs replaced by

    ConvRelu          CONV -> RELU             (cs231n's conv_relu_forward)
    FCRelu            FC -> RELU
    ConvReluMaxPool   CONV -> RELU -> MAXPOOL  (cs231n's conv_relu_pool_forward)
    BatchNormRelu     BATCHNORM -> RELU
    AddRelu           ADD -> RELU              (a residual block's sum and its RELU)
    ReluMaxPool       RELU -> MAXPOOL

A fused step holds the original layers (`parts`) and uses their parameters and gradients, so
the net's arrays are the same whichever steps run; results equal the unfused layers' (tested).
A layer whose `fusable` is False (a grouped CONV) runs on its own.
`Net.activations` runs the unfused layers, so every layer's own output stays visible.
"""
from slidenet import ops
from slidenet.layers.activations import Relu
from slidenet.layers.batchnorm import BatchNorm
from slidenet.layers.conv import Conv
from slidenet.layers.fc import FC
from slidenet.layers.merge import Add
from slidenet.layers.pool import MaxPool


class Fused:
    """Several layers run as one step. `parts`: the layers; `name`: "conv1+relu1"."""

    pattern = ()        # the layer classes it replaces, in order

    def __init__(self, parts):
        self.parts = list(parts)
        self.name = "+".join(part.name for part in parts)
        self.text = " -> ".join(part.info.spec.text for part in parts)

    def __repr__(self):
        return f"{type(self).__name__}({self.text})"


class WithRelu(Fused):
    """max(0, layer(x)) for a layer whose kernel takes `relu=True` (CONV, FC): the kernel
    rectifies its output while it is in cache, and its backward masks dout."""

    def prepare(self):
        return self.parts[0].prepare(relu=True)

    def forward(self, x, train):
        return self.parts[0].forward(x, train, relu=True)

    def backward(self, dout, need_dx=True):
        return self.parts[0].backward(dout, need_dx, relu=True)


class ConvRelu(WithRelu):
    """max(0, conv(x))."""

    pattern = (Conv, Relu)


class FCRelu(WithRelu):
    """max(0, x @ W + b)."""

    pattern = (FC, Relu)


class BatchNormRelu(WithRelu):
    """max(0, batchnorm(x)): rectified in the pass that writes BATCHNORM's output; its backward
    masks dout inside BATCHNORM's own two passes (with the compiled kernels), so the RELU
    costs no pass of its own either way."""

    pattern = (BatchNorm, Relu)


class AddRelu(WithRelu):
    """max(0, sum of the branches): a residual block and the RELU after it. The sum is
    rectified in the pass that writes it, and its backward masks the gradient once before
    handing it to every branch."""

    pattern = (Add, Relu)


class ConvReluMaxPool(Fused):
    """maxpool(max(0, conv(x))): the pool's backward applies the ReLU's mask, on pooled values,
    so the CONV's backward takes dout as it comes. For inference, a 2x2 pool at stride 2 runs
    inside the convolution (`ops.conv_infer(..., pool=True)`): F(4, 3) pools its output rows
    as it makes them, without writing the CONV's output."""

    pattern = (Conv, Relu, MaxPool)

    def prepare(self):
        conv, _, pool = self.parts
        spec = pool.info.spec
        if tuple(spec.size) == tuple(spec.stride) == (2, 2) and not pool.padded:
            return conv.prepare(relu=True, pool=True)       # pooled as the CONV finishes
        conv, pool = conv.prepare(relu=True), pool.prepare()
        return lambda x: pool(conv(x))

    def forward(self, x, train):
        conv, _, pool = self.parts
        return pool.forward(conv.forward(x, train, relu=True), train)

    def backward(self, dout, need_dx=True):
        conv, _, pool = self.parts
        dpool = pool.backward(dout, relu_mask=True)
        # The CONV's output (the pool's input) is spent: the pool has used it, and the CONV's
        # backward takes dout unmasked. Dropping it before that backward lets its memory hold
        # the CONV's dx (`runtime.empty`): R1's largest step then needs three 16 MiB arrays at
        # once, not four. A second backward needs a new forward.
        pool.cache = None
        conv.cache = conv.cache._replace(out=None)
        return conv.backward(dpool, need_dx, relu=False)


class ReluMaxPool(Fused):
    """maxpool(max(0, x)): the pool's backward applies the ReLU's mask; no ReLU backward runs."""

    pattern = (Relu, MaxPool)

    def prepare(self):
        relu, pool = self.parts[0].prepare(), self.parts[1].prepare()
        return lambda x: pool(relu(x))

    def forward(self, x, train):
        out, _ = ops.relu_forward(x)
        return self.parts[1].forward(out, train)

    def backward(self, dout, need_dx=True):
        return self.parts[1].backward(dout, relu_mask=True)


# Longest first: a CONV -> RELU -> MAXPOOL becomes one step, not a ConvRelu and a lone MAXPOOL.
RULES = (ConvReluMaxPool, ConvRelu, FCRelu, BatchNormRelu, AddRelu, ReluMaxPool)


def fuse(layers):
    """The steps that run `layers` (a list of Layer): runs matching a RULES pattern replaced by
    the fused step, every other layer as it is."""
    steps, i = [], 0
    while i < len(layers):
        for rule in RULES:
            run = layers[i:i + len(rule.pattern)]
            if len(run) == len(rule.pattern) and all(
                    type(layer) is cls and getattr(layer, "fusable", True)
                    for layer, cls in zip(run, rule.pattern)):
                steps.append(rule(run))
                i += len(run)
                break
        else:
            steps.append(layers[i])
            i += 1
    return steps
