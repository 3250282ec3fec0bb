"""``mcpshare wrap`` / ``mcpshare unwrap``: point a host's stdio servers at the shim, and take it back.

A host (Codex, Claude Code, Claude Desktop, VS Code, Cursor, Gemini CLI, Windsurf, Zed) launches what its config file
says (:mod:`mcpshare.formats` knows whose file is whose). To share servers without changing
the host, we rewrite each stdio entry so that the host launches ``mcpshare connect`` instead, with the real command
line embedded after ``--``::

    command = "/venv/bin/mcpshare"
    args = ["connect", "github", "--env-keys", "GITHUB_TOKEN", "--", "npx", "-y", "@modelcontextprotocol/server-github"]

Why embed the command instead of pointing the shim at the file: the broker never has to read this file (which now
names the shim, so reading it would recurse), and the shim can ``exec`` the real server when no broker can be
reached. ``--env-keys`` names the variables that belong to the server (its ``env`` table plus ``env_vars``): the host
sets them on the shim, the shim forwards their values, and they become part of the pool key. ``--share`` carries
mcpshare's own ``share`` field, which the broker could not otherwise see. Every other field (``env``, ``cwd``,
timeouts, tool filters, comments) stays where it is: the host still applies them, to the shim.

Why edit in place instead of load-and-dump. These are hand-kept files (``~/.codex/config.toml``) or files other
programs own (``~/.claude.json``). TOML is edited through tomlkit, which keeps comments and layout; JSON is edited as
text, by the spans of the few values that change, so the diff of a wrap is the changed ``command``/``args`` values
and nothing else (the editors' JSON with comments too: the comments are blanked for reading only). Before anything,
the file is checked as the loader reads it (:func:`mcpshare.config.check_config`): a file with a typo'd field gets
the loader's error, and nothing is written. Before anything is written, the result is parsed again and compared
with the intended change: a formatting bug can fail a wrap, never corrupt a config.

Why a backup plus a hash. ``unwrap`` must give back the user's file byte for byte. The first wrap copies the file to
``<file>.mcpshare-backup`` and records, in ``<file>.mcpshare-backup.json``, the hash of the original and of the
output it produced from it. If the file still has exactly that output, unwrap restores the backup. If the user
edited the wrapped file since, restoring the backup would throw their edits away, so unwrap takes each entry back
from its embedded form instead (the rest of the file is untouched), keeps the backup, and says that the result is
equivalent but maybe not byte-identical. For the same reason a later wrap never replaces a backup that holds
something the current file does not.

Why ``--http``. A host that speaks Streamable HTTP (Codex, Claude Code, Cursor, VS Code) needs no shim process at
all: ``wrap --http`` turns each stdio entry into an HTTP entry for the broker's HTTP front
(``http://127.0.0.1:PORT/mcp/<route>``, ``serve --http PORT`` or ``mcpshare service install``). What runs the
server (``command``, ``args``, ``env``, ``cwd``, ``share``) moves to mcpshare's own servers file, where the broker
reads it (:mod:`mcpshare.http_servers`): an HTTP entry may not keep them (Codex refuses such a config). The token
never enters the file: Codex gets ``bearer_token_env_var = "MCPSHARE_HTTP_TOKEN"``, JSON hosts an
``Authorization: Bearer ${MCPSHARE_HTTP_TOKEN}`` header, which they expand from their environment. An HTTP client
sends no cwd, so the workspace of a ``share = "workspace"`` server is baked into the URL (``?cwd=``) where the file
belongs to one project (``.mcp.json``, ``projects.<dir>`` of ``~/.claude.json``, a project's ``.codex/config.toml``);
a user-wide entry is served in the broker's working directory (the home directory). Entries that read the client's
environment (``env_vars``, ``${VAR}``) stay as they are: over HTTP there is no client environment to read. The backup
and the byte-for-byte unwrap are the same as for the shim; unwrap also takes the definitions back out of the servers
file.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import difflib
import hashlib
import json
import os
import re
import stat
import sys
import tempfile
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import tomlkit
import tomlkit.exceptions
from tomlkit.items import Array, InlineTable, String, StringType

from mcpshare import formats
from mcpshare.config import ConfigError, DuplicateKeyError, check_config, shared_servers_path, unique_keys
from mcpshare.connect_line import PROTOCOLS as _PROTOCOLS
from mcpshare.connect_line import SHARE_SCOPES as _SHARE_SCOPES
from mcpshare.connect_line import connect_index as _connect_index
from mcpshare.connect_line import embedded_index as _embedded_index
from mcpshare.connect_line import names_mcpshare as _names_mcpshare
from mcpshare.http_servers import SharedServers, user_key

__all__ = [
    "BACKUP_SUFFIX",
    "DEFAULT_HTTP_PORT",
    "HTTP_TOKEN_VAR",
    "SIDECAR_SUFFIX",
    "HttpTarget",
    "ServerState",
    "WrapResult",
    "default_mcpshare_command",
    "inspect_file",
    "is_wrapped",
    "unwrap_entry",
    "unwrap_file",
    "wrap_entry",
    "wrap_file",
]

BACKUP_SUFFIX = ".mcpshare-backup"
"""The original file, as it was before the first wrap: ``<file>.mcpshare-backup``."""
SIDECAR_SUFFIX = ".mcpshare-backup.json"
"""Hashes tying the backup to the exact output wrap produced from it: ``<file>.mcpshare-backup.json``."""


@dataclass
class WrapResult:
    """What :func:`wrap_file` or :func:`unwrap_file` did (or, with ``dry_run``, would do) to one file.

    It holds names and reasons only, never file content: configs hold API keys, and results get printed whole.

    Servers are named by their key; servers of a Claude Code project (``projects.<dir>.mcpServers``) as
    ``NAME@<dir>``, since one name may be configured in several projects.
    """

    path: Path
    backup: Path | None
    """Where the pre-wrap original is kept after this operation; None when there is none (any more)."""
    changed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Server -> why it was left alone: "http", "already wrapped", "disabled", "not wrapped", "invalid: ..."."""
    restored: bool = False
    """Unwrap only: the file now equals the pre-wrap original byte for byte (and the backup was removed)."""
    notes: list[str] = field(default_factory=list)
    """Things the user should know, in sentences (an edited file unwrapped entry by entry, a backup kept...)."""
    dry_run: bool = False
    before: bytes | None = field(default=None, repr=False)
    """The file as read, and (``after``) as written or, with ``dry_run``, as it would be: only for :meth:`diff`,
    which the CLI prints on ``--dry-run`` to the user who owns the file; kept out of the repr."""
    after: bytes | None = field(default=None, repr=False)

    def diff(self, context: int = 3) -> list[str]:
        """A unified diff (lines without their ends) from the file as it was to what it is, or would be, after."""
        if self.before is None or self.after is None or self.before == self.after:
            return []
        before = self.before.decode("utf-8", "replace").splitlines()
        after = self.after.decode("utf-8", "replace").splitlines()
        name = os.fspath(self.path)
        return list(difflib.unified_diff(before, after, name, name + " (after)", n=context, lineterm=""))


@dataclass
class ServerState:
    """One entry of a config file as ``mcpshare discover`` shows it (names and states only, no values)."""

    label: str
    transport: str
    """"stdio", "http", or "?" for an entry that is not a table."""
    wrapped: str | None
    """"shim" (launches ``mcpshare connect``), "http" (points at the broker's HTTP front), None when not wrapped."""
    note: str = ""
    """Why it is not wrapped, if not just because nobody did: disabled, cannot run here, remote."""


