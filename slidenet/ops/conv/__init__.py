"""Convolution: one forward/backward pair per algorithm, the pieces they share, and a dispatcher.

    dispatch       which pair computes a convolution (`choose`, "auto"), and the calls that run
                   it: `conv_forward`, `conv_backward`, `prepare_conv`, `conv_infer`
    common         what every pair shares: `ConvCache`, `check_shapes`, `finish_rows`,
                   `relu_masked`
    im2col         windows copied into rows, one GEMM; dx by scatter (any stride and padding)
    full_dx        im2col's forward; dx as the full correlation of dout with the flipped filters
    winograd       Winograd's F(m, 3) down the height, for any tile `Scheme`
    winograd_f23   the F(2, 3) scheme: two output rows from four products
    winograd_f43   the F(4, 3) scheme: four output rows from six products
    winograd_f44   F(4x4, 3x3): F(4, 3) down the height and along the width, 36 products
                   for a 4 x 4 block of outputs; one forward for inference (bias, skip, ReLU,
                   pool; `dispatch.choose_infer` picks it in `prepare_conv`) and training's
                   pair "winograd2d" on the same passes (`choose` picks it in `conv_forward`)
    winograd_s2    inference's 3x3 CONVs at stride 2: the input's even and odd phases, F(4, 2)
                   on the 2-tap half, 81 products for a 4 x 4 block of outputs instead of 144
                   (`dispatch.choose_infer` picks it in `prepare_conv`)
    winograd_s2_train training's 3x3 CONVs at stride 2 on winograd_s2's scheme: its forward
                   through the per-side padding, dx and dw from one set of dout's tiles
                   (`dispatch.takes_sides`, `conv_forward(..., sides=)`)
    winograd_block inference's residual block { CONV -> RELU -> CONV | ID } on F(4x4, 3x3) in
                   one compiled call, band by band of images in L2 (`layers.merge.Add.prepare`)
    winograd_down  inference's downsampling block { CONV(s=2) -> RELU -> CONV | CONV(1x1, s=2) }
                   in one compiled call, band by band (`layers.merge.Add.prepare`)
    picked         training's strided 1x1 CONVs (projections): the pixels the windows read,
                   picked once, a 1x1 CONV at stride 1; dx put back in one pass
    direct         thin first layers: each output pixel's window times the filters, compiled
    grouped        grouped and depthwise convolution: one pair per group, or shifted
                   multiply-adds for depthwise
    pair           one image's F(4, 3) or F(4x4, 3x3) layer split between the caller and a
                   helper thread, while the machine has a core to spare (SLIDENET_PAIR=0: off)

`slidenet.ops.naive.conv_forward` is the lecture's loops, the oracle every pair is tested against.
"""
from slidenet.ops.conv.dispatch import (
    ALGORITHMS, PAIRS, WINOGRAD4_THIN_FILTERS, WINOGRAD_MIN_DEPTH, ConvCache, PreparedConv, choose, conv_backward, conv_forward, conv_infer,
    prepare_conv, set_algorithm, takes_sides)

__all__ = ["ALGORITHMS", "PAIRS", "WINOGRAD4_THIN_FILTERS", "WINOGRAD_MIN_DEPTH", "ConvCache", "PreparedConv", "choose", "conv_backward",
           "conv_forward", "conv_infer", "prepare_conv", "set_algorithm", "takes_sides"]
