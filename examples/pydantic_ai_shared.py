"""Ten concurrent PydanticAI agent runs in one process, one MCP server process: ``MCPToolset`` on a pooled transport.

PydanticAI's ``MCPToolset`` is built on FastMCP's ``Client``, so it takes ``PooledStdioTransport`` as it is. Each run
builds its own toolset, as an app does when a toolset carries per-user handlers, and ``agent.run`` lists the
server's tools and calls ``echo`` with the run's own text. With a ``StdioTransport`` per toolset that is ten server
processes; with ``PooledStdioTransport`` (the one line that differs) it is one, counted with psutil among this
process's children. No model is called: PydanticAI's ``FunctionModel`` asks for the tool, then answers with what it
returned, and holds every run at its first turn until all ten toolsets are connected, so they overlap for real.

Run it from the repository root (the server is tests/servers/testserver.py, an MCP SDK server; any stdio server
works the same way): ``.venv/bin/python examples/pydantic_ai_shared.py`` (``--unshared``: a ``StdioTransport`` per
toolset). Needs ``pip install 'mcpshare[pydantic-ai]'``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import psutil
from fastmcp.client.transports import ClientTransport, StdioTransport
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from mcpshare import BackendPool
from mcpshare.integrations.fastmcp import PooledStdioTransport

SERVER = Path(__file__).resolve().parent.parent / "tests" / "servers" / "testserver.py"
RUNS = 10


def server_processes() -> set[int]:
    """Pids of this process's descendants that run the MCP server (the pool's guardian is not one)."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if str(SERVER) in child.cmdline():
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def echo_model(all_connected: anyio.Event) -> FunctionModel:
    """Turn 1: call ``echo`` with the user's prompt; turn 2: answer with what the tool returned."""

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        parts = [part for message in messages if isinstance(message, ModelRequest) for part in message.parts]
        returned = [part for part in parts if isinstance(part, ToolReturnPart)]
        if not returned:
            await all_connected.wait()
            assert "echo" in {tool.name for tool in info.function_tools}
            prompt = next(part.content for part in parts if part.part_kind == "user-prompt")
            return ModelResponse(parts=[ToolCallPart("echo", {"text": prompt})])
        content = returned[-1].content
        return ModelResponse(parts=[TextPart(content if isinstance(content, str) else str(content))])

    return FunctionModel(respond)


async def main(shared: bool = True) -> dict[str, str]:
    seen: set[int] = set()
    results: dict[str, str] = {}
    connected = 0
    all_connected = anyio.Event()

    async def one_run(i: int, pool: BackendPool) -> None:
        nonlocal connected
        transport: ClientTransport
        if shared:
            transport = PooledStdioTransport(sys.executable, [str(SERVER)], pool=pool, name="test")
        else:
            transport = StdioTransport(sys.executable, [str(SERVER)])
        toolset = MCPToolset(transport, init_timeout=60)  # ten servers starting at once take a while (--unshared)
        agent = Agent(echo_model(all_connected), toolsets=[toolset])
        async with agent:  # connects the toolset for the whole run, as a long-lived agent would
            connected += 1
            if connected == RUNS:
                seen.update(server_processes())  # every run holds its server now
                all_connected.set()
            result = await agent.run(f"run-{i}")
            results[f"run-{i}"] = result.output

    async with BackendPool(idle_grace=0) as pool:
        async with anyio.create_task_group() as tg:
            for i in range(RUNS):
                tg.start_soon(one_run, i, pool)
    for asked, answered in sorted(results.items()):
        print(f"{asked}: echo answered {answered!r}")
    print(f"server processes: {len(seen)} for {RUNS} concurrent runs")
    return results


if __name__ == "__main__":
    anyio.run(main, "--unshared" not in sys.argv[1:])
