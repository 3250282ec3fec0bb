"""The HTTP front (``mcpshare serve --http``) vs the HTTP fronts a user would pick instead: mcp-proxy and FastMCP.

Three fronts run side by side for the whole section, each in front of its own stdio server-everything (the same
pinned build):

* mcpshare: the broker (``python -m mcpshare serve --config FILE --http PORT``) in a private runtime dir;
* mcp-proxy (PyPI ``mcp-proxy``): ``mcp-proxy --port PORT -- node server-everything stdio``;
* FastMCP's config proxy (PyPI ``fastmcp``): ``fastmcp run mcp.json --transport http --port PORT``.

The peers run from venvs of their own under ``bench/.peers/`` (gitignored; created on first use, their ``mcp``
versions differ from ours), pinned in :data:`PEERS`. Every client is this repository's MCP SDK streamable HTTP
client. Measured, in interleaved rounds (the order of the fronts rotates from round to round):

* sequential: the median latency of one echo call from one SDK session per front, and the CPU the front process
  spent per call (read from the OS); and the same SDK session on :mod:`mcpbench.http_floor`, which answers by
  itself: the client's own cost plus the HTTP round trip, the best any front could do;
* 8 client processes (:mod:`mcpbench.http_worker`), each with its own session, all calling at once: calls/s;
* a raw POST: the smallest HTTP client (one keep-alive connection, one request written whole, the JSON answer read
  by its Content-Length) through mcpshare's front vs the same call written straight into a server-everything's
  stdin (:class:`~mcpbench.clients.RawClient`): what the front itself costs; and the same raw POST to
  :mod:`mcpbench.http_floor` (uvicorn + httptools with an app that answers itself, no server): what the HTTP round
  trip alone costs in Python on this machine;
* with the 9 sessions open: server processes and the RSS of each front with its servers (psutil).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import psutil
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from mcpbench.clients import CallFailed, Holder, RawClient, checked_call, run_sequential
from mcpbench.core import BenchContext, Row, SectionSkipped, median, paired_ratio, ratio, rotate, section, summary
from mcpbench.servers import REPO_ROOT, ServerSpec

logger = logging.getLogger("mcpbench.http")

PEERS: dict[str, tuple[str, str]] = {
    "mcp-proxy": ("mcp-proxy==0.13.0", "mcp-proxy"),
    "fastmcp": ("fastmcp==4.1.6", "fastmcp"),
}
"""Peer name -> (pip requirement, console script)."""
PEER_DIR = REPO_ROOT / "bench" / ".peers"
WORKER = Path(__file__).resolve().parent.parent / "http_worker.py"
FLOOR = Path(__file__).resolve().parent.parent / "http_floor.py"
WORKERS = 8
READY_TIMEOUT = 60.0
INSTALL_TIMEOUT = 900.0
STOP_TIMEOUT = 15.0
TARGET_P50 = 0.6
TARGET_THROUGHPUT = 1.5
TARGET_RAW = 1.5


@dataclass
class Front:
    """One running front: how to reach it and which processes are its own."""

    name: str
    url: str
    process: Process
    scenario: str
    token: str | None = None
    workers: list[Process] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


# ---------------------------------------------------------------------------------------------- set-up


def _install_peer(name: str, requirement: str, script: str) -> Path:
    """The peer's console script, from its own venv under bench/.peers (created or updated to ``requirement``)."""
    venv = PEER_DIR / name
    stamp = venv / ".mcpbench-requirement"
    executable = venv / "bin" / script
    if executable.is_file() and stamp.is_file() and stamp.read_text() == requirement:
        return executable
    logger.info("http: installing %s into %s (once)", requirement, venv)
    PEER_DIR.mkdir(parents=True, exist_ok=True)
    (PEER_DIR / ".gitignore").write_text("*\n")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=INSTALL_TIMEOUT)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    if done.returncode != 0 or not executable.is_file():
        raise SectionSkipped(f"could not install {requirement}: {done.stderr.strip()[-300:]}")
    stamp.write_text(requirement)
    return executable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_port(process: Process, port: int, name: str, log: Path) -> None:
    with anyio.fail_after(READY_TIMEOUT):
        while True:
            if process.returncode is not None:
                tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
                raise RuntimeError(f"{name} exited with code {process.returncode} before listening: {tail}")
            with contextlib.suppress(OSError):
                stream = await anyio.connect_tcp("127.0.0.1", port)
                await stream.aclose()
                return
            await anyio.sleep(0.05)


