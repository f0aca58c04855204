"""rnnkit_export.analysis.streamability / rnnkit_export.streaming.step.plan_streaming: which models get a step graph, and why not.

Fast: no conversion, only the Keras graph walk and one tiny Keras call per model."""

import keras
import pytest

from rnnkit import layers as rk
from rnnkit_export.analysis.model_io import ModelIO
from rnnkit_export.analysis.streamability import analyze
from rnnkit_export.streaming.step import plan_streaming

F, H = 3, 4
L = keras.layers


def seq(name="x", features=F):
    return keras.Input((None, features), name=name)


def model_of(build):
    inp = seq()
    return keras.Model(inp, build(inp))


# name -> (builder, blocking layer or None when streamable, words the reason must contain)
VERDICTS = {
    "dense_masking_lstm": (
        lambda: model_of(lambda x: L.Dense(2)(rk.LSTM(H, return_sequences=True)(L.Masking()(x)))),
        None,
        "",
    ),
    "conv1d_kernel_1_is_per_step": (
        lambda: model_of(lambda x: rk.GRU(H)(L.Conv1D(5, 1, name="pointwise")(x))),
        None,
        "",
    ),
    "einsum_dense_on_features": (
        lambda: model_of(lambda x: rk.GRU(H)(L.EinsumDense("btf,fo->bto", output_shape=(None, 5))(x))),
        None,
        "",
    ),
    "keras_ops_residual": (
        lambda: model_of(lambda x: (lambda y: keras.ops.tanh(y) + y)(rk.LSTM(H, return_sequences=True)(x))),
        None,
        "",
    ),
    "time_distributed_head": (
        lambda: model_of(lambda x: L.TimeDistributed(L.Dense(2))(rk.GRU(H, return_sequences=True)(x))),
        None,
        "",
    ),
    "layer_norm_features": (
        lambda: model_of(lambda x: rk.LSTM(H)(L.LayerNormalization()(x))),
        None,
        "",
    ),
    "conv1d_same": (
        lambda: model_of(lambda x: rk.LSTM(H)(L.Conv1D(4, 3, padding="same", name="conv")(x))),
        "conv",
        "layer 'conv' (Conv1D) convolves over time (kernel_size 3, strides 1)",
    ),
    "pooling": (
        lambda: model_of(lambda x: rk.LSTM(H)(L.MaxPooling1D(2, name="pool")(x))),
        "pool",
        "layer 'pool' (MaxPooling1D) pools over neighbouring time steps",
    ),
    "self_attention": (
        lambda: model_of(lambda x: (lambda h: L.Attention(name="att")([h, h]))(rk.LSTM(H, return_sequences=True)(x))),
        "att",
        "layer 'att' (Attention) attends across time steps",
    ),
    "global_pooling_after_rnn": (
        lambda: model_of(lambda x: L.GlobalAveragePooling1D(name="gap")(rk.GRU(H, return_sequences=True)(x))),
        "gap",
        "reduces over the whole time axis",
    ),
    "bidirectional": (
        lambda: model_of(lambda x: L.Dense(2)(rk.Bidirectional(rk.GRU(H, return_sequences=True), name="bi")(x))),
        "bi",
        "layer 'bi' (Bidirectional) is bidirectional",
    ),
    "go_backwards": (
        lambda: model_of(lambda x: rk.GRU(H, go_backwards=True, name="back")(x)),
        "back",
        "layer 'back' runs backwards (go_backwards=True)",
    ),
    "lambda_is_unknown": (
        lambda: model_of(lambda x: rk.GRU(H)(L.Lambda(lambda t: t * 2.0, name="lam")(x))),
        "lam",
        "Lambda layer",
    ),
    "reduction_over_time": (
        lambda: model_of(lambda x: keras.ops.mean(rk.GRU(H, return_sequences=True)(x), axis=1)),
        "mean",
        "(Mean) works along axis [1]",
    ),
    "repeat_vector_autoencoder": (
        lambda: model_of(lambda x: rk.LSTM(H, return_sequences=True, name="dec")(L.RepeatVector(5)(rk.LSTM(H)(x)))),
        "dec",
        "layer 'dec' reads a sequence that depends on a whole input sequence",
    ),
}


@pytest.mark.parametrize("case", list(VERDICTS))
def test_verdict_names_the_layer_and_the_reason(case):
    build, layer, words = VERDICTS[case]
    model = build()
    verdict = analyze(model)
    assert verdict.streamable == (layer is None), verdict.reason
    assert verdict.layer == layer
    if layer is not None:
        assert words in verdict.reason
        plan = plan_streaming(model, ModelIO.of(model))
        assert plan.to_json()["streamable"] is False and plan.mode == "none"
        assert plan.to_json()["layer"] == layer and words in plan.to_json()["reason"]


