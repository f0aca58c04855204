"""Streaming sessions: chunked == full sequence for every unidirectional layer kind (through
Predictor.session and KServe HTTP with Triton's sequence parameters), bidirectional refusal,
idle expiry, the live-session bound, and their metrics."""

import json
import os
import warnings

import numpy as np
import pytest
import serving_repo

from rnnkit_serving import Predictor, ServingError, app
from rnnkit_serving.codecs.kserve.sequence import sequence_id
from rnnkit_serving.core.metrics import Metrics
from rnnkit_serving.errors import Code, wire_error
from rnnkit_serving.registry import ModelRegistry
from rnnkit_serving.scheduling.session_store import SessionOptions, SessionStore

TOL = 1e-5
CHUNKS = (1, 4, 3, 5)
STEPS = sum(CHUNKS)  # 13


@pytest.fixture(scope="module")
def repo():
    return serving_repo.shared_repository()


def sequence(rows=2, steps=STEPS, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, steps, 3)).astype(np.float32)


def chunks(x):
    start = 0
    for size in CHUNKS:
        yield x[:, start : start + size]
        start += size


def client_for(registry, sessions=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

        return TestClient(app(registry, sessions=sessions))


# ------------------------------------------------------------------------- Predictor.session


@pytest.mark.parametrize("kind", serving_repo.STREAMING_KINDS)
def test_chunked_session_equals_the_full_sequence(repo, kind):
    x = sequence()
    with Predictor.load(os.path.join(repo, kind.lower())) as predictor:
        full = predictor.predict({"x": x})
        with predictor.session() as session:
            parts = [session.step({"x": chunk}) for chunk in chunks(x)]
            assert set(session.states) == {p.input for p in predictor.states}
            np.testing.assert_allclose(np.concatenate([p["y"] for p in parts], axis=1), full["y"], atol=TOL)
            np.testing.assert_allclose(parts[-1]["last"], full["last"], atol=TOL)
            assert set(parts[0]) == {"y", "last"}  # states stay inside the session
            session.reset()
            again = session.step({"x": x[:, :5]})
            np.testing.assert_allclose(again["y"], predictor.predict({"x": x[:, :5]})["y"], atol=TOL)
            with pytest.raises(ServingError, match="keeps the batch size of its first chunk: expected 2"):
                session.step({"x": x[:1, :2]})
        with pytest.raises(ServingError, match="session is closed"):
            session.step({"x": x[:, :1]})


@pytest.mark.parametrize("kind", serving_repo.STREAMING_KINDS)
def test_masked_steps_streamed_one_at_a_time_carry_the_last_output_as_keras_does(repo, kind):
    """Issue 21, D11: a chunk whose steps are all masked answered zeros; Keras (and the whole
    sequence in one request) carry the last valid output through masked steps."""
    x = sequence(rows=3)
    x[0, [0, 4, 5, 9]] = 0.0  # masked steps first, inside and in a row
    x[1, 6:] = 0.0  # right padding
    x[2, :3] = 0.0  # left padding
    keras_model = serving_repo.streaming_model(kind)
    want = {k: np.asarray(v) for k, v in keras_model(x).items()}
    with Predictor.load(os.path.join(repo, kind.lower())) as predictor, predictor.session() as session:
        full = predictor.predict({"x": x})
        parts = [session.step({"x": x[:, t : t + 1]}) for t in range(x.shape[1])]
    streamed = np.concatenate([p["y"] for p in parts], axis=1)
    np.testing.assert_allclose(full["y"], want["y"], atol=TOL)
    np.testing.assert_allclose(streamed, want["y"], atol=TOL)
    np.testing.assert_allclose(parts[-1]["last"], want["last"], atol=TOL)
    assert np.abs(streamed[0, 5]).max() > 0.01  # a masked step inside carries a non-zero output


def test_bidirectional_models_refuse_sessions_with_exports_reason(repo):
    with open(os.path.join(repo, "pair", "1", "rnnkit.json")) as handle:
        reason = json.load(handle)["streaming"]["reason"]
    assert reason
    with Predictor.load(os.path.join(repo, "pair")) as predictor:
        with pytest.raises(ServingError, match="cannot stream") as refused:
            predictor.session()
        assert reason in refused.value.message and refused.value.code is Code.FAILED_PRECONDITION


def test_session_inputs_are_validated(repo):
    with Predictor.load(os.path.join(repo, "gru")) as predictor, predictor.session() as session:
        with pytest.raises(ServingError, match=r"input 'x' expects shape \[-1, -1, 3\]"):
            session.step({"x": np.zeros((1, 2, 4), np.float32)})
        with pytest.raises(ServingError, match="unexpected"):
            session.step({"x": np.zeros((1, 2, 3), np.float32), "rec_h_in": np.zeros((1, 8), np.float32)})


# ----------------------------------------------------------------------------- SessionStore


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_idle_sessions_expire_and_unknown_sequences_are_refused(repo):
    clock = Clock()
    store = SessionStore(SessionOptions(idle_seconds=10, max_sessions=4), clock)
    x = sequence(rows=1)
    with Predictor.load(os.path.join(repo, "lstm")) as predictor:
        store.step(predictor, 7, {"x": x[:, :2]}, start=True)
        clock.now += 9
        store.step(predictor, 7, {"x": x[:, 2:4]})  # still live: 9 s < 10 s
        assert store.live() == {"lstm": 1}
        clock.now += 10.5
        assert store.live() == {} and store.evicted == {"lstm": 1}
        with pytest.raises(ServingError, match="unknown or expired") as gone:
            store.step(predictor, 7, {"x": x[:, 4:6]})
        code, _, status = wire_error(gone.value)
        assert code is Code.FAILED_PRECONDITION and status == 400
        with pytest.raises(ServingError, match="unknown or expired"):
            store.step(predictor, "never-started", {"x": x[:, :1]})


def test_the_number_of_live_sessions_is_bounded(repo):
    store = SessionStore(SessionOptions(idle_seconds=60, max_sessions=2))
    x = sequence(rows=1)
    with Predictor.load(os.path.join(repo, "gru")) as predictor:
        store.step(predictor, 1, {"x": x[:, :1]}, start=True)
        store.step(predictor, "two", {"x": x[:, :1]}, start=True)
        with pytest.raises(ServingError, match=r"2 sequences are live, the limit \(--max_sessions=2\)") as full:
            store.step(predictor, 3, {"x": x[:, :1]}, start=True)
        code, _, status = wire_error(full.value)
        assert code is Code.RESOURCE_EXHAUSTED and status == 429
        store.step(predictor, 1, {"x": x[:, :1]}, start=True)  # restarting a live sequence needs no slot
        store.step(predictor, 1, {"x": x[:, 1:2]}, end=True)  # sequence_end frees its slot
        store.step(predictor, 3, {"x": x[:, :1]}, start=True)
        assert store.live() == {"gru": 2}


def test_sequence_parameters_follow_triton():
    assert sequence_id({}) is None
    assert sequence_id({"sequence_id": 0}) is None
    assert sequence_id({"sequence_id": 7, "sequence_start": True}) == 7
    assert sequence_id({"sequence_id": "abc"}) == "abc"
    with pytest.raises(ServingError, match="must specify a non-zero or non-empty correlation ID"):
        sequence_id({"sequence_start": True})
    with pytest.raises(ServingError, match="'sequence_end' must be a boolean"):
        sequence_id({"sequence_id": 1, "sequence_end": "yes"})
    with pytest.raises(ServingError, match="unsigned integer or a string"):
        sequence_id({"sequence_id": 1.5})


# ------------------------------------------------------------------------ over KServe HTTP


def infer_body(x, **parameters):
    return {
        "id": "chunk",
        "parameters": parameters,
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
    }


def outputs_of(reply):
    assert reply.status_code == 200, reply.text
    return {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in reply.json()["outputs"]}


@pytest.mark.parametrize("kind", serving_repo.STREAMING_KINDS)
def test_kserve_sequence_parameters_stream_state_on_the_server(repo, kind):
    name = kind.lower()
    predictor = Predictor.load(os.path.join(repo, name))
    registry = ModelRegistry.of([predictor])
    x = sequence(seed=3)
    full = predictor.predict({"x": x})
    store = SessionStore()
    with client_for(registry, store) as client:
        parts = []
        pieces = list(chunks(x))
        for index, chunk in enumerate(pieces):
            flags = {"sequence_start": index == 0, "sequence_end": index == len(pieces) - 1}
            parts.append(
                outputs_of(client.post(f"/v2/models/{name}/infer", json=infer_body(chunk, sequence_id=42, **flags)))
            )
            if index == 0:  # another sequence interleaved: states are per sequence
                client.post(
                    f"/v2/models/{name}/infer",
                    json=infer_body(x[:, :3] * 0.5, sequence_id="other", sequence_start=True),
                )
        np.testing.assert_allclose(np.concatenate([p["y"] for p in parts], axis=1), full["y"], atol=TOL)
        np.testing.assert_allclose(parts[-1]["last"], full["last"], atol=TOL)
        assert store.live() == {name: 1}  # 42 ended; "other" still live
        after_end = client.post(f"/v2/models/{name}/infer", json=infer_body(x[:, :1], sequence_id=42))
        assert after_end.status_code == 400 and "unknown or expired" in after_end.json()["error"]
    registry.close()


def test_kserve_sequence_errors(repo):
    registry = ModelRegistry.of(
        [Predictor.load(os.path.join(repo, "pair")), Predictor.load(os.path.join(repo, "lstm"))]
    )
    store = SessionStore(SessionOptions(max_sessions=1))
    x = sequence(rows=1, steps=2)
    seq = np.zeros((1, 2, 3), np.float32)
    pair = {
        "parameters": {"sequence_id": 1, "sequence_start": True},
        "inputs": [
            {"name": "seq", "shape": [1, 2, 3], "datatype": "FP32", "data": seq.ravel().tolist()},
            {"name": "extra", "shape": [1, 2], "datatype": "FP32", "data": [0.0, 0.0]},
        ],
    }
    with client_for(registry, store) as client:
        refused = client.post("/v2/models/pair/infer", json=pair)
        assert refused.status_code == 400 and "cannot stream" in refused.json()["error"]
        no_id = client.post("/v2/models/lstm/infer", json=infer_body(x, sequence_start=True))
        assert no_id.status_code == 400 and "non-zero or non-empty correlation ID" in no_id.json()["error"]
        assert (
            client.post("/v2/models/lstm/infer", json=infer_body(x, sequence_id=1, sequence_start=True)).status_code
            == 200
        )
        full = client.post("/v2/models/lstm/infer", json=infer_body(x, sequence_id=2, sequence_start=True))
        assert full.status_code == 429 and "--max_sessions=1" in full.json()["error"]
    registry.close()


def test_session_metrics():
    metrics = Metrics()
    metrics.live_sessions = lambda: {"lstm": 3}
    metrics.evicted_sessions = lambda: {"lstm": 2}
    metrics.loaded_versions = lambda: {"lstm": 1}
    text = metrics.render().decode()
    assert ':rnnkit:serving:live_sessions{model_name="lstm"} 3.0' in text
    assert ':rnnkit:serving:evicted_sessions_total{model_name="lstm"} 2.0' in text
    assert ':rnnkit:serving:loaded_versions{model_name="lstm"} 1.0' in text


def test_an_onnx_only_export_streams(tmp_path):
    """rnnkit.json of an ONNX-only export lists no SavedModel signatures; step.onnx still streams."""
    import rnnkit_export

    model = serving_repo.streaming_model("LSTM")
    rnnkit_export.export_model(model, str(tmp_path), "onnx_only", formats="onnx")
    x = sequence()
    with Predictor.load(os.path.join(tmp_path, "onnx_only")) as predictor:
        assert "step" in predictor.manifest.signatures
        full = predictor.predict({"x": x})
        with predictor.session() as session:
            parts = [session.step({"x": chunk}) for chunk in chunks(x)]
        np.testing.assert_allclose(np.concatenate([p["y"] for p in parts], axis=1), full["y"], atol=TOL)
