"""mcpshare.fdstream on real pipes: sends are atomic and ordered (even when cancelled or the pipe is full),
backpressure, the non-blocking send's limit, EOF, a closed reader, and closing while a reader waits."""

from __future__ import annotations

import asyncio
import os

import anyio
import anyio.lowlevel
import pytest

from mcpshare.fdstream import HIGH_WATER, FdLineReceiveStream, FdReceiveStream, FdSendStream

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


async def test_closing_between_items_finishes_the_begun_one_and_drops_the_rest() -> None:
    """The reader has the first bytes of one item (a JSON-RPC line): closing lets it read the rest of that item,
    then the end; items it has not begun are dropped. Several items pass through the buffer first, so the
    bookkeeping of where each one ends is exercised, and a cancelled caller still gets a whole item out."""
    r, w = os.pipe()
    reader, writer = FdReceiveStream(r), FdSendStream(w)
    first = [bytes([ord("a") + i]) * (PIPE_CAPACITY // 3) + b"\n" for i in range(4)]
    for item in first:
        writer.send_nowait(item, limit=10 * PIPE_CAPACITY)
    begun = b"m" * (3 * PIPE_CAPACITY) + b"\n"
    writer.send_nowait(begun, limit=10 * PIPE_CAPACITY)
    writer.send_nowait(b"dropped\n", limit=10 * PIPE_CAPACITY)
    with anyio.fail_after(10):
        received = bytearray()
        while len(received) < sum(map(len, first)) + 10:  # into ``begun``: the reader has its first bytes
            received += await reader.receive()

        async def read_rest() -> None:
            received.extend(await read_all(reader))

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_rest)  # reads while the close waits for the rest of ``begun``, then sees the end
            with anyio.CancelScope() as scope:
                scope.cancel()
                await writer.aclose_between_items(timeout=5)
    assert bytes(received) == b"".join(first) + begun
    with pytest.raises(anyio.ClosedResourceError):
        writer.send_nowait(b"late\n", limit=PIPE_CAPACITY)
    await reader.aclose()


async def test_closing_between_items_gives_up_on_a_reader_that_takes_nothing() -> None:
    r, w = os.pipe()
    writer = FdSendStream(w)
    writer.send_nowait(b"x" * (2 * PIPE_CAPACITY), limit=PIPE_CAPACITY)  # begun: the pipe took its first 64 KB
    with anyio.fail_after(5):
        await writer.aclose_between_items(timeout=0.2)
    with pytest.raises(OSError):
        os.fstat(w)  # the descriptor is closed
    os.close(r)


async def test_bytes_read_for_a_cancelled_receive_go_to_the_next_one() -> None:
    """The readiness callback reads for a waiting receive; if that receive is cancelled before it runs again, the
    bytes are not lost: the next receive returns them. Later reads, short reads and EOF behave as usual.

    (anyio does not cancel a task whose awaited future is already done, so there the receive simply returns; a
    plain asyncio cancel does throw into it, which is what this test does.)"""
    r, w = os.pipe()
    reader = FdReceiveStream(r)
    with anyio.fail_after(5):
        pending = asyncio.ensure_future(reader.receive())
        await anyio.sleep(0.05)  # it waits: nothing to read yet
        os.write(w, b"first line\n")
        reader._on_readable()  # what the loop runs when it sees the pipe readable: it reads for the waiter
        pending.cancel()  # ...and the receive is cancelled before it could return them
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert await reader.receive() == b"first line\n"
        os.write(w, b"abcdef")
        assert await reader.receive(4) == b"abcd"  # a smaller request keeps the rest
        assert await reader.receive() == b"ef"
        os.close(w)
        with pytest.raises(anyio.EndOfStream):
            await reader.receive()
    await reader.aclose()


async def write_soon(fd: int, data: bytes) -> None:
    """Write once the reader waits: an eager handler then sees the data in the loop's readiness callback."""
    await anyio.sleep(0.05)
    os.write(fd, data)


async def test_eager_lines_are_taken_in_the_callback_and_declined_ones_reach_the_task_in_order() -> None:
    """While the handler takes every line, the task waiting in receive_line is never woken, even for lines split
    across writes; the first line it declines comes out of receive_line with every line after it, in order, and once
    the task waits again the handler takes lines again."""
    r, w = os.pipe()
    reader = FdLineReceiveStream(r, max_line_bytes=1000)
    taken: list[bytes] = []
    reader.eager = lambda line: not line.startswith(b"slow") and (taken.append(line) or True)
    received: list[bytes] = []
    woken = anyio.Event()

    async def task() -> None:
        while True:
            try:
                line = await reader.receive_line()
            except anyio.EndOfStream:
                return
            received.append(line)
            woken.set()

    async def settle() -> None:
        for _ in range(20):
            await anyio.sleep(0.005)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(task)
            await settle()
            for data in (b"a1\na2\n", b"a", b"3\n", b"a4"):
                os.write(w, data)
                await settle()
            assert taken == [b"a1", b"a2", b"a3"] and received == []  # "a4" is begun, not done
            os.write(w, b"\nslow1\nb1\n")
            await woken.wait()
            await settle()
            assert taken == [b"a1", b"a2", b"a3", b"a4"] and received == [b"slow1", b"b1"]
            os.write(w, b"c1\nslow2\nc2\nc3")
            await settle()
            os.close(w)  # the end: a last line without its newline still comes out
    assert taken == [b"a1", b"a2", b"a3", b"a4", b"c1"]
    assert received == [b"slow1", b"b1", b"slow2", b"c2", b"c3"]
    await reader.aclose()


@pytest.mark.parametrize("data", [b"x" * 11, b"x" * 11 + b"\n"], ids=["begun", "whole"])
@pytest.mark.parametrize("eager", [False, True])
async def test_a_line_over_the_limit_is_refused_begun_or_whole(data: bytes, eager: bool) -> None:
    r, w = os.pipe()
    reader = FdLineReceiveStream(r, max_line_bytes=10)
    taken: list[bytes] = []
    if eager:
        reader.eager = lambda line: taken.append(line) is None

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(write_soon, w, b"ok\n" + data)
            if not eager:
                assert await reader.receive_line() == b"ok"
            with pytest.raises(anyio.DelimiterNotFound):
                await reader.receive_line()
    assert taken == ([b"ok"] if eager else [])  # the handler never sees the long line
    await reader.aclose()
    os.close(w)


async def test_a_failing_handler_reaches_the_task() -> None:
    r, w = os.pipe()
    reader = FdLineReceiveStream(r, max_line_bytes=10)
    reader.eager = lambda line: (_ for _ in ()).throw(ValueError(f"bad line {line!r}"))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(write_soon, w, b"boom\nnext\n")
            with pytest.raises(ValueError, match="bad line b'boom'"):
                await reader.receive_line()
        reader.eager = None
        assert await reader.receive_line() == b"next"  # the failing line is dropped, the rest is kept
    await reader.aclose()
    os.close(w)


async def test_a_handler_that_cancels_the_receiver_loses_no_line() -> None:
    """A handler may cancel the task waiting in receive_line (its waiter is then done): the lines it left stay
    for the next receive_line instead of being handed to a cancelled waiter."""
    r, w = os.pipe()
    reader = FdLineReceiveStream(r, max_line_bytes=100)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(write_soon, w, b"a\nstop\nb\n")
            with anyio.CancelScope() as scope:

                def handler(line: bytes) -> bool:
                    if line == b"stop":
                        scope.cancel()
                        return False
                    return True

                reader.eager = handler
                await reader.receive_line()
            assert scope.cancelled_caught
        reader.eager = None
        assert [await reader.receive_line(), await reader.receive_line()] == [b"stop", b"b"]
    await reader.aclose()
    os.close(w)
