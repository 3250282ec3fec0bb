"""The ``mcpshare`` command line: serve, status, restart, stop, the wrap/unwrap wiring, demo and the dispatcher.

Control commands run in-process (``cli.main``) against a real broker started as a child process; everything runs in
a private runtime directory (see test_broker.BrokerEnv).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from helpers import sdk_session, server_argv, tool_json
from mcpshare import cli, runtime
from test_broker import BrokerEnv, control, marked_servers, wait_for_servers

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def broker_env(broker_env: BrokerEnv, monkeypatch: pytest.MonkeyPatch) -> BrokerEnv:
    """conftest's private runtime dir, also set in this process's environment for the in-process CLI calls."""
    monkeypatch.setenv(runtime.ENV_RUNTIME_DIR, str(broker_env.runtime))
    return broker_env


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``mcpshare ARGS...`` in-process: (exit status, stdout, stderr)."""
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_control_commands_without_a_broker(broker_env: BrokerEnv, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "status")
    assert code == 1 and "no mcpshare broker is running" in err
    code, out, _ = run_cli(capsys, "status", "--json")
    assert code == 1 and json.loads(out) == {"running": False, "socket": broker_env.paths.socket}
    assert run_cli(capsys, "stop")[:2] == (0, f"no mcpshare broker is running (socket: {broker_env.paths.socket})\n")
    code, _, err = run_cli(capsys, "restart", "x")
    assert code == 1 and "no mcpshare broker is running" in err


async def test_serve_status_restart_stop(
    broker_env: BrokerEnv, marker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An explicit broker serving a config file; a shim client; status, restart (the client carries on on a new
    process), stop (the broker, its server and its socket are gone)."""
    server = server_argv(marker=marker)
    config = broker_env.root / "servers.json"
    config.write_text(json.dumps({"mcpServers": {"test": {"command": server[0], "args": server[1:]}}}))
    broker = broker_env.start_broker("--config", str(config), "--idle-grace", "5")
    await broker_env.wait_ready()
    with anyio.fail_after(40), (broker_env.root / "shim.stderr").open("w") as shim_stderr:
        async with sdk_session(broker_env.shim("test"), env=broker_env.env, errlog=shim_stderr) as session:
            first = tool_json(await session.call_tool("whoami", {}))["pid"]

            code, out, _ = run_cli(capsys, "status")
            assert code == 0
            assert "test" in out and str(first) in out and "ready" in out and f"pid {broker.pid}" in out
            code, out, _ = run_cli(capsys, "status", "--json")
            status = json.loads(out)
            assert status["broker"]["configs"] == [str(config)] and status["connections"] == 1
            row = status["servers"][0]
            assert (row["server"], row["pid"], row["clients"], row["state"]) == ("test", first, 1, "ready")
            assert row["rss"] > 0 and len(row["key"]) == 10

            code, out, _ = run_cli(capsys, "restart", "test")
            assert (code, out) == (0, "restarted 'test': stopped 1 process(es); the next request starts it again\n")
            second = tool_json(await session.call_tool("whoami", {}))["pid"]
            assert second != first
            assert [p.pid for p in await wait_for_servers(marker, 1)] == [second]

            code, out, _ = await anyio.to_thread.run_sync(run_cli, capsys, "stop")
            assert (code, out) == (0, f"stopped the mcpshare broker (pid {broker.pid}) and its servers\n")
        assert await anyio.to_thread.run_sync(broker.wait) == 0
    assert marked_servers(marker) == []
    assert not os.path.exists(broker_env.paths.socket)
    log = (broker_env.root / "serve.stderr").read_text()
    assert f"configs: {config}" in log  # the foreground broker says which config it serves, on stderr


async def test_a_second_broker_is_refused(broker_env: BrokerEnv, capsys: pytest.CaptureFixture[str]) -> None:
    first = broker_env.start_broker()
    pid = await broker_env.wait_ready()
    second = await anyio.run_process([sys.executable, "-m", "mcpshare", "serve"], env=broker_env.run_env(), check=False)
    assert second.returncode == 1
    assert f"already running (pid {pid}) on {broker_env.paths.socket}" in second.stderr.decode()
    # An autostarted loser leaves quietly, before importing anything heavy.
    started = time.monotonic()
    quiet = await anyio.run_process(
        [sys.executable, "-m", "mcpshare", "serve", "--autostarted"], env=broker_env.run_env(), check=False
    )
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, b"", b"")
    assert time.monotonic() - started < 5
    assert first.poll() is None and broker_env.broker_pid() == pid


def test_serve_rejects_a_bad_config(broker_env: BrokerEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"mcpServers": {"x": {"comand": "oops"}}}')
    code, _, err = run_cli(capsys, "serve", "--config", str(bad))
    assert code == 2 and str(bad) in err and "comand" in err
    assert broker_env.broker_pid() is None


# ---------------------------------------------------------------------------------------------- wrap / unwrap


def test_wrap_and_unwrap_options_reach_the_wrap_module(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, Any, dict[str, Any]]] = []

    def result(**fields: Any) -> Any:
        return types.SimpleNamespace(**{"backup": None, "skipped": {}, "notes": [], "restored": False, **fields})

    fake = types.ModuleType("mcpshare.wrap")
    fake.wrap_file = lambda path, **kw: (
        calls.append(("wrap", path, kw))
        or result(  # type: ignore[attr-defined]
            path=path, changed=["a", "b"], skipped={"web": "http"}, dry_run=True
        )
    )
    fake.unwrap_file = lambda path, **kw: (
        calls.append(("unwrap", path, kw))
        or result(  # type: ignore[attr-defined]
            path=path, changed=["a"], restored=True, dry_run=False
        )
    )
    monkeypatch.setitem(sys.modules, "mcpshare.wrap", fake)
    config = tmp_path / "config.toml"
    code, out, _ = run_cli(capsys, "wrap", str(config), "--server", "a", "-s", "b", "--dry-run")
    assert code == 0
    assert out == (
        f"wrapped 2 server(s) in {config}: a, b\n  left alone: web (http)\n  (dry run: nothing was written)\n"
    )
    assert run_cli(capsys, "unwrap", str(config))[:2] == (0, f"restored {config} byte for byte from its backup\n")
    assert calls == [
        ("wrap", config, {"servers": ["a", "b"], "dry_run": True}),
        ("unwrap", config, {"dry_run": False}),
    ]


async def test_a_wrapped_config_runs_through_the_broker_and_unwraps(
    broker_env: BrokerEnv, marker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real wrap module and the shim agree: the command wrap writes connects through the broker."""
    pytest.importorskip("mcpshare.wrap")
    server = server_argv("--show-env=TOKEN", marker=marker)
    config = broker_env.root / ".mcp.json"
    original = json.dumps({"mcpServers": {"test": {"command": server[0], "args": server[1:], "env": {"TOKEN": "t"}}}})
    config.write_text(original)
    code, out, err = run_cli(capsys, "wrap", str(config))
    assert code == 0, err
    assert out.startswith(f"wrapped 1 server(s) in {config}: test")
    entry = json.loads(config.read_text())["mcpServers"]["test"]
    assert entry["args"][entry["args"].index("connect") :][:4] == ["connect", "test", "--env-keys", "TOKEN"]
    with anyio.fail_after(30), (broker_env.root / "shim.stderr").open("w") as stderr:
        env = {**broker_env.env, **entry["env"]}
        argv = [entry["command"], *entry["args"]]
        async with sdk_session(argv, env=env, errlog=stderr, cwd=broker_env.root) as session:
            who = tool_json(await session.call_tool("whoami", {}))
            status = control("status", broker_env)
        assert who["env"] == {"TOKEN": "t"}
        assert status is not None and [row["pid"] for row in status["servers"]] == [who["pid"]]  # the broker's
    code, out, _ = run_cli(capsys, "unwrap", str(config))
    assert (code, out) == (0, f"restored {config} byte for byte from its backup\n")
    assert config.read_text() == original


def test_wrap_without_the_wrap_module_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mcpshare.wrap", None)  # makes the import fail
    code, _, err = run_cli(capsys, "wrap", str(tmp_path / "config.toml"))
    assert code == 1 and "`mcpshare wrap` is not available in this installation" in err


# ---------------------------------------------------------------------------------------------- demo, dispatch


def test_demo_shows_one_process_per_server(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "mcpshare", "demo", "--threads", "8"],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "140"},
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    servers = len(cli.demo_servers())
    assert f"= {servers} server process(es) + 1 guardian, instead of {servers * 8}" in done.stdout
    assert "shut down cleanly: every server process stopped." in done.stdout
    print(f"\ndemo with 8 threads: {elapsed:.1f} s (target: under 10 s; not asserted, machines and loads differ)")


