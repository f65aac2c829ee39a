"""The fast path must never change a result: chunks, worker threads, fusion, recycled memory."""
import numpy as np
import pytest

from slidenet import layers, ops
from slidenet.net import Net
from slidenet.ops import naive, runtime

RNG = np.random.default_rng(7)
SMALL = "INPUT(10x10x3) -> [CONV(4) -> RELU]*2 -> POOL -> CONV(6, 3x3, s=2, p=1) -> RELU -> FC(8) -> RELU -> FC(3)"


@pytest.fixture
def settings():
    """Restore the global runtime settings after a test changes them."""
    saved = (runtime.memory_budget(), runtime.threads(), runtime._settings["chunk_bytes"],
             runtime._settings["recycle_limit"])
    yield
    runtime.set_memory_budget(saved[0])
    runtime.set_threads(saved[1])
    runtime.set_chunk_bytes(saved[2])
    runtime.set_recycle_limit(saved[3])


def conv_case(dtype=np.float64, n=5):
    x = RNG.standard_normal((n, 9, 7, 3)).astype(dtype)
    w = RNG.standard_normal((3, 3, 3, 4)).astype(dtype)
    b = RNG.standard_normal(4).astype(dtype)
    return x, w, b


def conv_all(x, w, b, stride, pad, relu=False, budget=None, need_dx=True):
    out, cache = ops.conv_forward(x, w, b, stride, pad, budget=budget, relu=relu)
    dout = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
    return (out, *ops.conv_backward(dout, cache, need_dx))


@pytest.mark.parametrize("stride,pad", [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((1, 1), (0, 0)), ((2, 1), (3, 2))])
def test_global_budget_chunks_give_the_same_result(settings, stride, pad):
    x, w, b = conv_case()
    whole = conv_all(x, w, b, stride, pad)
    runtime.set_memory_budget(1)            # one image per chunk
    for got, want in zip(conv_all(x, w, b, stride, pad), whole):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_chunks_respect_the_budget_and_cover_the_batch(settings):
    runtime.set_threads(2)
    slices = runtime.batch_chunks(128, 1000, budget=10_000)      # 2 threads x 5 images
    assert all(sl.stop - sl.start <= 5 for sl in slices)
    assert [i for sl in slices for i in range(sl.start, sl.stop)] == list(range(128))
    assert runtime.batch_chunks(3, 10**9, budget=1) == [slice(0, 1), slice(1, 2), slice(2, 3)]


def test_worker_threads_give_identical_results(settings):
    x, w, b = conv_case(np.float32, n=9)
    runtime.set_memory_budget(1)
    one = conv_all(x, w, b, (1, 1), (1, 1), relu=True)
    pool_one = ops.pool_backward(np.ones((9, 4, 3, 3), np.float32),
                                 ops.pool_forward(x, (3, 3), (2, 2))[1])
    runtime.set_threads(3)
    for got, want in zip(conv_all(x, w, b, (1, 1), (1, 1), relu=True), one):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        ops.pool_backward(np.ones((9, 4, 3, 3), np.float32), ops.pool_forward(x, (3, 3), (2, 2))[1]),
        pool_one)


def test_fused_conv_relu_equals_conv_then_relu():
    x, w, b = conv_case()
    out, cache = ops.conv_forward(x, w, b, (1, 1), (1, 1))
    relu_out, relu_cache = ops.relu_forward(out)
    fused, fused_cache = ops.conv_forward(x, w, b, (1, 1), (1, 1), relu=True)
    np.testing.assert_array_equal(fused, relu_out)
    dout = RNG.standard_normal(out.shape)
    separate = ops.conv_backward(ops.relu_backward(dout, relu_cache), cache)
    for got, want in zip(ops.conv_backward(dout, fused_cache), separate):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_fused_fc_relu_equals_fc_then_relu():
    x = RNG.standard_normal((4, 3, 2, 2))
    w, b = RNG.standard_normal((12, 5)), RNG.standard_normal(5)
    out, cache = ops.fc_forward(x, w, b)
    relu_out, relu_cache = ops.relu_forward(out)
    fused, fused_cache = ops.fc_forward(x, w, b, relu=True)
    np.testing.assert_array_equal(fused, relu_out)
    dout = RNG.standard_normal(out.shape)
    for got, want in zip(ops.fc_backward(dout, fused_cache),
                         ops.fc_backward(ops.relu_backward(dout, relu_cache), cache)):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_skipping_dx_keeps_dw_and_db():
    x, w, b = conv_case()
    full = conv_all(x, w, b, (1, 1), (1, 1))
    out, dx, dw, db = conv_all(x, w, b, (1, 1), (1, 1), need_dx=False)
    assert dx is None
    # Without dx, dw comes from the input's rows instead of dout's: equal up to rounding.
    np.testing.assert_allclose(dw, full[2], rtol=1e-12)
    np.testing.assert_allclose(db, full[3], rtol=1e-12)


