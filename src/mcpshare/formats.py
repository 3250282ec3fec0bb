"""Whose config file is this, where do hosts keep theirs, and how do their server entries read.

Layer 1, below :mod:`mcpshare.config` (which uses it): standard library only, no I/O but ``Path.is_file`` in
:func:`default_sources`. Every host writes MCP servers its own way; this module knows those ways and turns one
host's entry into the spelling :func:`mcpshare.config.parse_server` validates (the union of Codex's and the
``mcpServers`` JSON fields), so validation stays in one place.

The dialects and the documents they were checked against (field lists as of the hosts' current docs):

* ``codex``: Codex ``config.toml``, ``[mcp_servers.NAME]`` tables, in ``$CODEX_HOME`` (default ``~/.codex``) and a
  trusted project's ``.codex/``. Strings are taken literally.
* ``mcp-json``: the ``mcpServers`` JSON of Claude Code (``.mcp.json``, ``~/.claude.json`` and its ``projects``),
  Claude Desktop, and any file that has that table. ``${VAR}`` / ``${VAR:-default}`` / ``${env:VAR}``.
* ``cursor``: ``~/.cursor/mcp.json`` and a project's ``.cursor/mcp.json``: ``mcpServers``; ``${env:NAME}``,
  ``${userHome}``, ``${workspaceFolder}``, ``${workspaceFolderBasename}``, ``${pathSeparator}`` (``${/}``).
* ``vscode``: ``.vscode/mcp.json`` and the user profile's ``mcp.json``: ``servers`` (``mcpServers`` as VS Code's
  own deprecated fallback), ``inputs``; the same variables as Cursor plus ``${input:ID}``, ``${command:...}`` and
  ``${config:...}``, which only VS Code can answer (it prompts, runs or reads its settings), so they are refused,
  never guessed. Server fields ``type``, ``command``, ``args``, ``env`` (numbers allowed), ``envFile``, ``cwd``,
  ``dev``, ``sandboxEnabled``/``sandbox``; ``url``, ``headers``.
* ``gemini``: ``~/.gemini/settings.json`` and a project's ``.gemini/settings.json``: ``mcpServers`` with
  ``command``/``args``/``env``/``cwd``, ``httpUrl`` (Streamable HTTP), ``url`` (SSE), ``headers``, ``timeout`` (ms),
  ``trust``, ``includeTools``/``excludeTools``, the auth-provider fields; ``mcp.allowed``/``mcp.excluded`` lists;
  ``$VAR`` and ``${VAR}`` anywhere.
* ``windsurf``: ``~/.codeium/windsurf/mcp_config.json``: ``mcpServers`` with ``serverUrl`` (or ``url``) for HTTP,
  ``disabled``, ``disabledTools``; ``${env:VAR}`` and ``${file:PATH}``.
* ``zed``: ``~/.config/zed/settings.json`` and a project's ``.zed/settings.json``: ``context_servers``, each flat
  (``command``, ``args``, ``env``, ``timeout`` in seconds, ``enabled``, ``remote``) or in the older nested form
  (``"command": {"path", "args", "env"}``, ``source``), or provided by an extension (``settings`` only), or remote
  (``url``, ``headers``).

VS Code, Cursor, Windsurf, Gemini and Zed read their files as JSON with comments (VS Code and Zed also allow trailing
commas), so those files are read through :func:`blank_comments`, which turns comments into spaces of the same length:
the standard library parser then sees plain JSON at the very same offsets, which is what lets ``mcpshare wrap`` edit
such a file by spans and leave every comment where it was.

Two kinds of trouble are told apart. An entry that no version of its host would accept (a typo'd field, a wrong
type) raises :class:`EntryError`, and the whole file is refused (see :mod:`mcpshare.config`). An entry its host runs
but mcpshare cannot (an SSE server, an extension's server, a sandboxed one, a ``${input:...}`` prompt) gets a
:class:`Refusal`: that server is unusable, with the reason, and the file's other servers stay usable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CODEX",
    "CURSOR",
    "DIALECTS",
    "GEMINI",
    "MCP_JSON",
    "VSCODE",
    "WINDSURF",
    "ZED",
    "Context",
    "Dialect",
    "EntryError",
    "Refusal",
    "Unanswerable",
    "blank_comments",
    "codex_home",
    "default_sources",
    "dialect_by_content",
    "dialect_by_name",
    "expand",
    "launch_keys",
    "project_root",
    "server_tables",
    "translate",
]

Syntax = Literal["toml", "json", "jsonc"]


@dataclass(frozen=True)
class Dialect:
    """One host's file format: its syntax, the table(s) its servers live in, and who writes it."""

    name: str
    host: str
    syntax: Syntax
    servers_key: str
    trailing_commas: bool = False

    @property
    def comments(self) -> bool:
        return self.syntax == "jsonc"


