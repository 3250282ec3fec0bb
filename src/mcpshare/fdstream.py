"""Byte streams over raw non-blocking file descriptors: the pipes to each server, and the client pipes a shim hands
over to the broker.

Why not asyncio's transports behind ``anyio.open_process``: a quick tool call is two short messages, and with the
stream wrappers each message cost several extra trips through the event loop (a checkpoint per write, a waiter
future per read, readiness registered and unregistered every time). Here:

* a send that the pipe accepts at once costs one ``write`` and no loop turn; what the pipe does not take is kept
  in a buffer that a writer callback flushes, so a send is *atomic*: once called, its bytes go out whole, in call
  order, even if the sender is cancelled. Senders therefore need no lock, and only wait (for backpressure) while
  more than :data:`HIGH_WATER` bytes are buffered;
* a receiver stays registered with the event loop while it keeps reading, instead of registering for every read.

They use the asyncio event loop directly (mcpshare runs on asyncio; anyio's cancellation works across these awaits
since anyio cancels asyncio tasks). Both streams own their descriptor and close it on :meth:`aclose`.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable

import anyio
import anyio.abc

CHUNK = 65536
HIGH_WATER = 65536
"""A sender waits while more than this many bytes are buffered for a descriptor that is not being read."""
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
"""The longest JSON-RPC line read from a server or a client unless configured otherwise."""


class FdReceiveStream(anyio.abc.ByteReceiveStream):
    """Reads from a non-blocking descriptor; EOF is :class:`anyio.EndOfStream`.

    A waiting reader's bytes are read by the loop's readiness callback itself, the way asyncio's transports read:
    the descriptor is drained in the same loop turn that reported it, so the next poll does not report it again
    (a stale report would wake the reader for a read that fails with EAGAIN).
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._registered = False
        self._waiter: asyncio.Future[bytes] | None = None
        self._left = b""  # read but not yet returned (a receive asked for less, or was cancelled)
        # The last read took all there was (it returned less than asked): the next one would most likely fail with
        # EAGAIN, so wait for readiness first and save that system call.
        self._emptied = False

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is None:
            # Nobody is waiting (the reader is busy elsewhere): stop watching, or a readable descriptor would make
            # the loop call us on every turn. The next receive reads at once.
            assert self._loop is not None
            self._loop.remove_reader(self.fd)
            self._registered = False
            self._emptied = False
            return
        if waiter.done():
            return
        try:
            data = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            error = anyio.BrokenResourceError()
            error.__cause__ = exc
            waiter.set_exception(error)
            return
        self._arrived(waiter, data)

    def _arrived(self, waiter: asyncio.Future[bytes], data: bytes) -> None:
        """The readiness callback read ``data`` (b"" at the end) for the receiver waiting on ``waiter``."""
        waiter.set_result(data)

    async def receive(self, max_bytes: int = CHUNK) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        data = self._left
        if data:
            self._left = b""
        elif self._emptied:
            # Readiness is level-triggered: registering while data is already there wakes us on the next turn.
            data = await self._wait()
        else:
            try:
                data = os.read(self.fd, max_bytes)
            except BlockingIOError:
                data = await self._wait()
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            else:
                # Data was there without waiting: still let other tasks run, so a peer that writes without pause
                # cannot starve the event loop. (Bytes read are kept if we are cancelled here.)
                try:
                    await asyncio.sleep(0)
                except BaseException:
                    self._left = data
                    raise
        if not data:
            raise anyio.EndOfStream
        if len(data) > max_bytes:
            data, self._left = data[:max_bytes], data[max_bytes:]
        self._emptied = not self._left and len(data) < max_bytes
        return data

    async def _wait(self) -> bytes:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        waiter = self._waiter = loop.create_future()
        if not self._registered:
            loop.add_reader(self.fd, self._on_readable)
            self._registered = True
        try:
            return await waiter
        except BaseException:
            # Cancelled after the callback had read for us: keep those bytes for the next receive.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._left = waiter.result()
            raise
        finally:
            self._waiter = None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._registered and self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._registered = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(anyio.ClosedResourceError())
        os.close(self.fd)


class FdLineReceiveStream(FdReceiveStream):
    """Newline-delimited lines from a descriptor for one reading task, and, when ``eager`` is set, for a synchronous
    handler that takes them straight from the event loop's readiness callback.

    ``eager(line)`` returns True when it has dealt with the line, False to leave it, and every line after it, to the
    task's :meth:`receive_line`: lines are never reordered. While the handler takes every line, the task waiting in
    receive_line is not woken at all, so a line costs no task switch. The callback reads only while that task waits
    there: a task busy with a line it was left stops the reading (backpressure), as with a plain receive. An
    exception from the handler is raised by the waiting receive_line (the line that raised it is dropped).
    """

    def __init__(self, fd: int, max_line_bytes: int) -> None:
        super().__init__(fd)
        self.eager: Callable[[bytes], bool] | None = None
        self._lines = bytearray()  # bytes not yet returned as lines: a line begun, or lines left for the task
        self.max_line_bytes = max_line_bytes

    def _arrived(self, waiter: asyncio.Future[bytes], data: bytes) -> None:
        eager = self.eager
        if eager is None or not data:
            waiter.set_result(data)
            return
        lines = self._lines
        lines += data
        start = 0
        try:
            while (end := lines.find(b"\n", start)) >= 0 and end - start <= self.max_line_bytes:
                taken = eager(bytes(lines[start:end]))
                if not taken:
                    break
                start = end + 1
        except BaseException as exc:
            del lines[: end + 1]
            if not waiter.done():
                waiter.set_exception(exc)
            return
        del lines[:start]
        if waiter.done():
            return  # the handler cancelled the receiver: what is left waits in the buffer for the next one
        if b"\n" in lines or len(lines) > self.max_line_bytes:
            # Left for the task: hand the rest over as if it had just been read (receive_line appends it again).
            data = bytes(lines)
            lines.clear()
            waiter.set_result(data)

    @property
    def line_ready(self) -> bool:
        """Whether :meth:`receive_line` has a whole line already (it returns without waiting)."""
        return b"\n" in self._lines

    async def receive_line(self) -> bytes:
        """The next line, without its newline. At the end of the input a last line that lacks its newline is
        returned, then :class:`anyio.EndOfStream`; a line longer than ``max_line_bytes`` is
        :class:`anyio.DelimiterNotFound`.
        """
        lines = self._lines
        limit = self.max_line_bytes
        while True:
            end = lines.find(b"\n")
            if end > limit or (end < 0 and len(lines) > limit):
                raise anyio.DelimiterNotFound(limit)
            if end >= 0:
                line = bytes(lines[:end])
                del lines[: end + 1]
                return line
            try:
                data = await self.receive()
            except anyio.EndOfStream:
                if not lines:
                    raise
                line = bytes(lines)
                lines.clear()
                return line
            lines += data


