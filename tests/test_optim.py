"""Optimizers against hand-computed updates, plus the contracts train.py relies on.

Expected values are written out as arithmetic on literals, never computed by slidenet itself.
"""
import json
import math
import tracemalloc

import numpy as np
import pytest

from slidenet.errors import ModelFileError, SlidenetError
from slidenet.training.optim import OPTIMIZERS, decays, make_optimizer

NAMES = ["sgd", "momentum", "nesterov", "adam"]


def tiny_params(dtype=np.float64):
    """One weight and one bias, so every number in the arithmetic below is visible."""
    return {"fc1.W": np.array([1.0], dtype=dtype), "fc1.b": np.array([0.5], dtype=dtype)}


# Gradients of three steps: (dW, db).
GRADS = [(0.5, 1.0), (-1.0, -0.5), (0.25, 0.0)]


def run(name, steps, lr=0.1, **hyper):
    """Take `steps` steps of GRADS with the optimizer `name`; return the final (W, b)."""
    params = tiny_params()
    opt = make_optimizer(name, params, **hyper)
    for dw, db in GRADS[:steps]:
        opt.step({"fc1.W": np.array([dw]), "fc1.b": np.array([db])}, lr)
    return params["fc1.W"][0], params["fc1.b"][0]


def test_sgd_by_hand():
    # lr 0.1, weight decay 0.01 on W only: w -= 0.1 * (g + 0.01 * w).
    # step 1: W = 1.0 - 0.1 * (0.5 + 0.01 * 1.0) = 1.0 - 0.051 = 0.949
    #         b = 0.5 - 0.1 * 1.0 = 0.4
    # step 2: W = 0.949 - 0.1 * (-1.0 + 0.00949) = 0.949 + 0.099051 = 1.048051
    #         b = 0.4 + 0.05 = 0.45
    # step 3: W = 1.048051 - 0.1 * (0.25 + 0.01048051) = 1.048051 - 0.026048051 = 1.022002949
    #         b = 0.45 - 0.1 * 0.0 = 0.45
    expected = [(0.949, 0.4), (1.048051, 0.45), (1.022002949, 0.45)]
    for steps, (w, b) in enumerate(expected, start=1):
        np.testing.assert_allclose(run("sgd", steps, weight_decay=0.01), (w, b), rtol=1e-12)


def test_momentum_by_hand():
    # mu 0.9, lr 0.1, decay 0.01 on W: v = 0.9 v - 0.1 (g + 0.01 w); w += v.
    # step 1: W: v = -0.1 * 0.51 = -0.051, W = 0.949.            b: v = -0.1, b = 0.4
    # step 2: W: v = -0.0459 - 0.1 * (-1.0 + 0.00949) = -0.0459 + 0.099051 = 0.053151,
    #         W = 0.949 + 0.053151 = 1.002151.       b: v = -0.09 + 0.05 = -0.04, b = 0.36
    # step 3: W: v = 0.0478359 - 0.1 * (0.25 + 0.01002151) = 0.0478359 - 0.026002151
    #              = 0.021833749,
    #         W = 1.002151 + 0.021833749 = 1.023984749.          b: v = -0.036, b = 0.324
    expected = [(0.949, 0.4), (1.002151, 0.36), (1.023984749, 0.324)]
    for steps, (w, b) in enumerate(expected, start=1):
        got = run("momentum", steps, momentum=0.9, weight_decay=0.01)
        np.testing.assert_allclose(got, (w, b), rtol=1e-12)


def test_nesterov_by_hand():
    # v_prev = v; v = 0.9 v - 0.1 g'; w += -0.9 v_prev + 1.9 v, with g' = g + 0.01 w for W.
    # step 1: W: v = -0.051, W = 1.0 + 1.9 * (-0.051) = 0.9031.   b: v = -0.1, b = 0.5 - 0.19 = 0.31
    # step 2: W: g' = -1.0 + 0.009031 = -0.990969, v = -0.0459 + 0.0990969 = 0.0531969,
    #         W = 0.9031 + 0.0459 + 1.9 * 0.0531969 = 0.9031 + 0.0459 + 0.10107411 = 1.05007411
    #         b: v = -0.09 + 0.05 = -0.04, b = 0.31 + 0.09 - 0.076 = 0.324
    # step 3: W: g' = 0.25 + 0.0105007411 = 0.2605007411,
    #         v = 0.04787721 - 0.02605007411 = 0.02182713589,
    #         W = 1.05007411 - 0.04787721 + 1.9 * 0.02182713589 = 1.043668458191
    #         b: v = -0.036, b = 0.324 + 0.036 - 0.0684 = 0.2916
    expected = [(0.9031, 0.31), (1.05007411, 0.324), (1.043668458191, 0.2916)]
    for steps, (w, b) in enumerate(expected, start=1):
        got = run("nesterov", steps, momentum=0.9, weight_decay=0.01)
        np.testing.assert_allclose(got, (w, b), rtol=1e-12)


