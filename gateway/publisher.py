"""MQTT publisher: paho-mqtt 2.x driven by the asyncio loop through its socket hooks.

It drains the outbox in `seq` order with a window of QoS 1 messages in
flight, deletes a row only on its PUBACK, and after any disconnect starts over
from the oldest unacknowledged row. A new paho client per connection: no
hidden session state in paho competes with the outbox for redelivery.
Bridge state (LWT `offline`, `online` on connect), bridge info and camera
availability are retained state messages kept here and re-sent on every
connect.

Own copy of retained state: the last payload the broker acknowledged on
each retained topic (images, `last`, availability, bridge info, discovery)
is kept, one per topic, and re-sent on every connect before the outbox is
drained, so a broker that lost its retained messages (no persistence,
restarted) has them again and newer outbox rows still overwrite them in
order. The copy is durable (the outbox keeps it) and survives a gateway
restart.

No message stalls delivery: one the client library refuses, or a topic that
is not valid, is moved to the outbox's dead-letter table with its whole event
at once. One after which the broker keeps dropping the connection is found
by publishing one message at a time after a drop ("isolation"); when the
same message is alone in flight at `DEAD_LETTER_AFTER_DROPS` drops running,
its event is dead-lettered. Everything behind it keeps flowing.

Subscriptions (`subscribe`) are made again on every connect; their handlers
run on the event loop (paho reads the socket there).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from gateway import __version__
from gateway.config import AnyCameraConfig, Config
from gateway.errors import BrokerError
from gateway.metrics import Metrics
from gateway.outbox import Outbox, StoredMessage
from gateway.topics import Topics, topic_problem

log = logging.getLogger(__name__)

RECONNECT_MIN_SECONDS = 0.5
# A broker is usually local and cheap to knock on: a short cap bounds how long
# a returning broker waits for us (it was 30 s: a 30 s outage then took up to
# 30 s more to drain).
RECONNECT_MAX_SECONDS = 5.0
CONNACK_TIMEOUT_SECONDS = 10.0
ACK_FLUSH_SECONDS = 0.02
# Drops of the connection, running, with the same message alone in flight,
# before its event is set aside as a dead letter.
DEAD_LETTER_AFTER_DROPS = 3
# MQTT 5 reason code of a keep-alive timeout: a silent broker, not a refusal.
_KEEPALIVE_TIMEOUT_REASON = 0x8D


class _SessionGone(enum.Enum):
    """`_publish_row`'s answer when the connection is gone (not the message's fault)."""

    SESSION_GONE = "session_gone"


class _Session:
    """One broker connection: a paho client wired into the running loop."""

    def __init__(self, publisher: MqttPublisher, client: mqtt.Client) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.client = client
        self.publisher = publisher
        self.connected: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.inflight: dict[int, StoredMessage] = {}
        self.sock: socket.socket | None = None
        # The broker went silent (keep-alive): a drop that says nothing about
        # the message in flight.
        self.keepalive_expired = False
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        for topic, handler in self.publisher._subscriptions:
            if mqtt.topic_matches_sub(topic, message.topic):
                try:
                    handler(message.topic, bytes(message.payload), bool(message.retain))
                except Exception:
                    log.exception("handler for %s failed", message.topic)

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        # connect() runs in an executor thread and fires socket hooks there.
        if threading.get_ident() == self.loop_thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self.sock = sock
        self._in_loop(self.loop.add_reader, sock, client.loop_read)

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._forget_socket, sock)

    def _forget_socket(self, sock: Any) -> None:
        self._unwatch(sock)
        self.sock = None
        self._resolve_closed()

    def _unwatch(self, sock: Any) -> None:
        if sock is not None and sock.fileno() != -1:
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)

    def _on_register_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self.loop.add_writer, sock, client.loop_write)

    def _on_unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._unwatch_writer, sock)

    def _unwatch_writer(self, sock: Any) -> None:
        if sock.fileno() != -1:
            self.loop.remove_writer(sock)

    def _on_connect(
        self, _c: mqtt.Client, _u: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if self.connected.done():
            return
        if reason.is_failure:
            self.connected.set_exception(BrokerError(f"broker refused the connection: {reason}"))
        else:
            self.connected.set_result(None)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if not self.connected.done():
            self.connected.set_exception(BrokerError(f"disconnected before CONNACK: {reason}"))
        if getattr(reason, "value", None) == _KEEPALIVE_TIMEOUT_REASON:
            self.keepalive_expired = True
        self._resolve_closed()

    def _resolve_closed(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.publisher._ack_signal.set()

    def _on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _props: Any
    ) -> None:
        message = self.inflight.pop(mid, None)
        if message is None:
            return  # a state message (bridge/availability): not from the outbox
        if reason.is_failure:
            # MQTT 5 broker refused this message for good (e.g. too large): resending
            # would fail the same way and block the queue behind it. Its event is
            # set aside, kept for an operator.
            self.publisher.metrics.messages_refused.inc()
            self.publisher._condemn(message, f"broker refused it: {reason}", "broker_refused")
            return
        self.publisher._acknowledged(message)

    async def misc_timer(self) -> None:
        """paho's keep-alive: PINGREQ, and noticing a broker that stopped answering."""
        while not self.closed.done():
            await asyncio.sleep(1.0)
            if self.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.keepalive_expired = True
                self._resolve_closed()

    def close(self) -> None:
        self._unwatch(self.sock)
        self._resolve_closed()


