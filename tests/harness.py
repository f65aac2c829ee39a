"""One harness for every kernel test: `check_kernel` checks a forward/backward pair every way.

    check_kernel(lambda x, w, b: ops.conv_forward(x, w, b, (1, 1), (1, 1)),
                 ops.conv_backward,
                 {"x": x, "w": w, "b": b}, wrt=("x", "w", "b"),
                 naive=lambda x, w, b: naive.conv_forward(x, w, b, (1, 1), (1, 1)),
                 naive_backward=lambda dout, x, w, b: naive.conv_backward(dout, x, w, (1, 1), (1, 1)))

forward(**arrays) -> (out, cache); backward(dout, cache) -> one gradient per name in `wrt`
(a tuple, or one array when `wrt` has one name; None for a gradient not computed). The naive
versions are the lecture's loops (`slidenet.ops.naive`), the oracle. The checks:

    1. reference     float64 out and gradients equal the naive loops' (rtol, atol)
    2. finite diffs  each gradient against centred differences of sum(out * dout), with the
                     relative error of `slidenet gradcheck` (below its TOLERANCE)
    3. dtypes        float32 in, float32 out, and close to the float64 results
    4. chunks        one image per chunk (memory budget of 1 byte) equals the whole batch
    5. threads       2 worker threads give bit for bit what 1 gives
    6. compiled      with numba installed, the compiled passes give bit for bit (or, where
                     `compiled_exact=False`, to rounding) what the NumPy path gives

Any check can be switched off for a kernel it does not apply to (a kink at random points,
a kernel with no batch axis), with the reason in the test.

`CONV_GEOMETRIES` and `conv_arrays` are the convolutions every convolution test runs (the pairs
in test_kernels.py, the thin first layers in test_thin.py); `conv3x3_arrays`, a 3x3 CONV's
arrays for the Winograd schemes' own tests.
"""
import subprocess
import sys

import numpy as np

from helpers import numba_problem, require, skipping
from slidenet.gradcheck import TOLERANCE, numeric_gradient, relative_error, sample
from slidenet.ops import compiled, runtime


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
    # Winograd's F(2, 3): a 3-tall filter at stride 1; even and odd output heights, padding 0
    # to 2 (the widest a full-convolution dx allows), filters 1, 2, 3 and 5 wide.
    (8, 8, 2, 3, 3, 1, 1, 1, 1, 3),     # even output height
    (5, 5, 2, 3, 3, 1, 1, 0, 0, 4),     # no padding: 3x3 output
    (4, 4, 1, 3, 3, 1, 1, 2, 2, 1),     # padding 2: 6x6 output
    (8, 7, 3, 3, 2, 1, 1, 2, 1, 3),     # a 3x2 filter, per-axis padding
    (5, 9, 2, 3, 5, 1, 1, 1, 2, 2),     # a 3x5 filter on a wide input
    (3, 3, 2, 3, 3, 1, 1, 0, 0, 2),     # a single output row
    (6, 7, 6, 3, 3, 1, 1, 1, 1, 3),     # deeper than im2col.THIN_DEPTH: NumPy copies the rows
    # F(4, 3) covers 4 rows a tile: every output height mod 4 above (8: 0, 5: 1, 6 and 10: 2,
    # 3: 3), plus 2, 7 and 11 rows and a 3x1 filter; 1-3 rows are a single part-filled tile.
    (4, 6, 2, 3, 3, 1, 1, 0, 1, 3),     # two output rows
    (7, 5, 3, 3, 3, 1, 1, 1, 1, 2),     # 7 rows: one whole tile and one of 3
    (11, 4, 2, 3, 1, 1, 1, 1, 0, 2),    # a 3x1 filter, 11 rows
    # F(4x4, 3x3) tiles the width too: 9 x 10 outputs are 3 x 3 tiles, the last ones cut
    # both ways (the rows above already give widths 1, 2, 3, 5, 6, 7 and 8).
    (9, 10, 2, 3, 3, 1, 1, 1, 1, 3),
]




def conv_arrays(h, w, d, fh, fw, k, n=3, seed=1234):
    """x (n, h, w, d), w (fh, fw, d, k), b (k,): standard normal float64, from `seed`."""
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, h, w, d)), "w": rng.standard_normal((fh, fw, d, k)),
            "b": rng.standard_normal(k)}


def conv3x3_arrays(rng, n, h, w, d, k, dtype):
    """x (n, h, w, d), 3x3 filters (3, 3, d, k) and a bias (k,) of `rng`'s standard normal, in
    dtype: a 3x3 CONV's arrays for the Winograd schemes' tests."""
    x = rng.standard_normal((n, h, w, d)).astype(dtype)
    wt = rng.standard_normal((3, 3, d, k)).astype(dtype)
    return x, wt, rng.standard_normal(k).astype(dtype)


def _grads(result, wrt):
    return (result,) if len(wrt) == 1 and not isinstance(result, tuple) else tuple(result)


def _run(forward, backward, arrays, wrt, dout):
    out, cache = forward(**arrays)
    out = np.array(out, copy=True)        # results may be recycled memory: keep copies
    grads = _grads(backward(dout.astype(out.dtype, copy=False), cache), wrt)
    return out, tuple(None if g is None else np.array(g, copy=True) for g in grads)


