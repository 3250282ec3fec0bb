"""``mcpshare serve``: the broker that lets separate agent processes share one process per server config.

Layer 8. It owns one :class:`~mcpshare.pool.BackendPool` (so one guardian: SIGKILL the broker and every server
dies with it) and listens on a Unix socket in the private runtime directory (:mod:`mcpshare.runtime`). Each
connection from a shim (``mcpshare connect``) is one virtual session: the broker resolves which server config the
hello names, acquires a pool lease for the client's cwd and environment, then pumps newline-delimited JSON-RPC
between the socket and the lease. The lease is exactly what a thread of an in-process ThreadManager gets, so the
routing rules are the same: its own ``initialize`` answered from the cache, its own responses, progress, cancels
and server-to-client requests, never anyone else's.

Which config a hello names (an embedded command, a config file, or the broker's own configs) is decided by
:mod:`mcpshare.sources`.

Peers of another uid are refused (``SO_PEERCRED``) even if the socket's permissions were loosened. SIGTERM, SIGINT
and SIGHUP stop the broker cleanly: the socket is removed first (new shims start a new broker instead of talking to
a dying one), then every server is stopped, then the lock is released.

``serve --http PORT`` adds a Streamable HTTP front on 127.0.0.1 for clients that speak
HTTP, so they need no shim process at all (:mod:`mcpshare.http_front`); it shares the same pool, so HTTP and shim
clients share processes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import logging.handlers
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil
from anyio.streams.buffered import BufferedByteReceiveStream

from mcpshare import __version__, runtime, switches
from mcpshare.exposition import exposition
from mcpshare.fdstream import DEFAULT_MAX_LINE_BYTES, FdLineReceiveStream, FdSendStream
from mcpshare.http_front import HttpFront, bind_http
from mcpshare.http_limits import HttpLimits
from mcpshare.mux import SESSION_BUFFER_BYTES, decode, encode, error_response
from mcpshare.pool import DEFAULT_IDLE_GRACE, BackendPool, Lease
from mcpshare.sources import ConfigSource, HelloError, server_config

logger = logging.getLogger("mcpshare.broker")

AUTOSTART_EXIT_IDLE = 600.0
HELLO_TIMEOUT = 5.0
"""Seconds a new connection has to send its hello (a shim sends it at once); then it is closed."""
MAX_PENDING_HELLOS = 128
"""Connections still owing their hello; beyond, the oldest is closed to make room (a flood evicts itself)."""
FD_RESERVE = 64
"""File descriptors kept free: with fewer left, new clients are refused (their shims run the server directly) so
the sessions the broker has never lose a descriptor they need."""
FD_PER_SESSION = 32
"""Descriptors a new session may need: its handed-over stdin/stdout and, when it starts a server, that server's
pipes, pidfd and trampoline."""
CLIENT_LINE_LINGER = 2.0
"""Seconds an ending session still waits for its client to take the rest of a line it has begun to read."""
PARSE_ERROR = -32700


class Refusal(HelloError):
    """A request the broker cannot serve *now* (a resource limit, another protocol version): the shim should run its
    server directly instead, unlike for a :class:`HelloError`, where running it directly would fail the same way."""


class BrokerRunning(RuntimeError):
    """Another broker already holds the lock of this runtime directory."""

    def __init__(self, paths: runtime.RuntimePaths, pid: int | None) -> None:
        self.pid = pid
        who = f" (pid {pid})" if pid else ""
        super().__init__(f"an mcpshare broker is already running{who} on {paths.socket}; stop it with `mcpshare stop`")


@dataclass(frozen=True)
class BrokerOptions:
    """How to run a broker. ``configs`` empty means: the user's default config files, per client cwd."""

    configs: tuple[Path, ...] = ()
    idle_grace: float = DEFAULT_IDLE_GRACE
    exit_idle: float | None = None
    http_port: int | None = None
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    log_file: Path | None = None
    log_stderr: bool = True


