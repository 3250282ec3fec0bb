"""Shared fate, handled: crashes, hangs, bad server output, bad host input, slow readers, orphans.

Real processes throughout: the SDK test server for crashes and hangs, tests/servers/raw_server.py for output no
SDK server can produce, and a separate host process for SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from helpers import (
    SERVERS_DIR,
    TESTS_DIR,
    TESTSERVER,
    Recorder,
    count_server_processes,
    is_running,
    tool_json,
    tool_text,
    wait_until_gone,
)
from mcpshare.config import StdioServerConfig
from mcpshare.mux import SESSION_BUFFER_BYTES, encode
from mcpshare.pool import BackendPool, Lease, ServerDisabled, ServerStartError, SessionOverflow
from mcpshare.session import open_session

pytestmark = pytest.mark.timeout(60)

RAW_SERVER = SERVERS_DIR / "raw_server.py"


def sdk_server(marker: str, **overrides: Any) -> StdioServerConfig:
    fields: dict[str, Any] = {
        "name": "test",
        "command": sys.executable,
        "args": (str(TESTSERVER), f"--marker={marker}"),
        "share": "global",
    }
    fields.update(overrides)
    return StdioServerConfig(**fields)


def raw_server(marker: str) -> StdioServerConfig:
    return StdioServerConfig(
        name="raw", command=sys.executable, args=(str(RAW_SERVER), f"--marker={marker}"), share="global"
    )


class RawClient:
    """A lease spoken to in raw JSON-RPC dicts, so tests see exactly what the mux delivers."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.next_id = 1
        self.inbox: list[dict[str, Any]] = []

    async def initialize(self) -> dict[str, Any]:
        return await self.request(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
        )

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = self.next_id
        self.next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.lease.send(message)
        async for incoming in self.lease.receive:
            if incoming.get("id") == request_id and "method" not in incoming:
                return incoming
            self.inbox.append(incoming)
        raise AssertionError("the lease ended before the answer came")

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        return await self.request("tools/call", {"name": tool, "arguments": arguments})


def text_of(response: dict[str, Any]) -> str:
    return "".join(block.get("text", "") for block in response["result"]["content"])


# --------------------------------------------------------------------------- crashes


async def test_crash_fails_every_inflight_call_at_once_then_respawns(marker: str) -> None:
    config = sdk_server(marker)
    async with BackendPool(idle_grace=0) as pool:
        leases = [await pool.acquire(config) for _ in range(3)]
        async with open_session(leases[0]) as a, open_session(leases[1]) as b, open_session(leases[2]) as c:
            first_pid = leases[0].pid
            errors: list[str] = []

            async def waiting_call(session: Any) -> None:
                try:
                    await session.call_tool("sleep", {"seconds": 30})
                    errors.append("finished?!")
                except MCPError as exc:
                    errors.append(str(exc))

            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiting_call, a)
                tg.start_soon(waiting_call, b)
                await anyio.sleep(0.3)
                with pytest.raises(MCPError):
                    await c.call_tool("crash", {"code": 7})
            assert time.monotonic() - started < 10, "in-flight calls must fail at once, not hang"
            assert len(errors) == 2
            for error in errors:
                assert "'test'" in error and "exit code 7" in error and "crashing with exit code 7" in error
            # Next use respawns: a new process, handshake redone, calls work again.
            assert tool_text(await a.call_tool("echo", {"text": "back"})) == "back"
            assert leases[0].pid != first_pid and not is_running(first_pid)
            assert tool_text(await b.call_tool("echo", {"text": "b too"})) == "b too"
            assert leases[1].pid == leases[0].pid
            (info,) = pool.snapshot()
            assert info.restarts == 1
            assert len(count_server_processes(marker)) == 1
        for lease in leases:
            await lease.release()


async def test_respawn_restores_subscriptions_and_reports_changed_tools(marker: str) -> None:
    uri = "test://counter"
    seen = Recorder()
    async with BackendPool(idle_grace=0) as pool:
        lease, other = await pool.acquire(sdk_server(marker)), await pool.acquire(sdk_server(marker))
        async with open_session(lease, message_handler=seen) as session, open_session(other) as killer:
            await session.subscribe_resource(uri)
            await session.call_tool("add_tool", {"name": "ephemeral"})  # gone after a respawn
            assert "ephemeral" in {t.name for t in (await session.list_tools()).tools}
            before = len(seen.of(types.ToolListChangedNotification))
            with pytest.raises(MCPError):
                await killer.call_tool("crash", {"code": 1})
            stats = tool_json(await session.call_tool("stats", {}))  # respawns
            assert stats["subscribed"] == [uri], "subscriptions are restored after a respawn"
            assert stats["methods"].get("initialize") == 1
            with anyio.fail_after(5):
                await seen.wait_for(types.ToolListChangedNotification, before + 1)
            assert "ephemeral" not in {t.name for t in (await session.list_tools()).tools}
            await session.call_tool("bump", {})
            with anyio.fail_after(5):
                await seen.wait_for(types.ResourceUpdatedNotification)
        await lease.release()
        await other.release()


