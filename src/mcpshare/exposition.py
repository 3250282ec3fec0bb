"""The broker's counters in the Prometheus text format, for ``GET /metrics`` on the HTTP front.

The exposition is prometheus-client's (a custom collector read at scrape time, rendered by ``generate_latest``):
nothing here formats the text itself. What it shows is what ``mcpshare status`` shows, from the same source
(:meth:`mcpshare.broker.Broker.status`): one set of series per server process, labelled by server, key, lane and
era, plus the broker's own sessions and refusals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

_LABELS = ["server", "key", "lane", "era"]


class StatusCollector(Collector):
    """Metric families from one ``status`` answer, taken when Prometheus scrapes."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        answer = self._status()
        rows = answer.get("servers", [])
        processes = GaugeMetricFamily("mcpshare_server_processes", "Server processes running", labels=_LABELS)
        clients = GaugeMetricFamily("mcpshare_server_clients", "Sessions sharing the process", labels=_LABELS)
        rss = GaugeMetricFamily(
            "mcpshare_server_rss_bytes", "Resident memory of the process and its children", labels=_LABELS
        )
        calls = CounterMetricFamily("mcpshare_server_calls", "Requests of sessions the server answered", labels=_LABELS)
        errors = CounterMetricFamily("mcpshare_server_call_errors", "Answers that were JSON-RPC errors", labels=_LABELS)
        restarts = CounterMetricFamily("mcpshare_server_restarts", "Restarts of the key", labels=_LABELS)
        linked = CounterMetricFamily("mcpshare_server_asks_linked", "Questions a link attributed", labels=_LABELS)
        declined = CounterMetricFamily(
            "mcpshare_server_asks_declined", "Questions declined as ambiguous", labels=_LABELS
        )
        latency = SummaryMetricFamily(
            "mcpshare_server_call_duration_seconds", "Time the server took to answer a call", labels=_LABELS
        )
        for row in rows:
            labels = [
                str(row.get("server")),
                str(row.get("key")),
                str(row.get("lane") or 0),
                str(row.get("protocol") or ""),
            ]
            processes.add_metric(labels, 1)
            clients.add_metric(labels, row.get("clients") or 0)
            if row.get("rss") is not None:
                rss.add_metric(labels, row["rss"])
            calls.add_metric(labels, row.get("calls") or 0)
            errors.add_metric(labels, row.get("errors") or 0)
            restarts.add_metric(labels, row.get("restarts") or 0)
            linked.add_metric(labels, row.get("asks_linked") or 0)
            declined.add_metric(labels, row.get("asks_declined") or 0)
            latency.add_metric(labels, count_value=row.get("calls") or 0, sum_value=row.get("latency_sum_s") or 0.0)
        yield from (processes, clients, rss, calls, errors, restarts, linked, declined, latency)
        broker = answer.get("broker", {})
        sessions = GaugeMetricFamily("mcpshare_broker_sessions", "Sessions of the broker by kind", labels=["kind"])
        sessions.add_metric(["shim"], answer.get("connections") or 0)
        front = answer.get("http_front") or {}
        sessions.add_metric(["http"], len(front.get("sessions") or ()))
        yield sessions
        refused = CounterMetricFamily("mcpshare_broker_refused", "New clients refused at a resource limit")
        refused.add_metric([], broker.get("refused") or 0)
        yield refused
        fds = GaugeMetricFamily("mcpshare_broker_open_files", "File descriptors the broker holds")
        if broker.get("open_files") is not None:
            fds.add_metric([], broker["open_files"])
        yield fds


def exposition(status: Callable[[], dict[str, Any]]) -> Callable[[], bytes]:
    """A function that renders the current counters in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    return lambda: generate_latest(registry)
