"""``rnnkit serve`` as a child process (what the CLI tests, the demo and the benchmarks run), and free ports.

proc = rnnkit_serving.spawn_server(["--model_base_path", "models/rnn", "--model_name", "rnn"])
...  # proc.rest_url, proc.grpc_target
proc.stop()  # SIGTERM: in-flight requests complete, exit status 0
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` (for tests and the demo)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """``python -m serving ...`` as a child process; ``stop()`` sends SIGTERM and waits."""

    def __init__(
        self, process: subprocess.Popen[bytes], host: str, rest_api_port: int, port: int, tls: bool = False
    ) -> None:
        self.process = process
        self.tls = tls
        self.host = host
        self.rest_api_port = rest_api_port
        self.port = port

    @property
    def rest_url(self) -> str | None:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.rest_api_port}" if self.rest_api_port else None

    @property
    def grpc_target(self) -> str | None:
        return f"{self.host}:{self.port}" if self.port else None

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def spawn_server(
    args: Sequence[str],
    *,
    host: str = "127.0.0.1",
    rest_api_port: int | None = None,
    port: int | None = 0,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    stderr: Any = None,
) -> ServerProcess:
    """Start ``python -m serving <args>`` on `host` and wait until it accepts connections.

    `args` are ``rnnkit serve`` flags without the ports/host (``--model_base_path ...``);
    ports default to free ones for REST and off for gRPC (``port=None`` picks a free one).
    """
    rest_api_port = free_port(host) if rest_api_port is None else rest_api_port
    port = free_port(host) if port is None else port
    command = [sys.executable, "-m", "rnnkit_serving", *args, "--host", host]
    command += ["--rest_api_port", str(rest_api_port), "--port", str(port)]
    process = subprocess.Popen(command, env=env, stderr=stderr)
    probe_port = rest_api_port or port
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before it was ready: {command}")
        try:
            with socket.create_connection((host, probe_port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise TimeoutError(f"the server did not listen on {host}:{probe_port} within {timeout} s") from None
            time.sleep(0.02)
    tls = any(arg == "--ssl_config_file" or arg.startswith("--ssl_config_file=") for arg in args)
    return ServerProcess(process, host, rest_api_port, port, tls)