def inspect_file(path: str | os.PathLike[str]) -> tuple[str, list[ServerState]]:
    """The host a file belongs to and the state of each of its servers; :class:`ConfigError` if it does not parse."""
    source = _read(Path(path))
    document = _load(source.path, source.text)
    http_dialect = document.dialect in (formats.CODEX, formats.MCP_JSON)
    states = []
    for server in document.servers():
        entry = server.entry
        if not isinstance(entry, Mapping):
            states.append(ServerState(server.label, "?", None, "invalid: not a table"))
            continue
        remote = "command" not in entry
        transport = "http" if remote else "stdio"
        if http_dialect and front_route(entry) is not None:
            states.append(ServerState(server.label, "http", "http"))
        elif server.refusal is not None:
            states.append(ServerState(server.label, transport, None, server.refusal))
        elif not remote and is_wrapped(entry):
            states.append(ServerState(server.label, "stdio", "shim"))
        elif remote:
            states.append(ServerState(server.label, "http", None, "a remote server: nothing to share"))
        elif entry.get("enabled") is False or entry.get("disabled") is True:
            states.append(ServerState(server.label, "stdio", None, "disabled"))
        else:
            states.append(ServerState(server.label, "stdio", None))
    return document.dialect.host, states


# ---------------------------------------------------------------------------------------------- entries


def default_mcpshare_command() -> list[str]:
    """The launcher to write: the ``mcpshare`` script of this environment, else ``python -m mcpshare``.

    Absolute, because hosts start servers with their own ``PATH`` (Claude Desktop's is minimal), and from this
    environment, because that is the mcpshare the user just ran.
    """
    if not sys.executable:
        raise RuntimeError("cannot tell where mcpshare is installed (sys.executable is empty); pass the command")
    bindir = Path(os.path.abspath(sys.executable)).parent
    names = ("mcpshare.exe", "mcpshare") if os.name == "nt" else ("mcpshare",)
    for name in names:
        script = bindir / name
        if script.is_file() and os.access(script, os.X_OK):
            return [str(script)]
    return [os.path.abspath(sys.executable), "-m", "mcpshare"]


def is_wrapped(entry: Mapping[str, Any]) -> bool:
    """Whether a server entry already launches ``mcpshare connect`` (with or without an embedded command)."""
    command, args = entry.get("command"), entry.get("args", [])
    if not isinstance(command, str) or not _is_strings(args):
        return False
    return _connect_index(command, args) is not None


def unwrap_entry(command: str, args: Sequence[str]) -> tuple[str, list[str]] | None:
    """The real ``(command, args)`` embedded in a wrapped command line; None if it has none (or is not wrapped)."""
    index = _embedded_index(command, args)
    if index is None:
        return None
    return args[index], list(args[index + 1 :])


def wrap_entry(
    name: str, entry: Mapping[str, Any], *, mcpshare_command: Sequence[str] | None = None
) -> tuple[str, list[str]]:
    """The wrapped ``(command, args)`` of one stdio entry; ValueError (why) if it is not a stdio entry to wrap."""
    launcher = _launcher(mcpshare_command)
    reason = _wrap_refusal(name, entry)
    if reason is not None:
        raise ValueError(f"server {name!r}: {reason}")
    return launcher[0], [*_prefix(launcher, name, entry), *entry.get("args", [])]


def _launcher(mcpshare_command: Sequence[str] | None) -> list[str]:
    """The launcher words, checked: it must end in mcpshare, or its entries could not be recognized as wrapped."""
    if mcpshare_command is None:
        return default_mcpshare_command()
    if isinstance(mcpshare_command, str):
        mcpshare_command = [mcpshare_command]
    launcher = list(mcpshare_command)
    if not launcher or not all(isinstance(word, str) and word for word in launcher):
        raise ValueError("the mcpshare command must be a non-empty list of non-empty strings")
    if not _names_mcpshare(launcher[-1]):
        raise ValueError(
            f"the mcpshare command must end in 'mcpshare' (a script path or '-m mcpshare'), got {launcher!r}: "
            "wrapped entries are recognized by it"
        )
    return launcher


def _is_strings(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)


def _env_keys(entry: Mapping[str, Any]) -> list[str] | str:
    """The names of ``env`` then ``env_vars``, without repeats; a reason string if they cannot be listed."""
    keys: list[str] = []
    env = entry.get("env", {})
    if not isinstance(env, Mapping):
        return "invalid: env is not a table"
    keys.extend(env)
    env_vars = entry.get("env_vars", [])
    if not isinstance(env_vars, list | tuple):
        return "invalid: env_vars is not a list"
    for item in env_vars:
        if isinstance(item, Mapping):  # Codex: {name = "X", source = "local"}
            item = item.get("name")
        if not isinstance(item, str) or not item:
            return "invalid: env_vars holds something that is not a variable name"
        keys.append(item)
    for key in keys:
        if not isinstance(key, str) or not key or "," in key or "=" in key:
            return f"invalid: cannot pass the variable name {key!r} to the shim"
    return list(dict.fromkeys(keys))


def _wrap_refusal(name: str, entry: object) -> str | None:
    """Why an entry is left alone by wrap (the reason reported in ``skipped``), or None to wrap it."""
    if not isinstance(entry, Mapping):
        return "invalid: not a table"
    if "command" not in entry:
        return "http" if "url" in entry else "invalid: neither command nor url"
    if "url" in entry:
        return "invalid: has both command and url"
    command, args = entry["command"], entry.get("args", [])
    if not isinstance(command, str) or not command.strip():
        return "invalid: command is not a non-empty string"
    if not _is_strings(args):
        return "invalid: args is not a list of strings"
    if _connect_index(command, args) is not None:
        return "already wrapped"
    if entry.get("enabled") is False or entry.get("disabled") is True:
        return "disabled"
    if name.startswith("--"):
        return "invalid: the shim would read a name starting with '--' as an option"
    keys = _env_keys(entry)
    if isinstance(keys, str):
        return keys
    share = entry.get("share")
    if share is not None and share not in _SHARE_SCOPES:
        return f"invalid: share must be one of {', '.join(_SHARE_SCOPES)}"
    protocol, lanes, exclusive = entry.get("protocol"), entry.get("lanes"), entry.get("exclusive_tools")
    if protocol is not None and protocol not in _PROTOCOLS:
        return f"invalid: protocol must be one of {', '.join(_PROTOCOLS)}"
    if lanes is not None and (isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= 16):
        return "invalid: lanes must be a whole number from 1 to 16"
    if exclusive is not None and (not _is_strings(exclusive) or any("," in tool or not tool for tool in exclusive)):
        return "invalid: exclusive_tools must be a list of tool names"
    return None


