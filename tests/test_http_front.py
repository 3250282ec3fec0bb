"""``serve --http``: the Streamable HTTP front over real sockets on 127.0.0.1, a real broker and real servers.

What the spec (2025-11-25, "Transports > Streamable HTTP") asks of each request, every rejection with its status and
body, the limits under hostile clients (a 200 MB body, a head sent a byte a second, 500 slow clients, connection
caps), the session TTL, and real clients (the SDK's streamable HTTP client, the MCP Inspector CLI) listing and
calling tools through it. Each test starts its own broker with short limits (``serve --http-...`` options) so the
module stays fast; the broker and its servers are stopped by pid at teardown (``broker_env``, ``marker``).

The pure rules (Accept and Content-Type matching, JSON-RPC message kinds, the protocol version header) are tested
without I/O at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psutil
import pytest
from mcp import ClientSession, types
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from helpers import NODE_ENTRIES, count_server_processes, server_argv, tool_json, tool_text, wait_until_gone
from mcpshare.fdstream import DEFAULT_MAX_LINE_BYTES
from mcpshare.http_front import accepts, is_json, message_kind, version_problem
from mcpshare.http_limits import HttpLimits
from test_broker import BrokerEnv, control

pytestmark = pytest.mark.timeout(60)

ACCEPT = "application/json, text/event-stream"
VERSION = "2025-11-25"


def initialize_request(request_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
    }


@dataclass
class Front:
    """A broker serving ``--http`` with the test server (and server-everything) configured."""

    env: BrokerEnv
    base: str  # http://127.0.0.1:PORT/mcp/
    token: str
    pid: int

    @property
    def port(self) -> int:
        return int(self.base.split(":")[2].split("/")[0])

    def url(self, server: str = "test") -> str:
        return f"{self.base}{server}?cwd={self.env.root}"

    def headers(self, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}", "accept": ACCEPT, "content-type": "application/json", **extra}

    async def open_session(self, client: httpx2.AsyncClient, server: str = "test") -> str:
        """Initialize a session with raw requests (no GET stream, as a client that will vanish); return its id."""
        response = await client.post(self.url(server), json=initialize_request(), headers=self.headers())
        assert response.status_code == 200, response.text
        session = response.headers["mcp-session-id"]
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        notified = await client.post(self.url(server), json=initialized, headers=self.session_headers(session))
        assert notified.status_code == 202 and notified.content == b""
        assert notified.headers["content-length"] == "0"  # no body, not an empty chunked one
        return session

    def session_headers(self, session: str, **extra: str) -> dict[str, str]:
        return self.headers(**{"mcp-session-id": session, "mcp-protocol-version": VERSION, **extra})

    def rss(self) -> int:
        return psutil.Process(self.pid).memory_info().rss


async def start_front(env: BrokerEnv, marker: str, *options: str) -> Front:
    server = server_argv(marker=marker)
    servers: dict[str, Any] = {"test": {"command": server[0], "args": server[1:]}}
    everything = NODE_ENTRIES["server-everything"]
    if everything.is_file():
        servers["everything"] = {"command": "node", "args": [str(everything), "stdio"]}
    config = env.root / "servers.json"
    config.write_text(json.dumps({"mcpServers": servers}))
    env.start_broker("--config", str(config), "--http", "0", *options)
    pid = await env.wait_ready()
    status = control("status", env)
    assert status is not None and status["broker"]["http"]
    return Front(env, status["broker"]["http"], Path(env.paths.token).read_text().strip(), pid)


@pytest.fixture
async def front(broker_env: BrokerEnv, marker: str) -> Front:
    """A front with short timeouts, so the tests that wait for one stay quick."""
    return await start_front(
        broker_env, marker, "--http-header-timeout", "1.5", "--http-body-timeout", "1", "--http-max-header", "4096"
    )


@asynccontextmanager
async def sdk_client(url: str, token: str, **session_kwargs: Any) -> AsyncIterator[ClientSession]:
    """The SDK's streamable HTTP client, initialized (it opens its GET stream), with the bearer token."""
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write, **session_kwargs) as session,
    ):
        await session.initialize()
        yield session