async def test_unchanged_tools_after_respawn_send_no_list_changed(marker: str) -> None:
    seen = Recorder()
    async with BackendPool(idle_grace=0) as pool:
        lease, other = await pool.acquire(sdk_server(marker)), await pool.acquire(sdk_server(marker))
        async with open_session(lease, message_handler=seen) as session, open_session(other) as killer:
            await session.list_tools()
            with pytest.raises(MCPError):
                await killer.call_tool("crash", {"code": 1})
            assert tool_text(await session.call_tool("echo", {"text": "x"})) == "x"
            await anyio.sleep(0.3)
            assert seen.of(types.ToolListChangedNotification) == []
        await lease.release()
        await other.release()


async def test_breaker_disables_a_crash_looping_server_until_reset(marker: str) -> None:
    config = sdk_server(marker, env={"TESTSERVER_EXIT_AT_START": "9"})
    async with BackendPool(idle_grace=0, backoff_base=0.01, breaker_threshold=3) as pool:
        for _ in range(3):
            with pytest.raises(ServerStartError, match="exit code 9"):
                await pool.acquire(config)
        with pytest.raises(ServerDisabled, match=r"disabled after 3 consecutive failures.*mcpshare restart test"):
            await pool.acquire(config)
        assert pool.spawns == 3, "a disabled server is not spawned again"
        assert pool.reset("test") == 1
        with pytest.raises(ServerStartError):
            await pool.acquire(config)
        assert pool.spawns == 4
    assert count_server_processes(marker) == []


async def test_restart_replaces_the_process_and_leases_follow(marker: str) -> None:
    async with BackendPool(idle_grace=0) as pool:
        async with await pool.acquire(sdk_server(marker)) as lease, open_session(lease) as session:
            old = lease.pid
            assert await pool.restart("test") == 1
            assert not is_running(old)
            assert tool_text(await session.call_tool("echo", {"text": "again"})) == "again"
            assert lease.pid != old


# --------------------------------------------------------------------------- hangs


async def test_hung_server_is_detected_failed_and_restarted(marker: str) -> None:
    async with BackendPool(idle_grace=0, hang_timeout=1.5) as pool:
        client = RawClient(await pool.acquire(raw_server(marker)))
        await client.initialize()
        hung_pid = client.lease.pid
        assert text_of(await client.call("echo", text="alive")) == "alive"
        started = time.monotonic()
        with anyio.fail_after(10):
            response = await client.call("hang")
        assert "stopped answering" in response["error"]["message"]
        assert time.monotonic() - started < 1.5 + 3
        assert await wait_until_gone(hung_pid, timeout=5) == []
        assert text_of(await client.call("echo", text="respawned")) == "respawned"
        assert client.lease.pid != hung_pid
        await client.lease.release()


async def test_long_call_on_a_responsive_server_is_not_a_hang(marker: str) -> None:
    async with BackendPool(idle_grace=0, hang_timeout=1.0) as pool:
        async with await pool.acquire(sdk_server(marker)) as lease, open_session(lease) as session:
            assert tool_text(await session.call_tool("sleep", {"seconds": 2.5})) == "slept"
            assert pool.snapshot()[0].restarts == 0


# --------------------------------------------------------------------------- bad output from a server


