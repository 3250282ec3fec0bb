"""An agent host to be SIGKILLed by a test: starts a server (optionally with a guardian), prints the pids as one
JSON line on stdout, then sleeps until killed.

--no-guardian    spawn without a guardian (only PR_SET_PDEATHSIG protects the direct child)
--no-pdeathsig   spawn without the PDEATHSIG trampoline (only the guardian protects)
--direct         run child.py directly instead of through wrapper.py (no grandchild)

The server ignores SIGTERM and stdin EOF, so only SIGKILL removes it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio

from mcpshare.process import Guardian, ServerProcess

PROCS = Path(__file__).resolve().parent


async def read_pids(proc: ServerProcess, wanted: set[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    buffer = b""
    while not wanted <= found.keys():
        buffer += await proc.stdout.receive()
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            word, pid = line.decode().split()
            found[word] = int(pid)
    return found


async def main() -> None:
    args = sys.argv[1:]
    guardian = None if "--no-guardian" in args else await Guardian.start()
    if "--direct" in args:
        argv = [sys.executable, str(PROCS / "child.py"), "--ignore-term", "--ignore-stdin"]
        wanted = {"ready"}
    else:
        argv = [sys.executable, str(PROCS / "wrapper.py"), "--ignore-term", "--ignore-stdin"]
        wanted = {"ready", "grandchild"}
    proc = await ServerProcess.spawn(
        "host-test", argv, env=os.environ, cwd=None, guardian=guardian, pdeathsig="--no-pdeathsig" not in args
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(proc.drain_stderr)
        pids = await read_pids(proc, wanted)
        report = {
            "host": os.getpid(),
            "guardian": guardian.pid if guardian is not None else None,
            "server": proc.pid,
            "grandchild": pids.get("grandchild"),
            "pdeathsig": proc.pdeathsig,
        }
        print(json.dumps(report), flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main)
