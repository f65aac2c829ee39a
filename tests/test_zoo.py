"""The zoo: every classic net parses, and where torchvision has it, its parameters and
multiply-adds at 224x224x3 are torchvision's exactly.

Two oracles that do not come from slidenet: torchvision's published parameter counts (in
`slidenet.notation.zoo`, from torchvision's model documentation) and tests/fixtures/zoo_reference.json,
the output of scripts/zoo_reference.py, which rebuilds each architecture by hand in PyTorch and
counts its parameters and its convolutions' and linear layers' multiply-adds with hooks.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slidenet import Net
from slidenet.errors import SlidenetError
from slidenet.notation import zoo
from slidenet.notation.pattern import parse
from slidenet.notation.shapes import infer, walk_infos

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "zoo_reference.json").read_text())
REQUIRED = {"lenet5", "alexnet", "vgg16", "nin", "googlenet", "resnet18", "resnet50",
            "mobilenet_v2", "squeezenet1_1", "densenet121"}


def totals(pattern):
    every = list(walk_infos(infer(parse(pattern), pattern)))
    return sum(i.params for i in every), sum(i.madds for i in every), every


def test_the_zoo_holds_the_nets_the_lecture_goes_on_to():
    assert REQUIRED <= set(zoo.BY_NAME)
    for entry in zoo.ENTRIES:
        assert "\n" not in entry.pattern and entry.year > 1990 and entry.who and entry.idea


@pytest.mark.parametrize("name", sorted(n for n in REFERENCE if n != "torch"))
def test_parameters_and_madds_are_torchvisions(name):
    entry = zoo.lookup(name)
    params, madds, every = totals(entry.pattern)
    assert params == entry.torchvision == REFERENCE[name]["params"]
    assert madds == REFERENCE[name]["madds"]
    assert list(every[-1].output_shape)[-1] == REFERENCE[name]["output"][-1] == 1000
    assert every[0].output_shape == (224, 224, 3)


def test_lenet5_and_nin_by_their_papers():
    # LeNet-5: C1 156, C3 2,416 (every S2 map to every C3 map), C5 48,120, F6 10,164, out 850.
    assert totals(zoo.lookup("lenet5").pattern)[0] == 156 + 2416 + 48120 + 10164 + 850
    params, _, every = totals(zoo.lookup("nin").pattern)
    convs = [(96, 11 * 11 * 3), (96, 96), (96, 96), (256, 25 * 96), (256, 256), (256, 256),
             (384, 9 * 256), (384, 384), (384, 384), (1000, 9 * 384), (1000, 1000), (1000, 1000)]
    assert params == sum(k * (n + 1) for k, n in convs)
    assert every[-1].output_shape == (1, 1, 1000)          # a global-average-pool head


def test_a_zoo_net_builds_and_runs_small_parts():
    # The whole net at 224 is too slow for a test; its first layers run, and the zoo's
    # LeNet-5 runs whole.
    net = Net.from_pattern("zoo:lenet5", seed=0)
    assert net.pattern == zoo.lookup("lenet5").pattern
    scores = net.forward(np.zeros((2, 32, 32, 1), np.float32))
    assert scores.shape == (2, 10)


def test_zoo_names_resolve_loosely_and_refuse_with_the_list():
    assert zoo.lookup("ResNet-18") is zoo.lookup("resnet18")
    assert zoo.lookup("MobileNetV2") is zoo.lookup("mobilenet_v2")
    with pytest.raises(SlidenetError, match="the zoo has no net 'resnet19'; it has: lenet5"):
        zoo.lookup("resnet19")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "slidenet", *args], capture_output=True,
                          text=True)


def test_cli_lists_prints_and_accepts_zoo_names():
    done = run_cli("zoo")
    assert done.returncode == 0, done.stderr
    assert "11,689,512" in done.stdout and "DenseNet-121" in done.stdout
    done = run_cli("zoo", "resnet50")
    assert done.returncode == 0 and done.stdout.strip() == zoo.lookup("resnet50").pattern
    done = run_cli("summary", "zoo:squeezenet1_1")
    assert done.returncode == 0 and "total parameters:        1,235,496" in done.stdout
    done = run_cli("zoo", "nope")
    assert done.returncode == 2 and "the zoo has no net 'nope'" in done.stderr
    assert "Traceback" not in done.stderr
