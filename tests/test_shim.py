"""The shim (``mcpshare connect``) on its own: argument parsing, the runtime directory, the wire codec, its imports,
its cost (RSS, first-byte latency) and its fallback to running the server directly when no broker can be had."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psutil
import pytest

from helpers import sdk_session, server_argv, tool_json, wait_until_gone
from mcpshare import runtime, shim, switches
from test_broker import INITIALIZE, WAITER, BrokerEnv, RawShim, control, marked_servers, wait_waiting

pytestmark = pytest.mark.timeout(60)

# What the console script runs once pyproject points it at mcpshare.entry:main (python -m adds runpy's imports).
ENTRY = [sys.executable, "-c", "import sys; from mcpshare.entry import main; sys.exit(main())"]
HEAVY = {"mcp", "mcp_types", "anyio", "typer", "rich", "click", "psutil", "pydantic", "httpx", "starlette", "sniffio"}


# ---------------------------------------------------------------------------------------------- the command line


def test_parse_args_forms() -> None:
    embedded = shim.parse_args(
        ["gh", "--env-keys", "A,B", "--share=global", "--cwd", "sub", "--", "npx", "-y", "x"], {}
    )
    assert (embedded.server, embedded.command, embedded.env_keys) == ("gh", ["npx", "-y", "x"], ["A", "B"])
    assert (embedded.share, embedded.cwd, embedded.config, embedded.autostart) == ("global", "sub", None, True)
    from_file = shim.parse_args(["gh", "--config", "c.toml", "--no-autostart"], {})
    assert (from_file.config, from_file.command, from_file.autostart) == ("c.toml", None, False)
    assert shim.parse_args(["gh"], {"MCPSHARE_NO_AUTOSTART": "1"}).autostart is False
    # Everything after "--" belongs to the server, even what looks like our own options.
    assert shim.parse_args(["gh", "--", "srv", "--config", "x", "--"], {}).command == ["srv", "--config", "x", "--"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the server NAME is missing"),
        (["a", "b"], "unexpected argument 'b' (put the server's command after --)"),
        (["a", "--bogus"], "unknown option --bogus"),
        (["a", "--config"], "--config needs a value"),
        (["a", "--"], "'--' must be followed by the server's command"),
        (["a", "--share", "all", "--", "x"], "--share must be one of workspace, global, thread, got 'all'"),
        (
            ["a", "--env-keys", "A"],
            "--env-keys, --share, --cwd and the server options describe an embedded command: give it after --",
        ),
        (
            ["a", "--protocol", "2020-01-01", "--", "x"],
            "--protocol must be one of 2025-11-25, auto, 2026-07-28, got '2020-01-01'",
        ),
        (["a", "--lanes", "0", "--", "x"], "--lanes must be a whole number from 1 to 16, got '0'"),
        (
            ["a", "--startup-timeout", "soon", "--", "x"],
            "--startup-timeout must be a positive number of seconds, got 'soon'",
        ),
        (["a", "--config", "f", "--", "x"], "give either --config FILE or a command after --, not both"),
    ],
)
def test_parse_args_errors(argv: list[str], message: str) -> None:
    with pytest.raises(shim.UsageError) as caught:
        shim.parse_args(argv, {})
    assert str(caught.value) == message


def test_hello_carries_only_the_declared_env_keys_in_the_spec() -> None:
    request = shim.parse_args(["gh", "--env-keys", "TOKEN,ABSENT", "--", "server", "arg"], {})
    environ = {"TOKEN": "t", "OTHER": "o"}
    hello = shim.build_hello(request, cwd="/work", environ=environ)
    assert hello == {
        "mcpshare": runtime.PROTOCOL,
        "server": "gh",
        "config": None,
        "spec": {
            "command": "server",
            "args": ["arg"],
            "env": {"TOKEN": "t"},
            "env_keys": ["TOKEN", "ABSENT"],
            "cwd": None,
            "share": None,
        },
        "cwd": "/work",
        "env": environ,
    }
    relative = shim.build_hello(shim.parse_args(["gh", "--config", "c.json"], {}), cwd="/work", environ={})
    assert (relative["config"], relative["spec"]) == ("/work/c.json", None)


def test_usage_and_help_exit_codes() -> None:
    helped = subprocess.run([*ENTRY, "connect", "--help"], capture_output=True, text=True, timeout=20)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: mcpshare connect NAME")
    wrong = subprocess.run([*ENTRY, "connect"], capture_output=True, text=True, timeout=20)
    assert wrong.returncode == 2 and wrong.stderr.startswith("mcpshare connect: the server NAME is missing\nusage:")


# ---------------------------------------------------------------------------------------------- runtime directory


def test_runtime_dir_depends_on_the_uid_alone(tmp_path: Path) -> None:
    """Hosts pass their servers different environments (Codex drops XDG_RUNTIME_DIR, the SDK drops TMPDIR): every
    one of them must find the same directory, so only MCPSHARE_RUNTIME_DIR is read from the environment."""
    uid = os.getuid()
    run_user, tmp = tmp_path / "run-user", tmp_path / "tmp"
    tmp.mkdir()
    roots = {"uid": uid, "run_user": str(run_user), "tmp": str(tmp)}
    environments = [
        {},
        {"XDG_RUNTIME_DIR": str(tmp_path), "TMPDIR": "/var/tmp"},
        {"XDG_RUNTIME_DIR": "/does/not/exist", "TMPDIR": str(tmp_path), "TEMP": "/x", "TMP": "/y"},
    ]
    assert {runtime.runtime_dir(env, **roots) for env in environments} == {str(tmp / f"mcpshare-{uid}")}
    (run_user / str(uid)).mkdir(parents=True, mode=0o700)  # a login session: /run/user/<uid> exists, ours
    assert {runtime.runtime_dir(env, **roots) for env in environments} == {str(run_user / str(uid) / "mcpshare")}
    (run_user / str(uid)).chmod(0o777)  # not private: not used
    assert runtime.runtime_dir({}, **roots) == str(tmp / f"mcpshare-{uid}")
    explicit = {"MCPSHARE_RUNTIME_DIR": "/x/y", "XDG_RUNTIME_DIR": str(tmp_path)}
    assert runtime.runtime_dir(explicit, **roots) == "/x/y"
    # The real roots: /run/user/<uid> when the login has it, else one fixed place under /tmp, never $TMPDIR.
    session = Path(f"/run/user/{uid}")
    expected = session / "mcpshare" if session.is_dir() and session.stat().st_uid == uid else f"/tmp/mcpshare-{uid}"
    assert runtime.runtime_dir({"TMPDIR": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}) == str(expected)


def test_ensure_runtime_dir_creates_private_dirs_and_refuses_unsafe_ones(tmp_path: Path) -> None:
    fresh = tmp_path / "a" / "run"
    runtime.ensure_runtime_dir(str(fresh))
    assert (fresh.stat().st_mode & 0o777) == 0o700
    fresh.chmod(0o755)
    runtime.ensure_runtime_dir(str(fresh))  # ours and readable by others, but nobody else could write: tightened
    assert (fresh.stat().st_mode & 0o777) == 0o700
    fresh.chmod(0o777)  # others could have put a socket of their own in it: refused, and left as it is
    with pytest.raises(runtime.RuntimeDirError, match="has mode 0777: others may write to it"):
        runtime.ensure_runtime_dir(str(fresh))
    assert (fresh.stat().st_mode & 0o777) == 0o777
    fresh.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(fresh)
    with pytest.raises(runtime.RuntimeDirError, match="not a directory"):
        runtime.ensure_runtime_dir(str(link))
    with pytest.raises(runtime.RuntimeDirError, match="socket path longer than 107 bytes"):
        runtime.ensure_runtime_dir(str(tmp_path / ("x" * 120)))
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        with pytest.raises(runtime.RuntimeDirError, match="belongs to uid 65534"):
            runtime.ensure_runtime_dir(str(foreign))


def test_lock_is_exclusive_and_records_the_pid(tmp_path: Path) -> None:
    path = str(tmp_path / "broker.lock")
    assert not runtime.lock_held(path) and runtime.broker_pid(path) is None
    fd = runtime.try_lock(path)
    assert fd is not None
    try:
        runtime.write_pid(fd)
        assert runtime.try_lock(path) is None
        assert runtime.lock_held(path) and runtime.broker_pid(path) == os.getpid()
    finally:
        os.close(fd)
    assert not runtime.lock_held(path) and runtime.broker_pid(path) is None


@pytest.mark.parametrize(
    "message",
    [
        {"ok": True, "pid": 12, "key": "abc"},
        {"env": {"A": "é ü", "B": "\udcff", "C": 'quote " and \\ and \n'}, "n": [1, -2, 3.5, None, True, False]},
        {"nested": {"list": [[], {}, {"x": [0]}]}, "big": 2**70},
    ],
)
def test_wire_codec_agrees_with_json(message: dict[str, object]) -> None:
    line = runtime.encode_line(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert json.loads(line) == message
    assert runtime.decode_line(line) == message
    assert runtime.decode_line(json.dumps(message).encode()) == message


@pytest.mark.parametrize("line", [b"", b"[1]", b"{", b'{"a": 1} x', b"nope"])
def test_wire_codec_rejects_what_json_rejects(line: bytes) -> None:
    with pytest.raises(ValueError):
        runtime.decode_line(line)


@pytest.mark.parametrize(
    ("error", "as_text"),
    [
        (None, None),
        ("the broker is stopping", "the broker is stopping"),
        ("two\nlines,\ta tab\r and é", "two lines, a tab  and é"),
        ("", "no reason given"),
    ],
)
def test_the_ending_line_reads_back_in_both_forms(error: str | None, as_text: str | None) -> None:
    """The broker's last line: JSON for older shims, or text on one printable line for the shell waiter."""
    for text, expected in ((False, error or as_text), (True, as_text)):
        line = runtime.ending_line(error, text=text)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert runtime.parse_ending(line.rstrip(b"\n")) == expected
    with pytest.raises(ValueError):
        runtime.parse_ending(b"eo")