def check_hello(hello: Mapping[str, Any]) -> None:
    """Reject hellos of another protocol version or with fields of the wrong type, with a precise message."""
    version = hello.get("mcpshare")
    if version != runtime.PROTOCOL:
        raise Refusal(
            f"protocol mismatch: this broker speaks mcpshare protocol {runtime.PROTOCOL}, the client {version!r} "
            "(restart the broker with `mcpshare stop`; the next client starts a new one)"
        )
    if "control" in hello:
        return
    if not isinstance(hello.get("server"), str) or not hello["server"]:
        raise HelloError("'server' must be a non-empty string")
    cwd = hello.get("cwd")
    if not isinstance(cwd, str) or not os.path.isabs(cwd):
        raise HelloError("'cwd' must be an absolute path")
    env = hello.get("env")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise HelloError("'env' must be an object of strings")
    if hello.get("config") is not None and not isinstance(hello["config"], str):
        raise HelloError("'config' must be a path or null")


# ---------------------------------------------------------------------------------------------- the broker


@dataclass(eq=False)
class ClientConnection:
    """One shim connection, for ``status``."""

    server: str
    key: str
    peer_pid: int | None
    since: float = field(default_factory=time.monotonic)


def peer_credentials(stream: anyio.abc.SocketStream) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a Unix socket, or None where the OS cannot tell."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None
    data = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def tree_rss(pid: int | None) -> int | None:
    """Resident memory of a process and all its descendants (a server is often a wrapper plus a child)."""
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        total = root.memory_info().rss
        for child in root.children(recursive=True):
            try:
                total += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_TRANSIENT_ACCEPT_ERRORS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN})


