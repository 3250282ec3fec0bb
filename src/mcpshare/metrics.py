"""What each shared process has done, for operators: calls, errors and how long the server took to answer.

Kept by the I/O layer of each backend (:class:`mcpshare.mux.Backend`), which sees a request leave for the server and
its answer come back; the routing core stays free of clocks. Cheap on the hot path (a dict entry per call in
flight); latencies are kept as the last :data:`WINDOW` samples, so percentiles describe the recent past.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

WINDOW = 1024
"""Latency samples kept per process (the percentiles describe these)."""


@dataclass(frozen=True)
class MetricsSnapshot:
    """The counters of one process at one moment (cumulative since it started)."""

    calls: int = 0
    """Requests of sessions the server answered (results and errors)."""
    errors: int = 0
    """Of those, the ones answered with a JSON-RPC error."""
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_sum_s: float = 0.0
    """Seconds the server took over all answered calls (with ``calls``: the mean, and a Prometheus summary)."""


class CallMetrics:
    """Counts and latencies of the calls one server answered."""

    __slots__ = ("_sent", "calls", "errors", "latencies", "latency_sum")

    def __init__(self) -> None:
        self._sent: dict[Any, float] = {}
        self.calls = 0
        self.errors = 0
        self.latency_sum = 0.0
        self.latencies: deque[float] = deque(maxlen=WINDOW)

    def sent(self, backend_id: Any) -> None:
        """A session's request left for the server."""
        self._sent[backend_id] = time.monotonic()

    def answered(self, backend_id: Any, *, error: bool) -> None:
        """The server answered ``backend_id`` (nothing happens for an id that was not a session's request)."""
        started = self._sent.pop(backend_id, None)
        if started is None:
            return
        elapsed = time.monotonic() - started
        self.calls += 1
        self.errors += error
        self.latency_sum += elapsed
        self.latencies.append(elapsed)

    def forget(self, backend_id: Any) -> None:
        """A request that will get no answer (cancelled, or the server died)."""
        self._sent.pop(backend_id, None)

    def snapshot(self) -> MetricsSnapshot:
        ordered = sorted(self.latencies)
        return MetricsSnapshot(
            calls=self.calls,
            errors=self.errors,
            latency_p50_ms=_percentile(ordered, 0.50),
            latency_p95_ms=_percentile(ordered, 0.95),
            latency_sum_s=self.latency_sum,
        )


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return round(ordered[index] * 1000, 3)
