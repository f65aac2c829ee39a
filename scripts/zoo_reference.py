"""The zoo's oracle: torchvision's architectures written out by hand in PyTorch, layer shape by
layer shape, for the parameter counts and multiply-adds that tests/test_zoo.py checks.

torchvision cannot be installed where slidenet's tests run, and its published parameter counts
are only numbers in its documentation. This script rebuilds each architecture from its paper
and torchvision's documented layer shapes (written here from those descriptions, not copied),
runs a 224x224x3 image through it to check the output shape, and counts:

    params   sum of every parameter's numel()
    madds    multiply-adds of every Conv2d and Linear, from forward hooks (one image)

Run it in a throwaway virtual environment (PyTorch is not a slidenet dependency):

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0
    /tmp/torchvenv/bin/python scripts/zoo_reference.py > tests/fixtures/zoo_reference.json

Its output is recorded in tests/fixtures/zoo_reference.json; the published counts it must match
are in slidenet/notation/zoo.py (torchvision's model documentation).
"""
import json
import sys

import torch
from torch import nn


def conv_bn(cin, cout, k, s=1, p=0, groups=1, act=nn.ReLU):
    return [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(cout),
            act(inplace=False)]


class Branches(nn.Module):
    """Branches from one input, merged by sum or concatenation (channels)."""

    def __init__(self, branches, merge):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*b) for b in branches)
        self.merge = merge

    def forward(self, x):
        outs = [b(x) for b in self.branches]
        return torch.cat(outs, 1) if self.merge == "cat" else sum(outs)


class Flat(nn.Module):
    def forward(self, x):
        return torch.flatten(x, 1)


def alexnet():
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d(6), Flat(), nn.Dropout(), nn.Linear(256 * 36, 4096), nn.ReLU(),
        nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000))


def vgg16():
    layers, cin = [], 3
    for k, n in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(n):
            layers += [nn.Conv2d(cin, k, 3, padding=1), nn.ReLU()]
            cin = k
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), Flat(), nn.Linear(512 * 49, 4096),
                         nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
                         nn.Linear(4096, 1000))


def googlenet():
    def inception(cin, c1, r3, c3, r5, c5, pool):
        # torchvision's "5x5" branch uses a 3x3 filter.
        return Branches([conv_bn(cin, c1, 1), conv_bn(cin, r3, 1) + conv_bn(r3, c3, 3, p=1),
                         conv_bn(cin, r5, 1) + conv_bn(r5, c5, 3, p=1),
                         [nn.MaxPool2d(3, 1, 1, ceil_mode=True)] + conv_bn(cin, pool, 1)], "cat")
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return nn.Sequential(
        *conv_bn(3, 64, 7, 2, 3), pool(), *conv_bn(64, 64, 1), *conv_bn(64, 192, 3, p=1), pool(),
        inception(192, 64, 96, 128, 16, 32, 32), inception(256, 128, 128, 192, 32, 96, 64), pool(),
        inception(480, 192, 96, 208, 16, 48, 64), inception(512, 160, 112, 224, 24, 64, 64),
        inception(512, 128, 128, 256, 24, 64, 64), inception(512, 112, 144, 288, 32, 64, 64),
        inception(528, 256, 160, 320, 32, 128, 128), nn.MaxPool2d(2, 2, ceil_mode=True),
        inception(832, 256, 160, 320, 32, 128, 128), inception(832, 384, 192, 384, 48, 128, 128),
        nn.AdaptiveAvgPool2d(1), Flat(), nn.Dropout(0.2), nn.Linear(1024, 1000))


def stem():
    return [*conv_bn(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, 1)]


def resnet18():
    layers, cin = stem(), 64
    for k, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for i in range(2):
            stride = s if i == 0 else 1
            body = conv_bn(cin, k, 3, stride, 1) + conv_bn(k, k, 3, 1, 1)[:2]
            skip = [nn.Conv2d(cin, k, 1, stride, bias=False), nn.BatchNorm2d(k)] \
                if stride != 1 or cin != k else [nn.Identity()]
            layers += [Branches([body, skip], "sum"), nn.ReLU()]
            cin = k
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), Flat(), nn.Linear(512, 1000))