def raise_fd_limit() -> tuple[int, int, int | None]:
    """Raise the soft limit of open files to the hard one; (soft before, soft now, hard or None for unlimited).

    Every shim session holds three descriptors in the broker (its socket and the client's two pipes) and every
    server three more: at the usual soft limit of 1024 about 300 clients would exhaust it, while the hard limit is
    usually far higher. macOS refuses a soft limit above OPEN_MAX even when the hard one is unlimited.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    for target in (hard, 10240 if hard == unlimited else min(hard, 10240)):
        if target == unlimited or target <= soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return soft, target, None if hard == unlimited else hard
        except (ValueError, OSError):
            continue
    return soft, soft, None if hard == unlimited else hard


def _soft_fd_limit() -> int | None:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


_FD_DIRS = ("/proc/self/fd", "/dev/fd")


def _open_fd_count() -> int | None:
    """How many descriptors this process has open (None where the OS does not list them)."""
    for directory in _FD_DIRS:
        try:
            return len(os.listdir(directory)) - 1  # the listing's own descriptor
        except OSError:
            continue
    return None


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


class _Tally:
    """Counts a repeated event and logs it at most every few seconds: a flood must not flood the log too."""

    INTERVAL = 5.0

    def __init__(self, template: str) -> None:
        self.template = template
        self.count = 0
        self.total = 0
        self.last_reason = ""
        self.logged_at = 0.0

    def add(self, reason: str) -> None:
        self.count += 1
        self.total += 1
        self.last_reason = reason
        now = time.monotonic()
        if now - self.logged_at >= self.INTERVAL:
            logger.warning(self.template, self.count, self.last_reason)
            self.count = 0
            self.logged_at = now


class Broker:
    """Accepts shim and control connections and serves them from one pool."""

    def __init__(
        self, pool: BackendPool, paths: runtime.RuntimePaths, options: BrokerOptions, configs: ConfigSource
    ) -> None:
        self.pool = pool
        self.paths = paths
        self.options = options
        self.configs = configs
        self.connections: dict[int, ClientConnection] = {}
        self.stop_requested = anyio.Event()
        self.started = time.monotonic()
        self.http_url: str | None = None
        self.http_front: HttpFront | None = None
        self._next_id = 0
        self.fd_limit = _soft_fd_limit()
        self._pending_hellos: dict[int, anyio.CancelScope] = {}
        self._promised = 0
        self._refusals = _Tally("refused %d new client(s): %s")
        self._dropped = _Tally("closed %d connection(s) that sent no hello: %s")

    def request_stop(self, reason: str) -> None:
        if not self.stop_requested.is_set():
            logger.info("stopping: %s", reason)
            self.stop_requested.set()

    # ------------------------------------------------------------------ connections

    async def serve_socket(
        self, listener: anyio.abc.SocketListener, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept connections until cancelled. Running out of file descriptors never ends the broker: the new
        client gets a refusal (its shim runs the server directly) and the sessions already served go on."""
        raw = listener.extra(anyio.abc.SocketAttribute.raw_socket)
        spare: int | None = _open_spare()
        backoff = 0.0
        async with anyio.create_task_group() as tg:
            task_status.started()
            while True:
                try:
                    stream = await listener.accept()
                except anyio.BrokenResourceError as exc:
                    code = exc.__cause__.errno if isinstance(exc.__cause__, OSError) else None
                    if code in _OUT_OF_RESOURCES:
                        spare = self._refuse_with_spare(raw, spare, os.strerror(code or 0))
                        backoff = min(max(backoff * 2, 0.005), 0.5)
                        await anyio.sleep(backoff)  # let sessions end and give descriptors back
                        continue
                    if code in _TRANSIENT_ACCEPT_ERRORS:
                        continue
                    raise
                backoff = 0.0
                headroom = self.fd_headroom()
                if headroom is not None and headroom < FD_RESERVE:
                    tg.start_soon(self._refuse, stream, self._limit_reason(headroom))
                else:
                    tg.start_soon(self.handle, stream)

    def fd_headroom(self) -> int | None:
        """File descriptors still free under the soft limit, less those promised to sessions that have not received
        their client's stdio yet (None where it cannot be told)."""
        used = _open_fd_count()
        return None if used is None or self.fd_limit is None else self.fd_limit - used - self._promised

    def _limit_reason(self, headroom: int) -> str:
        return (
            f"the mcpshare broker is near its limit of {self.fd_limit} open files ({headroom} left; raise "
            "`ulimit -n` for the broker, or run fewer clients)"
        )

    async def _refuse(self, stream: anyio.abc.SocketStream, reason: str) -> None:
        async with stream:
            self._refusals.add(reason)
            with anyio.move_on_after(1):
                await _answer(stream, {"ok": False, "error": reason, "fallback": True})

    def _refuse_with_spare(self, raw: socket.socket, spare: int | None, why: str) -> int | None:
        """Out of descriptors: free the spare one, accept the waiting client, refuse it, take the spare back.

        Without this the client would wait in the backlog until something else closed, while the listening
        socket stays readable and the loop spins."""
        if spare is not None:
            os.close(spare)
        try:
            conn, _ = raw.accept()
        except OSError:
            conn = None
        if conn is not None:
            reason = f"the mcpshare broker has no file descriptor left ({why}; raise `ulimit -n` for the broker)"
            self._refusals.add(reason)
            try:
                conn.setblocking(False)
                conn.send(runtime.encode_line({"ok": False, "error": reason, "fallback": True}))
            except OSError:
                pass
            conn.close()
        return _open_spare()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        """Serve one accepted connection; a bug in it is logged and ends that connection, never the broker."""
        try:
            await self._handle(stream)
        except Exception:
            logger.exception("a client connection failed")

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        """Check the peer, read the hello, then serve a session or a control request."""
        async with stream:
            peer = peer_credentials(stream)
            if peer is not None and peer[1] != os.getuid():
                logger.warning("refused a connection from uid %d (pid %d): not our user", peer[1], peer[0])
                await _answer(
                    stream,
                    {
                        "ok": False,
                        "error": f"permission denied: this broker serves uid {os.getuid()}",
                        "fallback": True,
                    },
                )
                return
            buffered = BufferedByteReceiveStream(stream)
            hello = await self._read_hello(stream, buffered)
            if hello is None:
                return
            if "control" in hello:
                await self._control(stream, hello)
            else:
                await self._session(stream, buffered, hello, peer[0] if peer else None)

    async def _read_hello(
        self, stream: anyio.abc.SocketStream, buffered: BufferedByteReceiveStream
    ) -> dict[str, Any] | None:
        """The connection's hello, or None once it was answered or dropped. At most :data:`MAX_PENDING_HELLOS`
        connections wait for theirs, each at most :data:`HELLO_TIMEOUT`: idle connections cannot pile up."""
        with anyio.CancelScope() as scope:
            key = id(scope)
            self._pending_hellos[key] = scope
            if len(self._pending_hellos) > MAX_PENDING_HELLOS:
                oldest = next(iter(self._pending_hellos))
                self._pending_hellos.pop(oldest).cancel()
                self._dropped.add(f"more than {MAX_PENDING_HELLOS} waited at once")
            try:
                with anyio.fail_after(HELLO_TIMEOUT):
                    line = await buffered.receive_until(b"\n", runtime.MAX_HELLO_BYTES)
                hello = runtime.decode_line(line)
                check_hello(hello)
                return hello
            except (anyio.IncompleteRead, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                return None  # gone before saying hello: nothing to answer
            except TimeoutError:
                self._dropped.add(f"none within {HELLO_TIMEOUT:g} s")
                await _answer(stream, {"ok": False, "error": f"no hello within {HELLO_TIMEOUT:g} s"})
                return None
            except (anyio.DelimiterNotFound, ValueError) as exc:
                reason = str(exc) if isinstance(exc, HelloError) else "the first line is not an mcpshare hello"
                answer: dict[str, Any] = {"ok": False, "error": reason}
                if isinstance(exc, Refusal):
                    answer["fallback"] = True
                await _answer(stream, answer)
                return None
            finally:
                self._pending_hellos.pop(key, None)
        return None  # evicted to make room for newer connections

    async def _session(
        self,
        stream: anyio.abc.SocketStream,
        buffered: BufferedByteReceiveStream,
        hello: dict[str, Any],
        peer_pid: int | None,
    ) -> None:
        name = hello["server"]
        promised = 0
        try:
            headroom = self.fd_headroom()
            if headroom is not None and headroom < FD_PER_SESSION + FD_RESERVE // 2:
                raise Refusal(self._limit_reason(headroom))
            # Its two descriptors arrive only after our answer: promise them now, or a crowd of clients arriving
            # together would each see room for itself and all of them together would not fit.
            promised = 2
            self._promised += promised
            config = server_config(hello, self.configs)
            lease = await self.pool.acquire(config, workspace=hello["cwd"], environ=hello["env"])
        except Exception as exc:
            self._promised -= promised
            text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            answer: dict[str, Any] = {"ok": False, "error": text}
            if isinstance(exc, Refusal) or getattr(exc, "resource_limit", False):
                answer["fallback"] = True  # not the server's fault: the client may run it directly
                self._refusals.add(text)
            else:
                logger.warning("client pid %s: cannot serve %r: %s", peer_pid, name, text)
            await _answer(stream, answer)
            return
        self._next_id += 1
        conn_id = self._next_id
        self.connections[conn_id] = ClientConnection(name, lease.key.short(), peer_pid)
        logger.info(
            "client pid %s attached to %r (key %s, server pid %s)", peer_pid, name, lease.key.short(), lease.pid
        )
        try:
            answer: dict[str, Any] = {"ok": True, "server": name, "key": lease.key.short(), "pid": lease.pid}
            take_stdio = hello.get("stdio") == runtime.STDIO_PASS and isinstance(stream, anyio.abc.UNIXSocketStream)
            text_ending = take_stdio and hello.get("ending") == runtime.ENDING_TEXT
            if take_stdio:
                answer["stdio"] = runtime.STDIO_PASS
            if text_ending:
                answer["ending"] = runtime.ENDING_TEXT
            if not take_stdio:
                self._promised -= promised
                promised = 0
            if await _answer(stream, answer):
                if take_stdio:

                    def received() -> None:
                        nonlocal promised
                        self._promised -= promised
                        promised = 0

                    await self._serve_stdio(stream, buffered, lease, received, text_ending=text_ending)
                else:
                    await relay(stream, buffered, lease)
        finally:
            self._promised -= promised
            del self.connections[conn_id]
            with anyio.CancelScope(shield=True):
                if not lease.released:
                    await lease.release()
            logger.info("client pid %s detached from %r", peer_pid, name)

    async def _serve_stdio(
        self,
        stream: anyio.abc.UNIXSocketStream,
        buffered: BufferedByteReceiveStream,
        lease: Lease,
        received: Callable[[], None] = lambda: None,
        *,
        text_ending: bool = False,
    ) -> None:
        """Serve the client on the stdin/stdout its shim handed over; tell the shim how it ended.

        The shim's socket then carries nothing until our last line (:func:`runtime.ending_line`, as text when the
        shim waits as a shell): its end (EOF, or the shim killed) ends the session too, since a client that killed
        its "server" must not keep a session on the real one.
        """

        async def end(error: str | None) -> None:
            try:
                await stream.send(runtime.ending_line(error, text=text_ending))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the shim is gone: nobody to tell

        if buffered.buffer:
            await end("protocol error: data before the descriptors")
            return
        try:
            with anyio.fail_after(HELLO_TIMEOUT):
                _, fds = await stream.receive_fds(1, 2)
        except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return  # the shim died or hung between its hello and its descriptors
        finally:
            received()
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            await end("protocol error: expected stdin and stdout")
            return
        client_out = FdSendStream(fds[1])
        client_in = FdLineReceiveStream(fds[0], DEFAULT_MAX_LINE_BYTES)
        ending: str | None = "the broker is stopping"
        ended: str | None = "the shim went away"  # unless the relay returns: the shim's socket ended first
        try:
            async with anyio.create_task_group() as tg:

                async def watch_shim() -> None:
                    try:
                        await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_shim)
                ended = await relay_to_pipe(client_out, client_in, lease)
                tg.cancel_scope.cancel()
            ending = ended
        finally:
            with anyio.CancelScope(shield=True):
                await client_in.aclose()
                await client_out.aclose_between_items(CLIENT_LINE_LINGER)
                await end(ending)

    # ------------------------------------------------------------------ control

    async def _control(self, stream: anyio.abc.SocketStream, hello: dict[str, Any]) -> None:
        command = hello["control"]
        if command == "ping":
            await _answer(stream, {"ok": True, "pid": os.getpid(), "version": __version__})
        elif command == "status":
            await _answer(stream, self.status())
        elif command == "stop":
            await _answer(stream, {"ok": True, "pid": os.getpid()})
            self.request_stop("`mcpshare stop`")
        elif command == "logs":
            server = hello.get("server")
            lines = hello.get("lines", 50)
            if not isinstance(server, str) or not server or not isinstance(lines, int) or lines < 0:
                await _answer(stream, {"ok": False, "error": "logs needs a server name and a line count >= 0"})
                return
            await _answer(
                stream, {"ok": True, "server": server, "processes": self.pool.stderr_tails(server, lines=lines)}
            )
        elif command == "restart":
            server = hello.get("server")
            if not isinstance(server, str) or not server:
                await _answer(stream, {"ok": False, "error": "restart needs a server name"})
                return
            stopped = await self.pool.restart(server)
            logger.info("restart %r: stopped %d process(es)", server, stopped)
            await _answer(stream, {"ok": True, "server": server, "stopped": stopped})
        else:
            await _answer(stream, {"ok": False, "error": f"unknown control command {command!r}"})

    def status(self) -> dict[str, Any]:
        """Everything ``mcpshare status`` shows: the broker, and one row per live or starting server process."""
        servers = [
            {
                "server": info.server,
                "key": info.key,
                "pid": info.pid,
                "state": info.state,
                "clients": info.leases,
                "restarts": info.restarts,
                "uptime": round(info.uptime, 3),
                "rss": tree_rss(info.pid),
                "protocol": info.protocol_version,
                "asks_linked": info.asks_linked,
                "asks_declined": info.asks_declined,
                "lane": info.lane,
                "calls": info.metrics.calls,
                "errors": info.metrics.errors,
                "latency_p50_ms": info.metrics.latency_p50_ms,
                "latency_p95_ms": info.metrics.latency_p95_ms,
                "latency_sum_s": round(info.metrics.latency_sum_s, 6),
            }
            for info in self.pool.snapshot()
        ]
        return {
            "ok": True,
            "broker": {
                "pid": os.getpid(),
                "version": __version__,
                "uptime": round(time.monotonic() - self.started, 3),
                "socket": self.paths.socket,
                "log": str(self.options.log_file or self.paths.log),
                "configs": [str(path) for path in self.configs.paths(os.getcwd())],
                "default_configs": not self.configs.explicit,
                "idle_grace": self.pool.idle_grace,
                "http": self.http_url,
                "http_token": self.paths.token if self.http_url else None,
                "rss": psutil.Process().memory_info().rss,
                "open_files": _open_fd_count(),
                "open_files_limit": self.fd_limit,
                "refused": self._refusals.total,
                "dropped_before_hello": self._dropped.total,
            },
            "servers": servers,
            "connections": len(self.connections),
            "http_front": self.http_front.status() if self.http_front is not None else None,
        }

    # ------------------------------------------------------------------ background duties

    async def watch_signals(self) -> None:
        """SIGTERM, SIGINT and SIGHUP stop the broker cleanly (every server stopped, socket removed)."""
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                self.request_stop(f"received {signal.Signals(signum).name}")
                return

    async def exit_when_idle(self, after: float) -> None:
        """Stop once no client and no server has been around for ``after`` seconds (autostarted brokers)."""
        idle_since: float | None = None
        while True:
            await anyio.sleep(min(1.0, after / 4))
            now = anyio.current_time()
            if self.connections or self.pool.snapshot():
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= after:
                self.request_stop(f"no client and no server for {after:g} s")
                return


