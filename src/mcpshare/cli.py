"""The ``mcpshare`` command line: serve, connect, status, logs, stop, restart, wrap, unwrap, service, demo.

Layer 9, a typer + rich front over the broker (:mod:`mcpshare.broker`), the shim (:mod:`mcpshare.shim`) and the
pool. ``connect`` never gets here when the console script is ``mcpshare.entry:main`` (it must not pay for typer and
rich); it is listed so ``--help`` shows it, and dispatched to the shim if it does arrive. Heavy modules (the SDK,
the pool) are imported inside the commands that need them, so ``status`` and ``stop`` stay quick.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import sys
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from mcpshare import __version__, runtime, shim
from mcpshare.http_limits import HttpLimits

app = typer.Typer(
    name="mcpshare",
    help="One process per stdio MCP server configuration, shared by every thread and agent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: messages hold paths, which must stay copy-pasteable (tables still fit the terminal). No markup:
# server names, paths and errors are data, and "[x]" in one of them must print as is.
console = Console(soft_wrap=True, markup=False)
errors = Console(stderr=True, soft_wrap=True, markup=False)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["connect"]:
        return shim.main(args[1:])
    try:
        app(args=args, prog_name="mcpshare")
    except SystemExit as exc:
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(Text("mcpshare: ", style="bold red") + Text(message), highlight=False)
    return typer.Exit(code)


# ---------------------------------------------------------------------------------------------- serve / connect

_HTTP = "HTTP front limits (with --http)"
_LIMITS = HttpLimits()


@app.command()
def serve(
    config: Annotated[
        list[Path] | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file(s) to serve (repeatable).",
            show_default="the files `mcpshare discover` lists, re-read per client cwd",
        ),
    ] = None,
    idle_grace: Annotated[
        float | None,
        # Not "[default: ...]" in the help text: typer's rich help reads square brackets as markup and drops them.
        typer.Option(
            help="Seconds a server without clients keeps running.", show_default="$MCPSHARE_IDLE_GRACE, else 60"
        ),
    ] = None,
    http: Annotated[
        int | None,
        typer.Option(
            "--http",
            metavar="PORT",
            min=0,
            max=65535,
            help="Also serve Streamable HTTP on 127.0.0.1:PORT (0: any).",
            show_default="no HTTP front",
        ),
    ] = None,
    log_file: Annotated[
        Path | None, typer.Option(help="Log file.", show_default="broker.log in the runtime directory")
    ] = None,
    exit_idle: Annotated[
        float | None,
        typer.Option(help="Exit after this many seconds without any client or server.", show_default="never"),
    ] = None,
    autostarted: Annotated[bool, typer.Option(hidden=True)] = False,
    http_max_body: Annotated[
        int, typer.Option(min=1, metavar="BYTES", help="Largest request body (413 beyond).", rich_help_panel=_HTTP)
    ] = _LIMITS.max_body,
    http_max_header: Annotated[
        int,
        typer.Option(
            min=1, metavar="BYTES", help="Largest request head: line and headers (431 beyond).", rich_help_panel=_HTTP
        ),
    ] = _LIMITS.max_header,
    http_header_timeout: Annotated[
        float,
        typer.Option(
            min=0.001, metavar="S", help="Seconds to send a request head (then 408, closed).", rich_help_panel=_HTTP
        ),
    ] = _LIMITS.header_timeout,
    http_body_timeout: Annotated[
        float,
        typer.Option(
            min=0.001, metavar="S", help="Seconds to send a whole request body (408 beyond).", rich_help_panel=_HTTP
        ),
    ] = _LIMITS.body_timeout,
    http_keep_alive: Annotated[
        float,
        typer.Option(
            min=0.001, metavar="S", help="Seconds an idle keep-alive connection is kept.", rich_help_panel=_HTTP
        ),
    ] = _LIMITS.keep_alive,
    http_max_connections: Annotated[
        int,
        typer.Option(min=1, metavar="N", help="Authenticated connections at once (503 beyond).", rich_help_panel=_HTTP),
    ] = _LIMITS.max_connections,
    http_max_pending: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="Connections not yet authenticated; over this the oldest is closed.",
            rich_help_panel=_HTTP,
        ),
    ] = _LIMITS.max_pending,
    http_session_ttl: Annotated[
        float,
        typer.Option(
            min=0.001,
            metavar="S",
            help="Seconds an HTTP session with no request and no open stream is kept; then its lease is released.",
            rich_help_panel=_HTTP,
        ),
    ] = _LIMITS.session_ttl,
) -> None:
    """Run the broker: one shared process per server config for every `mcpshare connect` client."""
    from mcpshare import switches
    from mcpshare.broker import BrokerOptions, BrokerRunning, run
    from mcpshare.config import ConfigError, load_config
    from mcpshare.pool import DEFAULT_IDLE_GRACE

    paths = [path.absolute() for path in config or []]
    for path in paths:
        try:
            load_config(path)
        except ConfigError as exc:
            raise _fail(str(exc), 2) from None
    wrong = switches.problems()
    if wrong:
        raise _fail("; ".join(wrong), 2)
    grace_from_environment = switches.seconds(switches.IDLE_GRACE, DEFAULT_IDLE_GRACE)
    options = BrokerOptions(
        configs=tuple(paths),
        idle_grace=idle_grace if idle_grace is not None else grace_from_environment,
        exit_idle=exit_idle,
        http_port=http,
        http_limits=HttpLimits(
            max_body=http_max_body,
            max_header=http_max_header,
            header_timeout=http_header_timeout,
            body_timeout=http_body_timeout,
            keep_alive=http_keep_alive,
            max_connections=http_max_connections,
            max_pending=http_max_pending,
            session_ttl=http_session_ttl,
        ),
        log_file=log_file,
        log_stderr=not autostarted,
    )
    try:
        run(options)
    except BrokerRunning as exc:
        if autostarted:
            raise typer.Exit(0) from None
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot run the broker: {exc}") from None


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def connect(ctx: typer.Context) -> None:
    """Stdio shim for MCP clients: `mcpshare connect NAME [--config FILE | -- COMMAND ARGS...]` (see --help)."""
    raise typer.Exit(shim.main(list(ctx.args)))


# ---------------------------------------------------------------------------------------------- control


def _control(command: str, **fields: Any) -> dict[str, Any] | None:
    try:
        answer: Any = shim.control(command, **fields)  # JSON: dict[str, object] from the stdlib-only shim
    except shim.BrokerUnavailable as exc:
        raise _fail(str(exc)) from None
    if answer is not None and answer.get("ok") is not True:
        raise _fail(str(answer.get("error", "the broker refused the request")))
    return answer


def _no_broker() -> str:
    return f"no mcpshare broker is running (socket: {runtime.RuntimePaths.default().socket})"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def _megabytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f} MB"


def _print_json(data: dict[str, Any]) -> None:
    """Plain JSON on stdout, for scripts: no colours, no wrapping."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _print_table(table: Table, *, wide: bool) -> None:
    """A table that never cuts a name or a key: cells wrap to the terminal, or with ``wide`` each row keeps to one
    line however long it gets (for a pager or a wide window)."""
    if not wide:
        console.print(table)
        return
    for column in table.columns:
        column.no_wrap = True
    unbounded = console.options.update(width=1_000_000, max_width=1_000_000)
    width = Measurement.get(console, unbounded, table).maximum
    # A console of its own: print(width=...) never goes past the terminal's width.
    Console(width=max(width, console.width), markup=False, highlight=False, file=console.file).print(table, crop=False)


