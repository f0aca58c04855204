"""aⁿbⁿ counting: is a string over {a, b} exactly n a's followed by n b's?"""

from __future__ import annotations

import numpy as np

from rnnkit.tasks.task import check_positive_int, one_hot, register_task

ANBN_SYMBOLS = ("a", "b")


def anbn_strings(examples: int, rng: np.random.Generator, max_n: int) -> list[str]:
    """Half members aⁿbⁿ (1 <= n <= max_n); half near misses: aⁿbᵐ with m != n, or a shuffled
    aⁿbⁿ that is not sorted. Order is random."""
    strings = []
    for index in range(examples):
        n = int(rng.integers(1, max_n + 1))
        if index % 2 == 0:
            strings.append("a" * n + "b" * n)
            continue
        if n == 1 or rng.random() < 0.5:
            m = int(rng.integers(1, max_n))
            m = m if m < n else m + 1  # uniform over 1..max_n without n
            strings.append("a" * n + "b" * m)
        else:
            chars = np.array(list("a" * n + "b" * n))
            while True:
                rng.shuffle(chars)
                candidate = "".join(chars)
                if candidate != "a" * n + "b" * n:
                    break
            strings.append(candidate)
    order = rng.permutation(examples)
    return [strings[i] for i in order]


@register_task("anbn", kind="classification", num_classes=2, vocabulary=ANBN_SYMBOLS)
def anbn_counting(examples: int, seed=0, max_n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One-hot strings over (a, b), right-padded with all-zero steps to length ``2 * max_n``;
    label 1 iff the string is aⁿbⁿ for some n >= 1.

    Telling aⁿbⁿ from aⁿbⁿ⁺¹ needs a counter, which is what the lecture says LSTMs learn.
    """
    examples = check_positive_int("examples", examples)
    max_n = check_positive_int("max_n", max_n, minimum=2)
    rng = np.random.default_rng(seed)
    strings = anbn_strings(examples, rng, max_n)
    ids = np.full((examples, 2 * max_n), -1, dtype="int64")
    for row, text in enumerate(strings):
        ids[row, : len(text)] = [ANBN_SYMBOLS.index(ch) for ch in text]
    labels = np.array([int(s == "a" * (len(s) // 2) + "b" * (len(s) // 2)) for s in strings], dtype="int32")
    return one_hot(ids, len(ANBN_SYMBOLS)), labels
