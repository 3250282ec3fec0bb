"""The broker with real shims, real servers and real clients: sharing, isolation, permissions, crashes, signals.

Every test gets a private runtime directory (``MCPSHARE_RUNTIME_DIR``, short enough for a socket path) and HOME,
so it never touches the user's broker or configs. Brokers are found through the OS by that directory in their
environment and stopped by pid at teardown, whatever the test did; servers carry the ``marker`` and are reaped by
its fixture.

``BrokerEnv`` is also used by test_shim.py and test_cli.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import types
from mcp.client.session import ClientRequestContext

from helpers import (
    NODE_ENTRIES,
    count_server_processes,
    is_running,
    sdk_session,
    server_argv,
    tool_json,
    tool_text,
    wait_until_gone,
)
from mcpshare import runtime

pytestmark = pytest.mark.timeout(60)

SHIM = [sys.executable, "-m", "mcpshare", "connect"]


class BrokerEnv:
    """A private runtime dir and HOME, the environment shims and brokers run with, and ways to find the broker."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runtime = root / "run"
        self.home = root / "home"
        self.home.mkdir()
        self.paths = runtime.RuntimePaths(str(self.runtime))
        self.env = {
            runtime.ENV_RUNTIME_DIR: str(self.runtime),
            "HOME": str(self.home),
            "PATH": os.environ.get("PATH", os.defpath),
            "MCPSHARE_IDLE_GRACE": "0.3",
        }
        self.explicit: list[subprocess.Popen[bytes]] = []

    @classmethod
    def create(cls) -> BrokerEnv:
        # Under /tmp, not pytest's tmp_path: a Unix socket path must stay under 108 bytes.
        return cls(Path(tempfile.mkdtemp(prefix="mcps-", dir="/tmp")))

    def shim(self, server: str, *args: str) -> list[str]:
        """argv of ``mcpshare connect SERVER ARGS...``."""
        return [*SHIM, server, *args]

    def run_env(self, **extra: str) -> dict[str, str]:
        """A full environment for subprocess.run/Popen (ours + the test's private settings)."""
        return {**os.environ, **self.env, **extra}

    def broker_pid(self) -> int | None:
        """The pid of the broker holding the lock, or None."""
        return runtime.broker_pid(self.paths.lock)

    def processes(self) -> list[psutil.Process]:
        """Every live process started with this test's runtime dir in its environment (brokers, shims, servers)."""
        found = []
        for proc in psutil.process_iter(["pid", "status"]):
            try:
                if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                if proc.environ().get(runtime.ENV_RUNTIME_DIR) == str(self.runtime):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def brokers(self) -> list[psutil.Process]:
        """Live broker processes of this runtime dir (autostarted or explicit)."""
        brokers = []
        for proc in self.processes():
            try:
                if "serve" in proc.cmdline() and "mcpshare" in " ".join(proc.cmdline()):
                    brokers.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return brokers

    async def wait_brokers(self, count: int, timeout: float = 5.0) -> list[psutil.Process]:
        """Wait until exactly ``count`` brokers of this runtime dir run; return them."""
        deadline = time.monotonic() + timeout
        while len(found := self.brokers()) != count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} brokers, found {found}")
            await anyio.sleep(0.05)
        return found

    async def wait_ready(self, timeout: float = 15.0) -> int:
        """Wait until a broker answers a ping; return its pid."""
        with anyio.fail_after(timeout):
            while True:
                answer = control("ping", self)
                if answer is not None:
                    return int(answer["pid"])
                await anyio.sleep(0.02)

    def start_broker(self, *args: str, log: Path | None = None, ulimit: str | None = None) -> subprocess.Popen[bytes]:
        """An explicit ``mcpshare serve ARGS...`` in the foreground of a child process (stderr to ``log``), under
        ``ulimit ULIMIT`` of the shell when given (``-n 1024``: a user's default limit of open files)."""
        stderr = open(log or self.root / "serve.stderr", "ab")
        command = [sys.executable, "-m", "mcpshare", "serve", *args]
        if ulimit is not None:
            command = ["/bin/sh", "-c", f'ulimit {ulimit} && exec "$@"', "sh", *command]
        proc = subprocess.Popen(
            command,
            env=self.run_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=self.root,
        )
        stderr.close()
        self.explicit.append(proc)
        return proc

    def wait_ready_sync(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        """Wait (blocking: for tests with no event loop) until the broker ``proc`` answers a ping."""
        deadline = time.monotonic() + timeout
        while control("ping", self) is None:
            assert time.monotonic() < deadline and proc.poll() is None, "the broker did not come up"
            time.sleep(0.02)

    def cleanup(self) -> None:
        """Kill (by pid) everything that still runs with this runtime dir, then remove the directory."""
        procs = self.processes()
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + 5
        while any(is_running(proc.pid) for proc in procs) and time.monotonic() < deadline:
            time.sleep(0.01)  # zombies count as gone: some inits never reap orphans
        for popen in self.explicit:
            if popen.poll() is None:
                popen.kill()
            popen.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


def control(command: str, env: BrokerEnv, **fields: Any) -> dict[str, Any] | None:
    """A control request to this test's broker (None when none runs)."""
    from mcpshare import shim

    return shim.control(command, paths=env.paths, timeout=10, **fields)


def marked_servers(marker: str) -> list[psutil.Process]:
    """Live server processes carrying ``marker``; shims carry it too (in their embedded command) and are left out."""
    servers = []
    for proc in count_server_processes(marker):
        try:
            if proc.cmdline()[1:4] != SHIM[1:]:
                servers.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return servers


async def wait_for_servers(marker: str, count: int, *, timeout: float = 10.0) -> list[psutil.Process]:
    """Wait until exactly ``count`` marked servers (not shims) run; return them."""
    deadline = time.monotonic() + timeout
    while len(found := marked_servers(marker)) != count:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} servers marked {marker}, found {found}")
        await anyio.sleep(0.02)
    return found


