"""The one translation the drop-ins share: a framework's stdio parameters as a pool config."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from mcpshare.config import StdioServerConfig


def stdio_config(
    *,
    name: str | None,
    command: str,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> StdioServerConfig:
    """A :class:`StdioServerConfig` for the same process the framework would start itself.

    ``name`` only labels logs and errors (processes are shared by what starts them, never by name); without one it is
    the command's file name. ``env`` is added to the pool's base environment, as for every pooled server.
    """
    return StdioServerConfig(
        name=name or os.path.basename(command) or command,
        command=command,
        args=tuple(args),
        env=dict(env or {}),
        cwd=os.fspath(cwd) if cwd is not None else None,
    )
