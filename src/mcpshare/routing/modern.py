"""The 2026-07-28 era: a backend that speaks it, and the bridges between sessions and backends of different eras.

* **A modern backend** gets no ``initialize``: every request carries the pool's envelope in ``_meta`` (its protocol
  version, capability set and clientInfo, the session's own ``logLevel`` and other fields kept), it answers
  ``server/discover``, and input comes back inside the result of the request that needs it (``input_required``),
  so routing follows the request and cannot go wrong. One ``subscriptions/listen`` stream of the router's own
  carries the list changes and the resource URIs any session wants; sessions' own streams are answered here.
* **A 2026-07-28 session on a handshake backend** (:class:`HeldInput`): when the server asks during its call, the
  server's request is held and the session's call is answered ``input_required`` with a sealed ``requestState``
  (a random handle bound to that session and that call); its retry answers the held request, and the call's
  result goes to the retry. A handle nobody retries expires after :data:`INPUT_TTL`.
* **A handshake session on a modern backend** (:class:`AskedInput`): an ``input_required`` result becomes real
  server-to-client requests to that session during its call, then the call is retried upstream with the answers
  and the ``requestState`` byte for byte, for at most :data:`MAX_INPUT_ROUNDS` rounds.
"""

from __future__ import annotations

import itertools
import secrets
from typing import TYPE_CHECKING, Any, Final

from mcpshare.routing.wire import (
    CONNECTION_CLOSED,
    ENVELOPE_KEYS,
    HANDSHAKE_VERSION,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    LOG_RANK,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    META_PROTOCOL_VERSION,
    META_SERVER_INFO,
    META_SUBSCRIPTION_ID,
    MODERN_VERSION,
    Message,
    RequestId,
    error_response,
    input_required,
    meta_of,
    notification,
    result_response,
    valid_id,
)

if TYPE_CHECKING:
    from mcpshare.routing.core import Action, Pending, Router, Session

INPUT_TTL: Final = 600.0
"""Seconds a held question waits for the session's retry (a person may be answering it) before it is withdrawn."""
MAX_INPUT_ROUNDS: Final = 10
"""``input_required`` rounds of one call before it fails (the SDKs use the same cap)."""
STATE_PREFIX: Final = "mcpshare.input."
LIST_CHANGED: Final = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}
_CACHEABLE: Final = frozenset(
    {"tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read", "server/discover"}
)


# ---------------------------------------------------------------------------------------------- shapes


def discover_from_handshake(initialize_result: dict[str, Any]) -> dict[str, Any]:
    """What a 2026-07-28 session is told by ``server/discover`` about a handshake-era backend."""
    result: dict[str, Any] = {
        "supportedVersions": [HANDSHAKE_VERSION, MODERN_VERSION],
        "capabilities": {
            key: value for key, value in (initialize_result.get("capabilities") or {}).items() if key != "logging"
        },
        "resultType": "complete",
        "ttlMs": 0,
        "cacheScope": "private",
    }
    if isinstance(initialize_result.get("instructions"), str):
        result["instructions"] = initialize_result["instructions"]
    info = initialize_result.get("serverInfo")
    if isinstance(info, dict):
        result["_meta"] = {META_SERVER_INFO: info}
    return result


def handshake_from_discover(discover_result: dict[str, Any]) -> dict[str, Any]:
    """What a handshake session's ``initialize`` is answered with on a 2026-07-28 backend."""
    capabilities = dict(discover_result.get("capabilities") or {})
    capabilities.setdefault("logging", {})  # levels are emulated per request: setLevel always works
    meta = meta_of(discover_result) or {}
    info = meta.get(META_SERVER_INFO)
    result: dict[str, Any] = {
        "protocolVersion": HANDSHAKE_VERSION,
        "capabilities": capabilities,
        "serverInfo": info if isinstance(info, dict) else {"name": "unknown", "version": "0"},
    }
    if isinstance(discover_result.get("instructions"), str):
        result["instructions"] = discover_result["instructions"]
    return result


