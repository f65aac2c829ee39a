"""One image's F(4, 3) layer on two threads (`ops.conv.pair`): the same bits as on one, whoever
runs which half, and a helper that is late or busy never changes a result.

The oracle is the unpaired kernel on one worker (itself checked against the lecture's loops by
the harness); every comparison is exact.
"""
import threading
import time

import numpy as np
import pytest

from slidenet import Net
from slidenet.ops import conv, runtime
from slidenet.ops.conv import pair, winograd_f44

# conftest's `numba` fixture: these fail without numba (SLIDENET_SKIP_NUMBA=1 skips them).
pytestmark = pytest.mark.usefixtures("numba")
RNG = np.random.default_rng(11)
# (H, W, D, K): R1's three F(4, 3) layers, odd sizes (a last tile that sticks out), thin ones.
GEOMETRIES = [(32, 32, 32, 32), (16, 16, 32, 64), (8, 8, 64, 64), (13, 9, 5, 7), (7, 3, 2, 2),
              (10, 10, 3, 16)]


@pytest.fixture
def helper():
    previous = pair.set_enabled(True)               # tests/conftest.py turns it off
    if not pair.wait_ready(300):
        pytest.fail(f"the helper did not start: {pair._state['error']}")
    yield
    pair.set_enabled(previous)


def test_off_one_image_runs_on_the_calling_thread_alone():
    previous = pair.set_enabled(False)
    try:
        x, prepared = _layer(16, 16, 32, 64)
        runs = pair.helper_runs()
        with runtime.workers(2):
            for _ in range(2 * pair.START_AFTER):
                conv.conv_infer(x, prepared)
        assert pair.helper_runs() == runs
    finally:
        pair.set_enabled(previous)


@pytest.mark.parametrize("env, want", [(None, False), ("auto", "auto"), ("1", True),
                                       ("0", False)])
def test_the_setting_comes_from_slidenet_pair(env, want):
    """SLIDENET_PAIR unset or 0: off (the default); auto: "auto"; 1: always. In a fresh process,
    since the module reads it once."""
    import os
    import subprocess
    import sys
    environ = {k: v for k, v in os.environ.items() if k != "SLIDENET_PAIR"}
    if env is not None:
        environ["SLIDENET_PAIR"] = env
    out = subprocess.run([sys.executable, "-c", "from slidenet.ops.conv import pair; "
                          "print(repr(pair.set_enabled(False)))"], env=environ,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == repr(want)


def _without_a_helper(predict):
    """predict() on two workers where the helper's control array is served by nobody: (its
    result, the control array, the layers it was then told to run unpaired)."""
    saved = dict(pair._state)
    ctl = np.zeros(pair.SLOTS, np.int64)
    ctl[pair.GEMM], ctl[pair.GEMM_WIDE] = pair._state["kernels"].gemm     # where the GEMM is
    pair._state.update(ctl=ctl, event=threading.Event(), skip=0)
    try:
        with runtime.workers(2):
            return predict(), ctl, pair._state["skip"]
    finally:
        pair._state.update(saved)


def _layer(h, w, d, k, relu=True):
    x = RNG.standard_normal((1, h, w, d)).astype(np.float32)
    weights = RNG.standard_normal((3, 3, d, k)).astype(np.float32)
    bias = RNG.standard_normal(k).astype(np.float32)
    return x, conv.prepare_conv(weights, bias, (1, 1), (1, 1), relu, algorithm="winograd4")


def _unpaired(x, prepared):
    with runtime.workers(1):
        return conv.conv_infer(x, prepared).copy()


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g)))
def test_both_halves_on_two_threads_give_the_unpaired_bits(helper, geometry):
    x, prepared = _layer(*geometry)
    want = _unpaired(x, prepared)
    runs, deadline = pair.helper_runs(), time.monotonic() + 20
    with runtime.workers(2):
        while pair.helper_runs() == runs and time.monotonic() < deadline:
            pair._state["skip"] = 0                 # retry at once after a miss
            np.testing.assert_array_equal(conv.conv_infer(x, prepared), want)
    assert pair.helper_runs() > runs, "the helper never took its half in 20 s"


def test_a_helper_that_never_comes_leaves_the_caller_all_of_it(helper):
    x, prepared = _layer(16, 16, 32, 64)
    want = _unpaired(x, prepared)
    got, ctl, skip = _without_a_helper(lambda: conv.conv_infer(x, prepared))
    np.testing.assert_array_equal(got, want)
    assert ctl[pair.TAKEN_BY_HELPER] == 0
    # It looked awake (not SLEEPING) and missed: told to sleep, and left alone for a while.
    assert ctl[pair.STATE] == pair.HUSH and skip == pair.BACKOFF


@pytest.mark.parametrize("pattern", [
    "INPUT(16x16x3) -> [CONV(8) -> RELU]*2 -> POOL -> CONV(16) -> RELU -> FC(5)",
    # A direct first layer and an FC large enough to pair, as R1's.
    "INPUT(16x16x3) -> [CONV(16) -> RELU]*2 -> POOL -> CONV(16) -> RELU -> FC(64) -> RELU "
    "-> FC(5)"])
def test_a_prepared_net_predicts_the_same_one_image_at_a_time_from_two_threads(helper, pattern):
    net = Net.from_pattern(pattern, seed=3)
    plan = net.prepare()
    images = RNG.standard_normal((12, 16, 16, 3)).astype(np.float32)
    with runtime.workers(1):
        want = [plan.forward(images[i:i + 1]).copy() for i in range(len(images))]
    got, errors = {}, []

    def predict(who):
        try:
            for _ in range(5):
                for i in range(len(images)):
                    got[who, i] = plan.forward(images[i:i + 1]).copy()
                    np.testing.assert_array_equal(got[who, i], want[i])
        except AssertionError as err:
            errors.append(err)

    with runtime.workers(2):
        threads = [threading.Thread(target=predict, args=(who,)) for who in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert not errors, errors[0]
    assert len(got) == 2 * len(images)


# (H, W, D, K, pool): R1's three F(4x4, 3x3) layers, a last tile that sticks out down and
# across (pooled, with an odd pooled row), an uneven split of the rows of tiles, thin ones.
GEOMETRIES44 = [(32, 32, 32, 32, True), (16, 16, 32, 64, False), (16, 16, 64, 64, True),
                (13, 9, 5, 7, False), (14, 10, 8, 3, True), (9, 6, 2, 2, False)]


def _layer44(h, w, d, k):
    x = RNG.standard_normal((1, h, w, d)).astype(np.float32)
    weights = RNG.standard_normal((3, 3, d, k)).astype(np.float32)
    bias = RNG.standard_normal(k).astype(np.float32)
    return x, winograd_f44.prepare_filters(weights), bias


@pytest.mark.parametrize("geometry", GEOMETRIES44, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("relu", [False, True])
def test_f44_halves_on_two_threads_give_the_unpaired_bits(helper, geometry, relu):
    """Input rows, the 36 products and output rows split between caller and helper: the
    same bits as the one-thread path (the very sgemm calls np.matmul makes)."""
    *shape, pool = geometry
    x, u, b = _layer44(*shape)
    with runtime.workers(1):
        want = winograd_f44.forward(x, u, b, (1, 1), relu, pool=pool).copy()
    runs, deadline, calls = pair.helper_runs(), time.monotonic() + 20, 0
    with runtime.workers(2):
        while (pair.helper_runs() == runs or calls < 3) and time.monotonic() < deadline:
            pair.retry_now()                        # retry at once after a miss
            np.testing.assert_array_equal(winograd_f44.forward(x, u, b, (1, 1), relu,
                                                               pool=pool), want)
            calls += 1
    assert pair.helper_runs() > runs, "the helper never took its half in 20 s"


def test_f44_helper_that_never_comes_leaves_the_caller_all_of_it(helper):
    x, u, b = _layer44(16, 16, 32, 64)
    with runtime.workers(1):
        want = winograd_f44.forward(x, u, b, (1, 1), True).copy()
    got, ctl, skip = _without_a_helper(lambda: winograd_f44.forward(x, u, b, (1, 1), True))
    np.testing.assert_array_equal(got, want)
    assert ctl[pair.TAKEN_BY_HELPER] == 0
    assert ctl[pair.STATE] == pair.HUSH and skip == pair.BACKOFF


def test_auto_pairs_only_while_the_machine_has_a_core_to_spare(helper):
    """SLIDENET_PAIR=auto: a machine whose other core is busy (injected clocks) runs every layer
    unpaired; once it is quiet, the helper takes its halves again. Same bits throughout."""
    from slidenet.ops import idle
    x, u, b = _layer44(16, 16, 32, 64)
    with runtime.workers(1):
        want = winograd_f44.forward(x, u, b, (1, 1), True).copy()
    load = {"others": 1.0, "now": 0.0, "busy": 0.0}

    def advance():
        load["now"] += 0.3
        load["busy"] += 0.3 * load["others"]        # own time is not counted: own() is 0
    spare = idle.SpareCore(2, machine=lambda: load["busy"], own=lambda: 0.0,
                           clock=lambda: load["now"])
    saved = pair._state["spare"]
    pair._state["spare"] = spare
    previous = pair.set_enabled("auto")
    try:
        with runtime.workers(2):
            spare.allow()
            advance()
            runs = pair.helper_runs()
            for _ in range(50):
                pair.retry_now()
                np.testing.assert_array_equal(winograd_f44.forward(x, u, b, (1, 1), True), want)
            assert pair.helper_runs() == runs and spare.others == pytest.approx(1.0)
            load["others"] = 0.0
            advance()
            deadline = time.monotonic() + 20
            while pair.helper_runs() == runs and time.monotonic() < deadline:
                pair.retry_now()
                np.testing.assert_array_equal(winograd_f44.forward(x, u, b, (1, 1), True), want)
            assert pair.helper_runs() > runs and spare.others == pytest.approx(0.0)
    finally:
        pair.set_enabled(previous)
        pair._state["spare"] = saved


def test_fc_columns_on_two_threads_give_the_one_thread_bits(helper):
    """One image's FC split by output columns (each column's sum in the same order): the bits
    of `compiled.fc_one` on one thread, and the GEMM's numbers to rounding; with ReLU, with an
    uneven split and with the zeros a ReLU leaves in the input (rows skipped)."""
    from slidenet.ops import compiled, fc
    fast = compiled.kernels(np.zeros(1, np.float32))
    for n_in, n_out, relu in ((4096, 256, True), (300, 250, False), (1000, 77, True)):
        x = np.maximum(RNG.standard_normal((1, n_in)), 0).astype(np.float32)
        w = RNG.standard_normal((n_in, n_out)).astype(np.float32)
        b = RNG.standard_normal(n_out).astype(np.float32)
        want = np.empty((1, n_out), np.float32)
        fast.fc_one(x, w, b, relu, want)
        oracle = x.astype(np.float64) @ w + b
        np.testing.assert_allclose(want, np.maximum(oracle, 0) if relu else oracle,
                                   rtol=1e-4, atol=1e-3)
        runs, deadline, calls = pair.helper_runs(), time.monotonic() + 20, 0
        with runtime.workers(2):
            while (pair.helper_runs() == runs or calls < 3) and time.monotonic() < deadline:
                pair.retry_now()
                np.testing.assert_array_equal(fc.fc_infer(x, w, b, relu), want)
                calls += 1
        assert pair.helper_runs() > runs, "the helper never took its half in 20 s"


@pytest.mark.parametrize("h, w, d, k, pad", [(32, 32, 3, 32, 1), (28, 28, 1, 16, 1),
                                              (9, 7, 3, 16, 0), (5, 6, 1, 17, 1)])
@pytest.mark.parametrize("relu", [False, True])
def test_direct_rows_on_two_threads_give_the_one_thread_bits(helper, h, w, d, k, pad, relu):
    """A thin first layer (the direct kernel) split by output rows: the one-thread bits, and
    the lecture's loops to rounding."""
    from slidenet.ops import naive
    x = RNG.standard_normal((1, h, w, d)).astype(np.float32)
    weights = RNG.standard_normal((3, 3, d, k)).astype(np.float32)
    bias = RNG.standard_normal(k).astype(np.float32)
    prepared = conv.prepare_conv(weights, bias, (1, 1), (pad, pad), relu, algorithm="direct")
    want = _unpaired(x, prepared)
    loops = naive.conv_forward(x.astype(np.float64), weights.astype(np.float64),
                               bias.astype(np.float64), (1, 1), (pad, pad))
    np.testing.assert_allclose(want, np.maximum(loops, 0) if relu else loops, rtol=1e-4,
                               atol=1e-4)
    runs, deadline, calls = pair.helper_runs(), time.monotonic() + 20, 0
    with runtime.workers(2):
        while (pair.helper_runs() == runs or calls < 3) and time.monotonic() < deadline:
            pair.retry_now()
            np.testing.assert_array_equal(conv.conv_infer(x, prepared), want)
            calls += 1
    assert pair.helper_runs() > runs, "the helper never took its half in 20 s"


def test_fc_and_direct_helpers_that_never_come_leave_the_caller_all_of_it(helper):
    from slidenet.ops import fc
    x = np.maximum(RNG.standard_normal((1, 4096)), 0).astype(np.float32)
    w = RNG.standard_normal((4096, 256)).astype(np.float32)
    b = RNG.standard_normal(256).astype(np.float32)
    with runtime.workers(1):
        want = fc.fc_infer(x, w, b, True).copy()
    got, ctl, skip = _without_a_helper(lambda: fc.fc_infer(x, w, b, True))
    np.testing.assert_array_equal(got, want)
    assert ctl[pair.TAKEN_BY_HELPER] == 0 and ctl[pair.STATE] == pair.HUSH
    assert skip == pair.BACKOFF
    image = RNG.standard_normal((1, 32, 32, 3)).astype(np.float32)
    prepared = conv.prepare_conv(RNG.standard_normal((3, 3, 3, 32)).astype(np.float32),
                                 np.zeros(32, np.float32), (1, 1), (1, 1), True,
                                 algorithm="direct")
    want = _unpaired(image, prepared)
    got, ctl, skip = _without_a_helper(lambda: conv.conv_infer(image, prepared))
    np.testing.assert_array_equal(got, want)
    assert ctl[pair.TAKEN_BY_HELPER] == 0 and ctl[pair.STATE] == pair.HUSH


def test_a_sleeping_helper_is_woken_and_takes_its_halves_again(helper):
    """After SPIN_SECONDS without a task the helper sleeps (on futex(2) where there is one, in
    compiled code); the next layer wakes it and runs on the caller alone (or, if it is up in
    time, paired), the ones after are paired again. The same bits throughout."""
    ctl = pair._state["ctl"]
    x, u, b = _layer44(16, 16, 32, 64)
    with runtime.workers(1):
        want = winograd_f44.forward(x, u, b, (1, 1), True).copy()
    deadline = time.monotonic() + 20
    while ctl[pair.SLEEPING] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ctl[pair.SLEEPING] == 1, "the helper never went to sleep"
    import platform
    import sys
    if sys.platform.startswith("linux") and platform.machine() == "x86_64":
        assert ctl[pair.FUTEX] == pair.SYS_FUTEX["x86_64"]      # asleep on futex(2)
    woke, runs = pair.counts["woke"], pair.helper_runs()
    with runtime.workers(2):
        pair.retry_now()
        np.testing.assert_array_equal(winograd_f44.forward(x, u, b, (1, 1), True), want)
        # Woken: the caller ran it alone, or (rarely) the helper was up in time to take its half.
        assert pair.counts["woke"] + pair.helper_runs() == woke + runs + 1
        deadline = time.monotonic() + 20
        while pair.helper_runs() == runs and time.monotonic() < deadline:
            pair.retry_now()
            np.testing.assert_array_equal(winograd_f44.forward(x, u, b, (1, 1), True), want)
    assert pair.helper_runs() > runs, "the woken helper never took its half in 20 s"


@pytest.mark.parametrize("futex", ["1", "0"])
@pytest.mark.parametrize("pause", [0.0, 0.5])
def test_the_process_exits_cleanly_with_the_helper_polling_or_asleep(pause, futex):
    """A process whose helper is polling (pause 0) or asleep (0.5 s after its last task) exits
    at once, with status 0; asleep on futex(2) or (SLIDENET_PAIR_FUTEX=0, as where there is
    none) on its Event, and woken by the next layer to pair again before that."""
    import os
    import subprocess
    import sys
    code = ("import time, numpy as np\n"
            "from slidenet.ops import runtime\n"
            "from slidenet.ops.conv import pair\n"
            "from slidenet.ops.conv import winograd_f44 as f\n"
            "pair.set_enabled(True)\n"
            "assert pair.wait_ready(300)\n"
            "x = np.ones((1, 16, 16, 8), np.float32)\n"
            "u = f.prepare_filters(np.ones((3, 3, 8, 8), np.float32))\n"
            "with runtime.workers(2):\n"
            "    for _ in range(50):\n"
            "        f.forward(x, u, np.zeros(8, np.float32), (1, 1), True)\n"
            "    time.sleep(0.5)\n"                   # asleep: woken, then paired again
            "    assert pair._state['ctl'][pair.SLEEPING] == 1\n"
            "    runs, deadline = pair.helper_runs(), time.monotonic() + 20\n"
            "    while pair.helper_runs() == runs and time.monotonic() < deadline:\n"
            "        pair.retry_now()\n"
            "        f.forward(x, u, np.zeros(8, np.float32), (1, 1), True)\n"
            f"time.sleep({pause})\n"
            "print(pair.helper_runs() > runs, int(pair._state['ctl'][pair.SLEEPING]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "SLIDENET_PAIR_FUTEX": futex})
    assert done.returncode == 0, done.stderr
    # Asleep after the pause (polling before it, unless a miss told it to sleep).
    assert done.stdout.split()[0] == "True"
    if pause:
        assert done.stdout.split()[1] == "1"


def test_the_kernels_caches_are_emptied_when_compiled_py_is_not_the_one_they_hold(tmp_path):
    """numba checks a cached kernel against its own file only; pair_kernels inlines
    compiled.py's passes, so `_refresh` empties their caches when compiled.py's content is not
    the one it recorded, and only then."""
    pytest.importorskip("numba")
    from slidenet.ops.conv import pair_kernels

    class Cache:
        _cache_path = str(tmp_path)
        flushed = 0

        def flush(self):
            Cache.flushed += 1

    class Kernel:
        _cache = Cache()

    kernels = [Kernel(), Kernel()]
    pair_kernels._refresh(kernels)                  # nothing recorded: emptied, recorded
    assert Cache.flushed == 2
    pair_kernels._refresh(kernels)                  # the same compiled.py: kept
    assert Cache.flushed == 2
    (tmp_path / "pair_kernels.compiled-sha256").write_text("another compiled.py")
    pair_kernels._refresh(kernels)
    assert Cache.flushed == 4
