"""Qualified tool names: ``mcp__<server>__<tool>``, safe for every model API.

Model APIs accept tool names of ``[A-Za-z0-9_-]`` up to 64 characters. Names are sanitized, and a short hash of the
real (server, tool) pair is appended when a name would be too long or when two tools would get the same name, so
every qualified name maps back to exactly one tool and does not depend on the order tools were listed in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

MAX_NAME = 64
PREFIX = "mcp"
SEPARATOR = "__"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_HASH_LEN = 8


def sanitize(part: str) -> str:
    """Replace every character outside ``[A-Za-z0-9_-]`` with ``_``."""
    return _UNSAFE.sub("_", part)


def _suffix(server: str, tool: str) -> str:
    return hashlib.sha256(f"{server}\0{tool}".encode()).hexdigest()[:_HASH_LEN]


def plain_name(server: str, tool: str) -> str:
    """The qualified name before clash and length handling."""
    return f"{PREFIX}{SEPARATOR}{sanitize(server)}{SEPARATOR}{sanitize(tool)}"


def hashed_name(server: str, tool: str) -> str:
    """The qualified name with a hash suffix, cut to fit :data:`MAX_NAME`."""
    suffix = "_" + _suffix(server, tool)
    return plain_name(server, tool)[: MAX_NAME - len(suffix)] + suffix


def assign_names(tools: Iterable[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Qualified name -> (server, tool) for every pair, unique and at most 64 characters each."""
    pairs = sorted(set(tools))
    groups: dict[str, list[tuple[str, str]]] = {}
    for server, tool in pairs:
        groups.setdefault(plain_name(server, tool), []).append((server, tool))
    names: dict[str, tuple[str, str]] = {}
    for plain, members in groups.items():
        for server, tool in members:
            name = plain if len(members) == 1 and len(plain) <= MAX_NAME else hashed_name(server, tool)
            names[name] = (server, tool)
    if len(names) != len(pairs):  # a plain name equal to another pair's hashed name: hash everything involved
        names = {hashed_name(server, tool): (server, tool) for server, tool in pairs}
    return names
