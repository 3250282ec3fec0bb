"""FastMCP's ``Client`` (and PydanticAI's ``MCPToolset``, built on it) on shared processes: ``PooledStdioTransport``.

A FastMCP ``StdioTransport`` owns one subprocess, so every transport an app builds (one per request, per user, per
PydanticAI toolset) is one more copy of the server. ``PooledStdioTransport`` takes the same ``command``/``args``/
``env``/``cwd`` plus ``pool``; each connection through it is a lease on the pool's one process for those parameters,
with a ``ClientSession`` of its own (FastMCP's session class, its callbacks: sampling, elicitation, progress and
logs reach this client only)::

    async with BackendPool() as pool:  # once per process
        transport = PooledStdioTransport("npx", ["-y", "@modelcontextprotocol/server-everything"], pool=pool)
        async with fastmcp.Client(transport) as client:
            await client.call_tool("echo", {"message": "hi"})
        toolset = pydantic_ai.mcp.MCPToolset(transport)  # PydanticAI: the same transport, or one per toolset

One transport may serve many clients at once (unlike a kept-alive ``StdioTransport``): each gets its own session.
As for every pooled server, the process gets the pool's base environment plus ``env`` (the base is this whole
process's environment unless the pool is given another: ``BackendPool(base_environ=mcp.client.stdio.
get_default_environment())`` passes what ``StdioTransport`` would), speaks the handshake era of the protocol (so
``legacy_only``: FastMCP skips its ``server/discover`` probe) and lives on for the pool's idle grace after its last
client leaves.

Install with ``pip install 'mcpshare[fastmcp]'`` (or ``'mcpshare[pydantic-ai]'``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Self

from fastmcp.client.transports import ClientTransport
from fastmcp.client.transports.base import SessionKwargs, TransportOptions
from mcp import ClientSession
from typing_extensions import Unpack

from mcpshare.config import StdioServerConfig
from mcpshare.integrations._config import stdio_config
from mcpshare.pool import BackendPool
from mcpshare.session import pooled_transport

__all__ = ["PooledStdioTransport"]


class PooledStdioTransport(ClientTransport):
    """A FastMCP client transport whose every connection is a lease on the pool's shared process.

    ``name`` labels logs and errors; ``workspace``, ``environ`` and ``sandbox`` are as for
    :meth:`BackendPool.acquire` (the server is shared within ``workspace``, default this process's cwd).
    """

    legacy_only = True  # pooled backends speak the 2025-11-25 handshake era (see the README's Limits)

    def __init__(
        self,
        command: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        *,
        pool: BackendPool,
        name: str | None = None,
        workspace: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        sandbox: str | None = None,
    ) -> None:
        self.config = stdio_config(name=name, command=command, args=args, env=env, cwd=cwd)
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
    ) -> Self:
        """The transport of a loaded config entry (``load_config(path).servers["name"]``), used as written."""
        transport = cls(config.command, pool=pool, workspace=workspace, environ=environ, sandbox=sandbox)
        transport.config = config
        return transport

    @contextlib.asynccontextmanager
    async def connect_session(
        self,
        *,
        transport_options: TransportOptions | None = None,
        **session_kwargs: Unpack[SessionKwargs],
    ) -> AsyncIterator[ClientSession]:
        """A new, not yet initialized session on a lease of its own (the client initializes it; the pool answers
        from the cached handshake, so the server sees nothing of it)."""
        options = transport_options or TransportOptions()
        async with pooled_transport(
            self.pool, self.config, workspace=self.workspace, environ=self.environ, sandbox=self.sandbox
        ) as (read_stream, write_stream):
            async with options.session_class(read_stream, write_stream, **session_kwargs) as session:
                yield session

    def __repr__(self) -> str:
        return f"<PooledStdioTransport {self.config.name}>"
