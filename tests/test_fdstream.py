"""mcpshare.fdstream on real pipes: sends are atomic and ordered (even when cancelled or the pipe is full),
backpressure, the non-blocking send's limit, EOF, a closed reader, and closing while a reader waits."""

from __future__ import annotations

import os

import anyio
import anyio.lowlevel
import pytest

from mcpshare.fdstream import HIGH_WATER, FdReceiveStream, FdSendStream

pytestmark = pytest.mark.timeout(20)

PIPE_CAPACITY = 65536  # Linux default; the messages below are larger, so they cannot go out in one write


async def read_all(stream: FdReceiveStream) -> bytes:
    data = bytearray()
    while True:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return bytes(data)


async def test_concurrent_large_sends_arrive_whole_and_in_order_even_if_one_sender_is_cancelled() -> None:
    r, w = os.pipe()
    reader, writer = FdReceiveStream(r), FdSendStream(w)
    messages = [bytes([ord("a") + i]) * (PIPE_CAPACITY + 1000 * i) + b"\n" for i in range(4)]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for index, message in enumerate(messages):
                if index == 1:
                    with anyio.CancelScope() as scope:
                        scope.cancel()  # cancelled before it could wait: its bytes are still taken whole
                        await writer.send(message)
                else:
                    tg.start_soon(writer.send, message)
                await anyio.lowlevel.checkpoint()
            assert writer.buffered > HIGH_WATER  # nobody reads yet: the senders wait for the buffer to drain
            received = bytearray()
            while len(received) < sum(map(len, messages)):
                received += await reader.receive()
        await writer.aclose()
        assert await read_all(reader) == b""
    assert bytes(received).split(b"\n")[:-1] == [m.rstrip(b"\n") for m in messages]
    await reader.aclose()


async def test_send_nowait_refuses_past_its_limit_without_taking_anything() -> None:
    r, w = os.pipe()
    reader, writer = FdReceiveStream(r), FdSendStream(w)
    writer.send_nowait(b"x" * (PIPE_CAPACITY + 10), limit=100)  # an empty buffer always takes one message
    assert writer.buffered == 10
    writer.send_nowait(b"y" * 50, limit=100)
    with pytest.raises(anyio.WouldBlock):
        writer.send_nowait(b"z" * 50, limit=100)
    assert writer.buffered == 60
    with anyio.fail_after(10):
        received = bytearray()
        while len(received) < PIPE_CAPACITY + 60:
            received += await reader.receive()
    assert received == b"x" * (PIPE_CAPACITY + 10) + b"y" * 50
    await writer.aclose()
    await reader.aclose()


async def test_a_closed_reader_breaks_the_sender() -> None:
    r, w = os.pipe()
    writer = FdSendStream(w)
    os.close(r)
    with pytest.raises(anyio.BrokenResourceError):
        await writer.send(b"hello\n")
    with pytest.raises(anyio.BrokenResourceError):
        writer.send_nowait(b"again\n", limit=100)
    await writer.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await writer.send(b"closed\n")


async def test_closing_a_stream_wakes_its_waiting_reader() -> None:
    r, w = os.pipe()
    reader = FdReceiveStream(r)
    outcome: list[type[BaseException]] = []

    async def wait_for_data() -> None:
        try:
            await reader.receive()
        except anyio.ClosedResourceError as exc:
            outcome.append(type(exc))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_data)
            await anyio.sleep(0.05)
            await reader.aclose()
    assert outcome == [anyio.ClosedResourceError]
    os.close(w)
