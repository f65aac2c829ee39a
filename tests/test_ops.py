"""Fast kernels against the lecture's naive loops, and every backward against finite differences."""
import numpy as np
import pytest

from slidenet import ops
from slidenet.errors import GeometryError
from slidenet.ops import naive

RNG = np.random.default_rng(1234)


def numeric_grad(f, x, dout, h=1e-5):
    """d sum(f(x) * dout) / dx by centred differences, one entry at a time (float64)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + h
        up = np.sum(f(x) * dout)
        flat[i] = saved - h
        down = np.sum(f(x) * dout)
        flat[i] = saved
        gflat[i] = (up - down) / (2 * h)
    return grad


def rel_err(a, b):
    """Norm-wise relative error: elementwise ratios blow up on entries that are nearly 0."""
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-12)


# (H, W, D, F_h, F_w, S_h, S_w, P_h, P_w, K): stride != filter, odd and non-square inputs,
# per-axis filters/strides/padding, 1x1, padding larger than needed.
CONV_GEOMETRIES = [
    (7, 7, 3, 3, 3, 1, 1, 0, 0, 2),     # the lecture's 7x7 / 3x3 / stride 1 -> 5x5
    (7, 7, 3, 3, 3, 2, 2, 0, 0, 2),     # stride 2 -> 3x3
    (7, 7, 1, 3, 3, 1, 1, 1, 1, 2),     # padding 1 keeps 7x7
    (9, 7, 2, 3, 3, 2, 2, 1, 1, 3),     # odd, non-square, stride 2 with padding
    (6, 5, 2, 3, 1, 1, 1, 1, 0, 2),     # 3x1 filter, p=1x0
    (8, 9, 2, 2, 3, 2, 3, 0, 0, 3),     # per-axis filter and stride
    (5, 6, 4, 1, 1, 1, 1, 0, 0, 3),     # 1x1 convolution
    (5, 5, 2, 5, 5, 1, 1, 2, 2, 2),     # 5x5 with p=2 keeps the size
    (4, 4, 1, 2, 2, 1, 1, 3, 3, 1),     # padding larger than needed
    (11, 11, 3, 5, 5, 3, 3, 0, 0, 4),   # stride different from the filter
]


@pytest.mark.parametrize("h,w,d,fh,fw,sh,sw,ph,pw,k", CONV_GEOMETRIES)
def test_conv_matches_naive(h, w, d, fh, fw, sh, sw, ph, pw, k):
    x = RNG.standard_normal((2, h, w, d))
    wt = RNG.standard_normal((fh, fw, d, k))
    b = RNG.standard_normal(k)
    out, cache = ops.conv_forward(x, wt, b, (sh, sw), (ph, pw))
    expected = naive.conv_forward(x, wt, b, (sh, sw), (ph, pw))
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)
    dout = RNG.standard_normal(out.shape)
    dx, dw, db = ops.conv_backward(dout, cache)
    ndx, ndw, ndb = naive.conv_backward(dout, x, wt, (sh, sw), (ph, pw))
    np.testing.assert_allclose(dx, ndx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, ndw, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, ndb, rtol=1e-10, atol=1e-10)


def test_conv_chunked_equals_unchunked():
    x = RNG.standard_normal((5, 9, 9, 3))
    wt = RNG.standard_normal((3, 3, 3, 4))
    b = RNG.standard_normal(4)
    whole, cw = ops.conv_forward(x, wt, b, (2, 2), (1, 1))
    # A budget of one byte forces one image per chunk.
    chunked, cc = ops.conv_forward(x, wt, b, (2, 2), (1, 1), budget=1)
    np.testing.assert_allclose(chunked, whole, rtol=1e-12)
    dout = RNG.standard_normal(whole.shape)
    for g1, g2 in zip(ops.conv_backward(dout, cw), ops.conv_backward(dout, cc)):
        np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-12)


def test_conv_finite_differences():
    x = RNG.standard_normal((2, 7, 5, 2))
    wt = RNG.standard_normal((3, 2, 2, 3))
    b = RNG.standard_normal(3)
    stride, pad = (2, 1), (1, 1)
    out, cache = ops.conv_forward(x, wt, b, stride, pad)
    dout = RNG.standard_normal(out.shape)
    dx, dw, db = ops.conv_backward(dout, cache)
    assert rel_err(dx, numeric_grad(lambda v: ops.conv_forward(v, wt, b, stride, pad)[0], x, dout)) < 1e-7
    assert rel_err(dw, numeric_grad(lambda v: ops.conv_forward(x, v, b, stride, pad)[0], wt, dout)) < 1e-7
    assert rel_err(db, numeric_grad(lambda v: ops.conv_forward(x, wt, v, stride, pad)[0], b, dout)) < 1e-7


def test_conv_lecture_shapes():
    # 32x32x3 with ten 5x5 filters, stride 1, pad 2 -> 32x32x10; 32 1x1 filters on 56x56x64.
    out, _ = ops.conv_forward(np.zeros((1, 32, 32, 3)), np.zeros((5, 5, 3, 10)), np.zeros(10), (1, 1), (2, 2))
    assert out.shape == (1, 32, 32, 10)
    out, _ = ops.conv_forward(np.zeros((1, 56, 56, 64)), np.zeros((1, 1, 64, 32)), np.zeros(32))
    assert out.shape == (1, 56, 56, 32)


def test_conv_stride_that_does_not_fit_teaches():
    with pytest.raises(GeometryError, match=r"\(7 - 3\) / 3 \+ 1 = 2\.33"):
        ops.conv_forward(np.zeros((1, 7, 7, 1)), np.zeros((3, 3, 1, 1)), np.zeros(1), (3, 3))


def test_conv_keeps_float32():
    x = RNG.standard_normal((2, 6, 6, 3)).astype(np.float32)
    wt = RNG.standard_normal((3, 3, 3, 4)).astype(np.float32)
    out, cache = ops.conv_forward(x, wt, np.zeros(4, np.float32), (1, 1), (1, 1))
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in ops.conv_backward(np.ones_like(out), cache))


# (H, W, D, F_h, F_w, S_h, S_w): tiling, overlapping (3x3 s=2), odd sizes, per-axis values.
POOL_GEOMETRIES = [
    (8, 8, 3, 2, 2, 2, 2),
    (7, 7, 2, 3, 3, 2, 2),
    (9, 7, 2, 3, 3, 1, 1),
    (6, 9, 1, 2, 3, 2, 3),
    (7, 6, 2, 3, 2, 2, 1),
    (5, 5, 1, 5, 5, 1, 1),
]


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("h,w,d,fh,fw,sh,sw", POOL_GEOMETRIES)
def test_pool_matches_naive(mode, h, w, d, fh, fw, sh, sw):
    x = RNG.standard_normal((2, h, w, d))
    out, cache = ops.pool_forward(x, (fh, fw), (sh, sw), mode)
    np.testing.assert_allclose(out, naive.pool_forward(x, (fh, fw), (sh, sw), mode), rtol=1e-12)
    dout = RNG.standard_normal(out.shape)
    np.testing.assert_allclose(ops.pool_backward(dout, cache),
                               naive.pool_backward(dout, x, (fh, fw), (sh, sw), mode), rtol=1e-12, atol=1e-12)


def test_maxpool_ties_follow_the_naive_rule():
    # After a ReLU, whole windows are zero: the gradient must go to exactly one entry.
    x = np.zeros((1, 4, 4, 1))
    x[0, 1, 1, 0] = 0.0
    out, cache = ops.pool_forward(x, (2, 2), (2, 2))
    dout = np.ones_like(out)
    dx = ops.pool_backward(dout, cache)
    np.testing.assert_array_equal(dx, naive.pool_backward(dout, x, (2, 2), (2, 2)))
    assert dx.sum() == out.size


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool_finite_differences(mode):
    x = RNG.standard_normal((2, 7, 7, 2))
    out, cache = ops.pool_forward(x, (3, 3), (2, 2), mode)
    dout = RNG.standard_normal(out.shape)
    num = numeric_grad(lambda v: ops.pool_forward(v, (3, 3), (2, 2), mode)[0], x, dout)
    assert rel_err(ops.pool_backward(dout, cache), num) < 1e-7


def test_pool_lecture_example():
    out, _ = ops.pool_forward(np.zeros((1, 224, 224, 64), np.float32), (2, 2), (2, 2))
    assert out.shape == (1, 112, 112, 64)
    # The lecture's 4x4 single depth slice, max pool 2x2 stride 2 -> [[6, 8], [3, 4]].
    x = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]], float).reshape(1, 4, 4, 1)
    out, _ = ops.pool_forward(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(out[0, :, :, 0], [[6, 8], [3, 4]])


def test_fc_matches_naive_and_flattens_hwd():
    x = RNG.standard_normal((3, 4, 5, 2))
    w = RNG.standard_normal((40, 6))
    b = RNG.standard_normal(6)
    out, cache = ops.fc_forward(x, w, b)
    np.testing.assert_allclose(out, naive.fc_forward(x, w, b), rtol=1e-12)
    # (height, width, depth) order: input [h, w, d] meets weight row h*W*D + w*D + d.
    assert np.isclose(out[0, 0] - b[0], sum(x[0, i, j, c] * w[i * 10 + j * 2 + c, 0]
                                            for i in range(4) for j in range(5) for c in range(2)))
    dout = RNG.standard_normal(out.shape)
    dx, dw, db = ops.fc_backward(dout, cache)
    assert rel_err(dx, numeric_grad(lambda v: ops.fc_forward(v, w, b)[0], x, dout)) < 1e-7
    assert rel_err(dw, numeric_grad(lambda v: ops.fc_forward(x, v, b)[0], w, dout)) < 1e-7
    assert rel_err(db, numeric_grad(lambda v: ops.fc_forward(x, w, v)[0], b, dout)) < 1e-7


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "tanh", "sigmoid"])
def test_activation_finite_differences(name):
    x = RNG.standard_normal((3, 4, 2))
    x[np.abs(x) < 1e-3] = 0.5          # keep clear of the kink at 0
    fwd, bwd = getattr(ops, f"{name}_forward"), getattr(ops, f"{name}_backward")
    out, cache = fwd(x)
    dout = RNG.standard_normal(out.shape)
    assert rel_err(bwd(dout, cache), numeric_grad(lambda v: fwd(v)[0], x, dout)) < 1e-7


def test_activation_values():
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(ops.relu_forward(x)[0], [0, 0, 3])
    np.testing.assert_allclose(ops.leaky_relu_forward(x, 0.1)[0], [-0.2, 0, 3])
    np.testing.assert_allclose(ops.sigmoid_forward(np.array([0.0, 1000.0, -1000.0]))[0], [0.5, 1, 0])


def test_dropout_is_inverted_and_identity_at_test_time():
    x = np.ones((200, 50))
    rng = np.random.default_rng(0)
    out, mask = ops.dropout_forward(x, 0.3, rng, train=True)
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(out[kept], 1 / 0.7)
    dout = RNG.standard_normal(x.shape)
    np.testing.assert_array_equal(ops.dropout_backward(dout, mask), dout * mask)
    same, none = ops.dropout_forward(x, 0.3, rng, train=False)
    assert same is x and none is None


@pytest.mark.parametrize("shape", [(4, 3, 3, 2), (6, 5)])
def test_batchnorm_finite_differences(shape):
    x = RNG.standard_normal(shape) * 3 + 1
    d = shape[-1]
    gamma, beta = RNG.standard_normal(d), RNG.standard_normal(d)

    def f(v, g=gamma, bt=beta):
        return ops.batchnorm_forward(v, g, bt, np.zeros(d), np.ones(d), train=True)[0]

    out, cache = ops.batchnorm_forward(x, gamma, beta, np.zeros(d), np.ones(d), train=True)
    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(((out - beta) / gamma).mean(axis=axes), 0, atol=1e-10)
    dout = RNG.standard_normal(out.shape)
    dx, dgamma, dbeta = ops.batchnorm_backward(dout, cache)
    assert rel_err(dx, numeric_grad(f, x, dout)) < 1e-6
    assert rel_err(dgamma, numeric_grad(lambda g: f(x, g, beta), gamma.copy(), dout)) < 1e-6
    assert rel_err(dbeta, numeric_grad(lambda bt: f(x, gamma, bt), beta.copy(), dout)) < 1e-6


def test_batchnorm_running_statistics():
    x = RNG.standard_normal((50, 4)) * 2 + 3
    rm, rv = np.zeros(4), np.ones(4)
    ops.batchnorm_forward(x, np.ones(4), np.zeros(4), rm, rv, train=True, momentum=0.9)
    np.testing.assert_allclose(rm, 0.1 * x.mean(axis=0))
    np.testing.assert_allclose(rv, 0.9 + 0.1 * x.var(axis=0))
    out, _ = ops.batchnorm_forward(x, np.ones(4), np.zeros(4), rm, rv, train=False)
    np.testing.assert_allclose(out, (x - rm) / np.sqrt(rv + 1e-5))


def test_softmax_loss_known_value_and_gradient():
    # Equal scores over C classes: the loss is log(C).
    loss, _ = ops.softmax_loss(np.zeros((4, 10)), np.array([0, 1, 2, 3]))
    assert np.isclose(loss, np.log(10))
    scores = RNG.standard_normal((5, 4))
    y = np.array([0, 3, 1, 1, 2])
    _, ds = ops.softmax_loss(scores, y)
    num = numeric_grad(lambda s: np.array(ops.softmax_loss(s, y)[0]), scores, np.array(1.0))
    assert rel_err(ds, num) < 1e-7


def test_svm_loss_known_value_and_gradient():
    # The cs231n example: scores (3.2, 5.1, -1.7) for a cat -> max(0, 5.1-3.2+1) + max(0, -1.7-3.2+1) = 2.9.
    loss, _ = ops.svm_loss(np.array([[3.2, 5.1, -1.7]]), np.array([0]))
    assert np.isclose(loss, 2.9)
    scores = RNG.standard_normal((6, 5))
    y = np.array([0, 4, 1, 1, 2, 3])
    _, ds = ops.svm_loss(scores, y)
    num = numeric_grad(lambda s: np.array(ops.svm_loss(s, y)[0]), scores, np.array(1.0))
    assert rel_err(ds, num) < 1e-6
