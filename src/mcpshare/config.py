"""MCP server configurations: the frozen value types and the loaders for the files real hosts write.

Layer 1: this module imports nothing from mcpshare but the stdlib-only :mod:`mcpshare.connect_line`. Everything
above it (pool keys, the pool, threads) trusts that a config which exists is valid, so validation happens here,
once, and a bad file raises :class:`ConfigError` as a whole: no loader ever returns part of a config, because a
half-loaded config silently drops servers.

The files of every host are read (:func:`load_config` tells them apart by name, then by content):

* Codex ``config.toml``: tables ``[mcp_servers.NAME]``; the rest of the file is ignored.
* ``mcpServers`` JSON: ``.mcp.json``, ``claude_desktop_config.json`` and Claude Code's ``~/.claude.json`` (whose
  ``projects`` map holds per-project servers).
* VS Code, Cursor, Gemini CLI, Windsurf and Zed files: :mod:`mcpshare.formats` knows their tables, fields and
  variables, and turns each entry into the spellings below.

All of them go through one parser (:func:`parse_server`) that accepts the union of the Codex and ``mcpServers``
spellings. Unknown fields
are errors, so a typo such as ``comand`` or ``enviroment`` cannot be silently ignored; a short allow-list of fields
that real configs carry for other hosts (``description``, ``autoApprove``, Codex's ``required``...) is ignored.

Strings are kept literally: ``${VAR}`` and ``$VAR`` in ``env``, ``args``, ``cwd`` or headers are *not* expanded (the
server receives the characters ``${VAR}``). Passing a value through from the requester's environment is what
``env_vars`` (stdio) and ``bearer_token_env_var`` / ``env_http_headers`` (HTTP) are for.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args
from urllib.parse import urlsplit

from mcpshare import connect_line, formats

__all__ = [
    "ConfigError",
    "FrozenMapping",
    "HttpServerConfig",
    "McpConfig",
    "ProtocolChoice",
    "ServerConfig",
    "ShareScope",
    "StdioServerConfig",
    "check_config",
    "default_config_paths",
    "load_codex_toml",
    "load_config",
    "load_mcp_json",
    "merge",
    "parse_server",
    "parse_servers",
    "shared_servers_path",
]

ShareScope = Literal["global", "workspace", "thread"]
SHARE_SCOPES: tuple[str, ...] = get_args(ShareScope)
ProtocolChoice = Literal["2025-11-25", "auto", "2026-07-28"]
PROTOCOL_CHOICES: tuple[str, ...] = get_args(ProtocolChoice)

K = TypeVar("K")
V = TypeVar("V")


class ConfigError(ValueError):
    """A configuration that cannot be used, located as precisely as we know: file, server, field.

    The message reads ``<file>: server 'NAME', field 'FIELD': <what is wrong>``, leaving out the parts that are
    unknown, so the user can go straight to the line to fix. ``reason`` holds the bare "what is wrong".
    """

    def __init__(
        self, reason: str, *, file: str | None = None, server: str | None = None, field: str | None = None
    ) -> None:
        self.reason = reason
        self.file = file
        self.server = server
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.server is not None:
            where.append(f"server {self.server!r}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        text = f"{', '.join(where)}: {self.reason}" if where else self.reason
        return f"{self.file}: {text}" if self.file is not None else text

    def with_context(
        self, *, file: str | None = None, server: str | None = None, field: str | None = None
    ) -> ConfigError:
        """A copy with the missing location parts filled in; parts already known are kept (inner knows best)."""
        return ConfigError(
            self.reason,
            file=self.file if self.file is not None else file,
            server=self.server if self.server is not None else server,
            field=self.field if self.field is not None else field,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments are lost by the default exception pickling (which replays self.args).
        return (_rebuild_config_error, (self.reason, self.file, self.server, self.field))


def _rebuild_config_error(reason: str, file: str | None, server: str | None, field: str | None) -> ConfigError:
    return ConfigError(reason, file=file, server=server, field=field)


class FrozenMapping(Mapping[K, V]):
    """An immutable mapping that is hashable and compares by value.

    Why not ``types.MappingProxyType``: configs are frozen dataclasses used as dict keys and compared on refresh,
    so their fields must be hashable, and a proxy is neither hashable nor picklable.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._data: dict[K, V] = dict(data)

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMapping({self._data!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMapping, (self._data,))


# ---------------------------------------------------------------------------------------------- value validators
# Each takes the value and the field name it came from, returns the normalized value or raises ConfigError(field=...).
# They accept both the JSON/TOML shapes (list, dict) and the normalized ones (tuple, FrozenMapping), so the
# dataclasses can run them again in __post_init__ and stay valid however they are built.


def _describe(value: object) -> str:
    """A value's type as users know it from their files (never the value itself: it may be a secret)."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, got {_describe(value)}", field=name)
    if not value.strip():
        raise ConfigError("must not be empty", field=name)
    if "\0" in value:
        raise ConfigError("must not contain a NUL character", field=name)
    return value


def _optional_text(value: object, name: str) -> str | None:
    return None if value is None else _text(value, name)


def _strings(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"must be a list of strings, got {_describe(value)}", field=name)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"item {index} must be a string, got {_describe(item)}", field=name)
        if "\0" in item:
            raise ConfigError(f"item {index} must not contain a NUL character", field=name)
    return tuple(value)


def _optional_strings(value: object, name: str) -> tuple[str, ...] | None:
    return None if value is None else _strings(value, name)


def _string_map(value: object, name: str) -> FrozenMapping[str, str]:
    """A str -> str table. Values are never echoed in errors: env values and headers are where secrets live."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"must be a table of strings, got {_describe(value)}", field=name)
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise ConfigError(f"invalid name {key!r}", field=name)
        if not isinstance(item, str):
            hint = " (quote it)" if isinstance(item, int | float) else ""
            raise ConfigError(f"value of {key!r} must be a string, got {_describe(item)}{hint}", field=name)
        if "\0" in item:
            raise ConfigError(f"value of {key!r} must not contain a NUL character", field=name)
    return FrozenMapping(value)


def _env_var_names(value: object, name: str) -> tuple[str, ...]:
    """Names to pass through. Codex also allows ``{name = "X", source = "local"}``; a remote source is not ours."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"must be a list of variable names, got {_describe(value)}", field=name)
    names = []
    for index, item in enumerate(value):
        if isinstance(item, Mapping):
            item = _env_var_entry(item, index, name)
        if not isinstance(item, str) or not item or "=" in item or "\0" in item:
            raise ConfigError(f"item {index} must be an environment variable name", field=name)
        names.append(item)
    return tuple(names)


def _env_var_entry(item: Mapping[str, Any], index: int, name: str) -> object:
    unknown = set(item) - {"name", "source"}
    if unknown:
        raise ConfigError(f"item {index} has unknown key {sorted(unknown)[0]!r}", field=name)
    if item.get("source", "local") != "local":
        raise ConfigError(f"item {index}: only source 'local' is supported", field=name)
    return item.get("name")


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {_describe(value)}", field=name)
    return value


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"must be a number of seconds, got {_describe(value)}", field=name)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"must be a positive number, got {value!r}", field=name)
    return float(value)


def _share(value: object, name: str) -> ShareScope:
    if value not in SHARE_SCOPES:
        shown = repr(value) if isinstance(value, str) else _describe(value)
        raise ConfigError(f"must be one of {', '.join(map(repr, SHARE_SCOPES))}, got {shown}", field=name)
    return value  # type: ignore[return-value]


def _protocol(value: object, name: str) -> ProtocolChoice:
    if value not in PROTOCOL_CHOICES:
        shown = repr(value) if isinstance(value, str) else _describe(value)
        raise ConfigError(f"must be one of {', '.join(map(repr, PROTOCOL_CHOICES))}, got {shown}", field=name)
    return value  # type: ignore[return-value]


def _lanes(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
        shown = repr(value) if isinstance(value, int) and not isinstance(value, bool) else _describe(value)
        raise ConfigError(f"must be a whole number from 1 to 16, got {shown}", field=name)
    return value


def _url(value: object, name: str) -> str:
    text = _text(value, name)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        # The URL itself is not echoed: tokens sometimes ride in its query string.
        raise ConfigError("must be an http:// or https:// URL with a host", field=name)
    return text


# ---------------------------------------------------------------------------------------------- server configs

_SECRET_FIELDS = frozenset({"args", "env", "http_headers"})


@dataclass(frozen=True, kw_only=True, slots=True, repr=False)
class _ServerCommon:
    """Fields every transport has. Private: code should test for the concrete classes, not this base."""

    name: str
    enabled: bool = True
    startup_timeout_sec: float = 30.0
    tool_timeout_sec: float = 120.0
    enabled_tools: tuple[str, ...] | None = None
    disabled_tools: tuple[str, ...] = ()

    _VALIDATORS: ClassVar[dict[str, Callable[[Any, str], Any]]] = {
        "name": _text,
        "enabled": _flag,
        "startup_timeout_sec": _seconds,
        "tool_timeout_sec": _seconds,
        "enabled_tools": _optional_strings,
        "disabled_tools": _strings,
    }

    def __post_init__(self) -> None:
        """Validate and normalize every field, so a config built in code is as trustworthy as a loaded one."""
        try:
            for spec in dataclasses.fields(self):
                check = self._VALIDATORS[spec.name]
                object.__setattr__(self, spec.name, check(getattr(self, spec.name), spec.name))
        except ConfigError as exc:
            raise exc.with_context(server=self.name if isinstance(self.name, str) else None) from None

    def allows_tool(self, tool: str) -> bool:
        """Whether a tool of this server is exposed: ``enabled_tools`` is applied first, then ``disabled_tools``."""
        if self.enabled_tools is not None and tool not in self.enabled_tools:
            return False
        return tool not in self.disabled_tools

    def __repr__(self) -> str:
        # Env values, header values and arguments routinely hold API tokens: keep them out of logs and tracebacks.
        parts = [f"{spec.name}={_redacted(spec.name, getattr(self, spec.name))}" for spec in dataclasses.fields(self)]
        return f"{type(self).__name__}({', '.join(parts)})"


def _redacted(name: str, value: object) -> str:
    if name not in _SECRET_FIELDS:
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key!r}: '***'" for key in value) + "}"
    return f"<{len(value)} hidden>" if isinstance(value, tuple) else "<hidden>"


@dataclass(frozen=True, kw_only=True, slots=True, repr=False)
class StdioServerConfig(_ServerCommon):
    """A server mcpshare starts itself and shares: one process per distinct resolved config (see mcpshare.key)."""

    transport: ClassVar[Literal["stdio"]] = "stdio"

    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=FrozenMapping)
    env_vars: tuple[str, ...] = ()
    cwd: str | None = None
    share: ShareScope = "workspace"
    protocol: ProtocolChoice = "2025-11-25"
    """The era the pool speaks to the process: the handshake (default; a server that refuses it for 2026-07-28
    only gets that), ``"auto"`` (``server/discover`` first), or ``"2026-07-28"``. See the README for why."""
    exclusive_tools: tuple[str, ...] = ()
    """Tools known to ask their client something: run one at a time per process from the start."""
    lanes: int = 1
    """Processes one key may run so that calls that ask need not wait for each other (extra ones only while
    such calls queue)."""

    _VALIDATORS: ClassVar[dict[str, Callable[[Any, str], Any]]] = {
        **_ServerCommon._VALIDATORS,
        "command": _text,
        "args": _strings,
        "env": _string_map,
        "env_vars": _env_var_names,
        "cwd": _optional_text,
        "share": _share,
        "protocol": _protocol,
        "exclusive_tools": _strings,
        "lanes": _lanes,
    }


@dataclass(frozen=True, kw_only=True, slots=True, repr=False)
class HttpServerConfig(_ServerCommon):
    """A Streamable HTTP server: nothing to pool, each thread connects on its own through the SDK.

    ``env_http_headers`` maps a header name to the name of an environment variable holding its value (Codex's
    field of that name), like ``bearer_token_env_var`` does for ``Authorization``.
    """

    transport: ClassVar[Literal["http"]] = "http"

    url: str
    bearer_token_env_var: str | None = None
    http_headers: Mapping[str, str] = field(default_factory=FrozenMapping)
    env_http_headers: Mapping[str, str] = field(default_factory=FrozenMapping)

    _VALIDATORS: ClassVar[dict[str, Callable[[Any, str], Any]]] = {
        **_ServerCommon._VALIDATORS,
        "url": _url,
        "bearer_token_env_var": _optional_text,
        "http_headers": _string_map,
        "env_http_headers": _string_map,
    }


ServerConfig = StdioServerConfig | HttpServerConfig


@dataclass(frozen=True)
class McpConfig:
    """A validated set of servers by name, and the files they came from (for messages and ``status``)."""

    servers: Mapping[str, ServerConfig] = field(default_factory=FrozenMapping)
    sources: tuple[str, ...] = ()
    unusable: Mapping[str, ConfigError] = field(default_factory=FrozenMapping)
    """Servers a file names but that cannot run as written (a ``${VAR}`` with no value): asking for one raises its
    error, while the file's other servers stay usable."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "servers", FrozenMapping(self.servers))
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "unusable", FrozenMapping(self.unusable))
        for name, server in self.servers.items():
            if name != server.name:
                raise ConfigError(f"registered under the name {name!r} but named {server.name!r}", server=name)

    @property
    def names(self) -> list[str]:
        """Every server the files name, usable or not, sorted (for "known servers" in messages)."""
        return sorted({*self.servers, *self.unusable})

    def enabled(self) -> dict[str, ServerConfig]:
        """The servers to run, in file order."""
        return {name: server for name, server in self.servers.items() if server.enabled}

    def get(self, name: str) -> ServerConfig:
        """The server called ``name``; KeyError naming the known servers, since the usual cause is a typo;
        :class:`ConfigError` if the server is :attr:`unusable`."""
        try:
            return self.servers[name]
        except KeyError:
            if name in self.unusable:
                raise self.unusable[name] from None
            known = ", ".join(self.names) or "none"
            origin = f" (from {', '.join(self.sources)})" if self.sources else ""
            raise KeyError(f"unknown MCP server {name!r}; known servers{origin}: {known}") from None


