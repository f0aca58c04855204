"""Soak: a real ``python -m serving`` under a long mixed load of good and malformed requests while new
versions are published (loopback only, bounded in count and time).

A 2-layer LSTM stack (4 features, as in issue 11's attack table) is exported once; the server serves
it over REST and gRPC while a publisher copies that version under a new number every
``--publish_every`` seconds (staged in a hidden directory, then renamed: how export publishes) and
removes versions older than the two newest. ``--clients`` threads send ``--requests`` requests
(or stop after ``--seconds``), ``--malformed`` of them (default 30 %) drawn in turn from a corpus of
malformed requests: every row of the issue's table (the 44-byte gRPC Predict declaring a
[1, 20 000 000, 4] tensor, NaN/Infinity inputs, JSON nested 50 000 deep, oversize batch and length,
unknown model names) plus other malformed bodies on both fronts and KServe v2. Good requests are
checked against a local ``rnnkit_serving.Predictor`` of the same version (rtol 1e-5).

Printed: requests, malformed, reloads (versions published, and versions seen answering), failed good
requests, 5xx, RSS of the server process at start/peak/end, and a table with every corpus row's
outcomes (REST status / gRPC code counts) so a miss is attributable to its row. Targets (exit
status 1 when one is missed): 0 failed good requests, 0 5xx, every malformed request a 4xx (gRPC:
INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, OUT_OF_RANGE) with an error
message, RSS at end <= 1.2 x start + 50 MiB.

    .venv/bin/python bench/soak.py                       # 20 000 requests (bounded by --seconds 900)
    .venv/bin/python bench/soak.py --quick               # 600 requests, a version every 0.2 s: a smoke run
    .venv/bin/python bench/soak.py --requests 5000 --seconds 120 --skip_rows grpc_huge_declared_shape
    .venv/bin/python bench/soak.py --attack              # the same load under connection attacks (below)
    .venv/bin/python bench/soak.py --quick_attack        # a short attack run with short server timeouts

``--attack`` (issue 21) runs the server child under ``ulimit -n 1024`` (RLIMIT_NOFILE) with its KServe gRPC
port open and, while the good/malformed load runs for ``--attack_seconds``, opens against it: idle REST
connections (600, beyond ``--max_connections`` 512 + 16), slowloris REST connections (a header byte a second),
raw TCP connections to both gRPC ports that never send the HTTP/2 preface, connected gRPC channels that never
call, idle KServe ``ModelStreamInfer`` streams (twice ``--grpc_max_streams``), and requests whose request line +
headers are exactly ``--max_header_bytes`` (answered normally) or one byte more (431). A connection or stream the
server closes is reopened a second later while the attack lasts; then the attackers stop sending and reopening
but keep their sockets, so the server's own timeouts must close them. A prober asks REST ``/v2/health/live`` (a
keep-alive connection, and a new connection each time) and ``grpc.health.v1/Check`` on both gRPC ports every
0.1 s throughout. The server's RSS, threads and open fds are sampled every 0.5 s: start (just before the attack),
peak (during it) and end (after ``--settle_seconds``). Targets (exit status 1 when one is missed), besides the
soak's: 0 failed good requests, 0 5xx, every keep-alive and gRPC health probe answered, fds end <= start + 50,
threads end <= start + 20, RSS end <= 1.2 x start + 50 MiB, every over-limit header answered 431 and every
at-limit one answered normally, no attack connection left open by the server at the end.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import logging
import os
import random
import resource
import selectors
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # not a line per GOAWAY when the server closes idle channels

import numpy as np  # noqa: E402

FEATURES = 4
MODEL = "rnn"
INPUT = "frames"
GRPC_CLIENT_ERRORS = ("INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "OUT_OF_RANGE")
MIB = 1 << 20


# ------------------------------------------------------------------------------------ the model


def build(base: str) -> str:
    """Export the 2-layer LSTM stack once; return its version directory (the one every publish copies)."""
    import keras

    from rnnkit import layers as rk
    from rnnkit_export import export_model

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    keras.utils.set_random_seed(11)
    inp = keras.Input((None, FEATURES), name=INPUT)
    h = rk.LSTM(16, return_sequences=True, name="lstm1")(inp)
    h = rk.LSTM(16, name="lstm2")(h)
    model = keras.Model(inp, {"y": keras.layers.Dense(3, name="y")(h)})
    export_model(model, os.path.join(base, "staging"), MODEL, version=1)
    return os.path.join(base, "staging", MODEL, "1")


class Publisher:
    """Publish the staged version under increasing numbers: copy into a hidden directory, then rename."""

    def __init__(self, staged: str, model_dir: str) -> None:
        self.staged, self.model_dir = staged, model_dir
        self.version = 0
        self.published = 0

    def publish(self) -> int:
        self.version += 1
        hidden = os.path.join(self.model_dir, f".rnnkit-tmp-{self.version}-soak")
        shutil.copytree(self.staged, hidden)
        os.rename(hidden, os.path.join(self.model_dir, str(self.version)))
        for old in range(1, self.version - 1):  # keep the two newest on disk
            shutil.rmtree(os.path.join(self.model_dir, str(old)), ignore_errors=True)
        self.published += 1
        return self.version


# --------------------------------------------------------------------------------- the corpus


def protos() -> tuple[Any, Any]:
    from rnnkit_serving.codecs.tfs.protos import import_proto_modules

    predict_pb2, services = import_proto_modules(
        "tensorflow_serving.apis.predict_pb2", "tensorflow_serving.apis.prediction_service_pb2_grpc"
    )
    return predict_pb2, services


def grpc_request(
    shape: tuple[int, ...],
    values: Any = None,
    *,
    name: str = MODEL,
    alias: str = INPUT,
    content: bytes | None = None,
    dtype: int = 1,
    version: int | None = None,
    label: str | None = None,
    signature: str = "",
) -> Any:
    predict_pb2, _ = protos()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    tensor = request.inputs[alias]
    tensor.dtype = dtype
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    if content is not None:
        tensor.tensor_content = content
    elif values is not None:
        tensor.float_val.extend(np.asarray(values, np.float32).reshape(-1).tolist())
    return request


@dataclass
class Row:
    """One kind of malformed request: its front, a payload maker (called per request), its weight."""

    name: str
    front: str  # "rest" (path, body) or "grpc" (a PredictRequest, or raw bytes)
    make: Callable[[int], Any]
    expected: str  # what a defended server answers (for the table)
    weight: float = 1.0


def rest_body(x: Any) -> bytes:
    return json.dumps({"instances": np.asarray(x).tolist()}).encode()


def corpus() -> list[Row]:
    predict = f"/v1/models/{MODEL}:predict"
    frame = [0.1, 0.2, 0.3, 0.4]
    deep = b'{"instances": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    nan = b'{"instances": [[' + b",".join([b"[NaN, NaN, NaN, NaN]"] * 8) + b"]]}"
    inf = b'{"instances": [[[0.1, Infinity, 0.3, 0.4], [0.1, 0.2, -Infinity, 0.4]]]}'
    batch = rest_body(np.full((1025, 1, FEATURES), 0.1))
    length = rest_body(np.full((1, 9000, FEATURES), 0.1))
    too_big = b'{"instances": [[' + b",".join([b"[0.1, 0.2, 0.3, 0.4]"] * 900_000) + b"]]}"  # > 16 MiB
    ones = np.ones((1, 3, FEATURES), np.float32)
    huge = grpc_request((1, 20_000_000, 4), [1.0])
    if huge.ByteSize() != 44:
        raise AssertionError(f"the huge-shape request should be the issue's 44 bytes, is {huge.ByteSize()}")
    rows = [
        # issue 11's table
        Row("grpc_huge_declared_shape", "grpc", lambda n: huge, "INVALID_ARGUMENT"),
        Row("rest_nan_inputs", "rest", lambda n: (predict, nan), "400"),
        Row("grpc_nan_inputs", "grpc", lambda n: grpc_request((1, 2, 4), [float("nan")] * 8), "INVALID_ARGUMENT"),
        Row("rest_infinity_inputs", "rest", lambda n: (predict, inf), "400"),
        Row("rest_json_depth_50000", "rest", lambda n: (predict, deep), "400"),
        Row("kserve_json_depth_50000", "rest", lambda n: (f"/v2/models/{MODEL}/infer", deep), "400"),
        Row("rest_oversize_batch_1025", "rest", lambda n: (predict, batch), "400"),
        Row("rest_oversize_length_9000", "rest", lambda n: (predict, length), "400", 0.5),
        Row(
            "grpc_oversize_batch_1025",
            "grpc",
            lambda n: grpc_request((1025, 1, 4), content=np.full((1025, 1, 4), 0.1, np.float32).tobytes()),
            "INVALID_ARGUMENT",
        ),
        Row(
            "grpc_oversize_length_9000",
            "grpc",
            lambda n: grpc_request((1, 9000, 4), content=np.full((1, 9000, 4), 0.1, np.float32).tobytes()),
            "INVALID_ARGUMENT",
            0.5,
        ),
        Row("rest_unknown_model", "rest", lambda n: (f"/v1/models/nope-{n}:predict", rest_body(ones)), "404"),
        Row("grpc_unknown_model", "grpc", lambda n: grpc_request((1, 1, 4), frame, name=f"nope-{n}"), "NOT_FOUND"),
        # other malformed bodies
        Row("rest_bad_json", "rest", lambda n: (predict, b'{"instances": [[[0.1,'), "400"),
        Row("rest_not_an_object", "rest", lambda n: (predict, b"[1, 2, 3]"), "400"),
        Row("rest_no_instances_or_inputs", "rest", lambda n: (predict, b'{"signature_name": ""}'), "400"),
        Row("rest_wrong_feature_count", "rest", lambda n: (predict, rest_body(np.ones((1, 2, 3)))), "400"),
        Row("rest_wrong_rank", "rest", lambda n: (predict, b'{"instances": [0.1, 0.2]}'), "400"),
        Row("rest_ragged_instances", "rest", lambda n: (predict, b'{"instances": [[[1,2,3,4]], [[1,2,3]]]}'), "400"),
        Row("rest_strings_for_floats", "rest", lambda n: (predict, b'{"instances": [[["a","b","c","d"]]]}'), "400"),
        Row("rest_empty_instances", "rest", lambda n: (predict, b'{"instances": []}'), "400"),
        Row("rest_unknown_input_name", "rest", lambda n: (predict, b'{"inputs": {"z": [[[1,2,3,4]]]}}'), "400"),
        Row(
            "rest_unknown_version",
            "rest",
            lambda n: (f"/v1/models/{MODEL}/versions/999999:predict", rest_body(ones)),
            "404",
        ),
        Row(
            "rest_unknown_label", "rest", lambda n: (f"/v1/models/{MODEL}/labels/beta:predict", rest_body(ones)), "400"
        ),
        Row(
            "rest_unknown_signature",
            "rest",
            lambda n: (predict, b'{"signature_name": "nope", "instances": [[[1,2,3,4]]]}'),
            "400",
        ),
        Row("rest_body_over_16_mib", "rest", lambda n: (predict, too_big), "413", 0.1),
        Row(
            "kserve_data_shape_mismatch",
            "rest",
            lambda n: (
                f"/v2/models/{MODEL}/infer",
                b'{"inputs": [{"name": "frames", "shape": [1, 2, 4], "datatype": "FP32", "data": [1.0]}]}',
            ),
            "400",
        ),
        Row("kserve_bad_json", "rest", lambda n: (f"/v2/models/{MODEL}/infer", b'{"inputs": ['), "400"),
        Row("grpc_no_model_name", "grpc", lambda n: grpc_request((1, 1, 4), frame, name=""), "INVALID_ARGUMENT"),
        Row(
            "grpc_unknown_input_alias", "grpc", lambda n: grpc_request((1, 1, 4), frame, alias="z"), "INVALID_ARGUMENT"
        ),
        Row("grpc_wrong_feature_count", "grpc", lambda n: grpc_request((1, 1, 3), [1, 2, 3]), "INVALID_ARGUMENT"),
        Row(
            "grpc_content_size_mismatch",
            "grpc",
            lambda n: grpc_request((1, 5, 4), content=b"\0" * 12),
            "INVALID_ARGUMENT",
        ),
        Row("grpc_more_values_than_shape", "grpc", lambda n: grpc_request((1, 1, 4), [1.0] * 9), "INVALID_ARGUMENT"),
        Row("grpc_unsupported_dtype", "grpc", lambda n: grpc_request((1, 1, 4), dtype=99), "INVALID_ARGUMENT"),
        Row("grpc_negative_dim", "grpc", lambda n: grpc_request((1, -1, 4), frame), "INVALID_ARGUMENT"),
        Row("grpc_unknown_version", "grpc", lambda n: grpc_request((1, 1, 4), frame, version=999999), "NOT_FOUND"),
        Row("grpc_unknown_label", "grpc", lambda n: grpc_request((1, 1, 4), frame, label="beta"), "INVALID_ARGUMENT"),
        Row(
            "grpc_unknown_signature",
            "grpc",
            lambda n: grpc_request((1, 1, 4), frame, signature="nope"),
            "FAILED_PRECONDITION",
        ),
        Row("grpc_not_a_predict_request", "grpc", lambda n: b"\xff\xff\xff\xff garbage", "INVALID_ARGUMENT"),
    ]
    return rows


# ----------------------------------------------------------------------------------- the load


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    good: int = 0
    good_failed: list[str] = field(default_factory=list)
    malformed: int = 0
    fivexx: int = 0
    fivexx_limit: int = 0  # of those, the REST reserve's 503 naming --max_connections (a new connection)
    rest_connects: int = 0  # TCP connections the load's REST clients opened (counted under --attack)
    rows: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    bad_rows: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    versions: set[int] = field(default_factory=set)
    fronts: collections.Counter[str] = field(default_factory=collections.Counter)  # requests per front


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.peak = max(self.peak, self.rss())
            except OSError:
                return

    def start(self) -> None:
        self.peak = self.rss()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def good_inputs(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(int(rng.integers(1, 4)), int(rng.integers(1, 24)), FEATURES)).astype(np.float32)
        for _ in range(count)
    ]


# --------------------------------------------------------------------------- connection attacks


ATTACK_NOFILE = 1024  # the server child's RLIMIT_NOFILE under --attack (issue 21's D4: `ulimit -n 1024`)
QUICK_ATTACK_FLAGS = [  # shorter server timeouts, so that a quick run sees every timeout fire more than once
    "--header_timeout_seconds",
    "2",
    "--body_timeout_seconds",
    "5",
    "--grpc_stream_idle_seconds",
    "3",
    "--idle_connection_seconds",
    "5",
]


def flag_value(flags: list[str], name: str, default: float) -> float:
    """The value of `name` in a server argument list (``--x v`` or ``--x=v``), else `default`."""
    value = default  # the last one counts, as for argparse
    for i, arg in enumerate(flags):
        if arg == name and i + 1 < len(flags):
            value = float(flags[i + 1])
        elif arg.startswith(name + "="):
            value = float(arg.split("=", 1)[1])
    return value


def spawn_limited(args: list[str], nofile: int, timeout: float, stderr: Any) -> Any:
    """``spawn_server`` with a KServe gRPC port and RLIMIT_NOFILE set to `nofile` in the child."""
    from rnnkit_serving.server.process import ServerProcess, free_port

    host = "127.0.0.1"
    rest, port, kserve = free_port(host), free_port(host), free_port(host)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    command = [sys.executable, "-m", "rnnkit_serving", *args, "--host", host]
    command += ["--rest_api_port", str(rest), "--port", str(port), "--grpc_inference_port", str(kserve)]
    process = subprocess.Popen(command, stderr=stderr, preexec_fn=limit)
    deadline = time.monotonic() + timeout
    for probe in (rest, port, kserve):
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with status {process.returncode} before it was ready")
            try:
                with socket.create_connection((host, probe), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    raise TimeoutError(f"the server did not listen on {host}:{probe} within {timeout} s") from None
                time.sleep(0.05)
    server = ServerProcess(process, host, rest, port)
    server.kserve_target = f"{host}:{kserve}"  # type: ignore[attr-defined]
    return server


class ProcSampler:
    """The server process's RSS, threads and open fds every `every` seconds, with marked phases."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int, int, int]] = []  # (monotonic, rss bytes, threads, fds)
        self.marks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[float, int, int, int]:
        rss = threads = 0
        with open(f"/proc/{self.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        point = (time.monotonic(), rss, threads, len(os.listdir(f"/proc/{self.pid}/fd")))
        self.samples.append(point)
        return point

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.sample()
            except OSError:
                return

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def mark(self, name: str) -> tuple[float, int, int, int]:
        point = self.sample()
        self.marks[name] = point[0]
        return point

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, since: str, until: str) -> tuple[int, int, int]:
        window = [p for p in self.samples if self.marks[since] <= p[0] <= self.marks[until]]
        return max(p[1] for p in window), max(p[2] for p in window), max(p[3] for p in window)


