"""The zoo: the classic CNNs that came after the lecture, each one line of its notation.

    slidenet zoo                       the list
    slidenet zoo resnet18              the pattern, on one line
    slidenet summary zoo:resnet18      wherever a pattern is accepted

Each net is written as torchvision builds it (where torchvision has it) for a 224x224x3 image
and 1000 classes, so its parameter count is torchvision's to the unit (tests/test_zoo.py, with
the layer shapes checked independently by scripts/zoo_reference.py in PyTorch). Where torchvision
rounds a window that does not tile, the pattern says so (``round=down``, ``round=up`` for its
``ceil_mode``); where it has no bias, BATCHNORM follows or the pattern says ``bias=no``.
docs/zoo.md tells who made each net, when, and what idea it brought.
"""
from dataclasses import dataclass

from slidenet.errors import SlidenetError

PREFIX = "zoo:"


@dataclass(frozen=True)
class Entry:
    name: str           # as `zoo:NAME` writes it
    title: str          # "ResNet-18"
    who: str            # the paper's authors
    year: int
    idea: str           # what it brought, in a line
    pattern: str        # one line of slidenet's notation
    torchvision: int    # torchvision's published parameter count; 0 where it has no such model


def _conv_bn(k, rest=""):
    """CONV -> BN -> RELU, the unit of GoogLeNet and ResNet (no bias: BATCHNORM follows)."""
    return f"CONV({k}{rest}) -> BN -> RELU"


def _lenet5():
    return ("INPUT(32x32x1) -> CONV(6, 5x5, p=0) -> TANH -> AVGPOOL(2x2) -> CONV(16, 5x5, p=0) "
            "-> TANH -> AVGPOOL(2x2) -> CONV(120, 5x5, p=0) -> TANH -> FC(84) -> TANH -> FC(10)")


def _alexnet():
    return ("INPUT(224x224x3) -> CONV(64, 11x11, s=4, p=2, round=down) -> RELU -> "
            "MAXPOOL(3x3, s=2) -> CONV(192, 5x5) -> RELU -> MAXPOOL(3x3, s=2) -> CONV(384) -> "
            "RELU -> CONV(256) -> RELU -> CONV(256) -> RELU -> MAXPOOL(3x3, s=2) -> DROPOUT(0.5) "
            "-> FC(4096) -> RELU -> DROPOUT(0.5) -> FC(4096) -> RELU -> FC(1000)")


def _vgg16():
    stages = " -> ".join(f"[CONV({k}) -> RELU]*{n} -> POOL"
                         for k, n in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)))
    return (f"INPUT(224x224x3) -> {stages} -> FC(4096) -> RELU -> DROPOUT(0.5) -> FC(4096) -> "
            "RELU -> DROPOUT(0.5) -> FC(1000)")


def _nin():
    def block(k, first):
        return f"{first} -> RELU -> [CONV({k}, 1x1) -> RELU]*2"
    return ("INPUT(224x224x3) -> " + block(96, "CONV(96, 11x11, s=4, round=down)")
            + " -> MAXPOOL(3x3, s=2, round=down) -> " + block(256, "CONV(256, 5x5)")
            + " -> MAXPOOL(3x3, s=2, round=down) -> " + block(384, "CONV(384)")
            + " -> MAXPOOL(3x3, s=2, round=down) -> DROPOUT(0.5) -> " + block(1000, "CONV(1000)")
            + " -> GLOBALAVGPOOL")


def _inception(c1, r3, c3, r5, c5, pool):
    # torchvision's GoogLeNet has a 3x3 where the paper's "5x5" branch is: kept, to match it.
    return (f"{{ {_conv_bn(c1, ', 1x1')} | {_conv_bn(r3, ', 1x1')} -> {_conv_bn(c3)} | "
            f"{_conv_bn(r5, ', 1x1')} -> {_conv_bn(c5)} | MAXPOOL(3x3, s=1, p=1, round=up) -> "
            f"{_conv_bn(pool, ', 1x1')} }} -> CONCAT")


