"""Winograd's F(2, 3): its algebra, its accuracy in float32, when it runs, and the compiled passes.

The pair itself (against the naive loops, finite differences, chunks, threads, numba) is
checked with every other convolution in test_kernels.py.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from slidenet import ops
from slidenet.gradcheck import TOLERANCE, check_pattern
from slidenet.ops import compiled, conv, winograd

RNG = np.random.default_rng(2023)
HAVE_NUMBA = compiled.kernels() is not None


def test_the_four_products_give_the_two_rows():
    # The module docstring's identity on plain numbers: y0 = d0 w0 + d1 w1 + d2 w2 and
    # y1 = d1 w0 + d2 w1 + d3 w2 from four products.
    d, w = RNG.standard_normal(4), RNG.standard_normal(3)
    g = winograd.G @ w
    m = np.array([d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]) * g
    assert np.allclose([m[0] + m[1] + m[2], m[1] - m[2] - m[3]],
                       [d[0:3] @ w, d[1:4] @ w], rtol=1e-14)


def test_float32_winograd_is_as_accurate_as_im2col():
    x = RNG.standard_normal((4, 16, 16, 32))
    wt = RNG.standard_normal((3, 3, 32, 32)) * 0.1
    b = RNG.standard_normal(32)
    exact, cache64 = ops.conv_forward(x, wt, b, (1, 1), (1, 1), algorithm="im2col")
    dout = RNG.standard_normal(exact.shape)
    exact_grads = ops.conv_backward(dout, cache64)
    errors = {}
    for algorithm in ("im2col", "winograd"):
        args = [a.astype(np.float32) for a in (x, wt, b)]
        out, cache = ops.conv_forward(*args, (1, 1), (1, 1), algorithm=algorithm)
        grads = ops.conv_backward(dout.astype(np.float32), cache)
        errors[algorithm] = [np.linalg.norm(got - want) / np.linalg.norm(want)
                             for got, want in zip((out, *grads), (exact, *exact_grads))]
    # float32 rounding is ~6e-8 per operation; the extra additions may double it, no more.
    assert max(errors["winograd"]) < 1e-6
    for win, im2 in zip(errors["winograd"], errors["im2col"]):
        assert win < 4 * im2


def test_auto_runs_winograd_only_where_it_applies_and_pays(monkeypatch):
    calls = []
    real_rows = winograd.rows
    monkeypatch.setattr(winograd, "rows", lambda *a: calls.append(1) or real_rows(*a))
    deep = conv.WINOGRAD_MIN_DEPTH

    def runs_winograd(d, k, size=(3, 3), stride=(1, 1)):
        calls.clear()
        x = RNG.standard_normal((2, 7, 7, d)).astype(np.float32)
        wt = RNG.standard_normal((*size, d, k)).astype(np.float32)
        out, cache = ops.conv_forward(x, wt, np.zeros(k, np.float32), stride, (1, 1))
        ops.conv_backward(np.ones_like(out), cache)
        return bool(calls)
    assert runs_winograd(deep, deep)
    assert not runs_winograd(3, deep)               # an RGB first layer stays on im2col
    assert not runs_winograd(deep, deep, stride=(2, 2))
    assert not runs_winograd(deep, deep, size=(5, 5))


def test_a_net_on_winograd_passes_gradcheck():
    # Depths of 8 make "auto" take F(2, 3) in every CONV, forward and backward.
    errors = check_pattern("INPUT(6x4x8) -> [CONV(8) -> RELU]*2 -> POOL -> CONV(8) -> FC(3)")
    assert max(errors.values()) < TOLERANCE


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
def test_compiled_max_pool_keeps_nan_as_numpy_does():
    # np.maximum keeps a NaN; the compiled pass must too, and send the gradient where NumPy does.
    x = np.maximum(RNG.integers(-2, 3, (4, 8, 8, 3)), 0).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    results = []
    for flag in (False, True):
        previous = compiled.set_enabled(flag)
        try:
            out, cache = ops.max_pool_forward(x, (2, 2), (2, 2))
            dout = np.random.default_rng(3).standard_normal(out.shape).astype(np.float32)
            results.append((out.copy(), ops.max_pool_backward(dout, cache, relu_mask=True).copy()))
        finally:
            compiled.set_enabled(previous)
    assert np.isnan(results[0][0][0, 0, 0, 0])
    for numpy_result, compiled_result in zip(*results):
        np.testing.assert_array_equal(compiled_result, numpy_result)     # NaN == NaN here


def test_switched_off_by_the_environment():
    code = "from slidenet.ops import compiled; print(compiled.kernels() is None, compiled.status())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "SLIDENET_NUMBA": "0"})
    assert done.stdout.split()[0] == "True" and "off (disabled)" in done.stdout


def test_without_numba_everything_runs_on_numpy():
    # numba made unimportable in a fresh interpreter: the kernels fall back, and say why.
    code = ("import sys; sys.modules['numba'] = None\n"
            "import numpy as np\n"
            "from slidenet import ops\n"
            "from slidenet.ops import compiled\n"
            "x = np.ones((2, 6, 6, 8), np.float32)\n"
            "out, cache = ops.conv_forward(x, np.ones((3, 3, 8, 8), np.float32), np.zeros(8, np.float32),"
            " (1, 1), (1, 1), algorithm='winograd')\n"
            "ops.conv_backward(out, cache)\n"
            "print(float(out[0, 2, 2, 0]), compiled.kernels() is None, compiled.status())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    value, none, status = done.stdout.split(maxsplit=2)
    assert float(value) == 72.0 and none == "True" and status.startswith("off (numba cannot be imported")
