"""Tool-call throughput through the pool vs a direct ClientSession, with the server's raw limit.

For each target server (the SDK test server's ``echo`` and server-everything's ``echo``) three processes of the
same server run side by side for the whole section, each warmed up first:

* direct: a ``ClientSession`` over the SDK's ``stdio_client`` (its own process);
* pooled: ``ClientSession``s from ``mcpshare.session.open_session`` on leases of one ``BackendPool`` backend;
* raw: :class:`~mcpbench.clients.RawClient`, JSON-RPC lines written straight into the pipe (pipelined for the
  concurrent case): what the server itself allows.

Measures: ``seq_calls`` sequential calls; ``conc_calls`` calls with ``conc_width`` in flight from one session; and
(pooled only) the same spread over ``conc_width`` sessions on one backend, as that many threads sharing a server
would. This process's CPU time per call is recorded too: every client and the pool run in it, one variant at a
time, so it isolates the client-side cost from the server and from other load on the machine. Each round runs
every variant once, in an order that rotates from round to round; figures are the medians
over ``rounds`` rounds. Ratios are pooled/direct (calls per second), the median of the per-round ratios.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio

from mcpbench.clients import (
    Call,
    Holder,
    RawClient,
    checked_call,
    direct_session,
    leased_session,
    run_concurrent,
    run_sequential,
)
from mcpbench.core import BenchContext, Row, median, paired_ratio, rotate, section, summary
from mcpbench.servers import ServerSpec
from mcpshare.pool import BackendPool

logger = logging.getLogger("mcpbench.throughput")

TARGETS = ("testserver", "everything")
TARGET_RATIO = 0.9
WARMUP_CALLS = 50
MEASURE_TIMEOUT = 120.0


async def measure_target(ctx: BenchContext, spec: ServerSpec) -> tuple[list[Row], dict[str, Any]]:
    """All throughput figures for one server."""
    profile = ctx.profile
    tracker = ctx.tracker
    tool, arguments = spec.echo_tool, dict(spec.echo_args)
    width = profile.conc_width
    rates: dict[str, list[float]] = {
        key: []
        for key in ("seq:direct", "seq:pooled", "seq:raw", "conc:direct", "conc:pooled", "conc:pooled-n", "conc:raw")
    }
    cpu_us: dict[str, list[float]] = {key: [] for key in rates}
    """This process's CPU time per call (all clients and the pool run here; only one variant runs at a time)."""
    latencies: dict[str, list[float]] = {"direct": [], "pooled": []}

    # One bound for the whole target; each client lives in a task of its own (see hold()), as a host holds one
    # connection per task: contexts nested in one task would make every anyio checkpoint walk a deep scope chain.
    with anyio.fail_after(MEASURE_TIMEOUT * (2 + 2 * profile.rounds)):
        async with Holder() as clients, Holder() as pooled_sessions:
            direct = await clients.hold(
                direct_session(spec, tracker.env(tracker.scenario(f"tp-direct-{spec.name}")), errlog=ctx.errlog)
            )
            pool = await clients.hold(BackendPool(idle_grace=60.0))
            config = spec.stdio_config(tracker.env(tracker.scenario(f"tp-pooled-{spec.name}")))
            sessions = [await pooled_sessions.hold(leased_session(pool, config, ctx.workspace)) for _ in range(width)]
            raw = await clients.hold(RawClient.start(spec, tracker.env(tracker.scenario(f"tp-raw-{spec.name}"))))
            with anyio.fail_after(MEASURE_TIMEOUT):
                await raw.initialize()
            direct_call = checked_call(direct, tool, arguments)
            pooled_call = checked_call(sessions[0], tool, arguments)
            pooled_calls = [checked_call(session, tool, arguments) for session in sessions]

            async def seq_direct() -> float:
                elapsed, lat = await run_sequential(direct_call, profile.seq_calls)
                latencies["direct"].extend(lat)
                return elapsed

            async def seq_pooled() -> float:
                elapsed, lat = await run_sequential(pooled_call, profile.seq_calls)
                latencies["pooled"].extend(lat)
                return elapsed

            async def seq_raw() -> float:
                return await raw.sequential(tool, arguments, profile.seq_calls)

            async def conc(calls: list[Call]) -> float:
                return await run_concurrent(calls, profile.conc_calls, width)

            async def conc_raw() -> float:
                return await raw.pipelined(tool, arguments, profile.conc_calls, width)

            # Warm-up: first calls (the SDK lists tools before its first call of a tool), JIT, allocator.
            with anyio.fail_after(MEASURE_TIMEOUT):
                for call in (direct_call, *pooled_calls):
                    await run_sequential(call, 2)
                await run_sequential(direct_call, WARMUP_CALLS)
                await run_sequential(pooled_call, WARMUP_CALLS)
                await raw.sequential(tool, arguments, WARMUP_CALLS)
                await run_concurrent([direct_call], WARMUP_CALLS * 2, width)
                await run_concurrent([pooled_call], WARMUP_CALLS * 2, width)
                await run_concurrent(pooled_calls, WARMUP_CALLS * 2, width)
                await raw.pipelined(tool, arguments, WARMUP_CALLS * 2, width)

            sequential = [("seq:direct", seq_direct), ("seq:pooled", seq_pooled), ("seq:raw", seq_raw)]
            concurrent = [
                ("conc:direct", lambda: conc([direct_call])),
                ("conc:pooled", lambda: conc([pooled_call])),
                ("conc:pooled-n", lambda: conc(pooled_calls)),
                ("conc:raw", conc_raw),
            ]
            for round_index in range(profile.rounds):
                for calls, variants in ((profile.seq_calls, sequential), (profile.conc_calls, concurrent)):
                    for key, run in rotate(variants, round_index):
                        with anyio.fail_after(MEASURE_TIMEOUT):
                            cpu_before = time.process_time()
                            rates[key].append(calls / await run())
                            cpu_us[key].append((time.process_time() - cpu_before) / calls * 1e6)
                logger.info(
                    "throughput %s round %d: %s",
                    spec.name,
                    round_index + 1,
                    ", ".join(f"{k}={v[-1]:.0f}/s" for k, v in rates.items()),
                )

    med = {key: median(values) for key, values in rates.items()}
    name = f"{spec.echo_tool} @ {spec.name}"
    common = {"tool": spec.echo_tool, "server": spec.name, "rounds": profile.rounds}

    def row(measure: str, pooled: str, direct: str, raw: str, params: dict[str, Any], note: str = "") -> Row:
        factor = paired_ratio(rates[pooled], rates[direct])
        return Row(
            "throughput",
            f"{measure}, {name}",
            "calls/s",
            pooled=med[pooled],
            baseline=med[direct],
            raw=med[raw],
            ratio=factor,
            ratio_of="pooled/direct",
            target=f">= {TARGET_RATIO}x",
            ok=factor is not None and factor >= TARGET_RATIO,
            params={**common, **params},
            note=note,
        )

    rows = [
        row("sequential calls/s", "seq:pooled", "seq:direct", "seq:raw", {"calls": profile.seq_calls}),
        row(
            f"{width}-way concurrent calls/s",
            "conc:pooled",
            "conc:direct",
            "conc:raw",
            {"calls": profile.conc_calls, "width": width, "sessions": 1},
        ),
        row(
            f"{width} threads x 1 call in flight",
            "conc:pooled-n",
            "conc:direct",
            "conc:raw",
            {"calls": profile.conc_calls, "width": width, "sessions": width},
            note=f"pooled: {width} sessions on 1 process; direct: 1 session, {width}-way",
        ),
        Row(
            "throughput",
            f"host CPU per call, {width}-way, {name}",
            "us",
            pooled=median(cpu_us["conc:pooled"]),
            baseline=median(cpu_us["conc:direct"]),
            raw=median(cpu_us["conc:raw"]),
            ratio=paired_ratio(cpu_us["conc:pooled"], cpu_us["conc:direct"]),
            ratio_of="pooled/direct",
            params={**common, "calls": profile.conc_calls, "width": width},
            note="CPU time of this process per call: steadier than calls/s on a shared machine",
        ),
    ]
    details = {
        "calls_per_second": {key: summary(values) for key, values in rates.items()},
        "host_cpu_us_per_call": {key: summary(values) for key, values in cpu_us.items()},
        "sequential_latency_ms": {
            key: {k: (v * 1000 if v is not None else None) for k, v in summary(values).items() if k != "n"}
            for key, values in latencies.items()
        },
    }
    return rows, details


@section("throughput", "Tool-call throughput: pooled vs direct vs raw pipe", order=30, timeout=500.0)
async def throughput(ctx: BenchContext) -> list[Row]:
    """Throughput rows for the SDK test server and server-everything."""
    rows: list[Row] = []
    for name in TARGETS:
        target_rows, details = await measure_target(ctx, ctx.servers[name])
        rows.extend(target_rows)
        ctx.detail(name, details)
    return rows
