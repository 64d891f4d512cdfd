"""Known plates: the enrich step's matcher, and the edit distance fuzzy dedup shares.

`known_plates` in the config maps a name to plates, fnmatch-style patterns
(`*` any run of characters, `?` one character) or a camera list
(`list:white`, `list:black`, `list:visitor`: the camera itself reported the
plate on that list). A read matches an entry

- exactly: the normalized plate equals the entry, or the pattern matches it,
  or the camera reported the named list;
- fuzzily: the edit distance (insert, delete, substitute one code point, after
  NFC normalisation, so one Hangul syllable counts as one) is at most the
  configured tolerance; for a pattern, `?` and `*` match at no cost and the
  literal characters count.

Exact beats fuzzy; among fuzzy matches the smaller distance wins; ties go to
the entry written first. Pure functions, no I/O: table-tested.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.event import ListMembership, normalize_plate
from gateway.topics import known_name_slug

# Fuzzy matching only for plates (and entries) with at least this many literal
# characters: with tolerance 1, "AB1" would otherwise match half the car park.
FUZZY_MIN_LENGTH = 4

_LIST_PREFIX = "list:"
# Up to this tolerance, plain plates are found through an index of their
# deletion neighbourhoods (two strings within edit distance k share a string
# reachable by at most k deletions from each), so a read costs a few dict
# look-ups instead of one edit distance per entry. Above it: a scan.
INDEXED_TOLERANCE = 2


class MatchKind(enum.Enum):
    EXACT = "exact"
    FUZZY = "fuzzy"


@dataclass(frozen=True, slots=True)
class KnownMatch:
    name: str
    kind: MatchKind
    entry: str  # the entry as written in the config
    distance: int


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    written: str
    pattern: str  # normalized; may hold * and ?
    wildcard: bool
    literal_length: int  # characters other than * and ?
    order: int


def edit_distance(a: str, b: str, limit: int | None = None) -> int:
    """Levenshtein distance on code points; stops early above `limit` (returns limit + 1)."""
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    if limit is not None and len(a) - len(b) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        best = i
        for j, cb in enumerate(b, 1):
            cost = min(
                previous[j] + 1,
                current[j - 1] + 1,
                previous[j - 1] + (ca != cb),
            )
            current.append(cost)
            best = min(best, cost)
        if limit is not None and best > limit:
            return limit + 1
        previous = current
    distance = previous[-1]
    # The rows' minimum can stay within the limit to the last row while the
    # corner itself ends above it (AABB -> BBAA): cap it here too.
    return limit + 1 if limit is not None and distance > limit else distance


def pattern_distance(plate: str, pattern: str) -> int:
    """Edit distance between `plate` and the closest string `pattern` matches.

    `?` stands for exactly one character (no cost), `*` for any run (no cost);
    other pattern characters must be matched, substituted, inserted or deleted
    at cost 1 each, as in `edit_distance`.
    """
    n = len(plate)
    # row[j]: cost of matching pattern[:i] against plate[:j]
    row = list(range(n + 1))
    for pc in pattern:
        if pc == "*":
            # `*` absorbs any run of plate characters: a running minimum.
            new = [row[0]]
            for j in range(1, n + 1):
                new.append(min(row[j], new[j - 1]))
        else:
            new = [row[0] + 1]  # a literal (or ?) with no plate character left: deleted
            for j in range(1, n + 1):
                step = row[j - 1] + (pc != "?" and pc != plate[j - 1])
                new.append(min(step, row[j] + 1, new[j - 1] + 1))
        row = new
    return row[n]


class KnownPlates:
    """The compiled `known_plates` table."""

    def __init__(self, table: Mapping[str, Sequence[str]], tolerance: int = 1) -> None:
        self.tolerance = tolerance
        self._exact: dict[str, _Entry] = {}
        self._patterns: list[_Entry] = []
        self._lists: dict[ListMembership, _Entry] = {}
        self._wildcards: list[_Entry] = []
        self._plain: list[_Entry] = []
        self._neighbours: dict[str, list[_Entry]] | None = (
            {} if tolerance <= INDEXED_TOLERANCE else None
        )
        # The longest plain entry: a plate longer than it by more than the
        # tolerance can match none of them, and is not looked up at all (a
        # plate of thousands of characters has millions of deletion strings).
        self._longest_plain = 0
        order = 0
        for name, entries in table.items():
            for written in entries:
                order += 1
                lowered = written.strip().lower()
                if lowered.startswith(_LIST_PREFIX):
                    membership = ListMembership(lowered[len(_LIST_PREFIX) :])
                    entry = _Entry(name, written, lowered, False, 0, order)
                    self._lists.setdefault(membership, entry)
                    continue
                pattern = normalize_plate(written)
                wildcard = "*" in pattern or "?" in pattern
                literal = sum(ch not in "*?" for ch in pattern)
                entry = _Entry(name, written, pattern, wildcard, literal, order)
                if not wildcard:
                    self._exact.setdefault(pattern, entry)
                    self._plain.append(entry)
                    self._longest_plain = max(self._longest_plain, len(pattern))
                    if self._neighbours is not None and literal >= FUZZY_MIN_LENGTH:
                        for key in _deletions(pattern, tolerance):
                            self._neighbours.setdefault(key, []).append(entry)
                else:
                    self._wildcards.append(entry)
                self._patterns.append(entry)

    def __bool__(self) -> bool:
        return bool(self._patterns or self._lists)

    def _candidates(self, plate: str, tolerance: int) -> list[_Entry]:
        """Entries that may be within `tolerance` of `plate` (a superset)."""
        if tolerance == 0 or len(plate) > self._longest_plain + tolerance:
            return self._wildcards
        if self._neighbours is None:
            return self._patterns
        found: dict[int, _Entry] = {}
        for key in _deletions(plate, tolerance):
            for entry in self._neighbours.get(key, ()):
                found[entry.order] = entry
        return [*found.values(), *self._wildcards]

    def match(self, plate: str, membership: ListMembership | None = None) -> KnownMatch | None:
        """The best entry for a read (plate as read or normalized), or None."""
        normalized = normalize_plate(plate)
        exact = self._exact.get(normalized)
        if exact is not None:
            return KnownMatch(exact.name, MatchKind.EXACT, exact.written, 0)
        best: tuple[int, int, _Entry] | None = None
        tolerance = self.tolerance if len(normalized) >= FUZZY_MIN_LENGTH else 0
        for entry in self._candidates(normalized, tolerance):
            if entry.wildcard:
                if entry.literal_length > len(normalized) + tolerance:
                    continue
                distance = pattern_distance(normalized, entry.pattern)
            else:
                if tolerance == 0 or abs(len(entry.pattern) - len(normalized)) > tolerance:
                    continue
                if entry.literal_length < FUZZY_MIN_LENGTH:
                    continue
                distance = edit_distance(normalized, entry.pattern, tolerance)
            if distance == 0:
                candidate = (0, entry.order, entry)
            elif distance <= tolerance and (
                not entry.wildcard or entry.literal_length >= FUZZY_MIN_LENGTH
            ):
                candidate = (distance, entry.order, entry)
            else:
                continue
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        if best is not None and best[0] == 0:
            entry = best[2]
            return KnownMatch(entry.name, MatchKind.EXACT, entry.written, 0)
        if membership is not None and membership in self._lists:
            entry = self._lists[membership]
            return KnownMatch(entry.name, MatchKind.EXACT, entry.written, 0)
        if best is not None:
            distance, _order, entry = best
            return KnownMatch(entry.name, MatchKind.FUZZY, entry.written, distance)
        return None


def _deletions(text: str, depth: int) -> set[str]:
    """`text` and every string made from it by deleting up to `depth` characters."""
    level = {text}
    result = {text}
    for _ in range(depth):
        level = {word[:i] + word[i + 1 :] for word in level for i in range(len(word))}
        result |= level
    return result


def topic_slug(name: str) -> str:
    """A known-plates name as one MQTT topic level: `Topics.known` builds the topic."""
    return known_name_slug(name)


def normalize_name(name: str) -> str:
    return unicodedata.normalize("NFC", name.strip())


@dataclass(frozen=True, slots=True)
class RuntimeEntry:
    """A known-plates entry added over MQTT (`known_plates/add`), kept in the runtime store."""

    name: str
    written: str  # the plate, pattern or list:… as the request gave it
    cameras: tuple[str, ...] | None  # None: every camera
    valid_until: float | None  # UTC epoch seconds; None: no end
    added_at: float

    @property
    def key(self) -> str:
        """What makes two entries of one name the same: the entry as matched."""
        return entry_key(self.written)


def entry_key(written: str) -> str:
    lowered = written.strip().lower()
    return lowered if lowered.startswith(_LIST_PREFIX) else normalize_plate(written)


class KnownPlatesRegistry:
    """The config's `known_plates` and the runtime entries, compiled for matching.

    Matching stays one `KnownPlates.match` per read: entries scoped to
    cameras are compiled into a table of their own per camera they name, and
    every other camera shares the one table (a dict look-up by camera picks
    it). Entries are compiled again only when they change; expiry is the
    runtime controller's timer, never a check per read.
    """

    def __init__(
        self,
        config_table: Mapping[str, Sequence[str]],
        tolerance: int = 1,
        runtime: Sequence[RuntimeEntry] = (),
    ) -> None:
        self.config_table = {name: tuple(v) for name, v in config_table.items()}
        self.tolerance = tolerance
        self.runtime: tuple[RuntimeEntry, ...] = ()
        self._shared = KnownPlates(self.config_table, tolerance)
        self._by_camera: dict[str, KnownPlates] = {}
        self.replace_runtime(runtime)

    def replace_runtime(self, entries: Sequence[RuntimeEntry]) -> None:
        """Compile the config's table with these runtime entries (config first:
        ties go to the entry written first)."""
        self.runtime = tuple(entries)
        scoped_cameras = {c for e in self.runtime if e.cameras is not None for c in e.cameras}
        self._shared = KnownPlates(self._table_for(None), self.tolerance)
        self._by_camera = {
            camera: KnownPlates(self._table_for(camera), self.tolerance)
            for camera in sorted(scoped_cameras)
        }

    def _table_for(self, camera: str | None) -> dict[str, list[str]]:
        table: dict[str, list[str]] = {name: list(v) for name, v in self.config_table.items()}
        for entry in self.runtime:
            if entry.cameras is None or (camera is not None and camera in entry.cameras):
                table.setdefault(entry.name, []).append(entry.written)
        return table

    def for_camera(self, camera: str) -> KnownPlates:
        return self._by_camera.get(camera, self._shared)

    def __bool__(self) -> bool:
        return bool(self._shared) or bool(self.runtime)

    @property
    def names(self) -> set[str]:
        return set(self.config_table) | {e.name for e in self.runtime}

    @property
    def entry_count(self) -> int:
        return sum(len(v) for v in self.config_table.values()) + len(self.runtime)
