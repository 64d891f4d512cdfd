"""The gateway's MQTT contract on every broker it is proven on.

Each test runs against a private mosquitto, a private NATS server (JetStream
with its MQTT listener), each started per test on free loopback ports by the
fixture, and the session's private RabbitMQ node (`rabbitmq_mqtt`; it boots in
10-15 s, so one node serves every test and its retained messages are cleared
after each): events, images retained byte for byte, `last`, availability,
bridge info, the will when the gateway dies, store-and-forward across a broker
restart, the retained state published again to a broker that lost it, Home
Assistant discovery, and a removed camera's retained topics emptied. The
README's broker table says what was verified where.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from gateway.app import Gateway
from gateway.broker import MosquittoProcess, free_port
from gateway.event import Image, PlateEvent, Source, utc_now
from gateway.pipeline import Admission
from gateway.publisher import BrokerBackoff
from tests.brokers import NatsProcess, RabbitMqProcess, RetainedJanitor
from tests.helpers import MqttCollector, Received, gateway_config, publish_once

pytestmark = pytest.mark.slow


class Broker(Protocol):
    host: str
    port: int

    @property
    def url(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


@pytest.fixture(params=["mosquitto", "nats", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "rabbitmq":
        # The session's one node (it boots in 10-15 s): started again if a
        # test failed while it was stopped, its retained messages cleared after.
        node: RabbitMqProcess = request.getfixturevalue("rabbitmq_node")
        if not node.running:
            node.start()
        with RetainedJanitor(node.host, node.port) as janitor:
            yield node
            if not node.running:
                node.start()
            janitor.clear(also=CONTRACT_TOPICS)
        return
    # Persistence on, as a real mosquitto runs: a QoS 1 subscription outlives a
    # broker restart (see test_reads_taken_while_the_broker_is_down...).
    instance: MosquittoProcess | NatsProcess = (
        MosquittoProcess(persistence=True) if request.param == "mosquitto" else NatsProcess()
    )
    instance.start()
    try:
        yield instance
    finally:
        instance.close()


def empty_restart(broker: Broker) -> None:
    """Stop the broker and start it with no message and nothing retained (a lost
    disk; on RabbitMQ also what a gateway meets on another node of a cluster,
    since each node keeps retained messages in a store of its own)."""
    broker.stop()
    if isinstance(broker, MosquittoProcess):
        (broker.workdir / "mosquitto.db").unlink(missing_ok=True)
    elif isinstance(broker, NatsProcess | RabbitMqProcess):
        broker.wipe()
    broker.start()


def plate_read(camera: str, n: int) -> PlateEvent:
    return PlateEvent(
        camera=camera,
        source=Source.INJECT,
        plate=f"B{n:04d}",
        received=utc_now(),
        raw={"n": n},
        plate_image=Image(b"\xff\xd8plate" + n.to_bytes(4, "big") * 4000),
        scene_image=Image(b"\xff\xd8scene" + n.to_bytes(4, "big") * 75_000),  # 300 KB
    )


def retained(
    broker: Broker, filters: tuple[str, ...], count: int, names: tuple[str, ...]
) -> dict[str, Received]:
    """What a new subscriber gets retained on `filters`, once `count` topics are
    there (a first subscriber waits for them to be published at all: one that
    subscribed before a message was published gets it without the retain flag).

    RabbitMQ 3.x sends no retained message to a subscription with a wildcard
    (documented: "RabbitMQ does not send retained messages for Topic Filters
    containing wildcards"), so there both subscribers ask for the exact topic
    `names` instead: the same retained values, asked for the only way it serves.
    """
    topics = names if isinstance(broker, RabbitMqProcess) else filters
    with MqttCollector(broker.host, broker.port, topics=topics) as first:
        first.wait_for(lambda ms: len({m.topic for m in ms}) >= count, timeout=30)
    with MqttCollector(broker.host, broker.port, topics=topics) as late:
        late.wait_for(lambda ms: len({m.topic for m in ms if m.retain}) >= count, timeout=20)
        return {m.topic: m for m in late.messages if m.retain}


CAMERA = [{"id": "gate", "protocol": "http", "path": "/lpr/gate"}]
GATE_IMAGES = ("lpr/gate/image/plate", "lpr/gate/image/scene")
BRIDGE = ("lpr/bridge/state", "lpr/bridge/info")
# What these tests have the gateway retain (the janitor clears them too, even
# if it missed their publication while the broker was down).
CONTRACT_TOPICS = (*GATE_IMAGES, *BRIDGE, "lpr/gate/last", "lpr/gate/availability")


# In the tests that restart the broker: back within 1 s of the broker, not 5
# (a RabbitMQ restart outlasts the default backoff's climb to its 5 s cap).
QUICK = BrokerBackoff(initial_seconds=0.2, max_seconds=1.0)


def discovery_topics(node_id: str) -> tuple[str, ...]:
    """The discovery configs of the bridge and of camera `gate` before any
    evidence picture (the README's entity list)."""
    objects = [
        ("binary_sensor", "bridge"),
        ("event", "gate_read"),
        ("sensor", "gate_plate"),
        ("image", "gate_plate_image"),
        ("image", "gate_scene_image"),
        ("binary_sensor", "gate_connection"),
    ]
    return tuple(f"homeassistant/{c}/{node_id}/{o}/config" for c, o in objects)


async def test_a_read_arrives_with_its_images_retained_byte_for_byte(
    broker: Broker, tmp_path: Path
) -> None:
    read = plate_read("gate", 1)
    with MqttCollector(broker.host, broker.port, topics=("lpr/gate/#",)) as sub:
        async with Gateway(gateway_config(broker.url, tmp_path, CAMERA)) as gw:
            assert await gw.submit(read) is Admission.ACCEPTED
            await sub.until(lambda ms: any(m.topic == "lpr/gate/last" for m in ms), timeout=20)
    event = sub.on("lpr/gate/event")[-1].json()
    assert event["plate"] == "B0001"
    assert event["images"]["scene"]["bytes"] == len(b"\xff\xd8scene") + 300_000
    filters = ("lpr/gate/image/+", "lpr/gate/last", "lpr/gate/availability")
    names = (*GATE_IMAGES, "lpr/gate/last", "lpr/gate/availability")
    kept = await asyncio.to_thread(retained, broker, filters, 4, names)
    assert read.plate_image is not None and read.scene_image is not None
    assert kept["lpr/gate/image/plate"].payload == read.plate_image.data
    assert kept["lpr/gate/image/scene"].payload == read.scene_image.data
    assert kept["lpr/gate/last"].json()["id"] == event["id"]
    assert kept["lpr/gate/availability"].payload == b"offline"  # the gateway has stopped


async def test_bridge_state_info_and_availability(broker: Broker, tmp_path: Path) -> None:
    topics = ("lpr/bridge/#", "lpr/gate/availability")
    with MqttCollector(broker.host, broker.port, topics=topics) as sub:
        async with Gateway(gateway_config(broker.url, tmp_path, CAMERA)):
            await sub.until(lambda ms: any(m.topic == "lpr/bridge/info" for m in ms), timeout=20)
            assert sub.on("lpr/bridge/state")[-1].payload == b"online"
            info = sub.on("lpr/bridge/info")[-1].json()
            assert [c["id"] for c in info["cameras"]] == ["gate"]
    kept = await asyncio.to_thread(retained, broker, topics, 3, (*BRIDGE, "lpr/gate/availability"))
    assert kept["lpr/bridge/state"].payload == b"offline"  # an orderly stop says so
    assert kept["lpr/gate/availability"].payload == b"offline"


def test_the_will_says_offline_when_the_gateway_is_killed(broker: Broker, tmp_path: Path) -> None:
    config = {
        "mqtt": {"url": broker.url, "keepalive_seconds": 5},
        "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with MqttCollector(broker.host, broker.port, topics=("lpr/bridge/state",)) as sub:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(path)],
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            sub.wait_for(lambda ms: any(m.payload == b"online" for m in ms), timeout=30)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            sub.wait_for(lambda ms: ms[-1].payload == b"offline", timeout=20)
        finally:
            if process.poll() is None:
                process.kill()


async def test_reads_taken_while_the_broker_is_down_are_delivered_in_order(
    broker: Broker, tmp_path: Path
) -> None:
    # The subscriber's QoS 1 session is on the broker before the outage and
    # outlives it: a subscriber that only came after the restart could miss the
    # first reads (a slow broker, RabbitMQ here, may let the gateway in first).
    sub = MqttCollector(broker.host, broker.port, topics=("lpr/gate/event",), persistent=True)
    async with Gateway(gateway_config(broker.url, tmp_path, CAMERA), broker_backoff=QUICK) as gw:
        with sub:
            await asyncio.to_thread(broker.stop)
            for n in range(10):
                assert await gw.submit(plate_read("gate", n)) is Admission.ACCEPTED
            assert gw.outbox.pending_events == 10
            await asyncio.to_thread(broker.start)
            await sub.until(lambda ms: len({m.json()["raw"]["n"] for m in ms}) >= 10, timeout=60)
    arrived: list[int] = []
    for m in sub.messages:
        if m.json()["raw"]["n"] not in arrived:
            arrived.append(m.json()["raw"]["n"])
    assert arrived == list(range(10))


async def test_a_broker_that_lost_its_retained_state_gets_it_again(
    broker: Broker, tmp_path: Path
) -> None:
    read = plate_read("gate", 7)
    async with Gateway(gateway_config(broker.url, tmp_path, CAMERA), broker_backoff=QUICK) as gw:
        assert await gw.submit(read) is Admission.ACCEPTED
        with MqttCollector(broker.host, broker.port, topics=("lpr/gate/last",)) as sub:
            await sub.until(lambda ms: len(ms) >= 1, timeout=20)
        await asyncio.to_thread(empty_restart, broker)
        filters = ("lpr/gate/image/+", "lpr/gate/last", "lpr/bridge/info", "lpr/bridge/state")
        names = (*GATE_IMAGES, "lpr/gate/last", *BRIDGE)
        kept = await asyncio.to_thread(retained, broker, filters, 5, names)
    assert read.scene_image is not None
    assert kept["lpr/gate/image/scene"].payload == read.scene_image.data
    assert kept["lpr/gate/last"].json()["plate"] == "B0007"
    assert kept["lpr/bridge/state"].payload == b"online"


async def test_home_assistant_discovery_is_retained(broker: Broker, tmp_path: Path) -> None:
    config = gateway_config(broker.url, tmp_path, CAMERA, homeassistant={"enabled": True})
    async with Gateway(config):
        names = discovery_topics(config.mqtt.client_id)
        kept: dict[str, Received] = await asyncio.to_thread(
            retained, broker, ("homeassistant/+/+/+/config",), 5, names
        )
    documents: dict[str, Any] = {topic: m.json() for topic, m in kept.items()}
    plate = next(d for t, d in documents.items() if t.endswith("gate_plate/config"))
    assert plate["state_topic"] == "lpr/gate/last"
    assert all(d["origin"]["name"] == "lpr-gateway" for d in documents.values())


def announce_home_assistant(broker: Broker) -> None:
    """Home Assistant's birth message: `online`, not retained."""
    publish_once(broker.host, broker.port, "homeassistant/status", b"online", client_prefix="ha")


async def test_home_assistant_coming_online_gets_every_discovery_config(
    broker: Broker, tmp_path: Path
) -> None:
    """Home Assistant subscribes to its discovery prefix with a wildcard: on
    RabbitMQ 3.x that brings no retained config, so what it gets is what the
    gateway sends again when it announces itself. Checked on every broker."""
    config = gateway_config(broker.url, tmp_path, CAMERA, homeassistant={"enabled": True})
    names = discovery_topics(config.mqtt.client_id)
    async with Gateway(config):
        await asyncio.to_thread(retained, broker, ("homeassistant/+/+/+/config",), 5, names)
        filters = ("homeassistant/+/+/+/config",)
        with MqttCollector(broker.host, broker.port, topics=filters) as ha:
            await asyncio.to_thread(announce_home_assistant, broker)
            await ha.until(lambda ms: {m.topic for m in ms if not m.retain} >= set(names), 20)
    sent_again = {m.topic: m.json() for m in ha.messages if not m.retain}
    plate = f"homeassistant/sensor/{config.mqtt.client_id}/gate_plate/config"
    assert sent_again[plate]["state_topic"] == "lpr/gate/last"


async def test_rabbitmq_message_over_its_size_limit_is_set_aside_not_stalling(
    rabbitmq_node: RabbitMqProcess, tmp_path: Path
) -> None:
    """RabbitMQ 3.10 takes an MQTT message over its `max_message_size` without a
    word: it closes the connection's AMQP channel and acknowledges nothing more,
    keeping the connection (and answering pings). The gateway drops a connection
    that acknowledges nothing, then finds and sets aside the read that caused it;
    the reads after it go out."""
    node = rabbitmq_node
    if not node.running:
        node.start()
    # An operator's lower limit (the default, 128 MiB, is far above any image).
    node.eval("application:set_env(rabbit, max_message_size, 1000000).")
    big = plate_read("gate", 1)
    big = dataclasses.replace(big, scene_image=Image(b"\xff\xd8" + b"s" * 1_200_000))
    try:
        with RetainedJanitor(node.host, node.port) as janitor:
            config = gateway_config(node.url, tmp_path, CAMERA)
            async with Gateway(config, broker_backoff=QUICK) as gw:
                assert gw.publisher is not None
                gw.publisher.window.ack_timeout = 1.0
                with MqttCollector(node.host, node.port, topics=("lpr/gate/event",)) as sub:
                    assert await gw.submit(big) is Admission.ACCEPTED
                    assert await gw.submit(plate_read("gate", 2)) is Admission.ACCEPTED
                    await sub.until(lambda ms: any(m.json()["plate"] == "B0002" for m in ms), 60)
                assert gw.outbox.dead_letter_events == 1
            janitor.clear(also=CONTRACT_TOPICS)
    finally:
        node.eval("application:set_env(rabbit, max_message_size, 134217728).")


async def test_a_camera_removed_from_the_config_leaves_nothing_retained(
    broker: Broker, tmp_path: Path
) -> None:
    """At the next start its retained topics are emptied (MQTT's empty retained
    message), which every broker here takes as a deletion."""
    old = [{"id": "old", "protocol": "http", "path": "/lpr/old"}]
    old_topics = ("lpr/old/image/plate", "lpr/old/image/scene", "lpr/old/last")
    both = gateway_config(broker.url, tmp_path, [*CAMERA, *old])
    async with Gateway(both, broker_backoff=QUICK) as gw:
        for n, camera in enumerate(("gate", "old")):
            assert await gw.submit(plate_read(camera, n)) is Admission.ACCEPTED
        await asyncio.to_thread(retained, broker, old_topics, len(old_topics), old_topics)
    names = (*old_topics, "lpr/gate/last")
    with MqttCollector(broker.host, broker.port, topics=names) as live:
        async with Gateway(gateway_config(broker.url, tmp_path, CAMERA), broker_backoff=QUICK):
            cleared = await live.until(
                lambda ms: {m.topic for m in ms if not m.payload} >= set(old_topics), timeout=20
            )
    # Not re-sent on connect: what came with a payload came retained, on subscribing.
    assert all(m.retain for m in cleared if m.topic.startswith("lpr/old/") and m.payload)
    # Asked for by exact name (RabbitMQ serves retained messages no other way):
    # the camera still configured has its own, the removed one none.
    with MqttCollector(broker.host, broker.port, topics=names) as late:
        late.wait_for(lambda ms: any(m.topic == "lpr/gate/last" and m.retain for m in ms), 20)
        await asyncio.sleep(0.5)  # what else the broker holds comes with it
        assert [m.topic for m in late.messages] == ["lpr/gate/last"]
