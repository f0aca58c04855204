"""`rnnkit demo` / `make demo`: the main job on a built-in default.

For now (core layers): build a stacked residual bidirectional LSTM classifier from rnnkit
layers, run it on a small built-in batch of padded sequences and print the summary and
the outputs. Training, export and serving join as those parts land.
"""

from __future__ import annotations

import numpy as np


def demo_batch(seed: int = 0, batch: int = 4, time: int = 12, features: int = 8) -> np.ndarray:
    """Random sequences, right-padded with zero vectors to different lengths."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, time, features)).astype("float32")
    lengths = rng.integers(time // 2, time + 1, size=batch)
    for row, length in enumerate(lengths):
        x[row, length:] = 0.0
    return x


def build_demo_model(features: int = 8, classes: int = 3, seed: int = 0):
    import keras

    from rnnkit.layers import StackedRNN

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(None, features), name="features")
    masked = keras.layers.Masking(mask_value=0.0, name="padding_mask")(inputs)
    encoded = StackedRNN(16, num_layers=3, cell="lstm", bidirectional=True, connection="residual", name="encoder")(
        masked
    )
    probs = keras.layers.Dense(classes, activation="softmax", name="probs")(encoded)
    return keras.Model(inputs, {"probs": probs}, name="rnnkit_demo")


def run_demo(seed: int = 0) -> dict:
    x = demo_batch(seed)
    model = build_demo_model(features=x.shape[-1], seed=seed)
    model.summary()
    encoder = model.get_layer("encoder")
    print(
        f"\nencoder: {encoder.num_layers} x bidirectional {encoder.cell.upper()} "
        f"(units {encoder.units}), connection={encoder.connection}"
    )
    lengths = (np.abs(x).sum(-1) > 0).sum(-1)
    outputs = model(x, training=False)
    probs = np.asarray(outputs["probs"])
    print(f"batch: {x.shape[0]} sequences, lengths {lengths.tolist()}, {x.shape[-1]} features")
    np.set_printoptions(precision=4, suppress=True)
    print("class probabilities:")
    print(probs)
    return {"probs": probs, "lengths": lengths}