# ---------------------------------------------------------------------------------------------- the shell waiter


def run_wait_script(
    sent: bytes, *, shell: str = "/bin/sh", env: dict[str, str] | None = None, signal_it: int | None = None
) -> tuple[int, str]:
    """Run the waiter's script under ``shell`` (named sh, as the shim runs /bin/sh) with one end of a socket pair as
    fd 3; send ``sent`` then close (or signal it): its exit status and stderr."""
    import socket

    ours, theirs = socket.socketpair()
    argv = ["sh", "-c", shim.WAIT_SCRIPT, "mcpshare connect t (waiting)", "head(", ")tail", "default reason"]
    proc = subprocess.Popen(
        argv,
        executable=shell,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env if env is not None else {},
        pass_fds=(3,),
        preexec_fn=lambda: os.dup2(theirs.fileno(), 3),  # (fds are closed after it runs, but for pass_fds)
    )
    theirs.close()
    with ours:
        if signal_it is not None:
            time.sleep(0.3)  # let it reach its read
            proc.send_signal(signal_it)
        else:
            ours.sendall(sent)
            ours.shutdown(socket.SHUT_WR)
        _, err = proc.communicate(timeout=10)
    return proc.returncode, err.decode()


@pytest.mark.parametrize(
    ("sent", "status", "said"),
    [
        (b"eof\n", 0, ""),
        (runtime.ending_line("the broker is stopping", text=True), 1, "head(the broker is stopping)tail\n"),
        (runtime.ending_line("x\ny", text=True), 1, "head(x y)tail\n"),
        (b"", 1, "head(default reason)tail\n"),  # the broker died before a word
        (b"eof", 1, "head(default reason)tail\n"),  # ... or in the middle of its last line
        (b"error \n", 1, "head(default reason)tail\n"),
        (b'{"end":"eof"}\n', 1, "head(default reason)tail\n"),  # JSON is for the interpreter (never asked for)
    ],
)
def test_the_wait_script_exits_as_the_interpreter_would(sent: bytes, status: int, said: str) -> None:
    assert run_wait_script(sent) == (status, said)


