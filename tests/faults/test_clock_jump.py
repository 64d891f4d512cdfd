"""A wall-clock jump on the host changes neither dedup nor ordering.

`time.time` is patched to jump by hours (what an NTP step or a wrong RTC at boot
does). The dedup window runs on the monotonic clock, so a jump forward does not
end a window early and a jump back does not stretch one to an hour; events are
published in arrival order whatever their timestamps say.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.event import PlateEvent, Source, utc_now
from gateway.pipeline import Admission
from gateway.simulate.tcp import TcpCameraSimulator
from tests.faults.harness import (
    TCP_CAMERA,
    TCP_PASSWORD,
    TCP_USER,
    CountingCollector,
    plate_key,
    record,
    sha,
)
from tests.helpers import gateway_config

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.timeout(60)]

WINDOW = 1.0
HOUR = 3600.0


class JumpingClock:
    def __init__(self) -> None:
        self.offset = 0.0
        self._real = time.time

    def __call__(self) -> float:
        return self._real() + self.offset


def read(plate: str, offset: float) -> PlateEvent:
    return PlateEvent(
        camera="gate",
        source=Source.INJECT,
        plate=plate,
        received=utc_now() + timedelta(seconds=offset),
    )


async def test_wall_clock_jumps_change_neither_dedup_nor_order(
    mqtt_broker: MosquittoProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = JumpingClock()
    monkeypatch.setattr(time, "time", clock)
    sim = TcpCameraSimulator(user=TCP_USER, password=TCP_PASSWORD, seed=4, camera=TCP_CAMERA)
    await sim.start()
    entry = {
        "id": TCP_CAMERA,
        "protocol": "tcp",
        "host": "127.0.0.1",
        "port": sim.port,
        "username": TCP_USER,
        "password": TCP_PASSWORD,
    }
    config = gateway_config(mqtt_broker.url, tmp_path, [entry], dedup={"window_seconds": WINDOW})
    with CountingCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/event",)) as sub:
        async with Gateway(config) as gw:
            # Dedup: the wall clock leaps an hour forward inside a window: still a duplicate.
            assert await gw.submit(read("AB123", clock.offset)) is Admission.ACCEPTED
            clock.offset += HOUR
            assert await gw.submit(read("AB123", clock.offset)) is Admission.DUPLICATE
            # ... and two hours back: the window still ends after WINDOW real seconds.
            clock.offset -= 2 * HOUR
            assert await gw.submit(read("AB123", clock.offset)) is Admission.DUPLICATE
            await asyncio.sleep(WINDOW + 0.1)
            assert await gw.submit(read("AB123", clock.offset)) is Admission.ACCEPTED
            # Order: the camera's clock (the same host clock here) jumps between reads.
            async with asyncio.timeout(10):
                await sim.wait_logged_in()
            for jump in (0.0, -HOUR, +2 * HOUR, -3 * HOUR):
                clock.offset += jump
                await sim.push(3)
            keys = [sha(plate) for _, plate, _ in sim.sent_reads]
            events = await sub.until(
                lambda ms: sum(m.topic == f"lpr/{TCP_CAMERA}/event" for m in ms) >= len(keys)
            )
            suppressed = gw.metrics.registry.get_sample_value(
                "lpr_duplicates_suppressed_total", {"camera": "gate"}
            )
    await sim.stop()
    tcp_events = [m.json() for m in events if m.topic == f"lpr/{TCP_CAMERA}/event"]
    assert [plate_key(e) for e in tcp_events] == keys  # arrival order, not timestamp order
    times = [e["time"] for e in tcp_events]
    assert times != sorted(times)  # the timestamps really jumped about
    assert suppressed == 2
    record(
        "clock jumps (+1 h, -2 h inside a dedup window; -1 h, +2 h, -3 h between reads): "
        f"2 duplicates suppressed as with a steady clock, window ended after {WINDOW:g} s "
        f"real time; {len(keys)} TCP reads sent, {len(tcp_events)} received in sending order,"
        " lost 0"
    )
