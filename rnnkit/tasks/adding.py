"""The adding problem (Hochreiter & Schmidhuber, 1997)."""

from __future__ import annotations

import numpy as np

from rnnkit.tasks.task import check_positive_int, register_task

ADDING_TOLERANCE = 0.04  # the customary "solved" threshold on |prediction - target|


@register_task("adding", kind="regression", tolerance=ADDING_TOLERANCE)
def adding_problem(examples: int, seed=0, length: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of (value, marker) pairs; the target is the sum of the two marked values.

    x[:, t, 0] ~ U(0, 1); x[:, t, 1] is 1 at exactly two steps, one in the first half
    [0, length // 2) and one in the second half [length // 2, length), else 0.
    y = sum_t x[:, t, 0] * x[:, t, 1], in [0, 2]. The two marked values can be up to
    ``length - 1`` steps apart, so the answer needs memory over that lag.
    """
    examples = check_positive_int("examples", examples)
    length = check_positive_int("length", length, minimum=2)
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 1.0, size=(examples, length)).astype("float32")
    half = length // 2
    first = rng.integers(0, half, size=examples)
    second = rng.integers(half, length, size=examples)
    markers = np.zeros((examples, length), dtype="float32")
    rows = np.arange(examples)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1)
    y = (values[rows, first] + values[rows, second]).astype("float32")
    return x, y
