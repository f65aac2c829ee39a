"""Every layer kind's `torch_modules(info, nn)` (what `slidenet bench` builds in PyTorch), run
against a stand-in `nn`, so CI checks them without torch installed.

The stand-in records each constructor call, takes the arguments torch's constructor takes (by
position or keyword, with torch's defaults), refuses what torch refuses (a channel count that
is not the input's, a float kernel size), and knows what torch documents each module does to
a shape and how many weights it holds. The oracles: the layer's own inferred output shape and
its parameter count (the summary's, and the sizes of the layer's arrays), and, for one pattern
with every kind, the calls written out by hand from the pattern's text.
"""
import math

import pytest

from slidenet import Net
from slidenet.layers import kinds, leaves
from slidenet.notation.shapes import walk_infos

# Between them, every kind but INPUT (which has no module), per-axis sizes, strides and
# paddings, BATCHNORM on a volume and after an FC, an FC after a volume, after an FC and after
# GLOBALAVGPOOL's 1x1 volume.
EVERY_KIND = (
    "INPUT(9x13x3) -> CONV(6, 3x5, s=1x2, p=1x2) -> BATCHNORM -> LEAKYRELU(0.1) -> "
    "MAXPOOL(3x3, s=2) -> CONV(5, 1x1) -> TANH -> AVGPOOL(2x1, s=1x1) -> DROPOUT(0.3) -> "
    "FC(7) -> BATCHNORM -> SIGMOID -> FC(4)")
PATTERNS = [
    EVERY_KIND,
    "INPUT(8x8x2) -> CONV(4) -> RELU -> AVGPOOL(3x3, s=1) -> GLOBALAVGPOOL -> FC(3)",
    "INPUT(32x32x3) -> [CONV(8, 5x5, p=2) -> RELU]*2 -> POOL -> CONV(16, 4x4, s=2, p=1) -> BN -> "
    "RELU -> FC(16) -> RELU -> DROPOUT(0.5) -> FC(10)",
    "INPUT(28x28x1) -> CONV(16) -> RELU -> MAXPOOL(2x2, s=2) -> LEAKYRELU -> FC(10)",
    # Graphs: a residual block with a projection, grouped and depthwise CONV, padding per side,
    # a padded pool, RELU6, and a concatenation.
    "INPUT(9x9x4) -> { CONV(8, s=2, p=1) -> BN -> RELU6 -> CONV(8, g=2) | CONV(8, 2x2, s=2, "
    "p=0:1) } -> ADD -> MAXPOOL(3x3, s=1, p=1) -> { ID | DWCONV(3x3, m=2) -> CONV(4, 1x1) } -> "
    "CONCAT -> FC(3)",
]


def _pair(value, what):
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{what} must be an int or a pair of ints, not {value!r}")
    return pair


def _positive(value, what):
    if not (isinstance(value, int) and value > 0):
        raise TypeError(f"{what} must be a positive int, not {value!r}")
    return value


class Module:
    """A stand-in module: `call` (its name and normalised arguments), `params` (weights it
    holds), `shape(s)` (the output shape for one example's input shape s, CHW or (F,))."""
    params = 0

    def shape(self, s):
        return s


class Conv2d(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True):
        self.c_in = _positive(in_channels, "in_channels")
        self.c_out = _positive(out_channels, "out_channels")
        self.k, self.s = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
        self.p, self.d = _pair(padding, "padding"), _pair(dilation, "dilation")
        self.call = ("Conv2d", self.c_in, self.c_out, self.k, self.s, self.p)
        self.params = self.c_out * self.c_in * self.k[0] * self.k[1] // groups \
            + (self.c_out if bias else 0)

    def shape(self, s):
        c, h, w = s
        assert c == self.c_in, f"Conv2d expected {self.c_in} input channels, got {c}"
        # torch's documented formula: floor((H + 2P - D(F - 1) - 1) / S + 1)
        return (self.c_out,) + tuple(
            math.floor((n + 2 * p - d * (f - 1) - 1) / s + 1)
            for n, p, d, f, s in zip((h, w), self.p, self.d, self.k, self.s))


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, **options):
        self.k = _pair(kernel_size, "kernel_size")
        self.s = self.k if stride is None else _pair(stride, "stride")
        self.p = _pair(padding, "padding")
        self.call = (type(self).__name__, self.k, self.s)

    def shape(self, s):
        c, h, w = s
        return (c,) + tuple(math.floor((n + 2 * p - f) / s + 1)
                            for n, p, f, s in zip((h, w), self.p, self.k, self.s))


