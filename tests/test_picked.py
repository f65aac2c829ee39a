"""Training's strided 1x1 CONVs (`conv.picked`, a residual block's projection): the picked
pixels and their gradient put back against the naive loops (strides 2 and 3, cropping, float64
and float32), and a net with a projection against the padded
path, forward and every gradient."""
import numpy as np
import pytest

from slidenet import Net
from slidenet.ops import naive
from slidenet.ops.conv import picked
from slidenet.ops.sides import pad_sides, unpad_sides

RNG = np.random.default_rng(11)

# (N, H, W, D, K, stride, after): res18's projection (32 -> 16, the last row and column
# cropped); nothing cropped; an even row and column cropped, never picked; stride 3; unequal
# strides.
CASES = [(2, 8, 8, 16, 8, (2, 2), (-1, -1)), (2, 7, 9, 3, 5, (2, 2), (0, 0)),
         (2, 9, 9, 3, 4, (2, 2), (-2, -2)), (3, 11, 10, 4, 2, (3, 3), (-1, 0)),
         (1, 7, 9, 2, 3, (2, 3), (0, -2))]


@pytest.mark.parametrize("n, h, w, d, k, stride, after", CASES)
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 2e-6)])
def test_a_strided_1x1_conv_by_picked_pixels_is_the_lectures(n, h, w, d, k, stride, after,
                                                             dtype, tolerance):
    from slidenet import ops
    x = RNG.standard_normal((n, h, w, d)).astype(dtype)
    wt = RNG.standard_normal((1, 1, d, k)).astype(dtype)
    b = RNG.standard_normal(k).astype(dtype)
    assert picked.applies((1, 1), stride, (0, 0), after)
    cropped = pad_sides(x.astype(np.float64), (0, 0), after).copy()
    want = naive.conv_forward(cropped, wt.astype(np.float64), b.astype(np.float64), stride)
    p = picked.pick(x, stride, after)
    out, cache = ops.conv_forward(p, wt, b)
    np.testing.assert_allclose(out, want, rtol=0, atol=tolerance * np.abs(want).max())
    dout = RNG.standard_normal(want.shape)
    dcrop, dw_want, db_want = naive.conv_backward(dout, cropped, wt.astype(np.float64), stride)
    dx_want = unpad_sides(dcrop, (0, 0), after, x.shape).copy()
    dp, dw, db = ops.conv_backward(dout.astype(dtype), cache)
    dx = picked.put_back(dp, x.shape, stride, after)
    for got, exact in ((dx, dx_want), (dw, dw_want), (db, db_want)):
        np.testing.assert_allclose(got, exact, rtol=0, atol=tolerance * np.abs(exact).max())


def test_only_strided_unpadded_1x1_windows_are_picked():
    assert picked.applies((1, 1), (2, 2), (0, 0), (-1, -1))
    assert not picked.applies((1, 1), (1, 1), (0, 0), (0, 0))
    assert not picked.applies((1, 1), (2, 2), (1, 1), (0, 0))
    assert not picked.applies((1, 1), (2, 2), (0, 0), (1, 0))
    assert not picked.applies((3, 3), (2, 2), (0, 0), (0, 0))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_projection_trains_as_the_padded_path(dtype, monkeypatch):
    pattern = ("INPUT(9x9x4) -> { CONV(6, s=2, p=1, round=down) -> RELU | "
               "CONV(6, 1x1, s=2, round=down) } -> ADD -> RELU -> FC(3)")
    x = RNG.standard_normal((4, 9, 9, 4)).astype(dtype)
    results = []
    for on in (True, False):
        if not on:
            monkeypatch.setattr(picked, "applies", lambda *args: False)
        net = Net.from_pattern(pattern, dtype=dtype, seed=2)
        assert any(getattr(layer, "picks", False) for layer in net.every_layer()) == on
        out = net.forward(x, True).copy()
        dx = net.backward(np.ones_like(out)).copy()
        results.append((out, dx, {k: g.copy() for k, g in net.grads.items()}))
    (out, dx, grads), (out2, dx2, grads2) = results
    # The same products and sums in the same order: bit for bit.
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(dx, dx2)
    for name in grads:
        np.testing.assert_array_equal(grads[name], grads2[name])
