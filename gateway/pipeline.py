"""Pipeline: normalise → duplicate suppression → enrich → durable outbox.

`Pipeline.submit` is the one door from the adapters to MQTT. It returns once
the event is durably in the outbox (or says why not), so an adapter that can
acknowledge its camera (HTTP) does so only for what is safe. Awaiting it is
the backpressure: a slow disk or a full writer queue slows intake instead of
growing memory.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import math
import re
import secrets
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from gateway.config import Config, ImagesConfig
from gateway.errors import ImageTransformError
from gateway.event import (
    HASHED_WHEN_RENDERED,
    AnyEvent,
    CameraEvent,
    ImageKind,
    ListMembership,
    PictureDigests,
    PlateEvent,
    new_event_id,
    utc_now,
)
from gateway.homeassistant import (
    PRESENCE_OFF,
    PRESENCE_ON,
    ha_event_payload,
    ha_event_type,
    last_seen_payload,
    presence_payload,
)
from gateway.images import apply_image_options, within_payload_limit
from gateway.known_plates import KnownPlatesRegistry, edit_distance
from gateway.log_limit import RateLimitedLog
from gateway.metrics import Metrics
from gateway.outbox import EventDraft, MessageDraft, OutboxWriter
from gateway.topics import Topics, topic_problem

log = logging.getLogger(__name__)

# Bound on remembered (camera, plate) pairs; the oldest are forgotten first.
DEDUP_MAX_ENTRIES = 100_000
# dedup.fuzzy: plates this close (edit distance) count as the same vehicle.
FUZZY_DEDUP_DISTANCE = 1
# A "Known vehicle present" off that could not be stored (outbox full) is tried
# again after this long: it must not be lost, or the sensor stays on.
PRESENCE_RETRY_SECONDS = 5.0
# A picture this large has its SHA-256 (in the event JSON) computed on the
# outbox's thread rather than the event loop's; below it, where it is
# rendered (a 300 KB scene: ~170 µs; a 20 KB plate crop: ~12 µs).
DEFER_HASH_BYTES = 64 * 1024


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

    `fuzzy`: a plate within edit distance `FUZZY_DEDUP_DISTANCE` of one let
    through on the same camera within the window is a duplicate too (a
    misread of the same car). Only the reads inside the window are compared,
    newest first.
    """

    def __init__(
        self,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        fuzzy: bool = False,
    ) -> None:
        self.window = window_seconds
        self.fuzzy = fuzzy
        self._clock = clock
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.window > 0

    def admit(self, camera: str, plate: str) -> bool:
        if self.window <= 0:
            return True
        now = self._clock()
        key = (camera, plate)
        seen = self._last.get(key)
        if seen is not None and now - seen < self.window:
            return False
        if self.fuzzy and self._near_duplicate(camera, plate, now):
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while self._last and (
            len(self._last) > DEDUP_MAX_ENTRIES
            or now - next(iter(self._last.values())) >= self.window
        ):
            self._last.popitem(last=False)
        return True

    def _near_duplicate(self, camera: str, plate: str, now: float) -> bool:
        # Entries are in admit order (move_to_end), so the window is at the end.
        for (seen_camera, seen_plate), seen in reversed(self._last.items()):
            if now - seen >= self.window:
                return False
            if (
                seen_camera == camera
                and abs(len(seen_plate) - len(plate)) <= FUZZY_DEDUP_DISTANCE
                and edit_distance(seen_plate, plate, FUZZY_DEDUP_DISTANCE) <= FUZZY_DEDUP_DISTANCE
            ):
                return True
        return False

    def forget(self, camera: str, plate: str) -> None:
        """Undo `admit` for a read that was not stored after all."""
        self._last.pop((camera, plate), None)