def sse_messages(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:") and line[5:].strip()]


# ---------------------------------------------------------------------------------------------- real clients


async def test_the_sdk_client_lists_and_calls_tools_and_a_plain_answer_is_json(front: Front) -> None:
    """The SDK client works through the front; a plain call is answered with JSON, a call that reports progress
    with an SSE stream that carries the progress, then the answer."""
    with anyio.fail_after(30):
        async with sdk_client(front.url(), front.token) as session:
            assert {"echo", "whoami", "progress"} <= {tool.name for tool in (await session.list_tools()).tools}
            assert tool_text(await session.call_tool("echo", {"text": "hi"})) == "hi"
        async with httpx2.AsyncClient() as client:
            session_id = await front.open_session(client)
            headers = front.session_headers(session_id)
            call = {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "x"}},
            }
            plain = await client.post(front.url(), json=call, headers=headers)
            assert plain.status_code == 200 and plain.headers["content-type"] == "application/json"
            assert plain.json()["id"] == 7 and plain.json()["result"]["content"][0]["text"] == "x"
            params = {"name": "progress", "arguments": {"steps": 2}, "_meta": {"progressToken": "p"}}
            streamed = await client.post(
                front.url(), json={"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": params}, headers=headers
            )
            assert streamed.status_code == 200 and streamed.headers["content-type"] == "text/event-stream"
            messages = sse_messages(streamed.text)
            assert [m.get("method") for m in messages] == ["notifications/progress"] * 2 + [None]
            assert [m["params"]["progressToken"] for m in messages[:2]] == ["p", "p"]  # the client's own token
            assert messages[-1]["id"] == 8 and messages[-1]["result"]["content"][0]["text"] == "done"
            deleted = await client.delete(front.url(), headers=headers)
            assert deleted.status_code == 204
            assert (await client.post(front.url(), json=call, headers=headers)).status_code == 404


async def test_a_notification_no_request_owns_waits_for_the_get_stream(front: Front) -> None:
    """``tools/list_changed`` sent while a call runs relates to no request: the call's answer stays plain JSON, and
    the notification is the first event of the session's GET stream once the client opens it."""
    with anyio.fail_after(20):
        async with httpx2.AsyncClient() as client:
            session = await front.open_session(client)
            headers = front.session_headers(session)
            params = {"name": "add_tool", "arguments": {"name": "extra"}}
            call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": params}
            answered = await client.post(front.url(), json=call, headers=headers)
            assert answered.headers["content-type"] == "application/json"
            assert answered.json()["result"]["content"][0]["text"] == "added extra"
            async with client.stream("GET", front.url(), headers=headers) as stream:
                lines = stream.aiter_lines()
                while not (line := await anext(lines)).startswith("data:"):
                    pass
            assert json.loads(line[5:])["method"] == "notifications/tools/list_changed"


async def test_ending_a_session_answers_its_call_in_flight(front: Front) -> None:
    """DELETE while a call runs: the call's POST is answered at once with an error saying the session ended."""
    with anyio.fail_after(20):
        async with httpx2.AsyncClient() as client:
            session = await front.open_session(client)
            headers = front.session_headers(session)
            call = {
                "jsonrpc": "2.0",
                "id": 9,
                "method": "tools/call",
                "params": {"name": "sleep", "arguments": {"seconds": 30}},
            }
            answers: list[httpx2.Response] = []
            async with anyio.create_task_group() as tg:

                async def call_it() -> None:
                    answers.append(await client.post(front.url(), json=call, headers=headers))

                tg.start_soon(call_it)
                await anyio.sleep(0.5)
                assert (await client.delete(front.url(), headers=headers)).status_code == 204
    assert answers[0].status_code == 200
    error = answers[0].json()
    assert (
        error["id"] == 9
        and error["error"]["message"] == "mcpshare: session on MCP server 'test' closed: lease released"
    )


def test_the_inspector_cli_lists_and_calls_tools_over_http(
    broker_env: BrokerEnv, marker: str, inspector_cli_cmd: list[str], everything_cmd: list[str]
) -> None:
    """The MCP Inspector CLI (a Node client, the TS SDK's transport) in HTTP mode, against server-everything."""
    front = anyio.run(start_front, broker_env, marker)

    def inspector(*method: str) -> Any:
        done = subprocess.run(
            [
                *inspector_cli_cmd,
                "--transport",
                "http",
                "--server-url",
                front.url("everything"),
                "--header",
                f"Authorization: Bearer {front.token}",
                *method,
            ],
            capture_output=True,
            text=True,
            timeout=40,
            cwd=broker_env.root,
        )
        assert done.returncode == 0, done.stderr + done.stdout
        return json.loads(done.stdout)

    tools = {tool["name"] for tool in inspector("--method", "tools/list")["tools"]}
    assert {"echo", "get-sum", "trigger-long-running-operation"} <= tools
    called = inspector("--method", "tools/call", "--tool-name", "echo", "--tool-arg", "message=hi")
    assert called["content"][0]["text"] == "Echo: hi"


