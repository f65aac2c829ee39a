"""F(4x4, 3x3)'s forward (`winograd_f44`, inference's and training's): against the naive loops
in float64 and float32, its rounding against im2col's, chunks and threads, the skip and ReLU of
a residual block, its NumPy passes, and where `prepare_conv` chooses it. (Training's pair,
"winograd2d", is checked with the others in tests/test_kernels.py.)"""
import numpy as np
import pytest

from harness import conv3x3_arrays, without_numba
from slidenet import Net, ops
from slidenet.ops import compiled, naive, runtime
from slidenet.ops.conv import dispatch, winograd_block, winograd_down, winograd_f44

RNG = np.random.default_rng(44)

# (N, H, W, D, K, pad): whole tiles; a last tile sticking out down and across; no padding;
# uneven padding; output sizes 1 and 2 (a tile mostly outside); many channels.
GEOMETRIES = [(2, 8, 8, 16, 16, (1, 1)), (3, 7, 9, 5, 6, (1, 1)), (2, 6, 5, 4, 3, (0, 1)),
              (2, 10, 11, 3, 4, (2, 0)), (1, 3, 4, 2, 3, (0, 0)), (2, 4, 4, 40, 36, (1, 1))]


@pytest.fixture(autouse=True)
def kernels(numba):
    """Every test here runs the compiled kernels (inference takes F(4x4, 3x3) only with them)."""
    return numba


@pytest.mark.parametrize("n, h, w, d, k, pad", GEOMETRIES)
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 2e-5)])
def test_forward_is_the_lectures_convolution(n, h, w, d, k, pad, dtype, tolerance):
    x, wt, b = conv3x3_arrays(RNG, n, h, w, d, k, dtype)
    want = naive.conv_forward(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64),
                              (1, 1), pad)
    got = winograd_f44.forward(x, winograd_f44.prepare_filters(wt), b, pad)
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * np.abs(want).max())


def test_filters_of_another_depth_are_refused():
    x, wt, b = conv3x3_arrays(RNG, 1, 6, 6, 4, 3, "float32")
    with pytest.raises(ValueError, match="depth"):
        winograd_f44.forward(x[..., :3], winograd_f44.prepare_filters(wt), b, (1, 1))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("relu", [False, True])
def test_the_skip_and_relu_are_added_after_the_bias(dtype, relu):
    """relu(conv(x) + b + skip): the same numbers as the plain output plus skip, rectified."""
    x, wt, b = conv3x3_arrays(RNG, 3, 7, 9, 8, 12, dtype)
    u = winograd_f44.prepare_filters(wt)
    plain = winograd_f44.forward(x, u, b, (1, 1)).copy()
    skip = RNG.standard_normal(plain.shape).astype(dtype)
    kept = skip.copy()
    want = plain + skip
    got = winograd_f44.forward(x, u, b, (1, 1), relu=relu, skip=skip)
    np.testing.assert_array_equal(got, np.maximum(want, 0) if relu else want)
    np.testing.assert_array_equal(skip, kept)


