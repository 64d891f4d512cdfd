"""The read history: a real SQLite file, searched, pruned and exported; and a
gateway that keeps every published read in it (real mosquitto)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import gateway.history
from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.config import HistoryImages
from gateway.event import Image, PlateEvent, Source, utc_now
from gateway.history import (
    PRUNE_STEP,
    HistoryQuery,
    HistoryRecord,
    HistoryStore,
    HistoryWriter,
    one_edit_patterns,
)
from gateway.pipeline import Admission
from tests.helpers import MqttCollector, gateway_config, sample

DAY = 86400.0
NOW = 1_790_000_000.0


def record(
    plate: str, n: int, camera: str = "gate", known: str | None = None, at: float = NOW
) -> HistoryRecord:
    event = {"id": f"id-{n}", "plate": plate, "camera": camera, "confidence": 0.9}
    return HistoryRecord(
        id=f"id-{n}",
        camera=camera,
        plate=plate,
        known=known,
        time=at + n,
        event_json=json.dumps(event).encode(),
        plate_image=b"\xff\xd8plate" + bytes([n % 256]),
        scene_image=b"\xff\xd8scene" * 100,
    )


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    history = HistoryStore(tmp_path / "history.sqlite3", 30, 10_000_000, HistoryImages.PLATE)
    history.open()
    return history


def plates(rows: list[gateway.history.HistoryRow]) -> list[str]:
    return [r.plate for r in rows]


def test_search_by_fragment_camera_known_and_time_newest_first(store: HistoryStore) -> None:
    store.add(
        [
            record("B AB 1234", 1, known="Staff"),
            record("B-XY 99", 2, camera="yard"),
            record("M AB 77", 3),
            record("B AB 1234", 1),  # redelivered: kept once
        ]
    )
    assert plates(store.search(HistoryQuery(plate="ab"))) == ["M AB 77", "B AB 1234"]
    assert plates(store.search(HistoryQuery(plate="bab12"))) == ["B AB 1234"]  # normalized
    assert plates(store.search(HistoryQuery(camera="yard"))) == ["B-XY 99"]
    assert plates(store.search(HistoryQuery(known="Staff"))) == ["B AB 1234"]
    window = HistoryQuery(since=NOW + 2, until=NOW + 3)
    assert plates(store.search(window)) == ["B-XY 99"]
    assert store.count(HistoryQuery()) == 3
    assert plates(store.search(HistoryQuery(), limit=1, offset=1)) == ["B-XY 99"]
    # What a search returns is the event JSON as it was published.
    (row,) = store.search(HistoryQuery(camera="yard"))
    assert row.event["id"] == "id-2" and row.has_plate_image and not row.has_scene_image


def test_fuzzy_finds_a_plate_misread_by_one_character(store: HistoryStore) -> None:
    store.add([record("B AB 1234", 1), record("B AB 1284", 2), record("B AB 12", 3)])
    assert plates(store.search(HistoryQuery(plate="AB1234"))) == ["B AB 1234"]
    fuzzy = plates(store.search(HistoryQuery(plate="AB1234", fuzzy=True)))
    assert fuzzy == ["B AB 1284", "B AB 1234"]  # one substituted; "AB12" is two away
    # LIKE's wildcards in what a user types are text, not wildcards.
    assert store.search(HistoryQuery(plate="%")) == []
    assert "A_B" in one_edit_patterns("AB") and "B" in one_edit_patterns("AB")


@pytest.mark.parametrize(
    ("images", "plate_kept", "scene_kept"),
    [
        (HistoryImages.NONE, False, False),
        (HistoryImages.PLATE, True, False),
        (HistoryImages.ALL, True, True),
    ],
)
def test_the_pictures_kept_follow_history_images(
    tmp_path: Path, images: HistoryImages, plate_kept: bool, scene_kept: bool
) -> None:
    history = HistoryStore(tmp_path / "h.sqlite3", 30, 10_000_000, images)
    history.open()
    history.add([record("B AB 1", 5)])
    assert (history.image("id-5", "plate") is not None) == plate_kept
    assert (history.image("id-5", "scene") is not None) == scene_kept
    assert history.image("id-5", "../etc/passwd") is None
    history.close()


def test_pruning_by_age_then_by_size_goes_in_small_steps(tmp_path: Path) -> None:
    history = HistoryStore(tmp_path / "h.sqlite3", 1, 400_000, HistoryImages.PLATE)
    history.open()
    old = [record("OLD", n, at=NOW - 3 * DAY) for n in range(PRUNE_STEP + 10)]
    new = [record("NEW", 1000 + n) for n in range(100)]
    history.add(old + new)
    assert history.prune_step(now=NOW) == PRUNE_STEP  # one step, not everything at once
    assert history.prune_step(now=NOW) == 10
    assert history.count(HistoryQuery(plate="OLD")) == 0
    assert history.count(HistoryQuery(plate="NEW")) == 100
    # Now over max_bytes: the oldest of what is left goes, a step at a time.
    history.max_bytes = history.total_bytes // 2
    while history.total_bytes > history.max_bytes:
        assert history.prune_step(now=NOW) > 0
    assert history.count(HistoryQuery()) == 0  # one step took every row left here
    history.close()


def test_csv_export_holds_every_match_and_defuses_formulas(store: HistoryStore) -> None:
    store.add([record("=HYPERLINK(1)", 1), record("B AB 1", 2, known="@Staff")])
    text = "".join(store.export_csv(HistoryQuery()))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["time", "camera", "plate", "confidence", "direction", "known", "match", "id"]
    assert [r[-1] for r in rows[1:]] == ["id-2", "id-1"]
    assert rows[2][2] == "'=HYPERLINK(1)"  # a spreadsheet shows it as text
    assert rows[1][5] == "'@Staff"


def test_the_writer_drops_reads_rather_than_holding_intake_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A history whose disk stalls: the loop's `record` never blocks; past the
    queue's bound the reads are left out of the history and counted."""
    release = threading.Event()

    class StalledStore(HistoryStore):
        def add(self, records: object) -> None:  # type: ignore[override]
            release.wait(10)

    monkeypatch.setattr(gateway.history, "MAX_QUEUED", 5)
    dropped: list[int] = []
    writer = HistoryWriter(
        StalledStore(tmp_path / "h.sqlite3", 30, 10**9, HistoryImages.PLATE), dropped.append
    )
    writer.start()
    started = time.monotonic()
    for n in range(50):
        writer.record(record("B AB 1", n))
    assert time.monotonic() - started < 5  # never waited for the stalled disk
    assert writer.dropped >= 50 - 5 - 1 and len(dropped) == writer.dropped
    release.set()
    writer.close()