def _same(got, want, exact, rtol=1e-12, atol=1e-12, what="", scaled=False):
    """scaled: atol is relative to each result's largest magnitude (at least 1)."""
    for i, (g, w) in enumerate(zip(got, want)):
        if g is None or w is None:
            assert g is None and w is None, f"{what}: result {i} is missing on one side"
        elif exact:
            np.testing.assert_array_equal(g, w, err_msg=f"{what}: result {i}")
        else:
            scale = max(1.0, float(np.abs(w).max())) if scaled and w.size else 1.0
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol * scale,
                                       err_msg=f"{what}: result {i}")


def check_kernel(forward, backward, arrays, wrt, *, naive=None, naive_backward=None,
                 rtol=1e-10, atol=1e-10, dout=None, fd=True, fd_samples=24, dtypes=True,
                 chunks=True, threads=True, compiled_check=True, compiled_exact=True, seed=0):
    """Run the checks of the module docstring on one forward/backward pair.

    arrays: the float64 inputs by name (not modified). dout: the upstream gradient (default:
    standard normal of out's shape). Returns the float64 (out, grads).
    """
    rng = np.random.default_rng(seed)
    arrays = {name: np.array(a, dtype=np.float64) for name, a in arrays.items()}
    out, cache = forward(**arrays)
    if dout is None:
        dout = rng.standard_normal(out.shape)
    del cache
    out, grads = _run(forward, backward, arrays, wrt, dout)

    if naive is not None:
        np.testing.assert_allclose(out, naive(**arrays), rtol=rtol, atol=atol,
                                   err_msg="forward against the naive loops")
    if naive_backward is not None:
        want = _grads(naive_backward(dout, **arrays), wrt)
        _same(grads, want, False, rtol, atol, "backward against the naive loops")

    if fd:
        for name, grad in zip(wrt, grads):
            if grad is None:
                continue
            array = {k: v.copy() for k, v in arrays.items()}

            def loss():
                return float(np.sum(forward(**array)[0] * dout))
            picks = sample(array[name].size, fd_samples, rng)
            numeric = numeric_gradient(loss, array[name], picks)
            error = relative_error(grad.reshape(-1)[picks], numeric)
            assert error < TOLERANCE, f"d/d{name}: finite differences disagree ({error:.2e})"

    if dtypes:
        single = {k: v.astype(np.float32) for k, v in arrays.items()}
        out32, grads32 = _run(forward, backward, single, wrt, dout.astype(np.float32))
        assert out32.dtype == np.float32, f"float32 in, {out32.dtype} out"
        scale = max(1.0, float(np.abs(out).max()))
        np.testing.assert_allclose(out32, out, rtol=1e-4, atol=1e-5 * scale)
        for name, g32, g64 in zip(wrt, grads32, grads):
            if g64 is not None:
                assert g32.dtype == np.float32, f"d/d{name} is {g32.dtype} in float32"
                scale = max(1.0, float(np.abs(g64).max()))
                np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-4 * scale,
                                           err_msg=f"d/d{name} in float32")

    if chunks or threads:
        previous = runtime.set_memory_budget(1)         # one image per chunk
        try:
            with runtime.workers(1):                    # the default is one per core
                one = _run(forward, backward, arrays, wrt, dout)
            if chunks:
                _same((one[0], *one[1]), (out, *grads), False, what="one image per chunk")
            if threads:
                with runtime.workers(2):
                    two = _run(forward, backward, arrays, wrt, dout)
                _same((two[0], *two[1]), (one[0], *one[1]), True, what="2 threads against 1")
        finally:
            runtime.set_memory_budget(previous)

    # numba's check follows the rule for every optional part (helpers.require): without numba
    # it fails, unless SLIDENET_SKIP_NUMBA=1 leaves it out (never in CI).
    if compiled_check and out.dtype in (np.float32, np.float64) and not skipping("NUMBA"):
        require("NUMBA", numba_problem())
        for dtype in (np.float64, np.float32) if dtypes else (np.float64,):
            typed = {k: v.astype(dtype) for k, v in arrays.items()}
            fast = _run(forward, backward, typed, wrt, dout.astype(dtype))
            previous = compiled.set_enabled(False)
            try:
                plain = _run(forward, backward, typed, wrt, dout.astype(dtype))
            finally:
                compiled.set_enabled(previous)
            # Not exact: another order of summation, so a few units in the last place of each
            # result's largest numbers (float32's last place is ~1e-7 of them, float64's 1e-16).
            tolerance = (1e-5, 1e-5) if dtype == np.float32 else (1e-6, 1e-7)
            _same((fast[0], *fast[1]), (plain[0], *plain[1]), compiled_exact, *tolerance,
                  what=f"compiled against NumPy, {np.dtype(dtype).name}", scaled=True)
    return out, grads


def without_numba(code):
    """The standard output of `code` run in a fresh interpreter where numba cannot be imported
    (the NumPy-only path a user without the `fast` extra gets); fails the test if it fails."""
    done = subprocess.run([sys.executable, "-c", "import sys; sys.modules['numba'] = None\n" + code],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout
