"""The durable outbox: nothing accepted is lost on broker outage or SIGKILL."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import yaml

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.config import OutboxSync
from gateway.event import Image, PlateEvent, Source, utc_now
from gateway.outbox import WAL_LIMIT_BYTES, EventDraft, MessageDraft, Outbox
from gateway.pipeline import Admission
from gateway.topics import Topics, retired_topic
from tests.helpers import MqttCollector, Received, free_port, gateway_config, sample

CAMERAS = ("cam_a", "cam_b", "cam_c")


def numbered_event(camera: str, n: int, scene_bytes: int = 2000) -> PlateEvent:
    return PlateEvent(
        camera=camera,
        source=Source.INJECT,
        plate=f"N{n:05d}",
        received=utc_now(),
        raw={"n": n},
        plate_image=Image(b"\xff\xd8" + n.to_bytes(4, "big")),
        scene_image=Image(b"\xff\xd8" + bytes(scene_bytes)),
    )


def test_the_messages_a_batch_stored_are_the_rows_read_back(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=10_000_000)
    outbox.open()
    try:
        dead = EventDraft("d", "cam", (MessageDraft("t/d", b"d", False),), 0.0, "refused topic")
        for round_size in (1, 3, 2):  # seqs keep counting across batches and acks
            drafts = [
                EventDraft(
                    f"e{round_size}-{n}",
                    f"cam{n}",
                    (
                        MessageDraft(f"t/{n}/image", b"i" * n, True),
                        MessageDraft("t/e", b"{}", False),
                    ),
                    float(n),
                )
                for n in range(round_size)
            ]
            verdicts, stored = outbox.append_batch([drafts[0], dead, *drafts[1:]])
            assert verdicts == [True] * (round_size + 1)
            assert stored == outbox.read_after(0, 100)
            outbox.acknowledge(stored)
    finally:
        outbox.close()


def first_arrivals(messages: list[Received]) -> dict[str, list[tuple[str, int]]]:
    """Per camera, (event id, n) in order of first arrival; redeliveries ignored."""
    seen: set[str] = set()
    order: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for m in messages:
        if m.topic.endswith("/event"):
            doc = m.json()
            if doc["id"] not in seen:
                seen.add(doc["id"])
                order[doc["camera"]].append((doc["id"], doc["raw"]["n"]))
    return order


def assert_all_in_order(messages: list[Received], sent: dict[str, list[PlateEvent]]) -> None:
    arrived = first_arrivals(messages)
    for camera, events in sent.items():
        assert [n for _, n in arrived[camera]] == [e.raw["n"] for e in events], camera
        assert [i for i, _ in arrived[camera]] == [e.id for e in events], camera


def test_a_read_stops_at_the_row_that_reaches_its_byte_bound(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=10_000_000)
    outbox.open()
    try:
        sizes = [100, 50_000, 10, 70_000, 20]  # the large ones go to the blob log
        outbox.append_batch(
            [
                EventDraft(f"e{n}", "cam", (MessageDraft(f"t/{n}", b"x" * size, False),), 0.0)
                for n, size in enumerate(sizes)
            ]
        )
        # 100 + 50,000 + 10 is short of 60,000; the row of 70,000 takes it past.
        assert [len(m.payload) for m in outbox.read_after(0, 10, 60_000)] == sizes[:4]
        assert [len(m.payload) for m in outbox.read_after(0, 10, 1)] == sizes[:1]
        assert [len(m.payload) for m in outbox.read_after(0, 3, 10**9)] == sizes[:3]
        assert [len(m.payload) for m in outbox.read_after(0, 10)] == sizes
    finally:
        outbox.close()


def test_outbox_store_roundtrip_and_bound(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=1_000_000, sync=OutboxSync.FULL)
    outbox.open()
    small = EventDraft("e1", "cam", (MessageDraft("t/1", b"x" * 10, True),), 0.0)
    huge = EventDraft("e2", "cam", (MessageDraft("t/2", b"y" * 1_000_000, False),), 0.0)
    verdicts, stored = outbox.append_batch([small, huge])
    assert verdicts == [True, False]  # newest refused when full
    rows = outbox.read_after(0, 10)
    assert [(r.topic, r.payload, r.retain, r.last_of_event) for r in rows] == [
        ("t/1", b"x" * 10, True, True)
    ]
    assert stored == rows  # what the publisher is handed is what a replay reads
    outbox.close()
    reopened = Outbox(tmp_path / "o.sqlite3", max_bytes=1_000_000)
    reopened.open()
    assert (reopened.pending_events, reopened.pending_bytes) == (1, 10)
    reopened.acknowledge(reopened.read_after(0, 10))
    assert (reopened.pending_events, reopened.pending_bytes) == (0, 0)
    assert reopened.read_after(0, 10) == []
    reopened.close()


async def test_full_outbox_refuses_and_counts(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    mqtt_broker.stop()  # nothing drains
    config = gateway_config(mqtt_broker.url, tmp_path, outbox={"max_bytes": 1_000_000})
    async with Gateway(config) as gw:
        verdicts = [await gw.submit(numbered_event("cam_a", n, 300_000)) for n in range(5)]
        assert verdicts.count(Admission.ACCEPTED) == 3
        assert verdicts[3:] == [Admission.OUTBOX_FULL, Admission.OUTBOX_FULL]
        refused = sample(
            gw.metrics, "lpr_events_refused_total", camera="cam_a", reason="outbox_full"
        )
        assert refused == 2
        assert not gw.health()["healthy"]


async def test_broker_outage_500_events_none_lost_in_order(tmp_path: Path) -> None:
    broker = MosquittoProcess(persistence=True)
    broker.start()
    try:
        config = gateway_config(broker.url, tmp_path)
        with MqttCollector(
            broker.host,
            broker.port,
            topics=("lpr/+/event",),
            client_id="outage-sub",
            persistent=True,
        ) as sub:
            async with Gateway(config) as gw:
                await asyncio.to_thread(broker.stop)
                sent: dict[str, list[PlateEvent]] = defaultdict(list)
                for n in range(500):
                    event = numbered_event(CAMERAS[n % 3], n)
                    assert await gw.submit(event) is Admission.ACCEPTED
                    sent[event.camera].append(event)
                assert gw.outbox.pending_events == 500
                assert gw.health()["mqtt_connected"] is False
                await asyncio.to_thread(broker.start)
                await sub.until(lambda ms: len(first_arrivals_flat(ms)) >= 500, timeout=60)
            assert_all_in_order(sub.messages, sent)
    finally:
        broker.close()


def first_arrivals_flat(messages: list[Received]) -> set[str]:
    return {i for arrivals in first_arrivals(messages).values() for i, _ in arrivals}


def test_sigkill_with_events_in_outbox_then_restart(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config_doc = {
        "mqtt": {"url": mqtt_broker.url, "keepalive_seconds": 5, "publish_window": 4},
        "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config_doc))
    config = gateway_config(mqtt_broker.url, tmp_path)
    sent: dict[str, list[PlateEvent]] = defaultdict(list)

    async def fill_outbox_while_broker_down() -> None:
        mqtt_broker.stop()
        async with Gateway(config) as gw:
            for n in range(200):
                event = numbered_event(CAMERAS[n % 3], n, scene_bytes=300_000)
                assert await gw.submit(event) is Admission.ACCEPTED
                sent[event.camera].append(event)
        mqtt_broker.start()

    asyncio.run(fill_outbox_while_broker_down())

    def start_gateway() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config_path)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/event",)) as sub:
        process = start_gateway()
        try:
            # Kill it mid-replay: some events out, most still in the outbox.
            sub.wait_for(lambda ms: len(ms) >= 10, timeout=30)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            assert len(first_arrivals_flat(sub.messages)) < 200
            process = start_gateway()
            sub.wait_for(lambda ms: len(first_arrivals_flat(ms)) >= 200, timeout=60)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0  # orderly shutdown exits 0
    assert_all_in_order(sub.messages, sent)


async def test_the_wal_is_checkpointed_off_the_commit_path_and_stays_bounded(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=50_000_000)
    outbox.open()
    wal = tmp_path / "o.sqlite3-wal"
    try:
        # Commits do not checkpoint: the checkpointer's connection does.
        assert outbox.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        scene = os.urandom(1_000_000)
        peak = 0
        for n in range(150):  # 150 MB through the WAL, each row acknowledged
            _, stored = outbox.append_batch(
                [EventDraft(f"e{n}", "cam", (MessageDraft("t/s", scene, False),), 0.0)]
            )
            outbox.acknowledge(stored)
            peak = max(peak, wal.stat().st_size)
            await asyncio.sleep(0)
        # Without checkpoints the WAL would hold all 150 MB; it is started over
        # behind the background checkpoints, or emptied past its bound.
        assert peak <= WAL_LIMIT_BYTES + 2 * len(scene)
        assert outbox.pending_events == 0
    finally:
        outbox.close()
    assert not wal.exists()  # the last connection closed copied it all


def test_state_messages_saved_together_keep_their_order_and_clearing(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=1_000_000)
    outbox.open()
    try:
        outbox.save_retained_state("lpr/bridge/info", b"{}")
        outbox.save_retained_states(
            [
                ("lpr/a/availability", b"online"),
                ("lpr/b/availability", b"online"),
                ("lpr/a/availability", b"offline"),  # the later one wins
                ("lpr/bridge/info", b""),  # empty: cleared
            ]
        )
        assert outbox.load_retained_state() == {
            "lpr/b/availability": b"online",
            "lpr/a/availability": b"offline",
        }
    finally:
        outbox.close()


def camera_read(camera: str, n: int, known: str | None = None) -> EventDraft:
    """One read of `camera` as the pipeline stores it: a picture in the blob
    log, `last` inline, the event itself not retained; a known plate's read
    also sets its name's "last seen" (a bridge topic)."""
    messages = [
        MessageDraft(f"lpr/{camera}/image/scene", bytes([n]) * 20_000, True),
        MessageDraft(f"lpr/{camera}/event", b'{"n": %d}' % n, False),
        MessageDraft(f"lpr/{camera}/last", b'{"n": %d}' % n, True),
    ]
    if known is not None:
        messages.append(MessageDraft(f"lpr/bridge/last_seen/{known}", b"{}", True))
    return EventDraft(f"{camera}-{n}", camera, tuple(messages), float(n))


