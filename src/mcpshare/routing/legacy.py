"""The backend speaks the handshake era (2025-11-25): one ``initialize`` per process, shared state on the server.

* each session's ``initialize`` is answered from the one cached handshake, its ``notifications/initialized`` is
  swallowed (a second handshake breaks strict servers);
* the logging level and resource subscriptions live on the server and are shared: the server runs at the finest
  level any session asked for, each session gets the messages its own level admits; a URI is subscribed while
  any session wants it;
* server-to-client requests are attributed by :mod:`.attribution` and the gate orders the calls that may ask;
* a session that speaks 2026-07-28 is bridged (:mod:`.modern`): it gets a ``server/discover`` answer, its
  envelope is taken off, and a question the server asks during its call comes back as ``input_required``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcpshare.routing import modern
from mcpshare.routing.wire import (
    DEFAULT_SESSION_LOG_LEVEL,
    ENVELOPE_KEYS,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    LOG_RANK,
    META_LOG_LEVEL,
    Message,
    RequestId,
    error_response,
    meta_of,
    result_response,
)

if TYPE_CHECKING:
    from mcpshare.routing.core import Action, Pending, Router, Session

_SHARED_STATE_METHODS = frozenset({"logging/setLevel", "resources/subscribe", "resources/unsubscribe"})


class LegacyEra:
    """Routing rules of a handshake-era backend (and of a router whose backend has not answered yet)."""

    gated = True
    """Asks have no link of their own here: requests that may ask go through the gate."""
    shapes_outgoing = False
    """Requests go to the server as sessions send them (a 2026-07-28 session's envelope is taken off)."""
    local_methods = frozenset(
        {
            "initialize",
            "server/discover",
            "logging/setLevel",
            "resources/subscribe",
            "resources/unsubscribe",
            "subscriptions/listen",
        }
    )
    """Requests :meth:`answer_locally` may answer (with any request carrying a ``requestState``)."""

    def __init__(self, router: Router, initialize_result: dict[str, Any] | None = None) -> None:
        self.router = router
        self.initialize_result = initialize_result
        self.server_level: str | None = None
        self.subscribers: dict[str, set[Session]] = {}
        self.flows = modern.HeldInput(router)

    @property
    def protocol_version(self) -> str | None:
        version = (self.initialize_result or {}).get("protocolVersion")
        return version if isinstance(version, str) else None

    # ------------------------------------------------------------------ session -> server

    def answer_locally(
        self, session: Session, client_id: RequestId, method: str, params: Any, now: float
    ) -> list[Action] | None:
        from mcpshare.routing.core import DELIVER

        if method == "initialize":
            if isinstance(params, dict):
                capabilities, info = params.get("capabilities"), params.get("clientInfo")
                session.capabilities = capabilities if isinstance(capabilities, dict) else {}
                session.client_info = info if isinstance(info, dict) else {}
            session.modern = False
            assert self.initialize_result is not None, "the handshake must complete before sessions attach"
            session.initialized = True
            return [(DELIVER, session, result_response(client_id, self.initialize_result))]
        if method == "server/discover":
            session.modern = True
            session.initialized = True
            assert self.initialize_result is not None
            return [
                (DELIVER, session, result_response(client_id, modern.discover_from_handshake(self.initialize_result)))
            ]
        continued = self.flows.retry(session, client_id, method, params, now)  # a handle of ours, whoever sends it
        if continued is not None:
            return continued
        if session.modern and method == "subscriptions/listen":
            return self._listen(session, client_id, params)
        if method == "logging/setLevel":
            return self._set_level(session, client_id, params)
        if method in ("resources/subscribe", "resources/unsubscribe"):
            return self._subscription(session, client_id, method, params)
        return None

    def prepare(self, session: Session, params: Any) -> list[Action]:
        """Before a request is handled: a 2026-07-28 session asks for logs per request, in ``_meta``; here the
        server keeps one level for everyone, so the session's level becomes part of that."""
        if not session.modern:
            return []
        level = (meta_of(params) or {}).get(META_LOG_LEVEL)
        if level not in LOG_RANK or level == session.log_level:
            return []
        session.log_level = level
        return self.level_changed()

    def outgoing(self, session: Session | None, entry: Pending, message: Message) -> Message:
        """A 2026-07-28 session's envelope is not for this server: it rejects requests that carry one."""
        if session is None or not session.modern:
            return message
        params = message.get("params")
        meta = meta_of(params)
        if meta is None or not ENVELOPE_KEYS & meta.keys():
            return message
        kept = {key: value for key, value in meta.items() if key not in ENVELOPE_KEYS}
        params = {key: value for key, value in params.items() if key != "_meta"}
        if kept:
            params["_meta"] = kept
        return {**message, "params": params}

    def forward_notification(self, session: Session, message: Message) -> list[Action]:
        from mcpshare.routing.core import TO_SERVER

        return [(TO_SERVER, message)]

    def _set_level(self, session: Session, client_id: RequestId, params: Any) -> list[Action]:
        from mcpshare.routing.core import DELIVER

        level = params.get("level") if isinstance(params, dict) else None
        if level not in LOG_RANK:
            return [(DELIVER, session, error_response(client_id, INVALID_PARAMS, f"unknown logging level {level!r}"))]
        session.log_level = level
        changed = self.level_changed(answer=(session, client_id))
        return changed or [(DELIVER, session, result_response(client_id, {}))]

    def level_changed(self, answer: tuple[Session, RequestId] | None = None) -> list[Action]:
        """Bring the server to the finest level a session needs; answer ``answer`` once the server has it."""
        from mcpshare.routing.core import DELIVER

        wanted = self._wanted_level()
        if wanted is None or wanted == self.server_level or self.router.error is not None:
            return []
        self.server_level = wanted

        def done(response: Message) -> list[Action]:
            if answer is None:
                return []
            session, client_id = answer
            if "error" in response:
                error = response["error"] if isinstance(response["error"], dict) else {}
                text = (
                    f"server {self.router.name!r}: logging/setLevel failed: {error.get('message', response['error'])}"
                )
                return [(DELIVER, session, error_response(client_id, INTERNAL_ERROR, text))]
            return [(DELIVER, session, result_response(client_id, {}))]

        return self.router.request("logging/setLevel", {"level": wanted}, done)[1]

    def _wanted_level(self) -> str | None:
        """The finest level any session needs; None while nobody asked (the server keeps its own default).

        Once someone asked, a handshake session that never did still needs the default level."""
        sessions = self.router.sessions.values()
        levels = [session.log_level for session in sessions if session.log_level is not None]
        if not levels:
            return None
        if any(session.log_level is None and not session.modern for session in sessions):
            levels.append(DEFAULT_SESSION_LOG_LEVEL)
        return min(levels, key=LOG_RANK.__getitem__)

    def _subscription(self, session: Session, client_id: RequestId, method: str, params: Any) -> list[Action]:
        from mcpshare.routing.core import DELIVER

        uri = params.get("uri") if isinstance(params, dict) else None
        if not isinstance(uri, str):
            return [(DELIVER, session, error_response(client_id, INVALID_PARAMS, f"{method} needs a string 'uri'"))]
        answer = (session, client_id)
        if method == "resources/subscribe":
            session.subscriptions.add(uri)
            return self.want(uri, session, answer)
        session.subscriptions.discard(uri)
        return self.unwant(uri, session, answer)

    def want(self, uri: str, session: Session, answer: tuple[Session, RequestId] | None = None) -> list[Action]:
        """``session`` wants updates of ``uri``: the first one subscribes the server."""
        subscribers = self.subscribers.setdefault(uri, set())
        first = not subscribers
        subscribers.add(session)
        return self._relay_subscription("resources/subscribe", uri, answer, needed=first)

    def unwant(self, uri: str, session: Session, answer: tuple[Session, RequestId] | None = None) -> list[Action]:
        """``session`` no longer wants ``uri``: the last one unsubscribes the server."""
        subscribers = self.subscribers.get(uri, set())
        last = subscribers == {session}
        subscribers.discard(session)
        if not subscribers:
            self.subscribers.pop(uri, None)
        return self._relay_subscription("resources/unsubscribe", uri, answer, needed=last)

    def _relay_subscription(
        self, method: str, uri: str, answer: tuple[Session, RequestId] | None, *, needed: bool
    ) -> list[Action]:
        from mcpshare.routing.core import DELIVER

        if not needed or self.router.error is not None:
            return [(DELIVER, answer[0], result_response(answer[1], {}))] if answer is not None else []

        def done(response: Message) -> list[Action]:
            if "error" in response and method == "resources/subscribe":
                for session in self.subscribers.pop(uri, set()):
                    session.subscriptions.discard(uri)
            if answer is None:
                return []
            if "error" in response:
                error = response["error"] if isinstance(response["error"], dict) else {}
                text = f"server {self.router.name!r}: {method} failed: {error.get('message', response['error'])}"
                return [(DELIVER, answer[0], error_response(answer[1], INTERNAL_ERROR, text))]
            return [(DELIVER, answer[0], result_response(answer[1], {}))]

        return self.router.request(method, {"uri": uri}, done)[1]

    def _listen(self, session: Session, client_id: RequestId, params: Any) -> list[Action]:
        """A 2026-07-28 session's ``subscriptions/listen`` on a handshake server: acknowledged here; its resource
        URIs become subscriptions of the server like anyone's."""
        from mcpshare.routing.core import DELIVER

        filters = modern.listen_filter(params)
        capabilities = (self.initialize_result or {}).get("capabilities") or {}
        honored = modern.honored(filters, capabilities)
        session.listens[client_id] = honored
        actions: list[Action] = [(DELIVER, session, modern.acknowledged(client_id, honored))]
        for uri in honored.get("resourceSubscriptions") or ():
            session.subscriptions.add(uri)
            actions += self.want(uri, session)
        return actions

    def unlisten(self, session: Session, client_id: RequestId) -> list[Action]:
        honored = session.listens.pop(client_id, {})
        actions: list[Action] = []
        still = {uri for other in session.listens.values() for uri in other.get("resourceSubscriptions") or ()}
        for uri in honored.get("resourceSubscriptions") or ():
            if uri not in still:
                session.subscriptions.discard(uri)
                actions += self.unwant(uri, session)
        return actions

    # ------------------------------------------------------------------ server -> sessions

    def result(self, entry: Pending, message: Message, now: float) -> list[Action] | None:
        session = entry.session
        if entry.bridge is not None:
            return self.flows.final(entry, message, now)
        if session is not None and session.modern:
            return self.router.answer(entry, modern.as_modern_result(entry.method, message), now)
        return None

    def notification(self, method: str, params: Any, message: Message) -> list[Action]:
        from mcpshare.routing.core import DELIVER

        router = self.router
        if method == "notifications/message":
            level = params.get("level") if isinstance(params, dict) else None
            return [
                (DELIVER, session, message)
                for session in list(router.sessions.values())
                if session.initialized and session.wants_log(level)
            ]
        if method == "notifications/resources/updated":
            uri = params.get("uri") if isinstance(params, dict) else None
            subscribers = list(self.subscribers.get(uri, ())) if isinstance(uri, str) else []
            return [
                (DELIVER, session, each)
                for session in subscribers
                for each in modern.listener_messages(session, message, method=method, uri=uri)
            ]
        if method in modern.LIST_CHANGED:
            return [
                (DELIVER, session, each)
                for session in list(router.sessions.values())
                if session.initialized and modern.hears(session, method)
                for each in modern.listener_messages(session, message, method=method)
            ]
        return router.broadcast(message)

    def ask(
        self, owner: Session, entry: Pending | None, server_id: RequestId, method: str, message: Message
    ) -> list[Action]:
        if owner.modern and entry is not None:
            return self.flows.hold(entry, server_id, method, message)
        return self.router.deliver_ask(owner, server_id, method, message, entry)

    def refuses_server_requests(self) -> str | None:
        return None

    def server_cancelled(self, server_id: Any) -> list[Action]:
        return self.flows.withdrawn(server_id)

    def input_answer(self, session: Session, server_id: RequestId, message: Message) -> list[Action] | None:
        return None

    def cancelled_flow(self, session: Session, client_id: RequestId) -> list[Action]:
        return []

    # ------------------------------------------------------------------ endings

    def abandoned(self, entry: Pending) -> list[Action]:
        return self.flows.abandoned(entry)

    def session_gone(self, session: Session) -> list[Action]:
        actions: list[Action] = self.flows.session_gone(session)
        for uri in list(session.subscriptions):
            session.subscriptions.discard(uri)
            subscribers = self.subscribers.get(uri)
            if subscribers is not None and session in subscribers:
                actions += self.unwant(uri, session)
        session.listens.clear()
        if session.log_level is not None:
            session.log_level = None
            actions += self.level_changed()
        return actions

    def failed(self, reason: str) -> list[Action]:
        return self.flows.failed(reason)

    def timer(self, token: Any, now: float) -> list[Action]:
        return self.flows.timer(token, now)
