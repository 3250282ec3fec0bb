"""The framework drop-ins (mcpshare.integrations) driven through each framework's own API against a real server.

No model is called: the OpenAI Agents SDK is driven through its MCPServer API (connect, list_tools, call_tool,
cleanup), FastMCP through its Client, PydanticAI through its TestModel. Processes are counted through the OS (the
``marker`` fixture), never through the pool's bookkeeping. The examples (tests/test_examples.py) run whole agent loops.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import pytest
from mcp import Client

from conftest import require_module
from helpers import count_server_processes, server_argv, wait_until_gone
from mcpshare import BackendPool, ServerStartError, SessionInUse, StdioServerConfig, lease_streams, pooled_transport

pytestmark = pytest.mark.timeout(90)

RUNS = 5


def _config(marker: str, *args: str, **fields: Any) -> StdioServerConfig:
    argv = server_argv(*args, marker=marker)
    return StdioServerConfig(name="test", command=argv[0], args=tuple(argv[1:]), **fields)


def _text(result: Any) -> str:
    return result.content[0].text


# ---------------------------------------------------------------------------------------------- the plain SDK


async def test_sdk_clients_on_pooled_transports_share_one_process(marker: str) -> None:
    config = _config(marker)
    with anyio.fail_after(60):
        async with BackendPool(idle_grace=0) as pool:
            pids: set[int] = set()

            async def one(i: int) -> None:
                async with Client(pooled_transport(pool, config)) as client:
                    assert _text(await client.call_tool("echo", {"text": f"sdk-{i}"})) == f"sdk-{i}"
                    pids.add(json.loads(_text(await client.call_tool("whoami", {})))["pid"])

            async with anyio.create_task_group() as tg:
                for i in range(RUNS):
                    tg.start_soon(one, i)
            assert len(pids) == 1
            assert [backend.leases for backend in pool.snapshot()] in ([], [0])  # every transport released its lease
            assert await wait_until_gone(*pids, timeout=10) == []


async def test_a_lease_carries_one_stream_pair_at_a_time(marker: str) -> None:
    with anyio.fail_after(30):
        async with BackendPool(idle_grace=0) as pool, await pool.acquire(_config(marker)) as lease:
            async with lease_streams(lease):
                with pytest.raises(SessionInUse):
                    async with lease_streams(lease):
                        pass
            async with lease_streams(lease):  # free again once the first pair is closed
                pass


# ---------------------------------------------------------------------------------------------- OpenAI Agents SDK


async def test_agents_servers_share_one_process_each_with_its_own_session(marker: str) -> None:
    require_module("agents", "openai-agents")
    from mcpshare.integrations.openai_agents import PooledMCPServerStdio

    argv = server_argv(marker=marker)
    params = {"command": argv[0], "args": argv[1:]}
    with anyio.fail_after(60):
        async with BackendPool(idle_grace=0) as pool:
            pids: set[int] = set()
            answers: dict[int, str] = {}
            tools: list[set[str]] = []
            connected: list[int] = []  # processes counted once all five are connected (asserted outside the tasks:
            all_connected = anyio.Event()  # a failing task would cancel the others mid-way through the SDK's own)

            async def one(i: int) -> None:
                async with PooledMCPServerStdio(params=params, pool=pool, name="test") as server:
                    connected.append(i)
                    if len(connected) == RUNS:
                        connected.append(len(count_server_processes(marker)))
                        all_connected.set()
                    await all_connected.wait()
                    tools.append({tool.name for tool in await server.list_tools()})
                    answers[i] = _text(await server.call_tool("echo", {"text": f"agent-{i}"}))
                    pids.add(json.loads(_text(await server.call_tool("whoami", {})))["pid"])

            async with anyio.create_task_group() as tg:
                for i in range(RUNS):
                    tg.start_soon(one, i)
            assert connected[-1] == 1, f"{connected[-1]} server processes for {RUNS} connected servers"
            assert len(pids) == 1
            assert answers == {i: f"agent-{i}" for i in range(RUNS)}
            assert all({"echo", "whoami"} <= names for names in tools)
            assert await wait_until_gone(*pids, timeout=10) == []  # cleanup released every lease: grace 0 stops it


async def test_agents_server_from_config_keys_on_env_values(marker: str) -> None:
    """Two runs whose ``env_vars`` read different tokens get different processes, each seeing its own token."""
    require_module("agents", "openai-agents")
    from mcpshare.integrations.openai_agents import PooledMCPServerStdio

    config = _config(marker, "--show-env=TOKEN", env_vars=("TOKEN",))
    seen = {}
    with anyio.fail_after(60):
        async with BackendPool(idle_grace=0) as pool:
            for token in ("alpha", "beta", "alpha"):
                server = PooledMCPServerStdio.from_config(config, pool=pool, environ={"TOKEN": token})
                async with server:
                    who = json.loads(_text(await server.call_tool("whoami", {})))
                    seen.setdefault(token, set()).add(who["env"]["TOKEN"])
                    assert server.name == "test"
    assert seen == {"alpha": {"alpha"}, "beta": {"beta"}}


async def test_agents_server_refuses_a_non_utf8_encoding_and_reports_start_failures(marker: str) -> None:
    require_module("agents", "openai-agents")
    from mcpshare.integrations.openai_agents import PooledMCPServerStdio

    async with BackendPool(idle_grace=0) as pool:
        with pytest.raises(ValueError, match="'latin': a pooled server speaks UTF-8, not encoding='latin-1'"):
            PooledMCPServerStdio(params={"command": "x", "encoding": "latin-1"}, pool=pool, name="latin")
        missing = PooledMCPServerStdio(params={"command": f"/nonexistent/{marker}"}, pool=pool, name="gone")
        with anyio.fail_after(30), pytest.raises(ServerStartError, match="MCP server 'gone'"):
            await missing.connect()


# ---------------------------------------------------------------------------------------------- FastMCP


async def test_fastmcp_clients_on_one_transport_share_one_process_with_their_own_progress(marker: str) -> None:
    require_module("fastmcp", "fastmcp")
    from fastmcp import Client as FastMCPClient

    from mcpshare.integrations.fastmcp import PooledStdioTransport

    argv = server_argv(marker=marker)
    with anyio.fail_after(60):
        async with BackendPool(idle_grace=0) as pool:
            transport = PooledStdioTransport(argv[0], argv[1:], pool=pool, name="test")
            progress: dict[int, list[tuple[float, str | None]]] = {}
            results: dict[int, str] = {}
            connected: list[int] = []
            all_connected = anyio.Event()

            async def one(i: int) -> None:
                async def on_progress(value: float, total: float | None, message: str | None) -> None:
                    progress[i].append((value, message))

                progress[i] = []
                async with FastMCPClient(transport, progress_handler=on_progress) as client:
                    connected.append(i)
                    if len(connected) == RUNS:
                        connected.append(len(count_server_processes(marker)))
                        all_connected.set()
                    await all_connected.wait()
                    results[i] = _text(await client.call_tool("progress", {"steps": 3 + i, "delay": 0.01}))

            async with anyio.create_task_group() as tg:
                for i in range(RUNS):
                    tg.start_soon(one, i)
            assert connected[-1] == 1, f"{connected[-1]} server processes for {RUNS} connected clients"
    assert results == dict.fromkeys(range(RUNS), "done")
    # Concurrent calls, one process: each client saw the progress of its own call only.
    assert progress == {i: [(n, f"step {n}") for n in range(1, 4 + i)] for i in range(RUNS)}
    assert count_server_processes(marker) == []


async def test_fastmcp_elicitation_reaches_the_client_that_asked(marker: str) -> None:
    require_module("fastmcp", "fastmcp")
    from fastmcp import Client as FastMCPClient

    from mcpshare.integrations.fastmcp import PooledStdioTransport

    with anyio.fail_after(60):
        async with BackendPool(idle_grace=0) as pool:
            transport = PooledStdioTransport.from_config(_config(marker), pool=pool)

            def answering(name: str) -> Any:
                async def handler(message: str, response_type: Any, params: Any, context: Any) -> dict[str, str]:
                    return {"answer": f"{name} to {message}"}

                return handler

            async with (
                FastMCPClient(transport, elicitation_handler=answering("alice")) as alice,
                FastMCPClient(transport, elicitation_handler=answering("bob")) as bob,
            ):
                assert _text(await bob.call_tool("ask", {"question": "q1"})) == "accept:bob to q1"
                assert _text(await alice.call_tool("ask", {"question": "q2"})) == "accept:alice to q2"
                assert len(count_server_processes(marker)) == 1


# ---------------------------------------------------------------------------------------------- PydanticAI


async def test_pydantic_ai_toolsets_on_pooled_transports_share_one_process(marker: str) -> None:
    require_module("pydantic_ai", "pydantic-ai")
    from pydantic_ai import Agent
    from pydantic_ai.mcp import MCPToolset
    from pydantic_ai.models.test import TestModel

    from mcpshare.integrations.fastmcp import PooledStdioTransport

    argv = server_argv(marker=marker)
    with anyio.fail_after(60):
        async with BackendPool(idle_grace=0) as pool:
            outputs: list[str] = []

            async def one() -> None:
                toolset = MCPToolset(PooledStdioTransport(argv[0], argv[1:], pool=pool, name="test"))
                agent = Agent(TestModel(call_tools=["add"]), toolsets=[toolset])  # TestModel: no model is called
                async with agent:
                    outputs.append((await agent.run("add")).output)
                    assert len(count_server_processes(marker)) == 1

            async with anyio.create_task_group() as tg:
                for _ in range(RUNS):
                    tg.start_soon(one)
    assert outputs == ['{"add":0}'] * RUNS  # TestModel calls add(a=0, b=0) and reports each tool's result
    assert count_server_processes(marker) == []


def test_integrations_import_their_framework_only() -> None:
    """Each drop-in module imports its own framework, not the others (an extra installs one framework)."""
    import subprocess

    for module, framework, extra, absent in [
        ("mcpshare.integrations.openai_agents", "agents", "openai-agents", {"fastmcp", "pydantic_ai"}),
        ("mcpshare.integrations.fastmcp", "fastmcp", "fastmcp", {"agents", "pydantic_ai"}),
    ]:
        require_module(framework, extra)
        code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
        assert not {name.split(".")[0] for name in done.stdout.split()} & absent, module
