"""Running the server: REST (uvicorn) and gRPC side by side, started and drained together.

In-process (tests, notebooks, the demo)::

    server = rnnkit_serving.start_server(model_base_path="models/rnn", model_name="rnn", rest_api_port=8501, port=8500)
    ...  # server.rest_url, server.grpc_target
    server.stop()

As a child process: :func:`rnnkit_serving.server.process.spawn_server`.

Shutdown: SIGTERM/SIGINT (or ``stop``) stops both fronts at once: the listening sockets close
(new REST connections and new gRPC calls are refused; gRPC answers UNAVAILABLE), requests in
flight on either front finish (up to ``drain_seconds``), then the models close.

TLS: ``ServerOptions.ssl`` (``--ssl_config_file``, :mod:`rnnkit_serving.config.tls`) serves REST over HTTPS
and gRPC over TLS with the same key; with ``client_verify`` both refuse clients without a certificate.

While running, the base paths are polled every ``poll_seconds`` (new versions load, retired ones
unload after their requests), predictions go through a
:class:`~rnnkit_serving.scheduling.batching.Batcher` when ``batching`` is set, and KServe sequences keep
their state in a :class:`~rnnkit_serving.scheduling.session_store.SessionStore`.

Several processes on the same ports (``--server_workers N``): :mod:`rnnkit_serving.server.workers`; each runs
one ModelServer with ``ServerOptions.workers`` set (ports bound with ``SO_REUSEPORT``, a private Unix socket per
front for the other workers' relays).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rnnkit_serving.config.batching_config import BatchingParameters
from rnnkit_serving.config.connections import DEFAULT_CONNECTIONS, ConnectionLimits
from rnnkit_serving.config.model_config import ModelConfig, VersionPolicy, read_model_config
from rnnkit_serving.config.tls import SSLConfig, grpc_server_credentials, rest_ssl_context
from rnnkit_serving.core import defaults
from rnnkit_serving.core.metrics import Metrics
from rnnkit_serving.core.package import package_version
from rnnkit_serving.core.server_info import ServerInfo, Setting
from rnnkit_serving.core.signature import DEFAULT_LIMITS, NO_LIMITS, Limits
from rnnkit_serving.core.workers import WorkerRing
from rnnkit_serving.dispatch import Dispatch
from rnnkit_serving.fronts.rest.app import DEFAULT_REST, RestApp, RestOptions, rest_app
from rnnkit_serving.fronts.rest.connections import guarded_protocol
from rnnkit_serving.registry import LATEST_ONE, ModelRegistry
from rnnkit_serving.runtime.backend import DEFAULT_RUNTIME, RuntimeOptions
from rnnkit_serving.runtime.predictor import Predictor
from rnnkit_serving.scheduling.batching import Batcher
from rnnkit_serving.scheduling.session_store import DEFAULT_SESSIONS, SessionOptions, SessionStore
from rnnkit_serving.server.process import free_port

log = logging.getLogger("rnnkit.serving")


@dataclass(frozen=True)
class ServerOptions:
    host: str = defaults.HOST  # --host
    rest_api_port: int = defaults.REST_API_PORT  # --rest_api_port; 0 disables REST
    port: int = defaults.PORT  # --port (gRPC); 0 disables it (and keeps TensorFlow out of the process)
    grpc_inference_port: int = defaults.GRPC_INFERENCE_PORT  # KServe v2 gRPC (inference.GRPCInferenceService); 0 = off
    rest: RestOptions = field(default_factory=RestOptions)
    grpc_workers: int = defaults.GRPC_WORKERS  # --grpc_workers
    grpc_tensor_content: bool = False  # --grpc_tensor_content
    grpc_timeout_ms: int = defaults.GRPC_TIMEOUT_MS  # --grpc_timeout_in_ms; <= 0: the client's deadline only
    # --grpc_max_concurrent_rpcs; None: no bound
    grpc_max_concurrent_rpcs: int | None = defaults.GRPC_MAX_CONCURRENT_RPCS
    limits: Limits = DEFAULT_LIMITS  # --max_batch_size, --max_sequence_length, --max_request_elements
    # --max_header_bytes, --header_timeout_seconds, --body_timeout_seconds, --max_connections,
    # --idle_connection_seconds, --grpc_max_streams, --grpc_stream_idle_seconds
    connections: ConnectionLimits = DEFAULT_CONNECTIONS
    allow_non_finite_inputs: bool = False  # --allow_non_finite_inputs
    drain_seconds: float = defaults.DRAIN_SECONDS  # --drain_seconds
    batching: BatchingParameters | None = None  # --enable_batching (None = off)
    sessions: SessionOptions = field(default_factory=SessionOptions)
    poll_seconds: float = defaults.POLL_SECONDS  # --file_system_poll_wait_seconds; <= 0: read the base paths once
    ssl: SSLConfig | None = None  # --ssl_config_file: TLS on both fronts (None = plaintext)
    # --server_workers N > 1: this process is one of N sharing the ports (rnnkit_serving.server.workers)
    workers: WorkerRing | None = None


def server_info(options: ServerOptions, version: str | None = None) -> ServerInfo:
    """The flags the landing page (``GET /``) shows, read from `options` (the REST front only reads them)."""
    host = options.host
    scheme = "https" if options.ssl is not None else "http"

    def address(port: int, form: str) -> str:
        return form.format(host=host, port=port) if port else "off"

    def bound(value: int | None, unit: str = "") -> str:
        return "none" if value is None else f"{value}{unit}"

    def seconds(value: float) -> str:
        return f"{value:g} s"

    ports = [
        Setting(
            "Ports",
            "REST (TF Serving v1, KServe v2)",
            address(options.rest_api_port, scheme + "://{host}:{port}"),
            "--rest_api_port",
        ),
        Setting("Ports", "gRPC (TF Serving)", address(options.port, "{host}:{port}"), "--port"),
        Setting(
            "Ports", "gRPC (KServe v2)", address(options.grpc_inference_port, "{host}:{port}"), "--grpc_inference_port"
        ),
    ]
    if options.ssl is None:
        tls = "off"
    else:
        tls = "on, client certificates required" if options.ssl.client_verify else "on"
    settings = [*ports, Setting("Security", "TLS", tls, "--ssl_config_file")]
    batching = options.batching
    if batching is None:
        settings.append(Setting("Batching", "dynamic batching", "off", "--enable_batching"))
    else:
        settings += [
            Setting("Batching", "dynamic batching", "on", "--enable_batching"),
            Setting("Batching", "max_batch_size", str(batching.max_batch_size), "--batching_parameters_file"),
            Setting(
                "Batching", "batch_timeout_micros", str(batching.batch_timeout_micros), "--batching_parameters_file"
            ),
            Setting("Batching", "num_batch_threads", str(batching.num_batch_threads), "--batching_parameters_file"),
            Setting(
                "Batching", "max_enqueued_batches", str(batching.max_enqueued_batches), "--batching_parameters_file"
            ),
        ]
    limits, connections, sessions = options.limits, options.connections, options.sessions
    settings += [
        Setting("Request limits", "max request body", f"{options.rest.max_body_bytes} bytes", "--max_request_bytes"),
        Setting("Request limits", "max batch size", bound(limits.max_batch_size), "--max_batch_size"),
        Setting("Request limits", "max sequence length", bound(limits.max_sequence_length), "--max_sequence_length"),
        Setting("Request limits", "max request elements", bound(limits.max_elements), "--max_request_elements"),
        Setting(
            "Request limits",
            "NaN and infinity inputs",
            "allowed" if options.allow_non_finite_inputs else "refused",
            "--allow_non_finite_inputs",
        ),
        Setting("Connections", "max header bytes", f"{connections.max_header_bytes} bytes", "--max_header_bytes"),
        Setting("Connections", "header timeout", seconds(connections.header_timeout_s), "--header_timeout_seconds"),
        Setting("Connections", "body timeout", seconds(connections.body_timeout_s), "--body_timeout_seconds"),
        Setting("Connections", "max connections per port", str(connections.max_connections), "--max_connections"),
        Setting(
            "Connections", "idle gRPC connection", seconds(connections.idle_connection_s), "--idle_connection_seconds"
        ),
        Setting("Connections", "gRPC streams per port", str(connections.grpc_max_streams), "--grpc_max_streams"),
        Setting(
            "Timeouts and threads", "REST request timeout", f"{options.rest.timeout_ms} ms", "--rest_api_timeout_in_ms"
        ),
        Setting(
            "Timeouts and threads", "gRPC request timeout", f"{options.grpc_timeout_ms} ms", "--grpc_timeout_in_ms"
        ),
        Setting("Timeouts and threads", "REST workers", str(options.rest.workers), "--rest_workers"),
        Setting("Timeouts and threads", "REST inline budget", f"{options.rest.inline_ms:g} ms", "--rest_inline_ms"),
        Setting("Timeouts and threads", "gRPC workers", str(options.grpc_workers), "--grpc_workers"),
        Setting(
            "Timeouts and threads",
            "server processes",
            "1" if options.workers is None else f"{options.workers.count} (this page: worker {options.workers.index})",
            "--server_workers",
        ),
        Setting("Timeouts and threads", "drain on shutdown", seconds(options.drain_seconds), "--drain_seconds"),
        Setting("Sessions", "idle session timeout", seconds(sessions.idle_seconds), "--session_idle_seconds"),
        Setting("Sessions", "max sessions", str(sessions.max_sessions), "--max_sessions"),
        Setting(
            "Models",
            "repository poll",
            seconds(options.poll_seconds) if options.poll_seconds > 0 else "off",
            "--file_system_poll_wait_seconds",
        ),
    ]
    return ServerInfo(version or package_version(), tuple(settings))


def load_registry(
    configs: Sequence[ModelConfig],
    backend: str = defaults.BACKEND,
    device: str = defaults.DEVICE,
    limits: Limits = NO_LIMITS,
    runtime: RuntimeOptions = DEFAULT_RUNTIME,
    policy: VersionPolicy = LATEST_ONE,
) -> ModelRegistry:
    """Load the versions each model's policy wants (`policy` where the config names none)."""

    def loader(version_dir: str) -> Predictor:
        return Predictor.load(version_dir, backend, device, limits=limits, options=runtime)

    return ModelRegistry.load(configs, loader, policy)