def _table(title: str, columns: tuple[str, ...], right: tuple[str, ...] = ()) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", overflow="fold")
    return table


@app.command()
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the broker's answer as JSON.", show_default="off")
    ] = False,
    wide: Annotated[
        bool, typer.Option("--wide", help="One line per server, however wide the table gets.", show_default="off")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="A live view, refreshed until Ctrl-C.", show_default="off")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes of --watch.")] = 1.0,
    count: Annotated[int, typer.Option(min=0, help="With --watch: stop after this many refreshes (0: never).")] = 0,
) -> None:
    """Show the broker and the server processes it shares (exit status 1 when no broker runs)."""
    if watch:
        raise typer.Exit(_watch(interval, count))
    answer = _control("status")
    if answer is None:
        if as_json:
            _print_json({"running": False, "socket": runtime.RuntimePaths.default().socket})
        else:
            errors.print(_no_broker(), highlight=False)
        raise typer.Exit(1)
    if as_json:
        _print_json({"running": True, **{key: value for key, value in answer.items() if key != "ok"}})
        return
    broker = answer["broker"]
    table = _table(
        f"mcpshare broker pid {broker['pid']}, up {_duration(broker['uptime'])}",
        ("server", "key", "pid", "era", "state", "clients", "restarts", "uptime", "RSS"),
        right=("pid", "clients", "restarts", "RSS"),
    )
    for row in answer["servers"]:
        lane = row.get("lane") or 0
        table.add_row(
            row["server"] + (f" (lane {lane})" if lane else ""),
            row["key"],
            str(row["pid"] or "-"),
            row.get("protocol") or "-",
            row["state"],
            str(row["clients"]),
            str(row["restarts"]),
            _duration(row["uptime"]),
            _megabytes(row["rss"]),
        )
    _print_table(table, wide=wide)
    front = answer.get("http_front")
    clients = f"{answer['connections']} shim connection(s)"
    if front is not None:
        sessions = front["sessions"]
        if sessions:
            _print_table(_http_sessions_table(sessions), wide=wide)
        live = sum(1 for session in sessions if session["state"] == "live")
        clients += (
            f"; {len(sessions)} HTTP session(s): {live} live, {len(sessions) - live} idle "
            f"(ended after {front['session_ttl']:g} s idle)"
        )
    configs = ", ".join(broker["configs"]) or "none found"
    if broker["default_configs"]:
        configs = f"the user's ({configs}; the project's files per client cwd)"
    console.print(
        f"{clients}; socket {broker['socket']}; log {broker['log']}; "
        f"configs: {configs}; idle grace {broker['idle_grace']:g} s"
        + (f"; HTTP {broker['http']}<server> (bearer token in {broker['http_token']})" if broker.get("http") else ""),
        highlight=False,
    )


