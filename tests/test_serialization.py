"""Config round trips and .keras files loaded in a fresh process, for every public class."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from rnnkit import layers as rk

F = 3


def make_public_layers():
    """One configured instance of every public class, non-default arguments included."""
    return {
        "SimpleRNNCell": rk.SimpleRNNCell(4, activation="relu", dropout=0.1, seed=2),
        "LSTMCell": rk.LSTMCell(
            4, use_peepholes=True, recurrent_activation="hard_sigmoid", kernel_regularizer=keras.regularizers.L2(1e-3)
        ),
        "GRUCell": rk.GRUCell(4, reset_after=False, recurrent_dropout=0.2),
        "SimpleRNN": rk.SimpleRNN(4, go_backwards=True, return_sequences=True),
        "LSTM": rk.LSTM(
            4, use_peepholes=True, zero_output_for_mask=True, return_sequences=True, peephole_initializer="ones"
        ),
        "GRU": rk.GRU(4, reset_after=True, unroll=False, bias_constraint=keras.constraints.NonNeg()),
        "Bidirectional": rk.Bidirectional(rk.GRU(4, return_sequences=True), merge_mode="ave"),
        "StackedRNN": rk.StackedRNN(
            [4, 5, 5],
            num_layers=3,
            cell="lstm",
            bidirectional=True,
            connection="highway",
            dropout=0.1,
            use_peepholes=True,
            kernel_initializer="he_normal",
        ),
    }


def wrap(layer):
    """A model around the layer (cells go in keras.layers.RNN) with a masked input."""
    inp = keras.Input((None, F), name="x")
    h = keras.layers.Masking()(inp)
    if (
        isinstance(layer, keras.layers.Layer)
        and hasattr(layer, "state_size")
        and not hasattr(layer, "return_sequences")
    ):
        layer = keras.layers.RNN(layer, return_sequences=True)
    return keras.Model(inp, layer(h))


@pytest.mark.parametrize("name", list(make_public_layers()))
def test_config_round_trip(name):
    layer = make_public_layers()[name]
    config = layer.get_config()
    json.dumps(keras.saving.serialize_keras_object(layer))  # JSON-able
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    x = np.random.default_rng(0).normal(size=(2, 5, F)).astype("float32")
    a, b = wrap(layer), wrap(clone)
    b.set_weights(a.get_weights())
    np.testing.assert_allclose(np.asarray(a(x)), np.asarray(b(x)), atol=1e-6)


def test_keras_files_load_in_a_fresh_process(tmp_path):
    x = np.random.default_rng(1).normal(size=(2, 6, F)).astype("float32")
    x[0, 4:] = 0.0
    np.save(tmp_path / "x.npy", x)
    names = []
    for name, layer in make_public_layers().items():
        model = wrap(layer)
        rng = np.random.default_rng(2)
        model.set_weights([rng.normal(scale=0.4, size=w.shape).astype("float32") for w in model.get_weights()])
        model.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}.npy", np.asarray(model(x)))
        names.append(name)
    script = textwrap.dedent(
        """
        import os, sys
        import numpy as np
        import keras
        import rnnkit  # `import rnnkit` registers the classes; nothing else is shared with the saver
        folder, names = sys.argv[1], sys.argv[2:]
        x = np.load(os.path.join(folder, "x.npy"))
        for name in names:
            model = keras.saving.load_model(os.path.join(folder, name + ".keras"))
            got = np.asarray(model(x))
            want = np.load(os.path.join(folder, name + ".npy"))
            print(name, float(np.abs(got - want).max()))
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), *names], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    diffs = dict(line.split() for line in proc.stdout.strip().splitlines())
    assert sorted(diffs) == sorted(names)
    for name, diff in diffs.items():
        assert float(diff) <= 1e-6, (name, diff)