async def test_a_sampling_request_during_a_call_reaches_the_calling_client_only(front: Front) -> None:
    """Two HTTP clients on one server process: the server's sampling request, made while A's call runs, goes to
    A (on A's call's stream), never to B."""
    asked: dict[str, list[str]] = {"a": [], "b": []}

    def sampler(name: str) -> Any:
        async def sample(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
            content = params.messages[0].content
            asked[name].append(content.text if isinstance(content, types.TextContent) else "?")
            return types.CreateMessageResult(
                role="assistant", content=types.TextContent(type="text", text=f"sampled by {name}"), model="test"
            )

        return sample

    with anyio.fail_after(30):
        async with (
            sdk_client(front.url(), front.token, sampling_callback=sampler("a")) as a,
            sdk_client(front.url(), front.token, sampling_callback=sampler("b")) as b,
        ):
            pid = tool_json(await a.call_tool("whoami", {}))["pid"]
            assert tool_json(await b.call_tool("whoami", {}))["pid"] == pid  # one process serves both
            assert tool_text(await a.call_tool("sample", {"prompt": "for a"})) == "sampled by a"
            assert tool_text(await b.call_tool("sample", {"prompt": "for b"})) == "sampled by b"
    assert asked == {"a": ["for a"], "b": ["for b"]}


# ---------------------------------------------------------------------------------------------- the spec's rules


async def test_every_rejection_has_its_status_and_a_clear_body(front: Front) -> None:
    """Each rule of the transport, and each limit, answered with its HTTP status and a JSON-RPC error saying why."""
    url = front.url()
    good = front.headers()
    init = initialize_request()
    with anyio.fail_after(30):
        async with httpx2.AsyncClient() as client:
            del client.headers["accept"]  # httpx's default Accept: */* would list both types
            session = await front.open_session(client)
            in_session = front.session_headers(session)
            call = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}

            async def post(body: Any = init, *, content: bytes | None = None, **headers: str) -> httpx2.Response:
                sent = {**good, **headers}
                for name in [name for name, value in headers.items() if value == ""]:
                    del sent[name]
                if content is not None:
                    return await client.post(url, content=content, headers=sent)
                return await client.post(url, json=body, headers=sent)

            cases: list[tuple[str, httpx2.Response, int, str]] = [
                ("Host", await post(host="evil.example"), 403, "Host"),
                ("Origin", await post(origin="http://evil.example"), 403, "cross-origin"),
                ("no Accept", await post(accept=""), 406, "must list application/json and text/event-stream"),
                ("Accept json only", await post(accept="application/json"), 406, "text/event-stream"),
                ("Accept SSE only", await post(accept="text/event-stream"), 406, "application/json"),
                ("text/plain", await post(**{"content-type": "text/plain"}), 415, "must be application/json"),
                (
                    "no Content-Type",
                    await post(content=json.dumps(init).encode(), **{"content-type": ""}),
                    415,
                    "must be application/json",
                ),
                ("not JSON", await post(content=b"{nope"), 400, "Parse error"),
                ("not JSON-RPC", await post({"hello": 1}), 400, "not a JSON-RPC 2.0 message"),
                ("a batch", await post([init]), 400, "one JSON-RPC message per POST"),
                ("no session", await post(call), 400, "MCP-Session-Id header is required"),
                (
                    "unknown session",
                    await post(call, **{"mcp-session-id": "f" * 32}),
                    404,
                    "unknown or expired session",
                ),
                (
                    "bad version",
                    await post(call, **{**in_session, "mcp-protocol-version": "1999-01-01"}),
                    400,
                    "unsupported MCP-Protocol-Version",
                ),
                (
                    "other version",
                    await post(call, **{**in_session, "mcp-protocol-version": "2025-06-18"}),
                    400,
                    "differs from the version this session negotiated (2025-11-25)",
                ),
                (
                    "stateless era",  # a 2026-07-28 request belongs to no session
                    await post(call, **{**in_session, "mcp-protocol-version": "2026-07-28"}),
                    400,
                    "is stateless: send it without an MCP-Session-Id",
                ),
                ("initialize again", await post(init, **in_session), 400, "already initialized"),
                ("null request id", await post({**call, "id": None}, **in_session), 400, "not a JSON-RPC 2.0 message"),
                (
                    "unknown server",
                    await client.post(front.url("nope"), json=init, headers=good),
                    404,
                    "no MCP server named 'nope'",
                ),
                ("other path", await client.post(front.base + "a/b", json=init, headers=good), 404, "no MCP endpoint"),
                ("PUT", await client.put(url, headers=good), 405, "PUT is not a Streamable HTTP method"),
                ("GET no session", await client.get(url, headers=good), 400, "GET needs an MCP-Session-Id"),
                (
                    "GET no SSE",
                    await client.get(url, headers={**in_session, "accept": "application/json"}),
                    406,
                    "text/event-stream",
                ),
                ("DELETE no session", await client.delete(url, headers=good), 400, "DELETE needs an MCP-Session-Id"),
                (
                    "DELETE unknown",
                    await client.delete(url, headers={**good, "mcp-session-id": "0" * 32}),
                    404,
                    "unknown or expired session",
                ),
                (
                    "too large",
                    await post(content=b" " * (DEFAULT_MAX_LINE_BYTES + 1)),
                    413,
                    f"larger than the limit of {DEFAULT_MAX_LINE_BYTES} bytes (--http-max-body)",
                ),
                ("head too large", await post(**{"x-big": "y" * 5000}), 431, "limit of 4096 bytes (--http-max-header)"),
            ]
            # Answered before the body was read: the connection cannot carry another request, and says so.
            before_body = {"Host", "Origin", "no Accept", "Accept json only", "Accept SSE only", "text/plain"}
            before_body |= {"no Content-Type", "unknown session", "bad version", "other version", "stateless era"}
            before_body |= {"other path", "PUT", "too large", "DELETE unknown"}
            for name, response, status, text in cases:
                assert response.status_code == status, (name, response.status_code, response.text)
                closing = response.headers.get("connection") == "close"
                assert closing == (name in before_body or name == "head too large"), (name, response.headers)
                assert response.headers["content-type"] == "application/json", name
                error = response.json()
                assert error["jsonrpc"] == "2.0" and error["error"]["code"] in (-32600, -32700), name
                assert text in error["error"]["message"], (name, error)
            assert (
                dict((name, response) for name, response, _, _ in cases)["PUT"].headers["allow"] == "GET, POST, DELETE"
            )
            async with client.stream("GET", url, headers=in_session) as stream:  # the GET stream: one per session
                assert stream.status_code == 200 and stream.headers["content-type"] == "text/event-stream"
                second = await client.get(url, headers=in_session)
                assert second.status_code == 409 and "already open" in second.json()["error"]["message"]
            # The session still works after all that.
            listed = await post(call, **in_session)
            assert listed.status_code == 200 and "tools" in listed.json()["result"]


