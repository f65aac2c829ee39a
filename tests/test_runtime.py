"""How kernels run: chunks under a memory budget, worker threads, recycled and bordered buffers.

That chunks and threads never change a kernel's result is checked for every kernel by the
harness (test_kernels.py); fused steps against unfused layers in test_fusion.py.
"""
import functools
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from slidenet import ops
from slidenet.net import Net
from slidenet.ops import naive, runtime

RNG = np.random.default_rng(7)
SMALL = "INPUT(10x10x3) -> [CONV(4) -> RELU]*2 -> POOL -> CONV(6, 3x3, s=2, p=1) -> RELU -> FC(8) -> RELU -> FC(3)"


@pytest.fixture
def settings():
    """Restore the global runtime settings after a test changes them."""
    saved = (runtime.memory_budget(), runtime._settings["threads"], runtime._settings["chunk_bytes"],
             runtime._settings["recycle_limit"])
    yield
    runtime.set_memory_budget(saved[0])
    runtime.set_threads(saved[1])
    runtime.set_chunk_bytes(saved[2])
    runtime.set_recycle_limit(saved[3])


def test_chunks_respect_the_budget_and_cover_the_batch(settings):
    runtime.set_threads(2)
    slices = runtime.batch_chunks(128, 1000, budget=10_000)      # 2 threads x 5 images
    assert all(sl.stop - sl.start <= 5 for sl in slices)
    assert [i for sl in slices for i in range(sl.start, sl.stop)] == list(range(128))
    assert runtime.batch_chunks(3, 10**9, budget=1) == [slice(0, 1), slice(1, 2), slice(2, 3)]


def test_chunks_on_a_worker_thread_are_not_rounded_up_to_the_workers(settings):
    """Two workers share a call's chunks: a count that is a multiple of two. On a worker
    (a slice of a depth-first forward), the chunks run in turn: as few as the sizes allow."""
    runtime.set_threads(2)
    runtime.set_chunk_bytes(64 * 1000)
    assert runtime.batch_chunks(40, 1000, budget=10**9) == [slice(0, 20), slice(20, 40)]
    assert runtime.batch_chunks(130, 1000, budget=10**9) == [slice(0, 32), slice(32, 65),
                                                               slice(65, 97), slice(97, 130)]
    with runtime.on_this_thread():
        assert runtime.batch_chunks(40, 1000, budget=10**9) == [slice(0, 40)]
        assert runtime.batch_chunks(130, 1000, budget=10**9) == [slice(0, 43), slice(43, 86),
                                                                   slice(86, 130)]


def test_worker_split_is_one_slice_on_a_worker_thread(settings):
    """`worker_split`: split's even slices from the caller, the whole range on a worker (where
    run_chunks would run split's slices in turn); a block kernel's call there is one call."""
    runtime.set_threads(2)
    assert runtime.worker_split(64) == runtime.split(64) == [slice(0, 32), slice(32, 64)]
    with runtime.on_this_thread():
        assert runtime.worker_split(64) == [slice(0, 64)]
        assert runtime.split(64) == [slice(0, 32), slice(32, 64)]
    seen = runtime.run_chunks(lambda sl: runtime.worker_split(sl.stop - sl.start),
                              [slice(0, 30), slice(30, 64)])
    assert seen == [[slice(0, 30)], [slice(0, 34)]]


def test_recycled_results_are_never_overwritten_while_held(settings):
    runtime.set_recycle_limit(None)
    x = RNG.standard_normal((64, 16, 16, 8)).astype(np.float32)
    w = RNG.standard_normal((3, 3, 8, 32)).astype(np.float32)
    b = np.zeros(32, np.float32)
    first, _ = ops.conv_forward(x, w, b, (1, 1), (1, 1))
    assert first.nbytes >= runtime.RECYCLE_MIN_BYTES
    kept = first.copy()
    view = first[:, ::2]
    del first
    second, _ = ops.conv_forward(-x, w, b, (1, 1), (1, 1))       # must not reuse `first`
    np.testing.assert_array_equal(view, kept[:, ::2])
    assert not np.shares_memory(second, view)
    del view
    third, _ = ops.conv_forward(x, w, b, (1, 1), (1, 1))
    np.testing.assert_array_equal(third, kept)
    np.testing.assert_array_equal(second, ops.conv_forward(-x, w, b, (1, 1), (1, 1))[0])


