"""The server over real sockets on 127.0.0.1: `python -m serving` (what `rnnkit serve` runs) as
a child process, the official tensorflow_serving gRPC client, raw HTTP, metrics, and SIGTERM
draining requests in flight."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import serving_repo
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from rnnkit_serving import spawn_server, start_server

pytestmark = pytest.mark.slow  # child processes and real sockets
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("repo"))
    serving_repo.build_repository(base)
    config = os.path.join(base, "labelled.config")
    with open(config, "w") as handle:
        handle.write(
            "model_config_list {\n"
            f'  config {{ name: "half" base_path: "{base}/half" version_labels {{ key: "stable" value: 1 }}\n'
            "           model_version_policy { all {} } }\n"
            f'  config {{ name: "pair" base_path: "{base}/pair" }}\n'
            "}\n"
        )
    return base, config


@pytest.fixture(scope="module")
def server(repo):
    _, config = repo
    with spawn_server(["--model_config_file", config], port=None, timeout=120) as proc:
        yield proc
    assert proc.process.returncode == 0


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()


def predict_request(name, x, version=None, label=None, signature="", output_filter=()):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in x.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request


def test_official_grpc_client_predict(stubs):
    predict, _ = stubs
    x = np.array([[[1.0], [2.0], [5.0]]], np.float32)
    reply = predict.Predict(predict_request("half", {"x": x}), timeout=30)
    assert (reply.model_spec.name, reply.model_spec.version.value, reply.model_spec.signature_name) == (
        "half",
        2,
        "serving_default",
    )
    assert list(reply.outputs["y"].float_val) == [3.5, 4.0, 5.5]  # typed fields, as TF Serving replies
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs["y"]), [[[3.5], [4.0], [5.5]]])
    older = predict.Predict(predict_request("half", {"x": x}, version=1), timeout=30)
    assert list(older.outputs["y"].float_val) == [2.5, 3.0, 4.5]
    labelled = predict.Predict(predict_request("half", {"x": x}, label="stable"), timeout=30)
    assert labelled.model_spec.version.value == 1


def test_grpc_typed_inputs_output_filter_and_step(stubs):
    predict, _ = stubs
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "pair"
    seq = request.inputs["seq"]
    seq.dtype = 1
    seq.tensor_shape.dim.add(size=1)
    seq.tensor_shape.dim.add(size=2)
    seq.tensor_shape.dim.add(size=3)
    seq.float_val.extend([1, 2, 3, 4, 5, 6])
    request.inputs["extra"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 2), np.float32)))
    request.output_filter.append("probs")
    reply = predict.Predict(request, timeout=30)
    assert list(reply.outputs) == ["probs"] and abs(sum(reply.outputs["probs"].float_val) - 1) < 1e-5
    step = predict.Predict(
        predict_request(
            "half",
            {
                "x": np.ones((1, 1, 1), np.float32),
                "lstm_h_in": np.zeros((1, 2), np.float32),
                "lstm_c_in": np.zeros((1, 2), np.float32),
            },
            signature="step",
        ),
        timeout=30,
    )
    assert set(step.outputs) == {"y", "lstm_h_out", "lstm_c_out"}


@pytest.mark.parametrize(
    "request_kwargs,code,text",
    [
        (
            dict(name="nope", x={"x": np.ones((1, 1, 1), np.float32)}),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (
            dict(name="half", x={"x": np.ones((1, 1, 1), np.float32)}, version=9),
            grpc.StatusCode.NOT_FOUND,
            "Specific(half, 9)",
        ),
        (
            dict(name="half", x={"x": np.ones((1, 1, 1), np.float32)}, label="beta"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: beta",
        ),
        (
            dict(name="half", x={"x": np.ones((1, 1, 1), np.float32)}, signature="foo"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "foo" not found.',
        ),
        (
            dict(name="half", x={"x": np.ones((1, 1, 2), np.float32)}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 'x' expects shape [-1, -1, 1]",
        ),
        (dict(name="half", x={"x": np.ones((1, 1, 1), np.int32)}), grpc.StatusCode.OK, ""),
        (
            dict(name="half", x={"z": np.ones((1, 1, 1), np.float32)}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input tensor alias not found in signature: z",
        ),
        (dict(name="", x={}), grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    ],
)
def test_grpc_errors_carry_tf_serving_codes(stubs, request_kwargs, code, text):
    predict, _ = stubs
    if code is grpc.StatusCode.OK:  # ints are accepted for a float input (converted within kind)
        predict.Predict(predict_request(**request_kwargs), timeout=30)
        return
    with pytest.raises(grpc.RpcError) as caught:
        predict.Predict(predict_request(**request_kwargs), timeout=30)
    assert caught.value.code() == code and text in caught.value.details()


def test_grpc_metadata_and_status(stubs):
    predict, models = stubs
    meta = predict.GetModelMetadata(
        get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "half"}, metadata_field=["signature_def"]),
        timeout=30,
    )
    defs = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(defs)
    assert meta.model_spec.version.value == 2 and set(defs.signature_def) == {"serving_default", "step"}
    assert [d.size for d in defs.signature_def["serving_default"].inputs["x"].tensor_shape.dim] == [-1, -1, 1]
    status = models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "half"}), timeout=30)
    assert [(s.version, s.state) for s in status.model_version_status] == [(2, 30), (1, 30)]
    with pytest.raises(grpc.RpcError) as caught:
        models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Missing ModelSpec" in caught.value.details()


@pytest.mark.parametrize(
    "method",
    [
        "/tensorflow.serving.PredictionService/Predict",
        "/tensorflow.serving.PredictionService/GetModelMetadata",
        "/tensorflow.serving.ModelService/GetModelStatus",
    ],
)
def test_grpc_bytes_that_are_not_the_request_message_are_invalid_argument(server, stubs, method):
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary(method)  # no serializers: the bytes go as they are
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff\xff\xff not a protobuf", timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert caught.value.details().startswith(f"the request bytes of {method} do not parse as its request message: ")
    predict, _ = stubs  # and the server goes on answering
    reply = predict.Predict(predict_request("half", {"x": np.ones((1, 1, 1), np.float32)}), timeout=30)
    assert list(reply.outputs["y"].float_val) == [3.5]


def test_raw_http_and_metrics_over_the_socket(server, stubs):
    with httpx.Client(base_url=server.rest_url, timeout=30) as http:
        assert http.post("/v1/models/half:predict", json={"instances": [[[1.0]]]}).json() == {"predictions": [[[3.5]]]}
        assert http.post("/v1/models/half/versions/1:predict", content=b'{"inputs": {"x": [[[1.0]]]}}').json() == {
            "outputs": [[[2.5]]]
        }
        assert http.get("/v1/models/pair").json()["model_version_status"][0]["state"] == "AVAILABLE"
        assert http.post("/v1/models/half:predict", content=b"{").status_code == 400
        text = http.get("/monitoring/prometheus/metrics").text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    entrypoints = {
        s.labels.get("entrypoint") for s in samples if s.name.startswith(":tensorflow:serving:request_latency")
    }
    assert {"REST", "GRPC"} <= entrypoints


def test_in_process_server_start_and_stop(repo):
    base, _ = repo
    server = start_server(os.path.join(base, "half"), "half")
    try:
        reply = httpx.post(server.rest_url + "/v1/models/half:predict", json={"instances": [[[1.0]]]}, timeout=30)
        assert reply.json() == {"predictions": [[[3.5]]]}
    finally:
        server.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.rest_url + "/v1/models/half", timeout=5)


def test_sigterm_drains_requests_in_flight(repo):
    base, _ = repo
    steps = 300_000  # a slow request: long JSON body, long recurrence
    body = b'{"instances": [[' + b"[1.0]," * (steps - 1) + b"[1.0]]]}"
    with spawn_server(
        ["--model_base_path", os.path.join(base, "half"), "--model_name", "half", "--rest_workers", "1"]
        + ["--max_sequence_length", str(steps)],  # above the default limit (8192)
        timeout=120,
    ) as proc:
        results, errors = [], []
        sent = [threading.Event() for _ in range(3)]
        host, port = proc.rest_url.removeprefix("http://").split(":")

        def send(done: threading.Event):
            # a raw socket, so the test knows when the whole request has reached the server
            try:
                with socket.create_connection((host, int(port)), timeout=120) as sock:
                    head = f"POST /v1/models/half:predict HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                    sock.sendall(head.encode() + b"Content-Type: application/json\r\nConnection: close\r\n\r\n" + body)
                    done.set()
                    reply = b""
                    while chunk := sock.recv(65536):
                        reply += chunk
                status = int(reply.split(b" ", 2)[1])
                payload = json.loads(reply.split(b"\r\n\r\n", 1)[1])
                results.append((status, payload["predictions"][0][-1]))
            except Exception as error:
                errors.append(repr(error))
                done.set()

        threads = [threading.Thread(target=send, args=(event,)) for event in sent]
        for thread in threads:
            thread.start()
        for event in sent:
            assert event.wait(60)
        time.sleep(1.0)  # the three requests are in (sendall returned: in the kernel's buffers; read by now)
        exit_code = proc.stop(timeout=120)
        for thread in threads:
            thread.join(120)
    assert not errors, errors
    assert results == [(200, [3.5])] * 3
    assert exit_code == 0


def test_grpc_front_serves_the_official_protos_without_starting_tensorflow(repo):
    """The gRPC front loads TF Serving's proto modules through rnnkit_serving.codecs.tfs.protos: the server
    process answers a Predict over a real socket and never imports tensorflow.python."""
    script = textwrap.dedent(
        """
        import sys
        import grpc
        import rnnkit_serving
        from rnnkit_serving.codecs.tfs.protos import import_proto_modules

        server = rnnkit_serving.start_server(sys.argv[1] + "/half", "half", port=None, rest_api_port=0)
        predict_pb2, stubs = import_proto_modules(
            "tensorflow_serving.apis.predict_pb2", "tensorflow_serving.apis.prediction_service_pb2_grpc"
        )
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half"
        tensor = request.inputs["x"]
        tensor.dtype = 1  # DT_FLOAT
        for size in (1, 2, 1):
            tensor.tensor_shape.dim.add().size = size
        tensor.float_val.extend([4.0, 6.0])
        with grpc.insecure_channel(server.grpc_target) as channel:
            reply = stubs.PredictionServiceStub(channel).Predict(request, timeout=30)
        server.stop()
        print(list(reply.outputs["y"].float_val))
        print(sorted({m for m in sys.modules if m == "tensorflow" or m.startswith(("tensorflow.python", "keras"))}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, repo[0]], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer, loaded = proc.stdout.strip().splitlines()[-2:]
    assert answer == "[5.0, 6.0]"  # version 2 of half: 0.5 * x + 3 for x = 4, 6
    assert loaded == "[]"