def test_connect_is_dispatched_to_the_shim(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "connect", "--help")
    assert code == 0 and out.startswith("usage: mcpshare connect NAME")


async def test_status_watch_shows_calls_errors_and_latency_per_process(
    broker_env: BrokerEnv, marker: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty calls (one of them an error) through a shim: `status --json` counts them per process with their
    latency, and `status --watch` draws them live (two refreshes here), with a rate once it has two readings."""
    argv = broker_env.shim("test", "--", *server_argv(marker=marker))
    env = {**os.environ, **broker_env.env}
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: the narrow case is the job of status's own layout
    with anyio.fail_after(30), open(os.devnull, "w") as quiet:  # noqa: ASYNC230 - /dev/null does not block
        async with sdk_session(argv, env=env, errlog=quiet) as session:
            for index in range(19):
                await session.call_tool("echo", {"text": str(index)})
            with pytest.raises(MCPError):
                await session.get_prompt("no-such-prompt")  # a JSON-RPC error from the server
            code, out, _ = run_cli(capsys, "status", "--json")
            assert code == 0
            (row,) = json.loads(out)["servers"]
            assert row["calls"] >= 20 and row["errors"] >= 1  # initialize is answered by mcpshare, tools/list too
            assert row["latency_p50_ms"] is not None and row["latency_p50_ms"] > 0
            code = await anyio.to_thread.run_sync(cli.main, ["status", "--watch", "--count", "2", "--interval", "0.2"])
            out = capsys.readouterr().out
    assert code == 0
    assert "calls/s" in out and "p50 ms" in out and "test" in out and "2025-11-25" in out
