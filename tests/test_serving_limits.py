"""The server's defences, in-process with fake backends: the element budget on declared shapes
(gRPC, TF Serving JSON, KServe v2) refusing before any allocation, declared shape vs content,
default limits, non-finite inputs, JSON nesting depth, REST running a model on the event loop
only when its like was fast and nothing else is in flight, and state keyed by client input staying
bounded."""

import gc
import json
import threading
import time
import tracemalloc
import warnings

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rnnkit_serving import FakeBackend, Predictor, RestOptions, Signature, TensorSpec
from rnnkit_serving.codecs.json_depth import MAX_JSON_DEPTH, exceeds_depth, json_depth
from rnnkit_serving.codecs.kserve import rest as kserve_codec
from rnnkit_serving.codecs.tfs import grpc as grpc_codec
from rnnkit_serving.codecs.tfs import json_tensor as tfs_json
from rnnkit_serving.codecs.tfs import rest as rest_codec
from rnnkit_serving.core.metrics import Metrics
from rnnkit_serving.core.signature import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_REQUEST_ELEMENTS,
    DEFAULT_MAX_SEQUENCE_LENGTH,
    ElementBudget,
    Limits,
)
from rnnkit_serving.dispatch import Dispatch, Target
from rnnkit_serving.errors import Code, ServingError
from rnnkit_serving.fronts.rest.app import rest_app
from rnnkit_serving.registry import ModelRegistry
from rnnkit_serving.server.model_server import ModelServer, ServerOptions

X = TensorSpec("x", "float32", (None, None, 4))
Y = TensorSpec("y", "float32", (None, None, 4))
SIGNATURE = Signature("serving_default", (X,), (Y,))


def fake(name="m", fn=None, limits=None):
    return Predictor(
        name, 1, {"serving_default": FakeBackend(SIGNATURE, fn or (lambda i: {"y": i["x"] * 2}))}, limits or Limits()
    )


