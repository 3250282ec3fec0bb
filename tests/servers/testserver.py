#!/usr/bin/env python3
"""A configurable stdio MCP server for the mcpshare test suite.

Run it as a plain script (``python tests/servers/testserver.py``); it imports nothing from ``tests``. This file
is the launcher (options, failure-mode switches, stdlib only); the tools live in testserver_app.py.
Every MCP feature the pool has to route (progress, cancellation, elicitation, sampling, roots, logging,
resource subscriptions, list_changed) has a tool here, so tests can drive each path against a real
SDK 2.x server instead of a mock, and ``whoami`` reports the pid so tests can prove *which* process
answered.

Tools: echo(text), whoami(), stats(), add(a, b), sleep(seconds), progress(steps=3, delay=0.01), ask(question),
sample(prompt), roots(), log(level, message), crash(code=1), spawn_child(inherit_stdio=False), bump(),
add_tool(name). Resources: test://counter, template test://item/{id}. Prompt: greet(name). Completion for
the template's `id` and the prompt's `name`. Handlers: resources/subscribe, resources/unsubscribe,
logging/setLevel. Capabilities advertise listChanged for tools, resources and prompts.

Command line (all optional):
    --marker=<text>     ignored; lets tests find this process by its cmdline (see tests/helpers.py)
    --name=<name>       serverInfo.name (same as TESTSERVER_NAME)
    --show-env=A,B      names whose values ``whoami`` reports (same as TESTSERVER_SHOW_ENV)

Environment switches, applied before serving, in this order:
    TESTSERVER_EXIT_AT_START=<code>  write one line to stderr and exit with <code> at once
    TESTSERVER_STARTUP_DELAY=<secs>  sleep before reading stdin (a slow-starting server)
    TESTSERVER_NO_HANDSHAKE=1        read and discard stdin until EOF, never answer (a hung server)
    TESTSERVER_STDOUT_GARBAGE=1      print one non-JSON line on stdout, then serve normally
    TESTSERVER_NAME=<name>           serverInfo.name (default "testserver")
    TESTSERVER_SHOW_ENV=A,B          comma-separated env names reported by ``whoami``
    TESTSERVER_LOG_LEVEL=<LEVEL>     the SDK's own stderr logging (default WARNING, keeps stderr quiet)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class Options:
    """What argv and the environment select for this process."""

    name: str = "testserver"
    show_env: list[str] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)


def parse_options(argv: list[str], env: Mapping[str, str]) -> Options:
    """Read argv and env; argv wins. Unknown arguments are an error so typos in tests fail loudly."""
    opts = Options(
        name=env.get("TESTSERVER_NAME") or "testserver",
        show_env=[n for n in env.get("TESTSERVER_SHOW_ENV", "").split(",") if n],
    )
    for arg in argv:
        if arg.startswith("--marker="):
            opts.markers.append(arg.removeprefix("--marker="))
        elif arg.startswith("--name="):
            opts.name = arg.removeprefix("--name=")
        elif arg.startswith("--show-env="):
            opts.show_env = [n for n in arg.removeprefix("--show-env=").split(",") if n]
        else:
            sys.stderr.write(f"testserver: unknown argument {arg!r} (use --marker=, --name=, --show-env=)\n")
            sys.exit(2)
    return opts


def apply_startup_switches(env: Mapping[str, str]) -> None:
    """Apply the TESTSERVER_* failure-mode switches that act before the server serves."""
    if (code := env.get("TESTSERVER_EXIT_AT_START")) is not None:
        sys.stderr.write(f"testserver: exiting at start with code {code}\n")
        sys.stderr.flush()
        os._exit(int(code))
    if delay := env.get("TESTSERVER_STARTUP_DELAY"):
        time.sleep(float(delay))
    if env.get("TESTSERVER_NO_HANDSHAKE") == "1":
        sys.stderr.write("testserver: reading stdin, never answering\n")
        sys.stderr.flush()
        while sys.stdin.buffer.readline():
            pass
        sys.exit(0)
    if env.get("TESTSERVER_STDOUT_GARBAGE") == "1":
        sys.stdout.write("this line is not JSON-RPC\n")
        sys.stdout.flush()


def main() -> None:
    """Entry point: parse options, apply startup switches, serve over stdio until stdin closes."""
    opts = parse_options(sys.argv[1:], os.environ)
    apply_startup_switches(os.environ)
    # Imported only now: the switches above must act "at once", before the ~0.5 s SDK import.
    from testserver_app import build_server

    build_server(opts.name, opts.show_env, opts.markers).run("stdio")


if __name__ == "__main__":
    main()
