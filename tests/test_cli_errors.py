"""The CLI's error contract: faults of the world are exit 2 and one line, bugs keep their
traceback, running out of memory names the layer and the batch, and no flag is silently ignored.

The CLI runs in this process (`slidenet.cli.main`), so a kernel can be made to fail.
"""
import argparse
import errno
import json

import pytest

from helpers import TINY, bars, one_line_error, write_bars
from slidenet import cli
from slidenet.cli import main
from slidenet.layers.conv import Conv
from slidenet.layers.fc import FC
from slidenet.layers.pool import MaxPool
from slidenet.training.loop import TrainConfig, train


@pytest.fixture(scope="module")
def data_spec(tmp_path_factory):
    return write_bars(tmp_path_factory.mktemp("data") / "bars.npz", 96, test=30)


@pytest.fixture(scope="module")
def model(tmp_path_factory, data_spec):
    """A one-epoch run (TINY, batch 16, lr 3e-3, sgd-momentum 0.8, seed 5)."""
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(pattern=TINY, data=data_spec, epochs=1, batch_size=16, lr=3e-3,
                      optimizer="momentum", momentum=0.8, seed=5, out=str(out)),
          log=lambda *_: None)
    return out / "model.npz"


# --- the top-level guard --------------------------------------------------------------------

def failing_command(monkeypatch, exc):
    """Make `slidenet summary` raise `exc`."""
    def boom(args):
        raise exc
    real = cli.build_parser

    def parser():
        p = real()
        p.set_defaults(func=boom)
        for action in p._subparsers._group_actions:
            for sub in action.choices.values():
                sub.set_defaults(func=boom)
        return p
    monkeypatch.setattr(cli, "build_parser", parser)


def test_an_os_error_is_exit_2_with_the_file_and_the_reason(monkeypatch, capsys):
    failing_command(monkeypatch, OSError(errno.EIO, "Input/output error", "/data/x.idx"))
    one_line_error(capsys, ["summary", "INPUT(4x4x1) -> FC(2)"], "/data/x.idx",
                   "Input/output error")


def test_a_memory_error_outside_the_net_is_exit_2(monkeypatch, capsys):
    failing_command(monkeypatch, MemoryError())
    one_line_error(capsys, ["summary", "INPUT(4x4x1) -> FC(2)"], "out of memory")


def test_a_bug_keeps_its_traceback(monkeypatch):
    failing_command(monkeypatch, ZeroDivisionError("a genuine bug"))
    with pytest.raises(ZeroDivisionError, match="a genuine bug"):
        main(["summary", "INPUT(4x4x1) -> FC(2)"])


# --- out of memory in a layer ---------------------------------------------------------------

