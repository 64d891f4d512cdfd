"""MQTT topics: where each message goes (`Topics`), and camera data never reaches a topic unchecked.

A topic level built from what a camera sent (a camera-event kind, a known
plate's name) goes through `safe_slug`; every topic is checked by
`check_topic` before its message enters the outbox, and again before it is
published (rows stored by an older version). A topic the broker would refuse
(mosquitto drops the connection on a NUL or a control character) would
otherwise be replayed first after every reconnect and stop all delivery.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.event import ImageKind

SLUG_MAX_CHARS = 64
# A policy bound well below MQTT's 65,535 bytes: our topics are
# `<base>/<camera>/<kind>/<slug>`, so anything longer is a bug or an attack.
TOPIC_MAX_BYTES = 1024

_UNSAFE_RUN = re.compile(r"[^a-z0-9_.-]+")
# C0 and C1 controls, DEL, the wildcards and the Unicode noncharacters: the
# MQTT spec says topics SHOULD NOT hold controls and noncharacters, and
# mosquitto disconnects a client that sends them.
# The last two code points of every plane (U+FFFE, U+1FFFE, ... U+10FFFF).
_PLANE_END_NONCHARACTERS = "".join(
    chr(plane * 0x10000 + offset) for plane in range(17) for offset in (0xFFFE, 0xFFFF)
)
_FORBIDDEN_IN_TOPIC = re.compile(
    "[\x00-\x1f\x7f-\x9f+#\ufdd0-\ufdef" + _PLANE_END_NONCHARACTERS + "]"
)


# The image levels of a read's pictures (`ImageKind` values): reserved for reads.
READ_IMAGE_LEVELS = frozenset({"plate", "scene", "evidence0", "evidence1"})


class InvalidTopicError(ValueError):
    """A topic the broker would refuse (or that could match other topics)."""


def safe_slug(text: str, fallback: str = "unknown") -> str:
    """`text` as one safe topic level: `[a-z0-9_.-]`, at most 64 characters.

    Accented Latin letters lose their accents (`Müller` → `muller`); any other
    run of characters becomes one `_`. Where nothing is left (a name in
    another script, only punctuation), or the text was cut, a short stable
    hash of the whole text stands in, so different names stay apart.
    `fallback` is used for empty text.
    """
    if not text.strip():
        return fallback
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_only = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    slug = _UNSAFE_RUN.sub("_", ascii_only).strip("_.-")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    if not slug or slug in (".", ".."):
        return f"hash-{digest}"
    if len(slug) > SLUG_MAX_CHARS:
        return f"{slug[: SLUG_MAX_CHARS - 11]}-{digest}"
    return slug


def check_topic(topic: str) -> None:
    """Raise `InvalidTopicError` (with the reason) unless `topic` is safe to publish to."""
    if not topic:
        raise InvalidTopicError("empty topic")
    try:
        encoded = topic.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidTopicError("not valid UTF-8 (lone surrogate)") from exc
    if len(encoded) > TOPIC_MAX_BYTES:
        raise InvalidTopicError(f"{len(encoded)} bytes long (at most {TOPIC_MAX_BYTES})")
    bad = _FORBIDDEN_IN_TOPIC.search(topic)
    if bad is not None:
        raise InvalidTopicError(f"holds U+{ord(bad.group()):04X} at {bad.start()}")
    if "//" in topic or topic.startswith("/") or topic.endswith("/"):
        raise InvalidTopicError("holds an empty level")


# The same few topics per camera come by with every read, twice (stored, then
# published): checking each anew was 1.8 % of the event loop's time under HTTP
# flat out. Bounded, as a topic level may come from camera data.
@functools.lru_cache(maxsize=4096)
def topic_problem(topic: str) -> str | None:
    """The reason `topic` is unsafe, or None."""
    try:
        check_topic(topic)
    except InvalidTopicError as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class Topics:
    """Every MQTT topic the gateway publishes to, built from one base topic.

    Pure and broker-free, like aiomqtt's `Topic`: the one place that knows
    where each message goes. Levels that come from a camera or a known-plates
    name are slugged here (`safe_slug`), so a caller cannot forget it.
    """

    base: str

    @property
    def state(self) -> str:
        """Bridge state: retained `online`/`offline`, also the last will."""
        return f"{self.base}/bridge/state"

    @property
    def info(self) -> str:
        """Bridge info: version and the cameras with their state (retained JSON)."""
        return f"{self.base}/bridge/info"

    @property
    def bridge_event(self) -> str:
        """What happened (cameras, logins, known plates): JSON, not retained."""
        return f"{self.base}/bridge/event"

    def bridge_request(self, path: str) -> str:
        """Where clients send requests (`path` empty: the prefix of them all)."""
        return f"{self.base}/bridge/request/{path}"

    def bridge_response(self, path: str) -> str:
        return f"{self.base}/bridge/response/{path}"

    def availability(self, camera: str) -> str:
        return f"{self.base}/{camera}/availability"

    def image(self, camera: str, kind: ImageKind) -> str:
        return f"{self.base}/{camera}/image/{kind.value}"

    def camera_event_image(self, camera: str, kind: str, field: str, primary: bool = True) -> str:
        """A camera event's picture (retained): `image/<kind slug>`, or for a second
        picture of the same event `image/<kind slug>.<field slug>`.

        A kind whose slug is the name of a read's picture (`plate`, `scene`,
        `evidence0`...) gets `event-` in front, so that a camera event can never
        overwrite the picture of the latest read.
        """
        level = safe_slug(kind)
        if not primary:
            level = safe_slug(f"{level}.{safe_slug(field)}")
        if level in READ_IMAGE_LEVELS:
            level = f"event-{level}"
        return f"{self.base}/{camera}/image/{level}"

    def split(self, topic: str) -> tuple[str, str] | None:
        """A topic under the base as (its first level: a camera or `bridge`, the
        rest), or None for a topic outside it."""
        prefix = f"{self.base}/"
        if not topic.startswith(prefix):
            return None
        first, _, rest = topic[len(prefix) :].partition("/")
        return first, rest

    def event_picture_camera(self, topic: str) -> str | None:
        """The camera whose camera-event picture `topic` is (`camera_event_image`),
        or None: a read's picture or any other topic."""
        levels = self.split(topic)
        if levels is None:
            return None
        camera, rest = levels
        section, _, level = rest.partition("/")
        if section != "image" or not level or "/" in level or level in READ_IMAGE_LEVELS:
            return None
        return camera

    def event(self, camera: str) -> str:
        return f"{self.base}/{camera}/event"

    def last(self, camera: str) -> str:
        return f"{self.base}/{camera}/last"

    def camera_event(self, camera: str, kind: str) -> str:
        """A camera's non-plate event; `kind` is what the camera sent, slugged."""
        return f"{self.base}/{camera}/camera_event/{safe_slug(kind)}"

    def known(self, camera: str, name: str) -> str:
        """A read of a known plate, by the known-plates name (slugged)."""
        return f"{self.base}/{camera}/known/{known_name_slug(name)}"

    def ha_event(self, camera: str) -> str:
        """Home Assistant's event entity state topic (one small JSON per read)."""
        return f"{self.base}/{camera}/ha_event"

    # Home Assistant's gate entities (with `homeassistant.enabled`). A device
    # trigger fires on any message on its topic (its `payload` filter is a
    # template in Home Assistant, no place for a name), so each trigger has a
    # topic of its own.

    def trigger_known(self, camera: str, name: str) -> str:
        """Device trigger "known plate read" of one known-plates name (slugged)."""
        return f"{self.base}/{camera}/trigger/known/{known_name_slug(name)}"

    def trigger_unknown(self, camera: str) -> str:
        """Device trigger "unknown plate read": a read that no known-plates entry matched."""
        return f"{self.base}/{camera}/trigger/unknown"

    def trigger_black_list(self, camera: str) -> str:
        """Device trigger "black list plate read": the camera put the plate on its black list."""
        return f"{self.base}/{camera}/trigger/black_list"

    def presence(self, camera: str) -> str:
        """ "Known vehicle present" (retained JSON, `state` on/off)."""
        return f"{self.base}/{camera}/presence"

    def enabled(self, camera: str) -> str:
        """The camera's runtime switch (retained `ON`/`OFF`), for the "Enabled" switch."""
        return f"{self.base}/{camera}/enabled"

    def last_seen(self, name: str) -> str:
        """A known-plates name's last read (retained JSON), for its "Last seen" sensor.

        Under `bridge/`: a camera cannot be called `bridge`, so no camera's
        topics can meet these whatever the name.
        """
        return f"{self.base}/bridge/last_seen/{known_name_slug(name)}"