def _googlenet():
    pool = "MAXPOOL(3x3, s=2, round=up)"
    return " -> ".join([
        "INPUT(224x224x3)", _conv_bn(64, ", 7x7, s=2, p=3, round=down"), pool,
        _conv_bn(64, ", 1x1"), _conv_bn(192), pool,
        _inception(64, 96, 128, 16, 32, 32), _inception(128, 128, 192, 32, 96, 64), pool,
        _inception(192, 96, 208, 16, 48, 64), _inception(160, 112, 224, 24, 64, 64),
        _inception(128, 128, 256, 24, 64, 64), _inception(112, 144, 288, 32, 64, 64),
        _inception(256, 160, 320, 32, 128, 128), "MAXPOOL(2x2, s=2, round=up)",
        _inception(256, 160, 320, 32, 128, 128), _inception(384, 192, 384, 48, 128, 128),
        "GLOBALAVGPOOL -> DROPOUT(0.2) -> FC(1000)"])


_STEM = ("INPUT(224x224x3) -> CONV(64, 7x7, s=2, p=3, round=down) -> BN -> RELU -> "
         "MAXPOOL(3x3, s=2, p=1, round=down)")
_DOWN = ", s=2, p=1, round=down"


def _basic(k, first_stride):
    if first_stride == 1 and k == 64:
        block = f"{{ {_conv_bn(k)} -> CONV({k}) -> BN | ID }} -> ADD -> RELU"
        return f"[{block}]*2"
    first = (f"{{ {_conv_bn(k, _DOWN)} -> CONV({k}) -> BN | CONV({k}, 1x1, s=2, round=down) -> "
             f"BN }} -> ADD -> RELU")
    return f"{first} -> {{ {_conv_bn(k)} -> CONV({k}) -> BN | ID }} -> ADD -> RELU"


def _resnet18():
    stages = " -> ".join(_basic(k, 1 if k == 64 else 2) for k in (64, 128, 256, 512))
    return f"{_STEM} -> {stages} -> GLOBALAVGPOOL -> FC(1000)"


def _bottlenecks(k, count, stride):
    down = _DOWN if stride == 2 else ""
    project = f"CONV({4 * k}, 1x1" + (", s=2, round=down" if stride == 2 else "") + ") -> BN"
    first = (f"{{ {_conv_bn(k, ', 1x1')} -> {_conv_bn(k, down)} -> CONV({4 * k}, 1x1) -> BN | "
             f"{project} }} -> ADD -> RELU")
    rest = (f"{{ {_conv_bn(k, ', 1x1')} -> {_conv_bn(k)} -> CONV({4 * k}, 1x1) -> BN | ID }} "
            f"-> ADD -> RELU")
    return f"{first} -> [{rest}]*{count - 1}"


def _resnet50():
    stages = " -> ".join(_bottlenecks(k, n, 1 if k == 64 else 2)
                         for k, n in ((64, 3), (128, 4), (256, 6), (512, 3)))
    return f"{_STEM} -> {stages} -> GLOBALAVGPOOL -> FC(1000)"


def _mobilenet_v2():
    parts, depth = ["INPUT(224x224x3)", "CONV(32, s=2, p=1, round=down) -> BN -> RELU6"], 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            expand = f"CONV({depth * t}, 1x1) -> BN -> RELU6 -> " if t != 1 else ""
            dw = "DWCONV(3x3" + (", s=2, p=1, round=down" if stride == 2 else "") + ")"
            body = f"{expand}{dw} -> BN -> RELU6 -> CONV({c}, 1x1) -> BN"
            # The inverted residual: a skip wherever the volume keeps its shape.
            parts.append(f"{{ {body} | ID }} -> ADD" if stride == 1 and depth == c else body)
            depth = c
    parts.append("CONV(1280, 1x1) -> BN -> RELU6 -> GLOBALAVGPOOL -> DROPOUT(0.2) -> FC(1000)")
    return " -> ".join(parts)


def _fire(squeeze, expand):
    return (f"CONV({squeeze}, 1x1) -> RELU -> {{ CONV({expand}, 1x1) -> RELU | CONV({expand}) "
            f"-> RELU }} -> CONCAT")


def _squeezenet11():
    pool = "MAXPOOL(3x3, s=2, round=up)"
    return " -> ".join([
        "INPUT(224x224x3) -> CONV(64, 3x3, s=2, round=down) -> RELU", pool,
        _fire(16, 64), _fire(16, 64), pool, _fire(32, 128), _fire(32, 128), pool,
        _fire(48, 192), _fire(48, 192), _fire(64, 256), _fire(64, 256),
        "DROPOUT(0.5) -> CONV(1000, 1x1) -> RELU -> GLOBALAVGPOOL"])