async def test_a_wrong_token_and_no_token_get_the_same_answer(front: Front) -> None:
    """401 with ``WWW-Authenticate: Bearer``; nothing in the answer tells a wrong token from a missing one."""
    answers = []
    async with httpx2.AsyncClient() as client:
        for authorization in (None, "Bearer wrong", f"Bearer {front.token[:-1]}", "Basic abc", front.token):
            headers = front.headers()
            if authorization is None:
                del headers["authorization"]
            else:
                headers["authorization"] = authorization
            response = await client.post(front.url(), json=initialize_request(), headers=headers)
            answers.append(
                (
                    response.status_code,
                    sorted((k, v) for k, v in response.headers.items() if k != "date"),
                    response.content,
                )
            )
    assert answers[0][0] == 401
    assert ("www-authenticate", 'Bearer realm="mcpshare"') in answers[0][1]
    assert json.loads(answers[0][2])["error"]["message"].startswith(
        "Unauthorized: send 'Authorization: Bearer <token>'"
    )
    assert all(answer == answers[0] for answer in answers), answers


async def test_a_body_that_is_too_slow_gets_408(front: Front) -> None:
    """A client that stops sending its body mid-way: 408 after the body timeout (1 s here), then closed."""
    head = (
        f"POST /mcp/test HTTP/1.1\r\nHost: 127.0.0.1:{front.port}\r\nAuthorization: Bearer {front.token}\r\n"
        f"Accept: {ACCEPT}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", front.port) as stream:
            started = time.monotonic()
            await stream.send(head.encode() + b'{"jsonrpc":')
            answer = await _read_until_closed(stream)
            elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 1 s (--http-body-timeout)" in answer
    assert 0.9 <= elapsed < 1 + 3.0, elapsed


async def _read_until_closed(stream: Any) -> bytes:
    data = b""
    while True:
        try:
            data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            return data


# ---------------------------------------------------------------------------------------------- limits under attack


def _peak_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        stop.wait(0.01)


