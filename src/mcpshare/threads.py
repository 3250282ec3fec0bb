"""ThreadManager and Thread: the host's conversations driving the pool.

A host keeps threads loaded, unloads them when nobody listens, archives, unarchives and resumes them, reloads its
MCP config and moves threads to another working directory or sandbox. Each operation acquires or releases exactly
the leases it needs: stdio servers are shared through the pool, Streamable HTTP servers get one connection per
thread (a shared HTTP client would be a bottleneck and would mix credentials).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc
import mcp_types as types
from mcp import ClientSession
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from mcpshare.config import HttpServerConfig, McpConfig, ServerConfig, StdioServerConfig
from mcpshare.naming import assign_names
from mcpshare.pool import DEFAULT_IDLE_GRACE, BackendInfo, BackendPool, Lease
from mcpshare.session import open_session

logger = logging.getLogger("mcpshare.threads")

ThreadState = Literal["loaded", "unloaded", "archived", "closed"]

ElicitationHandler = Callable[[str, types.ElicitRequestParams], Awaitable[types.ElicitResult | types.ErrorData]]
SamplingHandler = Callable[
    [str, types.CreateMessageRequestParams],
    Awaitable[types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData],
]
RootsHandler = Callable[[str], Awaitable[types.ListRootsResult | types.ErrorData]]
LoggingHandler = Callable[[str, types.LoggingMessageNotificationParams], Awaitable[None]]
ProgressHandler = Callable[[str, str, float, float | None, str | None], Awaitable[None]]
NotificationHandler = Callable[[str, types.ServerNotification], Awaitable[None]]


class ThreadError(RuntimeError):
    """A thread operation that cannot be done (unknown or closed thread, wrong state)."""


class UnknownServerError(KeyError):
    """A server name that is not configured (or not enabled) for this thread."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown server"


class UnknownToolError(KeyError):
    """A tool name that no server of the thread offers."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown tool"


class ToolTimeoutError(TimeoutError):
    """A tool call did not finish within its timeout; it was cancelled at the server."""


@dataclass(frozen=True, kw_only=True)
class ThreadHandlers:
    """Per-thread callbacks for what servers send or ask. Each takes the server name first.

    A thread without an elicitation handler declines elicitations addressed to it; without a sampling handler it
    answers sampling requests with an error. Roots asked by a shared (stdio) server are answered from its
    workspace by the pool; ``roots`` answers the thread's own HTTP servers (default: the thread's cwd).
    """

    elicitation: ElicitationHandler | None = None
    sampling: SamplingHandler | None = None
    roots: RootsHandler | None = None
    logging: LoggingHandler | None = None
    progress: ProgressHandler | None = None
    notification: NotificationHandler | None = None
    log_level: types.LoggingLevel | None = None


@dataclass(frozen=True)
class QualifiedTool:
    """One tool as a thread offers it to a model."""

    name: str
    server: str
    tool: types.Tool


@dataclass(frozen=True)
class ThreadInfo:
    id: str
    state: ThreadState
    cwd: str
    sandbox: str | None
    subscribers: int
    servers: dict[str, str]  # server -> "shared pid N" / "http" / "error: ..."


@dataclass(frozen=True)
class Snapshot:
    backends: list[BackendInfo]
    threads: list[ThreadInfo]
    http_connections: int


@dataclass(eq=False)
class _Connection:
    """One thread's session with one server, held open by a task the manager owns."""

    server: str
    config: ServerConfig
    session: ClientSession | None = None
    lease: Lease | None = None
    closing: anyio.Event = field(default_factory=anyio.Event)
    closed: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None

    @property
    def shared(self) -> bool:
        return isinstance(self.config, StdioServerConfig)