def as_modern_result(method: str, message: Message) -> Message:
    """A handshake server's answer as a 2026-07-28 client expects it (``resultType``; caching hints where due)."""
    result = message.get("result")
    if not isinstance(result, dict) or "resultType" in result:
        return message
    result = {**result, "resultType": "complete"}
    if method in _CACHEABLE:
        result.setdefault("ttlMs", 0)  # the handshake server gave none: consider it stale at once
        result.setdefault("cacheScope", "private")
    return {**message, "result": result}


def fresh_until(result: dict[str, Any], asked_at: float) -> float | None:
    """How long a tools/list result may answer others: until the list changes (handshake era), or ``ttlMs``."""
    ttl = result.get("ttlMs")
    if not isinstance(ttl, int | float) or isinstance(ttl, bool):
        return None
    return asked_at + max(ttl, 0) / 1000


def envelope(router: Router, meta: dict[str, Any] | None, log_level: str | None) -> dict[str, Any]:
    """The ``_meta`` a 2026-07-28 backend gets: the pool's envelope over the session's other fields."""
    kept = {key: value for key, value in (meta or {}).items() if key not in ENVELOPE_KEYS}
    kept[META_PROTOCOL_VERSION] = MODERN_VERSION
    kept[META_CLIENT_CAPABILITIES] = router.capabilities
    kept[META_CLIENT_INFO] = router.client_info
    if log_level is not None:
        kept[META_LOG_LEVEL] = log_level
    return kept


def listen_filter(params: Any) -> dict[str, Any]:
    """The ``notifications`` filter of a ``subscriptions/listen`` request, normalized."""
    raw = params.get("notifications") if isinstance(params, dict) else None
    raw = raw if isinstance(raw, dict) else {}
    filters: dict[str, Any] = {key: True for key in LIST_CHANGED.values() if raw.get(key) is True}
    uris = raw.get("resourceSubscriptions")
    if isinstance(uris, list):
        filters["resourceSubscriptions"] = [uri for uri in dict.fromkeys(uris) if isinstance(uri, str)]
    return filters


def honored(filters: dict[str, Any], capabilities: dict[str, Any]) -> dict[str, Any]:
    """The part of a filter the server's capabilities can deliver."""
    kept: dict[str, Any] = {}
    for group, key in (
        ("tools", "toolsListChanged"),
        ("prompts", "promptsListChanged"),
        ("resources", "resourcesListChanged"),
    ):
        if filters.get(key) and isinstance(capabilities.get(group), dict) and capabilities[group].get("listChanged"):
            kept[key] = True
    resources = capabilities.get("resources")
    if filters.get("resourceSubscriptions") and isinstance(resources, dict) and resources.get("subscribe"):
        kept["resourceSubscriptions"] = list(filters["resourceSubscriptions"])
    return kept


def acknowledged(listen_id: RequestId, honored_filter: dict[str, Any]) -> Message:
    return notification(
        "notifications/subscriptions/acknowledged",
        {"_meta": {META_SUBSCRIPTION_ID: listen_id}, "notifications": honored_filter},
    )


def hears(session: Session, method: str) -> bool:
    """Whether a session gets a list-changed notification: a handshake session always does, a 2026-07-28 one only
    on a stream that asked for it."""
    if not session.modern:
        return True
    key = LIST_CHANGED[method]
    return any(filters.get(key) for filters in session.listens.values())