async def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Poll until none of ``procs`` runs (zombies count as gone); return those still running."""
    alive = await wait_until_gone(*(p.pid for p in procs), timeout=timeout)
    return [p for p in procs if p.pid in alive]


# ---------------------------------------------------------------------------------------------- sharing


@pytest.fixture(params=["handover", "relay"])
def shim_env(request: pytest.FixtureRequest, broker_env: BrokerEnv) -> dict[str, str]:
    """The shim's environment in both of its modes: handing its stdio to the broker (the default wherever stdin
    and stdout are pipes, as here), or relaying bytes itself (``MCPSHARE_PASS_STDIO=0``)."""
    return {**broker_env.env, **({"MCPSHARE_PASS_STDIO": "0"} if request.param == "relay" else {})}


async def test_ten_shims_at_once_share_one_broker_and_one_server(
    broker_env: BrokerEnv, shim_env: dict[str, str], marker: str
) -> None:
    """Ten clients start together with no broker: one broker wins the start race, one server serves them all,
    each client sees only its own answers and progress; when they all leave, the server stops after the grace."""
    argv = broker_env.shim("test", "--", *server_argv(marker=marker))
    clients = 10
    answered: dict[int, tuple[int, str, list[float]]] = {}
    all_answered = anyio.Event()
    release = anyio.Event()

    async def client(index: int) -> None:
        progress: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        async with sdk_session(argv, env=shim_env) as session:
            who = tool_json(await session.call_tool("whoami", {}))
            echoed = tool_text(await session.call_tool("echo", {"text": f"client {index}"}))
            await session.call_tool("progress", {"steps": 2 + index % 3}, progress_callback=on_progress)
            answered[index] = (who["pid"], echoed, progress)
            if len(answered) == clients:
                all_answered.set()
            await release.wait()

    with anyio.fail_after(45):
        async with anyio.create_task_group() as tg:
            for index in range(clients):
                tg.start_soon(client, index)
            await all_answered.wait()
            servers = await wait_for_servers(marker, 1)
            assert {pid for pid, _, _ in answered.values()} == {servers[0].pid}
            for index, (_, echoed, progress) in answered.items():
                assert echoed == f"client {index}"
                assert progress == [float(step) for step in range(1, 3 + index % 3)]
            brokers = await broker_env.wait_brokers(1)  # the losers of the start race exit at once
            assert [p.pid for p in brokers] == [broker_env.broker_pid()]
            status = control("status", broker_env)
            assert status is not None and [(s["server"], s["clients"]) for s in status["servers"]] == [("test", 10)]
            release.set()
        await wait_for_servers(marker, 0, timeout=5)  # idle grace 0.3 s
    assert broker_env.brokers()  # the broker itself stays for the next client


async def test_a_server_to_client_request_reaches_its_own_shim_client(
    broker_env: BrokerEnv, shim_env: dict[str, str], marker: str
) -> None:
    """Elicitation rides the shim like any message: the client that called gets the question and answers it."""
    asked: list[str] = []

    async def on_elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": "blue"})

    argv = broker_env.shim("test", "--", *server_argv(marker=marker))
    with anyio.fail_after(30):
        async with (
            sdk_session(argv, env=shim_env, elicitation_callback=on_elicit) as asker,
            sdk_session(argv, env=shim_env) as bystander,
        ):
            assert tool_text(await asker.call_tool("ask", {"question": "colour?"})) == "accept:blue"
            assert tool_text(await bystander.call_tool("echo", {"text": "still mine"})) == "still mine"
    assert asked == ["colour?"]


async def test_env_keys_are_part_of_the_key(broker_env: BrokerEnv, marker: str) -> None:
    """Two clients with different values of a declared env key never share a process; equal values do."""
    argv = broker_env.shim("test", "--env-keys", "API_TOKEN", "--", *server_argv("--show-env=API_TOKEN", marker=marker))
    with anyio.fail_after(30):
        async with (
            sdk_session(argv, env={**broker_env.env, "API_TOKEN": "alice"}) as alice,
            sdk_session(argv, env={**broker_env.env, "API_TOKEN": "bob"}) as bob,
            sdk_session(argv, env={**broker_env.env, "API_TOKEN": "alice"}) as alice_again,
        ):
            a, b, a2 = [tool_json(await s.call_tool("whoami", {})) for s in (alice, bob, alice_again)]
    assert a["pid"] == a2["pid"] != b["pid"]
    assert (a["env"]["API_TOKEN"], b["env"]["API_TOKEN"]) == ("alice", "bob")


async def test_config_file_and_default_configs(broker_env: BrokerEnv, marker: str) -> None:
    """``--config FILE``: the broker reads the server from the file, passing env_vars from the client. Without it,
    the broker reads the user's configs (here HOME/.codex/config.toml)."""
    command = json.dumps(sys.executable)
    args = json.dumps(server_argv("--show-env=PASSED", marker=marker)[1:])
    config = broker_env.root / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"fromfile": {"command": sys.executable, "args": json.loads(args)}}}))
    codex = broker_env.home / ".codex" / "config.toml"
    codex.parent.mkdir()
    codex.write_text(f"[mcp_servers.fromhome]\ncommand = {command}\nargs = {args}\nenv_vars = ['PASSED']\n")
    with anyio.fail_after(30):
        async with (
            sdk_session(broker_env.shim("fromfile", "--config", str(config)), env=broker_env.env) as from_file,
            sdk_session(broker_env.shim("fromhome"), env={**broker_env.env, "PASSED": "yes"}) as from_home,
        ):
            assert tool_json(await from_file.call_tool("whoami", {}))["env"] == {"PASSED": None}
            assert tool_json(await from_home.call_tool("whoami", {}))["env"] == {"PASSED": "yes"}
    log = Path(broker_env.paths.log).read_text()
    assert f"configs (the user's, re-read per client cwd): {codex}" in log  # it says which files it uses


