"""The camera port under a flood of half-sent requests: bounded, counted, and the
real camera next to it and /healthz keep being answered.

The issue's finding: 130 half-sent requests used up a 128-descriptor limit, real
cameras and /healthz timed out, the sockets were still open 50 s later.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from tests.faults.harness import (
    HTTP_CAMERA,
    HTTP_PASSWORD,
    HTTP_USER,
    CountingCollector,
    HttpLoad,
    record,
    wait_listening,
)
from tests.helpers import eventually, gateway_config

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.timeout(60)]

HALF_SENT = f"POST /lpr/{HTTP_CAMERA} HTTP/1.1\r\nHost: a\r\n".encode()
# A complete request answered (401: no such path) on a kept-alive connection:
# once its reply is read, the gateway holds the connection idle
# (keepalive_timeout_seconds), however fast or slow this machine is.
PROBE = b"GET /probe HTTP/1.1\r\nHost: a\r\n\r\n"
# 200 half-sent connections from four addresses (50 each, under the per-source
# cap of 64), and one more address that goes over its cap.
ATTACKERS = [f"127.0.0.{n}" for n in (2, 3, 4, 5)]
PER_ATTACKER = 50
GREEDY = "127.0.0.6"
PER_SOURCE_CAP = 64
GREEDY_EXTRA = 6
HEADER_TIMEOUT = 1.0


async def open_from(
    port: int, source: str, head: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    if head:
        writer.write(head)
        await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before closing; the timeout only bounds a failing test."""
    return await asyncio.wait_for(reader.read(), 20)


async def test_half_sent_flood_is_closed_counted_and_the_camera_keeps_going(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        [
            {
                "id": HTTP_CAMERA,
                "protocol": "http",
                "path": f"/lpr/{HTTP_CAMERA}",
                "username": HTTP_USER,
                "password": HTTP_PASSWORD,
            }
        ],
        http={
            "header_timeout_seconds": HEADER_TIMEOUT,
            "max_connections": 512,
            "max_connections_per_source": PER_SOURCE_CAP,
        },
    )
    port = config.http.port
    with CountingCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/event",)) as sub:
        async with Gateway(config) as gw:

            def count(name: str, **labels: str) -> float:
                return gw.metrics.registry.get_sample_value(name, labels) or 0.0

            await wait_listening(port)
            healthz = f"http://127.0.0.1:{gw.metrics_port}/healthz"
            async with HttpLoad(port, rate=4.0) as camera, aiohttp.ClientSession() as client:
                await eventually(lambda: len(camera.sim.sent) >= 1)
                flood = [
                    await open_from(port, source, HALF_SENT)
                    for source in ATTACKERS
                    for _ in range(PER_ATTACKER)
                ]
                # While they are held: /healthz answers, the camera's reads get 200s.
                async with client.get(healthz) as reply:
                    health_during = reply.status
                sent_before = len(camera.sim.sent)
                await eventually(lambda: len(camera.sim.sent) >= sent_before + 2)
                # One address over its cap: the ones beyond it get a 503 at once.
                greedy = [await open_from(port, GREEDY, PROBE) for _ in range(PER_SOURCE_CAP)]
                for reader, _ in greedy:  # each answered: each one holds its slot
                    assert (await reader.readuntil(b"}")).startswith(b"HTTP/1.1 401 ")
                over = [await open_from(port, GREEDY, b"") for _ in range(GREEDY_EXTRA)]
                over_ends = await asyncio.gather(*(closed_by_server(r) for r, _ in over))
                peak_open = count("lpr_http_connections_open")
                for _, writer in greedy + over:
                    writer.close()
                # Every half-sent one is closed by the gateway (EOF, no reply) at
                # its header deadline.
                flood_ends = await asyncio.gather(*(closed_by_server(r) for r, _ in flood))
                for _, writer in flood:
                    writer.close()
                await eventually(lambda: count("lpr_http_connections_open") <= 1)
                # ... and the camera still gets 200s afterwards.
                sent_after = len(camera.sim.sent)
                await eventually(lambda: len(camera.sim.sent) >= sent_after + 2)
                await camera.stop()
                async with client.get(healthz) as reply:
                    health_after = reply.status
                ids = camera.accepted_ids()
                await sub.until(lambda _: set(ids) <= set(sub.arrival), timeout=15)
            header_timeouts = count("lpr_http_connections_closed_total", reason="header_timeout")
            per_source = count("lpr_http_connections_closed_total", reason="per_source")
            statuses = camera.statuses()
    refused = [end for end in over_ends if end.startswith(b"HTTP/1.1 503 ")]
    record(
        f"HTTP half-sent flood: {len(flood)} half-sent requests from {len(ATTACKERS)} "
        f"addresses, all closed at the {HEADER_TIMEOUT:g} s header deadline "
        f"(lpr_http_connections_closed{{reason=header_timeout}} = {header_timeouts:.0f}); "
        f"{len(over)} connections over one address's cap of {PER_SOURCE_CAP} answered 503 "
        f"(per_source = {per_source:.0f}); peak lpr_http_connections_open {peak_open:.0f}; "
        f"/healthz {health_during} during, {health_after} after; the real camera: "
        f"{dict(statuses)}, {len(ids)} accepted, all published"
    )
    assert flood_ends == [b""] * len(flood)  # closed, without a reply
    assert header_timeouts == len(flood)
    assert len(refused) == len(over) == per_source == GREEDY_EXTRA
    assert health_during == health_after == 200
    assert statuses == {200: len(camera.sim.sent)} and len(ids) >= 4
