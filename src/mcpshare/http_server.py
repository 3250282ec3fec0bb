"""The HTTP server under the front's app: uvicorn with the limits of :mod:`mcpshare.http_limits` that it lacks.

uvicorn parses HTTP (httptools, the llhttp parser) and runs the ASGI app; it closes idle keep-alive connections, but
it gives a client any time it likes to send a request's head, accepts a head of any size (httptools keeps every
header it is sent), and, when the app answers before reading a request's body, either reads and discards that body
to its end or closes the socket at once (the client, still sending, then gets a reset instead of the answer).
:class:`GuardedProtocol`, uvicorn's httptools protocol, adds per connection:

* a header timeout: a connection's first request head, and every later one from its first byte, must be complete
  within ``header_timeout`` (408, then closed);
* a header size limit (431, then closed), counted on the raw bytes while a head is incomplete, so a head that never
  ends is refused as soon as it passes the limit;
* the connection caps of :class:`~mcpshare.http_limits.ConnectionGuard`;
* a lingering close when a response is complete before its request body: the front stops writing (FIN), discards
  what still arrives for at most :data:`~mcpshare.http_limits.LINGER_SECONDS`, then closes.

:class:`BodyLimits`, an ASGI middleware, bounds each request body in size and time.

It depends on the hooks of uvicorn's ``HttpToolsProtocol`` (``data_received``, the parser callbacks,
``on_response_complete``); the HTTP front tests drive every one of them over real sockets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import anyio
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from mcpshare.http_limits import (
    INVALID_REQUEST,
    LINGER_SECONDS,
    App,
    ConnectionGuard,
    HttpLimits,
    Message,
    Receive,
    Scope,
    Send,
    error_body,
    send_error,
)

logger = logging.getLogger("mcpshare.http")


class FrontConfig(uvicorn.Config):
    """uvicorn's config plus the front's limits and connection guard, which every :class:`GuardedProtocol` reads."""

    def __init__(self, app: Any, *, limits: HttpLimits, guard: ConnectionGuard, **kwargs: Any) -> None:
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
            timeout_keep_alive=limits.keep_alive,  # type: ignore[arg-type]  # uvicorn hints int; call_later takes float
            **kwargs,
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
        self._head_timer: asyncio.TimerHandle | None = None
        self._draining = False

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.peer = self.client
        self._start_head_timer()
        self.guard.opened(self.peer, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self.guard.closed(self.peer)
        super().connection_lost(exc)

    def evict(self) -> None:
        """Closed by the guard: too many connections without a token, and this is the oldest."""
        self._draining = True
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return  # answered and closing: what still arrives is discarded
        if self._in_head:
            if self._head_timer is None:
                self._start_head_timer()  # the first byte of a new request on a kept-alive connection
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.limits.max_header and not self._draining:
            self._refuse_head(431, self._head_too_large())

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        if not self._draining:
            super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._draining:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._draining:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._draining:
            return
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header:
            self._refuse_head(431, self._head_too_large())
            return
        self._cancel_head_timer()
        self._in_head = False
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._draining:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._draining:
            return
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._draining:  # not after an answer of ours: the parser may stumble on what follows a refused head
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        if not self._in_head and not self.transport.is_closing():
            # The app answered before the request's body ended (a 413, a 401, a 406...): this connection cannot
            # carry another request, and closing it now would reset it under a client that is still sending.
            self._linger()
            return
        super().on_response_complete()

    # ------------------------------------------------------------------ limits

    def _start_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._draining or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is under way (pipelining): the next head's clock starts when its first byte comes
        self.guard.count("header timeout")
        self._refuse_head(
            408, f"the request head did not arrive within {self.limits.header_timeout:g} s (--http-header-timeout)"
        )

    def _head_too_large(self) -> str:
        self.guard.count("head too large")
        return f"the request head is larger than the limit of {self.limits.max_header} bytes (--http-max-header)"

    def _refuse_head(self, status: int, message: str) -> None:
        """Answer a request whose head is not (or not acceptably) complete, before any app sees it; then close."""
        self._cancel_head_timer()
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
        self._linger()

    def _linger(self) -> None:
        """Stop writing (the client reads the answer, then EOF), discard what it still sends, close soon."""
        self._draining = True
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


# ---------------------------------------------------------------------------------------------- request bodies


class _BodyRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BodyLimits:
    """ASGI middleware: a request body larger than ``max_body`` gets 413, one not received within ``body_timeout``
    gets 408.

    A declared ``Content-Length`` over the limit is answered before a byte of the body is read; a chunked body is
    counted as it arrives and refused the moment it passes the limit. Nothing beyond the limit is kept: uvicorn
    pauses reading while the app has not taken what arrived, and the protocol discards the rest after the answer
    (:data:`LINGER_SECONDS`).
    """

    def __init__(self, app: App, limits: HttpLimits, guard: ConnectionGuard) -> None:
        self.app = app
        self.limits = limits
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1  # uvicorn's parser refuses such a request before it gets here
                if declared > limit:
                    self.guard.count("body too large")
                    await send_error(send, 413, _too_large(limit, declared))
                    return
                break
        received = 0
        deadline = time.monotonic() + self.limits.body_timeout
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            with anyio.move_on_after(deadline - time.monotonic()) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                self.guard.count("body timeout")
                raise _BodyRejected(
                    408, f"the request body did not arrive within {self.limits.body_timeout:g} s (--http-body-timeout)"
                )
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    self.guard.count("body too large")
                    raise _BodyRejected(413, _too_large(limit, None))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyRejected as exc:
            if started:
                raise
            await send_error(send, exc.status, str(exc))


def _too_large(limit: int, declared: int | None) -> str:
    size = f" ({declared} bytes)" if declared is not None else ""
    return f"the request body{size} is larger than the limit of {limit} bytes (--http-max-body)"
