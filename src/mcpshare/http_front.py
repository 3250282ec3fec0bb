"""``mcpshare serve --http PORT``: a Streamable HTTP front (MCP 2025-11-25) on 127.0.0.1, for clients that speak
HTTP and so need no shim process.

One endpoint per configured server, ``/mcp/<server>``. Each HTTP session (``MCP-Session-Id``) holds one pool lease,
like a shim connection, from the broker's own pool, so HTTP and shim clients share processes and follow the same
routing rules (the mux attributes every server message to one session). Within a session this module only decides
which open HTTP response a message goes on: a request's answer, its progress and a server request made while it is
the session's only request in flight go back on that request's response; anything else on the session's GET
stream, when one is open.

The transport, section by section of the spec ("Transports > Streamable HTTP"):

* Sending messages to the server: one JSON-RPC message per POST. ``Accept`` must list ``application/json`` and
  ``text/event-stream`` (else 406), the body must be ``application/json`` (else 415) and a JSON-RPC message (else
  400). A notification or a response gets 202 and no body. A request gets ``application/json`` when its answer is
  the first message for it (a plain call: the client needs no SSE parser), else an SSE stream that carries what
  comes first (its progress, a server request made while it is the session's only request) and ends with the
  answer. Messages that relate to no open request wait for the GET stream.
* Listening for messages from the server: GET (``Accept: text/event-stream``, else 406) opens the session's stream;
  one per session (409 for a second one). No response goes on it; there are no event ids (no resumption).
* Session management: the id comes with the InitializeResult; a request without one gets 400, an unknown or
  expired one 404; DELETE ends the session (204).
* Protocol version header: a version this front does not serve, or another than the session's, gets 400; a
  request without the header is taken to be of the session's version.
* 2026-07-28 (stateless): a request with that version in its header or its ``_meta`` envelope needs no session:
  it is answered on its own POST, through a lease shared by the stateless requests of that endpoint (see
  :class:`StatelessSession`); a question its call asks comes back in its result (``input_required``).
* Security warning: an ``Origin`` or ``Host`` that is not this loopback front gets 403 (DNS rebinding); every
  request needs the bearer token kept in a 0600 file (401 with ``WWW-Authenticate: Bearer``, the same answer for a
  wrong token as for none).

The limits (:mod:`mcpshare.http_limits`) are enforced below this app by the uvicorn protocol
(:mod:`mcpshare.http_server`: head size, timeouts, connections), and here as a body is read (its size). The app is
plain ASGI: no framework work between a POST and the lease.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from mcpshare.http_limits import ConnectionGuard, HttpLimits, Receive, Scope, Send, send_error
from mcpshare.mux import SESSION_BUFFER_BYTES, decode, encode, error_response
from mcpshare.pool import BackendPool, Lease
from mcpshare.sources import ConfigSource, HelloError, server_config

logger = logging.getLogger("mcpshare.http")

PARSE_ERROR = -32700
INTERNAL_ERROR = -32603
CONNECTION_CLOSED = -32000
ENDPOINT_PREFIX = "/mcp/"
METRICS_PATH = "/metrics"
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # a reverse proxy in front must not hold events back
]
_ALLOW = (b"allow", b"GET, POST, DELETE")


def load_or_create_token(path: str) -> str:
    """The HTTP bearer token: kept in a 0600 file, reused across restarts so clients' configs stay valid."""
    try:
        with open(path, encoding="ascii") as file:
            token = file.read().strip()
        if len(token) >= 32:
            os.chmod(path, 0o600)
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(token + "\n")
    return token


