"""ThreadManager and Thread: the host's conversations driving the pool.

Layer 7. A host keeps threads loaded while someone listens, unloads them when nobody does, archives, unarchives and
resumes them, reloads its MCP config and moves threads to another working directory or sandbox. Each operation
acquires or releases exactly the leases it needs, so the number of server processes follows the number of distinct
configurations in use, never the number of threads:

* stdio servers are shared through the :class:`~mcpshare.pool.BackendPool` (one process per pool key);
* Streamable HTTP servers get one SDK connection per thread: there is no process to save, a shared HTTP session
  would mix the threads' server-side state, and per-thread credentials stay per thread.

Every connection (a genuine ``mcp.ClientSession`` either way) is held open by a task of the manager's task group,
so connections outlive the caller that opened them and all of them end when the manager does: structured
concurrency, with the manager as the one owner.

Per-thread callbacks (elicitation, sampling, roots, logging, progress) are this thread's own. For a shared server
the mux decides which thread a server-to-client request belongs to and declines it when nobody can tell (see
mcpshare.mux); for an HTTP server the connection is the thread's alone, so whatever arrives on it is the thread's.

Example::

    config = McpConfig({"files": StdioServerConfig(name="files", command="mcp-server-filesystem", args=(".",))})
    async with ThreadManager(config, idle_grace=30) as manager:
        thread = await manager.start_thread(cwd="/work/project", elicitation=ask_the_user)
        tools = await thread.list_tools()            # mcp__files__read_text_file, ...
        result = await thread.call_tool("mcp__files__list_directory", {"path": "."})
        await manager.archive(thread.id)             # the process stops after the idle grace if unused
"""

from __future__ import annotations

import difflib
import enum
import json
import logging
import math
import os
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc
import mcp_types as types
from mcp import ClientSession
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from mcpshare.config import HttpServerConfig, McpConfig, ServerConfig, StdioServerConfig
from mcpshare.naming import assign_names, plain_name
from mcpshare.pool import DEFAULT_IDLE_GRACE, BackendInfo, BackendPool, Lease
from mcpshare.session import open_session

__all__ = [
    "ElicitationHandler",
    "LoggingHandler",
    "NotificationHandler",
    "ProgressHandler",
    "QualifiedTool",
    "RootsHandler",
    "SamplingHandler",
    "ServerConnectError",
    "ServerLink",
    "Snapshot",
    "Thread",
    "ThreadError",
    "ThreadHandlers",
    "ThreadInfo",
    "ThreadManager",
    "ThreadState",
    "ToolTimeoutError",
    "UnknownServerError",
    "UnknownToolError",
]

logger = logging.getLogger("mcpshare.threads")

# Logging levels and resource subscriptions are deprecated in protocol 2026-07-28 but are what handshake-era servers
# speak, and mcpshare routes them on purpose: keep the SDK's warning about them out of the host's output (only for
# calls made from this module).
warnings.filterwarnings("ignore", category=MCPDeprecationWarning, module=r"mcpshare\.threads")

ThreadState = Literal["loaded", "unloaded", "archived", "closed"]
LinkState = Literal["connected", "failed", "disconnected"]

ElicitationHandler = Callable[[str, types.ElicitRequestParams], Awaitable[types.ElicitResult | types.ErrorData]]
"""``(server, params) -> result``: ask the thread's user. Absent: elicitations addressed to the thread are declined."""
SamplingHandler = Callable[
    [str, types.CreateMessageRequestParams],
    Awaitable[types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData],
]
"""``(server, params) -> result``: run the thread's model. Absent: sampling requests get a JSON-RPC error."""
RootsHandler = Callable[[str], Awaitable[types.ListRootsResult | types.ErrorData]]
"""``(server) -> roots`` for the thread's HTTP servers (shared servers get their key's workspace from the pool)."""
LoggingHandler = Callable[[str, types.LoggingMessageNotificationParams], Awaitable[None]]
"""``(server, params)``: a log message at or above the thread's ``log_level``."""
ProgressHandler = Callable[[str, str, float, float | None, str | None], Awaitable[None]]
"""``(server, tool, progress, total, message)``: progress of one of the thread's own tool calls."""
NotificationHandler = Callable[[str, types.ServerNotification], Awaitable[None]]
"""``(server, notification)``: everything else the thread receives (list_changed, resources/updated, ...)."""


class _Unset(enum.Enum):
    UNSET = enum.auto()


UNSET = _Unset.UNSET
"""Marks "leave as it is" where None is a meaningful value (``set_sandbox(sandbox=None)`` clears the label)."""


class ThreadError(RuntimeError):
    """A thread operation that cannot be done now: unknown or closed thread, wrong state, manager closed."""