def test_fused_net_matches_unfused_net():
    fused = Net.from_pattern(SMALL, dtype="float64")
    plain = Net.from_pattern(SMALL, dtype="float64")
    for layer in plain.layers:
        layer.fused_relu = layer.pool_masks_relu = False
    assert any(layer.fused_relu for layer in fused.layers)
    assert any(layer.pool_masks_relu for layer in fused.layers)
    x = RNG.standard_normal((3, 10, 10, 3))
    ds = RNG.standard_normal((3, 3))
    np.testing.assert_allclose(fused.forward(x, train=True), plain.forward(x, train=True), rtol=1e-12)
    np.testing.assert_allclose(fused.backward(ds), plain.backward(ds), rtol=1e-10, atol=1e-12)
    for name in plain.grads:
        np.testing.assert_allclose(fused.grads[name], plain.grads[name], rtol=1e-10, atol=1e-12)
    # Evaluation never fuses: a CONV's activations are its maps before the ReLU.
    kept = dict(fused.activations(x))
    assert (kept["conv1"] < 0).any() and not (kept["relu1"] < 0).any()


def test_input_grad_false_skips_only_the_first_dx():
    net = Net.from_pattern(SMALL)
    x = RNG.standard_normal((2, 10, 10, 3)).astype(np.float32)
    ds = RNG.standard_normal((2, 3)).astype(np.float32)
    net.forward(x, train=True)
    dx = net.backward(ds)
    grads = {k: g.copy() for k, g in net.grads.items()}
    net.forward(x, train=True)
    assert net.backward(ds, input_grad=False) is None and dx.shape == x.shape
    for name, g in grads.items():
        np.testing.assert_allclose(net.grads[name], g, rtol=1e-4, atol=1e-6)


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
    for la, lb in zip(a.layers, b.layers):
        outs[id(a)] = la.forward(outs[id(a)], True)
        outs[id(b)] = lb.forward(outs[id(b)], True)
    grads = {key: ops.softmax_loss(out, y)[1] for key, out in outs.items()}
    for la, lb in zip(reversed(a.layers), reversed(b.layers)):
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
    pooled, cache = ops.pool_forward(x, (2, 2), (2, 2), "avg")
    assert pooled.dtype == np.float32 and ops.pool_backward(pooled, cache).dtype == np.float32


@pytest.mark.parametrize("hw,size,stride", [((8, 8), (2, 2), (2, 2)), ((7, 7), (3, 3), (2, 2)),
                                            ((8, 9), (2, 3), (1, 2))])
def test_maxpool_ties_with_threads(settings, hw, size, stride):
    runtime.set_threads(2)
    runtime.set_chunk_bytes(1)
    x = RNG.integers(0, 2, (6, *hw, 2)).astype(np.float64)     # many tied windows
    out, cache = ops.pool_forward(x, size, stride)
    dout = RNG.standard_normal(out.shape)
    # Overlapping windows add up in another order than the loops: equal up to rounding.
    np.testing.assert_allclose(ops.pool_backward(dout, cache),
                               naive.pool_backward(dout, x, size, stride), rtol=1e-12, atol=1e-12)