def _watch(interval: float, count: int) -> int:
    """``status --watch``: per process its pid, era, clients, calls/s, errors, p50, RSS and restarts, live."""
    from rich.live import Live

    previous: dict[tuple[Any, Any], tuple[float, int]] = {}
    shown = 0
    with Live(console=console, auto_refresh=False, transient=False) as live:
        try:
            while True:
                answer = _control("status")
                if answer is None:
                    live.update(Text(_no_broker()), refresh=True)
                    return 1
                now = time.monotonic()
                live.update(_watch_table(answer, previous, now), refresh=True)
                shown += 1
                if count and shown >= count:
                    return 0
                time.sleep(interval)
        except KeyboardInterrupt:
            return 0


def _watch_table(answer: dict[str, Any], previous: dict[tuple[Any, Any], tuple[float, int]], now: float) -> Table:
    broker = answer["broker"]
    title = f"mcpshare broker pid {broker['pid']}, up {_duration(broker['uptime'])}, {answer['connections']} client(s)"
    table = Table(title=title, title_justify="left")
    columns = ("server", "pid", "era", "clients", "calls/s", "calls", "errors", "p50 ms", "p95 ms", "RSS", "restarts")
    for column in columns:
        table.add_column(column, justify="left" if column in ("server", "era") else "right", overflow="fold")
    seen = set()
    for row in answer["servers"]:
        ident = (row["pid"], row["key"])
        seen.add(ident)
        calls = int(row.get("calls") or 0)
        rate = "-"
        if ident in previous:
            then, before = previous[ident]
            rate = f"{(calls - before) / max(now - then, 1e-6):.1f}"
        previous[ident] = (now, calls)
        lane = row.get("lane") or 0
        table.add_row(
            row["server"] + (f" (lane {lane})" if lane else ""),
            str(row["pid"] or "-"),
            row.get("protocol") or "-",
            str(row["clients"]),
            rate,
            str(calls),
            str(row.get("errors") or 0),
            "-" if row.get("latency_p50_ms") is None else f"{row['latency_p50_ms']:.2f}",
            "-" if row.get("latency_p95_ms") is None else f"{row['latency_p95_ms']:.2f}",
            _megabytes(row["rss"]),
            str(row["restarts"]),
        )
    for gone in set(previous) - seen:
        del previous[gone]
    return table


