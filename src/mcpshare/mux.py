"""One backend connection multiplexed into many virtual sessions.

The mux works on raw JSON-RPC dicts (the wire format), so methods and fields it does not know pass through
untouched. It knows just enough of MCP to keep sessions apart:

* request ids are rewritten to backend-unique ids and restored on the way back;
* progress tokens are rewritten the same way, since every SDK session uses its own request ids as tokens;
* ``notifications/cancelled`` is remapped to the backend id (or dropped when it names nothing of the sender's);
* the handshake happens once per process; each session's ``initialize`` is answered from the cached result;
* ``tools/list`` is answered from a cache that ``notifications/tools/list_changed`` invalidates;
* resource subscriptions and the logging level are reference-counted across sessions;
* server-to-client requests go to exactly one owning session, or are answered with an error - never broadcast.

It owns no process: it reads and writes two byte streams, which the pool wires to a server's stdout and stdin.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import anyio
import anyio.abc
import orjson
from anyio.streams.memory import MemoryObjectSendStream

from mcpshare.fdstream import HIGH_WATER, FdLineReceiveStream, FdSendStream

logger = logging.getLogger("mcpshare.mux")


class Sink(Protocol):
    """Where a session's messages go (a memory object stream's send end, or a pool lease's inbox): ``send_nowait``
    never blocks, raising :class:`anyio.WouldBlock` when full and :class:`anyio.BrokenResourceError` or
    :class:`anyio.ClosedResourceError` when nobody reads any more."""

    def send_nowait(self, item: dict[str, Any], /) -> None: ...

    def close(self) -> None: ...


Message = dict[str, Any]
RequestId = str | int

PROTOCOL_VERSION: Final = "2025-11-25"
"""The handshake-era protocol revision the backend proposes; every stdio server in use today speaks it."""

CONNECTION_CLOSED: Final = -32000
REQUEST_TIMEOUT: Final = -32001
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INTERNAL_ERROR: Final = -32603

DEFAULT_QUEUE_SIZE: Final = 1024

CLIENT_CAPABILITIES: Final[Mapping[str, Any]] = {
    "roots": {"listChanged": True},
    "sampling": {},
    "elicitation": {"form": {}, "url": {}},
}
"""The one fixed capability set the pool declares to every server.

A server's tool list may depend on what the client declared (server-everything adds tools when sampling or
elicitation are declared), so the pool declares everything it can route; a thread without a handler for a
capability declines the request addressed to it.
"""

LOG_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_LOG_RANK: Final = {name: rank for rank, name in enumerate(LOG_LEVELS)}
DEFAULT_SESSION_LOG_LEVEL: Final = "info"
"""What a session that never called ``logging/setLevel`` receives, whatever another session asked the server for."""

QUIET_METHODS: Final = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/subscribe",
        "resources/unsubscribe",
        "logging/setLevel",
    }
)
"""Client requests during which a server has no reason to ask its client anything.

