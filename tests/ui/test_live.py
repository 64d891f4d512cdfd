"""The live view's memory: bounded items, bounded pictures, bounded watcher queues."""

from __future__ import annotations

from gateway.event import CameraEvent, Image, PlateEvent, Source, utc_now
from gateway.ui.live import LIVE_IMAGE_BYTES, LIVE_ITEMS, WATCHER_QUEUE, LiveFeed

SCENE = b"\xff\xd8" + b"s" * 300_000
CROP = b"\xff\xd8" + b"p" * 20_000


def read(n: int, camera: str = "gate") -> PlateEvent:
    return PlateEvent(
        camera=camera,
        source=Source.INJECT,
        plate=f"P {n}",
        received=utc_now(),
        plate_image=Image(CROP),
        scene_image=Image(SCENE),
    )


def test_items_and_pictures_stay_within_their_bounds() -> None:
    feed = LiveFeed()
    events = [read(n) for n in range(500)]
    for event in events:
        feed.on_stored(event, b"{}")
        assert feed.image_bytes <= LIVE_IMAGE_BYTES
        assert feed.image_bytes == sum(item.image_bytes for item in feed.items)
    assert len(feed.items) == LIVE_ITEMS
    # The newest keep both pictures; the oldest lose the scene first, then the crop.
    newest = events[-1]
    assert feed.image(newest.id, "scene") == SCENE and feed.image(newest.id, "plate") == CROP
    oldest_kept = feed.items[0]
    assert oldest_kept.scene_image is None
    assert feed.image(events[0].id, "plate") is None  # gone from memory altogether
    assert [i.summary["plate"] for i in feed.newest_first()[:2]] == ["P 499", "P 498"]


def test_a_watcher_that_does_not_take_loses_its_oldest_items_counted() -> None:
    dropped: list[int] = []
    feed = LiveFeed(on_dropped=lambda: dropped.append(1))
    watcher = feed.watch()
    for n in range(WATCHER_QUEUE + 30):
        feed.on_stored(read(n), b"{}")
    assert len(watcher.queue) == WATCHER_QUEUE
    assert watcher.dropped == len(dropped) == 30
    messages = watcher.take()
    assert b'"plate":"P 30"' in messages[0] and not watcher.queue and not watcher.ready.is_set()
    feed.unwatch(watcher)
    feed.on_stored(read(999), b"{}")
    assert not watcher.queue


def test_camera_events_are_in_the_stream_marked_and_reads_counted_per_camera() -> None:
    now = [1000.0]
    feed = LiveFeed(clock=lambda: now[0], wall_clock=lambda: 5000.0)
    watcher = feed.watch()
    feed.on_stored(
        CameraEvent(camera="gate", source=Source.INJECT, kind="counting", received=utc_now()),
        b"{}",
    )
    for _ in range(3):
        feed.on_stored(read(1), b"{}")
        now[0] += 30
    message = watcher.take()[0].decode()
    assert message.startswith("id: 1\nevent: read\ndata: {") and message.endswith("\n\n")
    assert '"type":"camera_event"' in message and '"kind":"counting"' in message
    activity = feed.cameras["gate"]
    assert activity.last_read == 5000.0
    assert activity.reads_per_minute(now[0]) == 2  # the first one is 90 s old
    assert feed.since(2)[0].seq == 3