async def _answer(stream: anyio.abc.ByteSendStream, message: dict[str, Any]) -> bool:
    """Send one protocol line; False if the peer is gone."""
    try:
        await stream.send(runtime.encode_line(message))
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return False
    return True


async def relay(stream: anyio.abc.ByteSendStream, buffered: BufferedByteReceiveStream, lease: Lease) -> None:
    """Pump JSON-RPC lines client -> lease and lease -> client until either side ends.

    Messages for the client are encoded as the server's reader routes them (:meth:`Lease.tap`) into an
    :class:`_Outbox`, bounded in bytes like a handed-over pipe; one task sends what has gathered. (A relaying shim
    only sees the socket close, so there is no reason to report.)
    """
    outbox = _Outbox(SESSION_BUFFER_BYTES)
    async with anyio.create_task_group() as tg:

        async def to_client() -> None:
            try:
                while data := await outbox.take():
                    await stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the client is gone
            tg.cancel_scope.cancel()  # or the lease ended (session overflow, pool closing) and all was sent

        lease.tap(outbox.put, outbox.close)
        tg.start_soon(to_client)
        await _from_client(_SocketLines(buffered).receive_line, lease)
        # The client's input ended (or the session did): drop what is not on its way yet, but let a send under way
        # finish (a line the client has begun to read is not cut), for CLIENT_LINE_LINGER at most.
        outbox.close(drop=True)
        await anyio.sleep(CLIENT_LINE_LINGER)
        tg.cancel_scope.cancel()