# ---------------------------------------------------------------------------------------------- parsing

_STDIO_FIELDS = frozenset(
    {"command", "args", "env", "env_vars", "cwd", "share", "protocol", "exclusive_tools", "lanes"}
)
_HTTP_FIELDS = frozenset({"url", "bearer_token_env_var", "http_headers", "env_http_headers"})
_COMMON_FIELDS = frozenset({"enabled", "startup_timeout_sec", "tool_timeout_sec", "enabled_tools", "disabled_tools"})
_ALIASES = {"headers": "http_headers"}
# Handled specially by the parser rather than copied to a dataclass field.
_SPECIAL_FIELDS = frozenset({"type", "transportType", "disabled", "startup_timeout_ms"})

# Fields real configs carry for other hosts' features. Ignoring them loses nothing mcpshare could act on.
_FOREIGN_FIELDS = frozenset(
    {
        # mcpServers JSON (Claude, Cline, Roo, Cursor, Gemini CLI)
        "description",
        "autoApprove",
        "alwaysAllow",
        "timeout",
        "trust",
        "oauth",
        # Codex
        "required",
        "scopes",
        "oauth_resource",
        "tool_timeout",
        "supports_parallel_tool_calls",
        "default_tools_approval_mode",
        "tools",
        "experimental_environment",
        "name",
    }
)