# ---------------------------------------------------------------------------------------------- a real client


def test_inspector_cli_lists_and_calls_tools_through_the_shim(
    broker_env: BrokerEnv, inspector_cli_cmd: list[str]
) -> None:
    """The MCP Inspector CLI (a Node client) talks to server-everything through ``mcpshare connect``."""
    everything = NODE_ENTRIES["server-everything"]
    target = [*broker_env.shim("everything", "--", "node", str(everything), "stdio")]
    settings = ["-e", f"{runtime.ENV_RUNTIME_DIR}={broker_env.runtime}", "-e", "MCPSHARE_IDLE_GRACE=0.3"]
    env = broker_env.run_env()

    def inspector(*method: str) -> Any:
        # Options first, then "--" and the target: the target itself contains "--".
        done = subprocess.run(
            [*inspector_cli_cmd, *method, *settings, "--", *target],
            capture_output=True,
            text=True,
            timeout=40,
            env=env,
            cwd=broker_env.root,
        )
        assert done.returncode == 0, done.stderr + done.stdout
        return json.loads(done.stdout)

    tools = {tool["name"] for tool in inspector("--method", "tools/list")["tools"]}
    assert {"echo", "get-sum", "trigger-long-running-operation"} <= tools
    called = inspector("--method", "tools/call", "--tool-name", "echo", "--tool-arg", "message=hi")
    assert called["content"][0]["text"] == "Echo: hi"
    assert len(broker_env.brokers()) == 1


# ---------------------------------------------------------------------------------------------- permissions