def test_adam_by_hand():
    # b1 0.9, b2 0.999, eps 1e-8, lr 0.1; AdamW decay 0.01 on W first: w *= 1 - 0.1 * 0.01.
    # step 1, W: m = 0.1 * 0.5 = 0.05, v = 0.001 * 0.25 = 0.00025, m_hat = 0.5, v_hat = 0.25
    w1 = 1.0 * (1 - 0.001) - 0.1 * 0.5 / (math.sqrt(0.25) + 1e-8)
    # step 1, b: m = 0.1, v = 0.001, m_hat = 1, v_hat = 1 (no decay)
    b1 = 0.5 - 0.1 * 1.0 / (math.sqrt(1.0) + 1e-8)
    # step 2, W: m = 0.045 - 0.1 = -0.055, v = 0.999 * 0.00025 + 0.001 * 1.0 = 0.00124975
    w2 = w1 * (1 - 0.001) - 0.1 * (-0.055 / (1 - 0.9 ** 2)) / (
        math.sqrt(0.00124975 / (1 - 0.999 ** 2)) + 1e-8)
    # step 2, b: m = 0.09 - 0.05 = 0.04, v = 0.000999 + 0.001 * 0.25 = 0.001249
    b2 = b1 - 0.1 * (0.04 / (1 - 0.9 ** 2)) / (math.sqrt(0.001249 / (1 - 0.999 ** 2)) + 1e-8)
    # step 3, W: m = 0.9 * -0.055 + 0.1 * 0.25 = -0.0245,
    #            v = 0.999 * 0.00124975 + 0.001 * 0.0625 = 0.00131100025
    w3 = w2 * (1 - 0.001) - 0.1 * (-0.0245 / (1 - 0.9 ** 3)) / (
        math.sqrt(0.00131100025 / (1 - 0.999 ** 3)) + 1e-8)
    # step 3, b: g = 0, m = 0.036, v = 0.999 * 0.001249 = 0.001247751
    b3 = b2 - 0.1 * (0.036 / (1 - 0.9 ** 3)) / (math.sqrt(0.001247751 / (1 - 0.999 ** 3)) + 1e-8)
    for steps, (w, b) in enumerate([(w1, b1), (w2, b2), (w3, b3)], start=1):
        np.testing.assert_allclose(run("adam", steps, weight_decay=0.01), (w, b), rtol=1e-12)
    # Sanity of the literals: Adam's first step moves each parameter by ~lr.
    assert w1 == pytest.approx(0.899, abs=1e-7) and b1 == pytest.approx(0.4, abs=1e-7)


def test_decay_rule():
    assert decays("conv1.W") and decays("fc3.W")
    assert not any(decays(n) for n in ["conv1.b", "bn1.gamma", "bn1.beta"])


