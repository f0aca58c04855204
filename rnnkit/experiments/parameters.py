"""Parameter budgets: how many weights a one-layer recurrent classifier has, and the units that
give each cell (or direction setting) the same count.

The model is ``ModelSpec(cell, units, layers=1)`` (Masking -> one recurrent layer -> Dense head);
its weights, with D input features, H units and C outputs:

| cell | recurrent weights per direction |
|---|---|
| ``simple`` | kernel D·H + recurrent H·H + bias H |
| ``gru`` (``reset_after=True``) | 3·(D·H + H·H) + bias 2·3H |
| ``lstm`` | 4·(D·H + H·H) + bias 4H |

plus the head, (directions·H)·C + C.
"""

from __future__ import annotations

from collections.abc import Callable

GATE_COUNT = {"simple": 1, "gru": 3, "lstm": 4}


def count_parameters(cell: str, units: int, features: int, outputs: int, *, bidirectional: bool = False) -> int:
    """Weights of ``ModelSpec(cell, units, layers=1, bidirectional)`` on ``features`` inputs with
    an ``outputs``-wide Dense head (checked against Keras's own count in the tests)."""
    if cell not in GATE_COUNT:
        raise ValueError(f"Argument `cell` must be one of {tuple(GATE_COUNT)}. Received: cell={cell!r}")
    gates = GATE_COUNT[cell]
    bias = 2 * gates * units if cell == "gru" else gates * units
    directions = 2 if bidirectional else 1
    recurrent = directions * (gates * (features * units + units * units) + bias)
    return recurrent + directions * units * outputs + outputs


def match_units(count: Callable[[int], int], budget: int, max_units: int = 4096) -> int:
    """The units whose ``count(units)`` is closest to ``budget`` (counts grow with units; ties
    go to the smaller model)."""
    if budget < count(1):
        raise ValueError(f"Argument `budget` ({budget}) is below the smallest model ({count(1)} parameters).")
    best = 1
    for units in range(1, max_units + 1):
        if abs(count(units) - budget) < abs(count(best) - budget):
            best = units
        if count(units) > budget:
            break
    return best


def budget_mismatch(count: int, budget: int) -> float:
    """Relative gap |count - budget| / budget."""
    return abs(count - budget) / budget
