"""Check backprop against centred finite differences, for the input and every parameter.

The loss is a fixed random projection of the scores, L = sum(scores * R), so dL/dscores = R and
every layer's backward is exercised without a loss function's own kinks. Each checked number
compares the analytic derivative a with (L(v + h) - L(v - h)) / 2h = n as
|a - n| / max(|a|, |n|, floor). The floor (1e-3) keeps derivatives that are truly zero (a conv
bias just before BATCHNORM) from dividing rounding noise (~1e-10) by nothing: below it the
check is absolute, |a - n| < 1e-9.
"""
import numpy as np

from slidenet.net import Net

TOLERANCE = 1e-6


def relative_error(a, n, floor=1e-3):
    """The largest |a - n| / max(|a|, |n|, floor) over the entries of a and n (see above).

    The one error formula of every gradient check: `slidenet gradcheck` and the kernel tests.
    """
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)))


def numeric_gradient(loss, array, picks, h=1e-5):
    """Centred differences (loss(v + h) - loss(v - h)) / 2h of the scalar loss() with respect
    to the entries `picks` of `array` (flat indices), each nudged in place and restored."""
    flat = array.reshape(-1)
    numeric = np.empty(len(picks))
    for slot, i in enumerate(picks):
        saved = flat[i]
        flat[i] = saved + h
        up = loss()
        flat[i] = saved - h
        down = loss()
        flat[i] = saved
        numeric[slot] = (up - down) / (2 * h)
    return numeric


def sample(size, samples, rng):
    """Flat indices to check: all of them for a small array, else `samples` distinct ones."""
    return np.arange(size) if size <= samples else rng.choice(size, samples, replace=False)


def check_net(net, batch=2, samples=40, h=1e-5, seed=0):
    """Largest relative error for the input ("input") and each parameter name, as a dict.

    Up to `samples` randomly chosen entries of each array are checked (all of them when the
    array is smaller). The net should be float64 for the result to be meaningful.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *net.input_shape))
    projection = rng.standard_normal((batch, net.num_outputs))
    dropout_state = net.dropout_rng.bit_generator.state

    def loss():
        # The same dropout masks on every evaluation, so the loss is one smooth function.
        net.dropout_rng.bit_generator.state = dropout_state
        return float(np.sum(net.forward(x, train=True) * projection))

    loss()
    dx = net.backward(projection).copy()
    analytic = {"input": dx, **{name: g.copy() for name, g in net.grads.items()}}
    arrays = {"input": x, **net.params}

    errors = {}
    for name, array in arrays.items():
        picks = sample(array.size, samples, rng)
        numeric = numeric_gradient(loss, array, picks, h)
        errors[name] = relative_error(analytic[name].reshape(-1)[picks], numeric)
    return errors


def check_pattern(pattern, skip_optional=False, seed=0, **variables):
    """Build the pattern in float64 and return `check_net`'s errors."""
    net = Net.from_pattern(pattern, seed=seed, dtype="float64", skip_optional=skip_optional, **variables)
    return check_net(net, seed=seed)
