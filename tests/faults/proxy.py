"""A TCP proxy on 127.0.0.1 that can stall: accepts, then stops reading and writing.

Stands between the gateway and mosquitto to play a broker that hangs without
closing the connection, the failure a keep-alive exists for.
"""

from __future__ import annotations

import asyncio
import contextlib


class StallingProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._stalled: set[asyncio.Task[object]] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.stalling = False

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def stall_current(self) -> None:
        """Freeze every connection open now; new ones are forwarded normally."""
        self.stalling = True
        for task in list(self._pumps):
            task.cancel()  # stop moving bytes; sockets stay open (no FIN, no RST)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pumps = {
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        }
        self._pumps |= pumps
        await asyncio.wait(pumps, return_when=asyncio.ALL_COMPLETED)
        self._pumps -= pumps
        if self.stalling and any(p.cancelled() for p in pumps):
            # Hold the frozen sockets open until the proxy is closed.
            holder = asyncio.create_task(asyncio.Event().wait())
            self._stalled.add(holder)
            with contextlib.suppress(asyncio.CancelledError):
                await holder
        for w in (writer, up_writer):
            w.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        for task in self._stalled | self._pumps:
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class GateProxy:
    """A TCP proxy on 127.0.0.1 with a gate: open, it forwards to the target;
    closed, it accepts and hangs up at once (a broker that is not back yet).

    Lets a test restart the broker, wait until its own subscriber is back, and
    only then let the gateway reconnect, so that nothing the gateway publishes
    after a restart can reach the broker before the counting subscriber does.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.is_open = True
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def close_gate(self) -> None:
        self.is_open = False
        for writer in list(self._writers):
            writer.close()

    def open_gate(self) -> None:
        self.is_open = True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_open:
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.create_task(StallingProxy._pump(reader, up_writer)),
            asyncio.create_task(StallingProxy._pump(up_reader, writer)),
        ]
        with contextlib.suppress(Exception):
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)

    async def close(self) -> None:
        self.close_gate()
        if self._handlers:
            # Let each connection's handler end on its own (closed sockets end the
            # pumps): a handler cancelled at loop shutdown makes asyncio log it.
            await asyncio.wait(self._handlers, timeout=5)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
