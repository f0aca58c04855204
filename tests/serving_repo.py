"""Small exported model repositories shared by the tests/test_serving_*.py files.

``half_plus_two`` is TF Serving's hand-checkable idea on a recurrent model: an LSTM whose
weights are zero (so its output is exactly 0) concatenated with the input frame, then a Dense
layer that reads 0.5 * x + 2 off the frame. Expected outputs are written down by hand.
"""

import atexit
import functools
import logging
import os
import shutil
import tempfile

import keras
import numpy as np

from rnnkit import layers as rk
from rnnkit_export import export_model

logging.getLogger("tf2onnx").setLevel(logging.ERROR)


def half_plus_two(offset: float = 2.0) -> keras.Model:
    inp = keras.Input((None, 1), name="x")
    lstm = rk.LSTM(
        2,
        return_sequences=True,
        kernel_initializer="zeros",
        recurrent_initializer="zeros",
        bias_initializer="zeros",
        unit_forget_bias=False,
        name="lstm",
    )
    h = lstm(inp)  # i = f = o = 0.5, c_hat = 0 -> c = 0 -> h = 0
    merged = keras.layers.Concatenate()([h, inp])
    dense = keras.layers.Dense(1, name="y")
    out = dense(merged)
    model = keras.Model(inp, {"y": out})
    dense.set_weights([np.array([[0.0], [0.0], [0.5]], np.float32), np.array([offset], np.float32)])
    return model


def expected_half_plus_two(x, offset: float = 2.0):
    return 0.5 * np.asarray(x, np.float32) + offset


def two_input_model() -> keras.Model:
    """Bidirectional GRU over `seq` plus a side input `extra`; two outputs."""
    keras.utils.set_random_seed(3)
    seq = keras.Input((None, 3), name="seq")
    extra = keras.Input((2,), name="extra")
    y = rk.Bidirectional(rk.GRU(4))(keras.layers.Masking()(seq))
    y = keras.layers.Concatenate()([y, extra])
    return keras.Model(
        {"seq": seq, "extra": extra},
        {"logits": keras.layers.Dense(3)(y), "probs": keras.layers.Dense(3, activation="softmax")(y)},
    )


def build_repository(base: str) -> dict:
    """half (versions 1: 0.5x+2 and 2: 0.5x+3) and pair (two inputs, two outputs)."""
    models = {"half_v1": half_plus_two(2.0), "half_v2": half_plus_two(3.0), "pair": two_input_model()}
    export_model(models["half_v1"], base, "half")
    export_model(models["half_v2"], base, "half")
    export_model(models["pair"], base, "pair")
    return models


# ------------------------------------------------------------------ Serving II (shared, built once)

STREAMING_KINDS = ("LSTM", "GRU", "SimpleRNN")


def streaming_model(kind: str, masked: bool = True, units: int = 8) -> keras.Model:
    """Masking(0) -> `kind` (sequences) -> Dense `y` per step, and a second `kind` whose final
    state is `last`: one sequence output and one final output, zero-padding invariant when masked."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((None, 3), name="x")
    h = keras.layers.Masking(0.0)(inp) if masked else inp
    seq = getattr(rk, kind)(units, return_sequences=True, name="rec")(h)
    last = getattr(rk, kind)(4, name="rec2")(seq)
    return keras.Model(inp, {"y": keras.layers.Dense(2, name="y")(seq), "last": last})


@functools.cache
def shared_repository() -> str:
    """One repository for the Serving II tests, exported once per test process:
    lstm/gru/simplernn (masked, streamable, zero-padding invariant), plain (unmasked LSTM: not
    invariant), pair (bidirectional: cannot stream), and staged half versions 1 (0.5x+2) and
    2 (0.5x+3) under `staging/` for hot-reload tests to publish."""
    base = tempfile.mkdtemp(prefix="rnnkit-serving2-")
    atexit.register(shutil.rmtree, base, True)
    for kind in STREAMING_KINDS:
        export_model(streaming_model(kind), base, kind.lower())
    export_model(streaming_model("LSTM", masked=False), base, "plain")
    export_model(two_input_model(), base, "pair")
    staging = os.path.join(base, "staging")
    export_model(half_plus_two(2.0), staging, "half", version=1)
    export_model(half_plus_two(3.0), staging, "half", version=2)
    return base


def publish(staged_version_dir: str, model_dir: str, version: int) -> str:
    """Copy a staged version into `model_dir` the way export publishes: a hidden temp dir renamed into place."""
    os.makedirs(model_dir, exist_ok=True)
    hidden = os.path.join(model_dir, f".rnnkit-tmp-{version}-test")
    shutil.copytree(staged_version_dir, hidden)
    final = os.path.join(model_dir, str(version))
    os.rename(hidden, final)
    return final


def assert_error(reply, status, text):
    """A REST reply is TF Serving's error envelope with `status` and `text` in its message."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert list(body) == ["error"] and text in body["error"], body