@pytest.fixture
def rss_watch(front: Front) -> Iterator[list[int]]:
    """The broker's peak RSS, sampled every 10 ms by a thread while the test runs."""
    peak = [front.rss()]
    stop = threading.Event()
    thread = threading.Thread(target=_peak_rss, args=(front.pid, stop, peak), daemon=True)
    thread.start()
    yield peak
    stop.set()
    thread.join(5)


async def test_a_200_mb_body_gets_413_while_the_broker_stays_under_300_mb(front: Front, rss_watch: list[int]) -> None:
    """200 MB, chunked (counted as it arrives) and with a declared length (refused before reading): 413 each time,
    the broker's RSS (psutil, sampled every 10 ms) stays under 300 MB, and the session still works."""
    size = 200 * 1024 * 1024
    chunk = b" " * (1024 * 1024)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(chunk)):
            yield chunk

    with anyio.fail_after(40):
        async with httpx2.AsyncClient(timeout=30) as client:
            session = await front.open_session(client)
            for extra in ({}, {"content-length": str(size)}):
                response = await client.post(
                    front.url(), content=body(), headers=front.session_headers(session, **extra)
                )
                assert response.status_code == 413, response.text
                assert "is larger than the limit of 16777216 bytes" in response.json()["error"]["message"]
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "ok"}},
            }
            after = await client.post(front.url(), json=call, headers=front.session_headers(session))
            assert after.json()["result"]["content"][0]["text"] == "ok"
    assert rss_watch[0] < 300 * 1024 * 1024, f"broker peak RSS {rss_watch[0] / 1e6:.0f} MB"


async def test_a_head_sent_one_byte_a_second_is_closed_within_the_header_timeout(front: Front) -> None:
    """Slowloris: a client that sends its request head one byte a second gets 408 and is closed when the header
    timeout (1.5 s here) is up, not when it is done."""
    head = f"POST /mcp/test HTTP/1.1\r\nHost: 127.0.0.1:{front.port}\r\n".encode()
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", front.port) as stream:
            started = time.monotonic()
            answer = b""
            for byte in head:
                try:
                    await stream.send(bytes([byte]))
                except (anyio.BrokenResourceError, ConnectionResetError):
                    break
                with anyio.move_on_after(1.0):
                    answer += await _read_until_closed(stream)
                    break
            elapsed = time.monotonic() - started
            # The client goes on dribbling: the broker drops the connection for good (no lingering for a head).
            for _ in range(8):
                status = control("status", front.env)
                assert status is not None
                if status["http_front"]["connections"]["pending"] == 0:
                    break
                with contextlib.suppress(anyio.BrokenResourceError, ConnectionResetError, BrokenPipeError):
                    await stream.send(b"x")
                await anyio.sleep(0.5)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"did not arrive within 1.5 s (--http-header-timeout)" in answer
    assert 1.4 <= elapsed < 1.5 + 3.0, elapsed  # the timeout, and slack for a busy machine
    assert status["http_front"]["connections"]["pending"] == 0
    assert status["http_front"]["connections"]["rejected"]["header timeout"] == 1


async def test_an_idle_keep_alive_connection_is_closed(broker_env: BrokerEnv, marker: str) -> None:
    front = await start_front(broker_env, marker, "--http-keep-alive", "0.5")
    request = (
        f"DELETE /mcp/test HTTP/1.1\r\nHost: 127.0.0.1:{front.port}\r\nAuthorization: Bearer {front.token}\r\n\r\n"
    )
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", front.port) as stream:
            await stream.send(request.encode())
            started = time.monotonic()
            answer = await _read_until_closed(stream)
            elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 400 ")  # DELETE without a session
    assert 0.4 <= elapsed < 0.5 + 3.0, elapsed


