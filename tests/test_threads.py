"""ThreadManager with real servers: lifecycle, sharing, HTTP per thread, refresh, sandbox moves, routing, naming.

Processes are counted through the OS (psutil, by the test's marker in their argv), never through the pool's
bookkeeping; which process answered is asked of the process itself (the test server's ``whoami``), and what a
server saw (initialize, subscribe, cancel) is asked of the server (``stats``).

A note on concurrency in the routing tests: the owner of a server-to-client request on a shared process is named
by a link (the test server, a Python SDK one, hands back the traceparent the router stamps on each call), or is
the only thread with a call in flight there that could ask; tests/test_attribution.py pins the cases with no link.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types as types
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp.shared.exceptions import MCPError

from helpers import (
    HTTP_SERVER,
    TESTSERVER,
    count_server_processes,
    is_running,
    tool_json,
    tool_text,
    wait_for_processes,
    wait_until_gone,
)
from mcpshare.config import HttpServerConfig, McpConfig, ServerConfig, StdioServerConfig
from mcpshare.pool import BackendPool, ServerStartError
from mcpshare.session import open_session
from mcpshare.threads import (
    ServerConnectError,
    Thread,
    ThreadError,
    ThreadHandlers,
    ThreadManager,
    ToolTimeoutError,
    UnknownServerError,
    UnknownToolError,
)

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------------------------- helpers


def stdio(marker: str, name: str = "test", **overrides: Any) -> StdioServerConfig:
    """The SDK test server under ``name`` (also its serverInfo name, so each name is its own process)."""
    fields: dict[str, Any] = {
        "name": name,
        "command": sys.executable,
        "args": (str(TESTSERVER), f"--marker={marker}", f"--name={name}"),
    }
    fields.update(overrides)
    return StdioServerConfig(**fields)


def mcp_config(*servers: ServerConfig) -> McpConfig:
    return McpConfig(servers={server.name: server for server in servers}, sources=())


async def whoami(thread: Thread, server: str = "test") -> dict[str, Any]:
    """Ask the process itself which it is (pid, cwd): the OS-level truth about where a thread's calls go."""
    return tool_json(await thread.call_tool(f"mcp__{server}__whoami"))


async def stats(thread: Thread, server: str = "test") -> dict[str, Any]:
    return tool_json(await thread.call_tool(f"mcp__{server}__stats"))


@asynccontextmanager
async def http_server(marker: str) -> AsyncIterator[str]:
    """tests/servers/http_server.py on 127.0.0.1, port 0; yields its MCP URL; stopped by pid at the end."""
    argv = [sys.executable, str(HTTP_SERVER), "0", f"--marker={marker}", "--name=remote"]
    process = await anyio.open_process(argv, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        with anyio.fail_after(20):
            line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 100)
        assert line.startswith(b"PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/mcp"
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(ProcessLookupError):  # already gone (a test may kill it)
                process.terminate()
            with anyio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answer_as(name: str, log: list[tuple[str, str]]) -> Any:
    """An elicitation handler that answers with ``name`` and records (name, server) for every call."""

    async def elicit(server: str, params: types.ElicitRequestParams) -> types.ElicitResult:
        log.append((name, server))
        return types.ElicitResult(action="accept", content={"answer": name, "name": name})

    return elicit


def sample_as(name: str, log: list[tuple[str, str]]) -> Any:
    """A sampling handler whose 'model' answers with ``name``."""

    async def sample(server: str, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        log.append((name, server))
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"sampled by {name}"), model="test"
        )

    return sample


def progress_into(log: list[tuple[str, str, float]], name: str) -> Any:
    async def on_progress(server: str, tool: str, value: float, total: float | None, message: str | None) -> None:
        log.append((name, server, value))

    return on_progress


async def eventually(predicate: Any, *, timeout: float = 5.0) -> None:
    """Poll an async or sync predicate until it is true (for effects that arrive as notifications)."""
    with anyio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return
            await anyio.sleep(0.02)


# --------------------------------------------------------------------------------------------- lifecycle


async def test_two_loaded_threads_share_one_process(marker: str, tmp_workspace: Path) -> None:
    async with ThreadManager(mcp_config(stdio(marker)), idle_grace=0) as manager:
        a = await manager.start_thread(cwd=tmp_workspace)
        b = await manager.start_thread(cwd=tmp_workspace)
        (proc,) = await wait_for_processes(marker, 1)
        assert (await whoami(a))["pid"] == (await whoami(b))["pid"] == proc.pid
        snapshot = manager.snapshot()
        (backend,) = snapshot.backends
        assert (backend.server, backend.pid, backend.state, backend.leases) == ("test", proc.pid, "ready", 2)
        assert backend.restarts == 0 and backend.uptime > 0 and len(backend.key) == 10
        assert {t.id: t.servers["test"].pid for t in snapshot.threads} == {a.id: proc.pid, b.id: proc.pid}
        assert all(t.state == "loaded" and t.servers["test"].state == "connected" for t in snapshot.threads)
        json.dumps(snapshot.as_dict())  # plain data for the CLI and benchmarks
    assert count_server_processes(marker) == []


