"""The gateway process: wires config, outbox, publisher, pipeline, metrics and adapters.

Start order is the data path backwards (outbox, publisher, pipeline, then
intake), so nothing is accepted before it can be stored. Shutdown is the
reverse and bounded: stop intake, let in-flight publishes finish for a few
seconds, keep the rest in the outbox, say `offline`, exit.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.adapters.base import AdapterContext
from gateway.broker import MosquittoProcess
from gateway.config import Config, Protocol
from gateway.event import AnyEvent
from gateway.homeassistant import Discovery
from gateway.metrics import Metrics
from gateway.outbox import Outbox, OutboxWriter
from gateway.pipeline import Admission, Pipeline
from gateway.publisher import MqttPublisher

log = logging.getLogger(__name__)

SHUTDOWN_DRAIN_SECONDS = 3.0
ADAPTER_STOP_SECONDS = 2.0


class Gateway:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.stopping = asyncio.Event()
        self.embedded_broker: MosquittoProcess | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self.outbox = Outbox(config.outbox.path, config.outbox.max_bytes, config.outbox.sync)
        self._tasks: list[asyncio.Task[None]] = []
        self._adapter_tasks: list[asyncio.Task[None]] = []
        self._metrics_runner: web.AppRunner | None = None
        self.metrics_port: int | None = None
        self.started_at = time.time()
        self.publisher: MqttPublisher | None = None
        self.pipeline: Pipeline | None = None
        self._writer: OutboxWriter | None = None
        self.discovery: Discovery | None = None

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def broker_url(self) -> str:
        if self.embedded_broker is not None:
            return self.embedded_broker.url
        assert self.config.mqtt.url is not None
        return self.config.mqtt.url

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.mqtt.url is None:
            self.embedded_broker = MosquittoProcess(port=self.config.mqtt.embedded_port)
            # Spawned from the loop's thread, which lives as long as the gateway:
            # the broker is tied to it and goes when we go, even on SIGKILL.
            self.embedded_broker.spawn()
            await loop.run_in_executor(None, self.embedded_broker.wait_ready)
            log.info(
                "no mqtt.url configured: started the embedded mosquitto broker on %s",
                self.embedded_broker.url,
            )
        await loop.run_in_executor(self._executor, self.outbox.open)
        self.metrics.outbox_depth.set(self.outbox.pending_events)
        self.metrics.outbox_bytes.set(self.outbox.pending_bytes)
        self.publisher = MqttPublisher(
            self.config, self.metrics, self.outbox, self._executor, self.broker_url
        )
        self._writer = OutboxWriter(self.outbox, self._executor)
        self.pipeline = Pipeline(self.config, self.metrics, self._writer, self._on_stored)
        if self.config.homeassistant.enabled:
            self.discovery = Discovery(self.config, self.publisher)
            self.discovery.attach()
            self.pipeline.observers.append(self.discovery.note_event)
        self._tasks.append(asyncio.create_task(self._writer.run(), name="outbox-writer"))
        self._tasks.append(asyncio.create_task(self.publisher.run(), name="mqtt-publisher"))
        if self.config.metrics.listen:
            await self._start_metrics_server()
        for camera in self.config.cameras:
            self.metrics.camera_known(camera.id, camera.protocol.value)
        context = AdapterContext(
            config=self.config,
            metrics=self.metrics,
            submit=self.submit,
            set_camera_online=self.publisher.set_camera_online,
            stopping=self.stopping,
        )
        for protocol in Protocol:
            cameras = self.config.cameras_of(protocol)
            if not cameras:
                continue
            module = importlib.import_module(f"gateway.adapters.{protocol.value}")
            self._adapter_tasks.append(
                asyncio.create_task(
                    _log_crash(module.run(context, cameras), f"{protocol.value} adapter"),
                    name=f"adapter-{protocol.value}",
                )
            )
        log.info(
            "gateway started: %d cameras, outbox %s, metrics %s",
            len(self.config.cameras),
            self.config.outbox.path,
            f"on :{self.metrics_port}" if self.metrics_port else "off",
        )

    def _on_stored(self) -> None:
        self.metrics.outbox_depth.set(self.outbox.pending_events)
        self.metrics.outbox_bytes.set(self.outbox.pending_bytes)
        if self.publisher is not None:
            self.publisher.wake()

    async def submit(self, event: AnyEvent) -> Admission:
        if self.pipeline is None:
            return Admission.SHUTTING_DOWN
        return await self.pipeline.submit(event)

    async def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        log.info("stopping: intake closed, draining in-flight publishes")
        if self.pipeline is not None:
            self.pipeline.close()
        for task in self._adapter_tasks:
            task.cancel()
        if self._adapter_tasks:
            await asyncio.wait(self._adapter_tasks, timeout=ADAPTER_STOP_SECONDS)
        if self._writer is not None:
            await self._writer.close()
        if self.discovery is not None:
            self.discovery.close()
        if self.publisher is not None:
            await self.publisher.stop(SHUTDOWN_DRAIN_SECONDS)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        loop = asyncio.get_running_loop()
        left = self.outbox.pending_events
        await loop.run_in_executor(self._executor, self.outbox.close)
        self._executor.shutdown(wait=True)
        if self.embedded_broker is not None:
            await loop.run_in_executor(None, self.embedded_broker.close)
        log.info("stopped; %d events kept in the outbox for the next start", left)

    # -- /metrics and /healthz -------------------------------------------------

    async def _start_metrics_server(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/healthz", self._handle_health)
        self._metrics_runner = web.AppRunner(app, access_log=None)
        await self._metrics_runner.setup()
        site = web.TCPSite(self._metrics_runner, self.config.metrics.host, self.config.metrics.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.metrics_port = sockets[0].getsockname()[1] if sockets else self.config.metrics.port

    async def _handle_metrics(self, _request: web.Request) -> web.Response:
        self.metrics.asyncio_tasks.set(len(asyncio.all_tasks()))
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def health(self) -> dict[str, Any]:
        problems: list[str] = []
        publisher = self.publisher
        if publisher is None or not publisher.connected:
            since = publisher.disconnected_since if publisher else None
            detail = f" since {time.strftime('%H:%M:%S', time.gmtime(since))}Z" if since else ""
            error = f": {publisher.last_error}" if publisher and publisher.last_error else ""
            problems.append(f"mqtt: not connected to the broker{detail}{error}")
        if self.outbox.pending_bytes >= self.config.outbox.max_bytes * 0.95:
            problems.append("outbox: full or nearly full; intake is refusing reads")
        if self.stopping.is_set():
            problems.append("shutting down")
        for task in self._tasks + self._adapter_tasks:
            if task.done() and not self.stopping.is_set():
                problems.append(f"{task.get_name()}: stopped unexpectedly")
        return {
            "healthy": not problems,
            "problems": problems,
            "mqtt_connected": bool(publisher and publisher.connected),
            "outbox_events": self.outbox.pending_events,
            "outbox_bytes": self.outbox.pending_bytes,
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }

    async def _handle_health(self, _request: web.Request) -> web.Response:
        report = self.health()
        return web.Response(
            status=200 if report["healthy"] else 503,
            text=json.dumps(report),
            content_type="application/json",
        )


async def _log_crash(coro: Any, what: str) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s crashed", what)
        raise
