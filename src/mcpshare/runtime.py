"""Where the broker lives on disk, and the few bytes the broker and its clients say to each other.

Shared by the broker (``mcpshare serve``), the shim (``mcpshare connect``) and the control commands. It imports
only the standard library, and only cheap modules (no pathlib, typing, dataclasses or subprocess), because the shim
imports it and the shim's start-up time is paid once per client per server.

The runtime directory is private to the user: ``$MCPSHARE_RUNTIME_DIR`` if set (tests use it, so they never touch
the user's real broker), else ``$XDG_RUNTIME_DIR/mcpshare``, else ``<tmp>/mcpshare-<uid>``. It must be a real
directory (not a symlink) owned by us with mode 0700: under a shared /tmp anyone could have created it first, and
whoever owns the directory could put a socket of their own in it and read every message our clients send.

It holds:

* ``broker.sock``: the Unix socket (mode 0600) the broker listens on;
* ``broker.lock``: the broker holds an exclusive ``flock`` on it for its whole life and writes its pid into it.
  The kernel drops the lock when the broker dies, however it dies, so "the lock is free" reliably means "no broker";
* ``broker.log``: the broker's log (rotated);
* ``http.token``: the bearer token of the optional HTTP front (mode 0600).

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

import errno
import fcntl
import os
import stat
from collections.abc import Mapping

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

MAX_HELLO_BYTES = 4 * 1024 * 1024
"""A hello carries the client's environment; anything bigger than this is not a hello."""

_MAX_SOCKET_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


class RuntimeDirError(OSError):
    """The runtime directory cannot be used safely (wrong owner or mode, not a directory, path too long)."""


def runtime_dir(environ: Mapping[str, str] | None = None) -> str:
    """The runtime directory for this user (not created; see :func:`ensure_runtime_dir`)."""
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_RUNTIME_DIR)
    if explicit:
        return os.path.abspath(explicit)
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        return os.path.join(xdg, "mcpshare")
    tmp = env.get("TMPDIR") or env.get("TEMP") or env.get("TMP") or "/tmp"
    return os.path.join(tmp, f"mcpshare-{os.getuid()}")


class RuntimePaths:
    """The files of one runtime directory. Plain attributes: this is imported by the shim, keep it cheap."""

    __slots__ = ("directory", "lock", "log", "socket", "token")

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.socket = os.path.join(directory, SOCKET_NAME)
        self.lock = os.path.join(directory, LOCK_NAME)
        self.log = os.path.join(directory, LOG_NAME)
        self.token = os.path.join(directory, TOKEN_NAME)

    @classmethod
    def default(cls, environ: Mapping[str, str] | None = None) -> RuntimePaths:
        return cls(runtime_dir(environ))

    def __repr__(self) -> str:
        return f"RuntimePaths({self.directory!r})"


def ensure_runtime_dir(directory: str) -> str:
    """Create ``directory`` (mode 0700) if needed and check that it is ours and private; return it.

    An existing directory that is ours but too open is tightened to 0700; one owned by another user, or a symlink,
    is refused with :class:`RuntimeDirError`: we would otherwise talk to whoever controls it.
    """
    parent = os.path.dirname(directory)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeDirError(
            errno.ENOTDIR, "the mcpshare runtime path is not a directory (or is a symlink)", directory
        )
    if info.st_uid != os.getuid():
        raise RuntimeDirError(
            errno.EPERM, f"the mcpshare runtime directory belongs to uid {info.st_uid}, not to us", directory
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(directory, 0o700)
    socket_path = os.path.join(directory, SOCKET_NAME)
    if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
        raise RuntimeDirError(
            errno.ENAMETOOLONG,
            f"socket path longer than {_MAX_SOCKET_PATH} bytes; set {ENV_RUNTIME_DIR} to a shorter directory",
            socket_path,
        )
    return directory


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
