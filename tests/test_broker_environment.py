"""The broker in the environments real hosts give their servers: one broker per user, no value of one server's
config in another server, wrapped configs read as the servers they wrap, broken servers reported once.

Clients are shims started the way hosts start them (exact environments, pipes) and spoken to in raw JSON-RPC;
servers are real (server-everything, tests/servers/testserver.py); processes are counted with psutil.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from helpers import NODE_ENTRIES, SERVERS_DIR, count_server_processes, server_argv
from mcpshare import runtime, shim
from mcpshare.config import load_config
from mcpshare.wrap import wrap_file
from test_broker import SHIM, BrokerEnv, RawShim, marked_servers

pytestmark = pytest.mark.timeout(90)

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "host", "version": "1"}},
}


def start(shim_proc: RawShim) -> dict[str, Any]:
    """Initialize like a host does; the initialize result."""
    answer = shim_proc.ask(INITIALIZE)
    shim_proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    shim_proc.stdin.flush()
    assert "result" in answer, answer
    return answer["result"]


def call(shim_proc: RawShim, request_id: int, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    """A tools/call through a raw shim (notifications before its answer are skipped): the structured result, or
    the text parsed as JSON."""
    request = {"name": tool, "arguments": arguments or {}}
    answer = shim_proc.ask({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": request})
    while "method" in answer and "id" not in answer:
        answer = json.loads(shim_proc.stdout.readline())
    assert answer.get("id") == request_id and "result" in answer, answer
    result = answer["result"]
    structured = result.get("structuredContent")
    if structured is not None:
        return structured["result"] if set(structured) == {"result"} else structured
    return json.loads("".join(block["text"] for block in result["content"] if block["type"] == "text"))


# ---------------------------------------------------------------------------------------------- one broker per user


def _autostarted_brokers(since: float) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time", "status"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["create_time"] < since - 1:
                continue
            if "mcpshare" in cmdline and "serve" in cmdline and "--autostarted" in cmdline:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture
def users_runtime_dir() -> Iterator[runtime.RuntimePaths]:
    """The runtime directory as every client computes it without MCPSHARE_RUNTIME_DIR (the real one), provided
    no broker runs there; the test's broker is stopped and a directory we created is removed afterwards."""
    directory = runtime.runtime_dir({})
    paths = runtime.RuntimePaths(directory)
    if runtime.lock_held(paths.lock):
        message = f"a broker already runs in {directory}: this test needs the user's runtime directory to itself"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    existed = os.path.exists(directory)
    since = time.time()
    try:
        yield paths
    finally:
        try:
            shim.control("stop", paths=paths, timeout=10)
        except shim.BrokerUnavailable:
            pass
        brokers = _autostarted_brokers(since)
        for proc in brokers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(brokers, timeout=5)
        if not existed:
            shutil.rmtree(directory, ignore_errors=True)


