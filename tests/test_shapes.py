"""Shape inference against the lecture's worked examples, and its errors."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slidenet.errors import PatternError
from slidenet.notation.pattern import parse
from slidenet.notation.shapes import infer
from slidenet.notation.summary import summary_json, summary_text

LECTURE = "INPUT(32x32x3) -> [[CONV(32) -> RELU]*N -> POOL?]*M -> [FC(128) -> RELU]*K -> FC(10)"
VGG16 = ("INPUT(224x224x3) -> [CONV(64) -> RELU]*2 -> POOL -> [CONV(128) -> RELU]*2 -> POOL"
         " -> [CONV(256) -> RELU]*3 -> POOL -> [CONV(512) -> RELU]*3 -> POOL"
         " -> [CONV(512) -> RELU]*3 -> POOL -> FC(4096) -> RELU -> FC(4096) -> RELU -> FC(1000)")


def net(pattern, **variables):
    return infer(parse(pattern, variables), pattern)


def last(pattern, **variables):
    return net(pattern, **variables)[-1]


def failure(pattern, **variables):
    with pytest.raises(PatternError) as caught:
        net(pattern, **variables)
    return caught.value


def test_fc_on_a_cifar_image_has_30730_parameters():
    fc = last("INPUT(32x32x3) -> FC(10)")
    assert fc.output_shape == (10,)
    assert fc.params == 30_730                     # 10 x (32*32*3 + 1)
    assert fc.params_formula == "10 x (32*32*3 + 1) = 30,730"    # 32*32*3 = 3072 inputs
    assert fc.madds == 30_720


def test_ten_5x5_filters_with_padding_2():
    conv = last("INPUT(32x32x3) -> CONV(10, 5x5, s=1, p=2)")
    assert conv.output_shape == (32, 32, 10)
    assert conv.params == 760                      # 10 x (5*5*3 + 1), the lecture's count
    assert conv.params_formula == "10 x (5*5*3 + 1) = 760"
    assert conv.size_formulas == ("(32 + 2*2 - 5) / 1 + 1 = 32",) * 2
    assert conv.madds == 32 * 32 * 10 * 5 * 5 * 3
    assert conv.activation_bytes == 32 * 32 * 10 * 4


@pytest.mark.parametrize("stride, side", [(1, 5), (2, 3)])
def test_7x7_input_3x3_filter(stride, side):
    conv = last(f"INPUT(7x7x1) -> CONV(1, 3x3, s={stride}, p=0)")
    assert conv.output_shape == (side, side, 1)
    assert conv.size_formulas[0] == f"(7 - 3) / {stride} + 1 = {side}"


def test_7x7_input_stride_3_does_not_fit():
    pattern = "INPUT(7x7x1) -> RELU -> CONV(3, 3x3, s=3)"
    err = failure(pattern)
    assert err.message.startswith("layer 2, CONV(3, 3x3, s=3): stride 3 does not tile")
    assert "(7 - 3) / 3 + 1 = 2.33 is not a whole number" in err.message
    assert "stride 1 or 2 tiles this input" in err.message
    assert str(err).splitlines()[1:] == ["  " + pattern, "  " + " " * 24 + "^"]


def test_padding_1_keeps_7x7():
    conv = last("INPUT(7x7x1) -> CONV(1, 3x3, s=1, p=1)")
    assert conv.output_shape == (7, 7, 1)
    assert conv.size_formulas[0] == "(7 + 2*1 - 3) / 1 + 1 = 7"
    assert last("INPUT(7x7x1) -> CONV(1)").output_shape == (7, 7, 1)


def test_thirty_two_1x1_filters():
    conv = last("INPUT(56x56x64) -> CONV(32, 1x1)")
    assert conv.output_shape == (56, 56, 32)
    assert conv.params == 32 * (64 + 1)


def test_max_pool_halves_224():
    pool = last("INPUT(224x224x64) -> MAXPOOL(2x2, s=2)")
    assert pool.output_shape == (112, 112, 64)
    assert pool.params == 0 and pool.size_formulas[0] == "(224 - 2) / 2 + 1 = 112"
    assert last("INPUT(224x224x64) -> POOL").output_shape == (112, 112, 64)


def test_overlapping_pool():
    # AlexNet's 3x3 windows at stride 2: (55 - 3) / 2 + 1 = 27.
    assert last("INPUT(55x55x96) -> MAXPOOL(3x3, s=2)").output_shape == (27, 27, 96)
    assert "111.50" in failure("INPUT(224x224x64) -> MAXPOOL(3x3, s=2)").message


def test_lecture_pattern_has_130602_parameters():
    # By hand, 3x3 convs with padding 1 keep the size and each POOL halves it:
    #   conv1  32 x (3*3*3 + 1)  =    896
    #   conv2..conv6, 5 x 32 x (3*3*32 + 1) = 5 x 9,248 = 46,240   (32 -> 16 -> 8 -> 4)
    #   fc1    128 x (4*4*32 + 1) = 128 x 513 = 65,664
    #   fc2    128 x (128 + 1)   = 16,512
    #   fc3    10 x (128 + 1)    =  1,290
    #   total  896 + 46,240 + 65,664 + 16,512 + 1,290 = 130,602
    infos = net(LECTURE, N=2, M=3, K=2)
    assert sum(info.params for info in infos) == 130_602
    assert [i.name for i in infos if i.params] == ["conv1", "conv2", "conv3", "conv4", "conv5",
                                                   "conv6", "fc1", "fc2", "fc3"]
    assert infos[0].name == "input" and infos[-2].name == "relu8"
    assert infos[16].name == "fc1" and infos[16].input_shape == (4, 4, 32)


def test_vgg16_answers_at_once():
    # The published VGG-16 (configuration D) count.
    assert sum(info.params for info in net(VGG16)) == 138_357_544


def test_per_axis_geometry():
    conv = last("INPUT(7x9x2) -> CONV(4, 3x1, s=2x1, p=0x1)")
    assert conv.output_shape == (3, 11, 4)
    assert conv.size_formulas == ("(7 - 3) / 2 + 1 = 3", "(9 + 2*1 - 1) / 1 + 1 = 11")
    assert conv.params == 4 * (3 * 1 * 2 + 1)
    assert conv.receptive_field == (3, 1)
    err = failure("INPUT(8x7x1) -> CONV(1, 3x3, s=2, p=0)")
    assert "does not tile the height: (8 - 3) / 2 + 1 = 3.50" in err.message


def test_receptive_fields():
    infos = net("INPUT(32x32x3) -> CONV(8) -> CONV(8) -> POOL -> CONV(8) -> FC(10)")
    # r += (F - 1) * jump; the pool doubles the jump: 1, 3, 5, 6, 6 + 2*2 = 10, whole image.
    assert [i.receptive_field for i in infos] == [(1, 1), (3, 3), (5, 5), (6, 6), (10, 10),
                                                  (32, 32)]


def test_receptive_field_never_exceeds_the_input():
    assert last("INPUT(8x8x1) -> [CONV(1)]*6").receptive_field == (8, 8)


def test_batchnorm_and_elementwise_layers():
    infos = net("INPUT(8x8x3) -> CONV(16) -> BN -> RELU -> DROPOUT -> FC(5) -> BATCHNORM -> TANH")
    bn1, bn2 = infos[2], infos[6]
    assert (bn1.params, bn1.params_formula, bn1.output_shape) == (32, "2 x 16 = 32", (8, 8, 16))
    assert (bn2.params, bn2.output_shape) == (10, (5,))
    assert all(i.params == 0 and i.output_shape == i.input_shape for i in infos[3:5])


def test_conv_after_fc_explains():
    pattern = "INPUT(8x8x3) -> FC(10) -> CONV(3)"
    err = failure(pattern)
    assert err.message == ("layer 2, CONV(3): CONV slides a window over an H x W x D volume, "
                           "but layer 1, FC(10) already flattened it into a vector of 10 "
                           "numbers; put every CONV and POOL before the first FC")
    assert err.column == pattern.index("CONV")


def test_window_larger_than_input():
    err = failure("INPUT(4x4x1) -> CONV(1, 7x7, p=0)")
    assert err.message.startswith("layer 1, CONV(1, 7x7, p=0): the 7-wide window is larger")


@pytest.mark.parametrize("pattern, words", [
    ("INPUT(100000x100000x3) -> FC(2)", "holds 30,000,000,000 numbers"),
    ("INPUT(1000x1000x3) -> FC(100000)", "300,000,100,000 parameters"),
    ("INPUT(512x512x64) -> CONV(100000, 1)", "holds 26,214,400,000 numbers"),
])
def test_absurd_nets_are_refused_at_once(pattern, words):
    assert words in failure(pattern).message


def test_repeated_layer_errors_name_the_expanded_index():
    err = failure("INPUT(8x8x1) -> [POOL]*4 -> FC(2)")
    assert err.message.startswith("layer 4, POOL: the 2-wide window is larger than the height")
    assert err.column == 17


# Patterns that parse more often than not: random geometry, nesting and options.
_number = st.sampled_from(["1", "2", "3", "5", "7", "2", "3", "64", "0", "100000"])
_count = st.sampled_from(["1", "2", "N", "0", "1000"])
_layer = st.one_of(
    st.builds("CONV({}, {}x{}, s={}, p={})".format, _number, _number, _number, _number,
              st.sampled_from(["0", "1", "2", "same", "valid", "1x0"])),
    st.builds("CONV({})".format, _number),
    st.builds("MAXPOOL({}, s={})".format, _number, _number),
    st.builds("AVGPOOL({})".format, _number),
    st.builds("FC({})".format, _number),
    st.sampled_from(["RELU", "POOL", "BN", "DROPOUT(0.5)", "LEAKYRELU", "TANH", "SIGMOID"]),
)
_chain = st.recursive(
    st.lists(_layer, min_size=1, max_size=4).map(" -> ".join),
    lambda inner: st.builds("[{}]*{}{}".format, inner, _count, st.sampled_from(["", "?"])),
    max_leaves=8)


@settings(max_examples=250, deadline=None)
@given(st.sampled_from(["1x1x1", "7x7x3", "32x32x3", "224x224x64", "100000x100000x1"]),
       st.lists(_chain, min_size=1, max_size=3), st.booleans())
def test_generated_nets_infer_or_explain(size, chains, skip):
    pattern = f"INPUT({size}) -> " + " -> ".join(chains)
    try:
        infos = infer(parse(pattern, {"N": 2}, skip_optional=skip), pattern)
    except PatternError as err:
        assert err.message.strip()
        return
    assert all(n >= 1 for info in infos for n in info.output_shape)
    assert summary_json(infos)["total_params"] == sum(i.params for i in infos)
    assert summary_text(infos).count("\n") >= len(infos)
