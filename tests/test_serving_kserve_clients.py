"""KServe v2 / Open Inference Protocol against the official Triton clients, unchanged, over real
sockets on 127.0.0.1 (an in-process server): ``tritonclient.grpc`` (health and metadata, unary
infer with raw and typed contents, a streaming session on ``start_stream`` +
``async_stream_infer``), ``tritonclient.http`` with ``binary_data=True``, the standard gRPC
health service on both gRPC ports, the ``x-rnnkit-sequence-id`` routing header, and malformed
requests answered INVALID_ARGUMENT with pinned messages."""

import queue
import threading
import warnings

import grpc
import numpy as np
import pytest
import serving_repo
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rnnkit_serving import start_server

warnings.filterwarnings("ignore", category=DeprecationWarning)
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

STEPS = 9


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = serving_repo.shared_repository()
    config = tmp_path_factory.mktemp("config") / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "half" base_path: "{repo}/staging/half" model_version_policy {{ all {{}} }} }}\n'
        f'  config {{ name: "lstm" base_path: "{repo}/lstm" }}\n'
        f'  config {{ name: "pair" base_path: "{repo}/pair" }}\n'
        "}\n"
    )
    srv = start_server(model_config_file=str(config), port=None, grpc_inference_port=None)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with tritonclient_grpc.InferenceServerClient(server.grpc_inference_target) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_inference_target)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def grpc_input(name, array, datatype="FP32"):
    item = tritonclient_grpc.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def sequence(rows=2, steps=STEPS, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, steps, 3)).astype(np.float32)


# ------------------------------------------------------------------------- health, metadata


def test_server_and_model_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("half") and client.is_model_ready("half", "1")
    assert not client.is_model_ready("half", "9") and not client.is_model_ready("nope")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "rnnkit" and set(meta["extensions"]) == {"sequence", "binary_tensor_data"}
    model = client.get_model_metadata("half", as_json=True)
    assert model == {
        "name": "half",
        "versions": ["2", "1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": ["-1", "-1", "1"]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": ["-1", "-1", "1"]}],
    }
    with pytest.raises(InferenceServerException, match=r"Servable not found for request: Latest\(nope\)") as error:
        client.get_model_metadata("nope")
    assert error.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("target", ["grpc_target", "grpc_inference_target"])
def test_standard_grpc_health_service_on_every_grpc_port(server, target):
    services = {
        "grpc_target": ["tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"],
        "grpc_inference_target": ["inference.GRPCInferenceService"],
    }[target]
    with grpc.insecure_channel(getattr(server, target)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", *services]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as error:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert error.value.code() is grpc.StatusCode.NOT_FOUND


def test_health_follows_readiness_and_draining():
    from concurrent import futures

    from rnnkit_serving.fronts.grpc.health import Health

    ready = threading.Event()
    health = Health(ready.is_set, ["inference.GRPCInferenceService"], poll_seconds=0.05)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health.add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def status(service=""):
                return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

            assert status() == health_pb2.HealthCheckResponse.NOT_SERVING  # no version serves yet
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            ready.set()
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # the poller told the watcher
            assert status("inference.GRPCInferenceService") == health_pb2.HealthCheckResponse.SERVING
            health.drain()
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert status() == health_pb2.HealthCheckResponse.NOT_SERVING  # draining wins over readiness
            watch.cancel()
    finally:
        server.stop(0)


# ------------------------------------------------------------------------------ unary infer


def test_unary_infer_with_raw_contents(client):
    x = np.array([[[4.0], [6.0]]], np.float32)
    result = client.infer("half", [grpc_input("x", x)], request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("y"), [[[5.0], [6.0]]])  # version 2: 0.5 x + 3
    response = result.get_response()
    assert response.model_version == "2" and response.id == "r1" and len(response.raw_output_contents) == 1
    older = client.infer("half", [grpc_input("x", x)], model_version="1")
    np.testing.assert_array_equal(older.as_numpy("y"), [[[4.0], [5.0]]])  # version 1: 0.5 x + 2


def test_unary_infer_with_typed_contents_and_output_selection(stub):
    request = service_pb2.ModelInferRequest(model_name="pair", id="typed")
    seq = np.random.default_rng(4).normal(size=(2, 4, 3)).astype(np.float32)
    extra = np.array([[1.0, -1.0], [0.5, 0.25]], np.float32)
    for name, array in (("seq", seq), ("extra", extra)):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
        tensor.contents.fp32_contents.extend(array.reshape(-1).tolist())
    request.outputs.add(name="probs")
    reply = stub.ModelInfer(request, timeout=30)
    assert [o.name for o in reply.outputs] == ["probs"] and not reply.raw_output_contents
    (probs,) = reply.outputs
    assert probs.datatype == "FP32" and list(probs.shape) == [2, 3]
    got = np.array(probs.contents.fp32_contents, np.float32).reshape(2, 3)
    # the same request with raw contents answers the same values, raw
    raw = service_pb2.ModelInferRequest(model_name="pair")
    for name, array in (("seq", seq), ("extra", extra)):
        raw.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
        raw.raw_input_contents.append(array.tobytes())
    raw_reply = stub.ModelInfer(raw, timeout=30)
    names = [o.name for o in raw_reply.outputs]
    want = np.frombuffer(raw_reply.raw_output_contents[names.index("probs")], "<f4").reshape(2, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), [1.0, 1.0], atol=1e-5)  # softmax rows


def _infer_error(stub, request, metadata=()):
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request, timeout=30, metadata=metadata)
    return error.value.code(), error.value.details()


