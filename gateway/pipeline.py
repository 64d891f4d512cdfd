"""Pipeline: normalise → duplicate suppression → enrich → durable outbox.

`Pipeline.submit` is the one door from the adapters to MQTT. It returns once
the event is durably in the outbox (or says why not), so an adapter that can
acknowledge its camera (HTTP) does so only for what is safe. Awaiting it is
the backpressure: a slow disk or a full writer queue slows intake instead of
growing memory.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from gateway.config import Config
from gateway.event import (
    AnyEvent,
    CameraEvent,
    ImageKind,
    PlateEvent,
    camera_event_kind_topic_segment,
    image_topic,
)
from gateway.metrics import Metrics
from gateway.outbox import EventDraft, MessageDraft, OutboxWriter

log = logging.getLogger(__name__)

# Bound on remembered (camera, plate) pairs; the oldest are forgotten first.
DEDUP_MAX_ENTRIES = 100_000


class Admission(enum.Enum):
    ACCEPTED = "accepted"  # durably in the outbox: safe to acknowledge the camera
    DUPLICATE = "duplicate"  # suppressed by dedup (counted); the camera may be told OK
    OUTBOX_FULL = "outbox_full"  # refused and counted; HTTP answers 503
    SHUTTING_DOWN = "shutting_down"  # refused; HTTP answers 503

    @property
    def taken(self) -> bool:
        """Whether the camera can be told its read is safe (no need to resend)."""
        return self in (Admission.ACCEPTED, Admission.DUPLICATE)


class DuplicateFilter:
    """Same camera and normalized plate within the window → duplicate.

    The window counts from the last read that was let through, so a car
    waiting at a gate is published once per window, not once per frame. Uses
    a monotonic clock: a wall-clock jump neither opens nor closes a window.
    """

    def __init__(self, window_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window_seconds
        self._clock = clock
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()

    def admit(self, camera: str, plate: str) -> bool:
        if self.window <= 0:
            return True
        now = self._clock()
        key = (camera, plate)
        seen = self._last.get(key)
        if seen is not None and now - seen < self.window:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while self._last and (
            len(self._last) > DEDUP_MAX_ENTRIES
            or now - next(iter(self._last.values())) >= self.window
        ):
            self._last.popitem(last=False)
        return True

    def forget(self, camera: str, plate: str) -> None:
        """Undo `admit` for a read that was not stored after all."""
        self._last.pop((camera, plate), None)


def render_messages(event: AnyEvent, base_topic: str) -> tuple[MessageDraft, ...]:
    """The MQTT messages an event becomes, in publish order.

    Images first, then the event, then `last`: a subscriber reacting to the
    event finds the matching images already on the retained topics.
    """
    if isinstance(event, CameraEvent):
        segment = camera_event_kind_topic_segment(event.kind)
        return (
            MessageDraft(
                f"{base_topic}/{event.camera}/camera_event/{segment}",
                _json_bytes(event.to_json_dict()),
                retain=False,
            ),
        )
    messages: list[MessageDraft] = []
    for kind in ImageKind:
        image = event.image(kind)
        if image is not None and image.data is not None:
            messages.append(
                MessageDraft(image_topic(base_topic, event.camera, kind), image.data, retain=True)
            )
    payload = _json_bytes(event.to_json_dict(base_topic))
    messages.append(MessageDraft(f"{base_topic}/{event.camera}/event", payload, retain=False))
    messages.append(MessageDraft(f"{base_topic}/{event.camera}/last", payload, retain=True))
    return tuple(messages)


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Pipeline:
    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        writer: OutboxWriter,
        on_stored: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._writer = writer
        self._on_stored = on_stored
        self._dedup = DuplicateFilter(config.dedup.window_seconds, clock)
        self._closed = False

    def close(self) -> None:
        """Stop intake: every later submit is refused as SHUTTING_DOWN."""
        self._closed = True

    async def submit(self, event: AnyEvent) -> Admission:
        camera = event.camera
        self.metrics.events_received.labels(camera=camera, source=event.source.value).inc()
        if self._closed:
            self.metrics.events_refused.labels(camera=camera, reason="shutting_down").inc()
            return Admission.SHUTTING_DOWN
        plate = ""
        if isinstance(event, PlateEvent):
            plate = event.plate_normalized
            if not self._dedup.admit(camera, plate):
                self.metrics.duplicates_suppressed.labels(camera=camera).inc()
                log.debug("camera %s: duplicate %s suppressed", camera, plate)
                return Admission.DUPLICATE
            event = self.enrich(event)
        draft = EventDraft(
            event_id=event.id,
            camera=camera,
            messages=render_messages(event, self.config.mqtt.base_topic),
            accepted_at=time.time(),
        )
        stored = await self._writer.append(draft)
        if not stored:
            if plate:
                self._dedup.forget(camera, plate)
            self.metrics.events_refused.labels(camera=camera, reason="outbox_full").inc()
            log.warning(
                "camera %s: outbox full (outbox.max_bytes=%d), read %s refused",
                camera,
                self.config.outbox.max_bytes,
                event.id,
            )
            return Admission.OUTBOX_FULL
        self._on_stored()
        return Admission.ACCEPTED

    def enrich(self, event: PlateEvent) -> PlateEvent:
        """Known plates and lists (HA/known-plates issue); the identity step for now."""
        return event
