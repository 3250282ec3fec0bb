"""The HTTP server under the front's app: uvicorn, with the limits of :mod:`mcpshare.http_limits` that it lacks.

uvicorn parses HTTP (httptools, the llhttp parser) and runs the ASGI app; it closes idle keep-alive connections, but
it gives a client any time it likes to send a request's head or body, accepts a head of any size (httptools keeps
every header it is sent), and, when the app answers before reading a request's body, either reads and discards that
body to its end or closes the socket at once (the client, still sending, then gets a reset instead of the answer).
:class:`GuardedProtocol`, uvicorn's httptools protocol, adds per connection:

* a header timeout: a connection's first request head, and every later one from its first byte, must be complete
  within ``header_timeout`` (408, then closed);
* a header size limit (431, then closed), counted on the raw bytes while a head is incomplete, so a head that never
  ends is refused as soon as it passes the limit;
* a body timeout: a request body must be complete within ``body_timeout`` of its head (408, then closed);
* the connection caps of :class:`~mcpshare.http_limits.ConnectionGuard`;
* a lingering close when a response is complete before its request body: the front stops writing (FIN), discards
  what still arrives while it keeps coming (:data:`~mcpshare.http_limits.LINGER_IDLE` of silence, or
  :data:`~mcpshare.http_limits.LINGER_MAX` in all, ends it), then closes.

Each timer runs only while a head or body is actually incomplete at the end of a read, so a request that arrives
whole (the usual case) costs none. The body's size is bounded by the app as it reads it (uvicorn pauses reading
while the app has not taken what arrived).

It depends on the hooks of uvicorn's ``HttpToolsProtocol`` (``data_received``, the parser callbacks,
``on_response_complete``, its ``cycle``); the HTTP front tests drive every one of them over real sockets.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from mcpshare.http_limits import INVALID_REQUEST, LINGER_IDLE, LINGER_MAX, ConnectionGuard, HttpLimits, error_body

logger = logging.getLogger("mcpshare.http")


class FrontConfig(uvicorn.Config):
    """uvicorn's config plus the front's limits and connection guard, which every :class:`GuardedProtocol` reads."""

    def __init__(self, app: Any, *, limits: HttpLimits, guard: ConnectionGuard) -> None:
        self.limits = limits
        self.guard = guard
        super().__init__(
            app,
            http=GuardedProtocol,
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,  # no X-Forwarded-For: the guard knows connections by their real peer address
            timeout_keep_alive=limits.keep_alive,  # type: ignore[arg-type]  # uvicorn hints int; call_later takes float
        )


class GuardedProtocol(HttpToolsProtocol):
    """One HTTP connection of the front: uvicorn's, with the limits of the module doc."""

    def __init__(self, config: FrontConfig, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = config.limits
        self.guard = config.guard
        self.peer: Any = None
        self._in_head = True  # between two requests, or receiving a request's head (else: its body)
        self._head_bytes = 0
        self._timer: asyncio.TimerHandle | None = None  # the head's or the body's clock, while one is incomplete
        self._draining = False
        self._last_read = 0.0

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.peer = self.client
        self._start_timer(self.limits.header_timeout, self._head_timed_out)  # a connection must say something
        self.guard.opened(self.peer, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.guard.closed(self.peer)
        super().connection_lost(exc)

    def evict(self) -> None:
        """Closed by the guard: too many connections without a token, and this is the oldest."""
        self._draining = True
        self._cancel_timer()
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._draining:
            self._last_read = self.loop.time()
            return  # answered and closing: what still arrives is discarded
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._draining:
            return
        if self._in_head:
            if self._head_bytes > self.limits.max_header:
                self._refuse(431, self._head_too_large())
            elif self._head_bytes and self._timer is None:
                self._start_timer(self.limits.header_timeout, self._head_timed_out)  # a head begun, not finished
        elif self._timer is None:
            self._start_timer(self.limits.body_timeout, self._body_timed_out)  # a body begun, not finished

    # ------------------------------------------------------------------ parser callbacks

    # Once refused, the rest of the bytes being parsed must reach no app: the callbacks that start or feed one stop.

    def on_headers_complete(self) -> None:
        if self._draining:
            return
        size = len(self.url) + sum([len(name) + len(value) + 4 for name, value in self.headers])
        if size > self.limits.max_header:
            self._refuse(431, self._head_too_large())
            return
        self._cancel_timer()
        self._in_head = False
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = _OneWrite(self.transport, self._answered_early)  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        if not self._draining:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._draining:
            return
        self._cancel_timer()
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._draining:  # not after an answer of ours: the parser may stumble on what follows a refused head
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        if self._draining:
            return  # closing already (an answer that said so: see _answered_early)
        cycle = self.cycle  # the latest request parsed: the one that completed, unless an earlier one (pipelining)
        if cycle is not None and isinstance(cycle.transport, _OneWrite):
            cycle.transport.flush()  # a response without a body write (HEAD)
        if not self._in_head and cycle is not None and cycle.response_complete and not self.transport.is_closing():
            # The app answered before the request's body ended (a 413, a 401, a 406...): this connection cannot
            # carry another request, and closing it now would reset it under a client that is still sending.
            self._linger()
            return
        super().on_response_complete()

    def _answered_early(self) -> None:
        """uvicorn closes after a response that says ``Connection: close`` (an answer before the body was read):
        a lingering close if the request's body is still arriving, else at once."""
        if self._draining:
            return
        if self._in_head:
            self.transport.close()
        else:
            self._linger()

    # ------------------------------------------------------------------ limits

    def _start_timer(self, delay: float, callback: Any) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._draining or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is under way (pipelining): the next head's clock starts with its next bytes
        self.guard.count("header timeout")
        limit = self.limits.header_timeout
        self._refuse(408, f"the request head did not arrive within {limit:g} s (--http-header-timeout)")

    def _body_timed_out(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self._draining or self.transport.is_closing() or cycle is None or cycle.response_started:
            return  # answered already: the lingering close bounds the rest
        self.guard.count("body timeout")
        # The app, waiting for the rest of the body, gets a disconnect; what it might still send goes nowhere.
        cycle.disconnected = True
        cycle.message_event.set()
        limit = self.limits.body_timeout
        self._refuse(408, f"the request body did not arrive within {limit:g} s (--http-body-timeout)")

    def _head_too_large(self) -> str:
        self.guard.count("head too large")
        return f"the request head is larger than the limit of {self.limits.max_header} bytes (--http-max-header)"

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request that cannot reach the app (its head or body incomplete, or too large); then close."""
        body = error_body(INVALID_REQUEST, message)
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self._linger(LINGER_IDLE)  # a slow or oversized head: no upload worth waiting for

    def _linger(self, longest: float = LINGER_MAX) -> None:
        """Stop writing (the client reads the answer, then EOF), discard what it still sends, close once it stops
        (or after ``longest`` seconds)."""
        self._draining = True
        self._cancel_timer()
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._last_read = now = self.loop.time()
        self._check_linger(now + longest)

    def _check_linger(self, deadline: float) -> None:
        now = self.loop.time()
        if self.transport.is_closing():
            return
        if now >= deadline or now - self._last_read >= LINGER_IDLE:
            self.transport.close()
            return
        self.loop.call_later(min(LINGER_IDLE / 2, deadline - now), self._check_linger, deadline)


class _OneWrite:
    """The transport as one response's ASGI cycle sees it: the response head is held back until the first bytes of
    its body, so that an answer leaves in one write (one TCP segment, one wake-up of the client) instead of two.

    uvicorn writes the head as soon as the app starts its response; the front's app always sends the body (or its
    first part, or an empty first chunk for a stream) right after. Anything else (a 100 Continue) passes at once,
    and the head never waits for more than the next write. A close goes to the protocol, which lingers if the
    request's body is still arriving.
    """

    __slots__ = ("_close", "_held", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, close: Any) -> None:
        self._transport = transport
        self._close = close
        self._held = b""
        self._started = False

    def write(self, data: bytes) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        elif not self._started and not data.startswith(b"HTTP/1.1 1"):
            self._started = True
            self._held = data
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._held:
            self.write(b"")

    def close(self) -> None:
        """uvicorn's close after a response: the protocol decides how (``GuardedProtocol._answered_early``)."""
        self.flush()
        self._close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