def test_settings_reject_nonsense(settings):
    with pytest.raises(ValueError, match="nbytes"):
        runtime.set_memory_budget(0)
    with pytest.raises(ValueError, match="n="):
        runtime.set_threads(0)
    assert runtime.set_memory_budget(123) == runtime.DEFAULT_BUDGET
    assert runtime.memory_budget() == 123


def test_layers_fuse_only_conv_or_fc_before_relu():
    net = Net.from_pattern("INPUT(6x6x1) -> CONV(2) -> RELU -> POOL -> RELU -> FC(4) -> TANH -> FC(2) -> RELU")
    fused = {layer.name: layer.fused_relu for layer in net.layers}
    assert fused == {"conv1": True, "relu1": True, "maxpool1": False, "relu2": False, "fc1": False,
                     "tanh1": False, "fc2": True, "relu3": True}
    assert layers.fuse([]) == []


@pytest.mark.parametrize("hw,size,stride", [((8, 8), (2, 2), (2, 2)), ((7, 7), (3, 3), (2, 2)),
                                            ((8, 9), (2, 3), (1, 2))])
@pytest.mark.parametrize("threads", [1, 2])
def test_relu_mask_in_maxpool_backward_equals_relu_backward(settings, hw, size, stride, threads):
    # CONV -> RELU -> MAXPOOL: the pool's backward applying the ReLU's mask (and the CONV then
    # skipping it) must give the same gradients, including windows that are all zero after the
    # ReLU (ties: the gradient goes to the first tap, whose ReLU mask is 0) and overlapping pools.
    runtime.set_threads(threads)
    runtime.set_chunk_bytes(1)
    x = RNG.integers(-1, 2, (6, *hw, 3)).astype(np.float64)
    w = RNG.integers(-1, 2, (3, 3, 3, 4)).astype(np.float64)     # integer maps: many ties and zeros
    b = np.array([0.0, -1.0, 1.0, -3.0])
    out, cache = ops.conv_forward(x, w, b, (1, 1), (1, 1), relu=True)
    assert (out == 0).any()
    pooled, pool_cache = ops.pool_forward(out, size, stride)
    masked, masked_cache = ops.pool_forward(out, size, stride, relu_mask=True)
    np.testing.assert_array_equal(masked, pooled)
    dout = RNG.standard_normal(pooled.shape)
    want = ops.conv_backward(ops.pool_backward(dout, pool_cache), cache)
    got = ops.conv_backward(ops.pool_backward(dout, masked_cache), cache, relu_masked=True)
    for g, wnt in zip(got, want):
        np.testing.assert_allclose(g, wnt, rtol=1e-12, atol=1e-12)
    # And against the naive loops: ReLU, then the naive max pool's backward, then the conv's.
    relu_grad = naive.pool_backward(dout, out, size, stride) * (out > 0)
    _, plain_cache = ops.conv_forward(x, w, b, (1, 1), (1, 1))
    for g, wnt in zip(got, ops.conv_backward(relu_grad, plain_cache)):
        np.testing.assert_allclose(g, wnt, rtol=1e-12, atol=1e-12)


