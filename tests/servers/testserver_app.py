"""The SDK half of testserver.py: ``build_server`` registers every test tool, resource, prompt and handler.

Kept apart from testserver.py so the launcher can apply its failure-mode switches (exit at start, never
answer, ...) before paying for the SDK import, and so http_server.py can serve the very same tools.
Not a script; imported from this directory (Python puts a script's directory on sys.path).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import anyio
from mcp import types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from mcp.shared.exceptions import MCPDeprecationWarning
from pydantic import BaseModel, Field

# Logging, sampling and roots are deprecated in the 2026-07-28 protocol but are exactly what the pool must
# route for handshake-era clients; the warnings would only add noise to the server's stderr.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

COUNTER_URI = "test://counter"
LOG_LEVELS: tuple[types.LoggingLevel, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)
ITEM_IDS = ("1", "2", "3", "10", "42")


class Answer(BaseModel):
    """Schema of the form ``ask`` elicits: one free-text answer."""

    answer: str = Field(description="Your answer")


class State:
    """Mutable state of one server object: over stdio one process and one connection; over HTTP, all sessions."""

    def __init__(self) -> None:
        self.counter = 0
        self.subscribed: set[str] = set()
        self.log_level: types.LoggingLevel = "debug"
        self.children: list[subprocess.Popen[bytes]] = []
        self.cancelled = 0
        # Inbound methods (requests and notifications) as this process saw them: lets pool tests prove that,
        # e.g., one backend saw exactly one `initialize` however many sessions attached.
        self.methods: Counter[str] = Counter()


def _question(question: str) -> Elicit[Answer]:
    """The resolver of ``ask_resolved``: ask the question it was given."""
    return Elicit(question, Answer)


def _admits(threshold: types.LoggingLevel, level: types.LoggingLevel) -> bool:
    return LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold)


def build_server(
    server_name: str = "testserver", show_env: Sequence[str] = (), markers: Sequence[str] = ()
) -> MCPServer:
    """Build the MCPServer with every test tool, resource, prompt and handler registered.

    ``server_name`` is serverInfo.name, ``show_env`` the env names ``whoami`` reports, ``markers`` the --marker=
    values passed on to grandchildren started by ``spawn_child``.
    """
    state = State()

    async def count_methods(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        state.methods[ctx.method] += 1
        return await call_next(ctx)

    server = MCPServer(
        server_name,
        version="1.0.0",
        instructions="mcpshare test server",
        middleware=[count_methods],
        log_level=os.environ.get("TESTSERVER_LOG_LEVEL", "WARNING"),  # type: ignore[arg-type]
    )
    # Handlers MCPServer has no decorator for (subscribe, setLevel) and the list_changed capability flags go
    # through the low-level server. It is private API, but a test server must advertise exactly what it does.
    lowlevel = server._lowlevel_server

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def whoami() -> dict[str, Any]:
        """Report which process answered: pid, selected env values, cwd, argv and server name."""
        return {
            "pid": os.getpid(),
            "env": {env_name: os.environ.get(env_name) for env_name in show_env},
            "cwd": os.getcwd(),
            "args": sys.argv[1:],
            "name": server_name,
        }

    @server.tool()
    def stats() -> dict[str, Any]:
        """Report what this process has seen: inbound method counts, cancelled calls, subscriptions, log level."""
        return {
            "pid": os.getpid(),
            "methods": dict(state.methods),
            "cancelled": state.cancelled,
            "subscribed": sorted(state.subscribed),
            "log_level": state.log_level,
            "counter": state.counter,
            "children": [child.pid for child in state.children],
        }

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Sleep, then return "slept". A notifications/cancelled for the call cancels it (counted in `stats`)."""
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            state.cancelled += 1
            raise
        return "slept"

    @server.tool()
    async def progress(ctx: Context, steps: int = 3, delay: float = 0.01) -> str:
        """Send `steps` progress notifications (progress=i, total=steps, message="step i"), then return "done".

        Nothing is sent when the caller supplied no progressToken.
        """
        for i in range(1, steps + 1):
            await anyio.sleep(delay)
            await ctx.report_progress(i, steps, f"step {i}")
        return "done"

    @server.tool()
    async def ask(question: str, ctx: Context) -> str:
        """Elicit an answer (form with one string field "answer"); return "accept:<answer>", "decline" or "cancel"."""
        result = await ctx.elicit(question, Answer)
        if result.action == "accept":
            return f"accept:{result.data.answer}"
        return result.action

    @server.tool()
    async def ask_resolved(question: str, answer: Annotated[Answer, Resolve(_question)], delay: float = 0.0) -> str:
        """Elicit through a resolver (works in both protocol eras: a standalone request in the handshake era, an
        input_required result in 2026-07-28); return "accept:<answer>" (decline or cancel fail the call).
        ``delay`` seconds pass after the answer, so calls of several sessions overlap at the server."""
        await anyio.sleep(delay)
        return f"accept:{answer.answer}"

    @server.tool()
    async def sample(prompt: str, ctx: Context) -> str:
        """Ask the client's model (sampling/createMessage) and return the text it produced."""
        result = await ctx.session.create_message(
            [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))],
            max_tokens=64,
            related_request_id=ctx.request_id,
        )
        content = result.content
        return content.text if isinstance(content, types.TextContent) else content.model_dump_json()

    @server.tool()
    async def roots(ctx: Context) -> list[dict[str, Any]]:
        """Ask the client for its roots (roots/list) and return them as [{"uri", "name"}]."""
        result = await ctx.session.list_roots()
        return [{"uri": str(root.uri), "name": root.name} for root in result.roots]

    @server.tool()
    async def log(level: types.LoggingLevel, message: str, ctx: Context) -> str:
        """Emit notifications/message at `level` unless below the level set by logging/setLevel.

        Returns "logged" or "filtered" so a test can tell the server's filter from the pool's.
        """
        if not _admits(state.log_level, level):
            return "filtered"
        await ctx.log(level, message, logger_name="testserver")
        return "logged"

    @server.tool()
    def crash(code: int = 1) -> str:
        """Exit the whole process at once with `code` (no reply is ever sent)."""
        sys.stderr.write(f"testserver: crashing with exit code {code}\n")
        sys.stderr.flush()
        os._exit(code)

    @server.tool()
    def spawn_child(inherit_stdio: bool = False) -> int:
        """Start a grandchild that sleeps forever, in this process group; return its pid.

        The grandchild's argv carries this server's --marker= arguments, so process counting finds it.
        With inherit_stdio it keeps this server's stdin/stdout/stderr open, like a careless npx child.
        """
        stdio = None if inherit_stdio else subprocess.DEVNULL
        argv = [sys.executable, "-c", "import time\nwhile True: time.sleep(3600)"]
        child = subprocess.Popen(argv + [f"--marker={m}" for m in markers], stdin=stdio, stdout=stdio, stderr=stdio)
        state.children.append(child)
        return child.pid

    @server.resource(COUNTER_URI, name="counter", mime_type="text/plain")
    def counter() -> str:
        """The current counter value; `bump` increments it."""
        return str(state.counter)

    @server.tool()
    async def bump(ctx: Context) -> int:
        """Increment test://counter and notify subscribers (notifications/resources/updated); return the value."""
        state.counter += 1
        if COUNTER_URI in state.subscribed:
            await ctx.session.send_resource_updated(COUNTER_URI)
        await ctx.notify_resource_updated(COUNTER_URI)  # 2026-07-28 subscriptions/listen streams
        return state.counter

    @server.resource("test://item/{id}", name="item", mime_type="text/plain")
    def item(id: str) -> str:
        """A templated resource: reading test://item/7 returns "item 7"."""
        return f"item {id}"

    @server.prompt()
    def greet(name: str) -> str:
        """A one-message prompt greeting `name`."""
        return f"Hello, {name}!"

    @server.completion()
    async def complete(
        ref: types.PromptReference | types.ResourceTemplateReference,
        argument: types.CompletionArgument,
        context: types.CompletionContext | None,
    ) -> types.Completion | None:
        """Complete the template's `id` (from ITEM_IDS) and the prompt's `name` (two fixed names)."""
        if isinstance(ref, types.ResourceTemplateReference) and argument.name == "id":
            return types.Completion(values=[v for v in ITEM_IDS if v.startswith(argument.value)])
        if isinstance(ref, types.PromptReference) and argument.name == "name":
            return types.Completion(values=[v for v in ("Ada", "Alan") if v.startswith(argument.value)])
        return None

    @server.tool()
    async def add_tool(name: str, ctx: Context) -> str:
        """Register a new tool `name` (returns "<name> called") and send notifications/tools/list_changed."""

        def dynamic() -> str:
            return f"{name} called"

        server.add_tool(dynamic, name=name, description=f"added at runtime by add_tool({name!r})")
        await ctx.session.send_tool_list_changed()
        await ctx.notify_tools_changed()
        return f"added {name}"

    async def on_subscribe(ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
        state.subscribed.add(str(params.uri))
        return types.EmptyResult()

    async def on_unsubscribe(
        ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        state.subscribed.discard(str(params.uri))
        return types.EmptyResult()

    async def on_set_level(ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
        state.log_level = params.level
        return types.EmptyResult()

    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, on_subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, on_unsubscribe)
    lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, on_set_level)
    _advertise_list_changed(lowlevel)
    return server


def _advertise_list_changed(lowlevel: Any) -> None:
    """Make every transport advertise tools/resources/prompts listChanged.

    MCPServer.run_stdio_async and the Streamable HTTP session manager both call
    ``create_initialization_options()`` with no NotificationOptions, which advertises listChanged=false;
    wrapping the bound method is the one seam both paths share.
    """
    original: Callable[..., Any] = lowlevel.create_initialization_options
    everything = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)

    def with_list_changed(notification_options: NotificationOptions | None = None, *args: Any, **kwargs: Any) -> Any:
        return original(notification_options or everything, *args, **kwargs)

    lowlevel.create_initialization_options = with_list_changed
