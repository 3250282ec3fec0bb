"""Fixtures shared by the whole suite. Plain helpers (paths such as TESTSERVER and NODE_MODULES, process
counting, clients) are in helpers.py: test modules ``from helpers import ...``.

pytest runs with ``-p anyio`` and ``anyio_mode = "auto"`` (pyproject.toml), so ``async def`` tests need no
marker; ``anyio_backend`` pins them to asyncio, the loop the SDK and the broker run on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# pytest's default import mode already puts tests/ on sys.path (tests/ has no __init__.py); inserting it
# here keeps `from helpers import ...` working under --import-mode=importlib or if tests/ becomes a package.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import NODE_ENTRIES, TESTSERVER, new_marker, reap_marked


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio only (trio is not a supported runtime for mcpshare)."""
    return "asyncio"


@pytest.fixture
def testserver() -> Path:
    """Path of tests/servers/testserver.py (run it with sys.executable; see helpers.testserver_argv)."""
    return TESTSERVER


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique process marker for this test; every process still carrying it is SIGKILLed at teardown.

    Put it in a server's argv as ``--marker=<marker>`` (testserver.py ignores it) and count processes with
    ``helpers.count_server_processes(marker)``. The teardown reap runs even when the test fails, so a broken
    test cannot leak servers into the rest of the run.
    """
    value = new_marker()
    yield value
    reap_marked(value)


@pytest.fixture
def tmp_workspace(tmp_path: Path) -> Path:
    """A fresh project directory (with a README.md and src/hello.txt) to use as a server's cwd or root."""
    workspace = tmp_path / "workspace"
    (workspace / "src").mkdir(parents=True)
    (workspace / "README.md").write_text("# test workspace\n")
    (workspace / "src" / "hello.txt").write_text("hello from the workspace\n")
    return workspace


def require_node_entry(package: str) -> Path:
    """The entry script of a pinned Node package, or skip the test (fail under CI) when not installed.

    ``package`` is a key of helpers.NODE_ENTRIES. Install with ``npm ci --prefix tests/node`` (scripts/test
    does it). Under CI (env CI set) a missing install is a broken set-up, not a reason to skip.
    """
    entry = NODE_ENTRIES[package]
    if entry.is_file():
        return entry
    message = f"{entry} is missing: run `npm ci --prefix tests/node` (or scripts/test) to install the Node servers"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_module(module: str, extra: str) -> Any:
    """Import ``module`` (a framework of an optional extra), or skip the test (fail under CI) when not installed.

    scripts/setup installs the framework extras by default (MCPSHARE_EXTRAS); under CI a missing one is a broken
    set-up, not a reason to skip, so the framework tests cannot go quiet.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} is not installed ({exc}): pip install -e '.[{extra}]' (scripts/setup does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def everything_cmd() -> list[str]:
    """argv running @modelcontextprotocol/server-everything over stdio: ``node <dist/index.js> stdio``."""
    return ["node", str(require_node_entry("server-everything")), "stdio"]


@pytest.fixture
def memory_cmd() -> list[str]:
    """argv running @modelcontextprotocol/server-memory over stdio.

    Give the process ``MEMORY_FILE_PATH=<tmp file>`` in its env: the default is a file inside node_modules.
    """
    return ["node", str(require_node_entry("server-memory"))]


@pytest.fixture
def filesystem_cmd(tmp_workspace: Path) -> list[str]:
    """argv running @modelcontextprotocol/server-filesystem over stdio, allowed to access ``tmp_workspace``.

    If the client declares the roots capability the server replaces this directory with the client's roots.
    """
    return ["node", str(require_node_entry("server-filesystem")), str(tmp_workspace)]


@pytest.fixture
def inspector_cli_cmd() -> list[str]:
    """argv prefix for the MCP Inspector CLI: append the server argv (or URL) and ``--method ...``."""
    return ["node", str(require_node_entry("inspector")), "--cli"]


@pytest.fixture
def broker_env() -> Iterator[Any]:
    """A private runtime dir and HOME for a broker and its shims (test_broker.BrokerEnv), cleaned up by pid."""
    from test_broker import BrokerEnv

    env = BrokerEnv.create()
    try:
        yield env
    finally:
        env.cleanup()
