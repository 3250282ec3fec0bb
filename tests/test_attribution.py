"""Exact attribution under concurrency, end to end, in both protocol eras: many sessions on ONE shared process ask
their client something at the same moment, and every question reaches the session whose call asked it.

Real servers: server-everything (TypeScript SDK, handshake era only, no link of any kind on its requests: the gate
makes its asks exact) and tests/servers/testserver.py (Python SDK, both eras: in the handshake era it hands back the
traceparent the router stamps on each call; in 2026-07-28 its questions come back in the call's own result). Real
clients: ThreadManager threads, the SDK's ClientSession and Client (auto mode), shims through the broker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

from helpers import count_server_processes, sdk_session, server_argv, tool_text
from mcpshare import BackendPool, McpConfig, StdioServerConfig, ThreadManager, open_session
from mcpshare.session import pooled_transport
from test_broker import SHIM, BrokerEnv, control

pytestmark = pytest.mark.timeout(120)

SAMPLE = "mcp__ev__trigger-sampling-request"
N = 8


def everything(everything_cmd: list[str], **fields: Any) -> StdioServerConfig:
    return StdioServerConfig(name="ev", command=everything_cmd[0], args=tuple(everything_cmd[1:]), **fields)


def sdk(marker: str, **fields: Any) -> StdioServerConfig:
    argv = server_argv(marker=marker)
    return StdioServerConfig(name="sdk", command=argv[0], args=tuple(argv[1:]), **fields)


def sampler(name: str, seen: list[tuple[str, str]]) -> Any:
    """A thread's sampling handler: its model answers with the thread's name; records (name, prompt it was given)."""

    async def sample(server: str, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        content = params.messages[0].content
        seen.append((name, content.text if isinstance(content, types.TextContent) else ""))
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text=name), model="m")

    return sample


def answerer(name: str, seen: list[tuple[str, str]]) -> Any:
    """A thread's elicitation handler: answers with its name; records (name, question it was asked)."""

    async def elicit(server: str, params: types.ElicitRequestParams) -> types.ElicitResult:
        seen.append((name, params.message))
        return types.ElicitResult(action="accept", content={"answer": name})

    return elicit


def single_backend(manager: ThreadManager, server: str) -> Any:
    (backend,) = [info for info in manager.snapshot().backends if info.server == server]
    return backend


# ---------------------------------------------------------------------------------------------- handshake era, no link


async def test_eight_threads_sample_at_once_on_server_everything_and_each_gets_its_own(
    everything_cmd: list[str], tmp_workspace: Path
) -> None:
    """After one call of the sampling tool alone (so the router learns that it asks), eight threads call it at once
    on one process, mixed into echo and progress traffic whose ids and progress tokens collide across threads
    (every SDK session counts from 1). Every thread's sampler sees only its own prompt and every thread gets
    its own model's answer: none misrouted, none declined."""
    seen: list[tuple[str, str]] = []
    config = McpConfig({"ev": everything(everything_cmd)})
    async with ThreadManager(config, idle_grace=0) as manager:
        threads = [await manager.start_thread(cwd=tmp_workspace, sampling=sampler(f"t{i}", seen)) for i in range(N)]
        alone = tool_text(await threads[0].call_tool(SAMPLE, {"prompt": "alone"}))
        assert '"text": "t0"' in alone
        seen.clear()
        results: dict[str, str] = {}
        progress: dict[int, list[float]] = {i: [] for i in range(N)}

        async def one(index: int) -> None:
            thread = threads[index]

            async def on_progress(
                server: str, tool: str, value: float, total: float | None, message: str | None
            ) -> None:
                progress[index].append(value)

            async with anyio.create_task_group() as tg:
                tg.start_soon(thread.call_tool, "mcp__ev__echo", {"message": f"echo {index}"})
                tg.start_soon(
                    lambda: thread.call_tool(
                        "mcp__ev__trigger-long-running-operation", {"duration": 0.3, "steps": 3}, progress=on_progress
                    )
                )
                results[f"t{index}"] = tool_text(await thread.call_tool(SAMPLE, {"prompt": f"from t{index}"}))
                tg.start_soon(thread.call_tool, "mcp__ev__echo", {"message": f"again {index}"})

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for index in range(N):
                    tg.start_soon(one, index)
        for name, text in results.items():
            assert f'"text": "{name}"' in text, f"{name} got someone else's sample: {text[:200]}"
        assert sorted(seen) == sorted(
            (f"t{i}", f"Resource trigger-sampling-request context: from t{i}") for i in range(N)
        )
        assert all(values == [1.0, 2.0, 3.0] for values in progress.values()), progress
        backend = single_backend(manager, "ev")
        assert backend.asks_declined == 0
        assert len(count_server_processes(str(everything_cmd[1]))) == 1


