"""The normalized event: the one type that crosses from adapters to the pipeline.

Every camera protocol ends in a `PlateEvent` (a plate read) or a `CameraEvent`
(any other notification). Their JSON form is the contract README.md shows under "The event": every
field present, `null` for what the source does not carry.
"""

from __future__ import annotations

import enum
import hashlib
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gateway.topics import Topics, safe_slug

SCHEMA_VERSION = 1


class Source(enum.Enum):
    TCP = "tcp"
    HTTP = "http"
    RTSP = "rtsp"
    INJECT = "inject"  # the demo/bench event source and tests that feed the pipeline


class Direction(enum.Enum):
    IN = "in"
    OUT = "out"
    UNKNOWN = "unknown"


class ListMembership(enum.Enum):
    BLACK = "black"
    WHITE = "white"
    VISITOR = "visitor"


class ImageKind(enum.Enum):
    """A read's pictures: each has its retained topic `<base>/<camera>/image/<value>`."""

    PLATE = "plate"
    SCENE = "scene"
    # Pictures of the evidence cameras linked to the LPR camera (newer firmware).
    EVIDENCE0 = "evidence0"
    EVIDENCE1 = "evidence1"


@dataclass(frozen=True, slots=True)
class Image:
    """An image a read should carry: its bytes, or why it could not be had."""

    data: bytes | None
    missing_reason: str | None = None

    @classmethod
    def missing(cls, reason: str) -> Image:
        return cls(data=None, missing_reason=reason)

    def __post_init__(self) -> None:
        if (self.data is None) == (self.missing_reason is None):
            raise ValueError("an Image has either data or a missing_reason")


class PictureDigests:
    """Where the event JSON's SHA-256 of each picture comes from: here, hashed as
    the JSON is rendered. (The pipeline leaves a large picture's to be filled in
    on the outbox's thread, beside the event loop: `pipeline.DeferredDigests`.)"""

    __slots__ = ()

    def sha256(self, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()


HASHED_WHEN_RENDERED = PictureDigests()


@dataclass(frozen=True, slots=True)
class Vehicle:
    type: str | None = None
    color: str | None = None
    color_code: int | None = None
    brand: str | None = None


@dataclass(frozen=True, slots=True)
class PlateColor:
    name: str | None = None
    code: int | None = None


@dataclass(frozen=True, slots=True)
class Box:
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True, slots=True)
class Resolution:
    width: int
    height: int


def new_event_id() -> str:
    return str(uuid.uuid4())


def utc_now() -> datetime:
    return datetime.now(UTC)


# Characters removed by normalisation: separators a camera or a person puts
# between plate groups. Everything else (Hangul, Arabic, ...) is kept.
_PLATE_SEPARATORS = frozenset(" \t\r\n\u00a0\u3000-\u2010\u2011\u2012\u2013\u2014._·/")


def normalize_plate(plate: str) -> str:
    """NFC, upper case, spaces/dashes/dots removed; other scripts kept intact.

    NFC first so that Hangul sent as conjoining jamo compares equal to the
    precomposed syllables a person types; `upper()` leaves scripts without
    case untouched.
    """
    composed = unicodedata.normalize("NFC", plate)
    return "".join(ch for ch in composed if ch not in _PLATE_SEPARATORS).upper()


