"""Scene description (ONVIF Profile M) end to end: simulated camera → gateway → real
mosquitto → subscriber. One read per object, with its best plate and its picture;
one read per vehicle when the camera also sends a plate notification.

Real sockets on 127.0.0.1, the project's RTSP camera simulator (`profile_m`),
the real broker fixture and `Gateway`: nothing mocked.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.codecs import onvif
from gateway.event import format_time
from gateway.simulate.common import plate_jpeg
from gateway.simulate.rtsp import RtspCameraSimulator
from tests.adapters.test_rtsp import (
    AVAILABILITY,
    CAMERA,
    EVENT_TOPIC,
    PLATE_TOPIC,
    camera_entry,
    gst_rtsp_server,
    gstreamer,  # noqa: F401 (a fixture)
    metric,
    running,
    simulator,
    wait_playing,
)
from tests.helpers import MqttCollector, Received, eventually

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


def scene_camera(sim: RtspCameraSimulator, **overrides: Any) -> dict[str, Any]:
    # A short absence ends an object: the test need not wait a second per vehicle.
    return camera_entry(sim, **{"track_end_seconds": 0.3, **overrides})


def tracks_finished(gw: Gateway) -> float:
    return sum(
        metric(gw, "lpr_scene_tracks_total", camera=CAMERA, end=end)
        for end in ("absent", "deleted", "max_age", "evicted", "session_end")
    )


def events(messages: list[Received]) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic == EVENT_TOPIC]


async def barrier(sim: RtspCameraSimulator, collector: MqttCollector, count: int) -> None:
    """A plate notification after everything else: reads are published in camera
    order, so once it is out, every earlier read is out too."""
    (marker,) = sim.push(1)
    await collector.until(lambda msgs: any(e["plate"] == marker.plate for e in events(msgs)))
    assert len(events(collector.messages)) == count + 1


async def test_one_read_per_scene_object_with_its_best_plate_and_picture(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with (
            simulator(profile_m=True, motion_every=0) as sim,
            running(mqtt_broker, tmp_path, [scene_camera(sim)]) as gw,
        ):
            await wait_playing(sim)
            # Three vehicles, in the scene together, six frames each at 20 fps.
            vehicles = await sim.drive_scene(vehicles=3, frames=6, interval=0.05)
            await eventually(lambda: tracks_finished(gw) == 3, what="three objects finished")
            await barrier(sim, collector, 3)
            ends = {
                end: metric(gw, "lpr_scene_tracks_total", camera=CAMERA, end=end)
                for end in ("absent", "deleted")
            }
            fetch_failures = metric(
                gw, "lpr_image_fetch_failures_total", camera=CAMERA, reason="foreign_host"
            )
    published = events(collector.messages)[:3]
    assert sorted(e["raw"]["object_id"] for e in published) == sorted(
        str(v.object_id) for v in vehicles
    )
    by_object = {e["raw"]["object_id"]: e for e in published}
    for vehicle in vehicles:
        event = by_object[str(vehicle.object_id)]
        # The best reading: the last, most likely one (the first frames misread the plate).
        assert event["plate"] == vehicle.plate
        assert event["confidence"] == vehicle.likelihood
        assert event["time"] == format_time(vehicle.time)
        assert event["raw"]["readings"] == vehicle.frames
        assert event["raw"]["track_end"] == (
            "deleted" if vehicle.ended_by == "delete" else "absent"
        )
        assert event["vehicle"]["type"] == "car" and event["vehicle"]["brand"] == "Hyundai"
        # Its crop: inline or fetched from the ImageRef, byte for byte.
        image = event["images"]["plate"]
        assert image["sha256"] == hashlib.sha256(vehicle.picture).hexdigest()
        assert image["bytes"] == len(vehicle.picture)
        assert (event["raw"].get("image_ref") is not None) == (vehicle.picture_ref is not None)
    # The retained crops are the pictures, in the order the reads were published.
    crops = [m.payload for m in collector.on(PLATE_TOPIC)][:3]
    pictures = {hashlib.sha256(v.picture).hexdigest(): v.picture for v in vehicles}
    assert crops == [pictures[e["images"]["plate"]["sha256"]] for e in published]
    assert ends == {"absent": 2, "deleted": 1}
    assert fetch_failures == 0


async def test_a_notification_and_a_scene_object_of_one_vehicle_are_one_read(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with (
            simulator(motion_every=0) as sim,
            running(mqtt_broker, tmp_path, [scene_camera(sim)]) as gw,
        ):
            await wait_playing(sim)
            plate = "12가3456"
            crop = plate_jpeg()

            def scene(likelihood: float, *, deleted: bool = False) -> bytes:
                obj = onvif.SceneObjectSpec(
                    5,
                    [(plate, likelihood)],
                    country_code="KR",
                    vehicle=("Truck", "Hyundai", None),
                    image=crop,
                )
                moment = datetime.now(UTC)
                return onvif.build_scene_document(
                    [
                        onvif.SceneFrameSpec(
                            moment, [] if deleted else [obj], deleted=[5] if deleted else []
                        )
                    ]
                )

            sim.push_document(scene(0.7))
            sim.push_document(scene(0.9))
            (notification,) = sim.push(1, plate=plate)  # the camera's own plate notification
            sim.push_document(scene(0.95))
            sim.push_document(scene(0.0, deleted=True))
            await eventually(lambda: tracks_finished(gw) == 1, what="the object finished")
            await barrier(sim, collector, 1)
            merged = metric(gw, "lpr_scene_reads_merged_total", camera=CAMERA)
    first = events(collector.messages)[0]
    assert [e["plate"] for e in events(collector.messages)].count(plate) == 1
    # The notification's read (its picture, speed and topic) ...
    assert first["raw"]["topic"].endswith("LicensePlateDetector/LicensePlate")
    assert first["speed_kmh"] == notification.speed_kmh
    assert first["images"]["plate"]["sha256"] == hashlib.sha256(notification.picture).hexdigest()
    # ... with what the scene object adds.
    assert first["vehicle"]["type"] == "truck" and first["region"] == "KR"
    assert first["confidence"] == 0.9  # the object's best reading when the notification came
    assert first["raw"]["scene"]["object_id"] == "5"
    assert merged == 1


async def test_an_image_ref_on_another_host_is_not_fetched(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with (
            simulator(motion_every=0) as sim,
            running(mqtt_broker, tmp_path, [scene_camera(sim)]) as gw,
        ):
            await wait_playing(sim)
            moment = datetime.now(UTC)
            foreign = onvif.SceneObjectSpec(
                1, [("FOREIGN1", 0.9)], image_ref="http://198.51.100.7/plate.jpg"
            )
            sim.push_document(onvif.build_scene_document([onvif.SceneFrameSpec(moment, [foreign])]))
            sim.push_document(
                onvif.build_scene_document([onvif.SceneFrameSpec(moment, deleted=[1])])
            )
            (event,) = await collector.until_count(EVENT_TOPIC, 1)
            failures = metric(
                gw, "lpr_image_fetch_failures_total", camera=CAMERA, reason="foreign_host"
            )
    document = event.json()
    assert document["plate"] == "FOREIGN1"
    image = document["images"]["plate"]
    assert image["missing"] is True and "198.51.100.7" in image["reason"]
    assert sim.stats.picture_requests == 0
    assert failures == 1


async def test_objects_beyond_the_bound_are_published_early_and_counted(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with (
            simulator(motion_every=0) as sim,
            running(
                mqtt_broker,
                tmp_path,
                [scene_camera(sim, track_max_objects=2, track_end_seconds=30)],
            ) as gw,
        ):
            await wait_playing(sim)
            moment = datetime.now(UTC)
            objects = [onvif.SceneObjectSpec(i, [(f"BOUND{i}", 0.8)]) for i in range(1, 5)]
            sim.push_document(onvif.build_scene_document([onvif.SceneFrameSpec(moment, objects)]))
            published = await collector.until_count(EVENT_TOPIC, 2)
            evicted = metric(gw, "lpr_scene_tracks_total", camera=CAMERA, end="evicted")
    assert [e.json()["plate"] for e in published] == ["BOUND1", "BOUND2"]
    assert evicted == 2


# -- interoperability: a scene description through GStreamer's RTSP server -------------


def session_state(gw: Gateway, collector: MqttCollector) -> str:
    """What the camera session did, for a failure message."""
    counters = {
        name: metric(gw, name, camera=CAMERA)
        for name in (
            "lpr_camera_connected",
            "lpr_camera_reconnects_total",
            "lpr_camera_frames_total",
            "lpr_camera_bytes_received_total",
            "lpr_camera_auth_failures_total",
        )
    }
    errors = {
        sample.labels["kind"]: sample.value
        for family in gw.metrics.registry.collect()
        if family.name == "lpr_camera_parse_errors"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("camera") == CAMERA
    }
    availability = [m.payload.decode() for m in collector.messages if m.topic == AVAILABILITY]
    return f"availability {availability}, {counters}, parse errors {errors}"


@pytest.mark.slow
@pytest.mark.usefixtures("gstreamer")
async def test_interop_gstreamer_serves_a_scene_description(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    # gst-rtsp-server repeats one document every 0.3 s: one object that never
    # leaves. It is published once, at track_max_seconds, and not again.
    crop = plate_jpeg()
    obj = onvif.SceneObjectSpec(
        31, [("GST1234", 0.88)], country_code="NL", vehicle=("Car", None, None), image=crop
    )
    document = onvif.build_scene_document([onvif.SceneFrameSpec(datetime.now(UTC), [obj])])
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with gst_rtsp_server(document, tmp_path) as url:
            entry = {
                "id": CAMERA,
                "protocol": "rtsp",
                "url": url,
                "username": "admin",
                "password": "secret",
                "track_max_seconds": 1.0,
            }
            async with running(mqtt_broker, tmp_path, [entry]) as gw:
                try:
                    # Once (of many CI runs, 2026-12-03) no read came in 20 s
                    # with the session online; not reproduced since, under load
                    # or not. A failure now says what the session did.
                    (event,) = await collector.until_count(EVENT_TOPIC, 1, timeout=40)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; {session_state(gw, collector)}") from None
                frames_then = metric(gw, "lpr_camera_frames_total", camera=CAMERA)
                # Five more documents with the same object: none is a new read.
                await eventually(
                    lambda: metric(gw, "lpr_camera_frames_total", camera=CAMERA) >= frames_then + 5,
                    timeout=20,
                    what="five more documents",
                )
                received = metric(gw, "lpr_events_received_total", camera=CAMERA, source="rtsp")
                max_age = metric(gw, "lpr_scene_tracks_total", camera=CAMERA, end="max_age")
    document_json = event.json()
    assert document_json["plate"] == "GST1234" and document_json["confidence"] == 0.88
    assert document_json["raw"]["track_end"] == "max_age"
    assert document_json["images"]["plate"]["sha256"] == hashlib.sha256(crop).hexdigest()
    assert collector.on(EVENT_TOPIC) == [event]
    assert received == 1 and max_age == 1