CODEX = Dialect("codex", "Codex", "toml", "mcp_servers")
MCP_JSON = Dialect("mcp-json", "Claude Code / mcpServers JSON", "json", "mcpServers")
CURSOR = Dialect("cursor", "Cursor", "jsonc", "mcpServers")
VSCODE = Dialect("vscode", "VS Code", "jsonc", "servers", trailing_commas=True)
GEMINI = Dialect("gemini", "Gemini CLI", "jsonc", "mcpServers")
WINDSURF = Dialect("windsurf", "Windsurf", "jsonc", "mcpServers")
ZED = Dialect("zed", "Zed", "jsonc", "context_servers", trailing_commas=True)
DIALECTS = {dialect.name: dialect for dialect in (CODEX, MCP_JSON, CURSOR, VSCODE, GEMINI, WINDSURF, ZED)}


class EntryError(ValueError):
    """An entry its own host would not accept either: the file is refused (``field`` as the file spells it)."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class Refusal:
    """Why mcpshare cannot run an entry its host can: that server is unusable, the others are not."""

    reason: str
    field: str | None = None


# ---------------------------------------------------------------------------------------------- which file


def dialect_by_name(path: str | os.PathLike[str]) -> Dialect | None:
    """The dialect a file's name and folder say, or None when only its content can tell (any other ``.json``)."""
    file = Path(path)
    name, parent = file.name.lower(), file.parent.name.lower()
    if file.suffix.lower() == ".toml":
        return CODEX
    if name == "mcp.json":
        if parent == ".vscode" or (parent == "user" and file.parent.parent.name.lower().startswith(("code", "vscod"))):
            return VSCODE
        if parent == ".cursor":
            return CURSOR
    if name == "mcp_config.json":
        return WINDSURF
    if name == "settings.json":
        if parent == ".gemini":
            return GEMINI
        if parent in ("zed", ".zed"):
            return ZED
    if name in (".mcp.json", ".claude.json", "claude_desktop_config.json"):
        return MCP_JSON
    return None


def dialect_by_content(data: Mapping[str, Any]) -> Dialect:
    """The dialect of a JSON file whose name says nothing, by its top-level keys (``mcpServers`` when in doubt)."""
    if "mcpServers" not in data:
        if "context_servers" in data:
            return ZED
        if "servers" in data and ("inputs" in data or isinstance(data["servers"], Mapping)):
            return VSCODE
    return MCP_JSON


def server_tables(dialect: Dialect, data: Mapping[str, Any]) -> list[tuple[str, object]]:
    """The server tables of a parsed file, lowest precedence first, each with the key path it sits under."""
    if dialect is VSCODE and "mcpServers" in data:
        # VS Code still reads the mcpServers spelling ("for rough cross-compat"); its own `servers` wins.
        return [("mcpServers", data["mcpServers"]), *([("servers", data["servers"])] if "servers" in data else [])]
    return [(dialect.servers_key, data.get(dialect.servers_key, {}))]


