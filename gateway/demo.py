"""`lpr-gateway demo`: everything on one box with no set-up.

An embedded mosquitto, the gateway, and simulated cameras speaking the real
protocols (one per protocol whose simulator is present), plus a subscriber
that prints each event as the broker delivers it. Until Ctrl-C or --seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.broker import free_port
from gateway.config import (
    AnyCameraConfig,
    Config,
    HttpServerConfig,
    MetricsConfig,
    MqttConfig,
    OutboxConfig,
)
from gateway.event import Image, PlateEvent, Source, utc_now
from gateway.simulate.common import PlateGenerator

log = logging.getLogger(__name__)


class DemoSource:
    """One simulated camera of the demo: started before the gateway, attached after."""

    camera: AnyCameraConfig | None = None
    description = ""

    async def start(self) -> None:
        """Start listening (camera-side servers) before the gateway connects."""

    def attach(self, gateway: Gateway) -> None:
        """Begin producing reads once the gateway runs."""

    async def stop(self) -> None:
        """Stop producing."""


class SyntheticSource(DemoSource):
    """Reads injected straight into the pipeline: the path after the adapters."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.description = f"synthetic camera 'synthetic': {rate:g} reads/s into the pipeline"
        self._task: asyncio.Task[None] | None = None

    def attach(self, gateway: Gateway) -> None:
        self._task = asyncio.create_task(self._produce(gateway))

    async def _produce(self, gateway: Gateway) -> None:
        generator = PlateGenerator()
        while True:
            read = generator.read("synthetic")
            await gateway.submit(
                PlateEvent(
                    camera="synthetic",
                    source=Source.INJECT,
                    plate=read.plate,
                    time=utc_now(),
                    received=utc_now(),
                    plate_image=Image(read.plate_jpeg),
                    scene_image=Image(read.scene_jpeg),
                )
            )
            await asyncio.sleep(1 / self.rate)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()


def demo_sources(rate: float, http_port: int) -> list[DemoSource]:
    """One simulated camera per protocol whose simulator exists, else a synthetic one."""
    sources: list[DemoSource] = []
    if not sources:
        sources.append(SyntheticSource(rate))
    return sources


class EventPrinter:
    """Subscribes to `<base>/#` and prints a readable line per message of interest."""

    def __init__(self, host: str, port: int, base: str, write: Callable[[str], None] = print):
        self.base = base
        self.write = write
        self.count = 0
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"demo-printer-{uuid.uuid4().hex[:6]}"
        )
        self._client.on_connect = lambda c, *_: c.subscribe(f"{base}/#", qos=1)
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        line = self.describe(message.topic, bytes(message.payload))
        if line:
            with self._lock:
                self.write(line)

    def describe(self, topic: str, payload: bytes) -> str | None:
        parts = topic.split("/")
        if len(parts) < 3:
            return None
        camera, what = parts[-2], parts[-1]
        if what == "event" and len(parts) == 3:
            self.count += 1
            e = json.loads(payload)
            images = []
            for kind in ("plate", "scene"):
                image = e["images"][kind]
                if image is None:
                    continue
                if image.get("missing"):
                    images.append(f"{kind}: missing ({image['reason']})")
                else:
                    images.append(f"{kind} {image['bytes'] / 1024:.0f} KB")
            confidence = f"{e['confidence']:.2f}" if e["confidence"] is not None else "-"
            return (
                f"{e['time'] or e['received']}  {camera:<10} {e['source']:<5} "
                f"{e['plate']:<14} {e['direction']:<7} conf {confidence:<5} "
                f"{', '.join(images) or 'no images'}"
            )
        if what == "availability":
            return f"{'':24}  {camera:<10} is {payload.decode()}"
        if len(parts) >= 4 and parts[-3] == "camera_event":
            camera = parts[-4] if len(parts) >= 5 else camera
            return f"{'':24}  {parts[1]:<10} camera event: {parts[-1]}"
        if topic == f"{self.base}/bridge/state":
            return f"{'':24}  gateway    is {payload.decode()}"
        return None

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextlib.asynccontextmanager
async def _started(sources: list[DemoSource]) -> AsyncIterator[None]:
    started: list[DemoSource] = []
    try:
        for source in sources:
            await source.start()
            started.append(source)
        yield
    finally:
        for source in reversed(started):
            with contextlib.suppress(Exception):
                await source.stop()


async def run_demo(rate: float, seconds: float, data_dir: Path | None) -> int:
    workdir = data_dir or Path(tempfile.mkdtemp(prefix="lpr-demo-"))
    http_port = free_port()
    sources = demo_sources(rate, http_port)
    config = Config(
        mqtt=MqttConfig(url=None),
        http=HttpServerConfig(listen=f"127.0.0.1:{http_port}"),
        metrics=MetricsConfig(listen=f"127.0.0.1:{free_port()}"),
        outbox=OutboxConfig(path=workdir / "outbox.sqlite3"),
        cameras=tuple(s.camera for s in sources if s.camera is not None),
    )
    printer: EventPrinter | None = None
    try:
        async with _started(sources), Gateway(config) as gateway:
            assert gateway.embedded_broker is not None
            broker = gateway.embedded_broker
            print(
                f"demo: embedded MQTT broker on {broker.url} "
                f"(watch: mosquitto_sub -p {broker.port} -t 'lpr/#' -v)"
            )
            print(f"demo: metrics on http://127.0.0.1:{gateway.metrics_port}/metrics")
            for source in sources:
                print(f"demo: {source.description}")
            print("demo: events as the broker delivers them (Ctrl-C to stop):")
            printer = EventPrinter(broker.host, broker.port, config.mqtt.base_topic)
            for source in sources:
                source.attach(gateway)
            if seconds > 0:
                await asyncio.sleep(seconds)
            else:
                await asyncio.Event().wait()
    finally:
        if printer is not None:
            printer.close()
            print(f"demo: {printer.count} events shown")
        if data_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0
