"""Ten concurrent OpenAI Agents SDK runs in one process, one MCP server process: ``PooledMCPServerStdio``.

Each run connects its own ``agents.mcp`` server, as an app serving many users does, and ``Runner.run`` lists the
server's tools and calls ``echo`` with the run's own text. With ``MCPServerStdio`` that is ten server processes;
with ``PooledMCPServerStdio`` (the one line that differs) it is one, counted with psutil among this process's
children. No model is called: ``EchoModel`` is an Agents SDK ``Model`` that asks for the tool, then answers with
what the tool returned, and holds every run at its first turn until all ten are connected, so they overlap for real.

Run it from the repository root (the server is tests/servers/testserver.py, an MCP SDK server; any stdio server
works the same way): ``.venv/bin/python examples/openai_agents_shared.py`` (``--unshared``: the same runs on
``MCPServerStdio``). Needs ``pip install 'mcpshare[openai-agents]'``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import psutil
from agents import Agent, ModelResponse, Runner, Usage, set_tracing_disabled
from agents.mcp import MCPServerStdio, MCPServerStdioParams
from agents.models.interface import Model
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from mcpshare import BackendPool
from mcpshare.integrations.openai_agents import PooledMCPServerStdio

SERVER = Path(__file__).resolve().parent.parent / "tests" / "servers" / "testserver.py"
PARAMS: MCPServerStdioParams = {"command": sys.executable, "args": [str(SERVER)]}
# 60 s per request: ten servers starting at once (--unshared) may take longer than the SDK's default 5 s.
OPTIONS: dict[str, Any] = {"cache_tools_list": True, "client_session_timeout_seconds": 60}
RUNS = 10


class EchoModel(Model):
    """A scripted model: turn 1 calls ``echo`` with the user's text, turn 2 answers with the tool's output."""

    def __init__(self, all_connected: anyio.Event) -> None:
        self.all_connected = all_connected

    async def get_response(self, system_instructions: str | None, input: Any, *args: Any, **kwargs: Any) -> Any:
        items = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        outputs = [item["output"] for item in items if item.get("type") == "function_call_output"]
        if not outputs:
            await self.all_connected.wait()
            text = next(item["content"] for item in items if item.get("role") == "user")
            call = ResponseFunctionToolCall(
                type="function_call", call_id="call_1", name="echo", arguments=json.dumps({"text": text})
            )
            return ModelResponse(output=[call], usage=Usage(), response_id=None)
        answer = text_of(outputs[-1])
        message = ResponseOutputMessage(
            id="msg_1",
            type="message",
            role="assistant",
            status="completed",
            content=[ResponseOutputText(type="output_text", text=answer, annotations=[])],
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("this example runs Runner.run, not Runner.run_streamed")
        yield


def text_of(output: Any) -> str:
    """The text of a tool output as the SDK hands it back to the model (a string, or input_text items)."""
    if isinstance(output, str):
        return output
    items = output if isinstance(output, list) else [output]
    return "".join(item.get("text", "") for item in items)


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


async def main(shared: bool = True) -> dict[str, str]:
    set_tracing_disabled(True)  # no model, no tracing export: nothing leaves this machine
    seen: set[int] = set()
    results: dict[str, str] = {}
    connected = 0
    all_connected = anyio.Event()

    async def one_run(i: int, pool: BackendPool) -> None:
        nonlocal connected
        if shared:
            server = PooledMCPServerStdio(params=PARAMS, pool=pool, name="test", **OPTIONS)
        else:
            server = MCPServerStdio(params=PARAMS, name="test", **OPTIONS)
        async with server:
            connected += 1
            if connected == RUNS:
                seen.update(server_processes())  # every run holds its server now
                all_connected.set()
            agent = Agent(name=f"agent-{i}", mcp_servers=[server], model=EchoModel(all_connected))
            result = await Runner.run(agent, f"run-{i}")
            results[f"run-{i}"] = result.final_output

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