def stale_for(
    *cameras: str, base: str = "lpr", discovery_on: bool = True
) -> Callable[[str], str | None]:
    """The gateway's judge of what it publishes no more, for this config."""
    return functools.partial(
        retired_topic,
        topics=Topics(base),
        cameras=cameras,
        discovery_prefix="homeassistant",
        discovery_on=discovery_on,
        last_seen={"lpr/bridge/last_seen/alice"},  # the one known-plates name
    )


def test_a_retired_cameras_retained_topics_are_cleared_behind_what_waits(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=10_000_000)
    outbox.open()
    try:
        _, delivered = outbox.append_batch(
            [camera_read("gate", 1), camera_read("old", 1, known="alice"), camera_read("old_b", 1)]
        )
        outbox.acknowledge(delivered)
        outbox.save_retained_states(
            [
                ("lpr/gate/availability", b"online"),
                ("lpr/old/availability", b"online"),
                ("lpr/old/enabled", b"ON"),
                ("lpr/bridge/info", b"{}"),
                ("homeassistant/sensor/lpr/old_plate/config", b"{}"),  # the discovery's own
            ]
        )
        _, waiting = outbox.append_batch([camera_read("old", 2)])  # not yet delivered
        events_before = outbox.pending_events

        queued = outbox.retire_topics(stale_for("gate", "old_b"))

        assert queued == {"camera old is no longer configured": 4}
        pending = outbox.read_after(0, 100)
        assert [m.seq for m in pending[:3]] == [m.seq for m in waiting]  # its last read first
        clears = pending[3:]
        assert {m.topic for m in clears} == {
            "lpr/old/image/scene",
            "lpr/old/last",
            "lpr/old/availability",
            "lpr/old/enabled",
        }
        assert all(m.retain and m.payload == b"" for m in clears)
        assert not any(m.last_of_event for m in clears)  # no event: not counted as one
        assert outbox.pending_events == events_before
        # Its kept copy is no longer re-sent on connect; the rest is, its
        # reads' "last seen" of a known name too (the name's, not the camera's).
        assert outbox.load_retained_state() == {
            "lpr/gate/availability": b"online",
            "lpr/bridge/info": b"{}",
            "homeassistant/sensor/lpr/old_plate/config": b"{}",
        }
        kept = {topic for _, topic, _ in outbox.retained_rows_after(0, 100)}
        assert kept == {
            "lpr/gate/image/scene",
            "lpr/gate/last",
            "lpr/old_b/image/scene",
            "lpr/old_b/last",
            "lpr/bridge/last_seen/alice",
        }
        # A restart before the broker took them queues nothing twice.
        assert outbox.retire_topics(stale_for("gate", "old_b")) == {}
        assert len(outbox.read_after(0, 100)) == len(pending)

        # Delivered, in one batch or row by row: nothing of the camera is left.
        outbox.acknowledge(pending[:2])
        outbox.acknowledge(pending[2:])
        rows = outbox.db.execute("SELECT COUNT(*) FROM message WHERE topic LIKE 'lpr/old/%'")
        assert rows.fetchone() == (0,)
        kept = {topic for _, topic, _ in outbox.retained_rows_after(0, 100)}
        assert not any(topic.startswith("lpr/old/") for topic in kept)
        assert outbox.pending_bytes == 0
        assert outbox.retire_topics(stale_for("gate", "old_b")) == {}
    finally:
        outbox.close()


