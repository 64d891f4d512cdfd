"""Experiment: what aiohttp's server and the adapter cost per HTTP read.

Runs the gateway with a bare `asyncio.Protocol` on the camera port in place of
aiohttp's server: keep-alive, `Content-Length` bodies only, no credentials, no
limits, no timeouts, no per-request metrics; per read it does what the adapter
must (`parse_json_body` → `to_event` → `Gateway.submit` → a 200 with the id),
and everything after the intake is the gateway's own code. aiohttp's server
still starts, on a free port nobody calls.

Not a product path: it measures how much a leaner intake could save, for the
decision on the HTTP target (bench/RESULTS.md, "Where each target stands, and
why"). Use it as the peer script's gateway:

    GATEWAY_CMD="python -m bench.lean_intake" PHASES=5 WAIT_QUIET=0 \\
        bash ../shared/peers/nodered/run.sh

(the script calls `$GATEWAY_CMD run -c <config>`; only its camera `cam1` is served).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import signal
import sys

from gateway.app import Gateway
from gateway.broker import free_port
from gateway.codecs.http_body import BodyOptions, parse_json_body, to_event
from gateway.config import load_config
from gateway.event import utc_now
from gateway.pipeline import Admission

CAMERA = "cam1"


class LeanIntake(asyncio.Protocol):
    """One keep-alive connection: requests one after the other, as aiohttp serves them."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False
        self._options = BodyOptions()
        self._task: asyncio.Task[None] | None = None  # the request being taken

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._next_request()

    def _next_request(self) -> None:
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self._buffer[:head_end]).lower()
        at = head.index(b"content-length:") + len(b"content-length:")
        line_end = head.find(b"\r\n", at)
        length = int(head[at : line_end if line_end > 0 else None])
        body_end = head_end + 4 + length
        if len(self._buffer) < body_end:
            return
        body = bytes(self._buffer[head_end + 4 : body_end])
        del self._buffer[:body_end]
        self._busy = True
        self._task = asyncio.ensure_future(self._take(body))

    async def _take(self, body: bytes) -> None:
        event = to_event(parse_json_body(body, self._options), CAMERA, utc_now())
        admission = await self._gateway.submit(event)
        status = b"200 OK" if admission is Admission.ACCEPTED else b"503 Service Unavailable"
        reply = json.dumps({"status": admission.value, "id": event.id}).encode()
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(reply), reply)
        )
        self._busy = False
        self._next_request()


async def serve(config_path: str) -> None:
    config = load_config(config_path)
    host, port = config.http.listen.rsplit(":", 1)
    # aiohttp's server moves aside; the lean intake takes the camera port.
    moved = dataclasses.replace(config.http, listen=f"127.0.0.1:{free_port()}")
    gateway = Gateway(dataclasses.replace(config, http=moved))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    server = await loop.create_server(lambda: LeanIntake(gateway), host, int(port))
    gc.freeze()  # as `lpr-gateway run` does
    try:
        await stop.wait()
    finally:
        server.close()
        await gateway.stop()


def main(argv: list[str]) -> int:
    if argv[:2] != ["run", "-c"] or len(argv) != 3:
        print("usage: python -m bench.lean_intake run -c CONFIG", file=sys.stderr)
        return 2
    asyncio.run(serve(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