A session whose only requests in flight are of these kinds cannot own a server-to-client request.
"""

DROPPABLE_NOTIFICATIONS: Final = frozenset({"notifications/progress", "notifications/message"})
"""Notifications a slow session may lose when its queue is full; anything else overflowing closes the session."""
_AWAITED_METHODS: Final = frozenset({"logging/setLevel", "resources/subscribe", "resources/unsubscribe"})
"""Client requests the mux answers itself after writes of its own (a level or subscription shared by sessions)."""


class BackendError(RuntimeError):
    """The backend connection failed; in-flight and later requests get this as a JSON-RPC error."""


class SessionOverflow(RuntimeError):
    """A session did not read its messages and its bounded queue filled up: it was disconnected.

    One class for both places that say so (the mux, for a closed channel, and the pool's lease), so a host catches
    it once as ``mcpshare.SessionOverflow``.
    """


def error_response(request_id: RequestId | None, code: int, message: str, data: Any = None) -> Message:
    """A JSON-RPC error response."""
    error: Message = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def result_response(request_id: RequestId, result: Any) -> Message:
    """A JSON-RPC success response."""
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


# Every message a shared server sends or receives is decoded and encoded once on its way through (to route it and
# rewrite its id): orjson does each in a fraction of a microsecond, json in several. json still takes what orjson
# refuses or would change, so every value passes through as it did: integers beyond 64 bits (orjson would read them
# as floats: a line with a run of 19 digits or more goes to json), NaN and Infinity, escaped lone surrogates (which
# json writes back escaped). orjson writes a float NaN as null; such values only come from json's lenient reading.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_NUMBER = b"0" * 19


def encode(message: Message) -> bytes:
    """One newline-delimited JSON-RPC frame (newlines inside strings are escaped)."""
    try:
        return orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Any:
    """One JSON value from a line; ValueError (json.JSONDecodeError) when it is not JSON."""
    if _LONG_NUMBER not in line.translate(_DIGITS_AS_ZEROS):
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
    return json.loads(line)


def kind_of(message: Any) -> Literal["request", "notification", "response", "invalid"]:
    """Classify a decoded JSON-RPC message by its shape."""
    if not isinstance(message, dict):
        return "invalid"
    method = message.get("method")
    if isinstance(method, str):
        return "request" if "id" in message else "notification"
    if "id" in message and ("result" in message or "error" in message):
        return "response"
    return "invalid"


def _meta(params: Any) -> dict[str, Any] | None:
    if isinstance(params, dict):
        meta = params.get("_meta")
        if isinstance(meta, dict):
            return meta
    return None


def _valid_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


@dataclass(eq=False)
class _Pending:
    """A request the backend sent to the server and waits an answer for."""

    method: str
    channel: Channel | None = None
    client_id: RequestId | None = None
    progress_token: RequestId | None = None
    uri: str | None = None
    done: anyio.Event | None = None
    response: Message | None = None


@dataclass(eq=False)
class _ServerRequest:
    """A server-to-client request handed to one session, waiting for that session's answer."""

    channel: Channel
    method: str


@dataclass(eq=False)
class MuxStats:
    """Counters for diagnostics and tests; never used for decisions."""

    requests: int = 0
    responses: int = 0
    dropped: int = 0
    declined: int = 0
    bad_lines: int = 0
    cache_hits: int = 0


class Channel:
    """One virtual session on a backend: what one thread (or one shim client) sees.

    Messages for the session are put, without blocking, into ``sink``; the backend's reader never waits for a
    slow session. When the sink is full, droppable notifications are dropped and anything else closes the
    session with :class:`SessionOverflow` (its requests are cancelled at the server).
    """

    def __init__(
        self,
        backend: Backend,
        cid: int,
        sink: Sink,
        on_overflow: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.id = cid
        self._sink = sink
        self._on_overflow = on_overflow
        self.capabilities: dict[str, Any] = {}
        self.client_info: dict[str, Any] = {}
        self.log_level: str | None = None
        self.subscriptions: set[str] = set()
        self.inflight: dict[RequestId, int] = {}
        self.closed = False
        self.close_reason: str | None = None
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<Channel {self.id} on {self.backend.name}>"

    async def send(self, message: Message) -> None:
        """Send one client-to-server message from this session."""
        await self.backend.from_client(self, message)

    def deliver(self, message: Message) -> None:
        """Queue one server-to-client message for this session without ever blocking the backend."""
        if self.closed:
            return
        try:
            self._sink.send_nowait(message)
        except anyio.WouldBlock:
            if message.get("method") in DROPPABLE_NOTIFICATIONS:
                self.dropped += 1
                return
            reason = "queue overflow: the session did not read its messages"
            logger.warning("%s: session %d overflowed its queue; disconnecting it", self.backend.name, self.id)
            self.backend.detach(self, reason=reason)
            if self._on_overflow is not None:
                self._on_overflow(reason)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.backend.detach(self, reason="session stopped reading")

    def offer(self, message: Message) -> None:
        """Queue a last message (an error answer while closing) if there is room; never raises."""
        try:
            self._sink.send_nowait(message)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    def close(self, reason: str = "closed") -> None:
        """Detach from the backend: cancel own requests at the server, drop own subscriptions and level."""
        self.backend.detach(self, reason=reason)


class Backend:
    """One live connection to one server process, shared by many :class:`Channel` sessions.

    Lifecycle: construct, run :meth:`run` in a task group (the reader loop), ``await initialize()`` once, then
    attach channels. :meth:`fail` ends it: every in-flight request of every session is answered at once with an
    error that names the server, and later requests fail the same way.

    With ``eager_reads`` the server's lines are routed by the event loop's readiness callback that read them
    (:attr:`FdLineReceiveStream.eager`), not by the reader task: no task switch per message. Routing may create
    anyio objects (say, when a session is dropped), which outside any task only works where anyio runs the loop
    (``anyio.run``, as the broker does), not under a host's plain ``asyncio.run``: hence opt-in.
    """

    def __init__(
        self,
        name: str,
        send_stream: FdSendStream,
        receive_stream: FdLineReceiveStream,
        *,
        client_info: Mapping[str, Any] | None = None,
        roots: Callable[[], list[dict[str, Any]]] | None = None,
        describe_exit: Callable[[], str] | None = None,
        wait_exit: Callable[[], Awaitable[Any]] | None = None,
        eager_reads: bool = False,
    ) -> None:
        self.name = name
        self._send_stream = send_stream
        self._receive_stream = receive_stream
        # An FdSendStream takes each message whole (buffering what the pipe does not take yet), so concurrent
        # writers cannot interleave their bytes and need no lock.
        self._client_info = dict(client_info or {"name": "mcpshare", "version": "0"})
        self._roots = roots or (lambda: [])
        self._eager_reads = eager_reads
        self._describe_exit = describe_exit or (lambda: "")
        self._wait_exit = wait_exit
        self._ids = itertools.count(1)
        self._channel_ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._progress: dict[int, _Pending] = {}
        self._server_requests: dict[RequestId, _ServerRequest] = {}
        self.channels: dict[int, Channel] = {}
        self._subscribers: dict[str, set[Channel]] = {}
        self._server_log_level: str | None = None
        self._tools_cache: dict[Any, Message] = {}
        self._tools_generation = 0
        self.initialize_result: dict[str, Any] | None = None
        self.error: BackendError | None = None
        self.closed = anyio.Event()
        self.stats = MuxStats()
        self._waiting_since: float | None = None
        self._probing = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def alive(self) -> bool:
        return self.error is None

    @property
    def protocol_version(self) -> str | None:
        if self.initialize_result is None:
            return None
        version = self.initialize_result.get("protocolVersion")
        return version if isinstance(version, str) else None

    async def initialize(self) -> dict[str, Any]:
        """The one handshake of this process. Its result answers every session's ``initialize``."""
        result = await self.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": dict(CLIENT_CAPABILITIES),
                "clientInfo": self._client_info,
            },
        )
        if not isinstance(result, dict) or not isinstance(result.get("protocolVersion"), str):
            raise BackendError(f"server {self.name!r} answered initialize with an invalid result: {result!r:.300}")
        self.initialize_result = result
        await self._write({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    async def request(self, method: str, params: Any = None) -> Any:
        """Send an internal request (not owned by any session) and wait for its result."""
        pending = _Pending(method=method, done=anyio.Event())
        backend_id = self._register(pending)
        message: Message = {"jsonrpc": "2.0", "id": backend_id, "method": method}
        if params is not None:
            message["params"] = params
        try:
            await self._write(message)
            assert pending.done is not None
            await pending.done.wait()
        finally:
            self._pending.pop(backend_id, None)
        response = pending.response or error_response(backend_id, CONNECTION_CLOSED, "no response")
        if "error" in response:
            error = response["error"] if isinstance(response["error"], dict) else {}
            raise BackendError(f"server {self.name!r}: {method} failed: {error.get('message', response['error'])}")
        return response.get("result")

    async def run(self) -> None:
        """Read the server's stdout until it ends; then fail everything in flight."""
        reason = "closed its stdout"
        try:
            await self._read_loop()
            if self._wait_exit is not None and self.error is None:
                # stdout usually ends because the process exits: give it a moment so the error has its exit code.
                with anyio.move_on_after(1.0):
                    await self._wait_exit()
                reason = "exited" if "exit code" in self._describe_exit() else reason
        except BackendError as exc:
            reason = str(exc)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            reason = f"pipe error: {exc}"
        except anyio.get_cancelled_exc_class():
            self.fail("was stopped", expected=True)  # the owner ended the connection: nothing went wrong
            raise
        finally:
            self.fail(reason)

    def fail(self, reason: str, *, expected: bool = False) -> None:
        """End the connection: answer every in-flight request with an error naming the server."""
        if self.error is not None:
            return
        detail = "" if expected else self._describe_exit()
        text = f"MCP server {self.name!r} {reason}" + (f"; {detail}" if detail else "")
        self.error = BackendError(text)
        logger.log(logging.DEBUG if expected else logging.WARNING, "%s", text)
        pending, self._pending = self._pending, {}
        self._progress.clear()
        for backend_id, entry in pending.items():
            if entry.channel is not None and entry.client_id is not None:
                entry.channel.inflight.pop(entry.client_id, None)
                entry.channel.deliver(error_response(entry.client_id, CONNECTION_CLOSED, text))
            elif entry.done is not None:
                entry.response = error_response(backend_id, CONNECTION_CLOSED, text)
                entry.done.set()
        self._server_requests.clear()
        self.closed.set()

    # ------------------------------------------------------------------ sessions

    def attach(self, sink: Sink, *, on_overflow: Callable[[str], None] | None = None) -> Channel:
        """A new virtual session whose server-to-client messages go into ``sink``.

        ``on_overflow`` is called (after the session was detached) when ``sink`` is full for a message that may
        not be dropped: the owner should end the session, so that its reader drains and then sees the end.
        """
        if self.error is not None:
            raise self.error
        channel = Channel(self, next(self._channel_ids), sink, on_overflow)
        self.channels[channel.id] = channel
        return channel

    def detach(self, channel: Channel, *, reason: str = "closed") -> None:
        """Forget a session: cancel its requests at the server, release its subscriptions and its log level."""
        if channel.closed:
            return
        channel.closed = True
        channel.close_reason = reason
        self.channels.pop(channel.id, None)
        text = f"mcpshare: session on MCP server {self.name!r} closed: {reason}"
        inflight, channel.inflight = channel.inflight, {}
        for client_id, backend_id in inflight.items():
            entry = self._pending.pop(backend_id, None)
            self._progress.pop(backend_id, None)
            if entry is not None and self.error is None:
                self._spawn_write(self._cancel_message(backend_id, text))
            channel.offer(error_response(client_id, CONNECTION_CLOSED, text))
        for request_id, owner in list(self._server_requests.items()):
            if owner.channel is channel:
                del self._server_requests[request_id]
                self._spawn_write(error_response(request_id, INTERNAL_ERROR, f"mcpshare: client session {reason}"))
        for uri in list(channel.subscriptions):
            self._spawn_unsubscribe(channel, uri)
        if channel.log_level is not None:
            channel.log_level = None
            self._spawn_level_update()

    async def from_client(self, channel: Channel, message: Message) -> None:
        """Handle one message a session sends toward the server."""
        if channel.closed:
            raise SessionOverflow(f"session on {self.name!r} is closed: {channel.close_reason}")
        kind = kind_of(message)
        if kind == "request":
            await self._client_request(channel, message)
        elif kind == "notification":
            await self._client_notification(channel, message)
        elif kind == "response":
            await self._client_response(channel, message)
        else:
            logger.warning("%s: session %d sent an invalid message; dropped: %.200r", self.name, channel.id, message)

    # ------------------------------------------------------------------ client -> server

    def from_client_now(self, channel: Channel, message: Message) -> bool:
        """:meth:`from_client` for a request that needs no waiting, done at once: True when it is done, False when
        it needs :meth:`from_client` (any other message, a level or subscription change, a closed session, or a
        server pipe without room). For a caller outside any task (the broker's readiness callback), which saves the
        switch to one."""
        if channel.closed or kind_of(message) != "request":
            return False
        return self._request_now(channel, message)

    def _request_now(self, channel: Channel, message: Message) -> bool:
        """A client request handled without waiting, if it can be; else False, with nothing done yet."""
        client_id = message["id"]
        method: str = message["method"]
        params = message.get("params")
        if not _valid_id(client_id):
            channel.deliver(error_response(None, INVALID_REQUEST, "request id must be a string or an integer"))
            return True
        if self.error is not None:
            channel.deliver(error_response(client_id, CONNECTION_CLOSED, str(self.error)))
            return True
        if method == "initialize":
            self._answer_initialize(channel, client_id, params)
            return True
        if method == "server/discover":
            channel.deliver(
                error_response(
                    client_id,
                    METHOD_NOT_FOUND,
                    f"server {self.name!r} is shared over the {self.protocol_version} handshake; use initialize",
                )
            )
            return True
        if method in _AWAITED_METHODS:
            return False
        if method == "tools/list":
            cursor = params.get("cursor") if isinstance(params, dict) else None
            cached = self._tools_cache.get(cursor)
            if cached is not None:
                self.stats.cache_hits += 1
                channel.deliver(result_response(client_id, cached))
                return True
        if self._send_stream.buffered > HIGH_WATER:
            return False  # the write would wait
        outgoing = self._outgoing_request(channel, client_id, method, params, message)
        if outgoing is not None:
            try:
                self._write_now(outgoing)
            except BackendError as exc:
                self._forward_failed(channel, client_id, outgoing["id"], exc)
            except BaseException:
                self._settle(outgoing["id"])  # it could not be sent (say, a value JSON cannot carry)
                raise
        return True

    async def _client_request(self, channel: Channel, message: Message) -> None:
        if self._request_now(channel, message):
            return
        client_id = message["id"]
        method: str = message["method"]
        params = message.get("params")
        if method == "logging/setLevel":
            await self._set_level(channel, client_id, params)
            return
        if method in _AWAITED_METHODS:  # resources/subscribe, resources/unsubscribe
            await self._subscription(channel, client_id, method, params)
            return
        outgoing = self._outgoing_request(channel, client_id, method, params, message)
        if outgoing is None:
            return
        try:
            await self._write(outgoing)
        except BackendError as exc:
            self._forward_failed(channel, client_id, outgoing["id"], exc)
        except BaseException:
            self._settle(outgoing["id"])
            raise

    def _answer_initialize(self, channel: Channel, client_id: RequestId, params: Any) -> None:
        if isinstance(params, dict):
            capabilities = params.get("capabilities")
            info = params.get("clientInfo")
            channel.capabilities = capabilities if isinstance(capabilities, dict) else {}
            channel.client_info = info if isinstance(info, dict) else {}
        assert self.initialize_result is not None, "initialize() must complete before sessions attach"
        channel.deliver(result_response(client_id, self.initialize_result))

    def _outgoing_request(
        self, channel: Channel, client_id: RequestId, method: str, params: Any, message: Message
    ) -> Message | None:
        """Register a request for forwarding and return it as the server must see it (backend id, and progress
        token); None when it was answered instead (its id is in use)."""
        if client_id in channel.inflight:
            channel.deliver(error_response(client_id, INVALID_REQUEST, f"request id {client_id!r} is already in use"))
            return None
        pending = _Pending(method=method, channel=channel, client_id=client_id)
        backend_id = self._register(pending)
        channel.inflight[client_id] = backend_id
        outgoing = dict(message)
        outgoing["id"] = backend_id
        meta = _meta(params)
        if meta is not None and _valid_id(meta.get("progressToken")):
            pending.progress_token = meta["progressToken"]
            self._progress[backend_id] = pending
            outgoing["params"] = {**params, "_meta": {**meta, "progressToken": backend_id}}
        if method == "tools/list":
            pending.uri = json.dumps(
                [self._tools_generation, params.get("cursor") if isinstance(params, dict) else None]
            )
        self.stats.requests += 1
        return outgoing

    def _forward_failed(self, channel: Channel, client_id: RequestId, backend_id: int, exc: BackendError) -> None:
        # The server died under us. fail() has answered this request if it was pending then; if not, do it.
        if self._pending.pop(backend_id, None) is not None:
            self._progress.pop(backend_id, None)
            channel.inflight.pop(client_id, None)
            channel.deliver(error_response(client_id, CONNECTION_CLOSED, str(exc)))

    async def _client_notification(self, channel: Channel, message: Message) -> None:
        method = message["method"]
        if method == "notifications/initialized":
            return  # the backend sent its own, once
        if method == "notifications/roots/list_changed":
            return  # roots of a shared server come from the pool's workspace, not from one session
        if self.error is not None:
            return
        if method == "notifications/cancelled":
            params = message.get("params")
            client_id = params.get("requestId") if isinstance(params, dict) else None
            backend_id = channel.inflight.get(client_id) if _valid_id(client_id) else None
            if backend_id is None:
                return  # names nothing of this session's: never let it cancel someone else's request
            self._settle(backend_id)
            with contextlib.suppress(BackendError):  # a cancel for a dead server has nothing left to cancel
                await self._write({**message, "params": {**params, "requestId": backend_id}})
            return
        with contextlib.suppress(BackendError):  # notifications to a dead server are lost with it
            await self._write(message)

    async def _client_response(self, channel: Channel, message: Message) -> None:
        request_id = message["id"]
        owner = self._server_requests.get(request_id) if _valid_id(request_id) else None
        if owner is None or owner.channel is not channel:
            logger.warning(
                "%s: session %d answered a request it does not own (%r); dropped", self.name, channel.id, request_id
            )
            return
        del self._server_requests[request_id]
        if self.error is None:
            with contextlib.suppress(BackendError):  # the asking server died meanwhile
                await self._write(message)

    async def _set_level(self, channel: Channel, client_id: RequestId, params: Any) -> None:
        level = params.get("level") if isinstance(params, dict) else None
        if level not in _LOG_RANK:
            channel.deliver(error_response(client_id, -32602, f"unknown logging level {level!r}"))
            return
        channel.log_level = level
        try:
            await self._update_server_level()
        except BackendError as exc:
            channel.deliver(error_response(client_id, INTERNAL_ERROR, str(exc)))
            return
        channel.deliver(result_response(client_id, {}))

    def _wanted_level(self) -> str | None:
        """The finest level any session needs; None while nobody asked (the server keeps its own default).

        Once someone asked, a session that never did still needs :data:`DEFAULT_SESSION_LOG_LEVEL`.
        """
        levels = [c.log_level for c in self.channels.values() if c.log_level is not None]
        if not levels:
            return None
        if any(c.log_level is None for c in self.channels.values()):
            levels.append(DEFAULT_SESSION_LOG_LEVEL)
        return min(levels, key=_LOG_RANK.__getitem__)

    async def _update_server_level(self) -> None:
        wanted = self._wanted_level()
        if wanted is None or wanted == self._server_log_level or self.error is not None:
            return
        self._server_log_level = wanted
        await self.request("logging/setLevel", {"level": wanted})

    async def _subscription(self, channel: Channel, client_id: RequestId, method: str, params: Any) -> None:
        uri = params.get("uri") if isinstance(params, dict) else None
        if not isinstance(uri, str):
            channel.deliver(error_response(client_id, -32602, f"{method} needs a string 'uri'"))
            return
        subscribers = self._subscribers.setdefault(uri, set())
        first_or_last = (method == "resources/subscribe" and not subscribers) or (
            method == "resources/unsubscribe" and subscribers == {channel}
        )
        if method == "resources/subscribe":
            subscribers.add(channel)
            channel.subscriptions.add(uri)
        else:
            subscribers.discard(channel)
            channel.subscriptions.discard(uri)
            if not subscribers:
                del self._subscribers[uri]
        if not first_or_last:
            channel.deliver(result_response(client_id, {}))
            return
        try:
            await self.request(method, params)
        except BackendError as exc:
            if method == "resources/subscribe":
                self._drop_subscriber(channel, uri)
            channel.deliver(error_response(client_id, INTERNAL_ERROR, str(exc)))
            return
        channel.deliver(result_response(client_id, {}))

    def _drop_subscriber(self, channel: Channel, uri: str) -> bool:
        """Forget one subscriber; True when it was the last one for ``uri``."""
        channel.subscriptions.discard(uri)
        subscribers = self._subscribers.get(uri)
        if subscribers is None:
            return False
        subscribers.discard(channel)
        if subscribers:
            return False
        del self._subscribers[uri]
        return True

    async def restore(
        self, channel: Channel, *, capabilities: dict[str, Any], log_level: str | None, subscriptions: Iterable[str]
    ) -> None:
        """Give a session moved here from another backend its declared capabilities, level and subscriptions."""
        channel.capabilities = capabilities
        for uri in subscriptions:
            subscribers = self._subscribers.setdefault(uri, set())
            first = not subscribers
            subscribers.add(channel)
            channel.subscriptions.add(uri)
            if first:
                await self.request("resources/subscribe", {"uri": uri})
        if log_level is not None:
            channel.log_level = log_level
            await self._update_server_level()

    async def watch(self, hang_timeout: float) -> None:
        """Fail the backend when it stops answering while requests wait.

        Liveness is "requests complete", not "pings answered": a server is only suspected when requests have
        waited ``hang_timeout / 2`` with no response at all; then it is probed with one ping, and it is declared
        hung when ``hang_timeout`` passes with still no response to anything (a long tool call on a server that
        answers pings is healthy).
        """
        step = max(min(hang_timeout / 4, 1.0), 0.01)
        while self.error is None:
            await anyio.sleep(step)
            since = self._waiting_since
            if since is None:
                continue
            quiet = time.monotonic() - since
            if quiet >= hang_timeout:
                self.fail(
                    f"stopped answering: no response for {quiet:.1f} s with {len(self._pending)} request(s) waiting"
                )
                return
            if quiet >= hang_timeout / 2 and not self._probing:
                self._probing = True
                self._spawn_write(
                    {"jsonrpc": "2.0", "id": self._register(_Pending("ping", done=anyio.Event())), "method": "ping"}
                )
            elif quiet < hang_timeout / 2:
                self._probing = False

    def cached_tools(self) -> Any:
        """The first page of the tool list as last listed (None when nobody listed since the last change)."""
        return self._tools_cache.get(None)

    async def list_tools(self) -> Any:
        """The first page of the tool list, from the cache or from the server (then cached)."""
        cached = self._tools_cache.get(None)
        if cached is not None:
            return cached
        generation = self._tools_generation
        result = await self.request("tools/list")
        if generation == self._tools_generation and isinstance(result, dict):
            self._tools_cache[None] = result
        return result

    def subscribed_uris(self) -> list[str]:
        """URIs with at least one subscriber (to restore after a respawn)."""
        return sorted(self._subscribers)

    # ------------------------------------------------------------------ server -> client

    async def _read_loop(self) -> None:
        stream = self._receive_stream
        if self._eager_reads:
            stream.eager = self._take_line
        while True:
            try:
                line = await stream.receive_line()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return  # closed: the process is being stopped
            except anyio.DelimiterNotFound:
                raise BackendError(f"sent a line longer than the limit of {stream.max_line_bytes} bytes") from None
            self._handle_line(line)
            if stream.line_ready:
                # More lines wait: let readers take this one first, so bursts stay small. (Otherwise the next
                # receive yields anyway; a checkpoint there would cost a loop turn.)
                await anyio.lowlevel.checkpoint()

    def _take_line(self, line: bytes) -> bool:
        self._handle_line(line)
        return True

    def _handle_line(self, line: bytes) -> None:
        line = line.strip()
        if not line:
            return
        try:
            message = decode(line)
        except (UnicodeDecodeError, ValueError):
            self.stats.bad_lines += 1
            logger.warning("%s: ignored a line on stdout that is not JSON-RPC: %.200r", self.name, line)
            return
        kind = kind_of(message)
        if kind == "response":
            self._server_response(message)
        elif kind == "notification":
            self._server_notification(message)
        elif kind == "request":
            self._server_request(message)
        elif isinstance(message, list):
            self.stats.bad_lines += 1
            logger.warning("%s: JSON-RPC batches are not supported; dropped a batch of %d", self.name, len(message))
        else:
            self.stats.bad_lines += 1
            logger.warning("%s: ignored an invalid JSON-RPC message: %.200r", self.name, message)

    def _server_response(self, message: Message) -> None:
        backend_id = message["id"]
        entry = self._pending.pop(backend_id, None) if isinstance(backend_id, int) else None
        if entry is None:
            self.stats.dropped += 1
            logger.info("%s: response to unknown or settled request %r dropped", self.name, backend_id)
            return
        self._progress.pop(backend_id, None)
        self.stats.responses += 1
        self._answered()
        if entry.done is not None:
            entry.response = message
            entry.done.set()
            return
        channel = entry.channel
        assert channel is not None and entry.client_id is not None
        channel.inflight.pop(entry.client_id, None)
        if entry.method == "tools/list" and "result" in message and entry.uri is not None:
            generation, cursor = json.loads(entry.uri)
            if generation == self._tools_generation and isinstance(message["result"], dict):
                self._tools_cache[cursor] = message["result"]
        restored = dict(message)
        restored["id"] = entry.client_id
        channel.deliver(restored)

    def _server_notification(self, message: Message) -> None:
        method: str = message["method"]
        params = message.get("params")
        if method == "notifications/progress":
            token = params.get("progressToken") if isinstance(params, dict) else None
            entry = self._progress.get(token) if isinstance(token, int) else None
            if entry is None or entry.channel is None:
                self.stats.dropped += 1
                return
            entry.channel.deliver({**message, "params": {**params, "progressToken": entry.progress_token}})
            return
        if method == "notifications/message":
            level = params.get("level") if isinstance(params, dict) else None
            rank = _LOG_RANK.get(level, len(LOG_LEVELS)) if isinstance(level, str) else len(LOG_LEVELS)
            for channel in list(self.channels.values()):
                if rank >= _LOG_RANK[channel.log_level or DEFAULT_SESSION_LOG_LEVEL]:
                    channel.deliver(message)
            return
        if method == "notifications/resources/updated":
            uri = params.get("uri") if isinstance(params, dict) else None
            for channel in list(self._subscribers.get(uri, ())) if isinstance(uri, str) else ():
                channel.deliver(message)
            return
        if method == "notifications/cancelled":
            request_id = params.get("requestId") if isinstance(params, dict) else None
            owner = self._server_requests.pop(request_id, None) if _valid_id(request_id) else None
            if owner is not None:
                owner.channel.deliver(message)
            return
        if method == "notifications/tools/list_changed":
            self._tools_generation += 1
            self._tools_cache.clear()
        self._broadcast(message, self.channels.values())

    def _broadcast(self, message: Message, channels: Iterable[Channel]) -> None:
        for channel in list(channels):
            channel.deliver(message)

    def _server_request(self, message: Message) -> None:
        request_id = message["id"]
        method: str = message["method"]
        if not _valid_id(request_id):
            return
        if method == "ping":
            self._spawn_write(result_response(request_id, {}))
            return
        if method == "roots/list":
            self._spawn_write(result_response(request_id, {"roots": self._roots()}))
            return
        if request_id in self._server_requests:
            self.stats.dropped += 1
            self._spawn_write(
                error_response(request_id, INVALID_REQUEST, f"request id {request_id!r} is already in use")
            )
            return
        owner = self.owner_of(message)
        if owner is None:
            self.stats.declined += 1
            busy = sorted({e.channel.id for e in self._pending.values() if self._may_own(e)})
            reason = (
                "no client session has a request in flight"
                if not busy
                else f"{len(busy)} client sessions have requests in flight"
            )
            text = f"mcpshare: cannot attribute {method} to a single client of shared server {self.name!r}: {reason}"
            logger.warning("%s", text)
            self._spawn_write(error_response(request_id, INTERNAL_ERROR, text))
            return
        self._server_requests[request_id] = _ServerRequest(channel=owner, method=method)
        owner.deliver(message)

    @staticmethod
    def _may_own(entry: _Pending) -> bool:
        return entry.channel is not None and entry.method not in QUIET_METHODS

    def owner_of(self, message: Message) -> Channel | None:
        """The one session a server-to-client request belongs to, or None when that cannot be known.

        A related-request hint in ``_meta`` (``io.modelcontextprotocol/related-request-id``, the backend id of
        the request that caused it) wins; otherwise the owner is the only session with a request in flight that
        could have caused it. Two candidates means no owner: guessing would leak one conversation into another.
        """
        meta = _meta(message.get("params"))
        hint = meta.get("io.modelcontextprotocol/related-request-id") if meta else None
        if isinstance(hint, int):
            entry = self._pending.get(hint)
            return entry.channel if entry is not None and entry.channel is not None else None
        owners = {entry.channel for entry in self._pending.values() if self._may_own(entry)}
        if len(owners) == 1:
            return owners.pop()
        return None

    # ------------------------------------------------------------------ plumbing

    # The hang clock reads time.monotonic() directly: anyio.current_time() looks its backend up on every call, a
    # cost paid on every forwarded request.

    def _register(self, pending: _Pending) -> int:
        backend_id = next(self._ids)
        self._pending[backend_id] = pending
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        return backend_id

    def _answered(self) -> None:
        """Restart the hang clock: the server just answered; it waits on whatever is still pending from now."""
        self._waiting_since = time.monotonic() if self._pending else None

    def _settle(self, backend_id: int) -> None:
        entry = self._pending.pop(backend_id, None)
        if not self._pending:
            self._waiting_since = None
        self._progress.pop(backend_id, None)
        if entry is not None and entry.channel is not None and entry.client_id is not None:
            entry.channel.inflight.pop(entry.client_id, None)

    @staticmethod
    def _cancel_message(backend_id: int, reason: str) -> Message:
        return {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": backend_id, "reason": reason},
        }

    async def cancel(self, backend_id: int, reason: str) -> None:
        """Cancel one request at the server and forget it."""
        self._settle(backend_id)
        if self.error is None:
            await self._write(self._cancel_message(backend_id, reason))

    def _write_now(self, message: Message) -> None:
        """Write without waiting, by a caller that saw the server's stdin had room (else this could buffer past its
        high-water mark)."""
        if self.error is not None:
            raise self.error
        try:
            self._send_stream.send_nowait(encode(message), sys.maxsize)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise self._stdin_broke(exc) from exc

    async def _write(self, message: Message) -> None:
        if self.error is not None:
            raise self.error
        try:
            await self._send_stream.send(encode(message))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise self._stdin_broke(exc) from exc

    def _stdin_broke(self, exc: BaseException) -> BackendError:
        self.fail(f"stopped reading its stdin ({exc.__class__.__name__})")
        return BackendError(str(self.error))

    # Writes that must happen from synchronous routing code (answers to server requests, cancels on detach) are
    # queued here and flushed by the writer task that :meth:`serve` runs.
    _outbox: MemoryObjectSendStream[Message] | None = None

    def _spawn_write(self, message: Message) -> None:
        if self._outbox is None or self.error is not None:
            return
        try:
            self._outbox.send_nowait(message)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            logger.warning("%s: internal write queue full; dropped %s", self.name, message.get("method", "a response"))

    def _spawn_unsubscribe(self, channel: Channel, uri: str) -> None:
        if self._drop_subscriber(channel, uri):
            self._spawn_write(
                {
                    "jsonrpc": "2.0",
                    "id": self._register(_Pending("resources/unsubscribe", done=anyio.Event())),
                    "method": "resources/unsubscribe",
                    "params": {"uri": uri},
                }
            )

    def _spawn_level_update(self) -> None:
        wanted = self._wanted_level()
        if wanted is None or wanted == self._server_log_level:
            return
        self._server_log_level = wanted
        self._spawn_write(
            {
                "jsonrpc": "2.0",
                "id": self._register(_Pending("logging/setLevel", done=anyio.Event())),
                "method": "logging/setLevel",
                "params": {"level": wanted},
            }
        )

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the reader and the internal writer until the server's stdout ends or the task is cancelled."""
        send, receive = anyio.create_memory_object_stream[Message](DEFAULT_QUEUE_SIZE)
        self._outbox = send

        async def flush() -> None:
            async with receive:
                async for message in receive:
                    try:
                        await self._write(message)
                    except BackendError:
                        return

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(flush)
                task_status.started()
                await self.run()
                tg.cancel_scope.cancel()
        finally:
            self._outbox = None
            send.close()
