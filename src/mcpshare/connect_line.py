"""The ``mcpshare connect`` command line: parsing it, and recognizing one in a server entry of a config file.

Standard library only and cheap to import: the shim parses its own arguments with it (``mcpshare connect`` runs once
per client and server, argparse is slow to import), and the config loader uses it to see through entries that
``mcpshare wrap`` rewrote. A broker or a ThreadManager that reads such an entry must run the real command embedded
after ``--``, not a shim that would connect back to a broker (one process and one hop too many per server, or a loop).
"""

from __future__ import annotations

from collections.abc import Sequence

SHARE_SCOPES = ("workspace", "global", "thread")
PROTOCOLS = ("2025-11-25", "auto", "2026-07-28")
_VALUED = ("config", "env-keys", "share", "cwd", "protocol", "lanes", "exclusive-tools", "startup-timeout")
_LAUNCHER_SUFFIXES = (".exe", ".cmd", ".bat", ".pyz", ".py")


class UsageError(Exception):
    """Bad command line."""


class HelpRequested(Exception):
    """``-h`` or ``--help`` (before ``--``: after it, they belong to the server)."""


class ConnectLine:
    """What a ``mcpshare connect`` command line asks for."""

    __slots__ = (
        "autostart",
        "command",
        "config",
        "cwd",
        "env_keys",
        "exclusive_tools",
        "lanes",
        "protocol",
        "server",
        "share",
        "startup_timeout",
    )

    def __init__(self) -> None:
        self.server = ""
        self.config: str | None = None
        self.command: list[str] | None = None
        self.env_keys: list[str] = []
        self.share: str | None = None
        self.cwd: str | None = None
        self.protocol: str | None = None
        self.lanes: int | None = None
        self.exclusive_tools: list[str] = []
        self.startup_timeout: float | None = None
        self.autostart = True

    def spec_fields(self) -> dict[str, object]:
        """The mcpshare fields of the server the command line describes, for the broker (only those given)."""
        fields: dict[str, object] = {}
        if self.protocol is not None:
            fields["protocol"] = self.protocol
        if self.lanes is not None:
            fields["lanes"] = self.lanes
        if self.exclusive_tools:
            fields["exclusive_tools"] = list(self.exclusive_tools)
        if self.startup_timeout is not None:
            fields["startup_timeout_sec"] = self.startup_timeout
        return fields


def parse(argv: Sequence[str]) -> ConnectLine:
    """The arguments after ``connect`` as a :class:`ConnectLine`; :class:`UsageError` with a one-line reason."""
    args = list(argv)
    line = ConnectLine()
    if "--" in args:
        split = args.index("--")
        line.command = args[split + 1 :]
        args = args[:split]
        if not line.command:
            raise UsageError("'--' must be followed by the server's command")
    positional: list[str] = []
    items = iter(args)
    for arg in items:
        if arg in ("-h", "--help"):
            raise HelpRequested
        if not arg.startswith("--"):
            positional.append(arg)
            continue
        name, has_value, value = arg[2:].partition("=")
        if name == "no-autostart":
            line.autostart = False
            continue
        if name not in _VALUED:
            raise UsageError(f"unknown option --{name}")
        if not has_value:
            following = next(items, None)
            if following is None:
                raise UsageError(f"--{name} needs a value")
            value = following
        if name == "config":
            line.config = value
        elif name == "env-keys":
            line.env_keys = [key for key in value.split(",") if key]
        elif name == "share":
            if value not in SHARE_SCOPES:
                raise UsageError(f"--share must be one of {', '.join(SHARE_SCOPES)}, got {value!r}")
            line.share = value
        elif name == "protocol":
            if value not in PROTOCOLS:
                raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {value!r}")
            line.protocol = value
        elif name == "lanes":
            if not value.isdigit() or not 1 <= int(value) <= 16:
                raise UsageError(f"--lanes must be a whole number from 1 to 16, got {value!r}")
            line.lanes = int(value)
        elif name == "exclusive-tools":
            line.exclusive_tools = [tool for tool in value.split(",") if tool]
        elif name == "startup-timeout":
            try:
                line.startup_timeout = float(value)
            except ValueError:
                line.startup_timeout = -1.0
            if not 0 < line.startup_timeout < float("inf"):
                raise UsageError(f"--startup-timeout must be a positive number of seconds, got {value!r}")
        else:
            line.cwd = value
    if len(positional) != 1:
        if not positional:
            raise UsageError("the server NAME is missing")
        raise UsageError(f"unexpected argument {positional[1]!r} (put the server's command after --)")
    line.server = positional[0]
    if line.command is None and (line.env_keys or line.share or line.cwd or line.spec_fields()):
        raise UsageError(
            "--env-keys, --share, --cwd and the server options describe an embedded command: give it after --"
        )
    if line.command is not None and line.config is not None:
        raise UsageError("give either --config FILE or a command after --, not both")
    return line


# ---------------------------------------------------------------------------------------------- in a config entry


def names_mcpshare(word: str) -> bool:
    """Whether a word of a command line is mcpshare itself (a path to the script, ``mcpshare.exe``, ``-m mcpshare``)."""
    base = word.replace("\\", "/").rsplit("/", 1)[-1].lower()
    for suffix in _LAUNCHER_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base == "mcpshare"


def connect_index(command: str, args: Sequence[str]) -> int | None:
    """The index of ``connect`` in ``args`` when the command line runs ``mcpshare connect``, else None.

    Recognized by shape, not by comparing with today's launcher: the venv may have moved, or the file may have been
    wrapped by another mcpshare (``python -m mcpshare``, ``uvx mcpshare``...).
    """
    for index, arg in enumerate(args):
        if arg == "connect" and names_mcpshare(command if index == 0 else args[index - 1]):
            return index
    return None


def embedded_index(command: str, args: Sequence[str]) -> int | None:
    """The index in ``args`` of the real command embedded after ``connect NAME ... --``, else None.

    The shim takes the first ``--`` of its own arguments as the separator; so do we.
    """
    start = connect_index(command, args)
    if start is None:
        return None
    rest = list(args[start + 1 :])
    if "--" not in rest:
        return None
    index = start + 1 + rest.index("--") + 1
    return index if index < len(args) else None


def parse_entry(command: str, args: Sequence[str]) -> ConnectLine | None:
    """The :class:`ConnectLine` of a server entry that runs ``mcpshare connect``, else None (UsageError if its
    arguments are not a valid connect line)."""
    start = connect_index(command, args)
    if start is None:
        return None
    return parse(args[start + 1 :])