def _prefix(launcher: Sequence[str], name: str, entry: Mapping[str, Any]) -> list[str]:
    """What goes in front of the original args: the rest of the launcher, ``connect NAME [options] --`` and the
    original command. Keeping the original args as the tail is what lets both formats edit arrays in place."""
    options: list[str] = []
    keys = _env_keys(entry)
    assert isinstance(keys, list), keys  # _wrap_refusal ran first
    if keys:
        options += ["--env-keys", ",".join(keys)]
    if entry.get("share") is not None:
        options += ["--share", entry["share"]]
    if entry.get("protocol") is not None:
        options += ["--protocol", str(entry["protocol"])]
    if entry.get("lanes") is not None:
        options += ["--lanes", str(entry["lanes"])]
    if entry.get("exclusive_tools"):
        options += ["--exclusive-tools", ",".join(entry["exclusive_tools"])]
    timeout = _startup_timeout(entry)
    if timeout is not None:
        options += ["--startup-timeout", f"{timeout:g}"]
    return [*launcher[1:], "connect", name, *options, "--", entry["command"]]


def _startup_timeout(entry: Mapping[str, Any]) -> float | None:
    """The entry's startup timeout in seconds, as the loader reads it (``startup_timeout_sec`` wins over ``_ms``)."""
    seconds, millis = entry.get("startup_timeout_sec"), entry.get("startup_timeout_ms")
    for value, scale in ((seconds, 1.0), (millis, 0.001)):
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value) * scale
    return None


# ---------------------------------------------------------------------------------------------- HTTP entries

DEFAULT_HTTP_PORT = 17432
"""The port of the broker's HTTP front that ``wrap --http`` and ``mcpshare service`` use unless told otherwise: fixed,
since the clients' configs name it; below Linux's ephemeral range, so an outgoing connection never holds it."""
HTTP_TOKEN_VAR = "MCPSHARE_HTTP_TOKEN"
"""The environment variable the wrapped HTTP entries take the broker's bearer token from (it is never written into
a config): Codex's ``bearer_token_env_var``, ``${MCPSHARE_HTTP_TOKEN}`` in a JSON entry's ``Authorization``."""
_MOVED = ("type", "command", "args", "env", "env_vars", "cwd", "share")
"""What leaves a stdio entry for the servers file: what runs the server, and what no HTTP entry may hold."""
_HTTP_FIELDS = ("type", "url", "headers", "http_headers", "env_http_headers", "bearer_token_env_var")
_FRONT_URL = re.compile(r"http://(?:127\.0\.0\.1|localhost):[0-9]+/mcp/([A-Za-z0-9._-]+)(?:\?[^#]*)?")


@dataclass(frozen=True)
class HttpTarget:
    """Where ``wrap --http`` points the entries: the broker's HTTP front on 127.0.0.1:``port``; ``home`` is where
    the servers file is (``~/.config/mcpshare/servers.json``) and what counts as the user's home directory."""

    port: int
    home: Path = field(default_factory=Path.home)
    token_var: str = HTTP_TOKEN_VAR

    @property
    def servers_file(self) -> Path:
        return shared_servers_path(self.home)

    def url(self, route: str, workspace: str | None) -> str:
        url = f"http://127.0.0.1:{self.port}/mcp/{route}"
        return f"{url}?cwd={quote(workspace, safe='/')}" if workspace else url


def front_route(entry: object) -> str | None:
    """The route of an HTTP entry that points at a broker's HTTP front (what ``wrap --http`` writes), else None."""
    url = entry.get("url") if isinstance(entry, Mapping) else None
    match = _FRONT_URL.fullmatch(url) if isinstance(url, str) else None
    return match.group(1) if match else None


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _http_refusal(name: str, entry: object) -> str | None:
    """Why ``wrap --http`` leaves an entry alone, or None to move it behind the broker's HTTP front."""
    if front_route(entry) is not None:
        return "already wrapped (HTTP)"
    reason = _wrap_refusal(name, entry)
    if reason is not None:
        return reason
    assert isinstance(entry, Mapping)
    if entry.get("env_vars"):
        return (
            "env_vars: an HTTP client sends no environment to pass them from (`mcpshare wrap` without --http: the "
            "shim passes them)"
        )
    if any("${" in text for key in _MOVED for text in _strings(entry.get(key))):
        return (
            "${...} in its definition: it would be read from the broker's environment, not the client's "
            "(`mcpshare wrap` without --http: the shim passes the client's)"
        )
    if entry.get("type", "stdio") != "stdio" or any(key in entry for key in _HTTP_FIELDS if key != "type"):
        return "invalid: a stdio entry with HTTP fields"
    return None


def _http_workspace(path: Path, server: _Server, home: Path) -> str | None:
    """The workspace an HTTP client of this entry works in, where the file tells it: a project's ``.mcp.json``, a
    ``projects.<dir>`` entry of ``~/.claude.json``, a project's ``.codex/config.toml``. None: a user-wide entry."""
    if server.scope[:1] == ("projects",):
        return os.path.abspath(server.scope[1])
    absolute = Path(os.path.abspath(path))
    if absolute.name == ".mcp.json":
        return str(absolute.parent)
    if absolute.name == "config.toml" and absolute.parent.name == ".codex" and absolute.parent.parent != home:
        return str(absolute.parent.parent)
    return None


def _http_members(kind: str, url: str, token_var: str) -> list[tuple[str, Any]]:
    """The members of the HTTP entry, in the host's own spelling."""
    if kind == "toml":  # Codex: no type field; the token from the environment variable it names
        return [("url", url), ("bearer_token_env_var", token_var)]
    return [("type", "http"), ("url", url), ("headers", {"Authorization": f"Bearer ${{{token_var}}}"})]


def _claude_desktop(path: Path) -> bool:
    return path.name.lower() == "claude_desktop_config.json"


# ---------------------------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class _Server:
    """One server entry of a document: ``scope`` is the path of keys to it in the parsed data.

    ``raw`` is the entry as the file has it; ``entry`` is the same in mcpshare's spelling (Gemini's ``httpUrl`` as
    ``url``, Zed's nested ``command.path`` as ``command``...), which is what wrap's decisions read; ``refusal`` says
    why mcpshare cannot run it at all (an extension's server, a sandboxed one), and then wrap leaves it alone.
    ``command_key``/``args_key`` are where, inside ``raw``, the program and its arguments are written.
    """

    label: str
    name: str
    scope: tuple[str, ...]
    entry: Any
    raw: Any = None
    refusal: str | None = None
    command_key: tuple[str, ...] = ("command",)
    args_key: tuple[str, ...] = ("args",)


def _server(dialect: formats.Dialect, label: str, name: str, scope: tuple[str, ...], raw: Any, data: Any) -> _Server:
    """A document's entry with its mcpshare spelling (see :class:`_Server`)."""
    if not isinstance(raw, Mapping):
        return _Server(label, name, scope, raw, raw)
    command_key, args_key = formats.launch_keys(dialect, raw)
    try:
        translated = formats.translate(dialect, name, raw, data=data)
    except formats.EntryError as exc:  # not reached after check_config; unwrap reads files as they are
        return _Server(label, name, scope, raw, raw, f"invalid: {exc.reason}", command_key, args_key)
    if isinstance(translated, formats.Refusal):
        return _Server(label, name, scope, raw, raw, f"cannot run here: {translated.reason}", command_key, args_key)
    return _Server(label, name, scope, translated[0], raw, None, command_key, args_key)


