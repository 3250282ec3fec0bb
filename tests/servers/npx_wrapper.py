#!/usr/bin/env python3
"""An ``npx``/``uvx``-style launcher: ``python npx_wrapper.py <command> [args...]``.

It starts ``argv[1:]`` as its child in the *same* process group (no new session), lets the child inherit
stdin/stdout/stderr, relays nothing itself, and exits with the child's exit status. So the pid a client
spawns is the wrapper, and the real MCP server is a grandchild: exactly the shape that leaks servers when
a client kills only the pid it started instead of the whole process group.

Like npx, it does not forward signals: SIGTERM kills the wrapper and leaves the child running unless the
whole group is signalled.
"""

from __future__ import annotations

import subprocess
import sys


def main(argv: list[str]) -> int:
    """Run argv as a child in this process group and return its exit code (128+signal if signalled)."""
    if not argv:
        sys.stderr.write("usage: npx_wrapper.py <command> [args...]\n")
        return 2
    # No stdio arguments: the child inherits fds 0-2, so the wrapper never touches a byte of the protocol.
    child = subprocess.Popen(argv)
    code = child.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
