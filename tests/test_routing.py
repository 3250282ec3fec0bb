"""The routing core driven directly, with no process, pipe or clock: events in, actions out (sans-I/O).

What these pin down is the routing contract: a session sees only what it owns, in both protocol eras and across
them. The end-to-end tests (test_attribution, test_mux, test_broker, ...) show the same with real servers.
"""

from __future__ import annotations

import itertools
from typing import Any

from mcpshare.routing import DELIVER, DONE, TIMER, TO_SERVER, Learned, Router, Session
from mcpshare.routing.wire import MODERN_VERSION

INIT_RESULT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"tools": {"listChanged": True}, "resources": {"subscribe": True}, "logging": {}},
    "serverInfo": {"name": "model", "version": "1"},
}
DISCOVER_RESULT = {
    "supportedVersions": [MODERN_VERSION],
    "capabilities": {"tools": {"listChanged": True}, "resources": {"subscribe": True, "listChanged": True}},
    "resultType": "complete",
    "ttlMs": 0,
    "cacheScope": "private",
    "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "model", "version": "1"}},
}


class Harness:
    """A router plus what it told each session and the server, in order."""

    def __init__(self, *, modern: bool = False, learned: Learned | None = None) -> None:
        self.router = Router("model", learned=learned)
        self.to_server: list[dict[str, Any]] = []
        self.inbox: dict[int, list[dict[str, Any]]] = {}
        self.timers: list[tuple[Any, float]] = []
        self.done: list[tuple[int, dict[str, Any]]] = []
        self.run(self.router.use_modern(DISCOVER_RESULT) if modern else self.router.use_legacy(INIT_RESULT))

    def run(self, actions: list[Any]) -> list[Any]:
        for action in actions:
            if action[0] == TO_SERVER:
                self.to_server.append(action[1])
            elif action[0] == DELIVER:
                self.inbox.setdefault(action[1].id, []).append(action[2])
            elif action[0] == TIMER:
                self.timers.append((action[1], action[2]))
            elif action[0] == DONE:
                self.done.append((action[1], action[2]))
        return actions

    def session(self, *, modern: bool = False) -> Session:
        session = self.router.attach(None)
        self.inbox[session.id] = []
        if modern:
            self.send(
                session,
                {"jsonrpc": "2.0", "id": "discover", "method": "server/discover", "params": {"_meta": ENVELOPE}},
            )
        else:
            self.send(session, {"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": {"capabilities": {}}})
        self.inbox[session.id].clear()
        return session

    def send(self, session: Session, message: dict[str, Any], now: float = 0.0) -> None:
        self.run(self.router.from_session(session, message, now))

    def server(self, message: dict[str, Any], now: float = 0.0) -> None:
        self.run(self.router.from_server(message, now))

    def call(self, session: Session, request_id: Any, tool: str, *, modern: bool = False, **meta: Any) -> None:
        params: dict[str, Any] = {"name": tool, "arguments": {}}
        if modern:
            meta = {**ENVELOPE, **meta}
        if meta:
            params["_meta"] = meta
        self.send(session, {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})

    def last_to_server(self, method: str | None = None) -> dict[str, Any]:
        return next(m for m in reversed(self.to_server) if method is None or m.get("method") == method)

    def calls_at_server(self) -> list[dict[str, Any]]:
        return [m for m in self.to_server if m.get("method") == "tools/call"]


ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
    "io.modelcontextprotocol/clientInfo": {"name": "client", "version": "1"},
}


def answer(request: dict[str, Any], text: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request["id"], "result": {"content": [{"type": "text", "text": text}]}}


def ask_for(call: dict[str, Any] | None, server_id: int, *, echo: bool) -> dict[str, Any]:
    params: dict[str, Any] = {"message": "?", "requestedSchema": {"type": "object", "properties": {}}}
    if echo and call is not None:
        params["_meta"] = {"traceparent": call["params"]["_meta"]["traceparent"]}
    return {"jsonrpc": "2.0", "id": server_id, "method": "elicitation/create", "params": params}


# ---------------------------------------------------------------------------------------------- handshake era