@dataclass(frozen=True, slots=True)
class PlateEvent:
    """One plate read, as the gateway publishes it."""

    camera: str
    source: Source
    plate: str
    received: datetime
    time: datetime | None = None
    id: str = field(default_factory=new_event_id)
    confidence: float | None = None
    direction: Direction = Direction.UNKNOWN
    speed_kmh: float | None = None
    list: ListMembership | None = None
    vehicle: Vehicle = Vehicle()
    plate_color: PlateColor = PlateColor()
    region: str | None = None
    roi: int | None = None
    box: Box | None = None
    resolution: Resolution | None = None
    device_id: str | None = None
    known: str | None = None
    match: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    # None: this source never carries the image (e.g. an HTTP GET read).
    plate_image: Image | None = None
    scene_image: Image | None = None
    evidence0_image: Image | None = None
    evidence1_image: Image | None = None

    @property
    def plate_normalized(self) -> str:
        return normalize_plate(self.plate)

    def image(self, kind: ImageKind) -> Image | None:
        if kind is ImageKind.PLATE:
            return self.plate_image
        if kind is ImageKind.SCENE:
            return self.scene_image
        return self.evidence0_image if kind is ImageKind.EVIDENCE0 else self.evidence1_image

    def with_enrichment(self, known: str | None, match: str | None) -> PlateEvent:
        return replace(self, known=known, match=match)

    def to_json_dict(
        self, topics: Topics | str, digests: PictureDigests = HASHED_WHEN_RENDERED
    ) -> dict[str, Any]:
        """The event JSON of the README (image topics need the topics, or their base)."""
        if isinstance(topics, str):
            topics = Topics(topics)
        images: dict[str, Any] = {}
        for kind in ImageKind:
            image = self.image(kind)
            if image is None:
                images[kind.value] = None
            elif image.data is None:
                images[kind.value] = {"missing": True, "reason": image.missing_reason}
            else:
                images[kind.value] = image_reference(
                    topics.image(self.camera, kind), image.data, digests
                )
        return {
            "schema": SCHEMA_VERSION,
            "id": self.id,
            "camera": self.camera,
            "source": self.source.value,
            "time": format_time(self.time),
            "received": format_time(self.received),
            "plate": self.plate,
            "plate_normalized": self.plate_normalized,
            "confidence": self.confidence,
            "direction": self.direction.value,
            "speed_kmh": self.speed_kmh,
            "list": self.list.value if self.list else None,
            "vehicle": {
                "type": self.vehicle.type,
                "color": self.vehicle.color,
                "color_code": self.vehicle.color_code,
                "brand": self.vehicle.brand,
            },
            "plate_color": {"name": self.plate_color.name, "code": self.plate_color.code},
            "region": self.region,
            "roi": self.roi,
            "box": (
                {"x1": self.box.x1, "y1": self.box.y1, "x2": self.box.x2, "y2": self.box.y2}
                if self.box
                else None
            ),
            "resolution": (
                {"width": self.resolution.width, "height": self.resolution.height}
                if self.resolution
                else None
            ),
            "device_id": self.device_id,
            "known": self.known,
            "match": self.match,
            "raw": dict(self.raw),
            "images": images,
        }


@dataclass(frozen=True, slots=True)
class CameraEvent:
    """Any notification that is not a plate read (counting, list match, motion, ...).

    Forwarded on `<base>/<camera>/camera_event/<kind>`; never an error.
    """

    camera: str
    source: Source
    kind: str
    received: datetime
    time: datetime | None = None
    id: str = field(default_factory=new_event_id)
    data: Mapping[str, Any] = field(default_factory=dict)
    # The event's pictures by the field that carried them (e.g. `snapshot`), in
    # body order. Published on their own retained topics (`image_topics`); in
    # `data` each such field becomes `{"topic", "bytes", "sha256"}`.
    images: Mapping[str, Image] = field(default_factory=dict)

    def image_topics(self, topics: Topics) -> dict[str, str]:
        """Field → retained image topic, for the pictures that have data."""
        with_data = [name for name, image in self.images.items() if image.data is not None]
        return {
            name: topics.camera_event_image(self.camera, self.kind, name, primary=index == 0)
            for index, name in enumerate(_primary_first(with_data))
        }

    def to_json_dict(
        self, topics: Topics | str | None = None, digests: PictureDigests = HASHED_WHEN_RENDERED
    ) -> dict[str, Any]:
        """The camera event JSON; `topics` (or their base) is needed once it has pictures."""
        data = dict(self.data)
        if self.images:
            if topics is None:
                raise ValueError("a camera event with pictures needs the topics to refer to them")
            if isinstance(topics, str):
                topics = Topics(topics)
            where = self.image_topics(topics)
            for name, image in self.images.items():
                if image.data is None:
                    data[name] = {"missing": True, "reason": image.missing_reason}
                else:
                    data[name] = image_reference(where[name], image.data, digests)
        return {
            "schema": SCHEMA_VERSION,
            "id": self.id,
            "camera": self.camera,
            "source": self.source.value,
            "kind": self.kind,
            "time": format_time(self.time),
            "received": format_time(self.received),
            "data": data,
        }


# A camera event's picture in this field takes the plain `image/<kind>` topic;
# the others get the field's name after the kind.
PRIMARY_EVENT_IMAGE_FIELD = "snapshot"


def _primary_first(names: list[str]) -> list[str]:
    if PRIMARY_EVENT_IMAGE_FIELD in names:
        names = [PRIMARY_EVENT_IMAGE_FIELD, *(n for n in names if n != PRIMARY_EVENT_IMAGE_FIELD)]
    return names


def image_reference(
    topic: str, data: bytes, digests: PictureDigests = HASHED_WHEN_RENDERED
) -> dict[str, Any]:
    """How an event's JSON refers to a picture published on its own topic."""
    return {"topic": topic, "bytes": len(data), "sha256": digests.sha256(data)}


AnyEvent = PlateEvent | CameraEvent


def format_time(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with milliseconds and a `Z`, as the README's event example shows."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError("naive datetime reached the event; convert at the codec edge")
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def camera_event_kind_topic_segment(kind: str) -> str:
    """A camera-supplied kind made safe as one MQTT topic level (see `safe_slug`)."""
    return safe_slug(kind)
