"""``mcpshare connect``: the stdio shim an MCP client launches instead of the real server.

The client thinks it started a server; the shim connects to the broker's Unix socket, says which server it wants
(and its cwd and environment, which decide the pool key), and then relays bytes both ways. The broker gives the
connection a virtual session on the one shared process of that key, so its ``initialize`` is answered from the
cached handshake and it sees only its own responses, progress and server-to-client requests.

Why so frugal. One shim runs per (client x server), so its cost is multiplied: a CPython process that imports the
SDK is ~40 MB and half a second. This module and :mod:`mcpshare.runtime` import only cheap standard-library
modules (no SDK, anyio, typer, rich or psutil; test_shim.py checks it), parse arguments by hand (argparse is slow
to import): ~10 MB for the tens of milliseconds until it connects (then it waits as a shell, see below).

Why it hands its stdio over. A relaying shim costs every message two more process wake-ups (client -> shim ->
broker and back), which doubled the latency of a quick call. So when stdin and stdout are pipes or sockets (what
every MCP client gives a server), the shim passes them to the broker over the Unix socket (``SCM_RIGHTS``) and then
only waits: the broker reads the client's requests and writes its answers directly, as a server would, and tells
the shim how the session ended so it can exit with the right status and message. Otherwise (a terminal, a file, a
broker without the feature, or ``MCPSHARE_PASS_STDIO=0``) it relays the bytes itself with two plain threads.

Why it then waits as ``/bin/sh``. One shim runs per (client x server): Codex with 10 threads x 3 servers runs 30.
Once the stdio is handed over, all a shim still does is wait for the broker's last line on its socket and exit with
the right status and message, and a Python interpreter does that for ~4 MB of memory of its own (PSS). So the shim
``exec``s the one waiter every POSIX system has, ``/bin/sh``, keeping its pid, with the socket as fd 3 and a
script of builtins only (``read``, ``case``, ``printf``): nothing forks, so the socket has one holder and killing the
shim still ends its session. dash (Debian's sh) costs ~0.2 MB PSS and bash ~0.4 MB, against ~4.2 MB for Python;
the broker sends that last line as plain text when asked (``"ending": "text"``). Where there is no ``/bin/sh``, or
with ``MCPSHARE_WAITER=python``, the interpreter waits as before.

Why autostart. The first client to need the broker starts it, detached (double fork, new session). Ten clients
starting at once may each start one; each broker takes an exclusive ``flock`` before doing anything else, the
losers exit quietly, and the shims retry their connection with a bounded backoff until the winner listens.

Why a fallback, and when not. When the broker cannot be reached or started, or answers that it cannot take anyone
now (a resource limit, another protocol version), the client must still work: if the shim knows the real command
(embedded after ``--``, or found in the config file), it says so on stderr and ``exec``s the real server in its own
place, so the client talks to it directly (unshared). When the broker was reached and the server itself failed,
or the config is wrong, running it again directly would fail the same way (twice as slowly, for a server that
hangs): the shim prints the broker's error once and exits 1.
"""

from __future__ import annotations

import _socket
import os
import stat
import sys
import time
from collections.abc import Callable, Mapping

from mcpshare import runtime, switches
from mcpshare.connect_line import ConnectLine, HelpRequested, UsageError, parse

TYPE_CHECKING = False  # typing is not imported: the shim stays cheap
if TYPE_CHECKING:
    from mcpshare.config import StdioServerConfig

