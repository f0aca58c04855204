"""The standard gRPC health service (``grpc.health.v1.Health``, from grpcio-health-checking) on a
gRPC server, reflecting readiness: ``SERVING`` while some model version serves, ``NOT_SERVING``
before that, when none is left, and from the moment the server starts draining.

Kubernetes' ``grpc`` probes, ``grpc_health_probe`` and Envoy's gRPC health checks ask ``Check``
for the service "" (the whole server) or a service's full name; both answer the same here.
``Watch`` streams changes, which a background thread picks up every ``poll_seconds``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


class Health:
    """The health servicer of one gRPC server, for `services` (plus "", the whole server)."""

    def __init__(self, ready: Callable[[], bool], services: Sequence[str], poll_seconds: float = 0.5) -> None:
        from grpc_health.v1 import health, health_pb2

        self._pb2 = health_pb2
        self._ready = ready
        self._services = ("", *services)
        self._draining = False
        self._status: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        owner = self

        class Servicer(health.HealthServicer):
            def Check(self, request: Any, context: Any) -> Any:
                owner.refresh()
                return super().Check(request, context)

        self.servicer = Servicer()
        self.refresh()
        self._thread = threading.Thread(target=self._poll, args=(poll_seconds,), name="rnnkit-health", daemon=True)
        self._thread.start()

    def add_to(self, server: Any) -> None:
        from grpc_health.v1 import health_pb2_grpc

        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    def refresh(self) -> None:
        """Set every service's status from the readiness now (watchers hear only changes)."""
        status = self._pb2.HealthCheckResponse.SERVING if self._ready() else self._pb2.HealthCheckResponse.NOT_SERVING
        with self._lock:
            if self._draining or status == self._status:
                return
            self._status = status
            for service in self._services:
                self.servicer.set(service, status)

    def _poll(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            self.refresh()

    def drain(self) -> None:
        """NOT_SERVING from now on (the server is going away); stops the poller."""
        with self._lock:
            self._draining = True
        self._stop.set()
        self.servicer.enter_graceful_shutdown()
