"""``rnnkit serve --server_workers N``: worker processes sharing every port with SO_REUSEPORT.

A real 2-worker server (child processes, 127.0.0.1): streamed sequences sent chunk by chunk over a
fresh connection each (so the kernel spreads them over both workers) equal the full sequence run by
an in-process `Predictor` on KServe REST (parameters, header, binary extension) and KServe gRPC
(ModelInfer, ModelStreamInfer); the metrics endpoint of any worker shows totals over all of them;
model metadata and readiness read the same from every connection; SIGTERM drains every worker; a
SIGKILLed worker is started again. With 1 worker (the default) the server starts no extra process.
"""

import concurrent.futures
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest
import serving_repo

from rnnkit_serving import Predictor
from rnnkit_serving.core.metrics import Metrics, merge_states
from rnnkit_serving.core.workers import WorkerRing, parse_workers, sequence_owner, usable_cpus
from rnnkit_serving.errors import Code
from rnnkit_serving.server.process import free_port

warnings.filterwarnings("ignore", category=DeprecationWarning)
grpc = pytest.importorskip("grpc")
pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

TOL = 1e-5
CHUNKS = (2, 1, 3, 1, 2, 3, 1, 2)  # 8 chunks, 15 steps: each on its own connection
STEPS = sum(CHUNKS)
MODEL = "lstm"


# ------------------------------------------------------------------------------- pure parts


def test_sequence_owner_is_a_stable_hash_of_model_and_id():
    for model, key in (("lstm", 42), ("gru", "user-7"), ("lstm", 2**64 - 1), ("m", "é")):
        digest = hashlib.blake2b(f"{model}\0{key}".encode(), digest_size=8).digest()
        for count in (1, 2, 3, 16):
            assert sequence_owner(model, key, count) == int.from_bytes(digest, "big") % count
    assert sequence_owner("lstm", 42, 7) == sequence_owner("lstm", "42", 7)  # header text meets the parameter
    owners = {sequence_owner("lstm", key, 2) for key in range(64)}
    assert owners == {0, 1}  # both workers own sequences
    ring = WorkerRing(1, 2, "/run/x")
    assert ring.peers() == [0] and ring.rest_socket(0) == "/run/x/w0.rest.sock"
    assert ring.grpc_socket(1) == "/run/x/w1.grpc.sock"
    with pytest.raises(ValueError, match=r"worker index 2 is not in 0\.\.1"):
        WorkerRing(2, 2, "/run/x")


