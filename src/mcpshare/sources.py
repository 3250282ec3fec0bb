"""Where the broker finds the config of the server a client asks for.

Per client, in this order: the hello's ``spec`` (``mcpshare connect NAME -- command args...``, what ``mcpshare wrap``
writes), the hello's ``config`` file (``mcpshare connect NAME --config FILE``, read with the client's cwd as the
project), else the broker's own configs (``serve --config FILE...``, or the user's usual files, read per client cwd
so the project's ``.mcp.json`` counts). Shared by the Unix-socket broker and its HTTP front.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcpshare.config import (
    ConfigError,
    HttpServerConfig,
    McpConfig,
    StdioServerConfig,
    default_config_paths,
    load_config,
    merge,
    see_through_connect,
)

_SPEC_FIELDS = ("protocol", "lanes", "exclusive_tools", "startup_timeout_sec")
"""mcpshare's own server fields a shim's hello may carry (``mcpshare connect --protocol ...``)."""


class HelloError(ValueError):
    """A request the broker cannot serve; the message goes back to the client, which shows it to the user."""


class ConfigSource:
    """The broker's own configs: explicit files, or the user's usual files looked up per client cwd.

    Files are parsed once per (path, project, mtime, size): ``~/.claude.json`` holds Claude Code's whole history and
    can weigh megabytes, and parsing it on the event loop for every client would stall every session.
    """

    _CACHE_SIZE = 64

    def __init__(self, explicit: tuple[Path, ...] = (), *, home: Path | None = None) -> None:
        self.explicit = tuple(Path(path).absolute() for path in explicit)
        self.home = home
        self._cache: dict[tuple[str, str, int, int], McpConfig] = {}

    def paths(self, cwd: str | os.PathLike[str]) -> list[Path]:
        if self.explicit:
            return list(self.explicit)
        return default_config_paths(home=self.home or Path.home(), cwd=Path(cwd))

    def load(self, cwd: str | os.PathLike[str]) -> McpConfig:
        """Every file merged in order; a bad file raises :class:`ConfigError` naming it."""
        return merge(*(self.load_file(path, project=cwd) for path in self.paths(cwd)))

    def load_file(self, path: str | os.PathLike[str], *, project: str | os.PathLike[str]) -> McpConfig:
        """One file (cached while it is unchanged)."""
        try:
            info = os.stat(path)
        except OSError:
            return load_config(path, project=project, home=self.home)  # raises the ConfigError naming the problem
        key = (os.fspath(path), os.fspath(project), info.st_mtime_ns, info.st_size)
        config = self._cache.get(key)
        if config is None:
            config = load_config(path, project=project, home=self.home)
            if len(self._cache) >= self._CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = config
        return config


def server_config(hello: Mapping[str, Any], configs: ConfigSource) -> StdioServerConfig:
    """The stdio config a hello asks for (spec, config file, or the broker's configs); :class:`HelloError` if none."""
    name = hello["server"]
    spec = hello.get("spec")
    if spec is not None:
        if not isinstance(spec, dict) or not isinstance(spec.get("command"), str):
            raise HelloError("'spec' must be an object with a 'command'")
        env = spec.get("env") or {}
        env_keys = spec.get("env_keys") or list(env)
        if not isinstance(env, dict) or not isinstance(env_keys, list):
            raise HelloError("'spec' has an invalid 'env' or 'env_keys'")
        try:
            # Declared names the client has no value for stay declared (env_vars), so no other value reaches the
            # server under that name (see key.child_environment).
            return see_through_connect(
                StdioServerConfig(
                    name=name,
                    command=spec["command"],
                    args=tuple(spec.get("args") or ()),
                    env=env,
                    env_vars=tuple(key for key in env_keys if key not in env),
                    cwd=spec.get("cwd"),
                    share=spec.get("share") or "workspace",
                    **{key: spec[key] for key in _SPEC_FIELDS if spec.get(key) is not None},
                )
            )
        except (ConfigError, TypeError) as exc:
            raise HelloError(f"invalid server command: {exc}") from None
    path = hello.get("config")
    try:
        config = configs.load_file(path, project=hello["cwd"]) if path else configs.load(hello["cwd"])
    except ConfigError as exc:
        raise HelloError(str(exc)) from None
    server = config.servers.get(name)
    origin = ", ".join(config.sources) or "no config file found"
    if server is None and name in config.unusable:
        raise HelloError(str(config.unusable[name]))
    if server is None:
        known = ", ".join(config.names) or "none"
        raise HelloError(f"no MCP server named {name!r} in {origin} (known: {known})")
    if not server.enabled:
        raise HelloError(f"MCP server {name!r} is disabled in {origin}")
    if isinstance(server, HttpServerConfig):
        raise HelloError(f"MCP server {name!r} is a Streamable HTTP server: point the client at its URL directly")
    return server