def _http_sessions_table(sessions: list[dict[str, Any]]) -> Table:
    """The HTTP sessions: a live one has a request in flight or its GET stream open; an idle one ends after the TTL."""
    table = Table(title="HTTP sessions", title_justify="left")
    for column in ("session", "server", "key", "state", "requests", "GET stream", "idle for"):
        table.add_column(column, justify="right" if column == "requests" else "left")
    for session in sessions:
        table.add_row(
            session["id"],
            session["server"],
            session["key"],
            session["state"],
            str(session["requests"]),
            "open" if session["stream"] else "-",
            _duration(session["idle_for"]) if session["state"] == "idle" else "-",
        )
    return table


@app.command()
def stop(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker to finish.")] = 30.0,
) -> None:
    """Stop the broker and every server it runs."""
    answer = _control("stop")
    if answer is None:
        console.print(_no_broker(), highlight=False)
        return
    paths = runtime.RuntimePaths.default()
    deadline = time.monotonic() + timeout
    while runtime.lock_held(paths.lock):
        if time.monotonic() > deadline:
            raise _fail(f"the broker (pid {answer['pid']}) is still stopping after {timeout:g} s")
        time.sleep(0.05)
    console.print(f"stopped the mcpshare broker (pid {answer['pid']}) and its servers", highlight=False)


@app.command()
def restart(server: Annotated[str, typer.Argument(help="Server name, as in the config.")]) -> None:
    """Restart a server's processes (and reset its circuit breaker); clients reconnect on their next request."""
    answer = _control("restart", server=server)
    if answer is None:
        raise _fail(_no_broker())
    stopped = answer["stopped"]
    if stopped:
        console.print(f"restarted {server!r}: stopped {stopped} process(es); the next request starts it again")
    else:
        console.print(f"no process of {server!r} was running; its circuit breaker was reset")


@app.command()
def logs(
    server: Annotated[str, typer.Argument(help="Server name, as in the config.")],
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="Lines per process.")] = 50,
) -> None:
    """Show what a shared server wrote to stderr: each running process, then those that ended recently."""
    answer = _control("logs", server=server, lines=lines)
    if answer is None:
        raise _fail(_no_broker())
    processes = answer["processes"]
    if not processes:
        raise _fail(f"the broker has no process of {server!r}, running or recently ended, to show")
    for row in processes:
        state = row["state"]
        if "ended" in row:
            state = f"{state} at {time.strftime('%H:%M:%S', time.localtime(row['ended_at']))}: {row['ended']}"
            state += f" (exit code {row['returncode']})" if row.get("returncode") is not None else ""
        console.print(Text(f"== {server} pid {row['pid']} key {row['key']}, {state}", style="bold"), highlight=False)
        for line in row["stderr"]:
            console.print(line, highlight=False)
        if not row["stderr"]:
            console.print("(nothing on stderr)", style="dim", highlight=False)


# ---------------------------------------------------------------------------------------------- wrap / unwrap
# The editing itself is mcpshare.wrap's (imported lazily, so every other command works without it); this front only
# turns options into arguments and a WrapResult into sentences.


def _wrap_module() -> Any:
    try:
        return importlib.import_module("mcpshare.wrap")
    except ImportError as exc:
        raise _fail(f"`mcpshare wrap` is not available in this installation ({exc})") from None


def _show(result: Any, verb: str, *, diff: bool = True) -> None:
    """Say what wrap/unwrap did, or with a dry run would do (then also the unified diff of the change): names and
    reasons, and in the diff only the lines that change."""
    path = getattr(result, "path", None)
    dry = bool(getattr(result, "dry_run", False))
    base = verb.removesuffix("ped")
    if getattr(result, "restored", False):
        restore = "would restore" if dry else "restored"
        console.print(f"{restore} {path} byte for byte from its backup", highlight=False)
    elif changed := list(getattr(result, "changed", [])):
        done = f"would {base}" if dry else verb
        console.print(f"{done} {len(changed)} server(s) in {path}: {', '.join(changed)}", highlight=False)
    else:
        console.print(f"nothing to {base} in {path}", highlight=False)
    for name, reason in dict(getattr(result, "skipped", {})).items():
        console.print(f"  {'would leave' if dry else 'left'} alone: {name} ({reason})", highlight=False)
    if getattr(result, "backup", None) is not None:
        console.print(f"  the original {'would be' if dry else 'is'} kept in {result.backup}", highlight=False)
    for note in getattr(result, "notes", []):
        console.print(f"  note: {note}", highlight=False)
    if dry:
        lines = result.diff() if diff and hasattr(result, "diff") else []
        for line in lines:
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else None
            console.print(Text(line, style=style or ""), highlight=False, soft_wrap=True)
        console.print("  (dry run: nothing was written)", highlight=False)


