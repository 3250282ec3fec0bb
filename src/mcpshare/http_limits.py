"""The limits of ``serve --http``: what one HTTP client may cost the broker.

The HTTP front is the one door of the broker that a client without a shim can knock on, so everything a hostile or
broken client could make it hold is bounded here: bytes (body and header size), time (header, body, keep-alive,
session idle) and connections. Connections are counted in two pools. A connection is *pending* until one of its
requests has shown the bearer token; pending ones are capped tighter, and when a new one arrives over that cap the
oldest pending one is closed, so a flood of clients that never authenticate cannot keep a client that does out.
*Authenticated* connections are capped too (503 beyond).

The limits are enforced below the app by the uvicorn protocol of :mod:`mcpshare.http_server`, and by the app
(:mod:`mcpshare.http_front`) as it reads a body (its size).

This module holds only the figures and the counting: the CLI shows these defaults in ``serve --help`` without
loading a server (nor anyio).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger("mcpshare.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

INVALID_REQUEST = -32600
LINGER_IDLE = 2.0
LINGER_MAX = 30.0
"""After answering a request whose body is still arriving (a 413, a 401 before the body), the front stops writing
and reads and discards what the client still sends, while it keeps sending: until LINGER_IDLE seconds pass without
a byte, or LINGER_MAX seconds in all (LINGER_IDLE in all after refusing a head: a slow one is not worth waiting
for). Closing at once would reset the connection, and a client that is still sending would never read the answer."""


@dataclass(frozen=True)
class HttpLimits:
    """Every bound of the HTTP front. The defaults suit a front on 127.0.0.1 used by a handful of agents."""

    max_body: int = 16 * 1024 * 1024
    """Bytes of one request body (413 beyond): the broker's line limit (``fdstream.DEFAULT_MAX_LINE_BYTES``), the
    largest message a server is sent."""
    max_header: int = 16 * 1024
    """Bytes of a request's head (request line and headers; 431 beyond)."""
    header_timeout: float = 10.0
    """Seconds a client has to send a request's head, from its connection or its first byte (then closed)."""
    body_timeout: float = 30.0
    """Seconds a client has to send a whole request body (408 beyond)."""
    keep_alive: float = 5.0
    """Seconds an idle keep-alive connection is kept between two requests."""
    max_connections: int = 256
    """Authenticated connections at once (a request that would make one more gets 503)."""
    max_pending: int = 32
    """Connections that have not shown the token yet; over this, the oldest of them is closed."""
    session_ttl: float = 600.0
    """Seconds an HTTP session with no request in flight and no open stream is kept; then it ends (its lease is
    released, so its server can stop) and its id gets 404. A client that holds its GET stream open never expires."""

    def __post_init__(self) -> None:
        for name in ("max_body", "max_header", "max_connections", "max_pending"):
            if getattr(self, name) < 1:
                raise ValueError(f"HTTP limit {name} must be at least 1, not {getattr(self, name)!r}")
        for name in ("header_timeout", "body_timeout", "keep_alive", "session_ttl"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HTTP limit {name} must be a positive number of seconds, not {getattr(self, name)!r}")


class Connection(Protocol):
    """What the guard needs of a connection: a way to close it."""

    def evict(self) -> None: ...


class ConnectionGuard:
    """Counts the front's connections as pending or authenticated, and enforces both caps (see the module doc).

    Connections are known by their peer address (what the ASGI scope's ``client`` holds), so the app can mark the
    connection of a request authenticated without reaching into the server.
    """

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.pending: dict[Any, Connection] = {}  # peer -> connection, oldest first
        self.authenticated: dict[Any, Connection] = {}
        self.rejected: dict[str, int] = {}
        """Rejections by reason, for ``status``: what the limits stopped since the broker started."""

    def count(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def opened(self, peer: Any, connection: Connection) -> None:
        self.pending[peer] = connection
        if len(self.pending) > self.limits.max_pending:
            oldest_peer = next(iter(self.pending))
            oldest = self.pending.pop(oldest_peer)
            self.count("pending connection evicted")
            logger.debug("HTTP: %d connections without a token; closed the oldest (%s)", len(self.pending), oldest_peer)
            oldest.evict()

    def closed(self, peer: Any) -> None:
        self.pending.pop(peer, None)
        self.authenticated.pop(peer, None)

    def authenticate(self, peer: Any) -> bool:
        """A request on ``peer``'s connection showed the token: count it as authenticated. False when that would
        exceed ``max_connections`` (the request is then refused and the connection stays pending)."""
        if peer in self.authenticated:
            return True
        connection = self.pending.get(peer)
        if connection is None:
            return True  # not a connection we track (closed meanwhile): nothing to count
        if len(self.authenticated) >= self.limits.max_connections:
            self.count("over the connection cap")
            return False
        del self.pending[peer]
        self.authenticated[peer] = connection
        return True

    def snapshot(self) -> dict[str, Any]:
        return {
            "authenticated": len(self.authenticated),
            "pending": len(self.pending),
            "max_connections": self.limits.max_connections,
            "max_pending": self.limits.max_pending,
            "rejected": dict(self.rejected),
        }


def error_body(code: int, message: str, request_id: Any = None) -> bytes:
    """A JSON-RPC error response, the body the spec allows on an HTTP error ("that has no id" when none is known)."""
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}).encode()


async def send_error(
    send: Send,
    status: int,
    message: str,
    *,
    code: int = INVALID_REQUEST,
    request_id: Any = None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    close: bool = False,
) -> None:
    """Answer with ``status`` and a JSON-RPC error body saying why. ``close`` for an answer given before the request's
    body was read: the connection cannot carry another request, and the client must not try (the server then closes
    it as :mod:`mcpshare.http_server` says, without cutting the answer)."""
    body = error_body(code, message, request_id)
    extra = (*headers, (b"connection", b"close")) if close else headers
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