@pytest.mark.parametrize("name", NAMES)
def test_weight_decay_hits_only_weights(name):
    names = ["conv1.W", "conv1.b", "bn1.gamma", "bn1.beta"]
    params = {n: np.ones(3) for n in names}
    opt = make_optimizer(name, params, weight_decay=0.1)
    opt.step({n: np.zeros(3) for n in names}, 0.1)   # zero gradients: only decay can move
    assert np.all(params["conv1.W"] < 1.0)
    for n in names[1:]:
        np.testing.assert_array_equal(params[n], 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_updates_in_place(name):
    params = tiny_params()
    live = dict(params)
    opt = make_optimizer(name, params)
    opt.step({"fc1.W": np.array([0.5]), "fc1.b": np.array([1.0])}, 0.1)
    for n, arr in live.items():
        assert params[n] is arr
    assert live["fc1.W"][0] != 1.0 and live["fc1.b"][0] != 0.5


@pytest.mark.parametrize("name", NAMES)
def test_step_allocates_no_parameter_sized_arrays(name):
    n = 100_000   # 800 kB per float64 array; a temporary of that size would show in the peak
    params = {"fc1.W": np.ones(n), "fc1.b": np.ones(n)}
    grads = {"fc1.W": np.full(n, 0.5), "fc1.b": np.full(n, -0.5)}
    opt = make_optimizer(name, params, weight_decay=0.01)
    opt.step(grads, 0.1)   # first step outside the trace, in case anything is lazily set up
    tracemalloc.start()
    try:
        opt.step(grads, 0.1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * n // 10


def grads_for(params, k):
    """Deterministic gradients that depend on the params, as real ones do."""
    return {n: (0.5 * p + 0.1 * (k + 1) * np.sign(np.arange(p.size).reshape(p.shape) - 0.5))
            .astype(p.dtype) for n, p in params.items()}


def net_params(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {"conv1.W": rng.standard_normal((3, 3, 2, 4)).astype(dtype),
            "conv1.b": rng.standard_normal(4).astype(dtype),
            "bn1.gamma": rng.standard_normal(4).astype(dtype),
            "bn1.beta": rng.standard_normal(4).astype(dtype)}


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_continues_bit_exactly(name, tmp_path):
    lrs = [0.1, 0.05, 0.02]
    straight = net_params()
    opt = make_optimizer(name, straight, weight_decay=0.01)
    for k, lr in enumerate(lrs):
        opt.step(grads_for(straight, k), lr)

    resumed = net_params()
    first = make_optimizer(name, resumed, weight_decay=0.01)
    first.step(grads_for(resumed, 0), lrs[0])
    np.savez(tmp_path / "state.npz", **first.state_arrays())
    del first
    with np.load(tmp_path / "state.npz", allow_pickle=False) as saved:
        second = make_optimizer(name, resumed, weight_decay=0.01)
        second.load_state_arrays(saved)
    for k in (1, 2):
        second.step(grads_for(resumed, k), lrs[k])

    for n in straight:
        np.testing.assert_array_equal(resumed[n], straight[n])
    for key, arr in opt.state_arrays().items():
        np.testing.assert_array_equal(second.state_arrays()[key], arr)


def test_state_array_names():
    params = tiny_params()
    adam = make_optimizer("adam", params)
    adam.step({"fc1.W": np.array([0.5]), "fc1.b": np.array([1.0])}, 0.1)
    state = adam.state_arrays()
    assert set(state) == {"m/fc1.W", "m/fc1.b", "v/fc1.W", "v/fc1.b", "t"}
    assert state["t"].shape == () and state["t"].dtype == np.int64 and state["t"] == 1
    assert set(make_optimizer("momentum", params).state_arrays()) == {"v/fc1.W", "v/fc1.b", "t"}
    assert set(make_optimizer("sgd", params).state_arrays()) == {"t"}
    state["m/fc1.W"][0] = 99.0   # a snapshot: editing it leaves the optimizer alone
    assert adam.state_arrays()["m/fc1.W"][0] != 99.0


def test_load_rejects_mismatched_state():
    params = tiny_params()
    adam_state = make_optimizer("adam", params).state_arrays()
    with pytest.raises(ModelFileError, match=r"missing \['v/fc1.W', 'v/fc1.b'\]"):
        make_optimizer("momentum", params).load_state_arrays({"t": adam_state["t"]})
    with pytest.raises(ModelFileError, match="unexpected"):
        make_optimizer("momentum", params).load_state_arrays(adam_state)
    wrong = dict(adam_state, **{"m/fc1.W": np.zeros(2)})
    with pytest.raises(ModelFileError, match=r"'m/fc1.W' has shape \(2,\)"):
        make_optimizer("adam", params).load_state_arrays(wrong)
    with pytest.raises(ModelFileError, match="'t'"):
        make_optimizer("sgd", params).load_state_arrays({"t": np.array(1.5)})


def test_adam_minimises_a_quadratic():
    # f(w) = sum(a * (w - c)**2) / 2 with curvatures a spread over two decades.
    a = np.array([0.1, 1.0, 10.0])
    c = np.array([1.0, -1.0, 2.0])
    w = np.array([3.0, 2.0, -2.0])
    params = {"fc1.W": w}
    opt = make_optimizer("adam", params)
    for _ in range(2000):
        opt.step({"fc1.W": a * (w - c)}, 0.01)
    np.testing.assert_allclose(w, c, atol=1e-2)


@pytest.mark.parametrize("name", NAMES)
def test_float32_stays_float32(name):
    p32 = net_params(np.float32)
    p64 = {n: p.astype(np.float64) for n, p in p32.items()}
    opt32 = make_optimizer(name, p32, weight_decay=0.01)
    opt64 = make_optimizer(name, p64, weight_decay=0.01)
    for k in range(3):
        # A NumPy float64 rate must not drag the float32 arithmetic up to float64.
        opt32.step(grads_for(p32, k), np.float64(0.1))
        opt64.step(grads_for(p64, k), 0.1)
    for n in p32:
        assert p32[n].dtype == np.float32
        np.testing.assert_allclose(p32[n], p64[n], rtol=1e-5, atol=1e-6)
    for key, arr in opt32.state_arrays().items():
        assert arr.dtype == (np.int64 if key == "t" else np.float32)


def test_unknown_name_lists_choices():
    with pytest.raises(SlidenetError) as err:
        make_optimizer("rmsprop", tiny_params())
    assert "'rmsprop'" in str(err.value)
    assert all(n in str(err.value) for n in NAMES)
    assert sorted(OPTIMIZERS) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_is_json_and_rebuilds(name):
    opt = make_optimizer(name, tiny_params(), momentum=0.8, beta1=0.85, beta2=0.99,
                         eps=1e-7, weight_decay=0.001)
    config = json.loads(json.dumps(opt.config()))
    assert config["name"] == name and config["weight_decay"] == 0.001
    assert make_optimizer(params=tiny_params(), **config).config() == config


def test_config_keeps_only_what_the_optimizer_uses():
    assert make_optimizer("sgd", tiny_params()).config() == {"name": "sgd", "weight_decay": 0.0}
    assert make_optimizer("nesterov", tiny_params(), momentum=0.5).config() == {
        "name": "nesterov", "momentum": 0.5, "weight_decay": 0.0}
    assert make_optimizer("adam", tiny_params()).config() == {
        "name": "adam", "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}


@pytest.mark.parametrize("name, hyper, text", [
    ("momentum", {"momentum": 1.0}, "momentum=1.0"),
    ("adam", {"beta1": -0.1}, "beta1=-0.1"),
    ("adam", {"beta2": 1.5}, "beta2=1.5"),
    ("adam", {"eps": 0.0}, "eps=0.0"),
    ("sgd", {"weight_decay": -1e-4}, "weight_decay=-0.0001"),
])
def test_bad_hyper_parameters_are_named(name, hyper, text):
    with pytest.raises(SlidenetError, match=text):
        make_optimizer(name, tiny_params(), **hyper)


def _steps_with_kernels(name, dtype, on, hyper, steps=4):
    """Params after `steps` updates of `name` with the compiled kernels on or off (two worker
    threads, as training runs: the update stays on the calling thread)."""
    from slidenet.ops import compiled, runtime
    rng = np.random.default_rng([7, len(name)])
    params = {"conv1.W": rng.standard_normal((3, 3, 5, 8)).astype(dtype),
              "conv1.b": rng.standard_normal(8).astype(dtype),
              "fc1.W": rng.standard_normal((40, 9)).astype(dtype),
              "fc2.W": rng.standard_normal((4099, 16)).astype(dtype)}
    opt = make_optimizer(name, params, **hyper)
    previous = compiled.set_enabled(on)
    try:
        with runtime.workers(2):
            for k in range(steps):
                grads = {n: (rng.standard_normal(p.shape) * 10.0 ** (k - 2)).astype(dtype)
                         for n, p in params.items()}
                opt.step(grads, 0.05 * (k + 1))
    finally:
        compiled.set_enabled(previous)
    return params, opt.state_arrays()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decay", [0.0, 0.01])
def test_compiled_update_is_the_numpy_update_bit_for_bit(numba, name, dtype, decay):
    """The one-pass compiled update (`ops.compiled_step`) gives the NumPy expressions' bits:
    params and state, float32 and float64, with and without weight decay, over steps whose
    rates and gradients change by orders of magnitude (the by-hand tests above check the
    formula itself, through the compiled path)."""
    hyper = {"weight_decay": decay, "momentum": 0.9, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6}
    fast, fast_state = _steps_with_kernels(name, dtype, True, hyper)
    plain, plain_state = _steps_with_kernels(name, dtype, False, hyper)
    for n in plain:
        assert fast[n].dtype == dtype
        np.testing.assert_array_equal(fast[n], plain[n], err_msg=n)
    for key in plain_state:
        np.testing.assert_array_equal(fast_state[key], plain_state[key], err_msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_compiled_update_takes_a_strided_gradient(numba, name):
    """A gradient that is a strided view (not one flat array) takes the NumPy path and gives
    the same update as its contiguous copy through the compiled one."""
    rng = np.random.default_rng(3)
    wide = rng.standard_normal((6, 8)).astype(np.float32)
    start = rng.standard_normal((6, 4)).astype(np.float32)
    a, b = {"fc1.W": start.copy()}, {"fc1.W": start.copy()}
    opt_a, opt_b = make_optimizer(name, a), make_optimizer(name, b)
    for _ in range(3):
        opt_a.step({"fc1.W": wide[:, ::2]}, 0.1)
        opt_b.step({"fc1.W": np.ascontiguousarray(wide[:, ::2])}, 0.1)
    np.testing.assert_array_equal(a["fc1.W"], b["fc1.W"])