@app.command()
def wrap(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="A client config: Codex config.toml, mcpServers JSON, VS Code, Cursor, Gemini CLI, Windsurf or Zed.",
            show_default="none: give a file, or --all",
        ),
    ] = None,
    all_configs: Annotated[
        bool,
        typer.Option(
            "--all", help="Every config `mcpshare discover` lists (the user's and this project's).", show_default="off"
        ),
    ] = False,
    server: Annotated[
        list[str] | None,
        typer.Option(
            "--server", "-s", help="Only these servers (repeatable; NAME@DIR for a project).", show_default="all"
        ),
    ] = None,
    http: Annotated[
        bool,
        typer.Option(
            "--http", help="Point the entries at the broker's HTTP front instead (no shim process).", show_default="off"
        ),
    ] = False,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="With --http: the front's port.", show_default="17432, the service's"),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Show the diff of what would change; write nothing.")] = False,
) -> None:
    """Rewrite a client config so its stdio servers run through `mcpshare connect`, or with --http reach the
    broker's HTTP front (the original is kept; `mcpshare unwrap` gives it back)."""
    if port is not None and not http:
        raise _fail("--port goes with --http", 2)
    if (config is None) == (not all_configs):
        raise _fail("give one config file, or --all", 2)
    module = _wrap_module()
    target = module.HttpTarget(port or module.DEFAULT_HTTP_PORT) if http else None
    extra = {"http": target} if target is not None else {}
    if all_configs:
        _wrap_all(module, server, dry_run, extra)
        return
    try:
        result = module.wrap_file(config, servers=server or None, dry_run=dry_run, **extra)  # launcher: wrap's default
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    _show(result, "wrapped")
    if target is not None and result.changed:
        _explain_http(target)


def _client_configs() -> list[Path]:
    """The configs `discover` lists, without mcpshare's own servers file (definitions, not a client's config)."""
    from mcpshare.config import default_config_paths, shared_servers_path

    home = Path.home()
    own = shared_servers_path(home)
    return [path for path in default_config_paths(home=home, cwd=Path.cwd()) if path != own]


def _wrap_all(module: Any, server: list[str] | None, dry_run: bool, extra: dict[str, Any]) -> None:
    """wrap each discovered config in turn; one that fails does not stop the others (exit status 1 at the end)."""
    paths = _client_configs()
    if not paths:
        console.print("no client config found (see `mcpshare discover`)", highlight=False)
        return
    summary = _table(
        "would be wrapped" if dry_run else "wrapped", ("config", "wrapped", "left alone", "error"), right=("wrapped",)
    )
    failed = 0
    for path in paths:
        try:
            result = module.wrap_file(path, servers=server or None, dry_run=dry_run, **extra)
        except (OSError, ValueError) as exc:
            failed += 1
            errors.print(Text("mcpshare: ", style="bold red") + Text(str(exc)), highlight=False)
            summary.add_row(str(path), "-", "-", str(getattr(exc, "reason", exc)))
            continue
        _show(result, "wrapped")
        summary.add_row(str(path), str(len(result.changed)), str(len(result.skipped)), "")
    _print_table(summary, wide=False)
    if failed:
        raise typer.Exit(1)


def _explain_http(target: Any) -> None:
    """How the wrapped HTTP entries reach the broker: its front must listen there, the token must be in the env."""
    url = f"http://127.0.0.1:{target.port}/mcp/"
    answer = _control("status")
    running = answer is not None and str(answer["broker"].get("http") or "") == url
    console.print(
        f"  the entries point at {url} ("
        + ("the broker's HTTP front is listening there" if running else "start it: `mcpshare service install`")
        + f"); their definitions are in {target.servers_file}",
        highlight=False,
    )
    console.print(
        f"  they take the broker's token from ${target.token_var}: set it where the client starts, e.g. in your "
        f'shell profile: export {target.token_var}="$(mcpshare service token)"',
        highlight=False,
    )


