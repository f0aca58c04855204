"""Encoder-decoder sessions: an exported encoder-decoder model (decoder LSTM started from the
encoder's states) serves sessions that start from the encoder's outputs and step the decoder
chunk by chunk, through Predictor.session(), Dispatch.stream (the path every front shares) and
KServe v2 REST with Triton's sequence parameters; answers equal the full model in Keras; the
request errors are pinned. Also the Triton ``<name>_encoder`` and ``<name>_decoder_step`` models:
their configs parse as Triton ``ModelConfig`` and the seeded decoder step, fed as Triton's
sequence batcher feeds it, equals Keras."""

import json
import os
import shutil
import warnings
from dataclasses import dataclass

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from rnnkit_export import export_model
from rnnkit_export.analysis.model_io import ModelIO
from rnnkit_export.repository.triton_seed import seeded_decoder_step
from rnnkit_serving import Predictor, ServingError, app
from rnnkit_serving.core.signature import Manifest
from rnnkit_serving.dispatch import Dispatch, Target
from rnnkit_serving.errors import Code, ModelLoadError
from rnnkit_serving.registry import ModelRegistry
from rnnkit_serving.scheduling.session_store import SessionStore

L = keras.layers
F, H, VOCAB = 3, 5, 9
TOL = 1e-5
STATES = ["dec_c_in", "dec_h_in"]


def encoder_decoder():
    """The issue-16 encoder-decoder: LSTM(return_state) over a masked source; the decoder LSTM over
    an embedded target starts from its [h, c]; logits per target step."""
    src = keras.Input((None, F), name="src")
    tgt = keras.Input((None,), dtype="int32", name="tgt")
    _, h, c = L.LSTM(H, return_state=True, name="enc")(L.Masking()(src))
    e = L.Embedding(VOCAB, 4, mask_zero=True)(tgt)
    y = L.LSTM(H, return_sequences=True, name="dec")(e, initial_state=[h, c])
    return keras.Model([src, tgt], L.Dense(VOCAB, name="logits")(y))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("encdec"))
    keras.utils.set_random_seed(21)
    model = encoder_decoder()
    report = export_model(model, base, "ed")
    return model, base, report


def data(batch=3, src_steps=7, tgt_steps=6, seed=0):
    """Source rows right- and left-padded with zeros (masked); target row 1 right-padded with 0 tokens."""
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(batch, src_steps, F)).astype(np.float32)
    tgt = rng.integers(1, VOCAB, size=(batch, tgt_steps)).astype(np.int32)
    if batch > 2:
        src[1, src_steps - 2 :] = 0
        src[2, :2] = 0
        tgt[1, tgt_steps - 2 :] = 0
    return src, tgt


def keras_logits(model, src, tgt):
    return np.asarray(ModelIO.of(model).call(model, {"src": src, "tgt": tgt})["logits"])