def retired_topic(
    topic: str,
    topics: Topics,
    cameras: Collection[str],
    discovery_prefix: str,
    discovery_on: bool,
    last_seen: Collection[str] = (),
) -> str | None:
    """Why the gateway, as configured now, no longer publishes the retained
    `topic` it once did (None: it still does). Asked only of topics this
    gateway published (its outbox's retained copy), never of a broker's.
    `last_seen`: the "last seen" topics of the known-plates names there are.

    Home Assistant's configs for cameras and names are the discovery's own to
    empty while discovery is on (it keeps the list of what it announced).
    """
    if topic.startswith(f"{discovery_prefix}/"):
        return None if discovery_on else "Home Assistant discovery is off"
    levels = topics.split(topic)
    if levels is None:
        return "it is not under the base topic (mqtt.base_topic changed)"
    level, rest = levels
    if level == "bridge":
        if not rest.startswith("last_seen/"):
            return None
        if not discovery_on:
            return "Home Assistant discovery is off"
        # Names come and go (a visitor added for a day): kept, theirs would pile up.
        return None if topic in last_seen else "its known-plates name is gone"
    if level not in cameras:
        return f"camera {level} is no longer configured"
    if not discovery_on and topic in (topics.presence(level), topics.enabled(level)):
        return "Home Assistant discovery is off"
    return None


def retirement_judge(config: Config, names: Iterable[str]) -> Callable[[str], str | None]:
    """`retired_topic` for this config and these known-plates names (the
    config's and the runtime ones): what the start clears, and what
    `lpr-gateway outbox retained list` says it will."""
    topics = Topics(config.mqtt.base_topic)
    return functools.partial(
        retired_topic,
        topics=topics,
        cameras={camera.id for camera in config.cameras},
        discovery_prefix=config.homeassistant.discovery_prefix,
        discovery_on=config.homeassistant.enabled,
        last_seen={topics.last_seen(name) for name in names},
    )


def known_name_slug(name: str) -> str:
    """A known-plates name as one topic level (`safe_slug`; NFC, trimmed first).

    A name in a script without a Latin form becomes a short stable hash.
    """
    return safe_slug(unicodedata.normalize("NFC", name.strip()), fallback="known")