async def test_bad_output_has_defined_outcomes_and_others_keep_working(marker: str) -> None:
    async with BackendPool(idle_grace=0) as pool:
        a = RawClient(await pool.acquire(raw_server(marker)))
        b = RawClient(await pool.acquire(raw_server(marker)))
        await a.initialize()
        await b.initialize()
        pid = a.lease.pid
        assert text_of(await a.call("garbage", text="after garbage")) == "after garbage"
        assert text_of(await a.call("bad_utf8", text="after bad utf8")) == "after bad utf8"
        assert text_of(await a.call("duplicate", text="once")) == "once"
        assert text_of(await b.call("echo", text="b")) == "b"  # the duplicate never reached b or a again
        assert not [m for m in a.inbox + b.inbox if "id" in m and "method" not in m]
        assert text_of(await a.call("unknown_id", text="ok")) == "ok"
        assert text_of(await a.call("notify_unknown", text="hello")) == "hello"
        custom = [m for m in a.inbox if m.get("method") == "notifications/x-custom"]
        assert custom and custom[0]["params"] == {"text": "hello"}, "unknown notifications pass through untouched"
        await anyio.sleep(0.1)
        queued = []
        with contextlib.suppress(anyio.WouldBlock):
            while True:
                queued.append(b.lease.receive.receive_nowait())
        b_custom = [m for m in queued if m.get("method") == "notifications/x-custom"]
        assert b_custom, "a notification nobody owns in particular goes to every session"
        # A server request whose id equals the client's request id: routed to the only session in flight.
        assert text_of(await a.call("server_request", text="ping-pong")) == "ping-pong"
        assert [m["method"] for m in a.inbox if m.get("method") == "x/custom"] == ["x/custom"]
        backend = a.lease.backend
        assert backend is not None and backend.stats.bad_lines >= 2 and backend.stats.dropped >= 2
        assert a.lease.pid == pid, "none of this restarts the server"
        await a.lease.release()
        await b.lease.release()


async def test_values_beyond_the_fast_json_codec_pass_through_intact(marker: str) -> None:
    """The mux decodes and re-encodes every message with orjson, falling back to json for what orjson refuses:
    integers beyond 64 bits and escaped lone surrogates reach the server and come back unchanged, and so do text
    that is not ASCII and line separators inside strings (a frame stays one line)."""
    values = [
        2**100 + 1,
        2**64,
        -(2**63) - 1,
        2**64 - 1,
        "\ud800 alone",
        "snow \u2603 and \U0001f600",
        "two\nlines\u2028and\u2029more",
        0.1,
    ]
    async with BackendPool(idle_grace=0) as pool:
        client = RawClient(await pool.acquire(raw_server(marker)))
        await client.initialize()
        for value in values:
            answer = await client.call("echo_value", value=value)
            assert answer["result"]["structuredContent"] == {"value": value}
            assert type(answer["result"]["structuredContent"]["value"]) is type(value)
            assert text_of(answer) == repr(value)  # what the server itself read
        await client.lease.release()


# eager_reads (the broker's mode): the same routing, run by the loop's readiness callback instead of the reader task.
EAGER = pytest.mark.parametrize("eager", [False, True], ids=["reader-task", "eager-reads"])


@EAGER
async def test_oversized_line_fails_the_backend_clearly_then_restarts(marker: str, eager: bool) -> None:
    async with BackendPool(idle_grace=0, max_line_bytes=1024 * 1024, eager_reads=eager) as pool:
        client = RawClient(await pool.acquire(raw_server(marker)))
        await client.initialize()
        pid = client.lease.pid
        with anyio.fail_after(20):
            response = await client.call("huge_line", mb=50)
        assert "longer than the limit of 1048576 bytes" in response["error"]["message"]
        assert await wait_until_gone(pid, timeout=5) == []
        assert text_of(await client.call("echo", text="fresh")) == "fresh"
        await client.lease.release()


async def test_server_closing_stdout_but_running_is_stopped(marker: str) -> None:
    async with BackendPool(idle_grace=0) as pool:
        client = RawClient(await pool.acquire(raw_server(marker)))
        await client.initialize()
        pid = client.lease.pid
        assert text_of(await client.call("close_stdout")) == "closing stdout"
        assert await wait_until_gone(pid, timeout=8) == [], "a server that closed stdout is stopped, not leaked"
        assert text_of(await client.call("echo", text="new one")) == "new one"
        await client.lease.release()


# --------------------------------------------------------------------------- bad input from the host


