"""Broker + shim (``mcpshare serve`` / ``mcpshare connect``) vs one process per agent.

Separate agent processes share servers through a broker: each agent's MCP config runs the stdio shim
``mcpshare connect NAME -- COMMAND ...`` (what ``mcpshare wrap`` writes) instead of the server; the shim hands its
stdio to the broker, which runs one process per server config. Skipped cleanly while ``mcpshare.broker`` does not
import.

The section starts a broker in the foreground in a private ``MCPSHARE_RUNTIME_DIR``, with its HTTP front on a free
port and a config file naming the M servers (so the user's own configs are never read), marked like every other
process of the run, then measures:

* processes and total RSS/PSS of N agents x M servers through shims (shims + broker + its servers and guardian), N
  being 50 (the largest N of ``--threads`` up to 50), next to the direct (and in-process pooled) figures the
  processes section measured at that N, on servers restarted after the throughput rounds; the RSS, PSS and USS of
  one connected shim (it waits as /bin/sh once it handed its stdio over);
* the same N x M with no shim at all: N x M SDK Streamable HTTP sessions on the broker's HTTP front (what
  ``mcpshare wrap --http`` gives the hosts that speak HTTP), the broker's tree measured while they are open;
* shims waiting as /bin/sh next to shims waiting as the Python interpreter (``MCPSHARE_WAITER=python``, what every
  shim was before), started alternately on the warm broker: their memory, and the time to the first byte relayed;
* time for a new agent to list tools through a shim on a warm broker vs a cold spawn of the server, per server;
* echo throughput on server-everything through a shim vs a direct stdio_client, sequential and 64-way.

The shims run with ``--no-autostart``: a broker that is not there is a failure here, not a fallback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import psutil
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from mcpbench.clients import checked_call, direct_session, run_concurrent, run_sequential
from mcpbench.core import BenchContext, Row, median, paired_ratio, ratio, rotate, section, summary
from mcpbench.sections.attach import cold_spawn
from mcpbench.sections.processes import MB, Connect, Measurement, run_direct
from mcpbench.servers import ServerSpec
from mcpshare import runtime

logger = logging.getLogger("mcpbench.broker")

BROKER_READY_TIMEOUT = 30.0
BROKER_STOP_TIMEOUT = 15.0
SHIM_BUDGET_MB = 15.0
"""Memory per shim process for the up-front memory check (a Python shim before it hands its stdio over)."""
SHIM_PSS_TARGET_MB = 1.0
SHIMS_VS_DIRECT_TARGET = 30.0
HTTP_VS_POOLED_TARGET = 1.2
WAITER_SAMPLE = 20
"""Shims of each waiter in the side-by-side comparison (the issue's test holds 20)."""
SHIM_MATCH = "mcpshare connect"
RUNTIME_VAR = "MCPSHARE_RUNTIME_DIR"
RELAY = Path(__file__).resolve().parent.parent / "relay.py"


def broker_argv(runtime_dir: Path, config: Path) -> list[str]:
    """The broker in the foreground with its HTTP front on a free port; ``config`` names the servers for the HTTP
    clients (shims embed their own command, which the broker takes first)."""
    return [
        sys.executable,
        "-m",
        "mcpshare",
        "serve",
        "--config",
        str(config),
        "--http",
        "0",
        "--idle-grace",
        "60",
        "--log-file",
        str(runtime_dir / "broker.log"),
    ]


def broker_config(specs: list[ServerSpec]) -> dict[str, Any]:
    """The servers as an mcpServers file: the same command, args and env a shim embeds, so the same pool keys."""
    return {"mcpServers": {s.name: {"command": s.argv[0], "args": list(s.argv[1:]), "env": dict(s.env)} for s in specs}}


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


async def start_broker(ctx: BenchContext, runtime_dir: Path, scenario: str, specs: list[ServerSpec]) -> Process:
    """Start the broker (in a session of its own) and wait until its socket accepts connections."""
    config = runtime_dir.parent / "broker.mcp.json"
    config.write_text(json.dumps(broker_config(specs)))
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


AGENTS_N = 50
"""The N of the N agents x M servers scenarios: the issue's reference point (50 agents x 4 servers) when --threads
reaches it, else the largest N of --threads."""


def agents_n(threads: tuple[int, ...]) -> int:
    return max((n for n in threads if n <= AGENTS_N), default=max(threads))


async def fresh_servers(runtime_dir: Path, names: list[str]) -> None:
    """Stop the broker's processes of these servers (``mcpshare restart``): the next client starts them anew."""
    from mcpshare import shim

    paths = runtime.RuntimePaths(str(runtime_dir))
    for name in names:
        answer = await anyio.to_thread.run_sync(
            functools.partial(shim.control, "restart", paths=paths, timeout=30, server=name)
        )
        if answer is None or answer.get("ok") is not True:
            raise RuntimeError(f"the broker did not restart {name!r}: {answer}")


async def http_front(runtime_dir: Path) -> tuple[str, str]:
    """The broker's HTTP front URL (``http://127.0.0.1:PORT/mcp/``) and its bearer token, once it answers."""
    from mcpshare import shim

    paths = runtime.RuntimePaths(str(runtime_dir))
    with anyio.fail_after(BROKER_READY_TIMEOUT):
        while True:
            answer = await anyio.to_thread.run_sync(lambda: shim.control("status", paths=paths, timeout=10))
            if answer is not None and isinstance(answer.get("broker", {}).get("http"), str):
                return answer["broker"]["http"], Path(paths.token).read_text().strip()
            await anyio.sleep(0.05)


def http_connector(front: str, token: str, workspace: Path) -> Connect:
    """Sessions over the broker's HTTP front, in ``workspace`` (``?cwd=``, as ``wrap --http`` writes for a project):
    what a host that speaks Streamable HTTP does, with no process of its own per server."""
    query = f"?cwd={quote(str(workspace), safe='/')}"

    @asynccontextmanager
    async def connect(spec: ServerSpec, env: Mapping[str, str]) -> AsyncIterator[ClientSession]:
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as client,
            streamable_http_client(front + spec.name + query, http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session

    return connect


async def compare_waiters(ctx: BenchContext, shim: ServerSpec, count: int) -> dict[str, dict[str, list[float]]]:
    """``count`` shims waiting as /bin/sh and ``count`` waiting as the interpreter (``MCPSHARE_WAITER=python``), started
    alternately on the warm broker, each holding its session: per waiter, the ms to the first byte of the answer to
    initialize (shim start included), then RSS, PSS and USS in MB once all are connected and waiting."""
    scenario = ctx.tracker.scenario("broker-waiters")
    base = {**os.environ, **shim.env, **ctx.tracker.env(scenario)}
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}
    initialize = runtime.encode_line({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
    waiters = ("sh", "python")
    found: dict[str, dict[str, list[float]]] = {
        w: {"first_byte_ms": [], "rss": [], "pss": [], "uss": []} for w in waiters
    }
    held: dict[str, list[Process]] = {waiter: [] for waiter in waiters}
    shell = os.path.realpath("/bin/sh")
    try:
        with anyio.fail_after(120.0):
            for index in range(count):
                for waiter in rotate(waiters, index):
                    env = {**base, "MCPSHARE_WAITER": waiter}
                    started = time.perf_counter()
                    proc = await anyio.open_process(
                        list(shim.argv), env=env, cwd=ctx.workspace, stderr=subprocess.DEVNULL
                    )
                    held[waiter].append(proc)
                    assert proc.stdin is not None and proc.stdout is not None
                    await proc.stdin.send(initialize)
                    answer = BufferedByteReceiveStream(proc.stdout)
                    first = await answer.receive_exactly(1)
                    found[waiter]["first_byte_ms"].append((time.perf_counter() - started) * 1000)
                    if "result" not in json.loads(first + await answer.receive_until(b"\n", 1 << 20)):
                        raise RuntimeError(f"a shim ({waiter} waiter) got no answer to initialize")
            await anyio.sleep(ctx.profile.settle_seconds)
            for waiter, procs in held.items():
                for proc in procs:
                    info = psutil.Process(proc.pid)
                    if waiter == "sh" and info.exe() != shell:
                        raise RuntimeError(f"shim pid {proc.pid} does not wait as {shell}: {info.exe()}")
                    memory = info.memory_full_info()
                    for key in ("rss", "pss", "uss"):
                        found[waiter][key].append(getattr(memory, key) / MB)
    finally:
        with anyio.CancelScope(shield=True):
            for proc in (proc for procs in held.values() for proc in procs):
                if proc.stdin is not None:
                    await proc.stdin.aclose()  # the client ends its session: the shim exits 0
            with anyio.move_on_after(10):
                for proc in (proc for procs in held.values() for proc in procs):
                    await proc.wait()
            ctx.tracker.reap(scenario)
            for proc in (proc for procs in held.values() for proc in procs):
                await proc.aclose()
    return found


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
    n = agents_n(ctx.profile.threads)
    cold: dict[str, list[float]] = {spec.name: [] for spec in specs}
    warm: dict[str, list[float]] = {spec.name: [] for spec in specs}
    process = await start_broker(ctx, runtime_dir, scenario, specs)
    try:
        # Throughput first, while the machine is quiet: right after the N-agent scenario, the exit of hundreds of
        # processes still weighs on wake-up latency, and the sequential ratios moved with it.
        logger.info("broker: throughput through a shim")
        rates = await shim_throughput(ctx, ctx.servers["everything"], shims[0], process.pid)
        # Thousands of echo calls grew server-everything's heap: the memory scenarios start from fresh servers, as
        # the in-process pool's did (they only list tools).
        await fresh_servers(runtime_dir, [spec.name for spec in specs])
        logger.info("broker: %d agents x %d servers through shims", n, len(specs))
        agents: Measurement = await run_direct(
            ctx, shims, n, process_mb=SHIM_BUDGET_MB * 2, label="shim", also_measure=[scenario]
        )
        logger.info("broker: %d shims waiting as /bin/sh next to %d waiting as Python", WAITER_SAMPLE, WAITER_SAMPLE)
        waiters = await compare_waiters(ctx, shims[0], WAITER_SAMPLE)
        logger.info("broker: %d agents x %d servers over the HTTP front, no shim", n, len(specs))
        front, token = await http_front(runtime_dir)
        http_agents: Measurement = await run_direct(
            ctx,
            specs,
            n,
            process_mb=0,
            label="http",
            also_measure=[scenario],
            connect=http_connector(front, token, ctx.workspace),
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
    ctx.detail("agents_over_http", http_agents.to_json())
    ctx.detail("waiters", {waiter: {key: summary(v) for key, v in found.items()} for waiter, found in waiters.items()})
    ctx.detail("broker_tree_after_run", {"processes": len(broker_procs), "rss_bytes": broker_rss})
    ctx.detail("warm_via_shim_seconds", {name: summary(v) for name, v in warm.items()})
    ctx.detail("cold_spawn_seconds", {name: summary(v) for name, v in cold.items()})
    for kinds, name in (
        (("seq", "conc"), "throughput_calls_per_second"),
        (("p50",), "sequential_latency_p50_ms"),
        (("cpu",), "middle_process_cpu_seconds_per_round"),
    ):
        ctx.detail(name, {key: summary(v) for key, v in rates.items() if key.split(":")[0] in kinds})
    return [*_memory_rows(ctx, n, len(specs), agents, http_agents, waiters), *_rows(ctx, n, agents, cold, warm, rates)]


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


def _pooled_at(ctx: BenchContext, n: int) -> dict[str, Any] | None:
    """The in-process pooled measurement of the processes section at ``n`` threads, if it ran."""
    pooled = ctx.details.get("processes", {}).get("measurements", {}).get(str(n), {}).get("pooled")
    return pooled if pooled and pooled.get("total_rss_bytes") is not None else None


def _mb(value: float | None) -> float | None:
    return value / MB if value is not None else None


def _at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def _memory_rows(
    ctx: BenchContext,
    n: int,
    m: int,
    agents: Measurement,
    http_agents: Measurement,
    waiters: dict[str, dict[str, list[float]]],
) -> list[Row]:
    """Memory of sharing across processes: through shims, with no shim (HTTP), and one shim's waiter."""
    direct, pooled = _direct_at(ctx, n), _pooled_at(ctx, n)
    missing = "" if direct and pooled else "direct/pooled figures: run the processes section too"
    direct_rss = _mb(direct["total_rss_bytes"]) if direct else None
    direct_pss = _mb(direct.get("total_pss_bytes")) if direct else None
    pooled_rss = _mb(pooled["total_rss_bytes"]) if pooled else None
    pooled_pss = _mb(pooled.get("total_pss_bytes")) if pooled else None
    shim_rss, shim_pss = _mb(agents.total_rss), _mb(agents.total_pss)
    http_rss, http_pss = _mb(http_agents.total_rss), _mb(http_agents.total_pss)
    by_kind = agents.usage.by_kind if agents.usage is not None else {}
    shim = by_kind.get("shim", {})
    count = shim.get("processes") or 0
    per_shim = {
        key: shim[f"{key}_bytes"] / count / MB for key in ("rss", "pss", "uss") if count and f"{key}_bytes" in shim
    }
    shims_ratio = ratio(direct_rss, shim_rss)
    http_ratio = ratio(http_rss, pooled_rss)
    params = {"threads": n, "servers": m}
    sh, python = waiters["sh"], waiters["python"]
    return [
        Row(
            "broker",
            f"total RSS, N={n} agents x M={m} through shims (shims + broker + servers)",
            "MB",
            pooled=shim_rss,
            baseline=direct_rss,
            ratio=shims_ratio,
            ratio_of="direct/shims",
            target=f">= {SHIMS_VS_DIRECT_TARGET:g}x",
            ok=_at_least(shims_ratio, SHIMS_VS_DIRECT_TARGET),
            params=params,
            note=agents.skipped or missing,
        ),
        Row(
            "broker",
            f"total PSS, N={n} agents x M={m} through shims",
            "MB",
            pooled=shim_pss,
            baseline=direct_pss,
            ratio=ratio(direct_pss, shim_pss),
            ratio_of="direct/shims",
            params=params,
            note=agents.skipped or missing or "PSS splits shared pages among the processes that map them",
        ),
        Row(
            "broker",
            f"PSS of one connected shim ({count} holding sessions)",
            "MB",
            pooled=per_shim.get("pss"),
            target=f"<= {SHIM_PSS_TARGET_MB:g} MB",
            ok=per_shim["pss"] <= SHIM_PSS_TARGET_MB if "pss" in per_shim else None,
            baseline_kind="",
            params={"shims": count, "rss_mb": per_shim.get("rss"), "uss_mb": per_shim.get("uss")},
            note="waits as /bin/sh once its stdio is handed over; RSS counts the shared libc pages in full",
        ),
        Row(
            "broker",
            f"total RSS, N={n} agents x M={m} over the HTTP front (no shim) vs the in-process pool",
            "MB",
            pooled=http_rss,
            baseline=pooled_rss,
            ratio=http_ratio,
            ratio_of="http/in-process",
            target=f"<= {HTTP_VS_POOLED_TARGET:g}x",
            ok=None if http_ratio is None else http_ratio <= HTTP_VS_POOLED_TARGET,
            baseline_kind="in-process pool",
            params={**params, "direct_mb": direct_rss, "direct/http": ratio(direct_rss, http_rss)},
            note=http_agents.skipped
            or missing
            or "broker + guardian + servers; the in-process pool: guardian + servers",
        ),
        Row(
            "broker",
            f"total PSS, N={n} agents x M={m} over the HTTP front (no shim) vs the in-process pool",
            "MB",
            pooled=http_pss,
            baseline=pooled_pss,
            ratio=ratio(http_pss, pooled_pss),
            ratio_of="http/in-process",
            baseline_kind="in-process pool",
            params={**params, "direct_mb": direct_pss, "direct/http": ratio(direct_pss, http_pss)},
            note=http_agents.skipped or missing,
        ),
        Row(
            "broker",
            f"PSS of one connected shim: waiting as /bin/sh vs as Python ({len(sh['pss'])} each)",
            "MB",
            pooled=median(sh["pss"]),
            baseline=median(python["pss"]),
            ratio=ratio(median(python["pss"]), median(sh["pss"])),
            ratio_of="python/sh",
            baseline_kind="python waiter",
            params={
                "rss_mb": {"sh": median(sh["rss"]), "python": median(python["rss"])},
                "uss_mb": {"sh": median(sh["uss"]), "python": median(python["uss"])},
            },
            note="MCPSHARE_WAITER=python is what every shim was before it exec'd /bin/sh",
        ),
        Row(
            "broker",
            "first byte relayed by a new shim on a warm broker: /bin/sh vs Python waiter",
            "ms",
            pooled=median(sh["first_byte_ms"]),
            baseline=median(python["first_byte_ms"]),
            ratio=ratio(median(sh["first_byte_ms"]), median(python["first_byte_ms"])),
            ratio_of="sh/python",
            baseline_kind="python waiter",
            params={"shims": len(sh["first_byte_ms"])},
            note="shim start to the first byte of the answer to initialize; started alternately",
        ),
    ]


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
    breakdown = ", ".join(f"{kind} {v['processes']}" for kind, v in sorted(by_kind.items()))
    direct_procs = direct["server_processes"] if direct else None
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
