"""The ``mcpshare`` console script: a dispatcher that keeps ``mcpshare connect`` light.

``mcpshare connect`` runs once per (MCP client x server) and must start in milliseconds with a few MB, so it must
never import typer, rich, anyio or the SDK. Every other command goes to the typer CLI (:mod:`mcpshare.cli`).

``mcpshare serve --autostarted`` (what a shim runs to start a broker in the background) is also handled here: it
takes the broker lock *before* importing anything heavy, so the losers of a start race (ten clients starting at
once may each start a broker) exit within milliseconds instead of paying the SDK import first.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["connect"]:
        from mcpshare import shim

        return shim.main(args[1:])
    if args[:2] == ["serve", "--autostarted"] and len(args) == 2:
        return _autostarted_broker()
    from mcpshare import cli

    return cli.main(args)


def _autostarted_broker() -> int:
    """Win the broker lock or leave quietly; the winner then imports and runs the broker with the lock held."""
    from mcpshare import runtime

    paths = runtime.RuntimePaths.default()
    try:
        runtime.ensure_runtime_dir(paths.directory)
        lock = runtime.try_lock(paths.lock)
    except OSError as exc:
        sys.stderr.write(f"mcpshare serve: cannot use the runtime directory {paths.directory}: {exc}\n")
        return 1
    if lock is None:
        return 0  # another broker holds the lock: it serves our shim too
    from mcpshare.broker import run_autostarted

    return run_autostarted(paths, lock)


if __name__ == "__main__":
    sys.exit(main())
