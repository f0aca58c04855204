"""What both gRPC fronts (TF Serving, KServe v2) share: building and binding a server, and running one RPC.

:func:`build_server` makes the one kind of ``grpc.Server`` both fronts run: request threads and a
separate work pool (so an RPC thread answers ``DEADLINE_EXCEEDED`` on time while the model still
runs), the message size bound (``--max_request_bytes``), the concurrency bound
(``--grpc_max_concurrent_rpcs``, beyond it grpcio answers ``RESOURCE_EXHAUSTED``), the interceptor
that answers bytes that do not parse ``INVALID_ARGUMENT``, the health service, and a TLS-only or
plaintext port; a port that cannot be bound is an ``OSError``.

:func:`recorded_call` is the one place an RPC's exception becomes a gRPC status (through
:func:`rnnkit_serving.errors.wire_error`, the same codes and texts as the REST front), and where
the call is recorded in the metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

from rnnkit_serving.config.connections import DEFAULT_CONNECTIONS, ConnectionLimits
from rnnkit_serving.core import defaults
from rnnkit_serving.dispatch import Call, Dispatch
from rnnkit_serving.errors import Code, grpc_message, wire_error

T = TypeVar("T")

TIMEOUT_FLAG = "--grpc_timeout_in_ms"


def recorded_call(
    context: Any, dispatch: Dispatch, model: str, api: str, job: Callable[[], T], call: Call | None = None
) -> T:
    """Run `job`, record it, and turn an exception into the gRPC status of the same code and text.
    `call`: the record to fill (a job may set its ``outcome``), else a new one."""
    import grpc

    call = call or Call("GRPC", dispatch.metric_name(model) if model else "", api)
    try:
        result = job()
    except Exception as error:
        code, message, _ = wire_error(error)
        dispatch.record(call, code)
        context.abort(grpc.StatusCode[code.name], grpc_message(message))
        raise  # unreachable: abort raises
    dispatch.record(call, Code.OK)
    return result


def build_server(
    dispatch: Dispatch,
    address: str,
    register: Callable[[Any, futures.Executor], None],
    *,
    port_name: str,
    thread_prefix: str,
    workers: int = defaults.GRPC_WORKERS,
    max_message_bytes: int = -1,
    max_concurrent_rpcs: int | None = defaults.GRPC_MAX_CONCURRENT_RPCS,
    health: Any = None,
    credentials: Any = None,
    connections: ConnectionLimits = DEFAULT_CONNECTIONS,
    private_socket: str | None = None,
) -> Any:
    """Build a ``grpc.Server`` on `address` ("host:port"), ``register(server, work)`` its services
    (`work`: the pool their requests run in, under the front's timeout), add `health` (a
    :class:`rnnkit_serving.fronts.grpc.health.Health`), bind, start it and return it.

    `port_name` names the port in the bind error ("gRPC", "KServe v2 gRPC"); `thread_prefix` the
    threads (``<prefix>`` for RPCs, ``<prefix>-work`` for requests); `workers`: requests at once
    (plus the threads batching needs, :meth:`~rnnkit_serving.dispatch.Dispatch.worker_threads`);
    `max_message_bytes`: the largest request message (-1: grpcio's default);
    `max_concurrent_rpcs`: RPCs accepted at once (None: no bound); `credentials`
    (``grpc.ssl_server_credentials``, see :mod:`rnnkit_serving.config.tls`) makes the port TLS-only;
    `connections`: metadata size, handshake time, idle connections and open connections, enforced by
    grpcio's channel arguments.

    With several server workers (``dispatch.workers``, ``--server_workers N``) the port is bound with
    ``SO_REUSEPORT`` (every worker listens on it; the kernel spreads connections) and, with
    `private_socket`, a second server with its own threads listens on that Unix socket, plaintext, where
    the other workers send this one the sequence chunks it owns: a request relayed there never waits for
    a thread busy relaying the other way (both workers relaying to each other at once cannot deadlock).
    The two are returned as one (:class:`ServerPair`)."""
    import grpc

    from rnnkit_serving.fronts.grpc.guard import RequestGuard

    def one(bind: str, secure: Any, reuse_port: bool, prefix: str) -> Any:
        threads = dispatch.worker_threads(workers)
        work = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"{prefix}-work")
        # An RPC thread mostly waits: for its request message, then for its job in `work`. One for every RPC
        # admitted (--grpc_max_concurrent_rpcs), so that calls whose messages are slow (or never come, until their
        # deadline) cannot take every thread from the others. (No per-connection stream bound: a client beyond it
        # would wait silently instead of being refused, and another connection gets around it.)
        rpc_threads = max(threads, max_concurrent_rpcs or 0)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=rpc_threads, thread_name_prefix=prefix),
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", -1),
                # one process per port, unless this is one of several server workers sharing it
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                *connections.grpc_channel_args(),
            ],
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            # bytes that do not parse: INVALID_ARGUMENT, not INTERNAL; a request message late: cancelled
            interceptors=[RequestGuard(connections.grpc_message_timeout_s)],
        )
        register(server, work)
        if health is not None and not prefix.endswith("-relayed"):  # probes ask the public port
            health.add_to(server)
        bound = server.add_secure_port(bind, secure) if secure else server.add_insecure_port(bind)
        if bound == 0:
            work.shutdown(wait=False)
            raise OSError(f"cannot bind the {port_name} port {bind}")
        server.start()
        return server

    public = one(address, credentials, dispatch.workers is not None, thread_prefix)
    if private_socket is None:
        return public
    try:
        private = one(f"unix:{private_socket}", None, False, f"{thread_prefix}-relayed")
    except OSError:
        public.stop(None)
        raise
    return ServerPair(public, private)


class ServerPair:
    """A worker's public gRPC server and its private one (``--server_workers``), stopped together."""

    def __init__(self, public: Any, private: Any) -> None:
        self.public = public
        self.private = private

    def stop(self, grace: float | None) -> _BothStopped:
        return _BothStopped([self.public.stop(grace), self.private.stop(grace)])


class _BothStopped:
    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def wait(self, timeout: float | None = None) -> bool:
        return all(event.wait(timeout) for event in self.events)
