#!/usr/bin/env python3
"""mcpshare benchmark: one shared process per server config (pooled) vs one process per thread (direct).

Run it from the repository root, in the project venv, with the pinned Node servers installed
(``npm ci --prefix tests/node``) and optionally matplotlib (``pip install matplotlib``, the ``bench`` extra)::

    python bench/run.py [--quick] [--threads 1,10,50,100] [--out bench/results] [--only SECTION,...]

``scripts/bench`` does the set-up and runs the same command. A full run takes about 9-10 minutes on 2 cores,
``--quick`` much less. It prints a table and writes ``<out>/latest.json`` and ``<out>/processes_rss.png``.

This is not a timed test: every figure is a ratio of two (or three) variants measured side by side in the same
run on the same machine, medians over repeats, with the variants interleaved. Sections (see bench/README.md):
processes, attach, throughput, attribution, storm, broker (skipped while ``mcpshare.broker`` does not import),
http (the HTTP front vs mcp-proxy and FastMCP; it installs those two into bench/.peers on first use).

Every process the run starts carries a marker in its environment; each section waits for its processes to be
gone, and the run ends (Ctrl-C and SIGTERM included) by checking with psutil that none is left, killing any that
is. Exit code: 0 when every section ran (or was skipped) and nothing was left behind, 1 otherwise, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import psutil

# Run as a script, this file's directory (bench/) is sys.path[0]: mcpbench imports from there.
import mcpbench.sections  # noqa: F401 - importing it registers the sections
from mcpbench.core import BenchContext, Profile, Row, Section, SectionSkipped, ordered_sections
from mcpbench.procs import ProcessTracker
from mcpbench.report import SCHEMA, plot_processes, print_table, warn, write_json
from mcpbench.servers import SetupError, build_servers

logger = logging.getLogger("mcpbench")

BENCH_DIR = Path(__file__).resolve().parent
SECTION_TEARDOWN_TIMEOUT = 30.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="mcpshare benchmark: pooled vs one process per thread, side by side in one run.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and N in 1,10,50 (about half the time)")
    parser.add_argument(
        "--threads",
        type=_int_list,
        default=None,
        help="comma-separated thread counts N for the process section (default 1,10,50,100; --quick 1,10,50)",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="output directory (bench/results)")
    parser.add_argument("--only", type=_name_list, default=None, help="comma-separated sections to run (default: all)")
    parser.add_argument("--plain", action="store_true", help="plain-text table instead of rich")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError("thread counts must be positive integers")
    return sorted(set(values))


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _command_output(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=BENCH_DIR.parent, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: hardware, load, and the versions that matter."""

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    status = _command_output(["git", "status", "--porcelain"])
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_total_bytes": psutil.virtual_memory().total,
        "memory_available_bytes": psutil.virtual_memory().available,
        "loadavg_start": list(os.getloadavg()),
        "node": _command_output(["node", "--version"]),
        "mcp": version("mcp"),
        "mcpshare": version("mcpshare"),
        "anyio": version("anyio"),
        "psutil": version("psutil"),
        "git_commit": _command_output(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(status) if status is not None else None,
    }


