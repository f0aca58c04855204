"""Random JSON scalars for the tests that compare a decoder's fast path with its checked path."""

import random
from collections.abc import Sequence
from typing import Any


def mixed_scalar(rng: random.Random, odd: Sequence[Any]) -> Any:
    """Mostly numbers a tensor may hold (floats 45 %, small integers 35 %), else one of `odd`: values the
    decoders must refuse or treat with care (huge integers, strings, null, nested lists, ...)."""
    roll = rng.random()
    if roll < 0.45:
        return rng.uniform(-1e3, 1e3)
    if roll < 0.8:
        return rng.randint(-300, 300)
    return rng.choice(list(odd))