@pytest.mark.parametrize("protocol", ["2025-11-25", "2026-07-28"])
async def test_eight_threads_elicit_at_once_on_the_sdk_server_in_each_era(
    marker: str, tmp_workspace: Path, protocol: str
) -> None:
    """With no call before, eight threads call a tool that elicits through a resolver, at once, on one process: in
    the handshake era each elicitation carries back its call's traceparent; in 2026-07-28 it comes back in the
    call's own result. Either way each thread answers only its own question."""
    seen: list[tuple[str, str]] = []
    config = McpConfig({"sdk": sdk(marker, protocol=protocol)})
    async with ThreadManager(config, idle_grace=0) as manager:
        threads = [await manager.start_thread(cwd=tmp_workspace, elicitation=answerer(f"t{i}", seen)) for i in range(N)]
        results: dict[str, str] = {}

        async def one(index: int) -> None:
            arguments = {"question": f"question of t{index}", "delay": 0.3}
            results[f"t{index}"] = tool_text(await threads[index].call_tool("mcp__sdk__ask_resolved", arguments))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for index in range(N):
                    tg.start_soon(one, index)
        assert results == {f"t{i}": f"accept:t{i}" for i in range(N)}
        assert sorted(seen) == sorted((f"t{i}", f"question of t{i}") for i in range(N))
        backend = single_backend(manager, "sdk")
        assert (backend.protocol_version, backend.asks_declined) == (protocol, 0)
        assert len(count_server_processes(marker)) == 1


async def test_a_first_ambiguous_ask_is_declined_once_then_never_again(
    everything_cmd: list[str], tmp_workspace: Path
) -> None:
    """server-everything has no link on its requests. A long operation runs for one thread while another calls the
    sampling tool for the first time: two calls could have asked, so the sampling request is declined (that call
    fails) and both tools are learned. From then on the gate runs them one at a time, and the same race is exact."""
    seen: list[tuple[str, str]] = []
    config = McpConfig({"ev": everything(everything_cmd)})
    async with ThreadManager(config, idle_grace=0) as manager:
        busy = await manager.start_thread(cwd=tmp_workspace, sampling=sampler("busy", seen))
        asker = await manager.start_thread(cwd=tmp_workspace, sampling=sampler("asker", seen))
        started = anyio.Event()

        async def on_progress(server: str, tool: str, value: float, total: float | None, message: str | None) -> None:
            started.set()

        async def race() -> str:
            async with anyio.create_task_group() as tg:
                long_call = {"duration": 1.0, "steps": 5}
                tg.start_soon(
                    lambda: busy.call_tool("mcp__ev__trigger-long-running-operation", long_call, progress=on_progress)
                )
                await started.wait()  # the long call is provably running at the server
                try:
                    return tool_text(await asker.call_tool(SAMPLE, {"prompt": "race"}))
                except MCPError as exc:
                    return f"error: {exc}"

        with anyio.fail_after(30):
            first = await race()
        assert seen == [], "an ask with two possible owners reaches neither"
        assert "error" in first.lower() or "cannot attribute" in first
        assert single_backend(manager, "ev").asks_declined == 1
        for _ in range(2):
            started = anyio.Event()
            with anyio.fail_after(30):
                again = await race()
            assert '"text": "asker"' in again
        assert seen == [("asker", "Resource trigger-sampling-request context: race")] * 2
        assert single_backend(manager, "ev").asks_declined == 1  # declined once, and never again


