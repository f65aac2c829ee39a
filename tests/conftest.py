"""The fixtures every test module may take; what they are made of is in helpers.py.

    npz_data    a fresh `.npz` data set of 8x8 bars (180 training, 60 test images): its spec
    numba       the compiled kernels; a test that takes it fails without numba (skips under
                SLIDENET_SKIP_NUMBA=1, never in CI: helpers.require)
"""
import pytest

from helpers import numba_problem, require, write_bars


@pytest.fixture
def npz_data(tmp_path):
    return write_bars(tmp_path / "bars.npz", 180)


@pytest.fixture
def numba():
    require("NUMBA", numba_problem())
    from slidenet.ops import compiled
    return compiled.kernels()
