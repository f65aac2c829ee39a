"""The benchmark's code path on a tiny net: structure of the result, never timings."""
import json

import numpy as np
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


def test_onnxruntime_infers_the_same_net_and_latency_is_reported():
    result = bench.run(tiny_settings(), {"tiny": TINY})
    net = result["nets"]["tiny"]
    assert set(net["infer"]) == set(net["latency"]) == {"slidenet", "onnxruntime"}
    assert set(net["train"]) == {"slidenet"}                  # onnxruntime does not train
    assert net["ratio"]["infer"]["onnxruntime"] > 0 and net["latency"]["slidenet"]["ms"] > 0
    text = bench.report(result)
    assert "batch 1, ms per image" in text and "slidenet / onnxruntime: inference" in text
    # What is timed is the same computation in both libraries.
    from slidenet.bench.runners import OnnxRunner, SlidenetRunner
    sn = SlidenetRunner(TINY, 4, 6)
    np.testing.assert_allclose(OnnxRunner(sn, 1).infer()[0], sn.infer(), rtol=1e-4, atol=1e-5)


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
    assert set(net["train"]) == {"slidenet", "torch"} and net["ratio"]["infer"]["torch"] > 0


def test_conv_setting_switches_winograd_off_for_the_run_only(monkeypatch):
    from slidenet.ops.conv import dispatch, winograd_f23, winograd_f43, winograd_f44
    calls = []
    for module, name in ((winograd_f23, "F23"), (winograd_f43, "F43")):
        scheme = getattr(module, name)
        monkeypatch.setattr(module, name, scheme._replace(
            rows=lambda *a, rows=scheme.rows: calls.append(1) or rows(*a)))
    monkeypatch.setattr(winograd_f44, "rows",      # F(4x4, 3x3)
                        lambda *a, rows=winograd_f44.rows: calls.append(1) or rows(*a))
    deep = "INPUT(8x8x8) -> CONV(8) -> RELU -> FC(3)"       # deep enough for auto to take Winograd
    result = bench.run(tiny_settings(conv="im2col"), {"deep": deep})
    assert not calls and "slidenet convolutions: im2col;" in bench.report(result)
    assert dispatch._default["algorithm"] == "auto"             # restored after the run
    result = bench.run(tiny_settings(), {"deep": deep})
    assert calls and "convolutions: auto (Winograd F(4, 3) or F(2, 3) where it applies, direct" in \
        bench.report(result)


def test_cli_refuses_a_named_conv_a_layer_is_beyond(capsys):
    # --conv direct on R1: conv1 (3 channels) it computes, conv2 (32) it does not. Refused before
    # anything is timed, naming the layer, with exit 2 and no traceback.
    assert main(["bench", "--net", "r1", "--conv", "direct", "--no-torch", "--no-memory"]) == 2
    err = capsys.readouterr().err
    assert "--conv direct cannot compute conv2 (CONV(32)) of r1" in err
    assert "not a 3x3 window of 32 channels" in err and "--conv auto" in err
    assert main(["bench", "--pattern", "INPUT(13x13x3) -> CONV(16, s=2) -> RELU -> FC(3)",
                 "--conv", "full", "--no-torch", "--no-memory"]) == 2
    assert "--conv full cannot compute conv1 (CONV(16, s=2))" in capsys.readouterr().err


