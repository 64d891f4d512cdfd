"""Broker outage under load: how long the gateway takes to drain its outbox once the
broker is back.

The gateway (in this process) takes `rate` events/s throughout. It reaches the
broker through a proxy; for `--seconds` (default 30, the issue's figure) the
proxy refuses it, as a broker that is down does, while a subscriber stays
connected to the real broker and records when each event arrives. Measured
after the broker returns:

- reconnect: until the first backlog event arrives (the publisher's backoff);
- drain: until the last event accepted during the outage has arrived, while
  new events keep coming at `rate`;
- nothing lost: every event arrives.

Events carry the plate crop (~20 KB) but no scene: 3,000 scenes of 300 KB would
put ~1 GB through the disk of a shared test machine per run.

- outage-30s: 100 events/s, a 30 s outage
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import Result, cpu_seconds, percentile, rss_mb
from gateway.broker import MosquittoProcess

RATE = 100.0
OUTAGE_SECONDS = 30.0
WARMUP_SECONDS = 3.0
AFTER_MAX_SECONDS = 120.0  # bound on the wait for the drain


class _Gate:
    """A TCP proxy to the broker that can refuse (closed) or forward (open)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.open = True
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def close_gate(self) -> None:
        self.open = False
        for writer in list(self._writers):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(262144):
                    dst.write(data)
                    await dst.drain()

        tasks = [
            asyncio.create_task(pump(reader, up_writer)),
            asyncio.create_task(pump(up_reader, writer)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)

    async def stop(self) -> None:
        self.close_gate()
        if self._server is not None:
            self._server.close()


class _Arrivals:
    def __init__(self, host: str, port: int) -> None:
        self.first: dict[int, float] = {}
        self.latency_ms: list[float] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"outage-{uuid.uuid4()}")
        self.client.on_message = self._on_message
        self.ready = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe("lpr/+/event", qos=1)
        self.ready.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith("/bridge/event"):  # the bridge's own feed, not a read
            return
        now = time.time()
        document = json.loads(message.payload)
        n = int(document["raw"]["n"])
        with self.lock:
            if n not in self.first:
                self.first[n] = now
                self.latency_ms.append((now - float(document["raw"]["sent"])) * 1000)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def outage(broker: MosquittoProcess, args: argparse.Namespace) -> Result:
    seconds = getattr(args, "seconds", None) or OUTAGE_SECONDS
    arrivals = _Arrivals(broker.host, broker.port)
    if not arrivals.ready.wait(10):
        raise RuntimeError("outage subscriber did not connect")
    try:
        with tempfile.TemporaryDirectory(prefix="lpr-bench-outage-") as tmp:
            figures = asyncio.run(_run(broker, Path(tmp), seconds, arrivals))
    finally:
        arrivals.close()
    return figures


async def _run(
    broker: MosquittoProcess, tmp: Path, outage_seconds: float, arrivals: _Arrivals
) -> Result:
    from gateway.app import Gateway
    from gateway.config import Config, DedupConfig, MetricsConfig, MqttConfig, OutboxConfig
    from gateway.event import Image, PlateEvent, Source, utc_now
    from gateway.simulate.common import plate_jpeg

    gate = _Gate(broker.host, broker.port)
    await gate.start()
    config = Config(
        mqtt=MqttConfig(
            urls=(f"mqtt://127.0.0.1:{gate.port}",),
            client_id=f"bench-outage-{uuid.uuid4().hex[:6]}",
        ),
        metrics=MetricsConfig(listen=None),
        outbox=OutboxConfig(path=tmp / "outbox.sqlite3"),
        dedup=DedupConfig(window_seconds=0),
    )
    plate = plate_jpeg()
    submitted = 0
    stop_load = asyncio.Event()
    peak_depth = 0
    async with Gateway(config) as gateway:
        while gateway.publisher is None or not gateway.publisher.connected:
            await asyncio.sleep(0.01)
        cpu0, start = cpu_seconds(), time.time()

        async def load() -> None:
            nonlocal submitted, peak_depth
            while not stop_load.is_set():
                due = start + submitted / RATE
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gateway.submit(
                    PlateEvent(
                        camera="outage",
                        source=Source.INJECT,
                        plate=f"O{submitted:06d}",
                        received=utc_now(),
                        raw={"n": submitted, "sent": time.time()},
                        plate_image=Image(plate),
                    )
                )
                submitted += 1
                peak_depth = max(peak_depth, gateway.outbox.pending_events)

        loader = asyncio.create_task(load())
        await asyncio.sleep(WARMUP_SECONDS)
        gate.close_gate()
        down_from_n = submitted
        await asyncio.sleep(outage_seconds)
        gate.open = True
        back_at, backlog = time.time(), submitted  # events 0..backlog-1 were accepted by now
        deadline = time.monotonic() + AFTER_MAX_SECONDS
        while time.monotonic() < deadline:
            with arrivals.lock:
                if all(n in arrivals.first for n in range(backlog)):
                    break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        stop_load.set()
        await loader
        total = submitted
        while time.monotonic() < deadline and len(arrivals.first) < total:
            await asyncio.sleep(0.05)
        cpu = cpu_seconds() - cpu0
        reconnects = gateway.metrics.mqtt_reconnects._value.get()
    await gate.stop()
    with arrivals.lock:
        after = [arrivals.first[n] for n in range(down_from_n, backlog) if n in arrivals.first]
        backlog_done = max(
            (arrivals.first[n] for n in range(backlog) if n in arrivals.first), default=back_at
        )
        received = len(arrivals.first)
        latencies = list(arrivals.latency_ms)
        end = max(arrivals.first.values(), default=back_at)
    reconnect_s = (min(after) - back_at) if after else None
    drain_s = backlog_done - back_at
    seconds = max(end - start, 1e-9)
    outage_events = backlog - down_from_n
    return Result(
        scenario=f"broker outage {outage_seconds:g} s @{RATE:g}/s",
        events=received,
        seconds=round(seconds, 2),
        events_per_s=round(received / seconds, 1),
        p50_ms=round(percentile(latencies, 50) or 0, 1),
        p99_ms=round(percentile(latencies, 99) or 0, 1),
        gateway_cpu_pct=round(100 * cpu / seconds, 1),
        cpu_ms_per_event=round(1000 * cpu / max(received, 1), 3),
        peak_rss_mb=round(rss_mb(), 1),
        notes=(
            f"drain {drain_s:.1f} s after the broker returned (reconnect "
            f"{'–' if reconnect_s is None else f'{reconnect_s:.1f} s'} of it, publisher backoff); "
            f"{outage_events} events queued in the outage; lost {total - received}"
        ),
        extra={
            "outage_seconds": outage_seconds,
            "rate": RATE,
            "events_during_outage": outage_events,
            "peak_outbox_events": peak_depth,
            "reconnect_seconds": None if reconnect_s is None else round(reconnect_s, 2),
            "drain_seconds": round(drain_s, 2),
            "drain_events_per_s": (
                round(outage_events / (drain_s - reconnect_s), 1)
                if reconnect_s is not None and drain_s > reconnect_s
                else None
            ),
            "submitted": total,
            "lost": total - received,
            "mqtt_connect_attempts": reconnects,
            "latency_note": "p50/p99 include the events held through the outage",
        },
    )


SCENARIOS = {"outage-30s": outage}
