"""Runtime control: known-plates entries and camera switches changed while running.

`RuntimeControl` is the one place that changes them: it checks the change,
writes it to the runtime store (its own thread; a change is answered only
once it is durable), then applies it at once: the known-plates registry the
pipeline matches with is recompiled, a camera switch closes or reopens the
camera's intake. Entries with `valid_until` are dropped by a timer when they
expire (never a check per read). Listeners hear every change: the bridge
event feed, bridge info and Home Assistant discovery (triggers and "last seen" per name).
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from gateway.adapters.base import CameraSwitches
from gateway.config import Config, plate_entry_usable
from gateway.known_plates import KnownPlatesRegistry, RuntimeEntry, entry_key, normalize_name
from gateway.runtime_store import RuntimeStore

log = logging.getLogger(__name__)

# Bounds on what requests can make the gateway hold and compile.
MAX_RUNTIME_ENTRIES = 10_000
MAX_PLATES_PER_REQUEST = 1_000
MAX_NAME_CHARS = 100
MAX_ENTRY_CHARS = 64
# The expiry timer looks again at least this often, so that a wall-clock jump
# (valid_until is a wall-clock time) delays an expiry by no more than this.
EXPIRY_CHECK_MAX_SECONDS = 60.0


class RequestRefusedError(Exception):
    """A runtime change that cannot be made; the message says why, for the requester."""


@dataclass(frozen=True, slots=True)
class KnownPlatesChange:
    action: str  # added | removed | expired
    name: str
    plates: tuple[str, ...]


class RuntimeControl:
    def __init__(
        self,
        config: Config,
        store: RuntimeStore,
        executor: Executor,
        known_plates: KnownPlatesRegistry,
        switches: CameraSwitches,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.executor = executor
        self.known_plates = known_plates
        self.switches = switches
        self.clock = clock
        self.camera_ids = {c.id for c in config.cameras}
        self.known_plates_listeners: list[Callable[[KnownPlatesChange], None]] = []
        self._expiry: asyncio.TimerHandle | None = None
        # One change at a time: each reads the entries, writes, then applies.
        self._changing = asyncio.Lock()

    @classmethod
    def load(
        cls, config: Config, store: RuntimeStore, now: float
    ) -> tuple[list[RuntimeEntry], set[str], list[str]]:
        """Read the store (on its thread): the runtime entries still valid, the
        cameras switched off, and what was dropped (said in the log). Entries
        that expired while the gateway was down, of a name the config now
        defines, and switches of cameras no longer configured are deleted."""
        entries, stale, notes = [], [], []
        for entry in store.known_plates():
            if entry.valid_until is not None and entry.valid_until <= now:
                stale.append(entry)
            elif entry.name in config.known_plates:
                stale.append(entry)
                notes.append(
                    f"known plate {entry.written!r} of {entry.name!r} added at runtime dropped: "
                    "the config file now defines that name"
                )
            else:
                entries.append(entry)
        if stale:
            store.delete_known_plates((e.name, e.key) for e in stale)
        cameras = {c.id for c in config.cameras}
        disabled = store.disabled_cameras()
        for camera in sorted(disabled - cameras):
            store.set_camera_disabled(camera, False, now)
            notes.append(f"camera {camera} was disabled at runtime and is no longer configured")
        return entries, disabled & cameras, notes

    def start(self) -> None:
        self._arm_expiry()

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def _in_store(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- known plates ----------------------------------------------------------------

    def list_known_plates(self) -> list[dict[str, Any]]:
        """Every name with its entries: the config's (`source: config`) first, then
        the runtime ones, one item per name, cameras and end."""
        items: list[dict[str, Any]] = [
            {"name": name, "source": "config", "plates": list(plates), "cameras": None}
            for name, plates in self.known_plates.config_table.items()
        ]
        groups: dict[tuple[str, tuple[str, ...] | None, float | None], list[str]] = {}
        for entry in self.known_plates.runtime:
            groups.setdefault((entry.name, entry.cameras, entry.valid_until), []).append(
                entry.written
            )
        for (name, cameras, until), plates in groups.items():
            items.append(
                {
                    "name": name,
                    "source": "runtime",
                    "plates": plates,
                    "cameras": list(cameras) if cameras is not None else None,
                    "valid_until": _iso(until) if until is not None else None,
                }
            )
        return items

    async def add_known_plates(
        self,
        name: str,
        plates: Sequence[str],
        cameras: Sequence[str] | None,
        valid_until: float | None,
    ) -> dict[str, Any]:
        name = self._check_name(name)
        if name in self.known_plates.config_table:
            raise RequestRefusedError(
                f"{name!r} is defined in the config file; change it there or use another name"
            )
        written = self._check_plates(plates)
        if cameras is not None:
            unknown = sorted(set(cameras) - self.camera_ids)
            if unknown:
                raise RequestRefusedError(f"unknown camera(s): {', '.join(unknown)}")
            cameras = tuple(dict.fromkeys(cameras))
        now = self.clock()
        if valid_until is not None and valid_until <= now:
            raise RequestRefusedError(f"valid_until {_iso(valid_until)} is already past")
        async with self._changing:
            existing = {(e.name, e.key): e for e in self.known_plates.runtime}
            added = [
                RuntimeEntry(
                    name,
                    plate,
                    cameras,
                    valid_until,
                    existing[(name, entry_key(plate))].added_at
                    if (name, entry_key(plate)) in existing
                    else now,
                )
                for plate in written
            ]
            new_keys = {(e.name, e.key) for e in added} - set(existing)
            if len(existing) + len(new_keys) > MAX_RUNTIME_ENTRIES:
                raise RequestRefusedError(
                    f"at most {MAX_RUNTIME_ENTRIES} known plates can be added at runtime"
                )
            await self._in_store(self.store.put_known_plates, added)
            by_key = {(e.name, e.key): e for e in added}
            merged = [by_key.pop((e.name, e.key), e) for e in self.known_plates.runtime]
            merged.extend(by_key.values())
            self._apply(merged)
        log.info("known plates: %d entr(ies) added to %r at runtime", len(added), name)
        self._announce(KnownPlatesChange("added", name, tuple(written)))
        return {"name": name, "plates": written}

    async def remove_known_plates(self, name: str, plates: Sequence[str] | None) -> dict[str, Any]:
        name = normalize_name(name) if isinstance(name, str) else name
        if name in self.known_plates.config_table:
            raise RequestRefusedError(
                f"{name!r} comes from the config file and cannot be removed at runtime; "
                "edit the config file"
            )
        async with self._changing:
            of_name = [e for e in self.known_plates.runtime if e.name == name]
            if not of_name:
                raise RequestRefusedError(f"no known plates named {name!r}")
            if plates is None:
                removed = of_name
            else:
                keys = {entry_key(p): p for p in self._check_plates(plates)}
                removed = [e for e in of_name if e.key in keys]
                missing = [p for k, p in keys.items() if k not in {e.key for e in removed}]
                if missing:
                    raise RequestRefusedError(
                        f"{name!r} has no plate(s) {', '.join(map(repr, missing))}; nothing removed"
                    )
            gone = {(e.name, e.key) for e in removed}
            await self._in_store(self.store.delete_known_plates, gone)
            self._apply([e for e in self.known_plates.runtime if (e.name, e.key) not in gone])
        written = tuple(e.written for e in removed)
        log.info("known plates: %d entr(ies) of %r removed at runtime", len(written), name)
        self._announce(KnownPlatesChange("removed", name, written))
        return {"name": name, "plates": list(written)}

    def _check_name(self, name: Any) -> str:
        if not isinstance(name, str) or not name.strip():
            raise RequestRefusedError("name: expected a non-empty string")
        normalized: str = normalize_name(name)
        if len(normalized) > MAX_NAME_CHARS:
            raise RequestRefusedError(f"name: at most {MAX_NAME_CHARS} characters")
        if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in normalized):
            raise RequestRefusedError("name: holds control characters")
        return normalized

    def _check_plates(self, plates: Any) -> list[str]:
        if not isinstance(plates, list | tuple) or not plates:
            raise RequestRefusedError("plates: expected a non-empty list of plates or patterns")
        if len(plates) > MAX_PLATES_PER_REQUEST:
            raise RequestRefusedError(f"plates: at most {MAX_PLATES_PER_REQUEST} per request")
        written: dict[str, str] = {}
        for index, plate in enumerate(plates):
            if (
                not isinstance(plate, str)
                or len(plate) > MAX_ENTRY_CHARS
                or not plate_entry_usable(plate)
                or any(unicodedata.category(ch) in ("Cc", "Cs") for ch in plate)
            ):
                raise RequestRefusedError(
                    f"plates[{index}]: not a usable entry (a plate, a pattern with * and ?, "
                    f"or list:white / list:black / list:visitor; at most {MAX_ENTRY_CHARS} "
                    "characters)"
                )
            written.setdefault(entry_key(plate), plate.strip())
        return list(written.values())

    def _apply(self, entries: Sequence[RuntimeEntry]) -> None:
        """Recompile the table every read is matched with, and time the next expiry."""
        self.known_plates.replace_runtime(entries)
        self._arm_expiry()

    def _announce(self, change: KnownPlatesChange) -> None:
        for listener in self.known_plates_listeners:
            try:
                listener(change)
            except Exception:
                log.exception("known-plates listener failed")

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        ends = [e.valid_until for e in self.known_plates.runtime if e.valid_until is not None]
        if not ends:
            return
        delay = min(max(0.0, min(ends) - self.clock()), EXPIRY_CHECK_MAX_SECONDS)
        self._expiry = asyncio.get_running_loop().call_later(delay, self._on_expiry_timer)

    def _on_expiry_timer(self) -> None:
        self._expiry = None
        task = asyncio.get_running_loop().create_task(self.expire(), name="known-plates-expiry")
        task.add_done_callback(_log_failure)

    async def expire(self) -> None:
        """Drop the entries whose `valid_until` has passed; time the next expiry."""
        async with self._changing:
            now = self.clock()
            expired = [
                e
                for e in self.known_plates.runtime
                if e.valid_until is not None and e.valid_until <= now
            ]
            if expired:
                # Out of matching first: the store follows (a failure there is
                # retried at the next start, when the entry is past anyway).
                gone = {(e.name, e.key) for e in expired}
                self.known_plates.replace_runtime(
                    [e for e in self.known_plates.runtime if (e.name, e.key) not in gone]
                )
                try:
                    await self._in_store(self.store.delete_known_plates, gone)
                except Exception:
                    log.exception("known plates: could not delete expired entries from the store")
            self._arm_expiry()
        by_name: dict[str, list[str]] = {}
        for entry in expired:
            by_name.setdefault(entry.name, []).append(entry.written)
        for name, plates in by_name.items():
            log.info("known plates: %d entr(ies) of %r expired", len(plates), name)
            self._announce(KnownPlatesChange("expired", name, tuple(plates)))

    # -- cameras ---------------------------------------------------------------------------

    async def set_camera_enabled(self, camera: Any, enabled: bool) -> dict[str, Any]:
        if not isinstance(camera, str) or camera not in self.camera_ids:
            shown = repr(camera)[:80]
            raise RequestRefusedError(f"id: no camera {shown} in the config")
        async with self._changing:
            if self.switches.is_disabled(camera) != enabled:
                return {"id": camera, "enabled": enabled, "changed": False}
            await self._in_store(self.store.set_camera_disabled, camera, not enabled, self.clock())
            self.switches.set_enabled(camera, enabled)
        log.info("camera %s: %s at runtime", camera, "enabled" if enabled else "disabled")
        return {"id": camera, "enabled": enabled, "changed": True}


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("known-plates expiry failed: %s", task.exception())