async def test_runtime_dir_socket_lock_and_log_are_private(broker_env: BrokerEnv) -> None:
    broker_env.start_broker()
    await broker_env.wait_ready()
    assert stat.S_IMODE(os.lstat(broker_env.paths.directory).st_mode) == 0o700
    assert stat.S_ISSOCK(os.lstat(broker_env.paths.socket).st_mode)
    for path in (broker_env.paths.socket, broker_env.paths.lock, broker_env.paths.log):
        info = os.lstat(path)
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, os.getuid()), path


_PEER = textwrap.dedent(
    """
    import json, os, socket, sys
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(sys.argv[1])
    except OSError as exc:
        print(json.dumps({"connect": exc.__class__.__name__, "uid": os.getuid()}))
        sys.exit(0)
    hello = {"mcpshare": 1, "server": "x", "config": None, "spec": None, "cwd": "/", "env": {}}
    try:
        sock.sendall(json.dumps(hello).encode() + b"\\n")
    except BrokenPipeError:
        pass  # the broker may refuse before reading the hello
    print(json.dumps({"answer": sock.makefile("rb").readline().decode(), "uid": os.getuid()}))
    """
)


def _interpreter_for_nobody() -> str:
    """A Python that uid 65534 may run (ours may live under a private home, e.g. pyenv in /root)."""
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if not candidate:
            continue
        try:
            probe = subprocess.run([candidate, "-I", "-S", "-c", "pass"], user=65534, capture_output=True, cwd="/")
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    pytest.skip("no Python interpreter that uid 65534 may run")


@pytest.mark.skipif(os.geteuid() != 0, reason="running a peer under another uid needs root")
async def test_a_peer_of_another_uid_is_refused(broker_env: BrokerEnv) -> None:
    """Two layers: the file modes keep other users out; and if they were loosened, SO_PEERCRED still refuses."""
    broker_env.start_broker()
    await broker_env.wait_ready()

    python = _interpreter_for_nobody()

    def as_nobody() -> dict[str, Any]:
        done = subprocess.run(
            [python, "-I", "-S", "-c", _PEER, broker_env.paths.socket],
            user=65534,
            group=65534,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=20,
            cwd="/",
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert as_nobody() == {"connect": "PermissionError", "uid": 65534}
    for directory in (broker_env.root, broker_env.runtime):
        os.chmod(directory, 0o711)
    os.chmod(broker_env.paths.socket, 0o666)
    answer = as_nobody()
    assert answer["uid"] == 65534
    assert json.loads(answer["answer"]) == {
        "ok": False,
        "error": f"permission denied: this broker serves uid {os.getuid()}",
        "fallback": True,  # not a broker for that user: its shim runs the server itself
    }
    assert "refused a connection from uid 65534" in Path(broker_env.paths.log).read_text()


# ---------------------------------------------------------------------------------------------- handing stdio over

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}


def pipe_inodes(pid: int) -> set[int]:
    """Inodes of the pipes and sockets process ``pid`` holds open, read from /proc (what the OS says it holds)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("pipe:[", "socket:[")):
            inodes.add(int(target.split("[")[1].rstrip("]")))
    return inodes


class RawShim:
    """A shim started by hand with its stdin and stdout on pipes, spoken to in raw JSON-RPC lines."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        self.stdin.write(runtime.encode_line(message))
        self.stdin.flush()
        return json.loads(self.stdout.readline())

    def pipes(self) -> set[int]:
        """Inodes of the two pipes between us and the shim (stdin's and stdout's)."""
        return {os.fstat(self.stdin.fileno()).st_ino, os.fstat(self.stdout.fileno()).st_ino}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.stdin, self.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass  # our last requests were never read: the shim is gone


WAITER = os.path.realpath("/bin/sh")


async def wait_waiting(pid: int, timeout: float = 10.0) -> psutil.Process:
    """Wait until the shim ``pid`` has become the /bin/sh waiter (exec'd after its hand-over) and has set up its
    trap for SIGINT (its first command: a signal before it would find the shell's default action); return it."""
    proc = psutil.Process(pid)
    with anyio.fail_after(timeout):
        while proc.exe() != WAITER or not _catches_sigint(pid):  # noqa: ASYNC110 - the OS offers no event
            await anyio.sleep(0.01)
    return proc


