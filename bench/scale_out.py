"""Scale-out on one machine: `rnnkit serve` replicas behind a real HAProxy (bounded, loopback only).

Starts N replicas of ``python -m serving`` (REST + gRPC) on one model repository and an HAProxy in
front of them, with a configuration this script writes (``haproxy_config``; the same text, with
example ports, is shipped as ``deploy/haproxy/haproxy.cfg``):

- stateless requests (TF Serving ``:predict``, KServe v2 ``infer`` without a sequence, gRPC
  ``Predict``) are balanced ``leastconn`` over the replicas that pass the readiness check
  (``GET /v2/health/ready``), and retried on another replica when the connection failed or the
  replica died before answering;
- streaming chunks carry their sequence id in the ``x-rnnkit-sequence-id`` header (and in the
  KServe ``sequence_id`` parameter the server reads) and are routed by consistent hashing on it,
  so every chunk of a sequence reaches the replica that holds its state; they are retried only
  when the connection failed (a chunk that reached a replica is never sent twice);
- gRPC (HTTP/2 cleartext) goes through a second HAProxy frontend to the replicas' gRPC ports.

Then, under a bounded load (stateless requests + many concurrent sessions of several chunks), one
replica is killed with SIGKILL, the load continues, the replica is started again and rejoins when
its readiness check passes. Every answer is checked against a single in-process
``rnnkit_serving.Predictor`` (stateless: exactly equal; sessions: the chunks' outputs against the
full-sequence answer). Also measured: p50/p99 through the balancer vs direct to one replica, and
throughput with 1, 2 and 3 replicas.

    .venv/bin/python bench/scale_out.py [--replicas 3] [--requests 3000] [--sessions_in_flight 48]
    .venv/bin/python bench/scale_out.py --write_example deploy/haproxy/haproxy.cfg   # the shipped example

Needs ``haproxy`` on PATH (Debian/Ubuntu: ``apt-get install haproxy``; tested with 2.6).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

MODEL = "rnn"
FEATURES = 8
SEQUENCE_HEADER = "x-rnnkit-sequence-id"  # the header the balancer hashes on (the server reads it too)
REPLICA_HEADER = "x-rnnkit-replica"  # added by HAProxy to every answer: which server answered
READY_PATH = "/v2/health/ready"
UNKNOWN_SEQUENCE = "is unknown or expired"  # rnnkit_serving.scheduling.session_store's text for a sequence a replica does not hold
BALANCER_ERRORS = (502, 503, 504)  # HAProxy's own answers: the replica died mid-request / none available


# ----------------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class Backend:
    """One replica as the balancer sees it."""

    name: str
    host: str
    rest_port: int
    grpc_port: int


@dataclass(frozen=True)
class Timings:
    """Health-check and timeout settings (the bench uses short ones so a run stays short)."""

    check_inter: str = "2s"  # readiness check period while a replica is up
    fastinter: str = "500ms"  # while a replica's state is changing
    downinter: str = "2s"  # while it is down
    fall: int = 2  # failed checks before a replica is taken out
    rise: int = 2  # passed checks before it is put back
    connect: str = "1s"
    server: str = "60s"  # longest request (a replica's own --rest_api_timeout_in_ms is 30 s)


BENCH_TIMINGS = Timings(check_inter="300ms", fastinter="100ms", downinter="300ms", fall=2, rise=2, server="60s")


def haproxy_config(
    backends: Sequence[Backend],
    rest_bind: str,
    grpc_bind: str | None,
    stats_socket: str,
    timings: Timings = Timings(),
) -> str:
    """The HAProxy (>= 2.6) configuration for rnnkit replicas: REST on `rest_bind`, gRPC on `grpc_bind`."""
    t = timings
    check = f"check inter {t.check_inter} fastinter {t.fastinter} downinter {t.downinter} fall {t.fall} rise {t.rise}"
    rest_servers = "\n".join(f"    server {b.name} {b.host}:{b.rest_port} {check}" for b in backends)
    # The sequence and gRPC backends take each replica's state from the stateless backend's check.
    tracked = "\n".join(f"    server {b.name} {b.host}:{b.rest_port} track stateless/{b.name}" for b in backends)
    grpc_servers = "\n".join(
        f"    server {b.name} {b.host}:{b.grpc_port} proto h2 track stateless/{b.name}" for b in backends
    )
    text = f"""\