async def test_every_host_environment_finds_the_same_broker(
    users_runtime_dir: runtime.RuntimePaths, marker: str, tmp_path: Path
) -> None:
    """With XDG_RUNTIME_DIR and TMPDIR set in the parent (a normal login), a Codex-like client (a few variables,
    no XDG_RUNTIME_DIR), an SDK-like one (HOME, LOGNAME, PATH, SHELL, TERM, USER) and a full environment all reach
    one broker and one server process; `mcpshare status` in the full environment sees it."""
    home, xdg, tmpdir = tmp_path / "home", tmp_path / "xdg", tmp_path / "tmp"
    for directory in (home, xdg, tmpdir):
        directory.mkdir(mode=0o700)
    path = os.environ.get("PATH", os.defpath)
    parent = {key: value for key, value in os.environ.items() if key != runtime.ENV_RUNTIME_DIR}
    full = {**parent, "HOME": str(home), "XDG_RUNTIME_DIR": str(xdg), "TMPDIR": str(tmpdir)}
    codex = {"TMPDIR": str(tmpdir), "PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "TERM": "xterm"}
    codex |= {"SHELL": "/bin/sh", "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}
    sdk = {"HOME": str(home), "LOGNAME": "someone", "PATH": path, "SHELL": "/bin/sh", "TERM": "xterm", "USER": "u"}
    argv = [*SHIM, "shared", "--", *server_argv(marker=marker)]
    shims = [RawShim(argv, env, tmp_path) for env in (codex, sdk, full)]
    try:
        for client in shims:
            start(client)
        pids = {call(client, 2, "whoami")["pid"] for client in shims}
        assert len(pids) == 1
        assert [proc.pid for proc in marked_servers(marker)] == list(pids)
        brokers = _autostarted_brokers(time.time() - 60)
        assert len(brokers) == 1
        assert runtime.broker_pid(users_runtime_dir.lock) == brokers[0].pid
        status = await anyio.run_process([sys.executable, "-m", "mcpshare", "status", "--json"], env=full, check=False)
        assert status.returncode == 0, status.stderr
        answer = json.loads(status.stdout)
        assert answer["broker"]["pid"] == brokers[0].pid
        assert [(row["pid"], row["clients"]) for row in answer["servers"]] == [(pids.pop(), 3)]
    finally:
        for client in shims:
            client.close()


# ---------------------------------------------------------------------------------------------- environment hygiene


async def test_a_server_never_sees_another_servers_config_values(broker_env: BrokerEnv, tmp_path: Path) -> None:
    """The first client (a Claude-Code-like full environment) autostarts the broker. Its own server's API_TOKEN,
    its session variables and its host's temporary PATH entry must not reach a server started for someone else;
    its own server still has its token."""
    everything = ["node", str(NODE_ENTRIES["server-everything"]), "stdio"]
    if not NODE_ENTRIES["server-everything"].is_file():
        pytest.fail("tests/node is not installed: run scripts/test")
    transient = broker_env.home / ".codex" / "tmp" / "arg0" / "codex-arg0Xyz"
    transient.mkdir(parents=True)
    first_env = {
        **os.environ,
        **broker_env.env,
        "API_TOKEN": "s3cret-token-123",
        "CLAUDE_CODE_SESSION_ID": "session-of-the-first-client",
        "CLAUDE_PROJECT_DIR": "/the/first/project",
        "PATH": f"{transient}{os.pathsep}{broker_env.env['PATH']}",
    }
    first = RawShim([*SHIM, "tokened", "--env-keys", "API_TOKEN", "--", *everything], first_env, tmp_path)
    second = None
    try:
        start(first)
        broker = psutil.Process(broker_env.broker_pid() or 0)
        second = RawShim([*SHIM, "plain", "--", *everything], {**os.environ, **broker_env.env}, tmp_path)
        start(second)
        first_sees, second_sees = call(first, 2, "get-env"), call(second, 2, "get-env")
        assert first_sees["API_TOKEN"] == "s3cret-token-123"
        assert "API_TOKEN" not in second_sees
        assert "CLAUDE_CODE_SESSION_ID" not in second_sees and "CLAUDE_PROJECT_DIR" not in second_sees
        assert str(transient) not in second_sees["PATH"].split(os.pathsep)
        assert second_sees["PATH"]  # the user's own PATH is kept
        environ = broker.environ()  # and the broker itself kept none of it
        assert "API_TOKEN" not in environ and "CLAUDE_CODE_SESSION_ID" not in environ
        assert str(transient) not in environ["PATH"].split(os.pathsep)
        assert "s3cret" not in Path(broker_env.paths.log).read_text()
    finally:
        for client in (first, second):
            if client is not None:
                client.close()


def test_the_broker_keeps_what_belongs_to_the_user(tmp_path: Path) -> None:
    environ = {
        "PATH": f"/tmp/codex-arg0Xyz{os.pathsep}/usr/bin",
        "TMPDIR": "/var/tmp",
        "HOME": "/home/u",
        "GITHUB_TOKEN": "belongs to the user's shell",
        "API_TOKEN": "belongs to the first server",
        "CLAUDE_CODE_SESSION_ID": "1",
        "CLAUDECODE": "1",
        "CODEX_SANDBOX": "seatbelt",
        "VSCODE_IPC_HOOK_CLI": "/run/user/1/vscode.sock",
        "PWD": "/somewhere",
        "MCPSHARE_IDLE_GRACE": "5",
    }
    assert runtime.broker_environment(environ, ["API_TOKEN"]) == {
        "PATH": "/usr/bin",
        "TMPDIR": "/var/tmp",
        "HOME": "/home/u",
        "GITHUB_TOKEN": "belongs to the user's shell",
        "MCPSHARE_IDLE_GRACE": "5",
    }


def test_path_entries_that_die_with_the_host_are_left_out(tmp_path: Path) -> None:
    lasting = tmp_path / "bin"
    app_tmp = tmp_path / ".codex" / "tmp" / "arg0-linux" / "codex-arg0AbC"  # what Codex puts first in PATH
    user_tmp = tmp_path / "tmpdir" / "x"
    for directory in (lasting, app_tmp, user_tmp):
        directory.mkdir(parents=True)
    entries = [str(app_tmp), "relative/bin", str(lasting), "/does/not/exist", str(user_tmp), str(lasting)]
    kept = runtime.lasting_path(os.pathsep.join(entries), str(tmp_path / "tmpdir"), temp_roots=())
    assert kept == str(lasting)
    assert runtime.lasting_path(f"{lasting}{os.pathsep}/usr/bin") == "/usr/bin"  # all of /tmp is temporary


# ---------------------------------------------------------------------------------------------- wrapped configs


def _write_servers(path: Path, marker: str) -> None:
    servers = {
        "alpha": {"command": sys.executable, "args": server_argv("--show-env=ALPHA_KEY", marker=marker)[1:]},
        "beta": {"command": sys.executable, "args": server_argv(marker=marker)[1:], "env": {"ALPHA_KEY": "b"}},
    }
    path.write_text(json.dumps({"mcpServers": servers}, indent=2) + "\n")


def test_load_config_reads_a_wrapped_file_as_the_servers_it_wraps(tmp_path: Path, marker: str) -> None:
    original = tmp_path / "original.json"
    _write_servers(original, marker)
    wrapped = tmp_path / ".mcp.json"
    shutil.copy(original, wrapped)
    result = wrap_file(wrapped)
    assert result.changed == ["alpha", "beta"]
    assert "connect" in json.loads(wrapped.read_text())["mcpServers"]["alpha"]["args"]
    assert load_config(wrapped).servers == load_config(original).servers
    codex = tmp_path / "config.toml"
    codex.write_text(
        "[mcp_servers.gamma]\n"
        f"command = {json.dumps(sys.executable)}\n"
        f"args = {json.dumps(server_argv(marker=marker)[1:])}\n"
        'env_vars = ["FROM_HOST"]\nshare = "global"\ncwd = "sub"\n'
    )
    before = load_config(codex).servers["gamma"]
    wrap_file(codex)
    assert load_config(codex).servers["gamma"] == before


def test_connect_entries_without_a_command_are_references_never_shims(tmp_path: Path) -> None:
    """`mcpshare connect NAME` alone names a server defined elsewhere: a real definition wins, and with none the
    server is unusable with an error that says so (it is never run as a server)."""
    shim_entry = {"command": "/opt/venv/bin/mcpshare", "args": ["connect", "github"]}
    mcp_json = tmp_path / ".mcp.json"
    mcp_json.write_text(json.dumps({"mcpServers": {"github": shim_entry}}))
    config = load_config(mcp_json)
    assert "github" not in config.servers
    with pytest.raises(Exception, match="without the server's own command: it points at the broker's server"):
        config.get("github")
    real = tmp_path / "config.toml"
    real.write_text('[mcp_servers.github]\ncommand = "github-mcp"\n')
    from mcpshare.config import merge

    for layers in ((load_config(real), config), (config, load_config(real))):
        assert merge(*layers).servers["github"].command == "github-mcp"


async def test_the_broker_never_runs_a_shim_as_a_server(broker_env: BrokerEnv, marker: str, tmp_path: Path) -> None:
    """Wrapped configs reach the broker three ways: its default configs after `wrap`, `--config` on a wrapped
    file, and the embedded command of a wrapped entry. Each runs the real server; no shim is ever a server."""
    codex = broker_env.home / ".codex" / "config.toml"
    codex.parent.mkdir()
    codex.write_text(
        f"[mcp_servers.fromhome]\ncommand = {json.dumps(sys.executable)}\n"
        f"args = {json.dumps(server_argv(marker=marker)[1:])}\n"
    )
    wrap_file(codex)
    project_config = tmp_path / "wrapped.json"
    _write_servers(project_config, marker)
    wrap_file(project_config)
    env = {**os.environ, **broker_env.env}
    clients = [
        RawShim([*SHIM, "fromhome"], env, tmp_path),
        RawShim([*SHIM, "alpha", "--config", str(project_config)], env, tmp_path),
    ]
    try:
        for client in clients:
            start(client)
        pids = [call(client, 2, "whoami")["pid"] for client in clients]
        shims = {client.proc.pid for client in clients}
        servers = [proc for proc in count_server_processes(marker) if proc.pid not in shims]
        assert sorted(pids) == sorted(proc.pid for proc in servers)  # two servers, and they are the real ones:
        for proc in servers:
            assert "connect" not in proc.cmdline() and proc.cmdline()[1:2] == [str(SERVERS_DIR / "testserver.py")]
        assert all(client.proc.poll() is None for client in clients)  # the shims themselves are the clients'
        assert len(pids) == 2 and len(set(pids)) == 2
    finally:
        for client in clients:
            client.close()


# ---------------------------------------------------------------------------------------------- broken servers


def _broken(kind: str, starts: Path) -> tuple[list[str], str]:
    """A server command that fails in the way ``kind`` says (recording each start in ``starts``), and the words
    the broker's error has for it."""
    record = f"open({str(starts)!r}, 'a').write('x\\n'); "
    if kind == "missing":
        return ["/nonexistent/mcp-server"], "command '/nonexistent/mcp-server' does not exist"
    if kind == "exits":
        return [sys.executable, "-c", record + "import sys; sys.exit(3)"], "exit code 3"
    return [sys.executable, "-c", record + "import time; time.sleep(60)"], "no answer to the MCP handshake within 1 s"


@pytest.mark.parametrize("kind", ["missing", "exits", "hangs"])
async def test_a_broken_server_is_started_once_and_reported_once(
    broker_env: BrokerEnv, tmp_path: Path, kind: str
) -> None:
    """The broker was reached and the server failed: the shim prints the broker's error once and exits 1. It does
    not run the broken server a second time itself, so a hung server costs its timeout once, not twice."""
    starts = tmp_path / "starts"
    command, expected = _broken(kind, starts)
    entry: dict[str, Any] = {"command": command[0], "args": command[1:]}
    if kind == "hangs":
        entry["startup_timeout_sec"] = 1
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"broken": entry}}))
    env = {**os.environ, **broker_env.env}
    started = time.monotonic()
    done = await anyio.run_process(
        [*SHIM, "broken", "--config", str(config)], input=b"", env=env, cwd=tmp_path, check=False
    )
    elapsed = time.monotonic() - started
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert expected in stderr
    assert stderr.count("failed to start") == 1  # once, not once from the broker and again from a fallback
    assert "NOT shared" not in stderr and "directly" not in stderr
    assert done.stdout == b""  # the client got no garbage on its stdout
    if kind != "missing":
        assert starts.read_text() == "x\n"  # one start attempt in all
    assert elapsed < 30, f"took {elapsed:.1f} s"  # a hung server cost its 1 s timeout, not a second one


