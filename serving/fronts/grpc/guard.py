"""What every unary gRPC method gets before servicer code runs (a server interceptor, :class:`RequestGuard`):

- bytes that are not the request message the method takes: ``INVALID_ARGUMENT``, not ``INTERNAL``.
  grpcio parses a request with the method's deserializer before any servicer code runs, and answers a
  parse failure with ``INTERNAL "Exception deserializing request!"``: a server-side error class for
  what is the client's mistake. The deserializer is wrapped so that a parse failure reaches the method
  as a marker (:class:`Undecodable`), answered with ``INVALID_ARGUMENT`` naming the method and the
  parser's error;
- a deadline for the request message. grpcio hands a unary call to a server thread as soon as its
  headers arrive, and that thread then waits for the message: a client sending headers and nothing
  else held a thread for ever (three such calls took every thread of a 3-thread server; one
  connection of eight, the defaults'). The method is served as stream-unary so that the wait is
  watched: a call whose message has not arrived ``message_timeout_s`` after the call did
  (``--grpc_message_timeout_seconds``) is cancelled (the client sees ``CANCELLED``), and a call that
  waited in the queue past its deadline gets ``QUEUE_GRACE_S`` for a message already sent. It is a
  bound on the whole message (grpcio shows no progress before the message is complete), so it is a
  flag of its own, not REST's pause bound.

Imported only with the gRPC front.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

QUEUE_GRACE_S = 0.1  # a call that got its thread after its deadline: its message, if sent, is read by then
_TICK_S = 0.1  # how often the watchdog looks (the deadline is seconds; a tenth more does not matter)


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


class _Watchdog:
    """Cancels the calls whose request message is late: one daemon thread for every server of the process,
    looking every ``_TICK_S``. Watching a call is a dict write under a lock (the thread is never woken
    per call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[float, Any]] = {}
        self._count = 0
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, context: Any) -> int:
        with self._lock:
            self._count += 1
            key = self._count
            self._waiting[key] = (deadline, context)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rnnkit-grpc-message-deadline", daemon=True)
                self._thread.start()
        return key

    def done(self, key: int) -> None:
        with self._lock:
            self._waiting.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(_TICK_S)
            if not self._waiting:
                continue
            now = time.monotonic()
            with self._lock:
                late = [key for key, (deadline, _) in self._waiting.items() if deadline <= now]
                contexts = [self._waiting.pop(key)[1] for key in late]
            for context in contexts:
                context.cancel()

    def forget_thread(self) -> None:
        """In a forked child the thread is gone (only the forking thread survives a fork): start another."""
        self._lock = threading.Lock()
        self._waiting.clear()
        self._thread = None


WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=WATCHDOG.forget_thread)


def _guarded(method: str, behaviour: Callable[[Any, Any], Any], deadline: float) -> Callable[[Iterator[Any], Any], Any]:
    """`behaviour` (a method taking one request message) as one taking the stream of them, the first within
    `deadline`. Its answer, one message or a stream of them, is returned as it is."""

    def run(requests: Iterator[Any], context: Any) -> Any:
        key = WATCHDOG.watch(max(deadline, time.monotonic() + QUEUE_GRACE_S), context)
        try:
            request = next(requests, None)  # raises once the watchdog has cancelled the call
        finally:
            WATCHDOG.done(key)
        if request is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method} takes one request message; the call had none")
        if isinstance(request, Undecodable):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request bytes of {method} do not parse as its request message: {request.error}",
            )
        return behaviour(request, context)

    return run


class RequestGuard(grpc.ServerInterceptor):
    """The interceptor both gRPC fronts install (see the module's text)."""

    def __init__(self, message_timeout_s: float) -> None:
        self.message_timeout_s = message_timeout_s

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        arrived = time.monotonic()  # called when the call arrives, before it waits for a thread
        handler = continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        deadline = arrived + self.message_timeout_s
        if handler.unary_unary is not None:
            return handler._replace(
                request_streaming=True,
                request_deserializer=_lenient(handler.request_deserializer),
                unary_unary=None,
                stream_unary=_guarded(details.method, handler.unary_unary, deadline),
            )
        return handler._replace(  # one request, a stream of answers (health's Watch)
            request_streaming=True,
            request_deserializer=_lenient(handler.request_deserializer),
            unary_stream=None,
            stream_stream=_guarded(details.method, handler.unary_stream, deadline),
        )
