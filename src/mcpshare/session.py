"""A genuine ``mcp.ClientSession`` per lease, running over in-memory streams into the mux.

Any code that takes a ClientSession (the SDK's helpers, langchain-mcp-adapters, ...) works unchanged on a shared
process. The session's ``initialize`` is answered from the backend's cached handshake, so attaching costs the
server nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self

import anyio
from mcp import ClientSession
from mcp.client.session import ElicitationFnT, ListRootsFnT, LoggingFnT, MessageHandlerFnT, SamplingFnT
from mcp.shared.message import SessionMessage
from mcp_types import Implementation, jsonrpc_message_adapter
from pydantic import ValidationError

from mcpshare.pool import Lease

logger = logging.getLogger("mcpshare.session")


class SessionInUse(RuntimeError):
    """A lease carries one ClientSession at a time."""


class _LeaseStream:
    """What both adapters share: the lease, and closing (which only stops this adapter, never the lease)."""

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _LeaseReader(_LeaseStream):
    """The session's read stream: the lease's inbox, parsed into SDK messages as they are taken.

    Converting in place, instead of pumping through a second stream with a task of its own, saves a task
    switch and a queue per message: the pooled path then costs the host about what a direct session costs.
    Closing it leaves the lease's inbox open (a lease may carry another session later).
    """

    async def receive(self) -> SessionMessage | Exception:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            raw = await self._lease.receive.receive()
            try:
                return SessionMessage(jsonrpc_message_adapter.validate_python(raw, by_name=False))
            except ValidationError as exc:
                logger.warning("%s: dropped a message the SDK cannot parse: %s", self._lease, exc.errors()[:1])

    def __aiter__(self) -> _LeaseReader:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None


class _LeaseWriter(_LeaseStream):
    """The session's write stream: each SDK message goes to the lease as a wire dict, in the caller's task."""

    async def send(self, item: SessionMessage, /) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        await self._lease.send(item.message.model_dump(by_alias=True, mode="json", exclude_none=True))


@asynccontextmanager
async def open_session(
    lease: Lease,
    *,
    sampling_callback: SamplingFnT | None = None,
    elicitation_callback: ElicitationFnT | None = None,
    list_roots_callback: ListRootsFnT | None = None,
    logging_callback: LoggingFnT | None = None,
    message_handler: MessageHandlerFnT | None = None,
    client_info: Implementation | None = None,
    read_timeout_seconds: float | None = None,
    initialize: bool = True,
    **session_kwargs: Any,
) -> AsyncIterator[ClientSession]:
    """An entered (and by default initialized) ClientSession whose traffic goes through ``lease``.

    Callbacks are this session's own: a server-to-client request reaches them only when the mux attributes it
    to this session.
    """
    if lease.session_open:
        raise SessionInUse(f"{lease!r} already carries a ClientSession; acquire another lease for another session")
    lease.session_open = True
    try:
        session = ClientSession(
            _LeaseReader(lease),
            _LeaseWriter(lease),
            read_timeout_seconds=read_timeout_seconds,
            sampling_callback=sampling_callback,
            elicitation_callback=elicitation_callback,
            list_roots_callback=list_roots_callback,
            logging_callback=logging_callback,
            message_handler=message_handler,
            client_info=client_info,
            **session_kwargs,
        )
        async with session:
            if initialize:
                await session.initialize()
            yield session
    finally:
        lease.session_open = False
