"""The section registry, the rows sections return, and the context and profile they run with.

A section is an async function ``(ctx) -> list[Row]`` registered with :func:`section`. Sections run by their
``order``; one that fails is reported as failed and the next one runs. A section whose ``requires``
modules cannot be imported (the broker section needs ``mcpshare.broker``) is skipped cleanly, and a section may
raise :class:`SectionSkipped` itself. Besides its rows, a section can record anything JSON-able for
``latest.json`` with :meth:`BenchContext.detail`.

Every row compares side by side, measured in the same run on the same machine:
``pooled`` (mcpshare), ``baseline`` (what it is compared with: by default ``direct``, one process per thread through
the SDK's stdio_client) and optionally ``raw`` (the server's own limit), with ``ratio`` labelled by ``ratio_of``.
"""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from mcpbench.procs import Classifier, ProcessTracker
from mcpbench.servers import ServerSpec, classifier, real_servers


@dataclass
class Row:
    """One line of the results table (and of ``rows`` in latest.json)."""

    section: str
    measure: str
    unit: str
    pooled: float | None = None
    baseline: float | None = None
    raw: float | None = None
    ratio: float | None = None
    ratio_of: str = ""
    """How ``ratio`` was computed, e.g. ``"direct/pooled"`` or ``"pooled/direct"``."""
    target: str = ""
    ok: bool | None = None
    """Whether ``target`` was met (None: no target)."""
    baseline_kind: str = "direct"
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Profile:
    """How much to measure. ``--quick`` trades repeats and sizes for time; ratios stay comparable."""

    quick: bool
    threads: tuple[int, ...]
    start_concurrency: int = 16
    """Threads starting at once in the process section (both variants); the storm section starts all at once."""
    settle_seconds: float = 1.0
    """Pause between "all threads ready" and the memory measurement."""
    cold_repeats: int = 9
    warm_per_cold: int = 6
    seq_calls: int = 500
    conc_calls: int = 1500
    conc_width: int = 64
    rounds: int = 7
    storm_threads: int = 100
    storm_repeats: int = 3
    ask_calls: int = 40
    """Calls each of the 8 threads makes per round in the attribution section (a tool that asks its client)."""
    ask_slow_calls: int = 5
    """The same when the answers take a while (the attribution section's second kind of round)."""
    memory_margin_mb: int = 1536
    """The direct variant is skipped (or aborted) rather than leave the machine less free memory than this."""

    @classmethod
    def build(cls, *, quick: bool, threads: Sequence[int] | None) -> Profile:
        """The quick or full profile, with the thread counts of ``--threads`` when given."""
        if quick:
            return cls(
                quick=True,
                threads=tuple(threads or (1, 10, 50)),
                cold_repeats=5,
                warm_per_cold=5,
                seq_calls=200,
                conc_calls=600,
                rounds=3,
                storm_repeats=2,
                ask_calls=10,
                ask_slow_calls=3,
            )
        return cls(quick=False, threads=tuple(threads or (1, 10, 50, 100)))


@dataclass
class BenchContext:
    """Everything a section needs: the profile, the process tracker, the servers and a scratch workspace."""

    profile: Profile
    tracker: ProcessTracker
    workspace: Path
    """The threads' cwd (so the pool's workspace key and roots) and server-filesystem's allowed directory."""
    servers: dict[str, ServerSpec]
    errlog: IO[str]
    """Where the direct servers' stderr goes (a devnull file: stdio_client needs a real file)."""
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    current: str = ""

    def detail(self, key: str, value: Any) -> None:
        """Record a JSON-able value under the running section's ``details`` in latest.json."""
        self.details.setdefault(self.current, {})[key] = value

    def node_servers(self) -> list[ServerSpec]:
        """The M real servers: server-everything, server-memory, server-filesystem (+ mcp-server-time)."""
        return [self.servers[name] for name in real_servers()]

    @property
    def classify(self) -> Classifier:
        """Names the server a process belongs to from its command line."""
        return classifier(self.servers)


SectionFn = Callable[[BenchContext], Awaitable[list[Row]]]


class SectionSkipped(Exception):
    """Raised by a section that cannot run here; the run goes on and the reason is reported."""


@dataclass(frozen=True)
class Section:
    """A registered section: its name (for ``--only``), a title, the function and what it needs."""

    name: str
    title: str
    fn: SectionFn
    order: int
    requires: tuple[str, ...] = ()
    timeout: float = 300.0
    """Upper bound of the whole section, in seconds."""

    def missing(self) -> str | None:
        """Why this section cannot run (a required module does not import), or None."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                return f"{module} is not importable ({exc})"
        return None


SECTIONS: dict[str, Section] = {}


def section(
    name: str, title: str, *, order: int, requires: Sequence[str] = (), timeout: float = 300.0
) -> Callable[[SectionFn], SectionFn]:
    """Register ``fn`` as a section. Sections run and print by ascending ``order``."""

    def register(fn: SectionFn) -> SectionFn:
        if name in SECTIONS:
            raise ValueError(f"section {name!r} is registered twice")
        SECTIONS[name] = Section(name, title, fn, order, tuple(requires), timeout)
        return fn

    return register


def ordered_sections() -> list[Section]:
    """The registered sections in the order they run."""
    return sorted(SECTIONS.values(), key=lambda s: (s.order, s.name))


# ---------------------------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, median, min, max and quartiles of repeated measurements (for latest.json)."""
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "p25": None, "p75": None}
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "p25": quartiles[0],
        "p75": quartiles[2],
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float | None:
    """The median of per-repeat ratios ``numerators[i] / denominators[i]``.

    Each pair was measured back to back, so a load change on the machine between repeats affects both sides of
    a pair alike: the median of paired ratios is steadier than the ratio of two medians.
    """
    pairs = [a / b for a, b in zip(numerators, denominators, strict=False) if b]
    return statistics.median(pairs) if pairs else None


def rotate(items: Sequence[Any], by: int) -> list[Any]:
    """``items`` rotated left by ``by``: interleaves which variant runs first from one repeat to the next."""
    if not items:
        return []
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]
