"""BackendPool with real server processes: sharing, single flight, idle stop, start failures, refresh.

Processes are counted through the OS (psutil, by a marker in their argv), never through the pool's bookkeeping.
"""

from __future__ import annotations

import sys
import time

import anyio
import pytest

from helpers import (
    NPX_WRAPPER,
    TESTSERVER,
    count_server_processes,
    is_running,
    tool_json,
    tool_text,
    wait_for_processes,
    wait_until_gone,
)
from mcpshare.config import StdioServerConfig
from mcpshare.pool import BackendPool, LeaseReleased, PoolClosed, ServerStartError
from mcpshare.session import open_session

pytestmark = pytest.mark.timeout(90)


def stdio_config(marker: str, **overrides: object) -> StdioServerConfig:
    fields: dict[str, object] = {
        "name": "test",
        "command": sys.executable,
        "args": (str(TESTSERVER), f"--marker={marker}"),
    }
    fields.update(overrides)
    return StdioServerConfig(**fields)  # type: ignore[arg-type]


async def test_fifty_sessions_one_config_share_one_process(marker: str, tmp_workspace: object) -> None:
    config = stdio_config(marker)
    async with BackendPool(idle_grace=0) as pool:
        leases = [await pool.acquire(config, workspace=tmp_workspace) for _ in range(50)]
        procs = await wait_for_processes(marker, 1)
        pids = {lease.pid for lease in leases}
        assert pids == {procs[0].pid}
        async with open_session(leases[0]) as session:
            who = tool_json(await session.call_tool("whoami", {}))
        assert who["pid"] == procs[0].pid
        for lease in leases:
            await lease.release()
        await wait_for_processes(marker, 0, timeout=5)


async def test_different_env_value_never_shares(marker: str, tmp_workspace: object) -> None:
    alice = stdio_config(marker, env={"API_TOKEN": "alice-secret"})
    bob = stdio_config(marker, env={"API_TOKEN": "bob-secret"})
    alice_again = stdio_config(marker, name="renamed", env={"API_TOKEN": "alice-secret"})
    async with BackendPool(idle_grace=0) as pool:
        a = await pool.acquire(alice, workspace=tmp_workspace)
        b = await pool.acquire(bob, workspace=tmp_workspace)
        a2 = await pool.acquire(alice_again, workspace=tmp_workspace)
        assert len(await wait_for_processes(marker, 2)) == 2
        assert a.pid == a2.pid != b.pid
        assert "alice-secret" not in repr(a.key) and "alice-secret" not in str(pool.snapshot())
        for lease in (a, b, a2):
            await lease.release()


async def test_share_thread_gives_each_lease_its_own_process(marker: str, tmp_workspace: object) -> None:
    config = stdio_config(marker, share="thread")
    async with BackendPool(idle_grace=0) as pool:
        leases = [await pool.acquire(config, workspace=tmp_workspace) for _ in range(3)]
        assert len(await wait_for_processes(marker, 3)) == 3
        assert len({lease.pid for lease in leases}) == 3
        for lease in leases:
            await lease.release()
        await wait_for_processes(marker, 0)


async def test_workspace_scope_splits_by_cwd_global_does_not(marker: str, tmp_path: object) -> None:
    from pathlib import Path

    one, two = Path(str(tmp_path)) / "one", Path(str(tmp_path)) / "two"
    one.mkdir()
    two.mkdir()
    async with BackendPool(idle_grace=0) as pool:
        w1 = await pool.acquire(stdio_config(marker), workspace=one)
        w2 = await pool.acquire(stdio_config(marker), workspace=two)
        assert w1.pid != w2.pid
        async with open_session(w2) as session:
            assert tool_json(await session.call_tool("whoami", {}))["cwd"] == str(two.resolve())
        g1 = await pool.acquire(stdio_config(marker, share="global"), workspace=one)
        g2 = await pool.acquire(stdio_config(marker, share="global"), workspace=two)
        assert g1.pid == g2.pid
        assert len(count_server_processes(marker)) == 3
        for lease in (w1, w2, g1, g2):
            await lease.release()


