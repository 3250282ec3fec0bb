"""The pool: pool key -> one live backend, shared through leases.

* Lazy start on first acquire, single flight per key: concurrent acquires of a cold key spawn one process and all
  wait for it. A startup failure reaches every waiter and is not cached: the next acquire tries again.
* Releasing the last lease stops the process after an idle grace (0 = at once).
* ``refresh`` moves the leases of changed configs to new backends; an obsolete backend stops as soon as its
  last lease has moved, so no duplicate process lives on.
* A lease whose backend died is rebound on its next message (respawn on next use).
* Every process is spawned in its own process group and registered with a guardian process that kills the
  groups if this process dies without running any cleanup (SIGKILL).
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import math
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mcpshare.config import StdioServerConfig
from mcpshare.fdstream import DEFAULT_MAX_LINE_BYTES
from mcpshare.key import PoolKey, child_environment, make_key
from mcpshare.lanes import LaneSink, LeaseLanes
from mcpshare.metrics import MetricsSnapshot
from mcpshare.mux import (
    CONNECTION_CLOSED,
    PROBE_TIMEOUT,
    SESSION_BUFFER_BYTES,
    Backend,
    BackendError,
    Channel,
    Message,
    SessionOverflow,
    encode,
    error_response,
)
from mcpshare.process import Guardian, ServerProcess, SpawnError
from mcpshare.routing import Learned
from mcpshare.routing.modern import INPUT_TTL

logger = logging.getLogger("mcpshare.pool")

DEFAULT_IDLE_GRACE = 60.0
EntryState = Literal["starting", "ready", "stopping", "stopped", "failed", "crashed"]


class PoolClosed(RuntimeError):
    """The pool was closed; nothing can be acquired from it any more."""


class LeaseReleased(RuntimeError):
    """The lease was already released."""


class ServerDisabled(RuntimeError):
    """A server failed too often in a row; the circuit breaker refuses to start it until it is reset."""


class ServerStartError(RuntimeError):
    """A server process could not be started or did not complete its handshake.

    The message names the server, the command, the exit code (when it exited) and the tail of its stderr.
    """

    def __init__(
        self,
        server: str,
        command: str,
        cause: str,
        *,
        returncode: int | None = None,
        stderr_tail: str = "",
        resource_limit: bool = False,
    ) -> None:
        self.server = server
        self.command = command
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.resource_limit = resource_limit
        """The start failed for lack of descriptors or memory in *this* process: not the server's fault."""
        text = f"MCP server {server!r} ({command}) failed to start: {cause}"
        if returncode is not None:
            text += f" (exit code {returncode})"
        if stderr_tail:
            text += f"\n--- stderr (last lines) ---\n{stderr_tail}"
        super().__init__(text)


class LearnedStore:
    """What the processes of each key showed about asking their client (:class:`~mcpshare.routing.Learned`):
    one object per key, shared by its processes and so kept across respawns, and saved to ``path`` when given."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self._by_key: dict[str, Learned] = {}
        self._loaded: dict[str, Any] | None = None

    def of(self, key: PoolKey, config: StdioServerConfig) -> Learned:
        digest = key.digest()
        learned = self._by_key.get(digest)
        if learned is None:
            learned = Learned.from_json(self._load().get(digest))
            learned.askers |= Learned.declared(config.exclusive_tools).askers
            self._by_key[digest] = learned
        return learned

    def save(self, key: PoolKey, learned: Learned) -> None:
        if self.path is None:
            return
        data = self._load()
        data[key.digest()] = learned.to_json()
        if len(data) > 512:  # keys come and go (workspaces, tokens): keep the newest
            for stale in list(data)[: len(data) - 512]:
                del data[stale]
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(data, file)
            os.replace(temporary, self.path)
        except OSError as exc:
            logger.warning("cannot save what servers showed about asking their clients to %s: %s", self.path, exc)

    def _load(self) -> dict[str, Any]:
        if self._loaded is None:
            self._loaded = {}
            if self.path is not None:
                try:
                    with open(self.path, encoding="utf-8") as file:
                        data = json.load(file)
                    if isinstance(data, dict):
                        self._loaded = data
                except (OSError, ValueError):
                    pass
        return self._loaded


@dataclass
class _Health:
    """Consecutive failures of one key, for backoff and the circuit breaker."""

    server: str
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""
    disabled: bool = False


@dataclass(frozen=True)
class EndedBackend:
    """A process that ended, kept for a while so that ``mcpshare logs`` can still show its stderr."""

    server: str
    key: str
    pid: int
    state: str
    reason: str
    returncode: int | None
    ended_at: float
    stderr: tuple[str, ...]


@dataclass(frozen=True)
class BackendInfo:
    """A snapshot of one backend, for the CLI, tests and benchmarks."""

    server: str
    key: str
    pid: int | None
    state: EntryState
    leases: int
    restarts: int
    uptime: float
    protocol_version: str | None
    asks_linked: int = 0
    """Server-to-client requests whose owner a link named (traceparent, related-task)."""
    asks_declined: int = 0
    """Server-to-client requests declined because no single session could have caused them."""
    lane: int = 0
    """0 for a key's first process, 1.. for the extra lanes of a server with ``lanes`` > 1."""
    metrics: MetricsSnapshot = field(default_factory=MetricsSnapshot)
    """Calls this process answered, errors among them, and how long they took (see :mod:`mcpshare.metrics`)."""