def client_for(dispatch, options=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

        return TestClient(rest_app(dispatch, options or RestOptions()))


def peak_bytes(job):
    """Peak Python/numpy heap allocation (tracemalloc) while `job` runs; numpy reports its buffers."""
    gc.collect()
    tracemalloc.start()
    try:
        job()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# ------------------------------------------------------------------------------ element budget

ISSUE_MESSAGE = (
    "input 'x' declares shape [1, 20000000, 4]: 80000000 elements; a request may hold at most 8388608 "
    "elements in all (--max_request_elements)"
)


def issue_request():
    """The issue's attack: a PredictRequest of a few dozen bytes declaring a [1, 20 000 000, 4] float tensor."""
    p = grpc_codec.protos()
    request = p.predict.PredictRequest()
    request.model_spec.name = "m"
    tensor = request.inputs["x"]
    tensor.dtype = 1
    for size in (1, 20_000_000, 4):
        tensor.tensor_shape.dim.add(size=size)
    tensor.float_val.append(1.0)
    return request


def test_the_issue_grpc_request_is_refused_from_its_declared_shape_without_allocating():
    request = issue_request()
    assert request.ByteSize() < 64  # 44 bytes in the issue (with a longer model name)
    dispatch = Dispatch(ModelRegistry.of([fake()]), Metrics())

    def decode(predictor):
        return grpc_codec.decode_predict_request(request, predictor.signature(), dispatch.element_budget(predictor))

    caught = []

    def job():
        with pytest.raises(ServingError) as error:
            dispatch.predict(Target("m"), decode)
        caught.append(error.value)

    peak = peak_bytes(job)
    assert caught[0].code is Code.INVALID_ARGUMENT and caught[0].message == ISSUE_MESSAGE
    assert peak < 1 << 20, peak  # the array would be 320 MB; nothing near it was allocated
    # without the budget the same request builds the whole array (what the issue measured)
    unlimited = peak_bytes(lambda: grpc_codec.tensor_to_array(request.inputs["x"], "x"))
    assert unlimited >= 320_000_000


def test_the_budget_is_shared_by_all_inputs_of_a_request():
    budget = ElementBudget(100)
    assert budget.take("a", [2, 30]) == 60
    with pytest.raises(
        ServingError,
        match=r"input 'b' declares shape \[5, 10\]: 50 elements; a request may hold at "
        r"most 100 elements in all \(60 taken by the inputs before it\) \(--max_request_elements\)",
    ):
        budget.take("b", [5, 10])
    with pytest.raises(ServingError, match=r"input 'c' declares 33 axes, above the most this server accepts \(32\)"):
        ElementBudget(None).take("c", [1] * 33)


def test_the_budget_counts_numpy_axes_as_python_integers_so_a_huge_product_cannot_wrap_around():
    """int64 axes of 2**32 each multiply to 2**64, which numpy wraps to 0: the count must not."""
    axes = [np.int64(1 << 32), np.int64(1 << 32)]
    assert np.prod(np.array(axes)) == 0  # what a numpy product would have let through
    with pytest.raises(ServingError, match=r"declares shape \[4294967296, 4294967296\]: 18446744073709551616 elements"):
        ElementBudget(1000).take("x", axes)
    with pytest.raises(ServingError, match=r"an axis of 4294967296 is above the most a request may hold"):
        ElementBudget(1000).take("x", (np.int64(0), np.int64(1 << 32)))
    assert ElementBudget(None).take("x", (np.int32(3), np.uint8(4))) == 12


def test_grpc_declared_shape_is_checked_against_its_content_before_building():
    p = grpc_codec.protos()
    content = p.tensor.TensorProto(dtype=1, tensor_content=b"\0" * 44)
    for size in (1, 3, 4):
        content.tensor_shape.dim.add(size=size)
    with pytest.raises(ServingError, match=r"tensor_content has 44 bytes, shape \[1, 3, 4\] of float32 needs 48"):
        grpc_codec.tensor_to_array(content, "x", ElementBudget(1000))
    typed = p.tensor.TensorProto(dtype=1, float_val=[1.0] * 13)
    for size in (1, 3, 4):
        typed.tensor_shape.dim.add(size=size)
    with pytest.raises(ServingError, match=r"13 values in float_val for shape \[1, 3, 4\] of 12 elements"):
        grpc_codec.tensor_to_array(typed, "x", ElementBudget(1000))
    small = p.tensor.TensorProto(dtype=4, int_val=[1, 300])  # uint8 carried in int_val
    small.tensor_shape.dim.add(size=2)
    with pytest.raises(ServingError, match=r"int_val holds values outside the range of uint8: 1\.\.300"):
        grpc_codec.tensor_to_array(small, "x")


def test_kserve_grpc_declared_shape_is_refused_before_data_is_read():
    """The same attack over KServe v2 gRPC: typed contents with one value, and raw contents of 4 bytes."""
    from rnnkit_serving.codecs.kserve import grpc as kserve_grpc_codec

    pb2 = kserve_grpc_codec.protos().pb2
    typed = pb2.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="x", datatype="FP32", shape=[1, 20_000_000, 4])
    tensor.contents.fp32_contents.append(1.0)
    raw = pb2.ModelInferRequest(model_name="m")
    raw.inputs.add(name="x", datatype="FP32", shape=[1, 20_000_000, 4])
    raw.raw_input_contents.append(b"\0" * 4)
    for request in (typed, raw):
        caught = []

        def job(request=request, caught=caught):
            with pytest.raises(ServingError) as error:
                kserve_grpc_codec.decode_infer_request(request, SIGNATURE, ElementBudget(DEFAULT_MAX_REQUEST_ELEMENTS))
            caught.append(error.value)

        assert peak_bytes(job) < 1 << 20
        assert caught[0].code is Code.INVALID_ARGUMENT and caught[0].message == ISSUE_MESSAGE


def test_kserve_declared_shape_is_refused_before_data_is_read():
    item = {"name": "x", "shape": [1, 20_000_000, 4], "datatype": "FP32", "data": [1.0]}
    caught = []

    def job():
        with pytest.raises(ServingError) as error:
            kserve_codec.decode_tensor(item, X, budget=ElementBudget(DEFAULT_MAX_REQUEST_ELEMENTS))
        caught.append(error.value)

    assert peak_bytes(job) < 1 << 20
    assert caught[0].code is Code.INVALID_ARGUMENT and caught[0].message == ISSUE_MESSAGE
    with pytest.raises(ServingError, match=r"input 'x': shape \[1, 2, 4\] holds 8 values, 'data' has 3"):
        kserve_codec.decode_tensor({"name": "x", "shape": [1, 2, 4], "datatype": "FP32", "data": [1, 2, 3]}, X)
    # found by bench/fuzz/fuzz_kserve_json.py: a 0 axis makes the count 0, another axis beyond int64
    huge = {"name": "x", "shape": [2 * 10**88, 0, 4], "datatype": "FP32", "data": []}
    for budget in (ElementBudget(None), ElementBudget(DEFAULT_MAX_REQUEST_ELEMENTS)):
        with pytest.raises(
            ServingError,
            match=r"input 'x' declares shape \[2000.*0, 4\]: an axis of 2000.* is above "
            r"the most a request may hold \((4611686018427387904|8388608) elements",
        ):
            kserve_codec.decode_tensor(huge, X, budget=budget)
    with pytest.raises(ServingError, match=r"input 'x': a value is out of the range of FP32"):
        kserve_codec.decode_tensor({"name": "x", "shape": [1, 1, 4], "datatype": "FP32", "data": [10**400] * 4}, X)


