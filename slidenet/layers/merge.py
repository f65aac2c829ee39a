"""Branches and how they merge: ID, ADD and CONCAT.

The lecture's nets are one chain of layers. The nets that came after it (GoogLeNet, ResNet,
DenseNet) split the volume into branches and merge them again. A pattern writes the branches in
braces, separated by ``|``, and names the merge right after them:

    { CONV(64) -> RELU -> CONV(64) | ID } -> ADD        a residual block: F(x) + x
    { CONV(64, 1x1) | CONV(96, 3x3) } -> CONCAT         the two stacked along the depth

Every branch starts from the same volume (the one before ``{``).

    ID      the identity: the volume as it is (the skip of a residual block)
    ADD     the branches' volumes summed, number by number: all must have the same shape
            (a projection, e.g. CONV(128, 1x1, s=2), makes the skip fit); no parameters
    CONCAT  the branches' volumes stacked along the depth: the same height and width, depth
            the sum of theirs; no parameters

Backward, a sum hands its gradient unchanged to every branch (the same array: no step's
backward writes into the gradient it is given) and a concatenation hands each branch its own
slice of the depth; the gradient of the volume before ``{`` is the sum of the
branches' gradients (the volume was used once per branch).

A merge layer holds its branches' layers (`branches`) and runs them as fused steps, so a
branch is itself a small net; branches nest.
"""
import numpy as np

from slidenet import ops
from slidenet.layers.base import Inferred, Layer, Unfit
from slidenet.layers.registry import register


def _takes_skip(steps):
    """Whether a branch's first step is a bare CONV, whose backward adds a `skip` to its dx."""
    from slidenet.layers.conv import Conv       # here: conv.py is a kind like this one
    return bool(steps) and type(steps[0]) is Conv


def _volume(shape):
    return " x ".join(str(n) for n in shape)


@register
class Identity(Layer):
    """ID: out = x (the skip path of a residual block)."""

    kind = "ID"
    aliases = ("IDENTITY",)

    @classmethod
    def infer(cls, spec, walk):
        return Inferred(walk.shape)

    @classmethod
    def torch_modules(cls, info, nn):
        return [nn.Identity()]

    def forward(self, x, train):
        return x

    def backward(self, dout, need_dx=True):
        return dout

    def prepare(self):
        return lambda x: x

    def to_onnx(self, graph):
        pass                    # the tensor goes on as it is


