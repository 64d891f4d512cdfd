"""Publisher against a real mosquitto: order, retain flags, QoS, state topics, LWT."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.event import Image, PlateEvent, Source, utc_now
from gateway.mqtt.state import STATE_WINDOW
from gateway.pipeline import Admission
from tests.helpers import MqttCollector, Received, gateway_config


def plate_event(camera: str = "gate_in", plate: str = "AB 123-CD", n: int = 0) -> PlateEvent:
    return PlateEvent(
        camera=camera,
        source=Source.INJECT,
        plate=plate,
        received=utc_now(),
        time=utc_now(),
        plate_image=Image(b"\xff\xd8plate" + n.to_bytes(4, "big")),
        scene_image=Image(b"\xff\xd8scene" + n.to_bytes(4, "big") * 1000),
    )


async def test_images_then_event_then_last(mqtt_broker: MosquittoProcess, tmp_path: Path) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path)
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
        async with Gateway(config) as gw:
            event = plate_event()
            assert await gw.submit(event) is Admission.ACCEPTED
            await sub.until_count("lpr/gate_in/last", 1)
        ours = [m for m in sub.messages if m.topic.startswith("lpr/gate_in/")]
        assert [m.topic for m in ours] == [
            "lpr/gate_in/image/plate",
            "lpr/gate_in/image/scene",
            "lpr/gate_in/event",
            "lpr/gate_in/last",
        ]
        # A live subscriber sees retain=False even for retained publishes (MQTT
        # 3.1.1 semantics), so retain flags are checked by a late subscriber below.
        assert all(m.qos == 1 for m in ours)
        document = ours[2].json()
        assert document["id"] == event.id
        assert document["plate_normalized"] == "AB123CD"
        assert event.scene_image is not None and event.plate_image is not None
        assert (
            document["images"]["scene"]["sha256"]
            == hashlib.sha256(event.scene_image.data or b"").hexdigest()
        )
        assert ours[0].payload == event.plate_image.data
        assert ours[3].payload == ours[2].payload
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as late:
        late.wait_for(
            lambda ms: (
                {m.topic for m in ms}
                >= {
                    "lpr/gate_in/image/plate",
                    "lpr/gate_in/image/scene",
                    "lpr/gate_in/last",
                    "lpr/bridge/state",
                    "lpr/bridge/info",
                }
            )
        )
        retained = {m.topic: m for m in late.messages}
        assert "lpr/gate_in/event" not in retained
        assert all(m.retain for m in retained.values())
        assert retained["lpr/bridge/state"].payload == b"offline"  # orderly stop said so


async def test_state_topics_online(mqtt_broker: MosquittoProcess, tmp_path: Path) -> None:
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        cameras=[],
        mqtt={"base_topic": "site/lpr"},
    )
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("site/lpr/#",)) as sub:
        async with Gateway(config) as gw:
            await sub.until(lambda ms: any(m.topic == "site/lpr/bridge/state" for m in ms))
            assert sub.on("site/lpr/bridge/state")[-1].payload == b"online"
            info = (await sub.until_count("site/lpr/bridge/info", 1))[-1].json()
            assert info["version"]
            gw.publisher.set_camera_online("gate_in", True)  # type: ignore[union-attr]
            await sub.until_count("site/lpr/gate_in/availability", 1)
            assert sub.on("site/lpr/gate_in/availability")[-1].payload == b"online"


def states(messages: list[Received]) -> set[str]:
    """The camera states the newest bridge info lists (when it lists the 200 cameras)."""
    cameras = messages[-1].json()["cameras"] if messages else []
    return {c["state"] for c in cameras} if len(cameras) == 200 else set()


async def test_a_login_storm_makes_one_bridge_info_update(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    cameras = [
        {"id": f"cam{n:03d}", "protocol": "http", "path": f"/lpr/cam{n:03d}"} for n in range(200)
    ]
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=cameras)
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/bridge/info",)) as sub:
        async with Gateway(config) as gw:
            await sub.until(lambda ms: states(ms) == {"online"})
            updates = len(sub.messages)
            assert gw.publisher is not None
            for n in range(200):  # 200 cameras drop at once: one update, not 200
                gw.publisher.set_camera_online(f"cam{n:03d}", False)
            await sub.until(lambda ms: states(ms) == {"offline"})
            assert len(sub.messages) == updates + 1


async def test_a_burst_of_state_messages_does_not_hold_up_what_follows(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """A burst of state messages (1,000 cameras logging in: availability and a
    bridge event each; discovery re-sent when Home Assistant restarts) goes out
    STATE_WINDOW at a time: a message handed to the link right after it (as the
    outbox window hands a read) is among the first the broker delivers, not
    behind the whole burst. None is lost: those still waiting at shutdown go
    out before the bridge says offline."""
    burst = 600
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=[])
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/#",)) as sub:
        async with Gateway(config) as gw:
            assert gw.publisher is not None
            link = gw.publisher.link
            await sub.until(lambda ms: any(m.topic == "lpr/bridge/info" for m in ms))
            link.publish("lpr/test/start", b"", retain=False)
            await sub.until(lambda ms: any(m.topic == "lpr/test/start" for m in ms))
            for n in range(burst):
                gw.publisher.publish_state(f"lpr/test/state/{n}", b"%d" % n)
            link.publish("lpr/test/marker", b"read", retain=False)
            await sub.until(lambda ms: any(m.topic == "lpr/test/marker" for m in ms))
            for n in range(burst):  # still waiting when the gateway stops
                gw.publisher.publish_state(f"lpr/test/late/{n}", b"%d" % n)
        # The broker has them all once the bridge's offline is acknowledged;
        # this subscriber may still be reading them.
        await sub.until(
            lambda ms: any(m.payload == b"offline" for m in ms if m.topic == "lpr/bridge/state")
        )
        topics = [m.topic for m in sub.messages]
        start = topics.index("lpr/test/start")
        assert topics.index("lpr/test/marker") - start <= STATE_WINDOW + 1
        assert [t for t in topics if t.startswith("lpr/test/state/")] == [
            f"lpr/test/state/{n}" for n in range(burst)
        ]
        late = [t for t in topics if t.startswith("lpr/test/late/")]
        assert late == [f"lpr/test/late/{n}" for n in range(burst)]
        assert topics.index("lpr/bridge/state", start) > topics.index(late[-1])


async def test_a_connection_whose_messages_were_all_acknowledged_is_kept_when_idle(
    mqtt_broker: MosquittoProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The PUBACK timeout counts only while messages wait for one. It was armed
    when the last publish went out and not disarmed by its PUBACK: an idle
    gateway dropped a healthy broker connection one timeout after its last read
    ("no PUBACK ... with 0 messages in flight")."""
    config = gateway_config(mqtt_broker.url, tmp_path)
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
        async with Gateway(config) as gw:
            assert gw.publisher is not None
            gw.publisher.window.ack_timeout = 0.5
            await sub.until(lambda _: gw.publisher is not None and gw.publisher.connected)
            assert await gw.submit(plate_event()) is Admission.ACCEPTED
            await sub.until_count("lpr/gate_in/last", 1)
            await asyncio.sleep(2.0)  # four timeouts, nothing in flight
    # A broker too slow to acknowledge within 0.5 s (a busy machine) may still
    # cost the connection, with messages in flight; never with none.
    drops = [r.getMessage() for r in caplog.records if "dropping the connection" in r.getMessage()]
    assert not [d for d in drops if "with 0 messages in flight" in d], drops
    reconnects = gw.metrics.registry.get_sample_value("lpr_mqtt_reconnects_total")
    assert reconnects == 1 + len(drops)
