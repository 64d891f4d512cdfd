"""The feed protocol on real sockets: bytes to the decoder as they come, the
end of the stream, a reset, and reading paused while the session is busy."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from gateway.adapters.feed import RECEIVE_BUFFER_BYTES, FeedProtocol
from tests.helpers import eventually


class Sink:
    """What the decoder would hold: every byte fed, and the end."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ended = False
        self.consumed = 0

    def feed(self, data: memoryview | bytes) -> None:
        if data:
            self.data += data
        else:
            self.ended = True

    def unconsumed(self) -> int:
        return len(self.data) - self.consumed


@asynccontextmanager
async def camera(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object],
) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(reader, writer)  # type: ignore[misc]
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def open_feed(port: int, sink: Sink, pause_above: int = 1 << 30) -> FeedProtocol:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: FeedProtocol(sink.feed, sink.unconsumed, pause_above), "127.0.0.1", port
    )
    return protocol


async def test_bytes_come_in_order_then_the_end() -> None:
    payload = bytes(range(256)) * 4000  # 1 MB: several socket reads

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(5) == b"hello"
        writer.write(payload)
        await writer.drain()

    sink = Sink()
    async with camera(serve) as port:
        stream = await open_feed(port, sink)
        stream.write(b"hello")
        async with asyncio.timeout(10):
            while not sink.ended:
                await stream.wait()
        assert bytes(sink.data) == payload
        with pytest.raises(ConnectionError):
            await stream.wait()  # asked again after the end: the session must stop
        stream.close()


async def test_a_reset_is_raised_to_the_session() -> None:
    async def serve(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        # SO_LINGER 0: close sends RST, not FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.write(b"partial")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()

    sink = Sink()
    async with camera(serve) as port:
        stream = await open_feed(port, sink)
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(10):
                while True:
                    await stream.wait()
        assert not sink.ended  # an error, not the camera's orderly end
        stream.close()


async def test_reading_pauses_while_the_session_is_busy_and_resumes_when_it_waits() -> None:
    total = 8 * 1024 * 1024

    async def serve(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * total)
        await writer.drain()

    sink = Sink()
    limit = 64 * 1024
    async with camera(serve) as port:
        stream = await open_feed(port, sink, pause_above=limit)
        # Busy (nobody waits): the socket is read until past the limit, then not.
        await eventually(lambda: len(sink.data) > limit, what="the first socket reads")
        await asyncio.sleep(0.3)  # time for reads that would come if not paused
        held = len(sink.data)
        assert limit < held <= limit + RECEIVE_BUFFER_BYTES
        await asyncio.sleep(0.3)
        assert len(sink.data) == held
        # Waiting (having consumed it all) reads on, to the end.
        async with asyncio.timeout(20):
            while not sink.ended:
                sink.consumed = len(sink.data)
                await stream.wait()
        assert len(sink.data) == total
        stream.close()