async def test_unsubscribe_or_archive_one_keeps_the_process_last_archive_stops_it_after_grace(
    marker: str, tmp_workspace: Path
) -> None:
    grace = 0.6
    async with ThreadManager(mcp_config(stdio(marker)), idle_grace=grace) as manager:
        a = await manager.start_thread(cwd=tmp_workspace)
        b = await manager.start_thread(cwd=tmp_workspace)
        (proc,) = await wait_for_processes(marker, 1)

        await manager.resume_thread(a.id)  # a second subscriber: one unsubscribe must not unload it
        await manager.unsubscribe(a.id)
        assert a.state == "loaded"
        await manager.unsubscribe(a.id)
        assert a.state == "unloaded"
        await anyio.sleep(grace + 0.4)
        assert [p.pid for p in count_server_processes(marker)] == [proc.pid], "b still uses it"

        await manager.resume_thread(a.id)
        assert (await whoami(a))["pid"] == proc.pid
        await manager.archive(a.id)
        assert a.state == "archived"
        with pytest.raises(ThreadError, match="archived"):
            await a.call_tool("mcp__test__echo", {"text": "x"})
        with pytest.raises(ThreadError, match="unarchive"):
            await manager.resume_thread(a.id)
        await anyio.sleep(grace + 0.4)
        assert [p.pid for p in count_server_processes(marker)] == [proc.pid], "b still uses it"

        await manager.archive(b.id)
        assert is_running(proc.pid), "stopped before the idle grace ran out"
        assert await wait_until_gone(proc.pid, timeout=grace + 5) == []
        assert count_server_processes(marker) == []


async def test_unarchive_spawns_nothing_and_resume_spawns_one_new_process(marker: str, tmp_workspace: Path) -> None:
    async with ThreadManager(mcp_config(stdio(marker)), idle_grace=0) as manager:
        a = await manager.start_thread(cwd=tmp_workspace)
        b = await manager.start_thread(cwd=tmp_workspace)
        (old,) = await wait_for_processes(marker, 1)
        await manager.archive(a.id)
        await manager.archive(b.id)
        await wait_for_processes(marker, 0)

        await manager.unarchive(a.id)
        await manager.unarchive(b.id)
        assert (a.state, b.state) == ("unloaded", "unloaded")
        await anyio.sleep(0.3)
        assert count_server_processes(marker) == []
        assert manager.snapshot().backends == []

        await manager.resume_thread(a.id)
        (new,) = await wait_for_processes(marker, 1)
        assert new.pid != old.pid
        assert (await whoami(a))["pid"] == new.pid
        await manager.resume_thread(b.id)
        assert [p.pid for p in await wait_for_processes(marker, 1)] == [new.pid]


async def test_lazy_threads_start_servers_on_first_use(marker: str, tmp_workspace: Path) -> None:
    async with ThreadManager(mcp_config(stdio(marker)), idle_grace=0, connect="lazy") as manager:
        thread = await manager.start_thread(cwd=tmp_workspace)
        await anyio.sleep(0.3)
        assert count_server_processes(marker) == []
        assert manager.snapshot().threads[0].servers["test"].state == "disconnected"
        assert tool_text(await thread.call_tool("mcp__test__echo", {"text": "lazy"})) == "lazy"
        await wait_for_processes(marker, 1)