def test_chunks_agree_with_the_whole_batch_and_threads_bit_for_bit():
    """Chunks of fewer images are GEMMs of fewer rows, which OpenBLAS may sum in another order:
    equal to rounding. One image per chunk on 2 threads as on 1: bit for bit."""
    x, wt, b = conv3x3_arrays(RNG, 7, 12, 10, 16, 8, "float32")
    u = winograd_f44.prepare_filters(wt)
    with runtime.workers(1):
        whole = winograd_f44.forward(x, u, b, (1, 1), relu=True).copy()
    runs = []
    for threads in (1, 2):
        with runtime.workers(threads):
            runs.append(winograd_f44.forward(x, u, b, (1, 1), relu=True, budget=1).copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_allclose(runs[0], whole, rtol=0, atol=1e-5 * np.abs(whole).max())
    alone = winograd_f44.forward(x[3:4], u, b, (1, 1), relu=True)
    np.testing.assert_array_equal(alone, runs[0][3:4])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_large_images_run_in_bands_as_whole_images_do(dtype):
    """Where one image's GEMM rows exceed `runtime.chunk_bytes()`, each image runs in bands of
    rows of tiles: the lecture's convolution still, its skip and its pool too, and 2 threads
    give 1's bits. (A 22-row output: a last band and a last tile that stick out.)"""
    x, wt, b = conv3x3_arrays(RNG, 2, 22, 13, 8, 6, dtype)
    u = winograd_f44.prepare_filters(wt)
    want = naive.conv_forward(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64),
                              (1, 1), (1, 1))
    skip = RNG.standard_normal(want.shape).astype(dtype)
    tolerance = (1e-12 if dtype == "float64" else 2e-5) * np.abs(want).max()
    runs = []
    for threads in (1, 2):
        previous = runtime.set_chunk_bytes(36 * 4 * (8 + 6) * x.itemsize * 2)  # 2 tile rows
        try:
            with runtime.workers(threads):
                runs.append([winograd_f44.forward(x, u, b, (1, 1)).copy(),
                             winograd_f44.forward(x, u, b, (1, 1), True, skip=skip).copy(),
                             winograd_f44.forward(x, u, b, (1, 1), True, pool=True).copy()])
        finally:
            runtime.set_chunk_bytes(previous)
    for one, two in zip(*runs):
        np.testing.assert_array_equal(one, two)
    plain, summed, pooled = runs[0]
    np.testing.assert_allclose(plain, want, rtol=0, atol=tolerance)
    np.testing.assert_allclose(summed, np.maximum(want + skip, 0), rtol=0, atol=tolerance)
    windows = np.maximum(plain, 0)[:, :22, :12].reshape(2, 11, 2, 6, 2, 6)
    np.testing.assert_array_equal(pooled, windows.max(axis=(2, 4)))


