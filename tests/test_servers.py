"""The test servers (and the pinned Node servers) work when spoken to directly, without mcpshare.

Everything later tests build on is pinned here first, so a failure in a pool test cannot be a broken test
server. The SDK-client tests double as a reference for the mcp 2.x client API:

- ``stdio_client(StdioServerParameters(command, args, env, cwd), errlog=...)`` yields ``(read, write)``;
- ``ClientSession(read, write, sampling_callback=, elicitation_callback=, list_roots_callback=,
  logging_callback=, message_handler=)``; passing a callback is what declares the client capability;
- request callbacks take ``(context: ClientRequestContext, params)`` (roots: just ``(context)``),
  ``logging_callback(params)``, ``message_handler(notification_or_exception)``,
  and a progress callback is ``async (progress, total, message)`` passed to ``call_tool``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import ClientSession, types
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from helpers import (
    HTTP_SERVER,
    NPX_WRAPPER,
    TESTSERVER,
    RawStdioServer,
    Recorder,
    count_server_processes,
    sdk_session,
    server_argv,
    tool_json,
    tool_text,
    wait_for_processes,
)

# Logging, sampling, roots and resources/subscribe are deprecated in protocol 2026-07-28, but they are what
# handshake-era (2025-11-25) servers speak and what the pool must route.
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

EXPECTED_TOOLS = {
    "echo",
    "whoami",
    "stats",
    "add",
    "sleep",
    "progress",
    "ask",
    "ask_resolved",
    "sample",
    "roots",
    "log",
    "crash",
    "spawn_child",
    "bump",
    "add_tool",
}


# --- testserver.py over the SDK's stdio client ---------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_initialize_advertises_what_the_server_does(marker: str) -> None:
    async with sdk_session(server_argv(marker=marker)) as session:
        init = session.initialize_result
        assert init is not None
        assert init.server_info.name == "testserver"
        assert init.protocol_version == "2025-11-25"
        caps = init.capabilities
        assert caps.tools and caps.tools.list_changed
        assert caps.resources and caps.resources.subscribe and caps.resources.list_changed
        assert caps.prompts and caps.prompts.list_changed
        assert caps.logging is not None
        assert caps.completions is not None
        assert {tool.name for tool in (await session.list_tools()).tools} == EXPECTED_TOOLS


@pytest.mark.timeout(30)
async def test_basic_tools_and_whoami_identify_the_process(marker: str, tmp_workspace: Path) -> None:
    argv = server_argv("--name=named", "--show-env=MCPSHARE_TEST_VALUE", marker=marker)
    async with sdk_session(argv, env={"MCPSHARE_TEST_VALUE": "v1"}, cwd=tmp_workspace) as session:
        assert tool_text(await session.call_tool("echo", {"text": "hello"})) == "hello"
        assert tool_json(await session.call_tool("add", {"a": 2, "b": 3})) == 5
        me = tool_json(await session.call_tool("whoami", {}))
        (proc,) = count_server_processes(marker)
        assert me["pid"] == proc.pid  # the OS agrees about which process answered
        assert me["env"] == {"MCPSHARE_TEST_VALUE": "v1"}
        assert Path(me["cwd"]) == tmp_workspace
        assert me["name"] == "named" and session.initialize_result.server_info.name == "named"  # type: ignore[union-attr]
    with anyio.fail_after(5):
        await wait_for_processes(marker, 0)  # stdio_client stops the process on exit


@pytest.mark.timeout(30)
async def test_progress_notifications_reach_the_callers_callback(marker: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with sdk_session(server_argv(marker=marker)) as session:
        result = await session.call_tool("progress", {"steps": 3, "delay": 0.01}, progress_callback=on_progress)
        assert tool_text(result) == "done"
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


@pytest.mark.timeout(30)
async def test_elicitation_goes_to_the_elicitation_callback(marker: str) -> None:
    asked: list[types.ElicitRequestParams] = []
    replies = iter(
        [
            types.ElicitResult(action="accept", content={"answer": "blue"}),
            types.ElicitResult(action="decline"),
        ]
    )

    async def on_elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return next(replies)

    async with sdk_session(server_argv(marker=marker), elicitation_callback=on_elicit) as session:
        assert tool_text(await session.call_tool("ask", {"question": "favourite colour?"})) == "accept:blue"
        assert tool_text(await session.call_tool("ask", {"question": "again?"})) == "decline"
    assert [p.message for p in asked] == ["favourite colour?", "again?"]
    assert isinstance(asked[0], types.ElicitRequestFormParams)
    assert "answer" in asked[0].requested_schema["properties"]


@pytest.mark.timeout(30)
async def test_sampling_goes_to_the_sampling_callback(marker: str) -> None:
    prompts: list[str] = []

    async def on_sample(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        content = params.messages[0].content
        assert isinstance(content, types.TextContent)
        prompts.append(content.text)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="model says hi"), model="test-model"
        )

    async with sdk_session(server_argv(marker=marker), sampling_callback=on_sample) as session:
        assert tool_text(await session.call_tool("sample", {"prompt": "say hi"})) == "model says hi"
    assert prompts == ["say hi"]


@pytest.mark.timeout(30)
async def test_roots_come_from_the_list_roots_callback(marker: str, tmp_workspace: Path) -> None:
    async def on_roots(context: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=tmp_workspace.as_uri(), name="workspace")])

    async with sdk_session(server_argv(marker=marker), list_roots_callback=on_roots) as session:
        roots = tool_json(await session.call_tool("roots", {}))
    assert roots == [{"uri": tmp_workspace.as_uri(), "name": "workspace"}]


@pytest.mark.timeout(30)
async def test_server_to_client_requests_fail_cleanly_without_the_capability(marker: str) -> None:
    async with sdk_session(server_argv(marker=marker)) as session:
        # The client's JSON-RPC error passes through the tool as the tools/call error (not an isError result).
        with pytest.raises(MCPError, match="Elicitation not supported"):
            await session.call_tool("ask", {"question": "anyone there?"})
        assert tool_text(await session.call_tool("echo", {"text": "still fine"})) == "still fine"


@pytest.mark.timeout(30)
async def test_log_notifications_and_set_level(marker: str) -> None:
    logged = Recorder()  # logging_callback receives LoggingMessageNotificationParams
    async with sdk_session(server_argv(marker=marker), logging_callback=logged) as session:
        assert tool_text(await session.call_tool("log", {"level": "info", "message": "one"})) == "logged"
        await session.set_logging_level("error")
        assert tool_text(await session.call_tool("log", {"level": "info", "message": "two"})) == "filtered"
        assert tool_text(await session.call_tool("log", {"level": "error", "message": "three"})) == "logged"
        assert tool_json(await session.call_tool("stats", {}))["log_level"] == "error"
        with anyio.fail_after(5):
            await logged.wait_for(types.LoggingMessageNotificationParams, 2)
    assert [(p.level, p.data, p.logger) for p in logged.items] == [
        ("info", "one", "testserver"),
        ("error", "three", "testserver"),
    ]


@pytest.mark.timeout(30)
async def test_subscribed_resource_gets_updated_notifications(marker: str) -> None:
    inbox = Recorder()
    async with sdk_session(server_argv(marker=marker), message_handler=inbox) as session:
        assert [str(r.uri) for r in (await session.list_resources()).resources] == ["test://counter"]
        assert tool_json(await session.call_tool("bump", {})) == 1  # not subscribed yet: no notification
        await session.subscribe_resource("test://counter")
        assert tool_json(await session.call_tool("bump", {})) == 2
        with anyio.fail_after(5):
            (updated,) = await inbox.wait_for(types.ResourceUpdatedNotification)
        assert str(updated.params.uri) == "test://counter"
        contents = (await session.read_resource("test://counter")).contents
        assert isinstance(contents[0], types.TextResourceContents) and contents[0].text == "2"
        await session.unsubscribe_resource("test://counter")
        assert tool_json(await session.call_tool("bump", {})) == 3
        assert tool_json(await session.call_tool("stats", {}))["subscribed"] == []
        assert len(inbox.of(types.ResourceUpdatedNotification)) == 1  # bumps after unsubscribe are silent


@pytest.mark.timeout(30)
async def test_add_tool_sends_list_changed_and_the_tool_works(marker: str) -> None:
    inbox = Recorder()
    async with sdk_session(server_argv(marker=marker), message_handler=inbox) as session:
        assert tool_text(await session.call_tool("add_tool", {"name": "late_tool"})) == "added late_tool"
        with anyio.fail_after(5):
            await inbox.wait_for(types.ToolListChangedNotification)
        assert "late_tool" in {tool.name for tool in (await session.list_tools()).tools}
        assert tool_text(await session.call_tool("late_tool", {})) == "late_tool called"


@pytest.mark.timeout(30)
async def test_template_prompt_and_completion(marker: str) -> None:
    async with sdk_session(server_argv(marker=marker)) as session:
        (template,) = (await session.list_resource_templates()).resource_templates
        assert template.uri_template == "test://item/{id}"
        contents = (await session.read_resource("test://item/7")).contents
        assert isinstance(contents[0], types.TextResourceContents) and contents[0].text == "item 7"
        prompt = await session.get_prompt("greet", {"name": "Ada"})
        assert isinstance(prompt.messages[0].content, types.TextContent)
        assert prompt.messages[0].content.text == "Hello, Ada!"
        ref = types.ResourceTemplateReference(type="ref/resource", uri="test://item/{id}")
        completion = await session.complete(ref, {"name": "id", "value": "1"})
        assert completion.completion.values == ["1", "10"]


@pytest.mark.timeout(30)
async def test_abandoned_call_is_cancelled_in_the_server(marker: str) -> None:
    async with sdk_session(server_argv(marker=marker)) as session:
        with anyio.move_on_after(0.5):
            await session.call_tool("sleep", {"seconds": 30})  # abandoning sends notifications/cancelled
        for _ in range(100):  # the cancellation lands asynchronously: poll the server's own count
            stats = tool_json(await session.call_tool("stats", {}))
            if stats["cancelled"]:
                break
            await anyio.sleep(0.05)
        assert stats["cancelled"] == 1
        assert stats["methods"]["notifications/cancelled"] == 1
        assert tool_text(await session.call_tool("sleep", {"seconds": 0})) == "slept"


@pytest.mark.timeout(30)
async def test_stats_counts_inbound_methods(marker: str) -> None:
    async with sdk_session(server_argv(marker=marker)) as session:
        await session.list_tools()
        methods = tool_json(await session.call_tool("stats", {}))["methods"]
    assert methods["initialize"] == 1
    assert methods["notifications/initialized"] == 1
    assert methods["tools/list"] == 1
    assert methods["tools/call"] == 1


# --- process behaviour, seen through raw JSON-RPC and the OS ---------------------------------------------------


@pytest.mark.timeout(30)
async def test_crash_exits_with_the_code_and_never_answers(marker: str) -> None:
    async with RawStdioServer.start(server_argv(marker=marker)) as server:
        with anyio.fail_after(10):
            await server.initialize()
            with pytest.raises(anyio.EndOfStream):  # no reply, just the end of stdout
                await server.call_tool("crash", {"code": 3})
            assert await server.wait() == 3
        assert "crashing with exit code 3" in server.stderr_text()


@pytest.mark.timeout(30)
async def test_spawn_child_leaves_a_grandchild_in_the_servers_group(marker: str) -> None:
    async with RawStdioServer.start(server_argv(marker=marker)) as server:
        with anyio.fail_after(10):
            await server.initialize()
            response = await server.call_tool("spawn_child")
        child_pid = response["result"]["structuredContent"]["result"]
        with anyio.fail_after(5):
            procs = {p.pid for p in await wait_for_processes(marker, 2)}
        assert procs == {server.pid, child_pid}
        assert psutil.Process(child_pid).ppid() == server.pid
        assert os.getpgid(child_pid) == os.getpgid(server.pid) == server.pid
        os.kill(server.pid, signal.SIGKILL)  # killing the server alone orphans the grandchild...
        with anyio.fail_after(5):
            await server.wait()
            assert [p.pid for p in await wait_for_processes(marker, 1)] == [child_pid]
    with anyio.fail_after(5):
        await wait_for_processes(marker, 0)  # ...killing the group (RawStdioServer.stop) does not


@pytest.mark.timeout(30)
async def test_exit_at_start(marker: str) -> None:
    argv = server_argv(marker=marker)
    async with RawStdioServer.start(argv, env={"TESTSERVER_EXIT_AT_START": "7"}) as server:
        with anyio.fail_after(5):
            assert await server.wait() == 7
            await server.wait_for_stderr("exiting at start with code 7")
    with tempfile.TemporaryFile("w+") as errlog:
        # The SDK client sees the connection close during initialize; the error arrives wrapped in the
        # exception groups of the transport's and the session's task groups.
        closed = pytest.RaisesExc(MCPError, match="Connection closed")
        with pytest.RaisesGroup(closed, flatten_subgroups=True):
            async with sdk_session(argv, env={"TESTSERVER_EXIT_AT_START": "7"}, errlog=errlog):
                pass
        errlog.seek(0)
        assert "exiting at start with code 7" in errlog.read()


@pytest.mark.timeout(30)
async def test_startup_delay_delays_the_handshake(marker: str) -> None:
    async with RawStdioServer.start(server_argv(marker=marker), env={"TESTSERVER_STARTUP_DELAY": "1"}) as server:
        started = time.monotonic()
        with anyio.fail_after(10):
            await server.initialize()
        assert time.monotonic() - started >= 0.9


@pytest.mark.timeout(30)
async def test_no_handshake_server_reads_but_never_answers(marker: str) -> None:
    async with RawStdioServer.start(server_argv(marker=marker), env={"TESTSERVER_NO_HANDSHAKE": "1"}) as server:
        with pytest.raises(TimeoutError), anyio.fail_after(1):
            await server.initialize()
        assert server.returncode is None
        with anyio.fail_after(5):
            await server.wait_for_stderr("never answering")
    assert server.returncode == 0  # closing stdin ends it; it is hung, not deaf


@pytest.mark.timeout(30)
async def test_stdout_garbage_comes_first_then_a_working_server(marker: str) -> None:
    env = {"TESTSERVER_STDOUT_GARBAGE": "1"}
    async with RawStdioServer.start(server_argv(marker=marker), env=env) as server:
        with anyio.fail_after(10):
            assert await server.receive_line() == b"this line is not JSON-RPC"
            await server.initialize()
    inbox = Recorder()
    async with sdk_session(server_argv(marker=marker), env=env, message_handler=inbox) as session:
        # The SDK client surfaces the bad line as an exception to message_handler and carries on.
        assert tool_text(await session.call_tool("echo", {"text": "ok"})) == "ok"
        with anyio.fail_after(5):
            await inbox.wait_for(Exception)


@pytest.mark.timeout(30)
async def test_unknown_argument_is_an_error(marker: str) -> None:
    async with RawStdioServer.start(server_argv("--bogus", marker=marker)) as server:
        with anyio.fail_after(5):
            assert await server.wait() == 2
        assert "unknown argument '--bogus'" in server.stderr_text()


@pytest.mark.timeout(30)
async def test_npx_wrapper_makes_the_server_a_grandchild(marker: str) -> None:
    argv = [sys.executable, str(NPX_WRAPPER), *server_argv(marker=marker)]
    async with RawStdioServer.start(argv) as wrapper:
        with anyio.fail_after(10):
            await wrapper.initialize()
            response = await wrapper.call_tool("whoami")
        server_pid = response["result"]["structuredContent"]["pid"]
        assert server_pid != wrapper.pid
        assert psutil.Process(server_pid).ppid() == wrapper.pid
        assert os.getpgid(server_pid) == wrapper.pid  # same group: killpg reaches it
        assert {p.pid for p in count_server_processes(marker)} == {wrapper.pid, server_pid}
        with anyio.fail_after(10), pytest.raises(anyio.EndOfStream):
            await wrapper.call_tool("crash", {"code": 4})
        with anyio.fail_after(5):
            assert await wrapper.wait() == 4  # the wrapper passes the server's exit code through
    with anyio.fail_after(5):
        await wait_for_processes(marker, 0)


@pytest.mark.timeout(30)
async def test_npx_wrapper_killed_alone_orphans_the_server(marker: str) -> None:
    argv = [sys.executable, str(NPX_WRAPPER), *server_argv(marker=marker)]
    async with RawStdioServer.start(argv) as wrapper:
        with anyio.fail_after(10):
            await wrapper.initialize()
        wrapper.process.terminate()  # SIGTERM to the wrapper's pid only, as a naive client does
        with anyio.fail_after(5):
            assert await wrapper.wait() == -signal.SIGTERM
        with anyio.fail_after(5):
            (orphan,) = await wait_for_processes(marker, 1)
        assert orphan.pid != wrapper.pid
    with anyio.fail_after(5):
        await wait_for_processes(marker, 0)


# --- Streamable HTTP variant ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_http_server_serves_the_same_tools(marker: str) -> None:
    argv = [sys.executable, str(HTTP_SERVER), "0", f"--marker={marker}"]
    async with await anyio.open_process(argv, stderr=subprocess.DEVNULL) as proc:
        try:
            assert proc.stdout is not None
            with anyio.fail_after(10):
                line = await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 100)
            assert line.startswith(b"PORT "), line
            url = f"http://127.0.0.1:{int(line.split()[1])}/mcp"

            async def on_elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
                return types.ElicitResult(action="accept", content={"answer": "over http"})

            async with streamable_http_client(url) as (read, write):
                async with ClientSession(read, write, elicitation_callback=on_elicit) as session:
                    await session.initialize()
                    assert {t.name for t in (await session.list_tools()).tools} == EXPECTED_TOOLS
                    assert tool_text(await session.call_tool("echo", {"text": "hi"})) == "hi"
                    assert tool_json(await session.call_tool("whoami", {}))["pid"] == proc.pid
                    assert tool_text(await session.call_tool("ask", {"question": "q"})) == "accept:over http"
        finally:
            proc.terminate()  # by pid
            with anyio.fail_after(10):  # uvicorn shuts down gracefully, then re-raises the signal on itself
                assert await proc.wait() == -signal.SIGTERM


# --- the pinned Node servers -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_everything_over_raw_stdio(everything_cmd: list[str]) -> None:
    async with RawStdioServer.start(everything_cmd) as server:
        with anyio.fail_after(20):
            init = await server.initialize()
            tools = {t["name"] for t in (await server.request("tools/list"))["result"]["tools"]}
        assert init["serverInfo"]["name"] == "mcp-servers/everything"
        assert {"echo", "get-sum", "trigger-long-running-operation"} <= tools
        # Capability-gated tools are absent when the client declares no sampling/elicitation/roots.
        assert not {"trigger-sampling-request", "trigger-elicitation-request", "get-roots-list"} & tools


@pytest.mark.timeout(60)
async def test_everything_progress_elicitation_sampling_roots(everything_cmd: list[str], tmp_workspace: Path) -> None:
    progress: list[float] = []
    elicited: list[str] = []
    sampled: list[str] = []
    roots_asked = anyio.Event()

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def on_elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        elicited.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async def on_sample(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        sampled.append(json.dumps(params.model_dump(mode="json", by_alias=True, exclude_none=True)))
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled!"), model="test-model"
        )

    async def on_roots(context: ClientRequestContext) -> types.ListRootsResult:
        roots_asked.set()
        return types.ListRootsResult(roots=[types.Root(uri=tmp_workspace.as_uri(), name="ws")])

    async with sdk_session(
        everything_cmd,
        elicitation_callback=on_elicit,
        sampling_callback=on_sample,
        list_roots_callback=on_roots,
    ) as session:
        tools = {t.name for t in (await session.list_tools()).tools}
        assert {"trigger-sampling-request", "trigger-elicitation-request", "get-roots-list"} <= tools

        result = await session.call_tool(
            "trigger-long-running-operation", {"duration": 0.3, "steps": 3}, progress_callback=on_progress
        )
        assert "completed" in tool_text(result)
        assert progress == [1, 2, 3]

        result = await session.call_tool("trigger-elicitation-request", {})
        assert elicited and "Name: Ada" in tool_text(result)

        result = await session.call_tool("trigger-sampling-request", {"prompt": "hello", "maxTokens": 5})
        assert "sampled!" in tool_text(result) and "hello" in sampled[0]

        with anyio.fail_after(5):  # server-everything asks for roots by itself ~350 ms after initialized
            await roots_asked.wait()
        assert tmp_workspace.as_uri() in tool_text(await session.call_tool("get-roots-list", {}))


@pytest.mark.timeout(60)
async def test_memory_and_filesystem_servers_start(
    memory_cmd: list[str], filesystem_cmd: list[str], tmp_path: Path
) -> None:
    async with sdk_session(memory_cmd, env={"MEMORY_FILE_PATH": str(tmp_path / "memory.jsonl")}) as session:
        assert "create_entities" in {t.name for t in (await session.list_tools()).tools}
        graph = await session.call_tool("read_graph", {})
        assert not graph.is_error
    async with sdk_session(filesystem_cmd) as session:
        result = await session.call_tool("list_allowed_directories", {})
        assert filesystem_cmd[-1] in tool_text(result)


@pytest.mark.timeout(60)
def test_inspector_cli_lists_testserver_tools(inspector_cli_cmd: list[str], marker: str) -> None:
    argv = [*inspector_cli_cmd, sys.executable, str(TESTSERVER), f"--marker={marker}", "--method", "tools/list"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert {t["name"] for t in json.loads(done.stdout)["tools"]} == EXPECTED_TOOLS
