"""The gateway's own copy of its retained state, re-sent after a broker lost it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.event import Image, PlateEvent, Source, utc_now
from gateway.known_plates import RuntimeEntry
from gateway.outbox import EventDraft, MessageDraft, Outbox
from gateway.runtime_store import RuntimeStore, store_path
from gateway.simulate.common import PlateGenerator
from tests.helpers import MqttCollector, Received, free_port, gateway_config, sample

CAMERAS = [{"id": "gate", "protocol": "http"}]  # HTTP: "online" while the gateway listens
RETAINED = (
    "lpr/gate/image/plate",
    "lpr/gate/image/scene",
    "lpr/gate/last",
    "lpr/gate/availability",
    "lpr/bridge/state",
    "lpr/bridge/info",
)


def read(generator: PlateGenerator) -> PlateEvent:
    sim = generator.read("gate")
    return PlateEvent(
        camera="gate",
        source=Source.INJECT,
        plate=sim.plate,
        received=utc_now(),
        plate_image=Image(sim.plate_jpeg),
        scene_image=Image(sim.scene_jpeg),
    )


async def until_connected(gw: Gateway, connected: bool = True, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while gw.publisher is None or gw.publisher.connected != connected:
        assert time.monotonic() < deadline, f"publisher connected != {connected} in {timeout}s"
        await asyncio.sleep(0.02)


def retained_now(broker: MosquittoProcess) -> dict[str, Received]:
    """What a subscriber gets as retained messages once every RETAINED topic is
    there. A first subscriber waits for them to be published at all: one that
    subscribes while the gateway is still re-sending gets those messages live,
    without the retain flag (a flaky miss on a busy machine)."""
    with MqttCollector(broker.host, broker.port, topics=("lpr/#",)) as first:
        first.wait_for(lambda msgs: {m.topic for m in msgs} >= set(RETAINED), timeout=15)
    with MqttCollector(broker.host, broker.port, topics=("lpr/#",)) as late:
        late.wait_for(lambda msgs: {m.topic for m in msgs if m.retain} >= set(RETAINED), timeout=10)
        return {m.topic: m for m in late.messages if m.retain}


async def restart_without_persistence(broker: MosquittoProcess, gw: Gateway) -> None:
    assert not broker.persistence
    await asyncio.to_thread(broker.stop)
    await until_connected(gw, False)
    await asyncio.to_thread(broker.start)


async def test_retained_state_is_republished_after_broker_restart(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=CAMERAS)
    event = read(PlateGenerator(21))
    async with Gateway(config) as gw:
        await until_connected(gw)
        assert (await gw.submit(event)).taken
        with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
            await sub.until(lambda msgs: {m.topic for m in msgs} >= set(RETAINED))
        await restart_without_persistence(mqtt_broker, gw)
        await until_connected(gw)
        retained = await asyncio.to_thread(retained_now, mqtt_broker)
        # images and last from the copy; state, info and availability by their owner
        assert sample(gw.metrics, "lpr_retained_republished_total") == 3
    assert event.plate_image is not None and event.scene_image is not None
    assert retained["lpr/gate/image/plate"].payload == event.plate_image.data
    assert retained["lpr/gate/image/scene"].payload == event.scene_image.data
    assert retained["lpr/gate/last"].json()["id"] == event.id
    assert retained["lpr/gate/availability"].payload == b"online"
    assert retained["lpr/bridge/state"].payload == b"online"
    # Not retained, so not in the copy: the event itself is never re-sent.
    assert "lpr/gate/event" not in retained


async def test_newer_outbox_rows_win_over_the_copy(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """A read accepted while the broker was down is published after the copy is
    re-sent, so the retained topics end with the newer read."""
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=CAMERAS)
    generator = PlateGenerator(22)
    old, new = read(generator), read(generator)
    async with Gateway(config) as gw:
        await until_connected(gw)
        with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/gate/last",)) as sub:
            assert (await gw.submit(old)).taken
            await sub.until_count("lpr/gate/last", 1)
        await asyncio.to_thread(mqtt_broker.stop)
        await until_connected(gw, False)
        assert (await gw.submit(new)).taken  # waits in the outbox
        await asyncio.to_thread(mqtt_broker.start)
        await until_connected(gw)
        deadline = time.monotonic() + 10
        while gw.outbox.pending_events:
            assert time.monotonic() < deadline, "outbox not drained"
            await asyncio.sleep(0.02)
        retained = await asyncio.to_thread(retained_now, mqtt_broker)
        kept = gw.outbox.retained_rows_after(0, 100)
        assert gw.publisher is not None
        in_memory = gw.publisher.retained_copy
    # Only the small state messages are held in memory; images and `last` are
    # read back from the outbox when re-sent.
    assert "lpr/gate/availability" in in_memory
    assert not {"lpr/gate/image/scene", "lpr/gate/last"} & set(in_memory)
    assert new.scene_image is not None and new.scene_image.data is not None
    assert retained["lpr/gate/last"].json()["id"] == new.id
    assert retained["lpr/gate/image/scene"].payload == new.scene_image.data
    # One kept row per topic, the newest: the copy is bounded by the number of
    # retained topics (and held by the outbox, not in memory).
    topics = [topic for _, topic, _ in kept]
    assert len(topics) == len(set(topics))
    assert {topic: payload for _, topic, payload in kept}["lpr/gate/image/scene"] == (
        new.scene_image.data
    )


async def test_copy_survives_a_gateway_restart_then_an_empty_broker(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """The copy is durable (in the outbox): a gateway restart followed by a broker
    restart without persistence still gets images, `last`, availability and
    discovery back, before any new read."""
    config = gateway_config(
        mqtt_broker.url, tmp_path, cameras=CAMERAS, homeassistant={"enabled": True}
    )
    event = read(PlateGenerator(23))
    async with Gateway(config) as gw:
        await until_connected(gw)
        assert (await gw.submit(event)).taken
        deadline = time.monotonic() + 10
        while gw.outbox.pending_events:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    async with Gateway(config) as again:
        await until_connected(again)
        kept = {topic: payload for _, topic, payload in again.outbox.retained_rows_after(0, 100)}
        assert json.loads(kept["lpr/gate/last"])["id"] == event.id
        await restart_without_persistence(mqtt_broker, again)
        await until_connected(again)
        retained = await asyncio.to_thread(retained_now, mqtt_broker)
        with MqttCollector(
            mqtt_broker.host, mqtt_broker.port, topics=("homeassistant/#",)
        ) as discovery:
            discovery.wait_for(lambda msgs: any(m.retain for m in msgs), timeout=10)
    assert event.plate_image is not None and event.scene_image is not None
    assert retained["lpr/gate/image/plate"].payload == event.plate_image.data
    assert retained["lpr/gate/image/scene"].payload == event.scene_image.data
    assert retained["lpr/gate/last"].json()["id"] == event.id
    assert retained["lpr/gate/availability"].payload == b"online"
    assert any(m.topic.endswith("/config") for m in discovery.messages)


def read_of(camera: str, generator: PlateGenerator) -> PlateEvent:
    event = read(generator)
    return dataclasses.replace(event, camera=camera)


async def test_a_camera_removed_from_the_config_leaves_nothing_retained(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Its read accepted while the broker was away still goes out, then its
    retained topics are emptied on the broker, and its kept copy is never
    re-sent, not even to a broker that lost everything."""
    both = [*CAMERAS, {"id": "old", "protocol": "http"}]
    generator = PlateGenerator(24)
    async with Gateway(gateway_config(mqtt_broker.url, tmp_path, cameras=both)) as gw:
        await until_connected(gw)
        for camera in ("gate", "old"):
            assert (await gw.submit(read_of(camera, generator))).taken
        with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
            await sub.until(
                lambda msgs: {"lpr/gate/last", "lpr/old/last"} <= {m.topic for m in msgs}
            )
    # The broker out of reach: the camera's last read waits in the outbox.
    unreachable = f"mqtt://127.0.0.1:{free_port()}"
    last_read = read_of("old", generator)
    async with Gateway(gateway_config(unreachable, tmp_path, cameras=both)) as gw:
        assert (await gw.submit(last_read)).taken
    old_retained = {
        "lpr/old/availability",
        "lpr/old/image/plate",
        "lpr/old/image/scene",
        "lpr/old/last",
    }

    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
        async with Gateway(gateway_config(mqtt_broker.url, tmp_path, cameras=CAMERAS)) as gw:
            await until_connected(gw)
            seen = await sub.until(
                lambda msgs: {m.topic for m in msgs if not m.payload} >= old_retained
            )
            retained = await asyncio.to_thread(retained_now, mqtt_broker)
            assert not any(topic.startswith("lpr/old/") for topic in retained)
            await restart_without_persistence(mqtt_broker, gw)
            await until_connected(gw)
            retained = await asyncio.to_thread(retained_now, mqtt_broker)
            assert not any(topic.startswith("lpr/old/") for topic in retained)
            assert set(RETAINED) <= set(retained)  # the camera still configured keeps its own
    # Its last read went out before its topics were emptied.
    event_at = next(
        i
        for i, m in enumerate(seen)
        if m.topic == "lpr/old/event" and m.json()["id"] == last_read.id
    )
    cleared_at = [i for i, m in enumerate(seen) if m.topic in old_retained and not m.payload]
    assert len(cleared_at) == len(old_retained)
    assert event_at < min(cleared_at)
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_bytes=10_000_000)
    outbox.open()
    try:
        left = outbox.db.execute("SELECT COUNT(*) FROM message WHERE topic LIKE 'lpr/old/%'")
        assert left.fetchone() == (0,)
        assert not [k for k in outbox.load_retained_state() if k.startswith("lpr/old/")]
    finally:
        outbox.close()


