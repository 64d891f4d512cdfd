"""The live view's memory: recent reads with their pictures, per-camera activity,
and the Server-Sent Events subscribers.

`LiveFeed.on_stored` is a pipeline listener, called on the loop for every stored
event. With nobody watching it only appends to bounded deques (the pictures are
references to bytes the event already holds, not copies); with watchers it also
renders one small JSON summary per event and queues it for each of them. A
watcher that does not keep up loses its oldest queued items (counted); it never
holds the pipeline up, because nothing here awaits.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

from gateway.event import AnyEvent, CameraEvent, PlateEvent, format_time

# Reads (and camera events) the live page starts with, and can replay to a
# watcher that reconnects (SSE Last-Event-ID).
LIVE_ITEMS = 50
# Pictures kept for those items, at most. A demo scene is ~300 KB and a crop
# ~20 KB: 50 of each would be ~16 MB against a ~70 MB process, so past this
# budget the oldest items lose their scene first, then their crop (the
# history, when on, still has the crops).
LIVE_IMAGE_BYTES = 6 * 1024 * 1024
# Per-camera read times kept to tell reads per minute (a camera reading more
# than this per minute shows as "≥ this").
READ_TIMES_PER_CAMERA = 600
# Summaries waiting for one watcher; past it the oldest are dropped for that watcher.
WATCHER_QUEUE = 100


@dataclass(slots=True)
class LiveItem:
    """One stored event as the live page shows it. `plate_image`/`scene_image`
    are dropped (set to None) when the picture budget needs the room."""

    seq: int
    summary: dict[str, Any]
    plate_image: bytes | None
    scene_image: bytes | None

    @property
    def image_bytes(self) -> int:
        return len(self.plate_image or b"") + len(self.scene_image or b"")

    def sse_message(self) -> bytes:
        data = json.dumps(self.summary, ensure_ascii=False, separators=(",", ":"))
        # JSON never holds a raw newline, so one `data:` line is the whole message.
        return f"id: {self.seq}\nevent: read\ndata: {data}\n\n".encode()


def summarize(event: AnyEvent) -> dict[str, Any]:
    """What the live page shows of an event: camera data stays data here (the
    page renders it as text, never as markup)."""
    common = {
        "id": event.id,
        "camera": event.camera,
        "source": event.source.value,
        "time": format_time(event.time or event.received),
    }
    if isinstance(event, CameraEvent):
        return {**common, "type": "camera_event", "kind": event.kind}
    return {
        **common,
        "type": "read",
        "plate": event.plate,
        "direction": event.direction.value,
        "confidence": event.confidence,
        "known": event.known,
        "match": event.match,
        "plate_image": bool(event.plate_image and event.plate_image.data),
        "scene_image": bool(event.scene_image and event.scene_image.data),
    }


class Watcher:
    """One live page's SSE connection: a bounded queue of rendered messages."""

    def __init__(self, on_dropped: Any) -> None:
        self.queue: collections.deque[bytes] = collections.deque()
        self.ready = asyncio.Event()
        self.dropped = 0
        self._on_dropped = on_dropped

    def put(self, message: bytes) -> None:
        if len(self.queue) >= WATCHER_QUEUE:
            self.queue.popleft()
            self.dropped += 1
            self._on_dropped()
        self.queue.append(message)
        self.ready.set()

    def take(self) -> list[bytes]:
        items = list(self.queue)
        self.queue.clear()
        self.ready.clear()
        return items


class CameraActivity:
    """Per camera: when it last read a plate, and how often lately."""

    def __init__(self) -> None:
        self.last_read: float | None = None  # wall time
        self.read_times: collections.deque[float] = collections.deque(maxlen=READ_TIMES_PER_CAMERA)

    def reads_per_minute(self, now: float) -> int:
        cutoff = now - 60.0
        return sum(1 for t in self.read_times if t >= cutoff)


class LiveFeed:
    def __init__(
        self,
        on_dropped: Any = None,
        clock: Any = time.monotonic,
        wall_clock: Any = time.time,
    ) -> None:
        self.items: collections.deque[LiveItem] = collections.deque(maxlen=LIVE_ITEMS)
        self.image_bytes = 0
        self.cameras: collections.defaultdict[str, CameraActivity] = collections.defaultdict(
            CameraActivity
        )
        self.watchers: set[Watcher] = set()
        self._seq = itertools.count(1)
        self._on_dropped = on_dropped or (lambda: None)
        self._clock = clock
        self._wall_clock = wall_clock

    def on_stored(self, event: AnyEvent, _event_json: bytes) -> None:
        """The pipeline listener (on the loop; must not block)."""
        plate = scene = None
        if isinstance(event, PlateEvent):
            plate = event.plate_image.data if event.plate_image else None
            scene = event.scene_image.data if event.scene_image else None
            activity = self.cameras[event.camera]
            activity.last_read = self._wall_clock()
            activity.read_times.append(self._clock())
        item = LiveItem(next(self._seq), summarize(event), plate, scene)
        if len(self.items) == self.items.maxlen:
            self.image_bytes -= self.items[0].image_bytes
        self.items.append(item)
        self.image_bytes += item.image_bytes
        if self.image_bytes > LIVE_IMAGE_BYTES:
            self._shed_images()
        if self.watchers:
            message = item.sse_message()
            for watcher in self.watchers:
                watcher.put(message)

    def _shed_images(self) -> None:
        """Oldest first: scenes, then crops, until the pictures fit the budget."""
        for attribute in ("scene_image", "plate_image"):
            for item in self.items:
                if self.image_bytes <= LIVE_IMAGE_BYTES:
                    return
                picture = getattr(item, attribute)
                if picture is not None:
                    self.image_bytes -= len(picture)
                    setattr(item, attribute, None)

    def image(self, read_id: str, kind: str) -> bytes | None:
        for item in self.items:
            if item.summary["id"] == read_id:
                return item.plate_image if kind == "plate" else item.scene_image
        return None

    def newest_first(self) -> list[LiveItem]:
        return list(reversed(self.items))

    def since(self, seq: int) -> list[LiveItem]:
        """Items after `seq`, oldest first: what a reconnecting watcher missed."""
        return [item for item in self.items if item.seq > seq]

    def watch(self) -> Watcher:
        watcher = Watcher(self._on_dropped)
        self.watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