def _half_request(shape, datatype="FP32", raw=None, typed=None):
    request = service_pb2.ModelInferRequest(model_name="half")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    if typed is not None:
        field, values = typed
        getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize(
    "request_args, text",
    [
        (([1, 2, 1], "FP32", b"\0" * 4), "input 'x': shape [1, 2, 1] of FP32 needs 8 bytes of raw data, received 4"),
        (([1, 1, 1], "FP64", b"\0" * 8), "input 'x': datatype FP64, the model expects FP32"),
        (([1, 1, 1], "FLOAT", b"\0" * 4), "input 'x': unknown datatype 'FLOAT'"),
        (([1, 2, 1], "FP32", None, ("fp32_contents", [1.0])), "shape [1, 2, 1] holds 2 values, 'fp32_contents' has 1"),
        (
            ([1, 1, 1], "FP32", None, ("int64_contents", [1])),
            "input 'x': datatype FP32 is carried in 'fp32_contents'; received ['int64_contents']",
        ),
        (([1, 1, 2], "FP32", b"\0" * 8), "input 'x' expects shape [-1, -1, 1]"),
    ],
)
def test_malformed_requests_are_invalid_argument(stub, request_args, text):
    code, details = _infer_error(stub, _half_request(*request_args))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and text in details, details


def test_malformed_request_layouts(stub):
    request = _half_request([1, 1, 1], raw=b"\0" * 4)
    request.raw_input_contents.append(b"\0" * 4)
    code, details = _infer_error(stub, request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents has 2 entries for 1 inputs; give one per input, in input order" in details
    mixed = _half_request([1, 1, 1], raw=b"\0" * 4, typed=("fp32_contents", [1.0]))
    assert _infer_error(stub, mixed)[1] == "input 'x': typed contents and raw_input_contents cannot be mixed"
    assert "needs at least one input" in _infer_error(stub, service_pb2.ModelInferRequest(model_name="half"))[1]
    bad_version = _half_request([1, 1, 1], raw=b"\0" * 4)
    bad_version.model_version = "v2"
    assert _infer_error(stub, bad_version) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "model version must be an integer; received 'v2'",
    )
    selection = _half_request([1, 1, 1], raw=b"\0" * 4)
    selection.outputs.add(name="q")
    assert "unexpected inference output 'q'" in _infer_error(stub, selection)[1]
    unknown = _half_request([1, 1, 1], raw=b"\0" * 4)
    unknown.model_name = "nope"
    assert _infer_error(stub, unknown)[0] is grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------------ streaming sessions


def full_answer(client, x):
    result = client.infer("lstm", [grpc_input("x", x)])
    return result.as_numpy("y"), result.as_numpy("last")


def test_stream_session_equals_the_full_sequence(server, client):
    x = sequence()
    want_y, want_last = full_answer(client, x)
    answers: queue.Queue = queue.Queue()
    with tritonclient_grpc.InferenceServerClient(server.grpc_inference_target) as streaming:
        streaming.start_stream(callback=lambda result, error: answers.put((result, error)))
        bounds = [(0, 4), (4, 5), (5, STEPS)]
        for index, (a, b) in enumerate(bounds):
            streaming.async_stream_infer(
                "lstm",
                [grpc_input("x", np.ascontiguousarray(x[:, a:b]))],
                sequence_id=1001,
                sequence_start=index == 0,
                sequence_end=index == len(bounds) - 1,
            )
        results = [answers.get(timeout=60) for _ in bounds]
        streaming.stop_stream()
    assert [error for _, error in results] == [None, None, None]
    got_y = np.concatenate([result.as_numpy("y") for result, _ in results], axis=1)
    np.testing.assert_allclose(got_y, want_y, rtol=0, atol=1e-5)
    np.testing.assert_allclose(results[-1][0].as_numpy("last"), want_last, rtol=0, atol=1e-5)


def test_unknown_sequence_tells_the_client_to_start_again(server, client):
    x = sequence(steps=2)
    answers: queue.Queue = queue.Queue()
    with tritonclient_grpc.InferenceServerClient(server.grpc_inference_target) as streaming:
        streaming.start_stream(callback=lambda result, error: answers.put((result, error)))
        streaming.async_stream_infer("lstm", [grpc_input("x", x)], sequence_id=4242)  # no sequence_start
        streaming.async_stream_infer("lstm", [grpc_input("x", x)], sequence_id=4242, sequence_start=True)
        first, second = answers.get(timeout=60), answers.get(timeout=60)
        streaming.stop_stream()
    assert first[0] is None and "unknown sequence 4242 of model 'lstm'" in str(first[1])
    assert "start it again with sequence_start" in str(first[1])
    assert second[1] is None  # the stream went on after the error, and a restart works
    with pytest.raises(InferenceServerException, match="unknown sequence 99 of model 'lstm'") as error:
        client.infer("lstm", [grpc_input("x", x)], sequence_id=99)
    assert error.value.status() == "StatusCode.FAILED_PRECONDITION"


