"""Broker + shim (``mcpshare serve`` / ``mcpshare connect``) vs one process per agent.

Separate agent processes share servers through a broker: each agent's MCP config runs the stdio shim
``mcpshare connect NAME -- COMMAND ...`` (what ``mcpshare wrap`` writes) instead of the server; the shim hands its
stdio to the broker, which runs one process per server config. Skipped cleanly while ``mcpshare.broker`` does not
import.

The section starts a broker in the foreground in a private ``MCPSHARE_RUNTIME_DIR`` (with an empty config file, so
the user's own configs are never read), marked like every other process of the run, then measures:

* processes and total RSS of N agents x M servers through shims (shims + broker + its servers and guardian), N
  being the largest of ``--threads``, next to the direct figure the processes section measured at that N;
* the RSS of one shim (the design's budget: ~15 MB, a CPython process importing only the standard library);
* time for a new agent to list tools through a shim on a warm broker vs a cold spawn of the server, per server;
* echo throughput on server-everything through a shim vs a direct stdio_client, sequential and 64-way.

The shims run with ``--no-autostart``: a broker that is not there is a failure here, not a fallback.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import psutil
from anyio.abc import Process
from mcp import ClientSession

from mcpbench.clients import checked_call, direct_session, run_concurrent, run_sequential
from mcpbench.core import BenchContext, Row, median, paired_ratio, ratio, rotate, section, summary
from mcpbench.sections.attach import cold_spawn
from mcpbench.sections.processes import MB, Measurement, run_direct
from mcpbench.servers import ServerSpec

logger = logging.getLogger("mcpbench.broker")

BROKER_READY_TIMEOUT = 30.0
BROKER_STOP_TIMEOUT = 15.0
SHIM_BUDGET_MB = 15.0
SHIM_MATCH = "mcpshare connect"
RUNTIME_VAR = "MCPSHARE_RUNTIME_DIR"
RELAY = Path(__file__).resolve().parent.parent / "relay.py"


def broker_argv(runtime_dir: Path, config: Path) -> list[str]:
    """The broker in the foreground, serving only what shims embed (``config`` is an empty server list)."""
    return [
        sys.executable,
        "-m",
        "mcpshare",
        "serve",
        "--config",
        str(config),
        "--idle-grace",
        "60",
        "--log-file",
        str(runtime_dir / "broker.log"),
    ]


def shim_spec(server: ServerSpec, runtime_dir: Path) -> ServerSpec:
    """What an agent runs instead of ``server``: the shim with the server's command embedded after ``--``.

    ``--env-keys`` names the server's own variables (their values are part of the pool key); the benchmark's
    marker variables are not among them, so every shim of one server reaches the same backend.
    """
    argv = [sys.executable, "-m", "mcpshare", "connect", server.name, "--no-autostart"]
    if server.env:
        argv += ["--env-keys", ",".join(sorted(server.env))]
    return ServerSpec(
        name=server.name,
        argv=(*argv, "--", *server.argv),
        env={**server.env, RUNTIME_VAR: str(runtime_dir)},
        match=SHIM_MATCH,
        echo_tool=server.echo_tool,
        echo_args=server.echo_args,
    )


async def start_broker(ctx: BenchContext, runtime_dir: Path, scenario: str) -> Process:
    """Start the broker (in a session of its own) and wait until its socket accepts connections."""
    config = runtime_dir.parent / "broker-empty.mcp.json"
    config.write_text(json.dumps({"mcpServers": {}}))
    env = {**os.environ, **ctx.tracker.env(scenario), RUNTIME_VAR: str(runtime_dir)}
    process = await anyio.open_process(
        broker_argv(runtime_dir, config),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    socket_path = runtime_dir / "broker.sock"
    with anyio.fail_after(BROKER_READY_TIMEOUT):
        while not socket_path.exists():
            if process.returncode is not None:
                tail = _log_tail(runtime_dir)
                raise RuntimeError(f"the broker exited with code {process.returncode} before listening: {tail}")
            await anyio.sleep(0.05)
    return process


async def stop_broker(ctx: BenchContext, process: Process, scenario: str) -> None:
    """SIGTERM (the broker stops its servers and removes its socket), bounded; then reap what is left."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(BROKER_STOP_TIMEOUT):
                await process.wait()
        left = ctx.tracker.reap(scenario)
        if left:
            logger.warning("broker: killed %d processes left after the broker stopped: %s", len(left), left)
        await process.aclose()