class _Outbox:
    """Encoded messages waiting for one sender, at most ``limit`` bytes (then :class:`anyio.WouldBlock`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()
        self._closed = False
        self._wakeup: anyio.Event | None = None

    def put(self, message: dict[str, Any]) -> None:
        data = encode(message)
        if self._data and len(self._data) + len(data) > self.limit:
            raise anyio.WouldBlock
        self._data += data
        self._wake()

    def close(self, *, drop: bool = False) -> None:
        """No more messages: :meth:`take` returns what is left (nothing, with ``drop``), then b""."""
        self._closed = True
        if drop:
            self._data.clear()
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def take(self) -> bytes:
        """Everything gathered so far, waiting for something; b"" once closed and empty."""
        while not self._data and not self._closed:
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        data = bytes(self._data)
        self._data.clear()
        return data


async def relay_to_pipe(client_out: FdSendStream, client_in: FdLineReceiveStream, lease: Lease) -> str | None:
    """:func:`relay` for a client whose stdio we hold. Each message for the client is written by the server's
    reader the moment it routes it (:meth:`Lease.tap`), and each client request that needs no waiting goes to the
    server from the readiness callback that read it (:meth:`Lease.send_now`): a call wakes no task of this session.
    Returns None when the client ended it (EOF, or it closed its stdout), else why the broker ended the session (for
    the shim to tell)."""
    ended: str | None = None
    over = anyio.Event()

    def write(message: dict[str, Any]) -> None:
        try:
            client_out.send_nowait(encode(message), SESSION_BUFFER_BYTES)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            over.set()  # the client closed its stdout: it is going away
            raise

    def lease_ended() -> None:
        nonlocal ended
        if not over.is_set():
            # The lease ended under us: this session overflowed, or the pool is closing.
            ended = f"the broker ended this session: {lease.broken or 'the broker is stopping'}"
            over.set()

    def forward_now(line: bytes) -> bool:
        if not line.strip():
            return True
        try:
            message = decode(line)
        except ValueError:
            return False  # _forward answers it
        try:
            return isinstance(message, dict) and lease.send_now(message)
        except Exception:
            return False  # nothing was sent: _forward tries again, and says what went wrong

    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await over.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        lease.tap(write, lease_ended)
        client_in.eager = forward_now
        await _from_client(client_in.receive_line, lease)
        tg.cancel_scope.cancel()
    return ended


class _SocketLines:
    """Lines of a shim's socket, as :meth:`FdLineReceiveStream.receive_line` gives them."""

    def __init__(self, buffered: BufferedByteReceiveStream) -> None:
        self._buffered = buffered
        self._ended = False

    async def receive_line(self) -> bytes:
        if self._ended:
            raise anyio.EndOfStream
        try:
            return await self._buffered.receive_until(b"\n", DEFAULT_MAX_LINE_BYTES)
        except anyio.IncompleteRead:
            self._ended = True
            return bytes(self._buffered.buffer)  # a last line without its newline


