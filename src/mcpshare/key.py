"""The pool key of a stdio server: exactly what starts the process, with every value resolved.

Layer 2: imports only mcpshare.config. Two requests share a process if and only if their keys are equal, so the key
holds *resolved values*, never names: the absolute command found on PATH, the args in order, the environment values
the child actually gets (explicit ``env`` plus ``env_vars`` read from the requester's environment), the real working
directory, and the share scope. Keying by server name is the mistake other multiplexers made: two users' configs
called "github" with different tokens must never share a process, and one server configured under two names should.

A key's repr shows neither args nor env values (they hold API tokens); use :meth:`PoolKey.short` to tell keys apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from mcpshare.config import ShareScope, StdioServerConfig

__all__ = ["PoolKey", "child_environment", "make_key"]

_KEY_FORMAT = 3  # bump when the meaning of a field changes, so digests from older code never match


@dataclass(frozen=True, slots=True, repr=False)
class PoolKey:
    """What one shared process is started from; equal keys share a process, different keys never do.

    ``instance`` makes a ``share="thread"`` key unique to its thread. ``sandbox`` is an opaque label of the sandbox
    policy the process runs under: a process started for one policy never serves another.
    """

    command: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str | None
    scope: ShareScope
    instance: str | None = None
    sandbox: str | None = None
    protocol: str = "2025-11-25"
    """The era the process is spoken to in: a process speaks one, for its whole life."""
    declared: tuple[str, ...] = ()
    """Every variable name the config declares (``env`` and ``env_vars``), with a value in ``env`` or not: the
    process gets exactly these from the key, and none of them from anywhere else."""

    def __post_init__(self) -> None:
        # Canonical forms whoever builds the key: equality must not depend on list-vs-tuple or env order.
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "env", tuple(sorted((str(k), str(v)) for k, v in self.env)))
        object.__setattr__(self, "declared", tuple(sorted({*self.declared, *(name for name, _ in self.env)})))

    def digest(self) -> str:
        """The sha256 (hex) of a canonical JSON of every field: a stable id for logs, sockets and status."""
        canonical = {
            "v": _KEY_FORMAT,
            "command": self.command,
            "args": list(self.args),
            "env": [list(pair) for pair in self.env],
            "cwd": self.cwd,
            "scope": self.scope,
            "instance": self.instance,
            "sandbox": self.sandbox,
            "declared": list(self.declared),
            "protocol": self.protocol,
        }
        # ensure_ascii: os.environ may hold surrogate-escaped bytes that would not encode as UTF-8.
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    def short(self) -> str:
        """The first 10 hex digits of :meth:`digest`: enough to tell keys apart by eye."""
        return self.digest()[:10]

    def __repr__(self) -> str:
        program = os.path.basename(self.command) or self.command
        return f"PoolKey({program}#{self.short()} scope={self.scope})"

    __str__ = __repr__


def make_key(
    config: StdioServerConfig,
    *,
    workspace: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
    instance: str | None = None,
    sandbox: str | None = None,
) -> PoolKey:
    """The key for running ``config`` for a requester whose cwd is ``workspace`` and environment ``environ``.

    * ``share="workspace"``: the process runs in ``config.cwd`` (relative ones resolved against the workspace) or in
      the workspace itself, and that directory is part of the key: one process per workspace.
    * ``share="global"``: no cwd in the key unless the config names one (relative to the workspace if given).
    * ``share="thread"``: like workspace, plus ``instance`` (required) so the key matches no other.
      ``instance`` is ignored for the other scopes, so callers may pass a thread id unconditionally.

    ``environ`` (default ``os.environ``) supplies ``env_vars`` values and the PATH the command is looked up in;
    a PATH in the key's own env wins, since that is the PATH the child gets. Directories are resolved with
    ``realpath`` so a symlinked workspace shares with its target. The command is made absolute but its symlinks are
    kept: a venv's ``python`` or a multi-call binary behaves differently when started through its target.
    """
    if not isinstance(config, StdioServerConfig):
        raise TypeError(f"only stdio servers have pool keys, got {type(config).__name__}")
    if config.share == "thread" and not instance:
        raise ValueError(f"server {config.name!r} has share='thread': make_key needs an instance token")
    environ = os.environ if environ is None else environ
    ws = os.path.realpath(workspace) if workspace is not None else None
    cwd = _key_cwd(config, ws)
    env = _key_env(config, environ)
    search_from = cwd or ws or os.getcwd()
    command = _resolve_command(config.command, dict(env).get("PATH", environ.get("PATH", os.defpath)), search_from)
    return PoolKey(
        command=command,
        args=config.args,
        env=env,
        cwd=cwd,
        scope=config.share,
        instance=instance if config.share == "thread" else None,
        sandbox=sandbox,
        declared=(*config.env, *config.env_vars),
        protocol=config.protocol,
    )


def _key_cwd(config: StdioServerConfig, workspace: str | None) -> str | None:
    """The real directory the process runs in, or None (the broker's own) for a global server without a cwd."""
    if config.cwd is not None:
        if os.path.isabs(config.cwd):
            return os.path.realpath(config.cwd)
        return os.path.realpath(os.path.join(workspace or os.getcwd(), config.cwd))
    if config.share == "global":
        return None
    if workspace is None:
        raise ValueError(f"server {config.name!r} has share={config.share!r}: make_key needs a workspace")
    return workspace


def _key_env(config: StdioServerConfig, environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Explicit ``env`` over ``env_vars`` passed through (a name missing from ``environ`` is simply absent)."""
    env = {name: environ[name] for name in config.env_vars if name in environ}
    env.update(config.env)
    return tuple(sorted(env.items()))


def _resolve_command(command: str, path: str, base: str) -> str:
    """An absolute program path where one can be determined, else the command unchanged (spawn reports it).

    A command with a slash is relative to the directory the child starts in. A bare name is looked up on
    ``path``, whose relative entries are likewise taken from that directory, as exec would after chdir.
    """
    if os.sep in command or (os.altsep and os.altsep in command):
        return os.path.normpath(os.path.join(base, command))
    search = os.pathsep.join(os.path.join(base, entry) for entry in path.split(os.pathsep))
    found = shutil.which(command, path=search)
    return os.path.normpath(os.path.abspath(found)) if found else command


def child_environment(key: PoolKey, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a key's process gets: ``base`` (default ``os.environ``) without any name the config declares,
    then the key's own values. So a declared variable the requester has no value for is absent, not whatever value
    ``base`` happened to hold (a broker's base is the environment of whoever started it)."""
    declared = set(key.declared)
    source = os.environ if base is None else base
    environment = {name: value for name, value in source.items() if name not in declared}
    environment.update(key.env)
    return environment