def test_interleaved_nets_and_held_activations_stay_correct(settings):
    runtime.set_threads(2)
    runtime.set_chunk_bytes(50_000)        # several chunks per layer
    a, b = Net.from_pattern(SMALL, seed=1), Net.from_pattern(SMALL, seed=2)
    xa = RNG.standard_normal((40, 10, 10, 3)).astype(np.float32)
    xb = RNG.standard_normal((40, 10, 10, 3)).astype(np.float32)
    kept_a = a.activations(xa)
    copies = [(name, out.copy()) for name, out in kept_a]
    scores_b = b.forward(xb)
    scores_a2 = a.forward(xb)
    for (name, held), (_, copy) in zip(kept_a, copies):
        np.testing.assert_array_equal(held, copy, err_msg=name)
    np.testing.assert_array_equal(scores_a2, a.forward(xb))
    np.testing.assert_array_equal(scores_b, b.forward(xb))
    # Training steps of the two nets interleaved, layer by layer, against each net alone.
    y = RNG.integers(0, 3, 40)
    alone = {}
    for net, x in ((a, xa), (b, xb)):
        _, ds = ops.softmax_loss(net.forward(x, train=True), y)
        net.backward(ds)
        alone[id(net)] = {k: g.copy() for k, g in net.grads.items()}
    outs = {id(a): xa, id(b): xb}
    for la, lb in zip(a.steps, b.steps):
        outs[id(a)] = la.forward(outs[id(a)], True)
        outs[id(b)] = lb.forward(outs[id(b)], True)
    grads = {key: ops.softmax_loss(out, y)[1] for key, out in outs.items()}
    for la, lb in zip(reversed(a.steps), reversed(b.steps)):
        grads[id(a)] = la.backward(grads[id(a)])
        grads[id(b)] = lb.backward(grads[id(b)])
    for net in (a, b):
        for name, g in net.grads.items():
            np.testing.assert_array_equal(g, alone[id(net)][name], err_msg=name)


def test_float32_stays_float32_end_to_end():
    net = Net.from_pattern(SMALL)
    x = RNG.standard_normal((4, 10, 10, 3)).astype(np.float32)
    scores = net.forward(x, train=True)
    assert scores.dtype == np.float32
    loss, ds = ops.softmax_loss(scores, np.array([0, 1, 2, 0]))
    assert ds.dtype == np.float32
    assert net.backward(ds).dtype == np.float32
    assert all(g.dtype == np.float32 for g in net.grads.values())
    out, cache = ops.relu_forward(x)
    assert out.dtype == np.float32 and ops.relu_backward(x, cache).dtype == np.float32
    pooled, cache = ops.avg_pool_forward(x, (2, 2), (2, 2))
    assert pooled.dtype == np.float32 and ops.avg_pool_backward(pooled, cache).dtype == np.float32


def test_settings_reject_nonsense(settings):
    with pytest.raises(ValueError, match="nbytes"):
        runtime.set_memory_budget(0)
    with pytest.raises(ValueError, match="n="):
        runtime.set_threads(0)
    assert runtime.set_memory_budget(123) == runtime.DEFAULT_BUDGET
    assert runtime.memory_budget() == 123


def test_a_failing_chunk_raises_and_stops_the_others(settings):
    runtime.set_threads(2)
    ran = []

    def work(sl):
        ran.append(sl.start)
        if sl.start == 0:
            raise RuntimeError("boom")
        return sl.start

    with pytest.raises(RuntimeError, match="boom"):
        runtime.run_chunks(work, [slice(i, i + 1) for i in range(1000)])
    assert len(ran) < 1000
    assert runtime.run_chunks(lambda sl: sl.start, [slice(i, i + 1) for i in range(50)]) == list(range(50))