def _catches_sigint(pid: int) -> bool:
    """Whether ``pid`` has a handler for SIGINT (Linux: the SigCgt mask of /proc/PID/status); True elsewhere."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except OSError:
        pass
    return True


async def test_the_shim_hands_its_stdio_to_the_broker(broker_env: BrokerEnv, marker: str) -> None:
    """Seen from /proc: while a session runs, the broker holds the client's two pipes and the shim holds neither
    (it relays nothing, so a message crosses one process less): it waits as /bin/sh, reading the broker's last line
    from its socket on fd 3; closing stdin ends it with exit status 0. With MCPSHARE_PASS_STDIO=0 the shim
    keeps them and relays, and the broker never sees them."""
    argv = broker_env.shim("test", "--", *server_argv(marker=marker))
    for relay in (False, True):
        env = broker_env.run_env(**({"MCPSHARE_PASS_STDIO": "0"} if relay else {}))
        shim = RawShim(argv, env, broker_env.root)
        try:
            answer = await anyio.to_thread.run_sync(shim.ask, INITIALIZE)
            assert answer["id"] == 1 and "serverInfo" in answer["result"]
            called = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "x"}},
            }
            assert (await anyio.to_thread.run_sync(shim.ask, called))["result"]["content"][0]["text"] == "x"
            broker_pid = broker_env.broker_pid()
            assert broker_pid is not None
            pipes = shim.pipes()
            if relay:
                assert pipes <= pipe_inodes(shim.proc.pid) and not pipes & pipe_inodes(broker_pid)
            else:
                await wait_waiting(shim.proc.pid)
                assert pipes <= pipe_inodes(broker_pid) and not pipes & pipe_inodes(shim.proc.pid)
                held = {os.readlink(f"/proc/{shim.proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{shim.proc.pid}/fd")}
                assert os.readlink(f"/proc/{shim.proc.pid}/fd/1") == os.devnull
                assert len({name for name in held if name.startswith("socket:[")}) == 1  # its socket to the broker
            shim.stdin.close()
            assert await anyio.to_thread.run_sync(shim.stdout.read) == b""  # the end of its stdout, at once
            assert await anyio.to_thread.run_sync(shim.proc.wait, 10) == 0
            assert shim.proc.stderr is not None and shim.proc.stderr.read() == b""
        finally:
            shim.close()


async def test_the_broker_runs_on_uvloop_unless_switched_off(broker_env: BrokerEnv, marker: str) -> None:
    """uvloop is a dependency where it builds, so the broker runs on it and says so in its log; with
    MCPSHARE_UVLOOP=0 it runs on asyncio's own loop. Either way a call goes through the handed-over stdio."""
    pytest.importorskip("uvloop", reason="uvloop has no build for this platform")
    argv = broker_env.shim("test", "--no-autostart", "--", *server_argv(marker=marker))
    for switch, loop in (("", "uvloop"), ("0", "asyncio")):
        broker_env.env["MCPSHARE_UVLOOP"] = switch
        broker = broker_env.start_broker()
        pid = await broker_env.wait_ready()
        assert pid == broker.pid
        async with sdk_session(argv, env=broker_env.run_env()) as session:
            answer = await session.call_tool("echo", {"text": loop})
            assert answer.content[0].text == loop  # type: ignore[union-attr]
        broker.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(broker.wait, 10) == 0
        assert f"(pid {pid}, {loop}) starting" in Path(broker_env.paths.log).read_text()


async def test_lines_the_broker_must_wait_for_keep_later_lines_behind_them(broker_env: BrokerEnv, marker: str) -> None:
    """A handed-over client's requests go to the server from the broker's readiness callback when nothing needs
    waiting; a line that does (a bad line, a level change the server must acknowledge) holds every later line behind
    it. Sent in one write: the call after logging/setLevel finds the new level already at the server."""
    argv = broker_env.shim("test", "--", *server_argv(marker=marker))
    shim = RawShim(argv, broker_env.run_env(), broker_env.root)

    def call(request_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        params = {"name": name, "arguments": arguments}
        return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}

    lines = [
        b"this is not JSON\n",
        runtime.encode_line({"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": {"level": "error"}}),
        runtime.encode_line(call(3, "log", {"level": "info", "message": "below the level"})),
        runtime.encode_line(call(4, "echo", {"text": "after"})),
    ]
    try:
        assert "serverInfo" in (await anyio.to_thread.run_sync(shim.ask, INITIALIZE))["result"]
        shim.stdin.write(b"".join(lines))
        shim.stdin.flush()
        answers = [json.loads(await anyio.to_thread.run_sync(shim.stdout.readline)) for _ in range(4)]
        assert [answer["id"] for answer in answers] == [None, 2, 3, 4]
        assert answers[0]["error"]["code"] == -32700 and answers[1]["result"] == {}
        assert answers[2]["result"]["content"][0]["text"] == "filtered"  # setLevel reached the server first
        assert answers[3]["result"]["content"][0]["text"] == "after"
    finally:
        shim.close()


