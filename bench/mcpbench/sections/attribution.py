"""Exact attribution under concurrency: what it costs when 8 threads call, at once, a tool that asks its client.

A shared process of a handshake-era server that puts no link on its requests (server-everything) cannot say which
call a sampling request belongs to, so the router makes the owner certain: a tool that has asked once is *learned*
and its calls run one at a time per process (the gate), while other calls flow. That is exact, and it serialises
the asking calls. Three ways of serving the same 8 threads side by side, each thread with its own sampling
callback that answers at once, each thread calling server-everything's ``trigger-sampling-request`` in a loop:

* ``gated``: the default config, one shared process; one call of the tool alone first, so the gate has learned it;
* ``lanes``: the same with ``lanes = 4``: a call that would wait at the gate goes to an idle extra lane (another
  process of the same key) where it runs alone;
* ``thread``: ``share = "thread"``, one process per thread: no sharing, so nothing to attribute (the ceiling).

And on the SDK test server (tests/servers/testserver.py), whose ``ask_resolved`` elicits through a resolver and,
in the handshake era, hands back the traceparent the router stamps on each call, so its asks are *linked* and need
no gate (no call before, either): ``linked`` (one shared process) against its own ``share = "thread"`` ceiling.

Each variant is a ``ThreadManager`` of its own, all alive for the whole section; the idle grace outlasts it, so
the extra lanes started in the warm-up serve every round. A round runs every variant once, in an order that
rotates from round to round; in each, the 8 threads each make ``ask_calls`` calls one after the other. Then the
same again with callbacks that answer after :data:`ANSWER_DELAY` (``ask_slow_calls`` calls each): with instant
answers this one host process, running every client and the pool, is the bottleneck of every variant, and the
gate's cost (waiting for another thread's answer) shows only once an answer takes time, as a model's or a
person's does. Figures: calls/s of both kinds of round and the median call latency of the instant one (medians
over rounds; ratios are medians of the per-round ratios), the server processes of each variant counted through
psutil after each run (the most seen), and, over every call made
(warm-up included), the asks that reached another thread's callback or came back in another thread's call
(misrouted) and the calls that got an error instead of their answer (declined, or any other failure). Every call
and every question carries a tag unique to it, so each answer is checked against the call that asked. Nothing is
asserted here: the rows record it, with their targets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import mcp_types as types
import psutil

from mcpbench.clients import Holder
from mcpbench.core import BenchContext, Profile, Row, median, paired_ratio, rotate, section, summary
from mcpshare.config import McpConfig
from mcpshare.threads import Thread, ThreadManager

logger = logging.getLogger("mcpbench.attribution")

THREADS = 8
LANES = 4
ANSWER_DELAY = 0.05
"""The callbacks' answer time in the second kind of round: a stand-in for a model or a person, who take longer."""
IDLE_GRACE = 600.0
"""Longer than the section: the extra lanes started in the warm-up stay up for every round."""
ROUND_TIMEOUT = 120.0
SETUP_TIMEOUT = 120.0
ERRORS_KEPT = 5
CEILING = 'share = "thread"'

Asks = Literal["sampling", "elicitation"]


@dataclass(frozen=True)
class VariantSpec:
    """One way of serving the 8 threads: which server, which tool, which config fields."""

    key: str
    label: str
    server: str
    tool: str
    asks: Asks
    fields: dict[str, Any] = field(default_factory=dict)
    learn_first: bool = False
    """One call of the tool alone before anything else, so the gate has learned that it asks."""


SAMPLE_TOOL = "trigger-sampling-request"
ELICIT_TOOL = "ask_resolved"
VARIANTS = (
    VariantSpec("gated", "gated", "everything", SAMPLE_TOOL, "sampling", learn_first=True),
    VariantSpec("lanes", f"lanes = {LANES}", "everything", SAMPLE_TOOL, "sampling", {"lanes": LANES}, True),
    VariantSpec("thread", 'share = "thread"', "everything", SAMPLE_TOOL, "sampling", {"share": "thread"}),
    VariantSpec("linked", "linked (traceparent)", "testserver", ELICIT_TOOL, "elicitation"),
    VariantSpec("linked-thread", 'share = "thread"', "testserver", ELICIT_TOOL, "elicitation", {"share": "thread"}),
)


