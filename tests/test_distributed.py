"""Data-parallel training and evaluation under `mpiexec -n 2` (slidenet.training.distributed).

The oracle is one process: the same seed and global batch must end with the same weights to
float rounding. The kernels' sharded forms are checked against their whole-batch forms in one
process, with threads standing in for ranks. The launcher is the `mpich` wheel's mpiexec next
to this Python; without it these tests fail (SLIDENET_SKIP_MPI=1 skips them on purpose, never in CI).
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from helpers import require, write_bars
from slidenet.data import augment, erase
from slidenet.errors import SlidenetError
from slidenet.model import load
from slidenet.ops import batchnorm_backward, batchnorm_forward, dropout_forward, shard
from slidenet.training import distributed
from slidenet.training.evaluate import evaluate
from slidenet.training.loop import TrainConfig, train

MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
# BATCHNORM after RELU: a bias straight before a BATCHNORM has a true gradient of 0, so Adam's
# updates of it are rounding noise, which differs between any two runs that round differently
# (1 and 2 threads in one process too); docs/distributed.md shows it. Here every weight counts.
NET = ("INPUT(8x8x1) -> CONV(4) -> RELU -> BATCHNORM -> POOL -> DROPOUT(0.2) -> FC(8) -> RELU "
       "-> BN -> FC(3)")
SETTINGS = dict(pattern=NET, epochs=2, batch_size=16, lr=3e-3, augment=True, flip=True, seed=5)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def mpiexec():
    require("MPI", None if os.access(MPIEXEC, os.X_OK) else f"no mpiexec at {MPIEXEC}")
    return MPIEXEC


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """179 images: 18 for validation, 161 for training, so each epoch ends with a batch of one
    image, which leaves rank 1 with none (it stands in with weight 0)."""
    return write_bars(tmp_path_factory.mktemp("data") / "bars.npz", 179)


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    """181 images: 163 for training, so each epoch ends with 3 images, split 2 and 1."""
    return write_bars(tmp_path_factory.mktemp("odd") / "bars.npz", 181)


def one_process(out, data, **overrides):
    """Train in this process, as without MPI; returns the folder."""
    train(TrainConfig(**{**SETTINGS, "data": data, "out": str(out), **overrides}),
          log=lambda *_: None)
    return out


def cli_args(out, data, **overrides):
    settings = {**SETTINGS, "data": data, **overrides}
    args = ["--pattern", settings["pattern"], "--data", settings["data"],
            "--epochs", str(settings["epochs"]), "--batch-size", str(settings["batch_size"]),
            "--lr", str(settings["lr"]), "--seed", str(settings["seed"]), "--out", str(out)]
    args += ["--flip"] if settings["flip"] else []
    args += [] if settings["augment"] else ["--no-augment"]
    return args + [f"--{k.replace('_', '-')}={v}" for k, v in overrides.items()
                   if k in ("stop_after", "resume")]


def launch(mpiexec, *commands, ranks=2, timeout=120, env=None):
    """Run `mpiexec -n ranks python -m slidenet ...`; each of `commands` is an argument list
    (several: one process each, MPMD). Returns the CompletedProcess."""
    line = [mpiexec]
    for i, args in enumerate(commands):
        line += ([":"] if i else []) + ["-n", str(ranks if len(commands) == 1 else 1),
                                       sys.executable, "-m", "slidenet", *args]
    return subprocess.run(line, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_same_training(a, b):
    """Model files a and b: every parameter, buffer and optimizer state within TOLERANCE
    (max |a - b| / max |b|, per array), the generators' states and the epoch identical."""
    ma, mb = load(str(a)), load(str(b))
    assert ma.state.keys() == mb.state.keys()
    for name in ma.state:
        x, y = ma.state[name], mb.state[name]
        if name.startswith("rng/") or x.dtype.kind not in "f":
            np.testing.assert_array_equal(x, y, err_msg=name)
            continue
        scale = max(float(np.abs(y).max()), 1e-30)
        assert float(np.abs(x.astype(np.float64) - y).max()) / scale < TOLERANCE, name
    assert ma.meta["epoch"] == mb.meta["epoch"]
    for ha, hb in zip(ma.meta["history"], mb.meta["history"]):
        assert ha["loss"] == pytest.approx(hb["loss"], rel=TOLERANCE)
        assert ha["val_accuracy"] == pytest.approx(hb["val_accuracy"], abs=1 / 17)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data):
    """The oracle: two epochs in one process."""
    return one_process(tmp_path_factory.mktemp("straight") / "run", data)


