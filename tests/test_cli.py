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
from pathlib import Path

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


async def test_status_never_truncates_at_80_columns(broker_env: BrokerEnv, marker: str) -> None:
    """A server name longer than the terminal: its cell wraps (no ellipsis, no line past 80 columns), and --wide
    keeps each row on one line."""
    name = "a-server-whose-name-is-far-too-long-for-any-column-of-an-80-column-terminal"
    server = server_argv(marker=marker)
    config = broker_env.root / "servers.json"
    config.write_text(json.dumps({"mcpServers": {name: {"command": server[0], "args": server[1:]}}}))
    broker_env.start_broker("--config", str(config))
    await broker_env.wait_ready()
    with anyio.fail_after(40), (broker_env.root / "shim.stderr").open("w") as shim_stderr:
        async with sdk_session(broker_env.shim(name), env=broker_env.env, errlog=shim_stderr) as session:
            pid = tool_json(await session.call_tool("whoami", {}))["pid"]
            env = broker_env.run_env(COLUMNS="80")
            narrow = await anyio.run_process([sys.executable, "-m", "mcpshare", "status"], env=env, check=False)
            wide = await anyio.run_process([sys.executable, "-m", "mcpshare", "status", "--wide"], env=env, check=False)
            await anyio.run_process([sys.executable, "-m", "mcpshare", "stop"], env=env)
    out = narrow.stdout.decode()
    assert narrow.returncode == 0, narrow.stderr
    assert "…" not in out and "..." not in out
    table = [line for line in out.splitlines() if line.startswith("│")]
    assert table and all(len(line) <= 80 for line in table)
    assert "".join(line.split("│")[1].strip() for line in table) == name  # the first column, read down
    assert str(pid) in out
    rows = [line for line in wide.stdout.decode().splitlines() if name in line]
    assert wide.returncode == 0 and len(rows) == 1 and str(pid) in rows[0] and len(rows[0]) > 80


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


WRAP_DATA = Path(__file__).parent / "data" / "wrap"


def cli_run(*args: str, home: Path, cwd: Path, columns: int = 80, **env: str) -> subprocess.CompletedProcess[str]:
    """The real ``mcpshare`` in a child process, with ``home`` as the user's home directory."""
    environ = {**os.environ, "HOME": str(home), "COLUMNS": str(columns), **env}
    environ.pop("CODEX_HOME", None)
    environ.pop("XDG_CONFIG_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "mcpshare", *args], capture_output=True, text=True, timeout=30, cwd=cwd, env=environ
    )


def test_wrap_dry_run_shows_the_diff_in_the_conditional(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes((WRAP_DATA / "codex_config.toml").read_bytes())
    original = config.read_bytes()

    code, out, err = run_cli(capsys, "wrap", str(config), "--dry-run", "-s", "github")

    assert code == 0, err
    assert out.startswith(f"would wrap 1 server(s) in {config}: github\n")
    assert "  would leave alone: time (not selected)\n" in out
    assert f"  the original would be kept in {config}.mcpshare-backup\n" in out
    assert f"--- {config}\n+++ {config} (after)\n@@ " in out
    assert '-command = "npx"   # the runner\n' in out
    assert '+  "connect",\n+  "github",\n' in out  # the new command line, item by item as the file writes it
    assert out.endswith("  (dry run: nothing was written)\n")
    assert "wrapped 1" not in out and " was kept" not in out
    assert config.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]

    code, out, _ = run_cli(capsys, "wrap", str(config), "-s", "github")
    assert code == 0 and out.startswith(f"wrapped 1 server(s) in {config}: github\n") and "---" not in out
    code, out, _ = run_cli(capsys, "unwrap", str(config), "--dry-run")
    assert code == 0 and out.startswith(f"would restore {config} byte for byte from its backup\n")
    assert '+command = "npx"   # the runner\n' in out
    code, out, _ = run_cli(capsys, "unwrap", str(config))
    assert code == 0 and out.startswith(f"restored {config} byte for byte from its backup\n") and "---" not in out
    assert config.read_bytes() == original


