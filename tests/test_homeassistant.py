"""Home Assistant discovery against the real mosquitto: structure, retain, birth, removal."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import __version__
from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.config import Config
from gateway.event import Image, PlateEvent, Source, utc_now
from gateway.homeassistant import (
    BRIDGE_ENTITIES,
    CAMERA_ENTITIES,
    EVENT_TYPES,
    ha_event_type,
    state_file_path,
)
from gateway.pipeline import Admission
from tests.helpers import MqttCollector, Received, gateway_config, publish_once

NODE = "lprtest"
PREFIX = "homeassistant"


def config_for(
    broker: MosquittoProcess, tmp_path: Path, cameras: list[dict[str, Any]], **sections: Any
) -> Config:
    return gateway_config(
        broker.url,
        tmp_path,
        cameras=cameras,
        homeassistant={"enabled": True, "node_id": NODE},
        **sections,
    )


def topic(component: str, object_id: str) -> str:
    return f"{PREFIX}/{component}/{NODE}/{object_id}/config"


def camera_topics(camera: str) -> set[str]:
    return {topic(component, f"{camera}_{key}") for component, key in CAMERA_ENTITIES}


BRIDGE_TOPIC = topic("binary_sensor", "bridge")
BRIDGE_TOPICS = {topic(component, key) for component, key in BRIDGE_ENTITIES}


async def until_connected(gw: Gateway, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while gw.publisher is None or not gw.publisher.connected:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


def retained_configs(broker: MosquittoProcess, expect: set[str]) -> dict[str, Received]:
    """Discovery as a subscriber connecting now (Home Assistant starting) sees it."""
    with MqttCollector(broker.host, broker.port, topics=(f"{PREFIX}/#",)) as late:
        late.wait_for(lambda msgs: {m.topic for m in msgs} >= expect, timeout=10)
        time.sleep(0.2)  # anything else retained arrives with the same burst
        return {m.topic: m for m in late.messages if m.retain and m.payload}


async def publish(
    broker: MosquittoProcess, topic: str, payload: bytes, retain: bool = False
) -> None:
    """As Home Assistant (or another client) would, off the loop the gateway runs on."""
    await asyncio.to_thread(publish_once, broker.host, broker.port, topic, payload, retain=retain)


async def test_discovery_structure_and_retain(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    cameras: list[dict[str, Any]] = [
        {"id": "gate", "name": "Gate", "protocol": "http"},
        {"id": "yard", "protocol": "http", "images": {"scene": "skip"}},
    ]
    async with Gateway(config_for(mqtt_broker, tmp_path, cameras)) as gw:
        await until_connected(gw)
        expect = camera_topics("gate") | camera_topics("yard") | BRIDGE_TOPICS
        expect.discard(topic("image", "yard_scene_image"))  # scene skipped: not announced
        configs = await asyncio.to_thread(retained_configs, mqtt_broker, expect)
    assert set(configs) == expect
    docs = {t: m.json() for t, m in configs.items()}
    assert all(m.retain for m in configs.values())
    unique_ids = [d["unique_id"] for d in docs.values() if "unique_id" in d]
    assert len(unique_ids) == len(set(unique_ids))
    for config_topic, doc in docs.items():
        component = config_topic.split("/")[1]
        assert doc["origin"]["name"] == "lpr-gateway"
        if component == "device_automation":  # no entity: no ids (see the gate tests)
            continue
        assert doc["origin"]["sw_version"] == __version__
        assert doc["origin"]["support_url"].startswith("https://")
        assert doc["default_entity_id"] == f"{component}.{doc['object_id']}"
        assert doc["object_id"] == f"{NODE}_{config_topic.split('/')[3]}"

    bridge = docs[BRIDGE_TOPIC]
    assert bridge["device"]["identifiers"] == [NODE]
    assert bridge["state_topic"] == "lpr/bridge/state"
    assert bridge["device_class"] == "connectivity"
    assert "availability" not in bridge  # it must be able to say "off"

    availability = [{"topic": "lpr/bridge/state"}, {"topic": "lpr/gate/availability"}]
    event = docs[topic("event", "gate_read")]
    assert event["event_types"] == list(EVENT_TYPES)
    assert event["state_topic"] == "lpr/gate/ha_event"
    sensor = docs[topic("sensor", "gate_plate")]
    assert sensor["state_topic"] == sensor["json_attributes_topic"] == "lpr/gate/last"
    assert sensor["force_update"] is True
    assert sensor["value_template"] == "{{ value_json.plate }}"
    for key in ("plate_image", "scene_image"):
        image = docs[topic("image", f"gate_{key}")]
        assert image["content_type"] == "image/jpeg"
        assert image["image_topic"] == f"lpr/gate/image/{key.split('_')[0]}"
    for doc in (event, sensor, docs[topic("image", "gate_plate_image")]):
        assert doc["availability"] == availability
        assert doc["availability_mode"] == "all"
        assert doc["device"] == {
            "identifiers": [f"{NODE}_gate"],
            "name": "Gate",
            "manufacturer": "Milesight",
            "model": "LPR camera (http)",
            "via_device": NODE,
        }
    connection = docs[topic("binary_sensor", "gate_connection")]
    assert connection["state_topic"] == "lpr/gate/availability"
    assert connection["availability"] == [{"topic": "lpr/bridge/state"}]
    assert connection["device_class"] == "connectivity"


async def test_ha_event_per_read_even_for_the_same_plate(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = config_for(
        mqtt_broker,
        tmp_path,
        [{"id": "gate", "protocol": "http"}],
        known_plates={"Alice": ["AB1234"]},
    )
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/gate/#",)) as sub:
        async with Gateway(config) as gw:
            for plate in ("AB1234", "AB1234", "ZZ9999"):
                event = PlateEvent(
                    camera="gate",
                    source=Source.INJECT,
                    plate=plate,
                    received=utc_now(),
                    plate_image=Image(b"\xff\xd8jpeg"),
                )
                assert await gw.submit(event) is Admission.ACCEPTED
            ha_events = await sub.until_count("lpr/gate/ha_event", 3)
    docs = [m.json() for m in ha_events]
    assert [(d["event_type"], d["plate"], d["known"]) for d in docs] == [
        ("known_plate", "AB1234", "Alice"),
        ("known_plate", "AB1234", "Alice"),
        ("unknown_plate", "ZZ9999", None),
    ]
    assert not any(m.retain for m in ha_events)
    assert all("image" not in json.dumps(d) for d in docs)  # no blobs, not even references
    # The HA event comes after the images and `last` of its read.
    read_topics = ("lpr/gate/image/plate", "lpr/gate/last", "lpr/gate/ha_event")
    order = [m.topic for m in sub.messages if m.topic in read_topics]
    assert order[:3] == list(read_topics)


def test_ha_event_type() -> None:
    read = PlateEvent(camera="c", source=Source.INJECT, plate="A", received=utc_now())
    assert ha_event_type(read, known_plates_configured=False) == "plate_read"
    assert ha_event_type(read, known_plates_configured=True) == "unknown_plate"
    known = read.with_enrichment("Alice", "exact")
    assert ha_event_type(known, known_plates_configured=True) == "known_plate"


async def test_no_ha_event_without_homeassistant(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path)
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/#", f"{PREFIX}/#")) as sub:
        async with Gateway(config) as gw:
            read = PlateEvent(camera="c", source=Source.INJECT, plate="AB1", received=utc_now())
            await gw.submit(read)
            await sub.until_count("lpr/c/last", 1)
    assert not [m for m in sub.messages if m.topic.endswith("/ha_event")]
    assert not [m for m in sub.messages if m.topic.startswith(f"{PREFIX}/")]


async def test_republished_when_home_assistant_comes_online(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = config_for(mqtt_broker, tmp_path, [{"id": "gate", "protocol": "http"}])
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=(f"{PREFIX}/#",)) as sub:
        async with Gateway(config) as gw:
            await sub.until_count(BRIDGE_TOPIC, 1)
            await until_connected(gw)
            assert gw.discovery is not None
            rounds = gw.discovery.published_count
            # A retained "online" (left over on the broker) is not a birth: ignored.
            await publish(mqtt_broker, f"{PREFIX}/status", b"online", retain=True)
            await publish(mqtt_broker, f"{PREFIX}/status", b"offline")
            await asyncio.sleep(0.3)
            assert gw.discovery.published_count == rounds
            # Home Assistant's birth message.
            await publish(mqtt_broker, f"{PREFIX}/status", b"online")
            await sub.until_count(BRIDGE_TOPIC, 2)
            await sub.until_count(topic("event", "gate_read"), 2)
            assert gw.discovery.published_count == rounds + 1
            # Also after every reconnect (a broker restart).
            await asyncio.to_thread(mqtt_broker.stop)
            await asyncio.to_thread(mqtt_broker.start)
            await sub.until_count(BRIDGE_TOPIC, 3, timeout=15)
            # clear the retained birth left on the broker for the next test run
            await publish(mqtt_broker, f"{PREFIX}/status", b"", retain=True)


async def test_dropped_camera_is_removed_on_next_start(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    both = [{"id": "gate", "protocol": "http"}, {"id": "yard", "protocol": "http"}]
    async with Gateway(config_for(mqtt_broker, tmp_path, both)) as gw:
        await until_connected(gw)
        every = camera_topics("gate") | camera_topics("yard") | BRIDGE_TOPICS
        await asyncio.to_thread(retained_configs, mqtt_broker, every)
    state = json.loads(state_file_path(gw.config).read_text())
    assert state["cameras"] == ["gate", "yard"]

    only_gate = config_for(mqtt_broker, tmp_path, both[:1])
    assert state_file_path(only_gate) == state_file_path(gw.config)  # next to the same outbox
    async with Gateway(only_gate) as gw2:
        await until_connected(gw2)
        expect = camera_topics("gate") | BRIDGE_TOPICS
        configs = await asyncio.to_thread(retained_configs, mqtt_broker, expect)
    assert set(configs) == expect  # yard's configs are gone (empty retained payloads)
    assert json.loads(state_file_path(only_gate).read_text())["cameras"] == ["gate"]


async def test_device_id_learned_from_reads(mqtt_broker: MosquittoProcess, tmp_path: Path) -> None:
    config = config_for(mqtt_broker, tmp_path, [{"id": "gate", "protocol": "http"}])
    sensor_topic = topic("sensor", "gate_plate")
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=(f"{PREFIX}/#",)) as sub:
        async with Gateway(config) as gw:
            await sub.until_count(sensor_topic, 1)
            read = PlateEvent(
                camera="gate",
                source=Source.INJECT,
                plate="AB1234",
                received=utc_now(),
                device_id="bb12f904-94ce-4065-89af-e83cd88f70be",
            )
            await gw.submit(read)
            await gw.submit(read.with_enrichment(None, None))  # same id again: nothing new
            announced = await sub.until_count(sensor_topic, 2)
            await asyncio.sleep(0.2)
    assert len(sub.on(sensor_topic)) == 2
    assert "serial_number" not in announced[0].json()["device"]
    assert announced[1].json()["device"]["serial_number"] == read.device_id
    saved = json.loads(state_file_path(config).read_text())
    assert saved["device_ids"] == {"gate": read.device_id}


@pytest.mark.parametrize("node_id", ["bad node", "a/b"])
def test_node_id_is_checked(node_id: str) -> None:
    from gateway.config import parse_config
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config(f"homeassistant: {{node_id: '{node_id}'}}", {})
    assert caught.value.problems[0].startswith("homeassistant.node_id:")


async def test_evidence_image_entities_only_once_a_camera_sent_one_and_after_a_restart(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    cameras: list[dict[str, Any]] = [
        {"id": "gate", "protocol": "http"},
        {"id": "yard", "protocol": "http"},
    ]
    config = config_for(mqtt_broker, tmp_path, cameras)
    evidence1 = topic("image", "gate_evidence1_image")
    evidence0 = topic("image", "gate_evidence0_image")
    base = camera_topics("gate") | camera_topics("yard") | BRIDGE_TOPICS
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=(f"{PREFIX}/#",)) as sub:
        async with Gateway(config) as gw:
            await sub.until(lambda msgs: {m.topic for m in msgs} >= base)
            assert not sub.on(evidence0) and not sub.on(evidence1)
            plain = PlateEvent(camera="gate", source=Source.INJECT, plate="A1", received=utc_now())
            assert await gw.submit(plain) is Admission.ACCEPTED
            with_evidence = PlateEvent(
                camera="gate",
                source=Source.INJECT,
                plate="B2",
                received=utc_now(),
                evidence1_image=Image(b"\xff\xd8 evidence"),
                evidence0_image=Image.missing("invalid base64"),  # no picture: no entity
            )
            assert await gw.submit(with_evidence) is Admission.ACCEPTED
            announced = await sub.until_count(evidence1, 1)
            await asyncio.sleep(0.2)
    assert len(sub.on(evidence1)) == 1
    assert not sub.on(evidence0)
    doc = announced[0].json()
    assert doc["image_topic"] == "lpr/gate/image/evidence1"
    assert doc["content_type"] == "image/jpeg"
    assert doc["name"] == "Evidence image 1"
    assert json.loads(state_file_path(config).read_text())["evidence"] == {"gate": ["evidence1"]}

    # A restart announces it at once (the broker may have lost it), still only for gate.
    await publish(mqtt_broker, evidence1, b"", retain=True)
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=(f"{PREFIX}/#",)) as again:
        async with Gateway(config_for(mqtt_broker, tmp_path, cameras)):
            configs = await again.until(lambda msgs: any(m.topic == evidence1 for m in msgs))
    assert [m.topic for m in configs if "evidence" in m.topic] == [evidence1]