class Thread:
    """One conversation's view over its servers: pooled stdio plus its own HTTP connections."""

    def __init__(
        self, manager: ThreadManager, thread_id: str, *, cwd: str, sandbox: str | None, handlers: ThreadHandlers
    ) -> None:
        self.manager = manager
        self.id = thread_id
        self.cwd = cwd
        self.sandbox = sandbox
        self.handlers = handlers
        self.state: ThreadState = "unloaded"
        self.subscribers = 0
        self._connections: dict[str, _Connection] = {}
        self._connect_locks: dict[str, anyio.Lock] = {}
        self._tools: dict[str, QualifiedTool] | None = None

    def __repr__(self) -> str:
        return f"<Thread {self.id} {self.state}>"

    # ------------------------------------------------------------------ servers

    @property
    def servers(self) -> dict[str, ServerConfig]:
        """The enabled servers this thread can use."""
        return self.manager.config.enabled()

    def _check_loaded(self) -> None:
        if self.state != "loaded":
            raise ThreadError(f"thread {self.id} is {self.state}; resume it first")

    def _server_config(self, server: str) -> ServerConfig:
        servers = self.servers
        if server not in servers:
            known = ", ".join(sorted(servers)) or "none"
            raise UnknownServerError(f"thread {self.id}: no enabled MCP server named {server!r} (configured: {known})")
        return servers[server]

    async def session(self, server: str) -> ClientSession:
        """This thread's ClientSession for ``server`` (connected on first use)."""
        self._check_loaded()
        config = self._server_config(server)
        lock = self._connect_locks.setdefault(server, anyio.Lock())
        async with lock:
            conn = self._connections.get(server)
            if conn is not None and conn.session is not None and not conn.closed.is_set():
                return conn.session
            conn = _Connection(server, config)
            await self.manager._open(self, conn)
            self._connections[server] = conn
            self._tools = None
            assert conn.session is not None
            return conn.session

    async def connect(self, servers: list[str] | None = None) -> dict[str, BaseException]:
        """Connect to ``servers`` (default: all enabled) concurrently; returns the failures by server name.

        A failing server does not fail the thread: its error is returned here and raised on use.
        """
        names = list(self.servers) if servers is None else servers
        errors: dict[str, BaseException] = {}

        async def one(name: str) -> None:
            try:
                await self.session(name)
            except Exception as exc:
                errors[name] = exc

        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(one, name)
        return errors

    async def _disconnect(self, server: str) -> None:
        conn = self._connections.pop(server, None)
        self._tools = None
        if conn is not None:
            conn.closing.set()
            with anyio.CancelScope(shield=True):
                await conn.closed.wait()

    async def _disconnect_all(self) -> None:
        for server in list(self._connections):
            await self._disconnect(server)

    # ------------------------------------------------------------------ tools

    async def list_tools(self) -> list[QualifiedTool]:
        """Every tool of every enabled server, qualified as ``mcp__<server>__<tool>`` and filtered per config.

        Servers that fail to connect are left out (and logged); use :meth:`connect` to see why.
        """
        self._check_loaded()
        if self._tools is not None:
            return list(self._tools.values())
        listed: dict[str, list[types.Tool]] = {}

        async def one(server: str) -> None:
            try:
                session = await self.session(server)
                listed[server] = await _all_tools(session)
            except Exception as exc:
                logger.warning("thread %s: server %r unavailable: %s", self.id, server, exc)

        async with anyio.create_task_group() as tg:
            for server in self.servers:
                tg.start_soon(one, server)
        by_pair: dict[tuple[str, str], tuple[str, types.Tool]] = {}
        for server, tools in listed.items():
            config = self.servers[server]
            for tool in tools:
                if _allowed(config, tool.name):
                    by_pair[(server, tool.name)] = (server, tool)
        names = assign_names(by_pair)
        self._tools = {
            name: QualifiedTool(name, server, by_pair[(server, tool)][1]) for name, (server, tool) in names.items()
        }
        return sorted(self._tools.values(), key=lambda t: t.name)

    async def resolve_tool(self, name: str) -> tuple[str, str]:
        """(server, tool) for a qualified name; raises :class:`UnknownToolError` with the close matches."""
        if self._tools is None or name not in self._tools:
            self._tools = None
            await self.list_tools()
        assert self._tools is not None
        tool = self._tools.get(name)
        if tool is None:
            import difflib

            close = difflib.get_close_matches(name, list(self._tools), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownToolError(f"thread {self.id}: no tool named {name!r}{hint}")
        return tool.server, tool.tool.name

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressHandler | None = None,
    ) -> types.CallToolResult:
        """Call a qualified tool. Default timeout: the server's ``tool_timeout_sec``.

        On timeout, or when the caller is cancelled, the server gets ``notifications/cancelled`` for this
        request only; other threads' calls on the same process go on.
        """
        self._check_loaded()
        server, tool = await self.resolve_tool(name)
        config = self._server_config(server)
        try:
            import json

            json.dumps(arguments if arguments is not None else {})
        except (TypeError, ValueError) as exc:
            raise TypeError(f"arguments for {name!r} are not JSON-serialisable: {exc}") from exc
        session = await self.session(server)
        limit = config.tool_timeout_sec if timeout is None else timeout
        handler = progress or self.handlers.progress

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            if handler is not None:
                await handler(server, tool, value, total, message)

        try:
            result = await session.call_tool(
                tool,
                dict(arguments) if arguments is not None else None,
                read_timeout_seconds=limit,
                progress_callback=on_progress if handler is not None else None,
            )
        except MCPError as exc:
            if exc.code == types.REQUEST_TIMEOUT:
                raise ToolTimeoutError(
                    f"tool {name!r} ({server}/{tool}) timed out after {limit:g} s and was cancelled"
                ) from exc
            raise
        assert isinstance(result, types.CallToolResult)
        return result

    # ------------------------------------------------------------------ resources, prompts, completion

    async def list_resources(self, server: str) -> types.ListResourcesResult:
        return await (await self.session(server)).list_resources()

    async def list_resource_templates(self, server: str) -> types.ListResourceTemplatesResult:
        return await (await self.session(server)).list_resource_templates()

    async def read_resource(self, server: str, uri: str) -> types.ReadResourceResult:
        result = await (await self.session(server)).read_resource(uri)
        assert isinstance(result, types.ReadResourceResult)
        return result

    async def subscribe_resource(self, server: str, uri: str) -> None:
        await (await self.session(server)).subscribe_resource(uri)

    async def unsubscribe_resource(self, server: str, uri: str) -> None:
        await (await self.session(server)).unsubscribe_resource(uri)

    async def list_prompts(self, server: str) -> types.ListPromptsResult:
        return await (await self.session(server)).list_prompts()

    async def get_prompt(
        self, server: str, name: str, arguments: dict[str, str] | None = None
    ) -> types.GetPromptResult:
        result = await (await self.session(server)).get_prompt(name, arguments)
        assert isinstance(result, types.GetPromptResult)
        return result

    async def complete(
        self,
        server: str,
        ref: types.ResourceTemplateReference | types.PromptReference,
        argument: dict[str, str],
    ) -> types.CompleteResult:
        return await (await self.session(server)).complete(ref, argument)

    # ------------------------------------------------------------------ handlers as SDK callbacks

    def _callbacks(self, server: str) -> dict[str, Any]:
        handlers = self.handlers
        thread = self

        async def elicitation(
            context: ClientRequestContext, params: types.ElicitRequestParams
        ) -> types.ElicitResult | types.ErrorData:
            if handlers.elicitation is None:
                return types.ElicitResult(action="decline")
            return await handlers.elicitation(server, params)

        async def sampling(
            context: ClientRequestContext, params: types.CreateMessageRequestParams
        ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
            if handlers.sampling is None:
                return types.ErrorData(code=types.INVALID_REQUEST, message=f"thread {thread.id} does not sample")
            return await handlers.sampling(server, params)

        async def roots(context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
            if handlers.roots is not None:
                return await handlers.roots(server)
            from pathlib import Path

            return types.ListRootsResult(roots=[types.Root(uri=Path(thread.cwd).as_uri(), name=Path(thread.cwd).name)])

        async def logging_callback(params: types.LoggingMessageNotificationParams) -> None:
            if handlers.logging is not None:
                await handlers.logging(server, params)

        async def message_handler(message: types.ServerNotification | Exception) -> None:
            if isinstance(message, Exception):
                logger.debug("thread %s: %s transport error: %s", thread.id, server, message)
                return
            if isinstance(message, types.ToolListChangedNotification):
                thread._tools = None
            if handlers.notification is not None:
                await handlers.notification(server, message)

        return {
            "elicitation_callback": elicitation,
            "sampling_callback": sampling,
            "list_roots_callback": roots,
            "logging_callback": logging_callback,
            "message_handler": message_handler,
        }

    def info(self) -> ThreadInfo:
        servers: dict[str, str] = {}
        for name, conn in self._connections.items():
            if conn.shared and conn.lease is not None:
                servers[name] = f"shared pid {conn.lease.pid}"
            elif not conn.shared:
                servers[name] = "http"
        return ThreadInfo(self.id, self.state, self.cwd, self.sandbox, self.subscribers, servers)


class ThreadManager:
    """Owns the pool and every thread. Use as an async context manager.

    ``connect="eager"`` connects a thread to all its enabled servers when it is loaded (failures are logged, not
    raised); ``"lazy"`` connects each server on the thread's first use of it.
    """

    def __init__(
        self,
        config: McpConfig,
        *,
        idle_grace: float = DEFAULT_IDLE_GRACE,
        connect: Literal["eager", "lazy"] = "eager",
        environ: Mapping[str, str] | None = None,
        client_info: types.Implementation | None = None,
        pool: BackendPool | None = None,
    ) -> None:
        self.config = config
        self.connect_mode = connect
        self.environ = dict(os.environ if environ is None else environ)
        self.client_info = client_info or types.Implementation(name="mcpshare", version="0.1.0")
        self.pool = pool or BackendPool(idle_grace=idle_grace)
        self._owns_pool = pool is None
        self.threads: dict[str, Thread] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack = AsyncExitStack()
        self._closed = False
        self.started_at = time.monotonic()

    async def __aenter__(self) -> Self:
        if self._owns_pool:
            await self._stack.enter_async_context(self.pool)
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        with anyio.CancelScope(shield=True):
            await self.close()
        return await self._stack.__aexit__(exc_type, exc, tb)

    # ------------------------------------------------------------------ lifecycle

    def _get(self, thread_id: str) -> Thread:
        if self._closed:
            raise ThreadError("the thread manager is closed")
        thread = self.threads.get(thread_id)
        if thread is None:
            raise ThreadError(f"no thread with id {thread_id!r}")
        return thread

    async def start_thread(
        self,
        *,
        cwd: str | os.PathLike[str] | None = None,
        sandbox: str | None = None,
        handlers: ThreadHandlers | None = None,
        thread_id: str | None = None,
    ) -> Thread:
        """A new loaded thread with one subscriber."""
        if self._closed or self._tg is None:
            raise ThreadError("the thread manager is not running")
        thread_id = thread_id or uuid.uuid4().hex[:12]
        if thread_id in self.threads:
            raise ThreadError(f"thread id {thread_id!r} already exists")
        workspace = os.path.realpath(os.fspath(cwd) if cwd is not None else os.getcwd())
        thread = Thread(self, thread_id, cwd=workspace, sandbox=sandbox, handlers=handlers or ThreadHandlers())
        self.threads[thread_id] = thread
        await self._load(thread)
        return thread

    async def _load(self, thread: Thread) -> None:
        thread.state = "loaded"
        thread.subscribers = max(thread.subscribers, 1)
        if self.connect_mode == "eager":
            errors = await thread.connect()
            for server, error in errors.items():
                logger.warning("thread %s: MCP server %r failed to start: %s", thread.id, server, error)

    async def _unload(self, thread: Thread, state: ThreadState) -> None:
        thread.state = state
        thread.subscribers = 0
        await thread._disconnect_all()

    async def resume_thread(self, thread_id: str) -> Thread:
        """Subscribe to a thread, loading it if it was unloaded. An archived thread must be unarchived first."""
        thread = self._get(thread_id)
        if thread.state == "archived":
            raise ThreadError(f"thread {thread_id} is archived; unarchive it before resuming")
        if thread.state == "loaded":
            thread.subscribers += 1
            return thread
        await self._load(thread)
        return thread

    async def unsubscribe(self, thread_id: str) -> None:
        """Drop one subscriber; the thread unloads (releasing its servers) when none is left."""
        thread = self._get(thread_id)
        if thread.state != "loaded":
            return
        thread.subscribers -= 1
        if thread.subscribers <= 0:
            await self._unload(thread, "unloaded")

    async def archive(self, thread_id: str) -> None:
        """Unload and archive a thread, whatever its subscribers."""
        thread = self._get(thread_id)
        await self._unload(thread, "archived")

    async def unarchive(self, thread_id: str) -> None:
        """Archived -> unloaded. Spawns nothing: the thread loads when resumed."""
        thread = self._get(thread_id)
        if thread.state == "archived":
            thread.state = "unloaded"

    async def close_thread(self, thread_id: str) -> None:
        """Forget a thread entirely."""
        thread = self._get(thread_id)
        await self._unload(thread, "closed")
        del self.threads[thread_id]

    async def set_sandbox(
        self, thread_id: str, *, cwd: str | os.PathLike[str] | None = None, sandbox: str | None = None
    ) -> None:
        """Move a thread to another working directory or sandbox.

        The pooled half is reacquired under the new key (a server shared per workspace moves to the backend of
        the new workspace; the old one stops once unused). The thread's HTTP connections are not restarted.
        """
        thread = self._get(thread_id)
        if cwd is not None:
            thread.cwd = os.path.realpath(os.fspath(cwd))
        if sandbox is not None:
            thread.sandbox = sandbox
        for conn in list(thread._connections.values()):
            if conn.lease is not None:
                await self.pool.relocate(conn.lease, workspace=thread.cwd, sandbox=thread.sandbox)
        thread._tools = None

    async def refresh(self, config: McpConfig) -> list[str]:
        """Adopt a new config. Only servers whose config changed are rebuilt; returns their names.

        Stdio leases move to the backend for the new config (their sessions get list_changed); HTTP connections
        of changed servers reconnect on next use; removed or disabled servers are disconnected.
        """
        old = self.config.enabled()
        new = config.enabled()
        self.config = config
        changed = sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
        for thread in self.threads.values():
            for name in changed:
                conn = thread._connections.get(name)
                if conn is None:
                    continue
                if name not in new or not isinstance(new[name], StdioServerConfig) or not conn.shared:
                    await thread._disconnect(name)
            thread._tools = None
        stdio = {name: cfg for name, cfg in new.items() if isinstance(cfg, StdioServerConfig) and name in changed}
        await self.pool.refresh(stdio)
        for thread in self.threads.values():
            for name in changed:
                conn = thread._connections.get(name)
                if conn is not None:
                    conn.config = new[name]
        return changed

    def snapshot(self) -> Snapshot:
        http = sum(1 for t in self.threads.values() for c in t._connections.values() if not c.shared)
        return Snapshot(self.pool.snapshot(), [t.info() for t in self.threads.values()], http)

    async def close(self) -> None:
        if self._closed:
            return
        for thread in list(self.threads.values()):
            await self._unload(thread, "closed")
        self._closed = True
        await self.pool.close()

    # ------------------------------------------------------------------ connections

    async def _open(self, thread: Thread, conn: _Connection) -> None:
        assert self._tg is not None
        await self._tg.start(self._hold, thread, conn, name=f"mcpshare {thread.id}/{conn.server}")

    async def _hold(
        self, thread: Thread, conn: _Connection, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep one connection open until asked to close; errors after start are recorded, never raised."""
        started = False
        try:
            async with AsyncExitStack() as stack:
                callbacks = thread._callbacks(conn.server)
                if isinstance(conn.config, StdioServerConfig):
                    lease = await self.pool.acquire(
                        conn.config, workspace=thread.cwd, environ=self.environ, sandbox=thread.sandbox
                    )
                    await stack.enter_async_context(lease)
                    conn.lease = lease
                    session = await stack.enter_async_context(
                        open_session(lease, client_info=self.client_info, **callbacks)
                    )
                else:
                    session = await stack.enter_async_context(self._http_session(conn.config, callbacks))
                conn.session = session
                if thread.handlers.log_level is not None:
                    await session.set_logging_level(thread.handlers.log_level)
                task_status.started()
                started = True
                await conn.closing.wait()
        except Exception as exc:
            conn.error = exc
            if not started:
                raise
            logger.warning("thread %s: connection to %r ended: %s", thread.id, conn.server, exc)
        finally:
            conn.session = None
            conn.closed.set()

    def _http_session(self, config: HttpServerConfig, callbacks: dict[str, Any]) -> Any:
        headers = dict(config.http_headers)
        if config.bearer_token_env_var:
            token = self.environ.get(config.bearer_token_env_var)
            if not token:
                raise UnknownServerError(
                    f"MCP server {config.name!r}: environment variable {config.bearer_token_env_var} "
                    "(bearer_token_env_var) is not set"
                )
            headers["Authorization"] = f"Bearer {token}"
        manager = self

        class _HttpSession:
            async def __aenter__(self) -> ClientSession:
                self._stack = AsyncExitStack()
                try:
                    client = await self._stack.enter_async_context(create_mcp_http_client(headers=headers))
                    read, write = await self._stack.enter_async_context(
                        streamable_http_client(config.url, http_client=client)
                    )
                    session = await self._stack.enter_async_context(
                        ClientSession(read, write, client_info=manager.client_info, **callbacks)
                    )
                    with anyio.fail_after(config.startup_timeout_sec):
                        await session.initialize()
                except BaseException:
                    await self._stack.aclose()
                    raise
                return session

            async def __aexit__(self, *exc: Any) -> None:
                await self._stack.aclose()

        return _HttpSession()


async def _all_tools(session: ClientSession) -> list[types.Tool]:
    """Every page of a server's tool list."""
    tools: list[types.Tool] = []
    cursor: str | None = None
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        result = await session.list_tools(params=params)
        tools.extend(result.tools)
        cursor = result.next_cursor
        if not cursor:
            return tools


def _allowed(config: ServerConfig, tool: str) -> bool:
    if config.enabled_tools is not None and tool not in config.enabled_tools:
        return False
    return tool not in config.disabled_tools
