"""The REST front: TF Serving REST v1 and KServe v2 (Open Inference Protocol), a Starlette app
over a :class:`ModelRegistry`.

Routing reproduces TF Serving's two regexes (case-insensitive, on the raw path), so every
path TF Serving accepts works here and every other ``/v1/...`` path gets its
``Malformed request`` error. Decoding, the runtime and encoding run in a worker thread under
``--rest_api_timeout_in_ms``; exceptions become ``{"error": ...}`` replies in one place,
:func:`_reply_error`, through :func:`serving.errors.wire_error`.

Requests hold a lease on the version they resolved to (hot reload closes a version only after
its last request). With a :class:`~serving.batching.Batcher`, predictions go through it; KServe
requests carrying Triton's ``sequence_id`` stream through the :class:`~serving.session.SessionStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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

from serving import kserve_codec, rest_codec
from serving.batching import Batcher
from serving.errors import Code, ServingError, invalid_argument, not_found, wire_error
from serving.metrics import CONTENT_TYPE, Metrics
from serving.predictor import Predictor
from serving.registry import ModelRegistry
from serving.session import SessionStore, sequence_id
from serving.signature import DEFAULT_SIGNATURE

METRICS_PATH = "/monitoring/prometheus/metrics"
JSON = "application/json"
_POST = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_GET = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)
_V1 = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_V2 = re.compile(r"/v2(?:/.*)?", re.DOTALL)
_V2_MODEL = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?")
_NOT_FOUND_HTML = "<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"
_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
AUTO_INLINE_MAX_BYTES = 16 << 10  # larger bodies always go to a worker thread
RECENT_WEIGHT = 0.2  # weight of the newest :predict duration in a model's running estimate


@dataclass(frozen=True)
class RestOptions:
    timeout_ms: int = 30_000  # --rest_api_timeout_in_ms; <= 0 disables
    max_body_bytes: int = 16 << 20  # --max_request_bytes
    workers: int = 4  # threads running decode + runtime + encode
    inline_body_bytes: int = 0  # bodies up to this size always run on the event loop (no thread hop); 0 = never
    # A :predict that arrives while no other request is being handled also runs on the event loop when its
    # model's recent requests took less than this much CPU (and the body is small, batching off): at low load the
    # thread hop (~0.15 ms) costs more than it buys; under load requests still spread over the workers. 0 = never.
    inline_predict_us: float = 500.0


DEFAULT_REST = RestOptions()


@dataclass
class _Call:
    """What one request is about, for metrics (filled while it is handled)."""

    model: str = ""
    api: str = ""


class RestFront:
    def __init__(
        self,
        registry: ModelRegistry,
        options: RestOptions,
        metrics: Metrics,
        batcher: Batcher | None = None,
        sessions: SessionStore | None = None,
    ) -> None:
        self.registry = registry
        self.options = options
        self.metrics = metrics
        self.batcher = batcher
        self.sessions = sessions if sessions is not None else SessionStore()
        workers = max(1, options.workers)
        if batcher is not None:  # request threads wait for their batch: enough of them to fill batches
            workers += min(batcher.params.max_batch_size * batcher.params.num_batch_threads, 512)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rnnkit-rest")
        self.recent_predict_us: dict[str, float] = {}  # model name -> running estimate of :predict time
        self.active = 0  # requests being handled now (changed on the event loop only)

    async def handle(self, request: Request) -> Response:
        path = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or request.url.path
        if request.method == "GET" and path == METRICS_PATH:
            return Response(self.metrics.render(), media_type=CONTENT_TYPE)
        v2 = _V2.fullmatch(path) is not None
        if not v2 and not _V1.fullmatch(path):
            return Response(_NOT_FOUND_HTML, status_code=404, media_type="text/html")
        call = _Call()
        started = time.perf_counter()
        self.active += 1
        try:
            response = await (self._dispatch_v2 if v2 else self._dispatch)(request, path, call)
            code = Code.OK
        except Exception as error:
            response, code = self._reply_error(error)
        finally:
            self.active -= 1
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
            model = unquote(name)

            def job() -> Response:
                return self._timed_post(model, _int(version), _label(label), verb, body)

            if self.runs_inline(model, len(body)):
                return job()
            return await self._in_worker(job)
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
        with self.registry.lease(name, version, label) as predictor:
            runtime = {"backend": predictor.backend_name, "signatures": predictor.describe()}
            text = rest_codec.metadata_json(predictor.name, predictor.version, predictor.signatures, runtime)
        return Response(text, media_type=JSON)

    def runs_inline(self, model: str, body_bytes: int) -> bool:
        """Whether a :predict for `model` runs on the event loop instead of a worker thread."""
        if body_bytes <= self.options.inline_body_bytes:
            return True
        if self.batcher is not None or self.options.inline_predict_us <= 0 or body_bytes > AUTO_INLINE_MAX_BYTES:
            return False  # a batched request waits for its batch: it must never block the loop
        if self.active > 1:
            return False  # under load, requests spread over the worker threads (and cores)
        return self.recent_predict_us.get(model, float("inf")) < self.options.inline_predict_us

    def _timed_post(self, name: str, version: int | None, label: str | None, verb: str, body: bytes) -> Response:
        # CPU time of this thread (decode, runtime with one intra-op thread, encode): unlike wall time it
        # leaves out waiting for the GIL, so a request measured in a worker thread is not overrated.
        started = time.thread_time()
        try:
            return self._post(name, version, label, verb, body)
        finally:
            took = (time.thread_time() - started) * 1e6
            previous = self.recent_predict_us.get(name)
            estimate = took if previous is None else (1 - RECENT_WEIGHT) * previous + RECENT_WEIGHT * took
            self.recent_predict_us[name] = estimate

    def _post(self, name: str, version: int | None, label: str | None, verb: str, body: bytes) -> Response:
        with self.registry.lease(name, version, label) as predictor:
            doc = rest_codec.parse_json(body)
            if verb != "predict":
                return _unsupported_verb(verb, doc, predictor.signatures)
            parsed = rest_codec.decode_predict_request(doc, predictor.signatures)
            outputs = self._predict(predictor, parsed.inputs, parsed.signature_name)
        return Response(rest_codec.encode_predict_response(outputs, parsed.row_format), media_type=JSON)

    def _predict(self, predictor: Predictor, inputs: Any, signature_name: str) -> Any:
        if self.batcher is not None:
            return self.batcher.predict(predictor, inputs, signature_name)
        return predictor.predict(inputs, signature_name)

    # ------------------------------------------------------------------------------ KServe v2

    async def _dispatch_v2(self, request: Request, path: str, call: _Call) -> Response:
        method = request.method
        if method == "GET" and path in ("/v2", "/v2/"):
            return Response(kserve_codec.server_metadata_json(_package_version()), media_type=JSON)
        if method == "GET" and path == "/v2/health/live":
            return Response('{"live": true}', media_type=JSON)
        if method == "GET" and path == "/v2/health/ready":
            ready = self.registry.available()
            return Response(f'{{"ready": {str(ready).lower()}}}', status_code=200 if ready else 400, media_type=JSON)
        match = _V2_MODEL.fullmatch(path)
        if match is None:
            raise not_found(f"Not found: {method} {path} is not a KServe v2 endpoint")
        name, version_text, action = unquote(match.group(1)), match.group(2), match.group(3)
        version = _v2_version(version_text)
        call.model = self._metric_name(name)
        if method == "GET" and action == "ready":
            call.api = "ready"
            try:
                self.registry.resolve(name, version)
                ready = True
            except ServingError:
                ready = False
            text = json.dumps({"name": name, "ready": ready})
            return Response(text, status_code=200 if ready else 400, media_type=JSON)
        if method == "GET" and action is None:
            call.api = "metadata"
            with self.registry.lease(name, version) as predictor:
                text = kserve_codec.model_metadata_json(
                    name,
                    self.registry.versions(name),
                    kserve_codec.PLATFORMS.get(predictor.backend_name, predictor.backend_name),
                    predictor.signature(DEFAULT_SIGNATURE),
                )
            return Response(text, media_type=JSON)
        if method == "POST" and action == "infer":
            call.api = "infer"
            if "inference-header-content-length" in request.headers:
                raise invalid_argument("binary tensor data (Inference-Header-Content-Length) is not supported")
            body = await self._body(request)
            return await self._in_worker(lambda: self._infer(name, version, body))
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _infer(self, name: str, version: int | None, body: bytes) -> Response:
        doc = kserve_codec.parse_body(body)
        parameters = doc.get("parameters") if isinstance(doc, dict) else None
        if not isinstance(parameters, dict):
            parameters = {}
        key = sequence_id(parameters)
        if key is None:
            with self.registry.lease(name, version) as predictor:
                request = kserve_codec.decode_infer_request(doc, predictor.signature(DEFAULT_SIGNATURE))
                outputs = self._predict(predictor, request.inputs, DEFAULT_SIGNATURE)
        else:
            start, end = bool(parameters.get("sequence_start")), bool(parameters.get("sequence_end"))
            with self.sessions.lease(self.registry, name, version, None, key, start) as predictor:
                request = kserve_codec.decode_infer_request(doc, predictor.signature(DEFAULT_SIGNATURE))
                outputs = self.sessions.step(predictor, key, request.inputs, start, end)
        text = kserve_codec.encode_infer_response(
            predictor.name, predictor.version, outputs, request.outputs, request.id
        )
        return Response(text, media_type=JSON)

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


def _v2_version(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise invalid_argument(f"model version must be an integer; received {unquote(text)!r}")
    return int(text)


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("rnnkit")
    except Exception:  # not installed as a distribution
        return "unknown"


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


def app(
    registry: ModelRegistry,
    options: RestOptions = DEFAULT_REST,
    metrics: Metrics | None = None,
    batcher: Batcher | None = None,
    sessions: SessionStore | None = None,
) -> Starlette:
    """The REST app (ASGI). Run it with uvicorn, or in-process with Starlette's TestClient.

    `batcher`: dynamic batching (off when None); `sessions`: where KServe sequences keep their
    state (a default :class:`SessionStore` when None)."""
    front = RestFront(registry, options, metrics or Metrics(), batcher, sessions)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        front.close()

    application = Starlette(routes=[Route("/{path:path}", front.handle, methods=_METHODS)], lifespan=lifespan)
    application.state.front = front
    return application