class MqttPublisher:
    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        outbox: Outbox,
        executor: Executor,
        broker_url: str | None = None,
    ) -> None:
        self.config = config
        self.mqtt = config.mqtt
        self.metrics = metrics
        self.outbox = outbox
        self.executor = executor
        self.broker_url = broker_url or self.mqtt.url
        self.topics = Topics(self.mqtt.base_topic)
        self.state_topic = self.topics.state
        self.info_topic = self.topics.info
        self._cameras: dict[str, AnyCameraConfig] = {c.id: c for c in config.cameras}
        self._availability: dict[str, bool] = dict.fromkeys(self._cameras, False)
        self._session: _Session | None = None
        self._wake = asyncio.Event()
        self._ack_signal = asyncio.Event()
        self._pending_acks: list[StoredMessage] = []
        self._stopping = False
        self._flush_task: asyncio.Task[None] | None = None
        self.connected_since: float | None = None
        self.disconnected_since: float | None = time.time()
        self.last_error: str | None = None
        self._on_connected_hooks: list[Callable[[], None]] = []
        # topic → last retained payload we published there (bounded: one per topic)
        self._retained: dict[str, bytes] = {}
        # topics already re-sent during the current connect (None outside of it)
        self._sent_on_connect: set[str] | None = None
        self._subscriptions: list[tuple[str, Callable[[str, bytes, bool], None]]] = []
        # Dead letters: messages whose event must be set aside (reason, metric kind).
        self._condemned: list[tuple[StoredMessage, str, str]] = []
        # seq → connection drops running with that message alone in flight
        self._strikes: dict[int, int] = {}
        # After a drop with messages in flight, this many are published one at a
        # time, so that a message the broker refuses is alone when it drops us.
        self._isolate_remaining = 0

    # -- what the rest of the gateway calls ------------------------------------

    def wake(self) -> None:
        """New messages are in the outbox."""
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self.connected_since is not None

    def set_camera_online(self, camera: str, online: bool) -> None:
        self.metrics.camera_connected.labels(camera=camera).set(1 if online else 0)
        if self._availability.get(camera) == online:
            return
        self._availability[camera] = online
        self._publish_state(self.availability_topic(camera), b"online" if online else b"offline")
        self._publish_state(self.info_topic, self._info_payload())

    def availability_topic(self, camera: str) -> str:
        return self.topics.availability(camera)

    def on_connected(self, hook: Callable[[], None]) -> None:
        """Run `hook` after every (re)connect, e.g. to re-send discovery."""
        self._on_connected_hooks.append(hook)

    def publish_state(self, topic: str, payload: bytes, retain: bool = True) -> None:
        """Fire-and-forget state; a retained one is re-sent from our copy on reconnect."""
        self._publish_state(topic, payload, retain)

    def subscribe(self, topic: str, handler: Callable[[str, bytes, bool], None]) -> None:
        """Call `handler(topic, payload, retained)` on the loop for each message on
        `topic` (wildcards allowed), on this and every later connection."""
        self._subscriptions.append((topic, handler))
        session = self._session
        if session is not None and self.connected and not session.closed.done():
            session.client.subscribe(topic, qos=1)

    @property
    def retained_copy(self) -> dict[str, bytes]:
        """Our copy of the retained state (topic → payload), for inspection."""
        return dict(self._retained)

    def restore_retained(self, copy: dict[str, bytes]) -> None:
        """Start from the durable copy of an earlier run (newer state wins)."""
        self._retained = {**copy, **self._retained}

    def _remember_retained(self, topic: str, payload: bytes, persist: bool = False) -> None:
        if persist and self._retained.get(topic) != payload:
            # State messages are small and rare; outbox rows are kept by the
            # outbox itself when acknowledged. Fire and forget on the outbox
            # thread, which runs its work in order.
            future = asyncio.get_running_loop().run_in_executor(
                self.executor, self.outbox.save_retained_state, topic, payload
            )
            future.add_done_callback(_log_failure)
        # Re-inserted at the end: the copy is replayed in the order it was last published.
        self._retained.pop(topic, None)
        if payload:
            self._retained[topic] = payload  # an empty payload clears the topic: forget it

    # -- the connection loop -----------------------------------------------------

    async def run(self) -> None:
        backoff = RECONNECT_MIN_SECONDS
        self._flush_task = asyncio.create_task(self._flush_acks_forever(), name="outbox-acks")
        try:
            while not self._stopping:
                self.metrics.mqtt_reconnects.inc()
                try:
                    await self._run_session()
                    backoff = RECONNECT_MIN_SECONDS
                except (OSError, BrokerError, ssl.SSLError, ValueError) as exc:
                    self.last_error = str(exc) or type(exc).__name__
                    log.warning(
                        "MQTT broker %s: %s; retrying in %.1fs",
                        self._broker_label(),
                        self.last_error,
                        backoff,
                    )
                await self._bury_condemned()
                if self._stopping:
                    break
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)
        finally:
            if self._flush_task:
                self._flush_task.cancel()

    def _broker_label(self) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(self.broker_url or "")
        return f"{parts.hostname}:{parts.port or (8883 if parts.scheme == 'mqtts' else 1883)}"

    def _make_client(self) -> mqtt.Client:
        version = mqtt.MQTTv5 if self.mqtt.protocol_version == 5 else mqtt.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.mqtt.client_id,
            protocol=version,
            clean_session=None if version == mqtt.MQTTv5 else True,
        )
        client.max_inflight_messages_set(self.mqtt.publish_window)
        client.max_queued_messages_set(0)
        if self.mqtt.username is not None:
            client.username_pw_set(self.mqtt.username, self.mqtt.password)
        client.will_set(self.state_topic, b"offline", qos=1, retain=True)
        if self.broker_url and self.broker_url.startswith("mqtts://"):
            tls = self.mqtt.tls
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls and tls.ca_file else None,
                certfile=str(tls.cert_file) if tls and tls.cert_file else None,
                keyfile=str(tls.key_file) if tls and tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if tls and tls.insecure else ssl.CERT_REQUIRED,
            )
            if tls and tls.insecure:
                client.tls_insecure_set(True)
        return client

    async def _run_session(self) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(self.broker_url or "mqtt://127.0.0.1")
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        client = self._make_client()
        session = _Session(self, client)
        loop = asyncio.get_running_loop()
        # connect() resolves, opens the TCP (and TLS) connection and queues
        # CONNECT: blocking work, so off the loop.
        await loop.run_in_executor(None, client.connect, host, port, self.mqtt.keepalive_seconds)
        self._session = session
        misc = asyncio.create_task(session.misc_timer(), name="mqtt-misc")
        try:
            await asyncio.wait_for(asyncio.shield(session.connected), CONNACK_TIMEOUT_SECONDS)
            self._on_connect_success()
            await self._dispatch_until_closed(session)
        except TimeoutError as exc:
            raise BrokerError("no CONNACK from the broker") from exc
        finally:
            misc.cancel()
            session.close()
            with contextlib.suppress(Exception):
                client.disconnect()
            self._session = None
            self._on_disconnected(session)

    def _on_connect_success(self) -> None:
        log.info(
            "connected to MQTT broker %s (MQTT %s)",
            self._broker_label(),
            "5" if self.mqtt.protocol_version == 5 else "3.1.1",
        )
        self.metrics.mqtt_connected.set(1)
        self.connected_since, self.disconnected_since, self.last_error = time.time(), None, None
        self._sent_on_connect = set()
        try:
            self._publish_state(self.state_topic, b"online")
            self._publish_state(self.info_topic, self._info_payload())
            for camera, online in self._availability.items():
                self._publish_state(
                    self.availability_topic(camera), b"online" if online else b"offline"
                )
            for hook in self._on_connected_hooks:
                try:
                    hook()
                except Exception:
                    log.exception("on-connect hook failed")
            self._republish_retained(self._sent_on_connect)
        finally:
            self._sent_on_connect = None
        session = self._session
        if session is not None:
            for topic, _handler in self._subscriptions:
                session.client.subscribe(topic, qos=1)
        self._wake.set()

    def _republish_retained(self, already_sent: set[str]) -> None:
        """Re-send our copy of the retained state, before any outbox row of this session."""
        session = self._session
        if session is None:
            return
        count = 0
        for topic, payload in list(self._retained.items()):
            if topic in already_sent:
                continue
            session.client.publish(topic, payload, qos=1, retain=True)
            count += 1
        if count:
            self.metrics.retained_republished.inc(count)
            log.info("re-sent %d retained messages from the gateway's own copy", count)

    def _on_disconnected(self, session: _Session) -> None:
        if self.connected_since is not None and not self._stopping:
            log.warning("lost the MQTT broker %s", self._broker_label())
        self.metrics.mqtt_connected.set(0)
        was_connected = self.connected_since is not None
        self.connected_since = None
        self.disconnected_since = self.disconnected_since or time.time()
        if session.inflight and was_connected and not self._stopping:
            self._note_drop(session)
        # Whatever was in flight without a PUBACK is still in the outbox: start
        # the next session from the oldest row that is left.
        session.inflight.clear()

    def _note_drop(self, session: _Session) -> None:
        """The connection went with messages in flight: was one of them the cause?"""
        if session.keepalive_expired:
            return  # a silent broker, not a refused message
        if self._isolate_remaining > 0 and len(session.inflight) == 1:
            (message,) = session.inflight.values()
            strikes = self._strikes.get(message.seq, 0) + 1
            self._strikes[message.seq] = strikes
            if strikes >= DEAD_LETTER_AFTER_DROPS:
                self._condemn(
                    message,
                    f"the broker dropped the connection {strikes} times running "
                    "with this message alone in flight",
                    "broker_dropped",
                )
        self._isolate_remaining = 2 * self.mqtt.publish_window

    def _condemn(self, message: StoredMessage, reason: str, kind: str) -> None:
        self._condemned.append((message, reason, kind))
        self._ack_signal.set()

    async def _bury_condemned(self) -> None:
        """Move the events of condemned messages to the dead-letter table."""
        while self._condemned:
            message, reason, kind = self._condemned.pop(0)
            self._strikes.pop(message.seq, None)
            moved = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.outbox.dead_letter_event, message.event_id, message.seq, reason
            )
            self.metrics.outbox_dead_letters.set(self.outbox.dead_letter_events)
            self.metrics.outbox_depth.set(self.outbox.pending_events)
            self.metrics.outbox_bytes.set(self.outbox.pending_bytes)
            if moved:
                self.metrics.dead_lettered.labels(reason=kind).inc()
                log.error(
                    "event %s of camera %s set aside as a dead letter (%d messages, not "
                    "published): %s on %r. Everything else keeps flowing; see "
                    "`lpr-gateway outbox dead-letters list`",
                    message.event_id,
                    message.camera,
                    moved,
                    reason,
                    message.topic[:200],
                )

    async def _dispatch_until_closed(self, session: _Session) -> None:
        """Publish outbox rows in `seq` order, keeping the window full.

        Rows are read ahead of the window (up to twice its size) so that a
        PUBACK is answered with the next publish at once, not after a trip to
        the outbox thread.
        """
        loop = asyncio.get_running_loop()
        window = self.mqtt.publish_window
        ready: deque[StoredMessage] = deque()
        # A new session starts from the oldest row left: first delete what the
        # broker acknowledged in the last one, so it is not sent again.
        await self._flush_acks()
        read_cursor = 0
        while not session.closed.done():
            # Cleared before any await, so a wake-up that lands meanwhile is kept.
            self._wake.clear()
            self._ack_signal.clear()
            if self._condemned:
                buried = {m.event_id for m, _, _ in self._condemned}
                await self._bury_condemned()
                ready = deque(m for m in ready if m.event_id not in buried)
                continue
            window = 1 if self._isolate_remaining > 0 else self.mqtt.publish_window
            while ready and len(session.inflight) < window:
                message = ready.popleft()
                refusal = self._publish_row(session, message)
                if refusal is _SessionGone.SESSION_GONE:
                    session.close()
                    return
                if isinstance(refusal, tuple):
                    self._condemn(message, *refusal)
                    break
            if self._condemned:
                continue
            window = 1 if self._isolate_remaining > 0 else self.mqtt.publish_window
            if len(ready) < window:
                batch = await loop.run_in_executor(
                    self.executor, self.outbox.read_after, read_cursor, 2 * window - len(ready)
                )
                if session.closed.done():
                    return
                if batch:
                    read_cursor = batch[-1].seq
                    ready.extend(batch)
                    continue
            if ready:
                await self._wait_any(self._ack_signal, session.closed)
            else:
                await self._wait_any(self._wake, session.closed)

    def _publish_row(
        self, session: _Session, message: StoredMessage
    ) -> tuple[str, str] | _SessionGone | None:
        """Hand one outbox row to paho: None when it is in flight, `_SESSION_GONE`
        when the connection is, else (reason, kind) to set its event aside."""
        problem = topic_problem(message.topic)
        if problem is not None:
            return f"invalid topic: {problem}", "invalid_topic"
        try:
            info = session.client.publish(
                message.topic, message.payload, qos=1, retain=message.retain
            )
        except ValueError as exc:  # paho's refusal: topic or payload too long, ...
            return f"the MQTT client refused it: {exc}", "client_refused"
        if info.rc in (MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_CONN_LOST):
            return _SessionGone.SESSION_GONE
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return f"the MQTT client refused it: {mqtt.error_string(info.rc)}", "client_refused"
        session.inflight[info.mid] = message
        return None

    @staticmethod
    async def _wait_any(*waitables: asyncio.Event | asyncio.Future[None]) -> None:
        tasks: list[asyncio.Future[Any]] = []
        for w in waitables:
            if isinstance(w, asyncio.Event):
                if w.is_set():
                    return
                tasks.append(asyncio.ensure_future(w.wait()))
            else:
                if w.done():
                    return
                tasks.append(w)
        owned = [t for t in tasks if isinstance(t, asyncio.Task)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in owned:
                t.cancel()

    def _acknowledged(self, message: StoredMessage) -> None:
        self._pending_acks.append(message)
        if message.retain:
            self._remember_retained(message.topic, message.payload)
        if self._strikes:
            self._strikes.pop(message.seq, None)
        if self._isolate_remaining > 0:
            self._isolate_remaining -= 1
        self.metrics.messages_published.inc()
        if message.last_of_event:
            self.metrics.events_published.labels(camera=message.camera).inc()
            self.metrics.publish_latency.observe(max(0.0, time.time() - message.accepted_at))
        self._ack_signal.set()

    async def _flush_acks(self) -> None:
        if not self._pending_acks:
            return
        acks, self._pending_acks = self._pending_acks, []
        await asyncio.get_running_loop().run_in_executor(
            self.executor, self.outbox.acknowledge, acks
        )
        self.metrics.outbox_depth.set(self.outbox.pending_events)
        self.metrics.outbox_bytes.set(self.outbox.pending_bytes)

    async def _flush_acks_forever(self) -> None:
        while True:
            await asyncio.sleep(ACK_FLUSH_SECONDS)
            try:
                await self._flush_acks()
            except Exception:
                log.exception("could not delete acknowledged rows from the outbox")

    # -- state messages --------------------------------------------------------

    def _info_payload(self) -> bytes:
        info = {
            "version": __version__,
            "cameras": [
                {
                    "id": c.id,
                    "name": c.name,
                    "protocol": c.protocol.value,
                    "state": "online" if self._availability.get(c.id) else "offline",
                }
                for c in self._cameras.values()
            ],
        }
        return json.dumps(info, ensure_ascii=False).encode()

    def _publish_state(self, topic: str, payload: bytes, retain: bool = True) -> None:
        if retain:
            self._remember_retained(topic, payload, persist=True)
        session = self._session
        if session is None or not self.connected or session.closed.done():
            return  # re-sent from our copy (or by its owner) on the next connect
        session.client.publish(topic, payload, qos=1, retain=retain)
        if self._sent_on_connect is not None:
            self._sent_on_connect.add(topic)

    # -- shutdown ----------------------------------------------------------------

    async def stop(self, drain_seconds: float = 3.0) -> None:
        """Let in-flight publishes finish (bounded), say offline, disconnect."""
        self._stopping = True
        session = self._session
        if session is not None and self.connected:
            deadline = time.monotonic() + drain_seconds
            while session.inflight and time.monotonic() < deadline and not session.closed.done():
                self._ack_signal.clear()
                try:
                    await asyncio.wait_for(self._ack_signal.wait(), deadline - time.monotonic())
                except TimeoutError:
                    break
            for camera, online in self._availability.items():
                if online:  # adapters normally said so already as their sessions ended
                    self._availability[camera] = False
                    self._publish_state(self.availability_topic(camera), b"offline")
            info = session.client.publish(self.state_topic, b"offline", qos=1, retain=True)
            # Wait briefly for the offline state to be acknowledged; a clean
            # DISCONNECT suppresses the will, so this message is what says it.
            deadline = time.monotonic() + 1.0
            while info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS and not session.closed.done():
                if info.is_published() or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)
            # DISCONNECT goes out through our writer callback; wait for paho to
            # close the socket after it, or the broker would publish the will.
            session.client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(session.closed), 1.0)
            session.close()
        await self._flush_acks()
        self._wake.set()

    def pending_messages(self) -> Sequence[StoredMessage]:
        return list(self._session.inflight.values()) if self._session else []


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not keep retained state in the outbox: %s", future.exception())
