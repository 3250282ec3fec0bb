"""Who caused a server-to-client request: the links that say it, and the gate that makes "only one can have" true.

In the handshake era nothing on the wire ties an elicitation or a sampling request to the client request that
caused it. Three things make attribution exact anyway, in this order:

1. **links**: ``_meta["io.modelcontextprotocol/related-task"]`` on the messages of a task-augmented call names the
   task, whose creator we know; and the W3C ``traceparent`` the router stamps, unique, on every request that may
   ask: servers that propagate the context of a call into the requests it makes (the Python SDK does) hand it back,
   and by the W3C Trace Context rules a request whose parent is that span was caused by that call;
2. **only one candidate**: SEP-2260 requires every such request to belong to an originating client request, and only
   ``tools/call``, ``prompts/get`` and ``resources/read`` (or a method the spec does not define) can be one; when a
   single one is in flight on the process, it is the owner;
3. **the gate**: a tool, prompt or resource that has ever asked is *learned*; its calls are writers of a fair
   readers-writer gate per process, so one runs only alone among the requests that may ask, and its asks have
   a single candidate by construction. Other calls are readers: they flow together, and wait only while a writer
   runs. A first ask that is still ambiguous (several readers in flight) is declined, once: its tool is learned.

No rule here guesses: a request with several possible owners and no link is declined, never delivered.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mcpshare.routing.wire import INPUT_METHODS, QUIET_METHODS, TRACEPARENT, meta_of

Subject = tuple[str, str]
"""What a request acts on: (method, tool or prompt name or resource URI)."""

SUSPECT_CLEARANCE = 3
"""Calls a merely suspected asker must complete alone, without asking, before it is a reader again."""


def may_ask(method: str) -> bool:
    """Whether a request of ``method`` can be the origin of a server-to-client request."""
    return method in INPUT_METHODS or method not in QUIET_METHODS


@dataclass
class Learned:
    """What one server configuration (pool key) has shown about asking: shared by its processes, kept across
    respawns, and saved by the pool when ``changed`` says so.

    ``askers`` asked while nothing else could have; ``suspects`` were in flight together when an ask came that
    could not be attributed: they are gated like askers until each has run alone :data:`SUSPECT_CLEARANCE` times
    without asking."""

    askers: set[Subject] = field(default_factory=set)
    suspects: dict[Subject, int] = field(default_factory=dict)
    changed: bool = False

    @classmethod
    def declared(cls, tools: Iterable[str]) -> Learned:
        """Seeded with the config's ``exclusive_tools``."""
        return cls(askers={("tools/call", name) for name in tools})

    def gated(self, subject: Subject) -> bool:
        return subject in self.askers or subject in self.suspects

    def confirm(self, subject: Subject) -> bool:
        """``subject`` asked with no other possible owner; True if that is news."""
        self.suspects.pop(subject, None)
        if subject in self.askers:
            return False
        self.askers.add(subject)
        self.changed = True
        return True

    def suspect(self, subjects: Iterable[Subject]) -> list[Subject]:
        """An ask could not be attributed among ``subjects``: gate all of them; the newly gated ones."""
        new = []
        for subject in subjects:
            if subject not in self.askers:
                if subject not in self.suspects:
                    new.append(subject)
                self.suspects[subject] = 0
        self.changed = self.changed or bool(new)
        return new

    def ran_alone_quietly(self, subject: Subject) -> None:
        """A gated call completed without asking: a suspect comes closer to being cleared."""
        if subject in self.suspects:
            self.suspects[subject] += 1
            if self.suspects[subject] >= SUSPECT_CLEARANCE:
                del self.suspects[subject]
                self.changed = True

    def to_json(self) -> dict[str, Any]:
        return {
            "askers": sorted([method, name] for method, name in self.askers),
            "suspects": sorted([method, name] for method, name in self.suspects),
        }

    @classmethod
    def from_json(cls, data: Any) -> Learned:
        learned = cls()
        if isinstance(data, dict):
            for group, target in (("askers", learned.askers), ("suspects", None)):
                for item in data.get(group) or ():
                    if isinstance(item, list) and len(item) == 2 and all(isinstance(part, str) for part in item):
                        subject = (item[0], item[1])
                        if target is not None:
                            target.add(subject)
                        else:
                            learned.suspects[subject] = 0
        return learned