async def test_a_killed_shim_ends_its_session(broker_env: BrokerEnv, marker: str) -> None:
    """A client that kills its "server" (the shim) but keeps its pipes open still ends the session: the broker
    sees the shim's socket close, lets go of the client's pipes (the client reads the end of stdout) and releases
    its hold on the server, which stops after the idle grace."""
    argv = broker_env.shim("test", "--", *server_argv(marker=marker))
    shim = RawShim(argv, broker_env.run_env(), broker_env.root)
    try:
        assert "result" in await anyio.to_thread.run_sync(shim.ask, INITIALIZE)
        await wait_for_servers(marker, 1)
        shim.proc.kill()
        shim.proc.wait(timeout=10)
        with anyio.fail_after(10):
            assert await anyio.to_thread.run_sync(shim.stdout.read) == b""
            await wait_no_connections(broker_env)
        await wait_for_servers(marker, 0, timeout=5)
    finally:
        shim.close()


async def test_a_client_that_stops_reading_loses_only_its_own_session(
    broker_env: BrokerEnv, shim_env: dict[str, str], marker: str
) -> None:
    """A client that keeps asking but never reads its stdout cannot grow the broker without bound: once its
    unread answers pass the broker's 8 MB its session ends (in both shim modes; 400 answers are far fewer than a
    lease queue holds, so only the byte bound can end it). What it does read afterwards is whole lines, each
    answer once; its shim exits 1 naming the overflow (or the lost session); another client of the same server
    process is served throughout, and no server restarts."""
    argv = broker_env.shim("test", "--", *server_argv(marker=marker))
    env = {**os.environ, **shim_env}  # one environment for both clients: one server key
    shim = RawShim(argv, env, broker_env.root)
    text = "x" * 65536
    calls = 400  # ~26 MB of answers
    writer_done = anyio.Event()

    def write_requests() -> None:
        try:
            for index in range(calls):
                call = {"name": "echo", "arguments": {"text": text}}
                shim.stdin.write(
                    runtime.encode_line({"jsonrpc": "2.0", "id": 10 + index, "method": "tools/call", "params": call})
                )
            shim.stdin.close()
        except (BrokenPipeError, ValueError):
            pass  # the session ended and nobody reads our requests any more

    try:
        with anyio.fail_after(50):
            assert "result" in await anyio.to_thread.run_sync(shim.ask, INITIALIZE)
            async with sdk_session(argv, env=env, cwd=broker_env.root) as bystander:
                server = (await wait_for_servers(marker, 1))[0]
                async with anyio.create_task_group() as tg:

                    async def write() -> None:
                        await anyio.to_thread.run_sync(write_requests, abandon_on_cancel=True)
                        writer_done.set()

                    tg.start_soon(write)
                    status = control("status", broker_env)
                    while status is None or [s["clients"] for s in status["servers"]] != [1]:
                        assert tool_text(await bystander.call_tool("echo", {"text": "still here"})) == "still here"
                        status = control("status", broker_env)
                    # Now read what the slow client was sent before its session ended: then the end of stdout.
                    lines = (await anyio.to_thread.run_sync(shim.stdout.read)).splitlines()
                    await writer_done.wait()
                ids = [
                    json.loads(line)["id"] for line in lines
                ]  # whole lines only (the server may answer out of order)
                assert len(set(ids)) == len(ids) < calls and set(ids) <= set(range(10, 10 + calls))
                assert await anyio.to_thread.run_sync(shim.proc.wait, 10) == 1
                assert shim.proc.stderr is not None
                error = shim.proc.stderr.read().decode()
                assert "lost the connection" in error
                if "MCPSHARE_PASS_STDIO" not in shim_env:  # a shim that handed its stdio over is told why
                    assert "queue overflow" in error
                assert tool_text(await bystander.call_tool("echo", {"text": "after"})) == "after"
                assert [p.pid for p in marked_servers(marker)] == [server.pid]
                # The byte bound ended it, not the client's EOF (in relay mode the shim cannot tell the two apart).
                assert "overflowed its queue; disconnecting it" in Path(broker_env.paths.log).read_text()
    finally:
        shim.close()


async def wait_no_connections(env: BrokerEnv) -> None:
    """Poll the broker's status until no client connection is left."""
    status = control("status", env)
    while status is None or status["connections"]:
        await anyio.sleep(0.05)
        status = control("status", env)