def _start_plus(data, sl):
    return sl.start + int(data[0])


def test_a_worker_that_cannot_start_is_not_waited_for(settings):
    """A busy machine: the pool's worker gets no core (here: it is held by other work). The
    caller takes every chunk itself and returns, instead of waiting for the worker to start."""
    runtime.set_threads(2)
    runtime.run_chunks(lambda sl: sl.start, [slice(0, 1), slice(1, 2)])     # the pool exists
    held, release = threading.Event(), threading.Event()
    runtime._executor(1).submit(lambda: (held.set(), release.wait(30)))
    assert held.wait(10)
    done, data = [], np.zeros(3)
    holders = sys.getrefcount(data)
    caller = threading.Thread(target=lambda: done.append(runtime.run_chunks(
        functools.partial(_start_plus, data), [slice(i, i + 1) for i in range(20)])))
    caller.start()
    caller.join(5)
    finished = not caller.is_alive()
    # The called-off task still waits in the pool's queue: it must not hold work's arrays.
    after = sys.getrefcount(data)
    release.set()
    caller.join(30)
    assert finished, "run_chunks waited for a worker that never started"
    assert done == [list(range(20))]
    assert after == holders
    assert runtime.run_chunks(lambda sl: sl.start, [slice(i, i + 1) for i in range(50)]) == list(range(50))


def test_bordered_buffers_keep_a_zero_border_and_only_the_latest(settings):
    buf, inner = runtime.bordered("t", (2, 6, 7, 3), np.float32, (1, 2, 2, 1))
    assert inner.shape == (2, 3, 4, 3) and not buf.any()
    inner[...] = 5
    again, inner2 = runtime.bordered("t", (2, 6, 7, 3), np.float32, (1, 2, 2, 1))
    assert again is buf and (again.sum() == 5 * inner2.size)     # the border is still zero
    for i in range(runtime.BORDERED_KEEP):                          # push it out: least recently used
        runtime.bordered("t", (1, 1, 1, i + 1), np.float32, (0, 0, 0, 0))
    assert runtime.bordered("t", (2, 6, 7, 3), np.float32, (1, 2, 2, 1))[0] is not buf


@pytest.mark.parametrize("algorithm", ["im2col", "full", "winograd"])
def test_reused_padded_buffers_never_leak_one_call_into_the_next(algorithm):
    # The same geometry twice, with different inputs and gradients: the padded scratch buffers
    # (zeroed border, interior overwritten) must not carry anything from the first call.
    w = RNG.standard_normal((3, 3, 4, 5))
    b = RNG.standard_normal(5)
    for _ in range(2):
        x = RNG.standard_normal((3, 6, 7, 4))
        out, cache = ops.conv_forward(x, w, b, (1, 1), (1, 1), algorithm=algorithm)
        np.testing.assert_allclose(out, naive.conv_forward(x, w, b, (1, 1), (1, 1)), rtol=1e-10, atol=1e-10)
        dout = RNG.standard_normal(out.shape)
        for got, want in zip(ops.conv_backward(dout, cache), naive.conv_backward(dout, x, w, (1, 1), (1, 1))):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


# ----- whoever calls: one worker per core, BLAS limited while the kernels run ------------------

def _blas_threads():
    """BLAS's thread count as threadpoolctl reads it (its own look-up: an independent witness)."""
    counts = {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}
    assert len(counts) == 1, counts
    return counts.pop()


@pytest.fixture
def two_cores(settings, monkeypatch):
    """Two workers on a machine of two cores, whatever this machine has."""
    monkeypatch.setitem(runtime._settings, "cores", 2)
    runtime.set_threads(None)


