"""Plain helpers shared by the test suite (fixtures live in conftest.py).

Three kinds of help:
- paths to the test servers and the pinned Node servers,
- process accounting through the OS (psutil), never through the pool's own bookkeeping: a test marks the
  processes it starts with a unique ``--marker=<id>`` argument and counts/kills by that marker,
- two ways to talk to a server (async waits here take no timeout parameter: bound them with
  ``anyio.fail_after``): ``sdk_session`` (the SDK 2.x stdio client, as an agent host would) and
  ``RawStdioServer`` (raw JSON-RPC lines, as the mux does, with the exit code and stderr in reach).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import psutil
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import ClientSession, StdioServerParameters, stdio_client, types

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
SERVERS_DIR = TESTS_DIR / "servers"
TESTSERVER = SERVERS_DIR / "testserver.py"
NPX_WRAPPER = SERVERS_DIR / "npx_wrapper.py"
HTTP_SERVER = SERVERS_DIR / "http_server.py"
NODE_DIR = TESTS_DIR / "node"
NODE_MODULES = NODE_DIR / "node_modules"

# Entry scripts of the pinned Node packages (see tests/node/README.md for how each starts over stdio).
NODE_ENTRIES: dict[str, Path] = {
    "server-everything": NODE_MODULES / "@modelcontextprotocol/server-everything/dist/index.js",
    "server-memory": NODE_MODULES / "@modelcontextprotocol/server-memory/dist/index.js",
    "server-filesystem": NODE_MODULES / "@modelcontextprotocol/server-filesystem/dist/index.js",
    "inspector": NODE_MODULES / "@modelcontextprotocol/inspector/clients/launcher/build/index.js",
}

MAX_LINE_BYTES = 16 * 1024 * 1024
STOP_GRACE_SECONDS = 2.0


# --- markers and OS-level process accounting -------------------------------------------------------------


def new_marker() -> str:
    """A marker unique to one test, to put in a server's argv as ``--marker=<marker>``."""
    return f"mcpshare-test-{uuid.uuid4().hex[:16]}"


def server_argv(*args: str, marker: str | None = None) -> list[str]:
    """argv that runs testserver.py with this interpreter (which has the SDK), optionally marked."""
    extra = [f"--marker={marker}"] if marker else []
    return [sys.executable, str(TESTSERVER), *extra, *args]


def count_server_processes(marker: str, *, search_env: bool = False) -> list[psutil.Process]:
    """Live processes (zombies excluded) whose cmdline contains ``marker``, found through the OS.

    With ``search_env`` an environment value containing the marker also counts; off by default because a
    test that puts the marker in its *own* environment would make every child it spawns match.
    The calling process is never included.
    """
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if marker in " ".join(proc.info["cmdline"] or ()):
                found.append(proc)
            elif search_env and any(marker in value for value in proc.environ().values()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def reap_marked(marker: str, *, timeout: float = 3.0) -> list[int]:
    """SIGKILL every live process carrying ``marker`` and wait for them; return the pids killed.

    Cleanup of last resort (fixture teardown), so a failing test cannot leak servers into the next one.
    Tests that check *for* leaks must count before this runs.
    """
    procs = count_server_processes(marker)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout)
    return [proc.pid for proc in procs]