def test_a_new_base_topic_or_discovery_off_retires_what_they_made(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=10_000_000)
    outbox.open()
    try:
        _, delivered = outbox.append_batch([camera_read("gate", 1, known="alice")])
        outbox.acknowledge(delivered)
        outbox.save_retained_states(
            [
                ("lpr/gate/presence", b"{}"),
                ("homeassistant/sensor/lpr/gate_plate/config", b"{}"),
                ("lpr/bridge/state", b"offline"),
            ]
        )
        assert outbox.retire_topics(stale_for("gate", discovery_on=False)) == {
            "Home Assistant discovery is off": 3  # last seen, presence, the config
        }
        moved = outbox.retire_topics(stale_for("gate", base="site1/lpr"))
        # images, last, bridge state (the clears queued above are cleared already)
        assert moved == {"it is not under the base topic (mqtt.base_topic changed)": 3}
        assert outbox.retained_rows_after(0, 100) == []
        assert outbox.load_retained_state() == {}
    finally:
        outbox.close()


def test_retiring_survives_a_restart_before_the_clears_are_delivered(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    outbox = Outbox(path, max_bytes=10_000_000)
    outbox.open()
    try:
        _, delivered = outbox.append_batch([camera_read("old", 1)])
        outbox.acknowledge(delivered)
        assert outbox.retire_topics(stale_for()) == {"camera old is no longer configured": 2}
    finally:
        outbox.close()
    again = Outbox(path, max_bytes=10_000_000)
    again.open()
    try:
        assert again.retire_topics(stale_for()) == {}
        clears = again.read_after(0, 100)
        assert sorted(m.topic for m in clears) == ["lpr/old/image/scene", "lpr/old/last"]
        assert again.retained_rows_after(0, 100) == []
        # The camera comes back before they went out: its clears go first, then its reads.
        _, new = again.append_batch([camera_read("old", 2)])
        assert again.retire_topics(stale_for("old")) == {}
        assert [m.seq for m in again.read_after(0, 100)] == [m.seq for m in clears + new]
    finally:
        again.close()
