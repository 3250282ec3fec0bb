"""The shared servers file: the stdio definitions that ``mcpshare wrap --http`` moved out of client configs.

A client that speaks Streamable HTTP needs no shim process: its config can point at the broker's HTTP front,
``http://127.0.0.1:PORT/mcp/<route>``. The server's own definition (``command``, ``args``, ``env``, ``cwd``,
``share``...) must then live where the broker reads it, and no longer in the client's file: Codex refuses to load a
config whose url entry still has ``command``, ``args`` or ``env``. It moves to ``~/.config/mcpshare/servers.json``
(:func:`mcpshare.config.shared_servers_path`), an ``mcpServers`` file that the broker reads after the user's own
configs, so its definitions win over the HTTP entries that point at them.

One definition per *route*, the last segment of the URL: the server's name when it is free or already holds the
same definition, else ``NAME-2``, ``NAME-3``... (two projects may each have a ``db`` of their own). ``usedBy``
records which config entries point at each route, so ``unwrap`` removes a definition once nobody uses it.

The file holds what the client configs held, API keys in ``env`` included: it is written atomically, mode 0600, in
a 0700 directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcpshare.config import ConfigError

USED_BY = "usedBy"
"""The top-level key recording, per route, the config entries (``<config path>#<label>``) that point at it; the
broker's loader reads ``mcpServers`` only."""

_ROUTE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


def user_key(config: str | os.PathLike[str], label: str) -> str:
    """How ``usedBy`` names one entry of one config file (the file by its real path: links point at one file)."""
    return f"{os.path.realpath(config)}#{label}"


@dataclass
class SharedServers:
    """The file's content: route -> definition, and route -> who uses it. Load, change, :meth:`save`."""

    path: Path
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    used_by: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SharedServers:
        """The file as it is (empty when missing); :class:`ConfigError` naming it when it cannot be read."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"cannot read mcpshare's servers file: {exc}", file=os.fspath(path)) from None
        servers = data.get("mcpServers", {}) if isinstance(data, dict) else None
        used_by = data.get(USED_BY, {}) if isinstance(data, dict) else None
        if not isinstance(servers, dict) or not isinstance(used_by, dict):
            raise ConfigError("expected an object with 'mcpServers' and 'usedBy' objects", file=os.fspath(path))
        return cls(path, dict(servers), {route: list(users) for route, users in used_by.items()})

    def route_for(self, name: str, definition: dict[str, Any], user: str) -> str:
        """The route serving ``definition`` for ``user``, added if needed: ``name`` (made URL-safe) when it is free,
        holds this very definition, or is already this user's; else the first free ``name-N``."""
        base = _ROUTE_CHARACTERS.sub("-", name).strip("-.") or "server"
        number = 1
        while True:
            route = base if number == 1 else f"{base}-{number}"
            users = self.used_by.get(route, [])
            if route not in self.servers or self.servers[route] == definition or users == [user]:
                self._release_user(user)
                self.servers[route] = definition
                self.used_by.setdefault(route, []).append(user)
                return route
            number += 1

    def definition(self, route: str) -> dict[str, Any] | None:
        return self.servers.get(route)

    def release(self, config: str | os.PathLike[str]) -> bool:
        """Forget every entry of ``config``, and the definitions no entry uses any more; False if it had none."""
        prefix = user_key(config, "")
        forgot = False
        for route in list(self.used_by):
            users = [user for user in self.used_by[route] if not user.startswith(prefix)]
            forgot = forgot or len(users) != len(self.used_by[route])
            self.used_by[route] = users
            if not users:
                del self.used_by[route]
                self.servers.pop(route, None)
        return forgot

    def _release_user(self, user: str) -> None:
        for route, users in list(self.used_by.items()):
            if user in users:
                users.remove(user)
                if not users:
                    del self.used_by[route]
                    self.servers.pop(route, None)

    def save(self) -> None:
        """Write the file (0600, atomically), or remove it when it holds nothing any more."""
        if not self.servers:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {"mcpServers": self.servers, USED_BY: self.used_by}
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:  # mkstemp: 0600 from the start
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
