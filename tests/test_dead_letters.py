"""No message stalls delivery: dead letters, supervised tasks, dedup of stored reads only.

Real mosquitto, the real gateway (in process), real outbox files.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.config import OutboxSync
from gateway.errors import StartupError
from gateway.event import CameraEvent, Image, PlateEvent, Source, utc_now
from gateway.outbox import EventDraft, MessageDraft, Outbox, OutboxOpenError, StoredMessage
from gateway.pipeline import Admission
from gateway.publisher import DEAD_LETTER_AFTER_DROPS
from tests.helpers import MqttCollector, gateway_config, sample


def plate_read(camera: str, plate: str, scene: bytes = b"\xff\xd8scene") -> PlateEvent:
    return PlateEvent(
        camera=camera,
        source=Source.INJECT,
        plate=plate,
        received=utc_now(),
        plate_image=Image(b"\xff\xd8plate"),
        scene_image=Image(scene),
    )


async def until(condition: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_config(path: Path, config_outbox: Path, broker_url: str) -> Path:
    path.write_text(
        f"mqtt: {{url: '{broker_url}'}}\n"
        f"outbox: {{path: '{config_outbox}'}}\n"
        "metrics: {listen: ''}\n"
        "cameras:\n  - {id: cam, protocol: http, path: /lpr/cam}\n",
        encoding="utf-8",
    )
    return path


# -- the poisoned row: a topic the broker refuses, already in the outbox ---------


async def test_a_poisoned_row_left_by_an_older_version_is_set_aside(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """An outbox from before topics were checked holds `camera_event/a\\x00b`: it
    is dead-lettered, and every read behind it is published."""
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=[{"id": "cam", "protocol": "http"}])
    outbox = Outbox(config.outbox.path, config.outbox.max_bytes, OutboxSync.NORMAL)
    outbox.open()
    poisoned = MessageDraft("lpr/cam/camera_event/a\x00b", b'{"kind": "a\\u0000b"}', False)
    outbox.append_batch([EventDraft("poisoned-1", "cam", (poisoned,), time.time())])
    outbox.close()

    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/cam/event",)) as sub:
        async with Gateway(config) as gw:
            reads = [plate_read("cam", f"GOOD{n}") for n in range(3)]
            for read in reads:
                assert await gw.submit(read) is Admission.ACCEPTED
            arrived = await sub.until_count("lpr/cam/event", 3)
            await until(lambda: gw.outbox.pending_events == 0, what="outbox drained")
            health = gw.health()
            dead = sample(gw.metrics, "lpr_outbox_dead_lettered_total", reason="invalid_topic")
            reconnects = sample(gw.metrics, "lpr_mqtt_reconnects_total")
    assert [m.json()["id"] for m in arrived] == [r.id for r in reads]
    assert dead == 1
    assert reconnects == 1  # never dropped by the broker
    assert health["healthy"] and health["status"] == "degraded"
    assert health["dead_letters"] == 1
    assert any("dead letters" in w for w in health["warnings"])

    listed = run_cli(
        "outbox",
        "dead-letters",
        "list",
        "--json",
        "-c",
        str(write_config(tmp_path / "c.yaml", config.outbox.path, mqtt_broker.url)),
    )
    assert listed.returncode == 0, listed.stderr
    (letter,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert letter["event_id"] == "poisoned-1"
    assert letter["topics"] == ["lpr/cam/camera_event/a\x00b"]
    assert "U+0000" in letter["reason"]


# -- a message after which the broker drops the connection ---------------------


@pytest.fixture
def small_packet_broker() -> Iterator[MosquittoProcess]:
    """mosquitto disconnects a client that sends a packet over max_packet_size."""
    broker = MosquittoProcess(extra_config=("max_packet_size 100000",))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


async def test_a_message_the_broker_drops_us_for_is_isolated_and_set_aside(
    small_packet_broker: MosquittoProcess, tmp_path: Path
) -> None:
    broker = small_packet_broker
    config = gateway_config(broker.url, tmp_path, cameras=[{"id": "cam", "protocol": "http"}])
    with MqttCollector(broker.host, broker.port, topics=("lpr/cam/event",)) as sub:
        async with Gateway(config) as gw:
            await until(lambda: gw.publisher is not None and gw.publisher.connected)
            before = [plate_read("cam", f"BEFORE{n}") for n in range(5)]
            too_big = plate_read("cam", "HUGE1", scene=b"\xff\xd8" + bytes(300_000))
            after = [plate_read("cam", f"AFTER{n}") for n in range(5)]
            for read in [*before, too_big, *after]:
                assert await gw.submit(read) is Admission.ACCEPTED
            wanted = {r.id for r in [*before, *after]}
            # Events in flight at a drop are sent again (same id): wait for ids.
            arrived = await sub.until(
                lambda msgs: wanted <= {m.json()["id"] for m in msgs}, timeout=60
            )
            await until(lambda: gw.outbox.pending_events == 0, timeout=30, what="drained")
            dead = sample(gw.metrics, "lpr_outbox_dead_lettered_total", reason="broker_dropped")
            letters = gw.outbox.dead_letters()
    first_seen: list[str] = []
    for message in arrived:
        if message.json()["id"] not in first_seen:
            first_seen.append(message.json()["id"])
    assert first_seen == [r.id for r in [*before, *after]]
    assert dead == 1
    (letter,) = letters
    assert letter.event_id == too_big.id
    assert f"{DEAD_LETTER_AFTER_DROPS} times running" in letter.reason
    # The whole event is set aside, the scene that caused it among it.
    assert "lpr/cam/image/scene" in letter.topics
    assert "lpr/cam/event" in letter.topics


# -- dead letters from the command line ----------------------------------------


def test_dead_letters_replay_and_drop_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path, 10_000_000)
    outbox.open()
    drafts = [
        EventDraft(
            f"ev-{n}",
            "cam",
            (MessageDraft(f"lpr/cam/x{n}", b"p", False),),
            time.time(),
            dead_letter_reason="test",
        )
        for n in range(3)
    ]
    outbox.append_batch(drafts)
    assert outbox.dead_letter_events == 3
    assert outbox.pending_events == 0
    config = write_config(tmp_path / "c.yaml", path, "mqtt://127.0.0.1:1")

    # replay and drop need the outbox's lock: refused while it is held
    busy = run_cli("outbox", "dead-letters", "replay", "--all", "-c", str(config))
    assert busy.returncode == 2
    assert "in use by another process" in busy.stderr
    listed = run_cli("outbox", "dead-letters", "list", "-c", str(config))
    assert listed.returncode == 0
    assert "3 dead-lettered events" in listed.stdout
    outbox.close()

    replayed = run_cli("outbox", "dead-letters", "replay", "--event", "ev-1", "-c", str(config))
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith("1 events put back")
    dropped = run_cli("outbox", "dead-letters", "drop", "--all", "-c", str(config))
    assert dropped.returncode == 0, dropped.stderr
    assert dropped.stdout.startswith("2 events dropped")
    nothing = run_cli("outbox", "dead-letters", "drop", "-c", str(config))
    assert nothing.returncode == 2  # neither --event nor --all

    again = Outbox(path, 10_000_000)
    again.open()
    try:
        assert again.dead_letter_events == 0
        assert again.pending_events == 1
        assert [m.event_id for m in again.read_after(0, 10)] == ["ev-1"]
    finally:
        again.close()


# -- supervised tasks -------------------------------------------------------------


async def test_a_crashed_publisher_is_restarted_and_reported(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=[{"id": "cam", "protocol": "http"}])
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/cam/event",)) as sub:
        async with Gateway(config) as gw:
            publisher = gw.publisher
            assert publisher is not None
            await until(lambda: publisher.connected, what="connected")
            original = publisher._run_session
            crashes = 0

            async def crash_once() -> None:
                nonlocal crashes
                if crashes == 0:
                    crashes += 1
                    raise RuntimeError("injected fault")
                await original()

            publisher._run_session = crash_once  # type: ignore[method-assign]
            # Make the running session end, so the next one is the injected fault.
            assert publisher.link.is_open
            publisher.link.close()
            await until(lambda: "mqtt-publisher" in gw.task_crashes, what="the crash")
            during = gw.health()
            read = plate_read("cam", "AFTERCRASH")
            assert await gw.submit(read) is Admission.ACCEPTED
            (event,) = await sub.until_count("lpr/cam/event", 1, timeout=30)
            restarts = sample(gw.metrics, "lpr_task_restarts_total", task="mqtt-publisher")
            after = gw.health()
    assert event.json()["id"] == read.id
    assert restarts == 1
    assert "injected fault" in gw.task_crashes["mqtt-publisher"][1]
    assert not during["healthy"] or during["status"] == "degraded"
    assert after["status"] == "degraded"
    assert any("mqtt-publisher: restarted" in w for w in after["warnings"])


# -- dedup counts only what is stored -------------------------------------------


async def test_a_read_that_fails_leaves_dedup_as_it_was(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        cameras=[{"id": "cam", "protocol": "http"}],
        dedup={"window_seconds": 60},
    )
    async with Gateway(config) as gw:
        broken = PlateEvent(
            camera="cam", source=Source.INJECT, plate="B AB 1", received=utc_now(), raw={"x": {1j}}
        )
        with pytest.raises(TypeError):
            await gw.submit(broken)  # not JSON-serialisable: a bug, not a stored read
        assert await gw.submit(plate_read("cam", "B AB 1")) is Admission.ACCEPTED
        assert await gw.submit(plate_read("cam", "B AB 1")) is Admission.DUPLICATE


async def test_a_refused_read_does_not_make_its_twin_a_duplicate(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Two reads of one plate at once: the first refused (outbox full) must not
    make the second a "duplicate" that the camera is told is safe."""
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        cameras=[{"id": "cam", "protocol": "http"}],
        outbox={"max_bytes": 1_000_000},
        dedup={"window_seconds": 60},
    )
    async with Gateway(config) as gw:
        too_big = plate_read("cam", "TWIN1", scene=bytes(1_200_000))
        small = plate_read("cam", "TWIN1")
        first, second = await asyncio.gather(gw.submit(too_big), gw.submit(small))
    assert first is Admission.OUTBOX_FULL
    assert second is Admission.ACCEPTED