def render_messages(
    event: AnyEvent,
    topics: Topics,
    *,
    ha_event: str | None = None,
    digests: PictureDigests = HASHED_WHEN_RENDERED,
) -> tuple[MessageDraft, ...]:
    """The MQTT messages an event becomes, in publish order.

    Images first, then the event, then `last`: a subscriber reacting to the
    event finds the matching images already on the retained topics. A read of
    a known plate also goes to `<base>/<camera>/known/<name-slug>`. With
    `ha_event` (an event type) the Home Assistant messages follow: the event
    entity's small JSON; for a known read "Known vehicle present" on and the
    name's "Last seen" (retained); then the device triggers' messages (the
    same small JSON), last, so that an automation they fire finds the images,
    `last` and the presence sensor already up to date.
    """
    camera = event.camera
    if isinstance(event, CameraEvent):
        # A camera event's pictures go first too, on their retained topics.
        pictures = [
            MessageDraft(topic, data, retain=True)
            for name, topic in event.image_topics(topics).items()
            if (data := event.images[name].data) is not None
        ]
        return (
            *pictures,
            MessageDraft(
                topics.camera_event(camera, event.kind),
                _json_bytes(event.to_json_dict(topics, digests)),
                retain=False,
            ),
        )
    messages: list[MessageDraft] = []
    for kind in ImageKind:
        image = event.image(kind)
        if image is not None and image.data is not None:
            messages.append(MessageDraft(topics.image(camera, kind), image.data, retain=True))
    payload = _json_bytes(event.to_json_dict(topics, digests))
    messages.append(MessageDraft(topics.event(camera), payload, retain=False))
    messages.append(MessageDraft(topics.last(camera), payload, retain=True))
    if event.known is not None:
        messages.append(MessageDraft(topics.known(camera, event.known), payload, retain=False))
    if ha_event is not None:
        small = _json_bytes(ha_event_payload(event, ha_event))
        messages.append(MessageDraft(topics.ha_event(camera), small, retain=False))
        if event.known is not None:
            on = presence_payload(camera, PRESENCE_ON, event, event.received)
            messages.append(MessageDraft(topics.presence(camera), _json_bytes(on), retain=True))
            messages.append(
                MessageDraft(
                    topics.last_seen(event.known),
                    _json_bytes(last_seen_payload(event)),
                    retain=True,
                )
            )
            messages.append(MessageDraft(topics.trigger_known(camera, event.known), small, False))
        else:
            messages.append(MessageDraft(topics.trigger_unknown(camera), small, retain=False))
        if event.list is ListMembership.BLACK:
            messages.append(MessageDraft(topics.trigger_black_list(camera), small, retain=False))
    return tuple(messages)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_bytes(document: dict[str, Any]) -> bytes:
    """Strict JSON in UTF-8, whatever a codec let through.

    The fast path is plain `json.dumps`. The codecs refuse non-finite numbers
    and undecodable text, so the fallbacks are a backstop: NaN/inf become
    null and a lone surrogate becomes U+FFFD, rather than a JSON document no
    subscriber can parse or a read that cannot be stored.
    """
    try:
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(document), ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# Placeholders are this nonce and a number: 64 characters like a SHA-256 in
# hex, so the JSON has its final size, and nothing a camera sends can match it.
_PLACEHOLDER_NONCE = f"sha256-pending-{secrets.token_hex(16)}-"


class DeferredDigests(PictureDigests):
    """For rendering an event: the SHA-256 of a large picture comes out as a
    placeholder, filled in on the outbox's thread (`_FillDigests`).

    Hashing the scene was a fifth of the event loop's time per read; on the
    outbox's thread hashlib runs beside the loop (it releases the GIL), and
    that thread takes each batch anyway: no hand-off is added (one per read
    to hash elsewhere cost more than it saved: bench/RESULTS.md).
    """

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: list[tuple[str, bytes]] = []  # (placeholder, picture)

    def sha256(self, data: bytes) -> str:
        if len(data) < DEFER_HASH_BYTES:
            return hashlib.sha256(data).hexdigest()
        for placeholder, picture in self.pending:
            if picture is data:
                return placeholder
        placeholder = f"{_PLACEHOLDER_NONCE}{len(self.pending):016d}"
        self.pending.append((placeholder, data))
        return placeholder