def listener_messages(session: Session, message: Message, *, method: str, uri: str | None = None) -> list[Message]:
    """``message`` as each of the session's streams gets it: a 2026-07-28 session once per listen stream that
    wants it (its id as ``subscriptionId``), a handshake session once, without stream ids."""
    params = message.get("params")
    meta = meta_of(params)
    bare = message
    if meta is not None and META_SUBSCRIPTION_ID in meta:
        kept = {key: value for key, value in meta.items() if key != META_SUBSCRIPTION_ID}
        params = {key: value for key, value in params.items() if key != "_meta"}
        if kept:
            params["_meta"] = kept
        bare = {**message, "params": params}
    if not session.modern:
        return [bare]
    out = []
    for listen_id, filters in session.listens.items():
        wanted = (
            uri in (filters.get("resourceSubscriptions") or ())
            if uri is not None
            else filters.get(LIST_CHANGED[method])
        )
        if wanted:
            bare_params = bare.get("params") if isinstance(bare.get("params"), dict) else {}
            bare_meta = meta_of(bare_params) or {}
            out.append({**bare, "params": {**bare_params, "_meta": {**bare_meta, META_SUBSCRIPTION_ID: listen_id}}})
    return out


# ---------------------------------------------------------------------------------------------- bridge A


class _Flow:
    """One call of a 2026-07-28 session on a handshake backend that the server asked something during."""

    __slots__ = ("entry", "final", "generation", "handle", "held", "keys", "outstanding")

    def __init__(self, entry: Pending, handle: str) -> None:
        self.entry = entry
        self.handle = handle
        self.held: dict[str, tuple[RequestId, str, Any]] = {}  # input key -> (server's id, method, params)
        self.keys = itertools.count(1)
        self.outstanding: RequestId | None = entry.client_id  # the session's request waiting for this call
        self.final: Message | None = None  # the call's answer, when it came before the session retried
        self.generation = 0


