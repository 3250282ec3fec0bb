"""Processes and total RSS of N threads x M servers: pooled vs one process per thread.

* pooled: one ``ThreadManager``; N threads started (eager connect to the M servers) and each lists its tools.
* direct: N "threads", each spawning its own M servers with the SDK's ``stdio_client`` (what hosts do today), each
  with its own initialized ``ClientSession`` that lists tools.

Both start at most ``start_concurrency`` threads at once. Once all N are ready the run pauses ``settle_seconds``,
then counts and measures (RSS, PSS) every process carrying the scenario's marker, descendants included, through
psutil; then it tears down and waits for the processes to be gone. The pooled figure includes mcpshare's guardian
process (one per pool). The variants alternate which goes first from one N to the next.

The direct variant at large N is heavy (about 65 MB per node process): it is skipped when the machine lacks the
memory, and aborted if free memory falls under the margin while it starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import psutil
from mcp import ClientSession

from mcpbench.clients import direct_session
from mcpbench.core import BenchContext, Row, ratio, section
from mcpbench.procs import Usage, measure
from mcpbench.servers import ServerSpec
from mcpshare.config import McpConfig
from mcpshare.threads import ThreadManager, list_all_tools

logger = logging.getLogger("mcpbench.processes")

MB = 1024 * 1024
DEFAULT_PROCESS_MB = 80
"""Memory estimate of one node server before any was measured (they measure about 65 MB)."""
READY_TIMEOUT_PER_THREAD = 2.0
TEARDOWN_TIMEOUT = 30.0


class LowMemory(RuntimeError):
    """Free memory fell under the margin while the direct variant was starting; it was aborted."""


@dataclass
class Measurement:
    """One variant at one N."""

    variant: str
    threads: int
    ready_seconds: float | None = None
    usage: Usage | None = None
    guardian: Usage | None = None
    skipped: str | None = None
    leftover: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def server_processes(self) -> int | None:
        return self.usage.processes if self.usage is not None else None

    @property
    def total_rss(self) -> int | None:
        if self.usage is None:
            return None
        return self.usage.rss + (self.guardian.rss if self.guardian is not None else 0)

    @property
    def total_pss(self) -> int | None:
        if self.usage is None or self.usage.pss is None:
            return None
        extra = self.guardian.pss if self.guardian is not None else 0
        return self.usage.pss + (extra or 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "threads": self.threads,
            "ready_seconds": self.ready_seconds,
            "server_processes": self.server_processes,
            "total_rss_bytes": self.total_rss,
            "total_pss_bytes": self.total_pss,
            "servers": self.usage.to_json() if self.usage is not None else None,
            "guardian": self.guardian.to_json() if self.guardian is not None else None,
            "skipped": self.skipped,
            "leftover_pids": self.leftover,
            **self.extra,
        }


async def run_pooled(ctx: BenchContext, specs: list[ServerSpec], threads: int) -> Measurement:
    """N threads on one ThreadManager; measure once all listed tools, then close it."""
    tracker = ctx.tracker
    scenario = tracker.scenario(f"pooled-{threads}")
    env = tracker.env(scenario)
    config = McpConfig({spec.name: spec.stdio_config(env) for spec in specs})
    names = {spec.name for spec in specs}
    result = Measurement("pooled", threads)
    limit = anyio.Semaphore(ctx.profile.start_concurrency)
    tool_counts: set[int] = set()

    async with ThreadManager(config, idle_grace=30.0, connect="eager") as manager:

        async def one() -> None:
            async with limit:
                thread = await manager.start_thread(cwd=ctx.workspace)
                tools = await thread.list_tools()
            if {tool.server for tool in tools} != names:
                raise RuntimeError(f"pooled thread sees tools of {sorted({t.server for t in tools})}, not {names}")
            tool_counts.add(len(tools))

        started = time.perf_counter()
        with anyio.fail_after(30 + READY_TIMEOUT_PER_THREAD * threads):
            async with anyio.create_task_group() as tg:
                for _ in range(threads):
                    tg.start_soon(one)
        result.ready_seconds = time.perf_counter() - started
        await anyio.sleep(ctx.profile.settle_seconds)
        result.usage = await tracker.ausage(scenario, ctx.classify)
        result.guardian = await anyio.to_thread.run_sync(measure, tracker.guardians())
        result.extra["pool_spawns"] = manager.pool.spawns
        result.extra["tools_per_thread"] = sorted(tool_counts)
    result.leftover = await tracker.wait_gone(scenario, timeout=TEARDOWN_TIMEOUT)
    return result


Connect = Callable[[ServerSpec, Mapping[str, str]], AbstractAsyncContextManager[ClientSession]]
"""How a "thread" of :func:`run_direct` opens an initialized session to one server (given the marker env)."""


async def run_direct(
    ctx: BenchContext,
    specs: list[ServerSpec],
    threads: int,
    *,
    process_mb: float,
    label: str = "direct",
    also_measure: Sequence[str] = (),
    connect: Connect | None = None,
) -> Measurement:
    """N threads, each with its own M servers through stdio_client; measure once all listed tools, then stop.

    ``specs`` may be any stdio commands (the broker section passes shims), and ``connect`` any other way to open a
    session (the broker section's HTTP clients). ``process_mb`` is the expected memory per process, for the up-front
    memory check. Processes of the ``also_measure`` scenarios (a broker and the servers it spawned) are counted and
    measured together with the threads' own.
    """
    tracker = ctx.tracker
    result = Measurement(label, threads)
    margin = ctx.profile.memory_margin_mb * MB
    needed = process_mb * MB * threads * len(specs) * 1.05
    available = psutil.virtual_memory().available
    if needed > available - margin:
        result.skipped = (
            f"needs ~{needed / MB / 1024:.1f} GB, {available / MB / 1024:.1f} GB available "
            f"(margin {ctx.profile.memory_margin_mb} MB)"
        )
        return result
    scenario = tracker.scenario(f"{label}-{threads}")
    env = tracker.env(scenario)
    limit = anyio.Semaphore(ctx.profile.start_concurrency)
    stop = anyio.Event()
    all_ready = anyio.Event()
    ready = 0
    tool_counts: set[int] = set()

    def stdio(spec: ServerSpec, env: Mapping[str, str]) -> AbstractAsyncContextManager[ClientSession]:
        return direct_session(spec, env, errlog=ctx.errlog, cwd=ctx.workspace)

    opener = connect or stdio

    async def server(spec: ServerSpec, up: anyio.Event) -> None:
        async with opener(spec, env) as session:
            tools = await list_all_tools(session)
            tool_counts.add(len(tools))
            up.set()
            await stop.wait()

    async def thread() -> None:
        nonlocal ready
        ups = [anyio.Event() for _ in specs]
        async with anyio.create_task_group() as tg:
            async with limit:
                for spec, up in zip(specs, ups, strict=True):
                    tg.start_soon(server, spec, up)
                for up in ups:
                    await up.wait()
            ready += 1
            if ready == threads:
                all_ready.set()

    async def watch_memory() -> None:
        while not stop.is_set():
            if psutil.virtual_memory().available < margin:
                raise LowMemory(f"free memory fell under {ctx.profile.memory_margin_mb} MB with {ready} threads up")
            await anyio.sleep(0.25)

    started = time.perf_counter()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_memory)
            for _ in range(threads):
                tg.start_soon(thread)
            try:
                with anyio.fail_after(30 + READY_TIMEOUT_PER_THREAD * threads):
                    await all_ready.wait()
                result.ready_seconds = time.perf_counter() - started
                await anyio.sleep(ctx.profile.settle_seconds)
                result.usage = await tracker.ausage([scenario, *also_measure], ctx.classify)
            finally:
                stop.set()
    except* LowMemory as group:
        result.skipped = f"aborted: {group.exceptions[0]}"
    result.extra["tools_per_session"] = sorted(tool_counts)
    result.leftover = await tracker.wait_gone(scenario, timeout=TEARDOWN_TIMEOUT)
    if result.leftover:
        tracker.reap(scenario)
    return result


def _per_process_mb(result: Measurement) -> float | None:
    """Memory one server process really uses (PSS where available: RSS counts shared pages once per process)."""
    usage = result.usage
    if usage is None or not usage.processes:
        return None
    return (usage.pss if usage.pss is not None else usage.rss) / usage.processes / MB


def _mb(value: int | None) -> float | None:
    return value / MB if value is not None else None


@section("processes", "Processes and total RSS: N threads x M servers", order=10, timeout=600.0)
async def processes(ctx: BenchContext) -> list[Row]:
    """Pooled vs direct process count and memory for each N of ``--threads``, M real servers."""
    specs = ctx.node_servers()
    m = len(specs)
    measured: dict[int, dict[str, Measurement]] = {}
    ctx.detail("servers", m)
    ctx.detail("start_concurrency", ctx.profile.start_concurrency)
    process_mb = float(DEFAULT_PROCESS_MB)
    for index, n in enumerate(ctx.profile.threads):
        order = ("pooled", "direct") if index % 2 == 0 else ("direct", "pooled")
        measured[n] = {}
        for variant in order:
            logger.info("processes: N=%d %s", n, variant)
            if variant == "pooled":
                result = await run_pooled(ctx, specs, n)
            else:
                result = await run_direct(ctx, specs, n, process_mb=process_mb)
            process_mb = _per_process_mb(result) or process_mb
            measured[n][variant] = result
            # Recorded as it goes: an interrupted run still leaves what was measured in latest.json (and the PNG).
            ctx.detail("measurements", {str(k): {v: r.to_json() for v, r in by.items()} for k, by in measured.items()})
            logger.info(
                "processes: N=%d %s: %s processes, %.0f MB, ready in %.2f s%s",
                n,
                variant,
                result.server_processes,
                _mb(result.total_rss) or 0,
                result.ready_seconds or 0,
                f" ({result.skipped})" if result.skipped else "",
            )

    rows: list[Row] = []
    for n, by in measured.items():
        pooled, direct = by["pooled"], by["direct"]
        note = direct.skipped or ""
        if pooled.guardian is not None and pooled.guardian.processes:
            note = (note + "; " if note else "") + f"pooled incl. 1 guardian ({pooled.guardian.rss / MB:.0f} MB)"
        rows.append(
            Row(
                "processes",
                f"server processes, N={n} x M={m}",
                "procs",
                pooled=pooled.server_processes,
                baseline=direct.server_processes,
                ratio=ratio(direct.server_processes, pooled.server_processes),
                ratio_of="direct/pooled",
                target=f"pooled = {m}",
                ok=pooled.server_processes == m,
                params={"threads": n, "servers": m},
                note=direct.skipped or "",
            )
        )
        rows.append(
            Row(
                "processes",
                f"total RSS, N={n} x M={m}",
                "MB",
                pooled=_mb(pooled.total_rss),
                baseline=_mb(direct.total_rss),
                ratio=ratio(direct.total_rss, pooled.total_rss),
                ratio_of="direct/pooled",
                params={
                    "threads": n,
                    "servers": m,
                    "pss_pooled_mb": _mb(pooled.total_pss),
                    "pss_direct_mb": _mb(direct.total_pss),
                },
                note=note,
            )
        )
    largest = max(measured)
    pooled, direct = measured[largest]["pooled"], measured[largest]["direct"]
    rows.append(
        Row(
            "processes",
            f"total PSS (shared pages split), N={largest} x M={m}",
            "MB",
            pooled=_mb(pooled.total_pss),
            baseline=_mb(direct.total_pss),
            ratio=ratio(direct.total_pss, pooled.total_pss),
            ratio_of="direct/pooled",
            params={"threads": largest, "servers": m},
            note=direct.skipped or "RSS counts the node binary's shared pages once per process; PSS adds up",
        )
    )
    rows.append(
        Row(
            "processes",
            f"time until all N={largest} threads listed tools",
            "s",
            pooled=pooled.ready_seconds,
            baseline=direct.ready_seconds,
            ratio=ratio(direct.ready_seconds, pooled.ready_seconds),
            ratio_of="direct/pooled",
            params={"threads": largest, "start_concurrency": ctx.profile.start_concurrency},
            note=direct.skipped or "",
        )
    )
    return rows