class Gate:
    """A fair readers-writer gate over the requests of one process that may ask their client.

    Entries are opaque to the gate (the router's pending requests, which remember how they were admitted).
    :meth:`admit` says whether one may go now; otherwise it waits in FIFO order, and :meth:`finish` returns, in
    order, the entries that may go next. A reader that arrives after a waiting writer waits behind it, so writers
    are never starved.
    """

    __slots__ = ("_queue", "readers", "writer")

    def __init__(self) -> None:
        self.readers = 0
        self.writer: object | None = None
        self._queue: deque[tuple[object, bool]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def writers_waiting(self) -> int:
        return sum(1 for _, is_writer in self._queue if is_writer)

    def admit(self, entry: object, *, writer: bool) -> bool:
        """True if ``entry`` may go now (it then holds the gate until :meth:`finish`); else it is queued."""
        if not self._queue and self._fits(writer):
            self._take(entry, writer)
            return True
        self._queue.append((entry, writer))
        return False

    def finish(self, *, writer: bool) -> list[object]:
        """An admitted entry (a writer, or one of the readers) finished: the entries that may go now, in order."""
        if writer:
            self.writer = None
        elif self.readers > 0:
            self.readers -= 1
        return self._next()

    def drop(self, entry: object) -> list[object]:
        """Take a queued entry out (cancelled before it went): the entries that may go now that it is gone."""
        for index, (queued, _) in enumerate(self._queue):
            if queued is entry:
                del self._queue[index]
                return self._next()
        return []

    def clear(self) -> list[object]:
        """Everything queued, in order, and an empty gate (the process is gone)."""
        queued = [entry for entry, _ in self._queue]
        self._queue.clear()
        self.readers = 0
        self.writer = None
        return queued

    def _fits(self, writer: bool) -> bool:
        return self.writer is None and (not writer or self.readers == 0)

    def _take(self, entry: object, writer: bool) -> None:
        if writer:
            self.writer = entry
        else:
            self.readers += 1

    def _next(self) -> list[object]:
        admitted = []
        while self._queue and self._fits(self._queue[0][1]):
            entry, writer = self._queue.popleft()
            self._take(entry, writer)
            admitted.append(entry)
        return admitted


class Stamps:
    """Unique ``traceparent`` values for forwarded requests, and the request a returned one belongs to.

    The trace id of a client's own ``traceparent`` is kept (its flags too); only the parent id is ours, unique per
    forwarded request, so a server that propagates the call's context into its own requests names the call.
    """

    __slots__ = ("_next", "owners")

    def __init__(self) -> None:
        self._next = secrets.randbits(63) | 1
        self.owners: dict[str, object] = {}

    def stamp(self, meta: dict[str, Any], owner: object, session: Any = None) -> tuple[str, str | None]:
        """Set ``meta["traceparent"]`` (``meta`` is the request's own copy of its ``_meta``) to a fresh value owned by
        ``owner``; (parent id, the client's value). Without a client value of its own, the trace id is one per
        session: only the parent id needs to be unique."""
        original = meta.get(TRACEPARENT)
        if isinstance(original, str):
            trace, flags = _trace_and_flags(original)
        else:
            trace = getattr(session, "trace_id", None) if session is not None else None
            if trace is None:
                trace = secrets.token_hex(16)
                if session is not None:
                    session.trace_id = trace
            flags = "00"
        self._next = (self._next + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF or 1
        parent = f"{self._next:016x}"
        meta[TRACEPARENT] = f"00-{trace}-{parent}-{flags}"
        self.owners[parent] = owner
        return parent, original if isinstance(original, str) else None

    def owner_of(self, params: Any) -> tuple[object | None, str | None]:
        """The owner named by a request's ``traceparent`` (and that parent id), if it is one of ours."""
        meta = meta_of(params)
        value = meta.get(TRACEPARENT) if meta is not None else None
        if not isinstance(value, str):
            return None, None
        parts = value.split("-")
        if len(parts) != 4:
            return None, None
        return self.owners.get(parts[2]), parts[2]

    def forget(self, parent: str | None) -> None:
        if parent is not None:
            self.owners.pop(parent, None)


def _trace_and_flags(value: Any) -> tuple[str, str]:
    """The trace id and flags of a valid W3C traceparent, else a fresh trace id and flags 00 (not sampled)."""
    if isinstance(value, str):
        parts = value.split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and len(parts[3]) == 2 and _hex(parts[1]) and _hex(parts[3]):
            if parts[1] != "0" * 32:
                return parts[1], parts[3]
    return secrets.token_hex(16), "00"


def _hex(text: str) -> bool:
    return all(char in "0123456789abcdef" for char in text)