class HeldInput:
    """Bridge A: the server's questions during a 2026-07-28 session's call, held and asked as ``input_required``."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.flows: dict[str, _Flow] = {}
        self.by_server_id: dict[RequestId, _Flow] = {}

    def hold(self, entry: Pending, server_id: RequestId, method: str, message: Message) -> list[Action]:
        flow = entry.bridge
        if not isinstance(flow, _Flow):
            flow = _Flow(entry, STATE_PREFIX + secrets.token_urlsafe(24))
            entry.bridge = flow
            self.flows[flow.handle] = flow
        params = message.get("params")
        if entry.traceparent is None and isinstance(params, dict) and isinstance(params.get("_meta"), dict):
            meta = {key: value for key, value in params["_meta"].items() if key != "traceparent"}
            params = {key: value for key, value in params.items() if key != "_meta"}
            if meta:
                params["_meta"] = meta
        flow.held[f"input-{next(flow.keys)}"] = (server_id, method, params)
        self.by_server_id[server_id] = flow
        if flow.outstanding is None:
            return []  # the session is answering an earlier question: this one goes with its retry's answer
        return self._ask(flow)

    def _ask(self, flow: _Flow) -> list[Action]:
        """Answer the session's waiting request with every question held so far."""
        from mcpshare.routing.core import DELIVER, TIMER

        session = flow.entry.session
        assert session is not None and flow.outstanding is not None
        session.inflight.pop(flow.outstanding, None)
        result = {
            "resultType": "input_required",
            "inputRequests": {
                key: {"method": method, "params": params} for key, (_, method, params) in flow.held.items()
            },
            "requestState": flow.handle,
        }
        client_id, flow.outstanding = flow.outstanding, None
        flow.generation += 1
        return [
            (DELIVER, session, result_response(client_id, result)),
            (TIMER, ("input", flow.handle, flow.generation), self.router.input_ttl),
        ]

    def retry(
        self, session: Session, client_id: RequestId, method: str, params: Any, now: float
    ) -> list[Action] | None:
        """A 2026-07-28 session's request that carries one of our ``requestState`` handles; None if it does not."""
        from mcpshare.routing.core import DELIVER, TO_SERVER

        state = params.get("requestState") if isinstance(params, dict) else None
        if not isinstance(state, str) or not state.startswith(STATE_PREFIX):
            return None
        flow = self.flows.get(state)
        if flow is None or flow.entry.session is not session or flow.outstanding is not None:
            text = "requestState is unknown, expired or not this session's: call again without it"
            return [(DELIVER, session, error_response(client_id, INVALID_PARAMS, text))]
        actions: list[Action] = []
        responses = params.get("inputResponses")
        for key, value in responses.items() if isinstance(responses, dict) else ():
            held = flow.held.pop(key, None)
            if held is not None:
                self.by_server_id.pop(held[0], None)
                if self.router.error is None:
                    actions.append((TO_SERVER, result_response(held[0], value)))
        entry = flow.entry
        entry.client_id = client_id
        meta = meta_of(params)
        if meta is not None and valid_id(meta.get("progressToken")):
            entry.progress_token = meta["progressToken"]
        session.inflight[client_id] = entry
        flow.outstanding = client_id
        if flow.final is not None:
            final, flow.final = flow.final, None
            self._end(flow)
            return actions + self.router.answer(entry, as_modern_result(entry.method, final), now)
        if flow.held:
            return actions + self._ask(flow)
        return actions

    def final(self, entry: Pending, message: Message, now: float) -> list[Action]:
        """The server answered the call: to the session's retry, or kept until the retry comes."""
        flow = entry.bridge
        assert isinstance(flow, _Flow)
        if flow.outstanding is None:
            flow.final = message
            return []
        self._end(flow)
        return self.router.answer(entry, as_modern_result(entry.method, message), now)

    def withdrawn(self, server_id: Any) -> list[Action]:
        """The server cancelled a question it had asked (the call went on without it)."""
        flow = self.by_server_id.pop(server_id, None) if valid_id(server_id) else None
        if flow is not None:
            flow.held = {key: held for key, held in flow.held.items() if held[0] != server_id}
        return []

    def abandoned(self, entry: Pending) -> list[Action]:
        flow = entry.bridge
        if not isinstance(flow, _Flow):
            return []
        return self._end(flow, reason="the client abandoned the call")

    def timer(self, token: Any, now: float) -> list[Action]:
        from mcpshare.routing.core import TO_SERVER, cancel_message

        if not (isinstance(token, tuple) and len(token) == 3 and token[0] == "input"):
            return []
        flow = self.flows.get(token[1])
        if flow is None or flow.generation != token[2] or flow.outstanding is not None:
            return []
        router = self.router
        entry = flow.entry
        actions = self._end(flow, reason=f"the client did not answer within {router.input_ttl:g} s")
        if entry.backend_id in router.pending and router.error is None:
            router._settle(entry)
            actions += router._gate_after(entry)
            actions.append((TO_SERVER, cancel_message(entry.backend_id, "the client did not come back for the input")))
        return actions

    def failed(self, reason: str) -> list[Action]:
        for flow in list(self.flows.values()):
            flow.held.clear()
            self._end(flow)
        return []

    def session_gone(self, session: Session) -> list[Action]:
        """Calls of a closed session that wait for its retry: withdraw their questions, cancel them upstream."""
        from mcpshare.routing.core import TO_SERVER, cancel_message

        router = self.router
        actions: list[Action] = []
        for flow in [flow for flow in self.flows.values() if flow.entry.session is session]:
            entry = flow.entry
            actions += self._end(flow, reason=f"client session closed: {session.close_reason}")
            if entry.backend_id in router.pending and router.error is None:
                router._settle(entry)
                actions += router._gate_after(entry)
                actions.append((TO_SERVER, cancel_message(entry.backend_id, "the client session closed")))
        return actions

    def _end(self, flow: _Flow, *, reason: str | None = None) -> list[Action]:
        """Forget a flow; with ``reason``, answer the questions still held with an error saying it."""
        from mcpshare.routing.core import TO_SERVER

        self.flows.pop(flow.handle, None)
        flow.entry.bridge = None
        actions: list[Action] = []
        for server_id, _, _ in flow.held.values():
            self.by_server_id.pop(server_id, None)
            if reason is not None and self.router.error is None:
                actions.append((TO_SERVER, error_response(server_id, INTERNAL_ERROR, f"mcpshare: {reason}")))
        flow.held.clear()
        return actions


