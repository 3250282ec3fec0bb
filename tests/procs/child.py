"""A stand-in server: prints ``ready <pid>`` on stdout, then echoes stdin lines to stdout until EOF and exits 0.

--ignore-term   ignore SIGTERM (a server that only dies by SIGKILL)
--ignore-stdin  never read stdin; sleep forever instead (a server that ignores MCP's stdin-EOF shutdown)
"""

import os
import signal
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    if "--ignore-term" in args:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdout.write(f"ready {os.getpid()}\n")
    sys.stdout.flush()
    if "--ignore-stdin" in args:
        while True:
            time.sleep(3600)
    for line in sys.stdin:
        sys.stdout.write(line)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