def _spy_on_first_step(net, seen):
    """Record BLAS's thread count inside net's first step (on the calling thread) and inside
    one of that step's chunks on a pool thread."""
    step = net.steps[0]
    forward = step.forward

    def spied(x, train):
        seen.append(("caller", _blas_threads()))
        pool = runtime.run_chunks(lambda sl: (threading.current_thread().name, _blas_threads()),
                                  [slice(i, i + 1) for i in range(8)])
        seen.extend(("pool", n) for name, n in pool if name.startswith("slidenet"))
        return forward(x, train)

    step.forward = spied


def test_a_bare_forward_runs_one_worker_per_core_on_a_one_thread_blas(two_cores):
    net = Net.from_pattern(SMALL)
    x = RNG.standard_normal((4, 10, 10, 3))
    seen = []
    _spy_on_first_step(net, seen)
    with threadpool_limits(limits=2, user_api="blas"):      # the user's own setting
        assert runtime.threads() == 2
        scores = net.forward(x, True)
        net.backward(np.ones_like(scores))
        assert _blas_threads() == 2                         # given back after the call
    assert seen and all(n == 1 for _, n in seen), seen
    assert {"caller", "pool"} <= {where for where, _ in seen}


def test_the_limit_never_raises_a_callers_lower_setting_nor_applies_to_one_worker(two_cores):
    net = Net.from_pattern(SMALL)
    x = RNG.standard_normal((4, 10, 10, 3))
    seen = []
    _spy_on_first_step(net, seen)
    with threadpool_limits(limits=2, user_api="blas"):
        runtime.set_threads(1)                              # one worker: BLAS keeps its threads
        net.forward(x)
        assert seen == [("caller", 2)]
        runtime.set_threads(None)
        with threadpool_limits(limits=1, user_api="blas"):
            seen.clear()
            net.forward(x)
            assert _blas_threads() == 1
        assert _blas_threads() == 2
    assert seen and all(n == 1 for _, n in seen)


def test_the_callers_setting_returns_when_the_last_of_several_threads_leaves(two_cores):
    inside, leave = threading.Event(), threading.Event()

    def other():
        with runtime.blas_for_workers():
            inside.set()
            leave.wait(10)

    with threadpool_limits(limits=2, user_api="blas"):
        thread = threading.Thread(target=other)
        with runtime.blas_for_workers():
            assert _blas_threads() == 1
            thread.start()
            assert inside.wait(10)
        assert _blas_threads() == 1                         # the other thread is still inside
        leave.set()
        thread.join(10)
        assert _blas_threads() == 2


def test_bare_calls_compute_what_workers_compute(settings):
    """The default is `runtime.workers()`'s count, so the chunks and the results are the same."""
    net = Net.from_pattern(SMALL, dtype="float32")
    x = RNG.standard_normal((64, 10, 10, 3)).astype(np.float32)
    bare = np.array(net.forward(x, True))
    bare_dx = np.array(net.backward(np.ones_like(bare)))
    with runtime.workers():
        inside = np.array(net.forward(x, True))
        inside_dx = np.array(net.backward(np.ones_like(inside)))
    np.testing.assert_array_equal(bare, inside)
    np.testing.assert_array_equal(bare_dx, inside_dx)
    plan = net.prepare()
    bare_scores = plan.forward(x)
    with runtime.workers():
        np.testing.assert_array_equal(plan.forward(x), bare_scores)
    # The plan takes slices of the batch through every step (`runtime.image_chunks`), the net
    # each layer's chunks: the same sums, which BLAS may round apart.
    want = net.forward(x)
    np.testing.assert_allclose(bare_scores, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_default_threads_follow_the_cores_this_process_may_use():
    """In a process pinned to one core, the default is one worker; unpinned, the affinity's
    count (os.sched_getaffinity: the oracle), unless a cgroup quota is lower."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this system")
    code = ("import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from slidenet.ops import runtime; print(runtime.threads(), runtime.available_cores())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "1"]
    assert 1 <= runtime.available_cores() <= len(os.sched_getaffinity(0))
