"""A random generator's exact state as a uint8 array, so model files can resume it bit for bit.

A PCG64 state holds 128-bit integers, which no NumPy dtype holds; its JSON text does.
"""
import json

import numpy as np


def state_array(rng):
    """The state of `rng` (a numpy Generator) as JSON text in a uint8 array."""
    return np.frombuffer(json.dumps(rng.bit_generator.state).encode(), dtype=np.uint8)


def restore(rng, array):
    """Put `rng` back into the state `state_array` saved (raises ValueError if it is not one)."""
    rng.bit_generator.state = json.loads(bytes(array).decode())