# ---------------------------------------------------------------------------------------------- bridge B


class _Asked:
    """One call of a handshake session whose 2026-07-28 server answered ``input_required``."""

    __slots__ = ("answers", "ids", "request_state", "rounds")

    def __init__(self) -> None:
        self.rounds = 0
        self.request_state: Any = None
        self.ids: dict[str, str] = {}  # our request id to the session -> input key
        self.answers: dict[str, Any] = {}


class AskedInput:
    """Bridge B: a 2026-07-28 server's ``input_required`` asked of a handshake session as real requests."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.by_id: dict[str, Pending] = {}
        self.retrying: dict[int, Pending] = {}  # calls whose server sent only a state, by the id they had
        self._ids = itertools.count(1)

    def start(self, entry: Pending, result: dict[str, Any]) -> list[Action]:
        from mcpshare.routing.core import DELIVER, TIMER

        session = entry.session
        assert session is not None and entry.client_id is not None
        asked = entry.bridge if isinstance(entry.bridge, _Asked) else _Asked()
        entry.bridge = asked
        asked.rounds += 1
        if asked.rounds > MAX_INPUT_ROUNDS:
            return self._fail(entry, f"the server asked for input more than {MAX_INPUT_ROUNDS} times in one call")
        asked.request_state = result.get("requestState")
        asked.answers = {}
        requests = result.get("inputRequests")
        if not isinstance(requests, dict) or not requests:
            self.retrying[entry.backend_id] = entry  # state only: come back a little later, as the SDKs do
            return [(TIMER, ("retry", entry.backend_id), 0.05 * min(asked.rounds, 5))]
        actions: list[Action] = []
        for key, request in requests.items():
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                return self._fail(entry, f"the server sent an invalid input request {key!r}")
            our_id = f"mcpshare-input-{next(self._ids)}"
            asked.ids[our_id] = key
            self.by_id[our_id] = entry
            message: Message = {"jsonrpc": "2.0", "id": our_id, "method": request["method"]}
            if "params" in request:
                message["params"] = request["params"]
            actions.append((DELIVER, session, message))
        return actions

    def answer(self, session: Session, our_id: RequestId, message: Message) -> list[Action] | None:
        """The session answered one of our questions; None if the id is not one of ours."""
        if not isinstance(our_id, str) or our_id not in self.by_id:
            return None
        entry = self.by_id[our_id]
        asked = entry.bridge
        if entry.session is not session or not isinstance(asked, _Asked):
            return []
        del self.by_id[our_id]
        key = asked.ids.pop(our_id)
        if "error" in message:
            error = message["error"] if isinstance(message["error"], dict) else {}
            return self._fail(
                entry, f"the client refused the input the server asked for: {error.get('message', error)}"
            )
        asked.answers[key] = message.get("result")
        if asked.ids:
            return []
        return self.resend(entry)

    def resend(self, entry: Pending) -> list[Action]:
        """Retry the call upstream, as a new request, with the answers and the server's state byte for byte."""
        from mcpshare.routing.core import TO_SERVER

        router = self.router
        asked = entry.bridge
        assert isinstance(asked, _Asked) and entry.message is not None
        if router.error is not None:
            return []
        entry.backend_id = next(router._ids)
        router.pending[entry.backend_id] = entry
        params = dict(entry.message.get("params") or {})
        if asked.answers:
            params["inputResponses"] = asked.answers
        else:
            params.pop("inputResponses", None)
        params["requestState"] = asked.request_state
        if entry.progress_token is not None:
            router.progress[entry.backend_id] = entry
            meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
            params["_meta"] = {**meta, "progressToken": entry.backend_id}
        entry.message = {**entry.message, "id": entry.backend_id, "params": params}
        return [(TO_SERVER, entry.message)]

    def abandoned(self, entry: Pending) -> list[Action]:
        from mcpshare.routing.core import DELIVER

        asked = entry.bridge
        if not isinstance(asked, _Asked):
            return []
        entry.bridge = None
        for backend_id, waiting in list(self.retrying.items()):
            if waiting is entry:
                del self.retrying[backend_id]
        actions: list[Action] = []
        for our_id in asked.ids:
            self.by_id.pop(our_id, None)
            if entry.session is not None and not entry.session.closed:
                cancel = notification("notifications/cancelled", {"requestId": our_id, "reason": "the call ended"})
                actions.append((DELIVER, entry.session, cancel))
        return actions

    def timer(self, token: Any) -> list[Action]:
        if not (isinstance(token, tuple) and len(token) == 2 and token[0] == "retry"):
            return []
        entry = self.retrying.pop(token[1], None)
        if entry is None or not isinstance(entry.bridge, _Asked):
            return []
        return self.resend(entry)

    def failed(self, reason: str) -> list[Action]:
        from mcpshare.routing.core import DELIVER

        actions: list[Action] = []
        entries = {id(entry): entry for entry in [*self.by_id.values(), *self.retrying.values()]}.values()
        for entry in list(entries):
            session = entry.session
            actions += self.abandoned(entry)
            if session is not None and entry.client_id is not None and session.inflight.pop(entry.client_id, None):
                actions.append((DELIVER, session, error_response(entry.client_id, CONNECTION_CLOSED, reason)))
        self.by_id.clear()
        self.retrying.clear()
        return actions

    def _fail(self, entry: Pending, text: str) -> list[Action]:
        from mcpshare.routing.core import DELIVER

        session = entry.session
        assert session is not None and entry.client_id is not None
        actions = self.abandoned(entry)
        session.inflight.pop(entry.client_id, None)
        return [*actions, (DELIVER, session, error_response(entry.client_id, INTERNAL_ERROR, f"mcpshare: {text}"))]