# ----- two ranks against one process ---------------------------------------------------------

def test_two_ranks_train_the_same_weights_as_one_process(mpiexec, data, straight, tmp_path):
    out = tmp_path / "two"
    r = launch(mpiexec, ["train", *cli_args(out, data)])
    assert r.returncode == 0, r.stderr
    assert_same_training(out / "model.npz", straight / "model.npz")
    # One writer, one log: rank 0's, once.
    assert sorted(os.listdir(out)) == ["best.npz", "history.json", "model.npz"]
    assert r.stdout.count("epoch   2/2") == 1 and r.stdout.count("saved ") == 1
    assert re.search(r"data-parallel on 2 processes: rank 0 \(pid \d+ on .+\), rank 1", r.stdout)
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and history == load(str(out / "model.npz")).meta["history"]


# A graph net with CONV -> BATCHNORM and FC -> BN directly: those layers have no bias now, so
# every array agrees between 2 ranks and 1 process (the biases used to differ by 78-100%).
# It ends on a global-average-pool head. (An FC -> BN, or FC -> RELU -> BN, at the end would
# cancel a shift that reaches it linearly, through ReLUs that are nearly always open, so a bias
# before it has a true gradient near 0 again, which Adam turns into rounding noise; and an FC
# unit that its ReLU nearly always closes learns from a handful of images, where the order of a
# sum can tip one across the kink.)
GRAPH = ("INPUT(8x8x1) -> CONV(4) -> BN -> RELU -> { CONV(4) -> BN -> RELU -> CONV(4, g=2) | ID } "
         "-> ADD -> RELU -> { CONV(2, 1x1) | DWCONV(3x3, p=same) } -> CONCAT -> "
         "MAXPOOL(3x3, s=2, p=1, round=down) -> CONV(3, 1x1) -> GLOBALAVGPOOL")


def test_a_graph_net_trains_the_same_on_two_ranks_as_on_one(mpiexec, data, tmp_path):
    straight = one_process(tmp_path / "one", data, pattern=GRAPH)
    assert "conv1.b" not in load(str(straight / "model.npz")).net.params
    r = launch(mpiexec, ["train", *cli_args(tmp_path / "two", data, pattern=GRAPH)])
    assert r.returncode == 0, r.stderr
    assert_same_training(tmp_path / "two" / "model.npz", straight / "model.npz")


def test_a_run_of_two_ranks_resumes_on_one_process(mpiexec, odd_data, tmp_path):
    straight = one_process(tmp_path / "straight", odd_data)
    out = tmp_path / "two"
    r = launch(mpiexec, ["train", *cli_args(out, odd_data, stop_after=1)])
    assert r.returncode == 0, r.stderr
    assert len(load(str(out / "model.npz")).meta["history"]) == 1
    train(TrainConfig(epochs=2, out=str(out)), resume=str(out / "model.npz"), log=lambda *_: None)
    assert_same_training(out / "model.npz", straight / "model.npz")


def test_a_run_of_one_process_resumes_on_two_ranks(mpiexec, odd_data, tmp_path):
    straight = one_process(tmp_path / "straight", odd_data)
    out = one_process(tmp_path / "one", odd_data, stop_after=1)
    r = launch(mpiexec, ["train", "--resume", str(out / "model.npz"), "--epochs", "2"])
    assert r.returncode == 0, r.stderr
    assert_same_training(out / "model.npz", straight / "model.npz")