class _Merge(Layer):
    """A layer that merges the branches written before it (`spec.branches`)."""

    merges = True
    maps = True

    @classmethod
    def infer(cls, spec, walk):
        raise Unfit(f"{spec.kind} merges branches: write them in braces just before it, "
                    f"{{ ... | ... }} -> {spec.kind}")

    @classmethod
    def merge(cls, spec, shapes, texts):
        """The output shape of merging branch outputs `shapes`; raise Unfit to teach."""
        raise NotImplementedError

    @classmethod
    def torch_modules(cls, info, nn):
        """The branches as torch Sequentials, merged as this kind merges (benchmarks)."""
        branches = nn.ModuleList(
            nn.Sequential(*[m for child in branch for m in child.spec.type.torch_modules(child, nn)])
            for branch in info.branches)
        adds = cls.kind == "ADD"

        class Merge(nn.Module):
            def __init__(self):
                super().__init__()
                self.branches = branches

            def forward(self, x):
                outs = [branch(x) for branch in self.branches]
                if adds:
                    total = outs[0]
                    for out in outs[1:]:
                        total = total + out
                    return total
                return _torch_cat(outs)     # along the channels of NCHW
        return [Merge()]

    def __init__(self, info, init, build, fuse):
        super().__init__(info, init)
        self.branches = [[build(child, init) for child in branch] for branch in info.branches]
        self.branch_steps = [fuse(branch) for branch in self.branches]

    @property
    def children(self):
        """Every layer of every branch, in order (nested merges included once, as layers)."""
        return [layer for branch in self.branches for layer in branch]

    def forward(self, x, train):
        outs = self.branch_forward(x, train)
        self.cache = [out.shape for out in outs]
        return self.combine(outs)

    def branch_forward(self, x, train):
        """Each branch's fused steps run from x: the list of their outputs."""
        outs = []
        for steps in self.branch_steps:
            out = x
            for step in steps:
                out = step.forward(out, train)
            outs.append(out)
        return outs

    def combine(self, outs):
        """The merged volume of the branches' outputs `outs`."""
        raise NotImplementedError

    def backward(self, dout, need_dx=True):
        return self.branch_backward(self.split(dout, self.cache))

    def branch_backward(self, grads):
        """Each branch's steps backward from its gradient in `grads`; the sum of what reaches
        the volume before '{' (it fed every branch)."""
        two = len(self.branch_steps) == 2
        if two and _takes_skip(self.branch_steps[0]):
            # A residual block whose first branch starts on a bare CONV: the other branch's
            # gradient first, then the CONV's backward adds it as it writes its dx (no pass of
            # its own for the sum). dx1 + dx0 is dx0 + dx1 bit for bit: one addition each.
            other = grads[1]
            for step in reversed(self.branch_steps[1]):
                other = step.backward(other)
            grad, steps = grads[0], self.branch_steps[0]
            for step in reversed(steps[1:]):
                grad = step.backward(grad)
            return steps[0].backward(grad, skip=other)
        dxs = []
        for steps, grad in zip(self.branch_steps, grads):
            for step in reversed(steps):
                grad = step.backward(grad)
            dxs.append(grad)
        return dxs[0] if len(dxs) == 1 else ops.add_forward(dxs)

    def prepare(self, relu=False):
        """Inference: each branch's steps prepared (BATCHNORM folded, `folding.steps`), the
        merge computed without a copy where it can be (`merged`); relu=True applies the RELU
        after the merge too."""
        from slidenet.layers import folding     # here: folding imports fusion, which imports ADD
        plans = [[step.prepare() for step in folding.steps(branch)] for branch in self.branches]

        def run(x):
            return self.merged([_through(plan, x) for plan in plans], x, relu)
        return run

    def merged(self, outs, x, relu):
        """Inference: `combine(outs)`, rectified when relu; x is the branches' common input."""
        out = self.combine(outs)
        return ops.relu_inplace(out) if relu else out

    def branch_outputs(self, x):
        """Each branch's output for one image x (H, W, D), evaluation mode: a list of arrays."""
        outs = []
        for branch in self.branches:
            out = x[None]
            for layer in branch:
                out = layer.forward(out, False)
                layer.cache = None
            outs.append(out[0])
        return outs

    def texts(self):
        """Each branch as written: "CONV(64) -> RELU -> CONV(64)"."""
        return [" -> ".join(layer.info.spec.text for layer in branch) for branch in self.branches]

    def to_onnx(self, graph):
        start, ends = graph.tensor, []
        for branch in self.branches:
            graph.tensor = start
            for layer in branch:
                graph.scope = layer.name
                layer.to_onnx(graph)
            ends.append(graph.tensor)
        graph.scope = self.name
        graph.tensor = self.onnx_merge(graph, ends)