class _Document(Protocol):
    """One parsed config file that can edit the ``command``/``args`` of its entries and render itself again."""

    plain: Any
    """The file's data as the standard-library parser sees it (the independent check of every edit)."""
    dialect: formats.Dialect

    def servers(self) -> list[_Server]: ...

    def set_wrapped(self, server: _Server, command: str, prefix: Sequence[str]) -> None:
        """Make the entry run ``command`` with ``prefix`` in front of its args (which are created if absent)."""

    def set_unwrapped(self, server: _Server, command: str, drop: int, keep_empty: bool) -> None:
        """Make the entry run ``command`` with the first ``drop`` args removed; no args left: ``[]`` or no key."""

    def rewrite_entry(self, server: _Server, remove: Collection[str], insert: Sequence[tuple[str, Any]]) -> None:
        """Take the ``remove`` keys out of the entry and put the ``insert`` members where the first of them was."""

    def render(self) -> str: ...

    def reparse(self, text: str) -> Any: ...


def _load(path: Path, text: str) -> _Document:
    """The document for a file, its dialect told as :func:`mcpshare.config.load_config` tells it."""
    file = os.fspath(path)
    dialect = formats.dialect_by_name(path)
    if dialect is formats.CODEX:
        return _TomlDocument(text, file)
    if dialect is None and path.suffix.lower() != ".json":
        suffix = path.suffix.lower()
        raise ConfigError(
            f"unknown config format {suffix or '(no suffix)'!r}; expected .toml (Codex) or .json (mcpServers, "
            "VS Code, Cursor, Gemini CLI, Windsurf, Zed)",
            file=file,
        )
    if dialect is None:
        try:
            data = json.loads(formats.blank_comments(text, trailing_commas=True))
        except ValueError:
            data = None  # the document's own parse reports it
        dialect = formats.dialect_by_content(data) if isinstance(data, dict) else formats.MCP_JSON
    return _JsonDocument(text, file, dialect)


# ---------------------------------------------------------------------------------------------- TOML (Codex)


class _TomlDocument:
    """A Codex ``config.toml``: ``[mcp_servers.NAME]`` tables (or inline tables, or dotted keys), via tomlkit."""

    kind = "toml"
    dialect = formats.CODEX

    def __init__(self, text: str, file: str) -> None:
        try:
            self.plain = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # Python's message already ends in "(at line L, column C)".
            raise ConfigError(f"invalid TOML: {exc}", file=file) from None
        try:
            self._doc = tomlkit.parse(text)
        except tomlkit.exceptions.TOMLKitError as exc:
            raise ConfigError(f"invalid TOML: {exc}", file=file) from None
        # tomlkit writes "\n" for lines it adds; a CRLF file should stay CRLF.
        self._crlf = "\r\n" in text and re.search(r"(?<!\r)\n", text) is None
        servers = self.plain.get("mcp_servers", {})
        if not isinstance(servers, dict):
            raise ConfigError("'mcp_servers' must be a table", file=file)

    def servers(self) -> list[_Server]:
        return [
            _Server(label=name, name=name, scope=("mcp_servers", name), entry=entry, raw=entry)
            for name, entry in self.plain.get("mcp_servers", {}).items()
        ]

    def _table(self, server: _Server) -> Any:
        return self._doc["mcp_servers"][server.name]

    def set_wrapped(self, server: _Server, command: str, prefix: Sequence[str]) -> None:
        table = self._table(server)
        table["command"] = _toml_string(command, like=table["command"])
        args = table.get("args")
        if args is None:
            _insert_after(table, "command", "args", _toml_array(prefix))
        elif _one_item_per_line(args):
            for index, value in enumerate(prefix):  # in place: keeps the layout and comments of the array
                args.insert(index, value)
        else:
            table["args"] = _toml_array([*prefix, *args])

    def set_unwrapped(self, server: _Server, command: str, drop: int, keep_empty: bool) -> None:
        table = self._table(server)
        table["command"] = _toml_string(command, like=table["command"])
        args = table["args"]
        if len(args) > drop:
            if _one_item_per_line(args):
                for _ in range(drop):
                    del args[0]
            else:
                table["args"] = _toml_array(list(args)[drop:])
        elif keep_empty:
            table["args"] = tomlkit.array()
        else:
            del table["args"]

    def rewrite_entry(self, server: _Server, remove: Collection[str], insert: Sequence[tuple[str, Any]]) -> None:
        table = self._table(server)
        keys = list(table.keys())
        at = next((index for index, key in enumerate(keys) if key in remove), len(keys))
        if isinstance(table, InlineTable):
            # Rebuilt as text in the table's own style: deleting in place leaves the spaces of what was removed.
            parts = [f"{tomlkit.key(key).as_string()} = {table.item(key).as_string()}" for key in keys]
            new = [f"{tomlkit.key(key).as_string()} = {tomlkit.item(value).as_string()}" for key, value in insert]
            kept = [part for key, part in zip(keys, parts, strict=True) if key not in remove]
            position = sum(1 for key in keys[:at] if key not in remove)
            kept[position:position] = new
            spaced = table.as_string().startswith("{ ")
            inner = ", ".join(kept)
            text = f"{{ {inner} }}" if spaced and inner else f"{{{inner}}}"
            self._doc["mcp_servers"][server.name] = tomlkit.parse(f"x = {text}\n")["x"]
            return
        # A [mcp_servers.NAME] table: plain values go where the first removed key was (after the comments above
        # it), tables (an env) at the end, where TOML wants sub-tables.
        plain = [(key, value) for key, value in insert if not isinstance(value, Mapping)]
        placed = False
        if at < len(keys):
            try:
                index = table.value._map[keys[at]]
                index = index if isinstance(index, int) else index[0]
                for offset, (key, value) in enumerate(plain):
                    table.value._insert_at(index + offset, key, tomlkit.item(value))
                placed = True
            except (AttributeError, KeyError, IndexError, TypeError, tomlkit.exceptions.TOMLKitError):
                placed = False  # dotted keys and the like: appended below; the result is checked either way
        for key in remove:
            if key in table:
                del table[key]
        for key, value in insert:
            if isinstance(value, Mapping) or not placed:
                table[key] = value

    def render(self) -> str:
        text = tomlkit.dumps(self._doc)
        return re.sub(r"(?<!\r)\n", "\r\n", text) if self._crlf else text

    def reparse(self, text: str) -> Any:
        return tomllib.loads(text)


def _toml_string(value: str, *, like: object) -> String:
    """A TOML string in the quoting style of the value it replaces ('literal' stays literal when it can)."""
    literal = (
        isinstance(like, String)
        and like.type == StringType.SLL
        and "'" not in value
        and not any(ord(char) < 32 or ord(char) == 127 for char in value)
    )
    return tomlkit.string(value, literal=literal)


def _toml_array(values: Sequence[Any]) -> Array:
    """A one-line array; items that are tomlkit strings keep their own quoting."""
    array = tomlkit.array()
    for value in values:
        array.append(value)
    return array


def _one_item_per_line(array: Array) -> bool:
    """Whether an array is laid out one item per line (then items are inserted and removed in place, keeping the
    layout and the comments); any other array is rebuilt on one line, which a partial edit would leave ragged."""
    if not len(array):
        return False
    after_bracket = array.as_string()[1:].lstrip(" \t")
    return after_bracket.startswith(("\n", "\r", "#"))


def _insert_after(table: Any, after: str, key: str, value: Any) -> None:
    """Add ``key`` right after ``after`` (``args`` reads best next to ``command``); at the end if tomlkit can't."""
    container = getattr(table, "value", None)
    insert = getattr(container, "_insert_after", None)
    if callable(insert):
        try:
            insert(after, key, value)
            return
        except (KeyError, ValueError, AttributeError, tomlkit.exceptions.TOMLKitError):
            pass  # dotted keys, out-of-order tables: fall back; the result is checked either way
    table[key] = value