def read_response(sock: socket.socket, timeout: float = 15.0) -> tuple[int | None, bytes]:
    """(status, body) of one HTTP/1.1 answer on `sock`; status None when it closed before a status line."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 "):
            return None, data
        length = 0
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(head[9:12]), body
    except OSError:
        return None, data


def limit_refusal(status: int | None, body: bytes) -> bool:
    """A fresh connection refused by the connection bound: closed before a byte, or the reserve's 503."""
    return status is None or (status == 503 and b"--max_connections" in body)


class SocketAttack:
    """`count` TCP connections to `address` that never finish a request: idle (nothing sent) or slowloris
    (`trickle` bytes a second of a header that never ends). A connection the server closes is reopened
    after `reopen` seconds while the attack runs; ``halt()`` stops sending and reopening and keeps the
    sockets, so only the server's timeouts close them; ``close()`` closes what is left."""

    def __init__(self, name: str, address: tuple[str, int], count: int, trickle: bool = False, reopen: float = 1.0):
        self.name, self.address, self.count, self.trickle, self.reopen = name, address, count, trickle, reopen
        self.opened = self.connect_failed = self.closed_at_once = self.closed_later = self.peak_open = 0
        self.lifetimes: list[float] = []
        self.answers: collections.Counter[str] = collections.Counter()
        self._socks: dict[socket.socket, float] = {}
        self._selector = selectors.DefaultSelector()
        self._due: list[float] = []
        self._halted = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"attack-{name}")

    def start(self) -> None:
        self._due = [time.monotonic() + i * 0.001 for i in range(self.count)]
        self._thread.start()

    def open_now(self) -> int:
        return len(self._socks)

    def _open(self) -> None:
        try:
            sock = socket.create_connection(self.address, timeout=2)
        except OSError:
            self.connect_failed += 1
            self._due.append(time.monotonic() + self.reopen)
            return
        sock.setblocking(False)
        self._socks[sock] = time.monotonic()
        self._selector.register(sock, selectors.EVENT_READ)
        self.opened += 1
        self.peak_open = max(self.peak_open, len(self._socks))
        if self.trickle:
            self._send(sock, b"GET /v2/health/live HTTP/1.1\r\nhost: soak\r\nx-slowloris: ")

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)
        except OSError:
            pass  # the reader sees the close

    def _closed(self, sock: socket.socket, answer: bytes) -> None:
        lived = time.monotonic() - self._socks.pop(sock)
        self._selector.unregister(sock)
        sock.close()
        self.lifetimes.append(lived)
        if lived < 0.5:
            self.closed_at_once += 1
        else:
            self.closed_later += 1
        if answer.startswith(b"HTTP/1.1 "):
            self.answers[answer[9:12].decode(errors="replace")] += 1
        if not self._halted.is_set():
            self._due.append(time.monotonic() + self.reopen)

    def _run(self) -> None:
        next_byte = time.monotonic() + 1.0
        while not self._done.is_set():
            now = time.monotonic()
            if not self._halted.is_set():
                due, self._due = [t for t in self._due if t <= now], [t for t in self._due if t > now]
                for _ in due:
                    self._open()
                if self.trickle and now >= next_byte:
                    next_byte = now + 1.0
                    for sock in list(self._socks):
                        self._send(sock, b"a")
            if not self._socks:
                time.sleep(0.05)
                continue
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._closed(sock, b"")  # type: ignore[arg-type]
                else:
                    self.answers[data[9:12].decode(errors="replace") if data.startswith(b"HTTP/1.1 ") else "bytes"] += 1

    def halt(self) -> None:
        self._halted.set()

    def close(self) -> int:
        """Close every socket still open; return how many the server had left open."""
        self._done.set()
        self._thread.join(10)
        left = len(self._socks)
        for sock in list(self._socks):
            sock.close()
        self._socks.clear()
        return left

    def summary(self) -> dict[str, Any]:
        held = [t for t in self.lifetimes if t >= 0.5]
        return {
            "target": self.count,
            "opened": self.opened,
            "connect_failed": self.connect_failed,
            "closed_at_once": self.closed_at_once,
            "closed_after_held": self.closed_later,
            "held_seconds_median": float(np.median(held)) if held else None,
            "held_seconds_max": max(held) if held else None,
            "peak_open": self.peak_open,
            "answers": dict(self.answers),
        }