@register
class Add(_Merge):
    """ADD: the sum of the branches' volumes (all of one shape)."""

    kind = "ADD"
    aliases = ("SUM",)

    @classmethod
    def merge(cls, spec, shapes, texts):
        first = shapes[0]
        for index, (shape, text) in enumerate(zip(shapes[1:], texts[1:]), 2):
            if shape != first:
                raise Unfit(_unequal(first, shape, texts[0], text, index))
        return first

    def forward(self, x, train, relu=False):
        """The branches' sum, and with relu its RELU in the same pass (`fusion.AddRelu`: the
        RELU after a residual block), kept for the backward's mask."""
        outs = self.branch_forward(x, train)
        out = ops.add_forward(outs, relu)
        self.cache = ([o.shape for o in outs], out if relu else None)
        return out

    def backward(self, dout, need_dx=True, relu=False):
        """Every branch gets the same gradient, not a copy each: a step's backward never writes
        into the gradient it is given (docs/design.md, "Graphs"). With relu (a forward with
        relu=True), dout is first masked where the sum was not positive."""
        shapes, out = self.cache
        if relu:
            if out is None:
                raise ValueError("relu=True needs a forward with relu=True (its output is the mask)")
            dout = ops.relu_backward(dout, out)
        return self.branch_backward([dout] * len(shapes))

    def combine(self, outs):
        return ops.add_forward(outs)

    def prepare(self, relu=False):
        """Inference, as `_Merge.prepare`; and when a branch ends on a CONV (its BATCHNORM
        folded in, no RELU of its own), that CONV adds the other branches' sum, and applies
        the RELU, where it writes its output (`folding.with_skip`): no pass of its own for the
        sum, and no array for the CONV's output before it."""
        from slidenet.layers import folding     # as in _Merge.prepare
        steps = [folding.steps(branch) for branch in self.branches]
        last = next((i for i, s in enumerate(steps) if s and folding.takes_skip(s[-1])), None)
        if last is None or len(steps) < 2:
            return super().prepare(relu)
        plans = [[step.prepare() for step in s] for s in steps]
        head, tail = plans[last][:-1], folding.with_skip(steps[last][-1], relu)
        others = plans[:last] + plans[last + 1:]

        def run(x):
            outs = [_through(plan, x) for plan in others]
            skip = outs[0] if len(outs) == 1 else self.merged(outs, x, False)
            return tail(_through(head, x), skip)

        # ResNet's basic block, { CONV -> RELU -> CONV | ID } with their BATCHNORMs folded:
        # where both CONVs run F(4x4, 3x3), one compiled call runs the whole block band by band
        # of images (`conv.winograd_block`); any other input takes `run`.
        first = getattr(head[0], "prepared", None) if len(head) == 1 else None
        second = getattr(tail, "prepared", None)
        identity = len(steps) == 2 and all(type(s) is Identity for s in steps[1 - last])
        if first is not None and second is not None and len(steps) == 2 and \
                len(plans[1 - last]) == 1 and hasattr(plans[1 - last][0], "projection") and \
                hasattr(head[0], "sides"):
            return _down_block(run, first, head[0].sides, plans[1 - last][0].projection, second,
                               relu)
        if first is None or second is None or not identity:
            return run
        from slidenet.ops.conv import winograd_block

        def block(x):
            if winograd_block.applies(x, first, second):
                return winograd_block.forward(x, first, second, relu)
            return run(x)
        return block

    def merged(self, outs, x, relu):
        """Inference: the sum written into a branch's own output, not a new array: the first
        that is not x (or a view of it, as an ID branch passes on) and so belongs to no one
        else; then rectified in the same pass when relu. Training keeps `combine`, whose
        operands a backward may still need."""
        own = next((i for i, out in enumerate(outs)
                    if out.flags.writeable and not np.may_share_memory(out, x)), None)
        if own is None:
            return super().merged(outs, x, relu)
        return ops.add_into(outs[own], outs[:own] + outs[own + 1:], relu)

    def onnx_merge(self, graph, ends):
        return graph.node("Sum", ends)

    def explain(self, x, i, j, channel):
        """The unit at (i, j, channel) as its branches' numbers there, added: {"form": "sum",
        "parts": [{"branch", "text", "value"}], "value"} (float64 sum of the float32 parts)."""
        outs = self.branch_outputs(x)
        parts = [{"branch": number, "text": text, "value": float(out[i, j, channel])}
                 for number, (text, out) in enumerate(zip(self.texts(), outs), 1)]
        return {"form": "sum", "channel": int(channel), "parts": parts,
                "value": float(sum(part["value"] for part in parts))}