# ---------------------------------------------------------------------------------------------- the era


class ModernEra:
    """Routing rules of a 2026-07-28 backend."""

    gated = False
    """Input comes back in the result of the request that needs it: nothing to attribute, nothing to order."""
    shapes_outgoing = True
    """Every request gets the pool's envelope."""
    local_methods = frozenset(
        {
            "initialize",
            "server/discover",
            "ping",
            "logging/setLevel",
            "resources/subscribe",
            "resources/unsubscribe",
            "subscriptions/listen",
        }
    )

    def __init__(self, router: Router, discover_result: dict[str, Any]) -> None:
        self.router = router
        self.discover_result = discover_result
        self.capabilities: dict[str, Any] = dict(discover_result.get("capabilities") or {})
        self.handshake = handshake_from_discover(discover_result)
        self.asked = AskedInput(router)
        self.listen_id: int | None = None
        self.listen_ids: set[int] = set()
        self.listened_uris: tuple[str, ...] = ()
        self.subscribers: dict[str, set[Session]] = {}

    @property
    def protocol_version(self) -> str:
        return MODERN_VERSION

    def start(self) -> list[Action]:
        """Open the router's own listen stream: list changes keep the tool cache right, and sessions hear them."""
        return self._relisten()

    def _relisten(self) -> list[Action]:
        from mcpshare.routing.core import TO_SERVER, cancel_message

        wanted = {key: True for key in LIST_CHANGED.values()}
        uris = tuple(sorted(self.subscribers))
        if uris:
            wanted["resourceSubscriptions"] = list(uris)
        filters = honored(wanted, self.capabilities)
        if not filters:
            return []
        old = self.listen_id
        router = self.router

        def closed(response: Message) -> list[Action]:
            self.listen_ids.discard(backend_id)
            return []

        backend_id, actions = router.request("subscriptions/listen", {"notifications": filters}, closed)
        entry = router.pending.get(backend_id)
        if entry is not None:
            entry.long_lived = True
        self.listen_id = backend_id
        self.listen_ids.add(backend_id)
        self.listened_uris = uris
        if old is not None and old in router.pending:
            router.forget(old)
            self.listen_ids.discard(old)
            actions.append((TO_SERVER, cancel_message(old, "replaced by a stream with other resources")))
        return actions

    # ------------------------------------------------------------------ session -> server

    def prepare(self, session: Session, params: Any) -> list[Action]:
        if session.modern:
            level = (meta_of(params) or {}).get(META_LOG_LEVEL)
            if level in LOG_RANK:
                session.log_level = level
        return []

    def answer_locally(
        self, session: Session, client_id: RequestId, method: str, params: Any, now: float
    ) -> list[Action] | None:
        from mcpshare.routing.core import DELIVER

        if method == "initialize":
            session.modern = False
            session.initialized = True
            if isinstance(params, dict):
                capabilities, info = params.get("capabilities"), params.get("clientInfo")
                session.capabilities = capabilities if isinstance(capabilities, dict) else {}
                session.client_info = info if isinstance(info, dict) else {}
            return [(DELIVER, session, result_response(client_id, self.handshake))]
        if method == "server/discover":
            session.modern = True
            session.initialized = True
            result = {**self.discover_result, "supportedVersions": [HANDSHAKE_VERSION, MODERN_VERSION]}
            return [(DELIVER, session, result_response(client_id, result))]
        if method == "ping":
            return [(DELIVER, session, result_response(client_id, {}))]  # 2026-07-28 servers have no ping
        if method == "logging/setLevel":
            level = params.get("level") if isinstance(params, dict) else None
            if level not in LOG_RANK:
                return [
                    (DELIVER, session, error_response(client_id, INVALID_PARAMS, f"unknown logging level {level!r}"))
                ]
            session.log_level = level  # sent with each of its requests from now on
            return [(DELIVER, session, result_response(client_id, {}))]
        if method in ("resources/subscribe", "resources/unsubscribe"):
            uri = params.get("uri") if isinstance(params, dict) else None
            if not isinstance(uri, str):
                return [(DELIVER, session, error_response(client_id, INVALID_PARAMS, f"{method} needs a string 'uri'"))]
            if method == "resources/subscribe":
                session.subscriptions.add(uri)
                actions = self.want(uri, session)
            else:
                session.subscriptions.discard(uri)
                actions = self.unwant(uri, session)
            return [*actions, (DELIVER, session, result_response(client_id, {}))]
        if method == "subscriptions/listen":
            filters = honored(listen_filter(params), self.capabilities)
            session.listens[client_id] = filters
            actions = [(DELIVER, session, acknowledged(client_id, filters))]
            for uri in filters.get("resourceSubscriptions") or ():
                actions += self.want(uri, session)
            return actions
        return None

    def want(self, uri: str, session: Session) -> list[Action]:
        subscribers = self.subscribers.setdefault(uri, set())
        first = not subscribers
        subscribers.add(session)
        return self._relisten() if first else []

    def unwant(self, uri: str, session: Session) -> list[Action]:
        still = uri in session.subscriptions or any(
            uri in (filters.get("resourceSubscriptions") or ()) for filters in session.listens.values()
        )
        if still:
            return []
        subscribers = self.subscribers.get(uri, set())
        subscribers.discard(session)
        if subscribers:
            return []
        self.subscribers.pop(uri, None)
        return self._relisten()

    def unlisten(self, session: Session, client_id: RequestId) -> list[Action]:
        filters = session.listens.pop(client_id, {})
        actions: list[Action] = []
        for uri in filters.get("resourceSubscriptions") or ():
            actions += self.unwant(uri, session)
        return actions

    def outgoing(self, session: Session | None, entry: Pending, message: Message) -> Message:
        params = message.get("params")
        params = dict(params) if isinstance(params, dict) else {}
        level = session.log_level if session is not None else None
        if session is not None and session.modern:
            level = (meta_of(params) or {}).get(META_LOG_LEVEL)
        params["_meta"] = envelope(self.router, meta_of(params), level if level in LOG_RANK else None)
        return {**message, "params": params}

    def forward_notification(self, session: Session, message: Message) -> list[Action]:
        return []  # 2026-07-28 defines no client notifications but cancellation (handled before this)

    # ------------------------------------------------------------------ server -> sessions

    def result(self, entry: Pending, message: Message, now: float) -> list[Action] | None:
        session = entry.session
        result = message.get("result")
        if session is not None and not session.modern and input_required(result):
            assert isinstance(result, dict)
            session.inflight[entry.client_id] = entry  # type: ignore[index]  # the call goes on, for its client
            return self.asked.start(entry, result)
        if isinstance(entry.bridge, _Asked):
            entry.bridge = None  # the retried call is complete
        return None

    def notification(self, method: str, params: Any, message: Message) -> list[Action]:
        from mcpshare.routing.core import DELIVER

        router = self.router
        meta = meta_of(params) or {}
        stream = meta.get(META_SUBSCRIPTION_ID)
        if method == "notifications/subscriptions/acknowledged":
            return []  # our own stream's acknowledgment
        if method in LIST_CHANGED:
            if stream is not None and stream not in self.listen_ids:
                return []
            return [
                (DELIVER, session, each)
                for session in list(router.sessions.values())
                if session.initialized and hears(session, method)
                for each in listener_messages(session, message, method=method)
            ]
        if method == "notifications/resources/updated":
            uri = params.get("uri") if isinstance(params, dict) else None
            subscribers = list(self.subscribers.get(uri, ())) if isinstance(uri, str) else []
            return [
                (DELIVER, session, each)
                for session in subscribers
                for each in listener_messages(session, message, method=method, uri=uri)
            ]
        if method == "notifications/message":
            return self._log(params, message)
        return router.broadcast(message)

    def _log(self, params: Any, message: Message) -> list[Action]:
        """A log message names no request: it goes to the one session whose requests in flight asked for logs
        at a level that admits it, or to nobody (another session's log lines must not leak)."""
        from mcpshare.routing.core import DELIVER

        level = params.get("level") if isinstance(params, dict) else None
        owners = {
            entry.session
            for entry in self.router.pending.values()
            if entry.session is not None and entry.session.log_level is not None and entry.session.wants_log(level)
        }
        if len(owners) != 1:
            self.router.stats.dropped += 1
            return []
        return [(DELIVER, owners.pop(), message)]

    def ask(
        self, owner: Session, entry: Pending | None, server_id: RequestId, method: str, message: Message
    ) -> list[Action]:
        return self.router.deliver_ask(owner, server_id, method, message, entry)

    def refuses_server_requests(self) -> str | None:
        return "a 2026-07-28 server must not send requests on stdio; ask for input in the result instead"

    def server_cancelled(self, server_id: Any) -> list[Action]:
        return []

    def input_answer(self, session: Session, server_id: RequestId, message: Message) -> list[Action] | None:
        return self.asked.answer(session, server_id, message)

    def cancelled_flow(self, session: Session, client_id: RequestId) -> list[Action]:
        return []

    # ------------------------------------------------------------------ endings

    def abandoned(self, entry: Pending) -> list[Action]:
        return self.asked.abandoned(entry)

    def session_gone(self, session: Session) -> list[Action]:
        actions: list[Action] = []
        uris = set(session.subscriptions) | {
            uri for filters in session.listens.values() for uri in filters.get("resourceSubscriptions") or ()
        }
        session.subscriptions.clear()
        session.listens.clear()
        for uri in uris:
            actions += self.unwant(uri, session)
        return actions

    def failed(self, reason: str) -> list[Action]:
        return self.asked.failed(reason)

    def timer(self, token: Any, now: float) -> list[Action]:
        return self.asked.timer(token)

    def level_changed(self) -> list[Action]:
        return []  # the level goes with each request


__all__ = [
    "INPUT_TTL",
    "MAX_INPUT_ROUNDS",
    "AskedInput",
    "HeldInput",
    "ModernEra",
    "as_modern_result",
    "discover_from_handshake",
    "handshake_from_discover",
]