# HAProxy in front of rnnkit serve replicas (written by bench/scale_out.py; HAProxy >= 2.6).
#
# Routing rules:
#   - a request carrying the header {SEQUENCE_HEADER} is a chunk of a streaming sequence (KServe v2
#     infer with Triton's sequence_id parameter; clients send the same id in the header): it goes to
#     the `sequences` backend, which hashes the header consistently, so every chunk of a sequence
#     reaches the replica holding its state, and losing or adding a replica moves only the sequences
#     that hash to it;
#   - every other REST request (TF Serving :predict, KServe v2 infer, metadata) is stateless and goes
#     to the replica with the fewest requests in flight (`stateless` backend);
#   - gRPC (TF Serving PredictionService over HTTP/2 cleartext) enters on its own port and is
#     balanced per call over the replicas' gRPC ports.
# Health: a replica is in service while GET {READY_PATH} answers 200 (models loaded); the
# sequence and gRPC backends track that check.
# Failures: stateless requests are retried on another replica when the connection failed, or the
# replica closed it without answering (killed, crashed), or answered 503. A sequence chunk is
# retried only when the connection failed (it never reached a replica); a chunk in flight on a
# replica that dies gets 502, and the sequence's next chunk gets the replica's 400 "sequence ...
# is unknown or expired; ... must set sequence_start": the client starts the sequence over.
# Every answer carries {REPLICA_HEADER}: the server that answered (drop it if you prefer).

global
    maxconn 4096
    stats socket {stats_socket} mode 600 level admin

defaults
    mode http
    option http-keep-alive
    timeout connect {t.connect}
    timeout client 60s
    timeout server {t.server}
    timeout http-keep-alive 10s
    retries 3
    option redispatch 1
    option httpchk GET {READY_PATH}
    http-check expect status 200

frontend rest
    bind {rest_bind}
    http-response set-header {REPLICA_HEADER} %[srv_name]
    use_backend sequences if {{ req.hdr({SEQUENCE_HEADER}) -m found }}
    default_backend stateless

backend stateless
    balance leastconn
    retry-on conn-failure empty-response 503
{rest_servers}

backend sequences
    balance hdr({SEQUENCE_HEADER})
    hash-type consistent
    retry-on conn-failure
{tracked}
"""
    if grpc_bind is not None:
        text += f"""
frontend grpc
    bind {grpc_bind} proto h2
    http-response set-header {REPLICA_HEADER} %[srv_name]
    default_backend grpc

backend grpc
    balance roundrobin
    retry-on conn-failure empty-response
{grpc_servers}
"""
    return text


def example_config() -> str:
    """The shipped example (deploy/haproxy/haproxy.cfg): three replicas on one host, production timings."""
    backends = [Backend(f"r{i}", "127.0.0.1", 8511 + 10 * i, 8510 + 10 * i) for i in range(3)]
    header = (
        "# Example: three replicas started with\n"
        "#   rnnkit serve --model_base_path models/rnn --model_name rnn --rest_api_port 8511 --port 8510\n"
        "#   rnnkit serve ... --rest_api_port 8521 --port 8520;  rnnkit serve ... --rest_api_port 8531 --port 8530\n"
        "# and `haproxy -f haproxy.cfg`: clients use REST on :8501 and gRPC on :8500, as with one server.\n"
        "# Put your replicas' addresses on the `server` lines; the routing rules stay the same.\n"
    )
    return header + haproxy_config(backends, "*:8501", "*:8500", "/run/haproxy/admin.sock")


# ----------------------------------------------------------------------------------- processes


class Replica:
    """One `python -m serving` child process on fixed ports (so a restart rejoins the same server line)."""

    def __init__(self, name: str, model_dir: str, log_dir: str) -> None:
        from rnnkit_serving.server.process import free_port

        self.backend = Backend(name, "127.0.0.1", free_port(), free_port())
        self.model_dir = model_dir
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.process: Any = None

    def start(self) -> None:
        from rnnkit_serving import spawn_server

        with open(self.log_path, "ab") as log:
            self.process = spawn_server(
                ["--model_name", MODEL, "--model_base_path", self.model_dir, "--file_system_poll_wait_seconds", "0"],
                rest_api_port=self.backend.rest_port,
                port=self.backend.grpc_port,
                stderr=log,
            )

    def kill(self) -> None:
        """SIGKILL: no drain, in-flight requests and every session it held are lost."""
        self.process.process.send_signal(signal.SIGKILL)
        self.process.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.process.poll() is None:
            try:
                self.process.stop(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.process.kill()
                self.process.process.wait()


class HAProxy:
    """`haproxy -db -f <config>` as a child process, with its stats socket for server states."""

    def __init__(self, workdir: str, backends: Sequence[Backend], timings: Timings = BENCH_TIMINGS) -> None:
        from rnnkit_serving.server.process import free_port

        self.rest_port = free_port()
        self.grpc_port = free_port()
        self.socket_path = os.path.join(workdir, "haproxy.sock")
        self.config_path = os.path.join(workdir, "haproxy.cfg")
        self.text = haproxy_config(
            backends, f"127.0.0.1:{self.rest_port}", f"127.0.0.1:{self.grpc_port}", self.socket_path, timings
        )
        with open(self.config_path, "w") as out:
            out.write(self.text)
        self.log_path = os.path.join(workdir, "haproxy.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError(INSTALL_HINT)
        check = subprocess.run([binary, "-c", "-q", "-f", self.config_path], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused the generated config {self.config_path}: {check.stderr.strip()}")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([binary, "-db", "-f", self.config_path], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not self.states() or any(s != "UP" for s in self.states().values()):
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with status {self.process.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"haproxy's servers were not all UP within {timeout} s: {self.states()}")
            time.sleep(0.05)

    def stats(self) -> list[dict[str, str]]:
        """`show stat` rows (one per frontend/backend/server), or [] while the socket is not there."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(2)
                conn.connect(self.socket_path)
                conn.sendall(b"show stat\n")
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
        except OSError:
            return []
        text = b"".join(chunks).decode().lstrip("# ")
        return list(csv.DictReader(io.StringIO(text)))

    def states(self, backend: str = "stateless") -> dict[str, str]:
        """Server name -> UP / DOWN / ... in `backend`."""
        return {
            row["svname"]: row["status"].split()[0]
            for row in self.stats()
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_state(self, server: str, state: str, timeout: float = 30.0) -> float:
        """Seconds until `server` is `state` in the stateless backend."""
        started = time.monotonic()
        while self.states().get(server) != state:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"haproxy did not see {server} {state} within {timeout} s: {self.states()}")
            time.sleep(0.02)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


