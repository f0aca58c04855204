"""What rnnkit's REST front costs per request in process, with the model's answer cached: the Python around the
model, measured without the loopback transport, the client or the model (whose run-to-run noise on a small VM is
larger than the front itself).

    .venv/bin/python bench/front_cost.py [--base REV] [--rounds 5] [--requests 3000] [--protocols ...]

Hold the shared lock when other suites may run: ``flock /tmp/rnnkit-test.lock .venv/bin/python bench/front_cost.py``.

The REST app (``rnnkit_serving.app(registry)``: the same ``RestApp`` that ``rnnkit serve`` runs under uvicorn) is
called directly with an ASGI scope, receive and send per request, after the export's ONNX session has answered
once: later runs return that answer (``OnnxBackend.predict`` is replaced in the measuring process only). So the
time is everything rnnkit does between the body's bytes and the answer's: routing, the body read, decode,
lease, validation, limits, the finiteness check, the inline policy, encode, metrics. An *ideal* ASGI app beside
it (orjson / ``np.frombuffer`` decode, the cached answer, orjson encode; nothing else) is the least any Python
front on this stack does. With ``--base REV`` the same is measured for an older revision (a temporary ``git
worktree``, as ``bench/serve_ab.py`` makes), the two alternating round by round in separate processes.
Prints per protocol the median over rounds of each round's p50, in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import serve_overhead as so  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REST_PROTOCOLS = ("kserve_binary", "kserve_json", "tfs_rows", "tfs_cols")


def measure(model_dir: str, protocols: list[str], requests: int, steps: int) -> dict[str, float]:
    """p50 µs per request of the rnnkit app and the ideal app, per protocol (run in a child process)."""
    import numpy as np
    import orjson
    import uvloop

    from rnnkit_serving.runtime import onnx_backend
    from rnnkit_serving.server import model_server as ms

    configs = ms.model_configs(so.MODEL, model_dir, None)
    registry = ms.load_registry(configs, "onnx", "cpu", ms.DEFAULT_LIMITS, ms.DEFAULT_RUNTIME, ms.LATEST_ONE)
    application = ms.app(registry)
    real, answers = onnx_backend.OnnxBackend.predict, {}

    def cached(self: Any, inputs: Any) -> Any:
        if id(self) not in answers:
            answers[id(self)] = real(self, inputs)
        return answers[id(self)]

    onnx_backend.OnnxBackend.predict = cached  # type: ignore[method-assign]
    x = so.sequence(steps)
    y = so.ort_session(so.onnx_file(model_dir)).run(None, {so.INPUT: x})[0]

    async def ideal(scope: dict[str, Any], receive: Any, send: Any) -> None:
        more, parts = True, []
        while more:
            message = await receive()
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(parts)
        length = int(dict(scope["headers"]).get(b"inference-header-content-length", b"0"))
        if length:
            header = orjson.loads(body[:length])
            np.frombuffer(body, "<f4", offset=length).reshape(header["inputs"][0]["shape"])
        else:
            orjson.loads(body)
        answer = orjson.dumps(
            {"model_name": so.MODEL, "outputs": [{"name": so.OUTPUT, "shape": list(y.shape), "data": y.ravel()}]},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def one(app: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
        }
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return next(messages, {"type": "http.disconnect"})

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        if sent[0]["status"] != 200:
            raise SystemExit(f"{path}: {sent}")

    async def run() -> dict[str, float]:
        out = {}
        async with application.starlette.router.lifespan_context(application.starlette):
            for protocol in protocols:
                path, body, named = so.rest_request(protocol, x)
                headers = [(k.lower().encode(), v.encode()) for k, v in named.items()]
                headers.append((b"content-length", str(len(body)).encode()))
                for who, app in (("rnnkit", application), ("ideal", ideal)):
                    for _ in range(200):
                        await one(app, path, body, headers)
                    times = []
                    for _ in range(requests):
                        started = time.perf_counter()
                        await one(app, path, body, headers)
                        times.append((time.perf_counter() - started) * 1e6)
                    out[f"{protocol} {who}"] = statistics.median(times)
        return out

    uvloop.install()
    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=None, help="also measure this older revision (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000, help="requests per cell and round (3000)")
    parser.add_argument("--protocols", default=",".join(REST_PROTOCOLS), help=f"of {','.join(REST_PROTOCOLS)}")
    parser.add_argument("--payload", default="100x64", help="STEPSx64 (100x64)")
    parser.add_argument("--model_dir", default=None, help="an existing export of the model (skips the export)")
    parser.add_argument("--child", nargs=1, metavar="MODEL_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    protocols, steps = args.protocols.split(","), so.parse_payload(args.payload)
    unknown = [p for p in protocols if p not in REST_PROTOCOLS]
    if unknown:
        parser.error(f"unknown protocols {unknown}; expected some of {list(REST_PROTOCOLS)}")
    if args.child:
        print(json.dumps(measure(args.child[0], protocols, args.requests, steps)))
        return 0
    from serve_ab import base_checkout

    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        model_dir = args.model_dir or so.export(scratch)
        trees = {"new": (ROOT, dict(os.environ))}
        if args.base:
            imports = stack.enter_context(base_checkout(args.base, scratch))
            trees["base"] = (scratch, {**os.environ, "PYTHONPATH": imports})  # not from ROOT: '' imports the tree
        here = os.path.abspath(__file__)
        cells: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for who, (cwd, env) in trees.items():
                command = [sys.executable, here, "--child", model_dir, "--protocols", args.protocols]
                command += ["--requests", str(args.requests), "--payload", args.payload]
                done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"the {who} measurement failed:\n{done.stderr[-3000:]}")
                result = next(line for line in done.stdout.splitlines() if line.startswith("{"))
                for cell, value in json.loads(result).items():
                    cells.setdefault((who, cell), []).append(value)
    print(f"\n{args.payload}, p50 µs per request in process, model answer cached ({args.rounds} rounds)")
    header = f"{'protocol':14} {'rnnkit':>8} {'ideal':>8}"
    if args.base:
        header += f" {'base ' + args.base[:10]:>16} {'new / base':>10}"
    print(header)
    for protocol in protocols:
        new = statistics.median(cells[("new", f"{protocol} rnnkit")])
        ideal = statistics.median(cells[("new", f"{protocol} ideal")])
        row = f"{protocol:14} {new:8.1f} {ideal:8.1f}"
        if args.base:
            base = statistics.median(cells[("base", f"{protocol} rnnkit")])
            row += f" {base:16.1f} {new / base:10.2f}"
        print(row)
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - started:.0f} s)")
    raise SystemExit(code)
