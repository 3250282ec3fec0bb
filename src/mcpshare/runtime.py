"""Where the broker lives on disk, and the few bytes the broker and its clients say to each other.

Shared by the broker (``mcpshare serve``), the shim (``mcpshare connect``) and the control commands. It imports
only the standard library, and only cheap modules (no pathlib, typing, dataclasses or subprocess), because the shim
imports it and the shim's start-up time is paid once per client per server.

The runtime directory is private to the user, and every client of one user must find the same one whatever
environment its host gives it: Codex passes its servers only a handful of variables (not ``XDG_RUNTIME_DIR``), the
MCP Python SDK's stdio client even fewer, Claude Code all of them. A directory derived from ``XDG_RUNTIME_DIR`` or
``TMPDIR`` would make two brokers, each with its own copy of every server. So it is derived from the uid alone:

* ``$MCPSHARE_RUNTIME_DIR`` when set (tests use it; a user who wants the broker elsewhere sets it for every host);
* else ``/run/user/<uid>/mcpshare`` when ``/run/user/<uid>`` exists and is ours (every systemd login has it);
* else ``/tmp/mcpshare-<uid>``: one fixed place, never ``$TMPDIR`` (which some hosts pass and others do not).

It must be a real directory (not a symlink) owned by us that nobody else can write to: under a shared /tmp anyone
could have created it first, and whoever can write in it could put a socket of their own there and read every
message our clients send. A directory that fails these checks is an error naming the fix, never used.

It holds:

* ``broker.sock``: the Unix socket (mode 0600) the broker listens on;
* ``broker.lock``: the broker holds an exclusive ``flock`` on it for its whole life and writes its pid into it.
  The kernel drops the lock when the broker dies, however it dies, so "the lock is free" reliably means "no broker";
* ``broker.log``: the broker's log (rotated);
* ``http.token``: the bearer token of the optional HTTP front (mode 0600);
* ``learned.json``: which tools of which server configurations have asked their client (so their calls are
  ordered from the start after a restart; see :mod:`mcpshare.routing.attribution`).

Wire protocol (version :data:`PROTOCOL`), one JSON object per line, UTF-8:

* client -> broker, first line, a *hello*: ``{"mcpshare": 1, "server": NAME, "config": PATH|null,
  "spec": {"command", "args", "env", "cwd", "share"}|null, "cwd": CLIENT_CWD, "env": {CLIENT_ENV}}``,
  or a *control* request: ``{"mcpshare": 1, "control": "status"|"stop"|"restart"|"ping", ...}``;
* broker -> client: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``;
* after an ``ok`` to a hello: raw newline-delimited JSON-RPC in both directions, until either side closes;
* unless the hello offered ``"stdio": "pass"`` and the answer accepted it with the same field: then the shim sends
  one byte carrying its stdin and stdout (``SCM_RIGHTS``) and relays nothing; the broker reads and writes the
  client's pipes itself and, when the session ends, sends one last line, ``{"end": "eof"}`` (the client ended it)
  or ``{"end": "error", "error": "..."}``, and closes. The shim closing the socket ends the session too;
* a hello that offers ``"stdio": "pass"`` may also ask for ``"ending": "text"``; a broker that echoes it in its
  answer sends that last line as plain text instead, ``eof`` or ``error REASON`` (the reason on one line), which a
  POSIX shell's ``read`` takes apart: the shim then waits as ``/bin/sh`` instead of as a Python interpreter.
"""

from __future__ import annotations

import _socket  # the C module: socket.py imports enum, selectors and more, which the shim does not need
import errno
import fcntl
import os
import stat
import sys
from collections.abc import Iterable, Mapping

PROTOCOL = 1
"""Version of the hello/control protocol; a broker refuses a hello of another version with a clear error."""

STDIO_PASS = "pass"
"""The hello field ``"stdio"`` with this value: the shim can hand its stdin/stdout over to the broker."""