def test_fused_pool_mask_net_matches_unfused_net():
    pattern = ("INPUT(9x9x2) -> CONV(3) -> RELU -> MAXPOOL(3x3, s=2) -> CONV(4) -> RELU -> POOL "
               "-> CONV(2) -> RELU -> AVGPOOL(2x2, s=1) -> FC(3)")
    fused = Net.from_pattern(pattern, dtype="float64")
    plain = Net.from_pattern(pattern, dtype="float64")
    assert {layer.name: layer.pool_masks_relu for layer in fused.layers if layer.pool_masks_relu} == \
        {"conv1": True, "maxpool1": True, "conv2": True, "maxpool2": True}
    for layer in plain.layers:
        layer.fused_relu = layer.pool_masks_relu = False
    x = RNG.integers(-1, 2, (4, 9, 9, 2)).astype(np.float64)      # ties and all-zero windows
    ds = RNG.standard_normal((4, 3))
    for _ in range(2):      # a training step, then evaluation, then training again
        np.testing.assert_allclose(fused.forward(x, train=True), plain.forward(x, train=True), rtol=1e-12)
        np.testing.assert_allclose(fused.backward(ds), plain.backward(ds), rtol=1e-10, atol=1e-12)
        for name in plain.grads:
            np.testing.assert_allclose(fused.grads[name], plain.grads[name], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(fused.forward(x), plain.forward(x), rtol=1e-12)


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_fc_split_over_threads_matches_one_thread(settings, batch):
    x = RNG.standard_normal((batch, 4, 4, 70))          # big enough to be split
    w, b = RNG.standard_normal((1120, 300)), RNG.standard_normal(300)
    dout = RNG.standard_normal((batch, 300))
    out, cache = ops.fc_forward(x, w, b, relu=True)
    want = (out, *ops.fc_backward(dout, cache))
    runtime.set_threads(2)
    out, cache = ops.fc_forward(x, w, b, relu=True)
    for got, expected in zip((out, *ops.fc_backward(dout, cache)), want):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


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


def test_bordered_buffers_keep_a_zero_border_and_only_the_latest(settings):
    buf, inner = runtime.bordered("t", (2, 6, 7, 3), np.float32, (1, 2, 2, 1))
    assert inner.shape == (2, 3, 4, 3) and not buf.any()
    inner[...] = 5
    again, inner2 = runtime.bordered("t", (2, 6, 7, 3), np.float32, (1, 2, 2, 1))
    assert again is buf and (again.sum() == 5 * inner2.size)     # the border is still zero
    for i in range(runtime.BORDERED_KEEP):                          # push it out: least recently used
        runtime.bordered("t", (1, 1, 1, i + 1), np.float32, (0, 0, 0, 0))
    assert runtime.bordered("t", (2, 6, 7, 3), np.float32, (1, 2, 2, 1))[0] is not buf


@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
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


@pytest.mark.parametrize("shape", [(9, 5, 4, 3), (13, 6)])
def test_batchnorm_chunks_and_threads_keep_the_result(settings, shape):
    x = RNG.standard_normal(shape) * 2 + 1
    d = shape[-1]
    gamma, beta, dout = RNG.standard_normal(d), RNG.standard_normal(d), RNG.standard_normal(shape)

    def both():
        out, cache = ops.batchnorm_forward(x, gamma, beta, np.zeros(d), np.ones(d), train=True)
        return (out.copy(), *ops.batchnorm_backward(dout, cache))
    whole = both()
    # The textbook formulas, straight: the oracle.
    axes = tuple(range(len(shape) - 1))
    xhat = (x - x.mean(axis=axes)) / np.sqrt(x.var(axis=axes) + 1e-5)
    m = x.size // d
    dbeta, dgamma = dout.sum(axis=axes), (dout * xhat).sum(axis=axes)
    dx = gamma / np.sqrt(x.var(axis=axes) + 1e-5) * (dout - dbeta / m - xhat * dgamma / m)
    for got, want in zip(whole, (xhat * gamma + beta, dx, dgamma, dbeta)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    runtime.set_memory_budget(1)            # one image per chunk
    runtime.set_threads(3)
    for got, want in zip(both(), whole):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_float32_batchnorm_keeps_a_large_mean_from_ruining_the_variance():
    # Channels whose mean is 1,000 standard deviations from 0: E[x^2] - mean^2 in float32 would
    # lose every digit of the variance; the two-pass mean of (x - mean)^2 keeps it.
    x64 = 1000 + RNG.standard_normal((16, 8, 8, 4))
    out, _ = ops.batchnorm_forward(x64.astype(np.float32), np.ones(4, np.float32),
                                   np.zeros(4, np.float32), np.zeros(4, np.float32),
                                   np.ones(4, np.float32), train=True)
    want = (x64 - x64.mean(axis=(0, 1, 2))) / np.sqrt(x64.var(axis=(0, 1, 2)) + 1e-5)
    assert out.dtype == np.float32
    assert np.abs(out - want).max() < 1e-3
