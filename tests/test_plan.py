"""`Net.prepare()`: the inference plan `Model.predict` and `slidenet serve` run. It must score
exactly what the net's evaluation forward scores, at every batch size and thread count."""
import numpy as np
import pytest

import slidenet
from slidenet import Net
from slidenet.ops import runtime

RNG = np.random.default_rng(11)
NETS = [
    "INPUT(32x32x3) -> [CONV(32) -> RELU]*2 -> POOL -> [CONV(64) -> RELU]*2 -> POOL -> FC(256) "
    "-> RELU -> FC(10)",
    "INPUT(15x13x2) -> CONV(8, 5x5, s=2, p=2) -> BATCHNORM -> RELU -> MAXPOOL(3x3, s=1) -> "
    "CONV(9, 3x1, p=1x0) -> LEAKYRELU(0.1) -> AVGPOOL(2x2, s=1) -> CONV(12) -> TANH -> "
    "GLOBALAVGPOOL -> DROPOUT(0.3) -> FC(7) -> SIGMOID -> FC(3)",
]


@pytest.mark.parametrize("pattern", NETS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_the_plan_scores_what_the_net_scores(pattern, dtype, threads, batch):
    net = Net.from_pattern(pattern, seed=3, dtype=dtype)
    for name, p in net.params.items():      # trained-looking weights: not the scoring FC's tiny ones
        p[...] = RNG.standard_normal(p.shape) * 0.2
    x = RNG.standard_normal((batch, *net.input_shape)).astype(dtype)
    with runtime.workers(threads):
        want = net.forward(x)
        got = net.prepare().forward(x)
    tolerance = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * np.abs(want).max())


def test_a_plan_is_a_snapshot_and_a_model_can_refresh_it(tmp_path):
    net = Net.from_pattern(NETS[0], seed=1)
    x = RNG.standard_normal((2, 32, 32, 3)).astype(np.float32)
    plan = net.prepare()
    before = plan.forward(x).copy()
    net.params["conv2.W"] *= -1
    np.testing.assert_array_equal(plan.forward(x), before)      # the plan keeps its weights
    np.testing.assert_allclose(net.prepare().forward(x), net.forward(x), rtol=1e-5, atol=1e-6)
    from slidenet.data import Normalizer
    slidenet.model.save(tmp_path / "m.npz", net, Normalizer(np.zeros(3, np.float32),
                                                            np.ones(3, np.float32)), "0123456789")
    model = slidenet.load(tmp_path / "m.npz")
    pixels = RNG.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    first = model.scores(pixels)
    model.net.params["fc2.b"] += 1.0
    np.testing.assert_array_equal(model.scores(pixels), first)
    model.refresh()
    np.testing.assert_allclose(model.scores(pixels), first + 1.0, rtol=1e-5)


RESIDUAL = ("INPUT(12x12x3) -> CONV(8) -> BN -> RELU -> { CONV(8) -> BN -> RELU -> CONV(8) -> BN "
            "| ID } -> ADD -> RELU -> { CONV(16, s=2, p=1, round=down) -> BN -> RELU -> "
            "CONV(16) -> BN | CONV(16, 1x1, s=2, round=down) -> BN } -> ADD -> RELU -> "
            "GLOBALAVGPOOL -> FC(5)")


@pytest.mark.parametrize("pattern", [NETS[0], RESIDUAL])
@pytest.mark.parametrize("batch, early, late", [(37, [18, 19], [18, 19]),
                                                (128, [32, 32, 32, 32], [64, 64])])
def test_a_large_batch_goes_through_the_plan_in_slices_and_scores_the_same(pattern, batch,
                                                                         early, late):
    """Two workers take slices of a batch through every step (depth first): each step sees
    slices, never the batch; the steps from the cut on one slice per worker (at 37 images the
    same slices, in the same pass); the scores are the net's evaluation forward's."""
    net = Net.from_pattern(pattern, seed=5)
    for name, p in net.params.items():
        p[...] = RNG.standard_normal(p.shape) * 0.2
    for name, b in net.buffers.items():
        b[...] = (RNG.uniform(0.5, 2, b.shape) if name.endswith("var")
                  else RNG.normal(0, .3, b.shape))
    x = RNG.standard_normal((batch, *net.input_shape)).astype(np.float32)
    want = net.forward(x)
    plan = net.prepare()
    seen, after_cut = [], []
    first_step, first_run = plan.steps[0]
    plan.steps[0] = (first_step, lambda a: seen.append(len(a)) or first_run(a))
    # From the cut on (outputs under 8 x 8: the FCs, the second stage), one slice per worker.
    assert 0 < plan.cut < len(plan.steps)
    cut_step, cut_run = plan.steps[plan.cut]
    plan.steps[plan.cut] = (cut_step, lambda a: after_cut.append(len(a)) or cut_run(a))
    with runtime.workers(2):
        got = plan.forward(x)
    assert sorted(seen) == early and sorted(after_cut) == late
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    with runtime.workers(1):                    # one worker: the batch layer by layer
        assert runtime.image_chunks(len(x)) is None
        seen.clear()
        np.testing.assert_allclose(plan.forward(x), want, rtol=1e-4,
                                   atol=1e-4 * np.abs(want).max())
    assert seen == [batch] and sorted(after_cut[:-1]) == late and after_cut[-1] == batch


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_kind_of_step_runs_on_two_slices_at_once(dtype):
    """Layers whose inference step is their evaluation forward (a lone BATCHNORM, pools,
    activations, DROPOUT) run on both workers' slices at the same time and score as the net."""
    net = Net.from_pattern(NETS[1], seed=3, dtype=dtype)
    for name, p in net.params.items():
        p[...] = RNG.standard_normal(p.shape) * 0.2
    x = RNG.standard_normal((40, *net.input_shape)).astype(dtype)
    want = net.forward(x)
    plan = net.prepare()
    with runtime.workers(2):
        assert runtime.image_chunks(len(x)) is not None
        for _ in range(3):
            got = plan.forward(x)
            tolerance = 1e-4 if dtype == "float32" else 1e-10
            np.testing.assert_allclose(got, want, rtol=tolerance,
                                       atol=tolerance * np.abs(want).max())


def test_the_cut_is_the_first_step_under_eight_by_eight():
    from slidenet.bench import RES18
    plan = Net.from_pattern(RES18).prepare()
    shapes = [step.parts[-1].info.output_shape if hasattr(step, "parts") else
              step.info.output_shape for step, _ in plan.steps]
    assert shapes[plan.cut - 1] == (8, 8, 64) and shapes[plan.cut] == (4, 4, 128)
    assert Net.from_pattern(NETS[0]).prepare().cut == 4       # the first FC


def test_slices_of_the_batch_are_a_multiple_of_the_workers_and_sized_within_bounds():
    with runtime.workers(2):
        assert runtime.image_chunks(31) is None            # under 16 images for each worker
        assert runtime.image_chunks(32) == [slice(0, 16), slice(16, 32)]
        assert runtime.image_chunks(64) == [slice(0, 32), slice(32, 64)]
        for n in (65, 250, 1000):
            chunks = runtime.image_chunks(n)
            sizes = [c.stop - c.start for c in chunks]
            assert len(chunks) % 2 == 0 and min(sizes) >= 16 and max(sizes) <= 32
            assert len(chunks) == 2 * -(-n // 64)           # the fewest within 32 images
            assert chunks[0].start == 0 and chunks[-1].stop == n
            assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
    with runtime.workers(3):
        assert len(runtime.image_chunks(100)) == 6