def test_sequence_id_in_the_routing_header(client, stub):
    """`x-rnnkit-sequence-id` (gRPC metadata) may carry the id alone; with the parameter it must agree."""
    x = sequence(steps=STEPS, seed=2)
    want_y, _ = full_answer(client, x)
    header = {"x-rnnkit-sequence-id": "777"}
    request = service_pb2.ModelInferRequest(model_name="lstm")
    request.parameters["sequence_start"].bool_param = True
    request.inputs.add(name="x", datatype="FP32", shape=[2, 5, 3])
    request.raw_input_contents.append(np.ascontiguousarray(x[:, :5]).tobytes())
    head = stub.ModelInfer(request, timeout=30, metadata=tuple(header.items()))
    tail = client.infer(
        "lstm", [grpc_input("x", np.ascontiguousarray(x[:, 5:]))], headers=header, sequence_id=777, sequence_end=True
    )
    names = [o.name for o in head.outputs]
    head_y = np.frombuffer(head.raw_output_contents[names.index("y")], "<f4").reshape(2, 5, 2)
    np.testing.assert_allclose(np.concatenate([head_y, tail.as_numpy("y")], axis=1), want_y, atol=1e-5)
    with pytest.raises(InferenceServerException) as error:
        client.infer("lstm", [grpc_input("x", x)], headers=header, sequence_id=778, sequence_start=True)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "header 'x-rnnkit-sequence-id' names sequence 777 but parameter 'sequence_id' names 778" in str(error.value)


def test_kserve_grpc_requests_are_counted_in_metrics(server, client):
    import httpx

    client.infer("half", [grpc_input("x", np.ones((1, 1, 1), np.float32))])
    text = httpx.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=30).text
    assert 'API="ModelInfer",entrypoint="GRPC",model_name="half"' in text


# ------------------------------------------------------------------- REST, binary tensors


def test_http_client_with_binary_data_both_ways(server):
    url = server.rest_url.removeprefix("http://")
    with tritonclient_http.InferenceServerClient(url) as http:
        x = np.array([[[4.0], [6.0], [-2.0]]], np.float32)
        item = tritonclient_http.InferInput("x", list(x.shape), "FP32")
        item.set_data_from_numpy(x, binary_data=True)
        binary_out = http.infer("half", [item], outputs=[tritonclient_http.InferRequestedOutput("y", binary_data=True)])
        np.testing.assert_array_equal(binary_out.as_numpy("y"), [[[5.0], [6.0], [2.0]]])
        assert binary_out.get_output("y")["parameters"] == {"binary_data_size": 12}
        json_out = http.infer("half", [item], outputs=[tritonclient_http.InferRequestedOutput("y", binary_data=False)])
        assert json_out.get_output("y")["data"] == [5.0, 6.0, 2.0]
        everything = http.infer(
            "pair",
            [
                _http_input("seq", np.zeros((1, 2, 3), np.float32)),
                _http_input("extra", np.ones((1, 2), np.float32)),
            ],
        )  # no outputs named: the client asks binary_data_output for all
        assert sorted(everything.get_response()["outputs"][i]["name"] for i in range(2)) == ["logits", "probs"]
        np.testing.assert_allclose(everything.as_numpy("probs").sum(), 1.0, atol=1e-5)
        assert http.is_server_ready() and http.is_model_ready("half")


def _http_input(name, array):
    item = tritonclient_http.InferInput(name, list(array.shape), "FP32")
    item.set_data_from_numpy(array, binary_data=True)
    return item


def test_http_client_sequences_with_binary_data(server):
    url = server.rest_url.removeprefix("http://")
    x = sequence(seed=5)
    with tritonclient_http.InferenceServerClient(url) as http:
        full = http.infer("lstm", [_http_input("x", x)]).as_numpy("y")
        parts = [
            http.infer(
                "lstm",
                [_http_input("x", np.ascontiguousarray(x[:, a:b]))],
                sequence_id="s-1",
                sequence_start=a == 0,
                sequence_end=b == STEPS,
            ).as_numpy("y")
            for a, b in ((0, 3), (3, STEPS))
        ]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-5)


def test_every_probe_path_answers_200(server):
    """The paths deploy/ points Kubernetes probes at (REST) answer 200 on a live server."""
    import httpx

    for path in ("/v2/health/live", "/v2/health/ready", "/v1/models/half", "/monitoring/prometheus/metrics"):
        assert httpx.get(server.rest_url + path, timeout=30).status_code == 200, path
