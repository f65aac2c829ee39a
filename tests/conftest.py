"""The fixtures every test module may take; what they are made of is in helpers.py.

    npz_data    a fresh `.npz` data set of 8x8 bars (180 training, 60 test images): its spec
"""
import pytest

from helpers import write_bars


@pytest.fixture
def npz_data(tmp_path):
    return write_bars(tmp_path / "bars.npz", 180)
