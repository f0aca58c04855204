"""The TF Serving REST v1 front: a Starlette app over a :class:`ModelRegistry`.

Routing reproduces TF Serving's two regexes (case-insensitive, on the raw path), so every
path TF Serving accepts works here and every other ``/v1/...`` path gets its
``Malformed request`` error. Decoding, the runtime and encoding run in a worker thread under
``--rest_api_timeout_in_ms``; exceptions become ``{"error": ...}`` replies in one place,
:func:`_reply_error`, through :func:`serving.errors.wire_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving import rest_codec
from serving.errors import Code, ServingError, invalid_argument, wire_error
from serving.metrics import CONTENT_TYPE, Metrics
from serving.registry import ModelRegistry

METRICS_PATH = "/monitoring/prometheus/metrics"
JSON = "application/json"
_POST = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_GET = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)
_V1 = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_NOT_FOUND_HTML = "<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"
_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


@dataclass(frozen=True)
class RestOptions:
    timeout_ms: int = 30_000  # --rest_api_timeout_in_ms; <= 0 disables
    max_body_bytes: int = 16 << 20  # --max_request_bytes
    workers: int = 4  # threads running decode + runtime + encode
    inline_body_bytes: int = 0  # bodies up to this size run on the event loop (no thread hop); 0 = never


DEFAULT_REST = RestOptions()


@dataclass
class _Call:
    """What one request is about, for metrics (filled while it is handled)."""

    model: str = ""
    api: str = ""


class RestFront:
    def __init__(self, registry: ModelRegistry, options: RestOptions, metrics: Metrics) -> None:
        self.registry = registry
        self.options = options
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=max(1, options.workers), thread_name_prefix="rnnkit-rest")

    async def handle(self, request: Request) -> Response:
        path = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or request.url.path
        if request.method == "GET" and path == METRICS_PATH:
            return Response(self.metrics.render(), media_type=CONTENT_TYPE)
        if not _V1.fullmatch(path):
            return Response(_NOT_FOUND_HTML, status_code=404, media_type="text/html")
        call = _Call()
        started = time.perf_counter()
        try:
            response = await self._dispatch(request, path, call)
            code = Code.OK
        except Exception as error:
            response, code = self._reply_error(error)
        if call.model:
            self.metrics.record(call.model, call.api, "REST", code, (time.perf_counter() - started) * 1e6)
        return response

    def _reply_error(self, error: Exception) -> tuple[Response, Code]:
        code, message, status = wire_error(error)
        return Response(rest_codec.error_json(message), status_code=status, media_type=JSON), code

    async def _dispatch(self, request: Request, path: str, call: _Call) -> Response:
        method = request.method
        post = _POST.fullmatch(path) if method == "POST" else None
        get = _GET.fullmatch(path) if method == "GET" else None
        if post is not None:
            name, version, label, verb = post.groups()
            if verb != "predict" and verb not in ("classify", "regress"):
                raise invalid_argument(f"Malformed request: {method} {path}")
            call.model, call.api = self._metric_name(unquote(name)), verb
            body = await self._body(request)
            if len(body) <= self.options.inline_body_bytes:
                return self._post(unquote(name), _int(version), _label(label), verb, body)
            return await self._in_worker(lambda: self._post(unquote(name), _int(version), _label(label), verb, body))
        if get is not None:
            name, version, label, metadata = get.groups()
            if name is None:
                raise invalid_argument("Missing model name in request.")
            call.model, call.api = self._metric_name(unquote(name)), "metadata" if metadata else "status"
            if metadata:
                return self._metadata(unquote(name), _int(version), _label(label))
            # TF Serving's status path only looks at a numeric version: a label lists every version.
            entries = self.registry.status(unquote(name), _int(version))
            return Response(rest_codec.status_json(entries), media_type=JSON)
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _metric_name(self, name: str) -> str:
        return name if self.registry.model(name) is not None else "(unknown)"

    def _metadata(self, name: str, version: int | None, label: str | None) -> Response:
        predictor = self.registry.resolve(name, version, label)
        runtime = {"backend": predictor.backend_name, "signatures": predictor.describe()}
        text = rest_codec.metadata_json(predictor.name, predictor.version, predictor.signatures, runtime)
        return Response(text, media_type=JSON)

    def _post(self, name: str, version: int | None, label: str | None, verb: str, body: bytes) -> Response:
        predictor = self.registry.resolve(name, version, label)
        doc = rest_codec.parse_json(body)
        if verb != "predict":
            return _unsupported_verb(verb, doc, predictor.signatures)
        parsed = rest_codec.decode_predict_request(doc, predictor.signatures)
        outputs = predictor.predict(parsed.inputs, parsed.signature_name)
        return Response(rest_codec.encode_predict_response(outputs, parsed.row_format), media_type=JSON)

    async def _body(self, request: Request) -> bytes:
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length", "")
        too_big = ServingError(
            Code.RESOURCE_EXHAUSTED,
            f"Request body is larger than the server limit of {limit} bytes (--max_request_bytes)",
            http_status=413,
        )
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def _in_worker(self, job: Callable[[], Response]) -> Response:
        future = asyncio.get_running_loop().run_in_executor(self.pool, job)
        timeout = self.options.timeout_ms / 1000 if self.options.timeout_ms > 0 else None
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise ServingError(
                Code.DEADLINE_EXCEEDED,
                f"Request timed out after {self.options.timeout_ms} ms (--rest_api_timeout_in_ms)",
            ) from None

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _int(text: str | None) -> int | None:
    return int(text) if text is not None else None


def _label(text: str | None) -> str | None:
    return unquote(text) if text is not None else None


def _unsupported_verb(verb: str, doc: Any, signatures: Any) -> Response:
    signature = signatures.get(doc.get("signature_name", "") if isinstance(doc, dict) else "", None)
    signature = signature or signatures.get("serving_default")
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    kind = "classification" if verb == "classify" else "regression"
    raise invalid_argument(
        f"No {kind} inputs found in SignatureDef: rnnkit models take tensors, not tf.Example; use :predict"
    )


def app(registry: ModelRegistry, options: RestOptions = DEFAULT_REST, metrics: Metrics | None = None) -> Starlette:
    """The REST app (ASGI). Run it with uvicorn, or in-process with Starlette's TestClient."""
    front = RestFront(registry, options, metrics or Metrics())

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        front.close()

    application = Starlette(routes=[Route("/{path:path}", front.handle, methods=_METHODS)], lifespan=lifespan)
    application.state.front = front
    return application
