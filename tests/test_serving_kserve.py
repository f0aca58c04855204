"""KServe v2 / Open Inference Protocol REST: the documented requests (health, server and model
metadata, model ready, infer with flat or nested data and output selection), the error shape,
and the pure codec's errors (one pinned substring per malformed input)."""

import os
import warnings

import numpy as np
import pytest
import serving_repo
from serving_repo import assert_error

from serving import Predictor, ServingError
from serving import kserve_codec as codec
from serving.registry import ModelRegistry
from serving.signature import Signature, TensorSpec


@pytest.fixture(scope="module")
def client():
    repo = serving_repo.shared_repository()
    half = os.path.join(repo, "staging", "half")
    registry = ModelRegistry.of(
        [
            Predictor.load(os.path.join(half, "1")),
            Predictor.load(os.path.join(half, "2")),
            Predictor.load(os.path.join(repo, "lstm")),
            Predictor.load(os.path.join(repo, "pair")),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

        from serving import app

        with TestClient(app(registry)) as c:
            yield c
    registry.close()


# --------------------------------------------------------------------------- health, metadata


def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "rnnkit" and "sequence" in meta["extensions"] and isinstance(meta["version"], str)


def test_model_ready(client):
    assert client.get("/v2/models/half/ready").json() == {"name": "half", "ready": True}
    assert client.get("/v2/models/half/versions/1/ready").status_code == 200
    not_ready = client.get("/v2/models/half/versions/9/ready")
    assert not_ready.status_code == 400 and not_ready.json() == {"name": "half", "ready": False}
    assert client.get("/v2/models/nope/ready").status_code == 400


def test_model_metadata(client):
    meta = client.get("/v2/models/half").json()
    assert meta == {
        "name": "half",
        "versions": ["2", "1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1, 1]}],
    }
    assert client.get("/v2/models/half/versions/1").json()["name"] == "half"
    # a streamable model's metadata shows its inputs, not the state tensors the server keeps
    lstm = client.get("/v2/models/lstm").json()
    assert [t["name"] for t in lstm["inputs"]] == ["x"]
    assert sorted(t["name"] for t in lstm["outputs"]) == ["last", "y"]
    assert_error(client.get("/v2/models/nope"), 404, "Servable not found for request: Latest(nope)")
    assert_error(client.get("/v2/models/half/versions/7"), 404, "Specific(half, 7)")
    assert_error(client.get("/v2/models/half/versions/x1"), 400, "model version must be an integer")


# ------------------------------------------------------------------------------------ infer


def test_documented_infer_request(client):
    body = {
        "id": "42",
        "inputs": [{"name": "x", "shape": [1, 3, 1], "datatype": "FP32", "data": [1.0, 2.0, 5.0]}],
        "outputs": [{"name": "y"}],
    }
    reply = client.post("/v2/models/half/infer", json=body)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    assert reply.json() == {
        "model_name": "half",
        "model_version": "2",
        "id": "42",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 3, 1], "data": [3.5, 4.0, 5.5]}],
    }
    older = client.post("/v2/models/half/versions/1/infer", json=body).json()
    assert older["model_version"] == "1" and older["outputs"][0]["data"] == [2.5, 3.0, 4.5]


def test_nested_data_and_all_outputs_without_selection(client):
    reply = client.post(
        "/v2/models/half/infer",
        json={"inputs": [{"name": "x", "shape": [2, 1, 1], "datatype": "FP32", "data": [[[2.0]], [[4.0]]]}]},
    )
    assert reply.json()["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2, 1, 1], "data": [4.0, 5.0]}]
    assert "id" not in reply.json()


def test_output_selection_on_a_multi_output_model(client):
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    body = {"inputs": [{"name": "x", "shape": [2, 4, 3], "datatype": "FP32", "data": x.ravel().tolist()}]}
    everything = client.post("/v2/models/lstm/infer", json=body).json()["outputs"]
    assert sorted(o["name"] for o in everything) == ["last", "y"]
    only = client.post("/v2/models/lstm/infer", json={**body, "outputs": [{"name": "last"}]}).json()["outputs"]
    assert [o["name"] for o in only] == ["last"] and only[0]["shape"] == [2, 4]
    want = {o["name"]: o for o in everything}["last"]["data"]
    np.testing.assert_allclose(only[0]["data"], want, atol=1e-6)


@pytest.mark.parametrize(
    "body, status, text",
    [
        (
            {"inputs": [{"name": "x", "shape": [1, 1, 1], "datatype": "FP64", "data": [1.0]}]},
            400,
            "datatype FP64, the model expects FP32",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, 2, 1], "datatype": "FP32", "data": [1.0]}]},
            400,
            "holds 2 values, 'data' has 1",
        ),
        (
            {"inputs": [{"name": "z", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
            400,
            "unexpected inference input 'z'",
        ),
        (
            {
                "inputs": [{"name": "x", "shape": [1, 1, 1], "datatype": "FP32", "data": [1.0]}],
                "outputs": [{"name": "q"}],
            },
            400,
            "unexpected inference output 'q'",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, 1, 1], "datatype": "FP32", "data": ["a"]}]},
            400,
            "FP32 expects JSON numbers",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, 1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]},
            400,
            "input 'x' expects shape [-1, -1, 1]",
        ),
        ({"inputs": []}, 400, "non-empty 'inputs' list"),
        (
            {"inputs": [{"name": "x", "shape": [1, 1, 1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]},
            400,
            "binary tensor data is not supported",
        ),
    ],
)
def test_infer_errors_have_the_error_shape(client, body, status, text):
    assert_error(client.post("/v2/models/half/infer", json=body), status, text)


