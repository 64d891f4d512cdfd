"""Pipeline: duplicate suppression (monotonic window), rendering order, intake closing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway import pipeline as pipeline_module
from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.event import CameraEvent, Image, PlateEvent, Source, utc_now
from gateway.pipeline import Admission, DuplicateFilter, render_messages
from gateway.simulate.common import plate_jpeg, scene_jpeg
from gateway.topics import Topics
from tests.helpers import MqttCollector, gateway_config, sample


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_duplicate_filter_window() -> None:
    clock = FakeClock()
    dedup = DuplicateFilter(10, clock)
    assert dedup.admit("cam", "AB123")
    clock.now += 9.9
    assert not dedup.admit("cam", "AB123")  # inside the window
    assert dedup.admit("other", "AB123")  # another camera
    assert dedup.admit("cam", "XY999")  # another plate
    clock.now += 0.2
    assert dedup.admit("cam", "AB123")  # 10.1 s after the one let through


def test_duplicate_filter_off_and_forget() -> None:
    off = DuplicateFilter(0, FakeClock())
    assert all(off.admit("c", "p") for _ in range(3))
    clock = FakeClock()
    dedup = DuplicateFilter(10, clock)
    assert dedup.admit("c", "p")
    dedup.forget("c", "p")
    assert dedup.admit("c", "p")


def test_render_order_and_missing_images() -> None:
    event = PlateEvent(
        camera="c",
        source=Source.TCP,
        plate="x",
        received=utc_now(),
        plate_image=Image.missing("404"),
        scene_image=Image(b"scene"),
    )
    messages = render_messages(event, Topics("lpr"))
    assert [(m.topic, m.retain) for m in messages] == [
        ("lpr/c/image/scene", True),
        ("lpr/c/event", False),
        ("lpr/c/last", True),
    ]
    other = CameraEvent(camera="c", source=Source.HTTP, kind="Vehicle Counting", received=utc_now())
    (only,) = render_messages(other, Topics("lpr"))
    assert (only.topic, only.retain) == ("lpr/c/camera_event/vehicle_counting", False)


def test_pictures_go_first_on_retained_topics_the_json_refers_to() -> None:
    read = PlateEvent(
        camera="c",
        source=Source.HTTP,
        plate="AB1",
        received=utc_now(),
        plate_image=Image(b"plate"),
        evidence1_image=Image(b"evidence"),
        evidence0_image=Image.missing("invalid base64"),
    )
    messages = render_messages(read, Topics("lpr"))
    assert [(m.topic, m.retain) for m in messages] == [
        ("lpr/c/image/plate", True),
        ("lpr/c/image/evidence1", True),
        ("lpr/c/event", False),
        ("lpr/c/last", True),
    ]
    assert messages[1].payload == b"evidence"
    counting = CameraEvent(
        camera="c",
        source=Source.HTTP,
        kind="vehicle_counting",
        received=utc_now(),
        data={"event": "Vehicle Counting", "snapshot": None, "All-Car": 3},
        images={"snapshot": Image(b"\xff\xd8 snapshot")},
    )
    picture, event = render_messages(counting, Topics("lpr"))
    assert (picture.topic, picture.retain, picture.payload) == (
        "lpr/c/image/vehicle_counting",
        True,
        b"\xff\xd8 snapshot",
    )
    assert (event.topic, event.retain) == ("lpr/c/camera_event/vehicle_counting", False)
    data = json.loads(event.payload)["data"]
    assert list(data) == ["event", "snapshot", "All-Car"]
    assert data["snapshot"]["topic"] == picture.topic
    assert data["snapshot"]["bytes"] == len(picture.payload)


async def test_dedup_in_gateway_counts_and_publishes_once(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path, dedup={"window_seconds": 30})
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/event",)) as sub:
        async with Gateway(config) as gw:
            first = PlateEvent(camera="c", source=Source.TCP, plate="ab-123", received=utc_now())
            again = PlateEvent(camera="c", source=Source.TCP, plate="AB 123", received=utc_now())
            other = PlateEvent(camera="c", source=Source.TCP, plate="ZZ999", received=utc_now())
            assert await gw.submit(first) is Admission.ACCEPTED
            assert await gw.submit(again) is Admission.DUPLICATE
            assert await gw.submit(other) is Admission.ACCEPTED
            events = await sub.until_count("lpr/c/event", 2)
            assert [e.json()["id"] for e in events] == [first.id, other.id]
            assert sample(gw.metrics, "lpr_duplicates_suppressed_total", camera="c") == 1
        assert await gw.submit(other) is Admission.SHUTTING_DOWN


@pytest.mark.parametrize("reencode", [False, True], ids=["byte-exact", "reencoded"])
async def test_concurrent_submits_keep_per_camera_order(
    mqtt_broker: MosquittoProcess, tmp_path: Path, reencode: bool
) -> None:
    """Adapters may submit without waiting (TCP does): the outbox order is the call order.

    With re-encoding, each scene goes through a thread pool and finishes in any
    order: only the pipeline's per-camera ordering keeps the reads in line.
    """
    count = 40 if reencode else 200
    extra: dict[str, dict[str, Any]] = (
        {"images": {"max_width": 320, "quality": 50}} if reencode else {}
    )
    config = gateway_config(mqtt_broker.url, tmp_path, (), **extra)
    scene = scene_jpeg()
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/event",)) as sub:
        async with Gateway(config) as gw:
            events = [
                PlateEvent(
                    camera=f"cam{n % 2}",
                    source=Source.TCP,
                    plate=f"ORD{n:03d}",
                    received=utc_now(),
                    # uneven work per read
                    scene_image=Image(scene if reencode and n % 3 else scene[: 2 + n]),
                )
                for n in range(count)
            ]
            tasks = [asyncio.create_task(gw.submit(e)) for e in events]
            assert set(await asyncio.gather(*tasks)) == {Admission.ACCEPTED}
            received = await sub.until(lambda ms: len(ms) >= count, timeout=30)
    for camera in ("cam0", "cam1"):
        sent = [e.id for e in events if e.camera == camera]
        got = [m.json()["id"] for m in received if m.topic == f"lpr/{camera}/event"]
        assert got == sent


async def test_stored_listeners_get_reads_and_camera_events_with_the_published_json(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path)
    told: list[tuple[str, bytes]] = []
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/#",)) as sub:
        async with Gateway(config) as gw:
            assert gw.pipeline is not None

            def fails(event: object, payload: bytes) -> None:
                raise RuntimeError("a listener that fails")

            gw.pipeline.stored_listeners.append(
                lambda event, payload: told.append((event.id, payload))
            )
            gw.pipeline.stored_listeners.insert(0, fails)
            read = PlateEvent(camera="c", source=Source.TCP, plate="LIS 1", received=utc_now())
            other = CameraEvent(
                camera="c", source=Source.HTTP, kind="Line Crossing", received=utc_now()
            )
            assert await gw.submit(read) is Admission.ACCEPTED
            assert await gw.submit(other) is Admission.ACCEPTED
            published = await sub.until_count("lpr/c/event", 1)
            camera_event = await sub.until_count("lpr/c/camera_event/line_crossing", 1)
    assert told == [(read.id, published[0].payload), (other.id, camera_event[0].payload)]


async def test_large_pictures_are_hashed_beside_the_loop_and_published_filled_in(
    mqtt_broker: MosquittoProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A large picture's SHA-256 is left as a placeholder when the event JSON is
    # rendered on the loop, and filled in on the outbox's thread before it is
    # stored: what is published, stored and told to listeners is the real one.
    hashed_on: list[tuple[int, int]] = []  # (thread, bytes)

    class RecordingHashlib:
        @staticmethod
        def sha256(data: bytes) -> Any:
            hashed_on.append((threading.get_ident(), len(data)))
            return hashlib.sha256(data)

    monkeypatch.setattr(pipeline_module, "hashlib", RecordingHashlib)
    plate, scene = plate_jpeg(), scene_jpeg()
    look_alike = pipeline_module._PLACEHOLDER_NONCE[:15] + "0" * 49  # what a camera could send
    config = gateway_config(mqtt_broker.url, tmp_path)
    told: list[bytes] = []
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/#",)) as sub:
        async with Gateway(config) as gw:
            assert gw.pipeline is not None
            gw.pipeline.stored_listeners.append(lambda _event, payload: told.append(payload))
            read = PlateEvent(
                camera="c",
                source=Source.TCP,
                plate="BIG 1",
                received=utc_now(),
                plate_image=Image(plate),
                scene_image=Image(scene),
                raw={"note": look_alike},
            )
            counted = CameraEvent(
                camera="c",
                source=Source.TCP,
                kind="counting",
                received=utc_now(),
                images={"snapshot": Image(scene)},
            )
            assert await gw.submit(read) is Admission.ACCEPTED
            assert await gw.submit(counted) is Admission.ACCEPTED
            (published,) = await sub.until_count("lpr/c/event", 1)
            (last,) = await sub.until_count("lpr/c/last", 1)
            (camera_event,) = await sub.until_count("lpr/c/camera_event/counting", 1)
    loop_thread = threading.get_ident()
    event = published.json()
    assert event["images"]["plate"]["sha256"] == hashlib.sha256(plate).hexdigest()
    assert event["images"]["scene"]["sha256"] == hashlib.sha256(scene).hexdigest()
    assert event["raw"] == {"note": look_alike}
    assert last.payload == published.payload
    snapshot = camera_event.json()["data"]["snapshot"]
    assert snapshot["sha256"] == hashlib.sha256(scene).hexdigest()
    assert told == [published.payload, camera_event.payload]
    # The scene (twice) off the loop; the small plate crop on it, where it is rendered.
    assert sorted(size for thread, size in hashed_on if thread != loop_thread) == [
        len(scene),
        len(scene),
    ]
    assert [size for thread, size in hashed_on if thread == loop_thread] == [len(plate)]


async def test_a_camera_whose_event_kinds_never_repeat_cannot_pile_up_retained_pictures(
    mqtt_broker: MosquittoProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the bound, a camera event's picture on a new topic still goes out,
    not retained, counted; the bound counts the topics kept from before a restart."""
    monkeypatch.setattr(pipeline_module, "MAX_EVENT_PICTURE_TOPICS", 3)
    config = gateway_config(mqtt_broker.url, tmp_path, [{"id": "c", "protocol": "http"}])

    def event(kind: str) -> CameraEvent:
        picture = Image(b"\xff\xd8" + kind.encode())
        return CameraEvent(
            camera="c", source=Source.HTTP, kind=kind, received=utc_now(), images={"snap": picture}
        )

    def not_retained(gw: Gateway) -> float:
        return sample(gw.metrics, "lpr_event_pictures_not_retained_total", camera="c")

    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/c/image/#",)) as live:
        async with Gateway(config) as gw:
            for kind in ("k0", "k1", "k2", "k3", "k4", "k0"):
                assert await gw.submit(event(kind)) is Admission.ACCEPTED
            await live.until(lambda msgs: len(msgs) >= 6)
            assert not_retained(gw) == 2
        async with Gateway(config) as gw:
            assert await gw.submit(event("k5")) is Admission.ACCEPTED
            await live.until(lambda msgs: any(m.topic == "lpr/c/image/k5" for m in msgs))
            assert not_retained(gw) == 1  # the three kept from before fill the bound
    # Every picture went out, byte for byte (the restart re-sent the three kept).
    sent = [m.payload[2:] for m in live.messages]
    assert sent[:6] == [b"k0", b"k1", b"k2", b"k3", b"k4", b"k0"]
    assert sent[-1] == b"k5"
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/c/image/#",)) as late:
        await late.until(lambda msgs: len(msgs) >= 3)
        await asyncio.sleep(0.3)  # the broker sends what it retains at once
    assert sorted(m.topic for m in late.messages if m.retain) == [
        "lpr/c/image/k0",
        "lpr/c/image/k1",
        "lpr/c/image/k2",
    ]
