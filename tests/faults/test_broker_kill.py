"""Broker SIGKILLed and restarted 5 times while a TCP, an HTTP and an RTSP camera send.

Promise checked: every read a camera had handed over arrives at least once, in
per-camera order, and a redelivered event carries the same `id` and payload.
"Handed over" means: HTTP, the request got a 200; TCP and RTSP, the simulator
wrote the read into a live session. The gateway stays connected to its cameras
through a broker outage, so for TCP and RTSP that is every read sent.

Why the counting subscriber cannot miss anything here (and so a miss is the
gateway's): a SIGKILLed mosquitto forgets every session, so a QoS 1 message
published after the restart but before the subscriber has subscribed again
would go nowhere. The gateway therefore reaches the broker through a gated
proxy: after each restart the gate stays shut until the subscriber's SUBSCRIBE
is acknowledged. Messages the broker had acknowledged to the gateway before
the kill were already written to the subscriber's socket (mosquitto queues
to subscribers before it sends PUBACK), so they are not lost either.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import pytest

from gateway.adapters.base import ReconnectPolicy
from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.publisher import BrokerBackoff
from tests.faults.harness import (
    RTSP_CAMERA,
    TCP_CAMERA,
    CountingCollector,
    HttpLoad,
    ledger,
    record,
    three_cameras,
    until_each_camera_sent,
    wait_listening,
)
from tests.faults.proxy import GateProxy
from tests.helpers import gateway_config

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.timeout(90)]

KILLS = 5
# Reads each camera must have sent before the run ends (waited for).
LOAD_PER_CAMERA = 20


async def test_broker_sigkilled_five_times_loses_nothing(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    rng = random.Random(8)
    proxy = GateProxy(mqtt_broker.host, mqtt_broker.port)
    await proxy.start()
    with CountingCollector(
        mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/event",)
    ) as collector:
        async with three_cameras(rate=5.0) as cams:
            config = gateway_config(
                f"mqtt://127.0.0.1:{proxy.port}",
                tmp_path,
                cams.entries(),
                mqtt={"keepalive_seconds": 2},
            )
            # The RTSP camera's backoff starts at 0.1 s instead of 1 s; the
            # publisher's would reach seconds after a few refusals at the gate.
            async with Gateway(
                config,
                reconnect_policy=ReconnectPolicy(initial_seconds=0.1),
                broker_backoff=BrokerBackoff(initial_seconds=0.1, max_seconds=0.5),
            ) as gw:
                assert config.http.port
                await wait_listening(config.http.port)
                async with HttpLoad(config.http.port, rate=5.0) as http:
                    async with asyncio.timeout(10):
                        await cams.tcp.wait_logged_in()
                        await cams.rtsp.wait_playing()
                    for kill in range(KILLS):
                        await asyncio.sleep(rng.uniform(0.7, 1.5))  # under load
                        proxy.close_gate()
                        await asyncio.to_thread(mqtt_broker.kill)
                        await asyncio.sleep(rng.uniform(0.2, 1.0))  # the outage
                        await asyncio.to_thread(mqtt_broker.start)
                        await collector.until_connects(kill + 2)
                        proxy.open_gate()
                    await asyncio.sleep(1.0)
                    await until_each_camera_sent(cams, http, LOAD_PER_CAMERA)
                    # Read before the cameras stop: stopping the simulator ends
                    # the TCP session, and the reconnect after it is counted one
                    # backoff (0.1 s) later.
                    online_throughout = (
                        gw.metrics.registry.get_sample_value(
                            "lpr_camera_reconnects_total", {"camera": TCP_CAMERA}
                        )
                        or 0.0
                    )
                    await http.stop()
                    await cams.stop()
                    book = ledger(cams, http)
                    total = sum(len(v) for v in book.expected.values())
                    with contextlib.suppress(AssertionError):  # timed out: the report says what
                        await collector.until(
                            lambda _: book.report(collector.events()).total_lost == 0, timeout=30
                        )
                    statuses = http.statuses()
    await proxy.close()
    report = book.report(collector.events())
    record(report.line(f"broker SIGKILL x{KILLS} (mosquitto, 3 cameras, 5 reads/s each)"))
    report.assert_nothing_lost()
    assert total >= 3 * LOAD_PER_CAMERA, book.expected  # the load really ran (waited for)
    assert report.sent[RTSP_CAMERA] > 0 and report.sent[TCP_CAMERA] > 0
    # The camera sessions were not disturbed by the broker going away.
    assert online_throughout == 0
    # Every HTTP request was answered 200: the outbox takes reads while the broker is down.
    errors = [s.error for s in http.sim.sent if s.status != 200]
    assert set(statuses) == {200}, errors
