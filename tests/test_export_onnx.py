"""The ONNX parity matrix: every recurrent configuration becomes fused ops and matches Keras.

Each case is converted once; the file is then run by ONNX Runtime at two (batch, length)
sizes with right padding (and a length-0 row), left padding and holes, and compared to Keras.
"""

import logging

import keras
import numpy as np
import onnxruntime as ort
import pytest

from rnnkit import layers as rk
from rnnkit_export.analysis.model_io import ModelIO
from rnnkit_export.analysis.twins import with_rnnkit_twins
from rnnkit_export.onnx.convert import StrictExportError, to_onnx

logging.getLogger("tf2onnx").setLevel(logging.ERROR)
F, H = 4, 5
FUSED = ("LSTM", "GRU", "RNN")
SIZES = ((4, 9), (2, 13))


def masked_input():
    inp = keras.Input((None, F), name="seq")
    return inp, keras.layers.Masking(name="pad")(inp)


def peep():
    return {"use_peepholes": True, "peephole_initializer": keras.initializers.RandomNormal(stddev=0.5, seed=1)}


def single(layer):
    def build():
        inp, m = masked_input()
        out = layer()(m)
        if isinstance(out, (list, tuple)):
            return keras.Model(inp, {f"out{i}": o for i, o in enumerate(out)})
        return keras.Model(inp, {"out": out})

    return build


CASES = {
    "lstm_seq": (single(lambda: rk.LSTM(H, return_sequences=True)), 1),
    "lstm_peepholes_last": (single(lambda: rk.LSTM(H, **peep())), 1),
    "lstm_backwards_seq": (single(lambda: rk.LSTM(H, go_backwards=True, return_sequences=True)), 1),
    "lstm_backwards_seq_zero": (
        single(lambda: rk.LSTM(H, go_backwards=True, return_sequences=True, zero_output_for_mask=True)),
        1,
    ),
    "lstm_backwards_last_zero": (single(lambda: rk.LSTM(H, go_backwards=True, zero_output_for_mask=True)), 1),
    "lstm_seq_zero": (single(lambda: rk.LSTM(H, return_sequences=True, zero_output_for_mask=True)), 1),
    "lstm_last_zero": (single(lambda: rk.LSTM(H, zero_output_for_mask=True)), 1),
    "lstm_seq_state": (single(lambda: rk.LSTM(H, return_sequences=True, return_state=True, **peep())), 1),
    "lstm_hard_sigmoid_relu": (
        single(lambda: rk.LSTM(H, recurrent_activation="hard_sigmoid", activation="relu", return_sequences=True)),
        1,
    ),
    "gru_seq": (single(lambda: rk.GRU(H, return_sequences=True)), 1),
    "gru_reset_before_backwards": (
        single(lambda: rk.GRU(H, reset_after=False, go_backwards=True, return_sequences=True)),
        1,
    ),
    "gru_last_state": (single(lambda: rk.GRU(H, reset_after=False, return_state=True)), 1),
    "gru_no_bias": (single(lambda: rk.GRU(H, use_bias=False, return_sequences=True)), 1),
    "simple_relu_seq": (single(lambda: rk.SimpleRNN(H, activation="relu", return_sequences=True)), 1),
    "simple_linear_backwards_last": (single(lambda: rk.SimpleRNN(H, activation="linear", go_backwards=True)), 1),
    "bi_lstm_state": (
        single(lambda: rk.Bidirectional(rk.LSTM(H, return_sequences=True, return_state=True, **peep()))),
        1,
    ),
    "bi_gru_last_state": (single(lambda: rk.Bidirectional(rk.GRU(H, return_state=True), merge_mode="ave")), 1),
}
for _merge in ("concat", "sum", "mul", "ave", None):
    CASES[f"bi_lstm_seq_{_merge}"] = (
        single(lambda m=_merge: rk.Bidirectional(rk.LSTM(H, return_sequences=True), merge_mode=m)),
        1,
    )
    CASES[f"bi_gru_last_{_merge}"] = (single(lambda m=_merge: rk.Bidirectional(rk.GRU(H), merge_mode=m)), 1)
    CASES[f"bi_simple_seq_{_merge}"] = (
        single(lambda m=_merge: rk.Bidirectional(rk.SimpleRNN(H, return_sequences=True), merge_mode=m)),
        1,
    )
for _connection in ("none", "residual", "dense", "highway"):
    CASES[f"stack_lstm_{_connection}"] = (
        single(lambda c=_connection: rk.StackedRNN([H, 6, 6], num_layers=3, connection=c, return_sequences=True)),
        3,
    )
    CASES[f"stack_bi_gru_{_connection}"] = (
        single(lambda c=_connection: rk.StackedRNN(H, num_layers=2, cell="gru", bidirectional=True, connection=c)),
        2,
    )


def build_native():
    inp, m = masked_input()
    y = keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True))(m)
    y = keras.layers.GRU(H, return_sequences=True)(y)
    y = keras.layers.SimpleRNN(H, go_backwards=True)(y)
    return keras.Model(inp, {"out": keras.layers.Dense(2)(y)})


def build_embedding():
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    e = keras.layers.Embedding(12, F, mask_zero=True)(tokens)
    y = rk.StackedRNN(H, num_layers=2, connection="residual", return_sequences=True)(e)
    y = keras.layers.LayerNormalization()(y)
    y = rk.Bidirectional(rk.GRU(H))(y)
    return keras.Model(tokens, {"probs": keras.layers.Dense(3, activation="softmax")(y)})


