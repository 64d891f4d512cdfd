"""MQTT publisher: the gateway's one face to the broker, composed of three parts.

- `gateway.mqtt.link.MqttLink`: the connection (paho 2 on the asyncio loop).
- `gateway.mqtt.window.OutboxWindow`: drains the outbox in `seq` order with a
  window of QoS 1 messages in flight, deletes a row only on its PUBACK, and
  after any disconnect starts over from the oldest unacknowledged row. No
  message stalls delivery: one that cannot be published is moved, with its
  whole event, to the outbox's dead-letter table.
- `gateway.mqtt.state.BridgeState`: bridge state (LWT `offline`, `online` on
  connect), bridge info, camera availability and the gateway's own durable
  copy of the retained state, re-sent on every connect before the outbox.

This module runs the reconnect loop and the ordered shutdown around them.
Subscriptions (`subscribe`) are made again on every connect; their handlers
run on the event loop (paho reads the socket there).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import Config
from gateway.errors import BrokerError
from gateway.metrics import Metrics
from gateway.mqtt.link import MqttLink
from gateway.mqtt.state import OFFLINE, BridgeState
from gateway.mqtt.window import DEAD_LETTER_AFTER_DROPS, OutboxWindow
from gateway.outbox import Outbox, StoredMessage
from gateway.topics import Topics

__all__ = ["DEAD_LETTER_AFTER_DROPS", "BrokerBackoff", "MqttPublisher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerBackoff:
    """When the publisher knocks on the broker again after losing it: after
    `initial_seconds`, doubled after each failure up to `max_seconds`, each wait
    ±20 % so that gateways that lost one broker together do not return in step.

    A broker is usually local and cheap to knock on: a short cap bounds how long
    a returning broker waits for us (it was 30 s: a 30 s outage then took up to
    30 s more to drain).
    """

    initial_seconds: float = 0.5
    max_seconds: float = 5.0


class MqttPublisher:
    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        outbox: Outbox,
        executor: Executor,
        broker_url: str | None = None,
        backoff: BrokerBackoff | None = None,
    ) -> None:
        self.config = config
        self.backoff = backoff or BrokerBackoff()
        # `broker_url`: the embedded broker's, in place of the configured list.
        self.mqtt = (
            dataclasses.replace(config.mqtt, urls=(broker_url,)) if broker_url else config.mqtt
        )
        self.metrics = metrics
        self.outbox = outbox
        self.executor = executor
        self.topics = Topics(self.mqtt.base_topic)
        self.state_topic = self.topics.state
        self.info_topic = self.topics.info
        self.window = OutboxWindow(
            self.mqtt.publish_window,
            metrics,
            outbox,
            executor,
            self._retained_row_acked,
            ack_timeout=self.mqtt.ack_timeout_seconds,
        )
        self.link = MqttLink(self.mqtt, will=(self.topics.state, OFFLINE), on_ack=self._on_ack)
        self.state = BridgeState(self.topics, config.cameras, self.link, metrics, outbox, executor)
        self._stopping = False
        self.connected_since: float | None = None
        self.disconnected_since: float | None = time.time()
        self.last_error: str | None = None

    def _on_ack(self, mid: int, reason: ReasonCode) -> None:
        if not self.state.state_acknowledged(mid):
            self.window.on_ack(mid, reason)

    # -- what the rest of the gateway calls ------------------------------------

    def offer(self, messages: list[StoredMessage]) -> None:
        """Messages just committed to the outbox: sent from memory when their turn comes."""
        self.window.offer(messages)

    @property
    def connected(self) -> bool:
        return self.connected_since is not None

    def set_camera_online(self, camera: str, online: bool) -> None:
        self.state.set_camera_online(camera, online)

    def availability_topic(self, camera: str) -> str:
        return self.topics.availability(camera)

    def on_connected(self, hook: Callable[[], None]) -> None:
        """Run `hook` after every (re)connect, e.g. to re-send discovery."""
        self.state.on_connected(hook)

    def publish_state(self, topic: str, payload: bytes, retain: bool = True) -> None:
        """Fire-and-forget state; a retained one is re-sent from our copy on reconnect."""
        self.state.publish_state(topic, payload, retain)

    def subscribe(self, topic: str, handler: Callable[[str, bytes, bool], None]) -> None:
        """Call `handler(topic, payload, retained)` on the loop for each message on
        `topic` (wildcards allowed), on this and every later connection."""
        self.link.subscribe(topic, handler)

    @property
    def retained_copy(self) -> dict[str, bytes]:
        """Our copy of the retained state (topic → payload), for inspection."""
        return self.state.retained_copy

    def restore_retained(self, copy: dict[str, bytes]) -> None:
        """Start from the durable copy of an earlier run (newer state wins)."""
        self.state.restore_retained(copy)

    def _retained_row_acked(self, topic: str) -> None:
        # The outbox keeps the row as the topic's retained state.
        self.state.row_acknowledged(topic)

    # -- the connection loop -----------------------------------------------------

    async def run(self) -> None:
        policy = self.backoff
        backoff = policy.initial_seconds
        flush_task = asyncio.create_task(self.window.flush_acks_forever(), name="outbox-acks")
        try:
            while not self._stopping:
                self.metrics.mqtt_reconnects.inc()
                try:
                    await self._run_session()
                    backoff = policy.initial_seconds
                except BrokerError as exc:  # the link translated what paho and the OS raised
                    self.last_error = str(exc) or type(exc).__name__
                    brokers = len(self.mqtt.urls)
                    log.warning(
                        "MQTT %s: %s; retrying in %.1fs",
                        f"broker {self.link.label}" if brokers <= 1 else f"brokers (all {brokers})",
                        self.last_error,
                        backoff,
                    )
                await self.window.bury_condemned()
                if self._stopping:
                    break
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, policy.max_seconds)
        finally:
            flush_task.cancel()

    async def _run_session(self) -> None:
        """One connection: connect, say our state, drain the outbox until it closes."""
        await self.link.connect()
        try:
            self._on_connect_success()
            # Rows acknowledged on the last connection first become the kept
            # retained rows: re-sending an older one would undo them.
            await self.window.flush_acks()
            await self.state.republish_rows()
            await self.window.dispatch_until_closed(self.link)
        finally:
            self.link.release()
            self._on_disconnected()

    def _on_connect_success(self) -> None:
        log.info(
            "connected to MQTT broker %s (MQTT %s)",
            self.link.label,
            "5" if self.mqtt.protocol_version == 5 else "3.1.1",
        )
        self.metrics.mqtt_connected.set(1)
        self.connected_since, self.disconnected_since, self.last_error = time.time(), None, None
        self.state.link_up()
        self.window.wake()

    def _on_disconnected(self) -> None:
        if self.connected_since is not None and not self._stopping:
            log.warning("lost the MQTT broker %s", self.link.label)
        self.metrics.mqtt_connected.set(0)
        was_connected = self.connected_since is not None
        self.connected_since = None
        self.disconnected_since = self.disconnected_since or time.time()
        self.state.link_down()
        self.window.connection_lost(
            keepalive_expired=self.link.keepalive_expired,
            count_drop=was_connected and not self._stopping,
        )

    # -- shutdown ----------------------------------------------------------------

    async def stop(self, drain_seconds: float = 3.0) -> None:
        """Let in-flight publishes finish (bounded), say offline, disconnect."""
        self._stopping = True
        if self.connected:
            await self.window.drain(self.link.closed, drain_seconds)
            await self.state.say_offline()
            # DISCONNECT goes out through our writer callback; wait for paho to
            # close the socket after it, or the broker would publish the will.
            await self.link.disconnect()
        self.state.close()
        await self.window.flush_acks()
        self.window.wake()