def test_the_wait_script_exits_130_on_ctrl_c_like_the_interpreter() -> None:
    import signal

    assert run_wait_script(b"", signal_it=signal.SIGINT) == (130, "")


@pytest.mark.skipif(not os.access("/bin/bash", os.X_OK), reason="needs bash")
def test_the_users_shell_settings_stay_out_of_the_waiter() -> None:
    """Where /bin/sh is bash, SHELLOPTS (or BASH_ENV, ENV, exported functions) from the client's environment would
    run with the script (here: xtrace lines on the client's stderr); the shim leaves them out."""
    polluted = {"SHELLOPTS": "xtrace", "PATH": os.defpath, "KEEP": "kept"}
    assert run_wait_script(b"eof\n", shell="/bin/bash", env=polluted)[1] != ""  # what the guard is for
    cleaned = shim.waiter_environ(polluted)
    assert cleaned == {"PATH": os.defpath, "KEEP": "kept"}
    assert run_wait_script(b"eof\n", shell="/bin/bash", env=cleaned) == (0, "")


# ---------------------------------------------------------------------------------------------- imports and cost


def test_the_shim_path_imports_only_the_standard_library() -> None:
    """``mcpshare connect`` through the console-script entry loads no SDK, anyio, typer, rich or psutil."""
    code = (
        "import sys, contextlib, io\n"
        "from mcpshare.entry import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['connect', '--help'])\n"
        "import threading\n"  # what relay() adds
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True)
    modules = set(done.stdout.split())
    tops = {name.split(".")[0] for name in modules}
    assert not tops & HEAVY
    ours = {name for name in modules if name.split(".")[0] == "mcpshare"}
    assert ours == {
        "mcpshare",
        "mcpshare.entry",
        "mcpshare.shim",
        "mcpshare.runtime",
        "mcpshare.connect_line",
        "mcpshare.switches",
    }
    site_extras = {"__main__", "_distutils_hack", "sitecustomize", "usercustomize", "_virtualenv"}
    assert tops - {"mcpshare"} - site_extras <= set(sys.stdlib_module_names)
    assert "re" not in modules  # the wire codec avoids json's import of re (~1 MB)


