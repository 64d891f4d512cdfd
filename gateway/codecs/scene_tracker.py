"""One read per vehicle from an ONVIF scene description: objects tracked by ObjectId.

A Profile M camera repeats each object in every frame (5-25 a second) while
its reading improves. `SceneTracker` keeps the best reading of each object
and hands it out once: when the object is gone (absent for `end_seconds`,
or ended by the frame's object tree), or when it has been seen for
`max_seconds`. It also keeps the camera's plate notifications in view, so
that a camera sending both forms for one vehicle gives one read.

Sans-IO like the codecs: frames and the time go in (any monotonic seconds,
passed by the caller; nothing here reads a clock), finished tracks come out.
Memory is bounded by `max_objects`; past it the oldest object is finished early.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field

from gateway.codecs import assumed
from gateway.codecs.onvif import OnvifSceneFrame, ScenePlate
from gateway.errors import CodecMisuseError

# Different plates one object was read as, kept for matching notifications.
MAX_PLATES_PER_TRACK = 16


class TrackEnd(enum.Enum):
    """Why a tracked object was finished (a metric label)."""

    ABSENT = "absent"  # not in any frame for end_seconds
    DELETED = "deleted"  # the frame's ObjectTree ended it
    MAX_AGE = "max_age"  # seen for max_seconds: published, later frames of it ignored
    EVICTED = "evicted"  # max_objects reached: the oldest finished early
    SESSION_END = "session_end"  # the stream ended: objects cannot be followed across it


@dataclass(frozen=True, slots=True)
class FinishedTrack:
    """One object's best reading, to publish unless `merged` (a notification stands for it).

    `claimed`: merged by a `notification()` that already returned its match
    (so it is not counted twice); otherwise a notification that came before
    the object read its plate.
    """

    object_id: str
    best: ScenePlate
    readings: int
    end: TrackEnd
    merged: bool = False
    claimed: bool = False


@dataclass(frozen=True, slots=True)
class NotificationMatch:
    """The scene object a plate notification stands for."""

    object_id: str
    reading: ScenePlate  # the object's best reading so far
    agree: bool  # same normalized plate: its fields may be merged into the notification's


@dataclass(slots=True)
class _Track:
    object_id: str
    first_seen: float
    last_seen: float
    best: ScenePlate
    readings: int = 1
    plates: set[str] = field(default_factory=set)
    published: bool = False  # finished at max age; its later frames are swallowed
    claimed: bool = False  # a plate notification was published for it


@dataclass(slots=True)
class _Held:
    finished: FinishedTrack
    plates: frozenset[str]
    until: float


def _score(reading: ScenePlate) -> float:
    return -1.0 if reading.confidence is None else reading.confidence


class SceneTracker:
    """The tracked objects of one camera.

    Call `observe(frame, now)` for every `OnvifSceneFrame`, `notification(plate,
    now)` for every plate notification, `expire(now)` at `next_deadline()`, and
    `flush()` when the stream ends. Each returns the tracks finished by it.
    """

    def __init__(
        self,
        *,
        end_seconds: float = 1.0,
        max_seconds: float = 10.0,
        max_objects: int = 64,
        match_seconds: float = assumed.SCENE_NOTIFICATION_MATCH_SECONDS,
    ) -> None:
        if end_seconds <= 0 or max_seconds <= 0 or max_objects < 1 or match_seconds < 0:
            raise CodecMisuseError("SceneTracker needs positive durations and max_objects >= 1")
        self.end_seconds = end_seconds
        self.max_seconds = max_seconds
        self.max_objects = max_objects
        self.match_seconds = match_seconds
        # Insertion order is first-seen order: the front is the oldest object.
        self._tracks: dict[str, _Track] = {}
        self._held: collections.deque[_Held] = collections.deque()
        self._notifications: collections.deque[tuple[str, float]] = collections.deque(
            maxlen=max_objects
        )
        # Set by the first plate notification: from then on finished objects
        # wait `match_seconds` for theirs before they are published.
        self.notifications_seen = False

    @property
    def tracked(self) -> int:
        return len(self._tracks)

    @property
    def held(self) -> int:
        return len(self._held)

    # -- input -----------------------------------------------------------------------

    def observe(self, frame: OnvifSceneFrame, now: float) -> list[FinishedTrack]:
        out: list[FinishedTrack] = []
        for old, new in frame.renamed:
            self._fold((old,), new)
        for olds, new in frame.merged:
            self._fold(olds, new)
        for reading in frame.plates:
            self._update(reading, now, out)
        for object_id in frame.ended:
            track = self._tracks.pop(object_id, None)
            if track is not None and not track.published:
                self._finish(track, TrackEnd.DELETED, now, out)
        out += self.expire(now)
        return out

    def notification(self, plate_normalized: str, now: float) -> NotificationMatch | None:
        """A plate notification came: the scene object it stands for, if any.

        That object will not be published on its own (its reading is returned
        so that its fields can be merged into the notification's read).
        """
        self.notifications_seen = True
        self._notifications.append((plate_normalized, now))
        for track in self._tracks.values():
            if (
                not track.claimed
                and not track.published
                and plate_normalized in track.plates
                and now - track.last_seen <= self.match_seconds
            ):
                track.claimed = True
                return NotificationMatch(
                    track.object_id, track.best, track.best.plate_normalized == plate_normalized
                )
        for held in self._held:
            if plate_normalized in held.plates:
                self._held.remove(held)
                best = held.finished.best
                return NotificationMatch(
                    held.finished.object_id, best, best.plate_normalized == plate_normalized
                )
        return None

    # -- time ------------------------------------------------------------------------

    def expire(self, now: float) -> list[FinishedTrack]:
        """Finish the objects whose time is up; release held reads no notification claimed."""
        out: list[FinishedTrack] = []
        for object_id, track in list(self._tracks.items()):
            if now - track.last_seen >= self.end_seconds:
                del self._tracks[object_id]
                if not track.published:
                    # It ended when its absence reached end_seconds, whenever we look.
                    ended = min(now, track.last_seen + self.end_seconds)
                    self._finish(track, TrackEnd.ABSENT, ended, out)
            elif not track.published and now - track.first_seen >= self.max_seconds:
                # Kept (published) so that the same object's later frames do not
                # start a second read; it leaves when it is absent or deleted.
                track.published = True
                self._finish(track, TrackEnd.MAX_AGE, now, out)
        if any(held.until <= now for held in self._held):
            due = [held for held in self._held if held.until <= now]
            out += [held.finished for held in due]
            self._held = collections.deque(held for held in self._held if held.until > now)
        return out

    def next_deadline(self) -> float | None:
        """When `expire` next has something to do (the caller's clock), or None."""
        deadlines = [held.until for held in self._held]
        for track in self._tracks.values():
            deadlines.append(track.last_seen + self.end_seconds)
            if not track.published:
                deadlines.append(track.first_seen + self.max_seconds)
        return min(deadlines) if deadlines else None

    def flush(self) -> list[FinishedTrack]:
        """The stream ended: every object's best reading now (ObjectIds do not
        survive a reconnect), held ones included."""
        out = [held.finished for held in self._held]
        self._held.clear()
        for track in self._tracks.values():
            if not track.published:
                out.append(self._finished(track, TrackEnd.SESSION_END))
        self._tracks.clear()
        return out

    # -- inside ----------------------------------------------------------------------

    def _update(self, reading: ScenePlate, now: float, out: list[FinishedTrack]) -> None:
        track = self._tracks.get(reading.object_id)
        if track is None:
            while len(self._tracks) >= self.max_objects:
                self._evict(now, out)
            track = _Track(reading.object_id, now, now, reading)
            track.plates.add(reading.plate_normalized)
            self._tracks[reading.object_id] = track
            return
        track.last_seen = now
        if track.published:
            return
        track.readings += 1
        if len(track.plates) < MAX_PLATES_PER_TRACK:
            track.plates.add(reading.plate_normalized)
        # Ties go to the latest: the object is usually bigger and sharper by then.
        if _score(reading) >= _score(track.best):
            track.best = reading

    def _evict(self, now: float, out: list[FinishedTrack]) -> None:
        """Room for one more: drop an already published object if there is one
        (nothing is lost), else finish the oldest early."""
        published = [t for t in self._tracks.values() if t.published]
        if published:
            victim = min(published, key=lambda t: t.last_seen)
            del self._tracks[victim.object_id]
            return
        object_id, track = next(iter(self._tracks.items()))
        del self._tracks[object_id]
        self._finish(track, TrackEnd.EVICTED, now, out)

    def _fold(self, olds: tuple[str, ...], new: str) -> None:
        """Rename / Merge in the object tree: the tracks of `olds` continue as `new`."""
        tracks = [t for oid in (*olds, new) if (t := self._tracks.pop(oid, None)) is not None]
        if not tracks:
            return
        keep = tracks[0]
        for other in tracks[1:]:
            keep.first_seen = min(keep.first_seen, other.first_seen)
            keep.last_seen = max(keep.last_seen, other.last_seen)
            keep.readings += other.readings
            keep.published = keep.published or other.published
            keep.claimed = keep.claimed or other.claimed
            keep.plates |= set(list(other.plates)[: MAX_PLATES_PER_TRACK - len(keep.plates)])
            if _score(other.best) >= _score(keep.best):
                keep.best = other.best
        keep.object_id = new
        self._tracks[new] = keep

    def _finished(self, track: _Track, end: TrackEnd, merged: bool = False) -> FinishedTrack:
        return FinishedTrack(
            track.object_id, track.best, track.readings, end, merged or track.claimed, track.claimed
        )

    def _finish(self, track: _Track, end: TrackEnd, now: float, out: list[FinishedTrack]) -> None:
        if track.claimed:
            out.append(self._finished(track, end))  # its notification was published
            return
        recent = track.first_seen - self.match_seconds
        if any(plate in track.plates and at >= recent for plate, at in self._notifications):
            # A notification for this vehicle came before the object read its plate.
            out.append(self._finished(track, end, merged=True))
            return
        if not self.notifications_seen:
            out.append(self._finished(track, end))
            return
        while len(self._held) >= self.max_objects:
            out.append(self._held.popleft().finished)
        self._held.append(
            _Held(self._finished(track, end), frozenset(track.plates), now + self.match_seconds)
        )