async def test_500_slow_clients_do_not_stop_a_real_sdk_client(broker_env: BrokerEnv, marker: str) -> None:
    """500 connections that dribble their request heads (long header timeout: only the pending cap limits them):
    the broker holds at most ``--http-max-pending`` of them, closing the oldest, and a real SDK client works."""
    front = await start_front(broker_env, marker, "--http-header-timeout", "30", "--http-max-pending", "16")
    head = f"POST /mcp/test HTTP/1.1\r\nHost: 127.0.0.1:{front.port}\r\nX-Slow: ".encode()
    sockets: list[socket.socket] = []
    try:
        for _ in range(500):
            sock = socket.create_connection(("127.0.0.1", front.port))
            sock.send(head[:1])
            sockets.append(sock)
        with anyio.fail_after(30):
            async with sdk_client(front.url(), front.token) as session:
                for index in range(20):
                    for sock in sockets[index::20]:
                        try:
                            sock.send(b"y")
                        except OSError:
                            pass
                    assert tool_text(await session.call_tool("echo", {"text": str(index)})) == str(index)
                held = [
                    c
                    for c in psutil.Process(front.pid).net_connections("tcp")
                    if c.laddr and c.laddr.port == front.port
                ]
                established = [c for c in held if c.status == psutil.CONN_ESTABLISHED]
        assert len(established) <= 16 + 8, len(established)  # the pending cap, plus the SDK client's own
        closed = sum(1 for sock in sockets if _closed_by_peer(sock))
        assert closed >= 500 - 16 - 8, closed
        status = control("status", broker_env)
        assert status is not None
        assert status["http_front"]["connections"]["rejected"]["pending connection evicted"] >= 476
    finally:
        for sock in sockets:
            sock.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def test_authenticated_connections_are_capped(broker_env: BrokerEnv, marker: str) -> None:
    """``--http-max-connections 2``: a request that would authenticate a third connection gets 503."""
    front = await start_front(broker_env, marker, "--http-max-connections", "2")
    limits = httpx2.Limits(max_keepalive_connections=1, max_connections=1)
    with anyio.fail_after(20):
        async with (
            httpx2.AsyncClient(limits=limits) as one,
            httpx2.AsyncClient(limits=limits) as two,
            httpx2.AsyncClient(limits=limits) as three,
        ):
            for client in (one, two):
                assert (
                    await client.post(front.url(), json=initialize_request(), headers=front.headers())
                ).status_code == 200
            refused = await three.post(front.url(), json=initialize_request(), headers=front.headers())
            assert refused.status_code == 503
            assert refused.json()["error"]["message"] == "too many HTTP connections (at most 2; --http-max-connections)"
            await one.aclose()
            await anyio.sleep(0.2)  # the first connection closes
            assert (
                await three.post(front.url(), json=initialize_request(), headers=front.headers())
            ).status_code == 200


# ---------------------------------------------------------------------------------------------- sessions


async def test_an_abandoned_session_releases_its_lease_after_the_ttl(broker_env: BrokerEnv, marker: str) -> None:
    """A client that vanishes without DELETE: its session is shown idle, ends after the TTL (1 s here), its lease is
    released and the server stops after the idle grace (0.3 s); the id then gets 404. A session whose client holds
    its GET stream open (the SDK client does) is live and does not expire."""
    front = await start_front(broker_env, marker, "--http-session-ttl", "1")
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    with anyio.fail_after(30):
        async with httpx2.AsyncClient() as client:
            session = await front.open_session(client)
            answered = await client.post(front.url(), json=call, headers=front.session_headers(session))
            pid = json.loads(answered.json()["result"]["content"][0]["text"])["pid"]
        abandoned = time.monotonic()
        status = control("status", broker_env)
        assert status is not None and [s["state"] for s in status["http_front"]["sessions"]] == ["idle"]
        assert status["servers"][0]["clients"] == 1 and status["connections"] == 0
        assert await wait_until_gone(pid, timeout=8) == []
        stopped_after = time.monotonic() - abandoned
        assert 0.9 <= stopped_after < 1 + 0.25 + 0.3 + 4, stopped_after  # TTL, expiry tick, idle grace, slack
        assert count_server_processes(marker) == []
        status = control("status", broker_env)
        assert status is not None and status["http_front"]["sessions"] == [] and status["servers"] == []
        async with httpx2.AsyncClient() as client:
            gone = await client.post(front.url(), json=call, headers=front.session_headers(session))
            assert gone.status_code == 404
        async with sdk_client(front.url(), front.token) as live:
            await live.call_tool("whoami", {})
            await anyio.sleep(2.5)  # well past the TTL, with its GET stream open
            status = control("status", broker_env)
            assert status is not None and [s["state"] for s in status["http_front"]["sessions"]] == ["live"]
            assert tool_text(await live.call_tool("echo", {"text": "still here"})) == "still here"


async def test_status_shows_http_sessions_apart_from_clients(broker_env: BrokerEnv, marker: str) -> None:
    """``mcpshare status`` lists the HTTP sessions (live or idle) next to the shim connections."""
    front = await start_front(broker_env, marker)
    with anyio.fail_after(30):
        async with httpx2.AsyncClient() as client:
            await front.open_session(client)
            done = await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    [*broker_env.shim("x")[:3], "status"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                    env=broker_env.run_env(),
                )
            )
    assert done.returncode == 0, done.stderr
    assert "0 shim connection(s); 1 HTTP session(s): 0 live, 1 idle (ended after 600 s idle)" in done.stdout
    assert "HTTP sessions" in done.stdout and "test" in done.stdout


