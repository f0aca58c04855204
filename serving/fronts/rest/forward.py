"""Worker-to-worker REST hops (``--server_workers N``, :mod:`rnnkit_serving.core.workers`).

- :meth:`Relay.forward`: a KServe ``infer`` chunk of a sequence another worker owns is sent unchanged
  (method, path, body and the headers that shape it) to that worker's private Unix socket, and its
  answer (status, body, content type, binary-extension header) is returned as it came;
- :meth:`Relay.states`: the metrics endpoint gathers every other worker's counters
  (:meth:`rnnkit_serving.core.metrics.Metrics.state`) the same way, so any worker shows the totals.

Plain HTTP/1.1 over the standard library's client, one kept-alive connection per worker and thread.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from rnnkit_serving.core.workers import WorkerRing
from rnnkit_serving.errors import Code, ServingError

STATE_HEADER = "x-rnnkit-worker-state"  # on the private socket only: the metrics endpoint answers its state
# headers a relayed request or answer keeps (the others are per connection or recomputed)
_REQUEST_HEADERS = ("content-type", "inference-header-content-length", "x-rnnkit-sequence-id")
_RESPONSE_HEADERS = ("inference-header-content-length",)
# a kept-alive connection idle this long is not reused (the owner closes idle ones after 5 s; a request
# sent on a connection the owner is closing could be lost, and a sequence chunk is never sent twice)
_REUSE_SECONDS = 2.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def private_request(scope: Mapping[str, Any]) -> bool:
    """Whether a request arrived on a worker's private Unix socket (uvicorn reports no port for it)."""
    server = scope.get("server")
    return isinstance(server, tuple) and len(server) == 2 and server[1] is None


class Relay:
    def __init__(self, ring: WorkerRing, timeout_s: float | None) -> None:
        self.ring = ring
        self.timeout_s = timeout_s
        self._local = threading.local()

    def _exchange(
        self, worker: int, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, http.client.HTTPMessage]:
        connections: dict[int, tuple[_UnixConnection, float]] = self._local.__dict__.setdefault("connections", {})
        held = connections.pop(worker, None)
        if held is not None and time.monotonic() - held[1] > _REUSE_SECONDS:
            held[0].close()
            held = None
        connection = held[0] if held is not None else _UnixConnection(self.ring.rest_socket(worker), self.timeout_s)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            connections[worker] = (connection, time.monotonic())
        return response.status, content, response.headers

    def forward(self, worker: int, path: str, body: bytes, headers: Mapping[str, str], what: str) -> Response:
        """Send one request to `worker` and answer what it answered. `what` names the request in the error
        a client sees when the worker cannot be reached (restarting, or stopping)."""
        kept = {name: headers[name] for name in _REQUEST_HEADERS if name in headers}
        try:
            status, content, answer = self._exchange(worker, "POST", path, body, kept)
        except (OSError, http.client.HTTPException) as error:
            raise ServingError(
                Code.UNAVAILABLE,
                f"{what} is held by server worker {worker}, which did not answer ({type(error).__name__}: {error}); "
                "it may be restarting: retry later",
            ) from None
        extra = {name: answer[name] for name in _RESPONSE_HEADERS if answer.get(name) is not None}
        return Response(content, status_code=status, media_type=answer.get("content-type"), headers=extra)

    def states(self, path: str) -> list[dict[str, Any]]:
        """Every other worker's metrics state. A worker that does not answer (restarting) fails the scrape
        with UNAVAILABLE rather than a partial sum, which Prometheus would read as a counter reset."""
        states = []
        for worker in self.ring.peers():
            try:
                status, content, _ = self._exchange(worker, "GET", path, b"", {STATE_HEADER: "1"})
                if status != 200:
                    raise http.client.HTTPException(f"status {status}: {content[:200]!r}")
            except (OSError, http.client.HTTPException) as error:
                raise ServingError(
                    Code.UNAVAILABLE,
                    f"the metrics of server worker {worker} could not be read ({type(error).__name__}: {error}); "
                    "totals over all workers are not available now (a worker may be restarting): retry later",
                ) from None
            states.append(json.loads(content))
        return states
