"""rnnkit's server next to MLServer and KServe's Python server, on one ONNX file, from one client (loopback only).

    .venv/bin/python bench/peers.py [--quick] [--seconds 6] [--rounds 3] [--payload 100x64]
        [--servers rnnkit,rnnkit+batching,mlserver,mlserver+batching,kserve] [--mlserver_parallel_workers 1]
    make bench-peers

Hold the shared lock for the measuring part: ``flock /tmp/rnnkit-test.lock .venv/bin/python bench/peers.py``.

The first run creates ``bench/out/peers-venv-mlserver`` and ``bench/out/peers-venv-kserve`` with ``python3 -m venv``
and installs ``mlserver`` / ``kserve`` (pinned below; ``uvloop==0.21.0`` beside MLServer, see MLSERVER_UVLOOP) and the ``onnxruntime`` version of rnnkit's own venv from the
package index (under ``nice``); a stamp file holding the requirements makes reruns skip the install. MLServer 1.7
ships no ONNX runtime and KServe's Python server serves only what a ``kserve.Model`` subclass does, so this script
writes one small runtime for each (below: ``MLSERVER_RUNTIME``, ``KSERVE_SERVER``) that calls ``InferenceSession.run``
with rnnkit's session options (1 intra-op and 1 inter-op thread, sequential, all graph optimisations), decoding
inputs with each server's own codec (``NumpyCodec.decode_input``; ``InferInput.as_numpy``). Per-request logging is
off on every server (MLServer ``debug: false``; KServe ``--enable_latency_logging false --configure_logging false``).

Servers (all up at once, one process each unless said):
- ``rnnkit`` / ``rnnkit+batching``: ``python -m rnnkit_cli serve`` without / with ``--enable_batching``
  (max_batch_size 32, eager dispatch);
- ``mlserver`` / ``mlserver+batching``: ``mlserver start`` with MLServer's default ``parallel_workers`` (1: the
  model runs in one worker process behind the front process; ``--mlserver_parallel_workers 0`` keeps it in the
  front), without / with adaptive batching (``max_batch_size`` 32, ``max_batch_time`` 2 ms);
- ``kserve``: ``kserve.ModelServer`` (1 worker, REST + gRPC; it has no server-side batching).

Protocols (the same client code as ``bench/serve_overhead.py``): KServe v2 REST JSON (flat ``data``), the v2 binary
tensor extension (binary input, JSON output; MLServer does not implement it) and v2 gRPC ``ModelInfer`` with
``raw_input_contents``, at concurrency 1 and 32 (32 threads over ``--client_procs`` processes). The in-process floor
(ORT batch 1) and batched ceiling (ORT batch 32) are measured in the same run. Cells are shuffled in each round.
Results also go to ``bench/out/peers-<time>.json``. ``--quick``: rnnkit, mlserver and kserve only, 1.5 s cells,
one round (noisy: a smoke run, not a result).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import metadata

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import serve_overhead as so  # noqa: E402

MLSERVER_VERSION = "1.7.1"
KSERVE_VERSION = "0.21.0"
# MLServer 1.7.1's parallel workers call asyncio.get_event_loop() in a fresh process, which uvloop >= 0.22 turns
# into "RuntimeError: There is no current event loop": every worker dies and the model never loads. The last
# uvloop before that change keeps MLServer's default configuration (parallel_workers 1) working.
MLSERVER_UVLOOP = "uvloop==0.21.0"
PROTOCOLS = ("kserve_json", "kserve_binary", "kserve_grpc")
SERVERS = ("rnnkit", "rnnkit+batching", "mlserver", "mlserver+batching", "kserve")
WORK = os.path.join(so.OUT, "peers-work")

MLSERVER_RUNTIME = '''"""An MLServer runtime running an ONNX file with ONNX Runtime (written by rnnkit's bench/peers.py)."""

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        values = self._session.run(self._outputs, feeds)
        outputs = [NumpyCodec.encode_output(name, value) for name, value in zip(self._outputs, values)]
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id, outputs=outputs)
'''

KSERVE_SERVER = '''"""KServe's Python server running an ONNX file with ONNX Runtime (written by rnnkit's bench/peers.py)."""

import argparse

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server


class OnnxModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        feeds = {item.name: item.as_numpy() for item in payload.inputs}
        values = self.session.run(self.outputs, feeds)
        outputs = []
        for name, value in zip(self.outputs, values):
            output = InferOutput(name=name, shape=list(value.shape), datatype="FP32")
            output.set_data_from_numpy(value, binary_data=False)
            outputs.append(output)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1, enable_latency_logging=False).start(
        [OnnxModel(args.model_name, args.model_path)]
    )