# ---------------------------------------------------------------------------------------------- JSON (mcpServers)

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


@dataclass(eq=False)
class _JsonValue:
    """A value's span in the text. Objects and arrays on the way to server entries are scanned into members/items;
    everything else is decoded whole (at C speed: ``~/.claude.json`` can be megabytes of unrelated state)."""

    start: int
    end: int
    value: Any
    members: list[_JsonMember] | None = None
    items: list[_JsonValue] | None = None

    def member(self, key: str) -> _JsonMember | None:
        return next((member for member in self.members or () if member.key == key), None)


@dataclass(eq=False)
class _JsonMember:
    key: str
    key_start: int
    key_end: int
    value: _JsonValue


def _json_descender(dialect: formats.Dialect) -> Callable[[tuple[str | int, ...]], bool]:
    """Whether the scanner needs the inside of the value at a path: the way to ``<servers>.*.args`` (and, for
    ``mcpServers`` files, ``projects.*.mcpServers.*.args``; for Zed, ``context_servers.*.command.args``)."""
    tables = {key for key, _ in formats.server_tables(dialect, {dialect.servers_key: None, "mcpServers": None})}

    def descend(path: tuple[str | int, ...]) -> bool:
        if dialect is formats.MCP_JSON and path[:1] == ("projects",):
            if len(path) <= 2:
                return True
            path = path[2:]
        if not path:
            return True
        if path[0] not in tables:
            return False
        if len(path) <= 2:
            return True
        return path[2:] == ("args",) or (dialect is formats.ZED and path[2:] in (("command",), ("command", "args")))

    return descend


def _skip(text: str, index: int) -> int:
    match = _WHITESPACE.match(text, index)
    assert match is not None
    return match.end()


def _scan(
    text: str, index: int, path: tuple[str | int, ...], descend: Callable[[tuple[str | int, ...]], bool]
) -> _JsonValue:
    """The value starting at ``index`` (the text is valid JSON: it was parsed whole before)."""
    char = text[index]
    if char == "{" and descend(path):
        members: list[_JsonMember] = []
        cursor = _skip(text, index + 1)
        while text[cursor] != "}":
            key, key_end = _DECODER.raw_decode(text, cursor)
            colon = _skip(text, key_end)
            value = _scan(text, _skip(text, colon + 1), (*path, key), descend)
            members.append(_JsonMember(key, cursor, key_end, value))
            cursor = _skip(text, value.end)
            if text[cursor] == ",":
                cursor = _skip(text, cursor + 1)
        plain = {member.key: member.value.value for member in members}
        return _JsonValue(index, cursor + 1, plain, members=members)
    if char == "[" and descend(path):
        items: list[_JsonValue] = []
        cursor = _skip(text, index + 1)
        while text[cursor] != "]":
            item = _scan(text, cursor, (*path, len(items)), descend)
            items.append(item)
            cursor = _skip(text, item.end)
            if text[cursor] == ",":
                cursor = _skip(text, cursor + 1)
        return _JsonValue(index, cursor + 1, [item.value for item in items], items=items)
    value, end = _DECODER.raw_decode(text, index)
    return _JsonValue(index, end, value)