async def test_stopping_the_broker_ends_http_streams(broker_env: BrokerEnv, marker: str) -> None:
    """SIGTERM with an SDK client attached (GET stream open): the broker exits 0 and its server is stopped."""
    front = await start_front(broker_env, marker)
    with anyio.fail_after(30):
        async with sdk_client(front.url(), front.token) as session:
            await session.call_tool("whoami", {})
            os.kill(front.pid, signal.SIGTERM)
            broker = broker_env.explicit[-1]
            assert await anyio.to_thread.run_sync(broker.wait) == 0
    assert count_server_processes(marker) == []


# ---------------------------------------------------------------------------------------------- pure rules


@pytest.mark.parametrize(
    ("header", "json_ok", "sse_ok"),
    [
        (b"application/json, text/event-stream", True, True),
        (b"text/event-stream;q=0.9, application/json", True, True),
        (b"*/*", True, True),
        (b"application/*, text/*", True, True),
        (b"application/json", True, False),
        (b"application/json, text/event-stream;q=0", True, False),
        (b"text/html", False, False),
        (None, False, False),
    ],
)
def test_accept_header_matching(header: bytes | None, json_ok: bool, sse_ok: bool) -> None:
    assert accepts(header, "application/json") is json_ok
    assert accepts(header, "text/event-stream") is sse_ok


def test_content_type_and_message_kinds() -> None:
    assert is_json(b"application/json") and is_json(b"Application/JSON; charset=utf-8")
    assert not is_json(b"text/plain") and not is_json(None) and not is_json(b"application/jsonx")
    assert message_kind({"jsonrpc": "2.0", "id": 1, "method": "ping"}) == "request"
    assert message_kind({"jsonrpc": "2.0", "method": "notifications/initialized"}) == "notification"
    assert message_kind({"jsonrpc": "2.0", "id": "a", "result": {}}) == "response"
    assert message_kind({"jsonrpc": "2.0", "id": None, "error": {"code": 1, "message": "x"}}) == "response"
    for bad in (
        {"hello": 1},
        {"jsonrpc": "1.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": True, "method": "ping"},
        {"jsonrpc": "2.0", "id": [1], "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}},
        {"jsonrpc": "2.0", "id": 1},
        [{"jsonrpc": "2.0", "method": "x"}],
        "text",
    ):
        assert message_kind(bad) is None, bad


def test_protocol_version_header_rules() -> None:
    assert version_problem(None, VERSION) is None  # the spec: assume the negotiated version
    assert version_problem(b"2025-11-25", VERSION) is None
    assert "differs" in (version_problem(b"2025-06-18", VERSION) or "")
    assert "is stateless" in (version_problem(b"2026-07-28", VERSION) or "")
    assert "unsupported" in (version_problem(b"banana", VERSION) or "")


def test_the_body_limit_defaults_to_the_line_limit() -> None:
    assert HttpLimits().max_body == DEFAULT_MAX_LINE_BYTES
    with pytest.raises(ValueError, match="max_pending must be at least 1"):
        HttpLimits(max_pending=0)


def test_serve_help_shows_every_http_limit_with_its_default() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcpshare", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    limits = HttpLimits()
    for option, default in (
        ("--http-max-body", limits.max_body),
        ("--http-max-header", limits.max_header),
        ("--http-header-timeout", limits.header_timeout),
        ("--http-body-timeout", limits.body_timeout),
        ("--http-keep-alive", limits.keep_alive),
        ("--http-max-connections", limits.max_connections),
        ("--http-max-pending", limits.max_pending),
        ("--http-session-ttl", limits.session_ttl),
    ):
        after = text.split(option, 1)[1]
        assert f"[default: {default}]" in after.split("--http-", 1)[0], (option, after[:200])


# ---------------------------------------------------------------------------------------------- 2026-07-28


async def test_stateless_requests_are_served_and_their_questions_come_back_as_input_required(front: Front) -> None:
    """The SDK's Client in auto mode over HTTP: server/discover, then each request a POST of its own with no
    session. Two such clients count their ids from 1 alike and each gets its own answers; a question the handshake
    server asks during a call comes back in the call's result, and the Client's retry gets the answer."""
    from mcp import Client

    def answerer(name: str) -> Any:
        async def elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
            return types.ElicitResult(action="accept", content={"answer": f"{name} ({params.message})"})

        return elicit

    results: dict[str, str] = {}
    with anyio.fail_after(60):
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {front.token}"}) as http_a,
            create_mcp_http_client(headers={"Authorization": f"Bearer {front.token}"}) as http_b,
            Client(
                streamable_http_client(front.url(), http_client=http_a), mode="auto", elicitation_callback=answerer("a")
            ) as a,
            Client(
                streamable_http_client(front.url(), http_client=http_b), mode="auto", elicitation_callback=answerer("b")
            ) as b,
        ):
            assert a.session.protocol_version == b.session.protocol_version == "2026-07-28"

            async def ask(name: str, client: Any) -> None:
                results[name] = tool_text(await client.call_tool("ask", {"question": f"q{name}"}))

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask, "a", a)
                tg.start_soon(ask, "b", b)
            assert tool_text(await a.call_tool("echo", {"text": "plain"})) == "plain"
    assert results == {"a": "accept:a (qa)", "b": "accept:b (qb)"}
    status = control("status", front.env)
    assert status is not None and [row["asks_declined"] for row in status["servers"]] == [0]


