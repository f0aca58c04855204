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
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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
        server = spawn_server(
            ["--model_base_path", model_dir, "--model_name", MODEL, "--file_system_poll_wait_seconds", str(poll)],
            port=None,
            timeout=180,
            stderr=log,
        )
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
        jobs = iter(enumerate(plan))
        jobs_lock = threading.Lock()
        deadline = time.monotonic() + args.seconds
        stop = threading.Event()

        def publish_loop() -> None:
            while not stop.wait(args.publish_every):
                publisher.publish()

        def client(worker: int) -> None:
            stub, call = stubs[worker % 2], raw[worker % 2]
            with httpx.Client(base_url=server.rest_url, timeout=120) as http:
                while time.monotonic() < deadline:
                    with jobs_lock:
                        job = next(jobs, None)
                    if job is None:
                        return
                    n, (kind, index) = job
                    if kind == "good-rest":
                        try:
                            reply = http.post(f"/v1/models/{MODEL}:predict", content=rest_bodies[index])
                            if reply.status_code >= 500:
                                with tally.lock:
                                    tally.fivexx += 1
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
                        outcome, good, detail = send_malformed(row, payload, http, stub, call)
                        with tally.lock:
                            tally.malformed += 1
                            tally.fronts["REST" if row.front == "rest" else "gRPC"] += 1
                            tally.rows[row.name][outcome] += 1
                            if outcome.startswith("5"):
                                tally.fivexx += 1
                            if not good and len(tally.bad_rows[row.name]) < 2:
                                tally.bad_rows[row.name].append(detail)

        started = time.monotonic()
        publisher_thread = threading.Thread(target=publish_loop, daemon=True)
        publisher_thread.start()
        threads = [threading.Thread(target=client, args=(w,)) for w in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stop.set()
        publisher_thread.join()
        elapsed = time.monotonic() - started
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
    result["rss_ok"] = rss_end <= 1.2 * rss_start + 50 * MIB
    result["targets_met"] = (
        result["failed_good"] == 0
        and result["5xx"] == 0
        and result["malformed_not_4xx"] == 0
        and result["rss_ok"]
        and result["server_exit"] == 0
        and all(r["defended"] for r in rows_summary.values())
    )
    return result


def send_malformed(row: Row, payload: Any, http: Any, stub: Any, call: Any) -> tuple[str, bool, str]:
    """Send one malformed request; (outcome label, answered as a client error with a message?, detail)."""
    import grpc
    import httpx

    if row.front == "rest":
        path, body = payload
        try:
            reply = http.post(path, content=body, headers={"content-type": "application/json"})
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
    lines.append("targets met" if result["targets_met"] else "TARGETS MISSED")
    return "\n".join(lines)


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
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.seconds, args.publish_every = min(args.requests, 600), min(args.seconds, 120.0), 0.2
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