ENDING_TEXT = "text"
"""The hello field ``"ending"`` with this value: the broker's last line on a handed-over session is plain text
(:func:`ending_line`), so that a shell can read it."""

ENV_RUNTIME_DIR = "MCPSHARE_RUNTIME_DIR"
SOCKET_NAME = "broker.sock"
LOCK_NAME = "broker.lock"
LOG_NAME = "broker.log"
TOKEN_NAME = "http.token"
LEARNED_NAME = "learned.json"

MAX_HELLO_BYTES = 4 * 1024 * 1024
"""A hello carries the client's environment; anything bigger than this is not a hello."""

_MAX_SOCKET_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


class RuntimeDirError(OSError):
    """The runtime directory cannot be used safely (wrong owner or mode, not a directory, path too long)."""


def runtime_dir(
    environ: Mapping[str, str] | None = None, *, uid: int | None = None, run_user: str = "/run/user", tmp: str = "/tmp"
) -> str:
    """The runtime directory for this user (not created; see :func:`ensure_runtime_dir`).

    Only ``$MCPSHARE_RUNTIME_DIR`` is read from ``environ``; everything else follows from the uid. ``run_user`` and
    ``tmp`` are the system's fixed roots (parameters so that the rule itself can be tested).
    """
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_RUNTIME_DIR)
    if explicit:
        return os.path.abspath(explicit)
    uid = os.getuid() if uid is None else uid
    session_dir = os.path.join(run_user, str(uid))
    if _private_to(session_dir, uid):
        return os.path.join(session_dir, "mcpshare")
    return os.path.join(tmp, f"mcpshare-{uid}")


def _private_to(path: str, uid: int) -> bool:
    """Whether ``path`` is a real directory owned by ``uid`` that no one else may write to."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == uid and not info.st_mode & 0o022


class RuntimePaths:
    """The files of one runtime directory. Plain attributes: this is imported by the shim, keep it cheap."""

    __slots__ = ("directory", "learned", "lock", "log", "socket", "token")

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.socket = os.path.join(directory, SOCKET_NAME)
        self.lock = os.path.join(directory, LOCK_NAME)
        self.log = os.path.join(directory, LOG_NAME)
        self.token = os.path.join(directory, TOKEN_NAME)
        self.learned = os.path.join(directory, LEARNED_NAME)

    @classmethod
    def default(cls, environ: Mapping[str, str] | None = None) -> RuntimePaths:
        return cls(runtime_dir(environ))

    def __repr__(self) -> str:
        return f"RuntimePaths({self.directory!r})"


def ensure_runtime_dir(directory: str) -> str:
    """Create ``directory`` (mode 0700) if needed and check that it is ours and private; return it.

    Refused with :class:`RuntimeDirError` (whose message says how to fix it): a symlink or a non-directory, a
    directory owned by another user, or one that others may write to (someone could have put a socket of their own
    in it). One that is ours and only readable by others is tightened to 0700: nobody else can have written in it.
    """
    parent = os.path.dirname(directory)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    return check_runtime_dir(directory)


def check_runtime_dir(directory: str) -> str:
    """The checks of :func:`ensure_runtime_dir` on an existing directory (FileNotFoundError if there is none)."""
    elsewhere = f"remove it, or set {ENV_RUNTIME_DIR} to a private directory for every MCP client"
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeDirError(
            errno.ENOTDIR, f"the mcpshare runtime path is not a directory (or is a symlink): {elsewhere}", directory
        )
    if info.st_uid != os.getuid():
        raise RuntimeDirError(
            errno.EPERM,
            f"the mcpshare runtime directory belongs to uid {info.st_uid}, not to us (uid {os.getuid()}): "
            f"set {ENV_RUNTIME_DIR} to a private directory for every MCP client",
            directory,
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise RuntimeDirError(
            errno.EPERM,
            f"the mcpshare runtime directory has mode {mode:04o}: others may write to it, so a socket in it cannot "
            f"be trusted; {elsewhere}",
            directory,
        )
    if mode != 0o700:
        os.chmod(directory, 0o700)
    socket_path = os.path.join(directory, SOCKET_NAME)
    if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
        raise RuntimeDirError(
            errno.ENAMETOOLONG,
            f"socket path longer than {_MAX_SOCKET_PATH} bytes; set {ENV_RUNTIME_DIR} to a shorter directory",
            socket_path,
        )
    return directory


# ------------------------------------------------------------------------------------------ the broker's environment

HOST_SESSION_VARIABLES = frozenset(
    {"PWD", "OLDPWD", "_", "SHLVL", "CLAUDECODE", "CLAUDE_PROJECT_DIR", "AI_AGENT", "TERM_SESSION_ID", "WINDOWID"}
)
"""Variables that describe one client's session (its shell, its Claude Code session and project), not the user."""
HOST_SESSION_PREFIXES = ("CLAUDE_CODE_", "CODEX_", "VSCODE_", "CURSOR_")
"""Prefixes of the hosts' own per-session variables (session ids, IPC sockets, notes directories)."""
_TEMP_ROOTS = ("/tmp", "/var/tmp", "/private/tmp", "/private/var/tmp", "/private/var/folders", "/var/folders")