async def test_bad_host_input_is_a_clear_error_and_corrupts_nothing(marker: str) -> None:
    async with BackendPool(idle_grace=0) as pool:
        client = RawClient(await pool.acquire(sdk_server(marker)))
        await client.initialize()
        with pytest.raises(TypeError):
            await client.lease.send({"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": {"x": object()}})
        backend = client.lease.backend
        assert backend is not None and not backend.pending, "a failed send leaves nothing pending"
        assert text_of(await client.call("echo", text="still fine")) == "still fine"
        await client.lease.release()
        with pytest.raises(RuntimeError, match="released"):
            await client.lease.send({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    await pool.close()  # closing twice is harmless


# --------------------------------------------------------------------------- backpressure


@EAGER
async def test_slow_reader_is_disconnected_without_stalling_others(marker: str, eager: bool) -> None:
    async with BackendPool(idle_grace=0, queue_bytes=262_144, eager_reads=eager) as pool:
        slow = await pool.acquire(sdk_server(marker))
        fast = await pool.acquire(sdk_server(marker))
        await slow.send(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "slow", "version": "0"},
                },
            }
        )
        for n in range(1, 300):  # never read: ~330 kB of answers pile up in a queue of 256 kB
            await slow.send(
                {
                    "jsonrpc": "2.0",
                    "id": n,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": f"{n:01000d}"}},
                }
            )
        async with open_session(fast) as session:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for n in range(40):
                        tg.start_soon(session.call_tool, "echo", {"text": f"fast {n}"})
            assert tool_text(await session.call_tool("echo", {"text": "done"})) == "done"
        assert slow.broken is not None and "overflow" in slow.broken
        with pytest.raises(SessionOverflow):
            await slow.send({"jsonrpc": "2.0", "id": 100, "method": "ping"})
        assert 0 < slow.receive.queued_bytes <= 262_144
        drained = [message async for message in slow.receive]  # the queued answers, then the end
        assert 0 < sum(len(encode(message)) for message in drained) <= 262_144
        assert slow.receive.queued_bytes == 0
        await fast.release()


async def _until_broken(lease: Lease) -> None:
    with anyio.fail_after(20):
        for _ in range(2000):
            if lease.broken is not None:
                return
            await anyio.sleep(0.01)


async def test_a_lease_is_bounded_by_bytes_not_by_message_count(marker: str) -> None:
    """Eleven unread answers of 1 MB each: past the 8 MB default the session ends (it would have taken 1024 of them
    when the bound was a count: gigabytes). One message larger than the bound still reaches a session with nothing
    waiting; the next one does not."""
    big = "x" * 1_000_000
    async with BackendPool(idle_grace=0) as pool:
        reader = RawClient(await pool.acquire(sdk_server(marker)))
        await reader.initialize()
        with contextlib.suppress(SessionOverflow):  # the answers may end it before all eleven were sent
            for n in range(11):
                call = {"name": "echo", "arguments": {"text": big}}
                await reader.lease.send({"jsonrpc": "2.0", "id": 100 + n, "method": "tools/call", "params": call})
        await _until_broken(reader.lease)
        assert "overflow" in reader.lease.broken
        drained = [message async for message in reader.lease.receive]
        assert 0 < sum(len(encode(message)) for message in drained) <= SESSION_BUFFER_BYTES
        answers = [len(encode(message)) for message in drained if "result" in message]
        assert answers and len(answers) == SESSION_BUFFER_BYTES // answers[0]  # as many as fit in 8 MB, not one more
        await reader.lease.release()
    async with BackendPool(idle_grace=0, queue_bytes=100_000) as pool:
        single = RawClient(await pool.acquire(sdk_server(marker)))
        await single.initialize()
        answer = await single.call("echo", text="y" * 300_000)  # 3x the bound, nothing waiting: delivered
        assert len(text_of(answer)) == 300_000 and single.lease.broken is None
        for n in range(2):
            await single.lease.send(
                {
                    "jsonrpc": "2.0",
                    "id": 200 + n,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": big}},
                }
            )
        await _until_broken(single.lease)
        assert [message["id"] async for message in single.lease.receive] == [200]
        await single.lease.release()


# --------------------------------------------------------------------------- orphans


def test_host_killed_with_sigkill_leaves_no_server_or_grandchild(marker: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR.parent / "src"), str(TESTS_DIR)])}
    host = subprocess.Popen(
        [sys.executable, str(TESTS_DIR / "procs" / "pool_host.py"), marker],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "host.err", "wb"),
        env=env,
        start_new_session=True,
    )
    try:
        assert host.stdout is not None
        line = host.stdout.readline()
        assert line, (tmp_path / "host.err").read_text()
        pids = json.loads(line)
        assert is_running(pids["wrapper"]) and is_running(pids["grandchild"])
        os.kill(host.pid, signal.SIGKILL)
        host.wait(timeout=5)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and count_server_processes(marker):
            time.sleep(0.05)
        assert count_server_processes(marker) == [], "a server or grandchild outlived its SIGKILLed host"
    finally:
        if host.poll() is None:
            os.kill(host.pid, signal.SIGKILL)
            host.wait(timeout=5)
