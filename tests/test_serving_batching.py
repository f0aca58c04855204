"""Dynamic batching: TF Serving's parameters file, exactness for random-length concurrent requests
(zero-padding invariant model: merged across lengths; non-invariant: identical shapes only), the
full-queue 503 and the oversized-task error, and batching behind the REST front."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import serving_repo

from rnnkit_serving import FakeBackend, Predictor, Signature, TensorSpec
from rnnkit_serving.config.batching_config import (
    BatchingParameters,
    parse_batching_parameters,
    read_batching_parameters,
)
from rnnkit_serving.config.text_format import ConfigError
from rnnkit_serving.core.metrics import Metrics
from rnnkit_serving.errors import Code, ServingError, wire_error
from rnnkit_serving.scheduling.batching import Batcher
from rnnkit_serving.server.cli import configure_parser

TOL = 1e-5


@pytest.fixture(scope="module")
def repo():
    return serving_repo.shared_repository()


def counting(predictor, gate=None):
    """Record the input shapes of every runtime call the batcher makes; with `gate`, each call first waits for
    it (so that what is submitted meanwhile queues, however fast the batch threads are)."""
    calls = []
    run = predictor.run

    def recorded(arrays, signature_name="serving_default"):
        if gate is not None:
            gate.wait(30)
        calls.append({k: v.shape for k, v in arrays.items()})
        return run(arrays, signature_name)

    predictor.run = recorded
    return calls


def random_requests(rng, count, max_len=20, max_rows=3):
    return [
        {"x": rng.normal(size=(int(rng.integers(1, max_rows + 1)), int(rng.integers(1, max_len + 1)), 3)).astype("f4")}
        for _ in range(count)
    ]


def assert_same(got, want):
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], atol=TOL, rtol=0)


# ------------------------------------------------------------------------------ parameters


def test_parameters_file_in_tf_serving_text_format(tmp_path):
    text = """
    max_batch_size { value: 64 }
    batch_timeout_micros { value: 2000 }
    max_enqueued_batches { value: 100 }
    num_batch_threads { value: 4 }
    allowed_batch_sizes: 8
    allowed_batch_sizes: 32
    allowed_batch_sizes: 64
    pad_variable_length_inputs: true
    """
    params = parse_batching_parameters(text)
    assert (params.max_batch_size, params.batch_timeout_micros, params.max_enqueued_batches) == (64, 2000, 100)
    assert params.num_batch_threads == 4 and params.allowed_batch_sizes == (8, 32, 64)
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 8 }\n")
    assert read_batching_parameters(str(path), bucket_width=4) == BatchingParameters(8, bucket_width=4)
    defaults = read_batching_parameters(None)
    assert (defaults.max_batch_size, defaults.batch_timeout_micros, defaults.max_enqueued_batches) == (1000, 0, 10)


@pytest.mark.parametrize(
    "text, message",
    [
        ("max_batch_size { value: 64 }\nallowed_batch_sizes: 8\n", "Last entry in allowed_batch_sizes must match"),
        ("max_batch_sise { value: 64 }", r"unknown batching parameters \['max_batch_sise'\]"),
        ("max_batch_size { value: 0 }", "`max_batch_size` must be positive"),
        ('max_batch_size { value: "x" }', "`max_batch_size` must be an integer"),
    ],
)
def test_parameters_file_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_batching_parameters(text)


def test_cli_flags_parse_like_tf_serving():
    parser = configure_parser(__import__("argparse").ArgumentParser())
    args = parser.parse_args(["--enable_batching", "--batching_parameters_file", "b.config"])
    assert args.enable_batching is True and args.batching_parameters_file == "b.config"
    args = parser.parse_args(["--enable_batching=false", "--file_system_poll_wait_seconds", "0.5"])
    assert args.enable_batching is False and args.file_system_poll_wait_seconds == 0.5
    args = parser.parse_args(["--num_versions", "2", "--session_idle_seconds", "5", "--max_sessions", "3"])
    assert (args.num_versions, args.session_idle_seconds, args.max_sessions) == (2, 5.0, 3)


# ------------------------------------------------------------------------------- exactness


def test_random_lengths_batched_exactly_for_a_zero_padding_invariant_model(repo):
    rng = np.random.default_rng(0)
    with Predictor.load(os.path.join(repo, "lstm")) as predictor:
        assert predictor.zero_padding_invariant
        requests = random_requests(rng, 48)
        want = [predictor.predict(r) for r in requests]
        gate = threading.Event()
        calls = counting(predictor, gate)
        metrics = Metrics()
        batcher = Batcher(BatchingParameters(16, 1_000_000, 2, 100), metrics)
        try:
            futures = [batcher.submit(predictor, predictor.validate(r)) for r in requests]
            gate.set()  # the batch threads took at most one batch each meanwhile; the rest queued
            got = [f.result(timeout=60) for f in futures]
        finally:
            batcher.close()
        for g, w in zip(got, want):
            assert_same(g, w)
        distinct = {r["x"].shape[1] for r in requests}
        assert len(calls) < len(distinct)  # requests of different lengths were merged
        assert {shape["x"][1] for shape in calls} <= distinct  # padded to the longest in the batch
        assert all(shape["x"][0] <= 16 for shape in calls)
        text = metrics.render().decode()
        assert ":rnnkit:serving:batch_size_bucket" in text
        assert ":tensorflow:serving:batching_session:queuing_latency_count" in text


def test_many_concurrent_callers_get_their_own_answers(repo):
    rng = np.random.default_rng(1)
    with Predictor.load(os.path.join(repo, "gru")) as predictor:
        requests = random_requests(rng, 64, max_len=12)
        want = [predictor.predict(r) for r in requests]
        batcher = Batcher(BatchingParameters(8, 2000, 2, 100, bucket_width=4))
        try:
            with ThreadPoolExecutor(16) as pool:
                got = list(pool.map(lambda r: batcher.predict(predictor, r), requests))
        finally:
            batcher.close()
        for g, w in zip(got, want):
            assert_same(g, w)


def test_a_model_that_does_not_mask_padding_only_merges_identical_shapes(repo):
    rng = np.random.default_rng(2)
    with Predictor.load(os.path.join(repo, "plain")) as predictor:
        assert not predictor.zero_padding_invariant
        requests = random_requests(rng, 24, max_len=4, max_rows=2)
        want = [predictor.predict(r) for r in requests]
        calls = counting(predictor)
        batcher = Batcher(BatchingParameters(16, 200_000, 1, 100))
        try:
            futures = [batcher.submit(predictor, predictor.validate(r)) for r in requests]
            got = [f.result(timeout=60) for f in futures]
        finally:
            batcher.close()
        for g, w in zip(got, want):
            assert_same(g, w)
        assert len(calls) < len(requests)
        # each runtime call holds requests of one length only, never padded
        lengths_sent = sorted(shape["x"][1] for shape in calls)
        assert sorted({r["x"].shape[1] for r in requests}) == sorted(set(lengths_sent))
        for length in set(lengths_sent):
            rows = sum(r["x"].shape[0] for r in requests if r["x"].shape[1] == length)
            assert sum(s["x"][0] for s in calls if s["x"][1] == length) == rows


def test_allowed_batch_sizes_pad_rows_and_drop_them(repo):
    rng = np.random.default_rng(3)
    with Predictor.load(os.path.join(repo, "simplernn")) as predictor:
        requests = random_requests(rng, 5, max_len=6, max_rows=1)
        want = [predictor.predict(r) for r in requests]
        calls = counting(predictor)
        batcher = Batcher(BatchingParameters(8, 200_000, 1, 10, allowed_batch_sizes=(4, 8)))
        try:
            got = [f.result(timeout=60) for f in [batcher.submit(predictor, predictor.validate(r)) for r in requests]]
        finally:
            batcher.close()
        for g, w in zip(got, want):
            assert_same(g, w)
        assert all(shape["x"][0] in (4, 8) for shape in calls)


# ----------------------------------------------------------------------------- limits


def blocking_predictor(gate):
    sig = Signature("serving_default", (TensorSpec("a", "float32", (None,)),), (TensorSpec("b", "float32", (None,)),))

    def run(inputs):
        gate.wait(30)
        return {"b": inputs["a"] * 2}

    return Predictor("slow", 1, {"serving_default": FakeBackend(sig, run)})


def test_a_full_queue_answers_unavailable_503_and_recovers():
    gate = threading.Event()
    predictor = blocking_predictor(gate)
    batcher = Batcher(BatchingParameters(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1))
    try:
        running = batcher.submit(predictor, {"a": np.ones(2, np.float32)})
        for _ in range(200):  # bounded: until the worker has taken the first batch
            if not batcher._groups:
                break
            threading.Event().wait(0.01)
        queued = batcher.submit(predictor, {"a": np.full(2, 3.0, np.float32)})  # fills the queue (one batch)
        with pytest.raises(ServingError) as full:
            batcher.submit(predictor, {"a": np.ones(1, np.float32)})
        code, message, status = wire_error(full.value)
        assert code is Code.UNAVAILABLE and status == 503
        assert "The batch scheduling queue to which this task was submitted is full" in message
        gate.set()
        np.testing.assert_array_equal(running.result(30)["b"], [2.0, 2.0])
        np.testing.assert_array_equal(queued.result(30)["b"], [6.0, 6.0])
        assert batcher.submit(predictor, {"a": np.ones(1, np.float32)}).result(30)["b"].tolist() == [2.0]
    finally:
        gate.set()
        batcher.close()


def test_a_request_larger_than_max_batch_size_is_invalid_argument():
    gate = threading.Event()
    gate.set()
    batcher = Batcher(BatchingParameters(max_batch_size=2, num_batch_threads=1))
    try:
        with pytest.raises(ServingError, match="Task size 3 is larger than maximum input batch size 2") as error:
            batcher.predict(blocking_predictor(gate), {"a": np.ones(3, np.float32)})
        assert error.value.code is Code.INVALID_ARGUMENT
    finally:
        batcher.close()


def test_runtime_errors_reach_every_request_of_the_batch():
    sig = Signature("serving_default", (TensorSpec("a", "float32", (None,)),), (TensorSpec("b", "float32", (None,)),))

    def broken(inputs):
        raise ServingError(Code.INTERNAL, "runtime exploded")

    predictor = Predictor("bad", 1, {"serving_default": FakeBackend(sig, broken)})
    batcher = Batcher(BatchingParameters(4, 100_000, 1, 10))
    try:
        futures = [batcher.submit(predictor, {"a": np.ones(1, np.float32)}) for _ in range(3)]
        for future in futures:
            with pytest.raises(ServingError, match="runtime exploded"):
                future.result(30)
    finally:
        batcher.close()


# ------------------------------------------------------------------------------ REST front


def test_rest_and_kserve_requests_are_batched_exactly(repo):
    import warnings

    from rnnkit_serving import app
    from rnnkit_serving.registry import ModelRegistry

    rng = np.random.default_rng(4)
    predictor = Predictor.load(os.path.join(repo, "lstm"))
    requests = random_requests(rng, 24, max_len=10, max_rows=1)
    want = [predictor.predict(r) for r in requests]
    calls = counting(predictor)
    registry = ModelRegistry.of([predictor])
    batcher = Batcher(BatchingParameters(8, 20_000, 2, 100))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's TestClient warns that it runs on httpx
        from starlette.testclient import TestClient

        client = TestClient(app(registry, batcher=batcher))

    def send(index):
        x = requests[index]["x"]
        if index % 2:
            body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
            reply = client.post("/v2/models/lstm/infer", json=body)
            assert reply.status_code == 200, reply.text
            return {o["name"]: np.reshape(o["data"], o["shape"]) for o in reply.json()["outputs"]}
        reply = client.post("/v1/models/lstm:predict", json={"inputs": {"x": x.tolist()}})
        assert reply.status_code == 200, reply.text
        return {k: np.asarray(v) for k, v in reply.json()["outputs"].items()}

    try:
        with client, ThreadPoolExecutor(12) as pool:
            got = list(pool.map(send, range(len(requests))))
    finally:
        batcher.close()
        registry.close()
    for g, w in zip(got, want):
        assert_same(g, w)
    assert len(calls) <= len(requests)
