"""Layer 3 (mcpshare.process) against real processes, counted through the OS with psutil.

Helper programs live in tests/procs/: child.py (a stand-in server, optionally deaf to SIGTERM and stdin EOF),
wrapper.py (an npx-style launcher with a grandchild), stderr_flood.py, and guardian_host.py (an agent host we
SIGKILL). Each test records every process it starts. The ``tracked`` fixture keeps psutil.Process objects, so a
reused pid is never hit, and SIGKILLs any survivor at teardown, pass or fail.

"Gone" means "not running": a zombie is gone. This sandbox's init does not reap orphans, so a killed grandchild
may stay a zombie forever without running any code.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import IO, Any

import anyio
import psutil
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from mcpshare.process import Guardian, GuardianError, ServerProcess, SpawnError, StderrRing

pytestmark = pytest.mark.timeout(30)

PROCS = Path(__file__).resolve().parent / "procs"
CHILD = str(PROCS / "child.py")
WRAPPER = str(PROCS / "wrapper.py")
GUARDIAN_SCRIPT = Path(__file__).resolve().parents[1] / "src" / "mcpshare" / "_guardian.py"
PY = sys.executable
ENV = dict(os.environ)
STUBBORN = ["--ignore-term", "--ignore-stdin"]  # child.py options: only SIGKILL ends it
LINUX = sys.platform.startswith("linux")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Tracker:
    """Processes a test started. Kept as psutil.Process objects, so a recycled pid is never killed."""

    def __init__(self) -> None:
        self.procs: list[psutil.Process] = []
        self.popens: list[subprocess.Popen[bytes]] = []

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """subprocess.Popen, tracked: killed, reaped and its pipes closed at teardown."""
        proc = subprocess.Popen(argv, **kwargs)
        self.popens.append(proc)
        self.add(proc.pid)
        return proc

    def add(self, pid: int | None) -> psutil.Process | None:
        if pid is None:
            return None
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return None
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            with suppress(psutil.Error):
                proc.kill()
        for popen in self.popens:
            with suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=10)
            for pipe in (popen.stdin, popen.stdout):
                if pipe is not None:
                    with suppress(OSError):
                        pipe.close()


@pytest.fixture
def tracked() -> Iterator[Tracker]:
    tracker = Tracker()
    try:
        yield tracker
    finally:
        tracker.kill_all()


def running(proc: psutil.Process) -> bool:
    """True if ``proc`` (the very process, not a reused pid) exists and is not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def eventually(predicate: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(0.02)
    return True


def eventually_sync(predicate: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def start_ticks(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat: the process start time in clock ticks after boot."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rfind(b")") + 2 :].split()[19])


def ignored_signals(pid: int) -> int:
    """The SigIgn mask of /proc/<pid>/status: bit n-1 set means signal n is ignored."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)


def open_fds() -> set[str]:
    """What this process's descriptors point to (pipes by inode), from /proc: a leaked pipe shows up here."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def readline_within(pipe: IO[bytes], seconds: float) -> bytes:
    """Read one line from a subprocess pipe, failing instead of hanging if none comes."""
    ready, _, _ = select.select([pipe], [], [], seconds)
    assert ready, f"no output within {seconds} s"
    return pipe.readline()


def popen_sleeper(tracked: Tracker, *options: str) -> subprocess.Popen[bytes]:
    """child.py in a new session (its own process group), without stdin, after it has set up its signals."""
    proc = tracked.popen(
        [PY, CHILD, "--ignore-stdin", *options],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert readline_within(proc.stdout, 10).startswith(b"ready")
    return proc


@asynccontextmanager
async def spawned(tracked: Tracker, argv: Sequence[str], **kwargs: Any) -> AsyncIterator[ServerProcess]:
    """ServerProcess.spawn, with the pid tracked and a final stop() whatever happens in the test."""
    proc = await ServerProcess.spawn("test-server", argv, env=ENV, cwd=kwargs.pop("cwd", None), **kwargs)
    tracked.add(proc.pid)
    try:
        yield proc
    finally:
        with anyio.CancelScope(shield=True):
            await proc.stop(stdin_grace=0.2, term_grace=0.2)


async def read_pids(proc: ServerProcess, wanted: set[str]) -> dict[str, int]:
    """Read ``<word> <pid>`` lines from the server's stdout until every wanted word was seen."""
    stream = BufferedByteReceiveStream(proc.stdout)
    found: dict[str, int] = {}
    with anyio.fail_after(10):
        while not wanted <= found.keys():
            word, pid = (await stream.receive_until(b"\n", 1024)).decode().split()
            found[word] = int(pid)
    return found


def our_children_running(needle: str) -> list[psutil.Process]:
    """Live children of this test process whose command line mentions ``needle``."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with suppress(psutil.Error):
            if running(child) and any(needle in part for part in child.cmdline()):
                found.append(child)
    return found


# -- spawning and talking -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pdeathsig", [True, False], ids=["trampoline", "direct"])
async def test_echo_through_stdin_and_stdout_then_stop_leaves_nothing(tracked: Tracker, pdeathsig: bool) -> None:
    fds_before = open_fds()
    async with spawned(tracked, ["cat"], pdeathsig=pdeathsig) as proc:
        assert proc.pgid == proc.pid == os.getpgid(proc.pid) == os.getsid(proc.pid)
        assert proc.pdeathsig is (pdeathsig and LINUX)
        leader = psutil.Process(proc.pid)
        assert leader.name() == "cat"  # the trampoline exec'd the real command before spawn returned
        out = BufferedByteReceiveStream(proc.stdout)
        with anyio.fail_after(10):
            await proc.stdin.send(b"hello\n")
            assert await out.receive_until(b"\n", 1024) == b"hello"
        assert [p.pid for p in proc.group_members()] == [proc.pid]
        assert proc.rss_bytes() > 0

        assert await proc.stop() == 0  # cat exits on stdin EOF: no signal was needed
        assert not running(leader)
        assert proc.group_members() == []
        assert proc.rss_bytes() == 0
        assert await proc.stop() == 0  # idempotent
    assert open_fds() == fds_before  # every pipe to the server is closed


@pytest.mark.skipif(not LINUX, reason="reads /proc")
async def test_trampoline_does_not_leak_ignored_signals_into_the_server(tracked: Tracker) -> None:
    """The interpreter ignores SIGPIPE; an ignored disposition would survive the trampoline's exec."""
    async with spawned(tracked, ["cat"], pdeathsig=True) as proc:
        assert proc.pdeathsig
        ignored = ignored_signals(proc.pid)
        assert not ignored & (1 << (signal.SIGPIPE - 1))
        assert not ignored & (1 << (signal.SIGXFSZ - 1))


# -- stderr -------------------------------------------------------------------------------------------------------


def test_stderr_ring_keeps_only_the_last_lines() -> None:
    ring = StderrRing(5, max_line_bytes=10)
    ring.feed(b"a\nb")
    ring.feed(b"c\r\n")
    assert ring.lines() == ["a", "bc"]
    for i in range(20):
        ring.feed(f"n{i}\n".encode())
    assert len(ring) == 5
    assert ring.lines() == ["n15", "n16", "n17", "n18", "n19"]
    assert ring.total_lines == 22
    assert ring.tail(2) == "n18\nn19"
    assert ring.tail(0) == ""


def test_stderr_ring_caps_long_lines_and_shows_partial_lines() -> None:
    ring = StderrRing(3, max_line_bytes=10)
    ring.feed(b"x" * 8)
    ring.feed(b"y" * 10_000)
    ring.feed(b"\nok\n\xff\xfe bad\n")
    assert ring.lines() == ["xxxxxxxxyy [line truncated]", "ok", "\ufffd\ufffd bad"]
    ring.feed(b"no newline")
    assert ring.tail(1) == "no newline"  # a crash message without a final newline still shows
    assert len(ring) == 3
    ring.flush()
    assert ring.lines()[-1] == "no newline"


async def test_drain_stderr_keeps_the_tail_of_a_flood(tracked: Tracker) -> None:
    async with spawned(tracked, [PY, str(PROCS / "stderr_flood.py"), "1000"], stderr_lines=50) as proc:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(proc.drain_stderr)
                assert await proc.wait() == 3
        # drain_stderr returned: it read to EOF.
        assert len(proc.stderr) == 50
        assert proc.stderr.total_lines == 1001
        assert proc.stderr.lines()[0] == "line 951"
        assert proc.stderr.tail(3) == "line 998\nline 999\nlast words"
        error = proc.error("exited during the handshake")
        assert error.returncode == 3
        assert "test-server" in str(error)
        assert "last words" in str(error)


# -- stopping -----------------------------------------------------------------------------------------------------


async def test_server_deaf_to_stdin_eof_and_sigterm_is_sigkilled_in_bounded_time(tracked: Tracker) -> None:
    async with spawned(tracked, [PY, CHILD, *STUBBORN]) as proc:
        await read_pids(proc, {"ready"})
        leader = psutil.Process(proc.pid)
        started = time.monotonic()
        code = await proc.stop(stdin_grace=0.5, term_grace=0.5)
        elapsed = time.monotonic() - started
        assert code == -signal.SIGKILL
        assert 0.9 <= elapsed < 0.5 + 0.5 + 1.0
        assert not running(leader)


async def test_server_deaf_to_stdin_eof_gets_sigterm(tracked: Tracker) -> None:
    async with spawned(tracked, [PY, CHILD, "--ignore-stdin"]) as proc:
        await read_pids(proc, {"ready"})
        started = time.monotonic()
        assert await proc.stop(stdin_grace=0.3, term_grace=5.0) == -signal.SIGTERM
        assert time.monotonic() - started < 0.3 + 1.0


@pytest.mark.parametrize("grandchild_options", [[], STUBBORN], ids=["cooperative", "stubborn"])
async def test_npx_style_wrapper_and_its_grandchild_are_gone_after_stop(
    tracked: Tracker, grandchild_options: list[str]
) -> None:
    async with spawned(tracked, [PY, WRAPPER, *grandchild_options]) as proc:
        pids = await read_pids(proc, {"grandchild", "ready"})
        assert pids["grandchild"] == pids["ready"]
        wrapper = psutil.Process(proc.pid)
        grandchild = tracked.add(pids["grandchild"])
        assert grandchild is not None
        assert [p.pid for p in proc.group_members()] == [proc.pid, grandchild.pid]

        code = await proc.stop(stdin_grace=0.5, term_grace=0.5)
        # Cooperative: the grandchild exits on stdin EOF and the wrapper passes on its status.
        # Stubborn: the wrapper dies of SIGTERM; the grandchild only of the group SIGKILL.
        assert code == (0 if not grandchild_options else -signal.SIGTERM)
        assert not running(wrapper)
        assert not running(grandchild)
        assert proc.group_members() == []


async def test_grandchild_left_behind_by_an_exited_wrapper_is_killed(tracked: Tracker) -> None:
    async with spawned(tracked, [PY, WRAPPER, "--exit-at-once", *STUBBORN]) as proc:
        pids = await read_pids(proc, {"grandchild", "ready"})
        grandchild = tracked.add(pids["grandchild"])
        assert grandchild is not None
        with anyio.fail_after(10):
            assert await proc.wait() == 0
        assert running(grandchild)
        assert os.getpgid(grandchild.pid) == proc.pgid  # re-parented, but still in our group
        assert [p.pid for p in proc.group_members()] == [grandchild.pid]

        started = time.monotonic()
        assert await proc.stop(stdin_grace=0.2, term_grace=0.2) == 0  # the wrapper's own status
        assert time.monotonic() - started < 0.2 + 0.2 + 1.0
        assert not running(grandchild)
        assert proc.group_members() == []


async def test_cancelled_stop_still_kills_the_whole_group(tracked: Tracker) -> None:
    async with spawned(tracked, [PY, WRAPPER, *STUBBORN]) as proc:
        pids = await read_pids(proc, {"grandchild", "ready"})
        members = [psutil.Process(proc.pid), tracked.add(pids["grandchild"])]
        started = time.monotonic()
        with anyio.move_on_after(0.3):
            await proc.stop(stdin_grace=10, term_grace=10)
        assert time.monotonic() - started < 3  # cancellation skipped the graces, not the kill
        assert not any(running(p) for p in members if p is not None)
        assert proc.returncode == -signal.SIGKILL


async def test_stop_inside_an_already_cancelled_scope_still_kills(tracked: Tracker) -> None:
    async with spawned(tracked, [PY, CHILD, *STUBBORN]) as proc:
        await read_pids(proc, {"ready"})
        leader = psutil.Process(proc.pid)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await proc.stop()
        assert not running(leader)


async def test_concurrent_stops_wait_for_one_another(tracked: Tracker) -> None:
    async with spawned(tracked, [PY, CHILD, "--ignore-stdin"]) as proc:
        await read_pids(proc, {"ready"})
        results: list[int | None] = []

        async def stop() -> None:
            results.append(await proc.stop(stdin_grace=0.2, term_grace=1.0))

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop)
            tg.start_soon(stop)
        assert results == [-signal.SIGTERM, -signal.SIGTERM]


# -- spawn errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["mcpshare-test-no-such-command", "/nonexistent/dir/server"])
async def test_missing_command_raises_spawn_error_naming_server_and_command(command: str) -> None:
    with pytest.raises(SpawnError) as info:
        await ServerProcess.spawn("my-server", [command, "--flag"], env=ENV, cwd=None)
    message = str(info.value)
    assert "my-server" in message
    assert command in message
    assert "not found" in message or "does not exist" in message
    assert info.value.name == "my-server"
    assert info.value.argv == (command, "--flag")


async def test_command_missing_from_the_childs_path_is_reported_with_that_path() -> None:
    with pytest.raises(SpawnError, match=r"'cat' was not found on PATH \(/nonexistent-bin\)"):
        await ServerProcess.spawn("s", ["cat"], env={"PATH": "/nonexistent-bin"}, cwd=None)


async def test_non_executable_command_raises_spawn_error(tmp_path: Path) -> None:
    script = tmp_path / "server.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(SpawnError, match="not executable"):
        await ServerProcess.spawn("s", [str(script)], env=ENV, cwd=None)


@pytest.mark.parametrize("pdeathsig", [True, False], ids=["trampoline", "direct"])
async def test_exec_failure_after_preflight_raises_spawn_error_and_leaves_nothing(
    tmp_path: Path, pdeathsig: bool
) -> None:
    """An executable file that is not a program passes every check before exec; exec itself reports ENOEXEC."""
    bogus = tmp_path / "not-a-program"
    bogus.write_bytes(b"\x00\x01\x02 neither ELF nor #!\n")
    bogus.chmod(0o755)
    fds_before = open_fds()
    with pytest.raises(SpawnError, match="exec format error") as info:
        await ServerProcess.spawn("s", [str(bogus)], env=ENV, cwd=None, pdeathsig=pdeathsig)
    assert str(bogus) in str(info.value)
    assert our_children_running(str(bogus)) == []
    assert open_fds() == fds_before


async def test_missing_working_directory_raises_spawn_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(SpawnError, match="working directory") as info:
        await ServerProcess.spawn("s", ["cat"], env=ENV, cwd=str(missing))
    assert str(missing) in str(info.value)


async def test_file_as_working_directory_raises_spawn_error(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(SpawnError, match="not a directory"):
        await ServerProcess.spawn("s", ["cat"], env=ENV, cwd=str(file))


async def test_relative_command_is_resolved_from_the_working_directory(tracked: Tracker, tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "server").symlink_to("/bin/cat")
    async with spawned(tracked, ["bin/server"], cwd=str(tmp_path)) as proc:
        assert await proc.stop() == 0


# -- guardian -----------------------------------------------------------------------------------------------------


def run_host(tracked: Tracker, *flags: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start guardian_host.py and return it with its report (pids of host, guardian, server, grandchild)."""
    host = tracked.popen(
        [PY, str(PROCS / "guardian_host.py"), *flags],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert host.stdout is not None
        report: dict[str, Any] = json.loads(readline_within(host.stdout, 15))
    finally:
        # Track everything the host started, even if it never reported, so teardown can kill it.
        with suppress(psutil.Error):
            for child in psutil.Process(host.pid).children(recursive=True):
                tracked.add(child.pid)
    return host, report


def sigkill_host(host: subprocess.Popen[bytes]) -> None:
    host.kill()
    host.wait(timeout=10)


@pytest.mark.parametrize("flags", [[], ["--no-pdeathsig"]], ids=["with-pdeathsig", "guardian-alone"])
def test_sigkilled_host_leaves_no_server_or_grandchild(tracked: Tracker, flags: list[str]) -> None:
    host, report = run_host(tracked, *flags)
    try:
        assert report["pdeathsig"] is (LINUX and not flags)
        guardian = tracked.add(report["guardian"])
        server = tracked.add(report["server"])
        grandchild = tracked.add(report["grandchild"])
        assert guardian is not None and server is not None and grandchild is not None
        assert running(guardian) and running(server) and running(grandchild)

        sigkill_host(host)
        # The grandchild ignores SIGTERM: it takes the guardian's SIGKILL after its 1 s grace.
        assert eventually_sync(lambda: not running(server) and not running(grandchild), 3.0)
        assert eventually_sync(lambda: not running(guardian), 3.0)  # it acted, then exited
    finally:
        tracked.kill_all()  # by pid, the host included, even when an assertion failed


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux only")
def test_pdeathsig_alone_kills_the_direct_child_of_a_sigkilled_host(tracked: Tracker) -> None:
    host, report = run_host(tracked, "--no-guardian", "--direct")
    try:
        assert report["pdeathsig"] is True and report["guardian"] is None
        server = tracked.add(report["server"])
        assert server is not None and running(server)
        sigkill_host(host)
        assert eventually_sync(lambda: not running(server), 3.0)
    finally:
        tracked.kill_all()  # by pid, the host included, even when an assertion failed


async def test_guardian_close_kills_only_what_is_still_registered(tracked: Tracker) -> None:
    guardian = await Guardian.start(kill_grace=0.5)
    try:
        tracked.add(guardian.pid)
        kept = popen_sleeper(tracked)
        polite = popen_sleeper(tracked)
        stubborn = popen_sleeper(tracked, "--ignore-term")
        for proc in (kept, polite, stubborn):
            guardian.register(proc.pid)
        guardian.unregister(kept.pid)
        assert guardian.registered == {polite.pid, stubborn.pid}
    finally:
        await guardian.close()
    assert not guardian.alive
    assert await eventually(lambda: polite.poll() is not None and stubborn.poll() is not None, 5.0)
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL  # after the grace
    assert kept.poll() is None


async def test_guardian_lives_in_its_own_session_out_of_reach_of_group_kills(tracked: Tracker) -> None:
    async with await Guardian.start() as guardian:
        tracked.add(guardian.pid)
        assert os.getsid(guardian.pid) == os.getpgid(guardian.pid) == guardian.pid
        assert os.getpgid(guardian.pid) != os.getpgrp()
        async with spawned(tracked, [PY, WRAPPER, *STUBBORN], guardian=guardian) as proc:
            tracked.add((await read_pids(proc, {"grandchild"}))["grandchild"])
            assert guardian.registered == {proc.pgid}
            await proc.stop(stdin_grace=0.1, term_grace=0.1)
            assert guardian.registered == frozenset()
        assert guardian.alive
    assert not guardian.alive


async def test_spawn_with_a_dead_guardian_fails_and_leaves_nothing(tracked: Tracker) -> None:
    guardian = await Guardian.start()
    os.kill(guardian.pid, signal.SIGKILL)
    assert await eventually(lambda: not guardian.alive, 5.0)
    argv = [PY, CHILD, "--ignore-stdin", "dead-guardian"]
    with pytest.raises(SpawnError, match=r"guardian .* is gone") as info:
        await ServerProcess.spawn("s", argv, env=ENV, cwd=None, guardian=guardian)
    assert isinstance(info.value.__cause__, GuardianError)
    assert our_children_running("dead-guardian") == []
    with pytest.raises(GuardianError):
        guardian.register(999_999_999)
    await guardian.close()


@pytest.mark.skipif(not LINUX, reason="the pgid reuse check reads /proc")
@pytest.mark.parametrize("invocation", ["script", "module"])
def test_guardian_program_protocol(tracked: Tracker, invocation: str) -> None:
    """Drive the program directly: "+pgid start" / "-pgid" lines, then EOF. A group whose leader's start time
    does not match is a stranger that reused the number, and must be left alone."""
    command = [PY, "-I", "-S", str(GUARDIAN_SCRIPT)] if invocation == "script" else [PY, "-m", "mcpshare._guardian"]
    program = tracked.popen(
        [*command, "--grace", "0.5"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert program.stdin is not None and program.stdout is not None
        assert readline_within(program.stdout, 10) == b"ready\n"
        ours = popen_sleeper(tracked, "--ignore-term")
        stranger = popen_sleeper(tracked)
        dropped = popen_sleeper(tracked)
        no_start = popen_sleeper(tracked)
        lines = [
            f"+{ours.pid} {start_ticks(ours.pid)}",
            f"+{stranger.pid} {start_ticks(stranger.pid) + 1}",
            f"+{dropped.pid} {start_ticks(dropped.pid)}",
            f"-{dropped.pid}",
            f"+{no_start.pid}",
            "garbage",
            "+not-a-number",
        ]
        program.stdin.write("".join(f"{line}\n" for line in lines).encode())
        program.stdin.close()  # EOF: what the owner's death looks like
        assert program.wait(timeout=10) == 0
        assert ours.wait(timeout=5) == -signal.SIGKILL  # deaf to SIGTERM: killed after the grace
        assert no_start.wait(timeout=5) == -signal.SIGTERM
        assert stranger.poll() is None
        assert dropped.poll() is None
    finally:
        tracked.kill_all()  # by pid, the host included, even when an assertion failed