async def test_without_dedup_reads_of_one_plate_share_commits(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """A read waits for its twin's outcome only when dedup could make it a
    duplicate; without dedup, reads of one plate (a car standing at the gate)
    are stored together like any others, not one commit each."""
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        cameras=[{"id": "cam", "protocol": "http"}],
        dedup={"window_seconds": 0},
    )
    async with Gateway(config) as gw:
        batches: list[int] = []
        append_batch = gw.outbox.append_batch

        def counting(drafts: Sequence[EventDraft]) -> tuple[list[bool], list[StoredMessage]]:
            batches.append(len(drafts))
            return append_batch(drafts)

        gw.outbox.append_batch = counting  # type: ignore[method-assign]
        results = await asyncio.gather(*(gw.submit(plate_read("cam", "SAME1")) for _ in range(10)))
    assert results == [Admission.ACCEPTED] * 10
    assert sum(batches) == 10
    assert len(batches) < 10  # one commit each when every read waited for the one before


# -- JSON stays JSON --------------------------------------------------------------


async def test_non_finite_numbers_and_lone_surrogates_never_reach_a_payload(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=[{"id": "cam", "protocol": "http"}])
    topics = ("lpr/cam/event", "lpr/cam/camera_event/#")
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=topics) as sub:
        async with Gateway(config) as gw:
            read = PlateEvent(
                camera="cam",
                source=Source.INJECT,
                plate="NAN1",
                received=utc_now(),
                confidence=float("nan"),
                raw={"azimuth": float("inf"), "note": "a\ud800b"},
            )
            notice = CameraEvent(
                camera="cam",
                source=Source.INJECT,
                kind="a\x00b\tc\x7f\x85\ufdd0",
                received=utc_now(),
                data={"x": float("-inf")},
            )
            assert await gw.submit(read) is Admission.ACCEPTED
            assert await gw.submit(notice) is Admission.ACCEPTED
            await sub.until(lambda msgs: len(msgs) >= 2)
    by_topic = {m.topic: m for m in sub.messages}
    event = json.loads(by_topic["lpr/cam/event"].payload)  # strict: no NaN
    assert event["confidence"] is None
    assert event["raw"] == {"azimuth": None, "note": "a\ufffdb"}
    (kind_topic,) = [t for t in by_topic if "/camera_event/" in t]
    assert kind_topic == "lpr/cam/camera_event/a_b_c"
    assert json.loads(by_topic[kind_topic].payload)["data"] == {"x": None}