def test_infer_transport_errors(client):
    assert_error(client.post("/v2/models/half/infer", content=b"{not json"), 400, "failed to parse the request JSON")
    assert_error(client.post("/v2/models/nope/infer", json={"inputs": []}), 404, "Latest(nope)")
    binary = client.post("/v2/models/half/infer", content=b"{}", headers={"Inference-Header-Content-Length": "2"})
    assert_error(binary, 400, "binary tensor data")
    assert_error(client.get("/v2/models/half/infer"), 400, "Malformed request: GET /v2/models/half/infer")
    assert_error(client.get("/v2/repository/index"), 404, "is not a KServe v2 endpoint")


def test_kserve_requests_are_counted_in_metrics(client):
    client.post(
        "/v2/models/half/infer", json={"inputs": [{"name": "x", "shape": [1, 1, 1], "datatype": "FP32", "data": [1.0]}]}
    )
    text = client.get("/monitoring/prometheus/metrics").text
    assert 'API="infer",entrypoint="REST",model_name="half"' in text


# ------------------------------------------------------------------------------ pure codec


SIG = Signature(
    "serving_default",
    (TensorSpec("tokens", "int64", (None, None)), TensorSpec("flag", "bool", (None,)), TensorSpec("s", "str", (None,))),
    (TensorSpec("p", "float32", (None, 2)),),
)


def test_codec_decodes_every_datatype_and_encodes_back():
    doc = {
        "id": "a",
        "parameters": {"sequence_id": 3},
        "inputs": [
            {"name": "tokens", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]},
            {"name": "flag", "shape": [1], "datatype": "BOOL", "data": [True]},
            {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
        ],
    }
    request = codec.decode_infer_request(doc, SIG)
    assert request.id == "a" and request.parameters == {"sequence_id": 3} and request.outputs is None
    assert request.inputs["tokens"].dtype == np.int64 and request.inputs["tokens"].tolist() == [[1, 2, 3]]
    assert request.inputs["flag"].tolist() == [True] and request.inputs["s"].tolist() == ["hi"]
    text = codec.encode_infer_response("m", 3, {"p": np.array([[0.5, 0.25]], np.float32)}, request_id="a")
    assert text == (
        '{"model_name": "m", "model_version": "3", "id": "a", '
        '"outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.25]}]}'
    )


@pytest.mark.parametrize(
    "item, text",
    [
        ({"name": "tokens", "shape": [1, 1], "datatype": "INT64", "data": [1.5]}, "INT64 expects JSON integers"),
        ({"name": "tokens", "shape": [1, 1], "datatype": "INT99", "data": [1]}, "unknown datatype 'INT99'"),
        (
            {"name": "tokens", "shape": [1, -1], "datatype": "INT64", "data": [1]},
            "'shape' must be a list of non-negative",
        ),
        ({"name": "tokens", "datatype": "INT64", "data": [1]}, "input 'tokens' is missing 'shape'"),
        ({"name": "flag", "shape": [1], "datatype": "BOOL", "data": [1]}, "BOOL expects JSON true/false"),
    ],
)
def test_codec_errors(item, text):
    others = [
        {"name": "tokens", "shape": [1, 1], "datatype": "INT64", "data": [1]},
        {"name": "flag", "shape": [1], "datatype": "BOOL", "data": [True]},
        {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["x"]},
    ]
    inputs = [item] + [o for o in others if o["name"] != item["name"]]
    with pytest.raises(ServingError, match=text.replace("[", r"\[").replace("(", r"\(")):
        codec.decode_infer_request({"inputs": inputs}, SIG)
