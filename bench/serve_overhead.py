"""What rnnkit's server costs around the model on realistic payloads (loopback only, bounded in time).

    .venv/bin/python bench/serve_overhead.py [--quick] [--seconds 5] [--rounds 3]
        [--payloads 100x64,500x64] [--protocols tfs_rows,tfs_cols,kserve_json,kserve_binary,tfs_grpc,kserve_grpc]
        [--batching off,on] [--server_workers 1,2] [--client_procs 2] [--model_dir DIR]

Hold the shared lock when other suites may run: ``flock /tmp/rnnkit-test.lock .venv/bin/python bench/serve_overhead.py``.

The script exports one model once (``Masking -> rnnkit LSTM(256) -> Dense(4)``, 64 features, ONNX only, into a
temporary directory; ``--model_dir`` reuses an export) and compares, in one run with interleaved rounds:

- the in-process **floor**: ``InferenceSession.run`` on one request (batch 1) with the server's session options
  (1 intra-op and 1 inter-op thread, sequential, all graph optimisations), p50 ms per payload;
- the in-process **batched ceiling**: the same session on batch 32 (32 sequences of the payload's shape), in
  sequences per second;
- ``python -m rnnkit_cli serve`` as a child process, batching off and on (``--enable_batching``, max_batch_size 32,
  one batch thread per CPU), over each protocol: TF Serving REST JSON in row form (``instances``) and column form
  (``inputs``), KServe v2 REST JSON (flat ``data``), the KServe v2 binary tensor extension (binary input, JSON
  output), TF Serving gRPC (``PredictionService/Predict`` with ``tensor_content``) and KServe v2 gRPC
  (``GRPCInferenceService/ModelInfer`` with ``raw_input_contents``, tritonclient's generated protos);
- at concurrency 1 (one thread) and 32 (``--client_procs`` processes, default 2, each running 32/N threads, so that
  the client's own GIL is not the limit; one keep-alive ``http.client`` connection per thread for REST, one channel
  per process shared by its threads for gRPC).

Printed per payload, protocol and batching: c1 p50/p99 and **overhead = c1 p50 - floor** (ms), with each round's
overhead against that round's floor (lowest to highest: how far the machine drifted); c32 req/s and
**served/ceiling** (c32 req/s over the batched ceiling). Each cell runs ``--seconds`` in all, split over
``--rounds`` rounds; the order of the cells is shuffled in each round and both servers stay up, so slow drift of the
machine spreads over every cell. Results also go to ``bench/out/serve_overhead-<time>.json``. On a 2-core machine
the client processes and the server share the cores: c32 numbers are what one host serves to a local client.

``--server_workers 1,2``: one server per batching mode and worker count (``rnnkit serve --server_workers N``,
docs/guides/workers.md); the batching column then reads ``off w2`` and so on.

``--quick``: 100x64 only, KServe JSON / binary / gRPC and TF Serving gRPC, 1.5 s cells, one round (< 90 s on 2
cores, most of it the export). Quick numbers are noisy: compare ratios, not absolute values.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import logging
import multiprocessing
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
FEATURES = 64
UNITS = 256
MODEL = "rnn"
INPUT = "x"
OUTPUT = "scores"
PROTOCOLS = ("tfs_rows", "tfs_cols", "kserve_json", "kserve_binary", "tfs_grpc", "kserve_grpc")
GRPC_PROTOCOLS = ("tfs_grpc", "kserve_grpc")
CEILING_BATCH = 32
HEADER_LENGTH = "Inference-Header-Content-Length"


# ---------------------------------------------------------------- model and in-process floor / ceiling


def export(base: str) -> str:
    """Masking -> rnnkit LSTM(256) -> Dense(4) over 64 features, exported (ONNX only) as `base`/rnn."""
    import keras

    import rnnkit.layers as rk
    from rnnkit_export import export_model

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, FEATURES), name=INPUT)
    h = rk.LSTM(UNITS, name="lstm")(keras.layers.Masking(0.0)(inp))
    model = keras.Model(inp, {OUTPUT: keras.layers.Dense(4, name=OUTPUT)(h)})
    export_model(model, base, MODEL, formats="onnx")
    return os.path.join(base, MODEL)


def onnx_file(model_dir: str) -> str:
    versions = sorted((int(v) for v in os.listdir(model_dir) if v.isdigit()), reverse=True)
    for version in versions:
        path = os.path.join(model_dir, str(version), "model.onnx")
        if os.path.exists(path):
            return path
    raise SystemExit(f"no <version>/model.onnx under {model_dir}")


def ort_session(path: str) -> Any:
    """An ONNX Runtime CPU session with the options rnnkit's ONNX backend uses by default."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def sequence(steps: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, steps, FEATURES)).astype(np.float32)


