"""A corpus of common Keras sequence architectures: each exports with fused recurrent ops only
(no Loop/Scan in any graph), matches Keras on padded inputs, gets the right streaming verdict,
and serves (``rnnkit_serving.Predictor`` in-process) with the answers Keras gives.

The three models of issue 16 (CNN-LSTM, encoder-decoder, tagger with a TimeDistributed head)
failed to export before; they are cases here and are also served."""

import collections
import functools
import json
import logging
import os
import re

import keras
import numpy as np
import onnxruntime as ort
import pytest

from rnnkit import layers as rk
from rnnkit_export import ExportError, export_model
from rnnkit_export.analysis.model_io import ModelIO
from rnnkit_serving import Predictor
from rnnkit_serving.core.signature import Signature, TensorSpec
from rnnkit_serving.errors import ServingError
from rnnkit_serving.runtime.onnx_backend import OnnxBackend

logging.getLogger("tf2onnx").setLevel(logging.ERROR)
L = keras.layers
F, H, VOCAB = 3, 4, 11
LOOPS = ("Loop", "Scan")
TOLERANCE = 1e-5


def attention_text_classifier():
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    e = L.Embedding(VOCAB, 6, mask_zero=True)(tokens)
    h = L.LSTM(H, return_sequences=True, name="lstm")(e)
    a = L.Attention(name="attention")([h, h])
    pooled = L.GlobalAveragePooling1D()(a)
    return keras.Model(tokens, {"probs": L.Dense(3, activation="softmax")(pooled)})


def cnn_lstm():  # issue 16, failure 1
    x = keras.Input((None, F), name="x")
    y = L.Conv1D(6, 3, padding="same", activation="relu", name="conv")(x)
    y = L.MaxPooling1D(2, padding="same")(y)
    y = L.LSTM(H, name="lstm")(y)
    return keras.Model(x, L.Dense(2, name="out")(y))


def encoder_decoder():  # issue 16, failure 2
    src = keras.Input((None, F), name="src")
    tgt = keras.Input((None,), dtype="int32", name="tgt")
    _, h, c = L.LSTM(H, return_state=True, name="enc")(L.Masking()(src))
    e = L.Embedding(VOCAB, 5, mask_zero=True)(tgt)
    y = L.LSTM(H, return_sequences=True, name="dec")(e, initial_state=[h, c])
    return keras.Model([src, tgt], L.Dense(VOCAB, name="logits")(y))


def tagger():  # issue 16, failure 3
    x = keras.Input((None, F), name="x")
    y = L.Bidirectional(L.LSTM(H, return_sequences=True), name="bi")(L.Masking()(x))
    return keras.Model(x, L.TimeDistributed(L.Dense(5), name="tags")(y))


def multi_input_dict_outputs():
    audio = keras.Input((None, F), name="audio")
    meta = keras.Input((2,), name="meta")
    h = L.GRU(H, return_sequences=True, name="gru")(L.Masking()(audio))
    last = L.LSTM(H, name="summary")(h)
    return keras.Model(
        {"audio": audio, "meta": meta},
        {
            "frames": L.TimeDistributed(keras.Sequential([L.Dense(5, activation="tanh"), L.Dense(2)]))(h),
            "label": L.Dense(3, activation="softmax")(L.Concatenate()([last, meta])),
        },
    )


def stacked_bidirectional_residual():
    x = keras.Input((None, F), name="x")
    m = L.Masking()(x)
    b1 = L.Bidirectional(L.LSTM(H, return_sequences=True), name="bi1")(m)
    b2 = L.Bidirectional(L.LSTM(H, return_sequences=True), name="bi2")(b1)
    r = L.Add()([b1, b2])
    b3 = L.Bidirectional(L.GRU(H, return_sequences=True), name="bi3")(r)
    return keras.Model(x, {"y": L.Dense(2)(L.Add()([r, b3]))})


