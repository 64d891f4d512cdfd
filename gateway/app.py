"""The gateway process: wires config, outbox, publisher, pipeline, metrics and adapters.

Start order is the data path backwards (outbox, publisher, pipeline, then
intake), so nothing is accepted before it can be stored. Shutdown is the
reverse and bounded: stop intake, let in-flight publishes finish for a few
seconds, keep the rest in the outbox, say `offline`, exit.

Every long-lived task (outbox writer, publisher, each adapter) runs under a
supervisor: an unexpected exception is logged with its traceback, counted
(`lpr_task_restarts_total`), shown in /healthz, and the task starts again
after a backoff. No task ends silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.adapters import http
from gateway.adapters.base import AdapterContext, CameraSwitches, ReconnectPolicy
from gateway.bridge_api import BridgeEvents, BridgeRequests
from gateway.broker import MosquittoProcess
from gateway.config import Config, HttpCameraConfig, Protocol, redacted_document
from gateway.errors import StartupError
from gateway.event import AnyEvent
from gateway.history import HistoryStore, HistoryWriter
from gateway.homeassistant import Discovery
from gateway.known_plates import KnownPlatesRegistry
from gateway.metrics import Metrics
from gateway.outbox import Outbox, OutboxOpenError, OutboxWriter
from gateway.pipeline import Admission, Pipeline
from gateway.publisher import BrokerBackoff, MqttPublisher
from gateway.runtime import RuntimeControl
from gateway.runtime_store import RuntimeStore, store_path
from gateway.topics import retirement_judge

if TYPE_CHECKING:
    from gateway.ui import WebUi

log = logging.getLogger(__name__)

SHUTDOWN_DRAIN_SECONDS = 3.0
ADAPTER_STOP_SECONDS = 2.0
# The gateway's own tasks (writer, publisher, requests) after their cancel.
TASK_STOP_SECONDS = 5.0
TASK_RESTART_MIN_SECONDS = 1.0
TASK_RESTART_MAX_SECONDS = 30.0
# A task that ran this long before crashing starts again after the shortest delay.
TASK_STABLE_SECONDS = 60.0
# The effective config in bridge info: beyond this the cameras' settings are summarised.
INFO_CONFIG_MAX_BYTES = 64 * 1024
# /healthz says "degraded" for this long after a task restarted.
RESTART_REPORT_SECONDS = 600.0


AdapterRun = Callable[[AdapterContext, Sequence[Any], ReconnectPolicy], Awaitable[None]]


# An adapter is imported only when a camera uses its protocol: the RTSP one
# brings lxml and the TCP one construct, ~7 MB resident that an HTTP-only
# gateway does without.


def _tcp_sessions() -> AdapterRun:
    from gateway.adapters import tcp

    return tcp.run


def _rtsp_sessions() -> AdapterRun:
    from gateway.adapters import rtsp

    return rtsp.run


# The cameras the gateway connects to, and the adapter that runs their sessions.
# HTTP cameras connect to the gateway instead: one `HttpPushServer` serves them
# all, bound in `Gateway.start` so that a busy port fails the start.
PULL_ADAPTERS: dict[Protocol, Callable[[], AdapterRun]] = {
    Protocol.TCP: _tcp_sessions,
    Protocol.RTSP: _rtsp_sessions,
}


class Gateway:
    def __init__(
        self,
        config: Config,
        metrics: Metrics | None = None,
        reconnect_policy: ReconnectPolicy | None = None,
        broker_backoff: BrokerBackoff | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        # When a camera that the gateway connects to (TCP, RTSP) is tried again.
        self.reconnect_policy = reconnect_policy or ReconnectPolicy()
        # When a lost broker is tried again.
        self.broker_backoff = broker_backoff or BrokerBackoff()
        self.stopping = asyncio.Event()
        self.embedded_broker: MosquittoProcess | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self.outbox = Outbox(config.outbox.path, config.outbox.max_bytes, config.outbox.sync)
        # Known plates added and cameras switched off at runtime, on a thread of
        # their own: a request waits for its fsync, never the outbox's commits.
        self.runtime_store = RuntimeStore(store_path(config.outbox.path))
        self._runtime_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runtime")
        self.switches = CameraSwitches()
        self.known_plates = KnownPlatesRegistry(config.known_plates, config.known_plates_tolerance)
        self.runtime: RuntimeControl | None = None
        self.bridge_events: BridgeEvents | None = None
        self.bridge_requests: BridgeRequests | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._adapter_tasks: list[asyncio.Task[None]] = []
        self._metrics_runner: web.AppRunner | None = None
        self.metrics_port: int | None = None
        self.started_at = time.time()
        self.publisher: MqttPublisher | None = None
        self.pipeline: Pipeline | None = None
        self._writer: OutboxWriter | None = None
        self.discovery: Discovery | None = None
        self.history: HistoryWriter | None = None
        self.http_server: http.HttpPushServer | None = None
        self.ui: WebUi | None = None
        # task name → (wall time, what happened) of its last crash
        self.task_crashes: dict[str, tuple[float, str]] = {}
        # tasks waiting to be restarted after a crash
        self._tasks_down: set[str] = set()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.mqtt.url is None:
            # A login made for this run: no other local user can read the
            # plates or publish into the gateway's topics.
            self.embedded_broker = MosquittoProcess(
                port=self.config.mqtt.embedded_port, anonymous=False
            )
            # Spawned from the loop's thread, which lives as long as the gateway:
            # the broker is tied to it and goes when we go, even on SIGKILL.
            self.embedded_broker.spawn()
            await loop.run_in_executor(None, self.embedded_broker.wait_ready)
            log.info(
                "no mqtt.url configured: started the embedded mosquitto broker on %s",
                self.embedded_broker.url,
            )
        try:
            await loop.run_in_executor(self._executor, self.outbox.open)
        except OutboxOpenError as exc:
            raise StartupError(str(exc)) from exc
        disabled = await self._load_runtime_state()  # the names there are, for the next step
        await self._retire_topics_no_longer_published()
        self.metrics.outbox_depth.set(self.outbox.pending_events)
        self.metrics.outbox_bytes.set(self.outbox.pending_bytes)
        self.metrics.outbox_dead_letters.set(self.outbox.dead_letter_events)
        publisher_config = self.config
        if self.embedded_broker is not None:
            publisher_config = dataclasses.replace(
                self.config,
                mqtt=dataclasses.replace(
                    self.config.mqtt,
                    username=self.embedded_broker.username,
                    password=self.embedded_broker.password,
                ),
            )
        self.publisher = MqttPublisher(
            publisher_config,
            self.metrics,
            self.outbox,
            self._executor,
            self.embedded_broker.url if self.embedded_broker is not None else None,
            backoff=self.broker_backoff,
        )
        # The durable copy of the retained state: a broker that lost it gets it
        # back on connect even after this gateway restarted.
        self.publisher.restore_retained(
            await loop.run_in_executor(self._executor, self.outbox.load_retained_state)
        )
        self._writer = OutboxWriter(self.outbox, self._executor, on_stored=self.publisher.offer)
        self.pipeline = Pipeline(
            self.config, self.metrics, self._writer, self._on_stored, known_plates=self.known_plates
        )
        kept = await loop.run_in_executor(self._executor, self.outbox.kept_topics)
        self.pipeline.remember_event_pictures(topic.topic for topic in kept)
        events = self._wire_runtime_control(disabled)
        if self.config.history.enabled:
            await self._start_history(self.pipeline)
        if self.config.homeassistant.enabled:
            self.discovery = Discovery(
                self.config, self.publisher.state, self.known_plates, self.switches
            )
            self.discovery.attach()
            self.pipeline.observers.append(self.discovery.note_event)
            assert self.runtime is not None
            self.runtime.known_plates_listeners.append(self.discovery.known_plates_changed)
            await self.pipeline.reset_presence()
        context = AdapterContext(
            config=self.config,
            metrics=self.metrics,
            submit=self.submit,
            set_camera_online=self.publisher.set_camera_online,
            stopping=self.stopping,
            switches=self.switches,
            login_refused=events.login_refused,
        )
        await self._listen_for_http_cameras(context)
        writer, publisher = self._writer, self.publisher
        self._tasks.append(self._supervised("outbox-writer", writer.run))
        self._tasks.append(self._supervised("mqtt-publisher", publisher.run))
        if self.bridge_requests is not None:
            self._tasks.append(self._supervised("bridge-requests", self.bridge_requests.run))
        if self.config.metrics.listen:
            try:
                await self._start_metrics_server()
            except OSError as exc:
                raise StartupError(
                    f"metrics.listen {self.config.metrics.listen}: cannot listen: "
                    f"{exc.strerror or exc}. Another process may hold the port; choose "
                    "another port or stop it"
                ) from exc
        if self.config.ui.listen:
            await self._start_ui()
        for camera in self.config.cameras:
            self.metrics.camera_known(camera.id, camera.protocol.value)
        if self.http_server is not None:
            serve = functools.partial(http.serve, self.http_server)
            self._adapter_tasks.append(self._supervised("adapter-http", serve))
        for protocol, load_adapter in PULL_ADAPTERS.items():
            cameras = self.config.cameras_of(protocol)
            if not cameras:
                continue
            runner = _adapter_runner(load_adapter(), context, cameras, self.reconnect_policy)
            self._adapter_tasks.append(self._supervised(f"adapter-{protocol.value}", runner))
        log.info(
            "gateway started: %d cameras, outbox %s, metrics %s",
            len(self.config.cameras),
            self.config.outbox.path,
            f"on :{self.metrics_port}" if self.metrics_port else "off",
        )

    async def _retire_topics_no_longer_published(self) -> None:
        """What the gateway publishes no more leaves nothing behind on the broker:
        the retained topics of a camera gone from the config (images, `last`,
        availability...), of an earlier base topic, of Home Assistant discovery
        switched off, of a known-plates name gone are emptied once what waits
        before them is delivered, and no longer re-sent on every connect."""
        loop = asyncio.get_running_loop()
        stale = retirement_judge(self.config, self.known_plates.names)
        retired = await loop.run_in_executor(self._executor, self.outbox.retire_topics, stale)
        for reason, count in retired.items():
            log.info(
                "clearing %d retained topics on the broker, after what waits in the outbox: %s",
                count,
                reason,
            )

    async def _load_runtime_state(self) -> set[str]:
        """Open the runtime store: its known plates go into the table reads are
        matched with; the cameras it has switched off (returned) stay off."""
        loop = asyncio.get_running_loop()
        store, executor = self.runtime_store, self._runtime_executor
        try:
            await loop.run_in_executor(executor, store.open)
            entries, disabled, notes = await loop.run_in_executor(
                executor, RuntimeControl.load, self.config, store, time.time()
            )
        except (sqlite3.Error, OSError) as exc:
            raise StartupError(
                f"runtime state {store.path} cannot be used: {exc}. It holds the known plates "
                "added and the cameras disabled over MQTT; if it is damaged, move it aside "
                "(they are lost, the outbox is not)"
            ) from exc
        for note in notes:
            log.warning("%s", note)
        self.known_plates.replace_runtime(entries)
        for camera in sorted(disabled):
            self.switches.set_enabled(camera, False)
            log.info("camera %s: disabled at runtime earlier; stays off until enabled", camera)
        return disabled

    def _wire_runtime_control(self, disabled: set[str]) -> BridgeEvents:
        """The bridge event feed, bridge info's extra sections, and (with
        `bridge.requests`) the request API, around one `RuntimeControl`."""
        assert self.publisher is not None
        state, topics = self.publisher.state, self.publisher.topics
        runtime = RuntimeControl(
            self.config,
            self.runtime_store,
            self._runtime_executor,
            self.known_plates,
            self.switches,
        )
        self.runtime = runtime
        link = self.publisher.link
        events = BridgeEvents(
            topics, state, quiet=self.stopping.is_set, connected=lambda: link.is_open
        )
        state.on_connected(events.flush)
        self.bridge_events = events
        for camera in disabled:
            state.set_camera_disabled(camera, True)
        self.switches.listeners.append(lambda camera, on: state.set_camera_disabled(camera, not on))
        self.switches.listeners.append(events.camera_switched)
        state.availability_listeners.append(events.camera_availability)
        runtime.known_plates_listeners.append(events.known_plates_changed)
        self.publisher.window.dead_letter_listeners.append(events.dead_letter)
        runtime.known_plates_listeners.append(lambda _change: state.refresh_info())
        effective = bounded_info_config(redacted_document(self.config))
        state.info_sections["config"] = lambda: effective
        state.info_sections["known_plates"] = lambda: {
            "names": len(self.known_plates.names),
            "entries": self.known_plates.entry_count,
            "runtime_entries": len(self.known_plates.runtime),
        }
        state.info_sections["bridge_requests"] = lambda: self.config.bridge.requests
        runtime.start()
        if self.config.bridge.requests:
            self.bridge_requests = BridgeRequests(
                topics,
                state,
                self.metrics,
                runtime,
                health=self.health,
                outbox_stats=self.outbox_stats,
                republish_discovery=self._republish_discovery
                if self.config.homeassistant.enabled
                else None,
            )
            self.bridge_requests.attach()
        return events

    def _republish_discovery(self) -> dict[str, Any]:
        if self.discovery is None:
            return {"republished": False}
        self.discovery.publish_all()
        return {"republished": True, "cameras": len(self.config.cameras)}

    async def outbox_stats(self) -> dict[str, Any]:
        """What waits in the outbox, and for how long: the `outbox/stats` request."""
        loop = asyncio.get_running_loop()
        oldest = await loop.run_in_executor(self._executor, self.outbox.oldest_pending_accepted_at)
        return {
            "events": self.outbox.pending_events,
            "bytes": self.outbox.pending_bytes,
            "max_bytes": self.config.outbox.max_bytes,
            "oldest_age_seconds": None if oldest is None else round(time.time() - oldest, 3),
            "dead_letters": self.outbox.dead_letter_events,
        }

    async def _listen_for_http_cameras(self, context: AdapterContext) -> None:
        """Bind the HTTP cameras' port now: a busy port is a start-up failure,
        not a gateway running without its intake."""
        cameras = [c for c in self.config.cameras if isinstance(c, HttpCameraConfig)]
        if not cameras:
            return
        server = http.HttpPushServer(context, cameras)
        try:
            await server.start()
        except OSError as exc:  # a busy or forbidden port, an unusable certificate
            hint = ""
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                hint = (
                    ". Another process (or another gateway) may hold the port; "
                    "stop it or set http.listen to a free port"
                )
            raise StartupError(
                f"http.listen {self.config.http.listen}: cannot listen: {exc.strerror or exc}{hint}"
            ) from exc
        self.http_server = server

    def _supervised(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        return asyncio.create_task(self._supervise(name, run), name=name)

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` until shutdown; after a crash, log, count, wait, run it again."""
        delay = TASK_RESTART_MIN_SECONDS
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                await run()
                if self.stopping.is_set():
                    return
                what = "ended without being asked to"
                log.error("%s %s; starting it again in %.1fs", name, what, delay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                what = f"crashed: {type(exc).__name__}: {exc}"
                log.exception("%s crashed; starting it again in %.1fs", name, delay)
            self.metrics.task_restarts.labels(task=name).inc()
            self.task_crashes[name] = (time.time(), what)
            if time.monotonic() - started > TASK_STABLE_SECONDS:
                delay = TASK_RESTART_MIN_SECONDS
            self._tasks_down.add(name)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.stopping.wait()
            finally:
                self._tasks_down.discard(name)
            delay = min(delay * 2, TASK_RESTART_MAX_SECONDS)

    def _on_stored(self) -> None:
        # The publisher was handed the stored messages by the writer already.
        self.metrics.outbox_depth.set(self.outbox.pending_events)
        self.metrics.outbox_bytes.set(self.outbox.pending_bytes)

    async def submit(self, event: AnyEvent) -> Admission:
        if self.pipeline is None:
            return Admission.SHUTTING_DOWN
        return await self.pipeline.submit(event)

    async def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        log.info("stopping: intake closed, draining in-flight publishes")
        await self._stop_ui()
        if self.pipeline is not None:
            self.pipeline.close()
        await _cancel_and_wait(self._adapter_tasks, ADAPTER_STOP_SECONDS)
        if self._writer is not None:
            await self._writer.close()
        if self.discovery is not None:
            self.discovery.close()
        if self.history is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.history.close)
        if self.runtime is not None:
            self.runtime.close()
        if self.publisher is not None:
            await self.publisher.stop(SHUTDOWN_DRAIN_SECONDS)
        await _cancel_and_wait(self._tasks, TASK_STOP_SECONDS)
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        loop = asyncio.get_running_loop()
        left = self.outbox.pending_events
        await loop.run_in_executor(self._executor, self.outbox.close)
        self._executor.shutdown(wait=True)
        await loop.run_in_executor(self._runtime_executor, self.runtime_store.close)
        self._runtime_executor.shutdown(wait=True)
        if self.embedded_broker is not None:
            await loop.run_in_executor(None, self.embedded_broker.close)
        log.info("stopped; %d events kept in the outbox for the next start", left)

    async def _start_history(self, pipeline: Pipeline) -> None:
        store = HistoryStore.configured(self.config.history, self.config.outbox.path)
        dropped = self.metrics.history_dropped
        self.history = HistoryWriter(store, on_dropped=dropped.inc)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.history.start)
        except (OSError, sqlite3.DatabaseError) as exc:
            self.history = None
            raise StartupError(
                f"history {store.path} cannot be used: {exc}. Check the folder, or move a"
                " damaged file aside (history.path)"
            ) from exc
        pipeline.stored_listeners.append(self.history.on_stored)

    # -- the web page (ui.listen) ---------------------------------------------------

    async def _start_ui(self) -> None:
        """The web page, imported only when asked for (its templates and the
        live view's memory cost nothing otherwise)."""
        from gateway.ui import WebUi

        ui = WebUi(self)
        try:
            await ui.start()
        except OSError as exc:
            await ui.stop()
            raise StartupError(
                f"ui.listen {self.config.ui.listen}: cannot listen: {exc.strerror or exc}. "
                "Another process may hold the port; choose another port or stop it"
            ) from exc
        self.ui = ui

    async def _stop_ui(self) -> None:
        if self.ui is not None:
            await self.ui.stop()
            self.ui = None

    # -- /metrics and /healthz -------------------------------------------------

    async def _start_metrics_server(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/healthz", self._handle_health)
        self._metrics_runner = web.AppRunner(app, access_log=None)
        await self._metrics_runner.setup()
        site = web.TCPSite(self._metrics_runner, self.config.metrics.host, self.config.metrics.port)
        await site.start()
        addresses = self._metrics_runner.addresses
        self.metrics_port = addresses[0][1] if addresses else self.config.metrics.port

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
        now = time.time()
        warnings: list[str] = []
        for name, (when, what) in sorted(self.task_crashes.items()):
            stamp = time.strftime("%H:%M:%S", time.gmtime(when))
            if name in self._tasks_down:
                problems.append(f"{name}: {what} at {stamp}Z; restarting")
            elif now - when < RESTART_REPORT_SECONDS:
                warnings.append(f"{name}: restarted after it {what} at {stamp}Z")
        if self.outbox.dead_letter_events:
            warnings.append(
                f"outbox: {self.outbox.dead_letter_events} events set aside as dead letters "
                "(not published); see `lpr-gateway outbox dead-letters list`"
            )
        status = "unhealthy" if problems else "degraded" if warnings else "healthy"
        return {
            "healthy": not problems,
            "status": status,
            "problems": problems,
            "warnings": warnings,
            "dead_letters": self.outbox.dead_letter_events,
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


async def _cancel_and_wait(tasks: list[asyncio.Task[None]], seconds: float) -> None:
    """Cancel `tasks` and wait for them, at most `seconds`: a task that ignores
    its cancel is named in the log and left, never waited for forever (stop
    must end, or the service manager's SIGKILL ends it less cleanly)."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _ended, stuck = await asyncio.wait(tasks, timeout=seconds)
    for task in stuck:
        log.error("stopping: task %s did not end %.0f s after its cancel", task.get_name(), seconds)


def bounded_info_config(document: dict[str, Any]) -> dict[str, Any]:
    """The effective config for bridge info, its cameras summarised past a size.

    Bridge info is one retained message, re-sent on every connect and after
    every burst of camera changes: with a thousand cameras their settings
    would make it ~0.5 MB, over some brokers' message limit (NATS: 1 MB by
    default, and it drops the connection over one).
    """
    if len(json.dumps(document)) <= INFO_CONFIG_MAX_BYTES:
        return document
    cameras = document.get("cameras", [])
    return {
        **document,
        "cameras": {
            "omitted": f"{len(cameras)} cameras' settings are over {INFO_CONFIG_MAX_BYTES} "
            "bytes: see the config file",
            "count": len(cameras),
        },
    }


def _adapter_runner(
    run: AdapterRun,
    context: AdapterContext,
    cameras: Sequence[Any],
    policy: ReconnectPolicy,
) -> Callable[[], Awaitable[None]]:
    """A fresh run of one adapter for every (re)start."""
    return lambda: run(context, cameras, policy)