async def test_an_unknown_server_is_one_clear_error(broker_env: BrokerEnv, tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"other": {"command": "x"}}}))
    done = await anyio.run_process(
        [*SHIM, "nosuch", "--config", str(config)],
        input=b"",
        env={**os.environ, **broker_env.env},
        cwd=tmp_path,
        check=False,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 1
    assert stderr == f"mcpshare connect: no MCP server named 'nosuch' in {config} (known: other)\n"


def test_a_broker_of_another_protocol_lets_the_shim_run_the_server_itself(tmp_path: Path) -> None:
    """A refusal the server is not to blame for (here: another protocol version) still falls back."""
    directory = Path(tempfile.mkdtemp(prefix="mcps-", dir="/tmp"))
    try:
        answers = []

        def fake_broker() -> None:
            import socket

            with socket.socket(socket.AF_UNIX) as listener:
                listener.bind(str(directory / runtime.SOCKET_NAME))
                listener.listen(1)
                conn, _ = listener.accept()
                with conn:
                    answers.append(conn.recv(65536))
                    conn.sendall(b'{"ok": false, "error": "protocol mismatch", "fallback": true}\n')

        import threading

        thread = threading.Thread(target=fake_broker)
        os.chmod(directory, 0o700)
        thread.start()
        deadline = time.monotonic() + 5
        while not (directory / runtime.SOCKET_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        done = subprocess.run(
            [*SHIM, "echoer", "--", sys.executable, "-c", "print('ran directly')"],
            env={**os.environ, runtime.ENV_RUNTIME_DIR: str(directory), "MCPSHARE_NO_AUTOSTART": "1"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        thread.join(5)
        assert done.stdout == "ran directly\n"
        assert "the broker cannot serve 'echoer' now: protocol mismatch" in done.stderr
        assert done.stderr.count("protocol mismatch") == 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)