def gru_reset_before():
    x = keras.Input((None, F), name="x")
    y = L.GRU(H, reset_after=False, return_sequences=True, name="gru")(L.Masking()(x))
    y = L.LayerNormalization()(y)
    return keras.Model(x, {"y": L.TimeDistributed(L.Dense(2))(y)})


def lstm_peepholes():
    x = keras.Input((None, F), name="x")
    peep = {"use_peepholes": True, "peephole_initializer": keras.initializers.RandomNormal(stddev=0.5, seed=1)}
    y = rk.LSTM(H, return_sequences=True, name="p1", **peep)(L.Masking()(x))
    last = rk.LSTM(H, name="p2", **peep)(y)
    return keras.Model(x, {"steps": L.Dense(2)(y), "last": L.Dense(1)(last)})


def hierarchical_char_word():
    """Characters -> word vectors (an LSTM per word, inside TimeDistributed) -> a GRU over words."""
    chars = keras.Input((None, 5, F), name="chars")
    words = L.TimeDistributed(rk.LSTM(H, name="char_lstm"), name="word_encoder")(chars)
    y = L.GRU(H, return_sequences=True, name="word_gru")(words)
    return keras.Model(chars, {"y": L.Dense(2)(y)})


# name -> (builder, fused op counts in model.onnx, streaming mode, layer named by the verdict)
CORPUS = {
    "attention_text_classifier": (attention_text_classifier, {"LSTM": 1}, "none", "attention"),
    "cnn_lstm": (cnn_lstm, {"LSTM": 1}, "none", "conv"),
    "encoder_decoder": (encoder_decoder, {"LSTM": 2}, "encoder_decoder", "dec"),
    "tagger": (tagger, {"LSTM": 1}, "none", "bi"),
    "multi_input_dict_outputs": (multi_input_dict_outputs, {"GRU": 1, "LSTM": 1}, "step", None),
    "stacked_bidirectional_residual": (stacked_bidirectional_residual, {"LSTM": 2, "GRU": 1}, "none", "bi1"),
    "gru_reset_before": (gru_reset_before, {"GRU": 1}, "step", None),
    "lstm_peepholes": (lstm_peepholes, {"LSTM": 2}, "step", None),
    "hierarchical_char_word": (hierarchical_char_word, {"LSTM": 1, "GRU": 1}, "step", None),
}
ISSUE_MODELS = ("cnn_lstm", "encoder_decoder", "tagger")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(tmp_path_factory.mktemp("corpus"))


@functools.cache
def exported(base, case):
    keras.utils.set_random_seed(16)
    model = CORPUS[case][0]()
    return model, export_model(model, base, case)