def _densenet121():
    # A dense layer: its input, and 32 new channels computed from it, concatenated.
    layer = "{ ID | BN -> RELU -> CONV(128, 1x1) -> BN -> RELU -> CONV(32, bias=no) } -> CONCAT"
    parts, depth = [_STEM.replace("MAXPOOL", "MAXPOOL")], 64
    for i, n in enumerate((6, 12, 24, 16)):
        parts.append(f"[{layer}]*{n}")
        depth += 32 * n
        if i < 3:
            depth //= 2
            parts.append(f"BN -> RELU -> CONV({depth}, 1x1, bias=no) -> AVGPOOL(2x2)")
    parts.append("BN -> RELU -> GLOBALAVGPOOL -> FC(1000)")
    return " -> ".join(parts)


ENTRIES = (
    Entry("lenet5", "LeNet-5", "Yann LeCun, Leon Bottou, Yoshua Bengio, Patrick Haffner", 1998,
          "convolutions, subsampling and a few FC layers, trained end to end by backprop "
          "(digits, 32x32)", _lenet5(), 0),
    Entry("alexnet", "AlexNet", "Alex Krizhevsky, Ilya Sutskever, Geoffrey Hinton", 2012,
          "a deep CNN on GPUs with ReLU, dropout and data augmentation wins ImageNet",
          _alexnet(), 61_100_840),
    Entry("vgg16", "VGG-16", "Karen Simonyan, Andrew Zisserman", 2014,
          "depth from stacks of small 3x3 filters only", _vgg16(), 138_357_544),
    Entry("nin", "NiN", "Min Lin, Qiang Chen, Shuicheng Yan", 2013,
          "1x1 convolutions as a small network inside each layer; a global-average-pool head "
          "instead of FC layers", _nin(), 0),
    Entry("googlenet", "GoogLeNet", "Christian Szegedy et al.", 2014,
          "Inception modules: 1x1, 3x3 and 5x5 branches side by side, 1x1 bottlenecks, no big "
          "FC", _googlenet(), 6_624_904),
    Entry("resnet18", "ResNet-18", "Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun", 2015,
          "residual connections: each block learns F(x) and outputs F(x) + x", _resnet18(),
          11_689_512),
    Entry("resnet50", "ResNet-50", "Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun", 2015,
          "bottleneck blocks (1x1, 3x3, 1x1) make 50 layers cheaper than VGG-16", _resnet50(),
          25_557_032),
    Entry("mobilenet_v2", "MobileNetV2", "Mark Sandler, Andrew Howard et al.", 2018,
          "inverted residuals: expand with 1x1, filter depthwise, project linearly",
          _mobilenet_v2(), 3_504_872),
    Entry("squeezenet1_1", "SqueezeNet 1.1", "Forrest Iandola et al.", 2016,
          "Fire modules (squeeze with 1x1, expand with 1x1 and 3x3): AlexNet's accuracy with "
          "50x fewer parameters", _squeezenet11(), 1_235_496),
    Entry("densenet121", "DenseNet-121", "Gao Huang, Zhuang Liu, Laurens van der Maaten, "
          "Kilian Weinberger", 2017, "every layer sees the concatenated maps of all the layers "
          "before it in its block", _densenet121(), 7_978_856),
)
BY_NAME = {entry.name: entry for entry in ENTRIES}


def lookup(name):
    """The Entry called `name` (case and '-' ignored), or a SlidenetError listing the names."""
    key = name.strip().lower().replace("-", "").replace(" ", "")
    for entry in ENTRIES:
        if key in (entry.name, entry.name.replace("_", ""),
                   entry.title.lower().replace("-", "").replace(" ", "")):
            return entry
    raise SlidenetError(f"the zoo has no net {name!r}; it has: "
                        + ", ".join(entry.name for entry in ENTRIES))


def resolve(pattern):
    """A pattern, or `zoo:NAME` -> the zoo net's pattern; anything else unchanged."""
    if isinstance(pattern, str) and pattern.strip().lower().startswith(PREFIX):
        return lookup(pattern.strip()[len(PREFIX):]).pattern
    return pattern