# ---------------------------------------------------------------------------------------------- through the broker


async def test_eight_shim_clients_sample_at_once_through_the_broker(
    broker_env: BrokerEnv, everything_cmd: list[str]
) -> None:
    """The same with eight agents' shims: each SDK client's sampler answers only its own question."""
    seen: list[tuple[str, str]] = []

    def callback(name: str) -> Any:
        async def sample(
            context: ClientRequestContext, params: types.CreateMessageRequestParams
        ) -> types.CreateMessageResult:
            content = params.messages[0].content
            seen.append((name, content.text if isinstance(content, types.TextContent) else ""))
            return types.CreateMessageResult(
                role="assistant", content=types.TextContent(type="text", text=name), model="m"
            )

        return sample

    argv = [*SHIM, "ev", "--", *everything_cmd]
    env = {**os.environ, **broker_env.env}
    results: dict[str, str] = {}
    with anyio.fail_after(90):
        async with sdk_session(argv, env=env, sampling_callback=callback("first")) as first:
            assert '"text": "first"' in tool_text(
                await first.call_tool("trigger-sampling-request", {"prompt": "alone"})
            )
        seen.clear()

        async def one(index: int) -> None:
            async with sdk_session(argv, env=env, sampling_callback=callback(f"s{index}")) as session:
                await session.call_tool("echo", {"message": "warm"})
                results[f"s{index}"] = tool_text(
                    await session.call_tool("trigger-sampling-request", {"prompt": f"from s{index}"})
                )

        async with anyio.create_task_group() as tg:
            for index in range(N):
                tg.start_soon(one, index)
    for name, text in results.items():
        assert f'"text": "{name}"' in text
    assert sorted(seen) == sorted((f"s{i}", f"Resource trigger-sampling-request context: from s{i}") for i in range(N))
    status = control("status", broker_env)
    assert status is not None
    assert [row["asks_declined"] for row in status["servers"]] == [0]


# ---------------------------------------------------------------------------------------------- the eras


async def test_the_era_of_each_backend_is_negotiated_by_the_stdio_rule(marker: str, everything_cmd: list[str]) -> None:
    """protocol="auto": the SDK server answers server/discover (2026-07-28), server-everything refuses it (the
    handshake), a server that never answers the probe gets the handshake after the probe timeout. Forcing works,
    and forcing 2026-07-28 on a server that lacks it is a clear start error."""
    from helpers import SERVERS_DIR

    silent = StdioServerConfig(
        name="silent",
        command=sys.executable,
        args=(str(SERVERS_DIR / "raw_server.py"), f"--marker={marker}", "--ignore=server/discover"),
        protocol="auto",
    )
    async with BackendPool(idle_grace=30, probe_timeout=1.0) as pool:
        leases = [
            await pool.acquire(sdk(marker, protocol="auto")),
            await pool.acquire(everything(everything_cmd, protocol="auto")),
            await pool.acquire(silent),
            await pool.acquire(sdk(marker)),
        ]
        eras = {(info.server, info.protocol_version) for info in pool.snapshot()}
        assert ("ev", "2025-11-25") in eras and ("silent", "2025-11-25") in eras
        assert {era for server, era in eras if server == "sdk"} == {"2026-07-28", "2025-11-25"}  # auto, and default
        forced = await pool.acquire(sdk(marker, protocol="2026-07-28"))
        assert forced.backend is not None and forced.backend.protocol_version == "2026-07-28"
        from mcpshare.pool import ServerStartError

        with pytest.raises(ServerStartError, match="does not speak 2026-07-28"):
            await pool.acquire(everything(everything_cmd, protocol="2026-07-28"))
        for lease in [*leases, forced]:
            await lease.release()