def bind_http(port: int) -> socket.socket:
    """Bind 127.0.0.1:PORT before anything else starts, so a port in use is a plain, early error."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    return sock


# ---------------------------------------------------------------------------------------------- pure rules


def accepts(header: bytes | None, media_type: str) -> bool:
    """Whether an ``Accept`` header lists ``media_type`` (wildcards count, as RFC 9110 says; ``q=0`` refuses)."""
    if header is None:
        return False
    kind = media_type.split("/")[0]
    for item in header.decode("latin-1").split(","):
        parts = [part.strip() for part in item.split(";")]
        name = parts[0].lower()
        if name not in (media_type, f"{kind}/*", "*/*"):
            continue
        quality = next((p[2:] for p in parts[1:] if p.lower().startswith("q=")), "1")
        try:
            if float(quality) > 0:
                return True
        except ValueError:
            continue
    return False


@functools.lru_cache(maxsize=64)
def lists_both(header: bytes | None) -> bool:
    """Whether an ``Accept`` header lists both types a POST's answer may come as (clients send the same one again
    and again: the answer is cached)."""
    return accepts(header, "application/json") and accepts(header, "text/event-stream")


def is_json(header: bytes | None) -> bool:
    """Whether a ``Content-Type`` is ``application/json`` (parameters such as ``charset`` allowed)."""
    return header is not None and header.split(b";")[0].strip().lower() == b"application/json"


def message_kind(message: Any) -> str | None:
    """``"request"``, ``"notification"`` or ``"response"`` for a JSON-RPC 2.0 message, None for anything else."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return None
    method = message.get("method")
    has_id = "id" in message
    request_id = message.get("id")
    valid_id = isinstance(request_id, (str, int)) and not isinstance(request_id, bool)
    if isinstance(method, str):
        if not has_id:
            return "notification"
        return "request" if valid_id else None
    if (
        method is None
        and has_id
        and (request_id is None or valid_id)
        and (("result" in message) != ("error" in message))
    ):
        return "response"
    return None


def version_problem(header: bytes | None, negotiated: str | None) -> str | None:
    """Why an ``MCP-Protocol-Version`` header cannot be served on a session of version ``negotiated``, or None."""
    if header is None:
        return None  # the spec: assume the negotiated version when the client sends none
    version = header.decode("latin-1").strip()
    if version in MODERN_PROTOCOL_VERSIONS:
        return f"MCP-Protocol-Version {version} is stateless: send it without an MCP-Session-Id"
    if version not in HANDSHAKE_PROTOCOL_VERSIONS:
        return f"unsupported MCP-Protocol-Version {version!r} (supported: {', '.join(HANDSHAKE_PROTOCOL_VERSIONS)})"
    if negotiated is not None and version != negotiated:
        return f"MCP-Protocol-Version {version} differs from the version this session negotiated ({negotiated})"
    return None


def sse_event(data: bytes) -> bytes:
    return b"event: message\ndata: " + data.rstrip(b"\n") + b"\n\n"


# ---------------------------------------------------------------------------------------------- sessions


class _Outbox:
    """Encoded messages on their way to one HTTP response (a request's, or the GET stream), bounded in bytes.

    Filled by the router, which never waits (it may run in the event loop's readiness callback); emptied by the
    task serving that response. Each item is ``(is_response, encoded message)``.
    """

    __slots__ = ("_items", "_size", "_wakeup", "closed")

    def __init__(self) -> None:
        self._items: deque[tuple[bool, bytes]] = deque()
        self._size = 0
        self._wakeup: anyio.Event | None = None
        self.closed = False

    def put(self, is_response: bool, data: bytes) -> bool:
        """Queue one message; False if this response is gone. :class:`anyio.WouldBlock` when full."""
        if self.closed:
            return False
        if self._items and self._size + len(data) > SESSION_BUFFER_BYTES:
            raise anyio.WouldBlock
        self._items.append((is_response, data))
        self._size += len(data)
        self._wake()
        return True

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def get(self) -> tuple[bool, bytes] | None:
        """The next message, waiting for one; None once closed and empty."""
        while not self._items:
            if self.closed:
                return None
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        item = self._items.popleft()
        self._size -= len(item[1])
        return item