def time_calls(fn: Callable[[], object], seconds: float, least: int = 20) -> list[float]:
    for _ in range(3):
        fn()
    out: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(out) < least:
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1e3)
    return out


def in_process(session: Any, steps: int, seconds: float) -> tuple[list[float], list[float]]:
    """(batch-1 latencies ms, batch-32 latencies ms) of ``session.run`` for `steps`-step sequences."""
    one = {INPUT: sequence(steps)}
    many = {INPUT: sequence(steps, CEILING_BATCH, seed=1)}
    return (
        time_calls(lambda: session.run(None, one), seconds / 2),
        time_calls(lambda: session.run(None, many), seconds / 2, least=5),
    )


# ---------------------------------------------------------------- requests, one client per protocol


def parse_payload(text: str) -> int:
    steps, _, features = text.partition("x")
    if not steps.isdigit() or features != str(FEATURES):
        raise SystemExit(f"payloads are STEPSx{FEATURES} (e.g. 100x{FEATURES}); received {text!r}")
    return int(steps)


def rest_request(protocol: str, x: np.ndarray, model: str = MODEL) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of one REST request carrying `x` (batch 1, steps, features)."""
    json_headers = {"Content-Type": "application/json"}
    if protocol == "tfs_rows":
        return f"/v1/models/{model}:predict", json.dumps({"instances": x.tolist()}).encode(), json_headers
    if protocol == "tfs_cols":
        return f"/v1/models/{model}:predict", json.dumps({"inputs": {INPUT: x.tolist()}}).encode(), json_headers
    tensor: dict[str, Any] = {"name": INPUT, "shape": list(x.shape), "datatype": "FP32"}
    if protocol == "kserve_json":
        tensor["data"] = x.ravel().tolist()
        return f"/v2/models/{model}/infer", json.dumps({"inputs": [tensor]}).encode(), json_headers
    if protocol == "kserve_binary":
        raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
        header = json.dumps({"inputs": [tensor]}).encode()
        headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
        return f"/v2/models/{model}/infer", header + raw, headers
    raise ValueError(f"not a REST protocol: {protocol}")


def grpc_caller(protocol: str, channel: Any, x: np.ndarray, model: str = MODEL) -> Callable[[], bool]:
    """A function sending one gRPC request carrying `x` over `channel`; True when it was answered."""
    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
    if protocol == "tfs_grpc":
        from rnnkit_serving.codecs.tfs.protos import import_proto_modules

        predict_pb2, service_grpc, types_pb2 = import_proto_modules(
            "tensorflow_serving.apis.predict_pb2",
            "tensorflow_serving.apis.prediction_service_pb2_grpc",
            "tensorflow.core.framework.types_pb2",
        )
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        tensor = request.inputs[INPUT]
        tensor.dtype = types_pb2.DT_FLOAT
        for size in x.shape:
            tensor.tensor_shape.dim.add().size = size
        tensor.tensor_content = raw
        predict = service_grpc.PredictionServiceStub(channel).Predict

        def call_tfs() -> bool:
            return bool(predict(request, timeout=60).outputs)

        return call_tfs
    if protocol == "kserve_grpc":
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        infer_request = service_pb2.ModelInferRequest(model_name=model)
        item = infer_request.inputs.add(name=INPUT, datatype="FP32", shape=list(x.shape))
        del item  # the values travel in raw_input_contents, in the order of `inputs`
        infer_request.raw_input_contents.append(raw)
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer

        def call_kserve() -> bool:
            return bool(infer(infer_request, timeout=60).outputs)

        return call_kserve
    raise ValueError(f"not a gRPC protocol: {protocol}")


@dataclass(frozen=True)
class Job:
    """One cell's share for one client process."""

    protocol: str
    steps: int
    host: str
    rest_port: int
    grpc_port: int  # the port of the protocol's gRPC service (TF Serving or KServe v2)
    threads: int
    model: str = MODEL
    warmup: int = 3


