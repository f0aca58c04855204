"""A synthetic sentiment task whose label depends on words on both sides of a position."""

from __future__ import annotations

import numpy as np

from rnnkit.tasks.task import check_positive_int, one_hot, register_task

FILLERS = ("the", "movie", "plot", "was", "is", "a", "film", "story", "acting", "and", "it", "this")
POSITIVE = ("exciting", "great", "fun", "good")
NEGATIVE = ("boring", "dull", "bad", "awful")
NEGATORS = ("not", "never")
SENTIMENT_VOCABULARY = FILLERS + POSITIVE + NEGATIVE + NEGATORS


def sentiment_label(words: list[str], window: int) -> int:
    """The rule, written for people: 1 (positive) iff the sentiment word is positive XOR a
    negator stands within ``window`` words of it, before *or* after ("not exciting",
    "exciting ... not")."""
    position = next(i for i, w in enumerate(words) if w in POSITIVE or w in NEGATIVE)
    near = words[max(0, position - window) : position] + words[position + 1 : position + 1 + window]
    negated = any(w in NEGATORS for w in near)
    return int((words[position] in POSITIVE) != negated)


def sentiment_sentences(examples: int, rng: np.random.Generator, length: int, window: int) -> list[list[str]]:
    """Fillers with one sentiment word. Half the sentences get a negator within ``window`` words
    of it (before or after, equally often); about half get a distractor negator farther away."""
    sentences = []
    for _ in range(examples):
        words = [FILLERS[i] for i in rng.integers(0, len(FILLERS), size=length)]
        position = int(rng.integers(0, length))
        polarity = POSITIVE if rng.random() < 0.5 else NEGATIVE
        words[position] = polarity[int(rng.integers(0, len(polarity)))]
        if rng.random() < 0.5:
            near = [p for d in range(1, window + 1) for p in (position - d, position + d) if 0 <= p < length]
            words[near[int(rng.integers(0, len(near)))]] = NEGATORS[int(rng.integers(0, len(NEGATORS)))]
        if rng.random() < 0.5:
            far = [p for p in range(length) if abs(p - position) > window]
            if far:
                words[far[int(rng.integers(0, len(far)))]] = NEGATORS[int(rng.integers(0, len(NEGATORS)))]
        sentences.append(words)
    return sentences


@register_task("sentiment", kind="classification", num_classes=2, vocabulary=SENTIMENT_VOCABULARY)
def sentiment(examples: int, seed=0, length: int = 10, window: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One-hot sentences over ``SENTIMENT_VOCABULARY`` (``length`` words); label from
    `sentiment_label`: the polarity of the one sentiment word, flipped by a negator within
    ``window`` words on either side. Negators farther away are distractors. A forward-only
    reader has passed the sentiment word before it sees a negator after it, so context from
    both sides (bidirectional layers) helps.
    """
    examples = check_positive_int("examples", examples)
    length = check_positive_int("length", length, minimum=2)
    window = check_positive_int("window", window)
    rng = np.random.default_rng(seed)
    sentences = sentiment_sentences(examples, rng, length, window)
    ids = np.array([[SENTIMENT_VOCABULARY.index(w) for w in words] for words in sentences], dtype="int64")
    labels = np.array([sentiment_label(words, window) for words in sentences], dtype="int32")
    return one_hot(ids, len(SENTIMENT_VOCABULARY)), labels