def describe_error(exc: BaseException) -> str:
    """The first real error inside (nested) exception groups, as ``Type: message``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError) and not str(exc):
        return "TimeoutError: a bounded wait expired"
    return f"{type(exc).__name__}: {exc}"


async def run_section(ctx: BenchContext, sec: Section, rows: list[Row], status: dict[str, Any]) -> None:
    """Run one section within its timeout, filling in ``status``. Its processes must be gone after it.

    ``status`` says "interrupted" until the section ends, so an interrupted run still reports where it stopped.
    """
    ctx.current = sec.name
    status.update(title=sec.title, status="interrupted", reason=None, seconds=None)
    missing = sec.missing()
    if missing is not None:
        status.update(status="skipped", reason=missing)
        logger.info("section %s skipped: %s", sec.name, missing)
        return
    logger.info("section %s: %s", sec.name, sec.title)
    started = time.perf_counter()
    try:
        with anyio.fail_after(sec.timeout):
            rows.extend(await sec.fn(ctx))
        status["status"] = "ok"
    except SectionSkipped as exc:
        status.update(status="skipped", reason=str(exc))
        logger.info("section %s skipped: %s", sec.name, exc)
    except Exception as exc:
        status.update(status="failed", reason=describe_error(exc))
        logger.error("section %s failed: %s\n%s", sec.name, describe_error(exc), traceback.format_exc())
    finally:
        status["seconds"] = time.perf_counter() - started
        status["details"] = ctx.details.get(sec.name, {})
        with anyio.CancelScope(shield=True):
            left = await ctx.tracker.wait_gone(timeout=SECTION_TEARDOWN_TIMEOUT)
            if left:
                logger.error("section %s left processes behind: %s (killing them)", sec.name, left)
                ctx.tracker.reap()
            status["leftover_pids"] = left


async def run_all(ctx: BenchContext, selected: list[Section], rows: list[Row], statuses: dict[str, Any]) -> bool:
    """Run the sections in order; SIGTERM/SIGHUP cancel the run like Ctrl-C does. Returns False if stopped so."""
    stopped = False
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            nonlocal stopped
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as received:
                async for signum in received:
                    logger.warning("received signal %d: stopping and cleaning up", signum)
                    stopped = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch_signals)
        for sec in selected:
            statuses[sec.name] = {}
            await run_section(ctx, sec, rows, statuses[sec.name])
        tg.cancel_scope.cancel()
    return not stopped


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("mcpbench").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    profile = Profile.build(quick=args.quick, threads=args.threads)
    known = {sec.name: sec for sec in ordered_sections()}
    if args.only:
        unknown = [name for name in args.only if name not in known]
        if unknown:
            print(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
            return 2
    selected = [sec for sec in known.values() if args.only is None or sec.name in args.only]
    out: Path = args.out
    tracker = ProcessTracker()
    rows: list[Row] = []
    statuses: dict[str, Any] = {}
    warnings: list[str] = []
    started_at = datetime.datetime.now(datetime.UTC)
    started = time.perf_counter()
    machine = machine_info()
    completed = False
    interrupted = False
    run_error: str | None = None
    with tempfile.TemporaryDirectory(prefix="mcpshare-bench-") as tmp, open(os.devnull, "w") as devnull:
        workspace = Path(tmp) / "workspace"
        (workspace / "src").mkdir(parents=True)
        (workspace / "README.md").write_text("# benchmark workspace\n")
        try:
            servers = build_servers(workspace, Path(tmp) / "memory.jsonl")
        except SetupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        ctx = BenchContext(profile=profile, tracker=tracker, workspace=workspace, servers=servers, errlog=devnull)
        try:
            completed = anyio.run(run_all, ctx, selected, rows, statuses, backend="asyncio")
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("interrupted: cleaning up")
        except Exception as exc:
            # A bug in the runner itself: still clean up and write what was measured.
            run_error = describe_error(exc)
            logger.error("the run stopped on an error: %s\n%s", run_error, traceback.format_exc())
        finally:
            cleanup = tracker.final_cleanup()
    interrupted = interrupted or (not completed and run_error is None)
    if not cleanup["clean"]:
        warnings.append(f"processes were left behind and killed: {cleanup}")
    machine["loadavg_end"] = list(os.getloadavg())
    png_path: Path | None = out / "processes_rss.png"
    process_details = statuses.get("processes", {}).get("details", {})
    problem = plot_processes(process_details, png_path) if process_details else "processes section did not run"
    if problem is not None:
        warnings.append(f"{problem}; {png_path} not written")
        png_path = None
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "run_id": tracker.run_id,
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_seconds": round(time.perf_counter() - started, 1),
        "mode": "quick" if profile.quick else "full",
        "command": [Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])],
        "interrupted": interrupted,
        "error": run_error,
        "machine": machine,
        "profile": dataclasses.asdict(profile),
        "rows": [row.to_json() for row in rows],
        "sections": statuses,
        "cleanup": cleanup,
        "outputs": {"json": str(out / "latest.json"), "png": str(png_path) if png_path else None},
        "warnings": warnings,
    }
    write_json(out / "latest.json", document)
    print_table(rows, statuses, plain=args.plain)
    for text in warnings:
        warn(text)
    print(
        f"{len(rows)} rows in {document['duration_seconds']} s ({document['mode']}); "
        f"wrote {out / 'latest.json'}" + (f" and {png_path}" if png_path else "")
    )
    print(
        "cleanup: "
        + ("no marked process left" if cleanup["clean"] else f"left behind and killed: {cleanup['killed']}")
        + f" ({cleanup['process_groups_seen']} process groups seen)"
    )
    if interrupted:
        return 130
    failed = [name for name, status in statuses.items() if status.get("status") == "failed"]
    return 1 if failed or run_error or not cleanup["clean"] else 0


if __name__ == "__main__":
    sys.exit(main())