class StreamAttack:
    """`count` KServe ``ModelStreamInfer`` streams that never send a request; reopened a second after
    the server ends one while the attack runs."""

    def __init__(self, target: str, count: int, reopen: float = 1.0) -> None:
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        self.channel = grpc.insecure_channel(target)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.count, self.reopen = count, reopen
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.lifetimes: dict[str, list[float]] = collections.defaultdict(list)
        self.lock = threading.Lock()
        self.opened = 0
        self.open = 0
        self._halted = threading.Event()
        self._release = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def _never(self) -> Any:
        self._release.wait()
        return
        yield

    def _run(self) -> None:
        import grpc

        while not self._halted.is_set():
            started = time.monotonic()
            with self.lock:
                self.opened += 1
                self.open += 1
            try:
                for _ in self.stub.ModelStreamInfer(self._never()):
                    pass
                outcome = "OK"
            except grpc.RpcError as error:
                outcome = error.code().name
            with self.lock:
                self.open -= 1
                self.outcomes[outcome] += 1
                self.lifetimes[outcome].append(time.monotonic() - started)
            if self._release.is_set():
                return
            self._halted.wait(self.reopen)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def halt(self) -> None:
        self._halted.set()

    def close(self) -> int:
        with self.lock:
            left = self.open
        self._release.set()
        for thread in self._threads:
            thread.join(10)
        self.channel.close()
        return left

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.count,
            "opened": self.opened,
            "outcomes": dict(self.outcomes),
            "seconds_median": {k: round(float(np.median(v)), 2) for k, v in self.lifetimes.items()},
        }