INSTALL_HINT = (
    "haproxy is not installed (it is not on PATH); install it with `apt-get install haproxy` "
    "(Debian/Ubuntu, as root; `make test` does this when run as root) or your system's package manager"
)


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (path for path in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(path, os.X_OK)), None
    )


# ----------------------------------------------------------------------------------- model, reference


def build_model(base: str, units: int = 32) -> str:
    """Masking -> LSTM (sequences) -> Dense `y` per step: streamable, exported once (ONNX only)."""
    import keras

    from rnnkit import layers as rk
    from rnnkit_export import export_model

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, FEATURES), name="x")
    h = rk.LSTM(units, return_sequences=True, name="lstm")(keras.layers.Masking(0.0)(inp))
    model = keras.Model(inp, {"y": keras.layers.Dense(4, name="y")(h)})
    export_model(model, base, MODEL, streaming="required")
    return os.path.join(base, MODEL)


@dataclass
class Workload:
    """Inputs and their single-process answers (one `rnnkit_serving.Predictor`, in this process)."""

    stateless: list[np.ndarray]
    stateless_answers: list[np.ndarray]
    sequences: list[np.ndarray]  # (1, chunks * steps, F), fed chunk by chunk
    sequence_answers: list[np.ndarray]  # the full-sequence answers
    chunks: int


def workload(model_dir: str, chunks: int, seed: int = 0) -> Workload:
    from rnnkit_serving import Predictor

    rng = np.random.default_rng(seed)
    stateless = [rng.normal(size=(1, int(rng.integers(6, 25)), FEATURES)).astype(np.float32) for _ in range(64)]
    sequences = [rng.normal(size=(1, 3 * chunks, FEATURES)).astype(np.float32) for _ in range(64)]
    with Predictor.load(model_dir) as predictor:
        stateless_answers = [predictor.predict({"x": x})["y"] for x in stateless]
        sequence_answers = [predictor.predict({"x": x})["y"] for x in sequences]
    return Workload(stateless, stateless_answers, sequences, sequence_answers, chunks)


# ----------------------------------------------------------------------------------- clients


