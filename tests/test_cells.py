"""Each cell against the independent NumPy reference, step by step and over time."""

from functools import partial

import numpy as np
import numpy_reference as ref
import pytest

from rnnkit.layers import GRU, LSTM, GRUCell, LSTMCell, SimpleRNN, SimpleRNNCell

UNITS, FEATURES, BATCH, TIME = 5, 3, 4, 7

CASES = {
    "simple": (partial(SimpleRNNCell, UNITS), partial(SimpleRNN, UNITS), ref.simple_step, 1),
    "simple_relu": (
        partial(SimpleRNNCell, UNITS, activation="relu"),
        partial(SimpleRNN, UNITS, activation="relu"),
        partial(ref.simple_step, act="relu"),
        1,
    ),
    "lstm": (partial(LSTMCell, UNITS), partial(LSTM, UNITS), ref.lstm_step, 2),
    "lstm_peepholes": (
        partial(LSTMCell, UNITS, use_peepholes=True),
        partial(LSTM, UNITS, use_peepholes=True),
        ref.lstm_step,
        2,
    ),
    "lstm_no_bias": (
        partial(LSTMCell, UNITS, use_bias=False),
        partial(LSTM, UNITS, use_bias=False),
        ref.lstm_step,
        2,
    ),
    "gru_reset_after": (partial(GRUCell, UNITS), partial(GRU, UNITS), partial(ref.gru_step, reset_after=True), 1),
    "gru_reset_before": (
        partial(GRUCell, UNITS, reset_after=False),
        partial(GRU, UNITS, reset_after=False),
        partial(ref.gru_step, reset_after=False),
        1,
    ),
}


def randomize(layer_or_cell, rng):
    """Give every weight (peepholes and biases included) random non-zero values."""
    named = {}
    for var in layer_or_cell.weights:
        value = rng.normal(scale=0.6, size=var.shape).astype("float32")
        var.assign(value)
        named[var.path.split("/")[-1]] = value.astype(np.float64)
    return named


@pytest.mark.parametrize("case", list(CASES))
def test_cell_single_steps_match_numpy(case, rng):
    make_cell, _, step, n_states = CASES[case]
    cell = make_cell()
    cell.build((BATCH, FEATURES))
    weights = randomize(cell, rng)
    if case == "lstm_peepholes":
        assert cell.peephole_kernel.shape == (3, UNITS)
        assert np.abs(weights["peephole_kernel"]).min() > 0
    state = [rng.normal(size=(BATCH, UNITS)).astype("float32") for _ in range(n_states)]
    for _ in range(3):
        x = rng.normal(size=(BATCH, FEATURES)).astype("float32")
        out, new_state = cell(x, state if n_states > 1 else [state[0]])
        ref_out, ref_state = step(x, tuple(state), weights)
        np.testing.assert_allclose(np.asarray(out), ref_out, atol=1e-5)
        for got, want in zip(new_state, ref_state):
            np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
        state = [np.asarray(s) for s in new_state]


@pytest.mark.parametrize("case", list(CASES))
def test_layer_over_time_matches_numpy_with_holes_and_backwards(case, rng):
    _, make_layer, step, n_states = CASES[case]
    x = rng.normal(size=(BATCH, TIME, FEATURES)).astype("float32")
    mask = np.ones((BATCH, TIME), bool)
    mask[0, 5:] = False  # right padding
    mask[1, :2] = False  # left padding
    mask[2, 3] = False  # a hole
    h0 = [rng.normal(size=(BATCH, UNITS)).astype("float32") for _ in range(n_states)]
    for go_backwards in (False, True):
        layer = make_layer(return_sequences=True, return_state=True, go_backwards=go_backwards)
        layer.build(x.shape)
        weights = randomize(layer, rng)
        seq, *states = layer(x, initial_state=h0, mask=mask)
        ref_seq, _, ref_states = ref.run(
            lambda xt, s, w=weights: step(xt, s, w), x, tuple(h0), mask=mask, go_backwards=go_backwards
        )
        np.testing.assert_allclose(np.asarray(seq), ref_seq, atol=1e-5)
        for got, want in zip(states, ref_states):
            np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_peepholes_change_the_output(rng):
    """The peephole weight is really used: the same cell with and without it differs."""
    x = rng.normal(size=(2, 6, FEATURES)).astype("float32")
    with_p = LSTM(UNITS, use_peepholes=True)
    without = LSTM(UNITS)
    with_p.build(x.shape)
    without.build(x.shape)
    without.set_weights(with_p.get_weights()[:3])
    np.testing.assert_allclose(np.asarray(with_p(x)), np.asarray(without(x)), atol=1e-7)  # peepholes start at 0
    with_p.cell.peephole_kernel.assign(np.full((3, UNITS), 0.5, "float32"))
    assert np.abs(np.asarray(with_p(x)) - np.asarray(without(x))).max() > 1e-3


def test_unit_forget_bias_and_weight_layouts():
    lstm = LSTMCell(4)
    lstm.build((None, 3))
    bias = np.asarray(lstm.bias)
    np.testing.assert_array_equal(bias, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])
    assert [tuple(w.shape) for w in lstm.weights] == [(3, 16), (4, 16), (16,)]
    gru = GRUCell(4)
    gru.build((None, 3))
    assert [tuple(w.shape) for w in gru.weights] == [(3, 12), (4, 12), (2, 12)]
    gru_before = GRUCell(4, reset_after=False)
    gru_before.build((None, 3))
    assert tuple(gru_before.bias.shape) == (12,)
    simple = SimpleRNNCell(4)
    simple.build((None, 3))
    assert [tuple(w.shape) for w in simple.weights] == [(3, 4), (4, 4), (4,)]


@pytest.mark.parametrize("make", [partial(LSTM, 6), partial(GRU, 6), partial(SimpleRNN, 6)])
def test_dropout_is_per_sequence_and_only_in_training(make, rng):
    x = rng.normal(size=(3, 5, FEATURES)).astype("float32")
    layer = make(dropout=0.5, recurrent_dropout=0.3, seed=3, return_sequences=True)
    inference_a = np.asarray(layer(x, training=False))
    inference_b = np.asarray(layer(x, training=False))
    np.testing.assert_array_equal(inference_a, inference_b)
    train_a = np.asarray(layer(x, training=True))
    train_b = np.asarray(layer(x, training=True))
    assert np.abs(train_a - inference_a).max() > 1e-4
    assert np.abs(train_a - train_b).max() > 1e-4  # a fresh mask per batch