async def _from_client(receive_line: Callable[[], Awaitable[bytes]], lease: Lease) -> None:
    """Client lines into the lease until EOF. A bad line gets a JSON-RPC parse error, like a server would send."""
    while True:
        try:
            line = await receive_line()
        except anyio.DelimiterNotFound:
            lease.deliver(error_response(None, PARSE_ERROR, "message longer than the line limit; connection closed"))
            return
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            return
        if line.strip() and not await _forward(line, lease):
            return


async def _forward(line: bytes, lease: Lease) -> bool:
    """Send one client line into the lease; False when the session is over."""
    try:
        message = decode(line)
    except ValueError:
        lease.deliver(error_response(None, PARSE_ERROR, "Parse error: the line is not valid JSON"))
        return True
    if not isinstance(message, dict):
        lease.deliver(error_response(None, -32600, "Invalid request: expected a JSON-RPC object"))
        return True
    try:
        await lease.send(message)
    except Exception as exc:
        if lease.released or lease.broken is not None:
            return False
        logger.warning("%s: could not forward a client message: %s", lease, exc)
    return True


# ---------------------------------------------------------------------------------------------- running


def configure_logging(log_file: Path | str, *, stderr: bool, level: int = logging.INFO) -> None:
    """Log to a rotated file (created 0600: logs name servers and clients) and, for a foreground broker, stderr."""
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.close(fd)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(log_file, maxBytes=2_000_000, backupCount=2, encoding="utf-8")
    ]
    if stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    root = logging.getLogger("mcpshare")
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)


