"""rnnkit layers against their keras.layers twins with copied weights."""

import itertools

import keras
import numpy as np
import pytest

from rnnkit import layers as rk

PAIRS = {
    "lstm": (rk.LSTM, keras.layers.LSTM, {}),
    "gru": (rk.GRU, keras.layers.GRU, {}),
    "gru_reset_before": (rk.GRU, keras.layers.GRU, {"reset_after": False}),
    "simple": (rk.SimpleRNN, keras.layers.SimpleRNN, {}),
    "lstm_hard_sigmoid": (rk.LSTM, keras.layers.LSTM, {"recurrent_activation": "hard_sigmoid"}),
}
N_STATES = {"lstm": 2, "lstm_hard_sigmoid": 2}
B, T, F, H = 4, 6, 3, 5


def masks():
    right = np.ones((B, T), bool)
    right[0, 4:] = False
    right[2, 1:] = False
    holes = right.copy()
    holes[1, 2] = False
    holes[3, :3] = False
    return {"none": None, "right": right, "holes": holes}


def pair(kind, **flags):
    ours_cls, theirs_cls, extra = PAIRS[kind]
    ours = ours_cls(H, **extra, **flags)
    theirs = theirs_cls(H, **extra, **flags)
    ours.build((B, T, F))
    theirs.build((B, T, F))
    rng = np.random.default_rng(0)
    weights = [rng.normal(scale=0.5, size=w.shape).astype("float32") for w in ours.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)  # 1:1 — same names, shapes and order
    return ours, theirs


def assert_same(a, b):
    a = a if isinstance(a, (list, tuple)) else [a]
    b = b if isinstance(b, (list, tuple)) else [b]
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


@pytest.mark.parametrize("kind", list(PAIRS))
@pytest.mark.parametrize("mask_name", ["none", "right", "holes"])
@pytest.mark.parametrize(
    "return_sequences,go_backwards,zero_output", list(itertools.product([True, False], [False, True], [False, True]))
)
def test_layer_matches_keras_twin(kind, mask_name, return_sequences, go_backwards, zero_output):
    ours, theirs = pair(
        kind,
        return_sequences=return_sequences,
        return_state=True,
        go_backwards=go_backwards,
        zero_output_for_mask=zero_output,
    )
    x = np.random.default_rng(1).normal(size=(B, T, F)).astype("float32")
    mask = masks()[mask_name]
    assert_same(ours(x, mask=mask), theirs(x, mask=mask))


@pytest.mark.parametrize("kind", list(PAIRS))
def test_initial_state_matches_keras_twin(kind):
    ours, theirs = pair(kind, return_sequences=True, return_state=True)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, T, F)).astype("float32")
    h0 = [rng.normal(size=(B, H)).astype("float32") for _ in range(N_STATES.get(kind, 1))]
    assert_same(ours(x, initial_state=h0, mask=masks()["holes"]), theirs(x, initial_state=h0, mask=masks()["holes"]))


def test_functional_model_with_masking_matches_keras():
    """The mask made by a Masking layer reaches rnnkit layers exactly as it reaches Keras's."""

    def build(lib):
        inp = keras.Input((None, F))
        m = keras.layers.Masking()(inp)
        y = lib.LSTM(H, return_sequences=True)(m)
        y = lib.GRU(H)(y)
        return keras.Model(inp, y)

    ours, theirs = build(rk), build(keras.layers)
    theirs.set_weights(ours.get_weights())
    x = np.random.default_rng(3).normal(size=(B, T, F)).astype("float32")
    x[0, 3:] = 0.0
    x[1, :2] = 0.0
    assert_same(ours(x), theirs(x))


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple"])
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_bidirectional_matches_keras(kind, merge_mode, return_sequences):
    ours_cls, theirs_cls, _ = PAIRS[kind]
    ours = rk.Bidirectional(ours_cls(H, return_sequences=return_sequences, return_state=True), merge_mode=merge_mode)
    theirs = keras.layers.Bidirectional(
        theirs_cls(H, return_sequences=return_sequences, return_state=True), merge_mode=merge_mode
    )
    ours.build((B, T, F))
    theirs.build((B, T, F))
    theirs.set_weights(ours.get_weights())
    rng = np.random.default_rng(4)
    x = rng.normal(size=(B, T, F)).astype("float32")
    n = 2 * N_STATES.get(kind, 1)
    h0 = [rng.normal(size=(B, H)).astype("float32") for _ in range(n)]
    mask = masks()["holes"]
    got = ours(x, initial_state=h0, mask=mask)
    want = theirs(x, initial_state=h0, mask=mask)
    flat = lambda outs: [t for o in outs for t in (o if isinstance(o, (list, tuple)) else [o])]  # noqa: E731
    assert_same(flat(got), flat(want))
    assert len(flat(got)) == (2 if merge_mode is None else 1) + n