class MaxPool2d(_Pool2d):
    pass


class AvgPool2d(_Pool2d):
    pass


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True):
        self.f_in = _positive(in_features, "in_features")
        self.f_out = _positive(out_features, "out_features")
        self.call = ("Linear", self.f_in, self.f_out)
        self.params = self.f_in * self.f_out + (self.f_out if bias else 0)

    def shape(self, s):
        assert s == (self.f_in,), f"Linear({self.f_in}, ...) got an input of shape {s}"
        return (self.f_out,)


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        self.call = ("Flatten",)

    def shape(self, s):
        return (math.prod(s),)


class _BatchNorm(Module):
    dims = 0

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        self.c = _positive(num_features, "num_features")
        self.call = (type(self).__name__, self.c)
        self.params = 2 * self.c if affine else 0

    def shape(self, s):
        assert len(s) == self.dims and s[0] == self.c, f"{self.call} got an input of shape {s}"
        return s


class BatchNorm2d(_BatchNorm):
    dims = 3


class BatchNorm1d(_BatchNorm):
    dims = 1


class _Elementwise(Module):
    def __init__(self, inplace=False):
        self.call = (type(self).__name__,)


class ReLU(_Elementwise):
    pass


class Tanh(_Elementwise):
    def __init__(self):
        self.call = ("Tanh",)


class Sigmoid(_Elementwise):
    def __init__(self):
        self.call = ("Sigmoid",)


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01, inplace=False):
        if not isinstance(negative_slope, float):
            raise TypeError(f"negative_slope must be a float, not {negative_slope!r}")
        self.call = ("LeakyReLU", negative_slope)


class ReLU6(_Elementwise):
    pass


class Identity(Module):
    def __init__(self, *args, **kwargs):
        self.call = ("Identity",)


class ZeroPad2d(Module):
    def __init__(self, padding):
        self.pads = tuple(padding)          # (left, right, top, bottom), as torch's
        assert len(self.pads) == 4 and all(isinstance(v, int) for v in self.pads)
        self.call = ("ZeroPad2d", self.pads)

    def shape(self, s):
        left, right, top, bottom = self.pads
        return (s[0], s[1] + top + bottom, s[2] + left + right)


class Sequential(Module):
    def __init__(self, *modules):
        self.modules = modules

    @property
    def params(self):
        return sum(m.params for m in self.modules)

    def shape(self, s):
        for m in self.modules:
            s = m.shape(s)
        return s


class Dropout(Module):
    def __init__(self, p=0.5, inplace=False):
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.call = ("Dropout", p)


class StandIn:
    """The `nn` namespace: the stand-in modules, and every call made, in order."""

    def __init__(self):
        self.calls = []
        for cls in (Conv2d, MaxPool2d, AvgPool2d, Linear, Flatten, BatchNorm2d, BatchNorm1d,
                    ReLU, Tanh, Sigmoid, LeakyReLU, Dropout, ReLU6, Identity, ZeroPad2d):
            setattr(self, cls.__name__, self._recording(cls))
        # What a merge (ADD, CONCAT) builds its branches with; not recorded.
        self.Module, self.Sequential, self.ModuleList = Module, Sequential, list

    def _recording(self, cls):
        def make(*args, **kwargs):
            module = cls(*args, **kwargs)
            self.calls.append(module.call)
            return module
        return make


def chw(shape):
    """slidenet's (H, W, D) as torch's (C, H, W); (n,) stays."""
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else tuple(shape)