async def test_closing_the_manager_fails_calls_in_flight_and_stops_everything(marker: str, tmp_workspace: Path) -> None:
    outcome: list[str] = []
    async with ThreadManager(mcp_config(stdio(marker)), idle_grace=60) as manager:
        thread = await manager.start_thread(cwd=tmp_workspace)
        (proc,) = await wait_for_processes(marker, 1)

        async def long_call() -> None:
            try:
                await thread.call_tool("mcp__test__sleep", {"seconds": 30})
                outcome.append("finished")
            except (MCPError, ThreadError) as exc:
                outcome.append(f"failed: {exc}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_call)
            await anyio.sleep(0.3)
            with anyio.fail_after(10):
                await manager.close()
        await manager.close()  # twice is harmless
        with pytest.raises(ThreadError):
            await manager.start_thread(cwd=tmp_workspace)
        with pytest.raises(ThreadError):
            await thread.call_tool("mcp__test__echo", {"text": "x"})
    assert len(outcome) == 1 and outcome[0].startswith("failed")
    assert await wait_until_gone(proc.pid, timeout=5) == []
    await manager.close()  # and after leaving the context too


async def test_an_error_in_the_managers_body_comes_out_unwrapped_and_nothing_leaks(
    marker: str, tmp_workspace: Path
) -> None:
    with pytest.raises(LookupError, match="the host's own error"):
        async with ThreadManager(mcp_config(stdio(marker)), idle_grace=60) as manager:
            await manager.start_thread(cwd=tmp_workspace)
            await wait_for_processes(marker, 1)
            raise LookupError("the host's own error")
    await wait_for_processes(marker, 0)


# --------------------------------------------------------------------------------------------- HTTP


async def test_http_servers_get_one_connection_per_thread_never_shared(marker: str, tmp_path: Path) -> None:
    elicited: list[tuple[str, str]] = []
    async with http_server(marker) as url:
        config = mcp_config(HttpServerConfig(name="remote", url=url), stdio(marker))
        async with ThreadManager(config, idle_grace=0) as manager:
            threads = [
                await manager.start_thread(cwd=tmp_path, elicitation=answer_as(f"t{n}", elicited)) for n in range(3)
            ]
            seen = await stats(threads[0], "remote")
            # One HTTP server process saw one initialize per thread: nothing pooled, nothing shared.
            assert seen["methods"]["initialize"] == 3
            assert manager.snapshot().http_connections == 3
            # Each thread's own connection carries its own elicitation to its own handler.
            for n, thread in enumerate(threads):
                text = tool_text(await thread.call_tool("mcp__remote__ask", {"question": "who?"}))
                assert text == f"accept:t{n}"
            assert elicited == [("t0", "remote"), ("t1", "remote"), ("t2", "remote")]
            # The stdio server next to it is still one shared process.
            assert len(count_server_processes(marker)) == 2  # the HTTP server + one stdio server

            # Moving a thread to another cwd reacquires its stdio half; its HTTP connection is not restarted.
            session_before = await threads[0].session("remote")
            pid_before = (await whoami(threads[0]))["pid"]
            assert await manager.set_sandbox(threads[0].id, cwd=tmp_path / "..") == {}
            assert await threads[0].session("remote") is session_before
            assert (await whoami(threads[0]))["pid"] != pid_before
            seen = await stats(threads[0], "remote")
            assert seen["methods"]["initialize"] == 3
            assert seen["methods"].get("notifications/roots/list_changed") == 1

            # Archiving a thread closes its HTTP connection (and only its own).
            await manager.archive(threads[2].id)
            assert manager.snapshot().http_connections == 2
            assert tool_text(await threads[1].call_tool("mcp__remote__echo", {"text": "still"})) == "still"


async def test_refresh_reconnects_only_changed_http_servers(marker: str, tmp_path: Path) -> None:
    async with http_server(marker) as url:
        one = HttpServerConfig(name="one", url=url)
        two = HttpServerConfig(name="two", url=url)
        async with ThreadManager(mcp_config(one, two), idle_grace=0) as manager:
            thread = await manager.start_thread(cwd=tmp_path)
            assert (await stats(thread, "one"))["methods"]["initialize"] == 2
            kept = await thread.session("one")
            changed = HttpServerConfig(name="two", url=url, http_headers={"X-Team": "blue"})
            assert await manager.refresh(mcp_config(one, changed)) == ["two"]
            assert await thread.session("one") is kept
            assert (await stats(thread, "two"))["methods"]["initialize"] == 3
            assert manager.snapshot().http_connections == 2


# --------------------------------------------------------------------------------------------- refresh, sandbox


async def test_refresh_replaces_only_the_changed_servers_process(marker: str, tmp_workspace: Path) -> None:
    alpha = stdio(marker, "alpha", env={"WHO": "alpha"})
    beta = stdio(marker, "beta", env={"WHO": "beta"})
    async with ThreadManager(mcp_config(alpha, beta), idle_grace=30) as manager:
        a = await manager.start_thread(cwd=tmp_workspace)
        b = await manager.start_thread(cwd=tmp_workspace)
        idle = await manager.start_thread(cwd=tmp_workspace)
        await manager.unsubscribe(idle.id)
        await wait_for_processes(marker, 2)
        alpha_pid, beta_pid = (await whoami(a, "alpha"))["pid"], (await whoami(a, "beta"))["pid"]

        changed = stdio(marker, "alpha", env={"WHO": "alpha-2"})
        assert await manager.refresh(mcp_config(changed, beta)) == ["alpha"]

        # No old process survives once no thread holds it, even with a 30 s idle grace.
        assert await wait_until_gone(alpha_pid, timeout=5) == []
        procs = await wait_for_processes(marker, 2)
        assert beta_pid in {p.pid for p in procs}
        for thread in (a, b):
            assert (await whoami(thread, "beta"))["pid"] == beta_pid
            new_alpha = (await whoami(thread, "alpha"))["pid"]
            assert new_alpha != alpha_pid and new_alpha in {p.pid for p in procs}
        await manager.resume_thread(idle.id)
        assert (await whoami(idle, "alpha"))["pid"] == new_alpha
        assert len(count_server_processes(marker)) == 2


async def test_refresh_removes_adds_and_retunes_servers(marker: str, tmp_workspace: Path) -> None:
    keep, drop = stdio(marker, "keep"), stdio(marker, "drop")
    async with ThreadManager(mcp_config(keep, drop), idle_grace=30) as manager:
        thread = await manager.start_thread(cwd=tmp_workspace)
        await wait_for_processes(marker, 2)
        keep_pid, drop_pid = (await whoami(thread, "keep"))["pid"], (await whoami(thread, "drop"))["pid"]

        # A new timeout and tool filter leave the pool key alone: same process, new behaviour.
        retuned = stdio(marker, "keep", tool_timeout_sec=5, disabled_tools=("add",))
        added = stdio(marker, "added")
        assert await manager.refresh(mcp_config(retuned, added)) == ["added", "drop", "keep"]
        assert await wait_until_gone(drop_pid, timeout=5) == [], "a removed server stops at once, not after grace"
        assert (await whoami(thread, "keep"))["pid"] == keep_pid
        names = {tool.name for tool in await thread.list_tools()}
        assert "mcp__keep__add" not in names and "mcp__keep__echo" in names
        assert "mcp__added__echo" in names and not any(n.startswith("mcp__drop__") for n in names)
        with pytest.raises(UnknownServerError, match="drop"):
            await thread.session("drop")
        assert len(await wait_for_processes(marker, 2)) == 2


async def test_refresh_where_one_server_fails_to_start_still_refreshes_the_others(
    marker: str, tmp_workspace: Path
) -> None:
    alpha, beta = stdio(marker, "alpha"), stdio(marker, "beta")
    async with ThreadManager(mcp_config(alpha, beta), idle_grace=0) as manager:
        thread = await manager.start_thread(cwd=tmp_workspace)
        alpha_pid, beta_pid = (await whoami(thread, "alpha"))["pid"], (await whoami(thread, "beta"))["pid"]
        broken = stdio(marker, "alpha", env={"TESTSERVER_EXIT_AT_START": "3"})
        beta2 = stdio(marker, "beta", env={"WHO": "beta-2"})
        assert await manager.refresh(mcp_config(broken, beta2)) == ["alpha", "beta"]
        new_beta = (await whoami(thread, "beta"))["pid"]
        assert new_beta != beta_pid
        assert await wait_until_gone(alpha_pid, beta_pid, timeout=5) == []
        assert isinstance(thread.errors["alpha"], ServerStartError) and "exit code 3" in str(thread.errors["alpha"])
        link = manager.snapshot().threads[0].servers["alpha"]
        assert link.state == "failed" and "alpha" in (link.error or "")
        # Fixing the config brings it back.
        assert await manager.refresh(mcp_config(alpha, beta2)) == ["alpha"]
        assert "alpha" not in thread.errors
        assert tool_text(await thread.call_tool("mcp__alpha__echo", {"text": "back"})) == "back"
        assert [p.pid for p in count_server_processes(marker) if p.pid == new_beta] == [new_beta]


async def test_pool_refresh_heals_a_lease_after_a_failed_refresh(marker: str, tmp_workspace: Path) -> None:
    good = stdio(marker, "alpha")
    broken = stdio(marker, "alpha", env={"TESTSERVER_EXIT_AT_START": "3"})
    async with BackendPool(idle_grace=0, backoff_base=0.01) as pool:
        lease = await pool.acquire(good, workspace=tmp_workspace)
        with pytest.raises(ServerStartError):
            await pool.refresh({"alpha": broken})
        await pool.refresh({"alpha": good})  # the fix
        async with open_session(lease) as session:
            assert tool_text(await session.call_tool("echo", {"text": "healed"})) == "healed"
        await lease.release()


async def test_set_sandbox_moves_a_workspace_server_and_the_old_backend_stops_once_unused(
    marker: str, tmp_path: Path
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    async with ThreadManager(mcp_config(stdio(marker, share="workspace")), idle_grace=0) as manager:
        a = await manager.start_thread(cwd=one)
        b = await manager.start_thread(cwd=one)
        (first,) = await wait_for_processes(marker, 1)
        session = await a.session("test")

        assert await manager.set_sandbox(a.id, cwd=two) == {}
        moved = await whoami(a)
        assert moved["cwd"] == str(two.resolve()) and moved["pid"] != first.pid
        assert await a.session("test") is session, "the thread keeps its session; the lease moved underneath"
        assert is_running(first.pid), "b still uses the old workspace's process"
        assert (await whoami(b))["pid"] == first.pid

        await manager.set_sandbox(b.id, cwd=two)
        assert await wait_until_gone(first.pid, timeout=5) == []
        assert (await whoami(b))["pid"] == moved["pid"]

        # A sandbox label is part of the key: a process started for one policy never serves another.
        await manager.set_sandbox(a.id, sandbox="read-only")
        assert a.sandbox == "read-only"
        labelled = (await whoami(a))["pid"]
        assert labelled not in (moved["pid"], first.pid)
        assert (await whoami(b))["pid"] == moved["pid"]
        await manager.set_sandbox(a.id, sandbox=None)
        assert (await whoami(a))["pid"] == moved["pid"]
        assert await wait_until_gone(labelled, timeout=5) == []
        info = {t.id: t for t in manager.snapshot().threads}
        assert info[a.id].cwd == str(two.resolve()) and info[a.id].sandbox is None


# --------------------------------------------------------------------------------------------- routing


async def test_requests_reach_the_calling_thread_while_other_threads_work(marker: str, tmp_workspace: Path) -> None:
    """Three threads, three servers; each round every thread drives a different server (elicit, sample,
    progress) while a fourth thread makes quiet requests to all of them."""
    servers = ("alpha", "beta", "gamma")
    elicited: list[tuple[str, str]] = []
    sampled: list[tuple[str, str]] = []
    progressed: list[tuple[str, str, float]] = []
    async with ThreadManager(mcp_config(*(stdio(marker, s) for s in servers)), idle_grace=0) as manager:
        threads = [
            await manager.start_thread(
                cwd=tmp_workspace,
                thread_id=f"t{n}",
                elicitation=answer_as(f"t{n}", elicited),
                sampling=sample_as(f"t{n}", sampled),
                progress=progress_into(progressed, f"t{n}"),
            )
            for n in range(3)
        ]
        quiet = await manager.start_thread(cwd=tmp_workspace, thread_id="quiet")
        await wait_for_processes(marker, 3)

        async def drive(thread: Thread, server: str, job: int) -> str:
            if job == 0:
                return tool_text(await thread.call_tool(f"mcp__{server}__ask", {"question": "who?"}))
            if job == 1:
                return tool_text(await thread.call_tool(f"mcp__{server}__sample", {"prompt": "hi"}))
            return tool_text(await thread.call_tool(f"mcp__{server}__progress", {"steps": 4, "delay": 0.02}))

        results: dict[tuple[int, str], str] = {}
        stop_quiet = anyio.Event()

        async def quiet_requests() -> None:
            while not stop_quiet.is_set():
                for server in servers:
                    session = await quiet.session(server)
                    await session.list_tools()
                    await session.list_prompts()
                await anyio.lowlevel.checkpoint()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as outer:
                outer.start_soon(quiet_requests)
                for rnd in range(3):
                    async with anyio.create_task_group() as tg:
                        for n, thread in enumerate(threads):
                            job = (n + rnd) % 3

                            async def run(thread: Thread = thread, job: int = job, rnd: int = rnd) -> None:
                                results[(rnd, thread.id)] = await drive(thread, servers[job], job)

                            tg.start_soon(run)
                stop_quiet.set()

        for rnd in range(3):
            for n, thread in enumerate(threads):
                job = (n + rnd) % 3
                expected = [f"accept:{thread.id}", f"sampled by {thread.id}", "done"][job]
                assert results[(rnd, thread.id)] == expected

        # Every handler call was for the thread's own call, on the server it was driving.
        def jobs(kind: int) -> list[tuple[str, str]]:
            return sorted(
                (threads[n].id, servers[(n + rnd) % 3]) for rnd in range(3) for n in range(3) if (n + rnd) % 3 == kind
            )

        assert sorted(elicited) == jobs(0)
        assert sorted(sampled) == jobs(1)
        expected_progress = sorted(
            (threads[n].id, servers[(n + rnd) % 3], float(step))
            for rnd in range(3)
            for n in range(3)
            if (n + rnd) % 3 == 2
            for step in range(1, 5)
        )
        assert sorted(progressed) == expected_progress


async def test_an_elicitation_while_another_thread_calls_reaches_the_asking_thread(
    marker: str, tmp_workspace: Path
) -> None:
    elicited: list[tuple[str, str]] = []
    progress_seen = anyio.Event()

    async def on_progress(server: str, tool: str, value: float, total: float | None, message: str | None) -> None:
        progress_seen.set()

    async with ThreadManager(mcp_config(stdio(marker)), idle_grace=0) as manager:
        busy = await manager.start_thread(cwd=tmp_workspace, elicitation=answer_as("busy", elicited))
        asker = await manager.start_thread(cwd=tmp_workspace, elicitation=answer_as("asker", elicited))
        results: dict[str, str] = {}

        async def busy_call() -> None:
            result = await busy.call_tool("mcp__test__progress", {"steps": 30, "delay": 0.05}, progress=on_progress)
            results["busy"] = tool_text(result)

        async def ask() -> None:
            await progress_seen.wait()  # the busy thread's call is provably running at the server
            try:
                result = await asker.call_tool("mcp__test__ask", {"question": "whose?"})
                results["asker"] = f"error: {tool_text(result)}" if result.is_error else tool_text(result)
            except MCPError as exc:
                results["asker"] = f"error: {exc}"

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(busy_call)
                tg.start_soon(ask)
    # Two calls in flight on one process: the elicitation names its call (traceparent), so it reaches the asker.
    assert elicited == [("asker", "test")], "the elicitation reaches the thread whose call asked, and only that one"
    assert results == {"busy": "done", "asker": "accept:asker"}


async def test_cancelled_and_timed_out_calls_are_cancelled_at_the_server_only(marker: str, tmp_workspace: Path) -> None:
    async with ThreadManager(mcp_config(stdio(marker)), idle_grace=0) as manager:
        a = await manager.start_thread(cwd=tmp_workspace)
        b = await manager.start_thread(cwd=tmp_workspace)
        outcome: dict[str, str] = {}

        async def times_out() -> None:
            with pytest.raises(ToolTimeoutError, match=r"mcp__test__sleep.*0\.4 s"):
                await a.call_tool("mcp__test__sleep", {"seconds": 30}, timeout=0.4)
            outcome["timeout"] = "raised"

        async def caller_gives_up() -> None:
            with anyio.move_on_after(0.4):
                await a.call_tool("mcp__test__sleep", {"seconds": 30})
                outcome["cancel"] = "finished"
            outcome.setdefault("cancel", "cancelled")

        async def other_thread() -> None:
            outcome["b"] = tool_text(await b.call_tool("mcp__test__sleep", {"seconds": 1.2}))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(times_out)
                tg.start_soon(caller_gives_up)
                tg.start_soon(other_thread)
        assert outcome == {"timeout": "raised", "cancel": "cancelled", "b": "slept"}
        await eventually(lambda: _cancelled(b, 2))
        assert tool_text(await a.call_tool("mcp__test__echo", {"text": "after"})) == "after"


async def _cancelled(thread: Thread, count: int) -> bool:
    return (await stats(thread))["cancelled"] == count


async def test_everything_server_routes_elicitation_sampling_and_progress_per_thread(
    everything_cmd: list[str], marker: str, tmp_workspace: Path
) -> None:
    everything = StdioServerConfig(name="everything", command=everything_cmd[0], args=tuple(everything_cmd[1:]))
    elicited: list[tuple[str, str]] = []
    sampled: list[tuple[str, str]] = []
    progressed: list[tuple[str, str, float]] = []
    config = mcp_config(everything, stdio(marker))
    async with ThreadManager(config, idle_grace=0) as manager:
        e1, e2, e3 = [
            await manager.start_thread(
                cwd=tmp_workspace,
                thread_id=name,
                elicitation=answer_as(name, elicited),
                sampling=sample_as(name, sampled),
                progress=progress_into(progressed, name),
            )
            for name in ("e1", "e2", "e3")
        ]
        # The pool declares sampling and elicitation, so the capability-gated tools exist (they are registered
        # after the handshake and announced with list_changed).
        gated = {"mcp__everything__trigger-elicitation-request", "mcp__everything__trigger-sampling-request"}

        async def listed() -> bool:
            return gated <= {tool.name for tool in await e1.list_tools()}

        await eventually(listed, timeout=10)

        results: dict[str, str] = {}

        async def call(thread: Thread, key: str, name: str, arguments: dict[str, Any]) -> None:
            results[key] = tool_text(await thread.call_tool(name, arguments))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:  # e1 elicits; e2 and e3 use the other server meanwhile
                tg.start_soon(call, e1, "elicit", "mcp__everything__trigger-elicitation-request", {})
                tg.start_soon(call, e2, "other", "mcp__test__sleep", {"seconds": 0.3})
                tg.start_soon(e3.list_tools)
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    call, e2, "sample", "mcp__everything__trigger-sampling-request", {"prompt": "hi", "maxTokens": 5}
                )
                tg.start_soon(call, e1, "other", "mcp__test__echo", {"text": "x"})
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    call,
                    e3,
                    "progress",
                    "mcp__everything__trigger-long-running-operation",
                    {"duration": 0.3, "steps": 3},
                )
                tg.start_soon(call, e1, "other", "mcp__test__sleep", {"seconds": 0.2})
        assert elicited == [("e1", "everything")] and "e1" in results["elicit"]
        assert sampled == [("e2", "everything")] and "sampled by e2" in results["sample"]
        assert progressed == [("e3", "everything", 1.0), ("e3", "everything", 2.0), ("e3", "everything", 3.0)]
        assert "completed" in results["progress"]
        # Roots asked by a shared server come from the key's workspace, whichever thread is asking.
        roots = tool_text(await e2.call_tool("mcp__everything__get-roots-list", {}))
        assert tmp_workspace.resolve().as_uri() in roots