async def test_a_handshake_and_a_modern_client_share_one_modern_backend(marker: str) -> None:
    """A ClientSession (initialize) and a Client in auto mode (server/discover) on the one 2026-07-28 process: each
    gets its own answer to the question its own call asks."""
    config = sdk(marker, protocol="2026-07-28")

    async def legacy_answer(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"answer": "handshake"})

    async def modern_answer(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"answer": "modern"})

    async with BackendPool(idle_grace=0) as pool:
        lease = await pool.acquire(config)
        async with (
            open_session(lease, elicitation_callback=legacy_answer) as legacy,
            Client(pooled_transport(pool, config), mode="auto", elicitation_callback=modern_answer) as modern,
        ):
            assert modern.session.protocol_version == "2026-07-28"
            results: dict[str, str] = {}

            async def ask(name: str, session: Any) -> None:
                results[name] = tool_text(await session.call_tool("ask_resolved", {"question": name, "delay": 0.3}))

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ask, "handshake", legacy)
                    tg.start_soon(ask, "modern", modern)
            assert results == {"handshake": "accept:handshake", "modern": "accept:modern"}
            assert len(count_server_processes(marker)) == 1
        await lease.release()


# ---------------------------------------------------------------------------------------------- bridges


async def test_a_modern_client_on_a_handshake_backend_answers_through_input_required(
    marker: str, everything_cmd: list[str]
) -> None:
    """The SDK Client in auto mode on server-everything (handshake only): discover is answered by mcpshare, the
    server's elicitation comes back to the Client as input_required, and its retry gets the call's result."""

    async def answer(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "Ada", "email": "ada@example.com", "color": "red"})

    async with (
        BackendPool(idle_grace=0) as pool,
        Client(pooled_transport(pool, everything(everything_cmd)), mode="auto", elicitation_callback=answer) as client,
    ):
        assert client.session.protocol_version == "2026-07-28"
        with anyio.fail_after(30):
            result = await client.call_tool("trigger-elicitation-request", {})
        assert "User provided the requested information" in tool_text(result) and "Ada" in tool_text(result)
        (info,) = pool.snapshot()
        assert info.protocol_version == "2025-11-25"