class FdSendStream(anyio.abc.ByteSendStream):
    """Writes to a non-blocking descriptor; every :meth:`send` is atomic (see the module's docstring)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._closed = False
        self._error: OSError | None = None
        self._buffer = bytearray()
        self._sizes: deque[int] = deque()  # what each buffered item still has in the buffer, oldest first
        self._begun = False  # the oldest buffered item is partly written: the reader has its first bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drained: asyncio.Future[None] | None = None

    @property
    def buffered(self) -> int:
        """Bytes accepted by :meth:`send` or :meth:`send_nowait` and not yet written to the descriptor."""
        return len(self._buffer)

    def send_nowait(self, item: bytes, limit: int) -> None:
        """Write ``item`` or buffer what the descriptor does not take yet, never waiting.

        Raises :class:`anyio.WouldBlock` (and takes nothing) when ``limit`` bytes are already buffered: the reader
        is not keeping up. Broken/closed as :meth:`send`.
        """
        if self._buffer and len(self._buffer) + len(item) > limit:
            raise anyio.WouldBlock
        self._put(item)

    async def send(self, item: bytes) -> None:
        self._put(item)
        while len(self._buffer) > HIGH_WATER and self._error is None and not self._closed:
            await self._drain_some()
        if self._error is not None:
            raise anyio.BrokenResourceError from self._error

    def _put(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._error is not None:
            raise anyio.BrokenResourceError from self._error
        if not self._buffer:
            try:
                written = os.write(self.fd, item)
            except BlockingIOError:
                written = 0
            except OSError as exc:  # EPIPE: the reader closed its end
                self._error = exc
                raise anyio.BrokenResourceError from exc
            if written == len(item):
                return
            loop = self._loop = self._loop or asyncio.get_running_loop()
            loop.add_writer(self.fd, self._on_writable)
            item = memoryview(item)[written:]
            self._begun = written > 0
        self._buffer += item
        self._sizes.append(len(item))

    def _on_writable(self) -> None:
        try:
            written = os.write(self.fd, self._buffer)
        except BlockingIOError:
            return
        except OSError as exc:
            self._error = exc
            self._buffer.clear()
            self._sizes.clear()
            written = 0
        del self._buffer[:written]
        sizes = self._sizes
        while written and written >= sizes[0]:
            written -= sizes.popleft()
            self._begun = False
        if written:
            sizes[0] -= written
            self._begun = True
        if not self._buffer:
            assert self._loop is not None
            self._loop.remove_writer(self.fd)
        if len(self._buffer) <= HIGH_WATER or self._error is not None:
            self._wake_senders()

    async def drain(self) -> None:
        """Wait while more than :data:`HIGH_WATER` bytes are buffered (returns at once if not, closed or broken)."""
        while len(self._buffer) > HIGH_WATER and self._error is None and not self._closed:
            await self._drain_some()

    async def _drain_some(self) -> None:
        """Wait until the writer callback has brought the buffer to :data:`HIGH_WATER` or below (or it failed)."""
        loop = self._loop or asyncio.get_running_loop()
        if self._drained is None or self._drained.done():
            self._drained = loop.create_future()
        await asyncio.shield(self._drained)  # one future for all waiting senders; a cancelled one leaves it

    def _wake_senders(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def aclose(self) -> None:
        """Close at once; bytes still buffered are dropped (the reader is not reading, or is being stopped)."""
        if not self._closed:
            self._closed = True
            self._close_now()

    def _close_now(self) -> None:
        if self._buffer and self._loop is not None:
            self._loop.remove_writer(self.fd)
        self._buffer.clear()
        self._sizes.clear()
        self._wake_senders()
        os.close(self.fd)

    async def aclose_between_items(self, timeout: float) -> None:
        """Close without cutting an item in two: buffered items not yet begun are dropped, but the rest of one whose
        first bytes the reader already has is still written, for at most ``timeout`` seconds (a reader that takes
        nothing in that time sees it cut). Safe to await from a cancelled scope; new sends are refused at once."""
        if self._closed:
            return
        self._closed = True  # no new sends
        if self._begun and self._error is None:
            del self._buffer[self._sizes[0] :]
            while len(self._sizes) > 1:
                self._sizes.pop()
            with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
                while self._buffer and self._error is None:
                    await self._drain_some()
        self._close_now()