def model_configs(
    model_name: str | None = None, model_base_path: str | None = None, model_config_file: str | None = None
) -> list[ModelConfig]:
    """TF Serving's rule: either one model (name + base path) or a config file."""
    if model_config_file:
        if model_base_path:
            raise ValueError("give either --model_config_file or --model_base_path, not both")
        return read_model_config(model_config_file)
    if not model_base_path:
        raise ValueError("one of --model_base_path or --model_config_file is required")
    return [ModelConfig(model_name or defaults.MODEL_NAME, os.path.abspath(model_base_path))]


class ModelServer:
    """REST and gRPC fronts over one registry, run in background threads."""

    def __init__(self, registry: ModelRegistry, options: ServerOptions = ServerOptions()) -> None:
        if not options.rest_api_port and not options.port and not options.grpc_inference_port:
            raise ValueError("at least one of --rest_api_port, --port and --grpc_inference_port must be non-zero")
        if options.workers is not None and options.ssl is not None:
            raise ValueError("--server_workers above 1 cannot be combined with --ssl_config_file yet")
        self.registry = registry
        self.options = options
        self.metrics = Metrics()
        self.batcher = Batcher(options.batching, self.metrics) if options.batching is not None else None
        self.sessions = SessionStore(options.sessions)
        self.dispatch = Dispatch(
            registry,
            self.metrics,
            self.batcher,
            self.sessions,
            options.limits,
            options.allow_non_finite_inputs,
            options.workers,
        )
        self.metrics.live_sessions = self.sessions.live
        self.metrics.evicted_sessions = lambda: dict(self.sessions.evicted)
        self.metrics.loaded_versions = registry.loaded_versions
        self._grpc: Any = None
        self._kserve_grpc: Any = None
        self._health: list[Any] = []
        self._uvicorn: Any = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def rest_url(self) -> str | None:
        scheme = "https" if self.options.ssl is not None else "http"
        return f"{scheme}://{self.options.host}:{self.options.rest_api_port}" if self.options.rest_api_port else None

    @property
    def grpc_target(self) -> str | None:
        return f"{self.options.host}:{self.options.port}" if self.options.port else None

    @property
    def grpc_inference_target(self) -> str | None:
        """The KServe v2 gRPC address (``--grpc_inference_port``), or None when it is off."""
        port = self.options.grpc_inference_port
        return f"{self.options.host}:{port}" if port else None

    def _grpc_credentials(self) -> Any:
        """TLS credentials for every gRPC port (``--ssl_config_file``), or None: plain."""
        return grpc_server_credentials(self.options.ssl) if self.options.ssl is not None else None

    def _health_service(self, *services: str) -> Any:
        from rnnkit_serving.fronts.grpc.health import Health

        health = Health(self.dispatch.available, services)
        self._health.append(health)
        return health

    def start(self, timeout: float = 30.0) -> ModelServer:
        if self.options.port:
            from rnnkit_serving.fronts.grpc.tfs import SERVICES, start_grpc_server

            self._grpc = start_grpc_server(
                self.dispatch,
                f"{self.options.host}:{self.options.port}",
                self.options.grpc_workers,
                self.options.rest.max_body_bytes,
                self.options.grpc_tensor_content,
                self.options.grpc_timeout_ms,
                self.options.grpc_max_concurrent_rpcs,
                self._health_service(*SERVICES),
                credentials=self._grpc_credentials(),
                connections=self.options.connections,
            )
        if self.options.grpc_inference_port:
            from rnnkit_serving.codecs.kserve.grpc import SERVICE
            from rnnkit_serving.fronts.grpc.kserve import start_inference_server

            self._kserve_grpc = start_inference_server(
                self.dispatch,
                f"{self.options.host}:{self.options.grpc_inference_port}",
                self.options.grpc_workers,
                self.options.rest.max_body_bytes,
                self._health_service(SERVICE),
                self.options.grpc_timeout_ms,
                self.options.grpc_max_concurrent_rpcs,
                credentials=self._grpc_credentials(),
                connections=self.options.connections,
            )
        if self.options.rest_api_port:
            import uvicorn

            tls: dict[str, Any] = {}
            if self.options.ssl is not None:
                context = rest_ssl_context(self.options.ssl)
                tls["ssl_context_factory"] = lambda config, default: context
            config = uvicorn.Config(
                rest_app(self.dispatch, self.options.rest, server_info(self.options)),
                host=self.options.host,
                port=self.options.rest_api_port,
                log_level="warning",
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=int(self.options.drain_seconds),
                # header size and time, body pauses, open connections, a reserve for health probes
                http=guarded_protocol(self.options.connections),
                **tls,
            )
            self._uvicorn = uvicorn.Server(config)
            sockets = self._worker_sockets() if self.options.workers is not None else None
            server = self._uvicorn
            self._thread = threading.Thread(target=lambda: server.run(sockets), name="rnnkit-rest", daemon=True)
            self._thread.start()
            deadline = time.monotonic() + timeout
            while not self._uvicorn.started:
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    self.stop()
                    raise OSError(f"the REST server did not start on {self.rest_url}")
                time.sleep(0.01)
        self.registry.start_polling(self.options.poll_seconds)
        log.info(
            "serving %s (REST %s, gRPC %s, KServe gRPC %s)",
            self.registry.names,
            self.rest_url,
            self.grpc_target,
            self.grpc_inference_target,
        )
        return self

    def _worker_sockets(self) -> list[socket.socket]:
        """One of several server workers: the REST port bound with ``SO_REUSEPORT`` (the kernel spreads
        connections over the workers), and this worker's private Unix socket for the others' hops."""
        assert self.options.workers is not None
        host, port = self.options.host, self.options.rest_api_port
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        public = socket.socket(family, kind, proto)
        private = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = self.options.workers.rest_socket(self.options.workers.index)
        try:
            public.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            public.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            public.bind(address)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by a worker that died
            private.bind(path)
        except OSError as error:
            public.close()
            private.close()
            raise OSError(f"cannot bind the REST port {host}:{port} or the worker socket {path}: {error}") from None
        return [public, private]

    def stop(self) -> None:
        """Stop accepting on both fronts at once, drain requests in flight, close the models. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.options.drain_seconds
        for health in self._health:  # probes see NOT_SERVING while requests drain
            health.drain()
        # grpc's stop returns at once: the ports close, new calls get UNAVAILABLE, calls in flight get `grace`
        grpc_stopped = [server.stop(grace) for server in (self._grpc, self._kserve_grpc) if server is not None]
        if self._uvicorn is not None and self._thread is not None:
            self._uvicorn.should_exit = True  # uvicorn closes its sockets and waits for its requests
            self._thread.join(grace + 5)
        for done in grpc_stopped:
            done.wait(grace + 5)
        if self.batcher is not None:
            self.batcher.close()
        self.sessions.close()
        self.registry.close()

    def serve_forever(self, ready: Callable[[], None] | None = None) -> int:
        """Start, wait for SIGTERM/SIGINT/SIGHUP, drain and stop; the exit status (0).

        `ready`: called once serving instead of printing the ready line (a server worker tells its
        supervisor, :mod:`rnnkit_serving.server.workers`, which prints one line for all)."""
        received = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            log.info("signal %d: draining and stopping", signum)
            received.set()

        # SIGHUP (a closed terminal, some supervisors' stop) drains too: it killed the process outright
        stopping = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
        previous = {sig: signal.signal(sig, on_signal) for sig in stopping}
        try:
            self.start()
            if ready is not None:
                ready()
            else:
                print(
                    f"rnnkit serve: ready; models {self.registry.names}; REST {self.rest_url or 'off'}; "
                    f"gRPC {self.grpc_target or 'off'}; KServe gRPC {self.grpc_inference_target or 'off'}",
                    file=sys.stderr,
                    flush=True,
                )
            while not received.wait(0.5):
                if self._thread is not None and not self._thread.is_alive():
                    log.error("the REST server stopped unexpectedly")
                    self.stop()
                    return 1
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def app(
    registry: ModelRegistry,
    options: RestOptions = DEFAULT_REST,
    metrics: Metrics | None = None,
    batcher: Batcher | None = None,
    sessions: SessionStore | None = None,
) -> RestApp:
    """The REST app (ASGI) over `registry`: ``rnnkit_serving.app``. Run it with uvicorn, or in-process
    with Starlette's TestClient.

    `batcher`: dynamic batching (off when None); `sessions`: where KServe sequences keep their
    state (a default :class:`SessionStore` when None)."""
    return rest_app(Dispatch(registry, metrics, batcher, sessions), options)


def start_server(
    model_base_path: str | None = None,
    model_name: str | None = None,
    *,
    model_config_file: str | None = None,
    rest_api_port: int | None = None,
    port: int | None = 0,
    grpc_inference_port: int | None = 0,
    host: str = defaults.HOST,
    backend: str = defaults.BACKEND,
    device: str = defaults.DEVICE,
    limits: Limits = DEFAULT_LIMITS,
    runtime: RuntimeOptions = DEFAULT_RUNTIME,
    rest: RestOptions = DEFAULT_REST,
    batching: BatchingParameters | None = None,
    sessions: SessionOptions = DEFAULT_SESSIONS,
    poll_seconds: float = defaults.POLL_SECONDS,
    policy: VersionPolicy = LATEST_ONE,
    allow_non_finite_inputs: bool = False,
    ssl: SSLConfig | None = None,
    connections: ConnectionLimits = DEFAULT_CONNECTIONS,
) -> ModelServer:
    """Load the models and start serving in this process (REST on a free port unless given; TF
    Serving gRPC and KServe gRPC off unless `port` / `grpc_inference_port` are given, ``None`` = a
    free port). Call ``.stop()`` when done."""
    configs = model_configs(model_name, model_base_path, model_config_file)
    registry = load_registry(configs, backend, device, limits, runtime, policy)
    options = ServerOptions(
        host=host,
        rest_api_port=free_port(host) if rest_api_port is None else rest_api_port,
        port=free_port(host) if port is None else port,
        grpc_inference_port=free_port(host) if grpc_inference_port is None else grpc_inference_port,
        rest=rest,
        batching=batching,
        sessions=sessions,
        poll_seconds=poll_seconds,
        limits=limits,
        allow_non_finite_inputs=allow_non_finite_inputs,
        ssl=ssl,
        connections=connections,
    )
    return ModelServer(registry, options).start()