def run_out_of_memory(monkeypatch, cls, method):
    def no_memory(self, *args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(cls, method, no_memory)


@pytest.mark.parametrize("method", ["forward", "backward"])
def test_train_out_of_memory_names_the_layer_and_halves_the_batch(tmp_path, monkeypatch, capsys,
                                                                  data_spec, method):
    run_out_of_memory(monkeypatch, Conv, method)
    one_line_error(capsys, ["train", "--pattern", TINY, "--data", data_spec, "--epochs", "1",
                            "--batch-size", "16", "--out", str(tmp_path / "run")],
                   f"out of memory in conv1+relu1+maxpool1 (CONV(4) -> RELU -> POOL) on the "
                   f"{method} pass of a batch of 16 images: try a smaller batch, e.g. --batch-size 8")
    assert not (tmp_path / "run" / "model.npz").exists()


def test_out_of_memory_on_resume_keeps_the_files(model, monkeypatch, capsys):
    before = {p.name: p.read_bytes() for p in model.parent.iterdir()}
    run_out_of_memory(monkeypatch, FC, "forward")
    one_line_error(capsys, ["train", "--resume", str(model), "--epochs", "2"],
                   "out of memory in fc1 (FC(3)) on the forward pass of a batch of 16 images",
                   "a resumed run keeps its batch size, 16")
    assert {p.name: p.read_bytes() for p in model.parent.iterdir()} == before


def test_eval_out_of_memory_suggests_its_own_batch_size(model, monkeypatch, capsys):
    run_out_of_memory(monkeypatch, MaxPool, "forward")
    one_line_error(capsys, ["eval", str(model), "--batch-size", "20"],
                   "out of memory in conv1+relu1+maxpool1 (CONV(4) -> RELU -> POOL) on the "
                   "forward pass of a batch of 20 images",
                   "--batch-size 10")


def test_predict_out_of_memory_with_one_image(model, tmp_path, monkeypatch, capsys):
    from PIL import Image
    Image.fromarray(bars(1)[0][0, :, :, 0]).save(tmp_path / "one.png")
    from slidenet import ops

    def no_memory(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(ops, "conv_infer", no_memory)      # predict runs the prepared net
    one_line_error(capsys, ["predict", str(model), str(tmp_path / "one.png")],
                   "out of memory in conv1+relu1+maxpool1 (CONV(4) -> RELU -> POOL) on the "
                   "forward pass of a batch of 1 image:", "even one image does not fit")


def test_predict_in_batches_gives_the_same_answers(model, tmp_path, capsys):
    from PIL import Image
    x, _ = bars(5, seed=3)
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(x[i, :, :, 0]).save(paths[-1])
    assert main(["predict", str(model), *paths]) == 0
    whole = capsys.readouterr().out
    assert main(["predict", str(model), *paths, "--batch-size", "2"]) == 0
    assert capsys.readouterr().out == whole


# --- no flag silently ignored ---------------------------------------------------------------

@pytest.mark.parametrize("flags, needles", [
    (["--pattern", "INPUT(8x8x1) -> CONV(8) -> RELU -> POOL -> FC(3)"],
     ["--pattern cannot change on --resume", "the net is fixed by the model", TINY]),
    (["--set", "N=2"], ["--set cannot change on --resume", "no --set"]),
    (["--skip-optional"], ["--skip-optional cannot change", "no --skip-optional"]),
    (["--lr", "0.1"], ["--lr cannot change", "with --lr 0.003", "drop --lr 0.1"]),
    (["--batch-size", "32"], ["--batch-size cannot change", "with --batch-size 16"]),
    (["--optimizer", "adam"], ["--optimizer cannot change", "with --optimizer momentum"]),
    (["--momentum", "0.9"], ["--momentum cannot change", "with --momentum 0.8"]),
    (["--seed", "1"], ["--seed cannot change", "with --seed 5"]),
    (["--no-augment"], ["--augment cannot change", "with --augment", "drop --no-augment"]),
    (["--flip"], ["--flip cannot change", "with no --flip"]),
    (["--data", "mnist5k"], ["--data cannot change", "--data npz:"]),
    (["--val-fraction", "0.2"], ["--val-fraction cannot change", "with --val-fraction 0.1"]),
    (["--erase", "0.5"], ["--erase cannot change", "with --erase 0.0"]),
    (["--label-smoothing", "0.1"], ["--label-smoothing cannot change",
                                     "with --label-smoothing 0.0"]),
])
def test_a_flag_that_cannot_apply_on_resume_is_an_error(model, capsys, flags, needles):
    before = model.read_bytes()
    one_line_error(capsys, ["train", "--resume", str(model), "--epochs", "2", *flags],
                   *needles, str(model))
    assert model.read_bytes() == before


def test_flags_that_agree_with_the_model_are_accepted_on_resume(model, tmp_path, capsys,
                                                               data_spec):
    out = tmp_path / "continued"
    code = main(["train", "--resume", str(model), "--epochs", "2", "--pattern", TINY,
                 "--data", data_spec, "--lr", "3e-3", "--batch-size", "16", "--seed", "5",
                 "--optimizer", "momentum", "--momentum", "0.8", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]


def test_patience_applies_on_resume(tmp_path, capsys, data_spec):
    # lr so small that validation accuracy cannot move: each resumed epoch is one without gain.
    out = tmp_path / "run"
    base = ["train", "--pattern", TINY, "--data", data_spec, "--batch-size", "32",
            "--lr", "1e-12", "--out", str(out)]
    assert main([*base, "--epochs", "1"]) == 0
    assert main(["train", "--resume", str(out / "model.npz"), "--epochs", "4",
                 "--patience", "1"]) == 0
    assert "early stop" in capsys.readouterr().out
    assert len(json.loads((out / "history.json").read_text())) == 2


def test_momentum_with_an_optimizer_that_does_not_use_it(tmp_path, capsys, data_spec):
    one_line_error(capsys, ["train", "--pattern", TINY, "--data", data_spec, "--momentum", "0.5",
                            "--out", str(tmp_path / "r")],
                   "--momentum applies to --optimizer momentum or nesterov, not adam")


@pytest.mark.parametrize("flags, needle", [
    (["--erase", "1.5"], "--erase must be in [0, 1), not 1.5"),
    (["--label-smoothing", "-0.1"], "--label-smoothing must be in [0, 1), not -0.1"),
    (["--label-smoothing", "0.1", "--loss", "svm"],
     "label smoothing spreads the softmax loss's targets; the svm loss has none"),
])
def test_erase_and_label_smoothing_out_of_range(tmp_path, capsys, data_spec, flags, needle):
    one_line_error(capsys, ["train", "--pattern", TINY, "--data", data_spec, *flags,
                            "--out", str(tmp_path / "r")], needle)


def test_bench_net_and_pattern_exclude_each_other(capsys):
    one_line_error(capsys, ["bench", "--net", "r1", "--pattern", "INPUT(4x4x1) -> FC(2)"],
                   "--net r1 and --pattern exclude each other")


def _parsers(parser, prefix="slidenet"):
    """(name, parser) for the CLI and every command and subcommand."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prefix} {name}")


def test_help_shows_every_default():
    for name, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            if not action.option_strings or action.default is argparse.SUPPRESS or action.required:
                continue            # a required option has no default to show
            flag = "/".join(action.option_strings)
            text = parser.formatter_class(prog="x")._get_help_string(action)
            assert action.help, f"{name} {flag} has no help"
            if action.default is None or action.default is False or action.default == []:
                # A switch is off unless given; otherwise the help says the default in words.
                assert isinstance(action, argparse._StoreTrueAction) or "default" in text, \
                    f"{name} {flag}: {text!r}"
            else:
                # Either the formatter adds "(default: VALUE)", or the help says it in words.
                shown = "on" if action.default is True else str(action.default)
                assert f"(default: {shown})" in text or "default" in action.help, \
                    f"{name} {flag}: {text!r}"


def test_epochs_help_says_it_counts_the_epochs_already_done(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "total epochs of the run, counting those a resumed run has already done" in text
    assert "(default: 15)" in text


# --- fuzzed flags (#25): what argparse lets through is refused in one line ------------------

def _argv_with(name, parser, flag):
    """argv for the command `name` ("slidenet viz curves") with `flag`=-- and a placeholder for
    each positional argument, so that argparse accepts it."""
    words = name.split()[1:]
    positional = [a for a in parser._actions if not a.option_strings
                  and not isinstance(a, argparse._SubParsersAction)]
    required = [w for a in parser._actions if a.required and a.option_strings
                and flag not in a.option_strings for w in (a.option_strings[0], "x")]
    return [*words, *("x" for _ in positional), *required, f"{flag}=--"]


def test_every_flag_given_dash_dash_as_its_value_is_one_line(capsys):
    """argparse stores `--FLAG=--` as an empty list, which no command expects."""
    tried = 0
    for name, parser in _parsers(cli.build_parser()):
        if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            continue
        for action in parser._actions:
            if (not action.option_strings or action.nargs is not None
                    or not isinstance(action, (argparse._StoreAction, argparse._AppendAction))):
                continue
            flag = action.option_strings[-1]
            one_line_error(capsys, _argv_with(name, parser, flag), f"{flag}=-- gives {flag} no "
                                                                   "value")
            tried += 1
    assert tried > 60


@pytest.mark.parametrize("argv", [["gradcheck", "INPUT(4x4x1) -> FC(2)", "--seed", "-1"],
                                  ["train", "--seed", "-1"],
                                  ["viz", "maximize", "MODEL", "--seed", "-1"],
                                  ["train", "--seed", str(2**64)]])
def test_a_seed_out_of_range_is_one_line(capsys, model, argv):
    argv = [str(model) if a == "MODEL" else a for a in argv]
    one_line_error(capsys, argv, "--seed must be a whole number from 0 to 2**64 - 1")


@pytest.mark.parametrize("value, needle", [("1e999", "--budget must be a finite number, not inf"),
                                           ("nan", "--budget must be a finite number, not nan"),
                                           ("1e300", "--budget is in MiB")])
def test_bench_budget_that_is_not_a_size(capsys, value, needle):
    one_line_error(capsys, ["bench", "--budget", value], needle)


def test_viz_curves_on_a_history_nested_100000_deep(tmp_path, capsys):
    (tmp_path / "history.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(capsys, ["viz", "curves", str(tmp_path), "--out", str(tmp_path / "c.png")],
                   "nests more than 16 deep")
    (tmp_path / "history.json").write_text('[{"epoch": 1, "loss": "x", "accuracy": 1}]')
    one_line_error(capsys, ["viz", "curves", str(tmp_path), "--out", str(tmp_path / "c.png")],
                   "an epoch's loss is \"x\", not a number")