def test_ids_collide_across_sessions_and_each_gets_its_own_answer() -> None:
    h = Harness()
    a, b = h.session(), h.session()
    h.call(a, 1, "echo", progressToken=1)
    h.call(b, 1, "echo", progressToken=1)
    first, second = h.calls_at_server()
    assert (
        first["id"] != second["id"]
        and first["params"]["_meta"]["progressToken"] != second["params"]["_meta"]["progressToken"]
    )
    progress = {"progressToken": second["params"]["_meta"]["progressToken"], "progress": 1}
    h.server({"jsonrpc": "2.0", "method": "notifications/progress", "params": progress})
    h.server(answer(second, "for b"))
    h.server(answer(first, "for a"))
    assert h.inbox[b.id] == [
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}},
        {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "for b"}]}},
    ]
    assert h.inbox[a.id] == [{"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "for a"}]}}]


def test_a_session_cancels_only_its_own_calls() -> None:
    h = Harness()
    a, b = h.session(), h.session()
    h.call(a, 7, "slow")
    h.call(b, 8, "slow")
    calls = h.calls_at_server()
    h.send(b, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}})  # not b's
    assert [m for m in h.to_server if m.get("method") == "notifications/cancelled"] == []
    h.send(a, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}})
    assert h.last_to_server("notifications/cancelled")["params"]["requestId"] == calls[0]["id"]
    h.server(answer(calls[0], "late"))
    assert h.inbox[a.id] == []  # a cancelled it: its late answer goes nowhere


def test_one_candidate_owns_the_ask_and_its_tool_is_learned() -> None:
    h = Harness()
    a, b = h.session(), h.session()
    h.call(a, 1, "ask")
    h.send(b, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})  # cannot own an ask (SEP-2260)
    h.server(ask_for(None, 0, echo=False))
    assert h.inbox[a.id][-1]["method"] == "elicitation/create"
    assert ("tools/call", "ask") in h.router.learned.askers
    h.send(a, {"jsonrpc": "2.0", "id": 0, "result": {"action": "accept", "content": {}}})
    assert h.last_to_server() == {"jsonrpc": "2.0", "id": 0, "result": {"action": "accept", "content": {}}}
    h.send(b, {"jsonrpc": "2.0", "id": 0, "result": {"action": "accept"}})  # b answering a's question: dropped
    assert h.to_server.count({"jsonrpc": "2.0", "id": 0, "result": {"action": "accept"}}) == 0


def test_an_ambiguous_ask_is_declined_once_and_then_the_gate_makes_it_exact() -> None:
    h = Harness()
    sessions = [h.session() for _ in range(3)]
    for session in sessions:
        h.call(session, 1, "ask")
    assert len(h.calls_at_server()) == 3  # nothing learned yet: they flow together
    h.server(ask_for(None, 0, echo=False))
    assert h.router.stats.declined == 1
    assert h.last_to_server()["error"]["message"].startswith("mcpshare: cannot attribute elicitation/create")
    assert all(m.get("method") != "elicitation/create" for box in h.inbox.values() for m in box)
    assert ("tools/call", "ask") in h.router.learned.askers  # every candidate called the same tool: that one asks
    for call in h.calls_at_server():
        h.server(answer(call, "done"))
    h.to_server.clear()
    for session in sessions:
        h.call(session, 2, "ask")
    assert len(h.calls_at_server()) == 1  # now one at a time, so each ask has one candidate
    for turn in range(3):
        (current,) = h.calls_at_server()
        h.to_server.clear()
        h.server(ask_for(None, 100 + turn, echo=False))
        owner = next(s for s in sessions if h.inbox[s.id] and h.inbox[s.id][-1].get("id") == 100 + turn)
        h.send(owner, {"jsonrpc": "2.0", "id": 100 + turn, "result": {"action": "accept"}})
        h.server(answer(current, f"done {turn}"))
    assert h.router.stats.declined == 1


def test_readers_wait_behind_a_writer_and_flow_again_after_it() -> None:
    learned = Learned.declared(["ask"])
    h = Harness(learned=learned)
    a, b, c = h.session(), h.session(), h.session()
    h.call(a, 1, "echo")  # a reader in flight
    h.call(b, 1, "ask")  # a writer: waits for the reader
    h.call(c, 1, "echo")  # a reader behind a waiting writer waits too (writers are not starved)
    calls = h.calls_at_server()
    assert [call["params"]["name"] for call in calls] == ["echo"]
    h.server(answer(calls[0], "a"))
    assert [call["params"]["name"] for call in h.calls_at_server()] == ["echo", "ask"]
    h.server(answer(h.calls_at_server()[1], "b"))
    assert [call["params"]["name"] for call in h.calls_at_server()] == ["echo", "ask", "echo"]
    assert [m["id"] for m in h.inbox[a.id] + h.inbox[b.id]] == [1, 1]