async def test_home_assistant_switched_off_loses_its_entities(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Discovery turned off in the config: its configs are emptied on the broker
    (Home Assistant removes the devices) instead of re-sent on every connect."""
    on = gateway_config(mqtt_broker.url, tmp_path, cameras=CAMERAS, homeassistant={"enabled": True})
    async with Gateway(on) as gw:
        await until_connected(gw)
        with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("homeassistant/#",)) as sub:
            announced = await sub.until(lambda msgs: len({m.topic for m in msgs}) >= 5)
    configs = {m.topic for m in announced if m.payload}
    off = gateway_config(mqtt_broker.url, tmp_path, cameras=CAMERAS)
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("homeassistant/#",)) as sub:
        async with Gateway(off) as gw:
            await until_connected(gw)
            await sub.until(lambda msgs: {m.topic for m in msgs if not m.payload} >= configs)
    # One SUBSCRIBE: the broker sends its retained messages filter by filter,
    # so once `lpr/#`'s are in, any of `homeassistant/#` would be too.
    with MqttCollector(
        mqtt_broker.host, mqtt_broker.port, topics=("homeassistant/#", "lpr/#")
    ) as late:
        late.wait_for(lambda msgs: "lpr/gate/availability" in {m.topic for m in msgs if m.retain})
        assert not [m.topic for m in late.messages if m.topic.startswith("homeassistant/")]


def test_the_command_line_lists_the_copy_and_what_the_next_start_clears(tmp_path: Path) -> None:
    """`lpr-gateway outbox retained list`, beside a running gateway (the outbox
    locked): every kept topic, and for this config which the start will clear
    and why; it changes nothing."""
    path = tmp_path / "outbox.sqlite3"
    running = Outbox(path, max_bytes=10_000_000)
    running.open()  # holds the lock, as a gateway does
    runtime = RuntimeStore(store_path(path))
    runtime.open()
    try:
        now = time.time()
        runtime.put_known_plates(
            [
                RuntimeEntry("Visitor", "VI 1", None, now + 3600, now),
                RuntimeEntry("Gone", "GO 1", None, now - 1, now - 7200),  # expired
            ]
        )
        drafts = [
            EventDraft(
                f"{camera}-1",
                camera,
                (
                    MessageDraft(f"lpr/{camera}/image/scene", b"\xff\xd8" * 10_000, True),
                    MessageDraft(f"lpr/{camera}/last", b"{}", True),
                    MessageDraft(f"lpr/bridge/last_seen/{name}", b"{}", True),
                ),
                now,
            )
            for camera, name in (("gate", "staff"), ("old", "visitor"), ("gate", "gone"))
        ]
        _, stored = running.append_batch(drafts)
        running.acknowledge(stored)
        running.save_retained_state("lpr/old/availability", b"online")
        config = tmp_path / "c.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "outbox": {"path": str(path)},
                    "homeassistant": {"enabled": True},
                    "known_plates": {"Staff": ["ST 1"]},
                    "cameras": [{"id": "gate", "protocol": "http"}],
                }
            ),
            encoding="utf-8",
        )

        def listed(*extra: str) -> str:
            command = ["outbox", "retained", "list", "-c", str(config), *extra]
            done = subprocess.run(
                [sys.executable, "-m", "gateway", *command],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        documents = [json.loads(line) for line in listed("--json").splitlines()]
        text = listed()
        left = running.clears_waiting()
    finally:
        runtime.close()
        running.close()
    fates = {d["topic"]: d["clear"] for d in documents}
    assert fates == {
        "lpr/bridge/last_seen/gone": "its known-plates name is gone",
        "lpr/bridge/last_seen/staff": None,
        "lpr/bridge/last_seen/visitor": None,  # a runtime name, still valid
        "lpr/gate/image/scene": None,
        "lpr/gate/last": None,
        "lpr/old/availability": "camera old is no longer configured",
        "lpr/old/image/scene": "camera old is no longer configured",
        "lpr/old/last": "camera old is no longer configured",
    }
    sizes = {d["topic"]: (d["bytes"], d["kept_as"]) for d in documents}
    assert sizes["lpr/old/image/scene"] == (20_000, "row")  # in the blob log
    assert sizes["lpr/old/availability"] == (6, "state")
    assert "lpr/old/last  2 bytes  CLEARED at the next start: camera old is no longer" in text
    assert text.splitlines()[-1].startswith(f"8 retained topics kept in {path}, 4 of them cleared")
    assert left == 0  # a listing clears nothing
