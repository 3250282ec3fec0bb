"""A genuine ``mcp.ClientSession`` per lease, running over in-memory streams into the mux.

Any code that takes a ClientSession (the SDK's helpers, langchain-mcp-adapters, ...) works unchanged on a shared
process. The session's ``initialize`` is answered from the backend's cached handshake, so attaching costs the
server nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import ClientSession
from mcp.client.session import ElicitationFnT, ListRootsFnT, LoggingFnT, MessageHandlerFnT, SamplingFnT
from mcp.shared.message import SessionMessage
from mcp_types import Implementation, jsonrpc_message_adapter
from pydantic import ValidationError

from mcpshare.pool import Lease

logger = logging.getLogger("mcpshare.session")

SESSION_QUEUE = 64


class SessionInUse(RuntimeError):
    """A lease carries one ClientSession at a time."""


async def _to_server(lease: Lease, outgoing: MemoryObjectReceiveStream[SessionMessage]) -> None:
    """Pump the session's messages into the lease as wire dicts."""
    async with outgoing:
        async for item in outgoing:
            message = item.message.model_dump(by_alias=True, mode="json", exclude_none=True)
            await lease.send(message)


async def _to_session(lease: Lease, incoming: MemoryObjectSendStream[SessionMessage | Exception]) -> None:
    """Pump the lease's messages into the session as typed SDK messages."""
    async with incoming:
        async for raw in lease.receive:
            try:
                message = jsonrpc_message_adapter.validate_python(raw, by_name=False)
            except ValidationError as exc:
                logger.warning("%s: dropped a message the SDK cannot parse: %s", lease, exc.errors()[:1])
                continue
            await incoming.send(SessionMessage(message))


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
    to_server_send, to_server_receive = anyio.create_memory_object_stream[SessionMessage](SESSION_QUEUE)
    to_session_send, to_session_receive = anyio.create_memory_object_stream[SessionMessage | Exception](SESSION_QUEUE)
    try:
        async with anyio.create_task_group() as tg, to_server_send, to_session_receive:
            tg.start_soon(_to_server, lease, to_server_receive)
            tg.start_soon(_to_session, lease, to_session_send)
            session = ClientSession(
                to_session_receive,
                to_server_send,
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
            tg.cancel_scope.cancel()
    finally:
        lease.session_open = False