def _measure_one_shim(argv: list[str], env: dict[str, str], initialize: bytes) -> tuple[float, float, float]:
    """Start a shim, send initialize: (ms until the first byte of the answer, RSS and PSS in MB once it waits)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(initialize)
        proc.stdin.flush()
        first = proc.stdout.read(1)
        latency = (time.perf_counter() - started) * 1000
        answer = json.loads(first + proc.stdout.readline())
        assert answer["id"] == 1 and answer["result"]["serverInfo"]["name"] == "testserver"
        waiting = psutil.Process(proc.pid)
        deadline = time.monotonic() + (10 if env.get(switches.WAITER) != "python" else 0.2)
        while waiting.exe() != WAITER and time.monotonic() < deadline:
            time.sleep(0.01)
        memory = waiting.memory_full_info()
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return latency, memory.rss / 1e6, memory.pss / 1e6


async def test_shim_memory_and_first_byte_latency(broker_env: BrokerEnv, marker: str) -> None:
    """Measured, not asserted (machines differ; bench/ has the side-by-side figures): the first byte relayed and the
    memory of a connected shim, waiting as /bin/sh or as the interpreter (MCPSHARE_WAITER=python), interleaved,
    with the broker and the server already running. The shim runs with -X importtime, which proves on the real
    relay path that nothing outside the standard library is imported."""
    server = server_argv(marker=marker)
    argv = [*ENTRY, "connect", "test", "--", *server]
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    initialize = runtime.encode_line({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
    envs = {"sh": broker_env.run_env(), "python": broker_env.run_env(**{switches.WAITER: "python"})}
    measured: dict[str, list[tuple[float, float, float]]] = {"sh": [], "python": []}
    with anyio.fail_after(40):
        async with sdk_session(argv, env=broker_env.env):  # the broker and the server are warm from here on
            for _ in range(5):
                for waiter, env in envs.items():
                    measured[waiter].append(await anyio.to_thread.run_sync(_measure_one_shim, argv, env, initialize))
            traced = await anyio.run_process(
                [sys.executable, "-X", "importtime", *argv[1:]], input=initialize, env=envs["sh"], check=False
            )
    imported = {line.split("|")[-1].strip() for line in traced.stderr.decode().splitlines() if "|" in line}
    assert "mcpshare.shim" in imported
    assert {name.split(".")[0] for name in imported} & HEAVY == set()
    for waiter, rows in measured.items():
        latency, rss, pss = ([row[i] for row in rows] for i in range(3))
        print(
            f"\nshim waiting as {waiter}: RSS {statistics.median(rss):.1f} MB, PSS {statistics.median(pss):.2f} MB; "
            f"first byte relayed: median {statistics.median(latency):.0f} ms (max {max(latency):.0f})"
        )


async def wait_connections(env: BrokerEnv, count: int, timeout: float = 10.0) -> None:
    """Poll the broker's status until it counts ``count`` client connections."""
    with anyio.fail_after(timeout):
        while (status := control("status", env)) is None or status["connections"] != count:  # noqa: ASYNC110
            await anyio.sleep(0.05)