class RestClient:
    """One keep-alive HTTP connection; reconnects after the balancer or a replica closed it."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.error = ""

    def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None, resend: bool = True
    ) -> tuple[int, bytes, str]:
        """(status, body, replica that answered); status 0 = the connection failed before an answer
        (`self.error` says how). `resend`: send once more on a new connection after a failure (only for
        idempotent requests: a failed connection may still have delivered the request)."""
        for _ in range(2 if resend else 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
                reply = self.conn.getresponse()
                data = reply.read()
                if reply.getheader("connection", "").lower() == "close":
                    self.close()
                return reply.status, data, reply.getheader(REPLICA_HEADER, "")
            except (ConnectionError, http.client.HTTPException, OSError) as error:
                self.error = f"{type(error).__name__}: {error}"
                self.close()
        return 0, b"", ""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def v1_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": {"x": x.tolist()}}).encode()


def v1_answer(data: bytes) -> np.ndarray:
    outputs = json.loads(data)["outputs"]
    return np.asarray(outputs["y"] if isinstance(outputs, dict) else outputs, np.float32)


def v2_body(x: np.ndarray, parameters: dict[str, Any] | None = None) -> bytes:
    doc: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]
    }
    if parameters:
        doc["parameters"] = parameters
    return json.dumps(doc).encode()


def v2_answer(data: bytes) -> np.ndarray:
    (out,) = [o for o in json.loads(data)["outputs"] if o["name"] == "y"]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


class GrpcClient:
    """TF Serving `Predict` over one HTTP/2 channel (the protos load without starting TensorFlow)."""

    def __init__(self, target: str) -> None:
        import grpc

        from rnnkit_serving.codecs.tfs import grpc as grpc_codec

        self.grpc = grpc
        self.codec = grpc_codec
        self.protos = grpc_codec.protos()
        self.channel = grpc.insecure_channel(target)
        self.predict = self.channel.unary_unary(
            "/tensorflow.serving.PredictionService/Predict",
            request_serializer=self.protos.predict.PredictRequest.SerializeToString,
            response_deserializer=self.protos.predict.PredictResponse.FromString,
        )

    def call(self, x: np.ndarray) -> tuple[str, np.ndarray | None, str]:
        """(status name, answer, replica that answered)."""
        request = self.protos.predict.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["x"].CopyFrom(self.codec.array_to_tensor(x))
        try:
            reply, call = self.predict.with_call(request, timeout=60)
        except self.grpc.RpcError as error:
            return error.code().name, None, ""
        replica = dict(call.initial_metadata()).get(REPLICA_HEADER, "")
        return "OK", self.codec.tensor_to_array(reply.outputs["y"]), replica

    def close(self) -> None:
        self.channel.close()


# ----------------------------------------------------------------------------------- the kill run


@dataclass
class Record:
    kind: str  # v1 / v2 / grpc / chunk
    ok: bool
    status: str  # HTTP status or gRPC code name
    replica: str
    started: float
    ms: float


@dataclass
class SessionLog:
    sequence_id: str
    index: int  # which input
    # one entry per request: (attempt, chunk, status, replica, monotonic time sent, time answered)
    events: list[tuple[int, int, str, str, float, float]] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)  # why each restart: unknown_sequence / lost_in_flight
    done: bool = False
    exact: bool | None = None
    max_error: float = 0.0
    failure: str = ""  # an unexpected answer (never expected)


class Load:
    """Stateless workers and session workers against the balancer until `stop` is set."""

    def __init__(
        self,
        rest_port: int,
        grpc_target: str | None,
        work: Workload,
        stateless_workers: int,
        session_workers: int,
        sessions_per_worker: int,
        max_requests: int,
        tolerance: float,
    ) -> None:
        self.rest_port = rest_port
        self.grpc_target = grpc_target
        self.work = work
        self.stateless_workers = stateless_workers
        self.session_workers = session_workers
        self.sessions_per_worker = sessions_per_worker
        self.max_requests = max_requests
        self.tolerance = tolerance
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records: list[Record] = []
        self.sessions: list[SessionLog] = []
        self.wrong: list[str] = []  # stateless answers that differ from the single-process answer
        self.threads: list[threading.Thread] = []
        self.session_count = 0
        self.marks: dict[str, float] = {}
        self.connection_errors: list[str] = []  # chunks whose connection failed without an answer

    def count(self) -> int:
        with self.lock:
            return len(self.records)

    def _record(self, record: Record) -> None:
        with self.lock:
            self.records.append(record)
            if len(self.records) >= self.max_requests:
                self.stop.set()

    def start(self) -> None:
        for i in range(self.stateless_workers):
            self.threads.append(threading.Thread(target=self._stateless, args=(i,), daemon=True))
        for i in range(self.session_workers):
            self.threads.append(threading.Thread(target=self._sessions, args=(i,), daemon=True))
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)

    def _stateless(self, worker: int) -> None:
        rest = RestClient(self.rest_port)
        grpc_client = GrpcClient(self.grpc_target) if self.grpc_target else None
        kinds = ["v1", "v2", "grpc"] if grpc_client else ["v1", "v2"]
        i = worker
        try:
            while not self.stop.is_set():
                kind = kinds[i % len(kinds)]
                index = i % len(self.work.stateless)
                x, expected = self.work.stateless[index], self.work.stateless_answers[index]
                started = time.monotonic()
                answer = None
                if kind == "grpc":
                    assert grpc_client is not None
                    status, answer, replica = grpc_client.call(x)
                    ok = status == "OK"
                else:
                    path = f"/v1/models/{MODEL}:predict" if kind == "v1" else f"/v2/models/{MODEL}/infer"
                    code, data, replica = rest.post(path, v1_body(x) if kind == "v1" else v2_body(x))
                    status, ok = str(code), code == 200
                    if ok:
                        answer = v1_answer(data) if kind == "v1" else v2_answer(data)
                elapsed = (time.monotonic() - started) * 1e3
                if ok and not np.array_equal(answer, expected):
                    with self.lock:
                        self.wrong.append(f"{kind} input {index} from {replica}")
                self._record(Record(kind, ok, status, replica, started, elapsed))
                i += self.stateless_workers
        finally:
            rest.close()
            if grpc_client:
                grpc_client.close()

    def _new_session(self, worker: int) -> dict[str, Any]:
        with self.lock:
            n = self.session_count
            self.session_count += 1
            log = SessionLog(f"seq-{n}", n % len(self.work.sequences))
            self.sessions.append(log)
        return {"log": log, "attempt": 0, "chunk": 0, "outputs": []}

    def _sessions(self, worker: int) -> None:
        """Keeps `sessions_per_worker` sequences open and feeds them a chunk each in turn."""
        rest = RestClient(self.rest_port)
        chunks = self.work.chunks
        open_sessions = [self._new_session(worker) for _ in range(self.sessions_per_worker)]
        for slot, state in enumerate(open_sessions):  # stagger: open sequences sit at different chunks
            state["wait"] = slot % chunks
        try:
            while not self.stop.is_set():
                for slot, state in enumerate(open_sessions):
                    if self.stop.is_set():
                        break
                    if state.get("wait"):
                        state["wait"] -= 1
                        continue
                    log: SessionLog = state["log"]
                    x = self.work.sequences[log.index]
                    steps = x.shape[1] // chunks
                    chunk = state["chunk"]
                    params = {
                        "sequence_id": log.sequence_id,
                        "sequence_start": chunk == 0,
                        "sequence_end": chunk == chunks - 1,
                    }
                    body = v2_body(x[:, chunk * steps : (chunk + 1) * steps], params)
                    started = time.monotonic()
                    code, data, replica = rest.post(
                        f"/v2/models/{MODEL}/infer", body, {SEQUENCE_HEADER: log.sequence_id}, resend=False
                    )
                    if code == 0:
                        with self.lock:
                            self.connection_errors.append(rest.error)
                    ended = time.monotonic()
                    log.events.append((state["attempt"], chunk, str(code), replica, started, ended))
                    self._record(Record("chunk", code == 200, str(code), replica, started, (ended - started) * 1e3))
                    restart = ""
                    if code == 200:
                        state["outputs"].append(v2_answer(data))
                        state["chunk"] += 1
                    elif code == 400 and UNKNOWN_SEQUENCE in data.decode(errors="replace"):
                        restart = "unknown_sequence"
                    elif code in BALANCER_ERRORS or code == 0:
                        restart = "lost_in_flight"
                    else:
                        log.failure = f"chunk {chunk}: HTTP {code} {data[:200]!r}"
                    if restart and len(log.restarts) < 3:
                        log.restarts.append(restart)
                        state.update(attempt=state["attempt"] + 1, chunk=0, outputs=[])
                        continue
                    if restart or log.failure:
                        log.failure = log.failure or f"gave up after {log.restarts}"
                        open_sessions[slot] = self._new_session(worker)
                        continue
                    if state["chunk"] == chunks:
                        got = np.concatenate(state["outputs"], axis=1)
                        expected = self.work.sequence_answers[log.index]
                        log.max_error = float(np.max(np.abs(got - expected)))
                        log.exact = log.max_error <= self.tolerance
                        log.done = True
                        open_sessions[slot] = self._new_session(worker)
        finally:
            rest.close()


def percentiles(values: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(values)
    if not ordered:
        return float("nan"), float("nan")
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def kill_run(
    replicas: Sequence[Replica],
    balancer: HAProxy,
    work: Workload,
    requests: int,
    victim: int = 0,
    stateless_workers: int = 4,
    session_workers: int = 4,
    sessions_per_worker: int = 8,
    use_grpc: bool = True,
    tolerance: float = 1e-5,
    time_limit: float = 300.0,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Load through `balancer`; SIGKILL replica `victim` after a third of `requests`, start it again
    after two thirds, and run until `requests` are done and the restarted replica answered some.
    Returns the outcome, classified (see `summarize`)."""
    load = Load(
        balancer.rest_port,
        f"127.0.0.1:{balancer.grpc_port}" if use_grpc else None,
        work,
        stateless_workers,
        session_workers,
        sessions_per_worker,
        max_requests=requests * 10,
        tolerance=tolerance,
    )
    target = replicas[victim]
    name = target.backend.name
    deadline = time.monotonic() + time_limit
    marks: dict[str, float] = {}

    def wait_for(count: int) -> None:
        while load.count() < count and not load.stop.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the load did not reach {count} requests within {time_limit} s")
            time.sleep(0.01)

    load.start()
    try:
        wait_for(requests // 3)
        marks["kill"] = time.monotonic()
        target.kill()
        say(f"  killed {name} (SIGKILL) after {load.count()} requests")
        marks["down_seen"] = marks["kill"] + balancer.wait_state(name, "DOWN")
        say(f"  haproxy marked {name} DOWN {marks['down_seen'] - marks['kill']:.2f} s after the kill")
        wait_for(2 * requests // 3)
        marks["restart"] = time.monotonic()
        say(f"  starting {name} again after {load.count()} requests")
        target.start()
        marks["listening"] = time.monotonic()
        marks["up_seen"] = marks["listening"] + balancer.wait_state(name, "UP")
        say(
            f"  {name} listening {marks['listening'] - marks['restart']:.2f} s after its start, "
            f"haproxy marked it UP {marks['up_seen'] - marks['listening']:.2f} s later"
        )
        while (
            load.count() < requests
            or sum(1 for r in list(load.records) if r.replica == name and r.started > marks["up_seen"] and r.ok) < 20
        ):
            if load.stop.is_set() or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    finally:
        load.join()
    result = summarize(load, name, marks, balancer)
    load.marks = marks
    result["_load"] = load  # for callers that look closer (the test); left out of --json
    return result


def summarize(load: Load, victim: str, marks: dict[str, float], balancer: HAProxy) -> dict[str, Any]:
    """Failures by kind and the checks of the issue, from what the clients saw."""
    kill, up = marks["kill"], marks["up_seen"]
    stateless = [r for r in load.records if r.kind != "chunk"]
    chunks = [r for r in load.records if r.kind == "chunk"]
    failures = Counter(f"{r.kind} {r.status}" for r in load.records if not r.ok)
    sessions = [s for s in load.sessions if s.events]  # opened (at least one chunk sent)
    s_chunks = load.work.chunks

    def on_victim_at_kill(s: SessionLog) -> bool:
        """Its state lived on the victim when it was killed: in the attempt open at the kill, the last
        chunk answered was answered there (and was not the last chunk), or a chunk was in flight across
        the kill and lost. Chunks sent before the kill count even if their answer arrived after it."""
        if s.done and all(e[5] <= kill for e in s.events):
            return False
        sent = [e for e in s.events if e[4] <= kill]
        if not sent:
            return False
        if int(sent[-1][2]) in (0, *BALANCER_ERRORS) and sent[-1][5] >= kill:
            return True
        answered = [e for e in sent if e[0] == sent[-1][0] and e[2] == "200"]
        return bool(answered) and answered[-1][3] == victim and answered[-1][1] < s_chunks - 1

    killed = [s for s in sessions if on_victim_at_kill(s)]
    others = [s for s in sessions if not on_victim_at_kill(s)]
    # Sessions that started elsewhere while the victim was down but hash to it: after it rejoins
    # their next chunk reaches it, which does not hold them (the consistent hash moves them back).
    moved_back = [
        s
        for s in others
        if any(e[2] == "400" and e[3] == victim and e[4] >= marks["restart"] for e in s.events) and s.restarts
    ]
    # Sequences started between the kill and the balancer marking the victim down: their first chunk
    # failed to connect and was redispatched; with 3+ replicas the replica it landed on need not be the
    # one the hash picks once the victim is out, so a later chunk may get the unknown-sequence 400.
    in_detection = [
        s for s in others if s not in moved_back and s.restarts and kill <= s.events[0][4] <= marks["down_seen"]
    ]
    survivors = [s for s in others if s not in moved_back and s not in in_detection]

    def replicas_of_last_attempt(s: SessionLog) -> set[str]:
        last = s.events[-1][0]
        return {e[3] for e in s.events if e[0] == last and e[2] == "200"}

    # stickiness: every completed attempt was answered by exactly one replica
    sticky_violations = [s.sequence_id for s in sessions if s.done and len(replicas_of_last_attempt(s)) != 1]
    killed_first_error = Counter(s.restarts[0] if s.restarts else "none" for s in killed)
    rejoined = sum(1 for r in load.records if r.replica == victim and r.started > up and r.ok)
    result = {
        "requests": len(load.records),
        "stateless_requests": len(stateless),
        "stateless_by_kind": dict(Counter(r.kind for r in stateless)),
        "stateless_failed": sum(1 for r in stateless if not r.ok),
        "stateless_wrong": len(load.wrong),
        "chunks": len(chunks),
        "sessions": len(sessions),
        "sessions_completed": sum(1 for s in sessions if s.done),
        "sessions_wrong": sum(1 for s in sessions if s.done and not s.exact),
        "sessions_failed": [f"{s.sequence_id}: {s.failure}" for s in sessions if s.failure],
        "max_session_error": max((s.max_error for s in sessions if s.done), default=0.0),
        "failures_by_kind": dict(failures),
        "connection_errors": Counter(load.connection_errors),
        "killed_sessions": len(killed),
        "killed_first_error": dict(killed_first_error),
        "killed_completed_after_restart": sum(1 for s in killed if s.done and s.exact and s.restarts),
        "killed_unfinished": sum(1 for s in killed if not s.done and not s.failure),
        "survivor_sessions": len(survivors),
        "survivor_sessions_with_errors": sum(1 for s in survivors if s.restarts or s.failure),
        "moved_back_on_rejoin": len(moved_back),
        "sticky_violations": sticky_violations,
        "started_during_detection_and_moved": len(in_detection),
        "requests_on_rejoined_replica": rejoined,
        "down_after_kill_s": marks["down_seen"] - kill,
        "up_after_restart_s": up - marks["restart"],
        "up_after_listening_s": up - marks["listening"],
        "haproxy_retries": {
            row["pxname"]: int(row.get("wretr") or 0) for row in balancer.stats() if row["svname"] == "BACKEND"
        },
        "haproxy_redispatches": {
            row["pxname"]: int(row.get("wredis") or 0) for row in balancer.stats() if row["svname"] == "BACKEND"
        },
    }
    return result


# ----------------------------------------------------------------------------------- latency, throughput


def sequential_latency(port: int, work: Workload, count: int) -> tuple[float, float]:
    """p50/p99 ms of `count` REST :predict requests one after another on one keep-alive connection."""
    client = RestClient(port)
    bodies = [v1_body(x) for x in work.stateless]
    latencies = []
    try:
        for i in range(count + 20):
            started = time.perf_counter()
            code, _, _ = client.post(f"/v1/models/{MODEL}:predict", bodies[i % len(bodies)])
            if code != 200:
                raise RuntimeError(f"latency request answered {code}")
            if i >= 20:  # warm-up
                latencies.append((time.perf_counter() - started) * 1e3)
    finally:
        client.close()
    return percentiles(latencies)


def _throughput_client(port: int, bodies: list[bytes], start_at: float, seconds: float, queue: Any) -> None:
    """One client process: sequential REST :predict on one keep-alive connection for `seconds`."""
    client = RestClient(port)
    count = failures = 0
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + seconds
    i = 0
    while time.time() < end:
        code, _, _ = client.post(f"/v1/models/{MODEL}:predict", bodies[i % len(bodies)])
        count += code == 200
        failures += code != 200
        i += 1
    client.close()
    queue.put((count, failures))


def throughput(port: int, work: Workload, clients: int, seconds: float) -> tuple[float, int]:
    """Requests/s of `clients` client processes (so the clients' GIL is not the limit); failures."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    bodies = [v1_body(x) for x in work.stateless]
    start_at = time.time() + 3.0  # every client process started and imported
    procs = [
        context.Process(target=_throughput_client, args=(port, bodies, start_at, seconds, queue))
        for _ in range(clients)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=seconds + 60) for _ in procs]
    for proc in procs:
        proc.join(30)
    return sum(c for c, _ in results) / seconds, sum(f for _, f in results)


# ----------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000, help="requests of the kill run (all kinds)")
    parser.add_argument("--chunks", type=int, default=4, help="chunks per sequence")
    parser.add_argument("--stateless_workers", type=int, default=4)
    parser.add_argument("--session_workers", type=int, default=4)
    parser.add_argument("--sessions_per_worker", type=int, default=12, help="sequences each session worker keeps open")
    parser.add_argument("--latency_requests", type=int, default=500)
    parser.add_argument("--throughput_seconds", type=float, default=5.0)
    parser.add_argument("--throughput_clients", type=int, default=8)
    parser.add_argument("--no_grpc", action="store_true", help="leave gRPC out of the load")
    parser.add_argument("--model_base_path", help="an exported repository holding model 'rnn' (default: export one)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--write_example", metavar="PATH", help="write the shipped example config and exit")
    args = parser.parse_args(argv)

    if args.write_example:
        with open(args.write_example, "w") as out:
            out.write(example_config())
        return 0
    if haproxy_binary() is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2

    workdir = tempfile.mkdtemp(prefix="rnnkit-scale-out-")
    replicas: list[Replica] = []
    balancers: list[HAProxy] = []
    figures: dict[str, Any] = {}
    try:
        model_dir = args.model_base_path or build_model(os.path.join(workdir, "models"))
        work = workload(model_dir, args.chunks)
        replicas = [Replica(f"r{i}", model_dir, workdir) for i in range(args.replicas)]
        for replica in replicas:
            replica.start()

        def balancer_for(count: int) -> HAProxy:
            sub = os.path.join(workdir, f"haproxy-{count}-{len(balancers)}")
            os.makedirs(sub)
            balancer = HAProxy(sub, [r.backend for r in replicas[:count]])
            balancers.append(balancer)
            balancer.start()
            return balancer

        print(f"replicas: {args.replicas} (rnnkit serve, REST + gRPC, ONNX backend), haproxy {haproxy_version()}")
        print(f"CPU cores: {os.cpu_count()} (shared by the replicas, haproxy and the load generator)")

        balancer = balancer_for(args.replicas)
        direct = sequential_latency(replicas[0].backend.rest_port, work, args.latency_requests)
        through = sequential_latency(balancer.rest_port, work, args.latency_requests)
        figures["latency_ms"] = {"direct": direct, "balancer": through}
        print(f"\nREST :predict one at a time ({args.latency_requests} requests), ms p50 / p99")
        print(f"  direct to one replica   {direct[0]:.3f} / {direct[1]:.3f}")
        print(f"  through haproxy         {through[0]:.3f} / {through[1]:.3f}")
        balancer.stop()

        print(f"\nthroughput, REST :predict, {args.throughput_clients} client processes, {args.throughput_seconds:g} s")
        figures["throughput"] = {}
        for count in range(1, args.replicas + 1):
            balancer = balancer_for(count)
            rate, failed = throughput(balancer.rest_port, work, args.throughput_clients, args.throughput_seconds)
            balancer.stop()
            figures["throughput"][count] = {"requests_per_s": rate, "failed": failed}
            print(f"  {count} replica(s): {rate:7.0f} req/s  ({failed} failed)")

        balancer = balancer_for(args.replicas)
        print(
            f"\nkill run: {args.requests} requests target, {args.session_workers} x {args.sessions_per_worker} "
            f"sequences open at a time ({args.chunks} chunks each), {args.stateless_workers} stateless workers"
        )
        outcome = kill_run(
            replicas,
            balancer,
            work,
            args.requests,
            stateless_workers=args.stateless_workers,
            session_workers=args.session_workers,
            sessions_per_worker=args.sessions_per_worker,
            use_grpc=not args.no_grpc,
        )
        balancer.stop()
        figures["kill_run"] = {k: v for k, v in outcome.items() if not k.startswith("_")}
        print_outcome(outcome)
        if args.json:
            with open(args.json, "w") as out:
                json.dump(figures, out, indent=2, default=str)
    finally:
        for balancer in balancers:
            balancer.stop()
        for replica in replicas:
            replica.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def haproxy_version() -> str:
    binary = haproxy_binary()
    if binary is None:
        return "not installed"
    line = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    return line.split()[2] if len(line.split()) > 2 else line


def print_outcome(o: dict[str, Any]) -> None:
    print(
        f"  requests: {o['requests']} ({o['stateless_requests']} stateless {o['stateless_by_kind']}, "
        f"{o['chunks']} sequence chunks)"
    )
    print(
        f"  sessions: {o['sessions']} opened, {o['sessions_completed']} completed, "
        f"{o['sessions_wrong']} wrong answers (max |error| {o['max_session_error']:.2g})"
    )
    print(
        f"  failures by kind (what clients saw; 0 = connection closed without an answer): "
        f"{o['failures_by_kind'] or 'none'} {dict(o['connection_errors'])}"
    )
    print(
        f"  stateless: {o['stateless_failed']} failed, {o['stateless_wrong']} answers differing from the "
        f"single-process answer; haproxy retries {o['haproxy_retries']}, redispatches {o['haproxy_redispatches']}"
    )
    print(
        f"  sessions on surviving replicas: {o['survivor_sessions']}, with an error: "
        f"{o['survivor_sessions_with_errors']}"
    )
    print(
        f"  sessions on the killed replica: {o['killed_sessions']}, first error {o['killed_first_error']}, "
        f"completed exactly after sequence_start: {o['killed_completed_after_restart']}, "
        f"still open at the end: {o['killed_unfinished']}"
    )
    print(
        f"  sessions started between the kill and haproxy marking it down, moved once it did (400, restarted): "
        f"{o['started_during_detection_and_moved']}"
    )
    print(f"  sessions whose chunks were answered by more than one replica: {len(o['sticky_violations'])}")
    print(f"  sessions moved back to the rejoined replica (unknown sequence, restarted): {o['moved_back_on_rejoin']}")
    print(
        f"  replica down in haproxy {o['down_after_kill_s']:.2f} s after SIGKILL; up {o['up_after_restart_s']:.2f} s "
        f"after its process was started ({o['up_after_listening_s']:.2f} s after it listened); answered {o['requests_on_rejoined_replica']} requests after rejoining"
    )
    if o["sessions_failed"]:
        print(f"  unexpected session failures: {o['sessions_failed'][:5]}")


if __name__ == "__main__":
    sys.exit(main())