def client_for(registry, sessions=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

        return TestClient(app(registry, sessions=sessions))


# ------------------------------------------------------------------------------- manifest


def test_manifest_reads_the_encoder_and_decoder_step_graphs(exported):
    _, _, report = exported
    manifest = Manifest.read(report.path)
    assert manifest.encoder_decoder
    assert list(manifest.signatures) == ["serving_default", "encoder", "decoder_step"]
    assert manifest.signatures["encoder"].input_names == ["src"]
    assert sorted(manifest.signatures["encoder"].output_names) == STATES
    assert manifest.signatures["decoder_step"].input_names == ["tgt", "dec_h_in", "dec_c_in"]
    assert manifest.signatures["decoder_step"].output_names == ["logits", "dec_h_out", "dec_c_out"]
    assert dict(manifest.onnx_files) == {"encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx"}
    assert [(s.input, s.output, s.units) for s in manifest.states] == [
        ("dec_h_in", "dec_h_out", H),
        ("dec_c_in", "dec_c_out", H),
    ]
    assert "starts from states computed by an encoder" in manifest.streaming_reason


def test_a_manifest_whose_encoder_does_not_give_the_decoder_states_is_refused(exported, tmp_path):
    _, _, report = exported
    version = tmp_path / "ed" / "1"
    shutil.copytree(report.path, version)
    data_ = json.loads((version / "rnnkit.json").read_text())
    data_["streaming"]["encoder_decoder"]["encoder"]["outputs"][0]["name"] = "hidden"
    (version / "rnnkit.json").write_text(json.dumps(data_))
    with pytest.raises(ModelLoadError) as refused:
        Predictor.load(str(version))
    assert (
        "is not a valid rnnkit manifest: streaming.encoder_decoder: the encoder's outputs ['hidden', 'dec_c_in'] "
        "must be the decoder step's state inputs ['dec_c_in', 'dec_h_in']" in refused.value.message
    )


# ------------------------------------------------------------------------ Predictor.session


@pytest.mark.parametrize("backend", ["onnx", "tf"])
def test_session_from_the_encoder_equals_the_full_model(exported, backend):
    model, base, _ = exported
    src, tgt = data()
    want = keras_logits(model, src, tgt)
    with Predictor.load(os.path.join(base, "ed"), backend=backend) as predictor:
        assert predictor.encoder_decoder and predictor.streaming_error() is None
        np.testing.assert_allclose(predictor.predict({"src": src, "tgt": tgt})["logits"], want, atol=TOL)
        with predictor.session() as session:
            assert session.step({"src": src}) == {}  # the encoder ran: the state is set, no outputs yet
            assert sorted(session.states) == STATES
            tokens = [session.step({"tgt": tgt[:, t : t + 1]}) for t in range(tgt.shape[1])]  # token by token
            assert all(set(out) == {"logits"} for out in tokens)  # states stay inside the session
            np.testing.assert_allclose(np.concatenate([o["logits"] for o in tokens], 1), want, atol=TOL)
            session.reset()  # starts over from the encoder: source and a first chunk in one request
            other_src, other_tgt = data(seed=1, src_steps=4, tgt_steps=5)
            parts = [session.step({"src": other_src, "tgt": other_tgt[:, :2]}), session.step({"tgt": other_tgt[:, 2:]})]
            np.testing.assert_allclose(
                np.concatenate([p["logits"] for p in parts], 1), keras_logits(model, other_src, other_tgt), atol=TOL
            )


def test_session_request_errors(exported):
    _, base, _ = exported
    src, tgt = data()
    with Predictor.load(os.path.join(base, "ed")) as predictor, predictor.session() as session:
        with pytest.raises(ServingError) as missing:
            session.step({"tgt": tgt[:, :1]})
        assert missing.value.code is Code.INVALID_ARGUMENT
        assert missing.value.message == (
            "model 'ed' version 1 is an encoder-decoder: the first request of a sequence (sequence_start) must carry "
            "the encoder's source inputs ['src'] (and optionally the decoder's inputs ['tgt']); missing ['src']"
        )
        # a failed first request keeps no state: the encoder ran, but the target chunk was refused
        with pytest.raises(ServingError, match=r"input 'tgt' expects dtype int32, received float32"):
            session.step({"src": src, "tgt": tgt[:, :1].astype(np.float32) + 0.5})
        assert session.states == {}
        with pytest.raises(ServingError, match=r"must carry the encoder's source inputs \['src'\]"):
            session.step({"tgt": tgt[:, :1]})
        with pytest.raises(ServingError, match=r"input 'src' expects rank 3 with shape \[-1, -1, 3\]"):
            session.step({"src": src[0]})
        session.step({"src": src})
        with pytest.raises(ServingError) as again:
            session.step({"src": src, "tgt": tgt[:, :1]})
        assert again.value.code is Code.INVALID_ARGUMENT
        assert again.value.message == (
            "model 'ed' version 1: source inputs ['src'] are only accepted by the first request of a sequence "
            "(sequence_start), which runs the encoder; later requests carry the decoder's inputs ['tgt']"
        )
        with pytest.raises(ServingError, match="keeps the batch size of its first chunk: expected 3 rows, received 1"):
            session.step({"tgt": tgt[:1, :1]})
        with pytest.raises(ServingError, match=r"signature 'decoder_step' expects inputs \['tgt'\]; missing \['tgt'\]"):
            session.step({})


# ------------------------------------------------------------- Dispatch.stream (every front)


@dataclass
class Decoded:
    inputs: dict
    signature_name: str = "serving_default"


def test_dispatch_streams_from_the_encoder_for_any_front(exported):
    """What a front hands to Dispatch.stream (decoded inputs, sequence id and flags) is all it takes."""
    model, base, _ = exported
    src, tgt = data(seed=2)
    registry = ModelRegistry.of([Predictor.load(os.path.join(base, "ed"))])
    dispatch = Dispatch(registry, sessions=SessionStore())
    target = Target("ed")

    def stream(inputs, start=False, end=False):
        return dispatch.stream(target, "s1", start, end, lambda predictor: Decoded(inputs)).outputs

    assert stream({"src": src}, start=True) == {}
    pieces = [stream({"tgt": tgt[:, :3]}), stream({"tgt": tgt[:, 3:]}, end=True)]
    np.testing.assert_allclose(
        np.concatenate([p["logits"] for p in pieces], 1), keras_logits(model, src, tgt), atol=TOL
    )
    assert dispatch.sessions.live() == {}
    registry.close()


# ---------------------------------------------------------------------- KServe v2 over REST


def tensor(name, array):
    datatype = "INT32" if array.dtype == np.int32 else "FP32"
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.ravel().tolist()}


