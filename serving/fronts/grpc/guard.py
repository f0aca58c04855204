"""Bytes that are not the request message a gRPC method takes: ``INVALID_ARGUMENT``, not ``INTERNAL``.

grpcio parses a request with the method's deserializer before any servicer code runs, and answers a
parse failure with ``INTERNAL "Exception deserializing request!"``: a server-side error class for what
is the client's mistake. :class:`UndecodableRequests` (a server interceptor) wraps every unary
method's deserializer so a parse failure reaches the method as a marker, which it answers with
``INVALID_ARGUMENT`` naming the method and the parser's error. Imported only with the gRPC front.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


class Undecodable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # protobuf raises DecodeError (and others for odd inputs)
            return Undecodable(error)

    return decode


def _refusing(method: str, behaviour: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def run(request: Any, context: Any) -> Any:
        if isinstance(request, Undecodable):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request bytes of {method} do not parse as its request message: {request.error}",
            )
        return behaviour(request, context)

    return run


class UndecodableRequests(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        return handler._replace(
            request_deserializer=_lenient(handler.request_deserializer),
            unary_unary=_refusing(details.method, handler.unary_unary),
        )
