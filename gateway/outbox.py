"""The durable outbox: SQLite (WAL) between intake and the MQTT publisher.

An accepted event is stored as the MQTT messages it becomes (images, event,
`last`), each a row in `seq` order. A row is deleted only after the broker's
PUBACK for it. Publishing reads rows in `seq` order, so after a reconnect or a
restart the replay keeps per-camera order (it keeps the global order).

`Outbox` is synchronous and owned by one thread; `OutboxWriter` is the asyncio
face of intake: it group-commits whatever is queued in one transaction (one
fsync for many events) and makes submitters wait when too much is pending.

Dead letters: an event the broker or the client library will not take (a
topic it refuses, a payload over its limit) is moved whole to the
`dead_letter` table: kept, never published, listed, replayed or dropped by
`lpr-gateway outbox dead-letters`. Everything behind it keeps flowing.

Images: a payload of `BLOB_MIN_BYTES` or more is not stored in SQLite but
appended to the blob log (`gateway/blob_log.py`, a directory of segment
files beside the database); its row says where it is. A segment no row
refers to is deleted whole (or kept as a spare to be written over); one that
is mostly garbage has what is left in it (retained images, dead letters)
copied forward first.

Retained state: the row of the latest acknowledged message on each retained
topic (images, `last`) is kept instead of deleted, and `retained` points at
it; small state messages (availability, bridge info, discovery) are stored
in `retained` directly. A gateway restart followed by a broker that lost its
retained messages can so republish them all without a second copy of any
image ever being written.

Retained topics no longer published (a camera removed from the config, a
new base topic, Home Assistant switched off) would be kept for ever: re-sent
on every connect, their pictures held in the blob log. `retire_topics`
queues an empty retained message for each, behind whatever still waits, and
forgets its kept copy; an acknowledged empty retained message leaves no row
behind (the broker holds nothing there any more).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.blob_log import BlobLog, BlobUnreadableError
from gateway.config import OutboxSync

log = logging.getLogger(__name__)

PAGE_SIZE = 65536
CACHE_KIB = 4 * 1024
# The WAL's bound. Below it, commits never wait for a checkpoint; past it
# (a load the background checkpoints cannot keep up with), the writer copies
# and empties the WAL itself: a stall, but the file stops growing.
WAL_LIMIT_BYTES = 64 * 1024 * 1024
WAL_EMPTY_TRIES = 200  # 10 ms apart
# A checkpoint once this much was stored (~12 reads, what the in-commit
# checkpoint used to do), or when intake pauses: it copies the newest version
# of each page once, however often the page was rewritten since, and pays one
# fsync. One per stored batch cost 10-40 % more CPU per read.
CHECKPOINT_BYTES = 4 * 1024 * 1024
CHECKPOINT_IDLE_SECONDS = 0.5
# Short checkpoints after the bulk, for what writers added meanwhile.
CHECKPOINT_CATCH_UP_TRIES = 4
# Payloads from this size on go to the blob log (images); the event JSON and
# state messages stay in SQLite, where `sqlite3` shows them.
BLOB_MIN_BYTES = 8 * 1024
# What a row costs SQLite besides its inline payload, for the checkpoint's count.
ROW_OVERHEAD_BYTES = 256
# A closed segment whose live payloads are less than this share of it may be
# compacted: they are copied forward, the segment deleted.
COMPACT_BELOW_LIVE_SHARE = 0.5
# ... but only once the closed segments' garbage (bytes no row refers to any
# more) outweighs both this and the live bytes they hold: a segment waiting
# is mostly emptied by its cameras' next reads, which supersede its retained
# images. Compacting every half-dead segment at once copied 0.47x of all
# image bytes forward with 200 cameras reading in turn, inside the commit that
# closed a segment (p99 of those commits 27 ms, up to 77; 57 and 108 ms with
# 1,000 cameras); now nothing is copied for them. Disk: closed segments hold
# at most twice their live bytes, plus this.
COMPACT_GARBAGE_BYTES = 128 * 1024 * 1024
# Live payloads copied forward per collection at most (beyond the first
# segment's): compaction work stays small beside the commits it runs between.
COMPACT_STEP_BYTES = 8 * 1024 * 1024
# Unreferenced segments are also collected this often while acknowledgements
# come in, not only when a segment fills (after an outage's replay, say).
COLLECT_EVERY_SECONDS = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    camera TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    last_of_event INTEGER NOT NULL,
    accepted_at REAL NOT NULL,
    -- where the payload is when it is in the blob log (payload is then empty)
    blob_segment INTEGER,
    blob_offset INTEGER,
    blob_size INTEGER
);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    camera TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    last_of_event INTEGER NOT NULL,
    accepted_at REAL NOT NULL,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL,
    blob_segment INTEGER,
    blob_offset INTEGER,
    blob_size INTEGER
);
CREATE TABLE IF NOT EXISTS retained (
    topic TEXT PRIMARY KEY,
    seq INTEGER UNIQUE,   -- a kept, acknowledged row of `message`
    payload BLOB          -- or the payload itself (state messages)
);
"""
_COLUMNS = (
    "seq, event_id, camera, topic, payload, retain, last_of_event, accepted_at,"
    " blob_segment, blob_offset, blob_size"
)
_BLOB_COLUMNS = (("blob_segment", "INTEGER"), ("blob_offset", "INTEGER"), ("blob_size", "INTEGER"))
# A payload's size, wherever it is.
_SIZE = "COALESCE(blob_size, length(payload))"
# Rows of `message` still waiting for the broker: not the kept retained ones.
_PENDING = "seq NOT IN (SELECT seq FROM retained WHERE seq IS NOT NULL)"
# A row of `message` that empties its retained topic (`retire_topics`).
_IS_CLEAR = "retain = 1 AND length(payload) = 0 AND blob_size IS NULL"
# A row of `message` as inserted (without its seq), and of `dead_letter`.
_Row = tuple[str, str, str, bytes, int, int, float, int | None, int | None, int | None]
_DeadRow = tuple[
    str, str, str, bytes, int, int, float, int | None, int | None, int | None, str, float
]
# An event's rows are inserted together, so they sit in a short run of `seq`:
# looking only there keeps finding them a primary-key range scan.
_EVENT_SPAN = 256


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
    # Stored straight into the dead-letter table with this reason (e.g. a topic
    # that cannot be published): kept for an operator, never sent.
    dead_letter_reason: str | None = None
    # What is left to fill in on the outbox's thread, just before storing:
    # the messages in full (the same sizes), the same result on every call.
    # (The pictures' SHA-256 in the event JSON: pipeline.DeferredDigests.)
    finish: Callable[[tuple[MessageDraft, ...]], tuple[MessageDraft, ...]] | None = None

    @property
    def size(self) -> int:
        return sum(len(m.payload) for m in self.messages)

    def finished(self) -> EventDraft:
        """The draft with nothing left to fill in."""
        if self.finish is None:
            return self
        return replace(self, messages=self.finish(self.messages), finish=None)


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
    # Why the payload could not be read back (its blob is gone): the publisher
    # sets the event aside as a dead letter instead of sending it.
    unreadable: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One event set aside: what it was, why, and when."""

    event_id: str
    camera: str
    reason: str
    dead_at: float
    accepted_at: float
    messages: int
    bytes: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KeptTopic:
    """One topic of the retained copy: its last payload's size, and whether a
    read's row keeps it (images, `last`) or a state message (availability,
    bridge info, discovery)."""

    topic: str
    bytes: int
    kept_as: str  # "row" or "state"


class OutboxOpenError(Exception):
    """The outbox file cannot be opened or created; nothing in it was touched."""


class Outbox:
    """SQLite store of messages not yet acknowledged by the broker. One thread only."""

    def __init__(self, path: Path, max_bytes: int, sync: OutboxSync = OutboxSync.NORMAL) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.sync = sync
        self._db: sqlite3.Connection | None = None
        self.pending_bytes = 0
        self.pending_events = 0
        self.dead_letter_events = 0
        self._lock_fd: int | None = None
        self._checkpointer: _Checkpointer | None = None
        self._wal_path = path.with_name(path.name + "-wal")
        self.blobs = BlobLog(path.with_name(path.name + "-blobs"), sync=sync is OutboxSync.FULL)
        self._writable = False  # the blob log is appended to and collected
        self._rolled_over = False  # a segment was closed since the last collection
        self._next_collect = 0.0

    @contextlib.contextmanager
    def _transaction(self, stored_bytes: int = 0) -> Iterator[None]:
        """One transaction storing `stored_bytes` of reads. Only those drive the
        checkpoints and the WAL's bound: storing reads is where the WAL grows;
        what the rest writes is copied with the next checkpoint."""
        with self.db:
            self.db.execute("BEGIN")
            yield
        checkpointer = self._checkpointer
        if checkpointer is None or not stored_bytes:
            return
        checkpointer.stored(stored_bytes)
        if checkpointer.tail_left:
            # The checkpointer could not catch up with the writers: copy the
            # short tail here, where no commit can land meanwhile, so that the
            # next commit starts the WAL over (busy if it is mid-checkpoint:
            # then it asks again).
            checkpointer.tail_left = False
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        try:
            if self._wal_path.stat().st_size > WAL_LIMIT_BYTES:
                self._empty_wal()
        except (OSError, sqlite3.Error) as exc:  # committed all the same
            log.warning("outbox %s: could not empty the WAL: %s", self.path, exc)

    def _empty_wal(self) -> None:
        # Busy while the background checkpoint runs: wait for it (bounded).
        for _ in range(WAL_EMPTY_TRIES):
            busy, _, _ = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.01)
        log.warning("outbox %s: WAL over %d bytes and busy", self.path, WAL_LIMIT_BYTES)

    def open(self, exclusive: bool = True) -> None:
        """Open (or create) the outbox; `OutboxOpenError` says what is wrong and what to do.

        `exclusive`: hold the outbox's lock file, so that no second gateway (and
        no `dead-letters replay` or `drop`) works on it at the same time.
        """
        try:
            if exclusive:
                self._lock()
            self._open()
            if exclusive:
                # Only the lock holder writes segments and deletes them; a reader
                # beside a running gateway (`dead-letters list`) only reads.
                self.blobs.open()
                self._writable = True
                self.collect_segments()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise OutboxOpenError(
                f"outbox {self.path} cannot be used: {exc}. If the file is damaged, move it "
                "aside (it is left untouched) and start again; the events in it can be "
                "recovered with the sqlite3 tool"
            ) from exc
        except OSError as exc:
            self.close()
            raise OutboxOpenError(
                f"outbox directory {self.path.parent} cannot be used: "
                f"{exc.strerror or exc}. Check that it exists or can be created, and that "
                "this user may write to it (outbox.path)"
            ) from exc

    def _lock(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutboxOpenError(
                f"outbox {self.path} is in use by another process (a running gateway?); "
                "stop it first, or give this one its own outbox.path"
            ) from None
        self._lock_fd = fd

    def _open(self) -> None:
        # The outbox holds plates and images: readable by this user only.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable by this user", str(self.path.parent))
        old_umask = os.umask(0o077)  # SQLite creates the file and its -wal/-shm with this
        try:
            # check_same_thread off: the connection lives on the outbox thread, but
            # is created and closed from whichever thread starts and stops the gateway.
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db = db
            self._configure(db)
            self._checkpointer = _Checkpointer(self.path)
        finally:
            os.umask(old_umask)
        for suffix in ("", "-wal", "-shm"):
            file = self.path.with_name(self.path.name + suffix)
            if file.exists():
                file.chmod(0o600)

    def _configure(self, db: sqlite3.Connection) -> None:
        # Large pages: a 300 KB image spans 5 overflow pages instead of 75, and
        # inserting and deleting it walks that chain (measured: ~2x throughput).
        # Only takes effect when the file is created.
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        # Some builds default secure_delete on: every acknowledged image would be
        # overwritten with zeros before its pages are freed (measured 10x the
        # cost of the delete). The outbox holds nothing secret once published.
        db.execute("PRAGMA secure_delete=OFF")
        # Room for the pages of the rows in flight, so the delete after the PUBACK
        # finds them in memory. Fresh rows are no longer read back (the publisher
        # has them), so this need not hold a replay: 32 MB here was 10-15 MB of
        # peak RSS under HTTP flat out for no speed (measured with 4, 8 and 32).
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        db.execute("PRAGMA journal_mode=WAL")
        # No checkpoint on commit: `_Checkpointer` copies the WAL into the file on
        # its own connection and thread. A checkpoint in the commit (4 MB written
        # and fsynced every 64 pages) was the 20 ms every dozen events that made
        # the gateway's latency tail (bench/RESULTS.md).
        db.execute("PRAGMA wal_autocheckpoint=0")
        # A WAL started over is cut back to this size, not left at its peak.
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES // 4}")
        # NORMAL in WAL mode survives a crash or SIGKILL of the process; FULL
        # also survives a power loss, at one fsync per commit.
        db.execute(f"PRAGMA synchronous={self.sync.value.upper()}")
        db.executescript(_SCHEMA)
        self._add_blob_columns(db)
        # Reads every page header: a damaged file fails here, not at the first read.
        db.execute("PRAGMA quick_check(1)").fetchone()
        row = db.execute(
            f"SELECT COALESCE(SUM({_SIZE}), 0), COALESCE(SUM(last_of_event), 0)"
            f" FROM message WHERE {_PENDING}"
        ).fetchone()
        self.pending_bytes, self.pending_events = int(row[0]), int(row[1])
        self.dead_letter_events = self._count_dead_letters()
        if self.dead_letter_events:
            log.warning(
                "outbox %s holds %d dead-lettered events (not published): "
                "see `lpr-gateway outbox dead-letters list`",
                self.path,
                self.dead_letter_events,
            )
        if self.pending_events:
            log.info(
                "outbox %s holds %d events (%d bytes) from before: replaying them first",
                self.path,
                self.pending_events,
                self.pending_bytes,
            )

    @staticmethod
    def _add_blob_columns(db: sqlite3.Connection) -> None:
        """An outbox written before the blob log: its rows keep their payloads
        inline (they are read as they are); new ones may go to the log."""
        for table in ("message", "dead_letter"):
            present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for column, kind in _BLOB_COLUMNS:
                if column not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("outbox is not open")
        return self._db

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._db is not None:
            self._db.close()
            self._db = None
        self.blobs.close()
        self._writable = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def append_batch(self, drafts: Sequence[EventDraft]) -> tuple[list[bool], list[StoredMessage]]:
        """Store what fits in one transaction: a verdict per event (False: refused,
        the outbox is full) and the messages stored for publishing, in `seq` order
        (their payloads are the drafts' own bytes, not copies)."""
        verdicts: list[bool] = []
        accepted: list[EventDraft] = []
        dead: list[EventDraft] = []
        added_bytes = 0
        # Here, on the outbox's thread: beside the event loop (pipeline.DeferredDigests).
        drafts = [draft.finished() for draft in drafts]
        for draft in drafts:
            if draft.dead_letter_reason is not None:
                verdicts.append(True)
                dead.append(draft)
                continue
            size = draft.size
            if self.pending_bytes + added_bytes + size > self.max_bytes:
                verdicts.append(False)
                continue
            verdicts.append(True)
            added_bytes += size
            accepted.append(draft)
        if not accepted and not dead:
            return verdicts, []
        try:
            rows, dead_rows, blob_start = self._place_payloads(accepted, dead)
        except OSError as exc:  # disk full: nothing of the batch is stored
            log.error("outbox: blob log write failed, refusing %d events: %s", len(verdicts), exc)
            return [False] * len(verdicts), []
        inline_bytes = sum(len(row[3]) for row in rows) + sum(len(row[3]) for row in dead_rows)
        stored_bytes = inline_bytes + ROW_OVERHEAD_BYTES * (len(rows) + len(dead_rows))
        last_seq = 0
        try:
            with self._transaction(stored_bytes):  # one transaction, one commit
                if rows:
                    self.db.executemany(
                        "INSERT INTO message (event_id, camera, topic, payload, retain,"
                        " last_of_event, accepted_at, blob_segment, blob_offset, blob_size)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                    # One writer (the file is locked) inserting in one transaction:
                    # AUTOINCREMENT hands out consecutive seqs, ending at this one.
                    last_seq = self.db.execute("SELECT last_insert_rowid()").fetchone()[0]
                if dead_rows:
                    self.db.executemany(
                        "INSERT INTO dead_letter (seq, event_id, camera, topic, payload, retain,"
                        " last_of_event, accepted_at, blob_segment, blob_offset, blob_size,"
                        " reason, dead_at) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        dead_rows,
                    )
        except sqlite3.OperationalError as exc:
            # Disk full or I/O error: nothing of this batch is stored, so none of
            # it may be acknowledged to a camera.
            log.error("outbox write failed, refusing %d events: %s", len(verdicts), exc)
            if blob_start is not None:
                self.blobs.cut_back(blob_start)
            return [False] * len(verdicts), []
        self.pending_bytes += added_bytes
        self.pending_events += len(accepted)
        if dead:
            self.dead_letter_events = self._count_dead_letters()
        if self._rolled_over:
            self._rolled_over = False
            self.collect_segments()  # a segment was closed: older ones may be empty
        return verdicts, _stored_messages(accepted, last_seq - len(rows) + 1) if rows else []

    def _place_payloads(
        self, accepted: Sequence[EventDraft], dead: Sequence[EventDraft]
    ) -> tuple[list[_Row], list[_DeadRow], int | None]:
        """The rows of the events, their large payloads appended to the blob log
        (one write for the batch); where that write began, if there was one."""
        large = [
            m.payload
            for draft in (*accepted, *dead)
            for m in draft.messages
            if len(m.payload) >= BLOB_MIN_BYTES
        ]
        segment, offset = 0, 0
        blob_start: int | None = None
        if large:
            before = self.blobs.current
            segment, offset = self.blobs.append(large)
            blob_start = offset
            self._rolled_over = self._rolled_over or segment != before
        rows: list[_Row] = []
        dead_rows: list[_DeadRow] = []
        now = time.time()
        for draft in (*accepted, *dead):
            last = len(draft.messages) - 1
            for i, m in enumerate(draft.messages):
                size = len(m.payload)
                row: _Row
                if size >= BLOB_MIN_BYTES:
                    row = (
                        draft.event_id,
                        draft.camera,
                        m.topic,
                        b"",
                        int(m.retain),
                        int(i == last),
                        draft.accepted_at,
                        segment,
                        offset,
                        size,
                    )
                    offset += size
                else:
                    row = (
                        draft.event_id,
                        draft.camera,
                        m.topic,
                        m.payload,
                        int(m.retain),
                        int(i == last),
                        draft.accepted_at,
                        None,
                        None,
                        None,
                    )
                if draft.dead_letter_reason is None:
                    rows.append(row)
                else:
                    dead_rows.append((*row, draft.dead_letter_reason, now))
        return rows, dead_rows, blob_start

    def read_after(self, seq: int, limit: int, max_bytes: int | None = None) -> list[StoredMessage]:
        """Up to `limit` pending rows after `seq`, in order; with `max_bytes`, none
        after the one whose payload takes the total to it or past it."""
        cursor = self.db.execute(
            f"SELECT {_COLUMNS} FROM message WHERE seq > ? AND {_PENDING} ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        stored: list[StoredMessage] = []
        total = 0
        for r in cursor:
            if max_bytes is not None and total >= max_bytes:
                break
            payload, unreadable = r[4], None
            if r[8] is not None:
                try:
                    payload = self.blobs.read(r[8], r[9], r[10])
                except BlobUnreadableError as exc:
                    payload, unreadable = b"", str(exc)
            total += len(payload)
            stored.append(
                StoredMessage(
                    r[0], r[1], r[2], r[3], payload, bool(r[5]), bool(r[6]), r[7], unreadable
                )
            )
        cursor.close()  # left early: no statement may hold a read snapshot
        return stored

    def acknowledge(self, messages: Sequence[StoredMessage]) -> None:
        """The broker has these: forget them, keeping the newest row of each retained topic."""
        if not messages:
            return
        # Within one batch only the newest row of a retained topic is kept;
        # the others go like any acknowledged row (a batch holds many reads
        # of one camera under load: one bookkeeping step per topic, not per row).
        newest: dict[str, StoredMessage] = {}
        for m in messages:
            if m.retain and (m.topic not in newest or newest[m.topic].seq < m.seq):
                newest[m.topic] = m
        kept = {m.seq for m in newest.values()}
        gone = [(m.seq,) for m in messages if m.seq not in kept]
        found = 0
        with self._transaction():
            if gone:
                found += self.db.executemany("DELETE FROM message WHERE seq = ?", gone).rowcount
            for topic, m in newest.items():
                if not m.payload:
                    # An empty retained message cleared the topic (one the
                    # config no longer makes): nothing of it is kept or re-sent.
                    found += self.db.execute("DELETE FROM message WHERE seq = ?", (m.seq,)).rowcount
                    self._forget_retained(topic)
                    continue
                previous = self.db.execute(
                    "SELECT seq FROM retained WHERE topic = ?", (topic,)
                ).fetchone()
                present = self.db.execute(
                    "INSERT OR REPLACE INTO retained (topic, seq, payload)"
                    " SELECT ?, seq, NULL FROM message WHERE seq = ?",
                    (topic, m.seq),
                ).rowcount
                if not present:
                    continue  # set aside as a dead letter while it was in flight
                found += 1
                if previous is not None and previous[0] is not None and previous[0] != m.seq:
                    self.db.execute("DELETE FROM message WHERE seq = ?", (previous[0],))
        if found == len(messages):
            self.pending_bytes -= sum(len(m.payload) for m in messages)
            self.pending_events -= sum(m.last_of_event for m in messages)
        else:
            self._recount()  # rare: some rows had left already (dead letters)
        if self._writable and time.monotonic() >= self._next_collect:
            self.collect_segments()

    # -- retained topics no longer published ---------------------------------------

    def retire_topics(self, stale: Callable[[str], str | None]) -> dict[str, int]:
        """Clear every retained topic of the kept copy (and of the rows still
        waiting) that `stale` names a reason for: an empty retained message per
        topic, queued behind every row waiting (so what was accepted before, a
        removed camera's last reads say, reaches subscribers first), and the
        kept copy forgotten (no longer re-sent on connect). Returns reason →
        topics queued. Run again (a restart before the broker took them), it
        queues nothing twice.
        """
        # reason → topics to clear; a topic whose newest row is a clear is cleared already
        retired: dict[str, list[str]] = {}
        seen: set[str] = set()
        rows = self.db.execute(
            f"SELECT topic, {_IS_CLEAR} FROM message WHERE retain = 1 ORDER BY seq DESC"
        )
        states = self.db.execute("SELECT topic, 0 FROM retained WHERE seq IS NULL ORDER BY rowid")
        for topic, is_clear in itertools.chain(rows, states):
            if topic in seen:
                continue
            seen.add(topic)
            reason = stale(topic)
            if reason is not None and not is_clear:
                retired.setdefault(reason, []).append(topic)
        now = time.time()
        with self._transaction():
            for reason, topics in retired.items():
                for topic in topics:
                    self._forget_retained(topic)
                    self.db.execute(
                        "INSERT INTO message (event_id, camera, topic, payload, retain,"
                        " last_of_event, accepted_at) VALUES (?, '', ?, x'', 1, 0, ?)",
                        (f"retired: {reason}", topic, now),
                    )
        return {reason: len(topics) for reason, topics in retired.items()}

    def kept_topics(self) -> list[KeptTopic]:
        """The retained copy, topic by topic, in topic order."""
        cursor = self.db.execute(
            "SELECT r.topic, COALESCE(length(r.payload), m.blob_size, length(m.payload)),"
            " CASE WHEN r.seq IS NULL THEN 'state' ELSE 'row' END"
            " FROM retained r LEFT JOIN message m ON m.seq = r.seq ORDER BY r.topic"
        )
        return [KeptTopic(topic, int(size or 0), kind) for topic, size, kind in cursor]

    def clears_waiting(self) -> int:
        """Empty retained messages queued and not yet taken by the broker."""
        row = self.db.execute(
            f"SELECT COUNT(*) FROM message WHERE {_IS_CLEAR} AND {_PENDING}"
        ).fetchone()
        return int(row[0])

    # -- retained state -------------------------------------------------------

    def save_retained_state(self, topic: str, payload: bytes) -> None:
        """Keep a state message (availability, bridge info, discovery); empty clears it."""
        self.save_retained_states([(topic, payload)])

    def save_retained_states(self, states: Sequence[tuple[str, bytes]]) -> None:
        """Keep several state messages, in order, in one transaction."""
        with self._transaction():
            for topic, payload in states:
                self._forget_retained(topic)
                if payload:
                    self.db.execute(
                        "INSERT INTO retained (topic, seq, payload) VALUES (?, NULL, ?)",
                        (topic, payload),
                    )

    def _forget_retained(self, topic: str) -> None:
        previous = self.db.execute("SELECT seq FROM retained WHERE topic = ?", (topic,)).fetchone()
        if previous is not None:
            self.db.execute("DELETE FROM retained WHERE topic = ?", (topic,))
            if previous[0] is not None:
                self.db.execute("DELETE FROM message WHERE seq = ?", (previous[0],))

    def load_retained_state(self) -> dict[str, bytes]:
        """The retained state messages kept (availability, bridge info, discovery),
        oldest first."""
        cursor = self.db.execute(
            "SELECT topic, payload FROM retained WHERE payload IS NOT NULL ORDER BY rowid"
        )
        return {topic: bytes(payload) for topic, payload in cursor if payload}

    def retained_rows_after(self, seq: int, limit: int) -> list[tuple[int, str, bytes]]:
        """(seq, topic, payload) of the acknowledged rows kept as the retained
        state of their topic (images, `last`), in `seq` order, after `seq`.
        One whose blob is gone is left out (and said)."""
        cursor = self.db.execute(
            "SELECT m.seq, r.topic, m.payload, m.blob_segment, m.blob_offset, m.blob_size"
            " FROM retained r JOIN message m ON m.seq = r.seq"
            " WHERE r.seq > ? ORDER BY r.seq LIMIT ?",
            (seq, limit),
        )
        rows: list[tuple[int, str, bytes]] = []
        for row_seq, topic, payload, segment, offset, size in cursor:
            if segment is not None:
                try:
                    payload = self.blobs.read(segment, offset, size)
                except BlobUnreadableError as exc:
                    log.error("outbox: retained copy of %r left out: %s", topic, exc)
                    continue
            rows.append((int(row_seq), topic, bytes(payload)))
        return rows

    # -- dead letters -----------------------------------------------------------

    def dead_letter_event(self, event_id: str, near_seq: int, reason: str) -> int:
        """Move the event's rows still waiting to the dead-letter table; how many moved."""
        low, high = near_seq - _EVENT_SPAN, near_seq + _EVENT_SPAN
        where = f"seq BETWEEN ? AND ? AND event_id = ? AND {_PENDING}"
        args = (low, high, event_id)
        with self._transaction():
            moved = self.db.execute(
                f"SELECT COALESCE(SUM({_SIZE}), 0), COALESCE(SUM(last_of_event), 0),"
                f" COUNT(*) FROM message WHERE {where}",
                args,
            ).fetchone()
            self.db.execute(
                f"INSERT INTO dead_letter ({_COLUMNS}, reason, dead_at)"
                f" SELECT {_COLUMNS}, ?, ? FROM message WHERE {where}",
                (reason, time.time(), *args),
            )
            self.db.execute(f"DELETE FROM message WHERE {where}", args)
        self.pending_bytes -= int(moved[0])
        self.pending_events -= int(moved[1])
        self.dead_letter_events = self._count_dead_letters()
        return int(moved[2])

    def oldest_pending_accepted_at(self) -> float | None:
        """When the oldest event still waiting for the broker was accepted (None: none)."""
        row = self.db.execute(
            f"SELECT accepted_at FROM message WHERE {_PENDING} ORDER BY seq LIMIT 1"
        ).fetchone()
        return float(row[0]) if row is not None else None

    def _count_dead_letters(self) -> int:
        row = self.db.execute("SELECT COUNT(DISTINCT event_id) FROM dead_letter").fetchone()
        return int(row[0])

    def dead_letters(self) -> list[DeadLetter]:
        cursor = self.db.execute(
            "SELECT event_id, camera, reason, MAX(dead_at), MIN(accepted_at), COUNT(*),"
            f" SUM({_SIZE}), group_concat(topic, char(10)) FROM dead_letter"
            " GROUP BY event_id ORDER BY MIN(seq)"
        )
        return [
            DeadLetter(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(r[7].split("\n")))
            for r in cursor
        ]

    def replay_dead_letters(self, event_ids: Iterable[str] | None = None) -> int:
        """Put dead-lettered events back at the end of the queue; how many events."""
        return self._take_dead_letters(event_ids, requeue=True)

    def drop_dead_letters(self, event_ids: Iterable[str] | None = None) -> int:
        """Delete dead-lettered events for good; how many events."""
        return self._take_dead_letters(event_ids, requeue=False)

    def _take_dead_letters(self, event_ids: Iterable[str] | None, *, requeue: bool) -> int:
        where, args = self._dead_letter_filter(event_ids)
        with self._transaction():
            events = self.db.execute(
                f"SELECT COUNT(DISTINCT event_id) FROM dead_letter WHERE {where}", args
            ).fetchone()[0]
            if requeue:
                self.db.execute(
                    "INSERT INTO message (event_id, camera, topic, payload, retain,"
                    " last_of_event, accepted_at, blob_segment, blob_offset, blob_size)"
                    " SELECT event_id, camera, topic, payload, retain, last_of_event,"
                    " accepted_at, blob_segment, blob_offset, blob_size"
                    f" FROM dead_letter WHERE {where} ORDER BY seq",
                    args,
                )
            self.db.execute(f"DELETE FROM dead_letter WHERE {where}", args)
        self._recount()
        self.collect_segments()  # dropped ones may have been the last in a segment
        return int(events)

    @staticmethod
    def _dead_letter_filter(event_ids: Iterable[str] | None) -> tuple[str, tuple[str, ...]]:
        if event_ids is None:
            return "1", ()
        ids = tuple(event_ids)
        return f"event_id IN ({', '.join('?' * len(ids)) or 'NULL'})", ids

    # -- the blob log's segments ------------------------------------------------------

    def collect_segments(self) -> None:
        """Delete the closed segments no row refers to, and, once their garbage
        adds up (`COMPACT_GARBAGE_BYTES`), compact the ones kept only by a few
        pinned payloads (retained images, dead letters), a few at a time: those
        are copied forward, then the segment deleted. A segment that
        still holds payloads waiting for the broker is left alone: they go
        soon, or (during an outage) it is full of them anyway."""
        if not self._writable:
            return
        self._next_collect = time.monotonic() + COLLECT_EVERY_SECONDS
        live: dict[int, int] = {}  # segment -> bytes rows refer to
        waiting: set[int] = set()  # segments with payloads not yet acknowledged
        for segment, size, waiting_rows in self.db.execute(
            "SELECT blob_segment, SUM(blob_size),"
            f" SUM({_PENDING}) FROM message WHERE blob_segment IS NOT NULL"
            " GROUP BY blob_segment UNION ALL SELECT blob_segment, SUM(blob_size), 0"
            " FROM dead_letter WHERE blob_segment IS NOT NULL GROUP BY blob_segment"
        ):
            live[segment] = live.get(segment, 0) + size
            if waiting_rows:
                waiting.add(segment)
        current = self.blobs.current
        if current not in live and self.blobs.current_size:
            self.blobs.cut_back(0)  # all of it acknowledged: the next batch writes over it
        candidates: list[tuple[float, int]] = []  # (live share, segment), closed ones
        garbage = closed_live = 0
        for segment in self.blobs.segments():
            if segment == current or segment in waiting:
                continue
            if segment not in live:
                self.blobs.remove(segment)
                continue
            size = self.blobs.size_of(segment)
            garbage += max(0, size - live[segment])
            closed_live += live[segment]
            if live[segment] < COMPACT_BELOW_LIVE_SHARE * size:
                candidates.append((live[segment] / size, segment))
        if garbage < max(COMPACT_GARBAGE_BYTES, closed_live):
            return
        moved = 0
        for _, segment in sorted(candidates):  # the emptiest first: most space per byte moved
            if moved and moved + live[segment] > COMPACT_STEP_BYTES:
                break
            try:
                self._copy_forward(segment)
            except (OSError, sqlite3.Error, BlobUnreadableError) as exc:
                # Kept as it is: nothing lost, only space not yet reclaimed.
                log.warning("outbox: segment %d not compacted: %s", segment, exc)
            moved += live[segment]

    def _copy_forward(self, segment: int) -> None:
        """Move the payloads still referred to in `segment` to the current one."""
        moving: list[tuple[str, int, int, int]] = []  # table, seq, offset, size
        for table in ("message", "dead_letter"):
            moving.extend(
                (table, seq, offset, size)
                for seq, offset, size in self.db.execute(
                    f"SELECT seq, blob_offset, blob_size FROM {table} WHERE blob_segment = ?",
                    (segment,),
                )
            )
        payloads = [self.blobs.read(segment, offset, size) for _, _, offset, size in moving]
        new_segment, start = self.blobs.append(payloads)
        new_offset = start
        try:
            with self._transaction():
                for table, seq, _, size in moving:
                    self.db.execute(
                        f"UPDATE {table} SET blob_segment = ?, blob_offset = ? WHERE seq = ?",
                        (new_segment, new_offset, seq),
                    )
                    new_offset += size
        except sqlite3.Error:
            self.blobs.cut_back(start)
            raise
        self.blobs.remove(segment)

    def _recount(self) -> None:
        row = self.db.execute(
            f"SELECT COALESCE(SUM({_SIZE}), 0), COALESCE(SUM(last_of_event), 0)"
            f" FROM message WHERE {_PENDING}"
        ).fetchone()
        self.pending_bytes, self.pending_events = int(row[0]), int(row[1])
        self.dead_letter_events = self._count_dead_letters()


class _Checkpointer:
    """Copies the WAL into the database file on its own connection and thread.

    Commits never wait for a checkpoint's writes and fsync. A passive
    checkpoint runs once `CHECKPOINT_BYTES` of reads were stored, or when
    intake pauses; a writer starts the WAL over once one has copied it all.
    (`WAL_LIMIT_BYTES` bounds the WAL should checkpoints fall behind.)
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        self._uncopied = 0  # bytes of reads stored since the last checkpoint began
        # Set when catch-up checkpoints did not reach the WAL's end: the writer
        # copies the rest after its next commit.
        self.tail_left = False
        self._thread = threading.Thread(target=self._run, name="outbox-checkpoint", daemon=True)
        self._thread.start()

    def stored(self, size: int) -> None:
        with self._lock:
            self._uncopied += size
            due = self._uncopied >= CHECKPOINT_BYTES
        if due:
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:  # the WAL then grows until the gateway stops
            log.error("outbox %s: no checkpoint connection: %s", self._path, exc)
            return
        try:
            while not self._stopping:
                self._wake.wait(CHECKPOINT_IDLE_SECONDS)
                self._wake.clear()
                with self._lock:
                    uncopied, self._uncopied = self._uncopied, 0
                if uncopied and not self._stopping:
                    self._checkpoint(db)
        finally:
            db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        try:
            # The bulk, then what writers added meanwhile (a short tail), until
            # one finds nothing new: the next writer starts a WAL copied to its
            # end over; one never copied whole only grows (to WAL_LIMIT_BYTES).
            _busy, previous, _copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            for _ in range(CHECKPOINT_CATCH_UP_TRIES):
                _busy, in_wal, _copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if in_wal == previous:
                    break
                previous = in_wal
            else:
                self.tail_left = True
        except sqlite3.Error as exc:
            log.warning("outbox %s: checkpoint failed, trying again: %s", self._path, exc)


def _stored_messages(drafts: Sequence[EventDraft], first_seq: int) -> list[StoredMessage]:
    """The rows just inserted for `drafts`, numbered from `first_seq`."""
    stored: list[StoredMessage] = []
    seq = first_seq
    for draft in drafts:
        last = len(draft.messages) - 1
        for i, m in enumerate(draft.messages):
            stored.append(
                StoredMessage(
                    seq,
                    draft.event_id,
                    draft.camera,
                    m.topic,
                    m.payload,
                    m.retain,
                    i == last,
                    draft.accepted_at,
                )
            )
            seq += 1
    return stored


class OutboxWriter:
    """Async intake into the outbox: group commit and bounded pending memory."""

    def __init__(
        self,
        outbox: Outbox,
        executor: Executor,
        max_pending_bytes: int = 64 * 1024 * 1024,
        on_stored: Callable[[list[StoredMessage]], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._executor = executor
        # Handed each committed batch's messages (in `seq` order, on the loop):
        # the publisher sends them from memory instead of reading them back.
        self._on_stored = on_stored
        self._max_pending_bytes = max_pending_bytes
        self._queue: list[tuple[EventDraft, asyncio.Future[bool]]] = []
        self._queued_bytes = 0
        self._space = asyncio.Condition()
        self._work = asyncio.Event()
        self._closed = False

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
                verdicts, stored = await loop.run_in_executor(
                    self._executor, self._outbox.append_batch, [d for d, _ in batch]
                )
            except Exception as exc:  # the task's top: never leave a submitter hanging
                log.exception("outbox write crashed")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                if stored and self._on_stored is not None:
                    try:
                        self._on_stored(stored)
                    except Exception:  # they are stored: the publisher finds them there
                        log.exception("handing stored messages to the publisher failed")
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