# -- end to end --------------------------------------------------------------------


async def test_a_gateway_keeps_every_published_read_in_its_history(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        known_plates={"Staff": ["B AB 1234"]},
        history={"enabled": True, "images": "plate"},
    )
    reads = [
        PlateEvent(
            camera="gate",
            source=Source.INJECT,
            plate=plate,
            received=utc_now(),
            plate_image=Image(b"\xff\xd8" + plate.encode()),
            scene_image=Image(b"\xff\xd8" + bytes(50_000)),
        )
        for plate in ("B AB 1234", "M XY 99", "<img src=x onerror=alert(1)>")
    ]
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/gate/event",)) as sub:
        async with Gateway(config) as gw:
            for read in reads:
                assert await gw.submit(read) is Admission.ACCEPTED
            await sub.until(lambda ms: len(ms) >= 3, timeout=20)
            assert sample(gw.metrics, "lpr_history_dropped_total") == 0
    published = {m.json()["id"]: m.payload for m in sub.messages}
    history = HistoryStore(tmp_path / "history.sqlite3", 30, 10**9, HistoryImages.PLATE)
    history.open()
    rows = history.search(HistoryQuery())
    assert {r.id for r in rows} == set(published)
    for row in rows:  # the very JSON the subscribers got
        assert row.event == json.loads(published[row.id])
    (staff,) = history.search(HistoryQuery(known="Staff"))
    assert staff.plate == "B AB 1234"
    assert history.image(staff.id, "plate") == b"\xff\xd8B AB 1234"
    assert history.image(staff.id, "scene") is None  # images: plate
    history.close()

    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        yaml.safe_dump({"outbox": {"path": str(config.outbox.path)}, "history": {"enabled": True}})
    )
    exported = await asyncio.to_thread(history_cli, config_path, "--csv", "--plate", "xy99")
    assert exported.returncode == 0, exported.stderr
    lines = list(csv.reader(io.StringIO(exported.stdout)))
    assert [line[2] for line in lines[1:]] == ["M XY 99"]
    listed = await asyncio.to_thread(history_cli, config_path)
    assert listed.returncode == 0, listed.stderr
    assert "3 of 3 reads" in listed.stderr


def history_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "history", "search", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
