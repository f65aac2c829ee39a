"""The benchmark's code path on a tiny net: structure of the result, never timings."""
import json

import pytest

from slidenet import bench
from slidenet.cli import main

TINY = "INPUT(8x8x1) -> CONV(2) -> RELU -> POOL -> FC(6) -> RELU -> FC(3)"


def tiny_settings(**overrides):
    values = dict(batch=4, infer_batch=6, rounds=1, steps=1, sgemm_size=64, threads=1,
                  torch=False, memory=False)
    values.update(overrides)
    return bench.Settings(**values)


def test_run_reports_layers_speed_and_peak_share():
    result = bench.run(tiny_settings(), {"tiny": TINY})
    assert result["sgemm"]["gflops"] > 0 and result["threads"] == 1
    net = result["nets"]["tiny"]
    # One row per step the net runs: CONV -> RELU -> POOL and FC -> RELU are fused steps.
    assert [row["layer"] for row in net["layers"]] == ["conv1+relu1+maxpool1", "fc1+relu2", "fc2"]
    conv = net["layers"][0]
    assert conv["forward"]["gflops"] > 0 and conv["backward"]["ms"] > 0
    assert set(net["train"]) == {"slidenet"} and net["train"]["slidenet"]["images_per_s"] > 0
    assert net["infer"]["slidenet"]["peak_share"] > 0
    text = bench.report(result)
    assert "conv1+relu1+maxpool1" in text and "train images/s (batch 4)" in text
    json.dumps(result)


def test_memory_is_measured_in_a_subprocess():
    memory = bench.peak_memory("slidenet", TINY, tiny_settings())
    assert memory["rss_mb"] > 0 and memory["traced_peak_mb"] > 0


def test_cli_json(capsys):
    assert main(["bench", "--pattern", TINY, "--quick", "--batch", "4", "--infer-batch", "4",
                 "--threads", "1", "--no-torch", "--no-memory", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["rounds"] == 2 and "given" in result["nets"]


def test_cli_rejects_a_zero_batch(capsys):
    assert main(["bench", "--batch", "0", "--no-torch"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err


def test_torch_side_when_installed():
    pytest.importorskip("torch")
    result = bench.run(tiny_settings(torch=True, threads=2), {"tiny": TINY})
    net = result["nets"]["tiny"]
    assert set(net["train"]) == {"slidenet", "torch"} and net["ratio"]["infer"] > 0


def test_conv_setting_switches_winograd_off_for_the_run_only(monkeypatch):
    from slidenet.ops import conv, winograd, winograd4
    calls = []
    for module, name in ((winograd, "F23"), (winograd4, "F43")):
        scheme = getattr(module, name)
        monkeypatch.setattr(module, name, scheme._replace(
            rows=lambda *a, rows=scheme.rows: calls.append(1) or rows(*a)))
    deep = "INPUT(8x8x8) -> CONV(8) -> RELU -> FC(3)"       # deep enough for auto to take Winograd
    result = bench.run(tiny_settings(conv="im2col"), {"deep": deep})
    assert not calls and "slidenet convolutions: im2col;" in bench.report(result)
    assert conv._default["algorithm"] == "auto"             # restored after the run
    result = bench.run(tiny_settings(), {"deep": deep})
    assert calls and "convolutions: auto (Winograd F(4, 3) or F(2, 3) where it applies)" in bench.report(result)
