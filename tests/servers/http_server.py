#!/usr/bin/env python3
"""The test server's tools over Streamable HTTP: ``python http_server.py <port> [--marker=..] [--name=..]``.

Serves ``http://127.0.0.1:<port>/mcp`` (stateful sessions, so server-to-client requests such as elicitation
work). Port 0 picks a free port. Once the server accepts connections it prints ``PORT <n>`` on stdout,
which is both how a test learns the port and its readiness signal. On SIGINT/SIGTERM uvicorn shuts down
gracefully and then re-raises the signal, so the exit status is that signal.

Shares ``build_server`` (testserver_app.py) with testserver.py, imported from this script's own directory
(Python puts it on sys.path when a file is run as a script), so both transports expose the same tools.
"""

from __future__ import annotations

import os
import socket
import sys

import anyio
import uvicorn
from testserver import parse_options
from testserver_app import build_server

READY_POLL_SECONDS = 0.01


async def serve(port: int, argv: list[str]) -> None:
    """Bind 127.0.0.1:<port>, start uvicorn on that socket and announce the port once it has started."""
    opts = parse_options(argv, os.environ)
    server = build_server(opts.name, opts.show_env, opts.markers)
    app = server.streamable_http_app()  # the session manager runs in the app's lifespan
    # Binding ourselves (rather than passing port=0 to uvicorn) makes the chosen port known before serving.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))

    async def announce() -> None:
        while not uv.started:
            if uv.should_exit:
                return
            await anyio.sleep(READY_POLL_SECONDS)
        sys.stdout.write(f"PORT {sock.getsockname()[1]}\n")
        sys.stdout.flush()

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await uv.serve(sockets=[sock])
        tg.cancel_scope.cancel()


def main() -> None:
    """Parse ``<port> [options]`` and serve until signalled."""
    if len(sys.argv) < 2 or not sys.argv[1].isdigit():
        sys.stderr.write("usage: http_server.py <port> [--marker=..] [--name=..] [--show-env=A,B]\n")
        sys.exit(2)
    anyio.run(serve, int(sys.argv[1]), sys.argv[2:])


if __name__ == "__main__":
    main()
