"""Home Assistant entities for gates, against a real mosquitto and a real gateway:
device triggers, "Known vehicle present", "Last seen", the "Enabled" switch and
the "Republish discovery" button (see `gateway/homeassistant.py`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway import homeassistant, pipeline
from gateway.adapters.base import CameraSwitches, ReconnectPolicy
from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.config import Config
from gateway.event import Image, ListMembership, PlateEvent, Source, utc_now
from gateway.homeassistant import TRIGGER_BLACK_LIST, TRIGGER_KNOWN, TRIGGER_UNKNOWN, name_keys
from gateway.known_plates import KnownPlatesRegistry, RuntimeEntry
from gateway.pipeline import Admission, render_messages
from gateway.simulate.tcp import TcpCameraSimulator
from gateway.topics import Topics
from tests.helpers import (
    MqttCollector,
    eventually,
    gateway_config,
    http_camera_entry,
    sample,
    tcp_simulator_entry,
)
from tests.test_bridge_api import Requester, _post

pytestmark = pytest.mark.broker

NODE = "lprtest"
PREFIX = "homeassistant"
FAST_RETRIES = ReconnectPolicy(initial_seconds=0.05, max_seconds=0.2, auth_retry_seconds=0.2)
TOPICS = ("lpr/#", f"{PREFIX}/#")


def topic(component: str, object_id: str) -> str:
    return f"{PREFIX}/{component}/{NODE}/{object_id}/config"


def config_for(
    broker: MosquittoProcess,
    tmp_path: Path,
    cameras: list[dict[str, Any]],
    hold: float = 30.0,
    **sections: Any,
) -> Config:
    return gateway_config(
        broker.url,
        tmp_path,
        cameras=cameras,
        homeassistant={"enabled": True, "node_id": NODE, "presence_hold_seconds": hold},
        **sections,
    )


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Gateway]:
    async with Gateway(config, reconnect_policy=FAST_RETRIES) as gw:
        await eventually(lambda: gw.publisher is not None and gw.publisher.connected)
        yield gw


def read(camera: str, plate: str, membership: ListMembership | None = None) -> PlateEvent:
    return PlateEvent(
        camera=camera, source=Source.INJECT, plate=plate, received=utc_now(), list=membership
    )


def last_doc(sub: MqttCollector, config_topic: str) -> dict[str, Any] | None:
    """The config a subscriber has now on `config_topic` (None: removed or never sent)."""
    found = sub.on(config_topic)
    if not found or not found[-1].payload:
        return None
    document: dict[str, Any] = found[-1].json()
    return document


def stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_known_black_listed_read_renders_its_home_assistant_messages_in_order() -> None:
    event = read("gate", "B AB 1234", ListMembership.BLACK).with_enrichment("Staff", "exact")
    messages = render_messages(event, Topics("lpr"), ha_event="known_plate")
    assert [(m.topic, m.retain) for m in messages] == [
        ("lpr/gate/event", False),
        ("lpr/gate/last", True),
        ("lpr/gate/known/staff", False),
        ("lpr/gate/ha_event", False),
        ("lpr/gate/presence", True),
        ("lpr/bridge/last_seen/staff", True),
        ("lpr/gate/trigger/known/staff", False),
        ("lpr/gate/trigger/black_list", False),
    ]
    by_topic = {m.topic: m.payload for m in messages}
    small = by_topic["lpr/gate/ha_event"]
    assert by_topic["lpr/gate/trigger/known/staff"] == small  # one payload, rendered once
    presence = json.loads(by_topic["lpr/gate/presence"])
    assert presence == {
        "state": "on",
        "camera": "gate",
        "plate": "B AB 1234",
        "known": "Staff",
        "time": json.loads(by_topic["lpr/gate/event"])["received"],
    }
    last_seen = json.loads(by_topic["lpr/bridge/last_seen/staff"])
    assert last_seen == {
        "time": presence["time"],
        "known": "Staff",
        "camera": "gate",
        "plate": "B AB 1234",
    }
    unknown = render_messages(read("gate", "ZZ 9"), Topics("lpr"), ha_event="unknown_plate")
    assert [m.topic for m in unknown][-2:] == ["lpr/gate/ha_event", "lpr/gate/trigger/unknown"]
    # Without Home Assistant: none of it.
    plain = render_messages(event, Topics("lpr"))
    assert [m.topic for m in plain] == ["lpr/gate/event", "lpr/gate/last", "lpr/gate/known/staff"]


def test_names_that_share_a_slug_get_entities_of_their_own() -> None:
    keys = name_keys(["Staff", "staff", "Müller", "a.b"])
    assert keys["Staff"] == "staff"
    assert keys["staff"].startswith("staff_") and len(keys["staff"]) == len("staff_") + 8
    assert keys["Müller"] == "muller"
    assert keys["a.b"] == "a_b"  # a discovery object id has no dots


async def test_gate_discovery(mqtt_broker: MosquittoProcess, tmp_path: Path) -> None:
    cameras = [
        http_camera_entry("gate", "cam", "pw") | {"name": "Gate"},
        http_camera_entry("yard", "cam", "pw"),
    ]
    config = config_for(
        mqtt_broker, tmp_path, cameras, known_plates={"Staff": ["AB1234"], "Visitors": ["V*"]}
    )
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
        async with running(config) as gw:
            api = Requester(sub)
            # A runtime name scoped to one camera: a trigger at that camera only.
            await api.ok(
                "known_plates/add", {"name": "Vendor", "plates": ["VE 1"], "cameras": ["yard"]}
            )
            vendor = topic("sensor", "last_seen_vendor")
            await sub.until(lambda _: last_doc(sub, vendor) is not None)
            await sub.until(lambda _: bool(sub.on("lpr/gate/enabled")))
            assert gw.publisher is not None
            retained = gw.publisher.state.retained_copy

    gate_device = {
        "identifiers": [f"{NODE}_gate"],
        "name": "Gate",
        "manufacturer": "Milesight",
        "model": "LPR camera (http)",
        "via_device": NODE,
    }
    triggers = {
        "unknown_plate": (*TRIGGER_UNKNOWN, "lpr/gate/trigger/unknown"),
        "black_list_plate": (*TRIGGER_BLACK_LIST, "lpr/gate/trigger/black_list"),
        "known_staff": (TRIGGER_KNOWN, "Staff", "lpr/gate/trigger/known/staff"),
        "known_visitors": (TRIGGER_KNOWN, "Visitors", "lpr/gate/trigger/known/visitors"),
    }
    for key, (trigger_type, subtype, trigger_topic) in triggers.items():
        doc = last_doc(sub, topic("device_automation", f"gate_{key}"))
        assert doc is not None, key
        assert doc["automation_type"] == "trigger"
        assert (doc["type"], doc["subtype"], doc["topic"]) == (trigger_type, subtype, trigger_topic)
        assert doc["device"] == gate_device
    assert last_doc(sub, topic("device_automation", "gate_known_vendor")) is None
    yard_vendor = last_doc(sub, topic("device_automation", "yard_known_vendor"))
    assert yard_vendor is not None and yard_vendor["topic"] == "lpr/yard/trigger/known/vendor"

    camera_available = [{"topic": "lpr/bridge/state"}, {"topic": "lpr/gate/availability"}]
    presence = last_doc(sub, topic("binary_sensor", "gate_known_vehicle"))
    assert presence is not None
    assert presence["name"] == "Known vehicle present"
    assert presence["state_topic"] == presence["json_attributes_topic"] == "lpr/gate/presence"
    assert (presence["payload_on"], presence["payload_off"]) == ("on", "off")
    assert presence["value_template"] == "{{ value_json.state }}"
    assert "off_delay" not in presence  # the gateway times it (see Pipeline)
    assert presence["availability"] == camera_available
    assert presence["availability_mode"] == "all"

    switch = last_doc(sub, topic("switch", "gate_enabled"))
    assert switch is not None
    # Only the bridge: usable while the camera is off.
    assert switch["availability"] == [{"topic": "lpr/bridge/state"}]
    assert switch["command_topic"] == "lpr/bridge/request/camera/switch"
    assert json.loads(switch["payload_on"]) == {"id": "gate", "enabled": True}
    assert json.loads(switch["payload_off"]) == {"id": "gate", "enabled": False}
    assert switch["state_topic"] == "lpr/gate/enabled"
    assert (switch["state_on"], switch["state_off"]) == ("ON", "OFF")
    assert sub.on("lpr/gate/enabled")[-1].payload == b"ON"
    assert retained["lpr/gate/enabled"] == b"ON"  # retained, and re-sent on every connect

    button = last_doc(sub, topic("button", "republish_discovery"))
    assert button is not None
    assert button["command_topic"] == "lpr/bridge/request/discovery/republish"
    assert button["payload_press"] == "{}"
    assert button["device"]["identifiers"] == [NODE]

    for name, key in (("Staff", "staff"), ("Visitors", "visitors"), ("Vendor", "vendor")):
        last_seen = last_doc(sub, topic("sensor", f"last_seen_{key}"))
        assert last_seen is not None, name
        assert last_seen["name"] == f"{name} last seen"
        assert last_seen["device_class"] == "timestamp"
        assert last_seen["device"]["identifiers"] == [NODE]  # the gateway's device
        assert last_seen["state_topic"] == f"lpr/bridge/last_seen/{key}"
        assert last_seen["availability"] == [{"topic": "lpr/bridge/state"}]


async def test_triggers_fire_on_every_read_repeats_included(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = config_for(
        mqtt_broker,
        tmp_path,
        [{"id": "gate", "protocol": "http"}],
        known_plates={"Staff": ["AB1234"]},
    )
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
        async with running(config) as gw:
            reads = [
                read("gate", "AB1234"),
                read("gate", "AB1234"),  # the same car again: fires again
                read("gate", "ZZ9999"),
                read("gate", "BL4CK", ListMembership.BLACK),
            ]
            for event in reads:
                assert await gw.submit(event) is Admission.ACCEPTED
            await sub.until_count("lpr/gate/trigger/black_list", 1)
            await sub.until_count("lpr/gate/trigger/unknown", 2)
            known = await sub.until_count("lpr/gate/trigger/known/staff", 2)
    unknown = sub.on("lpr/gate/trigger/unknown")
    black = sub.on("lpr/gate/trigger/black_list")
    assert [m.json()["id"] for m in known] == [reads[0].id, reads[1].id]
    assert [m.json()["plate"] for m in unknown] == ["ZZ9999", "BL4CK"]
    assert black[0].json()["list"] == "black"
    assert not any(m.retain for m in known + unknown + black)
    last_seen = sub.on("lpr/bridge/last_seen/staff")
    assert [m.json()["plate"] for m in last_seen] == ["AB1234", "AB1234"]
    # Each trigger comes after its read's `last`, ha_event and presence.
    order = [m.topic for m in sub.messages]
    first_trigger = order.index("lpr/gate/trigger/known/staff")
    assert {"lpr/gate/last", "lpr/gate/ha_event"} <= set(order[:first_trigger])
    assert order[first_trigger - 2 : first_trigger] == [
        "lpr/gate/presence",
        "lpr/bridge/last_seen/staff",
    ]


async def test_known_vehicle_present_holds_then_goes_off(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    hold = 2.0
    config = config_for(
        mqtt_broker,
        tmp_path,
        [{"id": "gate", "protocol": "http"}, {"id": "yard", "protocol": "http"}],
        hold=hold,
        known_plates={"Staff": ["AB1234", "CD5678"]},
    )
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
        async with running(config) as gw:
            # A start says off at every camera (an on may be left from a stop).
            await sub.until_count("lpr/gate/presence", 1)
            await sub.until_count("lpr/yard/presence", 1)
            first, second = read("gate", "AB1234"), read("gate", "CD5678")
            assert await gw.submit(first) is Admission.ACCEPTED
            assert await gw.submit(read("gate", "XX0000")) is Admission.ACCEPTED  # unknown
            # Well within the hold, however busy the machine: no off between.
            assert await gw.submit(second) is Admission.ACCEPTED
            states = await sub.until_count("lpr/gate/presence", 4, timeout=hold + 20)
            await asyncio.sleep(0.3)
            yard = sub.on("lpr/yard/presence")
    documents = [m.json() for m in states]
    assert [d["state"] for d in documents] == ["off", "on", "on", "off"]
    # Retained: a subscriber that comes later (Home Assistant restarting) is told "off".
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/gate/presence",)) as late:
        kept = (await late.until_count("lpr/gate/presence", 1))[0]
    assert kept.retain and kept.json() == documents[3]
    assert documents[0]["plate"] is None  # the start's off knows no vehicle
    assert (documents[1]["plate"], documents[2]["plate"]) == ("AB1234", "CD5678")
    assert documents[2]["known"] == "Staff"
    # The off names the vehicle that was there, a hold after its last known read.
    assert (documents[3]["plate"], documents[3]["known"]) == ("CD5678", "Staff")
    held = stamp(documents[3]["time"]) - stamp(documents[2]["time"])
    assert held.total_seconds() >= hold - 0.01
    assert len(sub.on("lpr/gate/presence")) == 4  # nothing more
    assert [m.json()["state"] for m in yard] == ["off"]  # other cameras untouched


async def test_the_enabled_switch_disables_and_enables_cameras(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    async with TcpCameraSimulator() as sim:
        cameras = [
            tcp_simulator_entry("gate_in", sim.port),
            http_camera_entry("gate_out", "cam", "pw"),
        ]
        config = config_for(mqtt_broker, tmp_path, cameras)
        with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
            api = Requester(sub)
            async with running(config) as gw:
                await sim.wait_logged_in()
                switch = await sub.until_count(topic("switch", "gate_in_enabled"), 1)
                document = switch[-1].json()
                command, off, on = (
                    document["command_topic"],
                    document["payload_off"],
                    document["payload_on"],
                )
                # What Home Assistant sends when the switch is turned off.
                await asyncio.to_thread(sub.publish, command, off)
                await eventually(lambda: sim.logged_in_sessions == 0, what="session closed")
                await sub.until(lambda _: sub.on("lpr/gate_in/enabled")[-1].payload == b"OFF")
                await sub.until(lambda _: _last(sub, "lpr/gate_in/availability") == b"offline")
                assert gw.switches.is_disabled("gate_in")

                http_switch = await sub.until_count(topic("switch", "gate_out_enabled"), 1)
                await asyncio.to_thread(sub.publish, command, http_switch[-1].json()["payload_off"])
                await sub.until(lambda _: sub.on("lpr/gate_out/enabled")[-1].payload == b"OFF")
                assert await _post(gw, "gate_out") == 503

                # The bridge request disables too: the switch's state follows it.
                await api.ok("camera/enable", {"id": "gate_out"})
                await sub.until(lambda _: sub.on("lpr/gate_out/enabled")[-1].payload == b"ON")
                assert await _post(gw, "gate_out") == 200

                # And on again from the switch.
                await asyncio.to_thread(sub.publish, command, on)
                await sim.wait_logged_in()
                await sub.until(lambda _: sub.on("lpr/gate_in/enabled")[-1].payload == b"ON")
                assert not gw.switches.is_disabled("gate_in")

                # Bad commands get their reason, counted, and change nothing.
                await sub.until_count("lpr/bridge/response/camera/switch", 3)  # the switch's
                reason = await api.error("camera/switch", {"id": "gate_in", "enabled": "no"})
                assert reason == "enabled: expected true or false"
                reason = await api.error("camera/switch", {"id": "nope", "enabled": False})
                assert reason == "id: no camera 'nope' in the config"
                assert "missing field(s): enabled" in await api.error(
                    "camera/switch", {"id": "gate_in"}
                )
                assert (
                    sample(
                        gw.metrics,
                        "lpr_bridge_requests_total",
                        request="camera/switch",
                        status="error",
                    )
                    == 3
                )
                assert not gw.switches.is_disabled("gate_in")

                # The button: a discovery round.
                assert gw.discovery is not None
                rounds = gw.discovery.published_count
                button = last_doc(sub, topic("button", "republish_discovery"))
                assert button is not None
                await asyncio.to_thread(
                    sub.publish, button["command_topic"], button["payload_press"]
                )
                discovery = gw.discovery
                await eventually(lambda: discovery.published_count > rounds, what="republished")


async def test_no_switch_or_button_without_bridge_requests(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = config_for(
        mqtt_broker, tmp_path, [{"id": "gate", "protocol": "http"}], bridge={"requests": False}
    )
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
        async with running(config):
            await sub.until_count(topic("switch", "gate_enabled"), 1)
            await sub.until_count(topic("button", "republish_discovery"), 1)
    # Announced empty: removed from a Home Assistant that had them.
    assert sub.on(topic("switch", "gate_enabled"))[-1].payload == b""
    assert sub.on(topic("button", "republish_discovery"))[-1].payload == b""


async def test_names_removed_at_runtime_or_from_the_config_lose_their_entities(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    cameras: list[dict[str, Any]] = [
        {"id": "gate", "protocol": "http"},
        {"id": "yard", "protocol": "http"},
    ]
    temp_topics = [
        topic("device_automation", "gate_known_temp"),
        topic("device_automation", "yard_known_temp"),
        topic("sensor", "last_seen_temp"),
    ]
    staff_topics = [
        topic("device_automation", "gate_known_staff"),
        topic("device_automation", "yard_known_staff"),
        topic("sensor", "last_seen_staff"),
    ]

    def announced(topics: list[str]) -> bool:
        return all(last_doc(sub, t) is not None for t in topics)

    def removed(topics: list[str]) -> bool:
        return all(sub.on(t) and sub.on(t)[-1].payload == b"" for t in topics)

    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
        api = Requester(sub)
        config = config_for(mqtt_broker, tmp_path, cameras, known_plates={"Staff": ["AB1234"]})
        async with running(config) as gw:
            await sub.until(lambda _: announced(staff_topics))
            await api.ok("known_plates/add", {"name": "Temp", "plates": ["TT 1"]})
            await sub.until(lambda _: announced(temp_topics))
            assert await gw.submit(read("yard", "TT1")) is Admission.ACCEPTED
            assert await gw.submit(read("gate", "AB1234")) is Admission.ACCEPTED
            await sub.until_count("lpr/yard/trigger/known/temp", 1)
            await sub.until_count("lpr/bridge/last_seen/staff", 1)
            await api.ok("known_plates/remove", {"name": "Temp"})
            # Its entities go, and its "last seen" state with them (retained, it
            # would be kept and re-sent on every connect for ever).
            await sub.until(lambda _: removed([*temp_topics, "lpr/bridge/last_seen/temp"]))
            assert announced(staff_topics)  # the other name's entities stay
            assert _last(sub, "lpr/bridge/last_seen/staff")
            assert last_doc(sub, topic("device_automation", "gate_unknown_plate")) is not None

        # The config no longer has Staff: its entities go at the next start.
        config = config_for(mqtt_broker, tmp_path, cameras, known_plates={"Crew": ["CR 1"]})
        async with running(config):
            crew = [
                topic("sensor", "last_seen_crew"),
                topic("device_automation", "gate_known_crew"),
            ]
            await sub.until(lambda _: announced(crew) and removed(staff_topics))
            assert removed(temp_topics)
            # Staff's "last seen" too, emptied at the start (it left while stopped).
            await sub.until(lambda _: removed(["lpr/bridge/last_seen/staff"]))


def _last(sub: MqttCollector, on: str) -> bytes | None:
    found = sub.on(on)
    return found[-1].payload if found else None


class RecordingPublisher:
    """What discovery publishes, kept (a `StatePublisher` without a broker)."""

    def __init__(self) -> None:
        self.published: dict[str, bytes] = {}

    def publish_state(self, topic: str, payload: bytes, retain: bool = True) -> None:
        self.published[topic] = payload

    def on_connected(self, hook: Any) -> None:
        pass

    def subscribe(self, topic: str, handler: Any) -> None:
        pass


def test_configs_per_name_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(homeassistant, "MAX_NAME_CONFIGS", 8)
    config = gateway_config(
        "mqtt://127.0.0.1:1",
        tmp_path,
        [{"id": "gate", "protocol": "http"}, {"id": "yard", "protocol": "http"}],
        homeassistant={"enabled": True, "node_id": NODE},
        known_plates={"B": ["BB 1"], "A": ["AA 1"]},
    )
    registry = KnownPlatesRegistry(config.known_plates)
    # A runtime name scoped to one camera costs two configs, one unscoped three.
    registry.replace_runtime(
        [
            RuntimeEntry("Yard crew", "YC 1", ("yard",), None, 0.0),
            RuntimeEntry("Zed", "ZZ 1", None, None, 0.0),
        ]
    )
    publisher = RecordingPublisher()
    discovery = homeassistant.Discovery(config, publisher, registry, CameraSwitches())
    assert discovery.name_cameras() == {
        "A": ("gate", "yard"),
        "B": ("gate", "yard"),
        "Yard crew": ("yard",),
    }
    discovery.publish_all()
    announced = {
        t
        for t, p in publisher.published.items()
        if p and "/device_automation/" in t and "_known_" in t
    }
    assert announced == {
        topic("device_automation", f"{camera}_known_{key}")
        for camera, key in [("gate", "a"), ("yard", "a"), ("gate", "b"), ("yard", "b")]
    } | {topic("device_automation", "yard_known_yard_crew")}
    assert topic("sensor", "last_seen_zed") not in publisher.published


async def test_a_presence_off_refused_by_a_full_outbox_is_stored_later(
    mqtt_broker: MosquittoProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "PRESENCE_RETRY_SECONDS", 0.2)
    mqtt_broker.stop()  # nothing drains: the outbox fills
    config = config_for(
        mqtt_broker,
        tmp_path,
        [{"id": "gate", "protocol": "http"}],
        hold=1.0,
        known_plates={"Staff": ["AB1234"]},
        outbox={"max_bytes": 1_000_000},
    )
    async with Gateway(config, reconnect_policy=FAST_RETRIES) as gw:
        outbox = gw.outbox
        assert await gw.submit(read("gate", "AB1234")) is Admission.ACCEPTED  # on
        # Fill it to less room than an "off" needs (~150 bytes): a read with a
        # picture of known size tells what such a read adds besides its picture.
        before, picture = outbox.pending_bytes, 1000
        with_picture = dataclasses.replace(
            read("gate", "ZZ0001"), plate_image=Image(b"1" * picture)
        )
        assert await gw.submit(with_picture) is Admission.ACCEPTED
        overhead = outbox.pending_bytes - before - picture
        room = config.outbox.max_bytes - outbox.pending_bytes
        filler = dataclasses.replace(
            read("gate", "ZZ0002"), plate_image=Image(b"2" * (room - overhead - 40))
        )
        assert await gw.submit(filler) is Admission.ACCEPTED
        assert config.outbox.max_bytes - outbox.pending_bytes < 120
        await eventually(
            lambda: (
                sample(gw.metrics, "lpr_events_refused_total", camera="gate", reason="outbox_full")
                >= 2
            ),
            timeout=20,
            what="the off refused, and tried again",
        )
        await asyncio.to_thread(mqtt_broker.start)
        with MqttCollector(
            mqtt_broker.host, mqtt_broker.port, topics=("lpr/gate/presence",)
        ) as sub:
            # Stored once the drain made room; it names the vehicle that left.
            left = {"state": "off", "plate": "AB1234"}
            await sub.until(
                lambda msgs: any(m.json().items() >= left.items() for m in msgs), timeout=30
            )
            await eventually(lambda: outbox.pending_events == 0, timeout=30, what="drained")
            await asyncio.sleep(0.2)
    # The outbox drained in order: its last word on presence is that off.
    assert sub.messages[-1].json().items() >= left.items()