@dataclass
class Variant:
    """A variant while it runs: its manager and threads, and everything measured on it."""

    spec: VariantSpec
    scenario: str
    manager: ThreadManager
    threads: list[Thread] = field(default_factory=list)
    qualified: str = ""
    in_flight: list[str | None] = field(default_factory=lambda: [None] * THREADS)
    """The tag of each thread's call in flight: what its callback may be asked about, and nothing else."""
    answer_delay: float = 0.0
    """How long the callbacks take to answer (0 for the instant rounds, :data:`ANSWER_DELAY` for the others)."""
    rates: list[float] = field(default_factory=list)
    slow_rates: list[float] = field(default_factory=list)
    """Calls/s of the rounds whose callbacks answer after :data:`ANSWER_DELAY`."""
    round_latency: list[float] = field(default_factory=list)
    """The median call latency of each round, in seconds."""
    latencies: list[float] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    calls: int = 0
    asks: int = 0
    misdelivered: int = 0
    """Asks that reached the callback of a thread whose call in flight was not the one that asked."""
    foreign: int = 0
    """Calls whose result did not carry their own answer (someone else's, or none)."""
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    pool: dict[str, Any] = field(default_factory=dict)
    """The pool's own counters, read before the manager closes (see :meth:`pool_counters`)."""

    @property
    def misrouted(self) -> int:
        return self.misdelivered + self.foreign

    def answer(self, index: int, asked: str) -> str:
        """What thread ``index``'s callback answers to a question whose text is ``asked``: its own call's tag."""
        self.asks += 1
        own = self.in_flight[index]
        if own is None or not asked.endswith(own):
            self.misdelivered += 1
        return own or "[no call in flight]"

    def arguments(self, tag: str) -> dict[str, Any]:
        if self.spec.asks == "sampling":
            return {"prompt": tag}
        return {"question": tag}

    def check(self, result: types.CallToolResult, tag: str) -> None:
        text = "".join(part.text for part in result.content if isinstance(part, types.TextContent))
        if result.is_error:
            self.fail(f"tool error: {text[:200]}")
            return
        if self.spec.asks == "sampling":
            own = f'"text": "{tag}"' in text  # the sampling result, as server-everything formats it
        else:
            own = text == f"accept:{tag}"
        if not own:
            self.foreign += 1
            if len(self.errors) < ERRORS_KEPT:
                self.errors.append(f"{tag} got: {text[:200]}")

    def fail(self, reason: str) -> None:
        self.failed += 1
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(reason)

    def pool_counters(self) -> dict[str, Any]:
        """What the pool's own bookkeeping says (for the details; the rows count from the clients and the OS)."""
        backends = [info for info in self.manager.snapshot().backends if info.server == self.spec.server]
        return {
            "asks_declined": sum(info.asks_declined for info in backends),
            "asks_linked": sum(info.asks_linked for info in backends),
            "lanes": sorted(info.lane for info in backends),
            "protocol_versions": sorted({str(info.protocol_version) for info in backends}),
        }