class _JsonDocument:
    """A JSON file (``mcpServers``, VS Code's ``servers``, Zed's ``context_servers``...), edited as text: only the
    spans of the values that change are replaced.

    Hosts that allow comments (and trailing commas) get them blanked out for reading (:func:`formats.blank_comments`
    keeps every offset), so spans found in the blanked text are spans of the file, edits land in the file itself, and
    every comment stays where it was. Separators copied to new items come from the blanked text, so a comment next
    to them is never duplicated.
    """

    kind = "json"

    def __init__(self, text: str, file: str, dialect: formats.Dialect = formats.MCP_JSON) -> None:
        self.dialect = dialect
        try:
            scanned = self._blank(text)
        except ValueError as exc:
            raise ConfigError(f"invalid JSON: {exc}", file=file) from None
        try:
            self.plain = json.loads(scanned, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", file=file) from None
        except DuplicateKeyError as exc:
            raise ConfigError(f"duplicate key {exc.args[0]!r} in one JSON object", file=file) from None
        if not isinstance(self.plain, dict):
            raise ConfigError("the top level must be a JSON object", file=file)
        self._text = text
        self._scanned = scanned
        self._root: _JsonValue = _scan(scanned, _skip(scanned, 0), (), _json_descender(dialect))
        self._edits: list[tuple[int, int, str]] = []
        self._entries: dict[tuple[str, ...], _JsonValue] = {}
        self._servers: list[_Server] = []
        self._collect(self._root, (), None, file)
        self._newline = "\r\n" if "\r\n" in text else "\n"
        self._indent = self._detect_indent()
        self._multiline_arrays = self._detect_array_style()

    def _blank(self, text: str) -> str:
        if not self.dialect.comments:
            return text
        return formats.blank_comments(text, trailing_commas=self.dialect.trailing_commas)

    def _collect(self, holder: _JsonValue, scope: tuple[str, ...], project: str | None, file: str) -> None:
        tables = [key for key, _ in formats.server_tables(self.dialect, holder.value)] if project is None else []
        for key in tables or ["mcpServers"]:
            servers = holder.member(key)
            if servers is None:
                continue
            if servers.value.members is None:
                raise ConfigError(f"'{'.'.join((*scope, key))}' must be an object", file=file)
            for member in servers.value.members:
                label = member.key if project is None else f"{member.key}@{project}"
                where = (*scope, key, member.key)
                self._entries[where] = member.value
                self._servers.append(_server(self.dialect, label, member.key, where, member.value.value, self.plain))
        projects = holder.member("projects") if project is None and self.dialect is formats.MCP_JSON else None
        if projects is None:
            return
        if projects.value.members is None:
            raise ConfigError("'projects' must be an object", file=file)
        for member in projects.value.members:
            if member.value.members is None:
                raise ConfigError(f"'projects.{member.key}' must be an object", file=file)
            self._collect(member.value, ("projects", member.key), member.key, file)

    def _detect_indent(self) -> str:
        """One level of indentation as the file writes it (two spaces, four, a tab); two spaces if it never does."""
        members = self._root.members or []
        if members:
            lead = self._scanned[self._root.start + 1 : members[0].key_start]
            if "\n" in lead:
                unit = lead.rsplit("\n", 1)[1]
                if unit:
                    return unit
        return "  "

    def _detect_array_style(self) -> bool:
        """Whether new arrays should be written one item per line: only if every non-empty args array already is."""
        seen_multiline = False
        for server in self._servers:
            args = self._launch(server)[2]
            if args is None or not args.value.items:
                continue
            if "\n" not in self._text[args.value.start : args.value.end]:
                return False
            seen_multiline = True
        return seen_multiline

    def _launch(self, server: _Server) -> tuple[_JsonValue, _JsonMember | None, _JsonMember | None]:
        """The object that holds the entry's program and arguments, and those two members (None when absent)."""
        holder = self._entries[server.scope]
        for key in server.command_key[:-1]:
            member = holder.member(key)
            assert member is not None and member.value.members is not None, server
            holder = member.value
        return holder, holder.member(server.command_key[-1]), holder.member(server.args_key[-1])

    def servers(self) -> list[_Server]:
        return list(self._servers)

    def _line_indent(self, index: int) -> str:
        line_start = self._scanned.rfind("\n", 0, index) + 1
        line = self._scanned[line_start:index]
        return line[: len(line) - len(line.lstrip(" \t"))]

    def _between(self, start: int, end: int) -> str:
        """The text between two values, comments left out (and the spaces they leave at the end of a line)."""
        return re.sub(r"[ \t]+(?=\r?\n)", "", self._scanned[start:end])

    def _render_array(self, values: Sequence[str], entry: _JsonValue, anchor: _JsonMember) -> str:
        multiline = self._multiline_arrays and "\n" in self._text[entry.start : entry.end]
        dumped = [_dump(value) for value in values]
        if not multiline:
            return "[" + ", ".join(dumped) + "]"
        outer = self._line_indent(anchor.key_start)
        inner = outer + self._indent
        return "[" + self._newline + inner + ("," + self._newline + inner).join(dumped) + self._newline + outer + "]"

    def _member_separator(self, entry: _JsonValue, member: _JsonMember) -> str:
        """The text this object puts between two members (``",\\n      "`` or ``", "``), taken next to ``member``."""
        members = entry.members or []
        index = members.index(member)
        if index + 1 < len(members):
            return self._between(member.value.end, members[index + 1].key_start)
        if index > 0:
            return self._between(members[index - 1].value.end, member.key_start)
        lead = self._between(entry.start + 1, member.key_start)
        return "," + lead if "\n" in lead else ", "

    def _item_separator(self, array: _JsonValue) -> str:
        items = array.items or []
        if len(items) >= 2:
            return self._between(items[0].end, items[1].start)
        lead = self._between(array.start + 1, items[0].start)
        return "," + lead if "\n" in lead else ", "

    def set_wrapped(self, server: _Server, command: str, prefix: Sequence[str]) -> None:
        entry, command_member, args = self._launch(server)
        assert command_member is not None
        replacement = _dump(command)
        if args is None:
            colon = self._scanned[command_member.key_end : command_member.value.start]
            replacement += (
                self._member_separator(entry, command_member)
                + _dump(server.args_key[-1])
                + colon
                + self._render_array(prefix, entry, command_member)
            )
        elif not args.value.items:
            self._edit(args.value.start, args.value.end, self._render_array(prefix, entry, args))
        else:
            first = args.value.items[0].start
            separator = self._item_separator(args.value)
            self._edit(first, first, "".join(_dump(value) + separator for value in prefix))
        self._edit(command_member.value.start, command_member.value.end, replacement)

    def set_unwrapped(self, server: _Server, command: str, drop: int, keep_empty: bool) -> None:
        entry, command_member, args = self._launch(server)
        assert command_member is not None and args is not None and args.value.items is not None
        self._edit(command_member.value.start, command_member.value.end, _dump(command))
        items = args.value.items
        if len(items) > drop:
            self._edit(items[0].start, items[drop].start, "")
        elif keep_empty:
            self._edit(args.value.start, args.value.end, "[]")
        else:
            members = entry.members or []
            index = members.index(args)
            if index > 0:  # the inverse of inserting it after the previous member
                self._edit(members[index - 1].value.end, args.value.end, "")
            else:
                self._edit(args.key_start, members[index + 1].key_start, "")

    def rewrite_entry(self, server: _Server, remove: Collection[str], insert: Sequence[tuple[str, Any]]) -> None:
        # The entry's object is written again from its own pieces: the members it keeps verbatim, its separators,
        # its colon and indentation; the new members in their place.
        entry = self._entries[server.scope]
        members = entry.members or []
        at = next((index for index, member in enumerate(members) if member.key in remove), len(members))
        texts = [self._text[member.key_start : member.value.end] for member in members if member.key not in remove]
        if members:
            colon = self._text[members[0].key_end : members[0].value.start]
            lead = self._text[entry.start + 1 : members[0].key_start]
            trail = self._text[members[-1].value.end : entry.end - 1]
            separator = self._member_separator(entry, members[0])
        else:
            colon, lead, trail, separator = ": ", "", "", ", "
        new = [_dump(key) + colon + self._render_value(value, entry, members) for key, value in insert]
        position = sum(1 for member in members[:at] if member.key not in remove)
        texts[position:position] = new
        self._edit(entry.start, entry.end, "{" + lead + separator.join(texts) + trail + "}")

    def _render_value(self, value: Any, entry: _JsonValue, members: list[_JsonMember]) -> str:
        if isinstance(value, list) and members and all(isinstance(item, str) for item in value):
            return self._render_array(value, entry, members[0])
        return json.dumps(value, ensure_ascii=False)

    def _edit(self, start: int, end: int, replacement: str) -> None:
        self._edits.append((start, end, replacement))

    def render(self) -> str:
        # One pass over the text: ~/.claude.json can hold many projects, so no re-slicing of the whole per edit.
        pieces: list[str] = []
        cursor = 0
        for start, end, replacement in sorted(self._edits):
            if start < cursor:
                raise AssertionError("overlapping JSON edits")
            pieces += [self._text[cursor:start], replacement]
            cursor = end
        pieces.append(self._text[cursor:])
        return "".join(pieces)

    def reparse(self, text: str) -> Any:
        return json.loads(self._blank(text))


def _dump(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class _Source:
    """A config file as read: its bytes, text and mode, and whether it began with a UTF-8 BOM (kept on write)."""

    path: Path
    raw: bytes
    text: str
    bom: bool
    mode: int

    def encode(self, text: str) -> bytes:
        return (codecs.BOM_UTF8 if self.bom else b"") + text.encode("utf-8")


def _read(path: Path) -> _Source:
    file = os.fspath(path)
    try:
        raw = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=file) from exc
    bom = raw.startswith(codecs.BOM_UTF8)
    try:
        text = raw[len(codecs.BOM_UTF8) if bom else 0 :].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 (byte {exc.start})", file=file) from exc
    return _Source(path, raw, text, bom, mode)


def _backup_paths(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + BACKUP_SUFFIX), path.with_name(path.name + SIDECAR_SUFFIX)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_sidecar(sidecar: Path) -> dict[str, str] | None:
    """The recorded hashes, or None when the sidecar is missing or unreadable (then unwrap goes entry by entry)."""
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), str) for key in ("original", "wrapped")):
        return None
    return {"original": data["original"], "wrapped": data["wrapped"]}