def test_eval_under_mpiexec_scores_a_shard_per_rank_with_the_same_result(mpiexec, straight):
    model = load(str(straight / "best.npz"))
    r = launch(mpiexec, ["eval", str(straight / "best.npz"), "--json"])
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)          # printed once, by rank 0
    from slidenet import data as datasets
    dataset = datasets.load(model.meta["data"])
    want = evaluate(model.net, dataset.x_test, dataset.y_test, model.normalizer, 3)
    assert got["confusion"] == want["confusion"] and got["accuracy"] == want["accuracy"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert got["images"] == 60


# ----- mistakes and faults ---------------------------------------------------------------------

def test_a_batch_size_that_does_not_split_over_the_ranks_is_refused(mpiexec, data, tmp_path):
    r = launch(mpiexec, ["train", *cli_args(tmp_path / "x", data, batch_size=15)])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "slidenet train: error: --batch-size 15 does not split over 2 processes: 15 / 2 = 7.50 "
        "images each; with 2 processes use --batch-size 14 or 16, or start a number of "
        "processes that divides 15 (mpiexec -n 3, 5 or 15)"]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fault", ["data", "resume"])
def test_an_error_on_one_rank_ends_the_job_and_names_the_rank(mpiexec, data, tmp_path, fault):
    # Rank 1 alone meets the error: in loading the data, or in checking its arguments before
    # training (a rank that left then, before joining MPI, would leave rank 0 waiting forever).
    missing = tmp_path / "missing.npz"
    wrong = cli_args(tmp_path / "x", f"npz:{missing}") if fault == "data" else \
        cli_args(tmp_path / "x", data) + ["--resume", str(missing)]
    began = time.monotonic()
    r = launch(mpiexec, ["train", *cli_args(tmp_path / "x", data)], ["train", *wrong], timeout=60)
    assert time.monotonic() - began < 60
    assert r.returncode == 2
    assert re.search(r"slidenet train: rank 1 of 2: error: .*missing\.npz.*; ending the job", r.stderr)


@pytest.mark.parametrize("early, said", [
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["summary", "INPUT(4x4x1) -> FC(2)"],
     "slidenet summary: rank 1 of 2: error: summary runs in one process"),
    (["train", "--seed", "-1"], "slidenet train: rank 1 of 2: error: --seed must be")],
    ids=["bad-flag", "summary", "bad-seed"])
def test_a_rank_that_ends_before_joining_mpi_ends_the_job_with_its_message(mpiexec, data,
                                                                            tmp_path, early, said):
    # Rank 1 ends before MPI_Init (argparse, a one-process command, a refused flag); rank 0
    # waits for it in MPI_Init, which mpiexec does not see as a fault: its watchdog must.
    began = time.monotonic()
    r = launch(mpiexec, ["train", *cli_args(tmp_path / "x", data)], early, timeout=60,
               env={"SLIDENET_MPI_TIMEOUT": "5"})
    assert time.monotonic() - began < 30
    assert r.returncode != 0
    assert said in r.stderr, r.stderr
    assert re.search(r"slidenet: rank 0 of 2 \(pid \d+\): the other ranks did not all join MPI "
                     r"within 5 s: one of them ended before it did", r.stderr), r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("text", ["inf", "nan", "-1", "0", "1e9", "soon"])
def test_a_timeout_that_would_switch_the_watchdog_off_is_refused(monkeypatch, text):
    from slidenet.training.watchdog import timeout_setting
    monkeypatch.setenv("SLIDENET_MPI_TIMEOUT", text)
    with pytest.raises(SlidenetError, match=f"SLIDENET_MPI_TIMEOUT='{text}': give the seconds "
                                            "a rank waits .* from above 0 to 86400"):
        timeout_setting()


def start_training(mpiexec, data, out, env=None):
    """A long run under mpiexec; returns the process, rank 1's pid, and the output so far,
    once the first checkpoint is written."""
    line = [mpiexec, "-n", "2", sys.executable, "-m", "slidenet", "train",
            *cli_args(out, data, epochs=500, augment=False, flip=False)]
    job = subprocess.Popen(line, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, **(env or {})})
    seen = ""
    while "epoch   2/" not in seen:
        line = job.stdout.readline()
        assert line, f"the job ended early:\n{seen}"
        seen += line
    pid = int(re.search(r"rank 1 \(pid (\d+) on ", seen).group(1))
    return job, pid, seen


