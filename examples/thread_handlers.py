"""Per-thread handlers: what happens when a server asks something, reports progress or runs too long.

Run it from the repository root: `.venv/bin/python examples/thread_handlers.py` (the server is
tests/servers/testserver.py, an MCP SDK server with an `ask` tool that elicits, a `progress` tool and a `sleep` tool).
The README quotes everything below this docstring and `from __future__` (tests/test_examples.py checks it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import mcp_types as types

from mcpshare import McpConfig, StdioServerConfig, ThreadManager, ToolTimeoutError

SERVER = Path(__file__).resolve().parent.parent / "tests/servers/testserver.py"
config = McpConfig(servers={"test": StdioServerConfig(name="test", command=sys.executable, args=(str(SERVER),))})


async def ask_user(server: str, params: types.ElicitRequestParams) -> types.ElicitResult:
    print(f"{server} asks: {params.message}")
    return types.ElicitResult(action="accept", content={"answer": "yes"})


async def on_progress(server: str, tool: str, progress: float, total: float | None, message: str | None) -> None:
    print(f"{server}/{tool}: {progress:g}/{total:g} {message}")


async def main() -> None:
    async with ThreadManager(config) as manager:
        thread = await manager.start_thread(elicitation=ask_user, progress=on_progress)
        answer = await thread.call_tool("mcp__test__ask", {"question": "Proceed?"}, timeout=10)
        print(answer.content[0].text)  # accept:yes
        await thread.call_tool("mcp__test__progress", {"steps": 2}, timeout=10)
        try:
            await thread.call_tool("mcp__test__sleep", {"seconds": 30}, timeout=0.5)
        except ToolTimeoutError as exc:  # the server got notifications/cancelled for that call only
            print(exc)
        session = await thread.session("test")  # the thread's genuine mcp.ClientSession for that server
        print((await session.call_tool("echo", {"text": "direct"})).content[0].text)


if __name__ == "__main__":
    anyio.run(main)