@app.command()
def unwrap(
    config: Annotated[Path, typer.Argument(help="A config file changed by `mcpshare wrap`.")],
    dry_run: Annotated[bool, typer.Option(help="Show the diff of what would change; write nothing.")] = False,
) -> None:
    """Undo `mcpshare wrap`: the servers run directly again."""
    module = _wrap_module()
    try:
        result = module.unwrap_file(config, dry_run=dry_run)
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    _show(result, "unwrapped")


@app.command()
def discover(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the configs and their servers as JSON.", show_default="off")
    ] = False,
    wide: Annotated[
        bool, typer.Option("--wide", help="One line per server, however wide the table gets.", show_default="off")
    ] = False,
) -> None:
    """List every MCP config of the user and of this project (the broker's default sources, in merge order), each
    server in it, and whether it is wrapped."""
    from mcpshare.config import default_config_paths

    module = _wrap_module()
    found = []
    for path in default_config_paths(home=Path.home(), cwd=Path.cwd()):
        try:
            host, states = module.inspect_file(path)
        except (OSError, ValueError) as exc:
            found.append({"path": str(path), "host": None, "servers": [], "error": str(exc)})
            continue
        servers = [dataclasses.asdict(state) for state in states]
        found.append({"path": str(path), "host": host, "servers": servers, "error": None})
    if as_json:
        _print_json({"configs": found})
        return
    if not found:
        console.print("no MCP config found for this user or in this directory", highlight=False)
        return
    table = _table(f"{len(found)} MCP config(s), in the order the broker merges them", ("config", "server", "wrapped"))
    for config in found:
        where = f"{config['path']} ({config['host'] or 'unreadable'})"
        if config["error"]:
            table.add_row(where, "-", Text(config["error"], style="red"))
        for index, server in enumerate(config["servers"]):
            state = {"shim": "yes (shim)", "http": "yes (HTTP front)"}.get(server["wrapped"] or "", "no")
            if server["note"]:
                state += f": {server['note']}"
            table.add_row(where if index == 0 else "", server["label"], state)
        if not config["servers"] and not config["error"]:
            table.add_row(where, "(no servers)", "")
        table.add_section()
    _print_table(table, wide=wide)


# ---------------------------------------------------------------------------------------------- service
# The files and the managers are mcpshare.service's; this front says what was done and what to do next.

service_app = typer.Typer(
    help="Run the broker with its HTTP front at login (systemd user unit, launchd agent).", no_args_is_help=True
)
app.add_typer(service_app, name="service")
_PORT_OPTION = typer.Option(
    min=1, max=65535, help="The HTTP front's port (the URLs `wrap --http` writes name it).", show_default="17432"
)


@service_app.command("install")
def service_install(port: Annotated[int | None, _PORT_OPTION] = None) -> None:
    """Install and start the broker as a user service: `mcpshare serve --http PORT`, restarted if it fails."""
    from mcpshare import service

    spec = service.ServiceSpec.build(port or service.DEFAULT_HTTP_PORT, environ=os.environ)
    manager = service.detect_manager()
    if manager is None:
        console.print(
            "no service manager found (a systemd user manager, or launchd): start the broker from your session's "
            f"startup instead, e.g.\n  {service.by_hand(spec)}",
            highlight=False,
        )
        raise typer.Exit(1)
    running = _control("status")
    try:
        path = service.install(manager, spec)
    except service.ServiceError as exc:
        raise _fail(str(exc)) from None
    console.print(f"installed {path} and started it ({manager}): {' '.join(spec.argv)}", highlight=False)
    if running is not None and not running["broker"].get("http"):
        console.print(
            f"  a broker without the HTTP front runs (pid {running['broker']['pid']}): the service's starts once it "
            "exits (an autostarted broker does after 10 idle minutes); `mcpshare stop` replaces it now, and its "
            "clients reconnect",
            highlight=False,
        )


@service_app.command("uninstall")
def service_uninstall() -> None:
    """Stop the broker's user service and remove its file."""
    from mcpshare import service

    manager = service.detect_manager()
    if manager is None:
        raise _fail("no service manager found (a systemd user manager, or launchd): nothing was installed")
    try:
        path = service.uninstall(manager, Path.home())
    except service.ServiceError as exc:
        raise _fail(str(exc)) from None
    console.print(f"removed {path} ({manager})" if path else "no mcpshare service was installed", highlight=False)