def body(parameters=None, **arrays):
    doc = {"inputs": [tensor(name, array) for name, array in arrays.items()]}
    if parameters is not None:
        doc["parameters"] = parameters
    return doc


def logits_of(reply):
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in reply.json()["outputs"]}
    return outputs["logits"]


def error_of(reply):
    assert reply.status_code == 400, reply.text
    return reply.json()["error"]


def test_kserve_sequence_starts_from_the_encoder(exported):
    model, base, _ = exported
    src, tgt = data(seed=3)
    want = keras_logits(model, src, tgt)
    registry = ModelRegistry.of([Predictor.load(os.path.join(base, "ed"))])
    store = SessionStore()
    url = "/v2/models/ed/infer"
    with client_for(registry, store) as client:
        started = client.post(url, json=body({"sequence_id": 7, "sequence_start": True}, src=src))
        assert started.status_code == 200, started.text
        assert started.json() == {"model_name": "ed", "model_version": "1", "outputs": []}
        # another sequence, started with its source and its first target chunk in one request
        first = client.post(url, json=body({"sequence_id": "b", "sequence_start": True}, src=src, tgt=tgt[:, :2]))
        pieces = [
            logits_of(client.post(url, json=body({"sequence_id": 7}, tgt=tgt[:, t : t + 1])))
            for t in range(tgt.shape[1] - 1)
        ]
        pieces.append(logits_of(client.post(url, json=body({"sequence_id": 7, "sequence_end": True}, tgt=tgt[:, -1:]))))
        np.testing.assert_allclose(np.concatenate(pieces, 1), want, atol=TOL)
        rest = client.post(url, json=body({"sequence_id": "b", "sequence_end": True}, tgt=tgt[:, 2:]))
        np.testing.assert_allclose(np.concatenate([logits_of(first), logits_of(rest)], 1), want, atol=TOL)
        assert store.live() == {}
        # full-model requests are unchanged: KServe infer without a sequence, TF Serving :predict
        np.testing.assert_allclose(logits_of(client.post(url, json=body(src=src, tgt=tgt))), want, atol=TOL)
        predicted = client.post("/v1/models/ed:predict", json={"inputs": {"src": src.tolist(), "tgt": tgt.tolist()}})
        assert predicted.status_code == 200, predicted.text
        np.testing.assert_allclose(np.asarray(predicted.json()["outputs"], np.float32), want, atol=TOL)
    registry.close()


def test_kserve_encoder_decoder_sequence_errors(exported):
    _, base, _ = exported
    src, tgt = data(seed=4)
    registry = ModelRegistry.of([Predictor.load(os.path.join(base, "ed"))])
    url = "/v2/models/ed/infer"
    with client_for(registry, SessionStore()) as client:
        no_source = client.post(url, json=body({"sequence_id": 1, "sequence_start": True}, tgt=tgt[:, :1]))
        assert error_of(no_source) == (
            "model 'ed' version 1 is an encoder-decoder: the first request of a sequence (sequence_start) must carry "
            "the encoder's source inputs ['src'] (and optionally the decoder's inputs ['tgt']); missing ['src']"
        )
        assert client.post(url, json=body({"sequence_id": 2, "sequence_start": True}, src=src)).status_code == 200
        mid = client.post(url, json=body({"sequence_id": 2}, src=src, tgt=tgt[:, :1]))
        assert error_of(mid) == (
            "model 'ed' version 1: source inputs ['src'] are only accepted by the first request of a sequence "
            "(sequence_start), which runs the encoder; later requests carry the decoder's inputs ['tgt']"
        )
        unexpected = client.post(url, json=body({"sequence_id": 2}, other=tgt[:, :1]))
        assert error_of(unexpected) == "unexpected inference input 'other'; the model takes ['src', 'tgt']"
        ended = client.post(url, json=body({"sequence_id": 2, "sequence_end": True}, tgt=tgt[:, :1]))
        assert ended.status_code == 200
        after_end = client.post(url, json=body({"sequence_id": 2}, tgt=tgt[:, 1:2]))
        assert "unknown sequence 2 of model 'ed': it is unknown or expired" in error_of(after_end)
        # without a sequence, the full model still needs every input
        assert error_of(client.post(url, json=body(src=src))) == "expected 2 inputs ['src', 'tgt']; missing ['tgt']"
    registry.close()