async def test_fifty_sessions_twenty_concurrent_calls_each_get_their_own_answers(marker: str) -> None:
    config = stdio_config(marker, share="global")
    mismatches: list[str] = []
    completed = 0
    async with BackendPool(idle_grace=0) as pool:

        async def thread(n: int) -> None:
            nonlocal completed
            async with await pool.acquire(config) as lease, open_session(lease) as session:

                async def call(m: int) -> None:
                    nonlocal completed
                    payload = f"session-{n}-call-{m}"
                    text = tool_text(await session.call_tool("echo", {"text": payload}))
                    if text != payload:
                        mismatches.append(f"{payload} got {text}")
                    completed += 1

                async with anyio.create_task_group() as tg:
                    for m in range(20):
                        tg.start_soon(call, m)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n in range(50):
                    tg.start_soon(thread, n)
        assert len(count_server_processes(marker)) == 1
    assert mismatches == []
    assert completed == 50 * 20


async def test_cold_start_storm_spawns_exactly_once(marker: str) -> None:
    config = stdio_config(marker, env={"TESTSERVER_STARTUP_DELAY": "0.5"}, share="global")
    async with BackendPool(idle_grace=0) as pool:
        leases = []

        async def acquire() -> None:
            leases.append(await pool.acquire(config))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(acquire)
        procs = count_server_processes(marker)
        assert len(procs) == 1
        assert {lease.pid for lease in leases} == {procs[0].pid}
        # The server itself saw one handshake however many leases attached.
        async with open_session(leases[0]) as session:
            seen = tool_json(await session.call_tool("stats", {}))["methods"]
        assert seen.get("initialize") == 1
        for lease in leases:
            await lease.release()


async def test_session_initialize_costs_the_server_nothing(marker: str) -> None:
    config = stdio_config(marker, share="global")
    async with BackendPool(idle_grace=0) as pool:
        leases = [await pool.acquire(config) for _ in range(5)]
        for lease in leases[1:]:
            async with open_session(lease) as session:
                assert session.initialize_result is not None
                await session.list_tools()
        async with open_session(leases[0]) as session:
            await session.list_tools()
            seen = tool_json(await session.call_tool("stats", {}))["methods"]
        assert seen.get("initialize") == 1
        assert seen.get("tools/list", 0) <= 1  # answered from the cache after the first
        for lease in leases:
            await lease.release()


async def test_last_release_stops_process_and_grandchildren_after_grace(marker: str) -> None:
    config = StdioServerConfig(
        name="wrapped",
        command=sys.executable,
        args=(str(NPX_WRAPPER), sys.executable, str(TESTSERVER), f"--marker={marker}"),
        share="global",
    )
    grace = 1.0
    async with BackendPool(idle_grace=grace) as pool:
        lease = await pool.acquire(config)
        async with open_session(lease) as session:
            grandchild = tool_json(await session.call_tool("spawn_child", {"inherit_stdio": True}))
        procs = count_server_processes(marker)
        # the npx-style wrapper, the real server under it, and the server's own child
        assert {p.pid for p in procs} >= {lease.pid, grandchild} and len(procs) == 3
        wrapper_pid = lease.pid
        await lease.release()
        released = time.monotonic()
        await anyio.sleep(grace / 2)
        assert len(count_server_processes(marker)) == 3, "stopped before the idle grace ran out"
        pids = [p.pid for p in procs]
        assert await wait_until_gone(*pids, timeout=released + grace + 3 - time.monotonic()) == []
        assert count_server_processes(marker) == []
        assert not is_running(grandchild) and not is_running(wrapper_pid)


async def test_reacquire_within_grace_reuses_process(marker: str) -> None:
    config = stdio_config(marker, share="global")
    async with BackendPool(idle_grace=5) as pool:
        first = await pool.acquire(config)
        pid = first.pid
        await first.release()
        second = await pool.acquire(config)
        assert second.pid == pid
        await second.release()
    assert count_server_processes(marker) == []


async def test_release_twice_and_acquire_after_close_are_clear_errors(marker: str) -> None:
    config = stdio_config(marker, share="global")
    async with BackendPool(idle_grace=0) as pool:
        lease = await pool.acquire(config)
        await lease.release()
        with pytest.raises(LeaseReleased, match="already released"):
            await lease.release()
    with pytest.raises(PoolClosed):
        await pool.acquire(config)
    assert count_server_processes(marker) == []


