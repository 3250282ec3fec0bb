"""The servers the benchmark runs: three pinned npm servers and the SDK test server.

Each :class:`ServerSpec` can be turned into the two configurations compared everywhere: a
:class:`~mcpshare.config.StdioServerConfig` for the pool, and :class:`~mcp.StdioServerParameters` for the SDK's
``stdio_client`` (one process per thread, what hosts do today). Both get the same argv and extra environment.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp import StdioServerParameters

from mcpbench.procs import Classifier
from mcpshare.config import StdioServerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO_ROOT / "tests" / "node" / "node_modules"
TESTSERVER = REPO_ROOT / "tests" / "servers" / "testserver.py"

NODE_ENTRIES: dict[str, Path] = {
    "everything": NODE_MODULES / "@modelcontextprotocol/server-everything/dist/index.js",
    "memory": NODE_MODULES / "@modelcontextprotocol/server-memory/dist/index.js",
    "filesystem": NODE_MODULES / "@modelcontextprotocol/server-filesystem/dist/index.js",
}
NODE_SERVERS = ("everything", "memory", "filesystem")
"""The three pinned npm servers; with mcp-server-time (PyPI) installed they make the M real servers."""


def time_server_installed() -> bool:
    """mcp-server-time comes with the bench extra; without it the benchmark runs the three npm servers only."""
    return importlib.util.find_spec("mcp_server_time") is not None


def real_servers() -> tuple[str, ...]:
    """The real servers of the process, attach, storm and broker sections: 3 npm servers (+ mcp-server-time)."""
    return (*NODE_SERVERS, "time") if time_server_installed() else NODE_SERVERS


class SetupError(RuntimeError):
    """Something the benchmark needs is missing (node, the npm install); the message says how to fix it."""


@dataclass(frozen=True)
class ServerSpec:
    """One server: how to start it, how to recognise its processes, and which echo tool to call."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    match: str = ""
    """A substring of the command line of this server's processes (the entry script)."""
    echo_tool: str = "echo"
    echo_args: Mapping[str, Any] = field(default_factory=dict)

    def stdio_config(self, extra_env: Mapping[str, str], **fields: Any) -> StdioServerConfig:
        """The pool's config of this server (shared per workspace, the default scope); ``fields`` set other
        StdioServerConfig fields (``lanes``, ``share``, ...) for sections that compare them."""
        return StdioServerConfig(
            name=self.name,
            command=self.argv[0],
            args=self.argv[1:],
            env={**self.env, **extra_env},
            startup_timeout_sec=60.0,
            **fields,
        )

    def parameters(self, extra_env: Mapping[str, str], cwd: Path | None = None) -> StdioServerParameters:
        """The SDK stdio_client parameters of this server (the SDK adds HOME, PATH, ... to ``env``)."""
        return StdioServerParameters(
            command=self.argv[0], args=list(self.argv[1:]), env={**self.env, **extra_env}, cwd=cwd
        )


def build_servers(workspace: Path, memory_file: Path) -> dict[str, ServerSpec]:
    """The specs of every server, checking that node and the pinned npm packages are installed.

    ``workspace`` is the directory server-filesystem may access (and the threads' cwd, hence the pool's roots);
    ``memory_file`` is server-memory's ``MEMORY_FILE_PATH`` (its default lies inside node_modules).
    """
    node = shutil.which("node")
    if node is None:
        raise SetupError("node is not on PATH: the benchmark runs the pinned npm servers (Node >= 20)")
    missing = [str(path) for path in NODE_ENTRIES.values() if not path.is_file()]
    if missing:
        raise SetupError(
            f"{missing[0]} is missing: run `npm ci --prefix tests/node --no-audit --no-fund` (or scripts/setup)"
        )
    return {
        "everything": ServerSpec(
            "everything",
            (node, str(NODE_ENTRIES["everything"]), "stdio"),
            match="server-everything",
            echo_args={"message": "hello"},
        ),
        "memory": ServerSpec(
            "memory",
            (node, str(NODE_ENTRIES["memory"])),
            env={"MEMORY_FILE_PATH": str(memory_file)},
            match="server-memory",
        ),
        "filesystem": ServerSpec(
            "filesystem",
            (node, str(NODE_ENTRIES["filesystem"]), str(workspace)),
            match="server-filesystem",
        ),
        "time": ServerSpec(
            "time",
            (sys.executable, "-m", "mcp_server_time"),
            match="mcp_server_time",
            echo_tool="get_current_time",
            echo_args={"timezone": "UTC"},
        ),
        "testserver": ServerSpec(
            "testserver",
            (sys.executable, str(TESTSERVER)),
            match="testserver.py",
            echo_args={"text": "hello"},
        ),
    }


def classifier(specs: Mapping[str, ServerSpec]) -> Classifier:
    """A function naming what a command line runs: a server of ``specs``, or mcpshare's shim, broker or guardian."""

    def classify(cmdline: list[str]) -> str:
        text = " ".join(cmdline)
        if "mcpshare connect" in text:
            return "shim"  # before the servers: a shim's command line embeds its server's command
        if "mcpshare serve" in text:
            return "broker"
        for spec in specs.values():
            if spec.match and spec.match in text:
                return spec.name
        if "_guardian" in text:
            return "guardian"
        return "other"

    return classify
