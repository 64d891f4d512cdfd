"""The durable outbox: SQLite (WAL) between intake and the MQTT publisher.

An accepted event is stored as the MQTT messages it becomes (images, event,
`last`), each a row in `seq` order. A row is deleted only after the broker's
PUBACK for it. Publishing reads rows in `seq` order, so after a reconnect or a
restart the replay keeps per-camera order (it keeps the global order).

`Outbox` is synchronous and owned by one thread; `OutboxWriter` is the asyncio
face of intake: it group-commits whatever is queued in one transaction (one
fsync for many events) and makes submitters wait when too much is pending.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from gateway.config import OutboxSync

log = logging.getLogger(__name__)

PAGE_SIZE = 65536
CACHE_KIB = 32 * 1024
WAL_CHECKPOINT_PAGES = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    camera TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    last_of_event INTEGER NOT NULL,
    accepted_at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class MessageDraft:
    """One MQTT message of an event, before it has a place in the outbox."""

    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True, slots=True)
class EventDraft:
    event_id: str
    camera: str
    messages: tuple[MessageDraft, ...]
    accepted_at: float  # wall clock, for the publish-latency histogram

    @property
    def size(self) -> int:
        return sum(len(m.payload) for m in self.messages)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    event_id: str
    camera: str
    topic: str
    payload: bytes
    retain: bool
    last_of_event: bool
    accepted_at: float


class Outbox:
    """SQLite store of messages not yet acknowledged by the broker. One thread only."""

    def __init__(self, path: Path, max_bytes: int, sync: OutboxSync = OutboxSync.NORMAL) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.sync = sync
        self._db: sqlite3.Connection | None = None
        self.pending_bytes = 0
        self.pending_events = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread off: the connection lives on the outbox thread, but
        # is created and closed from whichever thread starts and stops the gateway.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Large pages: a 300 KB image spans 5 overflow pages instead of 75, and
        # inserting and deleting it walks that chain (measured: ~2x throughput).
        # Only takes effect when the file is created.
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        # Some builds default secure_delete on: every acknowledged image would be
        # overwritten with zeros before its pages are freed (measured 10x the
        # cost of the delete). The outbox holds nothing secret once published.
        db.execute("PRAGMA secure_delete=OFF")
        # Room for the pages of the rows in flight, so deletes and re-reads hit memory.
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        db.execute("PRAGMA journal_mode=WAL")
        # Checkpoint often, in small steps: with 64 KiB pages the default (1000
        # pages) lets the WAL reach 64 MB and then copies it in one stall.
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        # NORMAL in WAL mode survives a crash or SIGKILL of the process; FULL
        # also survives a power loss, at one fsync per commit.
        db.execute(f"PRAGMA synchronous={self.sync.value.upper()}")
        db.executescript(_SCHEMA)
        row = db.execute(
            "SELECT COALESCE(SUM(length(payload)), 0), COALESCE(SUM(last_of_event), 0) FROM message"
        ).fetchone()
        self.pending_bytes, self.pending_events = int(row[0]), int(row[1])
        self._db = db
        if self.pending_events:
            log.info(
                "outbox %s holds %d events (%d bytes) from before: replaying them first",
                self.path,
                self.pending_events,
                self.pending_bytes,
            )

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("outbox is not open")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def append_batch(self, drafts: Sequence[EventDraft]) -> list[bool]:
        """Store what fits in one transaction; False for each event refused (full)."""
        verdicts: list[bool] = []
        rows: list[tuple[str, str, str, bytes, int, int, float]] = []
        added_bytes = 0
        for draft in drafts:
            size = draft.size
            if self.pending_bytes + added_bytes + size > self.max_bytes:
                verdicts.append(False)
                continue
            verdicts.append(True)
            added_bytes += size
            last = len(draft.messages) - 1
            rows.extend(
                (
                    draft.event_id,
                    draft.camera,
                    m.topic,
                    m.payload,
                    int(m.retain),
                    int(i == last),
                    draft.accepted_at,
                )
                for i, m in enumerate(draft.messages)
            )
        if not rows:
            return verdicts
        try:
            with self.db:  # one transaction, one commit
                self.db.execute("BEGIN")
                self.db.executemany(
                    "INSERT INTO message (event_id, camera, topic, payload, retain, last_of_event,"
                    " accepted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
        except sqlite3.OperationalError as exc:
            # Disk full or I/O error: nothing of this batch is stored, so none of
            # it may be acknowledged to a camera.
            log.error("outbox write failed, refusing %d events: %s", len(verdicts), exc)
            return [False] * len(verdicts)
        self.pending_bytes += added_bytes
        self.pending_events += sum(verdicts)
        return verdicts

    def read_after(self, seq: int, limit: int) -> list[StoredMessage]:
        cursor = self.db.execute(
            "SELECT seq, event_id, camera, topic, payload, retain, last_of_event, accepted_at"
            " FROM message WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [
            StoredMessage(r[0], r[1], r[2], r[3], r[4], bool(r[5]), bool(r[6]), r[7])
            for r in cursor
        ]

    def acknowledge(self, messages: Sequence[StoredMessage]) -> None:
        """The broker has these: forget them."""
        if not messages:
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM message WHERE seq = ?", [(m.seq,) for m in messages])
        self.pending_bytes -= sum(len(m.payload) for m in messages)
        self.pending_events -= sum(m.last_of_event for m in messages)


class OutboxWriter:
    """Async intake into the outbox: group commit and bounded pending memory."""

    def __init__(
        self, outbox: Outbox, executor: Executor, max_pending_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self._outbox = outbox
        self._executor = executor
        self._max_pending_bytes = max_pending_bytes
        self._queue: list[tuple[EventDraft, asyncio.Future[bool]]] = []
        self._queued_bytes = 0
        self._space = asyncio.Condition()
        self._work = asyncio.Event()
        self._closed = False

    async def append(self, draft: EventDraft) -> bool:
        """Resolve True once the event is durably stored, False if refused (full)."""
        return await asyncio.shield(await self.enqueue(draft))

    async def enqueue(self, draft: EventDraft) -> asyncio.Future[bool]:
        """Queue the event (waiting while too much is pending); the future resolves
        True once it is durably stored, False if refused. Queue order is write order."""
        size = draft.size
        async with self._space:
            # Backpressure: the submitter waits while the writer is behind. One
            # oversized event is still admitted when nothing else is queued.
            await self._space.wait_for(
                lambda: (
                    self._queued_bytes == 0 or self._queued_bytes + size <= self._max_pending_bytes
                )
            )
            self._queued_bytes += size
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((draft, future))
        self._work.set()
        return future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._work.wait()
            self._work.clear()
            batch, self._queue = self._queue, []
            if not batch:
                if self._closed:
                    return
                continue
            try:
                verdicts = await loop.run_in_executor(
                    self._executor, self._outbox.append_batch, [d for d, _ in batch]
                )
            except Exception as exc:  # the task's top: never leave a submitter hanging
                log.exception("outbox write crashed")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future), verdict in zip(batch, verdicts, strict=True):
                    if not future.done():
                        future.set_result(verdict)
            async with self._space:
                self._queued_bytes -= sum(d.size for d, _ in batch)
                self._space.notify_all()
            if self._closed and not self._queue:
                return

    async def close(self) -> None:
        """Write what is queued, then end `run`."""
        self._closed = True
        self._work.set()