# Fields that change what a server receives: ignoring them would quietly break auth or env, so say why not.
_UNSUPPORTED_HINTS = {
    "bearer_token": "an inline bearer token is not supported; put it in an environment variable and name it in "
    "'bearer_token_env_var'",
    "envFile": "env files are not supported; list the variables in 'env' or pass them through with 'env_vars'",
    "headersHelper": "header helper commands are not supported; use 'headers' or 'env_http_headers'",
    "httpUrl": "use 'url' (with type \"http\")",
    "serverUrl": "use 'url' (with type \"http\")",
}

_KNOWN_FIELDS = _STDIO_FIELDS | _HTTP_FIELDS | _COMMON_FIELDS | _SPECIAL_FIELDS | set(_ALIASES)
_HTTP_TYPES = frozenset({"http", "streamable-http", "streamableHttp", "streamable_http"})


def parse_server(name: str, raw: Mapping[str, Any], *, source: str | None = None) -> ServerConfig:
    """One server entry (a Codex table or an ``mcpServers`` object) as a validated config.

    ``source`` is the file it came from; it is only used in error messages.
    """
    try:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"must be a table of settings, got {_describe(raw)}")
        _reject_unknown_fields(raw)
        transport = _transport(raw)
        fields, spelled = _canonical_fields(raw, transport)
        fields["name"] = name
        try:
            server: ServerConfig = (StdioServerConfig if transport == "stdio" else HttpServerConfig)(**fields)
        except ConfigError as exc:
            # Report the field as the user spelled it ("headers", not "http_headers").
            raise _respelled(exc, spelled) from None
        return see_through_connect(server) if isinstance(server, StdioServerConfig) else server
    except ConfigError as exc:
        raise exc.with_context(file=source, server=name) from None