def _log_tail(runtime_dir: Path, lines: int = 5) -> str:
    try:
        return " | ".join((runtime_dir / "broker.log").read_text().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def relay_spec(server: ServerSpec) -> ServerSpec:
    """``server`` behind a bare byte relay process (the floor of any design with a process in the middle)."""
    return ServerSpec(
        name=server.name,
        argv=(sys.executable, str(RELAY), *server.argv),
        env=server.env,
        match=RELAY.name,
        echo_tool=server.echo_tool,
        echo_args=server.echo_args,
    )


def _relay_process() -> psutil.Process | None:
    """The bare relay this bench process started (a child, found by its script path), or None."""
    for child in psutil.Process().children(recursive=True):
        try:
            if str(RELAY) in child.cmdline():
                return child
        except psutil.Error:
            continue
    return None


def _cpu_seconds(proc: psutil.Process | None) -> float | None:
    if proc is None:
        return None
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


async def shim_throughput(
    ctx: BenchContext, spec: ServerSpec, shim: ServerSpec, broker_pid: int
) -> dict[str, list[float]]:
    """Echo calls through a shim, through a bare relay and direct: interleaved rounds, all sessions open.

    Per round and variant: sequential and concurrent calls/s (``seq:*``, ``conc:*``), the median per-call latency
    of the sequential run in ms (``p50:*``), and for shim and relay the CPU seconds the process in the middle (the
    broker, the relay) spent on the sequential run (``cpu:*``), read from the OS.
    """
    profile = ctx.profile
    tracker = ctx.tracker
    variants = ("direct", "shim", "relay")
    rates: dict[str, list[float]] = {f"{kind}:{v}": [] for kind in ("seq", "conc", "p50") for v in variants} | {
        "cpu:shim": [],
        "cpu:relay": [],
    }

    def session(server: ServerSpec, variant: str) -> AbstractAsyncContextManager[ClientSession]:
        env = tracker.env(tracker.scenario(f"broker-tp-{variant}"))
        return direct_session(server, env, errlog=ctx.errlog, cwd=ctx.workspace)

    async with (
        session(spec, "direct") as direct,
        session(shim, "shim") as through_shim,
        session(relay_spec(spec), "relay") as through_relay,
    ):
        calls = {
            "direct": checked_call(direct, spec.echo_tool, spec.echo_args),
            "shim": checked_call(through_shim, spec.echo_tool, spec.echo_args),
            "relay": checked_call(through_relay, spec.echo_tool, spec.echo_args),
        }
        middle = {"shim": psutil.Process(broker_pid), "relay": _relay_process(), "direct": None}
        with anyio.fail_after(120.0):
            for call in calls.values():
                await run_sequential(call, 50)
                await run_concurrent([call], 100, profile.conc_width)
        for round_index in range(profile.rounds):
            for variant in rotate(variants, round_index):
                with anyio.fail_after(120.0):
                    cpu_before = _cpu_seconds(middle[variant])
                    elapsed, latencies = await run_sequential(calls[variant], profile.seq_calls)
                    cpu_after = _cpu_seconds(middle[variant])
                    rates[f"seq:{variant}"].append(profile.seq_calls / elapsed)
                    rates[f"p50:{variant}"].append(median(latencies) * 1000)  # type: ignore[operator]
                    if cpu_before is not None and cpu_after is not None:
                        rates[f"cpu:{variant}"].append(cpu_after - cpu_before)
                    elapsed = await run_concurrent([calls[variant]], profile.conc_calls, profile.conc_width)
                    rates[f"conc:{variant}"].append(profile.conc_calls / elapsed)
    return rates


@section(
    "broker",
    "Broker + shim (mcpshare serve / connect) vs one process per agent",
    order=50,
    requires=("mcpshare.broker", "mcpshare.shim"),
    timeout=500.0,
)
async def broker(ctx: BenchContext) -> list[Row]:
    """Processes, RSS, warm attach and throughput through the broker's shim, next to the direct baseline."""
    runtime_dir = ctx.workspace.parent / "rt"  # short: the socket path must fit in 107 bytes
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    specs = ctx.node_servers()
    shims = [shim_spec(spec, runtime_dir) for spec in specs]
    tracker = ctx.tracker
    scenario = tracker.scenario("broker")
    n = max(ctx.profile.threads)
    cold: dict[str, list[float]] = {spec.name: [] for spec in specs}
    warm: dict[str, list[float]] = {spec.name: [] for spec in specs}
    process = await start_broker(ctx, runtime_dir, scenario)
    try:
        # Throughput first, while the machine is quiet: right after the N-agent scenario, the exit of hundreds of
        # processes still weighs on wake-up latency, and the sequential ratios moved with it.
        logger.info("broker: throughput through a shim")
        rates = await shim_throughput(ctx, ctx.servers["everything"], shims[0], process.pid)
        logger.info("broker: %d agents x %d servers through shims", n, len(specs))
        agents: Measurement = await run_direct(
            ctx, shims, n, process_mb=SHIM_BUDGET_MB * 2, label="shim", also_measure=[scenario]
        )
        warm_env = tracker.env(tracker.scenario("broker-warm"))
        cold_env = tracker.env(tracker.scenario("broker-cold"))
        for repeat in range(ctx.profile.cold_repeats):
            for spec, shim in rotate(list(zip(specs, shims, strict=True)), repeat):
                cold[spec.name].append(await cold_spawn(ctx, spec, cold_env))
                warm[spec.name].append(await cold_spawn(ctx, shim, warm_env))
        broker_procs = await tracker.afind(scenario)
        broker_rss = sum(_rss(proc) for proc in broker_procs)
    finally:
        await stop_broker(ctx, process, scenario)

    ctx.detail("threads", n)
    ctx.detail("agents", agents.to_json())
    ctx.detail("broker_tree_after_run", {"processes": len(broker_procs), "rss_bytes": broker_rss})
    ctx.detail("warm_via_shim_seconds", {name: summary(v) for name, v in warm.items()})
    ctx.detail("cold_spawn_seconds", {name: summary(v) for name, v in cold.items()})
    for kinds, name in (
        (("seq", "conc"), "throughput_calls_per_second"),
        (("p50",), "sequential_latency_p50_ms"),
        (("cpu",), "middle_process_cpu_seconds_per_round"),
    ):
        ctx.detail(name, {key: summary(v) for key, v in rates.items() if key.split(":")[0] in kinds})
    return _rows(ctx, n, agents, cold, warm, rates)


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def _direct_at(ctx: BenchContext, n: int) -> dict[str, Any] | None:
    """The direct measurement of the processes section at ``n`` threads, if it ran and was not skipped."""
    measurements = ctx.details.get("processes", {}).get("measurements", {})
    direct = measurements.get(str(n), {}).get("direct")
    return direct if direct and direct.get("server_processes") is not None else None


def _rows(
    ctx: BenchContext,
    n: int,
    agents: Measurement,
    cold: dict[str, list[float]],
    warm: dict[str, list[float]],
    rates: dict[str, list[float]],
) -> list[Row]:
    m = len(cold)
    direct = _direct_at(ctx, n)
    no_direct = "" if direct else "direct figure: run the processes section too"
    by_kind = agents.usage.by_kind if agents.usage is not None else {}
    shim = by_kind.get("shim", {"processes": 0, "rss_bytes": 0})
    shim_mb = shim["rss_bytes"] / shim["processes"] / MB if shim["processes"] else None
    breakdown = ", ".join(f"{kind} {v['processes']}" for kind, v in sorted(by_kind.items()))
    direct_procs = direct["server_processes"] if direct else None
    direct_rss = direct["total_rss_bytes"] / MB if direct else None
    total_rss = agents.total_rss / MB if agents.total_rss is not None else None
    servers = sum(v["processes"] for kind, v in by_kind.items() if kind in cold)
    rows = [
        Row(
            "broker",
            f"server processes behind N={n} agents x M={m} (shims)",
            "procs",
            pooled=servers if agents.usage is not None else None,
            baseline=direct_procs,
            ratio=ratio(direct_procs, servers),
            ratio_of="direct/shims",
            target=f"= {m}",
            ok=servers == m if agents.usage is not None else None,
            params={"threads": n, "servers": m},
            note=agents.skipped or no_direct,
        ),
        Row(
            "broker",
            f"all processes, N={n} agents x M={m} (shims + broker + servers)",
            "procs",
            pooled=agents.server_processes,
            baseline=direct_procs,
            ratio=ratio(direct_procs, agents.server_processes),
            ratio_of="direct/shims",
            params={"threads": n, "servers": m, "by_kind": by_kind},
            note=agents.skipped or breakdown,
        ),
        Row(
            "broker",
            f"total RSS via shims, N={n} agents x M={m}",
            "MB",
            pooled=total_rss,
            baseline=direct_rss,
            ratio=ratio(direct_rss, total_rss),
            ratio_of="direct/shims",
            params={"threads": n, "servers": m},
            note=agents.skipped or no_direct,
        ),
        Row(
            "broker",
            "RSS of one shim process",
            "MB",
            pooled=shim_mb,
            target=f"<= {SHIM_BUDGET_MB:g} MB",
            ok=shim_mb is not None and shim_mb <= SHIM_BUDGET_MB,
            baseline_kind="",
            params={"shims": shim["processes"]},
        ),
    ]
    for name in cold:
        warm_s, cold_s = median(warm[name]), median(cold[name])
        rows.append(
            Row(
                "broker",
                f"list tools, new agent via shim (warm broker): {name}",
                "ms",
                pooled=warm_s * 1000 if warm_s is not None else None,
                baseline=cold_s * 1000 if cold_s is not None else None,
                ratio=ratio(cold_s, warm_s),
                ratio_of="cold/warm",
                params={"repeats": len(warm[name])},
                note="includes starting the shim (a Python process)",
            )
        )
    for kind, label in (("seq", "sequential"), ("conc", f"{ctx.profile.conc_width}-way concurrent")):
        for via, against, note in (
            ("shim", "direct", None),
            ("relay", "direct", "a bare byte relay process between client and server: the floor of any broker"),
            ("shim", "relay", "what the broker's own work costs on top of that floor"),
        ):
            rows.append(
                Row(
                    "broker",
                    f"{label} calls/s via {via} vs {against}, echo @ everything",
                    "calls/s",
                    pooled=median(rates[f"{kind}:{via}"]),
                    baseline=median(rates[f"{kind}:{against}"]),
                    ratio=paired_ratio(rates[f"{kind}:{via}"], rates[f"{kind}:{against}"]),
                    ratio_of=f"{via}/{against}",
                    params={"rounds": len(rates[f"{kind}:{via}"])},
                    note=note,
                )
            )
        if kind != "seq":
            continue
        for via, note in (
            ("shim", "the issue's target: a call through shim + broker within 1.3x of a direct call"),
            ("relay", "a bare byte relay process between client and server: the floor of any broker"),
        ):
            rows.append(
                Row(
                    "broker",
                    f"sequential call latency (p50) via {via} vs direct, echo @ everything",
                    "ms",
                    pooled=median(rates[f"p50:{via}"]),
                    baseline=median(rates["p50:direct"]),
                    ratio=paired_ratio(rates[f"p50:{via}"], rates["p50:direct"]),
                    ratio_of=f"{via}/direct",
                    target="<= 1.3x" if via == "shim" else "",
                    ok=_within(paired_ratio(rates[f"p50:{via}"], rates["p50:direct"]), 1.3) if via == "shim" else None,
                    params={"rounds": len(rates[f"p50:{via}"])},
                    note=note,
                )
            )
        # The OS counts CPU time in clock ticks (10 ms): one round's figure is coarse, the sum over rounds is not.
        broker_us = _per_call_us(rates["cpu:shim"], ctx.profile.seq_calls)
        relay_us = _per_call_us(rates["cpu:relay"], ctx.profile.seq_calls)
        rows.append(
            Row(
                "broker",
                "CPU per sequential call of the process in the middle: broker vs bare relay",
                "us",
                pooled=broker_us,
                baseline=relay_us,
                ratio=ratio(broker_us, relay_us),
                ratio_of="broker/relay",
                baseline_kind="relay",
                params={"rounds": len(rates["cpu:shim"]), "calls_per_round": ctx.profile.seq_calls},
                note="user + system CPU of the broker (of the relay) over all rounds, read from the OS",
            )
        )
    return rows


def _per_call_us(cpu_seconds: list[float], calls_per_round: int) -> float | None:
    return sum(cpu_seconds) / (len(cpu_seconds) * calls_per_round) * 1e6 if cpu_seconds else None


def _within(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit
