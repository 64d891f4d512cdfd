"""Bridge state: the retained state messages the gateway keeps, and its own copy of them.

Bridge state (last will `offline`, `online` on connect), bridge info and
camera availability are kept here and re-sent on every connect. So is the
last payload the broker acknowledged on each retained topic (images, `last`,
availability, bridge info, discovery): one per topic, re-sent on every
connect before the outbox is drained, so a broker that lost its retained
messages (no persistence, restarted) has them again and newer outbox rows
still overwrite them in order. The copy is durable (the outbox keeps it) and
survives a gateway restart. This is the `StatePublisher` discovery uses.

Only the small state messages are held in memory. Images and `last` are
read back from the outbox (which keeps those rows) when they are re-sent,
a few at a time: held in memory they cost ~320 KB per camera, 320 MB for
1,000 cameras.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from gateway import __version__
from gateway.config import AnyCameraConfig
from gateway.errors import BrokerError
from gateway.metrics import Metrics
from gateway.mqtt.link import LinkClosedError, MqttLink
from gateway.outbox import Outbox
from gateway.topics import Topics

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
# How long the `offline` bridge state may take to be acknowledged at shutdown.
OFFLINE_ACK_SECONDS = 1.0
# Camera state changes within this long make one bridge info update.
INFO_COALESCE_SECONDS = 0.2
# Kept rows (images, `last`) re-sent at a time, each batch acknowledged
# before the next is read: bounds the memory a reconnect takes.
REPUBLISH_BATCH = 16
# State messages in flight at once between connects. They share the link with
# the outbox's reads, and paho sends in the order it is handed messages: a
# burst of them (1,000 cameras logging in: availability and a bridge event
# each; discovery re-sent when Home Assistant restarts: ~10 per camera) ahead
# of the reads held every read up behind them. Paced, reads go in between.
STATE_WINDOW = 8


class BridgeState:
    """The gateway's retained state on the broker: bridge, cameras, discovery, own copy."""

    def __init__(
        self,
        topics: Topics,
        cameras: Sequence[AnyCameraConfig],
        link: MqttLink,
        metrics: Metrics,
        outbox: Outbox,
        executor: Executor,
    ) -> None:
        self.topics = topics
        self.link = link
        self.metrics = metrics
        self.outbox = outbox
        self.executor = executor
        self._cameras: dict[str, AnyCameraConfig] = {c.id: c for c in cameras}
        # camera → a live session (as the adapters report it)
        self._availability: dict[str, bool] = dict.fromkeys(self._cameras, False)
        # cameras switched off at runtime: `offline` whatever the session says
        self._disabled: set[str] = set()
        # Hear each change of a camera's published availability (camera, online):
        # bridge events; whatever else follows cameras.
        self.availability_listeners: list[Callable[[str, bool], None]] = []
        # Extra sections of bridge info (key → a function giving its JSON value),
        # e.g. the effective configuration and the known-plates count.
        self.info_sections: dict[str, Callable[[], Any]] = {}
        self._on_connected_hooks: list[Callable[[], None]] = []
        # topic → last retained state payload we published there (one per topic);
        # images and `last` are kept by the outbox, not here
        self._retained: dict[str, bytes] = {}
        # topics already re-sent during the current connect (None outside of it)
        self._sent_on_connect: set[str] | None = None
        # the bridge info update waiting for a burst of camera changes to end
        self._info_update: asyncio.TimerHandle | None = None
        # state messages to keep in the outbox, written together (see remember_retained)
        self._to_persist: dict[str, bytes] = {}
        # state messages waiting for one of the STATE_WINDOW places: [topic,
        # payload, retain]; a retained one not sent yet takes a newer payload
        # of its topic in its place (`_queued_retained`)
        self._state_queue: deque[list[Any]] = deque()
        self._queued_retained: dict[str, list[Any]] = {}
        self._state_in_flight: set[int] = set()

    # -- what the rest of the gateway calls --------------------------------------

    def set_camera_online(self, camera: str, online: bool) -> None:
        was = self._published_online(camera)
        self._availability[camera] = online
        self._availability_changed(camera, was)

    def set_camera_disabled(self, camera: str, disabled: bool) -> None:
        """A camera switched off (or on) at runtime: `offline` while it is off,
        `disabled` in bridge info."""
        was = self._published_online(camera)
        if disabled:
            self._disabled.add(camera)
        else:
            self._disabled.discard(camera)
        self._availability_changed(camera, was, info_changed=True)

    def _published_online(self, camera: str) -> bool:
        return bool(self._availability.get(camera)) and camera not in self._disabled

    def _availability_changed(self, camera: str, was: bool, info_changed: bool = False) -> None:
        online = self._published_online(camera)
        self.metrics.camera_connected.labels(camera=camera).set(1 if online else 0)
        if online != was:
            self.publish_state(self.topics.availability(camera), ONLINE if online else OFFLINE)
            for listener in self.availability_listeners:
                try:
                    listener(camera, online)
                except Exception:
                    log.exception("camera %s: availability listener failed", camera)
        elif not info_changed:
            return
        self.refresh_info()

    def refresh_info(self) -> None:
        """Bridge info changed: published once a burst of changes is over."""
        # Bridge info lists every camera: one update per burst of changes. One
        # per change made 1,000 cameras logging in build, store and publish
        # the whole list 1,000 times (a login storm of quadratic cost).
        if self._info_update is None:
            loop = asyncio.get_running_loop()
            self._info_update = loop.call_later(INFO_COALESCE_SECONDS, self._publish_info)

    def _publish_info(self) -> None:
        if self._info_update is not None:
            self._info_update.cancel()
            self._info_update = None
        self.publish_state(self.topics.info, self.info_payload())

    def on_connected(self, hook: Callable[[], None]) -> None:
        """Run `hook` after every (re)connect, e.g. to re-send discovery."""
        self._on_connected_hooks.append(hook)

    def subscribe(self, topic: str, handler: Callable[[str, bytes, bool], None]) -> None:
        self.link.subscribe(topic, handler)

    def publish_state(self, topic: str, payload: bytes, retain: bool = True) -> None:
        """Fire-and-forget state; a retained one is re-sent from our copy on reconnect.

        On connect it goes out at once (before any outbox row); otherwise it
        waits for a place among STATE_WINDOW in flight."""
        if retain:
            self.remember_retained(topic, payload, persist=True)
        if not self.link.is_open:
            return  # re-sent from our copy (or by its owner) on the next connect
        if self._sent_on_connect is not None:
            self._send_state(topic, payload, retain)
            self._sent_on_connect.add(topic)
            return
        queued = self._queued_retained.get(topic) if retain else None
        if queued is not None:
            queued[1] = payload  # not sent yet: only the newest matters
        else:
            entry = [topic, payload, retain]
            self._state_queue.append(entry)
            if retain:
                self._queued_retained[topic] = entry
        self._send_queued_states()

    def state_acknowledged(self, mid: int) -> bool:
        """A PUBACK on the link: True when it was for a state message (its place
        goes to the next waiting one)."""
        if mid not in self._state_in_flight:
            return False
        self._state_in_flight.discard(mid)
        self._send_queued_states()
        return True

    def _send_queued_states(self, limit: int = STATE_WINDOW) -> None:
        while self._state_queue and len(self._state_in_flight) < limit:
            topic, payload, retain = self._state_queue.popleft()
            if retain:
                self._queued_retained.pop(topic, None)
            try:
                mid = self.link.publish(topic, payload, retain=retain)
            except LinkClosedError:
                return  # the link is gone: link_down clears what is left
            except BrokerError as exc:  # refused by the client library: the rest go on
                log.warning("state %s not published: %s", topic[:200], exc)
                continue
            self._state_in_flight.add(mid)

    def _send_state(self, topic: str, payload: bytes, retain: bool) -> None:
        with contextlib.suppress(LinkClosedError):
            self.link.publish(topic, payload, retain=retain)

    def link_down(self) -> None:
        """The connection is gone, and what paho held with it: retained states
        are re-sent from our copy on the next connect, like before."""
        self._state_queue.clear()
        self._queued_retained.clear()
        self._state_in_flight.clear()

    # -- the own copy of the retained state ------------------------------------------

    @property
    def retained_copy(self) -> dict[str, bytes]:
        """Our copy of the retained state messages (topic → payload), for inspection;
        the outbox's `retained_rows_after` has the images and `last`."""
        return dict(self._retained)

    def restore_retained(self, copy: dict[str, bytes]) -> None:
        """Start from the durable copy of an earlier run (newer state wins)."""
        self._retained = {**copy, **self._retained}

    def row_acknowledged(self, topic: str) -> None:
        """An outbox row on retained `topic` was acknowledged: the outbox keeps it
        as the topic's retained state (a state payload on it is superseded)."""
        self._retained.pop(topic, None)

    async def republish_rows(self) -> None:
        """Re-send the kept rows (images, `last`) from the outbox, oldest first, a
        batch at a time; before any pending outbox row, which may overwrite them.
        `BrokerError` if the connection goes meanwhile."""
        loop = asyncio.get_running_loop()
        after, count = 0, 0
        while True:
            rows = await loop.run_in_executor(
                self.executor, self.outbox.retained_rows_after, after, REPUBLISH_BATCH
            )
            if not rows:
                break
            await asyncio.gather(*(self._republish(topic, payload) for _, topic, payload in rows))
            after, count = rows[-1][0], count + len(rows)
        if count:
            self.metrics.retained_republished.inc(count)
            log.info("re-sent %d retained images and `last` kept in the outbox", count)

    async def _republish(self, topic: str, payload: bytes) -> None:
        try:
            await self.link.publish_acked(topic, payload, retain=True)
        except LinkClosedError:
            raise
        except BrokerError as exc:  # refused: never let one message stop the rest
            log.warning("retained %s not re-sent: %s", topic[:200], exc)

    def remember_retained(self, topic: str, payload: bytes, persist: bool = False) -> None:
        """`payload` is the retained state of `topic` now; `persist` keeps it in the
        outbox too (outbox rows are kept by the outbox itself when acknowledged)."""
        if persist and self._retained.get(topic) != payload:
            # Fire and forget on the outbox thread, which runs its work in order.
            # What one turn of the loop changed is one transaction: 1,000 cameras
            # logging in at once made 1,000 commits (13 % of a login storm's
            # samples) that the first reads queued behind.
            if not self._to_persist:
                asyncio.get_running_loop().call_soon(self._persist)
            self._to_persist.pop(topic, None)
            self._to_persist[topic] = payload
        # Re-inserted at the end: the copy is replayed in the order it was last published.
        self._retained.pop(topic, None)
        if payload:
            self._retained[topic] = payload  # an empty payload clears the topic: forget it

    def _persist(self) -> None:
        if not self._to_persist:
            return
        states, self._to_persist = list(self._to_persist.items()), {}
        future = asyncio.get_running_loop().run_in_executor(
            self.executor, self.outbox.save_retained_states, states
        )
        future.add_done_callback(_log_failure)

    # -- connect and shutdown ------------------------------------------------------------

    def link_up(self) -> None:
        """Just connected: say online, bridge info and availability, run the hooks,
        then re-send the rest of our copy, all before any outbox row."""
        self._sent_on_connect = set()
        try:
            self.publish_state(self.topics.state, ONLINE)
            self._publish_info()
            for camera in self._availability:
                online = self._published_online(camera)
                self.publish_state(self.topics.availability(camera), ONLINE if online else OFFLINE)
            for hook in self._on_connected_hooks:
                try:
                    hook()
                except Exception:
                    log.exception("on-connect hook failed")
            self._republish_retained(self._sent_on_connect)
        finally:
            self._sent_on_connect = None

    def _republish_retained(self, already_sent: set[str]) -> None:
        count = 0
        for topic, payload in list(self._retained.items()):
            if topic in already_sent:
                continue
            self._send_state(topic, payload, retain=True)
            count += 1
        if count:
            self.metrics.retained_republished.inc(count)
            log.info("re-sent %d retained messages from the gateway's own copy", count)

    async def say_offline(self) -> None:
        """Shutting down: cameras and bridge offline; wait (bounded) for the bridge's
        PUBACK, since a clean DISCONNECT suppresses the will and this message is
        what says it."""
        for camera, online in self._availability.items():
            if online:  # adapters normally said so already as their sessions ended
                self._availability[camera] = False
                if camera not in self._disabled:
                    self.publish_state(self.topics.availability(camera), OFFLINE)
        if self._info_update is not None:
            self._publish_info()  # now: nothing runs after shutdown
        # Everything still waiting goes now, ahead of the bridge's offline.
        self._send_queued_states(limit=len(self._state_in_flight) + len(self._state_queue))
        with contextlib.suppress(BrokerError, TimeoutError):
            async with asyncio.timeout(OFFLINE_ACK_SECONDS):
                await self.link.publish_acked(self.topics.state, OFFLINE, retain=True)

    def close(self) -> None:
        """Stopped: no update may run after the outbox is closed (what is still
        to be kept is handed to the outbox thread now, ahead of its closing)."""
        if self._info_update is not None:
            self._info_update.cancel()
            self._info_update = None
        self._persist()

    def camera_state(self, camera: str) -> str:
        """`online`, `offline` or `disabled` (switched off at runtime)."""
        if camera in self._disabled:
            return "disabled"
        return "online" if self._availability.get(camera) else "offline"

    def info_payload(self) -> bytes:
        info: dict[str, Any] = {
            "version": __version__,
            "cameras": [
                {
                    "id": c.id,
                    "name": c.name,
                    "protocol": c.protocol.value,
                    "state": self.camera_state(c.id),
                }
                for c in self._cameras.values()
            ],
        }
        for key, section in self.info_sections.items():
            try:
                info[key] = section()
            except Exception:  # one bad section must not cost the rest of the info
                log.exception("bridge info section %s failed", key)
        return json.dumps(info, ensure_ascii=False).encode()


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not keep retained state in the outbox: %s", future.exception())