@register
class Concat(_Merge):
    """CONCAT: the branches' volumes stacked along the depth (one height and width)."""

    kind = "CONCAT"

    @classmethod
    def merge(cls, spec, shapes, texts):
        first = shapes[0]
        for index, (shape, text) in enumerate(zip(shapes[1:], texts[1:]), 2):
            if len(shape) != 3 or len(first) != 3 or shape[:2] != first[:2]:
                raise Unfit(
                    f"CONCAT stacks volumes of one height and width along the depth, but branch "
                    f"1 ({texts[0]}) ends {_volume(first)} and branch {index} ({text}) "
                    f"{_volume(shape)}: give them the same stride and padding (p=same keeps "
                    "the size at stride 1)")
        return (*first[:2], sum(shape[2] for shape in shapes))

    def combine(self, outs):
        return np.concatenate(outs, axis=-1)

    def split(self, dout, shapes):
        edges = np.cumsum([shape[-1] for shape in shapes])[:-1]
        return [np.ascontiguousarray(part) for part in np.split(dout, edges, axis=-1)]

    def onnx_merge(self, graph, ends):
        return graph.node("Concat", ends, axis=1)

    def explain(self, x, i, j, channel):
        """Which branch channel `channel` comes from: {"form": "concat", "branch" (1-based),
        "text", "first" (the branch's first channel here), "channel_in_branch", "value"}."""
        outs, first = self.branch_outputs(x), 0
        for number, (text, out) in enumerate(zip(self.texts(), outs), 1):
            if channel < first + out.shape[-1]:
                inside = int(channel - first)
                return {"form": "concat", "channel": int(channel), "branch": number,
                        "text": text, "first": first, "depths": [o.shape[-1] for o in outs],
                        "channel_in_branch": inside, "value": float(out[i, j, inside])}
            first += out.shape[-1]
        raise ValueError(f"channel {channel} is beyond the {first} channels of {self.name}")


def _through(plan, x):
    """x through a branch's prepared steps (inference)."""
    for step in plan:
        x = step(x)
    return x


def _unequal(first, shape, text1, text2, index):
    """The teaching error of a sum of unequal volumes: both volumes, and the fix."""
    message = (f"ADD sums volumes number by number, but branch 1 ({text1}) ends "
               f"{_volume(first)} and branch {index} ({text2}) ends {_volume(shape)}")
    if len(first) == 3 and len(shape) == 3:
        h, w, d = first
        h2, w2, _ = shape
        if h2 % h == 0 and w2 % w == 0 and h2 >= h:
            s = h2 // h if h2 // h == w2 // w else f"{h2 // h}x{w2 // w}"
            stride = "" if s == 1 else f", s={s}"
            # (N - 1) / S + 1 leaves a half window on even sizes: PyTorch rounds it down.
            if (h2 - 1) % (h2 // h) or (w2 - 1) % (w2 // w):
                stride += ", round=down"
            return (f"{message}: project branch {index} with a 1x1 CONV that has branch 1's "
                    f"depth and stride, e.g. {{ ... | CONV({d}, 1x1{stride}) }} -> ADD")
        return f"{message}: make them equal (the same stride, padding and number of filters)"
    return f"{message}: both must be volumes of one shape"


def _torch_cat(outs):
    import torch        # only here: slidenet runs without PyTorch
    return torch.cat(outs, 1)


def _down_block(run, first, sides, projection, second, relu):
    """ResNet's downsampling block, { CONV(s=2) -> RELU -> CONV | CONV(1x1, s=2) } with their
    BATCHNORMs folded, as one compiled call where `conv.winograd_down` applies; `run` (the
    three calls) otherwise."""
    from slidenet.ops.conv import winograd_down
    picked, stride = projection
    proj = winograd_down.Projection(picked.w, picked.b, stride)

    def block(x):
        if not picked.relu and winograd_down.applies(x, first, sides, proj, second):
            return winograd_down.forward(x, first, sides, proj, second, relu)
        return run(x)
    return block
