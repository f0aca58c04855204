"""Bad arguments raise ValueError naming the argument, what was allowed and what came."""

import numpy as np
import pytest

from rnnkit import layers as rk


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda: rk.StackedRNN(4, connection="res"),
            r"argument `connection` must be one of \('none', 'residual', 'dense', 'highway'\)\. Received: connection='res'",
        ),
        (
            lambda: rk.StackedRNN(4, cell="rnn"),
            r"argument `cell` must be one of \('lstm', 'gru', 'simple'\)\. Received: cell='rnn'",
        ),
        (
            lambda: rk.StackedRNN(4, bidirectional=True, merge_mode=None),
            r"argument `merge_mode` must be one of \('concat', 'sum', 'mul', 'ave'\)\. Received: merge_mode=None",
        ),
        (
            lambda: rk.StackedRNN([4, 5], num_layers=3),
            r"`units` as a list needs one entry per layer \(num_layers=3\)\. Received 2 entries: units=\[4, 5\]",
        ),
        (lambda: rk.StackedRNN(4, num_layers=0), r"`num_layers` must be a positive integer\. Received: num_layers=0"),
        (lambda: rk.StackedRNN([4, -1], num_layers=2), r"`units` must be a positive integer\. Received: units=-1"),
        (lambda: rk.StackedRNN(4, dropout=1.5), r"`dropout` must be a float in \[0, 1\)\. Received: dropout=1.5"),
        (lambda: rk.LSTM(0), r"LSTMCell '.*': argument `units` must be a positive integer\. Received: units=0"),
        (lambda: rk.GRUCell(-3), r"argument `units` must be a positive integer\. Received: units=-3"),
        (lambda: rk.SimpleRNN(2.5), r"Received: units=2.5"),
        (
            lambda: rk.Bidirectional(rk.LSTM(3), merge_mode="max"),
            r"argument `merge_mode` must be one of \('concat', 'sum', 'mul', 'ave', None\)\. Received: merge_mode='max'",
        ),
        (lambda: rk.Bidirectional(rk.LSTMCell(3)), r"argument `layer` must be a recurrent layer .* LSTMCell lacks"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_input_rank_names_layer_and_shape():
    layer = rk.LSTM(3, name="enc_lstm")
    with pytest.raises(
        ValueError,
        match=r"LSTM 'enc_lstm': expected `sequences` of rank 3 \(batch, time, features\), got shape \(4, 3\)",
    ):
        layer(np.zeros((4, 3), "float32"))
    cell = rk.LSTMCell(3, name="enc_cell")
    with pytest.raises(
        ValueError, match=r"LSTMCell 'enc_cell': expected inputs of rank 2 \(batch, features\), got shape \(4, 7, 3\)"
    ):
        cell.build((4, 7, 3))
    with pytest.raises(ValueError, match=r"StackedRNN 'deep': expected `sequences` of rank 3"):
        rk.StackedRNN(3, name="deep")(np.zeros((2, 3), "float32"))


def test_initial_state_count_and_shape():
    x = np.zeros((2, 5, 3), "float32")
    with pytest.raises(
        ValueError,
        match=r"LSTM 'l': `initial_state` expects 2 tensor\(s\) \(h, c\) of shape \(batch, units\), received 1",
    ):
        rk.LSTM(4, name="l")(x, initial_state=[np.zeros((2, 4), "float32")])
    with pytest.raises(
        ValueError, match=r"GRU 'g': `initial_state` entry 'h' must have shape \(batch, 4\), received shape \(2, 5\)"
    ):
        rk.GRU(4, name="g")(x, initial_state=[np.zeros((2, 5), "float32")])
    with pytest.raises(
        ValueError, match=r"Bidirectional 'bi': `initial_state` expects 4 tensor\(s\) \(h_fwd, c_fwd, h_bwd, c_bwd\)"
    ):
        rk.Bidirectional(rk.LSTM(4), name="bi")(x, initial_state=[np.zeros((2, 4), "float32")] * 2)