async def test_shared_server_roots_come_from_the_workspace_not_the_thread(marker: str, tmp_workspace: Path) -> None:
    async def other_roots(server: str) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///elsewhere", name="elsewhere")])

    async with ThreadManager(mcp_config(stdio(marker)), idle_grace=0) as manager:
        thread = await manager.start_thread(cwd=tmp_workspace, roots=other_roots)
        roots = tool_json(await thread.call_tool("mcp__test__roots"))
        assert roots == [{"uri": tmp_workspace.resolve().as_uri(), "name": tmp_workspace.name}]


async def test_a_thread_without_handlers_declines_elicitation_and_refuses_sampling(
    marker: str, tmp_workspace: Path
) -> None:
    async with ThreadManager(mcp_config(stdio(marker)), idle_grace=0) as manager:
        thread = await manager.start_thread(cwd=tmp_workspace)
        assert tool_text(await thread.call_tool("mcp__test__ask", {"question": "anyone?"})) == "decline"
        try:
            result = await thread.call_tool("mcp__test__sample", {"prompt": "hi"})
            outcome = tool_text(result) if result.is_error else "answered"
        except MCPError as exc:
            outcome = str(exc)
        assert "no sampling handler" in outcome


async def test_each_thread_receives_logs_at_or_above_its_own_level(marker: str, tmp_workspace: Path) -> None:
    logs: dict[str, list[tuple[str, str]]] = {"fine": [], "coarse": []}

    def into(name: str) -> Any:
        async def on_log(server: str, params: types.LoggingMessageNotificationParams) -> None:
            logs[name].append((params.level, str(params.data)))

        return on_log

    async with ThreadManager(mcp_config(stdio(marker)), idle_grace=0) as manager:
        fine = await manager.start_thread(cwd=tmp_workspace, log_level="debug", logging=into("fine"))
        coarse = await manager.start_thread(cwd=tmp_workspace, log_level="error", logging=into("coarse"))
        # The server runs at the finest level any thread asked for...
        assert (await stats(fine))["log_level"] == "debug"
        for level in ("debug", "info", "error"):
            assert tool_text(await coarse.call_tool("mcp__test__log", {"level": level, "message": level})) == "logged"
        await eventually(lambda: len(logs["fine"]) == 3 and len(logs["coarse"]) == 1)
        # ...and each thread gets only what its own level admits, whoever caused the message.
        assert [level for level, _ in logs["fine"]] == ["debug", "info", "error"]
        assert logs["coarse"] == [("error", "error")]
        # Once the fine thread is gone, the server is told to log less.
        await manager.archive(fine.id)
        await eventually(lambda: _log_level(coarse, "error"))
        assert tool_text(await coarse.call_tool("mcp__test__log", {"level": "info", "message": "x"})) == "filtered"