def launch_keys(dialect: Dialect, raw: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Where an entry keeps its program and its arguments: ``command``/``args``, or Zed's nested
    ``command.path``/``command.args``."""
    if dialect is ZED and isinstance(raw.get("command"), Mapping):
        return ("command", "path"), ("command", "args")
    return ("command",), ("args",)


def project_root(path: str | os.PathLike[str], home: Path) -> Path | None:
    """The project a file belongs to (``<root>/.vscode/mcp.json`` -> ``<root>``), None for a user-wide file."""
    file = Path(os.path.abspath(path))
    if file.name == ".mcp.json":
        return file.parent
    if file.parent.name in (".vscode", ".cursor", ".gemini", ".zed", ".codex") and file.parent.parent != home:
        return file.parent.parent
    return None


# ---------------------------------------------------------------------------------------------- where files live


def codex_home(home: Path, environ: Mapping[str, str]) -> Path:
    """Codex's home: ``$CODEX_HOME`` when set (Codex's own rule), else ``~/.codex``.

    Codex does not pass ``CODEX_HOME`` to the servers it starts (and a broker drops the hosts' variables from its
    environment), so a broker started by a shim sees ``~/.codex``; a broker started from the shell, ``discover`` and
    ``wrap --all`` see the variable.
    """
    value = environ.get("CODEX_HOME", "").strip()
    return Path(os.path.expanduser(value)) if value else home / ".codex"


def _xdg_config(home: Path, environ: Mapping[str, str]) -> Path:
    value = environ.get("XDG_CONFIG_HOME", "").strip()
    return Path(value) if value and os.path.isabs(value) else home / ".config"


def default_sources(*, home: Path, cwd: Path, environ: Mapping[str, str]) -> list[Path]:
    """Every place a host keeps MCP servers, whether or not the file exists, in merge order (later wins by name).

    The order is the hosts' own rule, project over user: user-wide files first, then the current project's files,
    so a project's definition of a name replaces the user's as it does in each host. Among user-wide files the
    order only matters for a name defined by two hosts, which is nearly always the same server configured twice.
    ``~/.claude.json`` is read last of them because it also holds the current project's "local" servers (its
    ``projects`` map), which come right before the project's own files here (Claude Code itself ranks local above
    the project's ``.mcp.json``; here ``.mcp.json`` wins: the checked-in file is the one every host of the project
    reads). mcpshare's own servers file is last of all: its definitions back the entries ``wrap --http`` pointed at
    the broker, and must win over those HTTP entries.
    """
    config = _xdg_config(home, environ)
    macos = home / "Library" / "Application Support"
    user = [
        codex_home(home, environ) / "config.toml",
        config / "Claude" / "claude_desktop_config.json",
        macos / "Claude" / "claude_desktop_config.json",
        home / ".codeium" / "windsurf" / "mcp_config.json",
        home / ".gemini" / "settings.json",
        home / ".cursor" / "mcp.json",
        config / "Code" / "User" / "mcp.json",
        macos / "Code" / "User" / "mcp.json",
        config / "zed" / "settings.json",
        home / ".claude.json",
    ]
    project = [
        cwd / ".codex" / "config.toml",
        cwd / ".gemini" / "settings.json",
        cwd / ".zed" / "settings.json",
        cwd / ".vscode" / "mcp.json",
        cwd / ".cursor" / "mcp.json",
        cwd / ".mcp.json",
    ]
    return [*user, *project, home / ".config" / "mcpshare" / "servers.json"]


# ---------------------------------------------------------------------------------------------- JSON with comments

# A string, a comment, or (second pass) a comma that only closes: what a JSONC reader skips that JSON does not have.
_STRING_OR_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|/\*.*?\*/|/\*', re.DOTALL)
_STRING_OR_TRAILING_COMMA = re.compile(r'"(?:[^"\\\n]|\\.)*"|,(?=\s*[}\]])')


def blank_comments(text: str, *, trailing_commas: bool = False) -> str:
    """``text`` with every ``//`` and ``/* */`` comment (and, if asked, every trailing comma) replaced by spaces.

    Same length and same line breaks, so offsets, line and column numbers of the result are those of ``text``: a
    parser's error points into the real file, and an edit at an offset of the parsed data lands in the real file.
    ValueError for a comment that never ends.
    """
    if "/" not in text and not trailing_commas:
        return text

    def blank(match: re.Match[str]) -> str:
        token = match.group()
        if token.startswith('"'):
            return token
        if token == "/*":
            line = text.count("\n", 0, match.start()) + 1
            raise ValueError(f"a /* comment that never ends (line {line})")
        return re.sub(r"[^\r\n]", " ", token)

    result = _STRING_OR_COMMENT.sub(blank, text) if "/" in text else text
    if trailing_commas:
        result = _STRING_OR_TRAILING_COMMA.sub(blank, result)
    return result


# ---------------------------------------------------------------------------------------------- entries


def translate(
    dialect: Dialect, name: str, raw: Mapping[str, Any], *, data: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]] | Refusal:
    """One entry of ``dialect`` in the spelling :func:`mcpshare.config.parse_server` reads, or why it cannot run.

    ``data`` is the whole file, for settings outside the entry (Gemini's ``mcp.excluded``). Fields that are the
    host's own business (confirmation policies, editor features) are dropped; fields that would change what the
    server receives and cannot be honoured give a :class:`Refusal`; anything else is passed on for the common
    parser to validate, so a typo is still an error that names the field. The second item maps each field that was
    renamed to the name the file gives it, for error messages.
    """
    spelled: dict[str, str] = {}
    if dialect in (CODEX, MCP_JSON):
        return dict(raw), spelled
    entry = _TRANSLATORS[dialect.name](name, dict(raw), data or {}, spelled)
    return entry if isinstance(entry, Refusal) else (entry, spelled)


def _pop_drop(entry: dict[str, Any], *keys: str) -> None:
    for key in keys:
        entry.pop(key, None)


def _cursor(
    name: str, entry: dict[str, Any], data: Mapping[str, Any], spelled: dict[str, str]
) -> dict[str, Any] | Refusal:
    if "envFile" in entry:
        return Refusal("env files are not supported; list the variables in 'env'", "envFile")
    if "auth" in entry:
        return Refusal("OAuth sign-in is done by Cursor; mcpshare cannot do it for this server", "auth")
    if entry.get("type") == "sse":
        return Refusal('the SSE transport is not supported; use Streamable HTTP (type "http")', "type")
    return entry


def _vscode(
    name: str, entry: dict[str, Any], data: Mapping[str, Any], spelled: dict[str, str]
) -> dict[str, Any] | Refusal:
    if entry.get("sandboxEnabled") is True:
        return Refusal(
            "VS Code runs this server in its sandbox; mcpshare would run it without one, with wider access to files "
            "and network than the file grants",
            "sandboxEnabled",
        )
    if "envFile" in entry:
        return Refusal("env files are not supported; list the variables in 'env'", "envFile")
    if entry.get("type") == "sse":
        return Refusal('the SSE transport is not supported; use Streamable HTTP (type "http")', "type")
    env = entry.get("env")
    if isinstance(env, Mapping):
        for key, value in env.items():
            if value is None:
                return Refusal(f"value of {key!r} is null (VS Code unsets the variable); leave it out instead", "env")
        # VS Code passes numbers as their text: {"PORT": 8080} means PORT=8080.
        entry["env"] = {
            key: _number_text(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
            for key, value in env.items()
        }
    # Restart-on-change and debugging are the editor's; gallery and version say where VS Code installed it from.
    _pop_drop(entry, "dev", "sandboxEnabled", "sandbox", "gallery", "version")
    return entry


def _number_text(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


_GEMINI_AUTH = ("authProviderType", "targetAudience", "targetServiceAccount", "oauth")


def _gemini(
    name: str, entry: dict[str, Any], data: Mapping[str, Any], spelled: dict[str, str]
) -> dict[str, Any] | Refusal:
    for key in _GEMINI_AUTH:
        if key in entry:
            return Refusal(f"Gemini CLI's own authentication ({key!r}) is not supported by mcpshare", key)
    if "httpUrl" in entry:
        if "url" in entry:
            raise EntryError("has both 'httpUrl' and 'url'; give one", "url")
        entry["url"] = entry.pop("httpUrl")
        spelled["url"] = "httpUrl"
        entry.setdefault("type", "http")
    elif "url" in entry and "type" not in entry:
        return Refusal(
            "Gemini CLI reads 'url' as an SSE endpoint, and the SSE transport is not supported; write the Streamable "
            "HTTP endpoint as 'httpUrl'",
            "url",
        )
    _rename(entry, "includeTools", "enabled_tools", spelled)
    # disabled_tools applies after enabled_tools: exclusion wins, as in Gemini CLI.
    _rename(entry, "excludeTools", "disabled_tools", spelled)
    if "timeout" in entry:
        timeout = entry.pop("timeout")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise EntryError("must be a positive number of milliseconds", "timeout")
        entry["tool_timeout_sec"] = timeout / 1000
        spelled["tool_timeout_sec"] = "timeout"
    _pop_drop(entry, "trust", "extensionName")  # confirmation prompts are Gemini CLI's
    settings = data.get("mcp")
    if isinstance(settings, Mapping):
        allowed, excluded = settings.get("allowed"), settings.get("excluded")
        if (isinstance(excluded, list) and name in excluded) or (isinstance(allowed, list) and name not in allowed):
            entry["enabled"] = False
    return entry


def _windsurf(
    name: str, entry: dict[str, Any], data: Mapping[str, Any], spelled: dict[str, str]
) -> dict[str, Any] | Refusal:
    if "serverUrl" in entry:
        if "url" in entry:
            raise EntryError("has both 'serverUrl' and 'url'; give one", "url")
        entry["url"] = entry.pop("serverUrl")
        spelled["url"] = "serverUrl"
    if entry.get("type") == "sse":
        return Refusal('the SSE transport is not supported; use Streamable HTTP (type "http")', "type")
    _rename(entry, "disabledTools", "disabled_tools", spelled)
    return entry


def _zed(
    name: str, entry: dict[str, Any], data: Mapping[str, Any], spelled: dict[str, str]
) -> dict[str, Any] | Refusal:
    source = entry.pop("source", "custom")
    if source not in ("custom", "extension"):
        raise EntryError('must be "custom" or "extension"', "source")
    if "command" not in entry and "url" not in entry:
        if source == "extension" or "settings" in entry:
            return Refusal("provided by a Zed extension, which gives Zed its command; mcpshare cannot run it")
        return entry  # the common parser says what is missing
    if entry.get("remote") is True:
        return Refusal("runs on the remote development host ('remote': true), not on this machine", "remote")
    command = entry.get("command")
    if isinstance(command, Mapping):  # the older nested form: "command": {"path": ..., "args": [...], "env": {...}}
        nested = dict(command)
        unknown = set(nested) - {"path", "args", "env", "timeout"}
        if unknown:
            raise EntryError(f"has unknown key {sorted(unknown)[0]!r} (expected path, args, env)", "command")
        if "path" not in nested:
            raise EntryError("needs a 'path' (the program to run)", "command")
        for key in ("args", "env", "timeout"):
            if key in nested and key in entry:
                raise EntryError("given both inside 'command' and beside it", key)
        entry.update({key: nested[key] for key in ("args", "env", "timeout") if key in nested})
        entry["command"] = nested["path"]
        spelled["command"] = "command.path"
        spelled.update({key: f"command.{key}" for key in ("args", "env") if key in nested})
    if "timeout" in entry:
        timeout = entry.pop("timeout")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise EntryError("must be a positive number of seconds", "timeout")
        entry["tool_timeout_sec"] = timeout  # Zed: seconds a tool call may take
        spelled["tool_timeout_sec"] = "timeout"
    if entry.get("env") is None:
        entry.pop("env", None)  # Zed writes "env": null for no variables
    _pop_drop(entry, "settings", "remote")
    return entry


def _rename(entry: dict[str, Any], old: str, new: str, spelled: dict[str, str]) -> None:
    if old in entry:
        if new in entry:
            raise EntryError(f"given twice, as {old!r} and {new!r}", old)
        entry[new] = entry.pop(old)
        spelled[new] = old


_Translator = Callable[[str, dict[str, Any], Mapping[str, Any], dict[str, str]], dict[str, Any] | Refusal]
_TRANSLATORS: dict[str, _Translator] = {
    "cursor": _cursor,
    "vscode": _vscode,
    "gemini": _gemini,
    "windsurf": _windsurf,
    "zed": _zed,
}


# ---------------------------------------------------------------------------------------------- variables

_EXPANDED = ("command", "args", "env", "cwd", "url", "headers", "http_headers")
_EDITOR_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_GEMINI_VARIABLE = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})")


@dataclass(frozen=True)
class Context:
    """What the editors' predefined variables stand for: the user's home and the workspace folder, if known."""

    environ: Mapping[str, str]
    home: Path
    workspace: Path | None


def expand(dialect: Dialect, entry: dict[str, Any], context: Context) -> dict[str, Any]:
    """The entry with its host's variables replaced in the fields hosts expand; a reference that cannot be answered
    raises :class:`Unanswerable` (the server is unusable, and the error names the field)."""
    substitute = _SUBSTITUTES.get(dialect.name)
    if substitute is None:
        return entry
    entry = dict(entry)
    for key in _EXPANDED:
        value = entry.get(key)
        try:
            if isinstance(value, str):
                entry[key] = substitute(value, context)
            elif isinstance(value, list):
                entry[key] = [_item(substitute, item, f"item {i}", context) for i, item in enumerate(value)]
            elif isinstance(value, Mapping):
                entry[key] = {k: _item(substitute, v, f"value of {k!r}", context) for k, v in value.items()}
        except Unanswerable as exc:
            raise Unanswerable(exc.reason, key) from None
    return entry


class Unanswerable(ValueError):
    """A variable reference mcpshare cannot answer (``${input:...}``, an unset variable): the server is unusable."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def _item(substitute: Callable[[str, Context], str], item: object, where: str, context: Context) -> object:
    if not isinstance(item, str):
        return item
    try:
        return substitute(item, context)
    except Unanswerable as exc:
        raise Unanswerable(f"{where}: {exc.reason}") from None


def _env_value(name: str, context: Context, spelled: str) -> str:
    value = context.environ.get(name)
    if value is None:
        raise Unanswerable(f"environment variable {name!r} is not set (in {spelled})")
    return value


def _editor(
    value: str, context: Context, *, predefined: bool = True, extra: Callable[[str, str], str | None] | None = None
) -> str:
    """The editors' ``${...}`` variables: ``${env:NAME}``, and with ``predefined`` Cursor's and VS Code's
    ``${userHome}``, ``${workspaceFolder}``...; other text, and variables the host does not define, stay as written."""

    def one(match: re.Match[str]) -> str:
        spelled, inner = match.group(), match.group(1)
        kind, _, rest = inner.partition(":")
        if kind == "env" and rest:
            return _env_value(rest, context, spelled)
        if predefined and inner in _PREDEFINED:
            return _predefined(inner, spelled, context)
        answered = extra(spelled, inner) if extra is not None else None
        return spelled if answered is None else answered

    return _EDITOR_VARIABLE.sub(one, value) if "${" in value else value


_PREDEFINED = frozenset({"userHome", "pathSeparator", "/", "workspaceFolder", "workspaceFolderBasename"})


def _predefined(inner: str, spelled: str, context: Context) -> str:
    if inner == "userHome":
        return str(context.home)
    if inner in ("pathSeparator", "/"):
        return os.sep
    if context.workspace is None:
        raise Unanswerable(f"{spelled} names the workspace folder, and this user-wide file belongs to none")
    return str(context.workspace) if inner == "workspaceFolder" else context.workspace.name


def _vscode_only(spelled: str, inner: str) -> str | None:
    kind = inner.partition(":")[0]
    if kind == "input":
        raise Unanswerable(
            f"{spelled} is asked of the user by VS Code when it starts the server (an entry of 'inputs'); "
            "mcpshare cannot ask, and does not guess: set the value in 'env' from an environment variable "
            "(${env:NAME}), or run this server from VS Code"
        )
    if kind in ("command", "config"):
        raise Unanswerable(f"{spelled} is answered by VS Code itself (a command or a setting); mcpshare cannot")
    return None


def _windsurf_only(spelled: str, inner: str) -> str | None:
    if inner.partition(":")[0] == "file":
        raise Unanswerable(
            f"{spelled} (a file's content) is not supported: put the value in an environment variable and write "
            "${env:NAME}"
        )
    return None


def _gemini_substitute(value: str, context: Context) -> str:
    def one(match: re.Match[str]) -> str:
        return _env_value(match.group(1) or match.group(2), context, match.group())

    return _GEMINI_VARIABLE.sub(one, value) if "$" in value else value


_SUBSTITUTES: dict[str, Callable[[str, Context], str]] = {
    "cursor": lambda value, context: _editor(value, context),
    "vscode": lambda value, context: _editor(value, context, extra=_vscode_only),
    "windsurf": lambda value, context: _editor(value, context, predefined=False, extra=_windsurf_only),
    "gemini": _gemini_substitute,
}