@service_app.command("status")
def service_status(port: Annotated[int | None, _PORT_OPTION] = None) -> None:
    """Say whether the service is installed and whether its broker runs (exit status 1 when it does not)."""
    from mcpshare import service

    manager = service.detect_manager()
    home = Path.home()
    if manager is None:
        spec = service.ServiceSpec.build(port or service.DEFAULT_HTTP_PORT, environ=os.environ)
        console.print(f"no service manager found: run the broker by hand, e.g.\n  {service.by_hand(spec)}")
    else:
        path = service.unit_path(home) if manager == "systemd" else service.plist_path(home)
        installed = f"installed: {path}" if path.exists() else "not installed"
        console.print(f"service ({manager}): {installed}; {service.manager_state(manager)}", highlight=False)
    answer = _control("status")
    if answer is None:
        console.print(f"broker: {_no_broker()}", highlight=False)
        raise typer.Exit(1)
    broker = answer["broker"]
    front = f"HTTP front {broker['http']}<server>" if broker.get("http") else "no HTTP front"
    console.print(f"broker: running, pid {broker['pid']}, {front}", highlight=False)
    if not broker.get("http"):
        raise typer.Exit(1)


@service_app.command("token")
def service_token() -> None:
    """Print the HTTP front's bearer token (created if there is none yet), for the clients' environment."""
    from mcpshare.http_front import load_or_create_token

    paths = runtime.RuntimePaths.default()
    try:
        runtime.ensure_runtime_dir(paths.directory)
        token = load_or_create_token(paths.token)
    except OSError as exc:
        raise _fail(f"cannot read or create {paths.token}: {exc}") from None
    sys.stdout.write(token + "\n")


# ---------------------------------------------------------------------------------------------- demo

_REPO = Path(__file__).resolve().parents[2]
_EVERYTHING = _REPO / "tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
_TESTSERVER = _REPO / "tests/servers/testserver.py"
_ECHO_SERVER = """
from mcp.server.mcpserver import MCPServer
server = MCPServer("mcpshare-demo-echo")
@server.tool()
def echo(text: str) -> str:
    return text
server.run("stdio")
"""


def demo_servers() -> dict[str, list[str]]:
    """What the demo shares: server-everything when installed, and an SDK server (the repo's test server, or a
    one-tool echo server when mcpshare is installed without its tests)."""
    servers: dict[str, list[str]] = {}
    node = shutil.which("node")
    if node and _EVERYTHING.is_file():
        servers["everything"] = [node, str(_EVERYTHING), "stdio"]
    elif everything := shutil.which("mcp-server-everything"):
        servers["everything"] = [everything, "stdio"]
    if _TESTSERVER.is_file():
        servers["testserver"] = [sys.executable, str(_TESTSERVER)]
    else:
        servers["echo"] = [sys.executable, "-c", _ECHO_SERVER]
    return servers


@dataclasses.dataclass
class _DemoRow:
    server: str
    processes: int
    rss: int


@dataclasses.dataclass
class _DemoRun:
    """One run of the demo, every figure counted by the OS (psutil) while all the threads are attached."""

    rows: list[_DemoRow]
    elapsed: float
    calls: int
    descendants: int
    guardians: int
    left: list[int]

    @property
    def processes(self) -> int:
        return sum(row.processes for row in self.rows)

    @property
    def rss(self) -> int:
        return sum(row.rss for row in self.rows)


