"""What both REST fronts share: their options, reading a bounded body, JSON replies and the error reply.

Exceptions become ``{"error": ...}`` replies here only (:func:`error_response`), through
:func:`rnnkit_serving.errors.wire_error`, so TF Serving and KServe routes answer errors alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

from rnnkit_serving.codecs.tfs import rest as rest_codec
from rnnkit_serving.core import defaults
from rnnkit_serving.core.identifiers import ascii_uint
from rnnkit_serving.errors import Code, ServingError, wire_error

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
TIMEOUT_FLAG = "--rest_api_timeout_in_ms"


@dataclass(frozen=True)
class RestOptions:
    timeout_ms: int = defaults.REST_API_TIMEOUT_MS  # --rest_api_timeout_in_ms; <= 0 disables
    max_body_bytes: int = defaults.MAX_REQUEST_BYTES  # --max_request_bytes
    workers: int = defaults.REST_WORKERS  # --rest_workers: threads running decode + runtime + encode
    # --rest_inline_ms: the loop runs a request itself when nothing else is in flight and its like took no longer
    inline_ms: float = defaults.REST_INLINE_MS


DEFAULT_REST = RestOptions()


class InWorker(Protocol):
    """How a route runs its job (the front's ``_in_worker``): under the REST timeout, in a worker thread or,
    for a model request that gives its `key`, possibly on the loop. `key` is (the model's metrics label, body
    bytes): the label is the name of a served model or one fixed label for every other name, so what the inline
    policy learns stays bounded whatever names clients send."""

    def __call__(self, job: Callable[[], Response], key: tuple[str, int] | None = None) -> Awaitable[Response]: ...


class JsonResponse(Response):
    """A JSON answer with its two headers built directly (Starlette's ``Response(...)`` renders and looks up
    its headers generically, every request): ``content-length``, then ``content-type``, as Starlette orders them."""

    media_type = JSON

    def __init__(self, text: str | bytes, status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.body = text.encode() if isinstance(text, str) else text
        self.raw_headers = [(b"content-length", str(len(self.body)).encode()), (b"content-type", _JSON_BYTES)]


class BinaryInferResponse(Response):
    """A KServe v2 binary-extension answer (`json_length`: the bytes of its JSON header; `header_name`: the
    lower-case name of the header that carries it), its three headers built directly, in the order Starlette's
    ``Response(..., headers=...)`` gives them."""

    media_type = OCTET_STREAM

    def __init__(self, body: bytes, json_length: int, header_name: bytes) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [
            (header_name, str(json_length).encode()),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", _OCTET_STREAM_BYTES),
        ]


_JSON_BYTES = JSON.encode()
_OCTET_STREAM_BYTES = OCTET_STREAM.encode()


def header_values(request: Request, names: tuple[bytes, ...]) -> list[str | None]:
    """The first value of each header in `names` (lower case, as ASGI servers give them), None when absent:
    one pass over the request's raw headers (a Starlette ``request.headers.get`` builds a header map and scans
    the list once a lookup)."""
    values: list[str | None] = [None] * len(names)
    for key, value in request.scope["headers"]:
        if key in names:
            index = names.index(key)
            if values[index] is None:
                values[index] = value.decode("latin-1")
    return values


def json_response(text: str | bytes, status_code: int = 200) -> Response:
    return JsonResponse(text, status_code)


def error_response(error: Exception) -> tuple[Response, Code]:
    """The reply for any exception raised while a request was handled, and its status code."""
    code, message, status = wire_error(error)
    return json_response(rest_codec.error_json(message), status), code


_CONTENT_LENGTH = (b"content-length",)


def _too_big(limit: int) -> ServingError:
    return ServingError(
        Code.RESOURCE_EXHAUSTED,
        f"Request body is larger than the server limit of {limit} bytes (--max_request_bytes)",
        http_status=413,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = header_values(request, _CONTENT_LENGTH)[0] or ""
    if declared and (ascii_uint(declared, limit) is None):
        raise _too_big(limit)
    # the ASGI messages themselves (Starlette's Request.stream is an async generator around the same loop)
    receive = request.receive
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: the client went away mid-body
            # not a server fault: counted as CANCELLED (HTTP 499) and not logged as an internal error, which
            # a client dropping connections mid-body could otherwise repeat to fill the log with tracebacks
            raise ServingError(
                Code.CANCELLED,
                f"the client closed the connection after {total} bytes of the request body "
                f"(Content-Length {declared or 'not given'})",
            )
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise _too_big(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
