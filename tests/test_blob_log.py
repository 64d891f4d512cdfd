"""The outbox's blob log: images in segment files, their rows in SQLite.

What is asserted is what the outbox promises: every payload read back byte
for byte, whether after a restart, a compaction, a dead letter's replay or
from an outbox written before the blob log; and segment files that nothing
refers to any more are gone (or kept, a bounded number of them, as spares to
be written over as later segments).
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path

import pytest

import gateway.blob_log
import gateway.outbox
from gateway.app import Gateway
from gateway.blob_log import BlobLog, BlobUnreadableError
from gateway.broker import MosquittoProcess
from gateway.config import OutboxSync
from gateway.event import Image, PlateEvent, Source, utc_now
from gateway.outbox import BLOB_MIN_BYTES, EventDraft, MessageDraft, Outbox
from gateway.pipeline import Admission
from tests.helpers import MqttCollector, gateway_config, sample


def image(tag: int, size: int = 100_000) -> bytes:
    """Distinct bytes per tag, so a payload read from the wrong place shows."""
    return (tag.to_bytes(4, "big") * (size // 4 + 1))[:size]


def read(n: int, camera: str = "cam", size: int = 100_000) -> EventDraft:
    return EventDraft(
        f"ev-{camera}-{n}",
        camera,
        (
            MessageDraft(f"lpr/{camera}/image/scene", image(n, size), True),
            MessageDraft(f"lpr/{camera}/event", b'{"n": %d}' % n, False),
        ),
        time.time(),
    )


def segment_files(outbox: Outbox) -> list[str]:
    return sorted(p.name for p in outbox.blobs.directory.iterdir())


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> int:
    """Segments of ~3 reads, so a test sees them fill, close and go."""
    size = 300_000
    monkeypatch.setattr(gateway.blob_log, "SEGMENT_BYTES", size)
    return size


def open_outbox(path: Path, sync: OutboxSync = OutboxSync.NORMAL) -> Outbox:
    outbox = Outbox(path, max_bytes=100_000_000, sync=sync)
    outbox.open()
    return outbox


# -- the blob log alone ---------------------------------------------------------


def test_appended_payloads_read_back_and_segments_roll(tmp_path: Path, small_segments: int) -> None:
    log = BlobLog(tmp_path / "blobs", sync=False)
    assert log.open() == []
    places = []
    for n in range(7):
        payloads = [image(n, 90_000), image(100 + n, 10)]
        segment, offset = log.append(payloads)
        places.append((segment, offset, payloads))
    for segment, offset, payloads in places:
        for payload in payloads:
            assert log.read(segment, offset, len(payload)) == payload
            offset += len(payload)
    assert log.segments() == [1, 2, 3]  # 3 appends of 90,010 bytes per 300,000
    log.close()
    reopened = BlobLog(tmp_path / "blobs", sync=True)
    assert reopened.open() == [1, 2, 3]
    assert reopened.current == 4  # never appends to a segment of an earlier run
    reopened.close()


def test_a_short_or_missing_segment_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    log = BlobLog(tmp_path / "blobs", sync=False)
    log.open()
    segment, offset = log.append([image(1, 5_000)])
    with pytest.raises(BlobUnreadableError, match="holds 5000 of the 6000 bytes"):
        log.read(segment, offset, 6_000)
    with pytest.raises(BlobUnreadableError, match="cannot be read"):
        log.read(segment + 7, 0, 10)
    log.close()


def test_cut_back_forgets_an_uncommitted_append(tmp_path: Path) -> None:
    log = BlobLog(tmp_path / "blobs", sync=False)
    log.open()
    log.append([b"kept" * 10])
    segment, start = log.append([b"dropped" * 10])
    log.cut_back(start)
    segment, offset = log.append([b"next"])
    assert offset == 40  # written over what was dropped
    assert log.read(segment, offset, 4) == b"next"
    log.close()
    assert log.size_of(segment) == 44  # closed: cut to what rows may refer to


def test_a_removed_segments_file_is_written_over_as_a_later_one(
    tmp_path: Path, small_segments: int
) -> None:
    """Its pages are in the kernel's cache already: copying into them is what
    this saves (see gateway/blob_log.py)."""
    log = BlobLog(tmp_path / "blobs", sync=False)
    log.open()
    log.append([image(1, 200_000)])
    first = log.current
    first_inode = os.stat(log.directory / f"{first:08d}.blob").st_ino
    log.append([image(2, 200_000)])  # rolls over to segment 2
    log.remove(first)
    assert sorted(p.name for p in log.directory.iterdir()) == [
        "00000002.blob",
        f"spare-{first:08d}.blob",
    ]
    segment, offset = log.append([image(3, 150_000)])  # rolls over to segment 3
    assert (segment, offset) == (3, 0)
    assert os.stat(log.directory / "00000003.blob").st_ino == first_inode
    assert log.read(3, 0, 150_000) == image(3, 150_000)
    log.append([image(4, 200_000)])  # closes 3: its file no longer holds image 1's tail
    assert log.size_of(3) == 150_000
    log.close()


def test_spares_are_bounded_and_an_earlier_runs_are_taken_over(tmp_path: Path) -> None:
    directory = tmp_path / "blobs"
    directory.mkdir()
    for n in (4, 5, 6):
        (directory / f"spare-{n:08d}.blob").write_bytes(b"old image" * 1000)
    log = BlobLog(directory, sync=True)
    log.open()
    try:
        names = sorted(p.name for p in directory.iterdir())
        # One spare became the first segment; one is left; the third is gone.
        assert len(names) == 2 == gateway.blob_log.SPARE_SEGMENTS
        assert "00000001.blob" in names
        segment, offset = log.append([b"new"])
        assert (segment, offset) == (1, 0)
        assert log.read(1, 0, 3) == b"new"
    finally:
        log.close()
    assert log.size_of(1) == 3


# -- the outbox on top of it ------------------------------------------------------


def test_images_go_to_the_blob_log_and_small_payloads_stay_inline(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path / "o.sqlite3")
    try:
        small = image(7, BLOB_MIN_BYTES - 1)
        draft = EventDraft(
            "ev",
            "cam",
            (
                MessageDraft("lpr/cam/image/plate", small, True),
                MessageDraft("lpr/cam/image/scene", image(8), True),
                MessageDraft("lpr/cam/event", b"{}", False),
            ),
            time.time(),
        )
        verdicts, stored = outbox.append_batch([draft])
        assert verdicts == [True]
        rows = outbox.db.execute(
            "SELECT topic, length(payload), blob_segment, blob_size FROM message ORDER BY seq"
        ).fetchall()
        assert rows == [
            ("lpr/cam/image/plate", BLOB_MIN_BYTES - 1, None, None),
            ("lpr/cam/image/scene", 0, outbox.blobs.current, 100_000),
            ("lpr/cam/event", 2, None, None),
        ]
        assert outbox.pending_bytes == BLOB_MIN_BYTES - 1 + 100_000 + 2
        assert outbox.read_after(0, 10) == stored
    finally:
        outbox.close()


def test_a_backlog_survives_a_restart_byte_for_byte_and_its_segments_then_go(
    tmp_path: Path, small_segments: int
) -> None:
    path = tmp_path / "o.sqlite3"
    outbox = open_outbox(path, OutboxSync.FULL)
    stored = [m for n in range(10) for m in outbox.append_batch([read(n)])[1]]
    outbox.close()  # the broker never acknowledged any of it

    outbox = open_outbox(path)
    try:
        replay = outbox.read_after(0, 100)
        assert [m.payload for m in replay] == [m.payload for m in stored]
        assert outbox.pending_events == 10
        old_segments = segment_files(outbox)[:-1]
        assert len(old_segments) >= 3
        outbox.acknowledge(replay)
        # Only the latest scene (retained) is still referred to: every other
        # segment of the earlier run is deleted.
        outbox.collect_segments()
        pinned = {
            segment
            for (segment,) in outbox.db.execute(
                "SELECT m.blob_segment FROM retained r JOIN message m ON m.seq = r.seq"
                " WHERE m.blob_segment IS NOT NULL"
            )
        }
        assert len(pinned) == 1
        assert set(outbox.blobs.segments()) == {*pinned, outbox.blobs.current}
        ((_, _topic, payload),) = [
            r for r in outbox.retained_rows_after(0, 10) if r[1].endswith("scene")
        ]
        assert payload == image(9)
    finally:
        outbox.close()


def test_retained_images_outlive_their_segment_by_being_copied_forward(
    tmp_path: Path, small_segments: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.outbox, "COMPACT_GARBAGE_BYTES", small_segments)
    outbox = open_outbox(tmp_path / "o.sqlite3")
    try:
        # Camera "quiet" reads once; camera "busy" fills segment after segment.
        _, stored = outbox.append_batch([read(0, "quiet")])
        outbox.acknowledge(stored)
        for n in range(1, 30):
            _, stored = outbox.append_batch([read(n, "busy")])
            outbox.acknowledge(stored)
        # Bounded: the current segment, and at most one the retained quiet
        # scene was copied into on its way forward; and the spares.
        assert len(outbox.blobs.segments()) <= 2
        spares = [name for name in segment_files(outbox) if name.startswith("spare-")]
        assert len(spares) <= gateway.blob_log.SPARE_SEGMENTS
        retained = {topic: payload for _, topic, payload in outbox.retained_rows_after(0, 10)}
        assert retained["lpr/quiet/image/scene"] == image(0)
        assert retained["lpr/busy/image/scene"] == image(29)
    finally:
        outbox.close()


def spy_on_compaction(outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Per collection that compacted: the live bytes of each segment it copied forward."""
    collections: list[list[int]] = []
    copy_forward, collect = outbox._copy_forward, outbox.collect_segments

    def counted_copy(segment: int) -> None:
        (size,) = outbox.db.execute(
            "SELECT COALESCE(SUM(blob_size), 0) FROM message WHERE blob_segment = ?", (segment,)
        ).fetchone()
        collections[-1].append(size)
        copy_forward(segment)

    def counted_collect() -> None:
        collections.append([])
        collect()
        if not collections[-1]:
            collections.pop()

    monkeypatch.setattr(outbox, "_copy_forward", counted_copy)
    monkeypatch.setattr(outbox, "collect_segments", counted_collect)
    return collections


