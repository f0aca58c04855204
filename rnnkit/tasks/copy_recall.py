"""Copy/recall over a lag: a token shown at step 0 must be reproduced ``lag`` steps later."""

from __future__ import annotations

import numpy as np

from rnnkit.tasks.task import check_positive_int, one_hot, register_task


def copy_channels(vocab_size: int) -> int:
    """Feature width: one channel per token, then ``blank``, then ``go``."""
    return vocab_size + 2


def copy_vocabulary(vocab_size: int = 8, **_) -> tuple[str, ...]:
    return (*(f"t{i}" for i in range(vocab_size)), "<blank>", "<go>")


@register_task(
    "copy", kind="classification", num_classes=lambda vocab_size=8, **_: vocab_size, vocabulary=copy_vocabulary
)
def copy_recall(examples: int, seed=0, lag: int = 20, vocab_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """One-hot sequences of length ``lag + 1``: [token, blank x (lag - 1), go]; label = token.

    Channels are ``vocab_size`` tokens, then blank (index ``vocab_size``), then go
    (index ``vocab_size + 1``). The answer is due at the go step, ``lag`` steps after the
    token was seen, and nothing in between carries it.
    """
    examples = check_positive_int("examples", examples)
    lag = check_positive_int("lag", lag)
    vocab_size = check_positive_int("vocab_size", vocab_size, minimum=2)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, size=examples).astype("int32")
    ids = np.full((examples, lag + 1), vocab_size, dtype="int64")
    ids[:, 0] = tokens
    ids[:, lag] = vocab_size + 1
    return one_hot(ids, copy_channels(vocab_size)), tokens
