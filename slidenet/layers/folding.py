"""Inference steps: BATCHNORM folded into the CONV or FC before it, and a merge with its RELU.

In evaluation BATCHNORM is a fixed affine map per channel, y = x * scale + shift with
scale = gamma / sqrt(var + eps) and shift = beta - mean * scale. After a CONV (or FC) with
weights W and bias b, that is one CONV with

    W'[..., k] = W[..., k] * scale[k]        (each output channel's filter scaled)
    b'[k]      = b[k] * scale[k] + shift[k]  (= (b - mean) * gamma / sqrt(var + eps) + beta)

so the BATCHNORM costs nothing at all: no pass over the volume, no array of its own. A RELU
after it is applied by the CONV's kernel, as in `fusion`. A merge (ADD, CONCAT) followed by a
RELU rectifies its result in the same pass that sums it; and when one branch of an ADD ends on
a CONV (its BATCHNORM folded in, no RELU of its own: ResNet's blocks), that CONV writes the
block's output itself, relu(conv(h) + b + the other branches' sum), in the pass that writes its
own output (`takes_skip`, `with_skip`; `ops.conv_infer(..., skip=)`).

The arithmetic is `base.fold` (CONV's and FC's `prepare(affine=...)` call it). `steps(layers)`
returns what `Net.prepare()` runs for `layers`: these folded steps, and every other run of
layers as `fusion.fuse` makes it for training (CONV -> RELU -> MAXPOOL and the rest). Each step has `parts`, `name` and `prepare()`. Training never runs these steps: they
are inference only, a snapshot of the weights when `prepare()` is called, equal to the
unfolded evaluation forward to float rounding (tested on residual, concatenating and grouped
nets with random statistics).
"""
from slidenet.layers.activations import Relu
from slidenet.layers.conv import Conv
from slidenet.layers.fusion import Fused, fuse


class Folded(Fused):
    """CONV (or FC) -> BATCHNORM [-> RELU] as one CONV (or FC) whose weights absorb the
    BATCHNORM's scale and shift; `relu`: the RELU is applied by the kernel."""

    def __init__(self, parts, relu):
        super().__init__(parts)
        self.relu = relu

    def prepare(self, relu=None):
        """relu: None for this step's own (a RELU among its parts); True or False for a step
        that ends a residual branch, whose RELU comes after the sum (`with_skip`)."""
        layer, norm = self.parts[:2]
        return layer.prepare(relu=self.relu if relu is None else relu, affine=norm.affine())


class MergeRelu(Fused):
    """ADD or CONCAT -> RELU: the merge rectifies its result where it writes it."""

    def prepare(self):
        return self.parts[0].prepare(relu=True)


def takes_skip(step):
    """Whether `step` can add a residual sum's other terms where it writes its output: a CONV,
    or a CONV with its BATCHNORM folded in, with no RELU of its own (a RELU inside a branch
    comes before the sum, and the sum's RELU after it)."""
    if isinstance(step, Folded):
        return not step.relu and isinstance(step.parts[0], Conv)
    return type(step) is Conv


def with_skip(step, relu):
    """The inference function run(x, skip) -> relu(step(x) + skip) (relu when `relu`) of a
    step `takes_skip` accepts: a residual branch's last CONV writes the block's output."""
    return step.prepare(relu=relu)


def folds(layer, after):
    """Whether BATCHNORM `after` folds into `layer`: a CONV or FC (a layer with a bias slot
    and an affine `prepare`) right before a BATCHNORM."""
    return getattr(layer, "has_bias", False) and getattr(after, "cancels_bias", False)


def steps(layers):
    """The inference steps of `layers` (a list of Layer): CONV/FC -> BATCHNORM [-> RELU] as
    `Folded`, a merge -> RELU as `MergeRelu`, the rest as `fusion.fuse` fuses it."""
    grouped, i = [], 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if nxt is not None and folds(layer, nxt):
            relu = i + 2 < len(layers) and type(layers[i + 2]) is Relu
            grouped.append(Folded(layers[i:i + 2 + relu], relu))
            i += 2 + relu
        elif nxt is not None and layer.merges and type(nxt) is Relu:
            grouped.append(MergeRelu([layer, nxt]))
            i += 2
        else:
            grouped.append(layer)
            i += 1
    # The layers left between folded steps fuse as in training (a Folded step matches no rule).
    return fuse(grouped)