'''


# ---------------------------------------------------------------- environments


def venv_dir(name: str) -> str:
    return os.path.join(so.OUT, f"peers-venv-{name}")


def ensure_venv(name: str, requirements: Sequence[str]) -> str:
    """``bench/out/peers-venv-<name>`` with `requirements` installed; returns its python. Cached by a stamp file."""
    root = venv_dir(name)
    python = os.path.join(root, "bin", "python")
    stamp = os.path.join(root, ".rnnkit-bench-requirements")
    wanted = "\n".join(requirements) + "\n"
    if os.path.exists(python) and os.path.exists(stamp):
        with open(stamp) as handle:
            if handle.read() == wanted:
                return python
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    print(f"installing {' '.join(requirements)} into {os.path.relpath(root, so.ROOT)} ...", flush=True)
    if not os.path.exists(python):
        subprocess.run([*nice, "python3", "-m", "venv", root], check=True)
    pip = [*nice, python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *requirements], check=True)
    with open(stamp, "w") as handle:
        handle.write(wanted)
    return python


# ---------------------------------------------------------------- servers


@dataclass
class Peer:
    label: str
    proc: subprocess.Popen[bytes] | None  # None: owned by the rnnkit context
    rest: int
    grpc: int
    protocols: tuple[str, ...]


def launch(command: list[str], log: str, cwd: str) -> subprocess.Popen[bytes]:
    """A peer server in a process group of its own: MLServer's model workers are its children, and the group is
    what gets stopped (a peer that never became ready used to leave them running)."""
    with open(log, "wb") as sink:
        return subprocess.Popen(command, cwd=cwd, stdout=sink, stderr=sink, start_new_session=True)


def stop_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # the group is gone already
        pass


def mlserver(python: str, onnx: str, batching: bool, parallel_workers: int) -> tuple[Peer, str]:
    label = "mlserver+batching" if batching else "mlserver"
    folder = os.path.join(WORK, label)
    model_folder = os.path.join(folder, so.MODEL)
    os.makedirs(model_folder, exist_ok=True)
    rest, grpc_port, metrics = so.free_port(), so.free_port(), so.free_port()
    settings = {
        "http_port": rest,
        "grpc_port": grpc_port,
        "metrics_port": metrics,
        "host": "127.0.0.1",
        "parallel_workers": parallel_workers,
        "debug": False,
        "load_models_at_startup": True,
    }
    model_settings: dict[str, object] = {
        "name": so.MODEL,
        "implementation": "onnx_runtime.OnnxRuntime",
        "parameters": {"uri": onnx},
    }
    if batching:
        model_settings.update({"max_batch_size": so.CEILING_BATCH, "max_batch_time": 0.002})
    with open(os.path.join(folder, "settings.json"), "w") as handle:
        json.dump(settings, handle, indent=1)
    with open(os.path.join(model_folder, "model-settings.json"), "w") as handle:
        json.dump(model_settings, handle, indent=1)
    with open(os.path.join(model_folder, "onnx_runtime.py"), "w") as handle:
        handle.write(MLSERVER_RUNTIME)
    log = os.path.join(so.OUT, f"peers-{label}.log")
    mlserver_bin = os.path.join(os.path.dirname(python), "mlserver")
    proc = launch([mlserver_bin, "start", folder], log, folder)
    return Peer(label, proc, rest, grpc_port, ("kserve_json", "kserve_grpc")), log


def kserve(python: str, onnx: str) -> tuple[Peer, str]:
    os.makedirs(WORK, exist_ok=True)
    script = os.path.join(WORK, "kserve_onnx.py")
    with open(script, "w") as handle:
        handle.write(KSERVE_SERVER)
    rest, grpc_port = so.free_port(), so.free_port()
    log = os.path.join(so.OUT, "peers-kserve.log")
    command = [python, script, "--model_name", so.MODEL, "--model_path", onnx]
    command += ["--http_port", str(rest), "--grpc_port", str(grpc_port), "--configure_logging", "false"]
    proc = launch(command, log, WORK)
    return Peer("kserve", proc, rest, grpc_port, PROTOCOLS), log


@contextmanager
def peers(
    names: Sequence[str],
    model_dir: str,
    pythons: dict[str, str],
    parallel_workers: int,
    scratch: str,
    rnnkit_args: Sequence[str] = (),
) -> Iterator[dict[str, Peer]]:
    onnx = so.onnx_file(model_dir)
    out: dict[str, Peer] = {}
    with ExitStack() as stack:
        modes = [m for m, n in (("off", "rnnkit"), ("on", "rnnkit+batching")) if n in names]
        if modes:
            servers = stack.enter_context(so.rnnkit_servers(model_dir, modes, scratch, rnnkit_args))
            for mode, server in servers.items():
                label = "rnnkit" if mode == "off" else "rnnkit+batching"
                out[label] = Peer(label, None, server.rest, server.kserve_grpc, PROTOCOLS)
        started: list[tuple[Peer, str]] = []
        try:
            for name in names:
                if name.startswith("mlserver"):
                    started.append(mlserver(pythons["mlserver"], onnx, name.endswith("batching"), parallel_workers))
                elif name == "kserve":
                    started.append(kserve(pythons["kserve"], onnx))
            for peer, log in started:
                assert peer.proc is not None
                so.wait_ready(peer.proc, "127.0.0.1", peer.rest, (peer.grpc,), log, ready_line=None)
                out[peer.label] = peer
            yield {name: out[name] for name in names}
        finally:
            for peer, _ in started:
                assert peer.proc is not None
                stop_group(peer.proc, signal.SIGTERM)
            for peer, _ in started:
                assert peer.proc is not None
                try:
                    peer.proc.wait(30)
                except subprocess.TimeoutExpired:
                    pass
                stop_group(peer.proc, signal.SIGKILL)  # the group's stragglers too


def check_answers(servers: dict[str, Peer], steps: int, expected: np.ndarray) -> None:
    """One KServe v2 JSON request to each server: its answer must match ONNX Runtime in-process."""
    path, body, headers = so.rest_request("kserve_json", so.sequence(steps))
    for name, peer in servers.items():
        connection = http.client.HTTPConnection("127.0.0.1", peer.rest, timeout=60)
        connection.request("POST", path, body, headers)
        reply = connection.getresponse()
        doc = json.loads(reply.read())
        connection.close()
        if reply.status != 200:
            raise SystemExit(f"{name}: HTTP {reply.status}: {doc}")
        output = next(o for o in doc["outputs"] if o["name"] == so.OUTPUT)
        got = np.asarray(output["data"], np.float32).reshape(expected.shape)
        if not np.allclose(got, expected, atol=1e-5):
            raise SystemExit(f"{name} answered {got.ravel()[:4]}, ONNX Runtime in-process {expected.ravel()[:4]}")


# ---------------------------------------------------------------- main


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="rnnkit, mlserver, kserve; 1.5 s cells; 1 round")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per cell over all rounds (default 6)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument("--payload", default="100x64", help="STEPSx64 (default 100x64)")
    parser.add_argument("--servers", default=None, help=f"comma-separated, of {','.join(SERVERS)}")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated, of " + ",".join(PROTOCOLS))
    parser.add_argument("--concurrency", default="1,32", help="client concurrency levels (default 1,32)")
    parser.add_argument("--client_procs", type=int, default=2, help="client processes for concurrency > 1 (2)")
    parser.add_argument("--mlserver_parallel_workers", type=int, default=1, help="MLServer's default: 1")
    parser.add_argument("--model_dir", default=None, help="an existing export (skips the export)")
    parser.add_argument("--install_only", action="store_true", help="create the peer venvs and stop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server_args", default="", help="more `rnnkit serve` flags for the rnnkit servers")
    args = parser.parse_args()
    quick = args.quick
    seconds = args.seconds if args.seconds is not None else (1.5 if quick else 6.0)
    rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    names = (args.servers or ("rnnkit,mlserver,kserve" if quick else ",".join(SERVERS))).split(",")
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        raise SystemExit(f"unknown servers {unknown}; choose from {SERVERS}")
    protocols = args.protocols.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    steps = so.parse_payload(args.payload)
    began = time.perf_counter()

    ort_version = metadata.version("onnxruntime")
    pythons: dict[str, str] = {}
    if any(n.startswith("mlserver") for n in names) or args.install_only:
        pythons["mlserver"] = ensure_venv(
            "mlserver", [f"mlserver=={MLSERVER_VERSION}", f"onnxruntime=={ort_version}", MLSERVER_UVLOOP]
        )
    if "kserve" in names or args.install_only:
        pythons["kserve"] = ensure_venv("kserve", [f"kserve=={KSERVE_VERSION}", f"onnxruntime=={ort_version}"])
    if args.install_only:
        return 0
    installed = time.perf_counter() - began

    scratch = tempfile.mkdtemp(prefix="peers-")
    model_dir = args.model_dir or so.export(scratch)
    session = so.ort_session(so.onnx_file(model_dir))
    print(
        f"model: Masking -> LSTM({so.UNITS}) -> Dense(4), 1 x {steps} x {so.FEATURES} float32; CPUs {os.cpu_count()}; "
        f"ONNX Runtime {ort_version} (1 intra-op thread) in every server; MLServer {MLSERVER_VERSION} "
        f"(parallel_workers {args.mlserver_parallel_workers}), KServe {KSERVE_VERSION}; {rounds} round(s), "
        f"{seconds:g} s per cell; c>1 clients: {args.client_procs} processes x threads "
        f"(install check {installed:.1f} s, ready {time.perf_counter() - began:.1f} s)",
        flush=True,
    )
    floor: list[float] = []
    ceiling: list[float] = []
    order = random.Random(args.seed)
    pool = so.ClientPool(max(1, args.client_procs))
    results: dict[tuple[str, str, int], list[dict[str, object]]] = {}
    try:
        with peers(
            names, model_dir, pythons, args.mlserver_parallel_workers, scratch, shlex.split(args.server_args)
        ) as servers:
            cells = [
                (name, protocol, level)
                for name in names
                for protocol in protocols
                if protocol in servers[name].protocols
                for level in levels
            ]
            results = {cell: [] for cell in cells}
            check_answers(servers, steps, session.run([so.OUTPUT], {so.INPUT: so.sequence(steps)})[0])
            for round_index in range(rounds):
                one, many = so.in_process(session, steps, 1.0 if quick else 2.0)
                floor.extend(one)
                ceiling.extend(many)
                shuffled = list(cells)
                order.shuffle(shuffled)
                for name, protocol, level in shuffled:
                    peer = servers[name]
                    job = so.Job(protocol, steps, "127.0.0.1", peer.rest, peer.grpc, 1)
                    results[(name, protocol, level)].append(pool.run(job, level, seconds / rounds))
                print(f"round {round_index + 1}/{rounds} done ({time.perf_counter() - began:.0f} s)", flush=True)
    finally:
        pool.close()

    summary = {cell: so.summarize(runs) for cell, runs in results.items()}
    floor_ms = statistics.median(floor)
    ceiling_seq = so.CEILING_BATCH * 1e3 / statistics.median(ceiling)
    low, high = min(levels), max(levels)
    print(
        f"\n| server | protocol | c{low} p50 ms | overhead ms | c{high} req/s | c{high} p50 ms | /ceiling | errors |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    print(
        f"| ONNX Runtime in-process | floor (batch 1) / ceiling (batch {so.CEILING_BATCH}) | {floor_ms:.3f} | — | "
        f"{ceiling_seq:.0f} seq/s | — | 1.00 | |"
    )
    for name in names:
        for protocol in protocols:
            if (name, protocol, low) not in summary:
                continue
            first, last = summary[(name, protocol, low)], summary[(name, protocol, high)]
            errors = first["errors"] + (last["errors"] if high != low else 0)
            note = f"{errors} {first['first_error'] or last['first_error']}"[:100] if errors else ""
            print(
                f"| {name} | {protocol} | {first['p50_ms']:.3f} | {first['p50_ms'] - floor_ms:.3f} | "
                f"{last['req_s']:.0f} | {last['p50_ms']:.2f} | {last['req_s'] / ceiling_seq:.2f} | {note} |"
            )
    os.makedirs(so.OUT, exist_ok=True)
    out_path = os.path.join(so.OUT, f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out_path, "w") as handle:
        json.dump(
            {
                "argv": sys.argv[1:],
                "cpus": os.cpu_count(),
                "onnxruntime": ort_version,
                "mlserver": MLSERVER_VERSION,
                "kserve": KSERVE_VERSION,
                "mlserver_parallel_workers": args.mlserver_parallel_workers,
                "rounds": rounds,
                "seconds_per_cell": seconds,
                "floor_p50_ms": floor_ms,
                "ceiling_seq_s": ceiling_seq,
                "cells": [
                    {"server": name, "protocol": protocol, "concurrency": level, **s}
                    for (name, protocol, level), s in summary.items()
                ],
            },
            handle,
            indent=1,
        )
    print(f"wrote {os.path.relpath(out_path, so.ROOT)} ({time.perf_counter() - began:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