async def wait_for_processes(marker: str, count: int, *, timeout: float = 10.0) -> list[psutil.Process]:
    """Wait until exactly ``count`` marked processes are alive and return them.

    Async on purpose: a pool under test runs on the same event loop, so a blocking wait would stop the very
    code that is supposed to start or stop the processes. Fails with the last count after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while len(procs := count_server_processes(marker)) != count:
        if time.monotonic() >= deadline:
            raise AssertionError(f"expected {count} processes marked {marker}, found {len(procs)}: {procs}")
        await anyio.sleep(0.02)
    return procs


def is_running(pid: int | None) -> bool:
    """True while ``pid`` is a live process (a zombie counts as gone: it runs nothing)."""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def wait_until_gone(*pids: int | None, timeout: float) -> list[int]:
    """Poll the OS until none of ``pids`` runs or ``timeout`` passes; return the ones still running."""
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if pid is not None and is_running(pid)]) and time.monotonic() < deadline:  # noqa: ASYNC110 - the OS offers no event
        await anyio.sleep(0.05)
    return alive


class Recorder:
    """An async callback that records every argument it is called with, so a test can wait for them.

    Fits ClientSession's ``message_handler`` (notifications and transport exceptions) and
    ``logging_callback`` (LoggingMessageNotificationParams). Bound waits with ``anyio.fail_after``.
    """

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = anyio.Event()

    async def __call__(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()
        self._changed = anyio.Event()

    def of(self, kind: type) -> list[Any]:
        """The recorded items that are instances of ``kind``."""
        return [item for item in self.items if isinstance(item, kind)]

    async def wait_for(self, kind: type = object, count: int = 1) -> list[Any]:
        """Wait until at least ``count`` items of ``kind`` were recorded; return all of them."""
        while len(self.of(kind)) < count:
            await self._changed.wait()
        return self.of(kind)


# --- reading tool results ------------------------------------------------------------------------------------


def tool_text(result: types.CallToolResult) -> str:
    """The concatenated text blocks of a tool result."""
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


def tool_json(result: types.CallToolResult) -> Any:
    """A tool's structured value: ``structuredContent`` (unwrapping SDK's {"result": x}) or its text as JSON."""
    if result.structured_content is not None:
        data = result.structured_content
        return data["result"] if set(data) == {"result"} else data
    return json.loads(tool_text(result))


# --- the SDK client ------------------------------------------------------------------------------------------


@asynccontextmanager
async def sdk_session(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    errlog: IO[str] | None = None,
    **session_kwargs: Any,
) -> AsyncIterator[ClientSession]:
    """Spawn ``argv`` with the SDK's stdio_client and yield an initialized ClientSession.

    ``session_kwargs`` go to ClientSession (sampling_callback, elicitation_callback, list_roots_callback,
    logging_callback, message_handler, read_timeout_seconds, ...); a callback given here is also what makes
    the session declare the matching client capability at initialize.
    Note: stdio_client passes only a safe default environment (HOME, PATH, ...) plus ``env``.
    """
    params = StdioServerParameters(command=argv[0], args=list(argv[1:]), env=dict(env or {}), cwd=cwd)
    async with stdio_client(params, errlog=errlog or sys.stderr) as (read, write):
        async with ClientSession(read, write, **session_kwargs) as session:
            await session.initialize()
            yield session


# --- raw JSON-RPC over stdio ---------------------------------------------------------------------------------


class RawStdioServer:
    """A server process spoken to in raw JSON-RPC lines, the way the mux sees it.

    Unlike the SDK client it exposes what tests of failure modes need: the pid, the exit code, stderr,
    non-JSON stdout lines, and every message the server sent unprompted (kept in ``inbox``).
    Start it with ``async with RawStdioServer.start(argv) as server``; leaving the block stops the whole
    process group (close stdin, grace period, SIGKILL to the group) by pid.
    """

    def __init__(self, process: Process, stderr_file: IO[bytes], *, own_group: bool) -> None:
        self.process = process
        self._own_group = own_group
        self._stderr_file = stderr_file
        assert process.stdout is not None and process.stdin is not None
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self._next_id = 1
        self.inbox: list[dict[str, Any]] = []

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        new_session: bool = True,
    ) -> AsyncIterator[RawStdioServer]:
        """Spawn argv (env = this process's env + ``env``), by default in a new session so its group can be killed.

        With ``new_session=False`` the server shares the test's process group and ``stop`` kills only its pid.
        """
        with tempfile.TemporaryFile() as stderr_file:
            process = await anyio.open_process(
                list(argv),
                env={**os.environ, **(env or {})},
                cwd=cwd,
                stderr=stderr_file,
                start_new_session=new_session,
            )
            server = cls(process, stderr_file, own_group=new_session)
            try:
                yield server
            finally:
                with anyio.CancelScope(shield=True):
                    await server.stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far."""
        self._stderr_file.flush()
        self._stderr_file.seek(0)
        return self._stderr_file.read().decode(errors="replace")

    async def wait_for_stderr(self, text: str) -> str:
        """Wait until stderr contains ``text``; return all of stderr."""
        while text not in (current := self.stderr_text()):  # noqa: ASYNC110 - a file has no change event
            await anyio.sleep(0.02)
        return current

    async def send(self, message: Mapping[str, Any]) -> None:
        """Write one JSON-RPC message as a line."""
        assert self.process.stdin is not None
        await self.process.stdin.send((json.dumps(message) + "\n").encode())

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        """Send a notification."""
        await self.send({"jsonrpc": "2.0", "method": method, **({"params": params} if params is not None else {})})

    async def receive_line(self) -> bytes:
        """The next stdout line, raw, without its newline; anyio.EndOfStream once stdout is closed."""
        try:
            return await self._stdout.receive_until(b"\n", MAX_LINE_BYTES)
        except anyio.IncompleteRead:
            raise anyio.EndOfStream from None

    async def receive(self) -> dict[str, Any]:
        """The next stdout message, parsed (ValueError on a non-JSON line)."""
        return json.loads(await self.receive_line())

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send a request and return its whole response (result or error); other messages go to ``inbox``."""
        request_id = self._next_id
        self._next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        while True:
            incoming = await self.receive()
            if incoming.get("id") == request_id and "method" not in incoming:
                return incoming
            self.inbox.append(incoming)

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """tools/call; return the whole response."""
        return await self.request("tools/call", {"name": name, "arguments": dict(arguments or {})})

    async def initialize(self, capabilities: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The handshake: initialize (protocol 2025-11-25) + notifications/initialized; return the result."""
        response = await self.request(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": dict(capabilities or {}),
                "clientInfo": {"name": "mcpshare-tests", "version": "0"},
            },
        )
        if "result" not in response:
            raise AssertionError(f"initialize failed: {response}")
        await self.notify("notifications/initialized")
        return response["result"]

    async def wait(self) -> int:
        """Wait for the process to exit and return its exit code (negative: killed by that signal).

        Polls returncode rather than process.wait(): that also waits for stdout EOF, which a grandchild
        holding the pipe open would delay forever.
        """
        while self.process.returncode is None:  # noqa: ASYNC110 - no exit event exists to wait on
            await anyio.sleep(0.01)
        return self.process.returncode

    async def stop(self) -> None:
        """Close stdin, give the server a grace period, then SIGKILL its whole process group."""
        assert self.process.stdin is not None
        try:
            await self.process.stdin.aclose()
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        with anyio.move_on_after(STOP_GRACE_SECONDS):
            await self.wait()
        try:
            if self._own_group:
                os.killpg(self.pid, signal.SIGKILL)  # the group outlives its leader while grandchildren live
            elif self.process.returncode is None:
                os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        with anyio.move_on_after(STOP_GRACE_SECONDS):
            await self.wait()
        await self.process.aclose()
