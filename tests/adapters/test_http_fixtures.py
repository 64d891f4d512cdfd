"""The field-shaped fixtures (tests/fixtures/http/) end to end: the HTTP camera
simulator posts each body to a real gateway, a real mosquitto carries what it
publishes, and a subscriber checks it against the golden event JSON, every
picture byte-exact on its retained topic, published before the event naming it.

Also cameras sharing one URL path, told apart by the `device` field they send.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.simulate.http import HttpCameraSimulator, SentRequest
from tests.adapters.test_http import _wait_listening
from tests.codecs.test_http_fixtures import FIXTURES, NAMES, body_path, golden
from tests.helpers import MqttCollector, gateway_config, sample

USER, PASSWORD = "cam", "s3cret"
CAMERA = {
    "id": "gate",
    "protocol": "http",
    "path": "/lpr/gate",
    "username": USER,
    "password": PASSWORD,
    "timezone": "Europe/Berlin",
}
# What differs between a golden file and what is published: the event's own.
PER_EVENT = ("id", "received")


async def send(camera: HttpCameraSimulator, name: str) -> SentRequest:
    path = body_path(name)
    if path.suffix == ".query":
        return await camera.get_query(path.read_text(encoding="utf-8").strip(), kind=name)
    return await camera.post_body(path.read_bytes(), kind=name)


def event_topic(document: dict[str, Any]) -> str:
    if "kind" in document:
        return f"lpr/{document['camera']}/camera_event/{document['kind']}"
    return f"lpr/{document['camera']}/event"


def references(document: dict[str, Any]) -> list[dict[str, Any]]:
    images = document.get("images") or {}
    data = document.get("data") or {}
    return [
        value
        for value in [*images.values(), *data.values()]
        if isinstance(value, dict) and "sha256" in value
    ]


def without(document: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in keys}


@pytest.mark.broker
async def test_every_fixture_end_to_end(mqtt_broker: MosquittoProcess, tmp_path: Path) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=[CAMERA])
    url = f"http://{config.http.listen}/lpr/gate"
    expected = {name: golden(name) for name in NAMES}
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
        async with (
            Gateway(config),
            HttpCameraSimulator(url, user=USER, password=PASSWORD) as camera,
        ):
            await _wait_listening(config.http.port)
            for name in NAMES:
                topic = event_topic(expected[name])
                before = len(sub.on(topic))
                sent = await send(camera, name)
                assert sent.status == 200, (name, sent.reply)
                published = await sub.until_count(topic, before + 1)
                got = published[-1].json()
                assert without(got, PER_EVENT) == without(expected[name], PER_EVENT), name
                assert got["id"] == sent.reply["id"]
    messages = sub.messages
    for name in NAMES:
        document = expected[name]
        at = next(
            i
            for i, m in enumerate(messages)
            if m.topic == event_topic(document) and m.json()["time"] == document["time"]
        )
        for reference in references(document):
            pictures = [(i, m) for i, m in enumerate(messages) if m.topic == reference["topic"]]
            assert len(pictures) == 1, reference["topic"]
            index, picture = pictures[0]
            assert index < at, f"{reference['topic']} after the event naming it"
            assert hashlib.sha256(picture.payload).hexdigest() == reference["sha256"]
            assert len(picture.payload) == reference["bytes"]
            assert picture.qos == 1
        # No image data in any JSON the gateway published.
        assert b"base64" not in messages[at].payload

    # Retained: a subscriber arriving now gets every picture of the latest events.
    wanted = {r["topic"]: r["sha256"] for d in expected.values() for r in references(d)}
    assert len(wanted) == 7  # plate, scene, evidence0/1, and 3 camera events' pictures
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/gate/image/#",)) as late:
        retained = late.wait_for(lambda msgs: {m.topic for m in msgs} >= set(wanted))
    assert all(m.retain for m in retained)
    assert {m.topic: hashlib.sha256(m.payload).hexdigest() for m in retained} == wanted


NORTH = {"id": "north", "protocol": "http", "match": {"device": "Gate North"}}
SOUTH = {"id": "south", "protocol": "http", "match": {"device": "gate south "}}


def recognition_from(device: str) -> bytes:
    document = json.loads((FIXTURES / "recognition.body.json").read_bytes())
    document["device"] = device
    return json.dumps(document).encode()


@pytest.mark.broker
async def test_cameras_sharing_one_url_by_device(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    cameras = [
        {**NORTH, "username": "north", "password": "n-pass", "timezone": "Europe/Berlin"},
        {**SOUTH, "username": "south", "password": "s-pass"},
    ]
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=cameras)
    url = f"http://{config.http.listen}/lpr"  # the default path of cameras with match
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
        async with (
            Gateway(config) as gw,
            HttpCameraSimulator(url, user="north", password="n-pass") as north,
            HttpCameraSimulator(url, user="south", password="s-pass") as south,
        ):
            await _wait_listening(config.http.port)
            assert (await north.post_body(recognition_from("Gate North"))).status == 200
            assert (await south.post_body(recognition_from("Gate South"))).status == 200
            # North's password with South's device: South's wrong password.
            assert (await north.post_body(recognition_from("Gate South"))).status == 401
            # A device no camera there has: the same reply, counted as unmatched.
            stranger = await north.post_body(recognition_from("Gate East"))
            assert stranger.status == 401
            assert stranger.reply == {"error": "unauthorized"}
            # No credentials at all: refused before the body is read.
            async with HttpCameraSimulator(url) as anonymous:
                assert (await anonymous.post_body(recognition_from("Gate North"))).status == 401
            north_events = await sub.until_count("lpr/north/event", 1)
            south_events = await sub.until_count("lpr/south/event", 1)
            unmatched = sample(gw.metrics, "lpr_http_unmatched_requests_total", path="/lpr")
            south_refused = sample(gw.metrics, "lpr_camera_auth_failures_total", camera="south")
    assert unmatched == 2  # Gate East, and the request without credentials
    assert south_refused == 1
    assert north_events[0].json()["time"] == "2023-09-15T04:19:57.267Z"  # north's Berlin time
    assert south_events[0].json()["time"] == "2023-09-15T06:19:57.267Z"  # south's UTC
    assert [
        m.topic for m in sub.messages if m.topic.endswith("/event") and "/bridge/" not in m.topic
    ] == [
        "lpr/north/event",
        "lpr/south/event",
    ]
    north_images = [m for m in sub.messages if m.topic.startswith("lpr/north/image/")]
    assert [m.topic.rsplit("/", 1)[1] for m in north_images] == [
        "plate",
        "scene",
        "evidence0",
        "evidence1",
    ]
