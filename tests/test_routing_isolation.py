"""Isolation as a property of the routing core itself, in both eras, with crashes and closes.

Hypothesis draws a backend era (handshake or 2026-07-28), whether the server hands back the traceparent of its
calls, the era of each session, and a schedule: sessions call (ids and progress tokens colliding, since each counts
from 1), cancel and close; the server answers, reports progress, asks on behalf of one call (handshake era) or
answers ``input_required`` (2026-07-28), or crashes. A model server knows the truth (each call carries its
session's tag), sessions answer every question with their own name and retry every ``input_required``. Checked:

* every message a session receives is its own: answers to its open ids only, progress for its own tokens,
  questions carrying its own tag;
* every answer that reaches the server for a question comes from the session that owns the call;
* no request is answered twice, and after the end every open request of a live session has had its answer.

Pure computation (sans-I/O), so thousands of interleavings run in seconds; ``test_the_property_catches_a_router_
that_guesses`` shows that the property fails for a router that resolves an ambiguous ask by guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpshare.routing import DELIVER, TO_SERVER, Router
from mcpshare.routing.core import Pending
from mcpshare.routing.wire import MODERN_VERSION

SESSIONS = 3
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
}
INIT_RESULT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"tools": {}},
    "serverInfo": {"name": "m", "version": "1"},
}
DISCOVER_RESULT = {"supportedVersions": [MODERN_VERSION], "capabilities": {"tools": {}}, "resultType": "complete"}

# Weighted by repetition: calls and server steps dominate, so several calls are in flight when questions come.
KINDS = ["call"] * 5 + ["respond"] * 3 + ["progress", "ask", "ask", "ask", "input", "input", "cancel", "close", "crash"]
OPS = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 7)), min_size=1, max_size=60)


@dataclass
class Client:
    index: int
    modern: bool
    session: Any = None
    next_id: int = 1
    open: dict[int, str] = field(default_factory=dict)  # request id -> the tag of the call
    answered: set[int] = field(default_factory=set)
    closed: bool = False


@dataclass
class World:
    router: Router
    clients: list[Client]
    echo: bool
    violations: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # calls the server has, in arrival order
    asks: dict[int, str] = field(default_factory=dict)  # the server's question id -> the tag of the call asking
    next_ask: int = 0
    crashed: bool = False

    def owner(self, tag: str) -> int:
        return int(tag.split(":")[0])

    def run(self, actions: list[Any]) -> None:
        for action in actions:
            if action[0] == TO_SERVER:
                self.at_server(action[1])
            elif action[0] == DELIVER:
                client = next(c for c in self.clients if c.session is action[1])
                self.at_client(client, action[2])

    # --- the model server

    def at_server(self, message: dict[str, Any]) -> None:
        if self.crashed:
            return
        method = message.get("method")
        if method == "tools/call":
            params = message["params"]
            state = params.get("requestState")
            if state is not None and state.startswith("state-"):  # a 2026-07-28 retry with answers
                tag = state.removeprefix("state-")
                for value in (params.get("inputResponses") or {}).values():
                    answer = value.get("content", {}).get("answer")
                    if answer != self.owner(tag):
                        self.violations.append(f"session {answer} answered the question of {tag}")
            self.calls.append(message)
        elif method == "notifications/cancelled":
            request_id = message["params"]["requestId"]
            self.calls = [call for call in self.calls if call["id"] != request_id]
        elif "method" not in message and message.get("id") in self.asks:  # an answer to one of our questions
            tag = self.asks.pop(message["id"])
            if "result" in message and message["result"].get("content", {}).get("answer") != self.owner(tag):
                self.violations.append(f"the answer to the question of {tag} came from {message['result']}")

    def server_step(self, op: str, k: int) -> None:
        if self.crashed or not self.calls:
            return
        call = self.calls[k % len(self.calls)]
        tag = call["params"]["arguments"]["tag"]
        if op == "respond":
            self.calls.remove(call)
            self.run(self.router.from_server({"jsonrpc": "2.0", "id": call["id"], "result": {"text": tag}}))
        elif op == "progress":
            token = call["params"].get("_meta", {}).get("progressToken")
            if token is not None:
                note = {
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {"progressToken": token, "tag": tag},
                }
                self.run(self.router.from_server(note))
        elif op == "ask" and not self.router.modern:
            self.next_ask += 1
            self.asks[self.next_ask] = tag
            params: dict[str, Any] = {"message": tag}
            if self.echo:
                params["_meta"] = {"traceparent": call["params"]["_meta"]["traceparent"]}
            self.run(
                self.router.from_server(
                    {"jsonrpc": "2.0", "id": self.next_ask, "method": "elicitation/create", "params": params}
                )
            )
        elif op == "input" and self.router.modern:
            self.calls.remove(call)
            needs = {
                "resultType": "input_required",
                "inputRequests": {"q": {"method": "elicitation/create", "params": {"message": tag}}},
                "requestState": f"state-{tag}",
            }
            self.run(self.router.from_server({"jsonrpc": "2.0", "id": call["id"], "result": needs}))

    # --- the model clients

    def at_client(self, client: Client, message: dict[str, Any]) -> None:
        if client.closed:
            self.violations.append(f"session {client.index} got {message} after it closed")
            return
        method = message.get("method")
        if method is None:
            request_id = message.get("id")
            if request_id not in client.open:
                self.violations.append(f"session {client.index} got an answer to {request_id} it does not expect")
                return
            tag = client.open.pop(request_id)
            client.answered.add(request_id)
            result = message.get("result")
            if isinstance(result, dict) and result.get("resultType") == "input_required":
                question = result["inputRequests"]
                for request in question.values():
                    if request["params"]["message"] != tag:
                        self.violations.append(
                            f"session {client.index} was asked {request['params']['message']} in {tag}"
                        )
                self.call(client, tag=tag, retry=result)
            elif isinstance(result, dict) and "text" in result and result["text"] != tag:
                self.violations.append(f"session {client.index} got the result of {result['text']} for {tag}")
            return
        if method == "notifications/progress":
            params = message["params"]
            if params["progressToken"] not in client.open or client.open[params["progressToken"]] != params["tag"]:
                self.violations.append(f"session {client.index} got progress {params}")
            return
        if method == "elicitation/create":
            if self.owner(message["params"]["message"]) != client.index:
                self.violations.append(
                    f"session {client.index} was asked the question of {message['params']['message']}"
                )
            answer = {
                "jsonrpc": "2.0",
                "id": message["id"],
                "result": {"action": "accept", "content": {"answer": client.index}},
            }
            self.run(self.router.from_session(client.session, answer))
        elif method == "notifications/cancelled":
            return

    def call(self, client: Client, *, tag: str | None = None, retry: dict[str, Any] | None = None) -> None:
        request_id = client.next_id
        client.next_id += 1
        tag = tag or f"{client.index}:{request_id}"
        params: dict[str, Any] = {"name": "t", "arguments": {"tag": tag}, "_meta": {"progressToken": request_id}}
        if client.modern:
            params["_meta"] |= ENVELOPE
        if retry is not None:
            params["requestState"] = retry["requestState"]
            params["inputResponses"] = {
                key: {"action": "accept", "content": {"answer": client.index}} for key in retry["inputRequests"]
            }
        client.open[request_id] = tag
        self.run(
            self.router.from_session(
                client.session, {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
            )
        )


def build(modern_backend: bool, eras: list[bool], echo: bool) -> World:
    router = Router("model")
    router.use_modern(DISCOVER_RESULT) if modern_backend else router.use_legacy(INIT_RESULT)
    clients = [Client(index, modern) for index, modern in enumerate(eras)]
    world = World(router, clients, echo)
    for client in clients:
        client.session = router.attach(None)
        if client.modern:
            hello = {"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {"_meta": ENVELOPE}}
        else:
            hello = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}
        client.open[0] = "hello"
        world.run(router.from_session(client.session, hello))
    return world


def play(world: World, ops: list[tuple[str, int]]) -> None:
    for op, arg in ops:
        if op == "call":
            client = world.clients[arg % SESSIONS]
            if not client.closed:
                world.call(client)
        elif op in ("respond", "progress", "ask", "input"):
            world.server_step(op, arg)
        elif op == "cancel":
            client = world.clients[arg % SESSIONS]
            if not client.closed and client.open:
                request_id = min(client.open)
                client.open.pop(request_id)
                note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
                world.run(world.router.from_session(client.session, note))
        elif op == "close":
            client = world.clients[arg % SESSIONS]
            if not client.closed:
                client.closed = True
                client.open.clear()
                world.router.detach(client.session, "closed")  # its own last errors go to a closed session: dropped
        elif op == "crash" and not world.crashed and arg == 0:  # rarer than the rest
            world.run(world.router.fail("crashed"))
            world.crashed = True
    if not world.crashed:
        world.run(world.router.fail("the end"))
    for client in world.clients:
        if not client.closed and client.open:
            world.violations.append(f"session {client.index} never got an answer to {sorted(client.open)}")


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    modern=st.booleans(),
    eras=st.lists(st.booleans(), min_size=SESSIONS, max_size=SESSIONS),
    echo=st.booleans(),
    ops=OPS,
)
def check_isolation(modern: bool, eras: list[bool], echo: bool, ops: list[tuple[str, int]]) -> None:
    world = build(modern, eras, echo)
    play(world, ops)
    assert world.violations == []


def test_isolation_holds_for_every_interleaving_hypothesis_finds() -> None:
    check_isolation()


def test_the_property_catches_a_router_that_guesses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve an ambiguous ask by taking the most recent candidate (what mcp-mux does): the property fails."""

    def guess(self: Router, params: Any) -> tuple[Pending | None, str]:
        candidates = [
            entry for entry in self.pending.values() if entry.session is not None and entry.subject is not None
        ]
        return (candidates[-1], "") if candidates else (None, "nobody")

    monkeypatch.setattr(Router, "_owner_call", guess)
    with pytest.raises(AssertionError, match="was asked"):  # a question reached a session (or call) not its own
        check_isolation()
