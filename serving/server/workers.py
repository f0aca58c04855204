"""``--server_workers N``: N server processes on the same ports, one supervisor.

One Python process runs everything that holds the GIL (HTTP parsing, JSON and protobuf decoding,
encoding) on one core. With N > 1 the ``rnnkit serve`` process becomes a supervisor that loads no
model: it starts N worker processes (``python -m rnnkit_serving.server.worker_main DIR INDEX``), each a
complete server with its own models, batcher, session store, runtime sessions and repository
poller, binding every public port with ``SO_REUSEPORT`` so the kernel spreads connections over them.

- **Sequences** (KServe ``sequence_id`` / ``x-rnnkit-sequence-id``, REST and gRPC, ModelInfer and
  ModelStreamInfer): each has one owner worker (:func:`rnnkit_serving.core.workers.sequence_owner`);
  another worker relays its chunks unchanged to the owner's private Unix socket in ``DIR``.
- **Metrics**: the metrics endpoint of any worker asks the others for their counters over the same
  sockets and shows the totals.
- **Ready**: the supervisor prints its ready line once every worker serves.
- **Signals**: SIGTERM, SIGINT and SIGHUP (as for one process: drain and stop) are passed to every
  worker; each drains its requests (``--drain_seconds``) and the supervisor exits 0 when all have.
- **A worker that dies** (a crash, the OOM killer) is started again; the sequences it held are lost
  (their next chunk is answered "unknown or expired", as after a restart of a single server). A
  worker that fails before it ever served, or more than ``MAX_RESTARTS`` deaths in
  ``RESTART_WINDOW_S``, stops the whole server with status 1 and a message naming the worker.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from rnnkit_serving.core.workers import WorkerRing

log = logging.getLogger("rnnkit.serving.workers")

SPEC_FILE = "spec.json"
MAX_RESTARTS = 5  # deaths of workers within RESTART_WINDOW_S before the server gives up
RESTART_WINDOW_S = 60.0
START_TIMEOUT_S = 600.0  # loading every model of a large repository


def _ready_file(directory: str, index: int) -> str:
    return os.path.join(directory, f"w{index}.ready")


class Supervisor:
    def __init__(self, args: argparse.Namespace, count: int) -> None:
        self.args = args
        self.count = count
        self.directory = tempfile.mkdtemp(prefix="rnnkit-workers-")
        spec = {key: value for key, value in vars(args).items() if key != "func"}
        with open(os.path.join(self.directory, SPEC_FILE), "w") as out:
            json.dump({"count": count, "args": spec}, out)
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * count
        self.deaths: list[float] = []
        self.stopping = threading.Event()

    def _start(self, index: int) -> subprocess.Popen[bytes]:
        ready = _ready_file(self.directory, index)
        if os.path.exists(ready):
            os.unlink(ready)
        command = [sys.executable, "-m", "rnnkit_serving.server.worker_main", self.directory, str(index)]
        process = subprocess.Popen(command)
        self.workers[index] = process
        return process

    def _signal_all(self, signum: int) -> None:
        for process in self.workers:
            if process is not None and process.poll() is None:
                process.send_signal(signum)

    def _wait_ready(self, indices: list[int]) -> int | None:
        """Wait until the workers `indices` serve; the exit status of one that ended first (or 1 on
        a timeout, or 0 when a signal came), else None."""
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = set(indices)
        while waiting:
            for index in sorted(waiting):
                process = self.workers[index]
                assert process is not None
                if os.path.exists(_ready_file(self.directory, index)):
                    waiting.discard(index)
                elif process.poll() is not None:
                    print(
                        f"rnnkit serve: server worker {index} exited with status {process.returncode} "
                        "before it served; stopping",
                        file=sys.stderr,
                        flush=True,
                    )
                    return process.returncode or 1
            if self.stopping.is_set():
                return 0
            if time.monotonic() > deadline:
                print(
                    f"rnnkit serve: server workers {sorted(waiting)} did not start within {START_TIMEOUT_S:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            time.sleep(0.05)
        return None

    def run(self) -> int:
        def on_signal(signum: int, frame: Any) -> None:
            log.info("signal %d: draining every worker and stopping", signum)
            self.stopping.set()

        stopping = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
        previous = {sig: signal.signal(sig, on_signal) for sig in stopping}
        status = 0
        try:
            for index in range(self.count):
                self._start(index)
            failed = self._wait_ready(list(range(self.count)))
            if failed is not None:
                return failed
            args = self.args
            host = args.host
            print(
                f"rnnkit serve: ready; {self.count} server workers (pids "
                f"{[p.pid for p in self.workers if p is not None]}); "
                f"REST {f'http://{host}:{args.rest_api_port}' if args.rest_api_port else 'off'}; "
                f"gRPC {f'{host}:{args.port}' if args.port else 'off'}; "
                f"KServe gRPC {f'{host}:{args.grpc_inference_port}' if args.grpc_inference_port else 'off'}",
                file=sys.stderr,
                flush=True,
            )
            status = self._watch()
        finally:
            self.stopping.set()
            self._signal_all(signal.SIGTERM)
            grace = float(self.args.drain_seconds) + 10
            deadline = time.monotonic() + grace
            for process in self.workers:
                if process is None:
                    continue
                try:
                    process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.error("server worker %d did not stop within %g s: killed", process.pid, grace)
                    process.kill()
                    process.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self.directory, ignore_errors=True)
        return status

    def _watch(self) -> int:
        """Restart workers that die until a signal comes; 1 when they die too often."""
        while not self.stopping.wait(0.2):
            for index, process in enumerate(self.workers):
                if process is None or process.poll() is None or self.stopping.is_set():
                    continue
                now = time.monotonic()
                self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW_S] + [now]
                if len(self.deaths) > MAX_RESTARTS:
                    print(
                        f"rnnkit serve: server worker {index} (pid {process.pid}) exited with status "
                        f"{process.returncode}; {len(self.deaths)} workers died within {RESTART_WINDOW_S:g} s: "
                        "stopping the server",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
                print(
                    f"rnnkit serve: server worker {index} (pid {process.pid}) exited with status {process.returncode}; "
                    "starting it again (the streaming sessions it held are lost)",
                    file=sys.stderr,
                    flush=True,
                )
                replacement = self._start(index)
                failed = self._wait_ready([index])
                if failed:
                    return 1
                if failed is None:
                    print(
                        f"rnnkit serve: server worker {index} serves again (pid {replacement.pid})",
                        file=sys.stderr,
                        flush=True,
                    )
        return 0


def ports_in_use(args: argparse.Namespace) -> list[str]:
    """The public ports something already listens on, each as ``"<name> <host>:<port> (<error>)"``.

    The workers bind with ``SO_REUSEPORT``, which would silently *join* another process's group on the same
    port (another ``--server_workers`` server of the same user, say): the supervisor first binds each port
    without it, as one server would, so a port in use is refused as it is with one process."""
    busy = []
    for name, port in (("REST", args.rest_api_port), ("gRPC", args.port), ("KServe gRPC", args.grpc_inference_port)):
        if not port:
            continue
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                args.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as error:
            busy.append(f"{name} {args.host}:{port} ({error.strerror or error})")
    return busy


def supervise(args: argparse.Namespace, count: int) -> int:
    """Serve with `count` worker processes (``rnnkit serve --server_workers``); the exit status."""
    busy = ports_in_use(args)
    if busy:
        print(f"rnnkit serve: cannot bind the port(s) {'; '.join(busy)}", file=sys.stderr, flush=True)
        return 1
    return Supervisor(args, count).run()


def _die_with_parent() -> None:
    """Linux: this worker gets SIGTERM when its supervisor dies (killed with SIGKILL, say)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_context(directory: str, index: str) -> tuple[argparse.Namespace, WorkerRing, Callable[[], None]]:
    """In a worker (``python -m rnnkit_serving.server.worker_main DIR INDEX``, as the supervisor starts it): the
    supervisor's flags, this worker's place among the others, and what to call once serving."""
    _die_with_parent()
    supervisor = os.getppid()

    def orphaned_cleanup() -> None:  # the supervisor was killed and could not remove the directory
        if os.getppid() != supervisor:
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(orphaned_cleanup)
    with open(os.path.join(directory, SPEC_FILE)) as spec_file:
        spec = json.load(spec_file)
    ring = WorkerRing(int(index), int(spec["count"]), directory)

    def ready() -> None:
        with open(_ready_file(directory, ring.index), "w") as out:
            out.write(str(os.getpid()))

    return argparse.Namespace(**spec["args"]), ring, ready