@dataclass
class Share:
    latencies_ms: list[float]
    completed: int  # requests answered inside the window
    errors: int
    first_error: str


def make_callers(job: Job, count: int) -> tuple[list[Callable[[], bool]], Callable[[], None]]:
    """`count` independent callers for `job` (REST: one connection each; gRPC: one shared channel), and a closer."""
    x = sequence(job.steps)
    if job.protocol in GRPC_PROTOCOLS:
        import grpc

        limit = 64 * 1024 * 1024
        channel = grpc.insecure_channel(
            f"{job.host}:{job.grpc_port}",
            options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)],
        )
        call = grpc_caller(job.protocol, channel, x, job.model)
        return [call] * count, channel.close
    path, body, headers = rest_request(job.protocol, x, job.model)
    connections = [http.client.HTTPConnection(job.host, job.rest_port, timeout=60) for _ in range(count)]

    def caller(connection: http.client.HTTPConnection) -> Callable[[], bool]:
        def call_rest() -> bool:
            connection.request("POST", path, body, headers)
            reply = connection.getresponse()
            data = reply.read()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {data[:200]!r}")
            return True

        return call_rest

    def close() -> None:
        for connection in connections:
            connection.close()

    return [caller(c) for c in connections], close


def run_share(job: Job, ready: Callable[[], tuple[float, float]]) -> Share:
    """Warm up `job.threads` callers, report ready, then call in a loop inside the window `ready()` returns."""
    callers, close = make_callers(job, job.threads)
    errors: list[str] = []
    lock = threading.Lock()
    warmed = threading.Barrier(job.threads + 1)
    window: list[float] = []
    go = threading.Event()
    per_thread: list[list[float]] = [[] for _ in callers]
    completed = [0] * len(callers)

    def loop(index: int) -> None:
        call = callers[index]
        try:
            for _ in range(job.warmup):
                call()
        except Exception as error:  # noqa: BLE001 - reported, the cell is marked
            with lock:
                errors.append(repr(error))
        warmed.wait()
        go.wait()
        start, end = window
        while time.monotonic() < start:
            time.sleep(0.0005)
        mine = per_thread[index]
        while True:
            began = time.monotonic()
            if began >= end:
                break
            try:
                call()
            except Exception as error:  # noqa: BLE001
                with lock:
                    errors.append(repr(error))
                continue
            finished = time.monotonic()
            if finished <= end:
                mine.append((finished - began) * 1e3)
                completed[index] += 1

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(len(callers))]
    for thread in threads:
        thread.start()
    warmed.wait()
    window.extend(ready())
    go.set()
    for thread in threads:
        thread.join()
    close()
    return Share([v for lat in per_thread for v in lat], sum(completed), len(errors), errors[0] if errors else "")


def client_process(conn: Connection) -> None:
    """A client process: runs the jobs it receives; `ready` is a round trip to the parent for the window."""

    def ready() -> tuple[float, float]:
        conn.send("ready")
        start, end = conn.recv()
        return float(start), float(end)

    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            conn.send(run_share(job, ready))
        except Exception as error:  # noqa: BLE001 - the parent reports it
            conn.send(error)


class ClientPool:
    """`size` client processes (spawned: no inherited gRPC state) that run a cell's threads between them."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for _ in range(size):
            parent, child = context.Pipe()
            proc = context.Process(target=client_process, args=(child,), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def run(self, job: Job, concurrency: int, seconds: float) -> dict[str, Any]:
        """Run `concurrency` threads spread over the processes for `seconds`; req/s, p50, p99, errors."""
        used = self.conns[: max(1, min(len(self.conns), concurrency))]
        base, extra = divmod(concurrency, len(used))
        for i, conn in enumerate(used):
            conn.send(dataclasses.replace(job, threads=base + (1 if i < extra else 0)))
        for conn in used:
            message = conn.recv()
            if isinstance(message, Exception):
                raise RuntimeError(f"client failed before the window: {message!r}")
        start = time.monotonic() + 0.05
        for conn in used:
            conn.send((start, start + seconds))
        shares: list[Share] = []
        for conn in used:
            message = conn.recv()
            if isinstance(message, Exception):
                raise RuntimeError(f"client failed: {message!r}")
            shares.append(message)
        latencies = sorted(v for s in shares for v in s.latencies_ms)
        return {
            "completed": sum(s.completed for s in shares),
            "seconds": seconds,
            "latencies_ms": latencies,
            "errors": sum(s.errors for s in shares),
            "first_error": next((s.first_error for s in shares if s.first_error), ""),
        }

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()


# ---------------------------------------------------------------- the server under test


def free_port() -> int:
    from rnnkit_serving import free_port as pick

    return int(pick())


@dataclass
class Server:
    label: str
    proc: subprocess.Popen[bytes]
    rest: int
    tfs_grpc: int
    kserve_grpc: int
    log: str

    def port_for(self, protocol: str) -> int:
        return self.kserve_grpc if protocol == "kserve_grpc" else self.tfs_grpc


def wait_ready(
    proc: subprocess.Popen[bytes],
    host: str,
    rest: int,
    grpc_ports: Sequence[int],
    log: str,
    ready_line: str | None = "rnnkit serve: ready",
) -> None:
    """Until the server answers readiness (and, for rnnkit, logged `ready_line`: with --server_workers, once every
    worker serves); `ready_line` None for servers that print no such line (the peers of bench/peers.py)."""
    import socket

    deadline = time.monotonic() + 120
    while True:
        with open(log, errors="replace") as handle:
            text = handle.read()
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}:\n{text[-2000:]}")
        try:
            if ready_line is not None and ready_line not in text:
                raise OSError("not ready")
            conn = http.client.HTTPConnection(host, rest, timeout=2)
            conn.request("GET", f"/v2/models/{MODEL}/ready")
            ok = conn.getresponse().status == 200
            conn.close()
            if ok:
                for port in grpc_ports:
                    socket.create_connection((host, port), timeout=2).close()
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the server was not ready within 120 s (log: {log})")
        time.sleep(0.05)


@contextmanager
def rnnkit_servers(
    model_dir: str, modes: Sequence[str], scratch: str, extra: Sequence[str] = (), tag: str = ""
) -> Iterator[dict[str, Server]]:
    """One child ``python -m rnnkit_cli serve`` per mode, all up at once (`extra`: more flags; `tag`: told apart
    in the log names). A mode is a batching mode ("off", "on"), optionally with a worker count ("off w2":
    ``--server_workers 2``)."""
    batching_file = os.path.join(scratch, "batching.config")
    with open(batching_file, "w") as handle:
        handle.write(
            f"max_batch_size {{ value: {CEILING_BATCH} }}\nbatch_timeout_micros {{ value: 2000 }}\n"
            f"num_batch_threads {{ value: {os.cpu_count() or 1} }}\nmax_enqueued_batches {{ value: 100 }}\n"
        )
    servers: dict[str, Server] = {}
    os.makedirs(OUT, exist_ok=True)
    try:
        for mode in modes:
            rest, tfs_grpc, kserve_grpc = free_port(), free_port(), free_port()
            flags = ["--model_base_path", model_dir, "--model_name", MODEL, "--host", "127.0.0.1"]
            flags += ["--port", str(tfs_grpc), "--rest_api_port", str(rest), "--grpc_inference_port", str(kserve_grpc)]
            flags += ["--file_system_poll_wait_seconds", "0", *extra]
            batching, _, workers = mode.partition(" w")
            if workers:
                flags += ["--server_workers", workers]
            if batching == "on":
                flags += ["--enable_batching", "--batching_parameters_file", batching_file]
            log = os.path.join(OUT, f"serve_overhead-server{tag}-{mode.replace(' ', '-')}.log")
            with open(log, "wb") as sink:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "rnnkit_cli", "serve", *flags], cwd=ROOT, stdout=sink, stderr=sink
                )
            servers[mode] = Server(f"batching {mode}", proc, rest, tfs_grpc, kserve_grpc, log)
        for server in servers.values():
            wait_ready(server.proc, "127.0.0.1", server.rest, (server.tfs_grpc, server.kserve_grpc), server.log)
        yield servers
    finally:
        for server in servers.values():
            server.proc.terminate()
        for server in servers.values():
            try:
                server.proc.wait(30)
            except subprocess.TimeoutExpired:
                server.proc.kill()


# ---------------------------------------------------------------- summary


def p(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = sorted(v for r in runs for v in r["latencies_ms"])
    seconds = sum(r["seconds"] for r in runs)
    completed = sum(r["completed"] for r in runs)
    return {
        "req_s": completed / seconds if seconds else float("nan"),
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": p(latencies, 0.99),
        "requests": completed,
        "errors": sum(r["errors"] for r in runs),
        "first_error": next((r["first_error"] for r in runs if r["first_error"]), ""),
        "per_round_req_s": [r["completed"] / r["seconds"] for r in runs],
        "per_round_p50_ms": [statistics.median(r["latencies_ms"]) if r["latencies_ms"] else None for r in runs],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100x64, 4 protocols, 1.5 s cells, 1 round")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per cell, over all rounds (default 6)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument("--payloads", default=None, help="comma-separated STEPSx64 (default 100x64,500x64)")
    parser.add_argument("--protocols", default=None, help=f"comma-separated, of {','.join(PROTOCOLS)}")
    parser.add_argument("--batching", default="off,on", help="server modes: off, on or both (default off,on)")
    parser.add_argument(
        "--server_workers", default="", help="comma-separated worker counts, e.g. 1,2 (default: the server's default)"
    )
    parser.add_argument("--concurrency", default="1,32", help="client concurrency levels (default 1,32)")
    parser.add_argument("--client_procs", type=int, default=2, help="client processes for concurrency > 1 (2)")
    parser.add_argument("--model_dir", default=None, help="an existing export of the model (skips the export)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cell order")
    parser.add_argument("--server_args", default="", help='more `rnnkit serve` flags, e.g. "--rest_workers 8"')
    args = parser.parse_args()
    quick = args.quick
    seconds = args.seconds if args.seconds is not None else (1.5 if quick else 6.0)
    rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    payloads = (args.payloads or ("100x64" if quick else "100x64,500x64")).split(",")
    default_protocols = "kserve_json,kserve_binary,tfs_grpc,kserve_grpc" if quick else ",".join(PROTOCOLS)
    protocols = (args.protocols or default_protocols).split(",")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise SystemExit(f"unknown protocols {unknown}; choose from {PROTOCOLS}")
    modes = args.batching.split(",")
    if args.server_workers:
        modes = [f"{mode} w{int(count)}" for mode in modes for count in args.server_workers.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    steps_of = {name: parse_payload(name) for name in payloads}
    began = time.perf_counter()

    scratch = tempfile.mkdtemp(prefix="serve-overhead-")
    model_dir = args.model_dir or export(scratch)
    path = onnx_file(model_dir)
    print(
        f"model: Masking -> LSTM({UNITS}) -> Dense(4), batch 1 x T x {FEATURES} float32; {path}; "
        f"CPUs {os.cpu_count()}; {rounds} round(s), {seconds:g} s per cell; "
        f"c>1 clients: {args.client_procs} processes x threads (export {time.perf_counter() - began:.1f} s)",
        flush=True,
    )
    session = ort_session(path)
    cells = [
        (mode, name, protocol, level)
        for mode in modes
        for name in payloads
        for protocol in protocols
        for level in levels
    ]
    results: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {cell: [] for cell in cells}
    floor: dict[str, list[float]] = {name: [] for name in payloads}
    floor_rounds: dict[str, list[float]] = {name: [] for name in payloads}  # each round's floor p50
    ceiling: dict[str, list[float]] = {name: [] for name in payloads}
    order = random.Random(args.seed)
    pool = ClientPool(max(1, args.client_procs))
    try:
        with rnnkit_servers(model_dir, modes, scratch, shlex.split(args.server_args)) as servers:
            for round_index in range(rounds):
                for name in payloads:  # the in-process floor and ceiling, once per round
                    one, many = in_process(session, steps_of[name], 1.0 if quick else 2.0)
                    floor[name].extend(one)
                    floor_rounds[name].append(statistics.median(one))
                    ceiling[name].extend(many)
                shuffled = list(cells)
                order.shuffle(shuffled)
                for mode, name, protocol, level in shuffled:
                    server = servers[mode]
                    job = Job(protocol, steps_of[name], "127.0.0.1", server.rest, server.port_for(protocol), 1)
                    run = pool.run(job, level, seconds / rounds)
                    results[(mode, name, protocol, level)].append(run)
                print(f"round {round_index + 1}/{rounds} done ({time.perf_counter() - began:.0f} s)", flush=True)
    finally:
        pool.close()

    summary = {cell: summarize(runs) for cell, runs in results.items()}
    for (_, name, _, _), cell in summary.items():  # each round's cell against the same round's floor: the drift
        cell["per_round_overhead_ms"] = [
            None if p50 is None else p50 - floor_p50
            for p50, floor_p50 in zip(cell["per_round_p50_ms"], floor_rounds[name])
        ]
    floors = {name: statistics.median(floor[name]) for name in payloads}
    ceilings = {name: CEILING_BATCH * 1e3 / statistics.median(ceiling[name]) for name in payloads}
    print()
    for name in payloads:
        print(
            f"{name}: floor (ORT batch 1, 1 thread) p50 {floors[name]:.3f} ms; batched ceiling (ORT batch "
            f"{CEILING_BATCH}) {ceilings[name]:.0f} seq/s ({statistics.median(ceiling[name]) / CEILING_BATCH:.3f} "
            "ms per sequence)"
        )
    low, high = min(levels), max(levels)
    print(
        f"\n{'payload':<8} {'protocol':<14} {'batching':<8} {f'c{low} p50':>8} {f'c{low} p99':>8} {'overhead':>9} "
        f"{'by round':>13} {f'c{high} req/s':>10} {f'c{high} p50':>8} {'/ceiling':>9}  errors"
    )
    for name in payloads:
        for protocol in protocols:
            for mode in modes:
                first, last = summary[(mode, name, protocol, low)], summary[(mode, name, protocol, high)]
                errors = first["errors"] + (last["errors"] if high != low else 0)
                by_round = [v for v in first["per_round_overhead_ms"] if v is not None]
                spread = f"{min(by_round):.2f}-{max(by_round):.2f}" if by_round else "-"
                print(
                    f"{name:<8} {protocol:<14} {mode:<8} {first['p50_ms']:8.3f} {first['p99_ms']:8.3f} "
                    f"{first['p50_ms'] - floors[name]:9.3f} {spread:>13} {last['req_s']:10.0f} {last['p50_ms']:8.2f} "
                    f"{last['req_s'] / ceilings[name]:8.2f}x  {errors or ''}"
                    + (f" {first['first_error'] or last['first_error']}" if errors else "")
                )
    print(
        f"overhead = c{low} p50 - floor (ms); by round = each round's c{low} p50 less that round's floor, lowest "
        f"to highest (the machine's drift); /ceiling = c{high} req/s over the batched ceiling. "
        "Targets (issue 22, 100x64): overhead <= 0.5 ms binary/gRPC, <= 1.0 ms JSON; /ceiling >= 0.6 binary/gRPC, "
        ">= 0.3 JSON."
    )
    os.makedirs(OUT, exist_ok=True)
    out_path = os.path.join(OUT, f"serve_overhead-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out_path, "w") as handle:
        json.dump(
            {
                "argv": sys.argv[1:],
                "cpus": os.cpu_count(),
                "rounds": rounds,
                "seconds_per_cell": seconds,
                "client_procs": args.client_procs,
                "floor_p50_ms": floors,
                "ceiling_seq_s": ceilings,
                "cells": [
                    {"batching": mode, "payload": name, "protocol": protocol, "concurrency": level, **s}
                    for (mode, name, protocol, level), s in summary.items()
                ],
            },
            handle,
            indent=1,
        )
    print(f"wrote {os.path.relpath(out_path, ROOT)} ({time.perf_counter() - began:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
