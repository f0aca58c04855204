"""Status codes and the one place where exceptions become wire errors.

Codes are TensorFlow's ``tensorflow.error.Code`` (the same numbers as gRPC status codes);
the HTTP mapping is TF Serving's (``http_rest_api_util.cc``). Everything raised while a
request is handled goes through :func:`wire_error`: a :class:`ServingError` keeps its code
and text, any other exception is an internal error (logged with its traceback).
"""

from __future__ import annotations

import enum
import logging

log = logging.getLogger("rnnkit.serving")

# gRPC truncates long status messages the same way TF Serving does.
MAX_GRPC_MESSAGE = 1024


class Code(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A request failed for a reason the client should see: a status code and a message.

    ``http_status`` overrides the code's HTTP status where HTTP has a more precise answer
    than TF Serving's table (413 for an oversized body).
    """

    def __init__(self, code: Code, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


class ValidationError(ServingError, ValueError):
    """Inputs that do not match the model's signature or the server's limits (INVALID_ARGUMENT)."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.INVALID_ARGUMENT, message)


class ModelLoadError(ServingError, RuntimeError):
    """A version directory could not be loaded (missing files, unreadable manifest, runtime error)."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.FAILED_PRECONDITION, message)


def invalid_argument(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, message)


def wire_error(error: BaseException) -> tuple[Code, str, int]:
    """(status code, message, HTTP status) for any exception raised while handling a request."""
    if isinstance(error, ServingError):
        return error.code, error.message, error.http_status or HTTP_STATUS[error.code]
    log.exception("internal error while handling a request", exc_info=error)
    message = f"Internal error: {type(error).__name__}: {error}"
    return Code.INTERNAL, message, HTTP_STATUS[Code.INTERNAL]


def grpc_message(message: str) -> str:
    if len(message) <= MAX_GRPC_MESSAGE:
        return message
    return message[:MAX_GRPC_MESSAGE] + "...TRUNCATED"
