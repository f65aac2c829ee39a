"""`slidenet summary`: the table, the JSON, and clean exits on bad input, run as a user would."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slidenet.cli import main
from slidenet.notation.pattern import parse
from slidenet.notation.shapes import infer
from slidenet.notation.summary import summary_json, summary_text

LECTURE = "INPUT(32x32x3) -> [[CONV(32) -> RELU]*N -> POOL?]*M -> [FC(128) -> RELU]*K -> FC(10)"


def slidenet(*args):
    return subprocess.run([sys.executable, "-m", "slidenet", *args], capture_output=True,
                          text=True, timeout=60)


def summary(pattern, *args):
    done = slidenet("summary", pattern, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cli_lecture_examples():
    assert summary("INPUT(32x32x3) -> FC(10)")["total_params"] == 30_730
    conv = summary("INPUT(32x32x3) -> CONV(10, 5x5, s=1, p=2)")["layers"][1]
    assert conv["output_shape"] == [32, 32, 10] and conv["params"] == 760
    assert conv["params_formula"] == "10 x (5*5*3 + 1) = 760"
    assert summary("INPUT(7x7x1) -> CONV(1, 3x3, s=1, p=0)")["layers"][1]["output_shape"] == \
        [5, 5, 1]
    assert summary("INPUT(7x7x1) -> CONV(1, 3x3, s=2, p=0)")["layers"][1]["output_shape"] == \
        [3, 3, 1]
    assert summary("INPUT(7x7x1) -> CONV(1, 3x3, s=1, p=1)")["layers"][1]["output_shape"] == \
        [7, 7, 1]
    assert summary("INPUT(56x56x64) -> CONV(32, 1x1)")["layers"][1]["output_shape"] == \
        [56, 56, 32]
    assert summary("INPUT(224x224x64) -> MAXPOOL(2x2, s=2)")["layers"][1]["output_shape"] == \
        [112, 112, 64]


def test_cli_lecture_pattern_with_variables():
    result = summary(LECTURE, "--set", "N=2", "--set", "M=3", "--set", "K=2")
    assert result["total_params"] == 130_602
    assert len(result["layers"]) == 21   # INPUT, 3 x (2 x 2 + 1), 2 x 2 + 1
    skipped = summary(LECTURE, "--set", "N=2", "--set", "M=1", "--set", "K=0",
                      "--skip-optional")
    assert [layer["name"] for layer in skipped["layers"]] == \
        ["input", "conv1", "relu1", "conv2", "relu2", "fc1"]


def test_cli_stride_3_error():
    pattern = "INPUT(7x7x1) -> CONV(1, 3x3, s=3, p=0)"
    done = slidenet("summary", pattern)
    assert done.returncode == 2 and done.stdout == ""
    assert "(7 - 3) / 3 + 1 = 2.33" in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("slidenet summary: error: layer 1, CONV(1, 3x3, s=3, p=0): ")
    assert lines[1:] == ["  " + pattern, "  " + " " * pattern.index("CONV") + "^"]


@pytest.mark.parametrize("args, words", [
    (["INPUT(7x7x1) -> CONVV(3)"], "did you mean CONV?"),
    (["INPUT(7x7x1) -> [FC(2)]*N"], "bind it with --set N=2"),
    (["INPUT(7x7x1) -> [FC(2)"], "never closed"),
    (["INPUT(7x7x1) -> FC(2) ->"], "trailing '->'"),
    (["INPUT(7x7x1) -> [FC(2)]*N", "--set", "N=two"], "--set 'N=two'"),
    (["INPUT(7x7x1) -> [FC(2)]*N", "--set", "N"], "write NAME=VALUE"),
    (["INPUT(7x7x1) -> [FC(2)]*N", "--set", "N=100000"], "at most 1,000 are allowed"),
    (["INPUT(100000x100000x3) -> FC(2)"], "numbers per image"),
    (["\u2603 ]]"], "expected a layer name"),
])
def test_cli_bad_input_exits_2_without_traceback(args, words):
    done = slidenet("summary", *args)
    assert done.returncode == 2
    assert words in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_text_table():
    done = slidenet("summary", LECTURE, "--set", "N=2", "--set", "M=3", "--set", "K=2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["layer", "pattern", "output", "parameters"]
    conv2 = next(line for line in lines if line.startswith("conv2 "))
    for cell in ("CONV(32)", "32 x 32 x 32", "32 x (3*3*32 + 1) = 9,248",
                 "(32 + 2*1 - 3) / 1 + 1 = 32", "5 x 5", "9,437,184", "128.0 KiB"):
        assert cell in conv2
    assert "total parameters:        130,602" in done.stdout
    # Columns line up: every row has its output volume at the header's offset.
    start = lines[0].index("output")
    assert all(line[start - 2:start] == "  " for line in lines[2:23])


def test_summary_notes_the_padding_it_chose_and_capped_fields(capsys):
    # The README's old claim: default padding "keeps the size". Only an odd filter at stride 1
    # has a centred padding; an even one, or a stride above 1, gets p=0, and summary says so.
    assert main(["summary", "INPUT(32x32x3) -> CONV(10, 4x4) -> CONV(8) -> CONV(4, 3x3, s=2) "
                 "-> CONV(2, 2x2, p=0) -> FC(10)"]) == 0
    out = capsys.readouterr().out
    notes = out.split("notes:\n")[1].split("\n\n")[0].splitlines()
    assert notes == [
        "  conv1 CONV(10, 4x4): no p= given, so p=0 (a 4x4 filter has no centred padding): "
        "32 x 32 becomes 29 x 29; write p= to choose",
        "  conv3 CONV(4, 3x3, s=2): no p= given, so p=0 (at stride 2 no padding keeps the size): "
        "29 x 29 becomes 14 x 14; write p= to choose"]
    assert "(29 + 2*1 - 3) / 1 + 1 = 29" in out        # conv2's default p=1, in its row
    assert not re.search(r" x \d+\*", out)             # no window reaches past the edges


def test_summary_marks_receptive_fields_capped_at_the_input(capsys):
    assert main(["summary", "INPUT(8x8x1) -> [CONV(2)]*4 -> FC(2)"]) == 0
    out = capsys.readouterr().out
    fields = {line.split()[0]: line for line in out.splitlines() if line.startswith(("conv", "fc"))}
    assert "7 x 7 " in fields["conv3"] and "8 x 8*" in fields["conv4"]      # 9 x 9 capped
    assert "8 x 8*" not in fields["fc1"]        # an FC sees the whole input by definition
    assert "* the whole 8 x 8 input: these windows reach past its edges" in out


def test_summary_of_a_model_file(tmp_path, capsys):
    fixture = Path(__file__).parent / "fixtures" / "model-0.1.0.npz"
    assert main(["summary", str(fixture)]) == 0
    assert re.search(r"conv2 +CONV\(4, 3x3, s=1, p=1\) +6 x 6 x 4", capsys.readouterr().out)


def test_summary_json_matches_infer():
    pattern = "INPUT(9x8x3) -> CONV(4, 3x1, s=2x1, p=0) -> FC(2)"
    infos = infer(parse(pattern), pattern)
    result = summary_json(infos)
    assert result["layers"][1] == {
        "name": "conv1", "text": "CONV(4, 3x1, s=2x1, p=0)", "output_shape": [4, 8, 4],
        "params": 40, "params_formula": "4 x (3*1*3 + 1) = 40",
        "size_formulas": ["(9 - 3) / 2 + 1 = 4", "(8 - 1) / 1 + 1 = 8"],
        "receptive_field": [3, 1], "receptive_field_capped": False, "notes": [],
        "madds": 4 * 8 * 4 * 3 * 1 * 3, "activation_bytes": 512}
    assert result["layers"][2]["params_formula"] == "2 x (4*8*4 + 1) = 258"
    assert result["total_params"] == 40 + 258
    assert result["total_madds"] == 1152 + 256
    assert "h: (9 - 3) / 2 + 1 = 4; w: (8 - 1) / 1 + 1 = 8" in summary_text(infos)
