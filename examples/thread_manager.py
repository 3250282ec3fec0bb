"""Two conversations share one MCP server process: the ThreadManager API in 30 lines.

Run it from the repository root after `scripts/test` (or `npm ci --prefix tests/node`) has installed the pinned
reference servers: `.venv/bin/python examples/thread_manager.py`. Without them it falls back to `npx -y`.
The README quotes everything below this docstring and `from __future__` (tests/test_examples.py checks it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio

from mcpshare import McpConfig, StdioServerConfig, ThreadManager

LOCAL = Path(__file__).resolve().parent.parent / "tests/node/node_modules/@modelcontextprotocol/server-filesystem"
if (LOCAL / "dist/index.js").is_file():
    files = StdioServerConfig(name="files", command="node", args=(str(LOCAL / "dist/index.js"), "."))
else:
    files = StdioServerConfig(name="files", command="npx", args=("-y", "@modelcontextprotocol/server-filesystem", "."))


async def main(project: str) -> None:
    async with ThreadManager(McpConfig(servers={"files": files}), idle_grace=30) as manager:
        a = await manager.start_thread(cwd=project)
        b = await manager.start_thread(cwd=project)  # same workspace: same process
        print([tool.name for tool in await a.list_tools()][:3])  # mcp__files__create_directory, ...
        result = await b.call_tool("mcp__files__list_directory", {"path": project}, timeout=30)
        print(result.content[0].text)
        for backend in manager.snapshot().backends:  # one process, two leases
            print(backend.server, "pid", backend.pid, backend.state, "leases:", backend.leases)
        await manager.archive(a.id)  # b still holds the process
        await manager.archive(b.id)  # would stop after the 30 s grace; leaving the manager stops it now


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp).resolve()
        (project / "notes.txt").write_text("hello\n")
        anyio.run(main, str(project))
