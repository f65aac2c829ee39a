"""ops.vdirect: a thin first layer's forward on 512-bit registers, against the lecture's loops.

The kernel is checked against `naive.conv_forward` (float64 loops) to float32 rounding on every
window the direct pair takes, strides 1 to 3, K from 16 to 128 filters (one to eight vectors,
blocks of 1, 2 and 4), widths that leave every tail of pixels, with and without the ReLU; then
for what callers rely on: each image the same bits alone as in a batch, a range of output rows
the same bits as the whole image's, NaN kept, nothing written outside out, and
`conv_forward_direct` taking it (and numba's kernel where it does not apply).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from slidenet.ops import compiled, naive, runtime, vdirect
from slidenet.ops.conv import direct

RNG = np.random.default_rng(24)
# Skipped only where the host cannot build it; where it can, a kernel that fails its own check at
# build (None) fails these tests.
needs_vdirect = pytest.mark.skipif(not vdirect._host(),
                                   reason="no llvmlite, no AVX-512F on this host, or SLIDENET_VGEMM=0")

# (H, W, D, F_h, F_w, S_h, S_w, P_h, P_w, K): R1's and res18's conv1, a grey one, 5x5 and 1x1
# windows, strides 2 and 3, odd widths (every tail of pixels), widths below one block.
GEOMETRIES = [
    (32, 32, 3, 3, 3, 1, 1, 1, 1, 32),
    (32, 32, 3, 3, 3, 1, 1, 1, 1, 16),
    (28, 28, 1, 3, 3, 1, 1, 1, 1, 16),
    (5, 31, 3, 3, 3, 1, 1, 1, 1, 16),      # 31 = 16 + 8 + 4 + 2 + 1: every block size
    (9, 23, 3, 3, 3, 1, 1, 1, 1, 64),
    (7, 13, 3, 3, 3, 2, 2, 1, 1, 48),
    (11, 19, 1, 5, 5, 1, 1, 2, 2, 32),
    (6, 5, 3, 1, 1, 1, 1, 0, 0, 128),
    (12, 18, 2, 3, 2, 3, 2, 0, 1, 16),
    (4, 3, 4, 2, 3, 1, 1, 1, 0, 96),
    (3, 1, 3, 3, 1, 1, 1, 1, 0, 16),
]


def padded(x, ph, pw):
    return np.ascontiguousarray(np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))))


def arrays(h, w, d, fh, fw, k, n):
    x = RNG.standard_normal((n, h, w, d)).astype(np.float32)
    wt = (RNG.standard_normal((fh, fw, d, k)) / np.sqrt(fh * fw * d)).astype(np.float32)
    return x, wt, RNG.standard_normal(k).astype(np.float32)


@needs_vdirect
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_matches_the_naive_loops(geometry, relu):
    h, w, d, fh, fw, sh, sw, ph, pw, k = geometry
    x, wt, b = arrays(h, w, d, fh, fw, k, n=3)
    want = naive.conv_forward(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64),
                              (sh, sw), (ph, pw))
    want = np.maximum(want, 0) if relu else want
    fn = vdirect.kernel(fh, fw, d, sh, sw, k)
    assert fn is not None, "the kernel failed its check at build"
    out = np.full((4, *want.shape[1:]), np.nan, np.float32)   # an image past the last: untouched
    vdirect.run(fn, padded(x, ph, pw), wt, b, relu, out[:3])
    np.testing.assert_allclose(out[:3], want, rtol=1e-5, atol=1e-5)
    assert np.isnan(out[3]).all()
    # Each image alone gives the same bits as in the batch.
    for i in range(3):
        one = np.empty_like(out[:1])
        vdirect.run(fn, padded(x[i:i + 1], ph, pw), wt, b, relu, one)
        np.testing.assert_array_equal(one, out[i:i + 1])
    # And any range of output rows (as a second thread would compute it), the same bits.
    ho = want.shape[1]
    for i0, i1 in ((0, ho // 2), (ho // 2, ho), (ho - 1, ho)):
        part = np.full_like(out[:1], np.nan)
        vdirect.run_rows(fn, padded(x[:1], ph, pw), wt, b, relu, part, i0, i1, sh)
        np.testing.assert_array_equal(part[0, i0:i1], out[0, i0:i1])
        assert np.isnan(part[0, :i0]).all() and np.isnan(part[0, i1:]).all()


@needs_vdirect
def test_nan_stays_nan_through_the_relu_and_infinity_spreads():
    x, wt, b = arrays(6, 20, 3, 3, 3, 32, n=1)
    x[0, 2, 5, 1] = np.nan
    x[0, 4, 15, 0] = np.inf
    fn = vdirect.kernel(3, 3, 3, 1, 1, 32)
    out = np.empty((1, 6, 20, 32), np.float32)
    vdirect.run(fn, padded(x, 1, 1), wt, b, True, out)
    with np.errstate(invalid="ignore"):
        want = np.maximum(naive.conv_forward(x.astype(np.float64), wt.astype(np.float64),
                                             b.astype(np.float64), (1, 1), (1, 1)), 0)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(want))
    assert np.isnan(out[0, 1:4, 4:7]).all()
    finite = np.isfinite(want)
    np.testing.assert_allclose(out[finite], want[finite], rtol=1e-5, atol=1e-5)


def test_no_kernel_for_filters_that_are_not_whole_vectors():
    assert [vdirect.vectors(k) for k in (0, 8, 15, 16, 24, 32, 48, 64, 96, 128)] == \
        [0, 0, 0, 1, 0, 2, 1, 4, 2, 4]
    assert vdirect.kernel(3, 3, 3, 1, 1, 24) is None


@pytest.mark.parametrize("switch", ["SLIDENET_VGEMM", "SLIDENET_VDIRECT"])
def test_the_environment_turns_it_off(switch):
    code = ("from slidenet.ops import vdirect\n"
            "print(vdirect.kernel(3, 3, 3, 1, 1, 32) is None)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, switch: "0"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]


@needs_vdirect
@pytest.mark.usefixtures("numba")
def test_compiled_code_calls_it_on_ranges_of_rows():
    # As a second thread's numba code would (pair.py's direct_rows): the entry address and the
    # arrays' addresses through the intrinsic, two halves of one image's rows, the whole
    # image's bits; and `caller()` (numba, whole images) the bits of `run` (ctypes).
    import numba
    fn = vdirect.kernel(3, 3, 3, 1, 1, 32)
    call_address = vdirect.call_address()
    entry = vdirect.address(fn)

    @numba.njit(nogil=True)
    def rows(xa, wa, ba, oa, hp, wp, d, wo, k, i0, i1, relu):
        call_address(entry, xa + i0 * wp * d * 4, wa, ba, oa + i0 * wo * k * 4, 1, hp, wp,
                     i1 - i0, wo, k, relu)

    x, wt, b = arrays(13, 21, 3, 3, 3, 32, n=1)
    xp = padded(x, 1, 1)
    whole = np.empty((1, 13, 21, 32), np.float32)
    vdirect.run(fn, xp, wt, b, True, whole)
    halves = np.full_like(whole, np.nan)
    for i0, i1 in ((0, 6), (6, 13)):
        rows(xp.ctypes.data, wt.ctypes.data, b.ctypes.data, halves.ctypes.data, 15, 23, 3, 21,
             32, i0, i1, 1)
    np.testing.assert_array_equal(halves, whole)
    again = np.full_like(whole, np.nan)
    vdirect.caller()(entry, xp, wt, b, again, True)
    np.testing.assert_array_equal(again, whole)


@needs_vdirect
@pytest.mark.usefixtures("numba")
@pytest.mark.parametrize("k, dtype, taken", [(32, np.float32, True), (16, np.float32, True),
                                             (24, np.float32, False), (32, np.float64, False)])
def test_the_direct_pair_takes_it_where_it_applies(monkeypatch, k, dtype, taken):
    # float32 and K a multiple of 16: the vector kernel; else numba's `direct_conv`. Both the
    # lecture's numbers, in chunks of one image and on two threads the same bits.
    calls = []
    real = vdirect.caller()
    monkeypatch.setattr(vdirect, "caller", lambda: lambda *a: calls.append(1) or real(*a))
    x, wt, b = (a.astype(dtype) for a in arrays(11, 14, 3, 3, 3, k, n=5))
    out, _ = direct.conv_forward_direct(x, wt, b, (1, 1), (1, 1), relu=True)
    assert bool(calls) == taken and out.dtype == dtype
    want = np.maximum(naive.conv_forward(x.astype(np.float64), wt.astype(np.float64),
                                         b.astype(np.float64), (1, 1), (1, 1)), 0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    previous = runtime.set_memory_budget(1)             # one image per chunk
    try:
        for workers in (1, 2):
            with runtime.workers(workers):
                again, _ = direct.conv_forward_direct(x, wt, b, (1, 1), (1, 1), relu=True)
            np.testing.assert_array_equal(again, out)
    finally:
        runtime.set_memory_budget(previous)
    assert compiled.kernels() is not None