def test_tfs_json_rows_are_taken_from_the_budget_before_they_are_checked():
    doc = {"instances": [[[0.0] * 4] * 3] * 5}  # 5 rows of [3, 4]: 60 elements
    signatures = {"serving_default": SIGNATURE}
    with pytest.raises(
        ServingError,
        match=r"input 'x' declares shape \[5, 3, 4\]: 60 elements; a request may hold "
        r"at most 59 elements in all",
    ):
        rest_codec.decode_predict_request(doc, signatures, ElementBudget(59))
    assert rest_codec.decode_predict_request(doc, signatures, ElementBudget(60)).inputs["x"].shape == (5, 3, 4)
    with pytest.raises(ServingError, match=r"Failed to process input 'x': input 'x' declares shape \[1, 3, 4\]"):
        rest_codec.decode_predict_request({"inputs": {"x": [[[0.0] * 4] * 3]}}, signatures, ElementBudget(11))
    with pytest.raises(ServingError, match=r"JSON Value: a number is out of the range of type: float"):
        rest_codec.decode_predict_request({"instances": [[[10**400, 0, 0, 0]]]}, signatures)


def test_integers_too_long_for_python_are_a_parse_error():
    body = b'{"instances": [[[' + b"1" * 5000 + b", 0, 0, 0]]]}"
    with pytest.raises(ServingError, match=r"^JSON Parse error: Exceeds the limit \(4300 digits\)"):
        tfs_json.parse_json(body)
    with pytest.raises(ServingError, match=r"^failed to parse the request JSON buffer: Exceeds the limit"):
        kserve_codec.parse_body(body)


def test_one_budget_for_every_front_over_http():
    """TF Serving REST, KServe v2 REST and the dispatch's own check refuse the same request alike."""
    dispatch = Dispatch(ModelRegistry.of([fake()]), Metrics(), limits=Limits(max_elements=8))
    with client_for(dispatch) as client:
        tfs = client.post("/v1/models/m:predict", json={"instances": [[[1.0] * 4] * 3]})
        v2 = client.post(
            "/v2/models/m/infer",
            json={"inputs": [{"name": "x", "shape": [1, 3, 4], "datatype": "FP32", "data": [1.0] * 12}]},
        )
    text = "input 'x' declares shape [1, 3, 4]: 12 elements; a request may hold at most 8 elements in all"
    for reply in (tfs, v2):
        assert reply.status_code == 400 and text in reply.json()["error"], reply.text


def test_default_limits_are_finite_and_the_flags_raise_them():
    import argparse

    from rnnkit_serving.server.cli import configure_parser

    assert DEFAULT_LIMITS == Limits(1024, 8192, 8 << 20)
    args = configure_parser(argparse.ArgumentParser()).parse_args([])
    assert (args.max_batch_size, args.max_sequence_length, args.max_request_elements) == (
        DEFAULT_MAX_BATCH_SIZE,
        DEFAULT_MAX_SEQUENCE_LENGTH,
        DEFAULT_MAX_REQUEST_ELEMENTS,
    )
    assert not args.allow_non_finite_inputs
    raised = configure_parser(argparse.ArgumentParser()).parse_args(
        ["--max_batch_size", "5000", "--max_sequence_length", "100000", "--max_request_elements", "99999999"]
    )
    assert (raised.max_batch_size, raised.max_sequence_length, raised.max_request_elements) == (5000, 100000, 99999999)
    from rnnkit_serving.core import defaults

    assert (args.grpc_timeout_in_ms, args.grpc_max_concurrent_rpcs) == (
        defaults.GRPC_TIMEOUT_MS,
        defaults.GRPC_MAX_CONCURRENT_RPCS,
    )
    assert ServerOptions().grpc_timeout_ms == defaults.GRPC_TIMEOUT_MS == 30_000
    assert ServerOptions().grpc_max_concurrent_rpcs == defaults.GRPC_MAX_CONCURRENT_RPCS == 64
    assert ServerOptions().limits == DEFAULT_LIMITS
    # a Dispatch applies the server defaults with each version's own limits, the tighter of each
    dispatch = Dispatch(ModelRegistry.of([fake(limits=Limits(max_batch_size=4))]))
    predictor = dispatch.registry.resolve("m")
    assert dispatch.limits_for(predictor) == Limits(4, 8192, 8 << 20)
    with pytest.raises(ServingError, match=r"input 'x' has 8193 time steps, above the server limit 8192"):
        dispatch.predict(Target("m"), lambda p: _request({"x": np.zeros((1, 8193, 4), np.float32)}))


