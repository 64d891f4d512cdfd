"""The read history: every published read, searchable, in its own SQLite file.

Never the outbox: the outbox holds what the broker still owes, and forgets it
once acknowledged; the history keeps what was read, for people looking back
(which car came when), bounded by days and by bytes.

Writing it never slows the publish path: the pipeline hands each stored read
(its event JSON and pictures, already rendered) to `HistoryWriter`, which
queues it for its own thread and drops the oldest queued reads, counted, when
that thread falls behind. SQLite releases the GIL while it writes, so the
history costs the loop one queue append per read. Pruning (age, then size)
runs on the same thread in small steps between batches, so a large backlog
of old rows never holds a write up for long.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.config import HistoryConfig, HistoryImages
from gateway.event import AnyEvent, PlateEvent, normalize_plate

log = logging.getLogger(__name__)

# Rows written per transaction (at most), and deleted per pruning step.
WRITE_BATCH = 256
# How long the writer gathers reads into one transaction: the history is for
# looking back, a read may reach it a moment late.
COLLECT_SECONDS = 0.5
PRUNE_STEP = 256
PRUNE_EVERY_SECONDS = 30.0
# Reads waiting for the history thread; past it the oldest are dropped.
MAX_QUEUED = 2_000
PAGE_LIMIT = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS read (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    camera TEXT NOT NULL,
    plate TEXT NOT NULL,
    plate_normalized TEXT NOT NULL,
    known TEXT,
    time REAL NOT NULL,           -- the read's time (the camera's), epoch seconds
    event TEXT NOT NULL,          -- the event JSON as published
    plate_image BLOB,
    scene_image BLOB,
    bytes INTEGER NOT NULL        -- what the row costs, for history.max_bytes
);
CREATE INDEX IF NOT EXISTS read_time ON read (time);
CREATE INDEX IF NOT EXISTS read_camera_time ON read (camera, time);
"""


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One read as the pipeline stored it, for the history."""

    id: str
    camera: str
    plate: str
    known: str | None
    time: float
    event_json: bytes
    plate_image: bytes | None
    scene_image: bytes | None

    @classmethod
    def of(cls, event: PlateEvent, event_json: bytes) -> HistoryRecord:
        """A stored read with its event JSON as published."""
        when = event.time or event.received
        return cls(
            id=event.id,
            camera=event.camera,
            plate=event.plate,
            known=event.known,
            time=when.timestamp(),
            event_json=event_json,
            plate_image=event.plate_image.data if event.plate_image else None,
            scene_image=event.scene_image.data if event.scene_image else None,
        )


@dataclass(frozen=True, slots=True)
class HistoryRow:
    id: str
    camera: str
    plate: str
    known: str | None
    time: float
    event: dict[str, object]
    has_plate_image: bool
    has_scene_image: bool


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """What to look for; every field narrows the search (None: any)."""

    plate: str | None = None  # a fragment of the plate, normalized like plates are
    fuzzy: bool = False  # the fragment within one edit (a misread character)
    camera: str | None = None
    known: str | None = None
    since: float | None = None
    until: float | None = None


class HistoryStore:
    """The history's SQLite file. One connection per thread that uses it."""

    def __init__(self, path: Path, days: float, max_bytes: int, images: HistoryImages) -> None:
        self.path = path
        self.days = days
        self.max_bytes = max_bytes
        self.images = images
        self._db: sqlite3.Connection | None = None
        # What the reads hold, for `max_bytes`: counted when first needed (by
        # the writer), not at every open: a reader (the web page, `history
        # search`) never needs it, and it is a scan of the whole table.
        self._total_bytes: int | None = None

    @classmethod
    def configured(cls, settings: HistoryConfig, outbox: Path) -> HistoryStore:
        """The history a config describes (`history.path`, or beside the outbox)."""
        return cls(settings.file(outbox), settings.days, settings.max_bytes, settings.images)

    @property
    def total_bytes(self) -> int:
        if self._total_bytes is None:
            self._recount()
        assert self._total_bytes is not None
        return self._total_bytes

    @total_bytes.setter
    def total_bytes(self, value: int) -> None:
        self._total_bytes = value

    def open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        old_umask = os.umask(0o077)  # plates and pictures: this user only
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        finally:
            os.umask(old_umask)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # a history may lose its last second
        db.executescript(_SCHEMA)
        self._db = db
        self._total_bytes = None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("history is not open")
        return self._db

    # -- writing ---------------------------------------------------------------------

    def add(self, records: Sequence[HistoryRecord]) -> None:
        rows = []
        for r in records:
            plate_image = r.plate_image if self.images is not HistoryImages.NONE else None
            scene_image = r.scene_image if self.images is HistoryImages.ALL else None
            size = len(r.event_json) + len(plate_image or b"") + len(scene_image or b"") + 128
            rows.append(
                (
                    r.id,
                    r.camera,
                    r.plate,
                    normalize_plate(r.plate),
                    r.known,
                    r.time,
                    r.event_json.decode("utf-8"),
                    plate_image,
                    scene_image,
                    size,
                )
            )
        with self.db:
            self.db.execute("BEGIN")
            # A redelivered read (same id) is kept once.
            added = self.db.executemany(
                "INSERT OR IGNORE INTO read (id, camera, plate, plate_normalized, known, time,"
                " event, plate_image, scene_image, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            ).rowcount
        if added == len(rows):
            self.total_bytes += sum(row[-1] for row in rows)
        else:
            self._recount()

    def prune_step(self, now: float | None = None) -> int:
        """Delete up to PRUNE_STEP of the oldest rows that are too old, or that
        take the history over max_bytes; how many (0: nothing left to do)."""
        cutoff = (now if now is not None else time.time()) - self.days * 86400
        with self.db:
            self.db.execute("BEGIN")
            old = self.db.execute(
                "DELETE FROM read WHERE seq IN (SELECT seq FROM read WHERE time < ?"
                " ORDER BY time LIMIT ?)",
                (cutoff, PRUNE_STEP),
            ).rowcount
            over = 0
            if not old and self.total_bytes > self.max_bytes:
                over = self.db.execute(
                    "DELETE FROM read WHERE seq IN (SELECT seq FROM read ORDER BY time LIMIT ?)",
                    (PRUNE_STEP,),
                ).rowcount
        if old or over:
            self._recount()
        return old + over

    def _recount(self) -> None:
        row = self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM read").fetchone()
        self.total_bytes = int(row[0])

    # -- reading ---------------------------------------------------------------------

    def search(self, query: HistoryQuery, limit: int = 50, offset: int = 0) -> list[HistoryRow]:
        """Newest first, `limit` (at most PAGE_LIMIT) from `offset`."""
        where, args = _where(query)
        cursor = self.db.execute(
            "SELECT id, camera, plate, known, time, event, plate_image IS NOT NULL,"
            f" scene_image IS NOT NULL FROM read WHERE {where}"
            " ORDER BY time DESC, seq DESC LIMIT ? OFFSET ?",
            (*args, min(limit, PAGE_LIMIT), max(offset, 0)),
        )
        return [
            HistoryRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), bool(r[6]), bool(r[7]))
            for r in cursor
        ]

    def count(self, query: HistoryQuery) -> int:
        where, args = _where(query)
        return int(self.db.execute(f"SELECT COUNT(*) FROM read WHERE {where}", args).fetchone()[0])

    def image(self, read_id: str, kind: str) -> bytes | None:
        column = {"plate": "plate_image", "scene": "scene_image"}.get(kind)
        if column is None:
            return None
        row = self.db.execute(f"SELECT {column} FROM read WHERE id = ?", (read_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def export_csv(self, query: HistoryQuery) -> Iterator[str]:
        """The matching reads as CSV text, newest first, a chunk at a time."""
        columns = ("time", "camera", "plate", "confidence", "direction", "known", "match", "id")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        offset = 0
        while True:
            page = self.search(query, PAGE_LIMIT, offset)
            for row in page:
                event = row.event
                writer.writerow(
                    [
                        event.get("time"),
                        row.camera,
                        _csv_text(row.plate),
                        event.get("confidence"),
                        event.get("direction"),
                        _csv_text(row.known or ""),
                        event.get("match"),
                        row.id,
                    ]
                )
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(page) < PAGE_LIMIT:
                return
            offset += PAGE_LIMIT


def _csv_text(text: str) -> str:
    """Camera text in a CSV cell: a leading =, +, - or @ would be a formula in a
    spreadsheet (CSV injection); a quote in front keeps it text."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@") else text


def _where(query: HistoryQuery) -> tuple[str, tuple[object, ...]]:
    clauses: list[str] = []
    args: list[object] = []
    if query.plate:
        fragment = normalize_plate(query.plate)
        patterns = one_edit_patterns(fragment) if query.fuzzy else [_like_escape(fragment)]
        clauses.append(
            "(" + " OR ".join("plate_normalized LIKE ? ESCAPE '\\'" for _ in patterns) + ")"
        )
        args.extend(f"%{p}%" for p in patterns)
    for column, value in (("camera", query.camera), ("known", query.known)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if query.since is not None:
        clauses.append("time >= ?")
        args.append(query.since)
    if query.until is not None:
        clauses.append("time < ?")
        args.append(query.until)
    return (" AND ".join(clauses) or "1"), tuple(args)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def one_edit_patterns(fragment: str) -> list[str]:
    """LIKE patterns matching `fragment` with at most one character substituted,
    inserted or left out (`_` is LIKE's one character)."""
    chars = [_like_escape(c) for c in fragment]
    patterns = {"".join(chars)}
    for i in range(len(chars) + 1):
        patterns.add("".join([*chars[:i], "_", *chars[i:]]))  # one inserted
        if i < len(chars):
            patterns.add("".join([*chars[:i], "_", *chars[i + 1 :]]))  # one substituted
            if len(chars) > 1:
                patterns.add("".join([*chars[:i], *chars[i + 1 :]]))  # one left out
    return sorted(patterns)


class HistoryWriter:
    """The history's own thread: the loop only queues records for it."""

    def __init__(self, store: HistoryStore, on_dropped: Callable[[int], None] | None = None):
        self.store = store
        self._queue: queue.SimpleQueue[HistoryRecord | None] = queue.SimpleQueue()
        self._queued = 0
        self._lock = threading.Lock()
        self._on_dropped = on_dropped
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="history", daemon=True)

    def start(self) -> None:
        self.store.open()
        self._thread.start()

    def record(self, item: HistoryRecord) -> None:
        """Queue a read (from the loop; never blocks). Past MAX_QUEUED the read
        is dropped from the history, counted: the history must not hold intake up."""
        with self._lock:
            if self._queued >= MAX_QUEUED:
                self.dropped += 1
                if self._on_dropped is not None:
                    self._on_dropped(1)
                return
            self._queued += 1
        self._queue.put(item)

    def on_stored(self, event: AnyEvent, event_json: bytes) -> None:
        """A pipeline listener: reads go into the history, camera events do not."""
        if isinstance(event, PlateEvent):
            self.record(HistoryRecord.of(event, event_json))

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (bounded), then stop."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        self.store.close()

    def _run(self) -> None:
        next_prune = 0.0
        while True:
            batch, stopping = self._collect()
            if batch:
                self._write(batch)
            if stopping:
                return
            if time.monotonic() >= next_prune:
                try:
                    if self.store.prune_step() < PRUNE_STEP:  # caught up: rest a while
                        next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
                except sqlite3.Error as exc:
                    log.warning("history: pruning failed, trying later: %s", exc)
                    next_prune = time.monotonic() + PRUNE_EVERY_SECONDS

    def _collect(self) -> tuple[list[HistoryRecord], bool]:
        """The next batch: what arrives within COLLECT_SECONDS of its first read
        (at most WRITE_BATCH), and whether `close` asked to stop. One
        transaction per read cost ~1 CPU ms a read at 100 reads/s."""
        batch: list[HistoryRecord] = []
        try:
            item = self._queue.get(timeout=1.0)
        except queue.Empty:
            return batch, False
        deadline = time.monotonic() + COLLECT_SECONDS
        while item is not None:
            batch.append(item)
            remaining = deadline - time.monotonic()
            if len(batch) >= WRITE_BATCH or remaining <= 0:
                return batch, False
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return batch, False
        return batch, True

    def _write(self, batch: list[HistoryRecord]) -> None:
        with self._lock:
            self._queued -= len(batch)
        try:
            self.store.add(batch)
        except sqlite3.Error as exc:  # these reads are missing from the history only
            log.error("history: %d reads not kept: %s", len(batch), exc)
