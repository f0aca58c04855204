"""The TF Serving REST v1 front in-process (Starlette TestClient): every documented request
form, status/metadata/versions/labels, the error envelope and codes, limits and metrics."""

import os
import threading
import time
import warnings

import numpy as np
import pytest
import serving_repo
from prometheus_client.parser import text_string_to_metric_families
from serving_repo import assert_error

from rnnkit_serving import FakeBackend, Limits, Predictor, RestOptions, Signature, TensorSpec, app
from rnnkit_serving.config.model_config import ModelConfig, VersionPolicy
from rnnkit_serving.registry import ModelRegistry
from rnnkit_serving.server.model_server import load_registry


def client_for(registry, options=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's TestClient warns that it runs on httpx
        from starlette.testclient import TestClient

        return TestClient(app(registry, options or RestOptions()))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("repo"))
    serving_repo.build_repository(base)
    return base


@pytest.fixture(scope="module")
def client(repo):
    configs = [
        ModelConfig("half", os.path.join(repo, "half"), {"stable": 1, "canary": 2}, VersionPolicy("all")),
        ModelConfig("pair", os.path.join(repo, "pair")),
    ]
    registry = load_registry(configs, limits=Limits(max_batch_size=8, max_sequence_length=50))
    with client_for(registry, RestOptions(max_body_bytes=4096)) as c:
        yield c
    registry.close()


# ----------------------------------------------------------------------------- predict forms


def test_row_format_hand_checked(client):
    reply = client.post("/v1/models/half:predict", json={"instances": [[[1.0], [2.0], [5.0]]]})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    assert reply.json() == {"predictions": [[[3.5], [4.0], [5.5]]]}  # newest version: 0.5 x + 3


def test_versions_and_labels_reach_older_versions(client):
    body = {"instances": [[[1.0], [2.0], [5.0]]]}
    assert client.post("/v1/models/half/versions/1:predict", json=body).json() == {
        "predictions": [[[2.5], [3.0], [4.5]]]
    }
    assert client.post("/v1/models/half/labels/stable:predict", json=body).json() == {
        "predictions": [[[2.5], [3.0], [4.5]]]
    }
    assert client.post("/v1/models/half/labels/canary:predict", json=body).json() == {
        "predictions": [[[3.5], [4.0], [5.5]]]
    }
    assert client.post("/V1/MODELS/half/VERSIONS/1:predict", json=body).status_code == 200  # case-insensitive routing


def test_columnar_format_and_signature_name(client):
    reply = client.post(
        "/v1/models/half:predict", json={"signature_name": "serving_default", "inputs": {"x": [[[2.0]], [[4.0]]]}}
    )
    assert reply.json() == {"outputs": [[[4.0]], [[5.0]]]}
    assert client.post("/v1/models/half:predict", json={"inputs": [[[2.0]]]}).json() == {"outputs": [[[4.0]]]}
    step = client.post(
        "/v1/models/half:predict",
        json={"signature_name": "step", "instances": [{"x": [[2.0]], "lstm_h_in": [0, 0], "lstm_c_in": [0, 0]}]},
    ).json()
    assert step["predictions"][0]["y"] == [[4.0]] and step["predictions"][0]["lstm_h_out"] == [0.0, 0.0]


def test_multi_input_multi_output_forms_agree(client):
    rows = client.post(
        "/v1/models/pair:predict",
        json={
            "instances": [
                {"seq": [[1, 2, 3], [0, 0, 0]], "extra": [1, 2]},
                {"seq": [[4, 5, 6], [1, 1, 1]], "extra": [0, 1]},
            ]
        },
    ).json()
    cols = client.post(
        "/v1/models/pair:predict",
        json={"inputs": {"seq": [[[1, 2, 3], [0, 0, 0]], [[4, 5, 6], [1, 1, 1]]], "extra": [[1, 2], [0, 1]]}},
    ).json()
    assert [set(r) for r in rows["predictions"]] == [{"logits", "probs"}] * 2
    for i in range(2):
        for name in ("logits", "probs"):
            np.testing.assert_allclose(rows["predictions"][i][name], cols["outputs"][name][i], atol=1e-6)
    np.testing.assert_allclose(np.sum(cols["outputs"]["probs"], axis=1), [1, 1], atol=1e-5)


# --------------------------------------------------------------------------- status, metadata


def test_model_status_all_versions_newest_first(client):
    body = client.get("/v1/models/half").json()
    assert [(s["version"], s["state"], s["status"]["error_code"]) for s in body["model_version_status"]] == [
        ("2", "AVAILABLE", "OK"),
        ("1", "AVAILABLE", "OK"),
    ]
    assert [s["version"] for s in client.get("/v1/models/half/versions/1").json()["model_version_status"]] == ["1"]
    # TF Serving quirk: a label on the status path lists every version
    assert len(client.get("/v1/models/half/labels/stable").json()["model_version_status"]) == 2


