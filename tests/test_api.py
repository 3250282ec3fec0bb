"""The public API: every name importable from ``mcpshare`` itself, loaded lazily so the shim's import stays cheap."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import mcpshare
from test_shim import HEAVY

pytestmark = pytest.mark.timeout(60)


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    script = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    return set(done.stdout.split())


def test_the_issue_names_import_from_the_package() -> None:
    from mcpshare import (  # noqa: F401 - importing them is the test
        BackendPool,
        ConfigError,
        HttpServerConfig,
        LeaseReleased,
        McpConfig,
        PoolClosed,
        ServerDisabled,
        ServerStartError,
        SessionOverflow,
        StdioServerConfig,
        Thread,
        ThreadError,
        ThreadManager,
        ToolTimeoutError,
        UnknownServerError,
        UnknownToolError,
        load_config,
        open_session,
    )

    for error in (ConfigError, ServerStartError, ServerDisabled, ToolTimeoutError, UnknownServerError):
        assert issubclass(error, Exception)
    assert issubclass(ToolTimeoutError, TimeoutError) and issubclass(UnknownToolError, KeyError)


def test_every_public_name_is_the_defining_modules_object() -> None:
    exports = mcpshare._EXPORTS
    assert set(mcpshare.__all__) == {"__version__", *exports}
    for name, module in exports.items():
        assert getattr(mcpshare, name) is getattr(importlib.import_module(module), name), name
    assert set(mcpshare.__all__) <= set(dir(mcpshare))


def test_session_overflow_is_one_class_wherever_it_is_raised() -> None:
    """The mux (closed channel) and the pool (lease) raise the same class, so one ``except`` catches both."""
    from mcpshare import mux, pool

    assert mcpshare.SessionOverflow is pool.SessionOverflow is mux.SessionOverflow


def test_unknown_names_fail_like_any_module_attribute() -> None:
    with pytest.raises(AttributeError, match="module 'mcpshare' has no attribute 'ThreadManger'"):
        _ = mcpshare.ThreadManger  # type: ignore[attr-defined]
    with pytest.raises(ImportError, match="ThreadManger"):
        exec("from mcpshare import ThreadManger")


def test_import_mcpshare_loads_no_sdk_anyio_or_typing() -> None:
    """``mcpshare connect`` imports the package first: the package itself must cost the shim nothing heavy."""
    modules = _modules_after("import mcpshare\nassert mcpshare.__version__")
    assert {name.split(".")[0] for name in modules} & HEAVY == set()
    assert {name for name in modules if name.startswith("mcpshare")} == {"mcpshare"}
    assert not {"typing", "re", "importlib.metadata"} & modules  # typing alone imports re (~10 ms)


def test_a_name_loads_only_the_module_that_defines_it() -> None:
    modules = _modules_after("import mcpshare\nmcpshare.load_config")
    assert "mcpshare.config" in modules
    assert not {"mcpshare.pool", "mcpshare.threads", "anyio", "mcp"} & modules


def test_submodules_still_import_through_the_package() -> None:
    modules = _modules_after("from mcpshare import shim, runtime")
    assert {name for name in modules if name.startswith("mcpshare")} == {
        "mcpshare",
        "mcpshare.shim",
        "mcpshare.runtime",
        "mcpshare.connect_line",
        "mcpshare.switches",
    }


def test_the_integrations_package_imports_no_framework() -> None:
    modules = _modules_after("import mcpshare.integrations")
    assert not {name.split(".")[0] for name in modules} & {"agents", "fastmcp", "pydantic_ai", "google", "anyio"}