def handlers(variant: Variant, index: int) -> dict[str, Any]:
    """Thread ``index``'s callback: it answers with the tag of its own call in flight, at once or after the
    variant's ``answer_delay``."""
    if variant.spec.asks == "sampling":

        async def sample(server: str, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
            content = params.messages[0].content if params.messages else None
            asked = content.text if isinstance(content, types.TextContent) else ""
            text = variant.answer(index, asked)
            if variant.answer_delay:
                await anyio.sleep(variant.answer_delay)
            return types.CreateMessageResult(
                role="assistant", content=types.TextContent(type="text", text=text), model="mcpbench"
            )

        return {"sampling": sample}

    async def elicit(server: str, params: types.ElicitRequestParams) -> types.ElicitResult:
        text = variant.answer(index, params.message)
        if variant.answer_delay:
            await anyio.sleep(variant.answer_delay)
        return types.ElicitResult(action="accept", content={"answer": text})

    return {"elicitation": elicit}


async def start_variant(ctx: BenchContext, holder: Holder, spec: VariantSpec) -> Variant:
    """The variant's ThreadManager (held open by ``holder``) with its 8 threads connected."""
    scenario = ctx.tracker.scenario(f"attribution-{spec.key}")
    config = ctx.servers[spec.server].stdio_config(ctx.tracker.env(scenario), **spec.fields)
    manager = await holder.hold(ThreadManager(McpConfig({spec.server: config}), idle_grace=IDLE_GRACE))
    variant = Variant(spec, scenario, manager)
    for index in range(THREADS):
        variant.threads.append(await manager.start_thread(cwd=ctx.workspace, **handlers(variant, index)))
    tools = await variant.threads[0].list_tools()
    names = [tool.name for tool in tools if tool.server == spec.server and tool.tool.name == spec.tool]
    if not names:
        raise RuntimeError(f"{spec.server} offers no {spec.tool!r} tool (does the pool declare {spec.asks}?)")
    variant.qualified = names[0]
    return variant


async def run_calls(variant: Variant, label: str, indices: Sequence[int], per_thread: int) -> tuple[float, list[float]]:
    """Threads ``indices`` at once, each making ``per_thread`` calls one after the other: (seconds, latencies)."""
    latencies: list[float] = []

    async def worker(index: int) -> None:
        thread = variant.threads[index]
        for call in range(per_thread):
            tag = f"[{variant.spec.key} {label} t{index} c{call}]"
            variant.in_flight[index] = tag
            variant.calls += 1
            before = time.perf_counter()
            try:
                result = await thread.call_tool(variant.qualified, variant.arguments(tag))
            except Exception as exc:  # an ask declined, or any other error: recorded, and the round goes on
                variant.fail(f"{type(exc).__name__}: {str(exc)[:200]}")
            else:
                variant.check(result, tag)
            finally:
                variant.in_flight[index] = None
            latencies.append(time.perf_counter() - before)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in indices:
            tg.start_soon(worker, index)
    return time.perf_counter() - started, latencies


async def count_processes(ctx: BenchContext, variant: Variant) -> int:
    """The variant's server processes alive now, through psutil (the environment marker of its scenario)."""
    alive = 0
    for proc in await ctx.tracker.afind(variant.scenario):
        try:
            kind = ctx.classify(proc.cmdline())
        except psutil.Error:
            continue
        if kind == variant.spec.server:
            alive += 1
            variant.pids.add(proc.pid)
    return alive


def variant_details(variant: Variant) -> dict[str, Any]:
    return {
        "label": variant.spec.label,
        "server": variant.spec.server,
        "tool": variant.spec.tool,
        "fields": variant.spec.fields,
        "calls_per_second": summary(variant.rates),
        "calls_per_second_answer_delayed": summary(variant.slow_rates),
        "latency_ms": {
            key: (value * 1000 if value is not None and key != "n" else value)
            for key, value in summary(variant.latencies).items()
        },
        "server_processes_per_round": variant.processes,
        "distinct_server_pids": len(variant.pids),
        "calls": variant.calls,
        "asks": variant.asks,
        "misdelivered": variant.misdelivered,
        "foreign_results": variant.foreign,
        "failed": variant.failed,
        "errors": variant.errors,
        "pool": variant.pool,
    }


def throughput_row(
    variant: Variant, ceiling: Variant, gated: Variant, measure: str, params: dict[str, Any], *, delayed: bool
) -> Row:
    """Calls/s of ``variant`` against its ceiling (and, for the lanes, against the gated variant too)."""
    rates, ceiling_rates = (variant.slow_rates, ceiling.slow_rates) if delayed else (variant.rates, ceiling.rates)
    params = {**params, **variant.spec.fields}
    note = ""
    if variant.spec.key == "lanes":
        versus_gated = paired_ratio(rates, gated.slow_rates if delayed else gated.rates)
        params["lanes/gated"] = versus_gated
        note = f"lanes/gated = {versus_gated:.2f}x (median of paired rounds)" if versus_gated else ""
    return Row(
        "attribution",
        measure,
        "calls/s",
        pooled=median(rates),
        baseline=median(ceiling_rates),
        ratio=paired_ratio(rates, ceiling_rates),
        ratio_of=f"{variant.spec.key}/thread",
        baseline_kind=CEILING,
        params=params,
        note=note,
    )


def build_rows(by_key: dict[str, Variant], profile: Profile) -> list[Row]:
    """The rows: each shared variant against the ``share = "thread"`` ceiling of the same server."""
    rows: list[Row] = []
    common = {"threads": THREADS, "calls_per_thread": profile.ask_calls, "rounds": profile.rounds}
    slow = {**common, "calls_per_thread": profile.ask_slow_calls, "answer_delay_ms": ANSWER_DELAY * 1000}
    groups = (
        ("everything", "sampling", ("gated", "lanes"), "thread"),
        ("testserver", "eliciting", ("linked",), "linked-thread"),
    )
    for server, verb, shared_keys, ceiling_key in groups:
        ceiling = by_key[ceiling_key]
        tool = f"{ceiling.spec.tool} @ {server}"
        shared = [by_key[key] for key in shared_keys]
        for variant in shared:
            measure = f"{THREADS} threads {verb} at once, calls/s, {variant.spec.label}, {tool}"
            rows.append(throughput_row(variant, ceiling, by_key["gated"], measure, common, delayed=False))
        for variant in shared:
            rows.append(
                Row(
                    "attribution",
                    f"... median call latency, {variant.spec.label}, {tool}",
                    "ms",
                    pooled=_ms(median(variant.round_latency)),
                    baseline=_ms(median(ceiling.round_latency)),
                    ratio=paired_ratio(variant.round_latency, ceiling.round_latency),
                    ratio_of=f"{variant.spec.key}/thread",
                    baseline_kind=CEILING,
                    params=common,
                )
            )
        for variant in shared:
            measure = f"... answered after {ANSWER_DELAY * 1000:.0f} ms, calls/s, {variant.spec.label}, {tool}"
            rows.append(throughput_row(variant, ceiling, by_key["gated"], measure, slow, delayed=True))
        for variant in shared:
            most = max(variant.processes, default=None)
            bound = variant.spec.fields.get("lanes", 1)
            rows.append(
                Row(
                    "attribution",
                    f"... server processes (psutil), {variant.spec.label}, {tool}",
                    "procs",
                    pooled=most,
                    baseline=max(ceiling.processes, default=None),
                    ratio=_ratio(max(ceiling.processes, default=None), most),
                    ratio_of=f"thread/{variant.spec.key}",
                    target=f"= {bound}" if bound == 1 else f"<= {bound}",
                    ok=most is not None and (most == 1 if bound == 1 else most <= bound),
                    baseline_kind=CEILING,
                    params={**common, "distinct_pids": len(variant.pids), "ceiling_distinct_pids": len(ceiling.pids)},
                    note="the most alive after any round; extra lanes are started by the warm-up round",
                )
            )
        everyone = [*shared, ceiling]
        breakdown = ", ".join(f"{v.spec.key} {v.misdelivered}+{v.foreign}" for v in everyone)
        rows.append(
            Row(
                "attribution",
                f"... asks misrouted, {' + '.join(v.spec.label for v in shared)}, {tool}",
                "asks",
                pooled=sum(v.misrouted for v in shared),
                baseline=ceiling.misrouted,
                target="= 0",
                ok=all(v.misrouted == 0 for v in everyone),
                baseline_kind=CEILING,
                params={
                    **common,
                    "calls": {v.spec.key: v.calls for v in everyone},
                    "asks": {v.spec.key: v.asks for v in everyone},
                    "misdelivered": {v.spec.key: v.misdelivered for v in everyone},
                    "foreign_results": {v.spec.key: v.foreign for v in everyone},
                },
                note=f"asks at another thread's callback + results without their own answer: {breakdown}, "
                f"over every call (warm-up included)",
            )
        )
        rows.append(
            Row(
                "attribution",
                f"... calls declined or failed, {' + '.join(v.spec.label for v in shared)}, {tool}",
                "calls",
                pooled=sum(v.failed for v in shared),
                baseline=ceiling.failed,
                target="= 0",
                ok=all(v.failed == 0 for v in everyone),
                baseline_kind=CEILING,
                params={
                    **common,
                    "failed": {v.spec.key: v.failed for v in everyone},
                    "pool_asks_declined": {v.spec.key: v.pool.get("asks_declined") for v in everyone},
                },
                note="calls that got an error instead of their answer, over every call; the pool's own "
                "asks_declined counter is in params",
            )
        )
    return rows


def _ms(seconds: float | None) -> float | None:
    return seconds * 1000 if seconds is not None else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


@section("attribution", "Asking tools under concurrency: gated vs lanes vs one process per thread", order=35)
async def attribution(ctx: BenchContext) -> list[Row]:
    """Throughput, processes and exactness of 8 threads calling a tool that asks, in every variant."""
    profile = ctx.profile
    per_thread, slow_calls = profile.ask_calls, profile.ask_slow_calls
    variants: list[Variant] = []
    async with Holder() as holder:
        with anyio.fail_after(SETUP_TIMEOUT):
            for spec in VARIANTS:
                variants.append(await start_variant(ctx, holder, spec))
        # Warm-up: the gate learns the tool from one call alone; then one round of every variant (the SDK lists
        # tools before its first call of a tool; the lanes variant starts its extra lanes).
        with anyio.fail_after(ROUND_TIMEOUT * len(variants)):
            for variant in variants:
                if variant.spec.learn_first:
                    await run_calls(variant, "learn", [0], 1)
            for variant in variants:
                await run_calls(variant, "warm", range(THREADS), max(2, per_thread // 4))
        for round_index in range(profile.rounds):
            for variant in rotate(variants, round_index):
                with anyio.fail_after(ROUND_TIMEOUT):
                    elapsed, latencies = await run_calls(variant, f"r{round_index}", range(THREADS), per_thread)
                variant.rates.append(THREADS * per_thread / elapsed)
                variant.latencies.extend(latencies)
                variant.round_latency.append(median(latencies) or 0.0)
                variant.processes.append(await count_processes(ctx, variant))
            for variant in rotate(variants, round_index):
                variant.answer_delay = ANSWER_DELAY
                try:
                    with anyio.fail_after(ROUND_TIMEOUT):
                        elapsed, _ = await run_calls(variant, f"s{round_index}", range(THREADS), slow_calls)
                finally:
                    variant.answer_delay = 0.0
                variant.slow_rates.append(THREADS * slow_calls / elapsed)
                variant.processes.append(await count_processes(ctx, variant))
            logger.info(
                "attribution round %d: %s",
                round_index + 1,
                ", ".join(
                    f"{v.spec.key}={v.rates[-1]:.0f}/s, {v.slow_rates[-1]:.0f}/s slow ({v.processes[-1]} procs)"
                    for v in variants
                ),
            )
        for variant in variants:
            variant.pool = variant.pool_counters()
            ctx.detail(variant.spec.key, variant_details(variant))
    await ctx.tracker.wait_gone(timeout=30.0)
    return build_rows({variant.spec.key: variant for variant in variants}, profile)
