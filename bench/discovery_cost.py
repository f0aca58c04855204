"""What the discovery routes cost the server: p50 of GET /, /openapi.json and a health check, with N models.

    .venv/bin/python bench/discovery_cost.py [--models 1,20] [--requests 100]

Each model is the hand-written ONNX model of ``tests/tiny_repo.py`` (no TensorFlow), with two versions, served
by one ``python -m rnnkit_serving`` through a ``models.config``; one keep-alive client asks each path
`--requests` times. The health check is the baseline: what any request costs on this machine.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import tiny_repo  # noqa: E402

PATHS = ("/v2/health/live", "/openapi.json", "/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(server: subprocess.Popen[bytes], port: int, log: str) -> None:
    """Until the server logged its ready line (every model loaded) and answers readiness."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}: {open(log).read()[-1500:]}")
        try:
            if "rnnkit serve: ready" in open(log, errors="replace").read():
                client = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                client.request("GET", "/v2/health/ready")
                if client.getresponse().status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server was not ready within 120 s: {open(log).read()[-1500:]}")


def measure(models: int, requests: int) -> dict[str, tuple[float, int]]:
    with tempfile.TemporaryDirectory() as base:
        configs = []
        for i in range(models):
            name = f"half{i}"
            for version in (1, 2):
                tiny_repo.publish(tiny_repo.write_half, os.path.join(base, name), version, name=name)
            configs.append(
                f'  config {{ name: "{name}" base_path: "{base}/{name}" model_platform: "onnx" '
                "model_version_policy { all {} } }\n"
            )
        config = os.path.join(base, "models.config")
        with open(config, "w") as handle:
            handle.write("model_config_list {\n" + "".join(configs) + "}\n")
        port = free_port()
        command = [sys.executable, "-m", "rnnkit_serving", "--model_config_file", config,
                   "--rest_api_port", str(port), "--port", "0"]
        log = os.path.join(base, "server.log")
        with open(log, "wb") as sink:
            server = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=sink)
        try:
            wait_ready(server, port, log)
            client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            out = {}
            for path in PATHS:
                latencies = []
                for _ in range(requests):
                    started = time.perf_counter()
                    client.request("GET", path)
                    reply = client.getresponse()
                    body = reply.read()
                    latencies.append((time.perf_counter() - started) * 1e3)
                    if reply.status != 200:
                        raise SystemExit(f"GET {path}: {reply.status} {body[:200]!r}")
                out[path] = (statistics.median(latencies), len(body))
            return out
        finally:
            server.terminate()
            server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="1,20", help="model counts, comma-separated (1,20)")
    parser.add_argument("--requests", type=int, default=100, help="requests per path (100)")
    args = parser.parse_args()
    print(f"{'models':>6} {'path':18} {'p50 ms':>8} {'bytes':>8}")
    for count in (int(c) for c in args.models.split(",")):
        for path, (p50, size) in measure(count, args.requests).items():
            print(f"{count:6d} {path:18} {p50:8.2f} {size:8d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