async def test_a_thread_without_a_level_keeps_getting_info_when_another_asks_for_less(
    marker: str, tmp_workspace: Path
) -> None:
    received: list[str] = []

    async def on_log(server: str, params: types.LoggingMessageNotificationParams) -> None:
        received.append(str(params.data))

    async with ThreadManager(mcp_config(stdio(marker)), idle_grace=0) as manager:
        quiet = await manager.start_thread(cwd=tmp_workspace, logging=on_log)
        assert tool_text(await quiet.call_tool("mcp__test__log", {"level": "info", "message": "one"})) == "logged"
        await eventually(lambda: received == ["one"])
        await manager.start_thread(cwd=tmp_workspace, log_level="error")
        assert tool_text(await quiet.call_tool("mcp__test__log", {"level": "info", "message": "two"})) == "logged"
        await eventually(lambda: received == ["one", "two"], timeout=2)


async def _log_level(thread: Thread, level: str) -> bool:
    return (await stats(thread))["log_level"] == level


async def test_resource_subscriptions_are_refcounted_across_threads(marker: str, tmp_workspace: Path) -> None:
    updates: dict[str, list[str]] = {"a": [], "b": [], "c": []}

    def into(name: str) -> Any:
        async def on_notification(server: str, notification: types.ServerNotification) -> None:
            if isinstance(notification, types.ResourceUpdatedNotification):
                updates[name].append(str(notification.params.uri))

        return on_notification

    uri = "test://counter"
    async with ThreadManager(mcp_config(stdio(marker)), idle_grace=0) as manager:
        a, b, c = [
            await manager.start_thread(cwd=tmp_workspace, thread_id=name, notification=into(name))
            for name in ("a", "b", "c")
        ]
        await a.subscribe_resource("test", uri)
        await b.subscribe_resource("test", uri)
        seen = await stats(c)
        assert seen["subscribed"] == [uri] and seen["methods"]["resources/subscribe"] == 1

        await c.call_tool("mcp__test__bump")
        await eventually(lambda: updates["a"] == [uri] and updates["b"] == [uri])
        assert updates["c"] == [], "notifications/resources/updated reaches subscribers only"

        await a.unsubscribe_resource("test", uri)
        seen = await stats(c)
        assert seen["subscribed"] == [uri] and "resources/unsubscribe" not in seen["methods"]
        await c.call_tool("mcp__test__bump")
        await eventually(lambda: len(updates["b"]) == 2)
        assert updates["a"] == [uri] and updates["c"] == []

        await manager.archive(b.id)  # leaving drops the thread's subscriptions: it was the last subscriber
        await eventually(lambda: _subscribed(c, []))
        assert (await stats(c))["methods"]["resources/unsubscribe"] == 1

        # The other resource, prompt and completion requests pass through.
        assert (await c.read_resource("test", uri)).contents[0].text == "2"  # type: ignore[union-attr]
        templates = await c.list_resource_templates("test")
        assert [t.uri_template for t in templates.resource_templates] == ["test://item/{id}"]
        assert [r.uri for r in (await c.list_resources("test")).resources] == [uri]
        assert [p.name for p in (await c.list_prompts("test")).prompts] == ["greet"]
        prompt = await c.get_prompt("test", "greet", {"name": "Ada"})
        assert "Hello, Ada!" in prompt.messages[0].content.text  # type: ignore[union-attr]
        ref = types.ResourceTemplateReference(type="ref/resource", uri="test://item/{id}")
        completion = await c.complete("test", ref, {"name": "id", "value": "4"})
        assert completion.completion.values == ["42"]


