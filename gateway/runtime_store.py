"""What is changed at runtime over MQTT and must survive a restart: known-plates
entries added by request and cameras switched off.

A small SQLite file beside the outbox (`<outbox.path>.runtime.sqlite3`, 0600
like the outbox), apart from it: the outbox's file is rebuilt, locked and
compacted on its own terms, and losing it must not lose the allow list (nor
the other way round). Synchronous and owned by one thread, like `Outbox`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from gateway.known_plates import RuntimeEntry

STORE_SUFFIX = ".runtime.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS known_plate (
    name TEXT NOT NULL,
    entry_key TEXT NOT NULL,   -- the entry as matched (normalized): one row per plate of a name
    written TEXT NOT NULL,
    cameras TEXT,              -- JSON list of camera ids; NULL: every camera
    valid_until REAL,          -- UTC epoch seconds; NULL: no end
    added_at REAL NOT NULL,
    PRIMARY KEY (name, entry_key)
);
CREATE TABLE IF NOT EXISTS disabled_camera (
    camera TEXT PRIMARY KEY,
    since REAL NOT NULL
);
"""


def store_path(outbox_path: Path) -> Path:
    return outbox_path.with_name(outbox_path.name + STORE_SUFFIX)


class RuntimeStore:
    """The runtime state's file. One thread only (the caller's executor)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Created 0600: it holds plates (personal data) like the outbox does.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # A change is answered `ok` only once it would survive a power loss.
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "RuntimeStore.open() first"
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- known plates ------------------------------------------------------------

    def known_plates(self) -> list[RuntimeEntry]:
        """Every runtime entry, in the order the entries were first added."""
        rows = self.db.execute(
            "SELECT name, written, cameras, valid_until, added_at FROM known_plate ORDER BY rowid"
        )
        return [
            RuntimeEntry(
                name, written, tuple(json.loads(cameras)) if cameras else None, until, added
            )
            for name, written, cameras, until, added in rows
        ]

    def put_known_plates(self, entries: Sequence[RuntimeEntry]) -> None:
        """Add the entries; one already there (same name and plate) takes the new
        cameras and end, keeping its place."""
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO known_plate (name, entry_key, written, cameras, valid_until, added_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name, entry_key) DO UPDATE SET"
                " written = excluded.written, cameras = excluded.cameras,"
                " valid_until = excluded.valid_until",
                [
                    (
                        e.name,
                        e.key,
                        e.written,
                        json.dumps(list(e.cameras)) if e.cameras is not None else None,
                        e.valid_until,
                        e.added_at,
                    )
                    for e in entries
                ],
            )

    def delete_known_plates(self, keys: Iterable[tuple[str, str]]) -> None:
        """Delete entries by (name, entry key)."""
        with self._transaction() as db:
            db.executemany("DELETE FROM known_plate WHERE name = ? AND entry_key = ?", list(keys))

    @staticmethod
    def names_in(path: Path, now: float) -> set[str]:
        """The known-plates names of the runtime entries still valid at `now`,
        read without writing (beside a running gateway); none without a file."""
        if not path.exists():
            return set()
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT DISTINCT name FROM known_plate"
                " WHERE valid_until IS NULL OR valid_until > ?",
                (now,),
            )
            return {name for (name,) in rows}
        finally:
            db.close()

    # -- cameras switched off ----------------------------------------------------

    def disabled_cameras(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT camera FROM disabled_camera")}

    def set_camera_disabled(self, camera: str, disabled: bool, now: float) -> None:
        with self._transaction() as db:
            if disabled:
                db.execute(
                    "INSERT OR IGNORE INTO disabled_camera (camera, since) VALUES (?, ?)",
                    (camera, now),
                )
            else:
                db.execute("DELETE FROM disabled_camera WHERE camera = ?", (camera,))