def _cpu_ticks(pid):
    """CPU ticks (user + system) the process has used, from /proc (the kernel's count)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/stat"), reason="needs /proc")
def test_busy_cores_spin_while_inside_and_are_gone_after():
    import time
    from slidenet.bench.machine import BusyCores
    with BusyCores(2) as busy:
        pids = [p.pid for p in busy.processes]
        assert len(set(pids)) == 2
        before = [_cpu_ticks(pid) for pid in pids]
        time.sleep(0.5)
        used = [_cpu_ticks(pid) - b for pid, b in zip(pids, before)]
        processes = list(busy.processes)
    assert all(u > 0 for u in used), used                 # they burn CPU
    assert all(p.poll() is not None for p in processes)   # and are stopped afterwards


def test_cli_busy_runs_under_load_and_says_so(capsys):
    assert main(["bench", "--pattern", TINY, "--quick", "--batch", "4", "--infer-batch", "4",
                 "--no-torch", "--no-onnx", "--no-memory", "--busy", "1"]) == 0
    out = capsys.readouterr().out
    assert "--busy 1: 1 other process spinning" in out and "called bare" in out
    assert main(["bench", "--busy", "-1", "--no-torch"]) == 2
    assert "--busy must not be negative" in capsys.readouterr().err
    assert main(["bench", "--busy", "100000", "--no-torch"]) == 2
    assert "--busy 100000 would start more" in capsys.readouterr().err


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/stat"), reason="needs /proc")
def test_busy_cores_end_by_themselves_when_the_benchmark_is_killed():
    import os
    import subprocess
    import sys
    import time
    code = ("import os; from slidenet.bench.machine import BusyCores; "
            "b = BusyCores(1).__enter__(); print(b.processes[0].pid, flush=True); os._exit(0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break                               # ended, not yet reaped
        except FileNotFoundError:
            break                                       # ended and reaped
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        raise AssertionError("the spinning process outlived the benchmark that started it")


def test_scaling_rows_pick_rows_and_refuse_others():
    from slidenet.bench.scaling import parse_rows
    assert parse_rows(["batch:8,1", "size:224", "batch:64"]) == {
        "batch": (1, 8, 64), "size": (224,), "threads": ()}
    for bad in ("batch:3", "size:", "width:32", "batch:one"):
        with pytest.raises(ValueError, match="--rows"):
            parse_rows([bad])


def test_cli_scaling_measures_only_the_rows_named(capsys):
    assert main(["bench", "--scaling", "--rows", "batch:1", "--quick", "--no-torch", "--no-onnx",
                 "--no-memory", "--latency-calls", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["batch"] for row in result["batch"]] == [1]
    assert result["size"] == [] and result["threads"] == []
    assert result["batch"][0]["train"]["slidenet"]["images_per_s"] > 0


def test_cli_rows_without_scaling_or_with_an_unknown_row_is_refused(capsys):
    assert main(["bench", "--rows", "batch:1", "--no-torch"]) == 2
    assert "--rows picks rows of --scaling" in capsys.readouterr().err
    assert main(["bench", "--scaling", "--rows", "batch:2", "--no-torch"]) == 2
    assert "batch has the rows 1,8,64,256" in capsys.readouterr().err


def test_a_forced_older_blas_kernel_on_an_avx512_cpu_is_named():
    from slidenet.bench.machine import blas_kernel_warning
    forced = {"OPENBLAS_CORETYPE": "Haswell"}
    line = blas_kernel_warning("Haswell", forced, ["fma", "avx2", "avx512f"])
    assert "OPENBLAS_CORETYPE=Haswell" in line and "unset it" in line
    assert blas_kernel_warning("Haswell", {}, ["avx512f"]) is None          # OpenBLAS chose
    assert blas_kernel_warning("Haswell", forced, ["avx2"]) is None         # no AVX-512 here
    assert blas_kernel_warning("SkylakeX", {"OPENBLAS_CORETYPE": "SkylakeX"}, ["avx512f"]) is None


def test_warm_up_calls_until_its_time_has_passed(monkeypatch):
    """At least one call, then calls until WARM_SECONDS have passed on the clock, at most
    WARM_CALLS: a fake clock that moves 0.1 s a call stops it after 3 calls at 0.25 s."""
    clock = {"now": 0.0}
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["now"])
    calls = []

    def call():
        calls.append(1)
        clock["now"] += 0.1

    bench.warm_up(call)
    assert len(calls) == 3
    calls.clear()
    monkeypatch.setattr(bench, "WARM_SECONDS", 10.0)
    monkeypatch.setattr(bench, "WARM_CALLS", 7)
    bench.warm_up(call)
    assert len(calls) == 7
    calls.clear()
    monkeypatch.setattr(bench, "WARM_SECONDS", 0.0)
    bench.warm_up(call)
    assert len(calls) == 1


def test_scaling_times_as_many_small_batches_a_round_as_the_latency_does():
    from slidenet.bench.scaling import calls_per_round
    settings = bench.Settings(steps=3, latency_calls=100)
    assert [calls_per_round(settings, b) for b in (1, 8, 64, 256)] == [100, 12, 3, 3]
