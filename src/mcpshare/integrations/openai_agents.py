"""The OpenAI Agents SDK on shared processes: ``PooledMCPServerStdio``, a one-line swap for ``MCPServerStdio``.

``agents.mcp.MCPServerStdio`` starts its server when it connects and stops it on cleanup, so an app that connects one
per agent run (the usual shape: ``async with MCPServerStdio(...) as server: await Runner.run(agent, ...)``) runs as
many copies of the server as it has runs in flight. ``PooledMCPServerStdio`` takes the same arguments plus ``pool``;
connecting acquires a lease on the pool's one process for those parameters and cleanup releases it::

    async with BackendPool() as pool:  # once per process
        ...
        async with PooledMCPServerStdio(params={"command": "npx", "args": [...]}, pool=pool) as server:
            result = await Runner.run(Agent(name="a", mcp_servers=[server]), "...")

It is an ``MCPServerStdio``: tool filters, approvals, caching, retries and ``message_handler`` work as before, on a
session of its own (answers, progress and server requests reach this run only). What differs, as for every pooled
server: the process gets the pool's base environment plus ``env``, and that base is this whole process's environment
unless the pool is given another (``BackendPool(base_environ=mcp.client.stdio.get_default_environment())`` passes
what ``MCPServerStdio`` would); it outlives one run until the pool's idle grace ends; only UTF-8 is spoken (a line
that is not valid JSON in UTF-8 is logged and skipped).

Install with ``pip install 'mcpshare[openai-agents]'``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Self

from agents.mcp import MCPServerStdio, MCPServerStdioParams

from mcpshare.config import StdioServerConfig
from mcpshare.integrations._config import stdio_config
from mcpshare.pool import BackendPool
from mcpshare.session import pooled_transport

__all__ = ["PooledMCPServerStdio"]

_UTF8 = frozenset({"utf-8", "utf8", "utf_8"})


class PooledMCPServerStdio(MCPServerStdio):
    """``MCPServerStdio`` whose process is the pool's shared one for these ``params``.

    ``workspace`` is the directory the server is shared within (default: this process's cwd; ``params["cwd"]``,
    when given, is where it runs), ``environ`` the environment ``env_vars`` of a config are read from, ``sandbox``
    an opaque label that keeps processes of different sandbox policies apart (see :meth:`BackendPool.acquire`).
    """

    def __init__(
        self,
        params: MCPServerStdioParams,
        *args: Any,
        pool: BackendPool,
        workspace: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        sandbox: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, *args, **kwargs)
        encoding = params.get("encoding", "utf-8")
        label = kwargs.get("name") or params["command"]
        if encoding.lower() not in _UTF8:
            raise ValueError(f"MCP server {label!r}: a pooled server speaks UTF-8, not encoding={encoding!r}")
        self.server_config = stdio_config(
            name=kwargs.get("name"),
            command=params["command"],
            args=params.get("args", ()),
            env=params.get("env"),
            cwd=params.get("cwd"),
        )
        self.pool = pool
        self.workspace = workspace
        self.environ = environ
        self.sandbox = sandbox

    @classmethod
    def from_config(
        cls,
        config: StdioServerConfig,
        *,
        pool: BackendPool,
        workspace: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        sandbox: str | None = None,
        **kwargs: Any,
    ) -> Self:
        """The server of a loaded config entry (``load_config(path).servers["name"]``): its ``env_vars``, ``share``
        and startup timeout apply as written; ``kwargs`` are ``MCPServerStdio``'s own (``cache_tools_list``, ...)."""
        kwargs.setdefault("name", config.name)
        server = cls(
            {"command": config.command, "args": list(config.args)},
            pool=pool,
            workspace=workspace,
            environ=environ,
            sandbox=sandbox,
            **kwargs,
        )
        server.server_config = config
        return server

    def create_streams(self) -> AbstractAsyncContextManager[Any]:
        """A lease on the shared process instead of a new one (the SDK builds its session over these streams)."""
        return pooled_transport(
            self.pool, self.server_config, workspace=self.workspace, environ=self.environ, sandbox=self.sandbox
        )
