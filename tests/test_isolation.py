"""Isolation as a property: whatever the interleaving, nothing reaches a thread that did not own it.

Hypothesis draws a schedule of operations for several threads sharing ONE real server process: tool calls
(echo, progress, slow sleeps), cancels, elicitations, subscriptions, resource updates, thread closes and server
crashes. Every thread is a raw lease whose request ids start at 1 like every other's, so ids and progress tokens
collide unless the mux keeps them apart. Each payload carries its thread's tag. Afterwards:

* every message a thread received was its own (ids it sent, its own payloads, its own progress tokens, its own
  elicitations, updates only while it was subscribed);
* every call of a live thread ended with a result or an error;
* no server process is left once the pool is closed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import TESTSERVER, count_server_processes, new_marker, reap_marked
from mcpshare.config import StdioServerConfig
from mcpshare.pool import BackendPool, Lease, SessionOverflow

THREADS = 4
URI = "test://counter"

OPS = st.sampled_from(["echo", "progress", "sleep", "cancel", "ask", "subscribe", "unsubscribe", "bump", "close"])
SCHEDULE = st.lists(
    st.one_of(st.tuples(st.integers(0, THREADS - 1), OPS), st.just((0, "crash"))),
    min_size=5,
    max_size=30,
)


@dataclass
class Sent:
    method: str
    tool: str | None
    tag: str


@dataclass
class ThreadState:
    index: int
    lease: Lease
    next_id: int = 1
    sent: dict[int, Sent] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)
    cancelled: set[int] = field(default_factory=set)
    subscribed: bool = False
    ever_subscribed: bool = False
    closed: bool = False
    violations: list[str] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return f"thread-{self.index}"

    def open_requests(self) -> set[int]:
        return set(self.sent) - self.answered - self.cancelled


def check_message(state: ThreadState, message: dict[str, Any]) -> dict[str, Any] | None:
    """Record a violation for anything this thread does not own; return an answer for server requests."""
    method = message.get("method")
    if method is None:  # a response
        request_id = message.get("id")
        if request_id not in state.sent:
            state.violations.append(f"{state.tag} got a response to an id it never sent: {message}")
        elif request_id in state.answered:
            state.violations.append(f"{state.tag} got a second response to {request_id}")
        else:
            state.answered.add(request_id)
            sent = state.sent[request_id]
            text = str(message.get("result", ""))
            if sent.tool == "echo" and "result" in message and sent.tag not in text:
                state.violations.append(f"{state.tag} got someone else's echo: {text[:200]}")
        return None
    if method == "notifications/progress":
        token = message["params"]["progressToken"]
        sent = state.sent.get(token) if isinstance(token, int) else None
        if sent is None or sent.tool != "progress":
            state.violations.append(f"{state.tag} got progress for a token it never used: {token}")
        return None
    if method == "notifications/resources/updated" and not state.ever_subscribed:
        state.violations.append(f"{state.tag} got a resource update without subscribing")
        return None
    if method == "elicitation/create":
        question = message["params"].get("message", "")
        asking = [s for i, s in state.sent.items() if s.tool == "ask" and i in state.open_requests()]
        if not asking or state.tag not in question:
            state.violations.append(f"{state.tag} got an elicitation it did not cause: {question!r}")
        return {"jsonrpc": "2.0", "id": message["id"], "result": {"action": "accept", "content": {"answer": state.tag}}}
    return None


async def reader(state: ThreadState) -> None:
    async for message in state.lease.receive:
        reply = check_message(state, message)
        if reply is not None and not state.closed:
            try:
                await state.lease.send(reply)
            except (SessionOverflow, RuntimeError):
                pass


async def request(state: ThreadState, method: str, params: dict[str, Any] | None, tool: str | None = None) -> None:
    request_id = state.next_id
    state.next_id += 1
    state.sent[request_id] = Sent(method, tool, state.tag)
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    await state.lease.send(message)


async def call(state: ThreadState, tool: str, arguments: dict[str, Any], *, progress: bool = False) -> None:
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if progress:
        params["_meta"] = {"progressToken": state.next_id}
    await request(state, "tools/call", params, tool)


async def run_schedule(schedule: list[tuple[int, str]], marker: str) -> list[str]:
    config = StdioServerConfig(
        name="test", command=sys.executable, args=(str(TESTSERVER), f"--marker={marker}"), share="global"
    )
    async with BackendPool(idle_grace=0, backoff_base=0.01, breaker_threshold=1000) as pool:
        states = [ThreadState(i, await pool.acquire(config)) for i in range(THREADS)]
        async with anyio.create_task_group() as tg:
            for state in states:
                tg.start_soon(reader, state)
                await request(
                    state,
                    "initialize",
                    {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": state.tag, "version": "0"},
                    },
                )
            for index, op in schedule:
                state = states[index]
                if state.closed:
                    continue
                tag = f"{state.tag}:{state.next_id}"
                if op == "echo":
                    await call(state, "echo", {"text": tag})
                elif op == "progress":
                    await call(state, "progress", {"steps": 3, "delay": 0.01}, progress=True)
                elif op == "sleep":
                    await call(state, "sleep", {"seconds": 1.0})
                elif op == "cancel" and state.open_requests():
                    victim = max(state.open_requests())
                    if state.sent[victim].method == "tools/call":
                        state.cancelled.add(victim)
                        await state.lease.send(
                            {
                                "jsonrpc": "2.0",
                                "method": "notifications/cancelled",
                                "params": {"requestId": victim, "reason": "test"},
                            }
                        )
                elif op == "ask":
                    await call(state, "ask", {"question": f"question for {tag}"})
                elif op == "subscribe" and not state.subscribed:
                    state.subscribed = state.ever_subscribed = True
                    await request(state, "resources/subscribe", {"uri": URI})
                elif op == "unsubscribe" and state.subscribed:
                    state.subscribed = False
                    await request(state, "resources/unsubscribe", {"uri": URI})
                elif op == "bump":
                    await call(state, "bump", {})
                elif op == "close":
                    state.closed = True
                    await state.lease.release()
                elif op == "crash":
                    await call(state, "crash", {"code": 3})
                await anyio.sleep(0.005)
            # Every call of a live thread ends: result or error, never silence.
            with anyio.move_on_after(20):
                while any(s.open_requests() for s in states if not s.closed):  # noqa: ASYNC110 - readers set state
                    await anyio.sleep(0.02)
            unfinished = {s.tag: sorted(s.open_requests()) for s in states if not s.closed and s.open_requests()}
            for state in states:
                if not state.closed:
                    await state.lease.release()
            tg.cancel_scope.cancel()
    violations = [v for s in states for v in s.violations]
    if unfinished:
        violations.append(f"calls never ended: {unfinished}")
    return violations


@pytest.mark.timeout(300)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=SCHEDULE)
def test_no_message_reaches_a_thread_that_did_not_own_it(schedule: list[tuple[int, str]]) -> None:
    marker = new_marker()
    try:
        violations = anyio.run(run_schedule, schedule, marker, backend="asyncio")
        assert violations == []
        assert count_server_processes(marker) == [], "a server process outlived the pool"
    finally:
        reap_marked(marker)
