"""Routing through one shared process: every message reaches exactly the session it belongs to.

Each test runs several genuine SDK ClientSessions over leases of ONE real test-server process. SDK sessions all
count request ids from the same start and use them as progress tokens, so without the mux's rewriting their ids
and tokens collide: these tests would see each other's answers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

from helpers import TESTSERVER, Recorder, count_server_processes, tool_json, tool_text
from mcpshare.config import StdioServerConfig
from mcpshare.mux import decode, encode
from mcpshare.pool import BackendPool
from mcpshare.session import open_session

pytestmark = pytest.mark.timeout(60)


def shared_config(marker: str) -> StdioServerConfig:
    return StdioServerConfig(name="test", command=sys.executable, args=(str(TESTSERVER), f"--marker={marker}"))


async def test_progress_reaches_only_the_calling_session(marker: str, tmp_workspace: Path) -> None:
    received: dict[int, list[float]] = {n: [] for n in range(6)}
    async with BackendPool(idle_grace=0) as pool:

        async def session_run(n: int) -> None:
            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                received[n].append(progress)

            async with await pool.acquire(shared_config(marker), workspace=tmp_workspace) as lease:
                async with open_session(lease) as session:
                    result = await session.call_tool(
                        "progress", {"steps": n + 2, "delay": 0.02}, progress_callback=on_progress
                    )
                    assert tool_text(result) == "done"

        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(session_run, n)
        assert len(count_server_processes(marker)) == 1
    for n, values in received.items():
        assert sorted(values) == [float(i) for i in range(1, n + 3)], f"session {n} got {values}"


async def test_cancel_reaches_the_server_for_that_request_only(marker: str, tmp_workspace: Path) -> None:
    async with BackendPool(idle_grace=0) as pool:
        config = shared_config(marker)
        async with (
            await pool.acquire(config, workspace=tmp_workspace) as lease_a,
            await pool.acquire(config, workspace=tmp_workspace) as lease_b,
            open_session(lease_a) as a,
            open_session(lease_b) as b,
        ):
            outcome: dict[str, str] = {}

            async def slow_a() -> None:
                with anyio.move_on_after(0.5):
                    await a.call_tool("sleep", {"seconds": 30})
                    outcome["a"] = "finished"
                outcome.setdefault("a", "cancelled")

            async def short_b() -> None:
                outcome["b"] = tool_text(await b.call_tool("sleep", {"seconds": 1.5}))

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(slow_a)
                    tg.start_soon(short_b)
            assert outcome == {"a": "cancelled", "b": "slept"}
            stats = tool_json(await b.call_tool("stats", {}))
            assert stats["cancelled"] == 1
            assert stats["methods"].get("notifications/cancelled") == 1
            # A's session still works after its cancelled call.
            assert tool_text(await a.call_tool("echo", {"text": "after"})) == "after"


def _elicitation_recorder(calls: list[str], name: str) -> object:
    async def elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        calls.append(name)
        return types.ElicitResult(action="accept", content={"answer": f"from {name}"})

    return elicit


async def test_elicitation_reaches_the_only_session_in_flight(marker: str, tmp_workspace: Path) -> None:
    calls: list[str] = []
    async with BackendPool(idle_grace=0) as pool:
        config = shared_config(marker)
        async with (
            await pool.acquire(config, workspace=tmp_workspace) as lease_a,
            await pool.acquire(config, workspace=tmp_workspace) as lease_b,
            open_session(lease_a, elicitation_callback=_elicitation_recorder(calls, "a")) as a,  # type: ignore[arg-type]
            open_session(lease_b, elicitation_callback=_elicitation_recorder(calls, "b")) as b,  # type: ignore[arg-type]
        ):
            assert tool_text(await a.call_tool("ask", {"question": "who?"})) == "accept:from a"
            assert tool_text(await b.call_tool("ask", {"question": "who?"})) == "accept:from b"
            # Other sessions listing tools meanwhile cannot own a server request: still attributed.
            async with anyio.create_task_group() as tg:
                tg.start_soon(b.list_tools)
                assert tool_text(await a.call_tool("ask", {"question": "again"})) == "accept:from a"
    assert calls == ["a", "b", "a"]


async def test_an_elicitation_among_concurrent_calls_reaches_its_caller_by_its_link(
    marker: str, tmp_workspace: Path
) -> None:
    """b sleeps while a's call elicits: two candidates, but the Python SDK server propagates the call's traceparent
    into its elicitation, so the router knows whose it is (the decline of a truly ambiguous one is in
    test_attribution)."""
    calls: list[str] = []
    async with BackendPool(idle_grace=0) as pool:
        config = shared_config(marker)
        async with (
            await pool.acquire(config, workspace=tmp_workspace) as lease_a,
            await pool.acquire(config, workspace=tmp_workspace) as lease_b,
            open_session(lease_a, elicitation_callback=_elicitation_recorder(calls, "a")) as a,  # type: ignore[arg-type]
            open_session(lease_b, elicitation_callback=_elicitation_recorder(calls, "b")) as b,  # type: ignore[arg-type]
        ):
            b_started = anyio.Event()
            results: dict[str, str] = {}

            async def b_sleeps() -> None:
                b_started.set()
                results["b"] = tool_text(await b.call_tool("sleep", {"seconds": 1.0}))

            async def a_asks() -> None:
                await b_started.wait()
                await anyio.sleep(0.2)
                try:
                    result = await a.call_tool("ask", {"question": "whose?"})
                    results["a"] = tool_text(result)
                except MCPError as exc:
                    results["a"] = f"error: {exc}"

            async with anyio.create_task_group() as tg:
                tg.start_soon(b_sleeps)
                tg.start_soon(a_asks)
    # Two calls in flight, and the SDK server hands back the traceparent the router stamped on a's call.
    assert calls == ["a"], "the elicitation reaches the session whose call caused it, and only that one"
    assert results == {"a": "accept:from a", "b": "slept"}


async def test_sampling_reaches_the_calling_session(marker: str, tmp_workspace: Path) -> None:
    async def sampler(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled by a"), model="test-model"
        )

    async with BackendPool(idle_grace=0) as pool:
        config = shared_config(marker)
        async with (
            await pool.acquire(config, workspace=tmp_workspace) as lease_a,
            await pool.acquire(config, workspace=tmp_workspace) as lease_b,
            open_session(lease_a, sampling_callback=sampler) as a,
            open_session(lease_b) as b,
        ):
            assert tool_text(await a.call_tool("sample", {"prompt": "hi"})) == "sampled by a"
            with pytest.raises(MCPError, match="Sampling not supported"):  # b's own default answer, not a's sampler
                await b.call_tool("sample", {"prompt": "hi"})


async def test_roots_of_a_shared_server_come_from_the_workspace(marker: str, tmp_workspace: Path) -> None:
    asked: list[str] = []

    async def roots(context: ClientRequestContext) -> types.ListRootsResult:
        asked.append("session")
        return types.ListRootsResult(roots=[types.Root(uri="file:///elsewhere", name="elsewhere")])

    async with BackendPool(idle_grace=0) as pool:
        async with (
            await pool.acquire(shared_config(marker), workspace=tmp_workspace) as lease,
            open_session(lease, list_roots_callback=roots) as session,
        ):
            listed = tool_json(await session.call_tool("roots", {}))
    assert listed == [{"uri": tmp_workspace.resolve().as_uri(), "name": tmp_workspace.name}]
    assert asked == []


async def test_list_changed_fans_out_and_invalidates_the_tool_cache(marker: str, tmp_workspace: Path) -> None:
    seen_a, seen_b = Recorder(), Recorder()
    async with BackendPool(idle_grace=0) as pool:
        config = shared_config(marker)
        async with (
            await pool.acquire(config, workspace=tmp_workspace) as lease_a,
            await pool.acquire(config, workspace=tmp_workspace) as lease_b,
            open_session(lease_a, message_handler=seen_a) as a,
            open_session(lease_b, message_handler=seen_b) as b,
        ):
            before = {tool.name for tool in (await b.list_tools()).tools}
            assert "fresh_tool" not in before
            await a.call_tool("add_tool", {"name": "fresh_tool"})
            with anyio.fail_after(5):
                await seen_a.wait_for(types.ToolListChangedNotification)
                await seen_b.wait_for(types.ToolListChangedNotification)
            after = {tool.name for tool in (await b.list_tools()).tools}
            assert "fresh_tool" in after
            assert tool_text(await b.call_tool("fresh_tool", {})) == "fresh_tool called"


async def test_resource_subscriptions_are_reference_counted(marker: str, tmp_workspace: Path) -> None:
    uri = "test://counter"
    recorders = [Recorder(), Recorder(), Recorder()]
    async with BackendPool(idle_grace=0) as pool:
        config = shared_config(marker)
        leases = [await pool.acquire(config, workspace=tmp_workspace) for _ in range(3)]
        async with (
            open_session(leases[0], message_handler=recorders[0]) as a,
            open_session(leases[1], message_handler=recorders[1]) as b,
            open_session(leases[2], message_handler=recorders[2]) as c,
        ):
            await a.subscribe_resource(uri)
            await b.subscribe_resource(uri)
            stats = tool_json(await c.call_tool("stats", {}))
            assert stats["subscribed"] == [uri]
            assert stats["methods"].get("resources/subscribe") == 1  # the second subscriber costs the server nothing
            await c.call_tool("bump", {})
            with anyio.fail_after(5):
                await recorders[0].wait_for(types.ResourceUpdatedNotification)
                await recorders[1].wait_for(types.ResourceUpdatedNotification)
            await anyio.sleep(0.2)
            assert recorders[2].of(types.ResourceUpdatedNotification) == []
            await a.unsubscribe_resource(uri)
            assert tool_json(await c.call_tool("stats", {}))["subscribed"] == [uri]
            await b.unsubscribe_resource(uri)
            assert tool_json(await c.call_tool("stats", {}))["subscribed"] == []
        for lease in leases:
            await lease.release()


async def test_each_session_gets_logs_at_its_own_level(marker: str, tmp_workspace: Path) -> None:
    logs_a, logs_b = Recorder(), Recorder()
    async with BackendPool(idle_grace=0) as pool:
        config = shared_config(marker)
        async with (
            await pool.acquire(config, workspace=tmp_workspace) as lease_a,
            await pool.acquire(config, workspace=tmp_workspace) as lease_b,
            open_session(lease_a, logging_callback=logs_a) as a,
            open_session(lease_b, logging_callback=logs_b) as b,
        ):
            await a.set_logging_level("debug")
            await b.set_logging_level("error")
            assert tool_json(await a.call_tool("stats", {}))["log_level"] == "debug"  # the finest anyone asked for
            await a.call_tool("log", {"level": "info", "message": "detail"})
            await a.call_tool("log", {"level": "error", "message": "broken"})
            with anyio.fail_after(5):
                await logs_a.wait_for(types.LoggingMessageNotificationParams, 2)
                await logs_b.wait_for(types.LoggingMessageNotificationParams, 1)
            await anyio.sleep(0.2)
            assert [p.data for p in logs_a.items] == ["detail", "broken"]
            assert [p.data for p in logs_b.items] == ["broken"]


# --------------------------------------------------------------------------- the wire codec

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec=None)),  # lone surrogates included
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(JSON_VALUES)
@settings(max_examples=300)
def test_the_wire_codec_agrees_with_json(value: object) -> None:
    """mux.encode/decode (orjson, with json for what orjson refuses or would change) give exactly what json gives:
    the same values of the same types, big integers and lone surrogates included, each frame on one line."""
    frame = encode({"value": value})
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    assert repr(json.loads(frame)) == repr({"value": value})
    as_json = json.dumps({"value": value}).encode()
    assert repr(decode(as_json)) == repr(json.loads(as_json))