def describe_configs(configs: ConfigSource, cwd: str | os.PathLike[str]) -> str:
    """One sentence saying which config files the broker uses (for the log and ``serve``'s output)."""
    paths = configs.paths(cwd)
    if configs.explicit:
        return "configs: " + ", ".join(map(str, paths))
    if not paths:
        return (
            "no config file found (looked where Codex, Claude Code, Claude Desktop, VS Code, Cursor, Gemini CLI, "
            "Windsurf and Zed keep theirs: `mcpshare discover`); "
            "clients must embed their server's command (`mcpshare connect NAME -- command ...`) or name a --config"
        )
    return "configs (the user's, re-read per client cwd): " + ", ".join(map(str, paths))


async def serve(options: BrokerOptions, paths: runtime.RuntimePaths) -> None:
    """Run the broker until asked to stop: listen, serve, then stop every server and remove the socket."""
    configs = ConfigSource(options.configs)
    loop = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    logger.info(
        "mcpshare broker %s (pid %d, %s) starting; %s",
        __version__,
        os.getpid(),
        loop,
        describe_configs(configs, os.getcwd()),
    )
    before, soft, hard = raise_fd_limit()
    logger.info(
        "open files: soft limit %d%s, hard limit %s; a session takes about 3 and a server about 4",
        soft,
        f" (raised from {before})" if soft != before else "",
        "unlimited" if hard is None else hard,
    )
    http_socket = bind_http(options.http_port) if options.http_port is not None else None
    # Under anyio.run, routing may run in the loop's readiness callbacks (see Backend): a task switch less per message.
    # Servers get back the soft limit we were started with: ours was raised for the broker's own needs.
    child_fd_limit = before if soft != before else None
    async with BackendPool(
        idle_grace=options.idle_grace, eager_reads=True, child_fd_limit=child_fd_limit, learned_file=paths.learned
    ) as pool:
        broker = Broker(pool, paths, options, configs)
        front = None
        if http_socket is not None:
            front = broker.http_front = HttpFront(pool, configs, paths.token, http_socket, options.http_limits)
            front.metrics = exposition(broker.status)
        listener = await anyio.create_unix_listener(paths.socket, mode=0o600)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(broker.watch_signals)
                if front is not None:
                    broker.http_url = await tg.start(front.run)
                await tg.start(broker.serve_socket, listener)  # last: a broker that answers is fully up
                if options.exit_idle:
                    tg.start_soon(broker.exit_when_idle, options.exit_idle)
                logger.info("listening on %s (idle grace %g s)", paths.socket, options.idle_grace)
                await broker.stop_requested.wait()
                _unlink(paths.socket)  # first: new shims must start a new broker, not reach this dying one
                if front is not None:
                    await front.stop()
                tg.cancel_scope.cancel()
        finally:
            _unlink(paths.socket)
            with anyio.CancelScope(shield=True):
                await listener.aclose()
            logger.info("stopping %d server process(es)", len(pool.snapshot()))
    logger.info("stopped")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def use_uvloop() -> bool:
    """Whether the broker runs on uvloop: when it is installed, unless ``MCPSHARE_UVLOOP=0``.

    The broker spends most of its time passing small messages between pipes; uvloop's event loop (C, libuv) takes
    a fair share less CPU per message than asyncio's own. Without it the broker runs on asyncio, unchanged.
    """
    if not switches.flag(switches.UVLOOP):
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(options: BrokerOptions, *, paths: runtime.RuntimePaths | None = None, lock_fd: int | None = None) -> int:
    """Take the broker lock (unless the caller holds it), run until stopped, release the lock; returns 0.

    Raises :class:`BrokerRunning` if another broker holds the lock, OSError if the runtime dir is unusable.
    """
    paths = paths or runtime.RuntimePaths.default()
    runtime.ensure_runtime_dir(paths.directory)
    if lock_fd is None:
        lock_fd = runtime.try_lock(paths.lock)
        if lock_fd is None:
            raise BrokerRunning(paths, runtime.broker_pid(paths.lock))
    try:
        runtime.write_pid(lock_fd)
        configure_logging(options.log_file or paths.log, stderr=options.log_stderr)
        _keep_lasting_environment()
        anyio.run(serve, options, paths, backend="asyncio", backend_options={"use_uvloop": use_uvloop()})
    finally:
        os.close(lock_fd)  # last: the socket is gone and every server stopped
    return 0


