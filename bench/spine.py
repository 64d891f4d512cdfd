"""Spine scenarios: the raw paho loop (baseline) and the pipeline with its durable outbox.

Both publish the same messages per event (20 KB plate + 300 KB scene retained,
~1 KB JSON event, the same JSON retained as `last`, all QoS 1) to the same
mosquitto, with one subscriber process receiving everything.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import (
    MachineCpu,
    Result,
    Subscriber,
    cpu_seconds,
    inject_read,
    loop_result,
    percentile,
    publish_read,
    round_ms,
    rss_mb,
    wait_published,
)
from gateway.app import Gateway
from gateway.broker import free_port
from gateway.config import (
    Config,
    HistoryConfig,
    MetricsConfig,
    MqttConfig,
    OutboxConfig,
    UiConfig,
)
from gateway.simulate.common import plate_jpeg, scene_jpeg

WINDOW = 32


def _event_json(n: int) -> bytes:
    document = {
        "schema": 1,
        "id": str(uuid.uuid4()),
        "camera": "raw",
        "source": "tcp",
        "plate": f"RAW{n:06d}",
        "raw": {"sent": time.time(), "padding": "x" * 700},
    }
    return json.dumps(document).encode()


def raw_loop(host: str, port: int, events: int, rate: float | None = None) -> Result:
    """What publishing alone costs: paho, a window of QoS 1 messages, no gateway."""
    subscriber = Subscriber(host, port, events, topic="raw/#")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4()}")
    client.max_inflight_messages_set(WINDOW)
    client.connect(host, port)
    client.loop_start()
    plate, scene = plate_jpeg(), scene_jpeg()
    outstanding: deque[mqtt.MQTTMessageInfo] = deque()
    cpu0, start, machine = cpu_seconds(), time.time(), MachineCpu()
    for n in range(events):
        if rate:
            delay = start + n / rate - time.time()
            if delay > 0:
                time.sleep(delay)
        publish_read(client, outstanding, "raw", plate, scene, _event_json(n), WINDOW)
    wait_published(outstanding)
    cpu = cpu_seconds() - cpu0
    got = subscriber.result()
    machine_pct = machine.pct()
    client.loop_stop()
    client.disconnect()
    return loop_result(
        "raw paho loop" + (f" @{rate:g}/s" if rate else ""),
        got,
        start,
        cpu,
        events,
        "publisher CPU (the loop itself)",
        machine_pct,
    )


def pipeline(
    broker_url: str,
    host: str,
    port: int,
    events: int,
    rate: float | None = None,
    history: bool = False,
    ui: bool = False,
) -> Result:
    """Events handed to the pipeline: dedup, durable outbox (SQLite WAL), publisher;
    with `history`, every read also kept in the read history (plate pictures);
    with `ui`, the web page listening (nobody watching: its live view's cost)."""
    subscriber = Subscriber(host, port, events, topic="lpr/#")
    with tempfile.TemporaryDirectory(prefix="lpr-bench-") as tmp:
        config = Config(
            mqtt=MqttConfig(urls=(broker_url,), client_id=f"bench-gw-{uuid.uuid4().hex[:6]}"),
            metrics=MetricsConfig(listen=None),
            outbox=OutboxConfig(path=Path(tmp) / "outbox.sqlite3"),
            history=HistoryConfig(enabled=history),
            ui=UiConfig(listen=f"127.0.0.1:{free_port()}" if ui else None),
        )
        machine = MachineCpu()  # the gateway's start-up is a small share of a run
        cpu, seconds = asyncio.run(_drive_pipeline(config, events, rate))
    got = subscriber.result()
    machine_pct = machine.pct()
    elapsed = got["end"] - seconds  # seconds holds the start time here
    return Result(
        scenario="pipeline + outbox"
        + (" + history" if history else "")
        + (" + web page" if ui else "")
        + (f" @{rate:g}/s" if rate else ""),
        events=got["received"],
        seconds=round(elapsed, 2),
        events_per_s=round(got["received"] / elapsed, 1),
        p50_ms=round_ms(percentile(got["latencies"], 50)),
        p99_ms=round_ms(percentile(got["latencies"], 99)),
        gateway_cpu_pct=round(100 * cpu / elapsed, 1),
        cpu_ms_per_event=round(1000 * cpu / max(events, 1), 3),
        peak_rss_mb=round(rss_mb(), 1),
        machine_cpu_pct=machine_pct,
        notes="in-process load generator (pipeline entry)",
    )


async def _drive_pipeline(config: Config, events: int, rate: float | None) -> tuple[float, float]:
    plate, scene = plate_jpeg(), scene_jpeg()
    async with Gateway(config) as gateway:
        while gateway.publisher is None or not gateway.publisher.connected:
            await asyncio.sleep(0.01)
        cpu0, start = cpu_seconds(), time.time()
        counter = iter(range(events))

        async def submitter() -> None:
            for n in counter:
                if rate:
                    delay = start + n / rate - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await gateway.submit(inject_read("bench", n, plate, scene))

        await asyncio.gather(*(submitter() for _ in range(8)))
        while gateway.outbox.pending_events > 0:
            await asyncio.sleep(0.005)
        cpu = cpu_seconds() - cpu0
    return cpu, start