def _sidecar_bytes(original: bytes, wrapped: bytes) -> bytes:
    record = {"mcpshare_backup": 1, "original": _sha256(original), "wrapped": _sha256(wrapped)}
    return (json.dumps(record, indent=2) + "\n").encode("utf-8")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` in one step, with the given permission bits.

    A symlink is followed (the link is kept, its target is replaced), since dotfile managers link these files. The
    temporary file is created 0600 and gets ``mode`` before it becomes visible under the real name: configs and
    their backups hold API keys, so none of them is ever more readable than the original.
    """
    target = Path(os.path.realpath(path))
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _check_unchanged(source: _Source) -> None:
    """Refuse to write over a file that changed since it was read.

    Hosts write their own configs while they run (Claude Code rewrites ``~/.claude.json`` often); writing our edit
    of an older content would silently drop theirs. This narrows that window to the instant of the rename.
    """
    try:
        current = source.path.read_bytes()
    except OSError:
        current = None
    if current != source.raw:
        raise ConfigError(
            "changed while mcpshare was editing it; nothing was written, run it again", file=os.fspath(source.path)
        )


def _replace_config(source: _Source, data: bytes) -> None:
    _check_unchanged(source)
    _write_atomic(source.path, data, source.mode)


def _free_rotation(backup: Path) -> Path:
    number = 1
    while True:
        candidate = backup.with_name(f"{backup.name}.{number}")
        if not candidate.exists():
            return candidate
        number += 1


def _with_launch(server: _Server, command: str, args: list[str] | None) -> dict[str, Any]:
    """The raw entry running ``command`` with ``args`` (None: no ``args`` key), where the file keeps them."""
    changed = copy.deepcopy(dict(server.raw))
    holder = changed
    for key in server.command_key[:-1]:
        holder = holder[key]
    holder[server.command_key[-1]] = command
    if args is None:
        holder.pop(server.args_key[-1], None)
    else:
        holder[server.args_key[-1]] = args
    return changed


def _check_output(
    document: _Document, output: str, changes: Mapping[tuple[str, ...], Mapping[str, Any]], file: str
) -> None:
    """Parse the new text and compare it with the old data plus exactly the intended changes; refuse otherwise.

    The parsers used here are the standard library's, not the editors': an editing bug cannot hide from its own
    reader. ``changes`` maps an entry's scope to the whole entry it must now be.
    """
    expected = copy.deepcopy(document.plain)
    for scope, changed in changes.items():
        holder = expected
        for key in scope[:-1]:
            holder = holder[key]
        holder[scope[-1]] = copy.deepcopy(dict(changed))
    try:
        actual = document.reparse(output)
    except ValueError as exc:
        raise RuntimeError(f"{file}: mcpshare produced an unreadable file ({exc}); nothing was written") from None
    if _canonical(actual) != _canonical(expected):
        raise RuntimeError(f"{file}: mcpshare's edit changed more than the server commands; nothing was written")


def _canonical(data: Any) -> str:
    # json.dumps spells NaN the same on both sides (NaN != NaN would fail the comparison) and sorts keys, since
    # where tomlkit puts a new key does not matter; TOML dates become their repr.
    return json.dumps(data, sort_keys=True, default=repr)


def _selection(servers: Collection[str] | None) -> set[str] | None:
    if servers is None:
        return None
    return {servers} if isinstance(servers, str) else set(servers)


# ---------------------------------------------------------------------------------------------- wrap


def wrap_file(
    path: str | os.PathLike[str],
    *,
    mcpshare_command: Sequence[str] | None = None,
    servers: Collection[str] | None = None,
    dry_run: bool = False,
    http: HttpTarget | None = None,
) -> WrapResult:
    """Rewrite the stdio servers of a Codex ``.toml`` or ``mcpServers`` ``.json`` file to launch through the shim,
    or, with ``http``, to reach the broker's HTTP front (their definitions go to ``http.servers_file``).

    ``mcpshare_command`` is the launcher (default :func:`default_mcpshare_command`; a lone string is one word);
    its last word must be mcpshare, which is how wrapped entries are recognized later.
    ``servers`` limits the change to these names (or ``NAME@<project dir>`` labels). Idempotent: entries already
    wrapped are skipped, and a file with nothing to wrap is not touched. Raises :class:`ConfigError` (naming the file
    and, for syntax errors, the line) for a file that cannot be read or parsed.
    """
    launcher = _launcher(mcpshare_command) if http is None else []
    source = _read(Path(path))
    file = os.fspath(source.path)
    if http is not None and _claude_desktop(source.path):
        raise ConfigError(
            "Claude Desktop's config file runs stdio servers only; `mcpshare wrap` without --http shares them through "
            "the shim",
            file=file,
        )
    document = _load(source.path, source.text)
    if http is not None and document.dialect not in (formats.CODEX, formats.MCP_JSON):
        raise ConfigError(
            f"`mcpshare wrap --http` writes Codex and mcpServers JSON files only, not {document.dialect.host}'s; "
            "`mcpshare wrap` without --http shares its servers through the shim",
            file=file,
        )
    # First the loader's own check, with its errors: a typo'd field stops the wrap before anything is written.
    check_config(source.path)
    shared = SharedServers.load(http.servers_file) if http is not None else None
    result = WrapResult(path=source.path, backup=None, dry_run=dry_run)
    wanted = _selection(servers)
    changes: dict[tuple[str, ...], Mapping[str, Any]] = {}
    any_wrapped = False
    user_wide: list[str] = []
    for server in document.servers():
        if isinstance(server.entry, Mapping) and (is_wrapped(server.entry) or front_route(server.entry)):
            any_wrapped = True
        if wanted is not None and server.name not in wanted and server.label not in wanted:
            result.skipped[server.label] = "not selected"
            continue
        if server.refusal is not None:
            result.skipped[server.label] = server.refusal
            continue
        if http is not None:
            reason = _http_refusal(server.name, server.entry)
        else:
            reason = "already wrapped (HTTP)" if front_route(server.entry) else _wrap_refusal(server.name, server.entry)
        if reason is not None:
            result.skipped[server.label] = reason
            continue
        if http is None:
            prefix = _prefix(launcher, server.name, server.entry)
            document.set_wrapped(server, launcher[0], prefix)
            args = [*prefix, *server.entry.get("args", [])]
            changes[server.scope] = _with_launch(server, launcher[0], args)
        else:
            assert shared is not None
            definition = {key: server.entry[key] for key in _MOVED if key in server.entry}
            route = shared.route_for(server.name, definition, user_key(source.path, server.label))
            workspace = _http_workspace(source.path, server, http.home)
            if workspace is None and server.entry.get("share", "workspace") == "workspace":
                user_wide.append(server.label)
            members = _http_members(document.kind, http.url(route, workspace), http.token_var)
            document.rewrite_entry(server, list(definition), members)
            kept = {key: value for key, value in server.entry.items() if key not in definition}
            changes[server.scope] = {**kept, **dict(members)}
        result.changed.append(server.label)
    if user_wide:
        result.notes.append(
            f'{", ".join(user_wide)}: share = "workspace", but an HTTP client does not say its cwd and this file '
            "belongs to no project: served in the broker's working directory (your home directory under `mcpshare "
            "service`), one process for all your projects"
        )
    if wanted is not None:
        known = {name for server in document.servers() for name in (server.name, server.label)}
        result.skipped.update({name: "not in file" for name in sorted(wanted - known)})
    backup, sidecar = _backup_paths(source.path)
    if not changes:
        result.backup = backup if backup.exists() else None
        return result
    output = source.encode(document.render())
    _check_output(document, output.decode("utf-8-sig"), changes, file)
    result.backup = backup
    result.before, result.after = source.raw, output
    if not dry_run:
        _check_unchanged(source)
    _keep_backup(source, output, backup, sidecar, any_wrapped, result)
    if not dry_run:
        if shared is not None:
            shared.save()  # first: the definitions are there before any client points at them
        _replace_config(source, output)
    return result