def test_server_workers_flag_values():
    assert parse_workers("3") == 3
    assert parse_workers(" AUTO ") == usable_cpus() == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "two", "1.5", "257"):
        with pytest.raises(
            ValueError,
            match=rf"expected a positive integer up to 256 or 'auto', received '{bad}'|"
            rf"expected a positive integer or 'auto', received '{bad}'",
        ):
            parse_workers(bad)
    refused = subprocess.run(
        [sys.executable, "-m", "rnnkit_serving", "--model_base_path", "/nonexistent", "--server_workers", "0"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2
    assert "--server_workers: expected a positive integer up to 256 or 'auto', received '0'" in refused.stderr


def test_tls_with_several_workers_is_refused_clearly(tmp_path):
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "rnnkit_serving",
            "--model_base_path",
            str(tmp_path),
            "--server_workers",
            "2",
            "--ssl_config_file",
            str(tmp_path / "ssl.config"),
        ],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2
    assert "--server_workers above 1 cannot be combined with --ssl_config_file yet" in refused.stderr


def test_metrics_of_several_workers_add_up():
    first, second = Metrics(), Metrics()
    for _ in range(3):
        first.record("lstm", "infer", "REST", Code.OK, 100.0)
    second.record("lstm", "infer", "REST", Code.OK, 100.0)
    second.record("lstm", "infer", "GRPC", Code.INVALID_ARGUMENT, 5.0)
    first.live_sessions = lambda: {"lstm": 2}
    second.live_sessions = lambda: {"lstm": 1}
    first.loaded_versions = second.loaded_versions = lambda: {"lstm": 1}
    text = first.render([second.state()]).decode()
    assert ':tensorflow:serving:request_count{model_name="lstm",status="OK"} 4' in text
    assert ':tensorflow:serving:request_count{model_name="lstm",status="INVALID_ARGUMENT"} 1' in text
    # 100 µs falls in the bucket whose bound is 10 x 1.8^4 = 104.976 (cumulative buckets: none below)
    bucket = ':tensorflow:serving:request_latency_bucket{API="infer",entrypoint="REST",le="%s",model_name="lstm"} %s'
    assert bucket % ("104.976", "4.0") in text and bucket % ("58.32", "0.0") in text
    assert ':tensorflow:serving:request_latency_count{API="infer",entrypoint="REST",model_name="lstm"} 4.0' in text
    assert ':rnnkit:serving:live_sessions{model_name="lstm"} 3.0' in text
    assert ':rnnkit:serving:loaded_versions{model_name="lstm"} 1.0' in text  # each worker loads the same versions
    assert first.render().decode().count("request_count{") == 1  # alone: only its own
    merged = merge_states([first.state(), second.state()])
    assert sorted(map(tuple, merged["counts"])) == [("lstm", "INVALID_ARGUMENT", 1), ("lstm", "OK", 4)]


# ------------------------------------------------------------------------- a real server


class Workers:
    """``python -m rnnkit_serving --server_workers 2`` with its stderr in a file."""

    def __init__(self, repo, log_path, count=2):
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.log_path = log_path
        self.log = open(log_path, "wb")
        command = [
            sys.executable,
            "-m",
            "rnnkit_serving",
            "--model_name",
            MODEL,
            "--model_base_path",
            os.path.join(repo, MODEL),
            "--rest_api_port",
            str(self.rest_port),
            "--port",
            "0",
            "--grpc_inference_port",
            str(self.grpc_port),
            "--server_workers",
            str(count),
            "--drain_seconds",
            "5",
            # one request thread per front: relays between the workers must not wait for each other's threads
            "--rest_workers",
            "1",
            "--grpc_workers",
            "2",
            "--grpc_max_streams",
            "1",
        ]
        self.process = subprocess.Popen(command, stderr=self.log)
        self.pids = self.wait_for(r"ready; 2 server workers \(pids \[(\d+), (\d+)\]\)")

    def stderr(self):
        with open(self.log_path, "rb") as text:
            return text.read().decode(errors="replace")

    def wait_for(self, pattern, timeout=180.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.stderr())
            if found:
                return [int(group) for group in found.groups()]
            assert self.process.poll() is None, f"the server exited {self.process.returncode}: {self.stderr()}"
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen: {self.stderr()}")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        finally:
            self.log.close()


@pytest.fixture(scope="module")
def repo():
    return serving_repo.shared_repository()


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    workers = Workers(repo, tmp_path_factory.mktemp("workers") / "stderr.log")
    yield workers
    if workers.process.poll() is None:
        workers.stop()


@pytest.fixture(scope="module")
def reference(repo):
    with Predictor.load(os.path.join(repo, MODEL)) as predictor:
        yield predictor


def rest(server, method, path, body=None, headers=None):
    """One request on a fresh connection (urllib closes it): status, headers, body bytes."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def split(x):
    start = 0
    for size in CHUNKS:
        yield x[:, start : start + size]
        start += size


def json_body(chunk, parameters):
    return json.dumps(
        {
            "parameters": parameters,
            "inputs": [{"name": "x", "shape": list(chunk.shape), "datatype": "FP32", "data": chunk.ravel().tolist()}],
        }
    ).encode()


def binary_body(chunk, parameters):
    header = json.dumps(
        {
            "parameters": parameters,
            "inputs": [
                {
                    "name": "x",
                    "shape": list(chunk.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": chunk.nbytes},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "last"}],
        }
    ).encode()
    return header + chunk.tobytes(), len(header)


def json_outputs(status, body):
    assert status == 200, body
    return {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in json.loads(body)["outputs"]}


def flags(index):
    return {"sequence_start": index == 0, "sequence_end": index == len(CHUNKS) - 1}


def stream_rest(server, x, key, form):
    ys, last = [], None
    for index, chunk in enumerate(split(x)):
        path = f"/v2/models/{MODEL}/infer"
        if form == "header":
            status, _, body = rest(
                server, "POST", path, json_body(chunk, flags(index)), {"x-rnnkit-sequence-id": str(key)}
            )
            out = json_outputs(status, body)
        elif form == "binary":
            content, length = binary_body(chunk, {"sequence_id": key, **flags(index)})
            status, headers, body = rest(
                server, "POST", path, content, {"Inference-Header-Content-Length": str(length)}
            )
            assert status == 200, body
            head_length = int(headers["Inference-Header-Content-Length"])
            head = json.loads(body[:head_length])
            (y_meta,) = [o for o in head["outputs"] if o["name"] == "y"]
            (last_meta,) = [o for o in head["outputs"] if o["name"] == "last"]
            y = np.frombuffer(body[head_length:], np.float32).reshape(y_meta["shape"])
            out = {"y": y, "last": np.asarray(last_meta["data"], np.float32).reshape(last_meta["shape"])}
        else:
            status, _, body = rest(server, "POST", path, json_body(chunk, {"sequence_id": key, **flags(index)}))
            out = json_outputs(status, body)
        ys.append(out["y"])
        last = out["last"]
    return np.concatenate(ys, axis=1), last


@pytest.mark.parametrize("form", ["parameters", "header", "binary"])
def test_rest_sequences_over_fresh_connections_equal_the_full_sequence(server, reference, form):
    for seed, key in enumerate((11, "user-a", 12345678901234, "b")):  # owners 0 and 1 both occur
        x = np.random.default_rng(seed).normal(size=(2, STEPS, 3)).astype(np.float32)
        y, last = stream_rest(server, x, key, form)
        full = reference.predict({"x": x})
        np.testing.assert_allclose(y, full["y"], atol=TOL)
        np.testing.assert_allclose(last, full["last"], atol=TOL)
    assert {sequence_owner(MODEL, key, 2) for key in (11, "user-a", 12345678901234, "b")} == {0, 1}


def grpc_request(chunk, key, index):
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.parameters["sequence_id"].int64_param = key
    request.parameters["sequence_start"].bool_param = index == 0
    request.parameters["sequence_end"].bool_param = index == len(CHUNKS) - 1
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(chunk.shape))
    request.raw_input_contents.append(chunk.tobytes())
    del tensor
    return request


def grpc_outputs(response):
    return {
        o.name: np.frombuffer(raw, np.float32).reshape(list(o.shape))
        for o, raw in zip(response.outputs, response.raw_output_contents)
    }


def stream_grpc(server, x, key):
    ys = []
    for index, chunk in enumerate(split(x)):
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            out = grpc_outputs(stub.ModelInfer(grpc_request(chunk, key, index), timeout=60))
        ys.append(out["y"])
    return np.concatenate(ys, axis=1), out["last"]


def test_grpc_sequences_over_fresh_channels_equal_the_full_sequence(server, reference):
    for seed, key in enumerate((21, 22, 23, 24)):
        x = np.random.default_rng(100 + seed).normal(size=(2, STEPS, 3)).astype(np.float32)
        y, last = stream_grpc(server, x, key)
        full = reference.predict({"x": x})
        np.testing.assert_allclose(y, full["y"], atol=TOL)
        np.testing.assert_allclose(last, full["last"], atol=TOL)
    assert {sequence_owner(MODEL, key, 2) for key in (21, 22, 23, 24)} == {0, 1}


def test_concurrent_sequences_relayed_both_ways_do_not_wait_on_each_other(server, reference):
    """Many sequences at once on both workers, each worker relaying to the other while serving what the other
    relays to it, with one request thread per worker: every chunk is answered and exact."""
    xs = [np.random.default_rng(200 + i).normal(size=(1, STEPS, 3)).astype(np.float32) for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        rest_runs = [pool.submit(stream_rest, server, x, f"both-ways-{i}", "parameters") for i, x in enumerate(xs)]
        grpc_runs = [pool.submit(stream_grpc, server, x, 500 + i) for i, x in enumerate(xs)]
        for x, run in zip(xs + xs, rest_runs + grpc_runs):
            y = run.result(timeout=120)[0]
            np.testing.assert_allclose(y, reference.predict({"x": x})["y"], atol=TOL)


def test_a_sequence_continues_across_protocols_and_streams(server, reference):
    """Chunks of one sequence alternate between REST, unary gRPC and ModelStreamInfer streams."""
    x = np.random.default_rng(7).normal(size=(1, STEPS, 3)).astype(np.float32)
    key = 31
    ys = []
    for index, chunk in enumerate(split(x)):
        if index % 3 == 0:
            status, _, body = rest(
                server, "POST", f"/v2/models/{MODEL}/infer", json_body(chunk, {"sequence_id": key, **flags(index)})
            )
            ys.append(json_outputs(status, body)["y"])
            continue
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            if index % 3 == 1:
                response = stub.ModelInfer(grpc_request(chunk, key, index), timeout=60)
            else:
                (answer,) = list(stub.ModelStreamInfer(iter([grpc_request(chunk, key, index)]), timeout=60))
                assert not answer.error_message, answer.error_message
                response = answer.infer_response
        ys.append(grpc_outputs(response)["y"])
    np.testing.assert_allclose(np.concatenate(ys, axis=1), reference.predict({"x": x})["y"], atol=TOL)


def test_errors_of_the_owner_reach_the_client_unchanged(server):
    chunk = np.zeros((1, 2, 3), np.float32)
    for key in ("never-started-0", "never-started-1", "never-started-2", "never-started-3"):
        status, _, body = rest(server, "POST", f"/v2/models/{MODEL}/infer", json_body(chunk, {"sequence_id": key}))
        assert status == 400
        assert "unknown or expired" in json.loads(body)["error"] and key in json.loads(body)["error"]
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = grpc_request(chunk, 1, 1)
            request.parameters["sequence_id"].string_param = key
            with pytest.raises(grpc.RpcError) as raised:
                stub.ModelInfer(request, timeout=60)
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # as one process answers
            assert "unknown or expired" in raised.value.details() and key in raised.value.details()


def count_of(text, status="OK"):
    found = re.search(rf':tensorflow:serving:request_count{{model_name="{MODEL}",status="{status}"}} (\d+)', text)
    return int(found.group(1)) if found else 0


def worker_state(pid):
    """What one worker counted itself: its metrics state over its private socket (path from its command line)."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        directory, index = cmdline.read().split(b"\0")[-3:-1]
    path = os.path.join(directory.decode(), f"w{int(index)}.rest.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(
            b"GET /monitoring/prometheus/metrics HTTP/1.1\r\nhost: w\r\nx-rnnkit-worker-state: 1\r\n"
            b"connection: close\r\n\r\n"
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return {(model, status): count for model, status, count in json.loads(body)["counts"]}


def test_metrics_show_totals_over_all_workers(server):
    scrapes = [rest(server, "GET", "/monitoring/prometheus/metrics")[2].decode() for _ in range(6)]
    before = count_of(scrapes[0])
    assert all(count_of(text) == before for text in scrapes)  # any worker: the same totals
    own_before = [worker_state(pid).get((MODEL, "OK"), 0) for pid in server.pids]
    assert sum(own_before) == before
    k = 24
    body = json_body(np.ones((1, 3, 3), np.float32), {})
    for _ in range(k):
        assert rest(server, "POST", f"/v2/models/{MODEL}/infer", body)[0] == 200
    after = [count_of(rest(server, "GET", "/monitoring/prometheus/metrics")[2].decode()) for _ in range(6)]
    assert after == [before + k] * 6
    own = [worker_state(pid).get((MODEL, "OK"), 0) for pid in server.pids]
    served = [now - then for now, then in zip(own, own_before)]
    assert sum(served) == k and min(served) > 0, served  # the kernel spread the connections over both workers
    # a sequence's chunks arrive on both workers, and its owner serves (and counts) every one of them
    for key in ("counted-a", "counted-b", "counted-c", "counted-d"):
        owner = sequence_owner(MODEL, key, 2)
        x = np.random.default_rng(5).normal(size=(1, STEPS, 3)).astype(np.float32)
        stream_rest(server, x, key, "parameters")
        now = [worker_state(pid).get((MODEL, "OK"), 0) for pid in server.pids]
        assert now[owner] - own[owner] == len(CHUNKS) and now[1 - owner] == own[1 - owner], (key, own, now)
        own = now
    text = rest(server, "GET", "/monitoring/prometheus/metrics")[2].decode()
    assert count_of(text) == before + k + 4 * len(CHUNKS)
    assert ':rnnkit:serving:loaded_versions{model_name="lstm"} 1.0' in text


def test_status_metadata_and_health_read_the_same_from_every_connection(server):
    for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready", "/v2/health/ready", f"/v1/models/{MODEL}"):
        answers = {rest(server, "GET", path)[2] for _ in range(8)}
        assert len(answers) == 1, (path, answers)
        assert rest(server, "GET", path)[0] == 200


def alive(pid):
    """Running (not gone, not a zombie left for a parent that does not reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return [int(child) for child in listing.read().split()]


def test_a_killed_worker_is_started_again_and_sigterm_drains_all(server, reference):
    assert sorted(children(server.process.pid)) == sorted(server.pids)
    victim = server.pids[0]
    os.kill(victim, signal.SIGKILL)
    server.wait_for(rf"server worker 0 \(pid {victim}\) exited with status -9; starting it again")
    (replacement,) = server.wait_for(r"server worker 0 serves again \(pid (\d+)\)")
    assert replacement != victim and sorted(children(server.process.pid)) == sorted([replacement, server.pids[1]])
    x = np.random.default_rng(9).normal(size=(2, STEPS, 3)).astype(np.float32)
    for key in (41, 42, 43):
        y, _ = stream_rest(server, x, key, "parameters")
        np.testing.assert_allclose(y, reference.predict({"x": x})["y"], atol=TOL)
    workers = children(server.process.pid)
    assert server.stop() == 0
    assert not any(alive(pid) for pid in workers)


def test_one_worker_is_one_process(repo):
    rest_port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rnnkit_serving",
            "--model_name",
            MODEL,
            "--model_base_path",
            os.path.join(repo, MODEL),
            "--rest_api_port",
            str(rest_port),
            "--port",
            "0",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v2/health/ready", timeout=5):
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert children(process.pid) == []
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


def test_a_worker_that_cannot_start_stops_the_whole_server(tmp_path):
    failed = subprocess.run(
        [sys.executable, "-m", "rnnkit_serving", "--model_base_path", str(tmp_path), "--port", "0"]
        + ["--rest_api_port", str(free_port()), "--server_workers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1, failed.stderr
    assert "no model version could be loaded" in failed.stderr
    assert re.search(r"server worker [01] exited with status 1 before it served; stopping", failed.stderr)


def test_workers_stop_when_the_supervisor_is_killed(repo, tmp_path):
    workers = Workers(repo, tmp_path / "stderr.log")
    with open(f"/proc/{workers.pids[0]}/cmdline", "rb") as cmdline:
        directory = cmdline.read().split(b"\0")[-3].decode()
    assert os.path.exists(os.path.join(directory, "spec.json"))
    try:
        os.kill(workers.process.pid, signal.SIGKILL)
        workers.process.wait(10)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in workers.pids):
            assert time.monotonic() < deadline, "the workers outlived their supervisor"
            time.sleep(0.1)
        assert not os.path.exists(directory)  # the workers removed what the supervisor could not
    finally:
        for pid in workers.pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        workers.log.close()


def test_sighup_drains_and_stops_every_worker_as_sigterm_does(repo, tmp_path):
    workers = Workers(repo, tmp_path / "stderr.log")
    assert rest(workers, "GET", "/v2/health/ready")[0] == 200
    workers.process.send_signal(signal.SIGHUP)
    assert workers.process.wait(60) == 0
    workers.log.close()
    assert not any(alive(pid) for pid in workers.pids)


def test_a_port_already_in_use_is_refused_not_shared(repo):
    """SO_REUSEPORT would let the workers join another listener's group on the port: the supervisor refuses it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        refused = subprocess.run(
            [sys.executable, "-m", "rnnkit_serving", "--model_base_path", os.path.join(repo, MODEL), "--port", "0"]
            + ["--rest_api_port", str(port), "--server_workers", "2"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert refused.returncode == 1
    assert f"rnnkit serve: cannot bind the port(s) REST 127.0.0.1:{port} (Address already in use)" in refused.stderr