class HttpSession:
    """One Streamable HTTP session: a lease, and the HTTP responses its messages are routed to."""

    def __init__(self, lease: Lease) -> None:
        self.id = secrets.token_hex(16)
        self.lease = lease
        self.protocol_version: str | None = None
        self.requests: dict[Any, _Outbox] = {}  # client request id -> its response (oldest first)
        self.tokens: dict[Any, Any] = {}  # progress token -> client request id
        self.standalone: _Outbox | None = None  # the GET stream, if open
        self.held: deque[bytes] = deque()  # messages for the GET stream while none is open
        self._held_size = 0
        self.last_active = time.monotonic()
        self.closed = False
        self.ended: str | None = None

    @property
    def idle(self) -> bool:
        return not self.requests and self.standalone is None

    def open_request(self, message: dict[str, Any]) -> _Outbox:
        """Register a client request; return the outbox its answer will come in."""
        outbox = _Outbox()
        self.requests[message["id"]] = outbox
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if isinstance(token, (str, int)):
            self.tokens[token] = message["id"]
        return outbox

    def forget_request(self, request_id: Any) -> None:
        outbox = self.requests.pop(request_id, None)
        if outbox is not None:
            outbox.close()
        if self.tokens:
            self.tokens = {token: rid for token, rid in self.tokens.items() if rid != request_id}

    def route(self, message: dict[str, Any]) -> None:
        """Put one message of this session's lease on the response it belongs to (see the module doc).

        The lease's writer (:meth:`Lease.tap`): it never waits, and raises :class:`anyio.WouldBlock` when that
        response is full, so the pool's overflow rules apply.
        """
        method = message.get("method")
        data = encode(message)
        if method is None:  # a response: its request's outbox, which it ends
            request_id = message.get("id")
            try:
                outbox = self.requests.pop(request_id, None)
            except TypeError:
                outbox = None
            if outbox is None:
                logger.debug("HTTP session %s: an answer to no open request (%r); dropped", self.id[:8], request_id)
                return
            if self.tokens:
                self.tokens = {token: rid for token, rid in self.tokens.items() if rid != request_id}
            outbox.put(True, data)
            outbox.close()
            return
        outbox = None
        if method == "notifications/progress":
            params = message.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            try:
                outbox = self.requests.get(self.tokens.get(token))
            except TypeError:
                outbox = None
        elif "id" in message:
            # A server request (the mux attributed it to this session) rides the one request in flight, else the
            # GET stream, else the oldest request: it must reach the client to be answered.
            candidates = [*self.requests.values()]
            outbox = candidates[0] if len(candidates) == 1 else self.standalone or next(iter(candidates), None)
        if outbox is not None and outbox.put(False, data):
            return
        if self.standalone is not None and self.standalone.put(False, data):
            return
        # Nothing it relates to is open: it waits for the GET stream (a request's stream carries only what relates
        # to that request, and turns a plain answer into an SSE stream).
        if self._held_size + len(data) > SESSION_BUFFER_BYTES:
            logger.debug("HTTP session %s: no open stream for %s and no room to hold it; dropped", self.id[:8], method)
            return
        self.held.append(data)
        self._held_size += len(data)

    def open_stream(self) -> _Outbox:
        """The GET stream: it starts with what was held for it."""
        outbox = self.standalone = _Outbox()
        for data in self.held:
            outbox.put(False, data)
        self.held.clear()
        self._held_size = 0
        return outbox

    def lease_ended(self) -> None:
        """The lease ended under the session (released, overflow, pool closing): every response ends too."""
        self.closed = True
        self.ended = self.lease.broken or "the session ended"
        for outbox in [*self.requests.values(), self.standalone]:
            if outbox is not None:
                outbox.close()

    async def close(self) -> None:
        self.closed = True
        if not self.lease.released:
            await self.lease.release()
            logger.info("HTTP session %s detached from %r", self.id[:8], self.lease.server)


