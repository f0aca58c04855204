"""Connection-level limits of the REST port, enforced around uvicorn's httptools protocol.

uvicorn bounds neither the header block (llhttp, the parser httptools wraps, accepts any size)
nor the time a client may take to send it, and its keep-alive timer only starts after a response:
an idle connection that never sends a request, or a slowloris one that sends a byte at a time,
stays open forever and holds a file descriptor. This protocol subclass adds, per connection:

- ``max_header_bytes``: the request line and headers of one request; beyond it, 431 and close. Raw bytes
  are counted up to the blank line (a header still arriving is held by the parser), and the parsed URL
  and fields of every message as well: those also see the requests pipelined behind another in one read,
  a header block after leading blank lines, and trailers after a chunked body, which count with the
  headers;
- ``header_timeout_s``: from the connection (or the end of the previous response) to the end of
  the headers; beyond it the connection is closed (this covers idle connections that send nothing);
- ``body_timeout_s``: the longest pause while a declared body is still arriving (a Content-Length
  longer than the body sent), and ``min_body_rate``: the whole body must arrive within one pause plus
  its bytes over this rate (a slow drip within every pause is not a way to hold a connection forever);
  beyond either, 408 and close. A pipelined request's body is timed from when its turn comes (the
  server stops reading while an earlier answer is owed). A chunked body's framing (chunk-size lines and
  the extensions the parser drops) may take at most ``FRAMING_PER_BYTE`` bytes per byte of data plus
  ``FRAMING_SLACK_BYTES``: 400;
- ``max_connections``: open connections at once. A new connection on a full port first evicts one
  that owes nothing (never asked, or between requests), then the connection whose request body has
  averaged the fewest bytes a second after one pause's grace (408: bodies just above ``min_body_rate``
  cannot hold every slot either). When none can give way, a new connection is still read, but only a
  health or readiness request (``HEALTH_PATHS``) is served on it, anything else gets 503 and the
  connection closes: liveness and readiness answer while the data traffic saturates the port
  (``health_reserve`` more are accepted for them; beyond that a connection is closed at once).

Keep-alive after a response stays uvicorn's (``timeout_keep_alive``). A request refused while an earlier
answer on the same connection is still owed (pipelined behind it) cannot be answered in order: the connection
is closed. A request answered before its body has all arrived (a 413 on its Content-Length) has the rest of
its body read and dropped so that the connection serves the next request, but only for one pause after the
answer: a rest still arriving then closes the connection, instead of reading a body nobody wants at the
client's pace.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from rnnkit_serving.config.connections import FLAGS, ConnectionLimits

# paths answered even on a connection beyond --rest_max_connections (read-only, cheap)
HEALTH_PATHS = re.compile(rb"^/(v2/health/(live|ready)|v2/models/[^/]+(/versions/[^/]+)?/ready|v1/models/[^/:]+)$")


_on_url, _on_header = HttpToolsProtocol.on_url, HttpToolsProtocol.on_header  # called once a field: no super() lookup
LINGER_SECONDS = 1.0  # after refusing a request, unread bytes are drained this long before closing
LINGER_BYTES = 64 << 10
MOST_LINGERING = 64  # sockets lingering at once; beyond it a refused connection closes without the linger
# A chunked body's framing (chunk-size lines, extensions) may take at most FRAMING_PER_BYTE bytes per byte of
# data, plus FRAMING_SLACK_BYTES: chunk extensions are read and dropped by the parser, so without a bound a client
# could stream them for ever at any rate without its body ever growing toward --max_request_bytes (as Node.js's
# CVE-2024-22019). One-byte chunks take 5 ("1\r\n", "\r\n"; Triton's QA sends 65 536 of them). The slack also
# covers the next request's bytes that come in the same read as a body's end.
FRAMING_PER_BYTE = 8
FRAMING_SLACK_BYTES = 1 << 20


# what uvicorn logs, once a request, for requests any client can send: malformed HTTP, an upgrade it cannot serve
CLIENT_WARNINGS = ("Invalid HTTP request received.", "Unsupported upgrade request.", "No supported WebSocket library")
CLIENT_WARNING_EVERY_S = 60.0


class ClientWarnings(logging.Filter):
    """Lets each of uvicorn's per-request warnings about a client's request (``CLIENT_WARNINGS``) through at most
    once every `every_s` seconds; the next one that passes says how many were dropped meanwhile. Without it any
    client could write a log line per malformed request, as fast as it can send them (a disk filled, the
    server's own messages drowned)."""

    def __init__(self, every_s: float = CLIENT_WARNING_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s, self._clock = every_s, clock
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if not isinstance(message, str) or not message.startswith(CLIENT_WARNINGS):
            return True
        key, now = message[:30], self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._last[key] = now
        dropped = self._dropped.pop(key, 0)
        if dropped and last is not None:
            record.msg = f"{message} ({dropped} more like it in the last {now - last:.0f} s were not logged)"
        return True


CLIENT_WARNINGS_FILTER = ClientWarnings()


def _reply(transport: asyncio.BaseTransport, status: bytes, message: str) -> None:
    """Answer `status` with a JSON error and end the connection. The write side is shut first and the
    socket closed only later (see `lingering`): closing with unread request bytes would make the
    kernel send a reset, and the client would lose the answer."""
    body = ('{"error": "' + message.replace('"', "'") + '"}').encode()
    head = (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    # uvloop's transports implement asyncio's interface without subclassing it: no isinstance here
    writer = cast(asyncio.WriteTransport, transport)
    if not writer.is_closing():
        writer.write(head + body)
        if writer.can_write_eof():
            writer.write_eof()
            return
    writer.close()


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """An ``HttpToolsProtocol`` subclass bound to `limits` (and uvicorn's per-request warnings about clients'
    requests rate-limited, :class:`ClientWarnings`)."""
    uvicorn_log = logging.getLogger("uvicorn.error")
    if CLIENT_WARNINGS_FILTER not in uvicorn_log.filters:
        uvicorn_log.addFilter(CLIENT_WARNINGS_FILTER)

    # connections that owe nothing, oldest first: never asked anything (or still sending headers), and
    # kept alive between requests. When the port is full a new connection evicts the oldest of them
    # (fresh ones first) instead of being refused: idle and slowloris connections cannot hold every slot
    # against clients that reconnect or probes that open a connection each time.
    fresh: dict[GuardedHttpToolsProtocol, None] = {}
    between_requests: dict[GuardedHttpToolsProtocol, None] = {}  # also: answered early, the body's rest arriving
    # connections whose request body is arriving (and not yet answered). When nothing above is left to evict, the
    # one whose body has averaged the fewest bytes a second gives way, once it has had one pause's grace: slow
    # bodies just above --min_body_rate cannot hold every slot against new clients either.
    receiving: dict[GuardedHttpToolsProtocol, None] = {}
    # refused (or answered early and not read on), draining before they close: they hold no slot, so a new
    # connection is not taken for one beyond --max_connections while they linger (at most MOST_LINGERING)
    lingering: set[GuardedHttpToolsProtocol] = set()
    # a sibling worker's hops on this worker's private Unix socket (--server_workers): they hold no public slot and
    # are never evicted nor refused for one (a flood of the public port must not fail a relayed sequence chunk)
    private_hops: set[GuardedHttpToolsProtocol] = set()

    def evict_one() -> bool:
        for waiting in (fresh, between_requests):
            for victim in waiting:
                del waiting[victim]
                victim._disarm()
                victim.transport.close()
                return True
        now = asyncio.get_running_loop().time()
        past_grace = [body for body in receiving if now - body._body_started >= limits.body_timeout_s]
        if not past_grace:
            return False
        slowest = min(past_grace, key=lambda body: body._body_bytes / (now - body._body_started))
        seconds = now - slowest._body_started
        slowest._refuse(
            b"408 Request Timeout",
            f"the server holds {limits.max_connections} open connections ({FLAGS['max_connections']}) and a new "
            f"one came while this request's body was the slowest arriving: {slowest._body_bytes} bytes in "
            f"{seconds:.1f} s; send it faster, or again later",
        )
        return True

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_bytes = 0
        _parsed_bytes = 0  # the URL and header fields (trailers too) of the current message, as parsed
        _body_started = 0.0
        _body_bytes = 0
        _rate_bound = False  # the body's deadline is its rate's (not its pause's)
        _evictable = True  # False: a private hop (see `private_hops`)
        _body_parsed = 0  # body bytes the parser has handed on (without chunk framing)
        _drain_until = 0.0  # > 0: answered early, the rest of the body must have arrived by then
        _header_tail = b""  # the last bytes of the header block so far (a CRLFCRLF may span two reads)
        _in_headers = True
        _reserve = False
        _lingering = 0  # > 0: refused; bytes drained since (the socket closes after LINGER_SECONDS)
        # One deadline at a time (headers, body pause, linger) and what happens when it passes. Moving or clearing
        # it is an attribute write: the loop timer behind it is only rescheduled when the deadline comes *sooner*
        # than the timer, and otherwise fires, finds the deadline moved and re-arms itself for it. A kept-alive
        # connection thus costs no timer operation per request (it was four: arm and cancel, twice).
        _deadline: float | None = None
        _expire: Any = None
        _timer: asyncio.TimerHandle | None = None
        _timer_at = 0.0

        def _refuse(self, status: bytes, message: str) -> None:
            self._disarm()
            receiving.pop(self, None)
            cycle = self.cycle
            # no answer: the request refused was answered early already (a 413 say, then its body or trailers were
            # too slow or too large: none is owed twice), or an earlier request's answer is still owed (or this
            # one's has begun), so that no answer fits in order
            answered = cycle is not None and cycle.response_complete and not self._in_headers
            unanswerable = (
                cycle is not None
                and not cycle.response_complete
                and (self.pipeline or self._in_headers or cycle.response_started)
            )
            if answered or unanswerable:
                self._stop_reading()
                self.transport.close()
                return
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the app still reads this request's body: it ends now
                cycle.message_event.set()
            _reply(self.transport, status, message)
            if not self.transport.is_closing():
                self._linger()

        def _stop_reading(self) -> None:
            """From now on what arrives is drained, not parsed, and the connection holds no slot."""
            self._lingering = 1
            if self._evictable:
                lingering.add(self)

        def _linger(self) -> None:
            """The answer is written: read and drop what comes for LINGER_SECONDS (so that closing does not reset
            a connection whose client is still sending, and lose the answer), then close."""
            self._stop_reading()
            if len(lingering) > MOST_LINGERING:  # a flood of refusals does not pile up lingering sockets
                self.transport.close()
            else:
                self._arm(LINGER_SECONDS, self.transport.close)

        def _arm(self, seconds: float, callback: Any) -> None:
            if not seconds > 0:
                self._deadline = None
                return
            deadline = self.loop.time() + seconds
            self._deadline, self._expire = deadline, callback
            if self._timer is None or self._timer_at > deadline:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer, self._timer_at = self.loop.call_at(deadline, self._on_timer), deadline

        def _disarm(self) -> None:
            self._deadline = None  # the timer, if any, fires to nothing and stops

        def _on_timer(self) -> None:
            self._timer = None
            deadline = self._deadline
            if deadline is None:
                return
            if self.loop.time() < deadline:  # moved later since the timer was set
                self._timer, self._timer_at = self.loop.call_at(deadline, self._on_timer), deadline
                return
            self._deadline = None
            self._expire()

        def _stop_timer(self) -> None:
            self._deadline = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if isinstance(transport.get_extra_info("sockname"), str):  # a Unix socket: a sibling worker's hop
                super().connection_made(transport)
                self._evictable = False
                private_hops.add(self)
                self._start_waiting()
                return
            open_now = len(self.connections) - len(lingering) - len(private_hops)  # neither holds a public slot
            if open_now >= limits.max_connections and evict_one():
                open_now = limits.max_connections - 1  # the evicted one's slot (closed, or lingering)
            if open_now >= limits.max_connections + limits.health_reserve:
                transport.close()
                return
            super().connection_made(transport)
            # every slot serves a request in flight: this connection may ask for health or readiness only
            self._reserve = open_now >= limits.max_connections
            self._start_waiting()
            fresh[self] = None

        def _start_waiting(self) -> None:
            self._in_headers, self._header_bytes, self._header_tail = True, 0, b""
            self._arm(limits.header_timeout_s, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()  # nothing was asked: no answer owed

        def _arm_body(self) -> None:
            self._body_started, self._body_bytes, self._rate_bound = self.loop.time(), 0, False
            self._arm(limits.body_timeout_s, self._body_too_slow)
            if self._evictable:
                receiving[self] = None

        def _body_too_slow(self) -> None:
            if self._rate_bound:
                seconds = self.loop.time() - self._body_started
                message = (
                    f"the request body arrived slower than {limits.min_body_rate:g} bytes a second: "
                    f"{self._body_bytes} bytes in {seconds:.1f} s (limit {FLAGS['min_body_rate']}, after "
                    f"{limits.body_timeout_s:g} s of grace)"
                )
            else:
                message = (
                    f"the request body stopped arriving for {limits.body_timeout_s:g} s before its declared "
                    f"Content-Length (limit {FLAGS['body_timeout_s']})"
                )
            self._refuse(b"408 Request Timeout", message)

        def _framing_too_large(self) -> None:
            self._refuse(
                b"400 Bad Request",
                f"the chunked body's framing (chunk sizes and extensions) took {self._body_bytes - self._body_parsed} "
                f"bytes for {self._body_parsed} bytes of data; at most {FRAMING_PER_BYTE} bytes per byte of data "
                f"plus {FRAMING_SLACK_BYTES} bytes are read",
            )

        def _headers_too_large(self) -> None:
            self._refuse(
                b"431 Request Header Fields Too Large",
                f"the request line and headers exceed {limits.max_header_bytes} bytes ({FLAGS['max_header_bytes']})",
            )

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                self._lingering += len(data)
                if self._lingering > LINGER_BYTES:
                    self.transport.close()
                return
            if self._in_headers:
                # count up to the end of the headers only: a body that arrives in the same read is not a header.
                # The end is looked for across the previous read's last bytes, then in this read (never joined:
                # a read holds up to 64 KiB, the body's first part too)
                tail = self._header_tail
                across = (tail + data[:3]).find(b"\r\n\r\n") if tail else -1
                if across >= 0:  # the end straddles the two reads: the header bytes stop inside this one
                    self._header_bytes += across + 4 - len(tail)
                else:
                    end = data.find(b"\r\n\r\n")
                    self._header_bytes += len(data) if end < 0 else end + 4
                self._header_tail = data[-3:] if len(data) >= 3 else (tail + data)[-3:]
                if self._header_bytes > limits.max_header_bytes:
                    self._headers_too_large()
                    return
            elif self._deadline is not None:  # the body is arriving: its deadline moves later (no timer call)
                self._body_bytes += len(data)
                if self._body_bytes > (FRAMING_PER_BYTE + 1) * self._body_parsed + FRAMING_SLACK_BYTES:
                    self._framing_too_large()
                    return
                pause = self.loop.time() + limits.body_timeout_s
                rate = self._body_started + limits.body_timeout_s + self._body_bytes / limits.min_body_rate
                self._deadline, self._rate_bound = (rate, True) if rate < pause else (pause, False)
                if self._drain_until and self._deadline > self._drain_until:
                    self._deadline = self._drain_until
            super().data_received(data)

        def on_message_begin(self) -> None:
            if self._lingering:  # refused earlier in this read: the rest is drained, not parsed into requests
                return
            if not self._in_headers:
                self._start_waiting()
            self._parsed_bytes = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._parsed_bytes += len(url)
            if self._parsed_bytes > limits.max_header_bytes or self._lingering:
                self._over_parsed()
            else:
                _on_url(self, url)

        def on_header(self, name: bytes, value: bytes) -> None:
            # after the body: a trailer of a chunked request, counted with the headers. ": " and CRLF: + 4
            self._parsed_bytes += len(name) + len(value) + 4
            if self._parsed_bytes > limits.max_header_bytes or self._lingering:
                self._over_parsed()
            else:
                _on_header(self, name, value)

        def _over_parsed(self) -> None:
            """The message's parsed URL and fields went over the limit (or it was refused already)."""
            if not self._lingering:
                self._headers_too_large()

        def on_headers_complete(self) -> None:
            if self._lingering:
                return
            self._disarm()
            fresh.pop(self, None)
            between_requests.pop(self, None)
            if self._reserve and not HEALTH_PATHS.match(self.url.split(b"?", 1)[0]):
                self._refuse(  # still "in headers": the request refused is this one, which no cycle holds yet
                    b"503 Service Unavailable",
                    f"the server holds {limits.max_connections} open connections ({FLAGS['max_connections']}); "
                    "connections beyond it serve health and readiness only",
                )
                return
            self._in_headers = False
            earlier_owed = self.cycle is not None and not self.cycle.response_complete
            super().on_headers_complete()
            # until the body is complete (on_message_complete disarms; at once for a request without one). A
            # request pipelined behind an unanswered one waits, unread, for its turn: its body is timed from then
            self._body_parsed = 0
            if not earlier_owed:
                self._arm_body()

        def on_body(self, body: bytes) -> None:
            if not self._lingering:  # a refused request's body is drained, not handed on
                self._body_parsed += len(body)
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._lingering:
                return
            self._disarm()
            receiving.pop(self, None)
            self._drain_until = 0.0
            super().on_message_complete()
            # what arrives from now on is the next request's headers (not before: an early answer, a 413
            # say, can complete while the rest of this request's body is still arriving)
            self._in_headers, self._header_bytes, self._header_tail = True, 0, b""
            if self.cycle is not None and self.cycle.response_complete:  # answered early: now it waits
                self._await_next_request()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:  # a pipelined request's turn has come
                if not self._in_headers and self._deadline is None:  # its body is still to come: timed from now
                    self._arm_body()
                return
            if self._in_headers:  # the request was read to its end
                self._await_next_request()
            elif not self._lingering and not self.transport.is_closing():
                self._answered_early()

        def _answered_early(self) -> None:
            """The request was answered before its body had all arrived (a 413, a 404). The rest is read and dropped
            so that the connection serves the next request (the answer did not say it closes: a client may reuse
            the connection as soon as it has sent the body), but within one pause, not at the client's pace; a
            rest still arriving then closes the connection (as nginx's lingering_time)."""
            receiving.pop(self, None)
            # a client that asked "Expect: 100-continue" and got a final answer instead may send no body at all,
            # and then its next request, which would be read as this body: close, as RFC 9110 (10.1.1) allows
            if not (self.expect_100_continue and not self._body_parsed):
                self._drain_until = self.loop.time() + limits.body_timeout_s
                if self._deadline is None or self._deadline > self._drain_until:
                    self._arm(limits.body_timeout_s, self._body_too_slow)
                if self._evictable:  # it owes nothing: a new connection on a full port may take its slot
                    between_requests[self] = None
                return
            writer = cast(asyncio.WriteTransport, self.transport)
            if writer.can_write_eof():
                writer.write_eof()
            self._linger()

        def _await_next_request(self) -> None:
            if not self.transport.is_closing():
                # a request that starts must finish its headers in time (uvicorn's keep-alive timer runs too,
                # but reading any byte cancels it)
                self._arm(max(limits.header_timeout_s, self.timeout_keep_alive), self._headers_too_slow)
                if self._evictable:
                    between_requests[self] = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            fresh.pop(self, None)
            between_requests.pop(self, None)
            receiving.pop(self, None)
            lingering.discard(self)
            private_hops.discard(self)
            if self.transport is not None:
                super().connection_lost(exc)

    return GuardedHttpToolsProtocol