# -- start-up failures and files ---------------------------------------------------


async def test_a_corrupt_outbox_stops_the_start_with_one_clear_line(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=[{"id": "cam", "protocol": "http"}])
    config.outbox.path.parent.mkdir(parents=True, exist_ok=True)
    garbage = b"this is not an SQLite database" * 1000
    config.outbox.path.write_bytes(garbage)
    gw = Gateway(config)
    with pytest.raises(StartupError, match="move it aside"):
        await gw.start()
    await gw.stop()
    assert config.outbox.path.read_bytes() == garbage  # nothing deleted


def test_startup_failures_exit_2_naming_what_and_where(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    import socket

    corrupt = tmp_path / "corrupt" / "outbox.sqlite3"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"garbage" * 1000)
    result = run_cli("run", "-c", str(write_config(tmp_path / "a.yaml", corrupt, mqtt_broker.url)))
    assert result.returncode == 2
    assert f"outbox {corrupt}" in result.stderr
    assert "Traceback" not in result.stderr

    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        result = run_cli(
            "run",
            "-c",
            str(write_config(tmp_path / "b.yaml", readonly / "o.sqlite3", mqtt_broker.url)),
        )
        assert result.returncode == 2
        assert str(readonly) in result.stderr
        assert "Traceback" not in result.stderr

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(
            f"mqtt: {{url: '{mqtt_broker.url}'}}\n"
            f"outbox: {{path: '{tmp_path / 'ok' / 'o.sqlite3'}'}}\n"
            f"http: {{listen: '127.0.0.1:{port}'}}\n"
            "metrics: {listen: ''}\n"
            "cameras:\n  - {id: cam, protocol: http, path: /lpr/cam}\n",
            encoding="utf-8",
        )
        result = run_cli("run", "-c", str(config))
    assert result.returncode == 2
    assert f"http.listen 127.0.0.1:{port}" in result.stderr
    assert "set http.listen to a free port" in result.stderr
    assert "Traceback" not in result.stderr


async def test_outbox_files_are_private(mqtt_broker: MosquittoProcess, tmp_path: Path) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=[{"id": "cam", "protocol": "http"}])
    async with Gateway(config) as gw:
        # a scene large enough for the blob log: its segment files are private too
        scene = b"\xff\xd8" + bytes(100_000)
        assert await gw.submit(plate_read("cam", "PRIV1", scene)) is Admission.ACCEPTED
        directory = config.outbox.path.parent
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        segments = list(directory.glob("*-blobs/*.blob"))
        assert segments
        for path in [directory, *directory.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), path
        second = Outbox(config.outbox.path, config.outbox.max_bytes)
        with pytest.raises(OutboxOpenError, match="in use"):
            second.open()
