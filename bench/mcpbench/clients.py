"""The clients compared with the pool: the SDK's stdio_client (direct) and a hand-written JSON-RPC client (raw).

* :func:`direct_session` is what an agent host does today: spawn the server with ``stdio_client`` and talk to it
  through an initialized ``ClientSession`` of its own.
* :class:`RawClient` writes ``tools/call`` lines straight into the server's stdin and reads the answers from its
  stdout with the least work a client can do. What it reaches is what the server itself allows: no client can
  go faster, so it bounds both the direct and the pooled figures.

Also :func:`leased_session` (a pooled ClientSession, what one thread holds), :class:`Holder` (keeps contexts open,
each in a task of its own), and timing helpers that run a call factory sequentially or N-way concurrently.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio
import anyio.abc
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import ClientSession, stdio_client

from mcpbench.servers import ServerSpec
from mcpshare.config import StdioServerConfig
from mcpshare.pool import BackendPool
from mcpshare.session import open_session

MAX_LINE_BYTES = 16 * 1024 * 1024
STOP_GRACE = 2.0

Call = Callable[[], Awaitable[Any]]
T = TypeVar("T")


class CallFailed(RuntimeError):
    """A benchmark call returned an error: the figures would be meaningless."""


@asynccontextmanager
async def direct_session(
    spec: ServerSpec, extra_env: Mapping[str, str], *, errlog: IO[str], cwd: Path | None = None
) -> AsyncIterator[ClientSession]:
    """Spawn ``spec`` with the SDK's ``stdio_client`` and yield an initialized ``ClientSession``.

    Leaving the block runs the SDK's own shutdown (close stdin, wait, kill the process group), bounded by the SDK.
    """
    async with stdio_client(spec.parameters(extra_env, cwd), errlog=errlog) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


@asynccontextmanager
async def leased_session(
    pool: BackendPool, config: StdioServerConfig, workspace: Path | None
) -> AsyncIterator[ClientSession]:
    """A ClientSession on a new lease of ``config``'s backend (what one thread holds)."""
    lease = await pool.acquire(config, workspace=workspace)
    async with lease, open_session(lease) as session:
        yield session


class Holder:
    """Holds async context managers open, each in a task of its own, until the ``async with`` block ends.

    Leaving the block lets every held context exit normally (no cancellation), concurrently. One task per context
    is how a host holds its connections (ThreadManager does the same); entering many task-group contexts nested in
    one task instead makes every anyio checkpoint walk the whole chain of nested cancel scopes (measured: 64 nested
    sessions cost ~25% more CPU per call).
    """

    def __init__(self) -> None:
        self._stop = anyio.Event()
        self._tg = anyio.create_task_group()

    async def __aenter__(self) -> Holder:
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        self._stop.set()
        return await self._tg.__aexit__(*exc_info)

    async def hold(self, manager: AbstractAsyncContextManager[T]) -> T:
        """Enter ``manager`` in a new task and return its value; it exits when the holder does."""

        async def run(*, task_status: anyio.abc.TaskStatus[T]) -> None:
            async with manager as value:
                task_status.started(value)
                await self._stop.wait()

        return await self._tg.start(run)


def checked_call(session: ClientSession, tool: str, arguments: Mapping[str, Any]) -> Call:
    """A call factory: ``session.call_tool(tool, arguments)``, raising :class:`CallFailed` on a tool error."""
    args = dict(arguments)

    async def call() -> None:
        result = await session.call_tool(tool, args)
        if result.is_error:
            raise CallFailed(f"{tool} failed: {result.content!r:.200}")

    return call


