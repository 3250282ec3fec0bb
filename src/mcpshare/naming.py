"""Qualified tool names: ``mcp__<server>__<tool>``, safe for every model API.

Model APIs accept tool names of ``[A-Za-z0-9_-]`` up to 64 characters, and a host offers the tools of many servers
in one flat list, so a tool's name must say which server it belongs to. Names are sanitized (every other character
becomes ``_``), and a short hash of the real ``(server, tool)`` pair is appended when a name would be too long or
would be the same as another tool's. So every qualified name maps back to exactly one tool, and the name of a tool
depends only on the set of tools, never on the order servers happened to list them in.

Layer-free: this module imports nothing from mcpshare.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

__all__ = ["MAX_NAME", "PREFIX", "SEPARATOR", "assign_names", "hashed_name", "plain_name", "sanitize"]

MAX_NAME = 64
"""The longest tool name the strictest model API (OpenAI's) accepts."""
PREFIX = "mcp"
SEPARATOR = "__"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_HASH_LEN = 8
_LONG_HASH_LEN = 16  # only if two different pairs share an 8-digit suffix and a prefix (about 2**-32)


def sanitize(part: str) -> str:
    """Replace every character outside ``[A-Za-z0-9_-]`` (ASCII only) with ``_``."""
    return _UNSAFE.sub("_", part)


def _digest(server: str, tool: str, length: int) -> str:
    # The NUL separator keeps ("a_", "b") and ("a", "_b") apart: no server or tool name contains a NUL.
    return hashlib.sha256(f"{server}\0{tool}".encode()).hexdigest()[:length]


def plain_name(server: str, tool: str) -> str:
    """The qualified name before clash and length handling: ``mcp__<server>__<tool>``, sanitized."""
    return f"{PREFIX}{SEPARATOR}{sanitize(server)}{SEPARATOR}{sanitize(tool)}"


def hashed_name(server: str, tool: str, *, hash_length: int = _HASH_LEN) -> str:
    """The qualified name with a hash of the real pair appended, its readable part cut to fit :data:`MAX_NAME`.

    The readable part is kept as long as possible so a model (and a person reading a transcript) still sees
    which server and tool it is.
    """
    suffix = "_" + _digest(server, tool, hash_length)
    return plain_name(server, tool)[: MAX_NAME - len(suffix)] + suffix


def assign_names(tools: Iterable[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Qualified name -> ``(server, tool)`` for every distinct pair: unique, at most 64 characters each.

    A pair keeps its plain name unless that name is too long or is shared with another pair (two servers or tools
    whose names sanitize alike, or a plain name equal to another pair's hashed one); only the pairs involved in a
    clash get a hash suffix, so adding a server does not rename the tools of the others.
    """
    pairs = sorted(set(tools))
    hashed: dict[tuple[str, str], int] = {}  # pair -> hash length, for the pairs that need a suffix
    for pair in pairs:
        if len(plain_name(*pair)) > MAX_NAME:
            hashed[pair] = _HASH_LEN
    while True:
        by_name: dict[str, list[tuple[str, str]]] = {}
        for pair in pairs:
            length = hashed.get(pair)
            name = plain_name(*pair) if length is None else hashed_name(*pair, hash_length=length)
            by_name.setdefault(name, []).append(pair)
        clashes = [members for members in by_name.values() if len(members) > 1]
        if not clashes:
            return {name: members[0] for name, members in by_name.items()}
        progress = False
        for members in clashes:
            for pair in members:
                # Plain -> hashed; hashed names that still clash (a 32-bit suffix collision) -> a longer hash.
                wanted = _HASH_LEN if pair not in hashed else _LONG_HASH_LEN
                progress = progress or hashed.get(pair) != wanted
                hashed[pair] = wanted
        if not progress:
            # Equal in their readable part and in 64 bits of sha256: no real configuration gets here.
            raise ValueError(f"cannot give distinct names to the tools {clashes!r}")