async def start_front(ctx: BenchContext, name: str, spec: ServerSpec, scratch: Path) -> Front:
    """Start one front in front of ``spec`` (server-everything) on a free port; return once it accepts."""
    scenario = ctx.tracker.scenario(f"http-{name}")
    env = {**os.environ, **ctx.tracker.env(scenario)}
    port = _free_port()
    log = scratch / f"{name}.log"
    mcp_json = {"mcpServers": {"everything": {"command": spec.argv[0], "args": list(spec.argv[1:])}}}
    if name == "mcpshare":
        runtime_dir = scratch / "rt"
        runtime_dir.mkdir(mode=0o700, exist_ok=True)
        config = scratch / "mcpshare.mcp.json"
        config.write_text(json.dumps(mcp_json))
        env["MCPSHARE_RUNTIME_DIR"] = str(runtime_dir)
        argv = [sys.executable, "-m", "mcpshare", "serve", "--config", str(config), "--http", str(port)]
        argv += ["--idle-grace", "60", "--log-file", str(log)]
        url = f"http://127.0.0.1:{port}/mcp/everything"
    elif name == "floor":
        argv = [sys.executable, str(FLOOR), str(port)]
        url = f"http://127.0.0.1:{port}/mcp"
    elif name == "mcp-proxy":
        executable = await anyio.to_thread.run_sync(_install_peer, name, *PEERS[name])
        argv = [str(executable), "--port", str(port), "--host", "127.0.0.1", "--", *spec.argv]
        url = f"http://127.0.0.1:{port}/mcp"
    else:
        executable = await anyio.to_thread.run_sync(_install_peer, name, *PEERS[name])
        config = scratch / "fastmcp.mcp.json"
        config.write_text(json.dumps(mcp_json))
        argv = [str(executable), "run", str(config), "--transport", "http", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--no-banner", "--log-level", "WARNING"]
        url = f"http://127.0.0.1:{port}/mcp"
    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        process = await anyio.open_process(
            argv, env=env, stdout=output, stderr=output, cwd=ctx.workspace, start_new_session=True
        )
    finally:
        os.close(output)
    front = Front(name, url, process, scenario)
    try:
        await _wait_port(process, port, name, log)
        if name == "mcpshare":
            front.token = (scratch / "rt" / "http.token").read_text().strip()
    except BaseException:
        await stop_front(ctx, front)
        raise
    return front


async def stop_front(ctx: BenchContext, front: Front) -> None:
    """Close the workers' stdin (they exit), SIGTERM the front, bounded; then reap whatever is left of it."""
    with anyio.CancelScope(shield=True):
        for worker in front.workers:
            with contextlib.suppress(Exception):
                assert worker.stdin is not None
                await worker.stdin.aclose()
        with anyio.move_on_after(STOP_TIMEOUT):
            for worker in front.workers:
                await worker.wait()
        if front.process.returncode is None:
            front.process.terminate()
            with anyio.move_on_after(STOP_TIMEOUT):
                await front.process.wait()
        left = ctx.tracker.reap(front.scenario)
        if left:
            logger.warning("http: killed %d processes left by %s: %s", len(left), front.name, left)
        for process in (*front.workers, front.process):
            with contextlib.suppress(Exception):
                await process.aclose()


@asynccontextmanager
async def sdk_session(front: Front) -> AsyncIterator[ClientSession]:
    """An initialized session of this repository's MCP SDK streamable HTTP client on ``front``."""
    async with (
        create_mcp_http_client(headers=front.headers) as client,
        streamable_http_client(front.url, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


# ---------------------------------------------------------------------------------------------- clients


class _Lines:
    """Lines of a worker's stdout."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None
        self._buffered = BufferedByteReceiveStream(process.stdout)

    async def line(self) -> str:
        return (await self._buffered.receive_until(b"\n", 65536)).decode()


async def start_workers(ctx: BenchContext, front: Front, spec: ServerSpec) -> list[_Lines]:
    """:data:`WORKERS` client processes with a session each on ``front``, all ready."""
    env = {
        **os.environ,
        **ctx.tracker.env(front.scenario),
        "MCPBENCH_HTTP_CALL": json.dumps({"name": spec.echo_tool, "arguments": dict(spec.echo_args)}),
    }
    if front.token:
        env["MCPBENCH_HTTP_TOKEN"] = front.token
    readers = []
    for _ in range(WORKERS):
        process = await anyio.open_process(
            [sys.executable, str(WORKER), front.url], env=env, stderr=ctx.errlog, start_new_session=True
        )
        front.workers.append(process)
        readers.append(_Lines(process))
    with anyio.fail_after(READY_TIMEOUT):
        for reader in readers:
            if (line := (await reader.line()).strip()) != "ready":
                raise CallFailed(f"{front.name}: a client process said {line!r} instead of ready")
    return readers


async def run_workers(front: Front, readers: list[_Lines], calls_each: int) -> float:
    """Every worker makes ``calls_each`` calls at once; returns the calls/s of all of them together."""
    started = time.perf_counter()
    for worker in front.workers:
        assert worker.stdin is not None
        await worker.stdin.send(f"{calls_each}\n".encode())
    for reader in readers:
        answer = (await reader.line()).strip()
        if answer.startswith("error"):
            raise CallFailed(f"{front.name}: a client process failed: {answer}")
    return WORKERS * calls_each / (time.perf_counter() - started)


class RawHttp:
    """The smallest Streamable HTTP client: one keep-alive connection, each POST written whole, each JSON answer read
    by its Content-Length (mcpshare's front answers a plain call with JSON). No framework, no SSE parser.

    Use it as ``async with raw.connection():`` around each burst of calls: the front closes a connection idle for
    longer than its keep-alive timeout, as any server does; the session outlives the connection."""

    def __init__(self, url: str, token: str | None) -> None:
        rest = url.split("//", 1)[1]
        hostport, _, path = rest.partition("/")
        host, port = hostport.split(":")
        self._address = (host, int(port))
        self._path = "/" + path
        self._fixed = (
            f"Host: {hostport}\r\nAccept: application/json, text/event-stream\r\n"
            "Content-Type: application/json\r\n" + (f"Authorization: Bearer {token}\r\n" if token else "")
        )
        self._session = ""
        self._next_id = 1
        self._stream: anyio.abc.SocketStream | None = None
        self._buffered: BufferedByteReceiveStream | None = None

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[None]:
        async with await anyio.connect_tcp(*self._address) as stream:
            self._stream, self._buffered = stream, BufferedByteReceiveStream(stream)
            try:
                yield
            finally:
                self._stream = self._buffered = None

    async def post(self, message: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        assert self._stream is not None and self._buffered is not None, "use `async with raw.connection()`"
        body = json.dumps(message, separators=(",", ":")).encode()
        head = f"POST {self._path} HTTP/1.1\r\n{self._fixed}{self._session}Content-Length: {len(body)}\r\n\r\n"
        await self._stream.send(head.encode() + body)
        status_line, *lines = (await self._buffered.receive_until(b"\r\n\r\n", 65536)).decode().split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        if "content-length" not in headers:
            raise CallFailed(f"raw POST: expected a JSON answer with a Content-Length, got {status_line} {headers}")
        length = int(headers["content-length"] or 0)
        data = await self._buffered.receive_exactly(length) if length else b""
        if not status_line.startswith("HTTP/1.1 2"):
            raise CallFailed(f"raw POST: {status_line} {data[:300]!r}")
        return headers, data

    async def initialize(self) -> None:
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
        headers, _ = await self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
        self._session = f"Mcp-Session-Id: {headers['mcp-session-id']}\r\nMCP-Protocol-Version: 2025-11-25\r\n"
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def call(self, tool: str, arguments: dict[str, Any]) -> None:
        self._next_id += 1
        message = {"jsonrpc": "2.0", "id": self._next_id, "method": "tools/call"}
        _, data = await self.post({**message, "params": {"name": tool, "arguments": arguments}})
        answer = json.loads(data)
        if answer.get("id") != self._next_id or "result" not in answer or answer["result"].get("isError"):
            raise CallFailed(f"raw POST: bad answer {data[:300]!r}")


def _cpu_seconds(process: Process) -> float | None:
    try:
        times = psutil.Process(process.pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


# ---------------------------------------------------------------------------------------------- the section


@section(
    "http",
    "HTTP front (serve --http) vs mcp-proxy and FastMCP's proxy, each before one stdio server-everything",
    order=60,
    requires=("mcpshare.http_front",),
    timeout=1500.0,
)
async def http(ctx: BenchContext) -> list[Row]:
    """Latency, CPU, throughput with 8 client processes, raw POST cost, processes and RSS, per front."""
    spec = ctx.servers["everything"]
    profile = ctx.profile
    seq_calls = 60 if profile.quick else 150
    raw_calls = 200 if profile.quick else 500
    worker_calls = 30 if profile.quick else 100
    names = ("mcpshare", *PEERS)
    p50: dict[str, list[float]] = {name: [] for name in (*names, "floor")}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in names}  # per round: the OS counts 10 ms ticks
    rate: dict[str, list[float]] = {name: [] for name in names}
    raw_p50: dict[str, list[float]] = {"raw-post": [], "floor": [], "stdio": []}
    usage: dict[str, dict[str, Any]] = {}
    scratch = ctx.workspace.parent / "http"
    scratch.mkdir(exist_ok=True)
    fronts: dict[str, Front] = {}
    try:
        for name in names:
            fronts[name] = await start_front(ctx, name, spec, scratch)
        stdio_env = ctx.tracker.env(ctx.tracker.scenario("http-stdio"))
        async with contextlib.AsyncExitStack() as stack:
            holder = await stack.enter_async_context(Holder())
            sessions = {name: await holder.hold(sdk_session(front)) for name, front in fronts.items()}
            calls = {name: checked_call(session, spec.echo_tool, spec.echo_args) for name, session in sessions.items()}
            readers = {name: await start_workers(ctx, front, spec) for name, front in fronts.items()}
            stdio = await stack.enter_async_context(RawClient.start(spec, stdio_env, cwd=ctx.workspace))
            await stdio.initialize()
            floor = fronts["floor"] = await start_front(ctx, "floor", spec, scratch)
            calls["floor"] = checked_call(await holder.hold(sdk_session(floor)), spec.echo_tool, spec.echo_args)
            raw = {
                "raw-post": RawHttp(fronts["mcpshare"].url, fronts["mcpshare"].token),
                "floor": RawHttp(floor.url, None),
            }
            for client in raw.values():
                async with client.connection():
                    await client.initialize()
            arguments = dict(spec.echo_args)
            with anyio.fail_after(300):
                for name in names:  # warm-up: first calls, caches, connection pools
                    await run_sequential(calls[name], 20)
                    await run_workers(fronts[name], readers[name], 5)
                await run_sequential(calls["floor"], 20)
                for client in raw.values():
                    async with client.connection():
                        for _ in range(50):
                            await client.call(spec.echo_tool, arguments)
                for _ in range(50):
                    await stdio.sequential(spec.echo_tool, arguments, 1)
            for name in names:
                usage[name] = await _usage(ctx, fronts[name], spec.argv[0])
            for round_index in range(profile.rounds):
                for name in rotate((*names, "floor"), round_index):
                    with anyio.fail_after(300):
                        process = fronts[name].process
                        before = _cpu_seconds(process)
                        _, latencies = await run_sequential(calls[name], seq_calls)
                        after = _cpu_seconds(process)
                        p50[name].append(median(latencies) * 1000)  # type: ignore[operator]
                        if name == "floor":
                            continue
                        if before is not None and after is not None:
                            cpu_seconds[name].append(after - before)
                        rate[name].append(await run_workers(fronts[name], readers[name], worker_calls))
                for variant in rotate(tuple(raw_p50), round_index):
                    latencies = []
                    with anyio.fail_after(120):
                        if variant == "stdio":
                            for _ in range(raw_calls):
                                latencies.append(await stdio.sequential(spec.echo_tool, arguments, 1))
                        else:
                            async with raw[variant].connection():
                                for _ in range(raw_calls):
                                    started = time.perf_counter()
                                    await raw[variant].call(spec.echo_tool, arguments)
                                    latencies.append(time.perf_counter() - started)
                    raw_p50[variant].append(median(latencies) * 1000)  # type: ignore[operator]
                logger.info(
                    "http: round %d: p50 ms %s; calls/s %s",
                    round_index + 1,
                    {name: round(values[-1], 2) for name, values in p50.items()},
                    {name: round(values[-1]) for name, values in rate.items()},
                )
    finally:
        for front in fronts.values():
            await stop_front(ctx, front)
    ctx.detail("sequential_p50_ms", {name: summary(v) for name, v in p50.items()})
    cpu_us = {name: sum(v) / (len(v) * seq_calls) * 1e6 if v else None for name, v in cpu_seconds.items()}
    ctx.detail("front_cpu_seconds_per_round", {name: summary(v) for name, v in cpu_seconds.items()})
    ctx.detail("front_cpu_us_per_sequential_call", cpu_us)
    ctx.detail(f"calls_per_second_{WORKERS}_processes", {name: summary(v) for name, v in rate.items()})
    ctx.detail("raw_post_vs_stdio_p50_ms", {name: summary(v) for name, v in raw_p50.items()})
    ctx.detail("processes_and_rss", usage)
    ctx.detail("peers", {name: requirement for name, (requirement, _) in PEERS.items()})
    return _rows(p50, cpu_us, rate, raw_p50, usage)


async def _usage(ctx: BenchContext, front: Front, spec_node: str) -> dict[str, Any]:
    """The front's processes (itself, its servers, a guardian), with the 9 sessions open; the clients left out."""
    clients = {worker.pid for worker in front.workers}
    procs = [proc for proc in await ctx.tracker.afind(front.scenario) if proc.pid not in clients]
    servers = rss = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            rss += proc.memory_info().rss
            cmdline = proc.cmdline()
            if cmdline[:1] == [spec_node] and "server-everything" in " ".join(cmdline):
                servers += 1
    return {"processes": len(procs), "servers": servers, "rss_bytes": rss}


def _rows(
    p50: dict[str, list[float]],
    cpu_us: dict[str, float | None],
    rate: dict[str, list[float]],
    raw_p50: dict[str, list[float]],
    usage: dict[str, dict[str, Any]],
) -> list[Row]:
    rows: list[Row] = []
    sessions = WORKERS + 1

    def versus(
        measure: str, unit: str, values: dict[str, list[float]], target: str, ok: Callable[[float], bool]
    ) -> None:
        for peer in PEERS:
            paired = paired_ratio(values["mcpshare"], values[peer])
            rows.append(
                Row(
                    "http",
                    f"{measure} vs {peer}",
                    unit,
                    pooled=median(values["mcpshare"]),
                    baseline=median(values[peer]),
                    ratio=paired,
                    ratio_of=f"mcpshare/{peer}",
                    target=target,
                    ok=ok(paired) if paired is not None and target else None,
                    baseline_kind=peer,
                    params={"rounds": len(values[peer])},
                )
            )

    versus(
        "sequential call p50, SDK HTTP client, echo @ everything",
        "ms",
        p50,
        f"<= {TARGET_P50:g}x",
        lambda value: value <= TARGET_P50,
    )
    for peer in PEERS:
        paired = paired_ratio(p50["floor"], p50[peer])
        rows.append(
            Row(
                "http",
                f"sequential call p50, SDK HTTP client, to the HTTP floor (no server) vs {peer}",
                "ms",
                pooled=median(p50["floor"]),
                baseline=median(p50[peer]),
                ratio=paired,
                ratio_of=f"floor/{peer}",
                baseline_kind=peer,
                params={"rounds": len(p50[peer])},
                note="the SDK client's own cost plus the HTTP round trip: the best ratio any front could reach",
            )
        )
    versus(
        f"calls/s, {WORKERS} client processes at once, echo @ everything",
        "calls/s",
        rate,
        f">= {TARGET_THROUGHPUT:g}x",
        lambda value: value >= TARGET_THROUGHPUT,
    )
    for peer in PEERS:
        # One round's CPU figure is a few clock ticks: the sum over all rounds is the figure.
        rows.append(
            Row(
                "http",
                f"CPU of the front process per sequential call vs {peer}",
                "us",
                pooled=cpu_us["mcpshare"],
                baseline=cpu_us[peer],
                ratio=ratio(cpu_us["mcpshare"], cpu_us[peer]),
                ratio_of=f"mcpshare/{peer}",
                baseline_kind=peer,
                note="user + system CPU of the front process over all rounds, read from the OS",
            )
        )
    for via, against, target, note in (
        ("raw-post", "stdio", f"<= {TARGET_RAW:g}x", "the least an HTTP client can do: what the front itself costs"),
        ("floor", "stdio", "", "uvicorn + httptools answering by itself: the HTTP round trip alone, no server"),
        ("raw-post", "floor", "", "what mcpshare adds to that floor: the server's call and the MCP routing"),
    ):
        paired = paired_ratio(raw_p50[via], raw_p50[against])
        rows.append(
            Row(
                "http",
                f"call p50, raw POST {'through mcpshare' if via == 'raw-post' else 'to the HTTP floor'} vs {against}",
                "ms",
                pooled=median(raw_p50[via]),
                baseline=median(raw_p50[against]),
                ratio=paired,
                ratio_of=f"{via}/{against}",
                target=target,
                ok=paired <= TARGET_RAW if paired is not None and target else None,
                baseline_kind=against,
                params={"rounds": len(raw_p50[against])},
                note=note,
            )
        )
    for peer in PEERS:
        mine, theirs = usage.get("mcpshare", {}), usage.get(peer, {})
        rows.append(
            Row(
                "http",
                f"server processes behind {sessions} HTTP sessions vs {peer}",
                "procs",
                pooled=mine.get("servers"),
                baseline=theirs.get("servers"),
                ratio=ratio(theirs.get("servers"), mine.get("servers")),
                ratio_of=f"{peer}/mcpshare",
                baseline_kind=peer,
                note="front + its processes: " + ", ".join(f"{name} {u.get('processes')}" for name, u in usage.items()),
            )
        )
        rows.append(
            Row(
                "http",
                f"RSS of the front and its servers, {sessions} HTTP sessions, vs {peer}",
                "MB",
                pooled=mine["rss_bytes"] / 1e6 if mine else None,
                baseline=theirs["rss_bytes"] / 1e6 if theirs else None,
                ratio=ratio(theirs.get("rss_bytes"), mine.get("rss_bytes")),
                ratio_of=f"{peer}/mcpshare",
                baseline_kind=peer,
            )
        )
    return rows