class _FillDigests:
    """An `EventDraft.finish`: the event JSON's placeholders replaced by the digests."""

    __slots__ = ("_document", "_filled", "_pending")

    def __init__(self, document: bytes, pending: list[tuple[str, bytes]]) -> None:
        self._document = document  # the event JSON, as rendered (in several messages)
        self._pending = pending
        self._filled: tuple[MessageDraft, ...] | None = None

    def __call__(self, messages: tuple[MessageDraft, ...]) -> tuple[MessageDraft, ...]:
        if self._filled is None:
            document = self._document
            for placeholder, picture in self._pending:
                digest = hashlib.sha256(picture).hexdigest()
                document = document.replace(placeholder.encode(), digest.encode())
            self._filled = tuple(
                MessageDraft(m.topic, document, m.retain) if m.payload is self._document else m
                for m in messages
            )
        return self._filled


# Retained picture topics of camera events per camera. Their level is the
# event's kind, which is the camera's own text: a camera sending ever new kinds
# with pictures (a counter or a time in it) would add retained topics without
# end, each kept in the outbox and re-sent on every connect. Real cameras send
# a handful; past the bound a new topic's pictures still go out, not retained.
MAX_EVENT_PICTURE_TOPICS = 64


class Pipeline:
    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        writer: OutboxWriter,
        on_stored: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        known_plates: KnownPlatesRegistry | None = None,
    ) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.base_topic)
        self.metrics = metrics
        self._writer = writer
        self._on_stored = on_stored
        self._dedup = DuplicateFilter(config.dedup.window_seconds, clock, config.dedup.fuzzy)
        # Shared with the runtime controller, which recompiles it when entries
        # are added, removed or expire: a read always sees the current table.
        self.known_plates = (
            known_plates
            if known_plates is not None
            else KnownPlatesRegistry(config.known_plates, config.known_plates_tolerance)
        )
        self._images = {c.id: c.images for c in config.cameras}
        self._closed = False
        self._camera_order: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # A camera can make the same complaint on every read: one line a minute.
        self._complaints = RateLimitedLog(log, on_suppressed=metrics.log_lines_suppressed.inc)
        # (camera, plate) → the outcome of a read admitted but not yet stored
        self._unstored: dict[tuple[str, str], asyncio.Future[bool]] = {}
        # Called with every plate read that was accepted (e.g. HA discovery learns
        # a camera's device id). Must not block.
        self.observers: list[Callable[[PlateEvent], None]] = []
        # Told of every stored event (reads and camera events) with its JSON as
        # it will be published: the history, the web page's live view. Called on
        # the event loop after the event is durable; must not block.
        self.stored_listeners: list[Callable[[AnyEvent, bytes], None]] = []
        # "Known vehicle present" is timed here, not by Home Assistant's
        # `off_delay`: the state goes out retained, on and off, so every
        # subscriber sees it, and one that (re)connects gets the current
        # state. With `off_delay` only Home Assistant would ever see "off"; a
        # retained "on" would switch the sensor on again at each Home Assistant
        # restart (a gate opening for a car long gone), and an unretained one
        # leaves it unknown after a restart. The off goes through the outbox
        # like the read's on, after it: an off sent straight to the broker
        # could overtake an on still waiting in the outbox (broker away) and
        # leave the sensor on for good.
        self._presence_hold = (
            config.homeassistant.presence_hold_seconds if config.homeassistant.enabled else None
        )
        # camera → the "off" timer, the generation (below) it was set for, and
        # the known read that set the sensor on
        self._presence_timers: dict[str, tuple[asyncio.TimerHandle, int]] = {}
        self._present: dict[str, PlateEvent] = {}
        # camera → known reads drafted: an "off" is stored only if none came
        # since its timer was set (checked under the camera's order lock)
        self._presence_generation: defaultdict[str, int] = defaultdict(int)
        self._presence_tasks: set[asyncio.Task[None]] = set()
        # camera → its camera-event picture topics retained (MAX_EVENT_PICTURE_TOPICS)
        self._event_pictures: defaultdict[str, set[str]] = defaultdict(set)

    def remember_event_pictures(self, topics: Iterable[str]) -> None:
        """The camera-event picture topics retained before (the outbox's retained
        copy, at start): they count towards each camera's bound."""
        for topic in topics:
            camera = self.topics.event_picture_camera(topic)
            if camera is not None:
                self._event_pictures[camera].add(topic)

    def _bound_event_pictures(
        self, camera: str, messages: tuple[MessageDraft, ...]
    ) -> tuple[MessageDraft, ...]:
        """The event's messages, with the pictures on topics past the camera's
        bound not retained."""
        known = self._event_pictures[camera]
        bounded: list[MessageDraft] = []
        for message in messages:
            if message.retain and message.topic not in known:
                if len(known) < MAX_EVENT_PICTURE_TOPICS:
                    known.add(message.topic)
                else:
                    message = MessageDraft(message.topic, message.payload, retain=False)
                    self.metrics.event_pictures_not_retained.labels(camera=camera).inc()
                    self._complaints.warning(
                        (camera, "event_pictures_bound"),
                        "camera %s: %s not retained: the camera has %d retained picture topics"
                        " of camera events already (the bound; kinds that change every time?)",
                        camera,
                        message.topic[:200],
                        MAX_EVENT_PICTURE_TOPICS,
                    )
            bounded.append(message)
        return tuple(bounded)

    def close(self) -> None:
        """Stop intake: every later submit is refused as SHUTTING_DOWN.

        A pending "Known vehicle present" off is dropped with it: the next
        start says off for every camera (`reset_presence`)."""
        self._closed = True
        for timer, _generation in self._presence_timers.values():
            timer.cancel()
        self._presence_timers.clear()
        for task in self._presence_tasks:
            task.cancel()

    async def reset_presence(self) -> None:
        """At start: "Known vehicle present" off at every camera, queued behind
        what the outbox holds. An on left retained by a gateway that stopped
        (or crashed) within the hold, or still waiting in the outbox, would
        otherwise stay on. Queued, not awaited: the writer is not running yet."""
        if self._presence_hold is None:
            return
        for camera in self.config.cameras:
            await self._writer.enqueue(self._presence_off_draft(camera.id, None))

    def _presence_off_draft(self, camera: str, present: PlateEvent | None) -> EventDraft:
        payload = presence_payload(camera, PRESENCE_OFF, present, utc_now())
        return EventDraft(
            event_id=f"presence-{new_event_id()}",
            camera=camera,
            messages=(MessageDraft(self.topics.presence(camera), _json_bytes(payload), True),),
            accepted_at=time.time(),
        )

    def _hold_presence(self, event: PlateEvent, generation: int) -> None:
        """A known read (the `generation`-th drafted at its camera): the camera's
        "off" is due a hold after it, and no earlier."""
        assert self._presence_hold is not None
        camera = event.camera
        armed = self._presence_timers.get(camera)
        if armed is not None:
            if armed[1] > generation:
                return  # a later read of the camera got here first
            armed[0].cancel()
        self._present[camera] = event
        self._arm_presence_off(camera, generation, self._presence_hold)

    def _arm_presence_off(self, camera: str, generation: int, delay: float) -> None:
        timer = asyncio.get_running_loop().call_later(
            delay, self._presence_expired, camera, generation
        )
        self._presence_timers[camera] = (timer, generation)

    def _presence_expired(self, camera: str, generation: int) -> None:
        self._presence_timers.pop(camera, None)
        task = asyncio.get_running_loop().create_task(
            self._store_presence_off(camera, generation), name=f"presence-off-{camera}"
        )
        self._presence_tasks.add(task)
        task.add_done_callback(self._presence_tasks.discard)

    async def _store_presence_off(self, camera: str, generation: int) -> None:
        try:
            async with self._camera_order[camera]:
                if self._closed or self._presence_generation[camera] != generation:
                    return  # a newer known read holds it on (and has its own timer)
                draft = self._presence_off_draft(camera, self._present.get(camera))
                queued = await self._writer.enqueue(draft)
            stored = await asyncio.shield(queued)
        except asyncio.CancelledError:
            raise
        except Exception:  # the task's top: said, and tried again like a full outbox
            log.exception(
                "camera %s: storing 'known vehicle present' off failed; trying again in %.0fs",
                camera,
                PRESENCE_RETRY_SECONDS,
            )
        else:
            if stored:
                self._present.pop(camera, None)
                return
            self.metrics.events_refused.labels(camera=camera, reason="outbox_full").inc()
            log.warning(
                "camera %s: 'known vehicle present' off not stored (outbox full); "
                "trying again in %.0fs",
                camera,
                PRESENCE_RETRY_SECONDS,
            )
        if not self._closed and self._presence_generation[camera] == generation:
            self._arm_presence_off(camera, generation, PRESENCE_RETRY_SECONDS)

    async def submit(self, event: AnyEvent) -> Admission:
        camera = event.camera
        self.metrics.child(self.metrics.events_received, camera, event.source.value).inc()
        if self._closed:
            self.metrics.events_refused.labels(camera=camera, reason="shutting_down").inc()
            return Admission.SHUTTING_DOWN
        plate = ""
        stored = False
        queued: asyncio.Future[bool] | None = None
        draft: EventDraft | None = None
        generation = 0
        try:
            # Held until the event is queued for the outbox (not until it is stored):
            # reads of one camera reach the outbox in the order they were submitted,
            # even when an adapter does not wait for one read before the next.
            # asyncio.Lock wakes its waiters first in, first out.
            async with self._camera_order[camera]:
                if isinstance(event, PlateEvent):
                    earlier = self._unstored.get((camera, event.plate_normalized))
                    if earlier is not None:
                        # The same plate is on its way to the disk: it is a
                        # duplicate only if that read is stored in the end.
                        # (Only with dedup on: `_unstored` is empty without.)
                        await asyncio.wait([earlier])
                    if not self._dedup.admit(camera, event.plate_normalized):
                        self.metrics.duplicates_suppressed.labels(camera=camera).inc()
                        log.debug(
                            "camera %s: duplicate %s suppressed", camera, event.plate_normalized
                        )
                        return Admission.DUPLICATE
                    # Admitted tentatively: undone below unless the read is stored,
                    # so a failed read never makes its retry a "duplicate".
                    plate = event.plate_normalized
                    event = await self._apply_image_options(self.enrich(event))
                draft = self._draft(event)
                generation = self._presence_generation[camera]
                queued = await self._writer.enqueue(draft)
                if plate and self._dedup.enabled:
                    # Without dedup nothing waits on it: a read waiting for the
                    # one before it to be stored made every read of a plate seen
                    # twice in a row take a commit of its own (measured: 2.6 →
                    # 4.0 CPU ms per read, half the HTTP rate, same plate each).
                    self._unstored[(camera, plate)] = queued
            stored = await asyncio.shield(queued)
        finally:
            if plate and not stored:
                self._dedup.forget(camera, plate)
            if plate and queued is not None and self._unstored.get((camera, plate)) is queued:
                del self._unstored[(camera, plate)]
        if (
            self._presence_hold is not None
            and isinstance(event, PlateEvent)
            and event.known is not None
            and draft is not None
            and not self._closed
        ):
            # Also when it was not stored: its draft stopped an earlier "off"
            # (the generation), so this read times the next one.
            self._hold_presence(event, generation)
        if not stored:
            self.metrics.events_refused.labels(camera=camera, reason="outbox_full").inc()
            log.warning(
                "camera %s: outbox full (outbox.max_bytes=%d), read %s refused",
                camera,
                self.config.outbox.max_bytes,
                event.id,
            )
            return Admission.OUTBOX_FULL
        self._on_stored()
        if self.stored_listeners and draft is not None and draft.dead_letter_reason is None:
            self._tell_stored(event, draft)
        if isinstance(event, PlateEvent):
            for observer in self.observers:
                try:
                    observer(event)
                except Exception:
                    log.exception("camera %s: event observer failed", camera)
        return Admission.ACCEPTED

    def _draft(self, event: AnyEvent) -> EventDraft:
        limit = self.config.mqtt.max_payload_bytes
        if limit is not None:
            event = self._within_payload_limit(event, limit)
        ha_event = None
        if isinstance(event, PlateEvent) and self.config.homeassistant.enabled:
            ha_event = ha_event_type(event, bool(self.known_plates))
            if event.known is not None:
                self._presence_generation[event.camera] += 1
        digests = DeferredDigests()
        messages = render_messages(event, self.topics, ha_event=ha_event, digests=digests)
        if isinstance(event, CameraEvent) and event.images:
            messages = self._bound_event_pictures(event.camera, messages)
        finish = None
        if digests.pending:
            document = self._event_document(event, messages)
            assert document is not None  # a picture's digest is only ever in the event JSON
            finish = _FillDigests(document, digests.pending)
        # Every topic checked before it is stored: one the broker refuses would
        # be replayed first after every reconnect. Camera data reaches topics
        # only as safe slugs, so this is a backstop; such an event is kept as a
        # dead letter, not lost and not published.
        reason = None
        for message in messages:
            problem = topic_problem(message.topic)
            if problem is not None:
                reason = f"invalid topic {message.topic[:200]!r}: {problem}"
                self.metrics.topics_refused.labels(camera=event.camera).inc()
                log.error(
                    "camera %s: event %s kept as a dead letter: %s", event.camera, event.id, reason
                )
                break
        return EventDraft(
            event_id=event.id,
            camera=event.camera,
            messages=messages,
            accepted_at=time.time(),
            dead_letter_reason=reason,
            finish=finish,
        )

    def _event_document(self, event: AnyEvent, messages: tuple[MessageDraft, ...]) -> bytes | None:
        """The event JSON among an event's messages."""
        topic = (
            self.topics.event(event.camera)
            if isinstance(event, PlateEvent)
            else self.topics.camera_event(event.camera, event.kind)
        )
        return next((m.payload for m in messages if m.topic == topic), None)

    def _tell_stored(self, event: AnyEvent, draft: EventDraft) -> None:
        payload = self._event_document(event, draft.finished().messages)
        if payload is None:
            return
        for listener in self.stored_listeners:
            try:
                listener(event, payload)
            except Exception:  # the event is stored and published all the same
                log.exception("camera %s: event %s not handed on", event.camera, event.id)

    def _within_payload_limit(self, event: AnyEvent, limit: int) -> AnyEvent:
        """Pictures the broker would refuse (it drops the connection over one)
        go out as missing, counted and said, never a read held up."""
        event, over = within_payload_limit(event, limit)
        for name in over:
            self.metrics.images_over_broker_limit.labels(camera=event.camera, image=name).inc()
            self._complaints.warning(
                (event.camera, "over_broker_limit"),
                "camera %s: %s image over mqtt.max_payload_bytes (%d); published as missing"
                " (images: max_width/quality can make scenes fit)",
                event.camera,
                name,
                limit,
            )
        return event

    def enrich(self, event: PlateEvent) -> PlateEvent:
        """Known plates and the camera's own lists: sets `known` and `match`."""
        known = self.known_plates.for_camera(event.camera)
        if not known:
            return event
        found = known.match(event.plate_normalized, event.list)
        if found is None:
            return event.with_enrichment(None, None)
        self.metrics.known_plate_matches.labels(camera=event.camera, match=found.kind.value).inc()
        log.debug(
            "camera %s: %s is known as %r (%s, entry %r)",
            event.camera,
            event.plate_normalized,
            found.name,
            found.kind.value,
            found.entry,
        )
        return event.with_enrichment(found.name, found.kind.value)

    def images_for(self, camera: str) -> ImagesConfig:
        return self._images.get(camera, self.config.images)

    async def _apply_image_options(self, event: PlateEvent) -> PlateEvent:
        options = self.images_for(event.camera)
        if not options.reencode:
            return apply_image_options(event, options)  # byte-exact or skip: no work
        loop = asyncio.get_running_loop()
        try:
            # Decoding and encoding a scene takes tens of ms: off the loop.
            return await loop.run_in_executor(None, apply_image_options, event, options)
        except ImageTransformError as exc:
            self.metrics.image_transform_failures.labels(camera=event.camera).inc()
            self._complaints.warning(
                (event.camera, "image_transform"),
                "camera %s: %s; publishing it as received",
                event.camera,
                exc,
            )
            return event