def test_rest_inline_ms_takes_milliseconds_from_0_and_says_what_it_received(capsys):
    import argparse

    from rnnkit_serving.server.cli import configure_parser

    parser = configure_parser(argparse.ArgumentParser())
    assert parser.parse_args(["--rest_inline_ms", "0"]).rest_inline_ms == 0.0
    assert parser.parse_args(["--rest_inline_ms", "2.5"]).rest_inline_ms == 2.5
    for bad in ("-1", "nan", "ten", "60001"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--rest_inline_ms", bad])
        assert f"must be a number of milliseconds 0-60000, received {bad}" in capsys.readouterr().err


def test_the_cli_and_the_option_classes_read_one_table_of_defaults():
    import argparse

    from rnnkit_serving import RuntimeOptions, SessionOptions
    from rnnkit_serving.core import defaults as D
    from rnnkit_serving.server.cli import configure_parser

    args = configure_parser(argparse.ArgumentParser()).parse_args([])
    server, rest, sessions, runtime = ServerOptions(), RestOptions(), SessionOptions(), RuntimeOptions()
    for flag, option, default in (
        ("rest_api_timeout_in_ms", rest.timeout_ms, D.REST_API_TIMEOUT_MS),
        ("max_request_bytes", rest.max_body_bytes, D.MAX_REQUEST_BYTES),
        ("rest_workers", rest.workers, D.REST_WORKERS),
        ("rest_inline_ms", rest.inline_ms, D.REST_INLINE_MS),
        ("session_idle_seconds", sessions.idle_seconds, D.SESSION_IDLE_SECONDS),
        ("max_sessions", sessions.max_sessions, D.MAX_SESSIONS),
        ("intra_op_threads", runtime.intra_op_threads, D.INTRA_OP_THREADS),
        ("variant", runtime.variant, D.VARIANT),
        ("grpc_workers", server.grpc_workers, D.GRPC_WORKERS),
        ("drain_seconds", server.drain_seconds, D.DRAIN_SECONDS),
        ("file_system_poll_wait_seconds", server.poll_seconds, D.POLL_SECONDS),
        ("port", server.port, D.PORT),
        ("rest_api_port", server.rest_api_port, D.REST_API_PORT),
        ("host", server.host, D.HOST),
    ):
        assert getattr(args, flag) == option == default, flag
    assert (D.REST_API_TIMEOUT_MS, D.MAX_REQUEST_BYTES, D.SESSION_IDLE_SECONDS, D.MAX_SESSIONS) == (
        30_000,
        16 << 20,
        60,
        1000,
    )


class _request:
    def __init__(self, inputs):
        self.inputs = inputs
        self.signature_name = "serving_default"


# ----------------------------------------------------------------------------- non-finite inputs


def test_non_finite_inputs_are_refused_naming_the_input_and_the_first_index():
    seen = []
    dispatch = Dispatch(ModelRegistry.of([fake(fn=lambda i: seen.append(i["x"]) or {"y": i["x"]})]), Metrics())
    x = np.zeros((1, 5, 4), np.float32)
    x[0, 3, 1], x[0, 4, 0] = np.nan, np.inf
    with pytest.raises(ServingError) as caught:
        dispatch.predict(Target("m"), lambda p: _request({"x": x}))
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert caught.value.message == (
        "input 'x' has a non-finite value (nan) at [0, 3, 1]; the server refuses NaN and infinity "
        "(--allow_non_finite_inputs passes them to the model)"
    )
    x[0, 3, 1] = 0
    with pytest.raises(ServingError, match=r"input 'x' has a non-finite value \(inf\) at \[0, 4, 0\]"):
        dispatch.predict(Target("m"), lambda p: _request({"x": x}))
    # float64 values beyond float32 become infinity when converted: refused too
    big = np.full((1, 1, 4), 1e39)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ServingError, match=r"non-finite value \(inf\) at \[0, 0, 0\]"):
            dispatch.predict(Target("m"), lambda p: _request({"x": big}))
    assert seen == []  # the model never ran
    passing = Dispatch(dispatch.registry, Metrics(), allow_non_finite=True)
    x[0, 3, 1] = np.nan
    out = passing.predict(Target("m"), lambda p: _request({"x": x})).outputs["y"]
    assert np.isnan(out[0, 3, 1]) and np.isinf(out[0, 4, 0]) and len(seen) == 1


def test_non_finite_chunks_of_a_sequence_are_refused_before_the_session_steps():
    h_in, h_out = TensorSpec("h_in", "float32", (None, 2)), TensorSpec("h_out", "float32", (None, 2))
    step = Signature("step", (X, h_in), (Y, h_out))
    calls = []

    def run_step(inputs):
        calls.append(inputs["x"])
        return {"y": inputs["x"], "h_out": inputs["h_in"] + 1}

    backends = {"serving_default": FakeBackend(SIGNATURE), "step": FakeBackend(step, run_step)}
    dispatch = Dispatch(ModelRegistry.of([Predictor("m", 1, backends)]), Metrics())
    chunk = np.zeros((1, 2, 4), np.float32)
    chunk[0, 1, 3] = np.nan
    with pytest.raises(ServingError, match=r"^input 'x' has a non-finite value \(nan\) at \[0, 1, 3\]; "):
        dispatch.stream(Target("m"), 7, True, False, lambda p: _request({"x": chunk}))
    assert calls == [] and dispatch.sessions.live() == {}
    chunk[0, 1, 3] = 0
    dispatch.stream(Target("m"), 7, True, False, lambda p: _request({"x": chunk}))
    assert len(calls) == 1 and dispatch.sessions.live() == {"m": 1}


def test_non_finite_over_rest_tfs_and_kserve():
    dispatch = Dispatch(ModelRegistry.of([fake()]), Metrics())
    with client_for(dispatch) as client:
        tfs = client.post("/v1/models/m:predict", content=b'{"instances": [[[0, 0, 0, 0], [0, NaN, 0, 0]]]}')
        assert tfs.status_code == 400
        assert tfs.json()["error"].startswith("input 'x' has a non-finite value (nan) at [0, 1, 1]; ")
        v2 = client.post(
            "/v2/models/m/infer",
            content=b'{"inputs": [{"name": "x", "shape": [1, 1, 4], "datatype": "FP32", "data": [0, 0, -Infinity, 0]}]}',
        )
        assert v2.status_code == 400
        assert v2.json()["error"].startswith("input 'x' has a non-finite value (-inf) at [0, 0, 2]; ")
    allowing = Dispatch(dispatch.registry, Metrics(), allow_non_finite=True)
    with client_for(allowing) as client:
        tfs = client.post("/v1/models/m:predict", content=b'{"instances": [[[0, NaN, Infinity, 1]]]}')
    # non-finite outputs are returned as TF Serving writes them: NaN / Infinity tokens
    assert tfs.status_code == 200 and tfs.text == '{"predictions": [[[0.0,NaN,Infinity,2.0]]]}'


# ------------------------------------------------------------------------------- JSON depth


def nested(depth):
    return b'{"instances": ' + b"[" * (depth - 1) + b"1.0" + b"]" * (depth - 1) + b"}"


def test_json_depth_is_measured_without_recursion_and_ignores_strings():
    assert json_depth(nested(50_000)) == 50_000
    assert json_depth(b'{"a": "[[[[[[", "b": [[1], {"c": "]]]\\"[["}]}') == 3
    assert json_depth(b"[" * 3_000_000) == 3_000_000  # several chunks of the scan
    assert not exceeds_depth(nested(MAX_JSON_DEPTH)) and exceeds_depth(nested(MAX_JSON_DEPTH + 1))
    with pytest.raises(ServingError, match=r"^JSON Parse error: nesting depth exceeds 100$"):
        tfs_json.parse_json(nested(50_000))
    with pytest.raises(ServingError, match=r"^failed to parse the request JSON buffer: nesting depth exceeds 100$"):
        kserve_codec.parse_body(b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")


def test_deep_json_is_a_400_not_a_500_on_both_rest_apis():
    dispatch = Dispatch(ModelRegistry.of([fake()]), Metrics())
    with client_for(dispatch) as client:
        for path in ("/v1/models/m:predict", "/v2/models/m/infer"):
            for depth in (101, 1025, 50_000):  # past the limit, past orjson's, past Python's recursion
                reply = client.post(path, content=nested(depth))
                assert reply.status_code == 400 and "nesting depth exceeds 100" in reply.json()["error"], reply.text
        # at the limit the body parses; the model's rank decides
        reply = client.post("/v1/models/m:predict", content=nested(MAX_JSON_DEPTH))
        assert reply.status_code == 400 and "declares 99 axes, above the most this server accepts (32)" in reply.text


# ----------------------------------------- REST blocks the event loop only with a job whose like was fast


def test_a_slow_model_neither_blocks_other_requests_nor_escapes_the_timeout():
    """Over a real socket: while one model is stuck, requests for another are answered, and the
    stuck request gets its 504 (a model not yet seen to be fast runs in a worker thread)."""
    release = threading.Event()

    def stuck(inputs):
        release.wait(30)
        return {"y": inputs["x"]}

    registry = ModelRegistry.of([fake("slow", stuck), fake("fast")])
    options = ServerOptions(rest_api_port=_free_port(), port=0, rest=RestOptions(timeout_ms=2000), poll_seconds=0)
    server = ModelServer(registry, options).start()
    try:
        body = {"instances": [[[1.0, 2.0, 3.0, 4.0]]]}
        slow_reply = []
        first = threading.Thread(
            target=lambda: slow_reply.append(
                httpx.post(f"{server.rest_url}/v1/models/slow:predict", json=body, timeout=30)
            )
        )
        first.start()
        fast = httpx.post(f"{server.rest_url}/v1/models/fast:predict", json=body, timeout=30)
        assert fast.status_code == 200 and fast.json() == {"predictions": [[[2.0, 4.0, 6.0, 8.0]]]}
        first.join(30)
        assert slow_reply[0].status_code == 504
        assert slow_reply[0].json() == {"error": "Request timed out after 2000 ms (--rest_api_timeout_in_ms)"}
    finally:
        release.set()
        server.stop()


def _thread_recorder(delays):
    """A fake model that records the thread each call ran in, sleeping delays.pop(0) s when delays is non-empty."""
    threads = []

    def model(inputs):
        threads.append(threading.current_thread().name)
        if delays:
            threading.Event().wait(delays.pop(0))
        return {"y": inputs["x"]}

    return model, threads


def test_a_small_request_with_nothing_in_flight_runs_on_the_loop_once_its_like_was_fast():
    delays = []
    model, threads = _thread_recorder(delays)
    dispatch = Dispatch(ModelRegistry.of([fake("m", model)]), Metrics())
    small = {"instances": [[[1.0, 2.0, 3.0, 4.0]]]}
    large = {"instances": [[[1.0, 2.0, 3.0, 4.0]] * 50]}
    # a 200 ms budget: a loaded machine (CI) must not make a 50-row fake call "slow" by accident
    with client_for(dispatch, RestOptions(inline_ms=200)) as client:
        inline = client.app.state.front.inline
        for body in (small, small, large, large, small):
            assert client.post("/v1/models/m:predict", json=body).status_code == 200
        # never seen -> thread; seen fast -> loop; a larger body -> thread, then loop; smaller than seen -> loop
        assert [t.startswith("rnnkit-rest_") for t in threads] == [True, False, True, False, False]
        assert inline.inline == 3
        delays.append(0.3)  # the model turns slow (300 ms > the 200 ms budget) on a run on the loop...
        assert client.post("/v2/models/m/infer", json=_kserve(small)).status_code == 200
        assert not threads[-1].startswith("rnnkit-rest_")
        for _ in range(2):  # ... so the next requests of any size go to a thread, and nothing is learned for 1 s
            assert client.post("/v2/models/m/infer", json=_kserve(small)).status_code == 200
        assert [t.startswith("rnnkit-rest_") for t in threads[-2:]] == [True, True]
        time.sleep(1.05)
        for _ in range(2):  # then it is learned again
            assert client.post("/v2/models/m/infer", json=_kserve(small)).status_code == 200
        assert [t.startswith("rnnkit-rest_") for t in threads[-2:]] == [True, False]
    with client_for(dispatch, RestOptions(inline_ms=0)) as client:  # --rest_inline_ms 0: always a thread
        assert client.app.state.front.inline is None
        for _ in range(3):
            client.post("/v1/models/m:predict", json=small)
        assert all(t.startswith("rnnkit-rest_") for t in threads[-3:])


def _kserve(tfs_body):
    values = np.asarray(tfs_body["instances"], np.float32)
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(values.shape), "data": values.ravel().tolist()}]}


def test_nothing_runs_on_the_loop_while_another_request_is_in_a_worker():
    """Over a real socket: with a request stuck in a worker thread, a request that would have run on the loop
    (its like was fast) goes to a worker too, and is answered while the first is still stuck."""
    release, entered = threading.Event(), threading.Event()
    model, threads = _thread_recorder([])

    def stuck(inputs):
        entered.set()
        release.wait(30)
        return {"y": inputs["x"]}

    registry = ModelRegistry.of([fake("slow", stuck), fake("fast", model)])
    # a 200 ms inline budget: on a loaded machine (CI) a fake call must not read as slow by accident
    options = ServerOptions(rest_api_port=_free_port(), port=0, rest=RestOptions(inline_ms=200), poll_seconds=0)
    server = ModelServer(registry, options).start()
    first = None
    try:
        body = {"instances": [[[1.0, 2.0, 3.0, 4.0]]]}
        for _ in range(3):  # a first call may be slow (imports, first allocations): it is learned by the third
            assert httpx.post(f"{server.rest_url}/v1/models/fast:predict", json=body, timeout=30).status_code == 200
        assert not threads[-1].startswith("rnnkit-rest_")
        first = threading.Thread(target=lambda: httpx.post(f"{server.rest_url}/v1/models/slow:predict", json=body))
        first.start()
        assert entered.wait(10)  # the slow request is in its worker thread
        assert httpx.post(f"{server.rest_url}/v1/models/fast:predict", json=body, timeout=30).status_code == 200
        assert threads[-1].startswith("rnnkit-rest_") and first.is_alive()
    finally:
        release.set()
        if first is not None:
            first.join(30)
        server.stop()


def _free_port():
    from rnnkit_serving.server.process import free_port

    return free_port("127.0.0.1")


# ------------------------------------------------------------------ bounded client-keyed state


def _dict_sizes(*objects):
    """Sizes of every dict/list/set attribute of `objects` (one level down), by (object, attribute)."""
    sizes = {}
    for index, obj in enumerate(objects):
        for key, value in vars(obj).items():
            if isinstance(value, (dict, list, set)):
                sizes[(index, type(obj).__name__, key)] = len(value)
    return sizes


def test_unknown_model_names_add_no_state_and_one_metrics_label():
    dispatch = Dispatch(ModelRegistry.of([fake()]), Metrics())
    with client_for(dispatch) as client:
        client.post("/v1/models/m:predict", json={"instances": [[[1.0] * 4]]})  # one known request first
        front = client.app.state.front
        watched = (
            front,
            front.inline,
            front.tfs,
            front.kserve,
            dispatch,
            dispatch.registry,
            dispatch.metrics,
            dispatch.sessions,
        )

        def unknown(i):  # every route that names a model, for an unknown name
            client.post(f"/v1/models/unknown-{i}:predict", json={"instances": [[[1.0] * 4]]})
            client.get(f"/v1/models/unknown-{i}")
            client.get(f"/v1/models/unknown-{i}/metadata")
            client.post(f"/v2/models/unknown-{i}/infer", json={"inputs": []})
            client.get(f"/v2/models/unknown-{i}/ready")

        unknown(0)  # the fixed "(unknown)" label's entries exist from here on
        before = _dict_sizes(*watched)
        for i in range(1, 200):
            unknown(i)
        assert _dict_sizes(*watched) == before
        metrics = client.get("/monitoring/prometheus/metrics").text
    names = {
        sample.labels["model_name"]
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if "model_name" in sample.labels
    }
    assert names == {"m", "(unknown)"}


def test_state_keyed_by_client_input_is_bounded_where_it_is_kept():
    """The audit, pinned: every map keyed by something a client sends is bounded (sessions by
    --max_sessions; batch groups by the queue bound; metrics by served model names)."""
    from rnnkit_serving.scheduling.session_store import SessionOptions, SessionStore

    assert SessionStore(SessionOptions(max_sessions=3)).options.max_sessions == 3
    metrics = Metrics()
    dispatch = Dispatch(ModelRegistry.of([fake()]), metrics)
    for i in range(50):
        metrics.record(dispatch.metric_name(f"nope{i}"), "predict", "REST", Code.NOT_FOUND, 1.0)
    assert json.dumps(sorted(metrics._counts)) == '[["(unknown)", "NOT_FOUND"]]'


# ------------------------------------------------------------------------------- gRPC bounds


@pytest.fixture
def grpc_stuck():
    """Start a gRPC front (the official client's service) over a model `slow` that blocks until
    released and a model `fast`: ``start(timeout_ms, max_concurrent_rpcs) -> (stub, release)``."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from rnnkit_serving.fronts.grpc.tfs import start_grpc_server

    release = threading.Event()
    entered = threading.Semaphore(0)  # released once per call that reached the `slow` model
    opened = []

    def stuck(inputs):
        entered.release()
        release.wait(30)
        return {"y": inputs["x"]}

    def start(timeout_ms, max_concurrent_rpcs):
        dispatch = Dispatch(ModelRegistry.of([fake("slow", stuck), fake("fast")]), Metrics())
        address = f"127.0.0.1:{_free_port()}"
        server = start_grpc_server(
            dispatch, address, workers=4, timeout_ms=timeout_ms, max_concurrent_rpcs=max_concurrent_rpcs
        )
        channel = grpc.insecure_channel(address)
        opened.append((server, channel))
        return prediction_service_pb2_grpc.PredictionServiceStub(channel), release

    start.entered = entered
    yield start
    release.set()
    for server, channel in opened:
        channel.close()
        server.stop(5).wait(10)


def _predict(name):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 1, 4), np.float32)))
    return request


def test_grpc_server_deadline_caps_a_slow_predict(grpc_stuck):
    import grpc

    stub, _ = grpc_stuck(2000, 64)  # 2 s: the fast call cannot time out on a loaded machine
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(_predict("slow"), timeout=30)  # the client would wait 30 s; the server answers first
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert caught.value.details() == "Request timed out after 2000 ms (--grpc_timeout_in_ms)"
    assert stub.Predict(_predict("fast"), timeout=30).outputs["y"].float_val == [2.0] * 4


def test_grpc_refuses_rpcs_beyond_the_concurrency_bound(grpc_stuck):
    import grpc

    stub, release = grpc_stuck(30_000, 2)
    held = [stub.Predict.future(_predict("slow"), timeout=30) for _ in range(2)]
    for _ in held:  # both held calls are inside the model: the bound of 2 is taken
        assert grpc_stuck.entered.acquire(timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(_predict("fast"), timeout=30)
    refused = caught.value
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Concurrent RPC limit exceeded" in refused.details()
    release.set()
    for call in held:  # the calls the bound let in are answered
        assert call.result().outputs["y"].float_val == [1.0] * 4
    assert stub.Predict(_predict("fast"), timeout=30).outputs["y"].float_val == [2.0] * 4


def test_in_worker_sync_answers_on_time_and_never_runs_a_job_whose_deadline_passed_in_the_queue():
    from concurrent.futures import ThreadPoolExecutor

    dispatch = Dispatch(ModelRegistry.of([fake()]), Metrics())
    release, ran = threading.Event(), []
    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(release.wait, 30)  # the only worker is taken
        with pytest.raises(ServingError, match=r"^Request timed out after 50 ms \(--flag\)$") as caught:
            dispatch.in_worker_sync(pool, lambda: ran.append("late"), 50, "--flag")
        assert caught.value.code is Code.DEADLINE_EXCEEDED
        with pytest.raises(ServingError, match=r"^Deadline Exceeded \(the client's deadline\)$"):
            dispatch.in_worker_sync(pool, lambda: ran.append("client"), 30_000, "--flag", client_s=0.05)
        release.set()
        busy.result()
        assert dispatch.in_worker_sync(pool, lambda: "done", 30_000, "--flag", client_s=float("inf")) == "done"
    assert ran == []  # both timed-out jobs were dropped from the queue, never run
