"""Process accounting through the OS: mark what a run starts, count it, measure it, and reap it.

Every server the benchmark starts, whichever way (pool, SDK stdio_client, raw pipe), gets two environment variables:
``MCPSHARE_BENCH_RUN`` (one id per run) and ``MCPSHARE_BENCH_SCENARIO`` (one id per measurement). Environment
variables are inherited by grandchildren (node workers, npx wrappers), unlike a marker argument, and they leave the
command line of the real server untouched. Processes are found by reading ``/proc/<pid>/environ`` through psutil;
the descendants of a marked process are counted with it even if they dropped the variables.

Nothing here trusts the pool's own bookkeeping: counts and memory come from the OS.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import psutil

MARK_VAR = "MCPSHARE_BENCH_RUN"
SCENARIO_VAR = "MCPSHARE_BENCH_SCENARIO"

Classifier = Callable[[list[str]], str]
STRAY_GRACE = 3.0
"""Seconds a child of ours that is not marked gets to exit on its own at the end before it counts as left behind."""


@dataclass(frozen=True)
class Usage:
    """What a set of processes costs, measured once: how many, and their resident memory.

    ``rss`` is the sum of each process's RSS (shared pages counted once per process, as ``ps`` and ``top`` show
    it); ``pss`` divides shared pages among the processes that map them, so it adds up to real memory use. ``pss``
    is None where the kernel does not expose it.
    """

    processes: int
    rss: int
    pss: int | None
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    pids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (bytes as integers; the report converts to MB)."""
        return {
            "processes": self.processes,
            "rss_bytes": self.rss,
            "pss_bytes": self.pss,
            "by_kind": self.by_kind,
            "pids": list(self.pids),
        }


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def measure(procs: Iterable[psutil.Process], classify: Classifier | None = None) -> Usage:
    """RSS and PSS of ``procs`` (those that exit meanwhile are skipped), grouped by ``classify(cmdline)``; each
    group also has ``pss_bytes`` and ``uss_bytes`` (memory only its processes hold) where the kernel tells them."""
    rss_total = 0
    pss_total: int | None = 0
    by_kind: dict[str, dict[str, int]] = {}
    pids: list[int] = []
    for proc in procs:
        try:
            rss = proc.memory_info().rss
            cmdline = proc.cmdline()
        except psutil.Error:
            continue
        pss: int | None
        uss: int | None
        try:
            full = proc.memory_full_info()
            pss, uss = getattr(full, "pss", None), getattr(full, "uss", None)
        except psutil.Error:
            pss = uss = None
        pids.append(proc.pid)
        rss_total += rss
        pss_total = pss_total + pss if pss_total is not None and pss is not None else None
        kind = classify(cmdline) if classify is not None else "all"
        slot = by_kind.setdefault(kind, {"processes": 0, "rss_bytes": 0, "pss_bytes": 0, "uss_bytes": 0})
        slot["processes"] += 1
        slot["rss_bytes"] += rss
        for key, value in (("pss_bytes", pss), ("uss_bytes", uss)):
            if value is None:
                slot.pop(key, None)
            elif key in slot:
                slot[key] += value
    return Usage(len(pids), rss_total, pss_total, by_kind, tuple(sorted(pids)))