def _keep_lasting_environment() -> None:
    """Make our environment (the base of every server's) what a broker may keep: see runtime.broker_environment.

    A shim that starts a broker has already taken its own server's variables out; what is left to drop here is
    what describes one client's session rather than the user."""
    kept = runtime.broker_environment(os.environ)
    dropped = sorted(set(os.environ) - set(kept))
    path_before = os.environ.get("PATH", "").split(os.pathsep)
    os.environ.clear()
    os.environ.update(kept)
    path_now = set(kept.get("PATH", "").split(os.pathsep))
    gone = [entry for entry in dict.fromkeys(path_before) if entry and entry not in path_now]
    if dropped or gone:
        logger.info(
            "servers will not inherit these variables of the client that started the broker: %s%s",
            ", ".join(dropped) or "none",
            f"; PATH entries left out: {', '.join(gone)}" if gone else "",
        )


def run_autostarted(paths: runtime.RuntimePaths, lock_fd: int) -> int:
    """A broker started by a shim: options from the environment, logs to the file only, exits when long idle."""
    exit_idle = switches.seconds(switches.EXIT_IDLE, AUTOSTART_EXIT_IDLE)
    options = BrokerOptions(
        idle_grace=switches.seconds(switches.IDLE_GRACE, DEFAULT_IDLE_GRACE),
        exit_idle=exit_idle or None,
        log_stderr=False,
    )
    return run(options, paths=paths, lock_fd=lock_fd)