class ChannelAttack:
    """`count` gRPC channels (each its own connection) that connect and never call; while the attack
    runs a channel the server closed (READY -> IDLE) is connected again."""

    def __init__(self, target: str, count: int) -> None:
        import grpc

        self.grpc = grpc
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.insecure_channel(target, options=options) for _ in range(count)]
        self.count = count
        self.ready = [False] * count
        self.connected = self.closed_by_server = 0
        self.lock = threading.Lock()
        self._halted = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        for i, channel in enumerate(self.channels):
            channel.subscribe(lambda state, i=i: self._state(i, state))

    def _state(self, i: int, state: Any) -> None:
        ready = state == self.grpc.ChannelConnectivity.READY
        with self.lock:
            if ready and not self.ready[i]:
                self.connected += 1
            elif self.ready[i] and not ready:
                self.closed_by_server += 1
            self.ready[i] = ready

    def _run(self) -> None:
        while not self._halted.wait(1.0):
            for i, channel in enumerate(self.channels):
                if not self.ready[i]:
                    self.grpc.channel_ready_future(channel)  # asks the channel to connect

    def start(self) -> None:
        for channel in self.channels:
            self.grpc.channel_ready_future(channel)
        self._thread.start()

    def halt(self) -> None:
        self._halted.set()
        self._thread.join()

    def close(self) -> int:
        left = sum(self.ready)
        for channel in self.channels:
            channel.close()
        return left

    def summary(self) -> dict[str, Any]:
        return {"target": self.count, "connected": self.connected, "closed_by_server": self.closed_by_server}


@dataclass
class Probe:
    """Outcomes of one health probe kind: answered, failed (with the first few reasons), latencies."""

    answered: int = 0
    refused_by_limit: int = 0  # only for the new-connection REST probe
    failures: list[str] = field(default_factory=list)
    worst: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "answered": self.answered,
            "failed": len(self.failures),
            "refused_by_connection_limit": self.refused_by_limit,
            "worst_ms": self.worst * 1000,
            "p99_ms": float(np.percentile(self.latencies, 99)) * 1000 if self.latencies else None,
            "failure_examples": self.failures[:3],
        }


