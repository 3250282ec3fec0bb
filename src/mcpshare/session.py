"""A genuine ``mcp.ClientSession`` per lease, running over in-memory streams into the mux.

Any code that takes a ClientSession (the SDK's helpers, langchain-mcp-adapters, ...) works unchanged on a shared
process. The session's ``initialize`` is answered from the backend's cached handshake, so attaching costs the
server nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Self

import anyio
from mcp import ClientSession
from mcp.client.session import ElicitationFnT, ListRootsFnT, LoggingFnT, MessageHandlerFnT, SamplingFnT
from mcp.shared.message import SessionMessage
from mcp_types import Implementation, jsonrpc_message_adapter
from pydantic import ValidationError

from mcpshare.config import StdioServerConfig
from mcpshare.pool import BackendPool, Lease

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
async def lease_streams(lease: Lease) -> AsyncIterator[tuple[_LeaseReader, _LeaseWriter]]:
    """The (read, write) stream pair of a lease, in the shape every SDK client takes as its transport.

    For code that builds its own session on a lease (a framework's ClientSession subclass, ``mcp.Client``): the
    reader yields ``SessionMessage`` objects parsed from what the mux routed to this lease, the writer sends each
    one to the server through it. One pair, hence one session, per lease at a time; leaving the block closes the
    pair, not the lease.
    """
    if lease.session_open:
        raise SessionInUse(f"{lease!r} already carries a ClientSession; acquire another lease for another session")
    lease.session_open = True
    reader, writer = _LeaseReader(lease), _LeaseWriter(lease)
    try:
        yield reader, writer
    finally:
        await reader.aclose()
        await writer.aclose()
        lease.session_open = False


@asynccontextmanager
async def pooled_transport(
    pool: BackendPool,
    config: StdioServerConfig,
    *,
    workspace: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    sandbox: str | None = None,
) -> AsyncIterator[tuple[_LeaseReader, _LeaseWriter]]:
    """An SDK transport on the pool's shared process for ``config``: a lease of its own, released on exit.

    ``mcp.Client(pooled_transport(pool, config))`` (or a ClientSession over the pair) is then one more session on
    the one process every user of that config shares; the framework integrations in :mod:`mcpshare.integrations`
    are built on it. Arguments as for :meth:`BackendPool.acquire`.
    """
    lease = await pool.acquire(config, workspace=workspace, environ=environ, sandbox=sandbox)
    try:
        async with lease_streams(lease) as streams:
            yield streams
    finally:
        await lease.release()


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
    async with lease_streams(lease) as (reader, writer):
        session = ClientSession(
            reader,
            writer,
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