def _keep_backup(
    source: _Source, output: bytes, backup: Path, sidecar: Path, any_wrapped: bool, result: WrapResult
) -> None:
    """Make sure the pre-wrap original is in ``backup`` before the file is written, without losing any backup.

    The sidecar pairs the backup with the output made from it; it is only ever written when that pairing is true,
    since unwrap trusts it to replace the file with the backup.
    """
    write = not result.dry_run
    if not backup.exists():
        if write:
            _write_atomic(backup, source.raw, source.mode)
            _write_atomic(sidecar, _sidecar_bytes(source.raw, output), source.mode)
        return
    try:
        kept = backup.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the backup {backup}: {exc.strerror or exc}", file=os.fspath(source.path)
        ) from exc
    record = _read_sidecar(sidecar)
    if kept == source.raw or (
        record is not None and record["original"] == _sha256(kept) and record["wrapped"] == _sha256(source.raw)
    ):
        # The file is the original itself, or exactly what wrap made of it (say, with fewer servers selected): the
        # new output is still wrap(backup), so the backup stays and the pairing moves to the new output.
        if write:
            _write_atomic(sidecar, _sidecar_bytes(kept, output), source.mode)
        return
    if not any_wrapped:
        # The file holds nothing of ours: it is a new original (unwrapped by hand, or rewritten by its host) and the
        # backup is from an earlier wrap. Keep that one under a new name and back up the current file.
        rotated = _free_rotation(backup)
        kept_as = "would be kept as" if result.dry_run else "was kept as"
        result.notes.append(f"an older backup that differs from this file {kept_as} {rotated}")
        if write:
            os.replace(backup, rotated)
            with contextlib.suppress(OSError):
                sidecar.unlink()
            _write_atomic(backup, source.raw, source.mode)
            _write_atomic(sidecar, _sidecar_bytes(source.raw, output), source.mode)
        return
    # Wrapped, then edited by the user: the backup is the true original and stays; the sidecar keeps pointing at the
    # old output, so unwrap will not restore over the user's edits but take the entries back one by one.
    result.notes.append(
        f"the file was edited since it was wrapped; the backup {backup} of the original is kept as it is, and unwrap "
        "will restore each entry from its embedded command"
    )


# ---------------------------------------------------------------------------------------------- unwrap


def unwrap_file(path: str | os.PathLike[str], *, dry_run: bool = False, home: Path | None = None) -> WrapResult:
    """Give a wrapped file its original servers back.

    If the file is exactly what wrap wrote, the backup is restored byte for byte and removed (``restored``).
    Otherwise (edited since, or no backup) each wrapped entry gets its embedded command back (an HTTP entry, its
    definition from the servers file), the rest of the file stays as it is, the backup is kept, and a note says the
    result is equivalent but maybe not byte-identical. Either way, the definitions this file's HTTP entries used are
    then taken out of the servers file under ``home`` (default: the user's), unless another file uses them too.
    """
    source = _read(Path(path))
    file = os.fspath(source.path)
    document = _load(source.path, source.text)
    result = WrapResult(path=source.path, backup=None, dry_run=dry_run)
    backup, sidecar = _backup_paths(source.path)
    kept = _read_optional(backup)
    record = _read_sidecar(sidecar)
    servers_file = shared_servers_path(home or Path.home())
    shared = SharedServers.load(servers_file) if servers_file.exists() else None
    if (
        kept is not None
        and record is not None
        and record["wrapped"] == _sha256(source.raw)
        and record["original"] == _sha256(kept)
    ):
        for server, _entry in _wrapped_servers(document, result, shared):
            result.changed.append(server.label)
        result.restored = True
        result.before, result.after = source.raw, kept
        if not dry_run:
            _replace_config(source, kept)
            _remove(sidecar, backup)
            _release(shared, source.path)
        return result

    original = _load_optional(source.path, kept)
    changes: dict[tuple[str, ...], Mapping[str, Any]] = {}
    for server, restored in _wrapped_servers(document, result, shared):
        if isinstance(restored, dict):  # an HTTP entry: its definition back in place of the HTTP members
            document.rewrite_entry(server, [key for key in _HTTP_FIELDS if key in server.entry], list(restored.items()))
            unchanged = {key: value for key, value in server.entry.items() if key not in _HTTP_FIELDS}
            changes[server.scope] = {**unchanged, **restored}
        else:
            command, args = restored
            keep_empty = _had_args(original, server)
            document.set_unwrapped(server, command, len(server.entry["args"]) - len(args), keep_empty)
            changes[server.scope] = _with_launch(server, command, args if args or keep_empty else None)
        result.changed.append(server.label)
    output = source.raw
    if changes:
        output = source.encode(document.render())
        _check_output(document, output.decode("utf-8-sig"), changes, file)
    result.before, result.after = source.raw, output
    if kept is not None and output == kept:
        result.restored = True
        if not dry_run:
            if changes:
                _replace_config(source, output)
            _remove(sidecar, backup)
            _release(shared, source.path)
        return result
    result.backup = backup if kept is not None else None
    if changes:
        where = f"the original is still in {backup}" if kept is not None else "there is no backup to compare with"
        done = "would be" if dry_run else "were"
        result.notes.append(
            f"the file is not exactly what wrap wrote (edited since, or wrapped elsewhere), so the servers {done} "
            "unwrapped one by one from their embedded commands: equivalent to the original, but maybe not "
            f"byte-identical ({where})"
        )
        if not dry_run:
            _replace_config(source, output)
            _release(shared, source.path)
    return result


def _release(shared: SharedServers | None, config: Path) -> None:
    """Take ``config``'s entries out of the servers file (after the config no longer points at them)."""
    if shared is not None and shared.release(config):
        shared.save()


def _wrapped_servers(
    document: _Document, result: WrapResult, shared: SharedServers | None = None
) -> Iterator[tuple[_Server, tuple[str, list[str]] | dict[str, Any]]]:
    """The entries with an embedded command (and it), or pointing at the broker's HTTP front with a definition in
    the servers file (and that), in file order; every other entry goes to ``skipped`` with a reason."""
    http_dialect = document.dialect in (formats.CODEX, formats.MCP_JSON)  # the only ones `wrap --http` writes
    for server in document.servers():
        entry = server.entry
        route = front_route(entry) if http_dialect else None
        if route is not None:
            definition = shared.definition(route) if shared is not None else None
            if definition is None:
                result.skipped[server.label] = (
                    f"points at the broker's HTTP front, but the servers file has no definition for {route!r} "
                    "(nothing to restore)"
                )
            else:
                yield server, dict(definition)
            continue
        if not isinstance(entry, Mapping) or "command" not in entry:
            result.skipped[server.label] = "http" if isinstance(entry, Mapping) and "url" in entry else "not wrapped"
            continue
        if not is_wrapped(entry):
            result.skipped[server.label] = "not wrapped"
            continue
        embedded = unwrap_entry(entry["command"], entry["args"])
        if embedded is None:
            result.skipped[server.label] = "wrapped without an embedded command (nothing to restore)"
            continue
        yield server, embedded


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _load_optional(path: Path, kept: bytes | None) -> Any:
    """The backup's data, to tell ``"args": []`` from no ``args`` when an entry is restored one by one."""
    if kept is None:
        return None
    try:
        return _load(path, kept.decode("utf-8-sig")).plain
    except (ConfigError, UnicodeDecodeError):
        return None


def _had_args(original: Any, server: _Server) -> bool:
    entry = original
    for key in (*server.scope, *server.args_key[:-1]):
        if not isinstance(entry, Mapping) or key not in entry:
            return False
        entry = entry[key]
    return isinstance(entry, Mapping) and server.args_key[-1] in entry


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
