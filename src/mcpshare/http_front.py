"""``mcpshare serve --http PORT``: a Streamable HTTP front on 127.0.0.1 for clients that speak HTTP (no shim process).

One URL per configured server (``/mcp/<server>``). Each HTTP session (``Mcp-Session-Id``) holds one pool lease, like
a shim connection, from the broker's own pool, so HTTP and shim clients share processes. A request's answer, its
progress and a server-to-client request made while it runs go back on that request's SSE stream; other server
messages go on the session's GET stream when the client opened one. A bearer token kept in a 0600 file guards it,
with Host/Origin checks against DNS rebinding.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

import anyio
import anyio.abc

from mcpshare.mux import encode, error_response
from mcpshare.pool import BackendPool, Lease
from mcpshare.sources import ConfigSource, server_config

logger = logging.getLogger("mcpshare.http")

PARSE_ERROR = -32700

HTTP_SESSION_IDLE = 1800.0
"""Seconds an HTTP session with no request and no open stream is kept; a client that vanished without DELETE
would otherwise keep its server alive forever."""
_STREAM_BUFFER = 1024


def load_or_create_token(path: str) -> str:
    """The HTTP bearer token: kept in a 0600 file, reused across restarts so clients' configs stay valid."""
    import secrets

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


class HttpSession:
    """One Streamable HTTP session: a lease and the open SSE streams its messages are routed to."""

    def __init__(self, lease: Lease) -> None:
        import secrets

        self.id = secrets.token_hex(16)
        self.lease = lease
        self.requests: dict[Any, Any] = {}  # client request id -> the send end of its SSE stream (oldest first)
        self.tokens: dict[Any, Any] = {}  # progress token -> client request id
        self.standalone: Any = None  # the send end of the GET stream, if open
        self.last_active = time.monotonic()
        self.closed = False

    def open_request(self, message: dict[str, Any]) -> Any:
        """Register a client request; return the receive end of the stream its answer will come on."""
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](_STREAM_BUFFER)
        self.requests[message["id"]] = send
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(meta, dict) and meta.get("progressToken") is not None:
            self.tokens[meta["progressToken"]] = message["id"]
        return receive

    def route(self, message: dict[str, Any]) -> None:
        """Put one server message on the stream it belongs to (see the section comment); never blocks."""
        method = message.get("method")
        if method is None:  # a response: its request's stream, which it ends
            request_id = message.get("id")
            stream = self.requests.pop(request_id, None)
            self.tokens = {token: rid for token, rid in self.tokens.items() if rid != request_id}
            if stream is not None:
                _offer(stream, message)
                stream.close()
            return
        stream = None
        if method == "notifications/progress":
            params = message.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            stream = self.requests.get(self.tokens.get(token))
        elif "id" in message and len(self.requests) == 1:
            stream = next(iter(self.requests.values()))  # a server request rides the one request in flight
        stream = stream or self.standalone or next(iter(self.requests.values()), None)
        if stream is None:
            logger.debug("HTTP session %s: no open stream for %s; dropped", self.id[:8], method)
            return
        _offer(stream, message)

    async def pump(self) -> None:
        """Route the lease's messages until it ends (released, pool closed, overflow)."""
        try:
            async for message in self.lease.receive:
                try:
                    self.route(message)
                except Exception:  # e.g. an unhashable id or token sent by a misbehaving server
                    logger.exception("HTTP session %s: could not route a message; dropped", self.id[:8])
        finally:
            self.closed = True
            for stream in [*self.requests.values(), self.standalone]:
                if stream is not None:
                    stream.close()

    async def close(self) -> None:
        self.closed = True
        with anyio.CancelScope(shield=True):
            if not self.lease.released:
                await self.lease.release()
                logger.info("HTTP session %s detached from %r", self.id[:8], self.lease.server)


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


def _offer(stream: Any, message: dict[str, Any]) -> None:
    try:
        stream.send_nowait(message)
    except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
        logger.debug("an HTTP stream is full or gone; dropped a message")