class _Entry:
    """One pool key and the process serving it."""

    def __init__(self, key: PoolKey, config: StdioServerConfig, generation: int) -> None:
        self.key = key
        self.config = config
        self.generation = generation
        self.state: EntryState = "starting"
        self.ready = anyio.Event()
        self.finished = anyio.Event()
        self.stop_requested = anyio.Event()
        self.error: BaseException | None = None
        self.backend: Backend | None = None
        self.process: ServerProcess | None = None
        self.leases: set[Lease] = set()
        self.waiters = 0
        self.idle_scope: anyio.CancelScope | None = None
        self.obsolete = False
        self.started_at = 0.0
        self.stop_reason = "stopped"
        self.lane = 0
        """0 for the process every lease of the key is bound to; 1.. for the extra lanes (see mcpshare.lanes)."""

    @property
    def busy(self) -> bool:
        return bool(self.leases) or self.waiters > 0


class _Inbox:
    """A lease's sink, bounded by bytes: its memory stream, or, once :meth:`Lease.tap` installed one, a synchronous
    writer (which bounds itself: the broker's pipe to a client holds :data:`SESSION_BUFFER_BYTES`).

    Each queued message is counted at its encoded size; a message that would take the queue past ``limit`` raises
    :class:`anyio.WouldBlock` (the channel's overflow rules then apply), unless nothing waits: one message larger
    than the limit still goes through. The reader (:class:`InboxReader`) gives the bytes back as it takes messages.
    """

    __slots__ = ("limit", "on_close", "queued_bytes", "sizes", "stream", "writer")

    def __init__(self, stream: MemoryObjectSendStream[Message], limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.queued_bytes = 0
        self.sizes: deque[int] = deque()
        self.writer: Callable[[Message], None] | None = None
        self.on_close: Callable[[], None] | None = None

    def send_nowait(self, item: Message, /) -> None:
        writer = self.writer
        if writer is not None:
            writer(item)
            return
        size = len(encode(item))
        if self.queued_bytes and self.queued_bytes + size > self.limit:
            raise anyio.WouldBlock
        self.stream.send_nowait(item)
        self.sizes.append(size)
        self.queued_bytes += size

    def taken(self) -> None:
        """One message left the queue (in order: a memory stream is first in, first out)."""
        if self.sizes:
            self.queued_bytes -= self.sizes.popleft()

    def close(self) -> None:
        self.stream.close()
        on_close, self.on_close, self.writer = self.on_close, None, None
        if on_close is not None:
            on_close()


class InboxReader:
    """The receiving end of a lease's inbox (:attr:`Lease.receive`): a memory object stream's, giving back each
    message's bytes to the inbox's bound as it is taken."""

    __slots__ = ("_inbox", "_stream")

    def __init__(self, stream: MemoryObjectReceiveStream[Message], inbox: _Inbox) -> None:
        self._stream = stream
        self._inbox = inbox

    @property
    def queued_bytes(self) -> int:
        """Bytes of the messages waiting to be taken."""
        return self._inbox.queued_bytes

    async def receive(self) -> Message:
        message = await self._stream.receive()
        self._inbox.taken()
        return message

    def receive_nowait(self) -> Message:
        message = self._stream.receive_nowait()
        self._inbox.taken()
        return message

    def close(self) -> None:
        self._stream.close()

    def __aiter__(self) -> InboxReader:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None


class Lease:
    """One user's hold on a shared backend: a stable virtual session endpoint.

    Messages to the server go through :meth:`send`; messages for this user arrive on :attr:`receive`. The
    binding to a backend may change underneath (refresh, respawn after a crash); the endpoint does not.
    """

    def __init__(
        self,
        pool: BackendPool,
        config: StdioServerConfig,
        key: PoolKey,
        *,
        workspace: str | None,
        environ: Mapping[str, str] | None,
        sandbox: str | None,
        queue_bytes: int,
    ) -> None:
        self.pool = pool
        self.config = config
        self.key = key
        self.workspace = workspace
        self.environ = environ
        self.sandbox = sandbox
        stream, receive = anyio.create_memory_object_stream[Message](math.inf)
        self._sink = _Inbox(stream, queue_bytes)
        self.receive = InboxReader(receive, self._sink)
        self._entry: _Entry | None = None
        self.channel: Channel | None = None
        self.released = False
        self._rebind_lock = anyio.Lock()
        self.session_open = False
        self.broken: str | None = None
        self._lanes = LeaseLanes(self) if config.lanes > 1 else None

    def __repr__(self) -> str:
        return f"<Lease {self.config.name} {self.key.short()}>"

    @property
    def server(self) -> str:
        return self.config.name

    @property
    def backend(self) -> Backend | None:
        return self.channel.backend if self.channel is not None else None

    @property
    def pid(self) -> int | None:
        entry = self._entry
        return entry.process.pid if entry is not None and entry.process is not None else None

    @property
    def initialize_result(self) -> dict[str, Any] | None:
        backend = self.backend
        return backend.initialize_result if backend is not None else None

    async def send(self, message: Message) -> None:
        """Send one client-to-server message; respawns a dead backend first (respawn on next use)."""
        if self.released:
            raise LeaseReleased(f"lease on MCP server {self.server!r} was released")
        if self.broken is not None:
            raise SessionOverflow(f"session on MCP server {self.server!r} was disconnected: {self.broken}")
        channel = self.channel
        if channel is None or channel.closed or not channel.backend.alive:
            if "method" in message and "id" not in message:
                return  # a notification for a dead backend: nothing to tell
            try:
                channel = await self.pool._rebind(self)
            except Exception as exc:
                if "id" in message and "method" in message:
                    self.deliver(error_response(message["id"], CONNECTION_CLOSED, str(exc)))
                    return
                raise
        if self._lanes is not None:
            target, routed = self._lanes.channel_for(message)
            if target is not None:
                await target.send(routed)
                return
            if "id" in message and "method" in message:
                while channel.backend.alive and channel.backend.router.would_wait(message):
                    lane = await self.pool._lane_for(self)
                    if lane is not None:
                        index, lane_channel = lane
                        self._lanes.started(index, lane_channel, message["id"])
                        await lane_channel.send(message)
                        return
                    # Every process of the key is busy with a call that asks: wait here, not at one gate, so the
                    # call goes to whichever process frees first.
                    await self.pool._lane_freed(self.key)
        await channel.send(message)

    def send_now(self, message: Message) -> bool:
        """:meth:`send` for a message that needs no waiting (a request to a live server with room in its pipe),
        done at once; False, with nothing done, when it needs :meth:`send`. See :meth:`Backend.from_client_now`."""
        channel = self.channel
        if self.released or self.broken is not None or channel is None or not channel.backend.alive:
            return False
        if self._lanes is not None:
            return False  # which process a message goes to may need a lane started: the async path decides
        return channel.backend.from_client_now(channel, message)

    def tap(self, writer: Callable[[Message], None], on_end: Callable[[], None]) -> None:
        """From now on, hand each message for this session to ``writer`` at once instead of queueing it.

        For a consumer that can take a message without waiting (the broker writing to a client's pipe, which
        buffers): it saves a task switch per message. ``writer`` must not block; it raises :class:`anyio.WouldBlock`
        when its own buffer is full (the usual overflow rules then apply: droppable notifications are dropped,
        anything else ends the session) and :class:`anyio.BrokenResourceError` when its reader is gone.
        Messages already queued go to ``writer`` first; ``on_end`` is called once the lease ends (released, session
        overflow, pool closing), or at once if it already has.
        """
        while True:
            try:
                message = self.receive.receive_nowait()
            except anyio.WouldBlock:
                break
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                on_end()
                return
            writer(message)
        self._sink.writer = writer
        self._sink.on_close = on_end

    def deliver(self, message: Message) -> None:
        """Put a message in this lease's inbox without blocking (used for locally made answers)."""
        try:
            self._sink.send_nowait(message)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            logger.warning("%s: inbox full or closed; dropped a message", self)

    def _overflowed(self, reason: str) -> None:
        """The inbox was full for a message that may not be dropped: end this session cleanly.

        Closing the inbox lets the reader drain what is queued and then see the end (an SDK session then fails
        its pending requests at once); the backend and the other sessions never waited for this one.
        """
        self.broken = reason
        self.pool._unbind(self, reason=reason)
        self._sink.close()

    async def release(self) -> None:
        """Give the backend back. Releasing twice is an error; the process stops after the pool's idle grace."""
        if self.released:
            raise LeaseReleased(f"lease on MCP server {self.server!r} was already released")
        self.released = True
        self.pool._unbind(self, reason="lease released")
        self.pool._leases.discard(self)
        self._sink.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.released:
            await self.release()


class BackendPool:
    """Key -> backend, with single-flight start, leases, idle grace, refresh and a guardian against orphans.

    Use as an async context manager; it owns a task group that runs every backend.
    """

    def __init__(
        self,
        *,
        idle_grace: float = DEFAULT_IDLE_GRACE,
        client_info: Mapping[str, Any] | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        queue_bytes: int = SESSION_BUFFER_BYTES,
        guardian: bool = True,
        base_environ: Mapping[str, str] | None = None,
        stop_grace: float = 2.0,
        hang_timeout: float | None = 120.0,
        backoff_base: float = 0.25,
        backoff_max: float = 10.0,
        breaker_threshold: int = 5,
        stable_after: float = 30.0,
        eager_reads: bool = False,
        child_fd_limit: int | None = None,
        learned_file: str | os.PathLike[str] | None = None,
        probe_timeout: float = PROBE_TIMEOUT,
        input_ttl: float = INPUT_TTL,
    ) -> None:
        """Tuning:

        * ``idle_grace``: seconds a backend without leases lives on (0 = stop at once).
        * ``queue_bytes``: bytes of messages a lease may have waiting unread; past it, droppable notifications are
          dropped and anything else ends that lease's session (:class:`SessionOverflow`).
        * ``hang_timeout``: a backend whose waiting requests get no response at all for this long (after one ping
          probe at half of it) is declared hung and restarted; None disables the watchdog.
        * ``backoff_base``/``backoff_max``: exponential backoff (with jitter) before restarting a key that failed.
        * ``breaker_threshold``: consecutive failures (crashes within ``stable_after`` seconds of start, or
          failed starts) after which the key is disabled until :meth:`reset`.
        * ``eager_reads``: route each server's messages from the event loop's readiness callback (see
          :class:`Backend`); only for a loop started by ``anyio.run``.
        * ``child_fd_limit``: the soft limit of open files servers start with (the broker raises its own).
        * ``learned_file``: where what each key's servers showed about asking their client is kept (a JSON file:
          the broker keeps it in its runtime directory, so it survives restarts); None keeps it in memory only.
        * ``probe_timeout``: seconds a server of ``protocol = "auto"`` has to answer ``server/discover``.
        * ``input_ttl``: seconds a question held for a 2026-07-28 session waits for its retry.
        """
        if idle_grace < 0:
            raise ValueError("idle_grace must be >= 0")
        self.hang_timeout = hang_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.breaker_threshold = breaker_threshold
        self.stable_after = stable_after
        self._health: dict[PoolKey, _Health] = {}
        self.idle_grace = idle_grace
        self.client_info = dict(client_info or {"name": "mcpshare", "version": _version()})
        self.max_line_bytes = max_line_bytes
        self.eager_reads = eager_reads
        self.queue_bytes = queue_bytes
        self.stop_grace = stop_grace
        self._use_guardian = guardian
        self._base_environ = base_environ
        self._entries: dict[PoolKey, _Entry] = {}
        self._all: set[_Entry] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        self._guardian: Guardian | None = None
        self._closed = False
        self._restarts: dict[PoolKey, int] = {}
        self._leases: set[Lease] = set()
        self._lane_entries: dict[PoolKey, list[_Entry]] = {}
        self._lane_events: dict[PoolKey, anyio.Event] = {}
        self.spawns = 0
        self.child_fd_limit = child_fd_limit
        self.learned = LearnedStore(learned_file)
        self.probe_timeout = probe_timeout
        self.input_ttl = input_ttl
        self._ended: deque[EndedBackend] = deque(maxlen=32)

    async def __aenter__(self) -> Self:
        if self._use_guardian:
            self._guardian = await Guardian.start()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        try:
            try:
                await self.close()
            finally:
                assert self._tg is not None
                result = await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            # Also when the task group re-raises a cancellation: the guardian must not outlive the pool.
            if self._guardian is not None:
                with anyio.CancelScope(shield=True):
                    await self._guardian.close()
        return result

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ public API

    async def acquire(
        self,
        config: StdioServerConfig,
        *,
        workspace: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        instance: str | None = None,
        sandbox: str | None = None,
    ) -> Lease:
        """A lease on the one backend for this config (started if needed; waits for it to be ready).

        ``workspace`` is the user's cwd (part of the key for share="workspace"), ``environ`` the user's
        environment (for ``env_vars`` passthrough), ``sandbox`` an opaque sandbox policy label (part of the key:
        a process started for one policy never serves another).
        """
        self._check_open()
        if config.share == "thread" and instance is None:
            instance = uuid.uuid4().hex
        if workspace is None:
            workspace = os.getcwd()
        key = make_key(config, workspace=workspace, environ=environ, instance=instance, sandbox=sandbox)
        lease = Lease(
            self,
            config,
            key,
            workspace=os.fspath(workspace) if workspace is not None else None,
            environ=environ,
            sandbox=sandbox,
            queue_bytes=self.queue_bytes,
        )
        try:
            await self._bind(lease, key, config)
        except BaseException:
            lease._sink.close()
            lease.receive.close()
            raise
        self._leases.add(lease)
        return lease

    async def refresh(self, configs: Mapping[str, StdioServerConfig]) -> list[str]:
        """Move leases whose server config changed to a backend for the new config.

        Returns the names of the servers whose backend was replaced. Leases of servers not named in ``configs``
        are left alone. A backend whose last lease moved away stops at once: no duplicate process lives on.
        Every lease is tried even when one new backend fails to start; the failures are raised together at the
        end, and a lease whose move failed stays unbound: its next message, or the next refresh, tries again.
        """
        self._check_open()
        for entry in list(self._all):
            new_config = configs.get(entry.config.name)
            if new_config is not None and new_config != entry.config and not entry.busy:
                self._retire(entry)  # an idle backend of a changed config: nobody will come back to it
        replaced: set[str] = set()
        errors: list[Exception] = []
        for lease in list(self._leases):
            new_config = configs.get(lease.config.name)
            if new_config is None or lease.released:
                continue
            new_key = self._key_for(lease, new_config)
            entry = lease._entry
            lease.config = new_config
            if new_key == lease.key and lease.channel is not None:
                if entry is not None:
                    entry.config = new_config  # same process; timeouts and tool filters come from the new config
                continue
            replaced.add(new_config.name)
            if entry is not None and entry.key != new_key:
                entry.obsolete = True
                if self._entries.get(entry.key) is entry:
                    del self._entries[entry.key]
            lease.key = new_key
            try:
                await self._move(lease)
            except Exception as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup("some MCP servers failed to start under their new config", errors)
        return sorted(replaced)

    async def relocate(
        self, lease: Lease, *, workspace: str | os.PathLike[str] | None, sandbox: str | None = None
    ) -> bool:
        """Move a lease to another workspace or sandbox; True when that needed another backend.

        The old backend stops after the idle grace once it has no lease left (another user may still share it).
        """
        self._check_open()
        lease.workspace = os.fspath(workspace) if workspace is not None else None
        lease.sandbox = sandbox
        new_key = self._key_for(lease, lease.config)
        if new_key == lease.key:
            return False
        lease.key = new_key
        await self._move(lease)
        return True

    @staticmethod
    def _key_for(lease: Lease, config: StdioServerConfig) -> PoolKey:
        return make_key(
            config, workspace=lease.workspace, environ=lease.environ, instance=lease.key.instance, sandbox=lease.sandbox
        )

    def _retire(self, entry: _Entry) -> None:
        """Stop an unused backend whose config is gone or changed."""
        entry.obsolete = True
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        self._cancel_idle(entry)
        self._maybe_stop(entry)

    def snapshot(self) -> list[BackendInfo]:
        """What runs now: one row per live or starting backend."""
        now = time.monotonic()
        rows = []
        for entry in sorted(self._all, key=lambda e: (e.config.name, e.key.short(), e.lane)):
            if entry.state in ("stopped", "failed"):
                continue
            process = entry.process
            rows.append(
                BackendInfo(
                    server=entry.config.name,
                    key=entry.key.short(),
                    pid=process.pid if process is not None else None,
                    state=entry.state,
                    leases=len(entry.leases),
                    restarts=entry.generation,
                    uptime=now - entry.started_at if entry.started_at else 0.0,
                    protocol_version=entry.backend.protocol_version if entry.backend is not None else None,
                    asks_linked=entry.backend.stats.linked if entry.backend is not None else 0,
                    asks_declined=entry.backend.stats.declined if entry.backend is not None else 0,
                    lane=entry.lane,
                    metrics=entry.backend.metrics.snapshot() if entry.backend is not None else MetricsSnapshot(),
                )
            )
        return rows

    async def close(self) -> None:
        """Stop every backend (gracefully, then by force) and refuse new acquires."""
        if self._closed:
            return
        self._closed = True
        entries = list(self._all)
        for entry in entries:
            for lease in list(entry.leases):
                lease.released = True
                self._unbind(lease, reason="pool closed")
                lease._sink.close()
        for lease in list(self._leases):  # leases whose move failed are bound to nothing
            lease.released = True
            lease._sink.close()
        self._leases.clear()
        for entry in entries:
            self._cancel_idle(entry)
            entry.stop_reason = "the pool is closing"
            entry.stop_requested.set()
        for key in list(self._lane_events):
            self._signal_lanes(key)
        with anyio.CancelScope(shield=True):
            for entry in entries:
                await entry.finished.wait()

    # ------------------------------------------------------------------ binding

    def _check_open(self) -> None:
        if self._closed or self._tg is None:
            raise PoolClosed("the pool is closed" if self._closed else "the pool is not running (use 'async with')")

    async def _bind(self, lease: Lease, key: PoolKey, config: StdioServerConfig) -> Channel:
        entry = await self._ready_entry(key, config)
        assert entry.backend is not None
        channel = entry.backend.attach(lease._sink, on_overflow=lease._overflowed)
        lease._entry = entry
        lease.channel = channel
        entry.leases.add(lease)
        return channel

    def _unbind(self, lease: Lease, *, reason: str) -> None:
        entry, channel = lease._entry, lease.channel
        lease._entry = None
        lease.channel = None
        if lease._lanes is not None:
            lease._lanes.close(reason)
        if channel is not None:
            channel.close(reason)
        if entry is not None:
            entry.leases.discard(lease)
            self._maybe_stop(entry)

    async def _move(self, lease: Lease, *, reconfigured: bool = True) -> None:
        """Rebind a lease to the backend of its (current) key, carrying its session state over.

        After a reconfiguration the session is told that every list may have changed. After a respawn of the
        same config it is told only when the tool list actually differs from what it could have seen.
        """
        old_channel = lease.channel
        old_tools = old_channel.backend.cached_tools() if old_channel is not None else None
        state: dict[str, Any] = {"capabilities": {}, "log_level": None, "subscriptions": []}
        if old_channel is not None:
            state = {
                "capabilities": old_channel.capabilities,
                "log_level": old_channel.log_level,
                "subscriptions": sorted(old_channel.subscriptions),
            }
        self._unbind(lease, reason="server restarted or reconfigured")
        channel = await self._bind(lease, lease.key, lease.config)
        channel.backend.restore(channel, **state)
        if reconfigured:
            for kind in ("tools", "prompts", "resources"):
                lease.deliver({"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"})
            return
        try:
            new_tools = await channel.backend.list_tools()
        except BackendError:
            new_tools = None
        if old_tools is None or new_tools != old_tools:
            lease.deliver({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})

    async def _rebind(self, lease: Lease) -> Channel:
        """Bind a lease whose backend died to a fresh one (single flight per key through ``_ready_entry``)."""
        async with lease._rebind_lock:
            if lease.channel is not None and not lease.channel.closed and lease.channel.backend.alive:
                return lease.channel
            self._check_open()
            await self._move(lease, reconfigured=False)
            assert lease.channel is not None
            return lease.channel

    async def _lane_for(self, lease: Lease) -> tuple[int, Channel] | None:
        """A satellite session for ``lease`` on an extra lane with nothing that may ask in flight, starting one if
        the key has fewer than ``lanes - 1``; None when every lane is busy (the call then waits at the gate)."""
        key, config = lease.key, lease.config
        lanes = self._lane_entries.setdefault(key, [])
        for entry in lanes:
            backend = entry.backend
            if entry.state == "ready" and backend is not None and backend.alive and not backend.router.busy:
                return self._attach_lane(lease, entry)
        if len(lanes) >= config.lanes - 1 or self._closed or self._tg is None:
            return None
        used = {entry.lane for entry in lanes}
        entry = _Entry(key, config, self._restarts.get(key, 0))
        entry.lane = next(index for index in itertools.count(1) if index not in used)
        entry.waiters += 1
        lanes.append(entry)
        self._all.add(entry)
        self._tg.start_soon(self._run, entry, name=f"mcpshare backend {config.name} lane {entry.lane}")
        logger.info("starting lane %d of MCP server %r: calls that ask are waiting", entry.lane, config.name)
        try:
            await entry.ready.wait()
        finally:
            entry.waiters -= 1
        if entry.error is not None or entry.state != "ready" or entry.backend is None or not entry.backend.alive:
            return None  # it failed to start: the call waits at the gate of the first process instead
        return self._attach_lane(lease, entry)

    async def _lane_freed(self, key: PoolKey) -> None:
        """Until a process of ``key`` ends a call that held its gate."""
        event = self._lane_events.get(key)
        if event is None:
            event = self._lane_events[key] = anyio.Event()
        await event.wait()

    def _signal_lanes(self, key: PoolKey) -> None:
        event = self._lane_events.pop(key, None)
        if event is not None:
            event.set()

    def _attach_lane(self, lease: Lease, entry: _Entry) -> tuple[int, Channel]:
        assert entry.backend is not None and lease._lanes is not None
        existing = lease._lanes.channels.get(entry.lane)
        if existing is not None and not existing.closed:
            return entry.lane, existing
        channel = entry.backend.attach(LaneSink(lease._lanes, entry.lane), satellite=True)
        entry.leases.add(lease)
        self._cancel_idle(entry)
        return entry.lane, channel

    def _release_lane(
        self, lease: Lease, lane: int, channel: Channel, *, reason: str = "its calls there are done"
    ) -> None:
        channel.close(reason)
        for entry in self._lane_entries.get(lease.key, ()):
            if entry.lane == lane:
                entry.leases.discard(lease)
                self._maybe_stop(entry)
        self._signal_lanes(lease.key)

    async def _ready_entry(self, key: PoolKey, config: StdioServerConfig) -> _Entry:
        while True:
            self._check_open()
            entry = self._entries.get(key)
            if entry is not None and entry.stop_requested.is_set() and entry.state in ("starting", "ready"):
                # Its last lease left a moment ago and the stop is decided (idle grace 0): a lease bound to it now
                # would fail with it. Wait for the stop, then start afresh.
                await entry.finished.wait()
                continue
            if entry is not None and entry.state == "ready" and entry.backend is not None and entry.backend.alive:
                self._cancel_idle(entry)
                return entry
            if entry is None or entry.state in ("stopped", "failed", "crashed", "stopping"):
                if entry is not None and entry.state == "stopping" and not entry.obsolete:
                    # A stop is under way for this very key: wait for it, then start afresh.
                    await entry.finished.wait()
                    continue
                health = self._health.get(key)
                if health is not None and health.disabled:
                    raise ServerDisabled(
                        f"MCP server {config.name!r} is disabled after {health.failures} consecutive failures "
                        f"(last: {health.last_error}). Fix it, then reset it (BackendPool.reset / "
                        f"`mcpshare restart {config.name}`)."
                    )
                if health is not None and (delay := health.retry_at - anyio.current_time()) > 0:
                    await anyio.sleep(delay)  # backoff after a failure; then look again (someone may have started it)
                    continue
                entry = _Entry(key, config, self._restarts.get(key, 0))
                self._entries[key] = entry
                self._all.add(entry)
                assert self._tg is not None
                self._tg.start_soon(self._run, entry, name=f"mcpshare backend {config.name}")
            entry.waiters += 1
            self._cancel_idle(entry)
            try:
                await entry.ready.wait()
            finally:
                entry.waiters -= 1
            if entry.error is not None:
                raise entry.error
            if entry.state == "ready" and entry.backend is not None and entry.backend.alive:
                return entry
            # it died between ready and now: loop and start again

    def _cancel_idle(self, entry: _Entry) -> None:
        if entry.idle_scope is not None:
            entry.idle_scope.cancel()
            entry.idle_scope = None

    def _maybe_stop(self, entry: _Entry) -> None:
        if entry.busy or entry.state not in ("starting", "ready"):
            return
        if entry.obsolete or self.idle_grace == 0 or self._closed:
            entry.stop_reason = (
                "its config changed or it was restarted"
                if entry.obsolete
                else "the pool is closing"
                if self._closed
                else "its last client left (idle grace 0)"
            )
            entry.stop_requested.set()
            return
        if entry.idle_scope is None and self._tg is not None:
            # The scope exists before the task runs, so a close or an acquire right now can already cancel it.
            entry.idle_scope = anyio.CancelScope()
            self._tg.start_soon(self._idle_stop, entry, entry.idle_scope)

    async def _idle_stop(self, entry: _Entry, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep(self.idle_grace)
            if not entry.busy:
                entry.stop_reason = f"no client for the idle grace of {self.idle_grace:g} s"
                entry.stop_requested.set()
        if entry.idle_scope is scope:
            entry.idle_scope = None

    # ------------------------------------------------------------------ running one backend

    async def _run(self, entry: _Entry) -> None:
        config = entry.config
        key = entry.key
        argv = (key.command, *key.args)
        try:
            environ = child_environment(key, self._base_environ)
            process = await ServerProcess.spawn(
                config.name,
                argv,
                env=environ,
                cwd=key.cwd,
                guardian=self._guardian,
                max_line_bytes=self.max_line_bytes,
                fd_limit=self.child_fd_limit,
            )
        except Exception as exc:
            cause = str(exc) if isinstance(exc, SpawnError) else f"{exc.__class__.__name__}: {exc}"
            limit = _out_of_resources(exc)
            self._fail(entry, ServerStartError(config.name, _display(argv), cause, resource_limit=limit))
            self._all.discard(entry)
            if entry.lane and entry in self._lane_entries.get(key, ()):
                self._lane_entries[key].remove(entry)
            entry.finished.set()
            return
        self.spawns += 1
        entry.process = process
        entry.started_at = time.monotonic()
        try:
            await self._serve(entry, process)
        finally:
            with anyio.CancelScope(shield=True):
                final = entry.state
                if final == "ready":
                    entry.state = final = "stopping"
                await process.stop(stdin_grace=self.stop_grace, term_grace=self.stop_grace)
                if final not in ("crashed", "failed"):
                    entry.state = "stopped"
                self._record_end(entry, process)
                if self._entries.get(key) is entry:
                    del self._entries[key]
                if entry.lane and entry in self._lane_entries.get(key, ()):
                    self._lane_entries[key].remove(entry)
                self._all.discard(entry)
                entry.ready.set()
                entry.finished.set()

    async def _serve(self, entry: _Entry, process: ServerProcess) -> None:
        config = entry.config

        def describe_exit() -> str:
            code = process.returncode
            tail = process.stderr.tail(10)
            text = f"exit code {code}" if code is not None else "process still running"
            return text + (f"; stderr: {tail}" if tail else "")

        backend = Backend(
            config.name,
            process.stdin,
            process.stdout,
            client_info=self.client_info,
            roots=lambda: _roots(entry.key),
            describe_exit=describe_exit,
            wait_exit=process.wait,
            eager_reads=self.eager_reads,
            protocol=config.protocol,
            learned=self.learned.of(entry.key, config),
            on_learned=lambda learned: self.learned.save(entry.key, learned),
            probe_timeout=self.probe_timeout,
            input_ttl=self.input_ttl,
        )
        if config.lanes > 1:
            backend.on_freed = lambda: self._signal_lanes(entry.key)
        async with anyio.create_task_group() as tg:
            tg.start_soon(process.drain_stderr)
            await tg.start(backend.serve)
            try:
                with anyio.fail_after(config.startup_timeout_sec):
                    await backend.initialize()
            except TimeoutError:
                tail = process.stderr.tail(20)
                self._fail(
                    entry,
                    ServerStartError(
                        config.name,
                        _display(process.argv),
                        f"no answer to the MCP handshake within {config.startup_timeout_sec:g} s",
                        stderr_tail=tail,
                    ),
                )
                tg.cancel_scope.cancel()
                return
            except BackendError as exc:
                exited = backend.error is not None  # the connection ended: the process died or closed its stdout
                if exited:
                    with anyio.move_on_after(1.0):
                        await process.wait()
                    await anyio.sleep(0.05)  # let the stderr drain take the last lines
                self._fail(
                    entry,
                    ServerStartError(
                        config.name,
                        _display(process.argv),
                        "the process exited or closed its stdout during the MCP handshake" if exited else str(exc),
                        returncode=process.returncode,
                        stderr_tail=process.stderr.tail(20),
                    ),
                )
                tg.cancel_scope.cancel()
                return
            entry.backend = backend
            entry.state = "ready"
            entry.ready.set()
            logger.info(
                "started MCP server %r (key %s, pid %d, %s): %s",
                config.name,
                entry.key.short(),
                process.pid,
                backend.protocol_version,
                _display(process.argv),
            )
            if self.hang_timeout is not None:
                tg.start_soon(backend.watch, self.hang_timeout)
            async with anyio.create_task_group() as waiters:

                async def wait_stop() -> None:
                    await entry.stop_requested.wait()
                    waiters.cancel_scope.cancel()

                async def wait_closed() -> None:
                    await backend.closed.wait()
                    self._signal_lanes(entry.key)  # calls waiting for a free process look again (and see it gone)
                    entry.state = "crashed"
                    # Counted now, before the stop below, so a respawn racing with it sees the failure.
                    key = entry.key
                    self._restarts[key] = self._restarts.get(key, 0) + 1
                    uptime = time.monotonic() - entry.started_at
                    self._record_failure(key, config.name, str(backend.error or "crashed"), uptime=uptime)
                    if self._entries.get(key) is entry:
                        del self._entries[key]
                    waiters.cancel_scope.cancel()

                waiters.start_soon(wait_stop)
                waiters.start_soon(wait_closed)
            if entry.state != "crashed":
                entry.state = "stopping"
            if entry.state == "stopping":
                backend.fail("was stopped by the pool", expected=True)
            tg.cancel_scope.cancel()

    def _record_failure(self, key: PoolKey, server: str, error: str, *, uptime: float | None = None) -> None:
        """Count a failure of ``key``: schedule the next start after a jittered backoff; open the breaker."""
        health = self._health.setdefault(key, _Health(server))
        if uptime is not None and uptime >= self.stable_after:
            health.failures = 0  # it ran fine for a while: this is a new streak
        health.failures += 1
        health.last_error = error.splitlines()[0] if error else "unknown error"
        delay = min(self.backoff_base * 2 ** (health.failures - 1), self.backoff_max)
        health.retry_at = anyio.current_time() + delay * random.uniform(0.5, 1.0)
        if health.failures >= self.breaker_threshold:
            health.disabled = True
            logger.error("MCP server %r disabled after %d consecutive failures", server, health.failures)

    def reset(self, server: str) -> int:
        """Close the circuit breaker (and forget the backoff) of every key of ``server``; returns how many."""
        keys = [key for key, health in self._health.items() if health.server == server]
        for key in keys:
            del self._health[key]
        return len(keys)

    def health(self, server: str) -> list[tuple[int, bool, str]]:
        """(consecutive failures, disabled, last error) for each key of ``server`` that failed recently."""
        return [(h.failures, h.disabled, h.last_error) for h in self._health.values() if h.server == server]

    def _record_end(self, entry: _Entry, process: ServerProcess) -> None:
        """Log how a backend ended and keep its stderr tail (``mcpshare logs``)."""
        if entry.state == "crashed":
            why = str(entry.backend.error) if entry.backend is not None and entry.backend.error else "crashed"
        elif entry.state == "failed":
            why = str(entry.error).splitlines()[0] if entry.error is not None else "failed to start"
        else:
            why = entry.stop_reason
        uptime = time.monotonic() - entry.started_at if entry.started_at else 0.0
        logger.info(
            "stopped MCP server %r (key %s, pid %d) after %.1f s: %s; exit code %s",
            entry.config.name,
            entry.key.short(),
            process.pid,
            uptime,
            why,
            process.returncode,
        )
        self._ended.append(
            EndedBackend(
                server=entry.config.name,
                key=entry.key.short(),
                pid=process.pid,
                state=entry.state,
                reason=why,
                returncode=process.returncode,
                ended_at=time.time(),
                stderr=tuple(process.stderr.lines()),
            )
        )

    def stderr_tails(self, server: str, *, lines: int = 50) -> list[dict[str, Any]]:
        """The last ``lines`` lines each process of ``server`` wrote to stderr: running ones, then those that ended
        recently (newest first), so the output of a server that crashed or failed to start can still be read."""
        rows: list[dict[str, Any]] = []
        for entry in sorted(self._all, key=lambda e: e.key.short()):
            if entry.config.name == server and entry.process is not None and entry.state not in ("stopped", "failed"):
                tail = entry.process.stderr.lines()[-lines:] if lines else []
                rows.append({"key": entry.key.short(), "pid": entry.process.pid, "state": entry.state, "stderr": tail})
        for ended in reversed(self._ended):
            if ended.server == server:
                rows.append(
                    {
                        "key": ended.key,
                        "pid": ended.pid,
                        "state": ended.state,
                        "ended": ended.reason,
                        "returncode": ended.returncode,
                        "ended_at": ended.ended_at,
                        "stderr": list(ended.stderr[-lines:]) if lines else [],
                    }
                )
        return rows

    async def restart(self, server: str) -> int:
        """Reset the breaker of ``server`` and stop its running backends; leases rebind on their next message.

        Returns the number of backends stopped. Requests in flight get an error naming the restart.
        """
        self._check_open()
        self.reset(server)
        stopped = [e for e in self._all if e.config.name == server and e.state in ("starting", "ready")]
        for entry in stopped:
            entry.obsolete = True
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
            self._cancel_idle(entry)
            entry.stop_reason = "restart requested"
            entry.stop_requested.set()
        for entry in stopped:
            with anyio.CancelScope(shield=True):
                await entry.finished.wait()
        return len(stopped)

    def _fail(self, entry: _Entry, error: ServerStartError) -> None:
        logger.error("%s", error)
        if not error.resource_limit:  # our own shortage says nothing about the server: no backoff, no breaker
            self._record_failure(entry.key, entry.config.name, str(error))
        entry.error = error
        entry.state = "failed"
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        entry.ready.set()


def _out_of_resources(exc: BaseException) -> bool:
    """Whether a failed spawn ran out of descriptors, processes or memory (somewhere in its chain of causes)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _roots(key: PoolKey) -> list[dict[str, Any]]:
    """Roots a shared server is told: the workspace its key was made for, or none for a global server."""
    if key.cwd is None:
        return []
    path = Path(key.cwd)
    return [{"uri": path.as_uri(), "name": path.name or str(path)}]


def _display(argv: tuple[str, ...] | list[str]) -> str:
    """A command for messages: the program and at most a few arguments (arguments may hold secrets)."""
    shown = [os.path.basename(argv[0]), *argv[1:3]]
    return " ".join(shown) + (" ..." if len(argv) > 3 else "")


def _version() -> str:
    from mcpshare import __version__

    return __version__