@pytest.mark.parametrize("n, h, w, d, k, pad", GEOMETRIES[:4])
def test_the_numpy_passes_agree_with_the_compiled_ones(n, h, w, d, k, pad, monkeypatch):
    """`winograd_f44.NUMPY` (the passes without numba, as einsums) in place of the compiled
    ones: the lecture's convolution, its skip and its pool, whole and in bands of tile rows;
    equal to the compiled passes to rounding (another order of the same sums)."""
    x, wt, b = conv3x3_arrays(RNG, n, h, w, d, k, "float64")
    u = winograd_f44.prepare_filters(wt)
    want = naive.conv_forward(x, wt, b, (1, 1), pad)
    skip = RNG.standard_normal(want.shape)
    pooled = np.maximum(want, 0)[:, :want.shape[1] // 2 * 2, :want.shape[2] // 2 * 2]
    pooled = pooled.reshape(n, want.shape[1] // 2, 2, want.shape[2] // 2, 2, k).max(axis=(2, 4))

    def three():
        return [winograd_f44.forward(x, u, b, pad).copy(),
                winograd_f44.forward(x, u, b, pad, True, skip=skip).copy(),
                winograd_f44.forward(x, u, b, pad, True, pool=True).copy()]
    fast = three()
    used = []
    monkeypatch.setattr(winograd_f44, "passes",
                        lambda *arrays: used.append(1) or winograd_f44.NUMPY)
    slow = three()
    previous = runtime.set_chunk_bytes(36 * 4 * (d + k) * x.itemsize)     # one tile row a band
    try:
        banded = three()
    finally:
        runtime.set_chunk_bytes(previous)
    for got in (fast, slow, banded):
        for one, oracle in zip(got, (want, np.maximum(want + skip, 0), pooled)):
            np.testing.assert_allclose(one, oracle, rtol=0, atol=1e-12 * np.abs(want).max())
    assert len(used) == 6


def relu_activations(n, h, w, d):
    """Like a trained net's ReLU outputs: spatially smooth, non-negative, about half zeros."""
    z = RNG.standard_normal((n, h + 2, w + 2, d))
    z = (z[:, :-2] + z[:, 1:-1] + z[:, 2:]) / 3
    z = (z[:, :, :-2] + z[:, :, 1:-1] + z[:, :, 2:]) / 3
    return np.maximum(z + 0.1, 0)


@pytest.mark.parametrize("h, d, k", [(32, 16, 16), (16, 32, 32), (8, 64, 64), (4, 128, 128)])
def test_float32_rounding_stays_within_a_few_times_f43(h, d, k):
    """res18's layers on ReLU-like data: float32 against the float64 result. Both transforms
    apply F(4, 3)'s sums, so the error is at most a few times F(4, 3)'s (measured: 1.7-2.2x)
    and well under 1e-5 of the result."""
    x = relu_activations(8, h, h, d)
    wt = RNG.standard_normal((3, 3, d, k)) * np.sqrt(2 / (9 * d))
    b = RNG.standard_normal(k) * 0.1
    exact = naive.conv_forward(x, wt, b, (1, 1), (1, 1))
    x32, w32, b32 = (a.astype(np.float32) for a in (x, wt, b))

    def error(out):
        return np.linalg.norm(out - exact) / np.linalg.norm(exact)
    f44 = error(winograd_f44.forward(x32, winograd_f44.prepare_filters(w32), b32, (1, 1)))
    f43 = error(ops.conv_forward(x32, w32, b32, (1, 1), (1, 1), algorithm="winograd4")[0])
    im2col = error(ops.conv_forward(x32, w32, b32, (1, 1), (1, 1), algorithm="im2col")[0])
    assert f44 < 2e-6
    assert f44 < 4 * f43 and f44 < 8 * im2col, (f44, f43, im2col)


def test_prepare_conv_chooses_it_for_inference_where_it_applies_and_pays():
    def chosen(d, k, h=16, w=16, size=(3, 3), stride=(1, 1), algorithm=None, width=True):
        wt = np.zeros((*size, d, k), np.float32)
        p = ops.prepare_conv(wt, np.zeros(k, np.float32), stride, (size[0] // 2, size[1] // 2),
                             algorithm=algorithm, height=h, width=w if width else None)
        return p.algorithm
    assert chosen(16, 16) == chosen(128, 128, 4, 4) == chosen(8, 16, 32, 32) == "winograd44"
    assert chosen(16, 16, width=False) == "winograd4"           # training's choice, or no width
    assert chosen(16, 16, algorithm="winograd4") == "winograd4"  # a named algorithm is kept
    assert chosen(4, 32) == "winograd4"                           # too thin: F(4, 3) as before
    assert chosen(16, 16, 16, 2) == "winograd4"                   # 2 columns: no fewer products
    assert chosen(16, 16, 6, 16) == "winograd"                    # F(2, 3) down 6 rows stays
    assert chosen(16, 16, size=(3, 1)) == "winograd4"
    assert chosen(16, 16, stride=(2, 2)) == "winograd_s2"   # inference at stride 2
    assert chosen(3, 16) == "direct"
    # dx-free inference alone: training's `choose` never names it.
    assert "winograd44" not in dispatch.ALGORITHMS


def test_a_prepared_layer_runs_f43_once_the_kernels_are_turned_off():
    x, wt, b = conv3x3_arrays(RNG, 2, 8, 8, 16, 16, "float32")
    p = ops.prepare_conv(wt, b, (1, 1), (1, 1), relu=True, height=8, width=8)
    assert p.algorithm == "winograd44"
    skip = RNG.standard_normal((2, 8, 8, 16)).astype(np.float32)
    fast = ops.conv_infer(x, p, skip=skip).copy()
    previous = compiled.set_enabled(False)
    try:
        slow = ops.conv_infer(x, p, skip=skip)
    finally:
        compiled.set_enabled(previous)
    want = ops.conv_infer(x, ops.prepare_conv(wt, b, (1, 1), (1, 1), relu=True,
                                              algorithm="winograd4"), skip=skip)
    np.testing.assert_array_equal(slow, want)
    np.testing.assert_allclose(fast, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("h, w", [(8, 12), (10, 6), (12, 14)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_pooled_output_is_the_output_then_the_max_pool(h, w, relu, dtype):
    """CONV -> RELU -> MAXPOOL(2x2) in the output pass: bit for bit the output, then
    `max_pool_forward` (sizes that are not multiples of 4: a last tile half outside)."""
    x, wt, b = conv3x3_arrays(RNG, 2, h, w, 16, 8, dtype)
    p = ops.prepare_conv(wt, b, (1, 1), (1, 1), relu=relu, height=h, width=w)
    assert p.algorithm == "winograd44"
    want = ops.max_pool_forward(ops.conv_infer(x, p).copy(), (2, 2), (2, 2))[0]
    np.testing.assert_array_equal(ops.conv_infer(x, p, pool=True), want)
    with pytest.raises(ValueError):
        ops.conv_infer(x, p, pool=True, skip=np.zeros((2, h, w, 8), dtype))


def test_a_residual_net_scores_as_its_evaluation_forward():
    """A small res18: its 3x3 layers run F(4x4, 3x3) in the plan, the evaluation forward runs
    training's kernels; with random BATCHNORM statistics folded in, they agree to rounding."""
    block = "{ CONV(16) -> BN -> RELU -> CONV(16) -> BN | ID } -> ADD -> RELU"
    pattern = (f"INPUT(16x16x3) -> CONV(16) -> BN -> RELU -> {block} -> "
               "{ CONV(24, s=2, p=1, round=down) -> BN -> RELU -> CONV(24) -> BN | "
               "CONV(24, 1x1, s=2, round=down) -> BN } -> ADD -> RELU -> GLOBALAVGPOOL -> FC(5)")
    for dtype, tolerance in (("float64", 1e-10), ("float32", 1e-4)):
        net = Net.from_pattern(pattern, seed=4, dtype=dtype)
        for name, p in net.params.items():
            p[...] = RNG.standard_normal(p.shape) * 0.3
        for layer in net.layers:
            for state in ("running_mean", "running_var"):
                if hasattr(layer, state):
                    getattr(layer, state)[...] = RNG.uniform(0.5, 1.5, getattr(layer, state).shape)
        x = RNG.standard_normal((3, 16, 16, 3)).astype(dtype)
        calls = []
        original, block = winograd_f44.forward, winograd_block.forward

        def counted(*args, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        def counted_block(*args, **kwargs):     # a residual block's two CONVs in one call
            calls.extend([1, 1])
            return block(*args, **kwargs)
        down = winograd_down.forward

        def counted_down(*args, **kwargs):      # a downsampling block's second CONV in it
            calls.append(1)
            return down(*args, **kwargs)
        winograd_f44.forward, winograd_block.forward = counted, counted_block
        winograd_down.forward = counted_down
        try:
            got = net.prepare().forward(x)
        finally:
            winograd_f44.forward, winograd_block.forward = original, block
            winograd_down.forward = down
        want = net.forward(x)
        assert len(calls) == 3                 # the three 3x3 stride-1 CONVs
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * np.abs(want).max())


def test_without_numba_the_plan_keeps_f43():
    out = without_numba(
        "import numpy as np\n"
        "from slidenet import ops\n"
        "p = ops.prepare_conv(np.ones((3, 3, 16, 16), np.float32), np.zeros(16, np.float32),\n"
        "                     (1, 1), (1, 1), height=16, width=16)\n"
        "print(p.algorithm)\n")
    assert out.strip() == "winograd4"


@pytest.mark.parametrize("h, w, d, k, pad", [(8, 8, 16, 16, (1, 1)), (7, 9, 5, 6, (1, 1)),
                                             (3, 4, 2, 3, (0, 0)), (32, 32, 8, 12, (1, 1))])
@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_one_image_keeps_the_chunked_paths_bits(h, w, d, k, pad, pool, relu, monkeypatch):
    """Batch 1 runs `OneImage` (its scratch kept per layer shape); with ONE_IMAGE_BYTES at 0 it
    runs the chunked path. Both must give the same bits, and stay right when the same layer
    shape runs again with other numbers (the kept scratch is reused)."""
    x, wt, b = conv3x3_arrays(RNG, 3, h, w, d, k, "float32")
    u = winograd_f44.prepare_filters(wt)
    kept = [winograd_f44.forward(x[i:i + 1], u, b, pad, relu, pool=pool).copy() for i in (0, 2, 1)]
    assert winograd_f44.one_image(h, w, d, k, pad, pool, np.dtype(np.float32)) is not None
    monkeypatch.setattr(winograd_f44, "ONE_IMAGE_BYTES", 0)
    monkeypatch.setattr(winograd_f44._one, "layers", {})
    assert winograd_f44.one_image(h, w, d, k, pad, pool, np.dtype(np.float32)) is None
    for got, i in zip(kept, (0, 2, 1)):
        np.testing.assert_array_equal(got, winograd_f44.forward(x[i:i + 1], u, b, pad, relu,
                                                                pool=pool))


@pytest.mark.parametrize("d,k", [(3, 5), (16, 16), (40, 72), (130, 100)])
@pytest.mark.parametrize("workers", [1, 2])
def test_compiled_filter_transforms_are_the_float64_sums_rounded_once(d, k, workers):
    # U = G w G^T and dw = G^T dU G in float32 (training's dtype) by the compiled separable
    # sums, against a loop over the 3 x 3 (or 6 x 6) entries in float64, rounded once; for the
    # flipped filters of dx as a view, and dw written into a flipped view as the backward does.
    # (130, 100): large enough for the transforms to be shared by two workers.
    assert (36 * 9 * d * k >= winograd_f44.FILTERS_SHARED_FROM) == (d == 130)
    g = winograd_f44.G.astype(np.float64)
    w = RNG.standard_normal((3, 3, d, k)).astype(np.float32)
    du = RNG.standard_normal((36, k, d)).astype(np.float32)
    with runtime.workers(workers):
        for filters in (w, w[::-1, ::-1].transpose(0, 1, 3, 2)):
            exact = np.zeros((36,) + filters.shape[2:])
            for a in range(6):
                for b in range(6):
                    for i in range(3):
                        for j in range(3):
                            exact[6 * a + b] += g[a, i] * g[b, j] * filters[i, j].astype(np.float64)
            got = winograd_f44.prepare_filters(filters)
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, exact.astype(np.float32), rtol=2e-7, atol=1e-6)
        exact = np.zeros((3, 3, k, d))
        for i in range(3):
            for j in range(3):
                for a in range(6):
                    for b in range(6):
                        exact[i, j] += g[a, i] * g[b, j] * du[6 * a + b].astype(np.float64)
        dw = np.full((3, 3, d, k), np.nan, np.float32)
        winograd_f44.filter_grad(du, dw[::-1, ::-1].transpose(0, 1, 3, 2))
        np.testing.assert_allclose(dw[::-1, ::-1].transpose(0, 1, 3, 2), exact.astype(np.float32),
                                   rtol=2e-7, atol=1e-6)
        np.testing.assert_allclose(winograd_f44.filter_grad(du), exact.astype(np.float32),
                                   rtol=2e-7, atol=1e-6)


@pytest.mark.parametrize("d, k", [(1, 1), (3, 5), (32, 64)])
def test_filter_transforms_in_float32_round_the_exact_ones(d, k):
    """G w G^T (`prepare_filters`) and G^T dU G (`filter_grad`) in float32 run compiled as two
    short sums each: against the exact transforms (the 6 x 3 G of the lecture's F(4, 3),
    multiplied out entry by entry in Python's exact fractions of the float inputs) they are
    the float32 rounding of it to 1 unit in the last place, as the NumPy GEMM by GG is; and
    float64 keeps that GEMM, bit for bit."""
    from fractions import Fraction
    g = [[Fraction(1, 4), 0, 0], [Fraction(-1, 6)] * 3, [Fraction(-1, 6), Fraction(1, 6),
                                                         Fraction(-1, 6)],
         [Fraction(1, 24), Fraction(1, 12), Fraction(1, 6)],
         [Fraction(1, 24), Fraction(-1, 12), Fraction(1, 6)], [0, 0, 1]]
    w = RNG.standard_normal((3, 3, d, k)).astype(np.float32)
    du = RNG.standard_normal((36, d, k)).astype(np.float32)
    u, dw = winograd_f44.prepare_filters(w), winograd_f44.filter_grad(du)
    assert u.dtype == dw.dtype == np.float32
    picks = [(e, c) for e in range(d) for c in range(k)][:6]
    for e, c in picks:
        for a in range(6):
            for b in range(6):
                exact = sum(g[a][i] * Fraction(float(w[i, j, e, c])) * g[b][j]
                            for i in range(3) for j in range(3))
                assert abs(float(u[6 * a + b, e, c]) - float(exact)) <= abs(np.spacing(np.float32(exact)))
        for i in range(3):
            for j in range(3):
                exact = sum(g[a][i] * Fraction(float(du[6 * a + b, e, c])) * g[b][j]
                            for a in range(6) for b in range(6))
                assert abs(float(dw[i, j, e, c]) - float(exact)) <= abs(np.spacing(np.float32(exact)))
    previous = compiled.set_enabled(False)
    try:
        np.testing.assert_allclose(winograd_f44.prepare_filters(w), u, rtol=2.5e-7, atol=1e-30)
        np.testing.assert_allclose(winograd_f44.filter_grad(du), dw, rtol=2.5e-7, atol=1e-30)
        u64 = winograd_f44.prepare_filters(w.astype(np.float64))
    finally:
        compiled.set_enabled(previous)
    np.testing.assert_array_equal(winograd_f44.prepare_filters(w.astype(np.float64)), u64)


# (N, H, W, D, K, pad, chunk tile rows or None): depths a multiple of 16 each way (both passes
# on 512-bit registers), D only (dx's output pass), K only (the forward's output pass and dx's
# input pass over dout), neither; a residual skip; bands of tile rows of a large image.
VPASS_CASES = [(3, 8, 8, 16, 32, (1, 1), None), (2, 9, 7, 32, 8, (1, 1), None),
               (2, 6, 10, 8, 16, (0, 1), None), (2, 5, 5, 5, 6, (1, 1), None),
               (2, 22, 13, 16, 16, (1, 1), 2)]


@pytest.mark.parametrize("n, h, w, d, k, pad, band", VPASS_CASES)
@pytest.mark.parametrize("use_skip", [False, True])
def test_training_gives_the_numba_passes_bits_with_vpass(n, h, w, d, k, pad, band, use_skip,
                                                         monkeypatch):
    """Training's forward and backward with `ops.vpass`'s passes where the depth fits give,
    bit for bit, what the numba passes give (vpass turned off, as SLIDENET_VGEMM=0 does), and
    both are the lecture's convolution and its gradients (the naive loops, in float64)."""
    from slidenet.ops import vpass
    if vpass.input_pass() is None or vpass.output_pass() is None:
        pytest.skip("no llvmlite, no AVX-512F or no numba on this host")
    x, wt, b = conv3x3_arrays(RNG, n, h, w, d, k, "float32")
    ho, wo = h + 2 * pad[0] - 2, w + 2 * pad[1] - 2
    dout = RNG.standard_normal((n, ho, wo, k)).astype(np.float32)
    skip = RNG.standard_normal((n, ho, wo, k)).astype(np.float32) if use_skip else None
    dskip = RNG.standard_normal(x.shape).astype(np.float32) if use_skip else None

    def step():
        previous = runtime.set_chunk_bytes(36 * 4 * -(-w // 4) * (d + k) * 4 * band) \
            if band else None
        try:
            u = winograd_f44.prepare_filters(wt)
            out = winograd_f44.forward(x, u, b, pad, relu=True, skip=skip).copy()
            cache = winograd_f44.conv_forward_winograd2d(x, wt, b, (1, 1), pad, True)[1]
            grads = winograd_f44.conv_backward_winograd2d(dout, cache, True, True, dskip)
            return [out] + [g.copy() for g in grads]
        finally:
            if band:
                runtime.set_chunk_bytes(previous)

    vector = step()
    monkeypatch.setattr(vpass, "_state", {"done": True, "fn": None, "out": None, "s2": None,
                                          "s2out": None})
    numba_passes = step()
    for got, want in zip(vector, numba_passes):
        np.testing.assert_array_equal(got, want)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, wt, b))
    pre = naive.conv_forward(x64, w64, b64, (1, 1), pad) + (0 if skip is None else skip)
    scale = np.abs(pre).max()
    np.testing.assert_allclose(vector[0], np.maximum(pre, 0), rtol=0, atol=2e-5 * scale)
    mask = naive.conv_forward(x64, w64, b64, (1, 1), pad) > 0
    dx, dw, db = naive.conv_backward(dout.astype(np.float64) * mask, x64, w64, (1, 1), pad)
    dx = dx + (0 if dskip is None else dskip)
    for got, want in zip(vector[1:], (dx, dw, db)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
