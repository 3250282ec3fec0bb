"""mcpshare: one process per stdio MCP server configuration, shared by every thread and agent.

The public API is importable from here (``from mcpshare import ThreadManager, load_config``). Its names are loaded on
first use (PEP 562): ``mcpshare connect``, the shim every MCP client starts once per server, imports this package on
its way to the standard-library-only :mod:`mcpshare.shim`, and must not pay for the SDK, anyio or pydantic. So this
module imports nothing itself; each name below is looked up in the module that defines it when it is first asked for.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (which imports re: ~10 ms for the shim)

__version__ = "0.1.0"

# name -> the module that defines it (one place to look; the tests check each one resolves to that module's object).
_EXPORTS: dict[str, str] = {
    # configuration
    "McpConfig": "mcpshare.config",
    "ServerConfig": "mcpshare.config",
    "StdioServerConfig": "mcpshare.config",
    "HttpServerConfig": "mcpshare.config",
    "load_config": "mcpshare.config",
    "load_codex_toml": "mcpshare.config",
    "load_mcp_json": "mcpshare.config",
    "merge": "mcpshare.config",
    "ConfigError": "mcpshare.config",
    # the pool and its sessions
    "BackendPool": "mcpshare.pool",
    "BackendInfo": "mcpshare.pool",
    "Lease": "mcpshare.pool",
    "PoolClosed": "mcpshare.pool",
    "LeaseReleased": "mcpshare.pool",
    "ServerDisabled": "mcpshare.pool",
    "ServerStartError": "mcpshare.pool",
    "SessionOverflow": "mcpshare.pool",
    "open_session": "mcpshare.session",
    "lease_streams": "mcpshare.session",
    "pooled_transport": "mcpshare.session",
    "SessionInUse": "mcpshare.session",
    # threads
    "ThreadManager": "mcpshare.threads",
    "Thread": "mcpshare.threads",
    "ThreadHandlers": "mcpshare.threads",
    "QualifiedTool": "mcpshare.threads",
    "Snapshot": "mcpshare.threads",
    "ThreadError": "mcpshare.threads",
    "ToolTimeoutError": "mcpshare.threads",
    "UnknownServerError": "mcpshare.threads",
    "UnknownToolError": "mcpshare.threads",
    "ServerConnectError": "mcpshare.threads",
}

# Spelled out for static tools (linters, IDEs); tests/test_api.py checks it lists exactly _EXPORTS.
__all__ = [
    "BackendInfo",
    "BackendPool",
    "ConfigError",
    "HttpServerConfig",
    "Lease",
    "LeaseReleased",
    "McpConfig",
    "PoolClosed",
    "QualifiedTool",
    "ServerConfig",
    "ServerConnectError",
    "ServerDisabled",
    "ServerStartError",
    "SessionInUse",
    "SessionOverflow",
    "Snapshot",
    "StdioServerConfig",
    "Thread",
    "ThreadError",
    "ThreadHandlers",
    "ThreadManager",
    "ToolTimeoutError",
    "UnknownServerError",
    "UnknownToolError",
    "__version__",
    "lease_streams",
    "load_codex_toml",
    "load_config",
    "load_mcp_json",
    "merge",
    "open_session",
    "pooled_transport",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ below does the importing
    from typing import Any

    from mcpshare.config import (
        ConfigError,
        HttpServerConfig,
        McpConfig,
        ServerConfig,
        StdioServerConfig,
        load_codex_toml,
        load_config,
        load_mcp_json,
        merge,
    )
    from mcpshare.pool import (
        BackendInfo,
        BackendPool,
        Lease,
        LeaseReleased,
        PoolClosed,
        ServerDisabled,
        ServerStartError,
        SessionOverflow,
    )
    from mcpshare.session import SessionInUse, lease_streams, open_session, pooled_transport
    from mcpshare.threads import (
        QualifiedTool,
        ServerConnectError,
        Snapshot,
        Thread,
        ThreadError,
        ThreadHandlers,
        ThreadManager,
        ToolTimeoutError,
        UnknownServerError,
        UnknownToolError,
    )


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first access, and keep the value here for the next one."""
    module = _EXPORTS.get(name)
    if module is None:
        # AttributeError (not ImportError) keeps `from mcpshare import shim` importing the submodule as usual.
        raise AttributeError(f"module 'mcpshare' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