class RawClient:
    """A server spoken to in raw JSON-RPC lines over its stdin/stdout pipes, with no framework in between.

    Start it with ``async with RawClient.start(spec, env) as client``; leaving the block closes stdin, waits
    up to :data:`STOP_GRACE` s, then SIGKILLs the process group (the server runs in a session of its own).
    """

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self._next_id = 1

    @classmethod
    @asynccontextmanager
    async def start(
        cls, spec: ServerSpec, extra_env: Mapping[str, str], *, cwd: Path | None = None
    ) -> AsyncIterator[RawClient]:
        """Spawn ``spec`` (our environment + its env + ``extra_env``) in a new session and yield a client."""
        process = await anyio.open_process(
            list(spec.argv),
            env={**os.environ, **spec.env, **extra_env},
            cwd=cwd,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = cls(process)
        try:
            yield client
        finally:
            with anyio.CancelScope(shield=True):
                await client.stop()

    async def stop(self) -> None:
        """Close stdin, give the server :data:`STOP_GRACE` s, then SIGKILL its group; bounded."""
        with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._stdin.aclose()
        deadline = time.monotonic() + STOP_GRACE
        while self.process.returncode is None and time.monotonic() < deadline:  # noqa: ASYNC110 - no exit event
            await anyio.sleep(0.01)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with anyio.move_on_after(STOP_GRACE):
            while self.process.returncode is None:  # noqa: ASYNC110 - no exit event
                await anyio.sleep(0.01)
        with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.process.aclose()

    async def _send(self, data: bytes) -> None:
        await self._stdin.send(data)

    async def _receive(self) -> dict[str, Any]:
        return json.loads(await self._stdout.receive_until(b"\n", MAX_LINE_BYTES))

    async def _response(self) -> dict[str, Any]:
        """The next response (notifications and server requests are skipped: none is expected)."""
        while True:
            message = await self._receive()
            if "id" in message and "method" not in message:
                return message

    async def initialize(self) -> dict[str, Any]:
        """The handshake (no client capabilities), then ``notifications/initialized``."""
        request = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "mcpshare-bench-raw", "version": "0"},
            },
        }
        await self._send(json.dumps(request).encode() + b"\n")
        response = await self._response()
        if "result" not in response:
            raise CallFailed(f"raw initialize failed: {response!r:.300}")
        await self._send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        return response["result"]

    def _call_line(self, tool: str, arguments: Mapping[str, Any]) -> Callable[[int], bytes]:
        params = json.dumps({"name": tool, "arguments": dict(arguments)}, separators=(",", ":"))
        head = b'{"jsonrpc":"2.0","method":"tools/call","params":' + params.encode() + b',"id":'
        return lambda request_id: head + str(request_id).encode() + b"}\n"

    @staticmethod
    def _check(response: dict[str, Any]) -> None:
        result = response.get("result")
        if not isinstance(result, dict) or result.get("isError"):
            raise CallFailed(f"raw tools/call failed: {response!r:.300}")

    async def sequential(self, tool: str, arguments: Mapping[str, Any], count: int) -> float:
        """``count`` calls, each written after the previous answer; returns the elapsed seconds."""
        line = self._call_line(tool, arguments)
        started = time.perf_counter()
        for _ in range(count):
            request_id = self._next_id
            self._next_id += 1
            await self._send(line(request_id))
            response = await self._response()
            if response.get("id") != request_id:
                raise CallFailed(f"raw: expected the answer to {request_id}, got {response.get('id')!r}")
            self._check(response)
        return time.perf_counter() - started

    async def pipelined(self, tool: str, arguments: Mapping[str, Any], count: int, window: int) -> float:
        """``count`` calls with up to ``window`` in flight on the one pipe; returns the elapsed seconds."""
        line = self._call_line(tool, arguments)
        first = self._next_id
        self._next_id += count
        started = time.perf_counter()
        sent = min(window, count)
        await self._send(b"".join(line(first + i) for i in range(sent)))
        for _ in range(count):
            self._check(await self._response())
            if sent < count:
                await self._send(line(first + sent))
                sent += 1
        return time.perf_counter() - started


async def run_sequential(call: Call, count: int) -> tuple[float, list[float]]:
    """``count`` awaited calls one after the other: (elapsed seconds, per-call latencies)."""
    latencies: list[float] = []
    started = time.perf_counter()
    for _ in range(count):
        before = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - before)
    return time.perf_counter() - started, latencies


async def run_concurrent(calls: Sequence[Call], count: int, width: int) -> float:
    """``count`` calls by ``width`` workers (worker i uses ``calls[i % len(calls)]``); returns elapsed seconds."""
    remaining = count

    async def worker(call: Call) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(width):
            tg.start_soon(worker, calls[index % len(calls)])
    return time.perf_counter() - started
