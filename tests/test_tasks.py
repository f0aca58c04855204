"""Built-in task generators: deterministic per seed, labels right by brute force."""

import itertools

import numpy as np
import pytest

from rnnkit.tasks import (
    ANBN_SYMBOLS,
    SENTIMENT_VOCABULARY,
    adding_problem,
    anbn_counting,
    copy_recall,
    make_task,
    sentiment,
    task_names,
)


@pytest.mark.parametrize("name", ["adding", "copy", "anbn", "sentiment"])
def test_make_task_is_deterministic_per_seed(name):
    a = make_task(name, train_examples=64, val_examples=16, seed=3)
    b = make_task(name, train_examples=64, val_examples=16, seed=3)
    c = make_task(name, train_examples=64, val_examples=16, seed=4)
    for field in ("x_train", "y_train", "x_val", "y_val"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_train, a.x_val)  # train and validation are different streams
    assert a.x_train.dtype == np.float32 and a.x_train.shape[0] == 64 and a.x_val.shape[0] == 16
    assert name in task_names()


def test_adding_targets_by_brute_force():
    x, y = adding_problem(200, seed=1, length=9)
    assert x.shape == (200, 9, 2)
    for row in range(200):
        marked = [t for t in range(9) if x[row, t, 1] == 1.0]
        assert len(marked) == 2 and marked[0] < 9 // 2 <= marked[1]
        assert set(np.unique(x[row, :, 1])) <= {0.0, 1.0}
        assert y[row] == pytest.approx(sum(float(x[row, t, 0]) for t in marked), abs=1e-6)


def test_copy_recall_labels_by_brute_force():
    vocab, lag = 5, 7
    x, y = copy_recall(300, seed=2, lag=lag, vocab_size=vocab)
    assert x.shape == (300, lag + 1, vocab + 2)
    assert np.all(x.sum(-1) == 1.0)  # one-hot, never an all-zero (padding) step
    ids = x.argmax(-1)
    for row in range(300):
        token = ids[row, 0]
        assert token < vocab and y[row] == token
        assert all(ids[row, t] == vocab for t in range(1, lag))  # blanks carry nothing
        assert ids[row, lag] == vocab + 1  # the go marker, lag steps after the token
    assert set(np.unique(y)) == set(range(vocab))


def decode_anbn(x):
    return ["".join(ANBN_SYMBOLS[i] for i, step in zip(row.argmax(-1), row) if step.sum() > 0) for row in x]


def test_anbn_labels_match_brute_force_membership():
    max_n = 3
    # every string over {a, b} up to length 2 * max_n, and the language by enumeration
    universe = {"".join(p) for k in range(1, 2 * max_n + 1) for p in itertools.product("ab", repeat=k)}
    members = {"a" * n + "b" * n for n in range(1, max_n + 1)}
    x, y = anbn_counting(400, seed=5, max_n=max_n)
    assert x.shape == (400, 2 * max_n, 2)
    strings = decode_anbn(x)
    for text, label, row in zip(strings, y, x):
        assert text in universe
        assert label == int(text in members)
        assert np.all(row[len(text) :] == 0.0)  # right padding is all-zero (masked)
    assert 0.4 < y.mean() < 0.6
    assert {s for s, label in zip(strings, y) if label} == members  # every member shows up


def words_of(x):
    return [[SENTIMENT_VOCABULARY[i] for i in row.argmax(-1)] for row in x]


def brute_force_sentiment(words, window):
    positive = {"exciting", "great", "fun", "good"}
    negative = {"boring", "dull", "bad", "awful"}
    spots = [i for i, w in enumerate(words) if w in positive | negative]
    assert len(spots) == 1
    (p,) = spots
    negated = any(words[q] in ("not", "never") for q in range(len(words)) if 0 < abs(q - p) <= window)
    return int((words[p] in positive) ^ negated)


def test_sentiment_labels_by_brute_force_and_both_sides_matter():
    window = 2
    x, y = sentiment(500, seed=6, length=10, window=window)
    sentences = words_of(x)
    sides = set()
    for words, label in zip(sentences, y):
        assert label == brute_force_sentiment(words, window)
        p = next(i for i, w in enumerate(words) if w in SENTIMENT_VOCABULARY[12:20])
        for q, w in enumerate(words):
            if w in ("not", "never") and 0 < abs(q - p) <= window:
                sides.add("before" if q < p else "after")
    assert sides == {"before", "after"}  # a negator may stand on either side
    assert 0.4 < y.mean() < 0.6


def test_task_errors_are_pinned():
    with pytest.raises(ValueError, match=r"Argument `task` must be one of \('adding', .*Received: task='addng'"):
        make_task("addng")
    with pytest.raises(ValueError, match=r"Task 'adding' takes parameters \('length',\)\. Received: lag=3"):
        make_task("adding", lag=3)
    with pytest.raises(ValueError, match=r"Argument `examples` must be an integer >= 1\. Received: examples=0"):
        adding_problem(0)
    with pytest.raises(ValueError, match=r"Argument `train_examples` must be a positive integer"):
        make_task("copy", train_examples=0)