class ProcessTracker:
    """Finds, measures and kills the processes of one benchmark run.

    Blocking psutil scans have ``a``-prefixed async twins that run in a worker thread, so a scan never stalls
    the event loop that the pool under measurement runs on.
    """

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id or uuid.uuid4().hex[:16]
        self._since = time.time() - 1.0
        self._uid = os.getuid()
        self._pid = os.getpid()
        self._own_pgid = os.getpgid(0)
        self._scenarios = 0
        self.pgids: set[int] = set()
        """Every process group a marked process was seen in (the SDK and the pool start each server in its own)."""

    def scenario(self, label: str) -> str:
        """A fresh scenario id: processes started with :meth:`env` of it can be counted apart from all others."""
        self._scenarios += 1
        return f"{label}#{self._scenarios}"

    def env(self, scenario: str) -> dict[str, str]:
        """The marker variables to put into the environment of every server started for ``scenario``."""
        return {MARK_VAR: self.run_id, SCENARIO_VAR: scenario}

    # ------------------------------------------------------------------ finding

    def find(self, scenario: str | Collection[str] | None = None) -> list[psutil.Process]:
        """Live marked processes of this run (of the given scenarios only, if any) and all their live descendants."""
        wanted = {scenario} if isinstance(scenario, str) else set(scenario) if scenario is not None else None
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["uids", "create_time", "status"]):
            info = proc.info
            if proc.pid == self._pid or info.get("status") in (None, psutil.STATUS_ZOMBIE):
                continue
            uids = info.get("uids")
            created = info.get("create_time")
            if uids is None or uids.real != self._uid or created is None or created < self._since:
                continue
            try:
                environ = proc.environ()
            except (psutil.Error, OSError):
                continue
            if environ.get(MARK_VAR) != self.run_id:
                continue
            if wanted is not None and environ.get(SCENARIO_VAR) not in wanted:
                continue
            found[proc.pid] = proc
        for proc in list(found.values()):
            try:
                children = proc.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                if child.pid not in found and _alive(child):
                    found[child.pid] = child
        for pid in found:
            with contextlib.suppress(OSError):
                self.pgids.add(os.getpgid(pid))
        return sorted(found.values(), key=lambda p: p.pid)

    async def afind(self, scenario: str | Collection[str] | None = None) -> list[psutil.Process]:
        """:meth:`find` in a worker thread."""
        return await anyio.to_thread.run_sync(self.find, scenario)

    def usage(self, scenario: str | Collection[str] | None, classify: Classifier | None = None) -> Usage:
        """Count and measure the processes of ``scenario`` (or of several; every marked one when None)."""
        return measure(self.find(scenario), classify)

    async def ausage(self, scenario: str | Collection[str] | None, classify: Classifier | None = None) -> Usage:
        """:meth:`usage` in a worker thread."""
        return await anyio.to_thread.run_sync(self.usage, scenario, classify)

    def guardians(self) -> list[psutil.Process]:
        """mcpshare's guardian processes started by this process (one per live BackendPool).

        The guardian carries no marker (it is started with our own environment), so it is found as our child
        running ``_guardian.py --grace``; the PDEATHSIG trampoline (``--exec``) becomes the server itself.
        """
        found = []
        try:
            children = psutil.Process(self._pid).children()
        except psutil.Error:
            return []
        for child in children:
            try:
                cmdline = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "_guardian" in cmdline and "--grace" in cmdline and _alive(child):
                found.append(child)
        return found

    # ------------------------------------------------------------------ waiting and reaping

    async def wait_gone(self, scenario: str | None = None, *, timeout: float) -> list[int]:
        """Poll until no process of ``scenario`` is left, at most ``timeout`` s; return the pids still alive."""
        deadline = time.monotonic() + timeout
        while True:
            left = await self.afind(scenario)
            if not left or time.monotonic() >= deadline:
                return [proc.pid for proc in left]
            await anyio.sleep(0.1)

    def reap(self, scenario: str | None = None, *, timeout: float = 3.0) -> list[int]:
        """SIGKILL every process of ``scenario`` (every marked one when None) and its process group; wait for them.

        A group is signalled only while a marked process still lives in it, so a recycled group id is never hit;
        our own group is never signalled.
        """
        procs = self.find(scenario)
        groups: set[int] = set()
        for proc in procs:
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(proc.pid))
        for pgid in groups - {self._own_pgid, 0, 1}:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=timeout)
        return [proc.pid for proc in procs]

    def _stray_children(self, exclude: set[int]) -> list[psutil.Process]:
        try:
            children = psutil.Process(self._pid).children(recursive=True)
        except psutil.Error:
            return []
        return [p for p in children if p.pid not in exclude and _alive(p)]

    def final_cleanup(self) -> dict[str, Any]:
        """Last step of a run, synchronous so it also runs after Ctrl-C: verify, then kill whatever is left.

        Returns ``marked_left`` (marked processes alive after every section tore down: should be empty),
        ``stray_children`` (other descendants of ours still alive, e.g. a guardian of a pool that was not closed),
        ``killed`` and ``remaining`` (alive even after SIGKILL), and ``clean``.
        """
        marked = self.find()
        marked_pids = [proc.pid for proc in marked]
        stray = self._stray_children(set(marked_pids))
        deadline = time.monotonic() + STRAY_GRACE
        while stray and time.monotonic() < deadline:  # a child may be exiting right now (a guardian being closed)
            time.sleep(0.05)
            stray = self._stray_children(set(marked_pids))
        stray_info = []
        for proc in stray:
            try:
                stray_info.append({"pid": proc.pid, "cmdline": " ".join(proc.cmdline())[:200]})
            except psutil.Error:
                continue
        killed = self.reap() if marked else []
        for proc in stray:
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed.append(proc.pid)
        psutil.wait_procs(stray, timeout=3.0)
        remaining = [proc.pid for proc in self.find()] + [p.pid for p in stray if _alive(p)]
        return {
            "run_id": self.run_id,
            "marked_left": marked_pids,
            "stray_children": stray_info,
            "killed": killed,
            "remaining": remaining,
            "process_groups_seen": len(self.pgids),
            "clean": not marked_pids and not stray_info and not remaining,
        }
