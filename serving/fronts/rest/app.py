"""The REST front: TF Serving REST v1 and KServe v2 (Open Inference Protocol), an ASGI app
(:class:`RestApp`: requests straight to the front, lifespan and odd methods to Starlette) over a
:class:`~rnnkit_serving.dispatch.Dispatch` (:func:`rest_app`; ``rnnkit_serving.app(registry)`` builds the
dispatch too).

:class:`RestFront` routes a request to the TF Serving routes (:mod:`rnnkit_serving.fronts.rest.tfs`) or the
KServe routes (:mod:`rnnkit_serving.fronts.rest.kserve`), both of which only translate between the wire and
the :class:`~rnnkit_serving.dispatch.Dispatch`, or to the read-only discovery routes (``/``, ``/docs``,
``/openapi.json``: :mod:`rnnkit_serving.fronts.rest.discovery`); it answers every exception through
:func:`rnnkit_serving.fronts.rest.http_io.error_response` and records each model request in the metrics.
Decoding, the runtime and encoding run in a worker thread under ``--rest_api_timeout_in_ms``, so a
slow model cannot stall other requests or escape the timeout; the one exception is a model request
that arrives with nothing else in flight and whose like recently ran within ``--rest_inline_ms``,
which the loop runs itself (:mod:`rnnkit_serving.scheduling.inline`: the hand-off would cost it two
thread wake-ups and protect no one).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from rnnkit_serving.core.metrics import CONTENT_TYPE
from rnnkit_serving.core.package import package_version
from rnnkit_serving.core.server_info import ServerInfo, Setting
from rnnkit_serving.dispatch import Call, Dispatch
from rnnkit_serving.errors import Code
from rnnkit_serving.fronts.rest.discovery import DiscoveryRoutes, is_discovery_path
from rnnkit_serving.fronts.rest.forward import STATE_HEADER, Relay, private_request
from rnnkit_serving.fronts.rest.http_io import DEFAULT_REST, TIMEOUT_FLAG, RestOptions, error_response
from rnnkit_serving.fronts.rest.kserve import KServeRoutes
from rnnkit_serving.fronts.rest.openapi import METRICS_PATH
from rnnkit_serving.fronts.rest.tfs import TfsRoutes

__all__ = ["DEFAULT_REST", "METRICS_PATH", "RestApp", "RestFront", "RestOptions", "rest_app", "rest_info"]

_V1 = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_V2 = re.compile(r"/v2(?:/.*)?", re.DOTALL)
_NOT_FOUND_HTML = "<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"
_RELAYED: contextvars.ContextVar[bool] = contextvars.ContextVar("rnnkit_relayed", default=False)
_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
_METHOD_SET = frozenset(_METHODS)


def rest_info(options: RestOptions = DEFAULT_REST) -> ServerInfo:
    """What the landing page shows of a REST app built without a server around it (``rnnkit_serving.app``)."""
    return ServerInfo(
        package_version(),
        (
            Setting("Limits", "max request body", f"{options.max_body_bytes} bytes", "--max_request_bytes"),
            Setting("Timeouts", "REST request timeout", f"{options.timeout_ms} ms", TIMEOUT_FLAG),
            Setting("Threads", "REST workers", str(options.workers), "--rest_workers"),
            Setting("Threads", "REST inline budget", f"{options.inline_ms:g} ms", "--rest_inline_ms"),
        ),
    )


class RestFront:
    def __init__(self, dispatch: Dispatch, options: RestOptions = DEFAULT_REST, info: ServerInfo | None = None) -> None:
        self.options = options
        self.dispatch = dispatch
        self.pool = ThreadPoolExecutor(
            max_workers=self.dispatch.worker_threads(options.workers), thread_name_prefix="rnnkit-rest"
        )
        # --server_workers N: sequence chunks and metrics travel between the worker processes
        ring = dispatch.workers
        timeout_s = options.timeout_ms / 1000 + 1 if options.timeout_ms > 0 else None
        self.relay = Relay(ring, timeout_s) if ring is not None else None
        # requests relayed by the other workers run in their own threads: a worker whose threads all wait on
        # relays to a peer still serves what that peer relays to it (no deadlock when both relay at once)
        self.relayed_pool = (
            ThreadPoolExecutor(self.dispatch.worker_threads(options.workers), thread_name_prefix="rnnkit-rest-relayed")
            if ring is not None
            else None
        )
        # None: every request in a worker thread (--rest_inline_ms 0, batching, several server processes)
        self.inline = dispatch.inline_runs(options.inline_ms)
        self.tfs = TfsRoutes(self.dispatch, options, self._in_worker)
        self.kserve = KServeRoutes(self.dispatch, options, self._in_worker, self.relay)
        self.discovery = DiscoveryRoutes(dispatch, options, info or rest_info(options), _not_found, self._in_worker)

    async def handle(self, request: Request) -> Response:
        """The answer to `request`, counted in the metrics."""
        response, outcome = await self.answer(request)
        if outcome is not None:
            self.dispatch.record(*outcome)
        return response

    async def answer(self, request: Request) -> tuple[Response, tuple[Call, Code] | None]:
        """The answer to `request`, and what the metrics step records of it (None: not a model request):
        :class:`RestApp` records it after the answer is sent, the client need not wait for it."""
        path = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or request.url.path
        if path == METRICS_PATH and request.method in ("GET", "HEAD"):
            return await self._metrics(request, path), None
        if self.relayed_pool is not None:
            _RELAYED.set(private_request(request.scope))
        v2 = _V2.fullmatch(path) is not None
        if not v2 and not _V1.fullmatch(path):
            if is_discovery_path(path):
                return await self.discovery.handle(request, path), None
            return _not_found(), None
        call = Call("REST")
        try:
            response = await (self.kserve if v2 else self.tfs).handle(request, path, call)
            code = Code.OK
        except Exception as error:
            response, code = error_response(error)
        return response, (call, code)

    async def _metrics(self, request: Request, path: str) -> Response:
        metrics = self.dispatch.metrics
        if self.relay is None:
            return Response(metrics.render(), media_type=CONTENT_TYPE)
        if private_request(request.scope) and request.headers.get(STATE_HEADER):
            return Response(json.dumps(metrics.state()), media_type="application/json")  # to the scraped worker
        relay = self.relay
        try:
            body = await self.dispatch.in_worker(
                self.pool, lambda: metrics.render(relay.states(path)), self.options.timeout_ms, TIMEOUT_FLAG
            )
        except Exception as error:
            response, _ = error_response(error)
            return response
        return Response(body, media_type=CONTENT_TYPE)

    async def _in_worker(self, job: Callable[[], Response], key: tuple[str, int] | None = None) -> Response:
        """Run `job` under the REST timeout; `key`: (model name, body bytes) of a model request, which
        may then run on the loop (:attr:`inline`)."""
        pool = self.relayed_pool if self.relayed_pool is not None and _RELAYED.get() else self.pool
        return await self.dispatch.in_worker(pool, job, self.options.timeout_ms, TIMEOUT_FLAG, self.inline, key)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self.relayed_pool is not None:
            self.relayed_pool.shutdown(wait=True)


def _not_found() -> Response:
    """TF Serving's answer to a path it has no route for."""
    return Response(_NOT_FOUND_HTML, status_code=404, media_type="text/html")