def test_a_returned_traceparent_names_the_call_so_nothing_waits() -> None:
    h = Harness(learned=Learned.declared(["ask"]))
    a, b = h.session(), h.session()
    client_trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    h.call(a, 1, "echo", traceparent=client_trace)
    h.call(b, 1, "ask")  # a known asker: it waits behind a's call while asks have no link
    assert len(h.calls_at_server()) == 1
    h.server(ask_for(h.calls_at_server()[0], 0, echo=True))  # a's own call asks, and its stamp comes back
    assert h.inbox[a.id][-1]["method"] == "elicitation/create"
    assert h.inbox[a.id][-1]["params"]["_meta"]["traceparent"] == client_trace  # the client's own value again
    assert h.router.echoes_traceparent
    assert [call["params"]["name"] for call in h.calls_at_server()] == ["echo", "ask"]  # b no longer waits
    h.call(a, 2, "ask")  # nor does anything after it
    first, second, third = h.calls_at_server()
    assert first["params"]["_meta"]["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"  # its trace
    assert len({call["params"]["_meta"]["traceparent"] for call in (first, second, third)}) == 3
    h.server(ask_for(third, 1, echo=True))
    h.server(ask_for(second, 2, echo=True))
    assert h.inbox[a.id][-1]["id"] == 1 and h.inbox[b.id][-1]["id"] == 2


def test_the_tool_list_is_fetched_once_for_everyone_who_asks_at_once() -> None:
    h = Harness()
    sessions = [h.session() for _ in range(5)]
    for session in sessions:
        h.send(session, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    lists = [m for m in h.to_server if m.get("method") == "tools/list"]
    assert len(lists) == 1
    h.server({"jsonrpc": "2.0", "id": lists[0]["id"], "result": {"tools": [{"name": "echo"}]}})
    assert all(
        h.inbox[s.id] == [{"jsonrpc": "2.0", "id": 3, "result": {"tools": [{"name": "echo"}]}}] for s in sessions
    )
    h.server({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    h.send(sessions[0], {"jsonrpc": "2.0", "id": 4, "method": "tools/list"})
    assert len([m for m in h.to_server if m.get("method") == "tools/list"]) == 2  # the change emptied the cache


def test_a_session_hears_nothing_broadcast_before_its_handshake_answer() -> None:
    h = Harness()
    early = h.router.attach(None)
    h.inbox[early.id] = []
    h.server({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert h.inbox[early.id] == []
    h.send(early, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})
    h.server({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert [m.get("method") for m in h.inbox[early.id]] == [None, "notifications/tools/list_changed"]


def test_the_server_fails_and_every_call_in_flight_hears_it() -> None:
    h = Harness(learned=Learned.declared(["ask"]))
    a, b = h.session(), h.session()
    h.call(a, 1, "ask")
    h.call(b, 1, "ask")  # queued behind a's
    h.run(h.router.fail("MCP server 'model' crashed"))
    assert h.inbox[a.id] == [
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "MCP server 'model' crashed"}}
    ]
    assert h.inbox[b.id] == [
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "MCP server 'model' crashed"}}
    ]


# ---------------------------------------------------------------------------------------------- 2026-07-28 and bridges


def test_a_modern_backend_gets_the_pools_envelope_and_input_follows_the_request() -> None:
    h = Harness(modern=True)
    a, b = h.session(modern=True), h.session(modern=True)
    h.call(a, 1, "ask", modern=True, **{"io.modelcontextprotocol/logLevel": "debug"})
    h.call(b, 1, "ask", modern=True)
    first, second = h.calls_at_server()
    meta = first["params"]["_meta"]
    assert meta["io.modelcontextprotocol/clientInfo"] == h.router.client_info
    assert meta["io.modelcontextprotocol/clientCapabilities"] == h.router.capabilities
    assert (
        meta["io.modelcontextprotocol/logLevel"] == "debug"
        and "io.modelcontextprotocol/logLevel" not in second["params"]["_meta"]
    )
    needs = {
        "resultType": "input_required",
        "inputRequests": {"k": {"method": "elicitation/create", "params": {}}},
        "requestState": "opaque",
    }
    h.server({"jsonrpc": "2.0", "id": second["id"], "result": needs})
    assert h.inbox[b.id] == [{"jsonrpc": "2.0", "id": 1, "result": needs}] and h.inbox[a.id] == []


def test_a_handshake_session_on_a_modern_backend_is_asked_for_real_then_the_call_retried() -> None:
    h = Harness(modern=True)
    legacy = h.session()
    h.call(legacy, 5, "ask", progressToken="p")
    (call,) = h.calls_at_server()
    needs = {
        "resultType": "input_required",
        "inputRequests": {"who": {"method": "elicitation/create", "params": {"message": "name?"}}},
        "requestState": "state-bytes-AAAA==",
    }
    h.server({"jsonrpc": "2.0", "id": call["id"], "result": needs})
    (question,) = h.inbox[legacy.id]
    assert question["method"] == "elicitation/create" and question["params"] == {"message": "name?"}
    h.send(legacy, {"jsonrpc": "2.0", "id": question["id"], "result": {"action": "accept", "content": {"n": "x"}}})
    retry = h.calls_at_server()[-1]
    assert retry["id"] != call["id"]
    assert retry["params"]["requestState"] == "state-bytes-AAAA=="  # byte for byte
    assert retry["params"]["inputResponses"] == {"who": {"action": "accept", "content": {"n": "x"}}}
    progress = {"progressToken": retry["params"]["_meta"]["progressToken"], "progress": 1}
    h.server({"jsonrpc": "2.0", "method": "notifications/progress", "params": progress})
    h.server(answer(retry, "hello x"))
    assert h.inbox[legacy.id][1:] == [
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "p", "progress": 1}},
        {"jsonrpc": "2.0", "id": 5, "result": {"content": [{"type": "text", "text": "hello x"}]}},
    ]


def test_a_modern_session_on_a_handshake_backend_gets_input_required_and_its_retry_answers_the_server() -> None:
    h = Harness()
    modern_session, other = h.session(modern=True), h.session()
    h.call(modern_session, "c1", "ask", modern=True)
    (call,) = h.calls_at_server()
    assert not any(key.startswith("io.modelcontextprotocol/") for key in call["params"].get("_meta", {}))
    h.server(ask_for(call, 9, echo=True))
    (needs,) = h.inbox[modern_session.id]
    result = needs["result"]
    assert needs["id"] == "c1" and result["resultType"] == "input_required"
    (key,) = result["inputRequests"]
    assert result["inputRequests"][key]["method"] == "elicitation/create"
    state = result["requestState"]
    # Another session cannot use the handle, nor can a made-up one be used.
    params = {"name": "ask", "arguments": {}, "requestState": state, "inputResponses": {key: {"action": "accept"}}}
    h.send(other, {"jsonrpc": "2.0", "id": "x", "method": "tools/call", "params": params})
    assert "unknown, expired or not this session's" in h.inbox[other.id][-1]["error"]["message"]
    retry = {"jsonrpc": "2.0", "id": "c2", "method": "tools/call", "params": {**params, "_meta": ENVELOPE}}
    h.send(modern_session, retry)
    assert h.last_to_server() == {"jsonrpc": "2.0", "id": 9, "result": {"action": "accept"}}
    h.server(answer(call, "accepted"))
    final = h.inbox[modern_session.id][-1]
    assert final["id"] == "c2" and final["result"]["content"][0]["text"] == "accepted"
    assert final["result"]["resultType"] == "complete"


def test_an_unanswered_input_request_expires_and_the_call_is_cancelled_upstream() -> None:
    h = Harness()
    modern_session = h.session(modern=True)
    h.call(modern_session, "c1", "ask", modern=True)
    (call,) = h.calls_at_server()
    h.server(ask_for(call, 3, echo=True))
    (token, seconds) = h.timers[-1]
    assert seconds == h.router.input_ttl
    h.run(h.router.timer(token, now=seconds))
    assert {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {"code": -32603, "message": "mcpshare: the client did not answer within 600 s"},
    } in h.to_server
    assert h.last_to_server("notifications/cancelled")["params"]["requestId"] == call["id"]
    state = h.inbox[modern_session.id][0]["result"]["requestState"]
    late = {"name": "ask", "arguments": {}, "requestState": state, "inputResponses": {}, "_meta": ENVELOPE}
    h.send(modern_session, {"jsonrpc": "2.0", "id": "c2", "method": "tools/call", "params": late})
    assert "expired" in h.inbox[modern_session.id][-1]["error"]["message"]


def test_discover_is_answered_on_either_backend_with_both_eras() -> None:
    for modern in (False, True):
        h = Harness(modern=modern)
        session = h.router.attach(None)
        h.inbox[session.id] = []
        h.send(session, {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": ENVELOPE}})
        result = h.inbox[session.id][0]["result"]
        assert set(result["supportedVersions"]) == {"2025-11-25", MODERN_VERSION}
        assert result["capabilities"]["tools"] == {"listChanged": True}


def test_request_ids_are_unique_per_backend_whatever_the_sessions_use() -> None:
    h = Harness()
    sessions = [h.session() for _ in range(4)]
    for session, request_id in itertools.product(sessions, (1, "1", 2)):
        h.call(session, request_id, "echo")
    ids = [call["id"] for call in h.calls_at_server()]
    assert len(ids) == len(set(ids)) == 12