class UnknownServerError(KeyError):
    """A server name that is not configured (or not enabled) for this thread."""

    def __init__(self, message: str, *, server: str) -> None:
        super().__init__(message)
        self.server = server

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class UnknownToolError(KeyError):
    """A qualified tool name that no server of the thread offers; ``suggestions`` holds the close matches."""

    def __init__(self, message: str, *, name: str, suggestions: list[str]) -> None:
        super().__init__(message)
        self.name = name
        self.suggestions = suggestions

    def __str__(self) -> str:
        return str(self.args[0])


class ToolTimeoutError(TimeoutError):
    """A tool call did not finish within its timeout; the server was sent ``notifications/cancelled`` for it."""


class ServerConnectError(RuntimeError):
    """A thread could not connect to an HTTP server (or its credentials are missing from the environment).

    Stdio servers that fail to start raise the pool's :class:`~mcpshare.pool.ServerStartError` instead, which
    carries the exit code and the stderr tail. The URL is not repeated here: tokens sometimes ride in it.
    """

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"MCP server {server!r}: {reason}")
        self.server = server


@dataclass(frozen=True, kw_only=True)
class ThreadHandlers:
    """Per-thread callbacks for what servers send or ask. Each takes the server name first.

    They may differ per thread: a shared server's request reaches only the thread that owns it. A thread without
    an elicitation handler declines elicitations addressed to it (the tool sees "decline"); without a sampling
    handler it answers sampling requests with an error. ``roots`` answers the thread's own HTTP servers (default:
    the thread's cwd); roots asked by a shared stdio server are answered by the pool from its key's workspace,
    since that process serves every thread of the workspace. ``log_level`` is the least severe level this
    thread wants to receive; the server itself runs at the finest level any attached thread asked for.
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
    """One tool as a thread offers it to a model: the qualified ``name``, and where it really lives."""

    name: str
    server: str
    tool: types.Tool

    def as_tool(self) -> types.Tool:
        """The SDK Tool under its qualified name, ready to hand to a model API."""
        return self.tool.model_copy(update={"name": self.name})


@dataclass(frozen=True)
class ServerLink:
    """How one thread is connected to one server, for ``snapshot()``.

    ``pid`` and ``key`` (the pool key's short digest) are set for a connected stdio server: the pid is that of the
    shared process, so two threads showing the same pid share it.
    """

    transport: Literal["stdio", "http"]
    state: LinkState
    pid: int | None = None
    key: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ThreadInfo:
    """One thread in ``snapshot()``: its state and its link to each enabled server."""

    id: str
    state: ThreadState
    cwd: str
    sandbox: str | None
    subscribers: int
    servers: dict[str, ServerLink]


@dataclass(frozen=True)
class Snapshot:
    """What runs now: the pool's backends (server, short key, pid, state, leases, restarts, uptime) and threads."""

    backends: list[BackendInfo]
    threads: list[ThreadInfo]
    http_connections: int

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, for ``mcpshare status --json`` and benchmarks."""
        return asdict(self)


@dataclass(eq=False)
class _Connection:
    """One thread's session with one server, held open by a task of the manager (see ``ThreadManager._hold``)."""

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

    @property
    def usable(self) -> bool:
        return self.session is not None and not self.closing.is_set() and not self.closed.is_set()

    async def close(self) -> None:
        """Ask the holder task to end the connection and wait until it has (the lease is released by then)."""
        self.closing.set()
        with anyio.CancelScope(shield=True):
            await self.closed.wait()


class Thread:
    """One conversation's view over its servers: pooled stdio plus its own HTTP connections.

    Obtain threads from :meth:`ThreadManager.start_thread` / :meth:`ThreadManager.resume_thread`. Every method
    that talks to a server needs the thread to be loaded and raises :class:`ThreadError` otherwise.
    """

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
        self.errors: dict[str, BaseException] = {}
        """The last connection failure of each server that is failing now (cleared when it connects)."""
        self._connections: dict[str, _Connection] = {}
        self._connect_locks: dict[str, anyio.Lock] = {}
        self._epoch = 0  # bumped on every load and unload: a connect that straddles one is thrown away
        self._tools: dict[str, QualifiedTool] | None = None
        self._hidden: dict[str, tuple[str, str]] = {}  # plain names of tools the config filters out
        self._tools_version = 0

    def __repr__(self) -> str:
        return f"<Thread {self.id} {self.state}>"

    # ------------------------------------------------------------------ servers

    @property
    def servers(self) -> dict[str, ServerConfig]:
        """The enabled servers of the manager's current config (a refresh changes them for every thread)."""
        return self.manager.config.enabled()

    def _check_loaded(self) -> None:
        if self.state != "loaded":
            hint = "unarchive and resume it first" if self.state == "archived" else "resume it first"
            if self.state == "closed":
                hint = "it cannot be used any more"
            raise ThreadError(f"thread {self.id} is {self.state}; {hint}")

    def _server_config(self, server: str) -> ServerConfig:
        servers = self.servers
        if server not in servers:
            known = ", ".join(sorted(servers)) or "none"
            raise UnknownServerError(
                f"thread {self.id}: no enabled MCP server named {server!r} (enabled: {known})", server=server
            )
        return servers[server]

    def _invalidate_tools(self) -> None:
        self._tools = None
        self._tools_version += 1

    async def session(self, server: str) -> ClientSession:
        """This thread's ``mcp.ClientSession`` for ``server``, connected on first use.

        For a stdio server it runs over a lease of the shared process; for an HTTP server it is the thread's own
        connection. Raises the connection error (and records it in :attr:`errors`) when the server cannot be
        reached; the next call tries again.
        """
        self._check_loaded()
        config = self._server_config(server)
        async with self._connect_locks.setdefault(server, anyio.Lock()):
            self._check_loaded()
            conn = self._connections.get(server)
            if conn is not None and conn.usable:
                assert conn.session is not None
                return conn.session
            reconnect = conn is not None or server in self.errors
            if conn is not None:  # its holder ended on its own (an HTTP connection that broke)
                del self._connections[server]
                await conn.close()
            epoch = self._epoch
            conn = _Connection(server, config)
            try:
                await self.manager._open(self, conn)
            except Exception as exc:
                self.errors[server] = exc
                raise
            if epoch != self._epoch or self.state != "loaded":
                await conn.close()  # unloaded while we connected: keep nothing for it
                raise ThreadError(f"thread {self.id} was {self.state} while connecting to {server!r}")
            self.errors.pop(server, None)
            self._connections[server] = conn
            if reconnect:
                self._invalidate_tools()
            assert conn.session is not None
            return conn.session

    async def connect(self, servers: list[str] | None = None) -> dict[str, BaseException]:
        """Connect to ``servers`` (default: every enabled one) concurrently; return the failures by server name.

        A failing server does not fail the thread: the others keep working, the error is returned here, kept in
        :attr:`errors`, shown by ``snapshot()`` and raised again when the server is used.
        """
        names = list(self.servers) if servers is None else list(servers)
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
        self._invalidate_tools()
        if conn is not None:
            await conn.close()

    async def _disconnect_all(self) -> None:
        conns = list(self._connections.values())
        self._connections.clear()
        self._invalidate_tools()
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for conn in conns:
                    tg.start_soon(conn.close)

    # ------------------------------------------------------------------ tools

    async def list_tools(self) -> list[QualifiedTool]:
        """Every tool of every enabled server, named ``mcp__<server>__<tool>`` and filtered per server config.

        ``enabled_tools`` applies first, then ``disabled_tools``. Names follow mcpshare.naming (sanitized, at most
        64 characters, hash suffix on clash or overflow). Servers that cannot be reached are left out; their
        errors are in :attr:`errors`. The result is cached until a server reports a tool list change, a refresh or
        a reconnection.
        """
        table, _ = await self._tool_table()
        return sorted(table.values(), key=lambda t: t.name)

    async def _tool_table(self, *, fresh: bool = False) -> tuple[dict[str, QualifiedTool], dict[str, tuple[str, str]]]:
        """(qualified name -> tool, plain name -> (server, tool) of the tools the config filters out)."""
        self._check_loaded()
        if self._tools is not None and not fresh:
            return self._tools, self._hidden
        version = self._tools_version
        servers = self.servers
        listed: dict[str, list[types.Tool]] = {}

        async def one(server: str) -> None:
            try:
                listed[server] = await list_all_tools(await self.session(server))
            except Exception as exc:  # session() recorded a connection failure in self.errors already
                logger.warning("thread %s: MCP server %r is unavailable: %s", self.id, server, _first_line(exc))

        async with anyio.create_task_group() as tg:
            for server in servers:
                tg.start_soon(one, server)
        exposed: dict[tuple[str, str], types.Tool] = {}
        hidden: dict[str, tuple[str, str]] = {}
        for server, tools in listed.items():
            for tool in tools:
                if servers[server].allows_tool(tool.name):
                    exposed[(server, tool.name)] = tool
                else:
                    hidden[plain_name(server, tool.name)] = (server, tool.name)
        names = assign_names(exposed)
        table = {name: QualifiedTool(name, pair[0], exposed[pair]) for name, pair in names.items()}
        # A list_changed (or reconnect) that arrived while listing makes this table possibly stale: use it for this
        # caller, but do not cache it.
        if version == self._tools_version and self.state == "loaded":
            self._tools, self._hidden = table, hidden
        return table, hidden

    async def resolve_tool(self, name: str) -> tuple[str, str]:
        """``(server, tool)`` for a qualified name.

        An unknown name is looked up once more on fresh lists (a server may have added it since); then it raises
        :class:`UnknownToolError` naming it, with the close matches and why it may be missing (filtered by the
        config, or its server unavailable).
        """
        tools, hidden = await self._tool_table()
        if name not in tools:
            tools, hidden = await self._tool_table(fresh=True)
        if name in tools:
            return tools[name].server, tools[name].tool.name
        text = f"thread {self.id}: no tool named {name!r}"
        if name in hidden:
            server, tool = hidden[name]
            text += f" (tool {tool!r} of server {server!r} is filtered out by enabled_tools/disabled_tools)"
        close = _close_matches(name, tools)
        if close:
            text += f"; did you mean {', '.join(close)}?"
        if self.errors:
            down = "; ".join(f"{server}: {_first_line(exc)}" for server, exc in sorted(self.errors.items()))
            text += f" (unavailable servers: {down})"
        raise UnknownToolError(text, name=name, suggestions=close)

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressHandler | None = None,
    ) -> types.CallToolResult:
        """Call a tool by its qualified name; a tool-level failure is a result with ``is_error`` set.

        ``timeout`` defaults to the server's ``tool_timeout_sec``. On timeout (:class:`ToolTimeoutError`) or when
        the caller is cancelled, the SDK sends ``notifications/cancelled`` for this request, which the mux maps
        to this request's id on the shared process: other threads' calls on the same process go on.
        ``progress`` overrides the thread's progress handler for this call. Arguments must be JSON-serialisable
        (:class:`TypeError` otherwise, before anything is sent).
        """
        self._check_loaded()
        server, tool = await self.resolve_tool(name)
        config = self._server_config(server)
        payload = _json_arguments(name, arguments)
        limit = config.tool_timeout_sec if timeout is None else timeout
        if not (limit > 0 and math.isfinite(limit)):
            raise ValueError(f"timeout must be a positive number of seconds, got {limit!r}")
        session = await self.session(server)
        handler = progress or self.handlers.progress

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            if handler is not None:
                await handler(server, tool, value, total, message)

        try:
            result = await session.call_tool(
                tool,
                payload,
                read_timeout_seconds=limit,
                progress_callback=on_progress if handler is not None else None,
            )
        except MCPError as exc:
            if exc.code == types.REQUEST_TIMEOUT:
                raise ToolTimeoutError(
                    f"tool {name!r} ({server}/{tool}) timed out after {limit:g} s and was cancelled"
                ) from exc
            raise
        return result

    # ------------------------------------------------------------------ resources, prompts, completion

    async def list_resources(self, server: str) -> types.ListResourcesResult:
        """The first page of ``server``'s resources (pass-through)."""
        return await (await self.session(server)).list_resources()

    async def list_resource_templates(self, server: str) -> types.ListResourceTemplatesResult:
        """The first page of ``server``'s resource templates (pass-through)."""
        return await (await self.session(server)).list_resource_templates()

    async def read_resource(self, server: str, uri: str) -> types.ReadResourceResult:
        """Read one resource of ``server``."""
        return await (await self.session(server)).read_resource(uri)

    async def subscribe_resource(self, server: str, uri: str) -> None:
        """Subscribe this thread to ``uri``; updates arrive at the ``notification`` handler.

        On a shared server subscriptions are reference-counted per URI across threads: the server sees the first
        subscribe and the last unsubscribe, and ``notifications/resources/updated`` reaches subscribers only.
        """
        await (await self.session(server)).subscribe_resource(uri)

    async def unsubscribe_resource(self, server: str, uri: str) -> None:
        """Drop this thread's subscription to ``uri`` (the server hears of it when it was the last one)."""
        await (await self.session(server)).unsubscribe_resource(uri)

    async def list_prompts(self, server: str) -> types.ListPromptsResult:
        """The first page of ``server``'s prompts (pass-through)."""
        return await (await self.session(server)).list_prompts()

    async def get_prompt(
        self, server: str, name: str, arguments: dict[str, str] | None = None
    ) -> types.GetPromptResult:
        """One prompt of ``server``, rendered with ``arguments``."""
        return await (await self.session(server)).get_prompt(name, arguments)

    async def complete(
        self,
        server: str,
        ref: types.ResourceTemplateReference | types.PromptReference,
        argument: dict[str, str],
        context_arguments: dict[str, str] | None = None,
    ) -> types.CompleteResult:
        """Argument completion (``completion/complete``) for a prompt or resource template of ``server``."""
        return await (await self.session(server)).complete(ref, argument, context_arguments)

    # ------------------------------------------------------------------ handlers as SDK callbacks

    def _callbacks(self, server: str) -> dict[str, Any]:
        """This thread's handlers as ClientSession callbacks for one server.

        All three request callbacks are always passed, so an HTTP connection declares the same capabilities as
        the pool does for shared servers: a thread behaves the same whatever the transport (it declines what it
        has no handler for, rather than making the server hide tools).
        """
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
                return types.ErrorData(
                    code=types.INVALID_REQUEST, message=f"mcpshare: thread {thread.id} has no sampling handler"
                )
            return await handlers.sampling(server, params)

        async def roots(context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
            if handlers.roots is not None:
                return await handlers.roots(server)
            cwd = Path(thread.cwd)
            return types.ListRootsResult(roots=[types.Root(uri=cwd.as_uri(), name=cwd.name or str(cwd))])

        async def logging_callback(params: types.LoggingMessageNotificationParams) -> None:
            if handlers.logging is not None:
                await handlers.logging(server, params)

        async def message_handler(message: types.ServerNotification | Exception) -> None:
            if isinstance(message, Exception):
                logger.debug("thread %s: transport error on %r: %s", thread.id, server, message)
                return
            if isinstance(message, types.ToolListChangedNotification):
                thread._invalidate_tools()
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
        """This thread's row of ``snapshot()``: every enabled server, connected, failed or not (yet) connected."""
        servers: dict[str, ServerLink] = {}
        for name, config in self.servers.items():
            transport: Literal["stdio", "http"] = "stdio" if isinstance(config, StdioServerConfig) else "http"
            conn = self._connections.get(name)
            if name in self.errors:  # checked first: after a failed refresh the session exists but cannot work
                servers[name] = ServerLink(transport, "failed", error=_first_line(self.errors[name]))
            elif conn is not None and conn.usable:
                lease = conn.lease
                servers[name] = ServerLink(
                    transport,
                    "connected",
                    pid=lease.pid if lease is not None else None,
                    key=lease.key.short() if lease is not None else None,
                )
            else:
                servers[name] = ServerLink(transport, "disconnected")
        return ThreadInfo(self.id, self.state, self.cwd, self.sandbox, self.subscribers, servers)


class ThreadManager:
    """Owns the pool and every thread. Use as an async context manager (leaving it stops every server).

    ``idle_grace``: seconds a stdio process without any thread lives on (0 = stop at once), so a thread resumed
    shortly after another was archived finds it warm. ``connect="eager"`` connects a thread to all its enabled
    servers when it is loaded (failures are recorded, not raised): what a host that lists every tool to its model
    needs anyway. ``"lazy"`` connects each server on the thread's first use of it. ``environ`` is the environment
    ``env_vars`` and ``bearer_token_env_var``/``env_http_headers`` read from (default: this process's).
    ``pool``: share an existing (entered) pool instead of owning one; the manager then never closes it.
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
        if connect not in ("eager", "lazy"):
            raise ValueError(f"connect must be 'eager' or 'lazy', got {connect!r}")
        self.config = config
        self.connect_mode = connect
        self.environ = dict(os.environ if environ is None else environ)
        self.client_info = client_info or types.Implementation(name="mcpshare", version=_version())
        self.pool = pool or BackendPool(
            idle_grace=idle_grace,
            client_info=self.client_info.model_dump(mode="json", by_alias=True, exclude_none=True),
        )
        self._owns_pool = pool is None
        self.threads: dict[str, Thread] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack = AsyncExitStack()
        self._closed = False
        self.started_at = time.monotonic()

    async def __aenter__(self) -> Self:
        try:
            if self._owns_pool:
                await self._stack.enter_async_context(self.pool)
            self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        with anyio.CancelScope(shield=True):
            await self.close()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()  # a connection opened by a racing caller during close must not hang us
        # The body's own exception is not fed to the task groups: anyio would wrap it in an ExceptionGroup, and a
        # caller's ValueError should come out as a ValueError. Connection holders never raise (see _hold).
        await self._stack.__aexit__(None, None, None)
        return None

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ lifecycle

    def thread(self, thread_id: str) -> Thread:
        """The thread with this id, whatever its state; :class:`ThreadError` if there is none."""
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
        elicitation: ElicitationHandler | None = None,
        sampling: SamplingHandler | None = None,
        roots: RootsHandler | None = None,
        logging: LoggingHandler | None = None,
        progress: ProgressHandler | None = None,
        notification: NotificationHandler | None = None,
        log_level: types.LoggingLevel | None = None,
    ) -> Thread:
        """A new loaded thread with one subscriber, working in ``cwd`` (default: this process's) under ``sandbox``.

        ``sandbox`` is an opaque label of the thread's sandbox policy; it is part of the pool key, so a process
        started for one policy never serves another. Handlers are given either as a :class:`ThreadHandlers` or as
        the individual keywords (not both).
        """
        if self._closed or self._tg is None:
            raise ThreadError("the thread manager is not running (use 'async with')")
        individual = {
            "elicitation": elicitation,
            "sampling": sampling,
            "roots": roots,
            "logging": logging,
            "progress": progress,
            "notification": notification,
            "log_level": log_level,
        }
        given = {key: value for key, value in individual.items() if value is not None}
        if handlers is not None and given:
            raise TypeError(f"pass handlers= or individual handlers ({', '.join(given)}), not both")
        thread_id = thread_id or uuid.uuid4().hex[:12]
        if thread_id in self.threads:
            raise ThreadError(f"thread id {thread_id!r} already exists")
        workspace = os.path.realpath(os.fspath(cwd) if cwd is not None else os.getcwd())
        thread = Thread(self, thread_id, cwd=workspace, sandbox=sandbox, handlers=handlers or ThreadHandlers(**given))
        self.threads[thread_id] = thread
        await self._load(thread)
        return thread

    async def _load(self, thread: Thread) -> None:
        thread.state = "loaded"
        thread._epoch += 1
        thread.subscribers = max(thread.subscribers, 1)
        if self.connect_mode == "eager":
            errors = await thread.connect()
            for server, error in errors.items():
                logger.warning("thread %s: MCP server %r failed to start: %s", thread.id, server, _first_line(error))

    async def _unload(self, thread: Thread, state: ThreadState) -> None:
        thread.state = state
        thread._epoch += 1
        thread.subscribers = 0
        thread.errors.clear()
        await thread._disconnect_all()

    async def resume_thread(self, thread_id: str) -> Thread:
        """Subscribe to a thread, loading it (and connecting its servers) if it was unloaded.

        An archived thread must be unarchived first: resuming it by accident would restart its servers.
        """
        thread = self.thread(thread_id)
        if thread.state == "archived":
            raise ThreadError(f"thread {thread_id} is archived; unarchive it before resuming")
        if thread.state == "loaded":
            thread.subscribers += 1
            return thread
        await self._load(thread)
        return thread

    async def unsubscribe(self, thread_id: str) -> None:
        """Drop one subscriber; the thread unloads (releasing its servers) when none is left."""
        thread = self.thread(thread_id)
        if thread.state != "loaded":
            return
        thread.subscribers -= 1
        if thread.subscribers <= 0:
            await self._unload(thread, "unloaded")

    async def archive(self, thread_id: str) -> None:
        """Unload and archive a thread, whatever its subscribers."""
        await self._unload(self.thread(thread_id), "archived")

    async def unarchive(self, thread_id: str) -> None:
        """Archived -> unloaded. Spawns nothing: the thread connects when it is resumed."""
        thread = self.thread(thread_id)
        if thread.state == "archived":
            thread.state = "unloaded"

    async def close_thread(self, thread_id: str) -> None:
        """Unload a thread and forget it entirely (its id becomes unknown)."""
        thread = self.thread(thread_id)
        await self._unload(thread, "closed")
        self.threads.pop(thread_id, None)

    async def set_sandbox(
        self,
        thread_id: str,
        *,
        cwd: str | os.PathLike[str] | None = None,
        sandbox: str | _Unset | None = UNSET,
    ) -> dict[str, BaseException]:
        """Move a thread to another working directory and/or sandbox label (``sandbox=None`` clears the label).

        The pooled half is reacquired under the new key: a server shared per workspace moves to the backend of the
        new workspace (started if needed) and the old backend stops once no thread uses it; a global server whose
        key does not change stays where it is. The session objects stay the same (the lease is rebound
        underneath), but requests in flight on a moved server fail. The thread's HTTP connections are not
        restarted; when the cwd changed they are told ``notifications/roots/list_changed``.

        Returns the servers that could not be moved, by name; they rebind on next use.
        """
        thread = self.thread(thread_id)
        old_cwd = thread.cwd
        if cwd is not None:
            thread.cwd = os.path.realpath(os.fspath(cwd))
        if sandbox is not UNSET:
            thread.sandbox = sandbox
        errors: dict[str, BaseException] = {}

        async def move(server: str) -> None:
            async with thread._connect_locks.setdefault(server, anyio.Lock()):
                conn = thread._connections.get(server)
                if conn is None or not conn.usable:
                    return
                try:
                    if conn.lease is not None:
                        await self.pool.relocate(conn.lease, workspace=thread.cwd, sandbox=thread.sandbox)
                    elif thread.cwd != old_cwd and conn.session is not None:
                        await conn.session.send_roots_list_changed()
                except Exception as exc:
                    errors[server] = exc
                    thread.errors[server] = exc
                    logger.warning("thread %s: could not move %r: %s", thread.id, server, _first_line(exc))

        async with anyio.create_task_group() as tg:
            for server in list(thread._connections):
                tg.start_soon(move, server)
        thread._invalidate_tools()
        return errors

    async def refresh(self, config: McpConfig) -> list[str]:
        """Adopt a new config; only servers whose config changed are rebuilt. Returns the changed server names.

        * a changed stdio server: every thread's lease moves to the backend of the new config (its session object
          stays, and is told that every list changed); the old process stops as soon as no lease is left on it,
          without waiting for the idle grace. A change that leaves the pool key alone (a timeout, a tool filter)
          keeps the process.
        * a changed HTTP server: the threads' connections to it are closed and reopened.
        * a removed or disabled server (or one whose transport changed): disconnected everywhere, and its idle
          processes stop at once.
        * with ``connect="eager"``, loaded threads connect to new and changed servers right away.

        Servers that fail to start under the new config are recorded in the threads' :attr:`Thread.errors` and
        logged; the other servers are refreshed regardless.
        """
        if self._closed:
            raise ThreadError("the thread manager is closed")
        old = self.config.enabled()
        new = config.enabled()
        changed = sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
        self.config = config
        in_place = {
            name
            for name in changed
            if isinstance(old.get(name), StdioServerConfig) and isinstance(new.get(name), StdioServerConfig)
        }
        async with anyio.create_task_group() as tg:
            for thread in self.threads.values():
                for name in changed:
                    if name not in in_place and name in thread._connections:
                        tg.start_soon(thread._disconnect, name)
                    thread.errors.pop(name, None)
                thread._invalidate_tools()
        failed: set[str] = set()
        for name in sorted(in_place):
            stdio = new[name]
            assert isinstance(stdio, StdioServerConfig)
            try:
                # One server at a time: a server that fails to start must not keep the others on the old config.
                await self.pool.refresh({name: stdio})
            except Exception as exc:
                logger.warning("refresh: MCP server %r failed under its new config: %s", name, _first_line(exc))
                failed.add(name)
                # A lease whose move failed is left unbound, and later pool refreshes no longer see it (a pool
                # bug, see the report): drop these connections; the next use or refresh connects afresh.
                async with anyio.create_task_group() as tg:
                    for thread in self.threads.values():
                        if name in thread._connections:
                            thread.errors[name] = exc
                            tg.start_soon(thread._disconnect, name)
        if self._owns_pool:
            for name in changed:
                if name not in in_place and isinstance(old.get(name), StdioServerConfig):
                    await self.pool.restart(name)  # no lease is left on it: this stops its idle processes now
        for thread in self.threads.values():
            for name in in_place:
                conn = thread._connections.get(name)
                if conn is not None:
                    conn.config = new[name]
        if self.connect_mode == "eager":
            loaded = [thread for thread in self.threads.values() if thread.state == "loaded"]
            wanted = [name for name in changed if name in new and name not in failed]  # failed: no retry storm
            async with anyio.create_task_group() as tg:
                for thread in loaded:
                    tg.start_soon(self._connect_logged, thread, wanted)
        return changed

    async def _connect_logged(self, thread: Thread, servers: list[str]) -> None:
        for server, error in (await thread.connect(servers)).items():
            logger.warning("thread %s: MCP server %r failed to start: %s", thread.id, server, _first_line(error))

    def snapshot(self) -> Snapshot:
        """Backends (server, short key, pid, state, lease count, restarts, uptime) and threads (id, state, servers).

        A view of the bookkeeping for the CLI, tests and benchmarks; tests that count processes should still ask
        the OS.
        """
        http = sum(1 for t in self.threads.values() for c in t._connections.values() if not c.shared and c.usable)
        return Snapshot(self.pool.snapshot(), [t.info() for t in self.threads.values()], http)

    async def close(self) -> None:
        """Close every thread and (when the manager owns it) the pool. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for thread in list(self.threads.values()):
                    tg.start_soon(self._unload, thread, "closed")
            if self._owns_pool:
                await self.pool.close()

    # ------------------------------------------------------------------ connections

    async def _open(self, thread: Thread, conn: _Connection) -> None:
        """Start the task that holds ``conn`` open; return once its session is initialized (or raise why not)."""
        if self._closed or self._tg is None:
            raise ThreadError("the thread manager is closed")
        await self._tg.start(self._hold, thread, conn, name=f"mcpshare {thread.id}/{conn.server}")

    async def _hold(
        self, thread: Thread, conn: _Connection, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Open one connection, report it started, keep it until asked to close.

        Errors before the start go to the caller of :meth:`_open`; errors after it (an HTTP server going away)
        are recorded and logged, never raised: one broken connection must not take the manager's task group and
        every other connection with it.
        """
        started = False
        try:
            async with AsyncExitStack() as stack:
                callbacks = thread._callbacks(conn.server)
                if isinstance(conn.config, StdioServerConfig):
                    lease = await self.pool.acquire(
                        conn.config,
                        workspace=thread.cwd,
                        environ=self.environ,
                        instance=thread.id,
                        sandbox=thread.sandbox,
                    )
                    await stack.enter_async_context(lease)
                    conn.lease = lease
                    session = await stack.enter_async_context(
                        open_session(lease, client_info=self.client_info, **callbacks)
                    )
                else:
                    session = await stack.enter_async_context(self._http_session(conn.config, callbacks))
                await _apply_log_level(session, thread, conn.server)
                conn.session = session
                task_status.started()
                started = True
                await conn.closing.wait()
        except Exception as exc:
            conn.error = exc
            if not started:
                raise
            logger.warning("thread %s: connection to %r ended: %s", thread.id, conn.server, _first_line(exc))
        finally:
            conn.session = None
            conn.closed.set()

    @asynccontextmanager
    async def _http_session(self, config: HttpServerConfig, callbacks: dict[str, Any]) -> AsyncIterator[ClientSession]:
        """The thread's own initialized ClientSession over the SDK's Streamable HTTP client.

        Failures to connect become :class:`ServerConnectError` naming the server (not the URL: it may hold a
        token), with the cause chained.
        """
        headers = dict(config.http_headers)
        for header, variable in config.env_http_headers.items():
            value = self.environ.get(variable)
            if value:
                headers[header] = value
        if config.bearer_token_env_var:
            token = self.environ.get(config.bearer_token_env_var)
            if not token:
                raise ServerConnectError(
                    config.name, f"environment variable {config.bearer_token_env_var} (bearer_token_env_var) is not set"
                )
            headers["Authorization"] = f"Bearer {token}"
        started = False
        try:
            async with AsyncExitStack() as stack:
                client = await stack.enter_async_context(create_mcp_http_client(headers=headers))
                read, write = await stack.enter_async_context(streamable_http_client(config.url, http_client=client))
                session = await stack.enter_async_context(
                    ClientSession(read, write, client_info=self.client_info, **callbacks)
                )
                with anyio.fail_after(config.startup_timeout_sec):
                    await session.initialize()
                started = True
                yield session
        except Exception as exc:
            if started:
                raise  # the connection broke later: the holder logs it
            # A refused connection surfaces from the transport's task group, wrapped, after cancelling initialize.
            cause = _root_cause(exc)
            if isinstance(cause, TimeoutError):
                reason = f"no answer to the MCP handshake within {config.startup_timeout_sec:g} s"
            else:
                detail = _first_line(cause).replace(config.url, "<url>")  # httpx names the URL; it may hold a token
                reason = f"cannot connect over HTTP: {type(cause).__name__}: {detail}"
            raise ServerConnectError(config.name, reason) from exc


async def _apply_log_level(session: ClientSession, thread: Thread, server: str) -> None:
    """Ask for the thread's log level, if it has one and the server logs at all.

    A server without the logging capability would answer an error; a thread's wish for logs must not cost it the
    server's tools, so that error is only logged.
    """
    level = thread.handlers.log_level
    if level is None:
        return
    capabilities = session.server_capabilities
    if capabilities is None or capabilities.logging is None:
        return
    try:
        await session.set_logging_level(level)
    except MCPError as exc:
        logger.warning("thread %s: %r refused log level %s: %s", thread.id, server, level, exc)


async def list_all_tools(session: ClientSession) -> list[types.Tool]:
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


def _json_arguments(name: str, arguments: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The arguments as a plain dict, checked to be JSON before anything is sent.

    The SDK would otherwise coerce or fail deep inside pydantic with a message that names neither the tool nor
    the argument; NaN and infinities are rejected too, since JSON has no spelling for them.
    """
    if arguments is None:
        return None
    if not isinstance(arguments, Mapping):
        raise TypeError(f"arguments for tool {name!r} must be a mapping, got {type(arguments).__name__}")
    try:
        json.dumps(arguments, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"arguments for tool {name!r} are not JSON-serialisable: {exc}") from exc
    return dict(arguments)


def _close_matches(name: str, tools: Mapping[str, QualifiedTool]) -> list[str]:
    """Up to three qualified names close to ``name``.

    Also compared against each tool's plain (unhashed) name, so a typo of a tool that got a hash suffix still finds
    it: ``mcp__my_server__ehco`` suggests ``mcp__my_server__echo_1a2b3c4d``.
    """
    candidates: dict[str, list[str]] = {}
    for qualified, tool in tools.items():
        candidates.setdefault(qualified, []).append(qualified)
        candidates.setdefault(plain_name(tool.server, tool.tool.name), []).append(qualified)
    found: list[str] = []
    for match in difflib.get_close_matches(name, list(candidates), n=6):
        found.extend(q for q in sorted(candidates[match]) if q not in found)
    return found[:3]


def _root_cause(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (what task groups wrap errors in)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _first_line(exc: BaseException) -> str:
    exc = _root_cause(exc)
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _version() -> str:
    from mcpshare import __version__

    return __version__