async def test_a_handshake_client_on_a_modern_backend_is_asked_for_real(marker: str) -> None:
    asked: list[str] = []

    async def answer(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": "yes"})

    async with BackendPool(idle_grace=0) as pool:
        lease = await pool.acquire(sdk(marker, protocol="2026-07-28"))
        async with open_session(lease, elicitation_callback=answer) as session:
            with anyio.fail_after(30):
                assert tool_text(await session.call_tool("ask_resolved", {"question": "ok?"})) == "accept:yes"
        assert asked == ["ok?"]
        await lease.release()


async def test_cancelling_mid_input_withdraws_the_question_on_both_bridges(marker: str) -> None:
    """A client that gives up while its question is open: a modern one on a handshake backend never retries (the
    held question is answered with an error after the input TTL and the call cancelled upstream); a handshake one
    on a modern backend cancels its call (the question it was asked is cancelled, and nothing is left pending).
    The shared server keeps serving either way."""
    waiting = anyio.Event()

    async def stuck(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        waiting.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with BackendPool(idle_grace=0, input_ttl=1.0) as pool:
        legacy_backend = sdk(marker)
        async with Client(pooled_transport(pool, legacy_backend), mode="auto", elicitation_callback=stuck) as modern:
            with anyio.move_on_after(10) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(modern.call_tool, "ask", {"question": "abandon me"})
                    await waiting.wait()
                    tg.cancel_scope.cancel()
            assert not scope.cancelled_caught
            lease = await pool.acquire(legacy_backend)
            assert lease.backend is not None and lease.backend.waiting == 1  # the abandoned call still runs
            with anyio.fail_after(10):
                while lease.backend.waiting:  # noqa: ASYNC110 - the TTL passes: its question answered, it cancelled
                    await anyio.sleep(0.1)
            async with open_session(lease) as other:
                assert tool_text(await other.call_tool("echo", {"text": "still here"})) == "still here"
            await lease.release()
        waiting = anyio.Event()
        modern_backend = sdk(marker, protocol="2026-07-28")
        lease = await pool.acquire(modern_backend)
        async with open_session(lease, elicitation_callback=stuck) as legacy:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(legacy.call_tool, "ask_resolved", {"question": "abandon me too"})
                    await waiting.wait()
                    tg.cancel_scope.cancel()
            assert lease.backend is not None
            with anyio.fail_after(5):
                while lease.backend.waiting:  # noqa: ASYNC110 - nothing to wait on but the router's state
                    await anyio.sleep(0.05)
            assert tool_text(await legacy.call_tool("echo", {"text": "fine"})) == "fine"
        await lease.release()


async def test_an_expired_request_state_is_a_clear_error(marker: str) -> None:
    """A modern client that answers after the input TTL: its retry carries a handle that no longer exists."""

    async def slow(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        await anyio.sleep(1.5)
        return types.ElicitResult(action="accept", content={"answer": "too late"})

    async with (
        BackendPool(idle_grace=0, input_ttl=0.5) as pool,
        Client(pooled_transport(pool, sdk(marker)), mode="auto", elicitation_callback=slow) as client,
    ):
        with anyio.fail_after(20), pytest.raises(MCPError, match="requestState is unknown, expired"):
            await client.call_tool("ask", {"question": "quick?"})
        assert tool_text(await client.call_tool("echo", {"text": "next"})) == "next"


# ---------------------------------------------------------------------------------------------- lanes


async def test_lanes_run_calls_that_ask_side_by_side_then_go(everything_cmd: list[str], tmp_workspace: Path) -> None:
    """lanes = 3: eight threads sampling at once on server-everything. The calls that would wait at the gate of
    the first process go to extra lanes (at most two more processes, started only now), each still alone on its
    process, so every answer is its own; once idle, the extra lanes stop and the first process stays."""
    seen: list[tuple[str, str]] = []
    config = McpConfig({"ev": everything(everything_cmd, lanes=3)})
    script = everything_cmd[1]
    async with ThreadManager(config, idle_grace=0.5) as manager:
        threads = [await manager.start_thread(cwd=tmp_workspace, sampling=sampler(f"t{i}", seen)) for i in range(N)]
        await threads[0].call_tool(SAMPLE, {"prompt": "alone"})
        assert len(count_server_processes(script)) == 1
        seen.clear()
        most = 0
        results: dict[str, str] = {}

        async def one(index: int) -> None:
            results[f"t{index}"] = tool_text(await threads[index].call_tool(SAMPLE, {"prompt": f"from t{index}"}))

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, len(count_server_processes(script)))
                await anyio.sleep(0.02)

        with anyio.fail_after(90):
            async with anyio.create_task_group() as outer:
                outer.start_soon(watch)
                async with anyio.create_task_group() as tg:
                    for index in range(N):
                        tg.start_soon(one, index)
                outer.cancel_scope.cancel()
        for name, text in results.items():
            assert f'"text": "{name}"' in text
        assert sorted(seen) == sorted(
            (f"t{i}", f"Resource trigger-sampling-request context: from t{i}") for i in range(N)
        )
        assert most == 3, f"expected the first process and two lanes, saw at most {most}"
        backends = [info for info in manager.snapshot().backends if info.server == "ev"]
        assert sum(info.asks_declined for info in backends) == 0
        with anyio.fail_after(10):
            while len(count_server_processes(script)) > 1:  # noqa: ASYNC110 - the lanes stop after the idle grace
                await anyio.sleep(0.1)
        assert [info.lane for info in manager.snapshot().backends if info.server == "ev"] == [0]


async def test_the_era_and_lanes_of_a_wrapped_entry_reach_the_broker(broker_env: BrokerEnv, marker: str) -> None:
    """`wrap` writes the server's mcpshare fields (protocol, lanes, ...) onto its connect line, the shim passes
    them in its hello, and the broker runs the server with them."""
    from mcpshare.wrap import wrap_entry

    entry = {"command": sys.executable, "args": server_argv(marker=marker)[1:], "protocol": "auto", "lanes": 2}
    command, args = wrap_entry("sdk", entry, mcpshare_command=[*SHIM[:-1]])
    assert args[args.index("--protocol") + 1] == "auto" and args[args.index("--lanes") + 1] == "2"
    with anyio.fail_after(30):
        async with sdk_session([command, *args], env={**os.environ, **broker_env.env}) as session:
            assert tool_text(await session.call_tool("echo", {"text": "hi"})) == "hi"
            status = control("status", broker_env)
    assert status is not None
    assert [row["protocol"] for row in status["servers"]] == ["2026-07-28"]


async def test_what_the_broker_learned_survives_its_restart(broker_env: BrokerEnv, everything_cmd: list[str]) -> None:
    """A broker learns that the sampling tool asks (one call alone), is stopped, and a new broker starts: eight
    clients calling it at once from the first moment are all exact, with nothing declined (without what was
    learned, the first of them would be)."""
    argv = [*SHIM, "ev", "--", *everything_cmd]
    env = {**os.environ, **broker_env.env}

    def callback(name: str) -> Any:
        async def sample(
            context: ClientRequestContext, params: types.CreateMessageRequestParams
        ) -> types.CreateMessageResult:
            return types.CreateMessageResult(
                role="assistant", content=types.TextContent(type="text", text=name), model="m"
            )

        return sample

    with anyio.fail_after(60):
        async with sdk_session(argv, env=env, sampling_callback=callback("first")) as first:
            await first.call_tool("trigger-sampling-request", {"prompt": "alone"})
        assert "trigger-sampling-request" in Path(broker_env.paths.learned).read_text()
        assert control("stop", broker_env) is not None
        while broker_env.broker_pid() is not None:  # noqa: ASYNC110 - the lock is the broker's life
            await anyio.sleep(0.05)
        results: dict[str, str] = {}

        async def one(index: int) -> None:
            async with sdk_session(argv, env=env, sampling_callback=callback(f"s{index}")) as session:
                results[f"s{index}"] = tool_text(await session.call_tool("trigger-sampling-request", {"prompt": "x"}))

        async with anyio.create_task_group() as tg:
            for index in range(N):
                tg.start_soon(one, index)
    assert all(f'"text": "{name}"' in text for name, text in results.items()) and len(results) == N
    status = control("status", broker_env)
    assert status is not None and [row["asks_declined"] for row in status["servers"]] == [0]


async def test_a_call_waiting_for_a_lane_takes_whichever_frees_first(
    everything_cmd: list[str], tmp_workspace: Path
) -> None:
    """lanes = 4 and answers that take a while: eight calls at once fill the four processes, and the four left over
    wait for a free one rather than at the gate of the first, so the second four also run side by side."""
    running = 0
    at_start: list[int] = []

    def slow(name: str) -> Any:
        async def sample(server: str, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
            nonlocal running
            running += 1
            at_start.append(running)
            await anyio.sleep(0.3)
            running -= 1
            return types.CreateMessageResult(
                role="assistant", content=types.TextContent(type="text", text=name), model="m"
            )

        return sample

    config = McpConfig({"ev": everything(everything_cmd, lanes=4)})
    async with ThreadManager(config, idle_grace=5) as manager:
        threads = [await manager.start_thread(cwd=tmp_workspace, sampling=slow(f"t{i}")) for i in range(N)]
        await threads[0].call_tool(SAMPLE, {"prompt": "alone"})
        results: dict[str, str] = {}

        async def one(index: int) -> None:
            results[f"t{index}"] = tool_text(await threads[index].call_tool(SAMPLE, {"prompt": str(index)}))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:  # four at once: the three extra lanes start
                for index in range(4):
                    tg.start_soon(one, index)
            assert len(count_server_processes(everything_cmd[1])) == 4
            at_start.clear()
            async with anyio.create_task_group() as tg:  # eight at once on four warm processes
                for index in range(N):
                    tg.start_soon(one, index)
        assert all(f'"text": "{name}"' in text for name, text in results.items()) and len(results) == N
        assert len(at_start) == N
        # The second four started alongside each other: queued at the gate of the first process, they would run
        # one by one (1 running each time one starts) while the lanes sat idle.
        assert max(at_start[4:]) >= 3, at_start
        assert sum(info.asks_declined for info in manager.snapshot().backends) == 0