def broker_environment(environ: Mapping[str, str], server_keys: Iterable[str] = ()) -> dict[str, str]:
    """The environment a broker keeps from the client that starts it: the base of every server it will run.

    A broker lives on after that client and serves every other one, so it keeps only what belongs to the user:

    * not ``server_keys``, the variables the starting client's own server declares (its ``env``, ``env_vars``):
      they are that server's, and another server must never see them (each server gets exactly the variables
      its own config declares, with the values of the client that asked for it);
    * not the hosts' per-session variables (:data:`HOST_SESSION_VARIABLES`, :data:`HOST_SESSION_PREFIXES`);
    * not the ``PATH`` entries that die with the host: temporary directories (Codex puts one of
      ``$CODEX_HOME/tmp/`` first), relative entries and ones that do not exist.
    """
    drop = set(server_keys)
    kept = {
        name: value
        for name, value in environ.items()
        if name not in drop and name not in HOST_SESSION_VARIABLES and not name.startswith(HOST_SESSION_PREFIXES)
    }
    if "PATH" in kept:
        kept["PATH"] = lasting_path(kept["PATH"], environ.get("TMPDIR"))
    return kept


def lasting_path(path: str, tmpdir: str | None = None, temp_roots: Iterable[str] = _TEMP_ROOTS) -> str:
    """``path`` without the entries that will not outlive the client: see :func:`broker_environment`."""
    roots = [*temp_roots, *([tmpdir.rstrip("/")] if tmpdir and os.path.isabs(tmpdir) else [])]
    kept: list[str] = []
    for entry in path.split(os.pathsep):
        if not os.path.isabs(entry) or entry in kept or not os.path.isdir(entry):
            continue
        normal = os.path.normpath(entry)
        if any(normal == root or normal.startswith(root + "/") for root in roots if root):
            continue
        parts = normal.split("/")
        if any(part.lower() in ("tmp", "temp") and parts[i - 1].startswith(".") for i, part in enumerate(parts) if i):
            continue  # an application's own temporary directory, such as ~/.codex/tmp
        kept.append(entry)
    return os.pathsep.join(kept)


# ---------------------------------------------------------------------------------------------- the broker lock


