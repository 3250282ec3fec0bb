"""One backend process multiplexed into many virtual sessions: the I/O around the routing core.

:class:`Backend` reads the server's stdout line by line, feeds each message to its :class:`~mcpshare.routing.Router`
and carries out what the router says: write to the server's stdin, hand a message to a session, wake an internal
request, arm a timer. Every routing decision (ids, progress, cancels, caches, subscriptions, log levels, who owns a
server-to-client request, the protocol eras) is the router's; this module only moves bytes and keeps time.

It owns no process: it reads and writes two byte streams, which the pool wires to a server's stdout and stdin.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Literal, Protocol

import anyio
import anyio.abc
import orjson

from mcpshare.fdstream import HIGH_WATER, FdLineReceiveStream, FdSendStream
from mcpshare.metrics import CallMetrics
from mcpshare.routing import DELIVER, DONE, FREED, LEARNED, TIMER, TO_SERVER, Action, Learned, Router, Session
from mcpshare.routing.wire import (
    CLIENT_CAPABILITIES,
    CONNECTION_CLOSED,
    DEFAULT_SESSION_LOG_LEVEL,
    DROPPABLE_NOTIFICATIONS,
    HANDSHAKE_VERSION,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    LOG_LEVELS,
    METHOD_NOT_FOUND,
    MODERN_VERSION,
    MODERN_VERSIONS,
    QUIET_METHODS,
    REQUEST_TIMEOUT,
    UNSUPPORTED_PROTOCOL_VERSION,
    Message,
    RequestId,
    error_response,
    kind_of,
    result_response,
)

logger = logging.getLogger("mcpshare.mux")

__all__ = [
    "CLIENT_CAPABILITIES",
    "CONNECTION_CLOSED",
    "DEFAULT_SESSION_LOG_LEVEL",
    "INTERNAL_ERROR",
    "INVALID_REQUEST",
    "LOG_LEVELS",
    "METHOD_NOT_FOUND",
    "PROTOCOL_VERSION",
    "QUIET_METHODS",
    "REQUEST_TIMEOUT",
    "SESSION_BUFFER_BYTES",
    "Backend",
    "BackendError",
    "Channel",
    "Message",
    "ProtocolChoice",
    "SessionOverflow",
    "Sink",
    "decode",
    "encode",
    "error_response",
    "kind_of",
    "result_response",
]

PROTOCOL_VERSION: Final = HANDSHAKE_VERSION
SESSION_BUFFER_BYTES: Final = 8 * 1024 * 1024
"""Bytes of messages one session may have waiting for it (a pool lease's inbox, a shim's pipe, an HTTP stream); a
message that would pass it is dropped if it is a droppable notification and otherwise ends that session (queue
overflow). One message larger than this still goes to a session with nothing waiting."""
PROBE_TIMEOUT: Final = 5.0
"""Seconds ``protocol = "auto"`` waits for an answer to ``server/discover`` before it tries the handshake."""

ProtocolChoice = Literal["auto", "2025-11-25", "2026-07-28"]


class Sink(Protocol):
    """Where a session's messages go (a memory object stream's send end, or a pool lease's inbox): ``send_nowait``
    never blocks, raising :class:`anyio.WouldBlock` when full and :class:`anyio.BrokenResourceError` or
    :class:`anyio.ClosedResourceError` when nobody reads any more."""

    def send_nowait(self, item: dict[str, Any], /) -> None: ...

    def close(self) -> None: ...


class BackendError(RuntimeError):
    """The backend connection failed; in-flight and later requests get this as a JSON-RPC error."""


class SessionOverflow(RuntimeError):
    """A session did not read its messages and its bounded queue filled up: it was disconnected.

    One class for both places that say so (the mux, for a closed channel, and the pool's lease), so a host catches
    it once as ``mcpshare.SessionOverflow``.
    """


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


class Channel:
    """One virtual session on a backend, as its owner (a lease) sees it: a sink its messages go to.

    Messages for the session are put, without blocking, into ``sink``; the backend's reader never waits for a
    slow session. When the sink is full, droppable notifications are dropped and anything else closes the
    session with :class:`SessionOverflow` (its requests are cancelled at the server).
    """

    def __init__(
        self, backend: Backend, session: Session, sink: Sink, on_overflow: Callable[[str], None] | None
    ) -> None:
        self.backend = backend
        self.session = session
        self.id = session.id
        self._sink = sink
        self._on_overflow = on_overflow
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<Channel {self.id} on {self.backend.name}>"

    @property
    def closed(self) -> bool:
        return self.session.closed

    @property
    def close_reason(self) -> str | None:
        return self.session.close_reason

    @property
    def capabilities(self) -> dict[str, Any]:
        return self.session.capabilities

    @property
    def log_level(self) -> str | None:
        return self.session.log_level

    @property
    def subscriptions(self) -> set[str]:
        return self.session.subscriptions

    @property
    def inflight(self) -> dict[RequestId, Any]:
        return self.session.inflight

    async def send(self, message: Message) -> None:
        """Send one client-to-server message from this session."""
        await self.backend.from_client(self, message)

    def deliver(self, message: Message) -> None:
        """Queue one server-to-client message for this session without ever blocking the backend."""
        if self.session.closed:
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

    def close(self, reason: str = "closed") -> None:
        """Detach from the backend: cancel own requests at the server, drop own subscriptions and level."""
        self.backend.detach(self, reason=reason)


class Backend:
    """One live connection to one server process, shared by many :class:`Channel` sessions.

    Lifecycle: construct, run :meth:`serve` in a task group (the reader and the timers), ``await initialize()``
    once (the era negotiation), then attach channels. :meth:`fail` ends it: every in-flight request of every
    session is answered at once with an error that names the server, and later requests fail the same way.

    With ``eager_reads`` the server's lines are routed by the event loop's readiness callback that read them
    (:attr:`FdLineReceiveStream.eager`), not by the reader task: no task switch per message. Routing may start a
    timer task, which outside any task only works where anyio runs the loop (``anyio.run``, as the broker does),
    not under a host's plain ``asyncio.run``: hence opt-in.
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
        protocol: ProtocolChoice = "2025-11-25",
        learned: Learned | None = None,
        on_learned: Callable[[Learned], None] | None = None,
        probe_timeout: float = PROBE_TIMEOUT,
        input_ttl: float | None = None,
    ) -> None:
        self.name = name
        self._send_stream = send_stream
        self._receive_stream = receive_stream
        self.router = Router(name, client_info=client_info, roots=roots, learned=learned)
        if input_ttl is not None:
            self.router.input_ttl = input_ttl
        self.protocol_choice = protocol
        self._probe_timeout = probe_timeout
        self._on_learned = on_learned
        self._eager_reads = eager_reads
        self._describe_exit = describe_exit or (lambda: "")
        self._wait_exit = wait_exit
        self.channels: dict[int, Channel] = {}
        self._waiters: dict[int, tuple[anyio.Event, list[Message]]] = {}
        self.error: BackendError | None = None
        self.closed = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._waiting_since: float | None = None
        self._last_answer = time.monotonic()
        self._probing = False
        self.metrics = CallMetrics()
        self.on_freed: Callable[[], None] | None = None
        """Called when a call that held the gate ends (the pool wakes calls waiting for a free lane)."""

    # ------------------------------------------------------------------ state

    @property
    def alive(self) -> bool:
        return self.error is None

    @property
    def stats(self) -> Any:
        return self.router.stats

    @property
    def pending(self) -> dict[int, Any]:
        """Requests the server owes an answer, by backend id (for diagnostics and tests)."""
        return self.router.pending

    @property
    def waiting(self) -> int:
        """Requests the server owes an answer (a 2026-07-28 listen stream owes none until it ends)."""
        return self.router.waiting

    @property
    def protocol_version(self) -> str | None:
        return self.router.protocol_version

    @property
    def initialize_result(self) -> dict[str, Any] | None:
        """The handshake result sessions of the handshake era are answered with (synthesized on a 2026-07-28 one)."""
        era = self.router.era
        return getattr(era, "initialize_result", None) or getattr(era, "handshake", None)

    @property
    def echoes_traceparent(self) -> bool:
        return self.router.echoes_traceparent

    # ------------------------------------------------------------------ running

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read the server's stdout until it ends (then fail everything in flight); run the router's timers."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await self.run()
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

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
            self.router.stats.bad_lines += 1
            logger.warning("%s: ignored a line on stdout that is not JSON-RPC: %.200r", self.name, line)
            return
        if isinstance(message, list):
            self.router.stats.bad_lines += 1
            logger.warning("%s: JSON-RPC batches are not supported; dropped a batch of %d", self.name, len(message))
            return
        if kind_of(message) == "invalid":
            self.router.stats.bad_lines += 1
            logger.warning("%s: ignored an invalid JSON-RPC message: %.200r", self.name, message)
            return
        if "method" not in message:
            self._last_answer = time.monotonic()
            self.metrics.answered(message.get("id"), error="error" in message)
        self._execute(self.router.from_server(message, time.monotonic()))

    def _execute(self, actions: Iterable[Action]) -> None:
        """Carry out the router's actions, in order."""
        for action in actions:
            kind = action[0]
            if kind == DELIVER:
                channel = action[1].endpoint
                if channel is not None:
                    channel.deliver(action[2])
            elif kind == TO_SERVER:
                self._write_now(action[1])
            elif kind == DONE:
                waiter = self._waiters.pop(action[1], None)
                if waiter is not None:
                    waiter[1].append(action[2])
                    waiter[0].set()
            elif kind == TIMER:
                if self._tg is not None:
                    self._tg.start_soon(self._timer, action[1], action[2])
            elif kind == FREED:
                if self.on_freed is not None:
                    self.on_freed()
            elif kind == LEARNED:
                learned = self.router.learned
                if learned.changed and self._on_learned is not None:
                    self._on_learned(learned)
                learned.changed = False

    async def _timer(self, token: Any, seconds: float) -> None:
        await anyio.sleep(seconds)
        if self.error is None:
            self._execute(self.router.timer(token, time.monotonic()))

    def _write_now(self, message: Message) -> None:
        """Write without waiting (senders waited for room before they gave the router their message)."""
        if self.error is not None:
            return
        method = message.get("method")
        if method is not None:
            if "id" in message:
                if self._waiting_since is None:
                    self._waiting_since = time.monotonic()  # the watchdog clears it while nothing waits
                entry = self.router.pending.get(message["id"])
                if entry is not None and entry.session is not None:
                    self.metrics.sent(message["id"])
            elif method == "notifications/cancelled":
                params = message.get("params")
                self.metrics.forget(params.get("requestId") if isinstance(params, dict) else None)
        try:
            data = encode(message)
        except (TypeError, ValueError):
            self._execute(self.router.unsendable(message))
            raise
        try:
            self._send_stream.send_nowait(data, sys.maxsize)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.fail(f"stopped reading its stdin ({exc.__class__.__name__})")

    def fail(self, reason: str, *, expected: bool = False) -> None:
        """End the connection: answer every in-flight request with an error naming the server."""
        if self.error is not None:
            return
        detail = "" if expected else self._describe_exit()
        text = f"MCP server {self.name!r} {reason}" + (f"; {detail}" if detail else "")
        self.error = BackendError(text)
        logger.log(logging.DEBUG if expected else logging.WARNING, "%s", text)
        self._execute(self.router.fail(text))
        for event, _ in list(self._waiters.values()):
            event.set()
        self.closed.set()

    # ------------------------------------------------------------------ the era

    async def initialize(self) -> dict[str, Any]:
        """The one handshake of this process, in the era ``protocol`` asks for (see :data:`ProtocolChoice`).

        * ``"2025-11-25"`` (the default): ``initialize``; a server that refuses it with -32022 naming only
          2026-07-28 versions is asked ``server/discover`` instead;
        * ``"auto"``: ``server/discover`` first, as the spec's stdio rule says: a DiscoverResult with a 2026-07-28
          version, or a -32022 naming one, means modern; any other answer, or none within the probe timeout,
          means the handshake;
        * ``"2026-07-28"``: ``server/discover`` only.
        """
        if self.protocol_choice in ("auto", MODERN_VERSION):
            try:
                with anyio.fail_after(self._probe_timeout if self.protocol_choice == "auto" else None):
                    found = await self._discover()
            except TimeoutError:
                found = None
                logger.info(
                    "%s: no answer to server/discover within %g s; trying the handshake", self.name, self._probe_timeout
                )
            if found is not None:
                return found
            if self.protocol_choice == MODERN_VERSION:
                raise BackendError(f"server {self.name!r} does not speak {MODERN_VERSION} (server/discover failed)")
        response = await self._internal(
            "initialize",
            {
                "protocolVersion": HANDSHAKE_VERSION,
                "capabilities": dict(self.router.capabilities),
                "clientInfo": self.router.client_info,
            },
        )
        if "error" in response and _names_only_modern(response["error"]):
            found = await self._discover()
            if found is not None:
                return found
        result = self._result_of("initialize", response)
        if not isinstance(result, dict) or not isinstance(result.get("protocolVersion"), str):
            raise BackendError(f"server {self.name!r} answered initialize with an invalid result: {result!r:.300}")
        self._execute(self.router.use_legacy(result))
        self._write_now({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    async def _discover(self) -> dict[str, Any] | None:
        """``server/discover``: the result when it proves a 2026-07-28 server (then the router speaks it)."""
        response = await self._internal("server/discover", None, modern=True)
        result = response.get("result")
        if isinstance(result, dict) and set(result.get("supportedVersions") or ()) & MODERN_VERSIONS:
            self._execute(self.router.use_modern(result))
            return result
        return None

    # ------------------------------------------------------------------ internal requests

    async def _internal(self, method: str, params: Any, *, modern: bool = False) -> Message:
        """Send a request of our own and wait for the server's response (an error one included)."""
        if modern:
            from mcpshare.routing.modern import envelope

            params = {**(params or {}), "_meta": envelope(self.router, None, None)}
        backend_id, actions = self.router.request(method, params)
        event = anyio.Event()
        box: list[Message] = []
        self._waiters[backend_id] = (event, box)
        try:
            self._execute(actions)
            if self.error is not None:
                raise self.error
            await event.wait()
        finally:
            if self._waiters.pop(backend_id, None) is not None:
                self.router.forget(backend_id)
        if not box:
            raise self.error or BackendError(f"server {self.name!r}: no response to {method}")
        return box[0]

    def _result_of(self, method: str, response: Message) -> Any:
        if "error" in response:
            error = response["error"] if isinstance(response["error"], dict) else {}
            raise BackendError(f"server {self.name!r}: {method} failed: {error.get('message', response['error'])}")
        return response.get("result")

    async def request(self, method: str, params: Any = None) -> Any:
        """Send an internal request (not owned by any session) and wait for its result."""
        return self._result_of(method, await self._internal(method, params))

    def cached_tools(self) -> Any:
        """The first page of the tool list as last listed (None when nobody listed since the last change)."""
        return self.router.cached_tools()

    async def list_tools(self) -> Any:
        """The first page of the tool list, from the cache or from the server (then cached)."""
        cached = self.router.cached_tools()
        if cached is not None:
            return cached
        generation = self.router.tools_generation
        result = await self.request("tools/list")
        if isinstance(result, dict):
            self.router.store_tools(result, generation, time.monotonic())
        return result

    # ------------------------------------------------------------------ sessions

    def attach(
        self, sink: Sink, *, on_overflow: Callable[[str], None] | None = None, satellite: bool = False
    ) -> Channel:
        """A new virtual session whose server-to-client messages go into ``sink``.

        ``on_overflow`` is called (after the session was detached) when ``sink`` is full for a message that may
        not be dropped: the owner should end the session, so that its reader drains and then sees the end.
        """
        if self.error is not None:
            raise self.error
        session = self.router.attach(None, satellite=satellite)
        channel = Channel(self, session, sink, on_overflow)
        session.endpoint = channel
        self.channels[channel.id] = channel
        return channel

    def detach(self, channel: Channel, *, reason: str = "closed") -> None:
        """Forget a session: cancel its requests at the server, release its subscriptions and its log level."""
        if channel.session.closed:
            return
        self.channels.pop(channel.id, None)
        actions = self.router.detach(channel.session, reason)
        # The session is closed now: its own last answers (errors for its calls) still go out if there is room.
        for action in actions:
            if action[0] == DELIVER and action[1] is channel.session:
                try:
                    channel._sink.send_nowait(action[2])
                except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
        self._execute(action for action in actions if not (action[0] == DELIVER and action[1] is channel.session))

    async def from_client(self, channel: Channel, message: Message) -> None:
        """Handle one message a session sends toward the server (waiting first while the server's pipe is full)."""
        if channel.session.closed:
            raise SessionOverflow(f"session on {self.name!r} is closed: {channel.session.close_reason}")
        while self._send_stream.buffered > HIGH_WATER and self.error is None:
            await self._send_stream.drain()
        self._execute(self.router.from_session(channel.session, message, time.monotonic()))

    def from_client_now(self, channel: Channel, message: Message) -> bool:
        """:meth:`from_client` done at once when nothing needs waiting (the server's pipe has room): True when it
        is done, False (nothing done) when the caller must use :meth:`from_client`. For a caller outside any task
        (the broker's readiness callback), which saves the switch to one."""
        if channel.session.closed or self._send_stream.buffered > HIGH_WATER:
            return False
        self._execute(self.router.from_session(channel.session, message, time.monotonic()))
        return True

    def restore(
        self, channel: Channel, *, capabilities: dict[str, Any], log_level: str | None, subscriptions: Iterable[str]
    ) -> None:
        """Give a session moved here from another backend its declared capabilities, level and subscriptions."""
        session = channel.session
        session.capabilities = capabilities
        session.initialized = True  # its client had its handshake answered on the backend it came from
        self._execute(self.router.restore(session, log_level=log_level, subscriptions=list(subscriptions)))

    def subscribed_uris(self) -> list[str]:
        """URIs with at least one subscriber."""
        return sorted(getattr(self.router.era, "subscribers", {}))

    # ------------------------------------------------------------------ liveness

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
            waiting = self.router.waiting
            if not waiting:
                self._waiting_since = None
                self._probing = False
                continue
            now = time.monotonic()
            since = max(self._waiting_since or now, self._last_answer)
            quiet = now - since
            if quiet >= hang_timeout:
                self.fail(f"stopped answering: no response for {quiet:.1f} s with {waiting} request(s) waiting")
                return
            if quiet >= hang_timeout / 2 and not self._probing:
                self._probing = True
                self._execute(self.router.request("ping", None, lambda response: [])[1])
            elif quiet < hang_timeout / 2:
                self._probing = False


def _names_only_modern(error: Any) -> bool:
    """A -32022 refusal of the handshake whose ``data.supported`` lists only 2026-07-28 versions."""
    if not isinstance(error, dict) or error.get("code") != UNSUPPORTED_PROTOCOL_VERSION:
        return False
    data = error.get("data")
    supported = data.get("supported") if isinstance(data, dict) else None
    return isinstance(supported, list) and bool(supported) and all(version in MODERN_VERSIONS for version in supported)


# Back-compat for importers of the old module layout.
_ = (result_response, CLIENT_CAPABILITIES)
