"""One HTTP client process of the http section's throughput runs: an MCP SDK streamable HTTP client, on command.

``python http_worker.py URL`` (bearer token, if any, in ``MCPBENCH_HTTP_TOKEN``; the tool call as JSON in
``MCPBENCH_HTTP_CALL``, ``{"name": ..., "arguments": ...}``) opens one initialized session, prints ``ready``, then
for each line ``N`` on stdin makes N sequential calls and prints the seconds they took; it exits at EOF. The section
starts 8 of them per front and sends each round's ``N`` to all 8 at once, so the calls of all 8 processes overlap.
A call that fails prints ``error ...`` and ends the worker: the figures would be meaningless.
"""

from __future__ import annotations

import json
import os
import sys
import time

import anyio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url: str) -> int:
    token = os.environ.get("MCPBENCH_HTTP_TOKEN")
    call = json.loads(os.environ["MCPBENCH_HTTP_CALL"])
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    stdin = anyio.wrap_file(sys.stdin)
    async with (
        create_mcp_http_client(headers=headers) as client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        print("ready", flush=True)
        async for line in stdin:
            count = int(line)
            started = time.perf_counter()
            for _ in range(count):
                result = await session.call_tool(call["name"], call["arguments"])
                if result.is_error:
                    print(f"error {result.content!r:.200}", flush=True)
                    return 1
            print(time.perf_counter() - started, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1]))
