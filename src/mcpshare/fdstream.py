"""anyio byte streams over raw file descriptors: the pipes (or sockets) a shim hands over to the broker.

A shim whose stdin and stdout are pipes or sockets passes them to the broker (``SCM_RIGHTS``), so the broker reads
the client's requests and writes its answers itself, and the shim relays nothing: one process hop less per message
(see :mod:`mcpshare.shim`). The descriptors are put in non-blocking mode and waited on with the event loop
(``anyio.wait_readable``/``wait_writable``), so a client that stops reading only stalls its own session. Both
streams own their descriptor and close it on :meth:`aclose`.
"""

from __future__ import annotations

import os

import anyio
import anyio.abc
import anyio.lowlevel

CHUNK = 65536


def _adopt(fd: int) -> int:
    os.set_blocking(fd, False)
    return fd


def _close(stream: FdReceiveStream | FdSendStream) -> None:
    if not stream._closed:
        stream._closed = True
        anyio.notify_closing(stream.fd)  # a task waiting on it gets ClosedResourceError, not a stale wait
        os.close(stream.fd)


class FdReceiveStream(anyio.abc.ByteReceiveStream):
    """Reads from a non-blocking descriptor; EOF is :class:`anyio.EndOfStream`."""

    def __init__(self, fd: int) -> None:
        self.fd = _adopt(fd)
        self._closed = False

    async def receive(self, max_bytes: int = CHUNK) -> bytes:
        waited = False
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self.fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self.fd)
                waited = True
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if not waited:
                # Data was there without waiting: still let other tasks run, so a client that writes without
                # pause cannot starve the event loop.
                await anyio.lowlevel.checkpoint()
            if not data:
                raise anyio.EndOfStream
            return data

    async def aclose(self) -> None:
        _close(self)


class FdSendStream(anyio.abc.ByteSendStream):
    """Writes everything to a non-blocking descriptor, waiting while the pipe is full."""

    def __init__(self, fd: int) -> None:
        self.fd = _adopt(fd)
        self._closed = False

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self.fd)
                continue
            except OSError as exc:  # EPIPE: the client closed its end
                raise anyio.BrokenResourceError from exc
            view = view[written:]

    async def aclose(self) -> None:
        _close(self)