def test_cameras_reading_in_turn_have_nothing_copied_forward(
    tmp_path: Path, small_segments: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each camera's next read supersedes its retained scene: a segment left
    alone empties by itself. Compacting each half-empty segment at once copied
    half of every image forward (gateway/outbox.py, COMPACT_GARBAGE_BYTES)."""
    outbox = open_outbox(tmp_path / "o.sqlite3")
    compactions = spy_on_compaction(outbox, monkeypatch)
    shuffle = random.Random(12).shuffle
    last: dict[int, int] = {}  # camera -> its latest read
    try:
        n = 0
        for _ in range(10):  # 12 cameras, each once per round in a shuffled order
            cameras = list(range(12))
            shuffle(cameras)
            for camera in cameras:
                n += 1
                outbox.acknowledge(outbox.append_batch([read(n, f"cam{camera}")])[1])
                last[camera] = n
        assert compactions == []
        retained = {topic: payload for _, topic, payload in outbox.retained_rows_after(0, 30)}
        for camera, n in last.items():
            assert retained[f"lpr/cam{camera}/image/scene"] == image(n)
    finally:
        outbox.close()


def test_compaction_waits_for_garbage_then_moves_a_bounded_amount_at_a_time(
    tmp_path: Path, small_segments: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.outbox, "COMPACT_GARBAGE_BYTES", 1_000_000)
    monkeypatch.setattr(gateway.outbox, "COMPACT_STEP_BYTES", 150_000)
    outbox = open_outbox(tmp_path / "o.sqlite3")
    compactions = spy_on_compaction(outbox, monkeypatch)
    try:
        # Each segment: a quiet camera's only read (60 KB, retained for good)
        # and two of a busy camera's, superseded by its next reads: 200 KB of
        # garbage per segment once closed.
        n = 0
        for quiet in range(8):
            outbox.acknowledge(outbox.append_batch([read(quiet, f"quiet{quiet}", 60_000)])[1])
            for _ in range(2):
                n += 1
                outbox.acknowledge(outbox.append_batch([read(100 + n, "busy")])[1])
        # Nothing moved before 1,000,000 bytes of garbage (5 closed segments);
        # then at most 150,000 bytes per collection: two quiet scenes at a time.
        assert compactions, "nothing compacted"
        assert compactions[0] == [60_000, 60_000]
        assert all(sum(moved) <= 150_000 for moved in compactions)
        retained = {topic: payload for _, topic, payload in outbox.retained_rows_after(0, 20)}
        for quiet in range(8):
            assert retained[f"lpr/quiet{quiet}/image/scene"] == image(quiet, 60_000)
        assert retained["lpr/busy/image/scene"] == image(100 + n)
    finally:
        outbox.close()


def test_dead_letters_keep_their_images_through_replay_and_drop_frees_them(
    tmp_path: Path, small_segments: int
) -> None:
    outbox = open_outbox(tmp_path / "o.sqlite3")
    try:
        _, stored = outbox.append_batch([read(1)])
        assert outbox.dead_letter_event("ev-cam-1", stored[0].seq, "test") == 2
        for n in range(2, 12):  # enough to close and collect segments meanwhile
            _, more = outbox.append_batch([read(n, "other")])
            outbox.acknowledge(more)
        assert outbox.replay_dead_letters(["ev-cam-1"]) == 1
        (scene, event) = outbox.read_after(0, 10)
        assert (scene.payload, event.payload) == (image(1), b'{"n": 1}')
        assert outbox.dead_letter_event("ev-cam-1", scene.seq, "again") == 2
        assert outbox.drop_dead_letters(None) == 1
        referenced = {
            row[0]
            for row in outbox.db.execute(
                "SELECT blob_segment FROM message UNION SELECT blob_segment FROM dead_letter"
            )
        }
        on_disk = set(outbox.blobs.segments()) - {outbox.blobs.current}
        assert on_disk <= referenced
    finally:
        outbox.close()


def test_an_outbox_from_before_the_blob_log_is_read_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the schema of the previous release
        db.executescript(
            """
            CREATE TABLE message (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,
                camera TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
                retain INTEGER NOT NULL, last_of_event INTEGER NOT NULL,
                accepted_at REAL NOT NULL);
            CREATE TABLE dead_letter (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL,
                camera TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
                retain INTEGER NOT NULL, last_of_event INTEGER NOT NULL,
                accepted_at REAL NOT NULL, reason TEXT NOT NULL, dead_at REAL NOT NULL);
            """
        )
        db.execute(
            "INSERT INTO message (event_id, camera, topic, payload, retain, last_of_event,"
            " accepted_at) VALUES ('old', 'cam', 'lpr/cam/image/scene', ?, 1, 0, 1.0),"
            " ('old', 'cam', 'lpr/cam/event', X'7B7D', 0, 1, 1.0)",
            (image(3),),
        )
    outbox = open_outbox(path)
    try:
        assert outbox.pending_bytes == 100_000 + 2
        _, stored = outbox.append_batch([read(4)])
        assert [m.payload for m in outbox.read_after(0, 10)] == [
            image(3),
            b"{}",
            *[m.payload for m in stored],
        ]
    finally:
        outbox.close()


async def test_a_lost_segment_is_a_dead_letter_and_everything_else_is_published(
    mqtt_broker: MosquittoProcess, tmp_path: Path, small_segments: int
) -> None:
    """Someone deleted a segment file of a stopped gateway's backlog: that read
    is set aside with the reason, the others are published."""
    path = tmp_path / "outbox.sqlite3"
    outbox = open_outbox(path)
    for camera, n in (("a", 1), ("b", 2)):  # 200 KB each: a segment each
        outbox.append_batch([read(n, camera, size=200_000)])
    lost = outbox.db.execute(
        "SELECT blob_segment FROM message WHERE event_id = 'ev-a-1' AND blob_segment IS NOT NULL"
    ).fetchone()[0]
    outbox.close()
    os.unlink(path.with_name(path.name + "-blobs") / f"{lost:08d}.blob")

    # The cameras still configured: a camera gone from the config has its
    # retained topics emptied behind its backlog.
    cameras = [{"id": "a", "protocol": "http"}, {"id": "b", "protocol": "http"}]
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=cameras)
    topics = ("lpr/+/event", "lpr/+/image/scene")
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=topics) as sub:
        async with Gateway(config) as gw:
            received = await sub.until(lambda ms: any(m.topic == "lpr/b/event" for m in ms))
            assert {m.topic: m.payload for m in received}["lpr/b/image/scene"] == image(2, 200_000)
            assert not any(m.topic.startswith("lpr/a/") for m in received)
            assert sample(gw.metrics, "lpr_outbox_dead_lettered_total", reason="unreadable") == 1
            (letter,) = gw.outbox.dead_letters()
            assert letter.event_id == "ev-a-1"
            assert "cannot be read back" in letter.reason
            assert await gw.submit(plate_event()) is Admission.ACCEPTED


def plate_event() -> PlateEvent:
    return PlateEvent(
        camera="cam",
        source=Source.INJECT,
        plate="AFTER1",
        received=utc_now(),
        scene_image=Image(b"\xff\xd8" + bytes(50_000)),
    )