def lost_message(env: BrokerEnv, reason: str) -> str:
    return (
        f"mcpshare connect: lost the connection to the mcpshare broker serving 'test' ({reason}; its log: "
        f"{env.paths.log}). Reconnect the MCP server in your client.\n"
    )


ECHO = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}


async def test_twenty_connected_shims_cost_under_1_mb_pss_each_and_end_one_by_one(
    broker_env: BrokerEnv, marker: str
) -> None:
    """20 shims holding live sessions, each waiting as /bin/sh on its socket: at most 1 MB PSS each (psutil).
    Killing one ends its session only; a client closing its pipes ends its session with exit status 0; the broker
    dying makes every other shim exit 1 with the message that says so."""
    broker = broker_env.start_broker()
    await broker_env.wait_ready()
    argv = broker_env.shim("test", "--no-autostart", "--", *server_argv(marker=marker))
    env = broker_env.run_env()
    shims: list[RawShim] = []
    try:
        with anyio.fail_after(50):
            for _ in range(20):
                shims.append(RawShim(argv, env, broker_env.root))
                assert "serverInfo" in (await anyio.to_thread.run_sync(shims[-1].ask, INITIALIZE))["result"]
            waiting = [await wait_waiting(shim.proc.pid) for shim in shims]
            memory = [proc.memory_full_info() for proc in waiting]
            rss, pss, uss = ([getattr(m, kind) / 1e6 for m in memory] for kind in ("rss", "pss", "uss"))
            print(
                f"\n20 waiting shims: PSS median {statistics.median(pss):.2f} MB (max {max(pss):.2f}), "
                f"RSS {statistics.median(rss):.2f} MB, USS {statistics.median(uss):.2f} MB"
            )
            assert max(pss) <= 1.0
            server = marked_servers(marker)
            assert len(server) == 1
            await wait_connections(broker_env, 20)

            shims[0].proc.kill()
            assert await anyio.to_thread.run_sync(shims[0].proc.wait, 10) == -9
            assert await anyio.to_thread.run_sync(shims[0].stdout.read) == b""  # the broker let go of its pipes
            await wait_connections(broker_env, 19)
            echoed = await anyio.to_thread.run_sync(shims[1].ask, ECHO)
            assert echoed["result"]["content"][0]["text"] == "hi"

            shims[1].stdin.close()
            shims[1].stdout.close()
            assert await anyio.to_thread.run_sync(shims[1].proc.wait, 10) == 0
            assert shims[1].proc.stderr is not None and shims[1].proc.stderr.read() == b""
            await wait_connections(broker_env, 18)
            assert marked_servers(marker) == server

            broker.kill()
            for shim in shims[2:]:
                assert await anyio.to_thread.run_sync(shim.proc.wait, 10) == 1
                assert shim.proc.stderr is not None
                said = shim.proc.stderr.read().decode()
                assert said == lost_message(broker_env, "the broker stopped or crashed, or ended this session")
            assert await wait_until_gone(server[0].pid, timeout=5) == []  # the broker's guardian
    finally:
        for shim in shims:
            shim.close()


@pytest.mark.parametrize("waiter", ["sh", "python"])
async def test_either_waiter_ends_with_the_status_the_interpreter_gave(
    broker_env: BrokerEnv, marker: str, waiter: str
) -> None:
    """The shell waiter and the interpreter (MCPSHARE_WAITER=python, or no /bin/sh) end alike: 0 when the client
    closed its stdin, 130 on Ctrl-C (which ends that session), 1 with the broker's reason when it stops."""
    import signal

    broker = broker_env.start_broker()
    await broker_env.wait_ready()
    env = broker_env.run_env(**({"MCPSHARE_WAITER": "python"} if waiter == "python" else {}))
    argv = broker_env.shim("test", "--no-autostart", "--", *server_argv(marker=marker))
    shims = [RawShim(argv, env, broker_env.root) for _ in range(3)]
    try:
        with anyio.fail_after(40):
            for shim in shims:
                assert "serverInfo" in (await anyio.to_thread.run_sync(shim.ask, INITIALIZE))["result"]
            if waiter == "sh":
                for shim in shims:
                    await wait_waiting(shim.proc.pid)
            else:
                await anyio.sleep(0.3)
                assert {psutil.Process(shim.proc.pid).exe() for shim in shims} == {os.path.realpath(sys.executable)}
            normal, interrupted, stopped = shims
            normal.stdin.close()
            assert await anyio.to_thread.run_sync(normal.proc.wait, 10) == 0
            interrupted.proc.send_signal(signal.SIGINT)
            assert await anyio.to_thread.run_sync(interrupted.proc.wait, 10) == 130
            await wait_connections(broker_env, 1)
            broker.send_signal(signal.SIGTERM)
            assert await anyio.to_thread.run_sync(stopped.proc.wait, 10) == 1
            said = [shim.proc.stderr.read().decode() for shim in shims if shim.proc.stderr is not None]
            assert said == ["", "", lost_message(broker_env, "the broker is stopping")]
            assert await anyio.to_thread.run_sync(broker.wait, 10) == 0
    finally:
        for shim in shims:
            shim.close()