def test_only_pipes_and_sockets_are_handed_over(tmp_path: Path) -> None:
    """A terminal or a file is never given to the broker (it would be put in non-blocking mode under whoever else
    uses it): the shim relays those itself. Decided by the OS's file types, here for a file, pipes and the switch."""
    probe = [sys.executable, "-c", "from mcpshare.shim import can_pass_stdio; print(can_pass_stdio())"]
    piped = subprocess.run(probe, stdin=subprocess.PIPE, capture_output=True, text=True, timeout=20)
    assert piped.stdout.strip() == "True"
    (tmp_path / "in").write_text("")
    with (tmp_path / "in").open("rb") as file:
        from_file = subprocess.run(probe, stdin=file, capture_output=True, text=True, timeout=20)
    assert from_file.stdout.strip() == "False"
    switched_off = subprocess.run(
        probe,
        stdin=subprocess.PIPE,
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "MCPSHARE_PASS_STDIO": "0"},
    )
    assert switched_off.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------- crashes and signals


async def test_broker_killed_with_sigkill_leaves_no_server(
    broker_env: BrokerEnv, shim_env: dict[str, str], marker: str, tmp_path: Path
) -> None:
    """The shim reports the lost broker clearly; the guardian kills the server; the next client starts a new
    broker despite the stale socket file."""
    argv = broker_env.shim("test", "--", *server_argv(marker=marker))
    errlog = tmp_path / "shim.stderr"
    with anyio.fail_after(30), errlog.open("w") as stderr:
        async with sdk_session(argv, env=shim_env, errlog=stderr) as session:
            server_pid = tool_json(await session.call_tool("whoami", {}))["pid"]
            broker_pid = broker_env.broker_pid()
            assert broker_pid is not None
            os.kill(broker_pid, signal.SIGKILL)
            with pytest.raises(Exception):  # noqa: B017 - whatever the SDK raises for a closed connection
                await session.call_tool("whoami", {})
        assert await wait_until_gone(server_pid, broker_pid, timeout=3) == []
        assert marked_servers(marker) == []
    assert "lost the connection to the mcpshare broker serving 'test'" in errlog.read_text()
    assert os.path.exists(broker_env.paths.socket)  # SIGKILL left the socket file behind
    with anyio.fail_after(30):
        async with sdk_session(argv, env=broker_env.env) as session:
            assert tool_json(await session.call_tool("whoami", {}))["pid"] != server_pid
        assert broker_env.broker_pid() not in (None, broker_pid)


async def test_sigterm_stops_every_server_and_removes_the_socket(
    broker_env: BrokerEnv, shim_env: dict[str, str], marker: str, tmp_path: Path
) -> None:
    argv = broker_env.shim("test", "--", *server_argv(marker=marker))
    other = broker_env.shim("other", "--", *server_argv("--name=other", marker=marker))
    errlog = tmp_path / "shim.stderr"
    with anyio.fail_after(30), errlog.open("w") as stderr:
        async with (
            sdk_session(argv, env=shim_env, errlog=stderr) as one,
            sdk_session(other, env=shim_env, errlog=stderr) as two,
        ):
            pids = [tool_json(await s.call_tool("whoami", {}))["pid"] for s in (one, two)]
            assert len(set(pids)) == 2
            brokers = broker_env.brokers()
            assert len(brokers) == 1
            os.kill(brokers[0].pid, signal.SIGTERM)
            assert await wait_gone(brokers, timeout=10) == []
        assert [pid for pid in pids if is_running(pid)] == []
        assert marked_servers(marker) == []
    assert not os.path.exists(broker_env.paths.socket)
    assert not runtime.lock_held(broker_env.paths.lock)
    log = Path(broker_env.paths.log).read_text()
    assert "received SIGTERM" in log and "stopped" in log
    said = errlog.read_text()
    assert said.count("lost the connection to the mcpshare broker") == 2
    if "MCPSHARE_PASS_STDIO" not in shim_env:  # a shim that handed its stdio over is told why
        assert said.count("the broker is stopping") == 2


# ---------------------------------------------------------------------------------------------- protocol