class HttpFront:
    """The Starlette app and the uvicorn server behind ``serve --http``; sessions live in the broker's tasks."""

    def __init__(self, pool: BackendPool, configs: ConfigSource, token_file: str, sock: socket.socket) -> None:
        self.pool = pool
        self.configs = configs
        self.token_file = token_file
        self.socket = sock
        self.port: int = sock.getsockname()[1]
        self.token = load_or_create_token(token_file)
        self.sessions: dict[str, HttpSession] = {}
        self.allowed_hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        self._tg: anyio.abc.TaskGroup | None = None
        self._server: Any = None
        self._stopped = anyio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp/"

    async def run(self, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve on the bound socket (see :meth:`bind`) until :meth:`stop` or cancelled."""
        import contextlib

        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Route

        class Server(uvicorn.Server):
            def capture_signals(self) -> contextlib.AbstractContextManager[None]:
                return contextlib.nullcontext()  # the broker handles SIGTERM/SIGINT itself

        sock = self.socket
        try:
            app = Starlette(routes=[Route("/mcp/{server}", self.endpoint, methods=["GET", "POST", "DELETE"])])
            config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
            self._server = Server(config)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._serve, sock)
                tg.start_soon(self._expire_sessions)
                while not self._server.started:
                    if self._stopped.is_set():
                        raise RuntimeError("the HTTP front stopped while starting (see the log)")
                    await anyio.sleep(0.01)
                logger.info("HTTP front on %s<server> (bearer token in %s)", self.url, self.token_file)
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
        """End every session (their SSE streams close), then let uvicorn finish without waiting for clients."""
        with anyio.CancelScope(shield=True):
            for session in list(self.sessions.values()):
                await session.close()
            if self._server is not None:
                self._server.should_exit = self._server.force_exit = True
                with anyio.move_on_after(5):
                    await self._stopped.wait()
            self._stopped.set()

    async def _expire_sessions(self) -> None:
        while True:
            await anyio.sleep(min(60.0, HTTP_SESSION_IDLE / 4))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                idle = not session.requests and session.standalone is None
                if session.closed or (idle and now - session.last_active > HTTP_SESSION_IDLE):
                    self.sessions.pop(session.id, None)
                    await session.close()

    # ------------------------------------------------------------------ requests

    async def endpoint(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response

        denied = self._check(request)
        if denied is not None:
            return JSONResponse({"error": denied[1]}, status_code=denied[0])
        server = request.path_params["server"]
        session_id = request.headers.get("mcp-session-id")
        session = self.sessions.get(session_id) if session_id else None
        if session_id and (session is None or session.closed):
            return JSONResponse(error_response(None, -32001, "unknown or expired session"), status_code=404)
        if session is not None and session.lease.server != server:
            return JSONResponse(error_response(None, -32600, "session belongs to another server"), status_code=400)
        if request.method == "DELETE":
            if session is not None:
                self.sessions.pop(session.id, None)
                await session.close()
            return Response(status_code=200 if session is not None else 400)
        if request.method == "GET":
            return self._standalone(session)
        return await self._post(request, server, session)

    def _check(self, request: Any) -> tuple[int, str] | None:
        """Bearer token, and the Host/Origin checks that stop a web page from reaching us (DNS rebinding)."""
        import hmac

        header = request.headers.get("authorization", "")
        if not hmac.compare_digest(header.encode(), f"Bearer {self.token}".encode()):
            return 401, f"a bearer token is required (see {self.token_file})"
        if request.headers.get("host") not in self.allowed_hosts:
            return 403, "bad Host header"
        origin = request.headers.get("origin")
        if origin is not None and origin.removeprefix("http://") not in self.allowed_hosts:
            return 403, "cross-origin requests are not allowed"
        return None

    def _standalone(self, session: HttpSession | None) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        if session is None:
            return JSONResponse(error_response(None, -32600, "GET needs an Mcp-Session-Id"), status_code=400)
        if session.standalone is not None:
            return JSONResponse(error_response(None, -32600, "a GET stream is already open"), status_code=409)
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](_STREAM_BUFFER)
        session.standalone = send

        async def events() -> Any:
            try:
                async for message in receive:
                    yield _sse(message)
            finally:
                if session.standalone is send:
                    session.standalone = None

        return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    async def _post(self, request: Any, server: str, session: HttpSession | None) -> Any:
        from starlette.responses import JSONResponse, Response, StreamingResponse

        try:
            message = json.loads(await request.body())
        except ValueError:
            return JSONResponse(error_response(None, PARSE_ERROR, "Parse error"), status_code=400)
        if not isinstance(message, dict):
            return JSONResponse(error_response(None, -32600, "send one JSON-RPC message per POST"), status_code=400)
        is_request = isinstance(message.get("method"), str) and "id" in message
        if session is None:
            if message.get("method") != "initialize" or not is_request:
                code, text = (-32601, "send initialize first") if is_request else (-32600, "Mcp-Session-Id required")
                return JSONResponse(
                    error_response(message.get("id"), code, text), status_code=200 if is_request else 400
                )
            try:
                session = await self._open(server, request.query_params.get("cwd"))
            except Exception as exc:
                text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
                return JSONResponse(error_response(message["id"], -32603, text), status_code=200)
        session.last_active = time.monotonic()
        if not is_request:
            await self._send(session, message)
            return Response(status_code=202)
        receive = session.open_request(message)
        await self._send(session, message)
        if message.get("method") == "initialize":
            with anyio.fail_after(30):
                answer = await receive.receive()
            return JSONResponse(answer, headers={"mcp-session-id": session.id})

        async def events() -> Any:
            async with receive:
                async for item in receive:
                    session.last_active = time.monotonic()
                    yield _sse(item)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    async def _open(self, server: str, cwd: str | None) -> HttpSession:
        workspace = cwd if cwd and os.path.isabs(cwd) else os.getcwd()
        hello = {"server": server, "cwd": workspace, "config": None, "spec": None}
        config = server_config(hello, self.configs)
        lease = await self.pool.acquire(config, workspace=workspace, environ=dict(os.environ))
        session = HttpSession(lease)
        self.sessions[session.id] = session
        assert self._tg is not None
        self._tg.start_soon(session.pump)
        logger.info("HTTP session %s attached to %r (key %s)", session.id[:8], server, lease.key.short())
        return session

    async def _send(self, session: HttpSession, message: dict[str, Any]) -> None:
        try:
            await session.lease.send(message)
        except Exception as exc:
            logger.warning("HTTP session %s: could not forward a message: %s", session.id[:8], exc)
            if "id" in message and "method" in message:
                session.route(error_response(message["id"], -32000, f"mcpshare: {exc}"))


def _sse(message: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + encode(message).rstrip(b"\n") + b"\n\n"
