"""Per-side padding and cropping (`ops.sides`) and the Winograd filter transforms
(`conv.common.transformed`): both now write into recycled memory, which holds whatever an
earlier result left there, so every number of their results must be written by them."""
import numpy as np
import pytest

from slidenet.ops import runtime
from slidenet.ops.conv.common import transformed
from slidenet.ops.conv.winograd_f43 import F43
from slidenet.ops.conv.winograd_f44 import GG
from slidenet.ops.sides import pad_sides, unpad_sides

RNG = np.random.default_rng(7)


def _poison(shape, dtype):
    """Leave NaNs in the recycled memory that the next result of `shape` will get."""
    runtime.set_recycle_limit(None)
    garbage = runtime.empty(shape, dtype)
    garbage[...] = np.nan
    del garbage


@pytest.mark.parametrize("before,after", [((1, 1), (0, 0)), ((1, 2), (1, -1)), ((0, 0), (-1, -1)),
                                          ((2, 0), (0, 3))])
@pytest.mark.parametrize("value", [0.0, -np.inf])
def test_pad_sides_is_numpy_pad_and_crop(before, after, value):
    x = RNG.standard_normal((8, 33, 34, 16)).astype(np.float32)     # > 1 MiB: recycled
    (bh, bw), (ah, aw) = before, after
    cropped = x[:, :x.shape[1] + min(ah, 0), :x.shape[2] + min(aw, 0)]
    expected = np.pad(cropped, ((0, 0), (bh, max(ah, 0)), (bw, max(aw, 0)), (0, 0)),
                      constant_values=value)
    _poison(expected.shape, x.dtype)
    np.testing.assert_array_equal(pad_sides(x, before, after, value), expected)


@pytest.mark.parametrize("before,after", [((1, 1), (0, 0)), ((1, 2), (1, -1)), ((0, 0), (-1, -1))])
def test_unpad_sides_is_the_adjoint_of_pad_sides(before, after):
    shape = (8, 33, 34, 16)
    x = RNG.standard_normal(shape).astype(np.float64)
    dxp = RNG.standard_normal(pad_sides(x, before, after).shape).astype(np.float64)
    _poison(shape, np.float64)
    dx = unpad_sides(dxp, before, after, shape)
    # <pad(x), dxp> = <x, unpad(dxp)> for every x: the definition of the adjoint, and the
    # cropped cells (no window read them) must get exactly zero.
    assert np.isclose(np.vdot(pad_sides(x, before, after), dxp), np.vdot(x, dx), rtol=1e-12)
    (ah, aw) = after
    if ah < 0:
        assert not dx[:, ah:].any()
    if aw < 0:
        assert not dx[:, :, aw:].any()
    # With a skip: dx + skip, the same bits as adding it after.
    skip = RNG.standard_normal(shape)
    _poison(shape, np.float64)
    np.testing.assert_array_equal(unpad_sides(dxp, before, after, shape, skip), dx + skip)


@pytest.mark.parametrize("transform,rows", [(F43.G, 3), (GG, 9), (GG.T, 36)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transformed_is_the_float64_product_rounded_once(transform, rows, dtype):
    w = RNG.standard_normal((rows, 64, 128)).astype(dtype)
    flipped = w[::-1].transpose(0, 2, 1)                  # any layout, read in C order
    for operand in (w, flipped):
        _poison((transform.shape[0], *operand.shape[1:]), dtype)
        got = transformed(transform, operand, (transform.shape[0], *operand.shape[1:]), dtype)
        # The oracle: a plain loop over the rows of the transform, in float64.
        exact = np.zeros((transform.shape[0], operand[0].size))
        for a in range(transform.shape[0]):
            for i in range(transform.shape[1]):
                exact[a] += transform[a, i] * operand[i].astype(np.float64).ravel()
        assert got.dtype == dtype
        np.testing.assert_allclose(got.reshape(exact.shape), exact.astype(dtype),
                                   rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-12)