async def test_hello_errors_are_answered_plainly(broker_env: BrokerEnv) -> None:
    broker_env.start_broker()
    await broker_env.wait_ready()

    def ask(line: bytes) -> dict[str, Any]:
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(broker_env.paths.socket)
            sock.sendall(line)
            return json.loads(sock.makefile("rb").readline())

    hello = {"mcpshare": 1, "server": "nope", "config": None, "spec": None, "cwd": "/", "env": {}}
    assert ask(b"not json\n") == {"ok": False, "error": "the first line is not an mcpshare hello"}
    assert "protocol mismatch" in ask(runtime.encode_line({**hello, "mcpshare": 99}))["error"]
    assert ask(runtime.encode_line({**hello, "cwd": "relative"}))["error"] == "'cwd' must be an absolute path"
    unknown = ask(runtime.encode_line(hello))["error"]
    assert unknown.startswith("no MCP server named 'nope' in no config file found")
    bad_spec = ask(runtime.encode_line({**hello, "spec": {"command": "x", "share": "everyone"}}))["error"]
    assert bad_spec.startswith("invalid server command") and "share" in bad_spec
    missing = ask(runtime.encode_line({**hello, "spec": {"command": "/nonexistent/server"}}))["error"]
    assert "failed to start" in missing and "does not exist" in missing
    assert ask(runtime.encode_line({"mcpshare": 1, "control": "dance"})) == {
        "ok": False,
        "error": "unknown control command 'dance'",
    }


# ---------------------------------------------------------------------------------------------- HTTP front


async def test_http_front_shares_the_server_with_shims(broker_env: BrokerEnv, marker: str) -> None:
    """``serve --http``: SDK clients over Streamable HTTP (no shim process) and a shim client share one server;
    progress and a server-to-client request ride the originating request's stream; the token is required."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    server = server_argv(marker=marker)
    config = broker_env.root / "servers.json"
    config.write_text(json.dumps({"mcpServers": {"test": {"command": server[0], "args": server[1:]}}}))
    broker = broker_env.start_broker("--config", str(config), "--http", "0")
    await broker_env.wait_ready()
    status = control("status", broker_env)
    assert status is not None
    url = status["broker"]["http"] + "test" + f"?cwd={broker_env.root}"
    token_file = Path(broker_env.paths.token)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    authorized = {"Authorization": f"Bearer {token}"}

    async with create_mcp_http_client() as raw:
        assert (await raw.post(url, json={})).status_code == 401
        assert (await raw.post(url, json={}, headers={"Authorization": "Bearer wrong"})).status_code == 401
        host = {**authorized, "Host": "evil.example:80"}
        assert (await raw.post(url, json={}, headers=host)).status_code == 403

    asked: list[str] = []

    async def on_elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": "green"})

    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    with anyio.fail_after(40):
        async with (
            create_mcp_http_client(headers=authorized) as client,
            streamable_http_client(url, http_client=client) as (read, write),
            ClientSession(read, write, elicitation_callback=on_elicit) as over_http,
            sdk_session(
                broker_env.shim("test", "--config", str(config)), env=broker_env.env, cwd=broker_env.root
            ) as shim,
        ):
            await over_http.initialize()
            http_pid = tool_json(await over_http.call_tool("whoami", {}))["pid"]
            assert tool_json(await shim.call_tool("whoami", {}))["pid"] == http_pid  # same workspace, same key
            assert tool_text(await over_http.call_tool("ask", {"question": "colour?"})) == "accept:green"
            done = await over_http.call_tool("progress", {"steps": 3}, progress_callback=on_progress)
            assert tool_text(done) == "done" and progress == [1.0, 2.0, 3.0]
            assert asked == ["colour?"]
            status = control("status", broker_env)
            assert status is not None and status["servers"][0]["clients"] == 2
        await wait_for_servers(marker, 0, timeout=5)  # both left (the HTTP client with DELETE): idle grace 0.3 s
        os.kill(broker.pid, signal.SIGTERM)
        assert await anyio.to_thread.run_sync(broker.wait) == 0


async def test_an_autostarted_broker_exits_when_long_idle(broker_env: BrokerEnv, marker: str) -> None:
    """No client and no server for MCPSHARE_BROKER_EXIT_IDLE seconds: the autostarted broker leaves by itself."""
    env = {**broker_env.env, "MCPSHARE_BROKER_EXIT_IDLE": "0.5"}
    with anyio.fail_after(30):
        async with sdk_session(broker_env.shim("test", "--", *server_argv(marker=marker)), env=env) as session:
            await session.call_tool("whoami", {})
            brokers = broker_env.brokers()
        assert len(brokers) == 1
        assert await wait_gone(brokers, timeout=10) == []
    assert marked_servers(marker) == [] and not os.path.exists(broker_env.paths.socket)
    assert "no client and no server for 0.5 s" in Path(broker_env.paths.log).read_text()