class RestApp:
    """The ASGI app :func:`rest_app` returns: an HTTP request with a method the routes take goes straight to
    :meth:`RestFront.handle` (Starlette's middleware stack and router cost ~20 µs a request and decide nothing
    here: one catch-all route); lifespan events and other methods go to the Starlette app behind it.
    ``state.front`` is the front, as on a Starlette app."""

    def __init__(self, starlette: Starlette, front: RestFront) -> None:
        self.starlette = starlette
        self.state = starlette.state
        self.front = front

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _METHOD_SET:
            await self.starlette(scope, receive, send)
            return
        outcome = None
        try:
            response, outcome = await self.front.answer(Request(scope, receive))
        except Exception as error:  # the routes answer their own errors; anything else is a 500 (wire_error logs it)
            response, _ = error_response(error)
        try:
            await response(scope, receive, send)
        finally:  # counted once the answer is on its way (its latency includes the send)
            if outcome is not None:
                self.front.dispatch.record(*outcome)


def rest_app(dispatch: Dispatch, options: RestOptions = DEFAULT_REST, info: ServerInfo | None = None) -> RestApp:
    """The REST app over a dispatch shared with other fronts (what
    :class:`~rnnkit_serving.server.model_server.ModelServer` runs); `info`: the flags the landing
    page shows (default: those of `options` alone)."""
    front = RestFront(dispatch, options, info)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        front.close()

    application = Starlette(routes=[Route("/{path:path}", front.handle, methods=_METHODS)], lifespan=lifespan)
    application.state.front = front
    return RestApp(application, front)