def merged(module, shape, kind):
    """A merge's module (its `branches`, torch Sequentials) on an input of `shape`, as its
    forward computes: every branch from the same input, then summed or concatenated (channels).
    Returns (shape, weights)."""
    ends = [branch.shape(shape) for branch in module.branches]
    if kind == "ADD":
        assert all(end == ends[0] for end in ends), ends
        out = ends[0]
    else:
        assert all(end[1:] == ends[0][1:] for end in ends), ends
        out = (sum(end[0] for end in ends), *ends[0][1:])
    return out, sum(branch.params for branch in module.branches)


@pytest.mark.parametrize("pattern", PATTERNS,
                         ids=["every-kind", "global-avg-pool", "deeper", "mnist", "graph"])
def test_each_layers_modules_have_its_shape_and_its_weights(pattern):
    net = Net.from_pattern(pattern)
    nn = StandIn()
    shape = chw(net.infos[0].output_shape)
    for info, layer in zip(net.infos[1:], net.layers):
        modules = info.spec.type.torch_modules(info, nn)
        assert modules and all(isinstance(m, Module) for m in modules), info.spec.text
        weights = 0
        for module in modules:
            if info.branches:
                shape, held = merged(module, shape, info.spec.kind)
            else:
                shape, held = module.shape(shape), module.params
            weights += held
        assert shape == chw(info.output_shape), info.spec.text
        # A merge holds its branches' weights: the summary's counts, and the layers' arrays.
        assert weights == sum(i.params for i in walk_infos([info])) == sum(
            a.size for part in leaves([layer]) for a in part.params.values()), info.spec.text


def test_every_kind_is_covered():
    used = {info.spec.kind for pattern in PATTERNS
            for info in walk_infos(Net.from_pattern(pattern).infos)}
    assert used == set(kinds())


def test_the_modules_are_the_patterns_layers_as_torch_writes_them():
    # Read off EVERY_KIND's text by hand: 9x13x3 -> CONV 3x5, s=1x2, p=1x2 -> 9x7x6 ->
    # MAXPOOL 3x3, s=2 -> 4x3x6 -> CONV 1x1 -> 4x3x5 -> AVGPOOL 2x1, s=1 -> 3x3x5 = 45 numbers.
    net = Net.from_pattern(EVERY_KIND)
    nn = StandIn()
    for info in net.infos[1:]:
        info.spec.type.torch_modules(info, nn)
    assert nn.calls == [
        ("Conv2d", 3, 6, (3, 5), (1, 2), (1, 2)),
        ("BatchNorm2d", 6),
        ("LeakyReLU", 0.1),
        ("MaxPool2d", (3, 3), (2, 2)),
        ("Conv2d", 6, 5, (1, 1), (1, 1), (0, 0)),
        ("Tanh",),
        ("AvgPool2d", (2, 1), (1, 1)),
        ("Dropout", 0.3),
        ("Flatten",),
        ("Linear", 45, 7),
        ("BatchNorm1d", 7),
        ("Sigmoid",),
        ("Linear", 7, 4),
    ]


def test_the_stand_in_refuses_what_torch_refuses():
    # So the tests above can fail: a module given the wrong input, or arguments torch rejects.
    nn = StandIn()
    with pytest.raises(AssertionError, match="expected 3 input channels"):
        nn.Conv2d(3, 4, 3).shape((1, 8, 8))
    with pytest.raises(TypeError, match="kernel_size"):
        nn.Conv2d(3, 4, 3.0)
    with pytest.raises(AssertionError, match="Linear"):
        nn.Linear(10, 2).shape((12,))
    with pytest.raises(AssertionError, match="BatchNorm2d"):
        nn.BatchNorm2d(4).shape((4,))
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)
    assert nn.Conv2d(3, 4, 3, padding=1).shape((3, 8, 8)) == (4, 8, 8)
    assert nn.MaxPool2d(2).shape((4, 7, 7)) == (4, 3, 3)        # torch floors
