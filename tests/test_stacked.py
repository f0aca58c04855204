"""StackedRNN against hand-composed stacks of keras.layers twins with the same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rnnkit import layers as rk

B, T, F = 3, 7, 4
TWINS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple": keras.layers.SimpleRNN}


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def twin_of(stack, index, returns_sequences):
    """A keras.layers twin of the stack's index-th recurrent layer, weights copied."""
    width = stack.units_list[index]
    extra = {k: v for k, v in stack.cell_kwargs.items() if k in ("reset_after",)}
    layer = TWINS[stack.cell](width, return_sequences=returns_sequences, **extra)
    if stack.bidirectional:
        layer = keras.layers.Bidirectional(layer, merge_mode=stack.merge_mode)
    return layer


def hand_composed(stack, x, mask):
    """Evaluate the documented equations with twin layers and NumPy glue."""
    rng = np.random.default_rng(11)
    for var in stack.weights:  # move away from initial values (e.g. highway bias -1)
        var.assign(var.numpy() + rng.normal(scale=0.3, size=var.shape).astype("float32"))
    h, features = x, [x]
    last = stack.num_layers - 1
    for index, layer in enumerate(stack.rnn_layers):
        returns_sequences = index < last or stack.return_sequences
        twin = twin_of(stack, index, returns_sequences)
        twin.build(h.shape)
        twin.set_weights(layer.get_weights())
        y = np.asarray(twin(h, mask=mask))
        if stack.connection == "dense":
            features.append(y)
            h = y if index == last else np.concatenate(features, axis=-1)
        elif index == 0 or stack.connection == "none" or (index == last and not stack.return_sequences):
            h = y
        else:
            proj = stack.skip_projections.get(str(index))
            skip = h @ proj.kernel.numpy() if proj is not None else h
            if stack.connection == "residual":
                h = y + skip
            else:
                gate_layer = stack.highway_gates[str(index)]
                gate = sigmoid(h @ gate_layer.kernel.numpy() + gate_layer.bias.numpy())
                h = gate * y + (1.0 - gate) * skip
    return h


@pytest.mark.parametrize("connection", ["none", "residual", "dense", "highway"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "simple"])
@pytest.mark.parametrize("bidirectional,return_sequences", [(False, True), (True, False), (True, True)])
def test_stack_equals_hand_composition(connection, cell, bidirectional, return_sequences):
    stack = rk.StackedRNN(
        [5, 6, 6],
        num_layers=3,
        cell=cell,
        connection=connection,
        bidirectional=bidirectional,
        return_sequences=return_sequences,
        merge_mode="sum" if bidirectional and cell == "gru" else "concat",
    )
    rng = np.random.default_rng(5)
    x = rng.normal(size=(B, T, F)).astype("float32")
    mask = np.ones((B, T), bool)
    mask[0, 5:] = False
    mask[1, 2] = False
    stack.build(x.shape)
    want = hand_composed(stack, x, mask)
    got = np.asarray(stack(x, mask=mask))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_projection_only_where_widths_differ():
    stack = rk.StackedRNN([4, 4, 6, 6], num_layers=4, connection="residual", return_sequences=True)
    stack.build((None, None, 3))
    assert sorted(stack.skip_projections) == ["2"]  # 4 -> 6 only; layer 0 has no skip
    highway = rk.StackedRNN(4, num_layers=3, connection="highway", bidirectional=True, return_sequences=True)
    highway.build((None, None, 3))
    assert sorted(highway.highway_gates) == ["1", "2"]
    np.testing.assert_array_equal(highway.highway_gates["1"].bias.numpy(), np.full(8, -1.0, "float32"))


def test_mask_propagates_through_the_stack():
    inp = keras.Input((None, F))
    masked = keras.layers.Masking()(inp)
    seq = rk.StackedRNN(4, num_layers=2, connection="residual", return_sequences=True)(masked)
    out = rk.LSTM(3)(seq)  # consumes the stack's output mask
    model = keras.Model(inp, out)
    x = np.random.default_rng(6).normal(size=(2, T, F)).astype("float32")
    padded = x.copy()
    padded[:, 4:] = 0.0
    # Padding steps must not change the answer: compare with the truncated sequence.
    np.testing.assert_allclose(np.asarray(model(padded)), np.asarray(model(x[:, :4])), atol=1e-6)


@pytest.mark.parametrize("connection", ["residual", "highway", "dense"])
def test_gradient_reaches_first_layer_of_deep_stack(connection):
    stack = rk.StackedRNN(8, num_layers=8, cell="simple", connection=connection, return_sequences=True)
    x = tf.constant(np.random.default_rng(7).normal(size=(2, 20, F)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(stack(x)[:, -1] ** 2)
    first_kernel = stack.rnn_layers[0].cell.kernel
    grads = tape.gradient(loss, [first_kernel] + [layer.cell.kernel for layer in stack.rnn_layers[1:]])
    norms = [float(tf.norm(g)) for g in grads]
    assert all(np.isfinite(norms))
    assert norms[0] > 1e-4, norms


def test_dropout_between_layers_only_when_training():
    stack = rk.StackedRNN(6, num_layers=3, dropout=0.5, return_sequences=True, seed=1)
    x = np.random.default_rng(8).normal(size=(2, 5, F)).astype("float32")
    a, b = np.asarray(stack(x)), np.asarray(stack(x))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(stack(x, training=True)) - a).max() > 1e-4


def test_single_layer_dropout_warns():
    with pytest.warns(UserWarning, match="dropout=0.2 has no effect with num_layers=1"):
        rk.StackedRNN(4, num_layers=1, dropout=0.2)


def test_cell_kwargs_reach_every_layer():
    stack = rk.StackedRNN(4, num_layers=3, cell="lstm", use_peepholes=True, bidirectional=True)
    stack.build((None, None, 2))
    peepholes = [w for w in stack.weights if "peephole" in w.path]
    assert len(peepholes) == 6
