"""`lpr-gateway demo`: everything on one box with no set-up.

An embedded mosquitto, the gateway, and simulated cameras speaking the real
protocols (one per protocol whose simulator is present), plus a subscriber
that prints each event as the broker delivers it, and the web page on a free
loopback port (its address in the banner). Until Ctrl-C or --seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import threading
import unicodedata
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
    DedupConfig,
    HistoryConfig,
    HttpCameraConfig,
    HttpServerConfig,
    MetricsConfig,
    MqttConfig,
    OutboxConfig,
    Protocol,
    RtspCameraConfig,
    TcpCameraConfig,
    UiConfig,
)
from gateway.topics import Topics

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


class TcpDemoSource(DemoSource):
    """A simulated camera in TCP mode: the gateway connects to it and logs in."""

    def __init__(self, rate: float) -> None:
        from gateway.simulate.tcp import TcpCameraSimulator

        self.simulator = TcpCameraSimulator(rate=rate, camera="gate_in", seed=1)

    async def start(self) -> None:
        port = await self.simulator.start()
        self.camera = TcpCameraConfig(
            id="gate_in",
            protocol=Protocol.TCP,
            name="Gate in (TCP)",
            host="127.0.0.1",
            port=port,
            username="admin",
            password="1234",
        )
        self.description = f"TCP camera 'gate_in' listening on 127.0.0.1:{port}"

    async def stop(self) -> None:
        await self.simulator.stop()


class HttpDemoSource(DemoSource):
    """A simulated camera in HTTP mode: it POSTs JSON reads to the gateway."""

    def __init__(self, rate: float, http_port: int) -> None:
        self.rate = rate
        self.url = f"http://127.0.0.1:{http_port}/lpr/gate_out"
        self.camera = HttpCameraConfig(
            id="gate_out",
            protocol=Protocol.HTTP,
            name="Gate out (HTTP)",
            path="/lpr/gate_out",
            username="cam",
            password="demo",
        )
        self.description = f"HTTP camera 'gate_out' posting to {self.url}"
        self._task: asyncio.Task[None] | None = None

    def attach(self, gateway: Gateway) -> None:
        self._task = asyncio.create_task(self._post_forever())

    async def _post_forever(self) -> None:
        from gateway.simulate.http import HttpCameraSimulator

        await asyncio.sleep(0.5)  # let the gateway's HTTP server start listening
        async with HttpCameraSimulator(
            self.url, user="cam", password="demo", camera="gate_out", other_event_every=5
        ) as simulator:
            await simulator.run(None, self.rate)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class RtspDemoSource(DemoSource):
    """A simulated camera in RTSP mode: the gateway plays its ONVIF metadata track."""

    def __init__(self, rate: float) -> None:
        from gateway.simulate.rtsp import RtspCameraSimulator

        self.simulator = RtspCameraSimulator(
            rate=rate, username="admin", password="demo", camera="lobby", seed=3
        )

    async def start(self) -> None:
        _rtsp_port, http_port = await self.simulator.start()
        self.camera = RtspCameraConfig(
            id="lobby",
            protocol=Protocol.RTSP,
            name="Lobby (RTSP)",
            url=self.simulator.url,
            username="admin",
            password="demo",
            http_port=http_port,
        )
        self.description = f"RTSP camera 'lobby' at {self.simulator.url} (pictures on :{http_port})"

    async def stop(self) -> None:
        await self.simulator.stop()


def demo_sources(rate: float, http_port: int) -> list[DemoSource]:
    """One simulated camera per protocol, each speaking the real protocol."""
    return [TcpDemoSource(rate), HttpDemoSource(rate, http_port), RtspDemoSource(rate)]


def _pad(text: str, width: int) -> str:
    """Left-align in terminal columns: Hangul and other wide characters take two."""
    columns = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(0, width - columns)


class EventPrinter:
    """Subscribes to `<base>/#` and prints a readable line per message of interest."""

    def __init__(
        self,
        host: str,
        port: int,
        base: str,
        write: Callable[[str], None] = print,
        username: str | None = None,
        password: str | None = None,
    ):
        """`username`/`password`: the embedded broker's login of this run."""
        self.base = base
        self.write = write
        self.count = 0
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"demo-printer-{uuid.uuid4().hex[:6]}"
        )
        if username is not None:
            self._client.username_pw_set(username, password)
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
        if topic == Topics(self.base).bridge_event:
            return _describe_bridge_event(payload)
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
                f"{_pad(e['plate'], 14)} {e['direction']:<7} conf {confidence:<5} "
                f"{', '.join(images) or 'no images'}"
            )
        if what == "availability":
            return f"{'':24}  {camera:<10} is {payload.decode()}"
        if len(parts) >= 4 and parts[-2] == "camera_event":
            return f"{'':24}  {parts[-3]:<10} camera event: {parts[-1]}"
        if topic == Topics(self.base).state:
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
    try:
        async with _started(sources):
            config = Config(
                mqtt=MqttConfig(urls=()),
                http=HttpServerConfig(listen=f"127.0.0.1:{http_port}"),
                metrics=MetricsConfig(listen=f"127.0.0.1:{free_port()}"),
                outbox=OutboxConfig(path=workdir / "outbox.sqlite3"),
                dedup=DedupConfig(window_seconds=0),
                # The web page on loopback (no login needed there), with the
                # history behind its search.
                ui=UiConfig(listen=f"127.0.0.1:{free_port()}"),
                history=HistoryConfig(enabled=True),
                cameras=tuple(s.camera for s in sources if s.camera is not None),
            )
            await _show(config, sources, seconds)
    finally:
        if data_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


async def _show(config: Config, sources: list[DemoSource], seconds: float) -> None:
    printer: EventPrinter | None = None
    try:
        async with Gateway(config) as gateway:
            assert gateway.embedded_broker is not None
            broker = gateway.embedded_broker
            # The broker accepts only this run's random login: the watch command
            # carries it (on the user's own terminal; it dies with the demo).
            login = (
                f" -u {broker.username} -P {broker.password}" if broker.username is not None else ""
            )
            print(
                f"demo: embedded MQTT broker on {broker.url} "
                f"(watch: mosquitto_sub -p {broker.port}{login} -t 'lpr/#' -v)"
            )
            print(f"demo: metrics on http://127.0.0.1:{gateway.metrics_port}/metrics")
            if gateway.ui is not None:
                print(f"demo: web page on http://127.0.0.1:{gateway.ui.port}/ (open it)")
            for source in sources:
                print(f"demo: {source.description}")
            print("demo: events as the broker delivers them (Ctrl-C to stop):")
            printer = EventPrinter(
                broker.host,
                broker.port,
                config.mqtt.base_topic,
                username=broker.username,
                password=broker.password,
            )
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


def _describe_bridge_event(payload: bytes) -> str | None:
    """One line for a bridge event; camera online/offline are the availability lines."""
    event = json.loads(payload)
    kind, data = event.get("type"), event.get("data") or {}
    if kind in ("camera_online", "camera_offline"):
        return None
    subject = data.get("camera") or data.get("name") or ""
    detail = data.get("action") or data.get("detail") or data.get("reason") or ""
    return f"{'':24}  bridge     {kind} {subject} {detail}".rstrip()
