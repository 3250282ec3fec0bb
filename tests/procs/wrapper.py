"""An npx-style launcher: starts child.py as a grandchild in the same process group and waits for it.

Prints ``grandchild <pid>`` on stdout (shared with the grandchild, so lines may come in either order).
Arguments after the options are passed to child.py.

--exit-at-once  exit as soon as the grandchild is started, leaving it running in our process group
"""

import os
import subprocess
import sys
from pathlib import Path

CHILD = Path(__file__).with_name("child.py")


def main() -> int:
    args = sys.argv[1:]
    exit_at_once = "--exit-at-once" in args
    child_args = [a for a in args if a != "--exit-at-once"]
    grandchild = subprocess.Popen([sys.executable, str(CHILD), *child_args])
    sys.stdout.write(f"grandchild {grandchild.pid}\n")
    sys.stdout.flush()
    if exit_at_once:
        os._exit(0)
    return grandchild.wait()


if __name__ == "__main__":
    sys.exit(main())
