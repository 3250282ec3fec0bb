"""The routing core: one backend process shared by many sessions, as a state machine with no I/O.

Events go in (:meth:`Router.from_session`, :meth:`Router.from_server`, :meth:`Router.detach`, :meth:`Router.fail`,
:meth:`Router.timer`, :meth:`Router.request`), actions come out, as tuples the caller executes in order:

* ``(TO_SERVER, message)``: write it to the server;
* ``(DELIVER, session, message)``: give it to that session (its ``endpoint`` is the caller's);
* ``(DONE, request_id, response)``: an internal request (:meth:`Router.request`) has its answer;
* ``(TIMER, token, seconds)``: call :meth:`Router.timer` with ``token`` after that long;
* ``(LEARNED,)``: :attr:`Router.learned` changed; save it if it is kept anywhere.

It owns no socket, task or clock (the caller passes ``now`` where time matters), so tests drive it directly, and
an I/O shell (:mod:`mcpshare.mux`) runs it for a real process. The rules it enforces, for both protocol eras:

* a response goes to the session whose request it answers, with that session's id; an unknown id is dropped;
* ids and progress tokens are rewritten to backend-unique ones (every SDK session counts from 1);
* ``notifications/cancelled`` cancels only the sender's own request;
* a server-to-client request goes to exactly one owner (see :mod:`.attribution`) or is answered with an error;
* lists-changed go to every session that may hear them; resource updates to subscribers; logs by level;
* the era of the backend (one handshake, or the 2026-07-28 envelope) and of each session are bridged
  (:mod:`.legacy`, :mod:`.modern`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from mcpshare.routing import legacy, modern
from mcpshare.routing.attribution import Gate, Learned, Stamps, Subject, may_ask
from mcpshare.routing.wire import (
    CONNECTION_CLOSED,
    DEFAULT_SESSION_LOG_LEVEL,
    INPUT_METHODS,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    LOG_RANK,
    META_RELATED_TASK,
    Message,
    RequestId,
    error_response,
    is_modern_request,
    kind_of,
    meta_of,
    name_of,
    result_response,
    valid_id,
)

logger = logging.getLogger("mcpshare.routing")

TO_SERVER: Final = 0
DELIVER: Final = 1
DONE: Final = 2
TIMER: Final = 3
LEARNED: Final = 4
FREED: Final = 5
"""``(FREED,)``: a call that held the gate ended: one waiting for a free process (another lane) may look again."""

Action = tuple[Any, ...]


class Session:
    """One virtual session: what one thread, shim client or HTTP session sees of the shared server."""

    __slots__ = (
        "capabilities",
        "client_info",
        "close_reason",
        "closed",
        "endpoint",
        "id",
        "inflight",
        "initialized",
        "listens",
        "log_level",
        "modern",
        "satellite",
        "subscriptions",
        "tasks",
        "trace_id",
    )

    def __init__(self, sid: int, endpoint: Any) -> None:
        self.id = sid
        self.endpoint = endpoint
        self.modern: bool | None = None
        """None until its first message says which era it speaks (``initialize``, or the 2026-07-28 envelope)."""
        self.initialized = False
        """It has been answered its handshake (or spoke 2026-07-28): notifications for everyone may reach it."""
        self.capabilities: dict[str, Any] = {}
        self.client_info: dict[str, Any] = {}
        self.log_level: str | None = None
        self.subscriptions: set[str] = set()
        self.listens: dict[RequestId, dict[str, Any]] = {}
        self.inflight: dict[RequestId, Pending] = {}
        self.tasks: set[str] = set()
        self.closed = False
        self.close_reason: str | None = None
        self.satellite = False
        self.trace_id: str | None = None
        """The trace id of the traceparent stamped on its calls when it sent none of its own."""

    def __repr__(self) -> str:
        return f"<Session {self.id}>"

    def wants_log(self, level: Any) -> bool:
        rank = LOG_RANK.get(level, len(LOG_RANK)) if isinstance(level, str) else len(LOG_RANK)
        if self.modern and self.log_level is None:
            return False  # 2026-07-28: logs are an opt-in per request
        return rank >= LOG_RANK[self.log_level or DEFAULT_SESSION_LOG_LEVEL]


class Pending:
    """A request sent to (or waiting to be sent to) the server."""

    __slots__ = (
        "asked",
        "backend_id",
        "bridge",
        "cache",
        "client_id",
        "done",
        "gate",
        "long_lived",
        "message",
        "method",
        "progress_token",
        "session",
        "stamp",
        "subject",
        "traceparent",
        "waiters",
    )

    def __init__(self, method: str, session: Session | None, client_id: RequestId | None) -> None:
        self.method = method
        self.session = session
        self.client_id = client_id
        self.backend_id = 0
        self.progress_token: RequestId | None = None
        self.subject: Subject | None = None
        self.gate: str | None = None  # None, "reader", "writer", "queued"
        self.message: Message | None = None  # as it goes to the server
        self.stamp: str | None = None
        self.traceparent: str | None = None  # the client's own, restored on what it gets back
        self.asked = False
        self.cache: Any = None  # tools/list: (generation, cursor)
        self.waiters: list[tuple[Session, RequestId]] | None = None  # sessions sharing this tools/list
        self.done: Callable[[Message], list[Action]] | None = None  # internal: what to do with the answer
        self.bridge: Any = None  # an era bridge's state (modern.py)
        self.long_lived = False  # a subscriptions/listen stream: never "waiting" for the hang clock

    def __repr__(self) -> str:
        return f"<Pending {self.method} {self.backend_id}>"


class ServerAsk:
    """A server-to-client request handed to one session, waiting for its answer."""

    __slots__ = ("method", "owner", "server_id", "traceparent")

    def __init__(self, owner: Session, method: str, server_id: RequestId, traceparent: str | None) -> None:
        self.owner = owner
        self.method = method
        self.server_id = server_id
        self.traceparent = traceparent


class Stats:
    """Counters for diagnostics and tests; never used for decisions."""

    __slots__ = ("bad_lines", "cache_hits", "declined", "dropped", "linked", "requests", "responses")

    def __init__(self) -> None:
        self.requests = self.responses = self.dropped = self.declined = self.bad_lines = self.cache_hits = 0
        self.linked = 0


class Router:
    """The routing state of one backend process. Not thread-safe; one caller drives it."""

    def __init__(
        self,
        name: str,
        *,
        client_info: Mapping[str, Any] | None = None,
        capabilities: Mapping[str, Any] | None = None,
        roots: Callable[[], list[dict[str, Any]]] | None = None,
        learned: Learned | None = None,
        input_ttl: float = modern.INPUT_TTL,
    ) -> None:
        from mcpshare.routing.wire import CLIENT_CAPABILITIES

        self.name = name
        self.client_info = dict(client_info or {"name": "mcpshare", "version": "0"})
        self.capabilities = dict(capabilities or CLIENT_CAPABILITIES)
        self.roots = roots or (lambda: [])
        self.learned = learned if learned is not None else Learned()
        self.input_ttl = input_ttl
        self.era: legacy.LegacyEra | modern.ModernEra = legacy.LegacyEra(self)
        self.sessions: dict[int, Session] = {}
        self.pending: dict[int, Pending] = {}
        self.progress: dict[int, Pending] = {}
        self.asks: dict[RequestId, ServerAsk] = {}
        self.gate = Gate()
        self.stamps = Stamps()
        self.echoes_traceparent = False
        """A request of this server came back with a traceparent we stamped: its asks name their call."""
        self.tasks: dict[str, Session] = {}
        self.error: str | None = None
        self.stats = Stats()
        self._ids = itertools.count(1)
        self._session_ids = itertools.count(1)
        self._tools: dict[Any, tuple[Any, float | None]] = {}  # cursor -> (result, fresh until; None: until changed)
        self._tools_generation = 0
        self._tools_loading: dict[Any, Pending] = {}

    # ------------------------------------------------------------------ state

    @property
    def modern(self) -> bool:
        return isinstance(self.era, modern.ModernEra)

    @property
    def protocol_version(self) -> str | None:
        return self.era.protocol_version

    @property
    def waiting(self) -> int:
        """Requests the server owes an answer (a listen stream owes none until it ends)."""
        return sum(1 for entry in self.pending.values() if not entry.long_lived and entry.gate != "queued")

    def use_legacy(self, initialize_result: dict[str, Any]) -> list[Action]:
        """The handshake succeeded: the server speaks the 2025-11-25 era."""
        self.era = legacy.LegacyEra(self, initialize_result)
        return []

    def use_modern(self, discover_result: dict[str, Any]) -> list[Action]:
        """``server/discover`` succeeded: the server speaks 2026-07-28 (opens the stream for list changes)."""
        self.era = modern.ModernEra(self, discover_result)
        return self.era.start()

    # ------------------------------------------------------------------ sessions

    def attach(self, endpoint: Any, *, satellite: bool = False) -> Session:
        """A new session. A ``satellite`` one only carries calls sent to this process on behalf of a session of
        another process of the same key (an extra lane): it hears no broadcast (its own session does, there)."""
        if self.error is not None:
            raise RuntimeError(self.error)
        session = Session(next(self._session_ids), endpoint)
        self.sessions[session.id] = session
        if satellite:
            session.satellite = True
        return session

    def would_wait(self, message: Message) -> bool:
        """Whether a request would wait at the gate (a call of a learned asker while others that may ask run):
        the pool may send it to another process of the key instead."""
        method = message.get("method")
        if not isinstance(method, str) or method not in INPUT_METHODS or not self.era.gated or self.echoes_traceparent:
            return False
        subject = (method, name_of(method, message.get("params")) or "")
        if not self.learned.gated(subject):
            return False
        return self.gate.writer is not None or self.gate.readers > 0 or self.gate.waiting > 0

    @property
    def busy(self) -> bool:
        """Requests that may ask are in flight or waiting at the gate."""
        return self.gate.writer is not None or self.gate.readers > 0 or self.gate.waiting > 0

    def detach(self, session: Session, reason: str = "closed") -> list[Action]:
        """Forget a session: cancel its requests at the server, drop what it asked for, answer what asked it."""
        if session.closed:
            return []
        session.closed = True
        session.close_reason = reason
        self.sessions.pop(session.id, None)
        actions: list[Action] = []
        text = f"mcpshare: session on MCP server {self.name!r} closed: {reason}"
        for client_id, entry in list(session.inflight.items()):
            actions += self._abandon(entry, text)
            actions.append((DELIVER, session, error_response(client_id, CONNECTION_CLOSED, text)))
        session.inflight.clear()
        for server_id, ask in list(self.asks.items()):
            if ask.owner is session:
                del self.asks[server_id]
                if self.error is None:
                    actions.append(
                        (TO_SERVER, error_response(server_id, INTERNAL_ERROR, f"mcpshare: client session {reason}"))
                    )
        for task in session.tasks:
            self.tasks.pop(task, None)
        actions += self.era.session_gone(session)
        return actions

    def _abandon(self, entry: Pending, reason: str) -> list[Action]:
        """Stop waiting for ``entry`` (its session is gone or cancelled it): cancel it at the server if it went."""
        actions: list[Action] = []
        was_sent = entry.gate != "queued" and entry.backend_id in self.pending
        self._settle(entry)
        actions += self._gate_after(entry)
        if was_sent and self.error is None:
            actions.append((TO_SERVER, cancel_message(entry.backend_id, reason)))
        actions += self.era.abandoned(entry)
        return actions

    # ------------------------------------------------------------------ session -> server

    def from_session(self, session: Session, message: Message, now: float = 0.0) -> list[Action]:
        """One message a session sends toward the server."""
        if session.closed:
            return []
        kind = kind_of(message)
        if kind == "request":
            return self._session_request(session, message, now)
        if kind == "notification":
            return self._session_notification(session, message)
        if kind == "response":
            return self._session_response(session, message)
        self.stats.dropped += 1
        return []

    def _session_request(self, session: Session, message: Message, now: float) -> list[Action]:
        client_id = message["id"]
        if not valid_id(client_id):
            return [
                (DELIVER, session, error_response(None, INVALID_REQUEST, "request id must be a string or an integer"))
            ]
        if self.error is not None:
            return [(DELIVER, session, error_response(client_id, CONNECTION_CLOSED, self.error))]
        if client_id in session.inflight:
            return [
                (
                    DELIVER,
                    session,
                    error_response(client_id, INVALID_REQUEST, f"request id {client_id!r} is already in use"),
                )
            ]
        method: str = message["method"]
        params = message.get("params")
        modern_request = is_modern_request(params)
        if modern_request:
            session.modern = True
            session.initialized = not session.satellite  # a lane's session hears no broadcast
        elif session.modern is None:
            session.modern = method == "server/discover"
        before = self.era.prepare(session, params) if session.modern else ()
        if method in self.era.local_methods or (type(params) is dict and "requestState" in params):
            answered = self.era.answer_locally(session, client_id, method, params, now)
            if answered is not None:
                return [*before, *answered]
        if method == "tools/list":
            return [*before, *self._tools_list(session, client_id, params, message, now)]
        if method.startswith("tasks/"):
            refused = self._foreign_task(session, client_id, method, params)
            if refused is not None:
                return [*before, *refused]
        sent = self.send(session, client_id, method, params, message)
        return [*before, *sent] if before else sent

    def send(
        self, session: Session | None, client_id: RequestId | None, method: str, params: Any, message: Message
    ) -> list[Action]:
        """Register a request and send it (or queue it behind the gate); the era shapes what the server sees."""
        entry = Pending(method, session, client_id)
        backend_id = entry.backend_id = next(self._ids)
        self.pending[backend_id] = entry
        if session is not None and client_id is not None:
            session.inflight[client_id] = entry
        outgoing = {**message, "id": backend_id}
        meta = params.get("_meta") if type(params) is dict else None
        stamped = session is not None and may_ask(method) and type(params) is dict
        if stamped or (type(meta) is dict and "progressToken" in meta):
            params = dict(params)  # type: ignore[arg-type]  # a dict: checked above
            meta = dict(meta) if type(meta) is dict else {}
            token = meta.get("progressToken")
            if token is not None and valid_id(token):
                entry.progress_token = token
                self.progress[backend_id] = entry
                meta["progressToken"] = backend_id
            if stamped:
                entry.subject = (method, name_of(method, params) or "")
                entry.stamp, entry.traceparent = self.stamps.stamp(meta, entry, session)
            params["_meta"] = meta
            outgoing["params"] = params
        if self.era.shapes_outgoing or (session is not None and session.modern):
            outgoing = self.era.outgoing(session, entry, outgoing)
        self.stats.requests += 1
        entry.message = outgoing
        if entry.subject is not None and self.era.gated and not self.echoes_traceparent:
            writer = self.learned.gated(entry.subject)
            if not self.gate.admit(entry, writer=writer):
                entry.gate = "queued"
                return []
            entry.gate = "writer" if writer else "reader"
        return [(TO_SERVER, outgoing)]

    def _gate_after(self, entry: Pending) -> list[Action]:
        """``entry`` no longer holds (or waits at) the gate: send what may go now."""
        state, entry.gate = entry.gate, None
        if state is None:
            return []
        if state == "queued":
            released = self.gate.drop(entry)
        else:
            if state == "writer" and not entry.asked and entry.subject is not None:
                self.learned.ran_alone_quietly(entry.subject)
            released = self.gate.finish(writer=state == "writer")
        actions: list[Action] = [(FREED,)] if state == "writer" else []
        for admitted in released:
            assert isinstance(admitted, Pending)
            admitted.gate = "writer" if self.gate.writer is admitted else "reader"
            if admitted.message is not None and admitted.backend_id in self.pending:
                actions.append((TO_SERVER, admitted.message))
        if self.learned.changed:
            actions.append((LEARNED,))
        return actions

    def _tools_list(
        self, session: Session, client_id: RequestId, params: Any, message: Message, now: float
    ) -> list[Action]:
        """tools/list from the cache when fresh; else one request for every session asking at the same time."""
        cursor = params.get("cursor") if isinstance(params, dict) else None
        cached = self._tools.get(cursor)
        if cached is not None and (cached[1] is None or now < cached[1]):
            self.stats.cache_hits += 1
            return [(DELIVER, session, result_response(client_id, cached[0]))]
        loading = self._tools_loading.get((self._tools_generation, cursor))
        if loading is not None and loading.backend_id in self.pending:
            self.stats.cache_hits += 1
            assert loading.waiters is not None
            loading.waiters.append((session, client_id))
            return []
        actions = self.send(session, client_id, "tools/list", params, message)
        entry = session.inflight.get(client_id)
        if entry is not None:
            entry.cache = (self._tools_generation, cursor, now)
            entry.waiters = []
            self._tools_loading[(self._tools_generation, cursor)] = entry
        return actions

    def cached_tools(self) -> Any:
        """The first page of the tool list as last listed (None when nobody listed since the last change)."""
        cached = self._tools.get(None)
        return cached[0] if cached is not None else None

    @property
    def tools_generation(self) -> int:
        return self._tools_generation

    def store_tools(self, result: dict[str, Any], generation: int, now: float) -> None:
        """A tool list fetched for the router's owner: cached like a session's, if still current and fresh."""
        fresh = modern.fresh_until(result, now)
        if generation == self._tools_generation and (fresh is None or fresh > now):
            self._tools[None] = (result, fresh)

    def tools_changed(self) -> None:
        self._tools_generation += 1
        self._tools.clear()
        self._tools_loading.clear()

    def _foreign_task(self, session: Session, client_id: RequestId, method: str, params: Any) -> list[Action] | None:
        """A task request naming another session's task is refused as unknown (task ids are not shared)."""
        task = params.get("taskId") if isinstance(params, dict) else None
        if isinstance(task, str) and task not in session.tasks:
            return [(DELIVER, session, error_response(client_id, -32602, f"unknown task {task!r}"))]
        return None

    def _session_notification(self, session: Session, message: Message) -> list[Action]:
        method = message["method"]
        if method == "notifications/initialized" or method == "notifications/roots/list_changed":
            return []  # the backend sent its own; roots of a shared server come from the workspace
        if self.error is not None:
            return []
        if method == "notifications/cancelled":
            params = message.get("params")
            client_id = params.get("requestId") if isinstance(params, dict) else None
            if not valid_id(client_id):
                return []
            if client_id in session.listens:
                return self.era.unlisten(session, client_id)
            entry = session.inflight.pop(client_id, None)
            if entry is None:
                return self.era.cancelled_flow(session, client_id)
            return self._abandon(entry, str(params.get("reason") or "cancelled by the client"))
        return self.era.forward_notification(session, message)

    def _session_response(self, session: Session, message: Message) -> list[Action]:
        server_id = message["id"]
        if not valid_id(server_id):
            return []
        handled = self.era.input_answer(session, server_id, message)
        if handled is not None:
            return handled
        ask = self.asks.get(server_id)
        if ask is None or ask.owner is not session:
            self.stats.dropped += 1  # an answer to a request this session was never asked
            return []
        del self.asks[server_id]
        if self.error is not None:
            return []
        return [(TO_SERVER, message)]

    # ------------------------------------------------------------------ internal requests

    def request(
        self, method: str, params: Any = None, done: Callable[[Message], list[Action]] | None = None
    ) -> tuple[int, list[Action]]:
        """A request of the router's own (handshake, subscriptions, the tool list for a respawn): its backend id and
        the actions that send it. Its answer comes as ``(DONE, id, response)`` unless ``done`` handles it."""
        entry = Pending(method, None, None)
        entry.backend_id = next(self._ids)
        entry.done = done
        self.pending[entry.backend_id] = entry
        message: Message = {"jsonrpc": "2.0", "id": entry.backend_id, "method": method}
        if params is not None:
            message["params"] = params
        if self.error is not None:
            return entry.backend_id, self._resolve(
                entry, error_response(entry.backend_id, CONNECTION_CLOSED, self.error)
            )
        return entry.backend_id, [(TO_SERVER, self.era.outgoing(None, entry, message))]

    def unsendable(self, message: Message) -> list[Action]:
        """A message we were to write could not be encoded (a value JSON cannot carry): undo its request."""
        backend_id = message.get("id") if "method" in message else None
        entry = self.pending.get(backend_id) if isinstance(backend_id, int) else None
        if entry is None:
            return []
        self._settle(entry)
        if entry.session is not None and entry.client_id is not None:
            entry.session.inflight.pop(entry.client_id, None)
        return self._gate_after(entry)

    def forget(self, backend_id: int) -> None:
        """Stop waiting for an internal request (its caller gave up)."""
        entry = self.pending.pop(backend_id, None)
        if entry is not None:
            self.progress.pop(backend_id, None)

    def _resolve(self, entry: Pending, response: Message) -> list[Action]:
        if entry.done is not None:
            return entry.done(response)
        return [(DONE, entry.backend_id, response)]

    # ------------------------------------------------------------------ server -> sessions

    def from_server(self, message: Any, now: float = 0.0) -> list[Action]:
        """One message the server sent (decoded JSON)."""
        kind = kind_of(message)
        if kind == "response":
            return self._server_response(message, now)
        if kind == "notification":
            return self._server_notification(message)
        if kind == "request":
            return self._server_request(message)
        self.stats.bad_lines += 1
        return []

    def _server_response(self, message: Message, now: float) -> list[Action]:
        backend_id = message["id"]
        entry = self.pending.get(backend_id) if isinstance(backend_id, int) else None
        if entry is None or entry.gate == "queued":
            self.stats.dropped += 1
            return []
        self.stats.responses += 1
        self._settle(entry)
        actions = self._gate_after(entry)
        if entry.session is None:
            return actions + self._resolve(entry, message)
        handled = self.era.result(entry, message, now)
        if handled is not None:
            return actions + handled
        return actions + self.answer(entry, message, now)

    def answer(self, entry: Pending, message: Message, now: float) -> list[Action]:
        """Deliver the server's answer to ``entry`` to its session (and to sessions that shared its tools/list)."""
        session = entry.session
        assert session is not None and entry.client_id is not None
        session.inflight.pop(entry.client_id, None)
        result = message.get("result")
        if entry.cache is not None:
            generation, cursor, asked_at = entry.cache
            self._tools_loading.pop((generation, cursor), None)
            if generation == self._tools_generation and isinstance(result, dict):
                fresh = modern.fresh_until(result, asked_at)
                if fresh is None or fresh > asked_at:
                    self._tools[cursor] = (result, fresh)
        if isinstance(result, dict) and isinstance(result.get("task"), dict):
            task = result["task"].get("taskId")
            if isinstance(task, str):  # a task-augmented call: its later messages name the task
                self.tasks[task] = session
                session.tasks.add(task)
        if entry.method == "tasks/list" and isinstance(result, dict) and isinstance(result.get("tasks"), list):
            own = [task for task in result["tasks"] if isinstance(task, dict) and task.get("taskId") in session.tasks]
            message = {**message, "result": {**result, "tasks": own}}
        restored = dict(message)
        restored["id"] = entry.client_id
        actions: list[Action] = [(DELIVER, session, restored)]
        for waiter, client_id in entry.waiters or ():
            if not waiter.closed:
                actions.append((DELIVER, waiter, {**message, "id": client_id}))
        return actions

    def _settle(self, entry: Pending) -> None:
        self.pending.pop(entry.backend_id, None)
        self.progress.pop(entry.backend_id, None)
        self.stamps.forget(entry.stamp)
        entry.stamp = None

    def _server_notification(self, message: Message) -> list[Action]:
        method: str = message["method"]
        params = message.get("params")
        if method == "notifications/progress":
            token = params.get("progressToken") if isinstance(params, dict) else None
            entry = self.progress.get(token) if isinstance(token, int) else None
            session = entry.session if entry is not None else None
            if entry is None or session is None or entry.progress_token is None:
                self.stats.dropped += 1
                return []
            return [(DELIVER, session, {**message, "params": {**params, "progressToken": entry.progress_token}})]
        if method == "notifications/cancelled":
            server_id = params.get("requestId") if isinstance(params, dict) else None
            ask = self.asks.pop(server_id, None) if valid_id(server_id) else None
            if ask is not None:
                return [(DELIVER, ask.owner, message)]
            return self.era.server_cancelled(server_id)
        related = self._task_owner(params)
        if related is not None:
            return [(DELIVER, related, message)]
        if method == "notifications/tools/list_changed":
            self.tools_changed()
        return self.era.notification(method, params, message)

    def broadcast(self, message: Message, *, legacy_only: bool = False) -> list[Action]:
        """To every session that has its handshake answered (a client must not see one before that)."""
        return [
            (DELIVER, session, message)
            for session in list(self.sessions.values())
            if session.initialized and not session.satellite and not (legacy_only and session.modern)
        ]

    def _task_owner(self, params: Any) -> Session | None:
        meta = meta_of(params)
        related = meta.get(META_RELATED_TASK) if meta is not None else None
        task = related.get("taskId") if isinstance(related, dict) else None
        owner = self.tasks.get(task) if isinstance(task, str) else None
        return owner if owner is not None and not owner.closed else None

    def _server_request(self, message: Message) -> list[Action]:
        server_id = message["id"]
        method: str = message["method"]
        if not valid_id(server_id):
            return []
        if method == "ping":
            return [(TO_SERVER, result_response(server_id, {}))]
        if method == "roots/list":
            return [(TO_SERVER, result_response(server_id, {"roots": self.roots()}))]
        if server_id in self.asks:
            self.stats.dropped += 1
            return [
                (TO_SERVER, error_response(server_id, INVALID_REQUEST, f"request id {server_id!r} is already in use"))
            ]
        refused = self.era.refuses_server_requests()
        if refused is not None:
            return [(TO_SERVER, error_response(server_id, INVALID_REQUEST, refused))]
        params = message.get("params")
        owner_session = self._task_owner(params)
        entry: Pending | None = None
        opened: list[Action] = []
        if owner_session is None:
            echoed = self.echoes_traceparent
            entry, reason = self._owner_call(params)
            if self.echoes_traceparent and not echoed:
                opened = self._open_gate()
            if entry is None:
                self.stats.declined += 1
                text = (
                    f"mcpshare: cannot attribute {method} to a single client of shared server {self.name!r}: {reason}"
                )
                logger.warning("%s", text)
                actions: list[Action] = [(TO_SERVER, error_response(server_id, INTERNAL_ERROR, text))]
                if self.learned.changed:
                    actions.append((LEARNED,))
                return actions
            owner_session = entry.session
        else:
            self.stats.linked += 1
        assert owner_session is not None
        return opened + self.era.ask(owner_session, entry, server_id, method, message)

    def _open_gate(self) -> list[Action]:
        """The server hands our traceparent back: its asks name their call, so nothing needs to wait any more."""
        actions: list[Action] = []
        for queued in self.gate.clear():
            assert isinstance(queued, Pending)
            queued.gate = None
            if queued.message is not None and queued.backend_id in self.pending:
                actions.append((TO_SERVER, queued.message))
        for entry in self.pending.values():
            entry.gate = None  # those in flight no longer hold anything either
        logger.info("%s: the server returns the traceparent of each call in its requests: asks are linked", self.name)
        return actions

    def _owner_call(self, params: Any) -> tuple[Pending | None, str]:
        """The in-flight call that caused a server request: by its traceparent, else the only candidate."""
        linked, _ = self.stamps.owner_of(params)
        if isinstance(linked, Pending) and linked.backend_id in self.pending and linked.session is not None:
            self.echoes_traceparent = True
            self.stats.linked += 1
            linked.asked = True
            return linked, ""
        candidates = [
            entry
            for entry in self.pending.values()
            if entry.session is not None and entry.gate != "queued" and entry.subject is not None
        ]
        if len(candidates) == 1:
            entry = candidates[0]
            entry.asked = True
            if entry.subject is not None:
                self.learned.confirm(entry.subject)
            return entry, ""
        if not candidates:
            return None, "no client session has a call in flight that could have caused it"
        subjects = {entry.subject for entry in candidates if entry.subject is not None}
        if len(subjects) == 1:
            self.learned.confirm(next(iter(subjects)))
        else:
            self.learned.suspect(subjects)
        return None, f"{len(candidates)} calls that may ask are in flight and it names none of them (they are learned)"

    def deliver_ask(
        self, owner: Session, server_id: RequestId, method: str, message: Message, entry: Pending | None
    ) -> list[Action]:
        """Hand a server-to-client request to its owner, with the owner's own traceparent back in place."""
        traceparent = entry.traceparent if entry is not None else None
        self.asks[server_id] = ServerAsk(owner, method, server_id, traceparent)
        params = message.get("params")
        meta = meta_of(params)
        if entry is not None and meta is not None and "traceparent" in meta:
            meta = {key: value for key, value in meta.items() if key != "traceparent"}
            if traceparent is not None:
                meta["traceparent"] = traceparent
            message = {**message, "params": {**params, "_meta": meta}}
            if not meta:
                message["params"] = {key: value for key, value in params.items() if key != "_meta"}
        actions: list[Action] = [(DELIVER, owner, message)]
        if self.learned.changed:
            actions.append((LEARNED,))
        return actions

    # ------------------------------------------------------------------ failure and time

    def fail(self, reason: str) -> list[Action]:
        """The server is gone: every request in flight gets an error naming it; later ones fail the same way."""
        if self.error is not None:
            return []
        self.error = reason
        pending, self.pending = self.pending, {}
        self.progress.clear()
        self.gate.clear()
        self.asks.clear()
        actions: list[Action] = []
        for entry in pending.values():
            response = error_response(
                entry.client_id if entry.session is not None else entry.backend_id, CONNECTION_CLOSED, reason
            )
            if entry.session is None:
                actions += self._resolve(entry, response)
                continue
            entry.gate = None
            if entry.session.inflight.get(entry.client_id) is entry:  # type: ignore[arg-type]
                del entry.session.inflight[entry.client_id]  # type: ignore[arg-type]
                actions.append((DELIVER, entry.session, response))
            for waiter, client_id in entry.waiters or ():
                actions.append((DELIVER, waiter, {**response, "id": client_id}))
        actions += self.era.failed(reason)
        return actions

    def restore(self, session: Session, *, log_level: str | None, subscriptions: list[str]) -> list[Action]:
        """A session moved here from another backend of its key (respawn, refresh): its level and subscriptions."""
        actions: list[Action] = []
        for uri in subscriptions:
            session.subscriptions.add(uri)
            actions += self.era.want(uri, session)
        if log_level is not None:
            session.log_level = log_level
            actions += self.era.level_changed()
        return actions

    def timer(self, token: Any, now: float = 0.0) -> list[Action]:
        """A timer asked for with ``(TIMER, token, seconds)`` went off."""
        return self.era.timer(token, now)


def cancel_message(backend_id: int, reason: str) -> Message:
    return {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": backend_id, "reason": reason},
    }


__all__ = [
    "DELIVER",
    "DONE",
    "FREED",
    "INPUT_METHODS",
    "LEARNED",
    "TIMER",
    "TO_SERVER",
    "Action",
    "Pending",
    "Router",
    "ServerAsk",
    "Session",
    "cancel_message",
]
