"""An agent host to be SIGKILLed by a test: a ThreadManager with one shared server behind an npx-style wrapper.

It starts two threads on the server, makes the server spawn a grandchild, prints
``{"wrapper": pid, "grandchild": pid}`` as one JSON line and sleeps until it is killed. SIGKILL runs no cleanup
code, so whatever is gone afterwards was removed by the pool's guardian (and PR_SET_PDEATHSIG).

argv: <marker>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio

from mcpshare.config import McpConfig, StdioServerConfig
from mcpshare.threads import ThreadManager

SERVERS = Path(__file__).resolve().parent.parent / "servers"


async def main(marker: str) -> None:
    server = StdioServerConfig(
        name="wrapped",
        command=sys.executable,
        args=(str(SERVERS / "npx_wrapper.py"), sys.executable, str(SERVERS / "testserver.py"), f"--marker={marker}"),
    )
    async with ThreadManager(McpConfig(servers={"wrapped": server}, sources=()), idle_grace=60) as manager:
        first = await manager.start_thread()
        await manager.start_thread()
        result = await first.call_tool("mcp__wrapped__spawn_child", {})
        grandchild = result.structured_content["result"] if result.structured_content else None
        (backend,) = manager.snapshot().backends
        print(json.dumps({"wrapper": backend.pid, "grandchild": grandchild}), flush=True)
        await anyio.sleep(3600)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