def _respelled(exc: ConfigError, spelled: Mapping[str, str]) -> ConfigError:
    if exc.field is None or exc.field not in spelled:
        return exc
    return ConfigError(exc.reason, file=exc.file, server=exc.server, field=spelled[exc.field])


def _reject_unknown_fields(raw: Mapping[str, Any]) -> None:
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(f"field names must be strings, got {_describe(key)}")
        if key in _KNOWN_FIELDS or key in _FOREIGN_FIELDS:
            continue
        if key in _UNSUPPORTED_HINTS:
            raise ConfigError(_UNSUPPORTED_HINTS[key], field=key)
        close = difflib.get_close_matches(key, sorted(_KNOWN_FIELDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown field{hint}", field=key)


def _transport(raw: Mapping[str, Any]) -> Literal["stdio", "http"]:
    """stdio when there is a ``command``, HTTP when there is a ``url``; ``type`` must agree when given."""
    has_command, has_url = "command" in raw, "url" in raw
    if has_command and has_url:
        raise ConfigError("has both 'command' (stdio) and 'url' (HTTP); give exactly one", field="url")
    if not has_command and not has_url:
        raise ConfigError("needs either 'command' (a stdio server) or 'url' (a Streamable HTTP server)")
    transport: Literal["stdio", "http"] = "stdio" if has_command else "http"
    for key in ("type", "transportType"):
        if key in raw:
            _check_declared_type(raw[key], key, transport)
    return transport


def _check_declared_type(value: object, key: str, transport: Literal["stdio", "http"]) -> None:
    if value == "sse":
        raise ConfigError('the SSE transport is not supported; use Streamable HTTP (type "http")', field=key)
    if value == "stdio":
        declared = "stdio"
    elif value in _HTTP_TYPES:
        declared = "http"
    else:
        shown = repr(value) if isinstance(value, str) else _describe(value)
        raise ConfigError(f'must be "stdio" or "http", got {shown}', field=key)
    if declared != transport:
        needs = "'command'" if declared == "stdio" else "'url'"
        raise ConfigError(f"says {value!r} but the server has no {needs}", field=key)


def _canonical_fields(
    raw: Mapping[str, Any], transport: Literal["stdio", "http"]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Keyword arguments for the dataclass, and a map from each argument back to the spelling the file used."""
    fields: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    allowed = _COMMON_FIELDS | (_STDIO_FIELDS if transport == "stdio" else _HTTP_FIELDS)
    for key, value in raw.items():
        canonical = _ALIASES.get(key, key)
        if key in _FOREIGN_FIELDS or key in _SPECIAL_FIELDS:
            continue
        if canonical not in allowed:
            kind = "stdio servers (with 'command')" if transport == "http" else "HTTP servers (with 'url')"
            raise ConfigError(f"only applies to {kind}", field=key)
        if canonical in fields:
            raise ConfigError(f"given twice, as {spelled[canonical]!r} and {key!r}", field=key)
        fields[canonical] = value
        spelled[canonical] = key
    _apply_disabled(raw, fields, spelled)
    _apply_startup_ms(raw, fields, spelled)
    return fields, spelled


def _apply_disabled(raw: Mapping[str, Any], fields: dict[str, Any], spelled: dict[str, str]) -> None:
    """``disabled`` (Claude, Cline) is the negation of ``enabled``; both may be given only if they agree."""
    if "disabled" not in raw:
        return
    enabled = not _flag(raw["disabled"], "disabled")
    if "enabled" in fields and fields["enabled"] is not enabled:
        raise ConfigError("contradicts 'enabled'", field="disabled")
    fields["enabled"] = enabled
    spelled["enabled"] = "disabled"


def _apply_startup_ms(raw: Mapping[str, Any], fields: dict[str, Any], spelled: dict[str, str]) -> None:
    """Codex's ``startup_timeout_ms``; as in Codex, ``startup_timeout_sec`` wins when both are given."""
    if "startup_timeout_ms" not in raw:
        return
    seconds = _seconds(raw["startup_timeout_ms"], "startup_timeout_ms") / 1000
    if "startup_timeout_sec" not in fields:
        fields["startup_timeout_sec"] = seconds
        spelled["startup_timeout_sec"] = "startup_timeout_ms"


def parse_servers(raw: Mapping[str, Any], *, source: str | None = None) -> McpConfig:
    """A ``{name: {settings}}`` table as a config; the first bad server raises and nothing is returned.

    An entry that only points at a broker (:class:`ConnectReference`) is kept in ``unusable``: a real definition of
    that server in another file replaces it (see :func:`merge`).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"servers must be a table of tables, got {_describe(raw)}", file=source)
    servers: dict[str, ServerConfig] = {}
    unusable: dict[str, ConfigError] = {}
    for name, entry in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"invalid server name {name!r}", file=source)
        try:
            servers[name] = parse_server(name, entry, source=source)
        except ConnectReference as reference:
            unusable[name] = reference
    return McpConfig(servers, (source,) if source is not None else (), unusable)


# ---------------------------------------------------------------------------------------------- wrapped entries


class ConnectReference(ConfigError):
    """An entry that runs ``mcpshare connect NAME`` with no embedded command: it names a server of the broker's
    configs (or of ``--config FILE``) instead of defining one. Kept so that a real definition elsewhere wins."""

    def __init__(self, reason: str, *, target: str, config_file: str | None, **where: str | None) -> None:
        super().__init__(reason, **where)
        self.target = target
        self.config_file = config_file

    def with_context(
        self, *, file: str | None = None, server: str | None = None, field: str | None = None
    ) -> ConnectReference:
        return ConnectReference(
            self.reason,
            target=self.target,
            config_file=self.config_file,
            file=self.file if self.file is not None else file,
            server=self.server if self.server is not None else server,
            field=self.field if self.field is not None else field,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConfigError, (self.reason,))  # pickled as the plain error it reads as


def see_through_connect(server: StdioServerConfig) -> StdioServerConfig:
    """The server an ``mcpshare connect`` entry stands for (what ``mcpshare wrap`` writes), else ``server`` itself.

    ``mcpshare connect NAME [--env-keys A,B] [--share S] [--cwd D] -- CMD ARGS...`` is read as ``CMD ARGS...``:
    whoever loads this config to *run* servers (the broker, a ThreadManager) must run the real server, never a shim
    that would connect back to a broker. The entry's own fields stay (``env``, timeouts, tool filters...);
    ``--env-keys`` names that are not in ``env`` become ``env_vars`` (the shim passes them through), ``--share``
    sets ``share`` and ``--cwd`` is taken relative to the entry's ``cwd``. An entry with no embedded command raises
    :class:`ConnectReference`.
    """
    try:
        line = connect_line.parse_entry(server.command, server.args)
    except connect_line.UsageError as exc:
        raise ConfigError(f"runs `mcpshare connect` with invalid arguments: {exc}", field="args") from None
    if line is None:
        return server
    if line.command is None:
        where = (
            f"the server {line.server!r} of {line.config}" if line.config else f"the broker's server {line.server!r}"
        )
        raise ConnectReference(
            f"runs `mcpshare connect {line.server}` without the server's own command: it points at {where} "
            "instead of defining one, and no other config defines this server",
            target=line.server,
            config_file=line.config,
            field="args",
        )
    passed = tuple(key for key in line.env_keys if key not in server.env and key not in server.env_vars)
    cwd = server.cwd
    if line.cwd is not None:
        cwd = line.cwd if cwd is None else os.path.join(cwd, line.cwd)
    extra = {key: value for key, value in line.spec_fields().items()}
    if "exclusive_tools" in extra:
        extra["exclusive_tools"] = tuple(extra["exclusive_tools"])  # type: ignore[arg-type]
    return dataclasses.replace(
        server,
        command=line.command[0],
        args=tuple(line.command[1:]),
        env_vars=server.env_vars + passed,
        cwd=cwd,
        share=line.share or server.share,  # type: ignore[arg-type]  # parse() checked it is a ShareScope
        **extra,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------------- files


def _read_text(path: str | os.PathLike[str], *, encoding: str = "utf-8") -> str:
    """A file's text; unreadable or undecodable files are config errors, so callers handle one exception type."""
    try:
        return Path(path).read_text(encoding=encoding)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=os.fspath(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 (byte {exc.start})", file=os.fspath(path)) from exc


def load_codex_toml(path: str | os.PathLike[str]) -> McpConfig:
    """The ``[mcp_servers.*]`` tables of a Codex ``config.toml``; every other table is Codex's business."""
    file = os.fspath(path)
    try:
        data = tomllib.loads(_read_text(path))
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's message already ends in "(at line L, column C)".
        raise ConfigError(f"invalid TOML: {exc}", file=file) from None
    servers = data.get("mcp_servers", {})
    if not isinstance(servers, dict):
        raise ConfigError(f"'mcp_servers' must be a table, got {_describe(servers)}", file=file)
    return parse_servers(servers, source=file)


def load_mcp_json(
    path: str | os.PathLike[str],
    *,
    project: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> McpConfig:
    """The ``mcpServers`` of a JSON config, with ``project``'s own servers (Claude Code's ``projects``) on top.

    ``${VAR}`` references are expanded as Claude Code does (see :func:`expand_env_references`), from ``environ``
    (default: this process's environment).
    """
    file = os.fspath(path)
    data = _json_object(_parse_json(_read_text(path, encoding="utf-8-sig"), file), file)
    return _load_mcp_json_data(data, file, project=project, environ=environ)


def _json_object(data: Any, file: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a JSON object, got {_describe(data)}", file=file)
    return data


def _load_mcp_json_data(
    data: Mapping[str, Any],
    file: str,
    *,
    project: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None,
    every_project: bool = False,
) -> McpConfig:
    environ = os.environ if environ is None else environ
    layers = [_servers_table(data, file, "mcpServers")]
    if every_project:
        layers += [_servers_table(entry, file, f"projects.{key}.mcpServers") for key, entry in _projects(data, file)]
    elif project is not None and (entry := _project_entry(data, project, file)) is not None:
        layers.append(_servers_table(entry[1], file, f"projects.{entry[0]}.mcpServers"))
    configs = []
    for table in layers:
        expanded, unusable = _expand_servers(table, file, environ)
        parsed = parse_servers(expanded, source=file)
        configs.append(dataclasses.replace(parsed, unusable={**parsed.unusable, **unusable}))
    return merge(*configs)


def _parse_json(text: str, file: str, dialect: formats.Dialect | None = None) -> Any:
    """JSON, or for the hosts that allow them, JSON with comments (and trailing commas): those are blanked out first,
    so line and column numbers in errors are those of the file."""
    if dialect is not None and dialect.comments:
        try:
            text = formats.blank_comments(text, trailing_commas=dialect.trailing_commas)
        except ValueError as exc:
            raise ConfigError(f"invalid JSON: {exc}", file=file) from None
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        hint = " (comments are not allowed in this file)" if "//" in text or "/*" in text else ""
        raise ConfigError(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}{hint}", file=file
        ) from None
    except DuplicateKeyError as exc:
        raise ConfigError(f"duplicate key {exc.args[0]!r} in one JSON object", file=file) from None


class DuplicateKeyError(ValueError):
    """A key given twice in one JSON object: json keeps the last one silently, which would hide a server."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for json.loads that raises :class:`DuplicateKeyError` on a repeated key."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def _servers_table(holder: Mapping[str, Any], file: str, where: str) -> Mapping[str, Any]:
    servers = holder.get("mcpServers", {})
    if not isinstance(servers, dict):
        raise ConfigError(f"'{where}' must be an object, got {_describe(servers)}", file=file)
    return servers


def _projects(data: Mapping[str, Any], file: str) -> list[tuple[str, Mapping[str, Any]]]:
    """Every ``projects`` entry of ``~/.claude.json`` that has servers (the others hold only Claude Code's state)."""
    projects = data.get("projects", {})
    if not isinstance(projects, dict):
        raise ConfigError(f"'projects' must be an object, got {_describe(projects)}", file=file)
    found = []
    for key, entry in projects.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"'projects.{key}' must be an object, got {_describe(entry)}", file=file)
        if "mcpServers" in entry:
            found.append((key, entry))
    return found


def _project_entry(
    data: Mapping[str, Any], project: str | os.PathLike[str], file: str
) -> tuple[str, Mapping[str, Any]] | None:
    """The ``projects`` entry for a directory, matched on the normalized path, then on the symlink-free one."""
    projects = data.get("projects", {})
    if not isinstance(projects, dict):
        raise ConfigError(f"'projects' must be an object, got {_describe(projects)}", file=file)
    wanted = os.path.normpath(os.path.abspath(project))
    match = next((key for key in projects if os.path.normpath(key) == wanted), None)
    if match is None:
        real = os.path.realpath(wanted)
        match = next((key for key in projects if os.path.realpath(key) == real), None)
    if match is None:
        return None
    entry = projects[match]
    if not isinstance(entry, dict):
        raise ConfigError(f"'projects.{match}' must be an object, got {_describe(entry)}", file=file)
    return match, entry


# ---------------------------------------------------------------------------------------------- ${VAR} in JSON

# Claude Code expands ``${VAR}`` and ``${VAR:-default}`` in these fields of ``.mcp.json`` / ``~/.claude.json``
# servers before it launches them, so the same file must mean the same command here. ``${env:VAR}`` is Cursor's
# spelling of ``${VAR}``. The default applies when the variable is unset or empty, as in the shell.
_ENV_REFERENCE = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_EXPANDED_FIELDS = ("command", "args", "env", "url", "headers", "http_headers")


def expand_env_references(text: str, environ: Mapping[str, str]) -> str:
    """``text`` with every ``${VAR}`` / ``${VAR:-default}`` replaced; a variable with neither value nor default
    raises :class:`ConfigError` (without a location: the caller adds it)."""

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = environ.get(name)
        if found:
            return found
        if default is not None:
            return default
        if found is not None:
            return found  # set but empty, and no default: empty, as the shell would
        raise ConfigError(f"environment variable {name!r} is not set (write ${{{name}:-default}} for a default)")

    return _ENV_REFERENCE.sub(value, text) if "${" in text else text


def _expand_servers(
    table: Mapping[str, Any], file: str, environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, ConfigError]]:
    """The servers of an ``mcpServers`` table with their references expanded, and apart, the error of each server
    that names a variable with no value. Entries of the wrong shape are left as they are, for
    :func:`parse_server` to report."""
    expanded: dict[str, Any] = {}
    unusable: dict[str, ConfigError] = {}
    for name, entry in table.items():
        if not isinstance(entry, Mapping):
            expanded[name] = entry
            continue
        entry = dict(entry)
        for key in _EXPANDED_FIELDS:
            value = entry.get(key)
            try:
                if isinstance(value, str):
                    entry[key] = expand_env_references(value, environ)
                elif isinstance(value, list):
                    entry[key] = [_expand_item(item, f"item {i}", environ) for i, item in enumerate(value)]
                elif isinstance(value, Mapping):
                    entry[key] = {k: _expand_item(v, f"value of {k!r}", environ) for k, v in value.items()}
            except ConfigError as exc:
                unusable[name] = exc.with_context(file=file, server=str(name), field=key)
                break
        else:
            expanded[name] = entry
    return expanded, unusable


def _expand_item(item: object, where: str, environ: Mapping[str, str]) -> object:
    if not isinstance(item, str):
        return item
    try:
        return expand_env_references(item, environ)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.reason}") from None


def load_config(
    path: str | os.PathLike[str],
    *,
    project: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> McpConfig:
    """Any host's file, its dialect told by its name and folder, else by its content (see :mod:`mcpshare.formats`).

    ``project`` is the directory the servers are for: the ``projects`` entry of ``~/.claude.json`` to add, and the
    workspace folder of an editor's user-wide file (a project's own file is for its own folder). ``environ``
    (default: this process's) answers ``${VAR}`` references, ``home`` (default: the user's) ``${userHome}``.
    """
    return _load(path, project=project, environ=environ, home=home, every_project=False)


def check_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> McpConfig:
    """Load every part of a file, as :func:`load_config` would (the same errors), to validate it before an edit:
    all of ``~/.claude.json``'s projects, not only one. Servers that are :attr:`McpConfig.unusable` as written (a
    variable with no value, a refused ``${input:...}``) do not fail the check: the file is valid for its host."""
    return _load(path, project=None, environ=environ, home=None, every_project=True)


def _load(
    path: str | os.PathLike[str],
    *,
    project: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None,
    home: Path | None,
    every_project: bool,
) -> McpConfig:
    file = os.fspath(path)
    dialect = formats.dialect_by_name(path)
    if dialect is formats.CODEX:
        return load_codex_toml(path)
    if dialect is None and Path(path).suffix.lower() != ".json":
        suffix = Path(path).suffix.lower()
        raise ConfigError(
            f"unknown config format {suffix or '(no suffix)'!r}; expected .toml (Codex) or .json (mcpServers, VS Code, "
            "Cursor, Gemini CLI, Windsurf, Zed)",
            file=file,
        )
    text = _read_text(path, encoding="utf-8-sig")
    # A file whose name says nothing may hold comments if its content says it is an editor's.
    data = _json_object(_parse_json(text, file, dialect or formats.ZED), file)
    if dialect is None:
        dialect = formats.dialect_by_content(data)
        if not dialect.comments:
            _parse_json(text, file)  # strict JSON after all: the same error a host would give
    if dialect is formats.MCP_JSON:
        return _load_mcp_json_data(data, file, project=project, environ=environ, every_project=every_project)
    home = Path.home() if home is None else home
    root = formats.project_root(file, home)
    workspace = root if root is not None else (Path(os.path.abspath(project)) if project is not None else None)
    context = formats.Context(os.environ if environ is None else environ, home, workspace)
    return merge(
        *(
            _load_table(dialect, where, table, data, file, context)
            for where, table in formats.server_tables(dialect, data)
        )
    )


def _load_table(
    dialect: formats.Dialect,
    where: str,
    table: object,
    data: Mapping[str, Any],
    file: str,
    context: formats.Context,
) -> McpConfig:
    """One server table of an editor's file: each entry translated, its variables answered, then parsed as usual."""
    if not isinstance(table, dict):
        raise ConfigError(f"'{where}' must be an object, got {_describe(table)}", file=file)
    entries: dict[str, Any] = {}
    unusable: dict[str, ConfigError] = {}
    spellings: dict[str, dict[str, str]] = {}
    for name, raw in table.items():
        if not isinstance(raw, Mapping):
            entries[name] = raw  # parse_servers says what is wrong with it
            continue
        try:
            translated = formats.translate(dialect, name, raw, data=data)
        except formats.EntryError as exc:
            raise ConfigError(exc.reason, file=file, server=name, field=exc.field) from None
        if isinstance(translated, formats.Refusal):
            unusable[name] = ConfigError(translated.reason, file=file, server=name, field=translated.field)
            continue
        entry, spellings[name] = translated
        try:
            entries[name] = formats.expand(dialect, entry, context)
        except formats.Unanswerable as exc:
            field_name = spellings[name].get(exc.field, exc.field) if exc.field else None
            unusable[name] = ConfigError(exc.reason, file=file, server=name, field=field_name)
    try:
        parsed = parse_servers(entries, source=file)
    except ConfigError as exc:
        spelled = spellings.get(exc.server or "", {})
        if exc.field in spelled:
            raise ConfigError(exc.reason, file=exc.file, server=exc.server, field=spelled[exc.field]) from None
        raise
    return dataclasses.replace(parsed, unusable={**parsed.unusable, **unusable})


def merge(*configs: McpConfig) -> McpConfig:
    """Configs layered in order: a later server replaces an earlier one of the same name, whole (no field mixing)."""
    servers: dict[str, ServerConfig] = {}
    unusable: dict[str, ConfigError] = {}
    sources: list[str] = []
    for config in configs:
        for name in config.servers:
            unusable.pop(name, None)
        for name, error in config.unusable.items():
            if isinstance(error, ConnectReference) and name in servers:
                continue  # an entry pointing at a broker never hides a real definition
            servers.pop(name, None)
            unusable[name] = error
        servers.update(config.servers)
        sources.extend(config.sources)
    return McpConfig(servers, tuple(dict.fromkeys(sources)), unusable)


def shared_servers_path(home: Path) -> Path:
    """mcpshare's own servers file (``mcpServers`` JSON): the stdio definitions ``mcpshare wrap --http`` moved out of
    client configs, which now point at the broker's HTTP front instead (see :mod:`mcpshare.http_servers`)."""
    return home / ".config" / "mcpshare" / "servers.json"


def default_config_paths(*, home: Path, cwd: Path, environ: Mapping[str, str] | None = None) -> list[Path]:
    """The config files that exist among the places hosts keep them, in merge order (later wins by name): the
    user's files, then the project's (``cwd``), then mcpshare's own servers file; why this order, and which places,
    in :func:`mcpshare.formats.default_sources`. ``$CODEX_HOME`` is read from ``environ`` (default: this process's
    environment). A file reached twice (``cwd`` is the home directory, a symlink) counts once, at its first place."""
    seen: set[str] = set()
    found = []
    for path in formats.default_sources(home=home, cwd=cwd, environ=os.environ if environ is None else environ):
        if path.is_file() and (real := os.path.realpath(path)) not in seen:
            seen.add(real)
            found.append(path)
    return found