class HealthProber:
    """REST /v2/health/live (one keep-alive connection, and a new connection each time) and
    grpc.health.v1/Check on both gRPC ports, every `every` seconds, each with a 5 s timeout."""

    def __init__(self, server: Any, every: float = 0.1) -> None:
        import grpc
        import httpx
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.grpc, self.health_pb2 = grpc, health_pb2
        self.every, self.started = every, time.monotonic()
        self.http = httpx.Client(base_url=server.rest_url, timeout=5)
        self.rest_address = (server.host, server.rest_api_port)
        self.channels = {
            "gRPC health (TF Serving port)": grpc.insecure_channel(server.grpc_target),
            "gRPC health (KServe port)": grpc.insecure_channel(server.kserve_target),
        }
        self.stubs = {name: health_pb2_grpc.HealthStub(c) for name, c in self.channels.items()}
        names = ["REST /v2/health/live (keep-alive)", *self.channels, "REST /v2/health/live (new connection)"]
        self.probes = {name: Probe() for name in names}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(name,), daemon=True) for name in self.probes]

    def _once(self, name: str) -> tuple[bool, str]:
        if name.endswith("(keep-alive)"):
            reply = self.http.get("/v2/health/live")
            return reply.status_code == 200, f"{reply.status_code} {reply.text[:100]}"
        if name.endswith("(new connection)"):
            with socket.create_connection(self.rest_address, timeout=5) as sock:
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: soak\r\nconnection: close\r\n\r\n")
                status, body = read_response(sock, 5)
            if limit_refusal(status, body):
                return False, "refused by the connection limit"
            return status == 200, f"{status} {body[:100]!r}"
        reply = self.stubs[name].Check(self.health_pb2.HealthCheckRequest(), timeout=5)
        return reply.status == self.health_pb2.HealthCheckResponse.SERVING, str(reply.status)

    def _loop(self, name: str) -> None:
        probe = self.probes[name]
        while not self._stop.wait(self.every):
            started = time.monotonic()
            try:
                ok, detail = self._once(name)
            except Exception as error:  # noqa: BLE001 - every way a probe can fail is a failure
                ok, detail = False, repr(error)[:160]
            took = time.monotonic() - started
            if ok:
                probe.answered += 1
                probe.worst = max(probe.worst, took)
                probe.latencies.append(took)
            elif detail == "refused by the connection limit":
                probe.refused_by_limit += 1
            else:
                probe.failures.append(f"t+{started - self.started:.1f}s: {detail}")

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> dict[str, dict[str, Any]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self.http.close()
        for channel in self.channels.values():
            channel.close()
        return {name: probe.summary() for name, probe in self.probes.items()}


class HeaderLimit:
    """Good ``:predict`` requests on new connections whose request line + headers are exactly
    `limit` bytes (must be answered, correctly) or `limit` + 1 (must get 431), alternately."""

    def __init__(self, address: tuple[str, int], limit: int, body: bytes, expected: np.ndarray) -> None:
        self.address, self.limit, self.body, self.expected = address, limit, body, expected
        self.outcomes: dict[str, collections.Counter[str]] = {
            "at": collections.Counter(),
            "over": collections.Counter(),
        }
        self.bad: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def request(self, size: int) -> bytes:
        head = (
            f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\n"
            f"content-length: {len(self.body)}\r\nx-pad: "
        ).encode()
        pad = size - len(head) - 4
        return head + b"p" * pad + b"\r\n\r\n" + self.body

    def send(self, kind: str) -> None:
        raw = self.request(self.limit if kind == "at" else self.limit + 1)
        try:
            with socket.create_connection(self.address, timeout=5) as sock:
                sock.sendall(raw)
                status, body = read_response(sock)
        except OSError as error:
            status, body = None, repr(error).encode()
        if limit_refusal(status, body):
            self.outcomes[kind]["refused by the connection limit"] += 1
            return
        self.outcomes[kind][str(status)] += 1
        if kind == "over":
            ok = status == 431 and b"--max_header_bytes" in body
        else:
            try:
                answer = np.asarray(json.loads(body)["predictions"], np.float32)
                ok = status == 200 and np.allclose(answer, self.expected, rtol=1e-5, atol=1e-6)
            except (ValueError, KeyError):
                ok = False
        if not ok and len(self.bad) < 5:
            self.bad.append(f"{kind}: {status} {body[:160]!r}")

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(0.2):
            self.send("at" if n % 2 == 0 else "over")
            n += 1

    def answered(self, kind: str) -> int:
        return sum(v for k, v in self.outcomes[kind].items() if k != "refused by the connection limit")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def summary(self) -> dict[str, Any]:
        return {
            "limit_bytes": self.limit,
            "at_limit": dict(self.outcomes["at"]),
            "over_limit": dict(self.outcomes["over"]),
            "over_limit_431": self.outcomes["over"].get("431", 0),
            "wrong": len(self.bad),
            "wrong_examples": self.bad,
        }


class Attack:
    """Every attacker of ``--attack``, started, halted and closed together."""

    def __init__(self, server: Any, args: argparse.Namespace, body: bytes, expected: np.ndarray) -> None:
        host = server.host
        kserve_port = int(server.kserve_target.rsplit(":", 1)[1])
        self.sockets = [
            SocketAttack("REST idle", (host, server.rest_api_port), args.attack_idle),
            SocketAttack("REST slowloris", (host, server.rest_api_port), args.attack_slowloris, trickle=True),
            SocketAttack("gRPC TF Serving port, raw idle", (host, server.port), args.attack_grpc_idle),
            SocketAttack("gRPC KServe port, raw idle", (host, kserve_port), args.attack_grpc_idle),
        ]
        self.streams = StreamAttack(server.kserve_target, args.attack_streams)
        self.channels = ChannelAttack(server.kserve_target, args.attack_grpc_channels)
        max_header = int(flag_value(args.server_flags, "--max_header_bytes", 32 << 10))
        self.headers = HeaderLimit((host, server.rest_api_port), max_header, body, expected)

    def start(self) -> None:
        for attacker in self.sockets:
            attacker.start()
        self.streams.start()
        self.channels.start()
        self.headers.start()

    def halt(self) -> None:
        for attacker in self.sockets:
            attacker.halt()
        self.streams.halt()
        self.channels.halt()
        self.headers.stop()

    def open_now(self) -> int:
        return sum(a.open_now() for a in self.sockets)

    def close(self) -> dict[str, Any]:
        """Close what is left; a summary with, per attacker, what the server had not closed by then."""
        left = {a.name: a.close() for a in self.sockets}
        left["KServe ModelStreamInfer streams"] = self.streams.close()
        left["gRPC channels without calls (KServe port)"] = self.channels.close()
        return {
            "sockets": {a.name: a.summary() for a in self.sockets},
            "streams": self.streams.summary(),
            "channels": self.channels.summary(),
            "headers": self.headers.summary(),
            "left_open_at_end": left,
        }


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    import grpc
    import httpx

    from rnnkit_serving import Predictor
    from rnnkit_serving.server.process import spawn_server

    base = tempfile.mkdtemp(prefix="rnnkit-soak-")
    server = None
    try:
        staged = build(base)
        model_dir = os.path.join(base, "models", MODEL)
        os.makedirs(model_dir)
        publisher = Publisher(staged, model_dir)
        publisher.publish()
        rows = [r for r in corpus() if r.name not in args.skip_rows]
        unknown = set(args.skip_rows) - {r.name for r in corpus()}
        if unknown:
            raise SystemExit(f"--skip_rows names no corpus row: {sorted(unknown)}")
        with Predictor.load(staged) as reference:
            inputs = good_inputs(64, args.seed)
            expected = [reference.predict({INPUT: x})["y"] for x in inputs]
        rest_bodies = [rest_body(x) for x in inputs]
        grpc_bodies = [grpc_request(x.shape, content=x.tobytes()) for x in inputs]

        poll = min(0.5, args.publish_every / 2)  # the server notices each new version well before the next
        log = open(os.path.join(base, "server.log"), "w+b")
        server_args = [
            "--model_base_path",
            model_dir,
            "--model_name",
            MODEL,
            "--file_system_poll_wait_seconds",
            str(poll),
        ]
        if args.attack:
            server = spawn_limited(server_args + args.server_flags, ATTACK_NOFILE, 180, log)
        else:
            server = spawn_server(server_args + args.server_flags, port=None, timeout=180, stderr=log)
        _, services = protos()
        channels = [grpc.insecure_channel(server.grpc_target) for _ in range(2)]
        stubs = [services.PredictionServiceStub(c) for c in channels]
        raw = [c.unary_unary("/tensorflow.serving.PredictionService/Predict") for c in channels]
        tally = Tally()

        def check_good(index: int, front: str, outcome: str, answer: Any, version: int | None) -> None:
            with tally.lock:
                tally.good += 1
                tally.fronts[front] += 1
                if version is not None:
                    tally.versions.add(version)
                if outcome != "ok":
                    tally.good_failed.append(f"{front}: {outcome}")
                    return
            if not np.allclose(answer, expected[index], rtol=1e-5, atol=1e-6):
                with tally.lock:
                    tally.good_failed.append(f"{front}: wrong answer for input {index}")

        # warm up both fronts, then take the starting RSS
        with httpx.Client(base_url=server.rest_url, timeout=60) as http:
            for _ in range(3):
                http.post(f"/v1/models/{MODEL}:predict", content=rest_bodies[0]).raise_for_status()
                stubs[0].Predict(grpc_bodies[0], timeout=60)
        rss = RssSampler(server.process.pid)
        rss.start()
        rss_start = rss.peak
        load_stop = threading.Event()  # --attack: the load runs until the attack stops
        attack_result: dict[str, Any] = {}
        if args.attack:
            sampler = ProcSampler(server.process.pid)
            sampler.start()
            sampler.mark("idle")
            prober = HealthProber(server)
            prober.start()

        total = args.requests
        malformed_every = args.malformed
        rng = random.Random(args.seed)
        weights = [r.weight for r in rows]
        plan: list[tuple[str, int]] = []  # ("good-rest"/"good-grpc", input) or ("row", row index)
        for n in range(total):
            if rng.random() < malformed_every:
                plan.append(("row", rng.choices(range(len(rows)), weights)[0]))
            else:
                plan.append(("good-rest" if n % 2 else "good-grpc", rng.randrange(len(inputs))))
        # every row at least once, even in a quick run
        for index in range(len(rows)):
            if not any(kind == "row" and i == index for kind, i in plan):
                plan[rng.randrange(total)] = ("row", index)
        jobs = enumerate(itertools.cycle(plan)) if args.attack else iter(enumerate(plan))
        jobs_lock = threading.Lock()
        deadline = time.monotonic() + args.seconds
        stop = threading.Event()

        def publish_loop() -> None:
            while not stop.wait(args.publish_every):
                publisher.publish()

        def count_connects(event: str, info: Any) -> None:
            if event == "connection.connect_tcp.complete":
                with tally.lock:
                    tally.rest_connects += 1

        trace = {"trace": count_connects} if args.attack else {}

        def client(worker: int) -> None:
            stub, call = stubs[worker % 2], raw[worker % 2]
            with httpx.Client(base_url=server.rest_url, timeout=120) as http:
                while time.monotonic() < deadline and not load_stop.is_set():
                    with jobs_lock:
                        job = next(jobs, None)
                    if job is None:
                        return
                    n, (kind, index) = job
                    if kind == "good-rest":
                        try:
                            reply = http.post(
                                f"/v1/models/{MODEL}:predict", content=rest_bodies[index], extensions=trace
                            )
                            if reply.status_code >= 500:
                                with tally.lock:
                                    tally.fivexx += 1
                                    tally.fivexx_limit += "--max_connections" in reply.text
                            ok = reply.status_code == 200
                            answer = np.asarray(reply.json()["predictions"], np.float32) if ok else None
                            outcome = "ok" if ok else f"{reply.status_code} {reply.text[:200]}"
                        except Exception as error:
                            answer, outcome = None, repr(error)
                        check_good(index, "REST", outcome, answer, None)
                    elif kind == "good-grpc":
                        try:
                            response = stub.Predict(grpc_bodies[index], timeout=120)
                            shape = [d.size for d in response.outputs["y"].tensor_shape.dim]
                            answer = np.asarray(response.outputs["y"].float_val, np.float32).reshape(shape)
                            check_good(index, "gRPC", "ok", answer, response.model_spec.version.value)
                        except grpc.RpcError as error:
                            check_good(index, "gRPC", f"{error.code().name} {error.details()}", None, None)
                    else:
                        row = rows[index]
                        payload = row.make(n)
                        outcome, good, detail = send_malformed(row, payload, http, stub, call, trace)
                        with tally.lock:
                            tally.malformed += 1
                            tally.fronts["REST" if row.front == "rest" else "gRPC"] += 1
                            tally.rows[row.name][outcome] += 1
                            if outcome.startswith("5"):
                                tally.fivexx += 1
                                tally.fivexx_limit += "--max_connections" in detail
                            if not good and len(tally.bad_rows[row.name]) < 2:
                                tally.bad_rows[row.name].append(detail)

        started = time.monotonic()
        publisher_thread = threading.Thread(target=publish_loop, daemon=True)
        publisher_thread.start()
        threads = [threading.Thread(target=client, args=(w,)) for w in range(args.clients)]
        for thread in threads:
            thread.start()
        if args.attack:
            time.sleep(2.0)  # every client has its connections before the attackers take the free ones
            sampler.mark("attack_start")
            attack = Attack(server, args, rest_bodies[0], expected[0])
            attack.start()
            time.sleep(args.attack_seconds)
            attack_open = attack.open_now()
            sampler.mark("attack_stop")
            attack.halt()  # no more sending or reopening; the sockets stay open for the server to close
            load_stop.set()
        for thread in threads:
            thread.join()
        stop.set()
        publisher_thread.join()
        elapsed = time.monotonic() - started
        if args.attack:
            time.sleep(args.settle_seconds)
            sampler.mark("end")
            attack_result = attack.close()
            attack_result["attack_sockets_open_at_stop"] = attack_open
            attack_result["probes"] = prober.stop()
            sampler.stop()
            attack_result["process"] = process_figures(sampler)
        time.sleep(1.0)  # let retired versions close
        rss_end = rss.rss()
        rss.stop()
        for channel in channels:
            channel.close()
        exit_code = server.stop(timeout=120)
        server = None
        log.seek(0)
        server_log = log.read().decode(errors="replace")
        log.close()
    finally:
        if server is not None:
            server.process.kill()
            server.process.wait()
        shutil.rmtree(base, ignore_errors=True)

    requests = tally.good + tally.malformed
    rows_summary = {
        r.name: {
            "front": r.front,
            "expected": r.expected,
            "outcomes": dict(tally.rows.get(r.name, {})),
            "defended": bool(tally.rows.get(r.name)) and not tally.bad_rows.get(r.name),
            "examples": tally.bad_rows.get(r.name, []),
        }
        for r in rows
    }
    result = {
        "requests": requests,
        "malformed": tally.malformed,
        "good": tally.good,
        "by_front": dict(tally.fronts),
        "failed_good": len(tally.good_failed),
        "failed_good_examples": tally.good_failed[:5],
        "5xx": tally.fivexx,
        "malformed_not_4xx": sum(sum(tally.rows[name].values()) for name in tally.bad_rows),
        "reloads_published": publisher.published - 1,
        "versions_answering": sorted(tally.versions),
        "rss_start_mib": rss_start / MIB,
        "rss_peak_mib": rss.peak / MIB,
        "rss_end_mib": rss_end / MIB,
        "seconds": elapsed,
        "server_exit": exit_code,
        "server_log_tail": server_log[-2000:],
        "rows": rows_summary,
        "skipped_rows": sorted(args.skip_rows),
    }
    if args.attack:
        result["attack"] = attack_result
        result["attack"]["load_rest_connections_opened"] = tally.rest_connects
        result["attack"]["clients"] = args.clients
        result["attack"]["5xx_connection_limit_503"] = tally.fivexx_limit
        result["attack"]["failed_good_connection_limit"] = sum(map(refused_by_limit, tally.good_failed))
        result["attack"]["server_flags"] = args.server_flags
        result["attack"]["attack_seconds"] = args.attack_seconds
        result["attack"]["settle_seconds"] = args.settle_seconds
        result["attack"]["nofile"] = ATTACK_NOFILE
        result["attack"]["server_log_emfile"] = server_log.count("Too many open files")
        result["attack"]["server_log_tracebacks"] = server_log.count("Traceback")
        result["attack"]["targets"] = attack_targets(result)
    result["rss_ok"] = rss_end <= 1.2 * rss_start + 50 * MIB
    result["targets_met"] = (
        result["failed_good"] == 0
        and result["5xx"] == 0
        and result["malformed_not_4xx"] == 0
        and result["rss_ok"]
        and result["server_exit"] == 0
        and all(r["defended"] for r in rows_summary.values())
        and (not args.attack or all(result["attack"]["targets"].values()))
    )
    return result


def refused_by_limit(outcome: str) -> bool:
    """A REST failure that is the connection bound refusing a new connection: the reserve's 503, or the
    connection closed before a byte of a reply (beyond the reserve)."""
    return any(
        mark in outcome
        for mark in ("--max_connections", "Connection reset by peer", "Server disconnected without sending")
    )


def process_figures(sampler: ProcSampler) -> dict[str, Any]:
    """RSS (MiB), threads and fds of the server: idle (before the load), start (before the attack),
    peak (during it) and end (after the settle time)."""
    by_time = {t: (rss, threads, fds) for t, rss, threads, fds in sampler.samples}
    idle, start, end = (by_time[sampler.marks[k]] for k in ("idle", "attack_start", "end"))
    peak = sampler.peak("attack_start", "attack_stop")
    figures = {}
    for i, name in enumerate(("rss_mib", "threads", "fds")):
        scale = MIB if i == 0 else 1
        figures[name] = {k: v[i] / scale for k, v in (("idle", idle), ("start", start), ("peak", peak), ("end", end))}
    figures["samples"] = len(sampler.samples)
    return figures


def attack_targets(result: dict[str, Any]) -> dict[str, bool]:
    attack = result["attack"]
    proc, probes, headers = attack["process"], attack["probes"], attack["headers"]
    kept = [name for name in probes if not name.endswith("(new connection)")]
    rss = proc["rss_mib"]
    return {
        "0 failed good requests": result["failed_good"] == 0,
        "0 5xx": result["5xx"] == 0,
        "health answered every time (keep-alive REST, gRPC)": all(
            probes[n]["failed"] == 0 and probes[n]["answered"] > 0 for n in kept
        ),
        "fds end <= start + 50": proc["fds"]["end"] <= proc["fds"]["start"] + 50,
        "threads end <= start + 20": proc["threads"]["end"] <= proc["threads"]["start"] + 20,
        "RSS end <= 1.2 x start + 50 MiB": rss["end"] <= 1.2 * rss["start"] + 50,
        "every over-limit header got 431": headers["over_limit_431"] > 0
        and headers["over_limit_431"] == sum(v for k, v in headers["over_limit"].items() if "limit" not in k),
        "every at-limit header answered correctly": headers["wrong"] == 0 and headers["at_limit"].get("200", 0) > 0,
        "no attack connection left open at the end": not any(attack["left_open_at_end"].values()),
    }


def send_malformed(
    row: Row, payload: Any, http: Any, stub: Any, call: Any, trace: dict[str, Any] | None = None
) -> tuple[str, bool, str]:
    """Send one malformed request; (outcome label, answered as a client error with a message?, detail)."""
    import grpc
    import httpx

    if row.front == "rest":
        path, body = payload
        try:
            reply = http.post(path, content=body, headers={"content-type": "application/json"}, extensions=trace)
        except httpx.HTTPError as error:
            return type(error).__name__, False, repr(error)[:200]
        try:
            message = reply.json().get("error")
        except ValueError:
            message = None
        good = 400 <= reply.status_code < 500 and isinstance(message, str) and bool(message)
        return str(reply.status_code), good, f"{reply.status_code} {reply.text[:200]}"
    try:
        if isinstance(payload, bytes):
            call(payload, timeout=120)
        else:
            stub.Predict(payload, timeout=120)
    except grpc.RpcError as error:
        code = error.code().name
        good = code in GRPC_CLIENT_ERRORS and bool(error.details())
        return code, good, f"{code} {(error.details() or '')[:200]}"
    return "OK", False, "OK: a malformed request was answered as if valid"


def report(result: dict[str, Any]) -> str:
    rss = (result["rss_start_mib"], result["rss_peak_mib"], result["rss_end_mib"])
    lines = [
        f"requests {result['requests']} in {result['seconds']:.1f} s "
        f"({result['requests'] / max(result['seconds'], 1e-9):.0f}/s); malformed {result['malformed']} "
        f"({result['malformed'] / max(result['requests'], 1):.0%}); REST {result['by_front'].get('REST', 0)}, "
        f"gRPC {result['by_front'].get('gRPC', 0)}",
        f"reloads: {result['reloads_published']} versions published; "
        f"{len(result['versions_answering'])} versions answered gRPC requests",
        f"failed good requests: {result['failed_good']}  {result['failed_good_examples'][:2]}",
        f"5xx: {result['5xx']}; malformed answered other than 4xx-with-error: {result['malformed_not_4xx']}",
        f"server RSS MiB start/peak/end: {rss[0]:.0f} / {rss[1]:.0f} / {rss[2]:.0f} "
        f"(end limit {1.2 * rss[0] + 50:.0f}: {'ok' if result['rss_ok'] else 'EXCEEDED'})",
        f"server exit status: {result['server_exit']}",
        "",
        "| row | front | defended answer | outcomes | ok |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        outcomes = ", ".join(f"{k} x{v}" for k, v in sorted(row["outcomes"].items())) or "not sent"
        lines.append(
            f"| {name} | {row['front']} | {row['expected']} | {outcomes} | {'yes' if row['defended'] else 'NO'} |"
        )
    for name, row in result["rows"].items():
        if row["examples"]:
            lines.append(f"  {name}: {row['examples'][0]}")
    if result["skipped_rows"]:
        lines.append(f"skipped rows: {result['skipped_rows']}")
    if "attack" in result:
        lines += ["", *attack_report(result["attack"])]
    lines.append("targets met" if result["targets_met"] else "TARGETS MISSED")
    return "\n".join(lines)


def attack_report(attack: dict[str, Any]) -> list[str]:
    proc, probes, headers = attack["process"], attack["probes"], attack["headers"]
    lines = [
        f"connection attack: {attack['attack_seconds']:g} s, then {attack['settle_seconds']:g} s for the server to "
        f"close what is left; server under ulimit -n {attack['nofile']}; server flags: "
        f"{' '.join(attack['server_flags']) or '(defaults)'}",
        "",
        "| attacker | opened | closed at once (< 0.5 s) | held, then closed by the server (median / max s) "
        "| peak open | answers | left open at end |",
        "|---|---|---|---|---|---|---|",
    ]
    left = attack["left_open_at_end"]
    for name, a in attack["sockets"].items():
        held = (
            "–" if a["held_seconds_median"] is None else f"{a['held_seconds_median']:.1f} / {a['held_seconds_max']:.1f}"
        )
        answers = ", ".join(f"{k} x{v}" for k, v in sorted(a["answers"].items())) or "none"
        lines.append(
            f"| {name} (x{a['target']}) | {a['opened']} | {a['closed_at_once']} | {a['closed_after_held']} ({held}) "
            f"| {a['peak_open']} | {answers} | {left[name]} |"
        )
    streams, channels = attack["streams"], attack["channels"]
    outcomes = ", ".join(f"{k} x{v}" for k, v in sorted(streams["outcomes"].items()))
    medians = ", ".join(f"{k} {v:g} s" for k, v in sorted(streams["seconds_median"].items()))
    lines.append(
        f"| KServe ModelStreamInfer, never sends (x{streams['target']}) | {streams['opened']} | – | – | – "
        f"| {outcomes} (median life: {medians}) | {left['KServe ModelStreamInfer streams']} |"
    )
    lines.append(
        f"| gRPC channels without calls, KServe port (x{channels['target']}) | {channels['connected']} | – "
        f"| {channels['closed_by_server']} closed by the server | – | – "
        f"| {left['gRPC channels without calls (KServe port)']} |"
    )
    lines += [
        "",
        "| health probe (every 0.1 s) | answered | failed | refused by the connection limit | worst | p99 |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in probes.items():
        p99 = "–" if p["p99_ms"] is None else f"{p['p99_ms']:.0f} ms"
        lines.append(
            f"| {name} | {p['answered']} | {p['failed']} | {p['refused_by_connection_limit']} "
            f"| {p['worst_ms']:.0f} ms | {p99} |"
        )
    for name, p in probes.items():
        if p["failure_examples"]:
            lines.append(f"  {name}: {p['failure_examples']}")

    def outcome(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) or "none"

    lines += [
        "",
        f"headers (new connections, a :predict each): request line + headers = {headers['limit_bytes']} B: "
        f"{outcome(headers['at_limit'])}; {headers['limit_bytes'] + 1} B: {outcome(headers['over_limit'])}",
    ]
    if headers["wrong_examples"]:
        lines.append(f"  wrong: {headers['wrong_examples']}")
    lines += [
        "",
        "| server process | idle (before the load) | start (before the attack) | peak (during) | end | end limit |",
        "|---|---|---|---|---|---|",
    ]
    limits = {
        "rss_mib": 1.2 * proc["rss_mib"]["start"] + 50,
        "threads": proc["threads"]["start"] + 20,
        "fds": proc["fds"]["start"] + 50,
    }
    for name, label in (("rss_mib", "RSS MiB"), ("threads", "threads"), ("fds", "open fds")):
        f = proc[name]
        lines.append(
            f"| {label} | {f['idle']:.0f} | {f['start']:.0f} | {f['peak']:.0f} | {f['end']:.0f} | {limits[name]:.0f} |"
        )
    lines.append(
        f"server log: {attack['server_log_emfile']} 'Too many open files', {attack['server_log_tracebacks']} tracebacks"
    )
    lines.append(
        f"the load's REST clients opened {attack['load_rest_connections_opened']} connections ({attack['clients']} at the start, then "
        f"after the server or the client closed one); failed good requests refused by the connection limit on a new "
        f"connection (reset before a reply, or the reserve's 503): {attack['failed_good_connection_limit']}; "
        f"5xx that are the reserve's 503 naming --max_connections: {attack['5xx_connection_limit_503']}"
    )
    lines += ["", "| attack target | met |", "|---|---|"]
    lines += [f"| {name} | {'yes' if ok else 'NO'} |" for name, ok in attack["targets"].items()]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests in all (default 20000)")
    parser.add_argument("--seconds", type=float, default=900.0, help="stop sending after this long (default 900)")
    parser.add_argument("--malformed", type=float, default=0.3, help="share of malformed requests (default 0.3)")
    parser.add_argument("--clients", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--publish_every", type=float, default=3.0, help="seconds between new versions (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_rows", nargs="*", default=[], help="corpus rows not to send (names from the table)")
    parser.add_argument("--quick", action="store_true", help="600 requests, 120 s at most, a version every 0.2 s")
    parser.add_argument("--json", help="also write the results here")
    attack = parser.add_argument_group("connection attacks (issue 21)")
    attack.add_argument("--attack", action="store_true", help="run the load under connection attacks")
    attack.add_argument(
        "--quick_attack",
        action="store_true",
        help="--attack for 20 s, a version every 0.5 s, with short server timeouts: " + " ".join(QUICK_ATTACK_FLAGS),
    )
    attack.add_argument("--attack_seconds", type=float, default=60.0, help="how long the attack lasts (default 60)")
    attack.add_argument(
        "--settle_seconds",
        type=float,
        help="after the attack, before the end figures (default: the longest server timeout + 3 s)",
    )
    attack.add_argument("--attack_idle", type=int, default=600, help="idle REST connections (default 600)")
    attack.add_argument("--attack_slowloris", type=int, default=100, help="slowloris REST connections (default 100)")
    attack.add_argument(
        "--attack_grpc_idle", type=int, default=100, help="raw idle TCP connections per gRPC port (default 100)"
    )
    attack.add_argument("--attack_grpc_channels", type=int, default=20, help="gRPC channels that never call (20)")
    attack.add_argument("--attack_streams", type=int, help="idle ModelStreamInfer streams (default 2 x max streams)")
    attack.add_argument(
        "--server_flags",
        default="",
        help="more server flags, one string (e.g. --server_flags='--max_connections 256')",
    )
    args = parser.parse_args(argv)
    args.server_flags = shlex.split(args.server_flags)
    if args.quick:
        args.requests, args.seconds, args.publish_every = min(args.requests, 600), min(args.seconds, 120.0), 0.2
    if args.quick_attack:
        args.attack, args.publish_every = True, 0.5
        args.attack_seconds = min(args.attack_seconds, 20.0)
        args.server_flags = QUICK_ATTACK_FLAGS + args.server_flags
    if args.attack:
        args.seconds = max(args.seconds, args.attack_seconds + 60)  # the load stops with the attack
        if args.settle_seconds is None:
            timeouts = [
                flag_value(args.server_flags, "--header_timeout_seconds", 10.0),
                flag_value(args.server_flags, "--grpc_stream_idle_seconds", 60.0),
                flag_value(args.server_flags, "--idle_connection_seconds", 60.0),
                5.0,  # REST keep-alive after an answer (uvicorn's)
            ]
            args.settle_seconds = max(timeouts) + 3.0
        if args.attack_streams is None:
            args.attack_streams = 2 * int(flag_value(args.server_flags, "--grpc_max_streams", 4))
    if not (0 <= args.malformed <= 1 and args.requests > 0 and args.clients > 0):
        parser.error("--malformed must be in [0, 1], --requests and --clients positive")
    result = run_soak(args)
    print(report(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0 if result["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
