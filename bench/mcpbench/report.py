"""Output: the results table (rich when available, plain text otherwise), latest.json and processes_rss.png."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mcpbench.core import Row

SCHEMA = "mcpshare-bench/1"
COLUMNS = ("section", "measure", "pooled", "baseline", "raw", "ratio", "target", "ok")


def fmt_number(value: float | None, unit: str = "") -> str:
    """A figure with as many digits as it deserves: 12345, 123, 12.3, 1.23, 0.123."""
    if value is None:
        return "-"
    if unit in ("procs", "spawns", "asks", "calls"):
        return f"{value:.0f}"
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:#.3g}"
    return text


def fmt_ratio(row: Row) -> str:
    """``12.3x (direct/pooled)``, or ``-``."""
    if row.ratio is None:
        return "-"
    value = row.ratio
    text = f"{value:,.0f}x" if value >= 100 else f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"
    return f"{text} {row.ratio_of}" if row.ratio_of else text


def _cells(row: Row, mark: str = "") -> list[str]:
    unit = f" {row.unit}" if row.unit else ""
    ok = "" if row.ok is None else ("yes" if row.ok else "NO")
    return [
        row.section,
        row.measure + (f" [{mark}]" if mark else ""),
        fmt_number(row.pooled, row.unit) + (unit if row.pooled is not None else ""),
        fmt_number(row.baseline, row.unit) + (unit if row.baseline is not None else ""),
        fmt_number(row.raw, row.unit) + (unit if row.raw is not None else ""),
        fmt_ratio(row),
        row.target,
        ok,
    ]


def print_table(rows: Sequence[Row], statuses: Mapping[str, Mapping[str, Any]], *, plain: bool = False) -> None:
    """Print the rows, their notes as numbered footnotes, then the sections that did not run fully."""
    numbers: dict[str, int] = {}
    for row in rows:
        if row.note:
            numbers.setdefault(row.note, len(numbers) + 1)
    marks = [str(numbers[row.note]) if row.note else "" for row in rows]
    footnotes = [f"[{number}] {note}" for note, number in numbers.items()]
    problems = [
        f"{name}: {status['status']}" + (f" - {status['reason']}" if status.get("reason") else "")
        for name, status in statuses.items()
        if status.get("status") != "ok"
    ]
    console = None
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            console = None
        else:
            console = Console(width=max(150, Console().width))
            table = Table(title="mcpshare benchmark (pooled vs baseline; baseline = direct unless stated)")
            for column in COLUMNS:
                numeric = column in ("pooled", "baseline", "raw", "ratio")
                table.add_column(column, justify="right" if numeric else "left", overflow="fold")
            previous = None
            for row, mark in zip(rows, marks, strict=True):
                if previous is not None and row.section != previous:
                    table.add_section()
                previous = row.section
                cells = _cells(row, mark)
                if row.ok is False:
                    cells[-1] = "[bold red]NO[/]"
                table.add_row(*cells)
            console.print(table)
            for line in footnotes:
                console.print(line, highlight=False)
            for line in problems:
                console.print(f"[yellow]{line}[/]")
            return
    widths = [len(c) for c in COLUMNS]
    body = [_cells(row, mark) for row, mark in zip(rows, marks, strict=True)]
    for cells in body:
        widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
    line = "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))
    print(line)
    print("-" * len(line))
    for cells in body:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    for text in footnotes:
        print(text)
    for text in problems:
        print(text)


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` atomically (a ``.tmp`` file renamed over the target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def plot_processes(details: Mapping[str, Any], path: Path) -> str | None:
    """Draw processes and total RSS against N (pooled vs direct); returns a warning instead when it cannot."""
    measurements = details.get("measurements")
    if not measurements:
        return "no process measurements to plot"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'mcpshare[bench]' or pip install matplotlib): no PNG"

    ns = sorted(int(n) for n in measurements)
    figure, (ax_procs, ax_rss) = plt.subplots(1, 2, figsize=(11, 4.4))
    servers = details.get("servers", "M")
    for variant, style in (("direct", "o-"), ("pooled", "s-")):
        xs, procs, rss = [], [], []
        for n in ns:
            entry = measurements[str(n)].get(variant) or {}
            if entry.get("server_processes") is None:
                continue
            xs.append(n)
            procs.append(entry["server_processes"])
            rss.append((entry.get("total_rss_bytes") or 0) / 2**30)
        label = "one process per thread (SDK stdio_client)" if variant == "direct" else "mcpshare pool"
        ax_procs.plot(xs, procs, style, label=label)
        ax_rss.plot(xs, rss, style, label=label)
        # Direct labels above their points, pooled ones below: at N=1 the two points coincide.
        offset = (0, 7) if variant == "direct" else (0, -13)
        for x, p, r in zip(xs, procs, rss, strict=True):
            ax_procs.annotate(str(p), (x, p), textcoords="offset points", xytext=offset, ha="center", fontsize=8)
            ax_rss.annotate(f"{r:.2f}", (x, r), textcoords="offset points", xytext=offset, ha="center", fontsize=8)
    ax_procs.set_title(f"Server processes (M = {servers} servers)")
    ax_procs.set_xlabel("threads (N)")
    ax_procs.set_ylabel("processes")
    ax_rss.set_title("Total RSS of the server process trees")
    ax_rss.set_xlabel("threads (N)")
    ax_rss.set_ylabel("GiB")
    for axis in (ax_procs, ax_rss):
        axis.grid(True, alpha=0.3)
        axis.set_xticks(ns)
        axis.legend(fontsize=8)
        high = axis.get_ylim()[1]
        axis.set_ylim(bottom=-0.06 * high, top=high * 1.08)
    figure.suptitle("mcpshare: N threads x M stdio servers, measured with psutil")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


def warn(message: str) -> None:
    """A warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr)