# ---------------------------------------------------------------------------------------------- fallback


async def test_without_a_broker_the_shim_runs_the_server_itself(
    broker_env: BrokerEnv, marker: str, tmp_path: Path
) -> None:
    """No broker and autostart off: the shim execs the embedded command in its own place and says so."""
    errlog = tmp_path / "stderr"
    argv = broker_env.shim("test", "--", *server_argv(marker=marker))
    with anyio.fail_after(30), errlog.open("w") as stderr:
        env = {**broker_env.env, "MCPSHARE_NO_AUTOSTART": "1"}
        async with sdk_session(argv, env=env, errlog=stderr) as session:
            who = tool_json(await session.call_tool("whoami", {}))
            servers = marked_servers(marker)
            assert [p.pid for p in servers] == [who["pid"]]
            assert servers[0].ppid() == os.getpid()  # exec'd in the shim's place: the client's own child
    text = errlog.read_text()
    assert "no mcpshare broker is running" in text and "(autostart is off)" in text
    assert "running MCP server 'test' directly, NOT shared: python" in text
    assert broker_env.brokers() == []


@pytest.mark.parametrize("problem", ["under-a-file", "foreign-owner"])
async def test_an_unusable_runtime_dir_falls_back_too(
    broker_env: BrokerEnv, marker: str, tmp_path: Path, problem: str
) -> None:
    if problem == "under-a-file":
        (tmp_path / "a-file").write_text("")
        directory, expected = (
            tmp_path / "a-file" / "run",
            "cannot use the runtime directory: [Errno 20] Not a directory",
        )
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a directory to another uid needs root")
        directory, expected = tmp_path / "foreign", "cannot use the runtime directory: [Errno 1] the mcpshare runtime"
        directory.mkdir(mode=0o700)
        os.chown(directory, 65534, 65534)
    errlog = tmp_path / "stderr"
    env = {**broker_env.env, runtime.ENV_RUNTIME_DIR: str(directory)}
    with anyio.fail_after(30), errlog.open("w") as stderr:
        async with sdk_session(broker_env.shim("test", "--", *server_argv(marker=marker)), env=env, errlog=stderr) as s:
            assert tool_json(await s.call_tool("whoami", {}))["pid"] == marked_servers(marker)[0].pid
    text = errlog.read_text()
    assert expected in text and "NOT shared" in text


async def test_fallback_reads_the_config_file(broker_env: BrokerEnv, marker: str, tmp_path: Path) -> None:
    server = server_argv("--show-env=FROM_CONFIG", marker=marker)
    config = tmp_path / "mcp.json"
    entry = {"command": server[0], "args": server[1:], "env": {"FROM_CONFIG": "yes"}}
    config.write_text(json.dumps({"mcpServers": {"conf": entry}}))
    env = {**broker_env.env, "MCPSHARE_NO_AUTOSTART": "1"}
    with anyio.fail_after(30), (tmp_path / "stderr").open("w") as stderr:
        async with sdk_session(broker_env.shim("conf", "--config", str(config)), env=env, errlog=stderr) as session:
            assert tool_json(await session.call_tool("whoami", {}))["env"] == {"FROM_CONFIG": "yes"}


def test_without_a_broker_or_a_command_it_fails_clearly(broker_env: BrokerEnv) -> None:
    done = subprocess.run(
        [*ENTRY, "connect", "ghost"],
        env=broker_env.run_env(MCPSHARE_NO_AUTOSTART="1"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        cwd=broker_env.root,
    )
    assert done.returncode == 1
    assert "no mcpshare broker is running" in done.stderr
    assert "cannot run 'ghost' directly: unknown MCP server 'ghost'" in done.stderr