def finish(job, began):
    try:
        rest, _ = job.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail("the job hung after a rank was killed")
    return rest, time.monotonic() - began


def test_a_killed_rank_ends_the_job_and_the_checkpoint_survives(mpiexec, data, tmp_path):
    # mpiexec notices the death itself and ends the other ranks, naming the process that our
    # first line maps to rank 1.
    job, pid, seen = start_training(mpiexec, data, tmp_path / "run")
    began = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    rest, seconds = finish(job, began)
    assert seconds < 60
    assert job.returncode != 0
    assert f"PID {pid} RUNNING AT" in rest and "Killed (signal 9)" in rest
    model = load(str(tmp_path / "run" / "model.npz"))
    assert model.meta["epoch"] >= 1


def test_a_rank_that_stops_responding_is_named_and_the_job_ends(mpiexec, data, tmp_path):
    # A stopped process is alive to mpiexec (as a hung one, or one on a machine cut off the
    # network), so here rank 0's watchdog must notice, name it and end the job.
    job, pid, seen = start_training(mpiexec, data, tmp_path / "run",
                                    env={"SLIDENET_MPI_TIMEOUT": "4"})
    began = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    rest, seconds = finish(job, began)
    assert seconds < 60
    assert job.returncode == 2
    assert re.search(rf"slidenet: rank 1 \(pid {pid} on .+\) stopped responding: rank 0 waited "
                     rf"\d+ s for it in .+; ending the job", rest), rest
    assert load(str(tmp_path / "run" / "model.npz")).meta["epoch"] >= 1


# ----- the pieces, in one process ----------------------------------------------------------------

class FakeGroup:
    """Threads standing in for ranks: `sum` adds float64 vectors over all of them."""

    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size)
        self.slots = [None] * size

    def reducer(self, rank, active=True):
        def reduce(values):
            self.slots[rank] = np.array(values, np.float64) * active
            self.barrier.wait()
            total = np.sum(self.slots, axis=0)
            self.barrier.wait()
            return total
        return reduce


def run_ranks(size, work):
    results = [None] * size
    errors = []

    def run(rank):
        try:
            results[rank] = work(rank)
        except Exception as err:        # surfaced below; a thread's exception is lost otherwise
            errors.append(err)
    threads = [threading.Thread(target=run, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("shape, cuts", [((7, 3, 4, 5), (0, 2, 5, 7)), ((9, 6), (0, 4, 9))])
def test_batchnorm_in_parts_equals_batchnorm_of_the_whole_batch(shape, cuts):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 3 + 2
    dout = rng.standard_normal(shape)
    gamma, beta = rng.random(shape[-1]) + 0.5, rng.standard_normal(shape[-1])
    stats = np.zeros(shape[-1]), np.ones(shape[-1])
    out, cache = batchnorm_forward(x, gamma, beta, *stats, True)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    group = FakeGroup(len(cuts) - 1)

    def part(rank):
        lo, hi = cuts[rank], cuts[rank + 1]
        running = np.zeros(shape[-1]), np.ones(shape[-1])
        o, c = batchnorm_forward(x[lo:hi], gamma, beta, *running, True,
                                 reduce=group.reducer(rank))
        return (o, *batchnorm_backward(dout[lo:hi], c), *running)
    parts = run_ranks(group.size, part)
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), out, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), dx, atol=1e-12)
    # dgamma and dbeta stay each part's own; the gradient sum adds them up.
    np.testing.assert_allclose(sum(p[2] for p in parts), dgamma, atol=1e-12)
    np.testing.assert_allclose(sum(p[3] for p in parts), dbeta, atol=1e-12)
    axes = tuple(range(x.ndim - 1))
    for p in parts:     # the running statistics, from 0 and 1: the whole batch's, on every rank
        np.testing.assert_allclose(p[4], 0.1 * x.mean(axis=axes), rtol=1e-12)
        np.testing.assert_allclose(p[5], 0.9 + 0.1 * x.var(axis=axes), rtol=1e-12)


