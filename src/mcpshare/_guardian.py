"""Orphan protection that works even when its owner dies by SIGKILL.

This file is a small standalone program with two modes. It uses only the standard library and imports nothing from
mcpshare, because it is started as ``python -I -S _guardian.py``: isolated mode, no ``site``, no package
``__init__``. That keeps startup near 10 ms and memory small, and stops sibling modules from shadowing the stdlib.
It also runs as ``python -m mcpshare._guardian``.

Guardian mode (the default)::

    python -I -S _guardian.py [--grace SECONDS]

The owner (the pool) holds the write end of our stdin and sends one line per event:

    ``+<pgid> [<start>]``  protect process group <pgid>; <start> is the leader's start time in clock ticks
                           (field 22 of /proc/<pgid>/stat), used to notice that a pgid number was reused
    ``-<pgid>``            stop protecting it (the owner stopped that group itself)

When stdin reaches end-of-file the owner has died or closed the pipe. A process that is SIGKILLed runs no cleanup
code, but the kernel still closes its file descriptors, and that is the signal we wait for. We then SIGTERM every
registered group, wait up to ``--grace`` seconds for the groups to empty, SIGKILL what is left, and exit. EOF
always means "kill what is still registered": after a clean pool shutdown nothing is registered, so nothing is
killed. We run in our own session, so neither signals sent to the owner's process group nor the owner's own
group-kills reach us before we have acted. Before the first command we write ``ready`` on stdout and then point
stdout at /dev/null, so the owner knows we are running and we hold none of its pipes.

Exec trampoline mode::

    python -I -S _guardian.py --exec <owner-pid> <status-fd> [--nofile N] <argv...>

This sets ``PR_SET_PDEATHSIG(SIGKILL)`` (and, with ``--nofile``, the soft limit of open files: a broker raises its
own, its servers start with the usual one) and then execs ``argv``, so the direct child of the owner dies when the
owner's forking thread dies. It replaces ``preexec_fn``, which runs Python between fork and exec and is unsafe in
a threaded parent (and which anyio does not expose anyway). If exec fails we write the errno to <status-fd> and
exit 127. On success the fd, marked close-on-exec, closes silently: the owner reads EOF.
"""

from __future__ import annotations

import os
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1
_HAVE_PROC = os.path.exists("/proc/self/stat")


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """Return (state, pgrp, start ticks) of ``pid`` from /proc, or None if it is gone or /proc is unavailable.

    Start ticks (clock ticks after boot) are exact and unaffected by changes to the wall clock, unlike
    ``psutil.Process.create_time()``. They tell "our process" from "a new process with the same number".
    Shared with mcpshare.process, which imports it from here (this file must stay standard library only).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses. It ends at the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _replaced(pgid: int, start: int | None) -> bool:
    """True if a different process now leads a group with number ``pgid``.

    The kernel does not hand out a number while any process still uses it as its pgid. So if a process whose start
    time differs from the one we recorded leads a group with that number, our group emptied and the number was
    reused. Signalling it would hit a stranger. If no such leader exists, any members left are ours.
    """
    if start is None or not _HAVE_PROC:
        return False
    stat = proc_stat(pgid)
    return stat is not None and stat[1] == pgid and stat[2] != start


def _group_alive(pgid: int) -> bool:
    """True while the group has a member that is not a zombie.

    Zombies count as gone: they can't run. Some init processes never reap orphans, so waiting for zombies to
    disappear could take forever.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not _HAVE_PROC:
        return True
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = proc_stat(int(name))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                return True
    return False


