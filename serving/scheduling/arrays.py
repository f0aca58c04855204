"""Row and time-axis helpers for batching, as pure functions on arrays (no threads, no runtime).

A batch is built from requests that share every non-batch dim, except that requests of a
zero-padding-invariant model may differ in length: those are right-padded with zeros along
axis 1 (the time axis) to the longest in the batch, and their sequence outputs are sliced back
to each request's own length. ``allowed_batch_sizes`` may add all-zero filler rows, which
:func:`split_rows` drops.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np


def pad_steps(array: np.ndarray, steps: int) -> np.ndarray:
    """`array` (batch x time x ...) right-padded with zeros to `steps` time steps."""
    if array.shape[1] >= steps:
        return array
    width = [(0, 0), (0, steps - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, width)


def merge_rows(
    requests: Sequence[Mapping[str, np.ndarray]],
    timed: Collection[str] = (),
    steps: int | None = None,
    rows: int | None = None,
) -> dict[str, np.ndarray]:
    """One batch from several requests' inputs, concatenated along axis 0 in request order.

    `steps`: pad the `timed` inputs (those with a dynamic time axis) to this length (None = no
    padding); `rows`: fill up to this many rows with zero rows (None = exactly the requests' rows).
    """
    merged: dict[str, np.ndarray] = {}
    for name, sample in requests[0].items():
        parts = [
            pad_steps(request[name], steps) if steps is not None and name in timed else request[name]
            for request in requests
        ]
        have = sum(int(part.shape[0]) for part in parts)
        if rows is not None and rows > have:
            parts.append(np.zeros((rows - have, *parts[0].shape[1:]), sample.dtype))
        merged[name] = np.concatenate(parts, axis=0)
    return merged


def split_rows(
    outputs: Mapping[str, np.ndarray],
    rows: Sequence[int],
    steps: Sequence[int | None] | None = None,
    sequences: Collection[str] = (),
) -> list[dict[str, np.ndarray]]:
    """A batch's outputs cut back into one result per request, in order: `rows[i]` rows each.

    `steps[i]`: request i's own length; the `sequences` outputs (dynamic time axis) of a padded
    batch are sliced back to it. Rows after the last request (filler) are dropped.
    """
    padded = max((s for s in steps or () if s is not None), default=None)
    results: list[dict[str, np.ndarray]] = []
    offset = 0
    for index, count in enumerate(rows):
        own_steps = steps[index] if steps is not None else None
        own: dict[str, np.ndarray] = {}
        for name, value in outputs.items():
            part = value[offset : offset + count]
            if (
                padded is not None
                and own_steps is not None
                and name in sequences
                and part.shape[1] == padded
                and own_steps != padded
            ):
                part = part[:, :own_steps]
            own[name] = part
        results.append(own)
        offset += count
    return results