def _process_tree(pid: int | None) -> list[Any]:
    import psutil

    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _server_processes(marker: str) -> list[Any]:
    """This process's descendants that are demo servers (their command line holds the run's marker) and their
    children, counted by the OS."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(proc.cmdline()) or marker in proc.environ().get("MCPSHARE_DEMO", ""):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


async def _run_demo(threads: int, servers: dict[str, list[str]], *, share: str = "workspace") -> _DemoRun:
    """Start ``threads`` threads, have each call an echo tool of every server, then count processes with psutil while
    every thread is still attached. ``share="thread"`` gives each thread its own process of each server: the
    unshared case, run for real (what a host without a pool does)."""
    import uuid

    import anyio
    import psutil

    from mcpshare.config import McpConfig, StdioServerConfig
    from mcpshare.threads import ThreadManager

    marker = uuid.uuid4().hex
    config = McpConfig(
        {
            name: StdioServerConfig(
                name=name, command=argv[0], args=tuple(argv[1:]), env={"MCPSHARE_DEMO": marker}, share=share
            )
            for name, argv in servers.items()
        }
    )
    calls = 0
    started = time.monotonic()
    async with ThreadManager(config, idle_grace=0) as manager:

        async def one_thread(index: int) -> None:
            nonlocal calls
            thread = await manager.start_thread(cwd=os.getcwd())
            for tool in await thread.list_tools():
                if tool.tool.name == "echo":
                    argument = (tool.tool.input_schema.get("required") or ["text"])[0]
                    await thread.call_tool(tool.name, {argument: f"hello from thread {index}"})
                    calls += 1

        async with anyio.create_task_group() as tg:
            for index in range(threads):
                tg.start_soon(one_thread, index)
        elapsed = time.monotonic() - started
        counted = _server_processes(marker)
        by_server: dict[str, _DemoRow] = {name: _DemoRow(name, 0, 0) for name in servers}
        for info in manager.snapshot().backends:
            tree = _process_tree(info.pid)
            by_server[info.server].processes += len(tree)
            by_server[info.server].rss += sum(proc.memory_info().rss for proc in tree)
        descendants = psutil.Process().children(recursive=True)
        guardians = [p for p in descendants if "_guardian" in " ".join(p.cmdline())]
    left = [p.pid for p in counted if psutil.pid_exists(p.pid) and p.status() != psutil.STATUS_ZOMBIE]
    rows = list(by_server.values())
    if sum(row.processes for row in rows) != len(counted):
        raise RuntimeError(f"the pool reports {sum(r.processes for r in rows)} server processes, the OS {len(counted)}")
    return _DemoRun(rows, elapsed, calls, len(descendants), len(guardians), left)


@app.command()
def demo(
    threads: Annotated[int, typer.Option(min=1, max=200, help="Number of threads (conversations).")] = 20,
    unshared: Annotated[
        bool,
        typer.Option(help="Also run the threads with a process each (the unshared case, for real) to compare."),
    ] = True,
) -> None:
    """The main job, live: N threads on one ThreadManager, one process per server instead of one per thread."""
    import anyio

    servers = demo_servers()
    console.print(f"starting {threads} threads sharing: {', '.join(servers)} ...", highlight=False)
    pooled = anyio.run(_run_demo, threads, servers, backend="asyncio")
    alone = None
    if unshared:
        console.print(f'now {threads} threads with a process each (share = "thread") ...', highlight=False)
        alone = anyio.run(partial(_run_demo, threads, servers, share="thread"), backend="asyncio")
    table = Table(title=f"{threads} threads, {pooled.calls} tool calls in {pooled.elapsed:.1f} s (shared)")
    columns = ["server", "procs shared", "RSS shared"]
    if alone is not None:
        columns += ["procs unshared", "RSS unshared"]
    for column in columns:
        table.add_column(column, justify="left" if column == "server" else "right")
    for index, row in enumerate([*pooled.rows, None]):
        cells = [row.server, str(row.processes), _megabytes(row.rss)] if row else ["total", str(pooled.processes)]
        if row is None:
            cells.append(_megabytes(pooled.rss))
        if alone is not None:
            other = alone.rows[index] if row is not None else None
            cells += (
                [str(other.processes), _megabytes(other.rss)]
                if other
                else [str(alone.processes), _megabytes(alone.rss)]
            )
        table.add_row(*cells)
    console.print(table)
    console.print(
        f"psutil: this process has {pooled.descendants} descendants = {pooled.processes} server process(es) "
        f"+ {pooled.guardians} guardian while {threads} threads share them",
        highlight=False,
    )
    if alone is not None:
        console.print(
            f"psutil: with a process each, {alone.processes} server processes for the same {threads} threads "
            f"({alone.elapsed:.1f} s to start and call them all): {alone.processes / max(pooled.processes, 1):.0f}x "
            f"the processes and {alone.rss / max(pooled.rss, 1):.1f}x the RSS, measured side by side in this run",
            highlight=False,
        )
    left = pooled.left + (alone.left if alone is not None else [])
    if left:
        raise _fail(f"server processes still running after shutdown: {left}")
    console.print("shut down cleanly: every server process stopped.")


@app.command()
def version() -> None:
    """Print the mcpshare version."""
    console.print(f"mcpshare {__version__}")