def build_initial_state():
    inp = keras.Input((None, F), name="seq")
    h0 = keras.Input((H,), name="h0")
    c0 = keras.Input((H,), name="c0")
    mask = keras.ops.any(keras.ops.not_equal(inp, 0.0), axis=-1)
    seq, h, c = rk.LSTM(H, return_sequences=True, return_state=True)(inp, initial_state=[h0, c0], mask=mask)
    return keras.Model({"seq": inp, "h0": h0, "c0": c0}, {"seq_out": seq, "h": h, "c": c})


CASES["native_keras_layers"] = (build_native, 3)
CASES["embedding_mask_zero_stack"] = (build_embedding, 3)
CASES["initial_state_explicit_mask"] = (build_initial_state, 1)


def inputs_for(io, batch, steps, kind, seed):
    rng = np.random.default_rng(seed)
    valid = np.ones((batch, steps), bool)
    if kind == "right":
        valid[0, steps - 3 :] = False
        valid[1, :] = False  # a length-0 row
    elif kind == "left":
        valid[0, :3] = False
        valid[-1, :1] = False
    else:  # holes
        valid[0, 2] = valid[0, 5] = False
        valid[-1, 0] = valid[-1, steps - 1] = False
    feeds = {}
    for info in io.inputs:
        if info.dtype.startswith("int"):
            feeds[info.name] = np.where(valid, rng.integers(1, 12, size=(batch, steps)), 0).astype(info.dtype)
        elif len(info.shape) == 3:
            x = rng.normal(size=(batch, steps, info.shape[-1])).astype("float32")
            feeds[info.name] = x * valid[..., None]
        else:
            feeds[info.name] = rng.normal(size=(batch, info.shape[-1])).astype("float32")
    return feeds


@pytest.mark.parametrize("case", list(CASES))
def test_fused_and_equal_to_keras(case):
    build, n_recurrent = CASES[case]
    keras.utils.set_random_seed(3)
    original = build()
    model, _ = with_rnnkit_twins(original)
    io = ModelIO.of(model)
    result = to_onnx(model, io)
    ops = result.op_census
    assert sum(ops.get(op, 0) for op in FUSED) == n_recurrent, ops
    assert "Loop" not in ops and "Scan" not in ops, ops
    assert not result.fallbacks
    assert [i.name for i in result.model.graph.input] == io.input_names
    assert sorted(o.name for o in result.model.graph.output) == sorted(io.output_names)
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for seed, (batch, steps) in enumerate(SIZES):
        for kind in ("right", "left", "holes"):
            feeds = inputs_for(io, batch, steps, kind, seed)
            want = io.call(original, feeds)
            got = dict(zip(names, session.run(names, feeds)))
            for name in io.output_names:
                diff = np.abs(np.asarray(want[name]) - got[name]).max()
                assert diff <= 1e-5, (case, kind, batch, steps, name, diff)


def test_dynamic_axes_are_named():
    model = CASES["lstm_seq"][0]()
    result = to_onnx(model, ModelIO.of(model))
    dims = [d.dim_param or d.dim_value for d in result.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "time", F]
    out_dims = [d.dim_param or d.dim_value for d in result.model.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims == ["batch", "time", H]


def unfusable_model():
    inp, m = masked_input()
    y = rk.GRU(H, return_sequences=True, name="fine")(m)
    y = rk.LSTM(H, activation="swish", name="odd")(y)
    return keras.Model(inp, {"out": y})


def test_unfusable_layer_falls_back_with_reason_and_strict_refuses(caplog):
    model = unfusable_model()
    io = ModelIO.of(model)
    with caplog.at_level(logging.WARNING, logger="rnnkit.export"):
        result = to_onnx(model, io)
    assert result.fused_layers == ["fine"]
    assert "activation='silu'" in result.fallbacks["odd"] or "activation='swish'" in result.fallbacks["odd"]
    assert "has no ONNX equivalent" in result.fallbacks["odd"]
    assert "layer odd is not fused" in caplog.text
    assert result.op_census.get("GRU") == 1 and result.op_census.get("Loop", 0) >= 1
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = inputs_for(io, 3, 7, "right", 0)
    np.testing.assert_allclose(session.run(None, feeds)[0], np.asarray(model(feeds["seq"])["out"]), atol=1e-5)
    with pytest.raises(
        StrictExportError,
        match="--strict: not every recurrent layer can be fused: layer 'odd': LSTMCell 'lstm_cell': activation=",
    ):
        to_onnx(model, io, strict=True)


def test_opset_out_of_range():
    model = CASES["gru_seq"][0]()
    with pytest.raises(ValueError, match=r"argument `opset` must be in \[14, 18\]\. Received: opset=12"):
        to_onnx(model, ModelIO.of(model), opset=12)


class _Wrapper(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.GRU(H)

    def call(self, x):
        return self.inner(x)


def test_nested_native_layer_is_reported_not_silently_looped():
    inp = keras.Input((None, F), name="seq")
    model = keras.Model(inp, _Wrapper()(inp))
    result = to_onnx(model, ModelIO.of(model))
    ((name, reason),) = result.fallbacks.items()
    assert "keras.layers.GRU nested inside another layer is not replaced by its rnnkit twin" in reason
    assert result.op_census.get("Loop", 0) >= 1
    with pytest.raises(StrictExportError, match=f"layer '{name}': keras.layers.GRU nested"):
        to_onnx(model, ModelIO.of(model), strict=True)


def test_sequential_model():
    model = keras.Sequential([keras.Input((None, F)), rk.GRU(H, return_sequences=True), rk.LSTM(H)])
    io = ModelIO.of(model)
    result = to_onnx(model, io)
    assert result.op_census["GRU"] == 1 and result.op_census["LSTM"] == 1
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(2, 6, F)).astype("float32")
    np.testing.assert_allclose(session.run(None, {io.input_names[0]: x})[0], np.asarray(model(x)), atol=1e-5)