def resnet50():
    layers, cin = stem(), 64
    for k, n, s in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(n):
            stride = s if i == 0 else 1
            body = (conv_bn(cin, k, 1) + conv_bn(k, k, 3, stride, 1)
                    + conv_bn(k, 4 * k, 1)[:2])
            skip = [nn.Conv2d(cin, 4 * k, 1, stride, bias=False), nn.BatchNorm2d(4 * k)] \
                if stride != 1 or cin != 4 * k else [nn.Identity()]
            layers += [Branches([body, skip], "sum"), nn.ReLU()]
            cin = 4 * k
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), Flat(), nn.Linear(2048, 1000))


def mobilenet_v2():
    layers, cin = conv_bn(3, 32, 3, 2, 1, act=nn.ReLU6), 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            stride, hidden = (s if i == 0 else 1), cin * t
            body = conv_bn(cin, hidden, 1, act=nn.ReLU6) if t != 1 else []
            body += conv_bn(hidden, hidden, 3, stride, 1, groups=hidden, act=nn.ReLU6)
            body += [nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c)]
            layers.append(Branches([body, [nn.Identity()]], "sum") if stride == 1 and cin == c
                          else nn.Sequential(*body))
            cin = c
    return nn.Sequential(*layers, *conv_bn(320, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1),
                         Flat(), nn.Dropout(0.2), nn.Linear(1280, 1000))


def squeezenet1_1():
    def fire(cin, sq, ex):
        return [nn.Conv2d(cin, sq, 1), nn.ReLU(),
                Branches([[nn.Conv2d(sq, ex, 1), nn.ReLU()],
                          [nn.Conv2d(sq, ex, 3, padding=1), nn.ReLU()]], "cat")]
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool(), *fire(64, 16, 64), *fire(128, 16, 64), pool(),
        *fire(128, 32, 128), *fire(256, 32, 128), pool(), *fire(256, 48, 192),
        *fire(384, 48, 192), *fire(384, 64, 256), *fire(512, 64, 256),
        nn.Dropout(0.5), nn.Conv2d(512, 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), Flat())


def densenet121():
    layers, cin = stem(), 64
    for i, n in enumerate((6, 12, 24, 16)):
        for _ in range(n):
            new = [nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 128, 1, bias=False),
                   nn.BatchNorm2d(128), nn.ReLU(), nn.Conv2d(128, 32, 3, padding=1, bias=False)]
            layers.append(Branches([[nn.Identity()], new], "cat"))
            cin += 32
        if i < 3:
            layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cin // 2, 1, bias=False),
                       nn.AvgPool2d(2, 2)]
            cin //= 2
    return nn.Sequential(*layers, nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), Flat(),
                         nn.Linear(cin, 1000))


NETS = {"alexnet": alexnet, "vgg16": vgg16, "googlenet": googlenet, "resnet18": resnet18,
        "resnet50": resnet50, "mobilenet_v2": mobilenet_v2, "squeezenet1_1": squeezenet1_1,
        "densenet121": densenet121}


def measure(model):
    madds = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_output = kh * kw * module.in_channels // module.groups
            madds.append(output[0].numel() * per_output)
        elif isinstance(module, nn.Linear):
            madds.append(module.in_features * module.out_features)
    for module in model.modules():
        module.register_forward_hook(hook)
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 224, 224))
    return {"params": sum(p.numel() for p in model.parameters()), "madds": sum(madds),
            "output": list(out.shape[1:])}


if __name__ == "__main__":
    names = sys.argv[1:] or list(NETS)
    result = {name: measure(NETS[name]()) for name in names}
    result["torch"] = torch.__version__
    print(json.dumps(result, indent=2))
