"""Startup storm: ``storm_threads`` threads start at the same instant on a cold pool.

Each repeat builds a fresh ``ThreadManager`` (cold: no backend runs) and starts every thread at once, each listing
its tools. A sampler polls the OS (psutil, every 50 ms) for the scenario's processes and records every distinct pid
per server and the most alive at once. Spawns per key must be 1: by ``BackendPool.spawns`` and by psutil.
The time until all threads are ready is compared with one thread's time on a cold pool (the time of one spawn of
each server, the same work without the storm); the difference is the host's cost of attaching ``storm_threads``
x M sessions at once (their initialize and tools/list). Single and storm runs alternate which goes first; the ratio
is the median of the per-repeat ratios.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio

from mcpbench.core import BenchContext, Row, median, paired_ratio, rotate, section, summary
from mcpbench.servers import ServerSpec
from mcpshare.config import McpConfig
from mcpshare.threads import ThreadManager

logger = logging.getLogger("mcpbench.storm")

STORM_TIMEOUT = 120.0
SAMPLE_INTERVAL = 0.05


async def cold_start(ctx: BenchContext, specs: list[ServerSpec], threads: int) -> dict[str, Any]:
    """``threads`` threads started at once on a fresh pool; returns timings, spawns and psutil observations."""
    tracker = ctx.tracker
    scenario = tracker.scenario(f"storm-{threads}")
    config = McpConfig({spec.name: spec.stdio_config(tracker.env(scenario)) for spec in specs})
    names = {spec.name for spec in specs}
    pids: dict[str, set[int]] = {spec.name: set() for spec in specs}
    peak: dict[str, int] = {spec.name: 0 for spec in specs}
    ready_times: list[float] = []
    stop = anyio.Event()

    async def sample() -> None:
        while not stop.is_set():
            alive: dict[str, int] = {}
            for proc in await tracker.afind(scenario):
                try:
                    kind = ctx.classify(proc.cmdline())
                except Exception:
                    continue
                if kind in pids:
                    pids[kind].add(proc.pid)
                    alive[kind] = alive.get(kind, 0) + 1
            for kind, count in alive.items():
                peak[kind] = max(peak[kind], count)
            with anyio.move_on_after(SAMPLE_INTERVAL):
                await stop.wait()

    async with ThreadManager(config, idle_grace=30.0, connect="eager") as manager:
        gate = anyio.Event()
        started = 0.0

        async def one() -> None:
            await gate.wait()
            thread = await manager.start_thread(cwd=ctx.workspace)
            tools = await thread.list_tools()
            ready_times.append(time.perf_counter() - started)
            if {tool.server for tool in tools} != names:
                raise RuntimeError(f"a storm thread sees tools of {sorted({t.server for t in tools})} only")

        with anyio.fail_after(STORM_TIMEOUT):
            async with anyio.create_task_group() as sampler:
                sampler.start_soon(sample)
                async with anyio.create_task_group() as tg:
                    for _ in range(threads):
                        tg.start_soon(one)
                    await anyio.sleep(0.05)  # every task is parked on the gate
                    started = time.perf_counter()
                    gate.set()
                all_ready = time.perf_counter() - started
                await anyio.sleep(0.2)  # one more sample after the storm: any late duplicate would show here
                stop.set()
        spawns = manager.pool.spawns
    await tracker.wait_gone(scenario, timeout=30.0)
    return {
        "threads": threads,
        "all_ready_seconds": all_ready,
        "first_ready_seconds": min(ready_times),
        "median_ready_seconds": median(ready_times),
        "pool_spawns": spawns,
        "distinct_pids": {kind: len(found) for kind, found in pids.items()},
        "peak_alive": peak,
    }


@section("storm", "Startup storm: many threads at once on a cold pool", order=40, timeout=400.0)
async def storm(ctx: BenchContext) -> list[Row]:
    """Spawns per key and time-to-ready of a storm vs a single thread, medians over repeats."""
    profile = ctx.profile
    specs = ctx.node_servers()
    n = profile.storm_threads
    storms: list[dict[str, Any]] = []
    singles: list[dict[str, Any]] = []
    for repeat in range(profile.storm_repeats):
        for kind in rotate(["single", "storm"], repeat):
            if kind == "single":
                singles.append(await cold_start(ctx, specs, 1))
            else:
                storms.append(await cold_start(ctx, specs, n))
                logger.info("storm %d: %s", repeat + 1, storms[-1])
    ctx.detail("storms", storms)
    ctx.detail("singles", singles)
    ctx.detail("storm_all_ready_seconds", summary([s["all_ready_seconds"] for s in storms]))
    ctx.detail("single_ready_seconds", summary([s["all_ready_seconds"] for s in singles]))

    most_pids = max(max(s["distinct_pids"].values()) for s in storms)
    most_spawns = max(s["pool_spawns"] for s in storms)
    storm_time = median([s["all_ready_seconds"] for s in storms])
    single_time = median([s["all_ready_seconds"] for s in singles])
    slowdown = paired_ratio([s["all_ready_seconds"] for s in storms], [s["all_ready_seconds"] for s in singles])
    m = len(specs)
    return [
        Row(
            "storm",
            f"spawns per key, {n} threads at once (psutil)",
            "spawns",
            pooled=most_pids,
            target="= 1",
            ok=most_pids == 1,
            baseline_kind="",
            params={"threads": n, "servers": m, "repeats": len(storms)},
            note=f"BackendPool.spawns = {most_spawns} for {m} keys (max over repeats)",
        ),
        Row(
            "storm",
            f"time until all {n} threads ready (vs 1 thread, cold pool)",
            "s",
            pooled=storm_time,
            baseline=single_time,
            ratio=slowdown,
            ratio_of="storm/single",
            baseline_kind="1 thread on a cold pool",
            note=f"{n * m} sessions attach once the {m} servers are up",
            params={"threads": n, "servers": m, "repeats": len(storms)},
        ),
    ]