def test_wrap_refuses_a_typo_with_the_loaders_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mcpshare.config import ConfigError, load_config

    config = tmp_path / ".mcp.json"
    config.write_text('{"mcpServers": {"ok": {"command": "x"}, "typo": {"command": "y", "enviroment": {}}}}')
    with pytest.raises(ConfigError) as loaded:
        load_config(config)

    code, out, err = run_cli(capsys, "wrap", str(config))

    assert (code, out) == (1, "")
    assert err == f"mcpshare: {loaded.value}\n"
    assert "server 'typo', field 'enviroment': unknown field" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mcp.json"]


def _user_with_configs(tmp_path: Path) -> tuple[Path, Path]:
    """A home with Zed's settings and Codex's config, and a project with a VS Code file."""
    home, project = tmp_path / "home", tmp_path / "home" / "work" / "app"
    (home / ".config" / "zed").mkdir(parents=True)
    (home / ".codex").mkdir()
    (project / ".vscode").mkdir(parents=True)
    (home / ".config" / "zed" / "settings.json").write_bytes((WRAP_DATA / "zed_settings.json").read_bytes())
    (home / ".codex" / "config.toml").write_bytes((WRAP_DATA / "codex_config.toml").read_bytes())
    (project / ".vscode" / "mcp.json").write_bytes((WRAP_DATA / "vscode_mcp.json").read_bytes())
    return home, project


def test_discover_lists_each_config_its_servers_and_their_state(tmp_path: Path) -> None:
    home, project = _user_with_configs(tmp_path)

    done = cli_run("discover", "--json", home=home, cwd=project)

    assert done.returncode == 0, done.stderr
    configs = json.loads(done.stdout)["configs"]
    assert [(c["path"], c["host"]) for c in configs] == [
        (str(home / ".codex" / "config.toml"), "Codex"),
        (str(home / ".config" / "zed" / "settings.json"), "Zed"),
        (str(project / ".vscode" / "mcp.json"), "VS Code"),
    ]
    zed = {server["label"]: server for server in configs[1]["servers"]}
    assert zed["sqlite"] == {"label": "sqlite", "transport": "stdio", "wrapped": None, "note": ""}
    assert zed["fetch"]["note"] == "disabled"
    assert zed["mcp-server-context7"]["note"].startswith("cannot run here: provided by a Zed extension")
    assert zed["remote-docs"]["transport"] == "http"

    wrapped = cli_run("wrap", str(home / ".config" / "zed" / "settings.json"), home=home, cwd=project)
    assert wrapped.returncode == 0, wrapped.stderr
    again = json.loads(cli_run("discover", "--json", home=home, cwd=project).stdout)["configs"]
    assert {s["label"]: s["wrapped"] for s in again[1]["servers"]} == {
        "sqlite": "shim",
        "brave-search": "shim",
        "fetch": None,
        "mcp-server-context7": None,
        "remote-docs": None,
    }
    table = cli_run("discover", home=home, cwd=project)
    assert table.returncode == 0 and "yes (shim)" in table.stdout and "VS Code" in table.stdout
    assert all(len(line) <= 80 for line in table.stdout.splitlines())


