"""Warm attach vs cold spawn: how long until a new thread can list a server's tools.

* warm (pooled): the backend already runs (a keeper thread holds it). Timed: ``BackendPool.acquire`` (a lease) +
  ``ClientSession.initialize`` (answered from the cached handshake) + ``list_tools`` (answered from the cached
  list), through ``mcpshare.session.open_session``.
* cold (direct): the SDK's ``stdio_client`` spawns the server + ``initialize`` + ``list_tools``.

Per server, then for a whole new thread (M = 4 servers: ``ThreadManager.start_thread`` + ``Thread.list_tools`` vs
three concurrent cold spawns). Teardown is not timed but finishes before the next measurement. Cold and warm runs
alternate (one cold, then ``warm_per_cold`` warm), and the server order rotates from one repeat to the next. The
ratio is the median over repeats of (cold spawn / median of the warm attaches that followed it).
"""

from __future__ import annotations

import logging
import time

import anyio

from mcpbench.clients import direct_session
from mcpbench.core import BenchContext, Row, median, paired_ratio, rotate, section, summary
from mcpbench.servers import ServerSpec
from mcpshare.config import McpConfig, StdioServerConfig
from mcpshare.pool import BackendPool
from mcpshare.session import open_session
from mcpshare.threads import ThreadManager, list_all_tools

logger = logging.getLogger("mcpbench.attach")

STEP_TIMEOUT = 60.0
TARGET = 100.0


async def warm_attach(ctx: BenchContext, pool: BackendPool, config: StdioServerConfig) -> float:
    """Seconds for a new lease on a running backend to initialize a session and list the tools."""
    started = time.perf_counter()
    with anyio.fail_after(STEP_TIMEOUT):
        lease = await pool.acquire(config, workspace=ctx.workspace)
        async with lease, open_session(lease) as session:
            tools = await list_all_tools(session)
            elapsed = time.perf_counter() - started
    if not tools:
        raise RuntimeError(f"{config.name}: empty tool list through the pool")
    return elapsed


async def cold_spawn(ctx: BenchContext, spec: ServerSpec, env: dict[str, str]) -> float:
    """Seconds for stdio_client to spawn the server, initialize and list the tools (teardown not timed)."""
    started = time.perf_counter()
    with anyio.fail_after(STEP_TIMEOUT):
        async with direct_session(spec, env, errlog=ctx.errlog, cwd=ctx.workspace) as session:
            tools = await list_all_tools(session)
            elapsed = time.perf_counter() - started
    if not tools:
        raise RuntimeError(f"{spec.name}: empty tool list from a direct session")
    return elapsed


async def warm_thread(ctx: BenchContext, manager: ThreadManager) -> float:
    """Seconds for a new thread on warm backends to list the tools of all its servers."""
    started = time.perf_counter()
    with anyio.fail_after(STEP_TIMEOUT):
        thread = await manager.start_thread(cwd=ctx.workspace)
        tools = await thread.list_tools()
        elapsed = time.perf_counter() - started
        await manager.close_thread(thread.id)
    if len({tool.server for tool in tools}) != len(manager.config.servers):
        raise RuntimeError("a warm thread did not see the tools of every server")
    return elapsed


async def cold_thread(ctx: BenchContext, specs: list[ServerSpec], env: dict[str, str]) -> float:
    """Seconds for a new thread spawning its M servers concurrently until all listed tools."""
    started = time.perf_counter()
    done = anyio.Event()
    ready = 0
    elapsed = 0.0

    async def one(spec: ServerSpec) -> None:
        nonlocal ready, elapsed
        async with direct_session(spec, env, errlog=ctx.errlog, cwd=ctx.workspace) as session:
            await list_all_tools(session)
            ready += 1
            if ready == len(specs):
                elapsed = time.perf_counter() - started
                done.set()
            await done.wait()  # hold it until all are up: a teardown must not overlap a timed start

    with anyio.fail_after(STEP_TIMEOUT):
        async with anyio.create_task_group() as tg:
            for spec in specs:
                tg.start_soon(one, spec)
    return elapsed


@section("attach", "Warm attach vs cold spawn (time to list tools)", order=20, timeout=400.0)
async def attach(ctx: BenchContext) -> list[Row]:
    """Median warm-attach and cold-spawn times per server and per thread; ratio cold/warm."""
    profile = ctx.profile
    specs = ctx.node_servers()
    tracker = ctx.tracker
    pooled_env = tracker.env(tracker.scenario("attach-pooled"))
    direct_env = tracker.env(tracker.scenario("attach-direct"))
    configs = {spec.name: spec.stdio_config(pooled_env) for spec in specs}
    thread_key = f"new thread ({len(specs)} servers)"
    # warm[name][repeat] holds the warm runs that followed cold[name][repeat]: each cold spawn is paired with them.
    warm: dict[str, list[list[float]]] = {name: [] for name in [*configs, thread_key]}
    cold: dict[str, list[float]] = {name: [] for name in [*configs, thread_key]}

    async with BackendPool(idle_grace=60.0) as pool:
        manager = ThreadManager(McpConfig(configs), pool=pool)
        async with manager:
            keeper = await manager.start_thread(cwd=ctx.workspace)
            with anyio.fail_after(STEP_TIMEOUT):
                await keeper.list_tools()  # every backend is up and its tool list cached: the pool is warm
            for repeat in range(profile.cold_repeats):
                for spec in rotate(specs, repeat):
                    cold[spec.name].append(await cold_spawn(ctx, spec, direct_env))
                    warm[spec.name].append(
                        [await warm_attach(ctx, pool, configs[spec.name]) for _ in range(profile.warm_per_cold)]
                    )
                cold[thread_key].append(await cold_thread(ctx, specs, direct_env))
                warm[thread_key].append([await warm_thread(ctx, manager) for _ in range(profile.warm_per_cold)])
                logger.info("attach: repeat %d/%d done", repeat + 1, profile.cold_repeats)
            spawns = pool.spawns

    ctx.detail("pool_spawns", spawns)
    ctx.detail("warm_seconds", {name: summary([v for run in runs for v in run]) for name, runs in warm.items()})
    ctx.detail("cold_seconds", {name: summary(values) for name, values in cold.items()})
    rows = []
    for name, cold_values in cold.items():
        warm_values = [v for run in warm[name] for v in run]
        warm_s, cold_s = median(warm_values), median(cold_values)
        factor = paired_ratio(cold_values, [median(run) or 0.0 for run in warm[name]])
        single = name != thread_key
        rows.append(
            Row(
                "attach",
                f"list tools, new session: {name}" if single else f"list tools, {name}",
                "ms",
                pooled=warm_s * 1000 if warm_s is not None else None,
                baseline=cold_s * 1000 if cold_s is not None else None,
                ratio=factor,
                ratio_of="cold/warm",
                target=f">= {TARGET:g}x",
                ok=factor is not None and factor >= TARGET,
                params={"warm_n": len(warm_values), "cold_n": len(cold_values), "servers": 1 if single else len(specs)},
                note="" if spawns == len(specs) else f"pool spawned {spawns} processes for {len(specs)} servers",
            )
        )
    return rows
