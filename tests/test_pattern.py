"""Parsing the lecture's pattern notation: defaults, repeats, optional layers, and the errors."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slidenet.errors import PatternError, SlidenetError
from slidenet.notation.pattern import MAX_LAYERS, parse, parse_sets

LECTURE = "INPUT(32x32x3) -> [[CONV(32) -> RELU]*N -> POOL?]*M -> [FC(128) -> RELU]*K -> FC(10)"


def kinds(specs):
    return [s.kind for s in specs]


def error(pattern, variables=None, **kwargs):
    with pytest.raises(PatternError) as caught:
        parse(pattern, variables, **kwargs)
    return caught.value


def test_simplest_net():
    specs = parse("INPUT(32x32x3) -> FC(10)")
    assert kinds(specs) == ["INPUT", "FC"]
    assert specs[0].shape == (32, 32, 3)
    assert specs[1].outputs == 10


def test_text_and_column_are_as_written():
    pattern = "input(7x7x1)  ->  conv(4, 3x1, s=2x1, p=same) -> leakyrelu ->fc(3)"
    specs = parse(pattern)
    assert [s.text for s in specs] == ["input(7x7x1)", "conv(4, 3x1, s=2x1, p=same)",
                                       "leakyrelu", "fc(3)"]
    for spec in specs:
        assert pattern[spec.column:].startswith(spec.text)
    assert kinds(specs) == ["INPUT", "CONV", "LEAKYRELU", "FC"]


def test_conv_defaults_keep_the_size():
    conv = parse("INPUT(8x8x1) -> CONV(6)")[1]
    assert (conv.filters, conv.size, conv.stride, conv.pad) == (6, (3, 3), (1, 1), (1, 1))
    assert parse("INPUT(8x8x1) -> CONV(6, 5x5)")[1].pad == (2, 2)
    assert parse("INPUT(8x8x1) -> CONV(6, 5)")[1].size == (5, 5)
    assert parse("INPUT(8x8x1) -> CONV(6, f=5)")[1].pad == (2, 2)
    # Even filters have no centred padding; at stride > 1 nothing keeps the size, so no padding
    # by default (per axis: only the stride-1 axis of s=2x1 is padded).
    assert parse("INPUT(8x8x1) -> CONV(6, 4x4)")[1].pad == (0, 0)
    assert parse("INPUT(8x8x1) -> CONV(6, 5x5, s=2)")[1].pad == (0, 0)
    assert parse("INPUT(8x8x1) -> CONV(6, 5x5, s=2x1)")[1].pad == (0, 2)


def test_conv_per_axis_and_named_padding():
    conv = parse("INPUT(8x8x1) -> CONV(6, 3x1, s=2x1, p=1x0)")[1]
    assert (conv.size, conv.stride, conv.pad) == ((3, 1), (2, 1), (1, 0))
    assert parse("INPUT(8x8x1) -> CONV(6, 5x3, p=same)")[1].pad == (2, 1)
    assert parse("INPUT(8x8x1) -> CONV(6, 5x5, p=valid)")[1].pad == (0, 0)
    assert parse("INPUT(8x8x1) -> CONV(6, 5x5, P=SAME)")[1].pad == (2, 2)
    assert parse("INPUT(8x8x1) -> CONV(6, 3 x 3, s = 2)")[1].stride == (2, 2)


def test_pool_defaults():
    pool, maxpool, avg, overlap = parse(
        "INPUT(8x8x1) -> POOL -> MAXPOOL() -> AVGPOOL(3) -> MAXPOOL(3x3, s=2)")[1:]
    assert pool.kind == maxpool.kind == "MAXPOOL" and avg.kind == "AVGPOOL"
    assert (pool.size, pool.stride, pool.pad) == ((2, 2), (2, 2), (0, 0))
    assert (maxpool.size, maxpool.stride, maxpool.pad) == ((2, 2), (2, 2), (0, 0))
    assert (avg.size, avg.stride) == ((3, 3), (3, 3))
    assert (overlap.size, overlap.stride) == ((3, 3), (2, 2))


def test_activations_dropout_batchnorm():
    specs = parse("INPUT(4x4x1) -> RELU() -> LEAKYRELU(0.2) -> LEAKYRELU -> TANH -> SIGMOID"
                  " -> DROPOUT -> DROPOUT(0.25) -> DROPOUT(p=0) -> BN -> BATCHNORM -> FC(2)")
    assert kinds(specs)[1:] == ["RELU", "LEAKYRELU", "LEAKYRELU", "TANH", "SIGMOID", "DROPOUT",
                                "DROPOUT", "DROPOUT", "BATCHNORM", "BATCHNORM", "FC"]
    assert [s.alpha for s in specs[2:4]] == [0.2, 0.01]
    assert [s.rate for s in specs[6:9]] == [0.5, 0.25, 0.0]


def test_lecture_pattern_expands():
    specs = parse(LECTURE, {"N": 2, "M": 3, "K": 2})
    expected = (["CONV", "RELU"] * 2 + ["MAXPOOL"]) * 3 + ["FC", "RELU"] * 2 + ["FC"]
    assert kinds(specs) == ["INPUT"] + expected
    # Repeats share the source text and column.
    assert {s.column for s in specs if s.kind == "CONV"} == {LECTURE.index("CONV")}


def test_lecture_spacing_and_literal_counts():
    specs = parse("INPUT(8x8x3) -> [CONV(4) -> RELU -> POOL] * 2 -> FC(3) -> RELU -> FC(2)")
    assert kinds(specs) == ["INPUT"] + ["CONV", "RELU", "MAXPOOL"] * 2 + ["FC", "RELU", "FC"]


def test_skip_optional_and_repeat_zero():
    with_pool = parse(LECTURE, {"N": 1, "M": 2, "K": 0})
    without = parse(LECTURE, {"N": 1, "M": 2, "K": 0}, skip_optional=True)
    assert kinds(with_pool) == ["INPUT", "CONV", "RELU", "MAXPOOL", "CONV", "RELU", "MAXPOOL",
                                "FC"]
    assert kinds(without) == ["INPUT", "CONV", "RELU", "CONV", "RELU", "FC"]
    group = "INPUT(4x4x1) -> [CONV(2) -> RELU]*2? -> FC(2)"
    assert kinds(parse(group, skip_optional=True)) == ["INPUT", "FC"]
    assert len(parse(group)) == 6


@pytest.mark.parametrize("pattern, message, column", [
    ("INPUT(7x7x1) -> CONVV(3)", "unknown layer 'CONVV'; did you mean CONV?", 16),
    ("INPUT(7x7x1) -> MAXPOLL", "did you mean MAXPOOL?", 16),
    ("INPUT(7x7x1) -> CONV(3.5)", "number of filters must be a whole number, got 3.5", 21),
    ("INPUT(7x7x1) -> CONV(0)", "number of filters must be at least 1, got 0", 21),
    ("INPUT(7x7x1) -> CONV(-2)", "number of filters must be at least 1, got -2", 21),
    ("INPUT(7x7x1) -> FC(100001)", "number of outputs 100001 is too large (at most 100,000)", 19),
    ("INPUT(7x7x1) -> CONV(2, 3x0)", "filter size must be at least 1, got 0", 26),
    ("INPUT(7x7x1) -> CONV(2, s=1x2.5)", "stride must be a whole number, got 2.5", 28),
    ("INPUT(7x7x1) -> CONV(2, 5x5x1)", "the depth always spans the whole input", 24),
    ("INPUT(7x7x1) -> CONV(2, 4x4, p=same)", "p=same needs an odd filter size", 31),
    ("INPUT(7x7x1) -> MAXPOOL(2, g=1)", "MAXPOOL has no argument g=", 27),
    ("INPUT(7x7x1) -> RELU(2)", "too many values: RELU takes no arguments", 21),
    ("INPUT(7x7x1) -> CONV(2, s=2, 3)", "a value without a name cannot follow", 29),
    ("INPUT(7x7x1) -> CONV(2, s=2, s=1)", "stride is given twice", 29),
    ("INPUT(7x7x1) -> DROPOUT(1)", "from 0 up to (not including) 1, got '1'", 24),
    ("INPUT(7x7x1) -> CONV", "CONV needs its filters", 16),
    ("INPUT(7x7x1) -> CONV(2", "this '(' is never closed", 20),
    ("INPUT(7x7x1) -> [CONV(2) -> RELU", "this '[' is never closed", 16),
    ("INPUT(7x7x1) -> CONV(2)] -> FC(2)", "this ']' has no matching '['", 23),
    ("INPUT(7x7x1) -> [CONV(2)] -> FC(2)", "needs a repeat count: write [ ... ]*2", 25),
    ("INPUT(7x7x1) -> [CONV(2)]*n", "must be a whole number or an UPPER-CASE variable", 26),
    ("INPUT(7x7x1) -> [CONV(2)]*N", "variable N is not bound: bind it with --set N=2", 26),
    ("INPUT(7x7x1) -> [CONV(2)]*1.5", "repeat count must be a whole number, got 1.5", 26),
    ("CONV(2) -> FC(2)", "a pattern starts with INPUT(HxWxD)", 0),
    ("FC(2) -> INPUT(7x7x1)", "INPUT must come first", 9),
    ("[INPUT(7x7x1)]*1 -> FC(2)", "INPUT must come first", 1),
    ("INPUT(7x7x1) -> [INPUT(7x7x1)]*1", "INPUT appears twice", 17),
    ("INPUT(7x7x1) -> FC(2) -> INPUT(3x3x1)", "INPUT appears twice", 25),
    ("INPUT(7x7x1)? -> FC(2)", "INPUT cannot be optional", 0),
    ("INPUT(7x7) -> FC(2)", "INPUT size '7x7' should be height x width x depth", 6),
    ("INPUT -> FC(2)", "INPUT needs its shape", 0),
    ("INPUT(7x7x1) -> FC(2) ->", "trailing '->'", 22),
    ("INPUT(7x7x1) -> FC(2) ->   ", "trailing '->'", 22),
    ("INPUT(7x7x1) FC(2)", "expected '->' here, got 'FC'", 13),
    ("INPUT(7x7x1) -> -> FC(2)", "expected a layer name, '[' or '{', got '-'", 16),
    ("INPUT(7x7x1)", "no layers after INPUT", 12),
    ("INPUT(7x7x1) -> [FC(2)]*0", "no layers after INPUT", 25),
    ("INPUT(7x7x1) -> [RELU]*1001", "expands to 1,002 layers; at most 1,000", 16),
    ("INPUT(7x7x1) -> [[[RELU]*100]*100]*100", "expands to 1,000,001 layers", 16),
])
def test_errors_name_the_problem_and_point_at_it(pattern, message, column):
    err = error(pattern)
    assert message in err.message
    assert err.column == column
    assert str(err).splitlines()[-1] == "  " + " " * column + "^"


def test_empty_and_non_string():
    assert "empty pattern" in str(error("   "))
    assert "a pattern is a string" in str(error(None))


def test_variables_must_be_small_whole_numbers():
    for bad in (-1, 2.0, True, "2", 100_001):
        assert "variable N" in error("INPUT(4x4x1) -> [FC(2)]*N", {"N": bad}).message
    assert len(parse("INPUT(4x4x1) -> [FC(2)]*N", {"N": 3})) == 4


def test_a_variable_the_pattern_does_not_use_is_an_error():
    # A --set that changes nothing is a typo (M for N), not something to ignore.
    err = error("INPUT(4x4x1) -> [FC(2)]*N", {"N": 3, "M": 1})
    assert err.message == ("variable M is bound (--set M=1) but the pattern has no repeat count "
                           "M: write [ ... ]*M, or drop the --set")


def test_softmax_is_explained_as_part_of_the_loss():
    err = error("INPUT(4x4x1) -> FC(2) -> SOFTMAX")
    assert "SOFTMAX is not a layer here: the softmax is part of the loss" in err.message
    assert err.column == len("INPUT(4x4x1) -> FC(2) -> ")


def test_the_lecture_times_sign_is_accepted():
    assert parse("INPUT(32×32×3) -> CONV(10, 5×5)")[1].size == (5, 5)


def test_layer_count_is_checked_before_expanding():
    # 100000^3 layers would never finish expanding; the count alone rejects it at once.
    err = error("INPUT(4x4x1) -> [[[RELU]*X]*X]*X -> FC(2)", {"X": 100_000})
    assert "1,000,000,000,000,001 layers" not in err.message
    assert f"at most {MAX_LAYERS:,}" in err.message
    assert len(parse("INPUT(4x4x1) -> [RELU?]*100000 -> FC(2)", skip_optional=True)) == 2


def test_deep_nesting_is_an_error_not_a_recursion_error():
    assert "nested more than" in error("INPUT(4x4x1) -> " + "[" * 5000).message


def test_parse_sets():
    assert parse_sets(["N=2", "M = 3", "K=0", "N=2"]) == {"N": 2, "M": 3, "K": 0}
    assert parse_sets(None) == {}
    for bad in ("N", "n=2", "N=x", "N=-1", "N=2.5", "N=100001", "N=" + "9" * 5000, "=2"):
        with pytest.raises(SlidenetError, match="--set"):
            parse_sets([bad])
    with pytest.raises(SlidenetError, match="given twice"):
        parse_sets(["N=2", "N=3"])


TOKENS = ["INPUT(32x32x3)", "INPUT(7x7x1)", "INPUT", "CONV(", "CONV(3)", "CONV(8, 3x3, s=2)",
          "CONV(2, 5, p=same)", "conv(1, 2x2, p=valid)", "POOL", "MAXPOOL(3x3, s=2)",
          "AVGPOOL(2)", "FC(10)", "FC(100000)", "RELU", "LEAKYRELU(0.1)", "DROPOUT(0.5)", "BN",
          "->", "[", "]", "*", "*N", "*2", "*0", "?", "(", ")", ",", "=", "s=", "p=", "x", "3",
          "0", "-1", "3.5", "99999", "100001", " ", "N", "é", "\n", "TANH", "SIGMOID"]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_random_text_only_raises_pattern_errors(text):
    try:
        parse(text, {"N": 2})
    except PatternError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=25), st.booleans())
def test_token_soup_only_raises_pattern_errors(tokens, skip):
    for pattern in ("".join(tokens), "INPUT(16x16x3) -> " + "".join(tokens)):
        try:
            specs = parse(pattern, {"N": 2}, skip_optional=skip)
        except PatternError:
            continue
        assert specs[0].kind == "INPUT" and len(specs) >= 2