class StatelessSession(HttpSession):
    """Where the 2026-07-28 requests of one server endpoint and workspace go: each is a POST of its own with no
    session, from any number of clients that each count their ids from 1. They share one lease (so a question the
    server asks during a call comes back ``input_required`` with a handle any of them may retry with: the handle is
    unguessable), and each request gets an id and progress token of its own on it, restored on its answer."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(lease)
        self.protocol_version = MODERN_PROTOCOL_VERSIONS[-1]
        self._ids = itertools.count(1)
        self.origins: dict[str, tuple[Any, Any]] = {}  # our id -> (the client's id, the client's progress token)

    def rename(self, message: dict[str, Any]) -> dict[str, Any]:
        """The request as it goes on the shared lease: an id (and progress token) of its own."""
        ours = f"http-{next(self._ids)}"
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        self.origins[ours] = (message["id"], token)
        renamed = {**message, "id": ours}
        if token is not None:
            renamed["params"] = {**params, "_meta": {**meta, "progressToken": ours}}  # type: ignore[dict-item]
        return renamed

    def forget_request(self, request_id: Any) -> None:
        super().forget_request(request_id)
        self.origins.pop(request_id, None)

    def route(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method is None:
            origin = self.origins.pop(message.get("id"), None) if isinstance(message.get("id"), str) else None
            outbox = self.requests.pop(message.get("id"), None) if origin is not None else None
            if outbox is not None:
                outbox.put(True, encode({**message, "id": origin[0]}))  # type: ignore[index]
                outbox.close()
            return
        if method == "notifications/progress":
            params = message.get("params")
            ours = params.get("progressToken") if isinstance(params, dict) else None
            origin = self.origins.get(ours) if isinstance(ours, str) else None
            outbox = self.requests.get(ours) if origin is not None else None
            if outbox is not None and origin is not None:
                outbox.put(False, encode({**message, "params": {**params, "progressToken": origin[1]}}))
            return
        # Anything else relates to no request of a stateless client and has no stream to go on.
        logger.debug("stateless HTTP requests of %r: no stream for %s; dropped", self.lease.server, method)


# ---------------------------------------------------------------------------------------------- the front


class HttpFront:
    """The ASGI app and the uvicorn server behind ``serve --http``, in the broker's event loop."""

    def __init__(
        self,
        pool: BackendPool,
        configs: ConfigSource,
        token_file: str,
        sock: socket.socket,
        limits: HttpLimits | None = None,
    ) -> None:
        self.pool = pool
        self.configs = configs
        self.token_file = token_file
        self.socket = sock
        self.limits = limits or HttpLimits()
        self.port: int = sock.getsockname()[1]
        self._token_digest = hashlib.sha256(f"Bearer {load_or_create_token(token_file)}".encode()).digest()
        self.sessions: dict[str, HttpSession] = {}
        self.stateless: dict[tuple[str, str], StatelessSession] = {}
        self.metrics: Callable[[], bytes] | None = None
        """What ``GET /metrics`` answers (the broker sets it: :func:`mcpshare.exposition.exposition`)."""
        self.guard = ConnectionGuard(self.limits)
        hosts = (f"127.0.0.1:{self.port}", f"localhost:{self.port}")
        self.allowed_hosts = {host.encode() for host in hosts}
        self.allowed_origins = {f"http://{host}".encode() for host in hosts}
        self._server: Any = None
        self._stopped = anyio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{ENDPOINT_PREFIX}"

    async def run(self, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve on the bound socket until :meth:`stop` or cancelled."""
        import asyncio
        import contextlib

        import uvicorn

        from mcpshare.http_server import FrontConfig

        class Server(uvicorn.Server):
            def capture_signals(self) -> contextlib.AbstractContextManager[None]:
                return contextlib.nullcontext()  # the broker handles SIGTERM/SIGINT itself

        sock = self.socket
        try:
            config = FrontConfig(self, limits=self.limits, guard=self.guard)
            self._server = Server(config)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._serve, sock)
                tg.start_soon(self._expire_sessions)
                while not self._server.started:
                    if self._stopped.is_set():
                        raise RuntimeError("the HTTP front stopped while starting (see the log)")
                    await anyio.sleep(0.01)
                loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
                logger.info(
                    "HTTP front on %s<server> (uvicorn + httptools on %s; bearer token in %s)",
                    self.url,
                    "uvloop" if loop == "uvloop" else "asyncio",
                    self.token_file,
                )
                task_status.started(self.url)
                await self._stopped.wait()
                tg.cancel_scope.cancel()
        finally:
            sock.close()

    async def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            await self._server.serve([sock])
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """End every session (their streams close), then let uvicorn finish without waiting for clients."""
        with anyio.CancelScope(shield=True):
            for session in [*self.sessions.values(), *self.stateless.values()]:
                await session.close()
            self.sessions.clear()
            self.stateless.clear()
            if self._server is not None:
                self._server.should_exit = self._server.force_exit = True
                with anyio.move_on_after(5):
                    await self._stopped.wait()
            self._stopped.set()

    async def _expire_sessions(self) -> None:
        """End sessions idle for longer than the TTL (a client that vanished without DELETE), and ended ones."""
        ttl = self.limits.session_ttl
        while True:
            await anyio.sleep(min(30.0, ttl / 4))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.closed or (session.idle and now - session.last_active > ttl):
                    self.sessions.pop(session.id, None)
                    if not session.closed:
                        logger.info("HTTP session %s idle for over %g s: ending it", session.id[:8], ttl)
                    await session.close()
            for where, stateless in list(self.stateless.items()):
                if stateless.closed or (stateless.idle and now - stateless.last_active > ttl):
                    del self.stateless[where]
                    await stateless.close()

    def status(self) -> dict[str, Any]:
        """The HTTP sessions and connections, for ``mcpshare status``."""
        now = time.monotonic()
        sessions = [
            {
                "id": session.id[:8],
                "server": session.lease.server,
                "key": session.lease.key.short(),
                "state": "idle" if session.idle else "live",
                "requests": len(session.requests),
                "stream": session.standalone is not None,
                "idle_for": round(now - session.last_active, 3) if session.idle else 0.0,
            }
            for session in self.sessions.values()
            if not session.closed
        ]
        return {"sessions": sessions, "session_ttl": self.limits.session_ttl, "connections": self.guard.snapshot()}

    # ------------------------------------------------------------------ requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        path: str = scope["path"]
        server = path[len(ENDPOINT_PREFIX) :] if path.startswith(ENDPOINT_PREFIX) else ""
        if path == METRICS_PATH and self.metrics is not None:
            server = METRICS_PATH  # checked like an endpoint (Host, Origin, token), then answered below
        elif not server or "/" in server:
            text = f"no MCP endpoint at {path!r}: the endpoints are {ENDPOINT_PREFIX}<server>"
            await send_error(send, 404, text, close=True)
            return
        method = scope["method"]
        if method not in ("POST", "GET", "DELETE"):
            await send_error(send, 405, f"{method} is not a Streamable HTTP method", headers=(_ALLOW,), close=True)
            return
        if headers.get(b"host") not in self.allowed_hosts:
            text = "Forbidden: this front serves Host 127.0.0.1 or localhost on its port only"
            await send_error(send, 403, text, close=True)
            return
        origin = headers.get(b"origin")
        if origin is not None and origin not in self.allowed_origins:
            await send_error(send, 403, "Forbidden: cross-origin requests are not allowed", close=True)
            return
        presented = hashlib.sha256(headers.get(b"authorization", b"")).digest()
        if not hmac.compare_digest(presented, self._token_digest):
            await send_error(
                send,
                401,
                f"Unauthorized: send 'Authorization: Bearer <token>' with the token in {self.token_file}",
                headers=((b"www-authenticate", b'Bearer realm="mcpshare"'),),
                close=True,
            )
            return
        if not self.guard.authenticate(scope.get("client")):
            limit = self.limits.max_connections
            text = f"too many HTTP connections (at most {limit}; --http-max-connections)"
            await send_error(send, 503, text, close=True)
            return
        if server == METRICS_PATH:
            await self._metrics(send, method)
            return
        session_id = headers.get(b"mcp-session-id")
        session = None
        if session_id is not None:
            session = self.sessions.get(session_id.decode("latin-1"))
            if session is None or session.closed or session.lease.server != server:
                text = "Not Found: unknown or expired session; start a new one with initialize"
                await send_error(send, 404, text, close=True)
                return
            problem = version_problem(headers.get(b"mcp-protocol-version"), session.protocol_version)
            if problem is not None:
                await send_error(send, 400, f"Bad Request: {problem}", close=True)
                return
        if method == "POST":
            await self._post(scope, receive, send, headers, server, session)
        elif session is None:
            await send_error(send, 400, f"Bad Request: {method} needs an MCP-Session-Id header")
        elif method == "GET":
            await self._standalone(receive, send, headers, session)
        else:
            self.sessions.pop(session.id, None)
            await session.close()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async def _post(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
        server: str,
        session: HttpSession | None,
    ) -> None:
        if not lists_both(headers.get(b"accept")):
            text = "Not Acceptable: the Accept header must list application/json and text/event-stream"
            await send_error(send, 406, text, close=True)
            return
        if not is_json(headers.get(b"content-type")):
            await send_error(send, 415, "Unsupported Media Type: the body must be application/json", close=True)
            return
        limit = self.limits.max_body
        declared = _content_length(headers)
        if declared is not None and declared > limit:
            await self._too_large(send, f" ({declared} bytes)")  # refused before a byte of it is read
            return
        body = await _read_body(receive, limit)
        if body is None:
            return  # the client left, or its body timed out (the protocol answered 408)
        if len(body) > limit:
            await self._too_large(send, "")  # refused the moment it passed the limit
            return
        try:
            message = decode(body)
        except ValueError:
            await send_error(send, 400, "Parse error: the body is not JSON", code=PARSE_ERROR)
            return
        kind = message_kind(message)
        if kind is None:
            text = "one JSON-RPC message per POST" if isinstance(message, list) else "not a JSON-RPC 2.0 message"
            await send_error(send, 400, f"Invalid Request: {text}")
            return
        is_initialize = kind == "request" and message["method"] == "initialize"
        if session is None and kind == "request" and _is_stateless(message, headers):
            await self._stateless(scope, send, server, message)
            return
        if session is None:
            if not is_initialize:
                await send_error(send, 400, "Bad Request: an MCP-Session-Id header is required (send initialize first)")
                return
            try:
                session = await self._open(server, scope)
            except HelloError as exc:
                await send_error(send, 404, f"Not Found: {exc}", request_id=message["id"])
                return
            except Exception as exc:
                text = f"MCP server {server!r} is not available: {exc}"
                await send_error(send, 502, text, code=INTERNAL_ERROR, request_id=message["id"])
                return
        elif is_initialize:
            await send_error(send, 400, "Bad Request: this session is already initialized", request_id=message["id"])
            return
        session.last_active = time.monotonic()
        if kind != "request":
            await self._forward(session, message)
            await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if message["id"] in session.requests:
            text = f"Invalid Request: request id {message['id']!r} is already in use in this session"
            await send_error(send, 400, text, request_id=message["id"])
            return
        outbox = session.open_request(message)
        await self._forward(session, message)
        try:
            await self._answer(send, session, outbox, message, is_initialize)
        finally:
            if session.requests.get(message["id"]) is outbox:
                session.forget_request(message["id"])
            session.last_active = time.monotonic()

    async def _metrics(self, send: Send, method: str) -> None:
        """``GET /metrics``: the broker's counters in the Prometheus text format (the same token as the endpoints)."""
        if method != "GET":
            await send_error(send, 405, f"{method} {METRICS_PATH}: only GET", headers=((b"allow", b"GET"),), close=True)
            return
        assert self.metrics is not None
        body = self.metrics()
        headers = [(b"content-type", METRICS_CONTENT_TYPE), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _stateless(self, scope: Scope, send: Send, server: str, message: dict[str, Any]) -> None:
        """A 2026-07-28 request: no session; its answer (JSON, or SSE when progress comes first) on this POST."""
        workspace = _workspace(scope)
        session = self.stateless.get((server, workspace))
        if session is None or session.closed:
            try:
                lease = await self._acquire(server, workspace)
            except HelloError as exc:
                await send_error(send, 404, f"Not Found: {exc}", request_id=message["id"])
                return
            except Exception as exc:
                text = f"MCP server {server!r} is not available: {exc}"
                await send_error(send, 502, text, code=INTERNAL_ERROR, request_id=message["id"])
                return
            session = self.stateless.get((server, workspace))
            if session is None or session.closed:
                session = self.stateless[(server, workspace)] = StatelessSession(lease)
                lease.tap(session.route, session.lease_ended)
            else:
                await lease.release()  # another request made the session meanwhile
        session.last_active = time.monotonic()
        renamed = session.rename(message)
        outbox = session.open_request(renamed)
        await self._forward(session, renamed)
        try:
            await self._answer(send, session, outbox, message, False)
        finally:
            if session.requests.get(renamed["id"]) is outbox:
                session.forget_request(renamed["id"])
            session.last_active = time.monotonic()

    async def _too_large(self, send: Send, size: str) -> None:
        self.guard.count("body too large")
        limit = self.limits.max_body
        text = f"the request body{size} is larger than the limit of {limit} bytes (--http-max-body)"
        await send_error(send, 413, text, close=True)

    async def _answer(
        self, send: Send, session: HttpSession, outbox: _Outbox, request: dict[str, Any], is_initialize: bool
    ) -> None:
        """JSON when the answer is the first message for the request, else an SSE stream (see the module doc). If the
        session ends first, the answer is an error that says why."""

        def ended() -> tuple[bool, bytes]:
            return True, encode(error_response(request["id"], CONNECTION_CLOSED, f"mcpshare: {session.ended}"))

        def answered(data: bytes) -> None:
            if is_initialize:
                answer = decode(data)
                result = answer.get("result") if isinstance(answer, dict) else None
                if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
                    session.protocol_version = result["protocolVersion"]

        extra = [(b"mcp-session-id", session.id.encode())] if is_initialize else []
        is_response, data = await outbox.get() or ended()
        if is_response:
            answered(data)
            headers = [*_JSON_HEADERS, *extra, (b"content-length", str(len(data)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS, *extra]})
        while True:
            await send({"type": "http.response.body", "body": sse_event(data), "more_body": True})
            if is_response:
                answered(data)
                break
            is_response, data = await outbox.get() or ended()
            session.last_active = time.monotonic()
        await send({"type": "http.response.body", "body": b""})

    async def _standalone(
        self, receive: Receive, send: Send, headers: dict[bytes, bytes], session: HttpSession
    ) -> None:
        """The session's GET stream, until the client leaves or the session ends."""
        if not accepts(headers.get(b"accept"), "text/event-stream"):
            await send_error(send, 406, "Not Acceptable: the Accept header must list text/event-stream")
            return
        if session.standalone is not None:
            await send_error(send, 409, "Conflict: this session's GET stream is already open")
            return
        outbox = session.open_stream()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            await send({"type": "http.response.body", "body": b"", "more_body": True})
            async with anyio.create_task_group() as tg:

                async def watch_client() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_client)
                while (item := await outbox.get()) is not None:
                    await send({"type": "http.response.body", "body": sse_event(item[1]), "more_body": True})
                tg.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b""})
        finally:
            if session.standalone is outbox:
                session.standalone = None
            session.last_active = time.monotonic()

    async def _acquire(self, server: str, workspace: str) -> Lease:
        hello = {"server": server, "cwd": workspace, "config": None, "spec": None}
        config = server_config(hello, self.configs)
        return await self.pool.acquire(config, workspace=workspace, environ=dict(os.environ))

    async def _open(self, server: str, scope: Scope) -> HttpSession:
        lease = await self._acquire(server, _workspace(scope))
        session = HttpSession(lease)
        self.sessions[session.id] = session
        lease.tap(session.route, session.lease_ended)
        logger.info("HTTP session %s attached to %r (key %s)", session.id[:8], server, lease.key.short())
        return session

    async def _forward(self, session: HttpSession, message: dict[str, Any]) -> None:
        try:
            if not session.lease.send_now(message):
                await session.lease.send(message)
        except Exception as exc:
            logger.warning("HTTP session %s: could not forward a message: %s", session.id[:8], exc)
            if "id" in message and "method" in message:
                session.route(error_response(message["id"], CONNECTION_CLOSED, f"mcpshare: {exc}"))


def _workspace(scope: Scope) -> str:
    """The workspace of a request: ``?cwd=/abs/dir``, else the broker's working directory."""
    from urllib.parse import parse_qs

    cwd = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("cwd", [""])[0]
    return cwd if cwd and os.path.isabs(cwd) else os.getcwd()


def _is_stateless(message: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
    """A 2026-07-28 request: the version header says so, or its ``_meta`` carries the envelope."""
    header = headers.get(b"mcp-protocol-version")
    if header is not None and header.decode("latin-1").strip() in MODERN_PROTOCOL_VERSIONS:
        return True
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and meta.get("io.modelcontextprotocol/protocolVersion") in MODERN_PROTOCOL_VERSIONS


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # httptools refuses such a request before the app sees it


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body; as soon as it passes ``limit`` bytes, what came so far plus one byte (the caller answers
    413 without reading the rest); None when the client left (or its body timed out, answered by the protocol)."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body if message["type"] == "http.request" else None
    parts = [body]
    size = len(body)
    while message.get("more_body", False) and size <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return None
        parts.append(message.get("body", b""))
        size += len(parts[-1])
    return b"".join(parts) if size <= limit else b"".join(parts)[: limit + 1]
