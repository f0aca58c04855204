"""The generic hook export uses: while a substitution is active, layers hand their work over."""

import numpy as np

from rnnkit import layers as rk
from rnnkit.layers import trace_substitution


def test_substitute_receives_layer_sequences_mask_and_states():
    seen = []

    def substitute(layer, sequences, mask, initial_state, training):
        seen.append((layer, tuple(sequences.shape), None if mask is None else tuple(mask.shape), initial_state))
        return np.full((2, 4), 7.0, "float32")

    layer = rk.GRU(4)
    x = np.ones((2, 5, 3), "float32")
    mask = np.ones((2, 5), bool)
    h0 = np.zeros((2, 4), "float32")
    with trace_substitution(substitute):
        out = layer(x, mask=mask, initial_state=[h0])
    np.testing.assert_array_equal(np.asarray(out), np.full((2, 4), 7.0))
    assert seen[0][0] is layer and seen[0][1] == (2, 5, 3) and seen[0][2] == (2, 5)
    assert len(seen[0][3]) == 1
    # Outside the block the layer runs its loop again.
    assert not np.allclose(np.asarray(layer(x)), 7.0)


def test_not_implemented_falls_back_and_bidirectional_is_offered_first():
    offered = []

    def substitute(layer, sequences, mask, initial_state, training):
        offered.append(type(layer).__name__)
        return NotImplemented

    bi = rk.Bidirectional(rk.LSTM(3, return_sequences=True))
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype("float32")
    plain = np.asarray(bi(x))
    with trace_substitution(substitute):
        again = np.asarray(bi(x))
    np.testing.assert_allclose(again, plain, atol=1e-7)
    assert offered == ["Bidirectional", "LSTM", "LSTM"]


def test_stack_members_are_offered_one_by_one():
    offered = []

    def substitute(layer, *args):
        offered.append(layer.name)
        return NotImplemented

    stack = rk.StackedRNN(3, num_layers=3, cell="simple", connection="residual", name="deep")
    with trace_substitution(substitute):
        stack(np.zeros((1, 4, 2), "float32"))
    assert offered == ["deep_simple_0", "deep_simple_1", "deep_simple_2"]