# -------------------------------------------------------------------- Triton repository


def test_triton_encoder_and_decoder_step_models(exported):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is a dev extra")
    model, base, _ = exported

    def config(name):
        with open(os.path.join(base, name, "config.pbtxt")) as handle:
            return text_format.Parse(handle.read(), model_config_pb2.ModelConfig())

    encoder, decoder = config("ed_encoder"), config("ed_decoder_step")
    assert (encoder.name, encoder.platform, encoder.default_model_filename) == (
        "ed_encoder",
        "onnxruntime_onnx",
        "encoder.onnx",
    )
    assert [(i.name, list(i.dims)) for i in encoder.input] == [("src", [-1, F])]
    assert [(o.name, list(o.dims)) for o in encoder.output] == [("dec_h_in", [H]), ("dec_c_in", [H])]
    assert encoder.HasField("dynamic_batching") and encoder.max_batch_size == 64
    assert (decoder.name, decoder.default_model_filename) == ("ed_decoder_step", "decoder_step.onnx")
    assert [(i.name, list(i.dims), i.data_type) for i in decoder.input] == [
        ("tgt", [-1], model_config_pb2.TYPE_INT32),
        ("dec_h_in", [H], model_config_pb2.TYPE_FP32),
        ("dec_c_in", [H], model_config_pb2.TYPE_FP32),
    ]
    assert [(o.name, list(o.dims)) for o in decoder.output] == [("logits", [-1, VOCAB])]
    batcher = decoder.sequence_batching
    assert batcher.HasField("direct") and not decoder.HasField("dynamic_batching")
    [control] = batcher.control_input
    assert control.name == "START"
    assert control.control[0].kind == model_config_pb2.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START
    assert list(control.control[0].int32_false_true) == [0, 1]
    assert [(s.input_name, s.output_name, list(s.dims)) for s in batcher.state] == [
        ("dec_h_carry", "dec_h_out", [H]),
        ("dec_c_carry", "dec_c_out", [H]),
    ]
    assert all(s.initial_state[0].zero_data for s in batcher.state)
    assert os.listdir(os.path.join(base, "ed_encoder", "1")) == ["encoder.onnx"]
    assert os.listdir(os.path.join(base, "ed_decoder_step", "1")) == ["decoder_step.onnx"]
    assert not os.path.exists(os.path.join(base, "ed_step"))

    # Triton's way: the encoder model, then the decoder step with START=1 and the encoder's outputs on
    # the first request (the implicit state holds its initial zeros), START=0 and the carried state after
    src, tgt = data(seed=5)
    run_encoder = ort.InferenceSession(os.path.join(base, "ed_encoder", "1", "encoder.onnx"))
    states = dict(zip([o.name for o in run_encoder.get_outputs()], run_encoder.run(None, {"src": src})))
    step = ort.InferenceSession(os.path.join(base, "ed_decoder_step", "1", "decoder_step.onnx"))
    names = [o.name for o in step.get_outputs()]
    rows = src.shape[0]
    carry = {"dec_h_carry": np.zeros((rows, H), np.float32), "dec_c_carry": np.zeros((rows, H), np.float32)}
    explicit, start, pieces = states, 1, []
    for a, b in ((0, 1), (1, 4), (4, None)):
        feed = {"tgt": tgt[:, a:b], "START": np.full((rows, 1), start, np.int32), **explicit, **carry}
        out = dict(zip(names, step.run(None, feed)))
        pieces.append(out["logits"])
        carry = {"dec_h_carry": out["dec_h_out"], "dec_c_carry": out["dec_c_out"]}
        explicit = {name: np.full((rows, H), 9.0, np.float32) for name in STATES}  # ignored after the start
        start = 0
    np.testing.assert_allclose(np.concatenate(pieces, 1), keras_logits(model, src, tgt), atol=TOL)


def test_seeding_names_the_missing_state_inputs(exported):
    _, _, report = exported
    graph = onnx.load(os.path.join(report.path, "decoder_step.onnx"))
    with pytest.raises(ValueError, match=r"the decoder step graph has no state inputs \['enc_h_in'\]"):
        seeded_decoder_step(graph, ["dec_h_in", "enc_h_in"])