def try_lock(path: str) -> int | None:
    """Take the broker lock without waiting: the fd to keep open for life, or None if a broker already holds it.

    The fd is close-on-exec (Python's default), so servers the broker spawns never inherit the lock.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_pid(fd: int) -> None:
    """Record our pid in the lock file we hold, for ``status``, ``stop`` and tests."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def lock_held(path: str) -> bool:
    """Whether some process holds the broker lock (a broker is running or starting). Never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock we may have taken
    return False


def broker_pid(path: str) -> int | None:
    """The pid written in the lock file, if the lock is held (a pid in a free lock file is history)."""
    if not lock_held(path):
        return None
    try:
        with open(path, "rb") as file:
            text = file.read(32).strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def peer_uid(sock: _socket.socket) -> int | None:
    """The uid of the process at the other end of a connected Unix socket, where the OS tells (Linux); else None."""
    option = getattr(_socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        data = sock.getsockopt(_socket.SOL_SOCKET, option, 12)
    except OSError:
        return None
    return int.from_bytes(data[4:8], sys.byteorder)  # struct ucred {pid_t pid; uid_t uid; gid_t gid}


# ---------------------------------------------------------------------------------------------- wire helpers
# The protocol lines are encoded and parsed with the C half of the json package (``_json``) rather than ``json``
# itself: ``json`` imports ``re``, which is ~1.1 MB of the shim's ~11 MB resident memory, paid by every shim.
# Anything the fast path does not handle (or a CPython without ``_json``) goes through ``json``, so the result is
# always what ``json`` would give, errors included.

try:
    import _json
except ImportError:  # pragma: no cover - other Pythons
    _json = None  # type: ignore[assignment]


class _ScanContext:
    """The attributes ``_json.make_scanner`` reads from a JSONDecoder: plain JSON, no hooks."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = None
    memo: dict[str, object] = {}  # noqa: RUF012 - read by the C scanner, never written


def _quote(text: str) -> str:
    if _json is not None:
        return _json.encode_basestring_ascii(text)
    import json  # pragma: no cover

    return json.dumps(text)  # pragma: no cover


def _dumps(value: object) -> str:
    if isinstance(value, str):
        return _quote(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_quote(str(k))}:{_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_dumps(item) for item in value) + "]"
    import json  # floats and anything else: let json decide (and raise TypeError for what JSON cannot hold)

    return json.dumps(value, ensure_ascii=True)


def encode_line(message: dict[str, object]) -> bytes:
    """One protocol line, ASCII (environments may hold surrogate-escaped bytes, which UTF-8 rejects)."""
    return _dumps(message).encode("ascii") + b"\n"


def decode_line(line: bytes) -> dict[str, object]:
    """Parse one protocol line; ValueError if it is not a JSON object."""
    text = line.decode("utf-8", "surrogateescape").strip()
    value: object = None
    parsed = False
    if _json is not None and text.startswith("{"):
        try:
            value, end = _json.make_scanner(_ScanContext)(text, 0)
            parsed = end == len(text)
        except Exception:
            parsed = False
    if not parsed:
        import json

        value = json.loads(text)  # the reference: parses what the fast path declined, or raises ValueError
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


# ---------------------------------------------------------------------------------------------- the last line

_CONTROL_CHARACTERS = {code: " " for code in (*range(32), 127)}


def ending_line(error: str | None, *, text: bool) -> bytes:
    """The broker's last line on a handed-over session: the client ended it (``error`` None), or why it ended.

    ``text``: ``eof`` or ``error REASON`` with the reason on one printable line (a shell reads it with ``read -r``
    and prints it as it is); else the JSON form older shims read.
    """
    if not text:
        return encode_line({"end": "eof"} if error is None else {"end": "error", "error": error})
    if error is None:
        return b"eof\n"
    reason = error.translate(_CONTROL_CHARACTERS).strip() or "no reason given"
    return b"error " + reason.encode("utf-8", "replace") + b"\n"


def parse_ending(line: bytes) -> str | None:
    """The inverse of :func:`ending_line`, either form: None when the client ended the session, else the reason.

    ValueError for a line that is neither form.
    """
    if line.startswith(b"{"):
        ending = decode_line(line)
        if ending.get("end") == "eof":
            return None
        return str(ending.get("error") or "no reason given")
    if line == b"eof":
        return None
    if line.startswith(b"error "):
        return line[len(b"error ") :].decode("utf-8", "replace") or "no reason given"
    raise ValueError("not an ending line")