def test_wrap_all_wraps_every_discovered_config(tmp_path: Path) -> None:
    home, project = _user_with_configs(tmp_path)
    files = [
        home / ".codex" / "config.toml",
        home / ".config" / "zed" / "settings.json",
        project / ".vscode" / "mcp.json",
    ]
    originals = {path: path.read_bytes() for path in files}
    (home / ".config" / "mcpshare").mkdir()
    (home / ".config" / "mcpshare" / "servers.json").write_text('{"mcpServers": {"own": {"command": "x"}}}')

    dry = cli_run("wrap", "--all", "--dry-run", home=home, cwd=project, columns=200)

    assert dry.returncode == 0, dry.stderr
    assert [line for line in dry.stdout.splitlines() if line.startswith("would wrap")] == [
        f"would wrap 3 server(s) in {files[0]}: time, github, files",
        f"would wrap 2 server(s) in {files[1]}: sqlite, brave-search",
        f"would wrap 3 server(s) in {files[2]}: github, project-tools, playwright",
    ]
    assert dry.stdout.count("(dry run: nothing was written)") == 3
    assert all(path.read_bytes() == original for path, original in originals.items())

    done = cli_run("wrap", "--all", home=home, cwd=project, columns=200)

    assert done.returncode == 0, done.stderr
    assert "servers.json" not in done.stdout  # mcpshare's own definitions are not a client config
    for path in files:
        assert f"{path} " in done.stdout and path.read_bytes() != originals[path]
        assert cli_run("unwrap", str(path), home=home, cwd=project).returncode == 0
        assert path.read_bytes() == originals[path]


def test_wrap_all_goes_on_past_a_bad_file_and_says_so(tmp_path: Path) -> None:
    home, project = _user_with_configs(tmp_path)
    bad = home / ".codex" / "config.toml"
    bad.write_text('[mcp_servers.x]\ncomand = "oops"\n')

    done = cli_run("wrap", "--all", home=home, cwd=project, columns=200)

    assert done.returncode == 1
    assert f"mcpshare: {bad}: server 'x', field 'comand': unknown field" in done.stderr
    assert bad.read_text() == '[mcp_servers.x]\ncomand = "oops"\n'
    assert "would" not in done.stdout and "wrapped 2 server(s)" in done.stdout


def test_every_help_shows_its_defaults(tmp_path: Path) -> None:
    """Each option's default is on its line; serve's help no longer loses its defaults to rich markup
    ("[default: ...]" written in help text is read as a markup tag and dropped, leaving "lives on .")."""
    import typer.main

    command = typer.main.get_command(cli.app)
    names = [[name] for name in command.commands if name != "connect"]  # type: ignore[attr-defined]
    names += [["service", sub] for sub in command.commands["service"].commands]  # type: ignore[attr-defined]
    for words in names:
        done = cli_run(*words, "--help", home=tmp_path, cwd=tmp_path, columns=200)
        assert done.returncode == 0, (words, done.stderr)
        options = [line for line in done.stdout.splitlines() if line.lstrip("│ ").startswith("--")]
        options = [line for line in options if not line.lstrip("│ ").startswith("--help")]
        assert all("[default: " in line for line in options), (words, options)
    serve = cli_run("serve", "--help", home=tmp_path, cwd=tmp_path, columns=200).stdout
    assert "lives on ." not in serve and "Log file ." not in serve
    assert "[default: ($MCPSHARE_IDLE_GRACE, else 60)]" in serve


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


def test_demo_runs_the_shared_and_the_unshared_case_for_real(tmp_path: Path) -> None:
    """Both columns are counted by the OS: N threads sharing one process per server, then the same N threads with a
    process each (share = "thread"); no figure is computed from the other."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "mcpshare", "demo", "--threads", "6"],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "140"},
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    servers = len(cli.demo_servers())
    assert f"= {servers} server process(es) + 1 guardian while 6 threads share them" in done.stdout
    assert f"with a process each, {servers * 6} server processes for the same 6 threads" in done.stdout
    assert "estimate" not in done.stdout.lower() and "(est" not in done.stdout  # nothing estimated
    total = next(line for line in done.stdout.splitlines() if "total" in line)
    assert [cell.strip() for cell in total.strip("│ ").split("│")][:4:3] == ["total", str(servers * 6)]
    assert "shut down cleanly: every server process stopped." in done.stdout
    quick = subprocess.run(
        [sys.executable, "-m", "mcpshare", "demo", "--threads", "3", "--no-unshared"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert quick.returncode == 0 and "with a process each" not in quick.stdout
    print(f"\ndemo with 6 threads, both cases: {elapsed:.1f} s (not asserted, machines and loads differ)")


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