def test_metadata(client):
    body = client.get("/v1/models/half/metadata").json()
    assert body["model_spec"] == {"name": "half", "signature_name": "", "version": "2"}
    defs = body["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == {"serving_default", "step"}
    x = defs["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT" and [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1", "-1", "1"]
    assert defs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert body["rnnkit"]["signatures"]["serving_default"]["fallback"] is None
    assert client.get("/v1/models/half/versions/1/metadata").json()["model_spec"]["version"] == "1"
    assert client.get("/v1/models/half/labels/stable/metadata").json()["model_spec"]["version"] == "1"


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "method,path,body,status,text",
    [
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        ("GET", "/v1/models/half/versions/7", None, 404, "Could not find version 7 of model half"),
        ("GET", "/v1/models/nope/metadata", None, 404, "Servable not found for request: Latest(nope)"),
        ("GET", "/v1/models/half/versions/7/metadata", None, 404, "Servable not found for request: Specific(half, 7)"),
        ("POST", "/v1/models/nope:predict", {"instances": [1]}, 404, "Servable not found for request: Latest(nope)"),
        ("POST", "/v1/models/half/versions/9:predict", {"instances": [1]}, 404, "Specific(half, 9)"),
        (
            "POST",
            "/v1/models/half/labels/beta:predict",
            {"instances": [1]},
            400,
            "Unrecognized servable version label: beta",
        ),
        ("POST", "/v1/models/half:Predict", {"instances": [1]}, 400, "Malformed request: POST /v1/models/half:Predict"),
        ("GET", "/v1/models/half:predict", None, 400, "Malformed request: GET /v1/models/half:predict"),
        ("PUT", "/v1/models/half", None, 400, "Malformed request: PUT /v1/models/half"),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("POST", "/v1/models/half:classify", {"examples": [{"a": 1}]}, 400, "No classification inputs found"),
        ("POST", "/v1/models/pair:regress", {"examples": [{"a": 1}]}, 400, "Expected one input Tensor."),
        (
            "POST",
            "/v1/models/half:predict",
            {"signature_name": "foo", "instances": [1]},
            400,
            'Serving signature name: "foo" not found in signature def',
        ),
        (
            "POST",
            "/v1/models/half:predict",
            {"instances": [[[1.0]], [[1.0], [2.0]]]},
            400,
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 1 but got: 2",
        ),
        (
            "POST",
            "/v1/models/half:predict",
            {"instances": [[["a"]]]},
            400,
            'JSON Value: "a" Type: String is not of expected type: float',
        ),
        (
            "POST",
            "/v1/models/half:predict",
            {"instances": [[[1.0, 2.0]]]},
            400,
            "input 'x' expects shape [-1, -1, 1], received [1, 1, 2]",
        ),
        ("POST", "/v1/models/half:predict", {"instances": [[1.0]]}, 400, "input 'x' expects rank 3"),
        (
            "POST",
            "/v1/models/half:predict",
            {"inputs": [[[1.0]]] * 9},
            400,
            "batch size 9, above the server limit 8 (--max_batch_size)",
        ),
        (
            "POST",
            "/v1/models/half:predict",
            {"inputs": [[[1.0]] * 51]},
            400,
            "51 time steps, above the server limit 50",
        ),
        ("POST", "/v1/models/pair:predict", {"instances": [[[1, 2, 3]]]}, 400, "instances is a plain list"),
        (
            "POST",
            "/v1/models/pair:predict",
            {"inputs": {"seq": [[[1, 2, 3]]], "extra": [[1, 2], [3, 4]]}},
            400,
            "inputs 'seq' and 'extra' disagree on the batch size: 1 vs 2",
        ),
    ],
)
def test_errors_use_tf_serving_envelope_and_codes(client, method, path, body, status, text):
    reply = client.request(method, path, json=body) if body is not None else client.request(method, path)
    assert_error(reply, status, text)


def test_raw_body_errors(client):
    assert_error(client.post("/v1/models/half:predict", content=b""), 400, "JSON Parse error: The document is empty")
    assert_error(client.post("/v1/models/half:predict", content=b"{not json"), 400, "JSON Parse error:")
    assert_error(client.post("/v1/models/half:predict", content=b"[1]"), 400, "Is not object")
    assert_error(client.post("/v1/models/half:predict", content=b"\xff\xfe"), 400, "JSON Parse error")
    big = b'{"instances": [' + b"1.0," * 2000 + b"1.0]}"
    assert_error(client.post("/v1/models/half:predict", content=big), 413, "larger than the server limit of 4096 bytes")


def test_non_v1_paths_get_html_404(client):
    reply = client.get("/v3/health/ready")  # /v2 is KServe (tests/test_serving_kserve.py)
    assert reply.status_code == 404 and reply.headers["content-type"].startswith("text/html")


def test_a_failed_version_is_reported_and_the_others_serve(repo, tmp_path):
    model_dir = tmp_path / "half"
    model_dir.mkdir()
    os.symlink(os.path.join(repo, "half", "1"), model_dir / "1")
    broken = model_dir / "3"
    broken.mkdir()
    (broken / "rnnkit.json").write_text("{not json")
    registry = load_registry([ModelConfig("half", str(model_dir))])
    with client_for(registry) as c:
        status = c.get("/v1/models/half").json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("3", "END"), ("1", "AVAILABLE")]
        assert (
            status[0]["status"]["error_code"] == "FAILED_PRECONDITION"
            and "rnnkit.json" in status[0]["status"]["error_message"]
        )
        assert c.post("/v1/models/half:predict", json={"instances": [[[2.0]]]}).json() == {"predictions": [[[3.0]]]}
    registry.close()


# ------------------------------------------------------------------- timeout, robustness, metrics


def slow_registry(seconds: float, fail: bool = False):
    sig = Signature("serving_default", (TensorSpec("a", "float32", (None,)),), (TensorSpec("b", "float32", (None,)),))

    def run(inputs):
        time.sleep(seconds)
        if fail:
            raise RuntimeError("runtime exploded")
        return {"b": inputs["a"] * 2}

    return ModelRegistry.of([Predictor("slow", 1, {"serving_default": FakeBackend(sig, run)})])


def test_timeout_is_504_and_the_server_keeps_serving():
    with client_for(slow_registry(0.5), RestOptions(timeout_ms=50, workers=2)) as c:
        assert_error(
            c.post("/v1/models/slow:predict", json={"instances": [1.0]}),
            504,
            "Request timed out after 50 ms (--rest_api_timeout_in_ms)",
        )
        assert c.get("/v1/models/slow").status_code == 200


def test_runtime_failure_is_500_not_a_crash():
    with client_for(slow_registry(0.0, fail=True)) as c:
        assert_error(c.post("/v1/models/slow:predict", json={"instances": [1.0]}), 500, "runtime exploded")
        assert c.get("/v1/models/slow").status_code == 200


def test_concurrent_requests_all_answer():
    with client_for(slow_registry(0.05), RestOptions(workers=4)) as c:
        replies = []

        def send(i):
            replies.append(c.post("/v1/models/slow:predict", json={"instances": [float(i)]}).json())

        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(r["predictions"][0] for r in replies) == [2.0 * i for i in range(8)]


def test_prometheus_metrics_parse_with_tf_serving_names(client):
    client.post("/v1/models/half:predict", json={"instances": [[[1.0]]]})
    client.post("/v1/models/half:predict", json={"instances": "bad"})
    reply = client.get("/monitoring/prometheus/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    count = families[":tensorflow:serving:request_count"]
    assert count.type == "counter"
    by_status = {(s.labels["model_name"], s.labels["status"]): s.value for s in count.samples}
    assert by_status[("half", "OK")] >= 1 and by_status[("half", "INVALID_ARGUMENT")] >= 1
    latency = families[":tensorflow:serving:request_latency"]
    assert latency.type == "histogram"
    counts = [s for s in latency.samples if s.name.endswith("_count") and s.labels["API"] == "predict"]
    assert counts and counts[0].labels == {"model_name": "half", "API": "predict", "entrypoint": "REST"}
    assert any(s.labels.get("le") == "+Inf" for s in latency.samples)


def test_an_exception_that_escapes_the_front_is_a_logged_json_500_and_the_app_serves_on(caplog):
    """RestApp sends requests straight to the front (no Starlette middleware): what the routes do not answer
    themselves still gets a JSON 500 with the error's text, logged, and the next request is served."""
    sig = Signature(
        "serving_default", (TensorSpec("x", "float32", (None, 1)),), (TensorSpec("y", "float32", (None, 1)),)
    )
    registry = ModelRegistry.of([Predictor("m", 1, {"serving_default": FakeBackend(sig, lambda i: {"y": i["x"]})})])
    with client_for(registry) as client:
        front = client.app.state.front
        answer, calls = front.answer, []

        async def fails_once(request):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("the front broke")
            return await answer(request)

        front.answer = fails_once
        with caplog.at_level("ERROR"):
            broken = client.get("/v2/health/live")
        assert broken.status_code == 500 and broken.headers["content-type"] == "application/json"
        assert "the front broke" in broken.json()["error"]
        assert "internal error while handling a request" in caplog.text and "the front broke" in caplog.text
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.request("TRACE", "/v2/health/live").status_code == 405  # other methods: Starlette's answer
