"""The least any process in the middle can do: copy bytes between its stdio and a child server, nothing else.

``python relay.py COMMAND ARGS...`` starts the server on pipes and copies stdin -> server and server -> stdout
with one ``select`` loop and no parsing. The broker section runs it as a reference: an agent talking to a server
through this relay pays the two extra pipe hops (and process wake-ups) of any out-of-process design, so
``relay/direct`` is the ceiling for the shim's ratio on this machine, and ``shim/relay`` is what the broker's own
work costs on top. Standard library only.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys


def main(argv: list[str]) -> int:
    server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert server.stdin is not None and server.stdout is not None
    to_server, from_server = server.stdin.fileno(), server.stdout.fileno()
    route = {0: to_server, from_server: 1}
    try:
        while route:
            readable, _, _ = select.select(list(route), [], [])
            for fd in readable:
                data = os.read(fd, 65536)
                if not data:
                    return 0  # either side ended: the session is over
                view = memoryview(data)
                while view:
                    view = view[os.write(route[fd], view) :]
        return 0
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
