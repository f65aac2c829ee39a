"""Transfer learning: `slidenet train --from MODEL` (a fresh head for another class count,
--freeze, --resume of such a run), on small generated data."""
import numpy as np
import pytest

import slidenet
from helpers import assert_same_models, bars
from slidenet import Net
from slidenet.cli import main
from slidenet.ops import softmax_loss

SOURCE = ("INPUT(8x8x1) -> CONV(4) -> RELU -> BATCHNORM -> POOL -> FC(12) -> RELU -> DROPOUT(0.2) "
          "-> FC(3)")


def write_data(path, classes):
    x, y = bars(160, classes=classes)
    xt, yt = bars(60, seed=1, classes=classes)
    names = ["row", "column", "dot", "cross"][:classes]
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt, class_names=np.array(names))
    return f"npz:{path}"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 3-class model trained by slidenet, and 3- and 4-class data sets."""
    folder = tmp_path_factory.mktemp("transfer")
    three, four = write_data(folder / "three.npz", 3), write_data(folder / "four.npz", 4)
    assert main(["train", "--pattern", SOURCE, "--data", three, "--epochs", "3",
                 "--batch-size", "16", "--no-augment", "--seed", "1",
                 "--out", str(folder / "source")]) == 0
    return folder / "source" / "model.npz", three, four, folder


def tune(path, data, out, *extra, epochs="2"):
    return main(["train", "--from", str(path), "--data", data, "--epochs", epochs,
                 "--batch-size", "16", "--lr", "5e-3", "--no-augment", "--out", str(out), *extra])


def test_frozen_layers_stay_bitwise_and_the_new_head_scores_their_features(source, tmp_path,
                                                                           capsys):
    path, _, four, _ = source
    capsys.readouterr()
    assert tune(path, four, tmp_path / "run", "--freeze") == 0
    out = capsys.readouterr().out
    assert out.count("is replaced by a fresh FC(4)") == 1
    assert "its scoring layer FC(3) (fc2, layer 8)" in out
    assert "frozen: layers 1-7 (conv1 to dropout1)" in out and "trained: fc2" in out
    old, new = slidenet.load(path), slidenet.load(tmp_path / "run" / "model.npz")
    assert new.net.pattern == SOURCE.replace("FC(3)", "FC(4)") and new.net.num_outputs == 4
    assert new.class_names == ["row", "column", "dot", "cross"]
    for name, value in {**old.net.params, **old.net.buffers}.items():
        if not name.startswith("fc2."):
            np.testing.assert_array_equal(new.net.params.get(name, new.net.buffers.get(name)),
                                          value, err_msg=name)
    assert new.net.params["fc2.W"].shape == (12, 4)
    np.testing.assert_array_equal(new.normalizer.mean, old.normalizer.mean)
    # The oracle: the source model's own activations before its head, times the new head.
    x, y = bars(60, seed=1, classes=4)
    features = dict(old.net.activations(old.normalizer.normalize(x)))["dropout1"]
    want = features.astype(np.float64) @ new.net.params["fc2.W"] + new.net.params["fc2.b"]
    np.testing.assert_allclose(new.scores(x), want, rtol=1e-4, atol=1e-4)
    p = new.predict(x)
    assert p.shape == (60, 4) and np.allclose(p.sum(axis=1), 1)
    assert main(["eval", str(tmp_path / "run" / "model.npz"), "--json"]) == 0


def test_freeze_names_the_last_frozen_layer(source, tmp_path, capsys):
    path, _, four, _ = source
    assert tune(path, four, tmp_path / "run", "--freeze", "relu1") == 0
    assert "frozen: layers 1-2 (conv1 to relu1)" in capsys.readouterr().out
    old, new = slidenet.load(path), slidenet.load(tmp_path / "run" / "model.npz")
    for name in ("conv1.W", "conv1.b"):
        np.testing.assert_array_equal(new.net.params[name], old.net.params[name])
    for name in ("batchnorm1.gamma", "fc1.W"):
        assert not np.array_equal(new.net.params[name], old.net.params[name]), name
    # Batch normalisation after the frozen part trains, so its running statistics move.
    assert not np.array_equal(new.net.buffers["batchnorm1.running_mean"],
                              old.net.buffers["batchnorm1.running_mean"])


def test_without_freeze_every_layer_trains_from_the_model(source, tmp_path, capsys):
    path, three, _, _ = source
    capsys.readouterr()
    assert tune(path, three, tmp_path / "run", epochs="1") == 0
    out = capsys.readouterr().out
    assert "replaced" not in out and "frozen" not in out
    old, new = slidenet.load(path), slidenet.load(tmp_path / "run" / "model.npz")
    assert new.net.pattern == SOURCE
    for name, value in old.net.params.items():
        moved = np.abs(new.net.params[name] - value).max()
        assert 0 < moved < 1.0, name     # moved, but from the model's weights
    assert new.meta["config"]["source"] == str(path) and new.meta["epoch"] == 1


def test_resume_of_a_run_from_a_model_is_exact(source, tmp_path):
    path, _, four, _ = source
    assert tune(path, four, tmp_path / "straight", "--freeze", "batchnorm1", epochs="3") == 0
    assert tune(path, four, tmp_path / "parts", "--freeze", "batchnorm1", "--stop-after", "1",
                epochs="3") == 0
    assert main(["train", "--resume", str(tmp_path / "parts" / "model.npz"),
                 "--epochs", "3"]) == 0
    a = slidenet.load(tmp_path / "straight" / "model.npz")
    b = slidenet.load(tmp_path / "parts" / "model.npz")
    assert a.meta["epoch"] == b.meta["epoch"] == 3
    assert_same_models(a, b)


@pytest.mark.parametrize("args, needle", [
    (["--pattern", "INPUT(8x8x1) -> FC(4)"], "--pattern cannot go with --from"),
    (["--set", "N=2"], "--set cannot go with --from"),
    (["--resume", "SOURCE"], "--from and --resume cannot go together"),
    (["--freeze", "fc2"], "--freeze fc2: the scoring layer would be frozen too"),
    (["--freeze", "conv9"], "--freeze conv9: no such layer; the net's layers are 1 conv1"),
])
def test_bad_transfer_flags_exit_2_with_one_line(source, tmp_path, capsys, args, needle):
    path, _, four, _ = source
    args = [str(path) if a == "SOURCE" else a for a in args]
    capsys.readouterr()
    assert tune(path, four, tmp_path / "run", *args) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / "model.npz").exists()


def test_freeze_needs_from_and_from_needs_a_file(tmp_path, capsys):
    assert main(["train", "--freeze", "--out", str(tmp_path / "r")]) == 2
    assert "--freeze applies to a run --from MODEL" in capsys.readouterr().err
    assert main(["train", "--from", str(tmp_path / "none.npz"), "--out", str(tmp_path / "r")]) == 2
    assert f"--from {tmp_path / 'none.npz'}: no such model file" in capsys.readouterr().err


def test_frozen_backward_gives_the_trainable_layers_the_full_backwards_gradients():
    """With nothing in the frozen part that behaves differently in training (no dropout, no
    batch normalisation), stopping the backward early must not change the trainable grads."""
    pattern = "INPUT(6x6x2) -> CONV(3) -> RELU -> POOL -> FC(5) -> RELU -> FC(4)"
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 6, 6, 2)).astype(np.float32), rng.integers(0, 4, 7)
    full, part = Net.from_pattern(pattern, seed=3), Net.from_pattern(pattern, seed=3)
    _, d = softmax_loss(full.forward(x, train=True), y)
    full.backward(d)
    frozen = 1      # conv1+relu1+maxpool1, fused
    for name in part.grads:
        part.grads[name][...] = 7.0
    _, d2 = softmax_loss(part.forward(x, train=True, frozen=frozen), y)
    np.testing.assert_array_equal(d, d2)
    assert part.backward(d2, frozen=frozen) is None
    for name in ("fc1.W", "fc1.b", "fc2.W", "fc2.b"):
        np.testing.assert_array_equal(part.grads[name], full.grads[name], err_msg=name)
    assert (part.grads["conv1.W"] == 7.0).all()     # the frozen layer's grads are not touched
    assert all(p.cache is None for p in part.steps[0].parts)


def test_freeze_cannot_change_on_resume(source, tmp_path, capsys):
    path, _, four, _ = source
    assert tune(path, four, tmp_path / "run", "--freeze", "--stop-after", "1") == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run" / "model.npz"), "--epochs", "2",
                 "--freeze", "conv1"]) == 2
    assert "--freeze cannot change on --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "run" / "model.npz"), "--epochs", "2",
                 "--freeze"]) == 0      # the same as the run's: allowed


def test_a_new_head_keeps_the_pattern_as_written_and_every_other_weight():
    from slidenet.training.transfer import with_classes
    pattern = "INPUT(8x8x1) -> [CONV(3) -> RELU]*N -> POOL -> FC(6) -> RELU -> FC(5)"
    net = Net.from_pattern(pattern, seed=1, N=2)
    fresh, line = with_classes(net, 2, seed=9)
    assert fresh.pattern == pattern.replace("FC(5)", "FC(2)") and fresh.num_outputs == 2
    assert fresh.variables == {"N": 2}
    assert "scoring layer FC(5) (fc2, layer 8) is replaced by a fresh FC(2)" in line
    for name, value in net.params.items():
        if not name.startswith("fc2."):
            np.testing.assert_array_equal(fresh.params[name], value)
    assert with_classes(net, 5, seed=9) == (net, None)
    # A scoring FC inside a repeat cannot be rewritten in place: the layers are written out.
    looped = Net.from_pattern("INPUT(4x4x1) -> [FC(3)]*2", seed=0)
    assert with_classes(looped, 2, seed=0)[0].pattern == "INPUT(4x4x1) -> FC(3) -> FC(2)"


def test_freezing_a_graph_net_trains_the_layers_inside_later_branches():
    """A residual block after the frozen layers: its convolutions (inside the branch) are
    handed to the optimiser; one frozen by name inside a branch freezes its whole block."""
    from slidenet.training.transfer import frozen_steps, trainable
    net = Net.from_pattern("INPUT(8x8x3) -> CONV(4) -> RELU -> { CONV(4) -> RELU | ID } -> ADD "
                           "-> RELU -> GLOBALAVGPOOL -> FC(3)")
    count, line = frozen_steps(net, "relu1")
    assert count == 1 and "trained: conv2, relu2, id1, add1" in line
    assert list(trainable(net, count)) == ["conv2.W", "conv2.b", "fc1.W", "fc1.b"]
    count, _ = frozen_steps(net, "conv2")
    assert count == 2 and list(trainable(net, count)) == ["fc1.W", "fc1.b"]
    assert frozen_steps(net, "head")[0] == len(net.steps) - 1


def test_a_global_average_pool_head_gets_a_fresh_conv(tmp_path, capsys):
    """SqueezeNet's kind of head, CONV(classes, 1x1) -> RELU -> GLOBALAVGPOOL: its CONV is the
    scoring layer that --from replaces; --freeze trains it alone."""
    folder = tmp_path
    three, four = write_data(folder / "three.npz", 3), write_data(folder / "four.npz", 4)
    pattern = ("INPUT(8x8x1) -> CONV(6) -> RELU -> POOL -> CONV(3, 1x1) -> RELU -> "
               "GLOBALAVGPOOL")
    assert main(["train", "--pattern", pattern, "--data", three, "--epochs", "1",
                 "--batch-size", "16", "--no-augment", "--out", str(folder / "src")]) == 0
    capsys.readouterr()
    assert tune(folder / "src" / "model.npz", four, folder / "run", "--freeze") == 0
    out = capsys.readouterr().out
    assert "its scoring layer CONV(3, 1x1) (conv2, layer 4) is replaced by a fresh " \
        "CONV(4, 1x1)" in out and "trained: conv2, relu2, globalavgpool1" in out
    old = slidenet.load(folder / "src" / "model.npz")
    new = slidenet.load(folder / "run" / "model.npz")
    assert new.net.pattern == pattern.replace("CONV(3, 1x1)", "CONV(4, 1x1)")
    np.testing.assert_array_equal(new.net.params["conv1.W"], old.net.params["conv1.W"])
    assert new.net.params["conv2.W"].shape == (1, 1, 6, 4)
    assert new.predict(bars(5, classes=4)[0]).shape == (5, 4)