async def _subscribed(thread: Thread, uris: list[str]) -> bool:
    return (await stats(thread))["subscribed"] == uris


# --------------------------------------------------------------------------------------------- naming, errors


async def test_tool_names_filters_and_clashes(marker: str, tmp_workspace: Path) -> None:
    long_name = "an-extraordinarily-long-server-name-that-will-not-fit-64"
    base = stdio(marker)
    servers = [
        # The same command under three names is one pool key: one process serves all three.
        StdioServerConfig(name="my.server", command=base.command, args=base.args, enabled_tools=("echo", "add")),
        StdioServerConfig(name="my_server", command=base.command, args=base.args, disabled_tools=("crash",)),
        StdioServerConfig(name=long_name, command=base.command, args=base.args, enabled_tools=("whoami",)),
    ]
    async with ThreadManager(mcp_config(*servers), idle_grace=0) as manager:
        thread = await manager.start_thread(cwd=tmp_workspace)
        tools = {tool.name: tool for tool in await thread.list_tools()}
        assert len(count_server_processes(marker)) == 1
        assert all(len(name) <= 64 and set(name) <= set(_SAFE) for name in tools)
        dotted = [t for t in tools.values() if t.server == "my.server"]
        assert sorted(t.tool.name for t in dotted) == ["add", "echo"]  # enabled_tools
        underscored = {t.tool.name for t in tools.values() if t.server == "my_server"}
        assert "crash" not in underscored and "echo" in underscored  # disabled_tools
        # "my.server" and "my_server" sanitize alike: their common tools get hash suffixes, the rest stay plain.
        echo_names = sorted(name for name, t in tools.items() if t.tool.name == "echo")
        assert len(echo_names) == 2 and all(name.startswith("mcp__my_server__echo_") for name in echo_names)
        assert "mcp__my_server__whoami" in tools
        (long_tool,) = [t for t in tools.values() if t.server == long_name]
        assert len(long_tool.name) == 64 and long_tool.name.startswith("mcp__an-extraordinarily")
        assert long_tool.as_tool().name == long_tool.name

        for name in echo_names:
            assert tool_text(await thread.call_tool(name, {"text": tools[name].server})) == tools[name].server
        assert tool_json(await thread.call_tool(long_tool.name))["name"] == "test"

        with pytest.raises(
            UnknownToolError, match=r"'mcp__my_server__ehco'.*did you mean mcp__my_server__echo_"
        ) as info:
            await thread.call_tool("mcp__my_server__ehco", {"text": "x"})
        assert info.value.name == "mcp__my_server__ehco" and info.value.suggestions
        with pytest.raises(UnknownToolError, match="filtered out by enabled_tools/disabled_tools"):
            await thread.call_tool("mcp__my_server__crash")
        with pytest.raises(UnknownServerError, match=r"no enabled MCP server named 'nope'"):
            await thread.session("nope")
        with pytest.raises(TypeError, match=r"mcp__my_server__whoami.*not JSON-serialisable"):
            await thread.call_tool("mcp__my_server__whoami", {"when": object()})
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            await thread.call_tool("mcp__my_server__whoami", {"x": float("nan")})