async def test_missing_binary_is_a_clear_error_and_others_keep_working(marker: str) -> None:
    missing = StdioServerConfig(name="ghost", command="/nonexistent/mcp-server-ghost")
    good = stdio_config(marker, share="global")
    async with BackendPool(idle_grace=0) as pool:
        with pytest.raises(ServerStartError) as info:
            await pool.acquire(missing)
        assert "ghost" in str(info.value) and "mcp-server-ghost" in str(info.value)
        async with await pool.acquire(good) as lease, open_session(lease) as session:
            assert tool_text(await session.call_tool("echo", {"text": "still here"})) == "still here"


async def test_server_exiting_at_once_reports_code_and_stderr_to_every_waiter(marker: str) -> None:
    config = stdio_config(marker, env={"TESTSERVER_EXIT_AT_START": "3"}, share="global")
    async with BackendPool(idle_grace=0) as pool:
        errors: list[BaseException] = []

        async def acquire() -> None:
            try:
                await pool.acquire(config)
            except ServerStartError as exc:
                errors.append(exc)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(acquire)
        assert len(errors) == 5
        assert len({id(e) for e in errors}) == 1, "one start, one error shared by every waiter"
        error = errors[0]
        assert isinstance(error, ServerStartError)
        assert error.returncode == 3
        assert "test" in str(error) and "exit code 3" in str(error)
        assert error.stderr_tail, "the stderr tail is part of the error"
        # Not cached forever: the next acquire tries again (and fails again, freshly).
        with pytest.raises(ServerStartError) as again:
            await pool.acquire(config)
        assert again.value is not error
        assert pool.spawns == 2
    assert count_server_processes(marker) == []


async def test_server_that_never_answers_the_handshake_times_out(marker: str) -> None:
    hung = stdio_config(marker, env={"TESTSERVER_NO_HANDSHAKE": "1"}, startup_timeout_sec=1.5, share="global")
    good = stdio_config(
        marker, name="good", share="global", args=(str(TESTSERVER), f"--marker={marker}", "--name=good")
    )
    async with BackendPool(idle_grace=0) as pool:
        started = time.monotonic()
        with pytest.raises(ServerStartError, match=r"handshake within 1\.5 s"):
            await pool.acquire(hung)
        assert time.monotonic() - started < 1.5 + 5
        async with await pool.acquire(good) as lease, open_session(lease) as session:
            assert tool_text(await session.call_tool("echo", {"text": "ok"})) == "ok"
    assert count_server_processes(marker) == []


async def test_refresh_replaces_only_changed_backend_and_moves_leases(marker: str) -> None:
    alpha = stdio_config(marker, name="alpha", share="global", env={"WHO": "alpha"})
    beta = stdio_config(marker, name="beta", share="global", env={"WHO": "beta"})
    async with BackendPool(idle_grace=30) as pool:
        a = await pool.acquire(alpha)
        b = await pool.acquire(beta)
        alpha_pid, beta_pid = a.pid, b.pid
        changed = stdio_config(marker, name="alpha", share="global", env={"WHO": "alpha-2"})
        replaced = await pool.refresh({"alpha": changed, "beta": beta})
        assert replaced == ["alpha"]
        assert b.pid == beta_pid
        assert a.pid != alpha_pid
        # No duplicate left: the old alpha stops at once, even though the idle grace is 30 s.
        assert await wait_until_gone(alpha_pid, timeout=5) == []
        assert len(count_server_processes(marker)) == 2
        async with open_session(a) as session:
            assert tool_json(await session.call_tool("whoami", {}))["pid"] == a.pid
        await a.release()
        await b.release()


async def test_close_stops_everything(marker: str) -> None:
    async with BackendPool(idle_grace=60) as pool:
        for n in range(3):
            await pool.acquire(stdio_config(marker, name=f"s{n}", env={"N": str(n)}, share="global"))
        assert len(count_server_processes(marker)) == 3
    assert count_server_processes(marker) == []
