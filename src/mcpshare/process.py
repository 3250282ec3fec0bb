"""One stdio MCP server process, with its whole process group, and the guardian that outlives us.

Layer 3 of mcpshare. This module does not know about MCP: it starts a command, exposes its stdin and stdout as
anyio byte streams, keeps the tail of its stderr, and stops it so that nothing it started survives.

Why process groups. Servers are usually launched through wrappers (``npx``, ``uvx``, ``sh -c``). The process we
start is often not the server, and the wrapper may exit before its child does. So every server runs as the leader
of a new session and process group. We signal the group, never just the pid, and after a stop we scan for anything
still in the group: a grandchild whose parent already exited is re-parented to init but keeps our pgid.

Why a guardian. When the owner (the pool, the broker, the agent host) is SIGKILLed, no cleanup code runs, and its
servers would live on as orphans. :class:`Guardian` is a tiny separate process (``_guardian.py``, stdlib only) that
holds the read end of a pipe from the owner. The kernel closes the pipe when the owner dies, however it dies. The
guardian then kills every group still registered.

Why PR_SET_PDEATHSIG as well, and how. The guardian covers whole groups, but only once it is running and a group is
registered. As a second line of defence for the direct child, on Linux we start each server through a small exec
trampoline (``_guardian.py --exec``). It sets ``PR_SET_PDEATHSIG(SIGKILL)`` and then execs the real command. The
usual way to do this, ``preexec_fn``, runs Python code between fork and exec, which is unsafe in a threaded
process, and anyio does not expose it. The trampoline costs one interpreter start (~10 ms) per spawn. The kernel
sends the signal when the *thread* that forked the child exits, not when the process exits. So the trampoline is
used only on asyncio, which forks in the event-loop thread. trio forks in a worker thread, and that thread exiting
after an idle period would kill a healthy server. The signal reaches only the direct child: an ``npx`` wrapper dies
and its ``node`` child does not. That is why it is a second line and the guardian is the first.

Zombies. Some init processes (containers, sandboxes) never reap orphans, so a killed grandchild can stay a zombie
forever. A zombie runs no code and holds no memory, so "the group is gone" here means "no member of the group is
alive": zombies do not count.

POSIX only (process groups, killpg); the pgid reuse check and the trampoline are Linux only.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import anyio.abc
import psutil

from mcpshare._guardian import proc_stat as _proc_stat
from mcpshare.fdstream import DEFAULT_MAX_LINE_BYTES, FdLineReceiveStream, FdSendStream

__all__ = [
    "Guardian",
    "GuardianError",
    "ProcessError",
    "ServerProcess",
    "SpawnError",
    "StderrRing",
]

logger = logging.getLogger(__name__)

_GUARDIAN_SCRIPT = Path(__file__).with_name("_guardian.py")
_HAVE_PROC = os.path.exists("/proc/self/stat")

#: How long stop() waits for the kernel to let a SIGKILLed direct child be reaped. Only a process stuck in
#: uninterruptible sleep (state D, e.g. a hung network filesystem) takes longer.
_REAP_TIMEOUT = 5.0
#: How long stop() keeps SIGKILLing group members that are still alive after the group kill.
_SWEEP_TIMEOUT = 2.0


class ProcessError(RuntimeError):
    """A server process failed. Carries what a user needs to understand why, above all the end of its stderr."""

    def __init__(
        self,
        message: str,
        *,
        name: str,
        argv: Sequence[str],
        returncode: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.name = name
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        if not self.stderr_tail:
            return self.message
        return f"{self.message}\n--- last stderr lines of {self.name!r} ---\n{self.stderr_tail}"


class SpawnError(ProcessError):
    """The server could not be started: command missing or not executable, bad working directory, exec failure."""


class GuardianError(RuntimeError):
    """The guardian could not be started or has died: process groups are no longer protected against orphaning."""


class StderrRing:
    """The last ``max_lines`` lines a server wrote to stderr, for error messages and diagnostics.

    Bounded in lines and in bytes per line, so a server that floods stderr, or writes megabytes without a newline,
    cannot grow our memory. Bytes are decoded as UTF-8 with replacement: stderr is for humans, and a bad byte must
    not cost the line.
    """

    def __init__(self, max_lines: int = 200, *, max_line_bytes: int = 4096) -> None:
        if max_lines < 1 or max_line_bytes < 1:
            raise ValueError("max_lines and max_line_bytes must be positive")
        self.max_lines = max_lines
        self.max_line_bytes = max_line_bytes
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._partial = bytearray()
        self._truncated = False
        self.total_lines = 0
        """Complete lines seen since creation, including those that fell out of the ring."""

    def feed(self, data: bytes) -> None:
        """Add a chunk of raw stderr. Chunks may split lines anywhere. A trailing partial line is kept."""
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._append_partial(data[start:])
                return
            self._append_partial(data[start:end])
            self._push()
            start = end + 1

    def flush(self) -> None:
        """Turn a pending partial line (no final newline before EOF) into a line."""
        if self._partial or self._truncated:
            self._push()

    def lines(self) -> list[str]:
        """The complete lines kept, oldest first."""
        return list(self._lines)

    def tail(self, n: int = 20) -> str:
        """The last ``n`` lines joined by newlines, including a pending partial line (crash messages may lack one)."""
        if n <= 0:
            return ""
        lines = list(self._lines)
        if self._partial or self._truncated:
            lines.append(self._decode())
        return "\n".join(lines[-n:])

    def __len__(self) -> int:
        return len(self._lines)

    def _append_partial(self, piece: bytes) -> None:
        room = self.max_line_bytes - len(self._partial)
        if len(piece) > room:
            self._truncated = True
            piece = piece[: max(room, 0)]
        self._partial += piece

    def _decode(self) -> str:
        text = bytes(self._partial).removesuffix(b"\r").decode("utf-8", errors="replace")
        return f"{text} [line truncated]" if self._truncated else text

    def _push(self) -> None:
        self._lines.append(self._decode())
        self.total_lines += 1
        self._partial.clear()
        self._truncated = False


def _start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return None if stat is None else stat[2]


async def _poll_until(predicate: Callable[[], bool], within: float = math.inf) -> bool:
    """Poll ``predicate`` with backoff (5 ms up to 100 ms) until it holds or ``within`` seconds pass; return its value.

    We poll because there is no event for "the last member of a process group exited": the members are not our
    children, so we get no SIGCHLD or pidfd for them.
    """
    delay = 0.005
    with anyio.move_on_after(within):
        while True:
            if predicate():
                return True
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.1)
    return predicate()


def _trampoline_usable() -> bool:
    """True if spawns can go through the PDEATHSIG exec trampoline (see the module docstring for why it may not)."""
    if not sys.platform.startswith("linux") or getattr(sys, "frozen", False):
        return False
    if not sys.executable or not os.access(sys.executable, os.X_OK) or not _GUARDIAN_SCRIPT.is_file():
        return False
    try:
        asyncio.get_running_loop()  # asyncio (and uvloop) fork in the loop thread; trio forks in a worker thread
    except RuntimeError:
        return False
    return True


def _preflight(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> str | None:
    """Explain why ``argv`` cannot start in ``cwd`` with ``env``, or return None if it looks startable.

    Exec errors say little ("No such file or directory": the command? the cwd? the script's interpreter?).
    Checking first lets the message name the culprit. The spawn itself still maps exec errors, for the races.
    """
    if not argv or not argv[0]:
        return "the command is empty"
    if cwd is not None:
        if not os.path.exists(cwd):
            return f"working directory {cwd!r} does not exist"
        if not os.path.isdir(cwd):
            return f"working directory {cwd!r} is not a directory"
        if not os.access(cwd, os.X_OK):
            return f"working directory {cwd!r} is not accessible (permission denied)"
    command = argv[0]
    base = cwd if cwd is not None else os.getcwd()
    if os.sep in command:
        # exec resolves a relative path after the child has changed into cwd.
        path = os.path.join(base, command)
        if not os.path.exists(path):
            return f"command {command!r} does not exist"
        if os.path.isdir(path):
            return f"command {command!r} is a directory"
        if not os.access(path, os.X_OK):
            return f"command {command!r} is not executable (permission denied)"
        return None
    # Same search path as exec: the child's PATH, or the default path; relative entries count from the child's cwd.
    search = [os.path.join(base, d) for d in os.get_exec_path(env)]
    if shutil.which(command, path=os.pathsep.join(search)) is None:
        shown = os.pathsep.join(os.get_exec_path(env))
        shown = shown if len(shown) <= 300 else shown[:297] + "..."
        return f"command {command!r} was not found on PATH ({shown})"
    return None


def _describe_exec_error(exc: OSError, command: str, cwd: str | None) -> str:
    """Turn an exec or chdir failure into a sentence naming what failed."""
    if cwd is not None and exc.filename is not None and os.fsdecode(exc.filename) == cwd:
        return f"cannot use working directory {cwd!r}: {exc.strerror or exc}"
    if exc.errno == errno.ENOENT:
        return (
            f"command {command!r} was not found (if it is a script, is the interpreter named by its #! line installed?)"
        )
    if exc.errno == errno.EACCES:
        return f"command {command!r} is not executable (permission denied)"
    if exc.errno == errno.ENOEXEC:
        return f"command {command!r} is not a valid executable (exec format error; a script without a #! line?)"
    return f"command {command!r} could not be executed: {exc.strerror or exc}"


async def _read_until_eof(fd: int) -> bytes:
    """Read a non-blocking pipe until EOF without blocking the event loop."""
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            await anyio.wait_readable(fd)
            continue
        if not data:
            return b"".join(chunks)
        chunks.append(data)


class ServerProcess:
    """A running server command: the leader of its own process group, with piped stdin, stdout and stderr.

    Create it with :meth:`spawn`. The owner must run :meth:`drain_stderr` in a task of its own task group:
    otherwise the server blocks once the stderr pipe fills. The owner must eventually call :meth:`stop`.
    ``stdin`` and ``stdout`` belong to whoever speaks the protocol, the mux.
    """

    def __init__(
        self,
        name: str,
        argv: tuple[str, ...],
        process: anyio.abc.Process,
        *,
        stdin: FdSendStream,
        stdout: FdLineReceiveStream,
        guardian: Guardian | None,
        stderr_lines: int,
        pdeathsig: bool,
    ) -> None:
        assert process.stderr is not None
        self.name = name
        self.argv = argv
        self.pid: int = process.pid
        # start_new_session=True makes the child call setsid() before exec, so it leads a new session and a new
        # process group, both numbered by its pid.
        self.pgid: int = process.pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = StderrRing(stderr_lines)
        self._stderr_stream: anyio.abc.ByteReceiveStream = process.stderr
        self.pdeathsig = pdeathsig
        """Whether this process was started with PR_SET_PDEATHSIG(SIGKILL)."""
        self._process = process
        self._guardian = guardian
        self._start_ticks = _start_ticks(self.pid)
        self._stopping: anyio.Event | None = None

    @classmethod
    async def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        guardian: Guardian | None = None,
        stderr_lines: int = 200,
        pdeathsig: bool = True,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        fd_limit: int | None = None,
    ) -> ServerProcess:
        """Start ``argv`` as the leader of a new session and process group, registered with ``guardian``.

        ``name`` is only used in messages. ``env`` is the complete environment of the child: nothing is inherited
        from ours. :attr:`stdout` gives lines of at most ``max_line_bytes``. ``pdeathsig`` asks for the
        PR_SET_PDEATHSIG trampoline where it is safe (Linux, asyncio); :attr:`pdeathsig` tells whether it was used.
        ``fd_limit`` is the soft limit of open files the command starts with, set by that trampoline (without it,
        the command inherits ours).

        Returns once the real command has been exec'd. Raises :class:`SpawnError` if the command or working
        directory is unusable, or if the guardian is gone (``__cause__`` is then a :class:`GuardianError`). No
        process is left behind by a failure or by cancellation.
        """
        argv = tuple(argv)
        problem = _preflight(argv, env, cwd)
        if problem is not None:
            raise SpawnError(f"cannot start MCP server {name!r}: {problem}", name=name, argv=argv)

        use_trampoline = pdeathsig and _trampoline_usable()
        command: list[str] = list(argv)
        status_r = status_w = -1
        if use_trampoline:
            status_r, status_w = os.pipe()
            owner = str(os.getpid())
            limit = ["--nofile", str(fd_limit)] if fd_limit is not None else []
            command = [sys.executable, "-I", "-S", str(_GUARDIAN_SCRIPT), "--exec", owner, str(status_w), *limit, *argv]
        # Our own pipes for the protocol, not asyncio's transports: a non-blocking write that fits goes out at once
        # and a read that finds data returns it, without the extra trips through the event loop that asyncio's
        # stream wrappers take per message (they are most of the cost of a quick call).
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stdin = FdSendStream(stdin_w)
        stdout = FdLineReceiveStream(stdout_r, max_line_bytes)
        try:
            try:
                process = await anyio.open_process(
                    command,
                    stdin=stdin_r,
                    stdout=stdout_w,
                    stderr=subprocess.PIPE,
                    env=dict(env),
                    cwd=cwd,
                    start_new_session=True,
                    pass_fds=(status_w,) if use_trampoline else (),
                )
            except BaseException as exc:
                await stdin.aclose()  # no await inside: closing cannot be cancelled halfway
                await stdout.aclose()
                if not isinstance(exc, OSError):
                    raise
                if use_trampoline and exc.filename is not None and os.fsdecode(exc.filename) == sys.executable:
                    problem = f"cannot run {sys.executable!r} for the PDEATHSIG trampoline: {exc.strerror or exc}"
                else:
                    problem = _describe_exec_error(exc, argv[0], cwd)
                raise SpawnError(f"cannot start MCP server {name!r}: {problem}", name=name, argv=argv) from exc
            finally:
                os.close(stdin_r)  # the child's ends: only the child holds them now
                os.close(stdout_w)
                if status_w >= 0:
                    os.close(status_w)  # the child holds the only copy now: its exec (or exit) gives us EOF

            # A process exists from here on: any failure, including cancellation, must stop it before raising.
            proc = cls(
                name,
                argv,
                process,
                stdin=stdin,
                stdout=stdout,
                guardian=guardian,
                stderr_lines=stderr_lines,
                pdeathsig=use_trampoline,
            )
            try:
                if guardian is not None:
                    try:
                        guardian.register(proc.pgid, start_ticks=proc._start_ticks)
                    except GuardianError as exc:
                        # To the caller this is a failed start like any other; the pool may start a new guardian.
                        raise SpawnError(f"cannot start MCP server {name!r}: {exc}", name=name, argv=argv) from exc
                if use_trampoline:
                    status = await _read_until_eof(status_r)
                    if status:
                        code = int(status) if status.isdigit() else errno.EIO
                        exc = OSError(code, os.strerror(code), argv[0])
                        problem = _describe_exec_error(exc, argv[0], cwd)
                        await proc.stop(stdin_grace=0, term_grace=0)
                        raise SpawnError(
                            f"cannot start MCP server {name!r}: {problem}",
                            name=name,
                            argv=argv,
                            returncode=proc.returncode,
                        ) from exc
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await proc.stop(stdin_grace=0, term_grace=0)  # a no-op if already stopped above
                raise
            return proc
        finally:
            if status_r >= 0:
                os.close(status_r)

    @property
    def returncode(self) -> int | None:
        """Exit status of the direct child once it has been reaped (negative: killed by that signal), else None."""
        return self._process.returncode

    def error(self, message: str) -> ProcessError:
        """Build a :class:`ProcessError` about this process, with its exit status and the tail of its stderr."""
        return ProcessError(
            f"MCP server {self.name!r}: {message}",
            name=self.name,
            argv=self.argv,
            returncode=self.returncode,
            stderr_tail=self.stderr.tail(),
        )

    async def drain_stderr(self) -> None:
        """Copy stderr into :attr:`stderr` until EOF (every writer in the group exited or closed it).

        Run it in a task owned by the caller's task group. Nothing else reads stderr, and an unread pipe
        eventually blocks the server.
        """
        try:
            async for chunk in self._stderr_stream:
                self.stderr.feed(chunk)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            self.stderr.flush()

    async def wait(self) -> int:
        """Wait until the direct child exits. Other members of the group may still be running: see :meth:`stop`."""
        return await self._process.wait()

    async def stop(self, *, stdin_grace: float = 2.0, term_grace: float = 2.0) -> int | None:
        """Stop the server and everything in its process group. Return the direct child's exit status.

        Sequence: close stdin and wait up to ``stdin_grace`` for the group to exit (MCP's stdio shutdown); SIGTERM
        the group and wait up to ``term_grace``; SIGKILL the group; reap the direct child; kill any member that is
        still alive, such as a grandchild whose parent already exited. Only then unregister from the guardian.

        Idempotent, and safe when the process already exited on its own: leftover group members are still killed.
        Cancellation cuts the graceful part short but never the killing: that part is shielded. Concurrent
        callers wait for the first one. Returns None only if the direct child could not be reaped (stuck in
        uninterruptible sleep).
        """
        if self._stopping is not None:
            await self._stopping.wait()
            return self.returncode
        self._stopping = anyio.Event()
        try:
            await self._stop_gracefully(stdin_grace, term_grace)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._kill_group_and_reap()
                finally:
                    self._stopping.set()
        return self.returncode

    def group_members(self) -> list[psutil.Process]:
        """The live processes (zombies excluded) in this server's process group, leader first if alive."""
        if self._leader_replaced():
            return []
        members: list[psutil.Process] = []
        for pid in psutil.pids():
            try:
                if os.getpgid(pid) != self.pgid:
                    continue
                proc = psutil.Process(pid)
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except (OSError, psutil.Error):
                continue  # exited while we looked
            members.append(proc)
        members.sort(key=lambda p: (p.pid != self.pgid, p.pid))
        return members

    def rss_bytes(self) -> int:
        """Total resident memory of the live processes in the group. This is what one shared server costs us."""
        total = 0
        for proc in self.group_members():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def __repr__(self) -> str:
        return f"<ServerProcess {self.name!r} pid={self.pid} returncode={self.returncode}>"

    # -- stopping -------------------------------------------------------------------------------------------------

    async def _stop_gracefully(self, stdin_grace: float, term_grace: float) -> None:
        await self._close_stdin()
        if stdin_grace > 0:
            with anyio.move_on_after(stdin_grace):
                await self._wait_group_exit()
        if not self._group_alive():
            return
        if self._signal_group(signal.SIGTERM) and term_grace > 0:
            with anyio.move_on_after(term_grace):
                await self._wait_group_exit()

    async def _kill_group_and_reap(self) -> None:
        """The part of stop() that must run even when cancelled. Callers shield it."""
        await self._close_stdin()
        self._signal_group(signal.SIGKILL)
        with anyio.move_on_after(_REAP_TIMEOUT):
            await self._process.wait()
        if self.returncode is None:
            logger.warning("MCP server %r (pid %d) did not exit after SIGKILL; it is not reaped", self.name, self.pid)
        emptied = await _poll_until(lambda: not self._kill_stragglers(), _SWEEP_TIMEOUT)
        if not emptied:
            survivors = [p.pid for p in self.group_members()]
            # Keep the group registered: the guardian will try again when we exit.
            logger.warning("processes %s of MCP server %r survived SIGKILL", survivors, self.name)
        elif self._guardian is not None:
            self._guardian.unregister(self.pgid)
        await self.stdout.aclose()  # a reader still waiting on it gets ClosedResourceError, the mux's EOF
        if self.returncode is not None:
            # Close the stderr pipe and the transport now, not in a garbage collector after the loop has gone.
            with anyio.move_on_after(1.0):
                await self._process.aclose()

    async def _close_stdin(self) -> None:
        """Close our end of the server's stdin: EOF is MCP's stdio shutdown request. Never blocks on the pipe."""
        try:
            await self.stdin.aclose()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass

    async def _wait_group_exit(self) -> None:
        """Wait for the direct child to exit, then for the rest of the group."""
        await self._process.wait()
        await _poll_until(lambda: not self._group_alive())

    def _kill_stragglers(self) -> bool:
        """SIGKILL every live group member. Return whether there was any."""
        members = self.group_members()
        for proc in members:
            try:
                proc.kill()  # psutil checks the pid still names the same process
            except psutil.Error:
                pass
        if members:
            self._signal_group(signal.SIGKILL)
        return bool(members)

    def _leader_replaced(self) -> bool:
        """True if our group number now belongs to a new group led by another process (our group has emptied).

        The kernel keeps a pgid number allocated while any process is in that group. So a different leader with
        that number proves our group is gone, and signalling the number would hit a stranger.
        """
        if self._start_ticks is None or self.returncode is None:
            return False  # our leader is not reaped yet, so it still holds the number
        stat = _proc_stat(self.pgid)
        return stat is not None and stat[1] == self.pgid and stat[2] != self._start_ticks

    def _group_alive(self) -> bool:
        """True while the group has a member that is not a zombie. Cheap in the common "group gone" case."""
        if self._leader_replaced():
            return False
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return bool(self.group_members())  # killpg also succeeds for zombies: look closer

    def _signal_group(self, sig: int) -> bool:
        """Signal the whole group. Return False if it no longer exists (or its number was reused)."""
        if self._leader_replaced():
            return False
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            logger.warning("cannot signal process group %d of MCP server %r: %s", self.pgid, self.name, exc)
        return True


def _launch_guardian(kill_grace: float, command_r: int, ready_w: int) -> subprocess.Popen[bytes]:
    """Start the guardian program. Sync on purpose: a fork and exec takes about a millisecond, and it keeps
    register() synchronous (we own the raw pipe fd instead of an async stream)."""
    if getattr(sys, "frozen", False) or not sys.executable:
        raise GuardianError("the guardian needs a Python interpreter, and sys.executable is not one")
    if _GUARDIAN_SCRIPT.is_file():
        command = [sys.executable, "-I", "-S", str(_GUARDIAN_SCRIPT)]
    else:  # installed without source files (e.g. zipped): slower, but works
        command = [sys.executable, "-m", "mcpshare._guardian"]
    try:
        return subprocess.Popen(
            [*command, "--grace", repr(float(kill_grace))],
            stdin=command_r,
            stdout=ready_w,
            stderr=None,  # inherit ours: the guardian only writes there if something is badly wrong
            cwd="/",  # do not pin the owner's working directory
            start_new_session=True,  # out of reach of signals to the owner's group and of our group-kills
            close_fds=True,
        )
    except OSError as exc:
        raise GuardianError(f"cannot start the guardian with {sys.executable!r}: {exc}") from exc


class Guardian:
    """A tiny separate process that kills the registered process groups when its owner dies, even by SIGKILL.

    The owner keeps the write end of a pipe to the guardian's stdin. Our end is close-on-exec, so servers we spawn
    do not inherit it. (A plain ``os.fork()`` without exec, e.g. multiprocessing's "fork" start method, would
    inherit it. Then the guardian only acts once those forks have exited too.) The kernel closes the pipe when the
    owner dies. On EOF the guardian SIGTERMs every registered group, SIGKILLs what is left after ``kill_grace``
    seconds, and exits.

    :meth:`close` also closes the pipe. So a normal shutdown and a crash take the same path, and anything the
    owner forgot to stop is still killed. After a clean shutdown nothing is registered, and the guardian just
    exits. There is no "exit without killing" command on purpose: nothing should outlive the pool.

    Use one guardian per owner process. Start it before the first server, and close it after the last stop.
    """

    def __init__(self, popen: subprocess.Popen[bytes], command_fd: int, kill_grace: float) -> None:
        self._popen = popen
        self._fd = command_fd
        self._kill_grace = kill_grace
        self._registered: set[int] = set()
        self.pid: int = popen.pid

    @classmethod
    async def start(cls, *, kill_grace: float = 1.0, ready_timeout: float = 10.0) -> Guardian:
        """Start the guardian and wait until it runs, so a broken interpreter fails here and not silently later."""
        command_r, command_w = os.pipe()
        ready_r, ready_w = os.pipe()
        try:
            popen = _launch_guardian(kill_grace, command_r, ready_w)
        except BaseException:
            for fd in (command_r, command_w, ready_r, ready_w):
                os.close(fd)
            raise
        os.close(command_r)
        os.close(ready_w)
        guardian = cls(popen, command_w, kill_grace)
        try:
            with anyio.fail_after(ready_timeout):
                answer = await _read_until_eof(ready_r)
            if answer != b"ready\n":
                raise GuardianError(f"the guardian did not start (exit status {popen.poll()}, said {answer!r})")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await guardian.close()
            raise
        finally:
            os.close(ready_r)
        return guardian

    @property
    def alive(self) -> bool:
        """Whether the guardian process is still running, i.e. whether registered groups are protected."""
        return self._popen.poll() is None

    @property
    def registered(self) -> frozenset[int]:
        """The process groups currently registered, as the owner sees them."""
        return frozenset(self._registered)

    def register(self, pgid: int, *, start_ticks: int | None = None) -> None:
        """Protect group ``pgid``. Raises :class:`GuardianError` if the guardian is gone.

        ``start_ticks`` is the group leader's start time (/proc/<pgid>/stat field 22). If it is not given, it is
        read now. The guardian uses it to avoid killing a stranger that reused the number after our group emptied.
        """
        if start_ticks is None:
            start_ticks = _start_ticks(pgid)
        line = f"+{pgid}\n" if start_ticks is None else f"+{pgid} {start_ticks}\n"
        try:
            self._send(line)
        except OSError as exc:
            raise GuardianError(
                f"the guardian (pid {self.pid}) is gone: process group {pgid} is not protected against orphaning"
            ) from exc
        self._registered.add(pgid)

    def unregister(self, pgid: int) -> None:
        """Stop protecting group ``pgid``, after it has been stopped. A dead or closed guardian is ignored here:
        there is nothing left for it to protect."""
        self._registered.discard(pgid)
        try:
            self._send(f"-{pgid}\n")
        except OSError:
            pass

    async def close(self) -> None:
        """Close the pipe: the guardian kills whatever is still registered and exits. Wait for it and reap it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._registered.clear()
        with anyio.CancelScope(shield=True):
            if not await _poll_until(lambda: self._popen.poll() is not None, self._kill_grace + 5.0):
                logger.warning("the guardian (pid %d) did not exit after its pipe closed; killing it", self.pid)
                self._popen.kill()
                await _poll_until(lambda: self._popen.poll() is not None, 5.0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _send(self, line: str) -> None:
        # Lines are far below PIPE_BUF, so each write is atomic. The pipe is blocking, but the guardian reads
        # continuously, so a write only waits if 64 KiB of commands are pending, i.e. the guardian is stopped.
        if self._fd < 0:
            raise BrokenPipeError("the guardian has been closed")
        os.write(self._fd, line.encode())

    def __repr__(self) -> str:
        return f"<Guardian pid={self.pid} alive={self.alive} registered={len(self._registered)}>"
