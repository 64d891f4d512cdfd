"""A camera connection whose bytes go straight into the session's sans-IO decoder.

asyncio's StreamReader puts each socket read into a fresh `bytes` (up to
256 KiB), copies it into its buffer, copies it out again on `read()`, and stops
and restarts the socket (two epoll_ctl calls) whenever more than twice its
limit waits: every 330 KB TCP frame went through all of it. Here the socket is
read into one reusable buffer (`recv_into`, asyncio's `BufferedProtocol`) and
handed to the decoder at once, which keeps its own copy: one copy, nothing
allocated per read. Receiving 330 KB frames flat out cost 208-325 µs of CPU
per frame through a StreamReader and 82-100 µs this way (bench/RESULTS.md).

Flow control is the StreamReader's, on the decoder's buffer: while the session
is busy (not waiting for bytes) and more than `pause_above` bytes wait
unconsumed, the socket is not read; it is read again as soon as the session
waits. A session held back by the pipeline holds at most that, plus one read.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

RECEIVE_BUFFER_BYTES = 256 * 1024  # asyncio's own read size

_buffers = threading.local()


def _receive_buffer() -> memoryview:
    """This thread's receive buffer. One serves every connection on a loop: the
    transport calls `buffer_updated` right after filling it, and the bytes are
    fed on at once."""
    view: memoryview | None = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(RECEIVE_BUFFER_BYTES))
    return view


class FeedProtocol(asyncio.BufferedProtocol):
    """Feeds `feed(bytes)` as they come; `wait()` until more came or the stream ended.

    `feed(b"")` says the camera closed the connection. `unconsumed()` is what
    the decoder holds and has not yet decoded (for the pause).
    """

    def __init__(
        self,
        feed: Callable[[memoryview | bytes], None],
        unconsumed: Callable[[], int],
        pause_above: int,
    ) -> None:
        self._feed = feed
        self._unconsumed = unconsumed
        self._pause_above = pause_above
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._paused = False
        self._view = _receive_buffer()

    # -- asyncio's side ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._feed(self._view[:nbytes])
        if self._waiter is not None:
            self._wake()
        elif not self._paused and self._unconsumed() > self._pause_above:
            assert self._transport is not None
            self._transport.pause_reading()
            self._paused = True

    def eof_received(self) -> bool:
        self._end(None)
        return False  # close the transport: the camera sends nothing more

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc)

    def _end(self, error: BaseException | None) -> None:
        if error is not None and self._error is None:
            self._error = error
        if not self._ended:
            self._ended = True
            if self._error is None:
                self._feed(b"")
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the session's side ------------------------------------------------

    async def wait(self) -> None:
        """Until bytes came (fed already) or the stream ended (fed `b""`).

        Raises the connection's error (a reset), or ConnectionError when asked
        again after the end: the decoder has every byte and its end by then.
        """
        if self._error is not None:
            raise self._error
        if self._ended:
            raise ConnectionError("the connection is closed")
        if self._paused:
            self._paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