async def test_eight_http_clients_sample_at_once_and_each_gets_its_own(front: Front) -> None:
    """Eight HTTP sessions on server-everything call its sampling tool at once (after one call alone): every
    sampler sees only its own prompt, every client its own answer, nothing declined."""
    seen: list[tuple[str, str]] = []

    def sampler(name: str) -> Any:
        async def sample(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
            content = params.messages[0].content
            seen.append((name, content.text if isinstance(content, types.TextContent) else "?"))
            return types.CreateMessageResult(
                role="assistant", content=types.TextContent(type="text", text=name), model="m"
            )

        return sample

    results: dict[str, str] = {}
    url = front.url("everything")
    with anyio.fail_after(90):
        async with sdk_client(url, front.token, sampling_callback=sampler("first")) as first:
            await first.call_tool("trigger-sampling-request", {"prompt": "alone"})
        seen.clear()

        async def one(index: int) -> None:
            async with sdk_client(url, front.token, sampling_callback=sampler(f"h{index}")) as session:
                results[f"h{index}"] = tool_text(
                    await session.call_tool("trigger-sampling-request", {"prompt": f"from h{index}"})
                )

        async with anyio.create_task_group() as tg:
            for index in range(8):
                tg.start_soon(one, index)
    assert all(f'"text": "{name}"' in text for name, text in results.items()) and len(results) == 8
    assert sorted(seen) == sorted((f"h{i}", f"Resource trigger-sampling-request context: from h{i}") for i in range(8))
    status = control("status", front.env)
    assert status is not None
    assert [row["asks_declined"] for row in status["servers"] if row["server"] == "everything"] == [0]


async def test_metrics_are_prometheus_text_behind_the_token(front: Front) -> None:
    """``GET /metrics`` answers the broker's counters in the Prometheus text format, parsed here with
    prometheus-client's own parser: the calls a session made are counted on its server's row. Without the token it
    is 401, like the endpoints; only GET is allowed."""
    from prometheus_client.parser import text_string_to_metric_families

    metrics_url = front.base.removesuffix("/mcp/") + "/metrics"
    with anyio.fail_after(30):
        async with sdk_client(front.url(), front.token) as session:
            for n in range(3):
                assert tool_text(await session.call_tool("echo", {"text": str(n)})) == str(n)
            async with httpx2.AsyncClient() as client:
                auth = {"authorization": f"Bearer {front.token}"}
                answer = await client.get(metrics_url, headers=auth)
                assert (await client.get(metrics_url)).status_code == 401
                assert (await client.post(metrics_url, headers=auth)).status_code == 405
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (sample.name, sample.labels.get("server")): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }
    assert samples[("mcpshare_server_processes", "test")] == 1
    assert samples[("mcpshare_server_clients", "test")] == 1
    assert samples[("mcpshare_server_calls_total", "test")] >= 3  # three calls, plus the session's tools/list
    assert (
        samples[("mcpshare_server_call_duration_seconds_count", "test")]
        == samples[("mcpshare_server_calls_total", "test")]
    )
    assert samples[("mcpshare_server_call_duration_seconds_sum", "test")] > 0
    assert samples[("mcpshare_server_rss_bytes", "test")] > 1_000_000
    assert samples[("mcpshare_broker_sessions", None)] >= 0
    assert ("mcpshare_broker_refused_total", None) in samples