_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


async def test_a_server_that_fails_for_a_thread_leaves_its_other_servers_working(
    marker: str, tmp_workspace: Path
) -> None:
    config = mcp_config(
        stdio(marker),
        StdioServerConfig(name="ghost", command="/nonexistent/mcp-server-ghost"),
        HttpServerConfig(name="down", url=f"http://127.0.0.1:{unused_port()}/mcp", startup_timeout_sec=5),
        HttpServerConfig(name="secret", url="http://127.0.0.1:9/mcp", bearer_token_env_var="MCPSHARE_TEST_NO_TOKEN"),
    )
    async with ThreadManager(config, idle_grace=0, environ={"PATH": "/usr/bin:/bin"}) as manager:
        with anyio.fail_after(20):
            thread = await manager.start_thread(cwd=tmp_workspace)
        assert set(thread.errors) == {"ghost", "down", "secret"}
        assert isinstance(thread.errors["ghost"], ServerStartError)
        assert "mcp-server-ghost" in str(thread.errors["ghost"])
        assert isinstance(thread.errors["down"], ServerConnectError) and "'down'" in str(thread.errors["down"])
        assert "MCPSHARE_TEST_NO_TOKEN" in str(thread.errors["secret"])

        links = manager.snapshot().threads[0].servers
        assert links["test"].state == "connected" and links["test"].pid is not None
        assert links["ghost"].state == "failed" and "ghost" in (links["ghost"].error or "")
        assert (links["down"].transport, links["down"].state) == ("http", "failed")

        assert tool_text(await thread.call_tool("mcp__test__echo", {"text": "fine"})) == "fine"
        assert {tool.server for tool in await thread.list_tools()} == {"test"}
        with pytest.raises(UnknownToolError, match=r"unavailable servers: down: .*ghost: "):
            await thread.call_tool("mcp__ghost__anything")
        with pytest.raises(ServerStartError):
            await thread.session("ghost")
        with pytest.raises(TypeError, match="not both"):
            await manager.start_thread(handlers=ThreadHandlers(), log_level="debug")