def _signal(pgid: int, sig: int) -> bool:
    """Send ``sig`` to group ``pgid``. Return False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        print(f"mcpshare guardian: cannot signal process group {pgid}: {exc}", file=sys.stderr)
    return True


def kill_groups(groups: dict[int, int | None], grace: float) -> None:
    """SIGTERM every group, give them ``grace`` seconds to exit, then SIGKILL the groups that are still alive."""
    pending = [pgid for pgid, start in groups.items() if not _replaced(pgid, start)]
    pending = [pgid for pgid in pending if _signal(pgid, signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        time.sleep(0.02)
        pending = [pgid for pgid in pending if _group_alive(pgid)]
    for pgid in pending:
        if not _replaced(pgid, groups[pgid]):
            _signal(pgid, signal.SIGKILL)


def _forbidden_groups() -> set[int]:
    """Groups we must never kill, whatever the owner sends: init, our own group, the owner's group."""
    forbidden = {0, 1, os.getpgrp()}
    try:
        forbidden.add(os.getpgid(os.getppid()))
    except OSError:
        pass
    return forbidden


def _apply(line: bytes, groups: dict[int, int | None], forbidden: set[int]) -> None:
    """Apply one protocol line to ``groups``. Malformed lines are ignored: there is nobody to report them to."""
    parts = line[1:].split()
    if not parts:
        return
    try:
        pgid = int(parts[0])
        start = int(parts[1]) if len(parts) > 1 else None
    except ValueError:
        return
    if pgid in forbidden or pgid < 0:
        return
    if line.startswith(b"+"):
        groups[pgid] = start
    elif line.startswith(b"-"):
        groups.pop(pgid, None)


def _announce_ready() -> None:
    """Tell the owner we are running, then detach stdout so we hold no pipe of the owner's open."""
    try:
        os.write(1, b"ready\n")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass


def guard(grace: float) -> int:
    """Read commands until EOF, then kill every group still registered."""
    # We have no controlling terminal (own session), but be explicit: terminal signals concern the owner, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    forbidden = _forbidden_groups()
    _announce_ready()
    groups: dict[int, int | None] = {}
    try:
        for line in sys.stdin.buffer:
            _apply(line.strip(), groups, forbidden)
    except OSError:
        pass
    kill_groups(groups, grace)
    return 0


def _set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send ``sig`` when our parent (thread) dies. Best effort: the guardian is the real net."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        # prctl is variadic and reads unsigned longs: pass them explicitly so no upper register bits are garbage.
        ulong = ctypes.c_ulong
        libc.prctl(_PR_SET_PDEATHSIG, ulong(sig), ulong(0), ulong(0), ulong(0))
    except (ImportError, OSError, AttributeError):
        pass


def _set_soft_fd_limit(soft: int) -> None:
    try:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))
    except (ImportError, ValueError, OSError):
        pass  # the command starts with ours: what it would have had without us


def exec_with_pdeathsig(owner: int, status_fd: int, argv: list[str]) -> int:
    """Set PR_SET_PDEATHSIG, check the owner is still our parent, exec ``argv``. Returns only if exec failed."""
    os.set_inheritable(status_fd, False)  # closes on exec; EOF on it tells the owner exec succeeded
    # The interpreter ignores SIGPIPE and SIGXFSZ at startup. Ignored dispositions survive exec, so restore them,
    # as subprocess does with restore_signals=True.
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != owner:
        # The owner died before prctl took effect. The signal we asked for will never come, so act as if it had.
        return 1
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        try:
            os.write(status_fd, str(exc.errno or 0).encode())
        except OSError:
            pass
    return 127


def main(argv: list[str] | None = None) -> int:
    """Parse the command line by hand: importing argparse would cost more than the rest of our startup."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--exec"]:
        command = args[3:]
        if command[:1] == ["--nofile"] and len(command) > 2:
            _set_soft_fd_limit(int(command[1]))
            command = command[2:]
        if len(args) < 4 or not command:
            print("usage: _guardian.py --exec <owner-pid> <status-fd> [--nofile N] <argv...>", file=sys.stderr)
            return 2
        return exec_with_pdeathsig(int(args[1]), int(args[2]), command)
    grace = 1.0
    if args[:1] == ["--grace"] and len(args) == 2:
        grace = float(args[1])
    elif args:
        print("usage: _guardian.py [--grace SECONDS]", file=sys.stderr)
        return 2
    return guard(grace)


if __name__ == "__main__":
    sys.exit(main())