USAGE = """\
usage: mcpshare connect NAME [--config FILE] [--no-autostart]
       mcpshare connect NAME [--env-keys A,B] [--share SCOPE] [--cwd DIR] [server options] [--no-autostart]
                             -- COMMAND [ARGS...]

Relay stdio between an MCP client and the shared MCP server NAME run by the mcpshare broker (started on demand).

  --config FILE     the broker reads server NAME from FILE (Codex .toml or mcpServers .json)
  -- COMMAND ...    the server's command line; the broker runs it as server NAME (what `mcpshare wrap` writes)
  --env-keys A,B    with a command: the environment variables that belong to the server (their values are part
                    of the pool key, so clients with different values never share a process)
  --share SCOPE     with a command: workspace (default: one process per client cwd), global, or thread
  --cwd DIR         with a command: the server's working directory (relative to the client's cwd)
  --protocol P      with a command: 2025-11-25 (default), auto or 2026-07-28 (the era the broker speaks to it)
  --lanes N         with a command: up to N processes, so calls that ask their client need not wait (default 1)
  --exclusive-tools A,B
                    with a command: tools known to ask their client (run one at a time per process)
  --startup-timeout S
                    with a command: seconds the server has to start and answer its handshake (default 30)
  --no-autostart    never start a broker (also: MCPSHARE_NO_AUTOSTART=1)

With neither --config nor a command, the broker looks NAME up in its own configs. If the broker cannot be reached,
the shim runs the server directly (unshared) when it knows the command, and says so on stderr.
"""

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a broker to come up (the autostarted one imports the SDK: ~1 s on a cold cache);
``MCPSHARE_CONNECT_TIMEOUT`` sets it."""
HELLO_TIMEOUT = 180.0
"""Seconds to wait for the broker's answer; it answers once the server is started (startup_timeout_sec, 30 s
by default, longer for a first ``npx`` download), so this only catches a broker that hangs."""
RESPAWN_INTERVAL = 3.0
"""Seconds between two autostart attempts of one shim, while no broker holds the lock."""
CHUNK = 65536

WAITER_SHELL = "/bin/sh"
WAITER_FD = 3
"""Where the waiting shell finds the broker's socket. Not on stdin: bash, unless invoked as sh, takes a socket on
its stdin for rshd's and runs ~/.bashrc."""
WAIT_SCRIPT = (
    "trap 'exit 130' INT; "  # as the interpreter does on Ctrl-C
    f"IFS= read -r end <&{WAITER_FD} || end=; "  # no newline: the broker died mid-line, or before saying anything
    "case $end in eof) exit 0;; 'error '?*) why=${end#error };; *) why=$3;; esac; "
    'printf "%s%s%s\\n" "$1" "$why" "$2" >&2; exit 1'
)
"""What the waiting shell runs: builtins only, so nothing else ever holds the socket. ``$0`` names it in ``ps``;
``$1``/``$2`` are the message around the reason, ``$3`` the reason for a broker that went away without one (see
:func:`_lost`, which words the same message for the interpreter)."""
_SHELL_SETTINGS = ("ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "POSIXLY_CORRECT")
"""Variables through which a user's shell settings would run in the waiter (startup files, xtrace...)."""


class BrokerUnavailable(Exception):
    """The broker cannot be reached, started, or refused us; the message says why, for the user."""


class NoBroker(BrokerUnavailable):
    """Nothing listens on the socket (and we were not to start a broker)."""


class BrokerRefused(Exception):
    """The broker was reached and answered that it cannot serve this server (it failed to start, or its config is
    wrong): running it directly would fail the same way, so the shim says why and exits non-zero."""


Request = ConnectLine


def parse_args(argv: list[str], environ: dict[str, str] | None = None) -> Request:
    """The command line as a :class:`Request`; :class:`UsageError` with a one-line reason otherwise."""
    env = os.environ if environ is None else environ
    request = parse(argv)
    if switches.flag(switches.NO_AUTOSTART, env):
        request.autostart = False
    return request


def can_pass_stdio(environ: dict[str, str] | None = None) -> bool:
    """Whether our stdin and stdout can be handed to the broker: both pipes or sockets, and not turned off.

    Not a terminal or a file: the broker puts what it gets in non-blocking mode, which would leak into a shell
    sharing the terminal, and a file has no reader to wait for.
    """
    env = os.environ if environ is None else environ
    if not switches.flag(switches.PASS_STDIO, env) or not hasattr(_socket, "SCM_RIGHTS"):
        return False
    for fd in (0, 1):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return False
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return False
    return True


def waiter(environ: dict[str, str] | None = None) -> str | None:
    """The shell to wait as after a hand-over (:data:`WAITER_SHELL`), or None: the interpreter waits itself."""
    env = os.environ if environ is None else environ
    if switches.choice(switches.WAITER, env) == "python" or not os.access(WAITER_SHELL, os.X_OK):
        return None
    return WAITER_SHELL


def build_hello(
    request: Request, *, cwd: str, environ: dict[str, str], pass_stdio: bool = False, text_ending: bool = False
) -> dict[str, object]:
    """The first line sent to the broker (see :mod:`mcpshare.runtime` for the protocol)."""
    spec = None
    if request.command is not None:
        spec = {
            "command": request.command[0],
            "args": request.command[1:],
            "env": {key: environ[key] for key in request.env_keys if key in environ},
            "env_keys": request.env_keys,
            "cwd": request.cwd,
            "share": request.share,
            **request.spec_fields(),
        }
    config = os.path.join(cwd, request.config) if request.config is not None else None
    hello: dict[str, object] = {
        "mcpshare": runtime.PROTOCOL,
        "server": request.server,
        "config": config,
        "spec": spec,
        "cwd": cwd,
        "env": environ,
    }
    if pass_stdio:
        hello["stdio"] = runtime.STDIO_PASS
        if text_ending:
            hello["ending"] = runtime.ENDING_TEXT
    return hello


# ---------------------------------------------------------------------------------------------- reaching the broker


def open_connection(
    paths: runtime.RuntimePaths, *, autostart: bool, timeout: float, server_keys: Callable[[], list[str]] | None = None
) -> _socket.socket:
    """A connected socket to the broker, starting one if allowed; :class:`BrokerUnavailable` otherwise.

    Connection attempts back off from 5 ms to 100 ms; a broker is (re)started only while nobody holds the broker
    lock, and at most every :data:`RESPAWN_INTERVAL` seconds, so a crowd of shims does not fork a crowd of brokers.
    A broker we start gets our environment without ``server_keys()`` (see :func:`runtime.broker_environment`).

    Before anything is sent, the runtime directory is checked (ours, private) and so is the process at the other
    end of the socket (our uid): the hello carries our environment, which is nobody else's business.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    last_spawn: float | None = None
    while True:
        try:
            runtime.check_runtime_dir(paths.directory)
        except FileNotFoundError:
            pass  # no broker ever ran here: nothing to connect to yet
        except OSError as exc:
            raise BrokerUnavailable(f"cannot use the runtime directory: {exc}") from None
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(paths.socket)
            _check_peer(sock, paths)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
        except BrokerUnavailable:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise BrokerUnavailable(f"cannot connect to the broker at {paths.socket}: {exc.strerror or exc}") from None
        if not autostart:
            raise NoBroker(f"no mcpshare broker is running at {paths.socket} (autostart is off)")
        now = time.monotonic()
        if now >= deadline:
            raise BrokerUnavailable(f"the mcpshare broker did not come up within {timeout:g} s (log: {paths.log})")
        if (last_spawn is None or now - last_spawn >= RESPAWN_INTERVAL) and not _lock_held(paths):
            try:
                runtime.ensure_runtime_dir(paths.directory)
                start_broker(paths, runtime.broker_environment(os.environ, server_keys() if server_keys else ()))
            except OSError as exc:
                raise BrokerUnavailable(f"cannot start the mcpshare broker: {exc}") from None
            last_spawn = now
        time.sleep(min(delay, max(deadline - now, 0.0)))
        delay = min(delay * 2, 0.1)


def _check_peer(sock: _socket.socket, paths: runtime.RuntimePaths) -> None:
    uid = runtime.peer_uid(sock)
    if uid is not None and uid != os.getuid():
        raise BrokerUnavailable(f"the process listening on {paths.socket} runs as uid {uid}, not as us; not using it")


def _lock_held(paths: runtime.RuntimePaths) -> bool:
    try:
        return runtime.lock_held(paths.lock)
    except OSError:
        return False


def broker_command() -> list[str]:
    """How to run a broker with this very installation (``-P``: the client's cwd must not shadow our package)."""
    return [sys.executable, "-P", "-m", "mcpshare", "serve", "--autostarted"]


def start_broker(paths: runtime.RuntimePaths, environ: dict[str, str] | None = None) -> None:
    """Start a detached broker: double fork, new session, stdio on /dev/null and its stderr on the log file, and
    ``environ`` (default: ours) for its environment.

    Detached so it outlives this client and is nobody's child to reap; inheritable descriptors the client gave us
    are closed, or the broker would hold the client's pipes open forever. A failed exec is reported through a
    close-on-exec pipe (as subprocess does), so it fails this call at once instead of a connect timeout later.
    """
    argv = broker_command()
    log_fd = os.open(paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    status_r, status_w = os.pipe()  # both close-on-exec: EOF on status_r means the exec happened
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(status_r)
            _exec_detached(argv, log_fd, status_w, dict(os.environ) if environ is None else environ)
        os.close(status_w)
        status_w = -1
        os.waitpid(pid, 0)
        failure = os.read(status_r, 256)
    finally:
        os.close(log_fd)
        os.close(status_r)
        if status_w >= 0:
            os.close(status_w)
    if failure:
        raise OSError(f"cannot run {argv[0]!r}: {failure.decode(errors='replace')}")


def _exec_detached(
    argv: list[str], log_fd: int, status_fd: int, environ: dict[str, str]
) -> None:  # pragma: no cover - a forked child
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, status_fd)
        os.closerange(status_fd + 1, max(os.sysconf("SC_OPEN_MAX"), status_fd + 1))
        try:
            os.chdir(os.path.expanduser("~"))  # not the client's cwd: a broker must not pin a project directory
        except OSError:
            os.chdir("/")
        os.execve(argv[0], argv, environ)
    except BaseException as exc:
        try:
            os.write(status_fd, str(exc).encode(errors="replace")[:256])
        except OSError:
            pass
    os._exit(127)


def handshake(sock: _socket.socket, hello: dict[str, object], *, timeout: float) -> tuple[dict[str, object], bytes]:
    """Send a hello or control line, read the one-line answer; return it and any bytes that followed it."""
    sock.settimeout(timeout)
    try:
        sock.sendall(runtime.encode_line(hello))
        read = _read_line(sock, b"", limit=runtime.MAX_HELLO_BYTES)
        if read is None:
            raise BrokerUnavailable("the broker closed the connection without answering")
        return runtime.decode_line(read[0]), read[1]
    except TimeoutError:
        raise BrokerUnavailable(f"no answer from the broker within {timeout:g} s") from None
    except OSError as exc:
        raise BrokerUnavailable(f"lost the broker during the hello: {exc.strerror or exc}") from None
    except ValueError:
        raise BrokerUnavailable("the broker's answer is not a protocol line") from None
    finally:
        sock.settimeout(None)


def _read_line(sock: _socket.socket, buffer: bytes, *, limit: int | None = None) -> tuple[bytes, bytes] | None:
    """The next line from ``sock`` (``buffer`` holds what was already received) and the bytes after it; None when
    the socket ends first. ValueError past ``limit`` bytes with no newline; OSError as ``recv`` raises it."""
    while b"\n" not in buffer:
        chunk = sock.recv(CHUNK)
        if not chunk:
            return None
        buffer += chunk
        if limit is not None and len(buffer) > limit:
            raise ValueError("line too long")
    line, _, rest = buffer.partition(b"\n")
    return line, rest


def control(
    command: str, *, paths: runtime.RuntimePaths | None = None, timeout: float = 30.0, **fields: object
) -> dict[str, object] | None:
    """Send one control request (status, stop, restart, ping) and return the answer; None when no broker runs.

    Never starts a broker: asking a broker that is not there for its status must not create one. Other failures
    (permissions, a broker that does not answer) raise :class:`BrokerUnavailable`.
    """
    paths = paths or runtime.RuntimePaths.default()
    try:
        sock = open_connection(paths, autostart=False, timeout=0)
    except NoBroker:
        return None
    try:
        answer, _ = handshake(sock, {"mcpshare": runtime.PROTOCOL, "control": command, **fields}, timeout=timeout)
    finally:
        sock.close()
    return answer


# ---------------------------------------------------------------------------------------------- relaying


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Relay:
    """Two blocking copies: the client's stdin -> socket in a thread, socket -> the client's stdout here."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.client_closed = False

    def pump_stdin(self) -> None:
        while True:
            try:
                data = os.read(0, CHUNK)
            except OSError:
                data = b""
            if not data:
                # Set before the half-close: the broker answers our EOF by closing, and the reader must then know
                # the end was the client's doing, not a broker failure.
                self.client_closed = True
                try:
                    self.sock.shutdown(_socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                self.sock.sendall(data)
            except OSError:
                return  # the broker is gone: the reader sees it too, and reports it

    def pump_socket(self, leftover: bytes) -> bool:
        """Copy until the broker closes; True if the end was normal (the client closed, or stopped reading)."""
        try:
            if leftover:
                _write_all(1, leftover)
            while True:
                data = self.sock.recv(CHUNK)
                if not data:
                    return self.client_closed
                _write_all(1, data)
        except BrokenPipeError:
            return True  # the client closed our stdout: it is going away
        except OSError:
            return self.client_closed


def relay(sock: _socket.socket, leftover: bytes, *, server: str, log: str) -> int:
    """Relay until either side ends; 0 when the client ended it, 1 (with a message) when the broker went away."""
    import threading  # only now: the fallback path never needs it

    state = _Relay(sock)
    threading.Thread(target=state.pump_stdin, name="stdin->broker", daemon=True).start()
    normal = state.pump_socket(leftover)
    if normal:
        return 0
    return _lost(server, log)


LOST_REASON = "the broker stopped or crashed, or ended this session"


def _lost_message(server: str, log: str) -> tuple[str, str]:
    """The message for a lost session, as the text before and after its reason (the shell waiter gets both)."""
    return (
        f"mcpshare connect: lost the connection to the mcpshare broker serving {server!r} (",
        f"; its log: {log}). Reconnect the MCP server in your client.",
    )


def _lost(server: str, log: str, reason: str | None = None) -> int:
    head, tail = _lost_message(server, log)
    sys.stderr.write(f"{head}{reason or LOST_REASON}{tail}\n")
    return 1


def hand_over(sock: _socket.socket, leftover: bytes, *, server: str, log: str, shell: str | None = None) -> int:
    """Give our stdin and stdout to the broker, then wait for its word on how the session ended.

    Our own copies are replaced by /dev/null at once, so that when the broker closes the client's stdout (or dies)
    the client sees the end of it without waiting for us. With a ``shell`` (the broker agreed to end with a text
    line), we wait as that shell (:func:`exec_waiter`) and never return; else, or if it cannot run, right here.
    Returns 0 when the client ended the session.
    """
    fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1))  # a C int[2]
    try:
        sock.sendmsg([b"\0"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
    except OSError as exc:
        return _lost(server, log, f"could not hand over stdio: {exc.strerror or exc}")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    if shell is not None and not leftover:  # (leftover: bytes after the answer, which only we hold; never seen)
        exec_waiter(shell, sock, server=server, log=log)  # returns if the exec failed: then we wait here
    os.close(null)
    try:
        read = _read_line(sock, leftover)
        if read is None:
            return _lost(server, log)
        reason = runtime.parse_ending(read[0])
    except (OSError, ValueError):
        return _lost(server, log)
    return 0 if reason is None else _lost(server, log, reason)


def exec_waiter(shell: str, sock: _socket.socket, *, server: str, log: str) -> None:
    """Become ``shell`` running :data:`WAIT_SCRIPT` on the broker's socket (fd 3); returns only if the exec fails.

    Same pid, so the client still waits for "its server"; the socket takes fd 3 (our copy of whatever the client
    left there is dropped), the other descriptors stay as they were. SIGPIPE goes back to its default (Python
    ignores it, and an ignored signal stays ignored across exec); the user's shell settings are left out of the
    environment so that the script runs alone, while the rest of it stays (it is how tools find a process's
    session).
    """
    import _signal

    head, tail = _lost_message(server, log)
    argv = [shell, "-c", WAIT_SCRIPT, f"mcpshare connect {server} (waiting)", head, tail, LOST_REASON]
    moved = sock.fileno() != WAITER_FD
    try:
        if moved:
            os.dup2(sock.fileno(), WAITER_FD)  # inheritable
        else:
            os.set_inheritable(WAITER_FD, True)  # (a dup2 onto itself would leave it close-on-exec)
        _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
        os.execve(shell, argv, waiter_environ(os.environ))
    except OSError:
        _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
        if moved:
            os.close(WAITER_FD)
        else:
            os.set_inheritable(WAITER_FD, False)


def waiter_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the variables through which a user's shell settings would run in the waiter."""
    return {
        key: value for key, value in environ.items() if key not in _SHELL_SETTINGS and not key.startswith("BASH_FUNC_")
    }


def server_keys(request: Request, *, cwd: str) -> list[str]:
    """The variables that belong to our own server (its config's ``env`` and ``env_vars``), which a broker we
    start must not keep for everyone else. Asked only when we start one: reading a config costs milliseconds."""
    if request.command is not None:
        return list(request.env_keys)
    try:
        server = _server_from_config(request, cwd=cwd)
    except LookupError:
        return []
    return [*server.env, *server.env_vars]


# ---------------------------------------------------------------------------------------------- fallback


def fallback(request: Request, reason: str, *, cwd: str) -> int:
    """Run the real server in our place (exec), if we know it; else explain and fail.

    The exec keeps our pid and the client's pipes, so the client talks straight to the server.
    """
    try:
        argv, env, workdir = _direct_command(request, cwd=cwd)
    except LookupError as exc:
        sys.stderr.write(
            f"mcpshare connect: {reason}\nmcpshare connect: cannot run {request.server!r} directly: {exc}\n"
        )
        return 1
    sys.stderr.write(
        f"mcpshare connect: {reason}\n"
        f"mcpshare connect: running MCP server {request.server!r} directly, NOT shared: {_display(argv)}\n"
    )
    sys.stderr.flush()
    try:
        if workdir is not None:
            os.chdir(workdir)
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        sys.stderr.write(f"mcpshare connect: cannot run {argv[0]!r}: {exc.strerror or exc}\n")
    return 127


def _direct_command(request: Request, *, cwd: str) -> tuple[list[str], dict[str, str], str | None]:
    """(argv, env, cwd) to run the server directly; LookupError when we do not know its command."""
    if request.command is not None:
        workdir = os.path.join(cwd, request.cwd) if request.cwd else None
        return list(request.command), dict(os.environ), workdir
    return _command_from_config(request, cwd=cwd)


def _command_from_config(request: Request, *, cwd: str) -> tuple[list[str], dict[str, str], str | None]:
    """The server's command from its config file (or the user's default configs), as the broker would read it."""
    server = _server_from_config(request, cwd=cwd)
    env = dict(os.environ)
    env.update(server.env)
    workdir = os.path.join(cwd, server.cwd) if server.cwd else None
    return [server.command, *server.args], env, workdir


def _server_from_config(request: Request, *, cwd: str) -> StdioServerConfig:
    """Server NAME of ``--config FILE`` or of the user's default configs; LookupError saying why not.

    Only off the hot path (fallback, starting a broker): mcpshare.config is standard-library only, but it costs a
    few milliseconds.
    """
    from pathlib import Path

    from mcpshare.config import ConfigError, StdioServerConfig, default_config_paths, load_config, merge

    try:
        if request.config is not None:
            paths = [Path(cwd, request.config)]
        else:
            paths = default_config_paths(home=Path.home(), cwd=Path(cwd))
        config = merge(*(load_config(path, project=cwd) for path in paths))
        server = config.get(request.server)
    except (ConfigError, KeyError) as exc:
        raise LookupError(str(exc).strip("\"'")) from None
    if not isinstance(server, StdioServerConfig):
        raise LookupError(f"{request.server!r} is a Streamable HTTP server; point the client at {server.url} directly")
    return server


def _display(argv: list[str]) -> str:
    """A command for messages: the program and a few arguments (arguments may hold secrets)."""
    shown = [os.path.basename(argv[0]), *argv[1:3]]
    return " ".join(shown) + (" ..." if len(argv) > 3 else "")


# ---------------------------------------------------------------------------------------------- main


def connect(
    request: Request, *, paths: runtime.RuntimePaths, cwd: str, pass_stdio: bool = False, text_ending: bool = False
) -> tuple[_socket.socket, bytes, bool, bool]:
    """A socket on which the broker accepted our hello, any bytes it already sent after its answer, whether it
    takes our stdio (only if we offered it), and whether it will end with a text line (only if we asked)."""
    timeout = switches.seconds(switches.CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT)
    sock = open_connection(
        paths, autostart=request.autostart, timeout=timeout, server_keys=lambda: server_keys(request, cwd=cwd)
    )
    try:
        hello = build_hello(request, cwd=cwd, environ=dict(os.environ), pass_stdio=pass_stdio, text_ending=text_ending)
        answer, leftover = handshake(sock, hello, timeout=HELLO_TIMEOUT)
        if answer.get("ok") is not True:
            reason = str(answer.get("error") or "no reason given")
            if answer.get("fallback") is True:  # the broker cannot take anyone right now (a limit, a version)
                raise BrokerUnavailable(f"the broker cannot serve {request.server!r} now: {reason}")
            raise BrokerRefused(reason)
    except BaseException:
        sock.close()
        raise
    handed = pass_stdio and answer.get("stdio") == runtime.STDIO_PASS
    return sock, leftover, handed, handed and text_ending and answer.get("ending") == runtime.ENDING_TEXT


def main(argv: list[str]) -> int:
    """``mcpshare connect ...``: returns the exit status (or never returns, after exec'ing the fallback)."""
    wrong = switches.problems()
    if wrong:  # before anything starts, a broker included: it would refuse the same values
        sys.stderr.write("".join(f"mcpshare connect: {problem}\n" for problem in wrong))
        return 2
    try:
        request = parse_args(argv)
    except HelpRequested:
        sys.stdout.write(USAGE)
        return 0
    except UsageError as exc:
        sys.stderr.write(f"mcpshare connect: {exc}\n{USAGE}")
        return 2
    cwd = os.getcwd()
    paths = runtime.RuntimePaths.default()
    shell = waiter()
    try:
        sock, leftover, handed, text = connect(
            request, paths=paths, cwd=cwd, pass_stdio=can_pass_stdio(), text_ending=shell is not None
        )
    except BrokerUnavailable as exc:
        return fallback(request, str(exc), cwd=cwd)
    except BrokerRefused as exc:
        sys.stderr.write(f"mcpshare connect: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    try:
        if handed:
            return hand_over(sock, leftover, server=request.server, log=paths.log, shell=shell if text else None)
        return relay(sock, leftover, server=request.server, log=paths.log)
    except KeyboardInterrupt:
        return 130