def test_fixed_length_input_has_nothing_to_stream():
    inp = keras.Input((6, F), name="x")
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(rk.GRU(H, return_sequences=True)(inp))))
    plan = plan_streaming(model, ModelIO.of(model))
    assert plan.mode == "none" and plan.layer is None
    assert plan.reason == "no input has a dynamic time axis (axis 1), so there is nothing to cut into chunks"


def test_side_input_and_whole_sequence_outputs_stream():
    x, meta = seq("audio"), keras.Input((2,), name="meta")
    h = rk.GRU(H, return_sequences=True, name="gru")(L.Masking()(x))
    last = rk.LSTM(H, name="last")(h)
    model = keras.Model(
        {"audio": x, "meta": meta},
        {"frames": L.Dense(2)(h), "label": L.Dense(3)(L.Concatenate()([last, meta]))},
    )
    plan = plan_streaming(model, ModelIO.of(model))
    assert plan.reason is None and plan.mode == "step"
    assert plan.sequence_inputs == ["audio"] and plan.sequence_outputs == ["frames"]
    assert [s["input"] for s in plan.to_json()["states"]] == ["gru_h_in", "last_h_in", "last_c_in"]


def test_whole_sequence_value_mixed_into_steps_is_refused():
    x = seq()
    h = rk.GRU(H, return_sequences=True)(x)
    summary = L.RepeatVector(1)(rk.GRU(H)(x))  # [B, 1, H], broadcast over time below
    model = keras.Model(x, L.Add(name="mix")([h, keras.ops.broadcast_to(summary, keras.ops.shape(h))]))
    verdict = analyze(model)
    assert not verdict.streamable
    assert verdict.layer == "mix"
    assert verdict.reason.startswith(
        "layer 'mix' (Add) combines per-step values with a value that depends on a whole sequence"
    )


def test_encoder_decoder_plan():
    src, tgt = seq("src"), keras.Input((None,), dtype="int32", name="tgt")
    _, h, c = rk.LSTM(H, return_state=True, name="enc")(src)
    e = L.Embedding(7, 5, mask_zero=True)(tgt)
    y = rk.LSTM(H, return_sequences=True, name="dec")(e, initial_state=[h, L.Dense(H, name="bridge")(c)])
    y = rk.GRU(H, return_sequences=True, name="dec2")(y)
    model = keras.Model([src, tgt], L.Dense(7, name="logits")(y))
    plan = plan_streaming(model, ModelIO.of(model))
    assert plan.mode == "encoder_decoder" and plan.layer == "dec" and plan.to_json()["streamable"] is False
    assert "layer 'dec' starts from states computed by an encoder from ['src']" in plan.reason
    pair = plan.encoder_decoder.to_json()
    assert [t["name"] for t in pair["encoder"]["inputs"]] == ["src"]
    assert [t["name"] for t in pair["encoder"]["outputs"]] == ["dec_h_in", "dec_c_in", "dec2_h_in"]
    assert [t["name"] for t in pair["decoder_step"]["inputs"]] == ["tgt", "dec_h_in", "dec_c_in", "dec2_h_in"]
    assert [t["name"] for t in pair["decoder_step"]["outputs"]] == ["logits", "dec_h_out", "dec_c_out", "dec2_h_out"]


def test_decoder_that_attends_to_the_encoder_cannot_stream():
    src, tgt = seq("src"), seq("tgt")
    enc, h, c = rk.LSTM(H, return_sequences=True, return_state=True, name="enc")(src)
    y = rk.LSTM(H, return_sequences=True, name="dec")(tgt, initial_state=[h, c])
    model = keras.Model([src, tgt], L.Attention(name="att")([y, enc]))
    plan = plan_streaming(model, ModelIO.of(model))
    assert plan.mode == "none" and plan.encoder_decoder is None
    assert plan.layer == "att" and plan.reason.startswith("layer 'att' (Attention) attends across time steps")


def test_streaming_off_and_bad_mode():
    model = model_of(lambda x: rk.GRU(H)(x))
    plan = plan_streaming(model, ModelIO.of(model), "off")
    assert plan.mode == "off" and plan.reason == "streaming is off (--streaming off)"
    with pytest.raises(ValueError, match=r"argument `streaming` must be one of \('auto', 'off', 'required'\)"):
        plan_streaming(model, ModelIO.of(model), "sometimes")