def padded_inputs(io, batch=3, steps=9, seed=5):
    """Random inputs; sequence rows right-padded, left-padded and holed with zeros (the mask value)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for info in io.inputs:
        shape = [batch] + [steps if d is None else d for d in info.shape[1:]]
        if np.issubdtype(np.dtype(info.dtype), np.integer):
            array = rng.integers(1, VOCAB, size=shape).astype(info.dtype)
        else:
            array = rng.normal(size=shape).astype(info.dtype)
        if len(info.shape) >= 2 and info.shape[1] is None:
            array[1, steps - 3 :] = 0  # right padding
            array[2, :2] = 0  # left padding
            array[2, 5] = 0  # a hole
        feed[info.name] = array
    return feed


def onnx_run(path, feed):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(names, {k: v for k, v in feed.items() if k in wanted})))


def chunked(run, feed, sequence_inputs, states, pairs, bounds=(0, 1, 4, None)):
    """Run a step graph over `feed` in chunks; states carried (input name -> output name in `pairs`)."""
    pieces = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        part = {k: (v[:, start:stop] if k in sequence_inputs else v) for k, v in feed.items()}
        out = run({**part, **states})
        states = {i: out[o] for i, o in pairs.items()}
        pieces.append(out)
    return pieces


@pytest.mark.parametrize("case", list(CORPUS))
def test_corpus_exports_fused_exact_with_the_right_streaming_verdict(base, case):
    _, fused, mode, layer = CORPUS[case]
    model, report = exported(base, case)
    manifest = json.load(open(os.path.join(report.path, "rnnkit.json")))
    # fused recurrent ops only
    assert report.fallbacks == {}
    assert {op: n for op, n in report.op_census.items() if op in ("LSTM", "GRU", "RNN")} == fused
    for census in ("op_census", "step_op_census", "encoder_op_census", "decoder_step_op_census"):
        assert not [op for op in manifest[census] if op in LOOPS], (census, manifest[census])
    # the streaming verdict, in the report and in rnnkit.json
    streaming = manifest["streaming"]
    assert streaming["mode"] == mode and streaming["layer"] == layer
    assert streaming["streamable"] is (mode == "step")
    if case == "hierarchical_char_word":  # the LSTM inside TimeDistributed restarts every word: no carried state
        assert [s["layer"] for s in streaming["states"]] == ["word_gru"]
    files = set(os.listdir(report.path))
    assert ("step.onnx" in files) is (mode == "step")
    assert {"encoder.onnx", "decoder_step.onnx"} <= files if mode == "encoder_decoder" else not files & {"encoder.onnx"}
    if mode == "none":
        assert streaming["reason"].startswith(f"layer '{layer}' (")
        assert f"streaming: none ({streaming['reason']})" in report.summary()
    # export's own parity (every backend and streaming graph) and an independent padded check
    assert report.parity["passed"] and max(report.parity["max_abs_diff"].values()) <= TOLERANCE
    io = ModelIO.of(model)
    feed = padded_inputs(io)
    want = io.call(model, feed)
    got = onnx_run(os.path.join(report.path, "model.onnx"), feed)
    for name in io.output_names:
        np.testing.assert_allclose(got[name], np.asarray(want[name]), atol=TOLERANCE, err_msg=name)


@pytest.mark.parametrize(
    "case", ["multi_input_dict_outputs", "gru_reset_before", "lstm_peepholes", "hierarchical_char_word"]
)
def test_step_graph_streams_like_keras(base, case):
    model, report = exported(base, case)
    io = ModelIO.of(model)
    feed = padded_inputs(io, seed=8)
    want = io.call(model, feed)
    states_json = report.streaming["states"]
    pairs = {s["input"]: s["output"] for s in states_json}
    batch = next(iter(feed.values())).shape[0]
    zeros = {s["input"]: np.zeros((batch, s["units"]), np.float32) for s in states_json}
    sequence_inputs = [t.name for t in io.inputs if len(t.shape) >= 2 and t.shape[1] is None]
    path = os.path.join(report.path, "step.onnx")
    pieces = chunked(lambda f: onnx_run(path, f), feed, sequence_inputs, zeros, pairs)
    for info in io.outputs:
        got = np.concatenate([p[info.name] for p in pieces], 1) if info.shape[1] is None else pieces[-1][info.name]
        np.testing.assert_allclose(got, np.asarray(want[info.name]), atol=TOLERANCE, err_msg=info.name)


def test_served_side_input_model_streams_in_a_session(base):
    model, report = exported(base, "multi_input_dict_outputs")
    feed = padded_inputs(ModelIO.of(model), seed=9)
    want = ModelIO.of(model).call(model, feed)
    with Predictor.load(os.path.join(base, "multi_input_dict_outputs")) as predictor, predictor.session() as s:
        pieces = [s.step({"audio": feed["audio"][:, a:b], "meta": feed["meta"]}) for a, b in ((0, 2), (2, 3), (3, 9))]
    np.testing.assert_allclose(np.concatenate([p["frames"] for p in pieces], 1), want["frames"], atol=TOLERANCE)
    np.testing.assert_allclose(pieces[-1]["label"], want["label"], atol=TOLERANCE)


@pytest.mark.parametrize("case", ISSUE_MODELS)
def test_issue_models_serve_like_keras(base, case):
    model, report = exported(base, case)
    io = ModelIO.of(model)
    feed = padded_inputs(io, batch=3, steps=7, seed=3)
    want = io.call(model, feed)
    with Predictor.load(os.path.join(base, case)) as predictor:
        got = predictor.predict(feed)
        for name in io.output_names:
            np.testing.assert_allclose(got[name], np.asarray(want[name]), atol=TOLERANCE, err_msg=name)
        if case == "encoder_decoder":  # sessions start from the encoder (tests/test_serving_encoder_decoder.py)
            with predictor.session() as session:
                assert session.step({"src": feed["src"]}) == {}
                steps = [session.step({"tgt": feed["tgt"][:, t : t + 1]})["logits"] for t in range(7)]
            np.testing.assert_allclose(np.concatenate(steps, 1), np.asarray(want["logits"]), atol=TOLERANCE)
            return
        with pytest.raises(ServingError, match="cannot stream") as refused:
            predictor.session()
        assert report.streaming["reason"] in str(refused.value)


def _backend(version_dir, entry):
    def specs(items):
        return tuple(TensorSpec.from_json(t) for t in items)

    signature = Signature(entry["signature"], specs(entry["inputs"]), specs(entry["outputs"]))
    return OnnxBackend(os.path.join(version_dir, entry["file"]), signature)


def test_encoder_then_decoder_step_served_token_by_token(base):
    """The encoder graph starts a decoder session; the decoder step graph is fed chunks of the target."""
    model, report = exported(base, "encoder_decoder")
    pair = report.streaming["encoder_decoder"]
    io = ModelIO.of(model)
    feed = padded_inputs(io, batch=3, steps=6, seed=4)
    want = np.asarray(io.call(model, feed)["logits"])
    full = Predictor.load(os.path.join(base, "encoder_decoder"))
    backends = {
        "serving_default": full._backend("serving_default"),
        "encoder": _backend(report.path, pair["encoder"]),
        "decoder_step": _backend(report.path, pair["decoder_step"]),
    }
    with Predictor("encoder_decoder", 1, backends) as predictor:
        states = predictor.predict({"src": feed["src"]}, "encoder")
        assert sorted(states) == ["dec_c_in", "dec_h_in"]
        pairs = {s["input"]: s["output"] for s in pair["states"]}
        pieces = []
        for t in range(feed["tgt"].shape[1]):  # token by token
            out = predictor.predict({"tgt": feed["tgt"][:, t : t + 1], **states}, "decoder_step")
            states = {i: out[o] for i, o in pairs.items()}
            pieces.append(out["logits"])
    np.testing.assert_allclose(np.concatenate(pieces, 1), want, atol=TOLERANCE)


# ------------------------------------------------------------------ --streaming auto|off|required


def test_streaming_required_fails_with_the_layer_and_reason(tmp_path):
    with pytest.raises(ExportError) as failed:
        export_model(cnn_lstm(), str(tmp_path), "m", streaming="required")
    assert str(failed.value) == (
        "--streaming required: model 'm' cannot be streamed: layer 'conv' (Conv1D) convolves over time "
        "(kernel_size 3, strides 1): chunk-by-chunk execution would differ from the full run; nothing was published"
    )
    assert not os.path.exists(tmp_path / "m") or os.listdir(tmp_path / "m") == []


def test_streaming_off_writes_no_step_graph(tmp_path):
    report = export_model(gru_reset_before(), str(tmp_path), "m", streaming="off")
    assert "step.onnx" not in os.listdir(report.path) and report.signatures == ["serving_default"]
    assert report.streaming == {
        "streamable": False,
        "mode": "off",
        "reason": "streaming is off (--streaming off)",
        "layer": None,
        "states": [],
    }
    assert not os.path.exists(tmp_path / "m_step")


def test_a_failing_step_graph_never_blocks_the_full_model(tmp_path, monkeypatch):
    import rnnkit_export.api

    def broken(*args, **kwargs):
        raise RuntimeError("injected step failure")

    monkeypatch.setattr(rnnkit_export.api, "to_onnx_step", broken)
    with pytest.raises(ExportError, match=r"^--streaming required: the ONNX streaming graph could not be built: "):
        export_model(gru_reset_before(), str(tmp_path), "req", streaming="required")
    assert os.listdir(tmp_path / "req") == []
    report = export_model(gru_reset_before(), str(tmp_path), "auto")
    assert report.streaming["streamable"] is False and report.streaming["mode"] == "none"
    assert report.streaming["reason"] == (
        "the ONNX streaming graph could not be built: injected step failure (the full model was exported without it)"
    )
    assert report.signatures == ["serving_default"] and "step.onnx" not in os.listdir(report.path)
    assert report.parity["passed"] and not [k for k in report.parity["max_abs_diff"] if "step" in k]
    assert not os.path.exists(tmp_path / "auto_step")
    manifest = json.load(open(os.path.join(report.path, "rnnkit.json")))
    assert manifest["streaming"] == report.streaming and manifest["signatures"] == ["serving_default"]


def test_a_step_graph_failing_parity_is_dropped_by_its_graph_kind(tmp_path, monkeypatch):
    """The chunked step graph answers 1.0 off: the parity result says the failing comparison concerns
    the streaming graph (not the full model), so `auto` drops the step graph and `required` fails."""
    import rnnkit_export.verify.parity as parity

    real = parity.run_chunked

    def off_by_one(*args, **kwargs):
        return {name: np.asarray(value) + 1.0 for name, value in real(*args, **kwargs).items()}

    monkeypatch.setattr(parity, "run_chunked", off_by_one)
    failing = r"the streaming graph failed its parity check \('onnx_step/y': max \|difference\| 1\.000e\+00 exceeds tolerance 1e-05\)"
    with pytest.raises(ExportError, match=rf"^--streaming required: {failing}; version 1 was not published$"):
        export_model(gru_reset_before(), str(tmp_path), "req", formats="onnx", streaming="required")
    assert os.listdir(tmp_path / "req") == []
    report = export_model(gru_reset_before(), str(tmp_path), "auto", formats="onnx")
    assert report.streaming["mode"] == "none" and "step.onnx" not in os.listdir(report.path)
    assert re.fullmatch(rf"{failing} \(the full model was exported without it\)", report.streaming["reason"])
    assert report.parity["passed"] and sorted(report.parity["max_abs_diff"]) == ["onnx/y"]


def test_cli_streaming_flag(tmp_path, capsys):
    from rnnkit_cli import main

    path = tmp_path / "cnn.keras"
    cnn_lstm().save(path)
    args = ["export", str(path), "--model_base_path", str(tmp_path / "repo"), "--model_name", "cnn"]
    assert main([*args, "--streaming", "required"]) == 1
    assert (
        "rnnkit export: --streaming required: model 'cnn' cannot be streamed: layer 'conv'" in capsys.readouterr().err
    )
    assert main(args) == 0
    assert "streaming: none (layer 'conv' (Conv1D) convolves over time" in capsys.readouterr().out


def test_encoder_decoder_savedmodel_signatures_and_warmup(base):
    import tensorflow as tf

    from rnnkit_export.savedmodel.warmup import read_warmup

    _, report = exported(base, "encoder_decoder")
    assert report.signatures == ["serving_default", "encoder", "decoder_step"]
    for key in ("savedmodel_encoder_decoder/logits", "onnx_encoder_decoder/logits"):
        assert report.parity["max_abs_diff"][key] <= TOLERANCE
    loaded = tf.saved_model.load(report.path)
    encoder, decoder = loaded.signatures["encoder"], loaded.signatures["decoder_step"]
    assert sorted(encoder.structured_outputs) == ["dec_c_in", "dec_h_in"]
    assert sorted(decoder.structured_outputs) == ["dec_c_out", "dec_h_out", "logits"]
    replayed = collections.Counter()
    for request in read_warmup(report.path):
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert all(np.isfinite(v.numpy()).all() for v in outputs.values())
        replayed[request.model_spec.signature_name] += 1
    assert replayed == {"serving_default": 4, "encoder": 4, "decoder_step": 4}