def test_a_stand_in_part_adds_nothing_to_the_batchnorm_statistics():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4)) * 2 + 1
    want, _ = batchnorm_forward(x, np.ones(4), np.zeros(4), np.zeros(4), np.ones(4), True)
    group = FakeGroup(2)

    def part(rank):     # rank 1 stands in with row 0 again, weight 0
        rows = x if rank == 0 else x[:1]
        out, _ = batchnorm_forward(rows, np.ones(4), np.zeros(4), np.zeros(4), np.ones(4), True,
                                   reduce=group.reducer(rank, active=rank == 0))
        return out
    parts = run_ranks(2, part)
    np.testing.assert_allclose(parts[0], want, atol=1e-12)
    np.testing.assert_allclose(parts[1], want[:1], atol=1e-12)


def test_dropout_and_augmentation_in_parts_draw_the_whole_batch_stream():
    x = np.random.default_rng(3).standard_normal((5, 6, 6, 2)).astype(np.float32)
    whole_mask = dropout_forward(x, 0.3, np.random.default_rng(9), True)[1]
    whole_aug = augment(x, np.random.default_rng(9), crop_pad=2, flip=True)
    whole_erase = erase(x, np.random.default_rng(9), 0.7)
    for start, stop in ((0, 3), (3, 5), (0, 1)):
        p = shard.Part(start, stop, 5, (stop - start) / 5, None)
        rng = np.random.default_rng(9)
        np.testing.assert_array_equal(dropout_forward(x[start:stop], 0.3, rng, True, part=p)[1],
                                      whole_mask[start:stop])
        # The generator moved as far as one process's whole-batch draw did.
        assert rng.random() == np.random.default_rng(9).random((5 * 6 * 6 * 2) + 1)[-1]
        np.testing.assert_array_equal(
            augment(x[start:stop], np.random.default_rng(9), crop_pad=2, flip=True, part=p),
            whole_aug[start:stop])
        np.testing.assert_array_equal(erase(x[start:stop], np.random.default_rng(9), 0.7, part=p),
                                      whole_erase[start:stop])


class Ranks:
    """`Group.part` without MPI: the same arithmetic on a given rank and size."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size
        self.sum = None


@pytest.mark.parametrize("n, size", [(16, 2), (7, 3), (2, 4), (1, 2), (64, 8)])
def test_the_parts_of_a_batch_cover_it_once_and_weigh_its_mean(n, size):
    parts = [distributed.Group.part(Ranks(r, size), n) for r in range(size)]
    active = [p for p in parts if p.active]
    assert [i for p in active for i in range(p.start, p.stop)] == list(range(n))
    assert sum(p.weight for p in parts) == pytest.approx(1.0)
    assert max(p.stop - p.start for p in active) - min(p.stop - p.start for p in active) <= 1
    for p in parts:
        if not p.active:        # a stand-in recomputes row 0 with weight 0
            assert (p.start, p.stop, p.weight) == (0, 1, 0.0)
    assert len(active) == min(n, size)


def test_without_a_launcher_there_is_no_world(monkeypatch):
    for name in distributed.SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_state", {"group": None, "checked": False})
    assert distributed.launched_size() == 1 and distributed.world() is None
    assert distributed.rank() == 0


def test_under_mpiexec_without_mpi4py_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)       # as if it were not installed
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    monkeypatch.setattr(distributed, "_state", {"group": None, "checked": False})
    with pytest.raises(SlidenetError, match=r"one of 2 processes started by mpiexec, but mpi4py "
                                            r"is not installed.*pip install mpi4py mpich"):
        distributed.world()


def test_one_process_errors_print_once_and_return_the_status(capsys, monkeypatch):
    monkeypatch.setattr(distributed, "_state", {"group": None, "checked": True})
    assert distributed.fail("train", "error: no such file", 2) == 2
    assert capsys.readouterr().err == "slidenet train: error: no such file\n"
