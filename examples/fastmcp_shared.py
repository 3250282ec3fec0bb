"""Ten concurrent FastMCP clients in one process, one MCP server process: ``PooledStdioTransport``.

Each loop opens its own ``fastmcp.Client``, as a web backend does per request, lists the server's tools and calls
``echo`` three times with its own text. With a ``StdioTransport`` per client that is ten server processes; with
``PooledStdioTransport`` (the one line that differs) it is one, counted with psutil among this process's children.
Every client holds its connection until all ten are connected, so they overlap for real.

Run it from the repository root (the server is tests/servers/testserver.py, an MCP SDK server; any stdio server
works the same way): ``.venv/bin/python examples/fastmcp_shared.py`` (``--unshared``: a ``StdioTransport`` per
client). Needs ``pip install 'mcpshare[fastmcp]'``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import psutil
from fastmcp import Client
from fastmcp.client.transports import ClientTransport, StdioTransport

from mcpshare import BackendPool
from mcpshare.integrations.fastmcp import PooledStdioTransport

SERVER = Path(__file__).resolve().parent.parent / "tests" / "servers" / "testserver.py"
RUNS = 10
CALLS = 3


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


async def main(shared: bool = True) -> dict[str, list[str]]:
    seen: set[int] = set()
    results: dict[str, list[str]] = {}
    connected = 0
    all_connected = anyio.Event()

    async def one_loop(i: int, pool: BackendPool) -> None:
        nonlocal connected
        transport: ClientTransport
        if shared:
            transport = PooledStdioTransport(sys.executable, [str(SERVER)], pool=pool, name="test")
        else:
            transport = StdioTransport(sys.executable, [str(SERVER)])
        async with Client(transport, init_timeout=60) as client:  # ten servers starting at once take a while
            connected += 1
            if connected == RUNS:
                seen.update(server_processes())  # every client holds its connection now
                all_connected.set()
            await all_connected.wait()
            assert "echo" in {tool.name for tool in await client.list_tools()}
            answers = []
            for n in range(CALLS):
                result = await client.call_tool("echo", {"text": f"run-{i} call-{n}"})
                answers.append(result.content[0].text)
            results[f"run-{i}"] = answers

    async with BackendPool(idle_grace=0) as pool:
        async with anyio.create_task_group() as tg:
            for i in range(RUNS):
                tg.start_soon(one_loop, i, pool)
    for asked, answered in sorted(results.items()):
        print(f"{asked}: echo answered {answered}")
    print(f"server processes: {len(seen)} for {RUNS} concurrent runs")
    return results


if __name__ == "__main__":
    anyio.run(main, "--unshared" not in sys.argv[1:])
