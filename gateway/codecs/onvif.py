"""ONVIF metadata parser: one reassembled `tt:MetadataStream` document in, typed results out.

Sans-IO (bytes in, frozen dataclasses out) and hardened: a camera stream is
untrusted, so DOCTYPE/entity declarations are refused, nothing is resolved or
fetched, and a document over the byte limit is refused before it is parsed.
Also builds realistic documents for the RTSP simulator and the tests.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from gateway.codecs import assumed, values
from gateway.codecs.http_body import decode_image
from gateway.codecs.jpeg import jpeg_dimensions
from gateway.codecs.numbers import ascii_int_or_none, finite_or_none
from gateway.errors import CameraProtocolError
from gateway.event import (
    Box,
    CameraEvent,
    Direction,
    Image,
    PlateColor,
    PlateEvent,
    Resolution,
    Source,
    Vehicle,
    normalize_plate,
)

# Namespaces, matched by URI only: a camera may bind any prefix to them.
NS_TT = "http://www.onvif.org/ver10/schema"
NS_WSNT = "http://docs.oasis-open.org/wsn/b-2"
NS_TNS1 = "http://www.onvif.org/ver10/topics"
NS_TNSAXIS = "http://www.axis.com/2009/event/topics"
TOPIC_DIALECT_CONCRETE_SET = "http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet"

# A plate notification is about 1-2 KB; a frame of scene analytics can be tens
# of KB. Anything near a megabyte is not a metadata document.
MAX_DOCUMENT_BYTES = 1024 * 1024

_TT = f"{{{NS_TT}}}"
_WSNT = f"{{{NS_WSNT}}}"
# "<!DOCTYPE" and "<!ENTITY" in every encoding an XML declaration can name
# without a BOM guess: a UTF-16 document must not slip past the byte scan.
_DTD_MARKERS = tuple(
    marker.encode(codec)
    for marker in ("<!DOCTYPE", "<!ENTITY")
    for codec in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
)


class PropertyOperation(enum.Enum):
    """`tt:Message@PropertyOperation`. `Initialized` is the state a camera
    re-sends at stream start: not a new read."""

    INITIALIZED = "Initialized"
    CHANGED = "Changed"
    DELETED = "Deleted"


@dataclass(frozen=True, slots=True)
class Topic:
    """A notification topic with its prefix resolved to a namespace URI."""

    namespace: str | None  # None: no prefix, or a prefix the document never declared
    path: str  # "RuleEngine/LicensePlateDetector/LicensePlate"
    text: str  # as written in the document: "tns1:RuleEngine/..."

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class OnvifPlateRead:
    """A plate notification (ONVIF LicensePlateDetector or a mapped vendor topic)."""

    topic: Topic
    vendor: str  # the PLATE_TOPICS entry that matched: "onvif", "axis", ...
    plate: str
    time: datetime | None  # aware UTC; None when UtcTime is absent or unreadable
    property_operation: PropertyOperation | None
    picture_path: str | None = None
    speed_kmh: float | None = None
    direction: Direction = Direction.UNKNOWN
    confidence: float | None = None
    region: str | None = None
    source_items: Mapping[str, str] = field(default_factory=dict)
    data_items: Mapping[str, str] = field(default_factory=dict)
    # Item values that did not read as their field (e.g. speed "fast"), by item name.
    unreadable: Mapping[str, str] = field(default_factory=dict)
    utc_time_text: str | None = None
    # Item names whose values became the fields above (left out of the event's raw).
    slotted_items: frozenset[str] = frozenset()

    @property
    def initialized(self) -> bool:
        """The camera re-announcing its state at stream start: never a fresh read."""
        return self.property_operation is PropertyOperation.INITIALIZED


@dataclass(frozen=True, slots=True)
class OnvifNotification:
    """Any other notification (motion, tampering, ...): a camera event, never an error."""

    topic: Topic
    time: datetime | None
    property_operation: PropertyOperation | None
    source_items: Mapping[str, str] = field(default_factory=dict)
    key_items: Mapping[str, str] = field(default_factory=dict)
    data_items: Mapping[str, str] = field(default_factory=dict)
    utc_time_text: str | None = None

    @property
    def initialized(self) -> bool:
        return self.property_operation is PropertyOperation.INITIALIZED


@dataclass(frozen=True, slots=True)
class OnvifProblem:
    """One notification in an otherwise good document that could not be read.

    Returned (not raised) so that the other notifications of the document are
    not lost; the adapter logs it and counts `parse_errors{kind}`.
    """

    kind: str
    detail: str


# MetadataResult (what parse_metadata returns) is declared after OnvifSceneFrame, below.


# --------------------------------------------------------------------------
# Vendor plate topics: the one table to extend for another camera family.


@dataclass(frozen=True, slots=True)
class PlateTopicMapping:
    """Which topic is a plate read, and which item names carry which field.

    Items are looked up in Data, then Key, then Source; the first name present wins.
    """

    vendor: str
    namespace: str
    paths: frozenset[str]
    plate: tuple[str, ...]
    picture_path: tuple[str, ...] = ()
    speed: tuple[str, ...] = ()
    direction: tuple[str, ...] = ()
    confidence: tuple[str, ...] = ()
    region: tuple[str, ...] = ()

    def matches(self, topic: Topic) -> bool:
        return topic.namespace == self.namespace and topic.path in self.paths


PLATE_TOPICS: tuple[PlateTopicMapping, ...] = (
    # The vendor note's topic and items (docs/camera-protocols.md, section 3).
    PlateTopicMapping(
        vendor="onvif",
        namespace=NS_TNS1,
        paths=frozenset({"RuleEngine/LicensePlateDetector/LicensePlate"}),
        plate=("LicensePlateResult",),
        picture_path=("LicensePlatePicturePath",),
        speed=("LicenseCarSpeed",),
        direction=("LicenseCarDirection",),
    ),
    # Axis-style ALPV application events.
    PlateTopicMapping(
        vendor="axis",
        namespace=NS_TNSAXIS,
        paths=frozenset(
            {
                "CameraApplicationPlatform/ALPV.AllPlates",
                "CameraApplicationPlatform/ALPV/LicensePlateRecognition",
                "CameraApplicationPlatform/ALPV.LicensePlateRecognition",
            }
        ),
        plate=("plate", "text"),
        direction=("direction",),
        confidence=("plateConfidence",),
        region=("country",),
    ),
)


# --------------------------------------------------------------------------
# Parsing


def _new_parser() -> Any:
    # A parser per document: lxml parsers are not safe to share across threads.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        dtd_validation=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse_metadata(
    document: bytes,
    *,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    plate_topics: Sequence[PlateTopicMapping] = PLATE_TOPICS,
) -> list[MetadataResult]:
    """Every `wsnt:NotificationMessage` of one `tt:MetadataStream` document, in
    order, then every `tt:VideoAnalytics/tt:Frame` that has a plate object or
    an object tree (`OnvifSceneFrame`), with the problems of its objects.

    Raises `CameraProtocolError` when the document as a whole is refused:
    `xml_too_large`, `xml_doctype` (DTD or entity declarations), `xml_syntax`,
    `xml_not_metadata` (the root is not a `tt:MetadataStream`). A document with
    no events and no plate objects (PTZ, motion cells) gives an empty list.
    """
    if len(document) > max_bytes:
        raise CameraProtocolError(
            "xml_too_large", f"document of {len(document)} bytes over the {max_bytes} limit"
        )
    # Checked on the bytes first, so that no DTD is ever parsed; the docinfo
    # check after parsing catches any encoding this byte scan does not know.
    if any(marker in document for marker in _DTD_MARKERS):
        raise CameraProtocolError("xml_doctype", "DOCTYPE or ENTITY declarations are refused")
    if not document.strip():
        raise CameraProtocolError("xml_syntax", "empty document")
    try:
        root = etree.fromstring(document, _new_parser())
    except etree.XMLSyntaxError as exc:
        raise CameraProtocolError("xml_syntax", _short(str(exc))) from None
    except (ValueError, LookupError) as exc:  # e.g. an unknown declared encoding
        raise CameraProtocolError("xml_syntax", _short(str(exc))) from None
    if root is None:
        raise CameraProtocolError("xml_syntax", "no root element")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise CameraProtocolError("xml_doctype", "DOCTYPE or ENTITY declarations are refused")
    if root.tag != _TT + "MetadataStream":
        raise CameraProtocolError("xml_not_metadata", f"root element is {_short(str(root.tag))}")

    results: list[MetadataResult] = []
    for message in root.iter(_WSNT + "NotificationMessage"):
        # One notification's trouble is that notification's alone: the plate
        # read beside it in the same document is still a read.
        try:
            results.append(_notification(message, plate_topics))
        except CameraProtocolError as exc:
            results.append(OnvifProblem(exc.kind, exc.detail))
    _scene_frames(root, results)
    return results


def _notification(element: Any, plate_topics: Sequence[PlateTopicMapping]) -> MetadataResult:
    topic_element = element.find(_WSNT + "Topic")
    if topic_element is None or not (topic_element.text or "").strip():
        return OnvifProblem("onvif_no_topic", "NotificationMessage without a Topic")
    topic = _topic(topic_element)
    message = element.find(f"{_WSNT}Message/{_TT}Message")
    if message is None:
        return OnvifProblem("onvif_no_message", f"notification {topic.text!r} without tt:Message")

    utc_text = message.get("UtcTime")
    time = parse_utc_time(utc_text) if utc_text is not None else None
    operation = _property_operation(message.get("PropertyOperation"))
    source = _items(message.find(_TT + "Source"))
    key = _items(message.find(_TT + "Key"))
    data = _items(message.find(_TT + "Data"))

    for mapping in plate_topics:
        if mapping.matches(topic):
            return _plate_read(mapping, topic, time, utc_text, operation, source, key, data)
    return OnvifNotification(
        topic=topic,
        time=time,
        property_operation=operation,
        source_items=source,
        key_items=key,
        data_items=data,
        utc_time_text=utc_text,
    )


def _plate_read(
    mapping: PlateTopicMapping,
    topic: Topic,
    time: datetime | None,
    utc_text: str | None,
    operation: PropertyOperation | None,
    source: dict[str, str],
    key: dict[str, str],
    data: dict[str, str],
) -> MetadataResult:
    def lookup(names: Iterable[str]) -> tuple[str, str] | None:
        for items in (data, key, source):
            for name in names:
                value = items.get(name)
                if value is not None:
                    return name, value
        return None

    plate_item = lookup(mapping.plate)
    plate = plate_item[1].strip() if plate_item else ""
    if not plate:
        return OnvifProblem(
            "onvif_no_plate", f"plate notification {topic.text!r} without a plate value"
        )
    # A field that does not read (speed "²", direction "-0x1", confidence "nan")
    # becomes null and its text goes to raw["unreadable"]; the read itself is
    # kept. That is what a user expects: the plate is the point of the
    # notification, a camera's odd speed format must not cost the read.
    unreadable: dict[str, str] = {}
    slotted = {plate_item[0]} if plate_item else set()

    picture = lookup(mapping.picture_path)
    picture_path = (picture[1].strip() or None) if picture else None

    speed_kmh: float | int | None = None
    speed = lookup(mapping.speed)
    if speed is not None:
        speed_kmh, readable = values.speed_kmh(speed[1])
        if not readable:
            unreadable[speed[0]] = speed[1]
        else:
            slotted.add(speed[0])

    direction = Direction.UNKNOWN
    direction_item = lookup(mapping.direction)
    if direction_item is not None:
        parsed_direction = parse_direction(direction_item[1])
        if parsed_direction is None:
            unreadable[direction_item[0]] = direction_item[1]
        else:
            direction = parsed_direction
            slotted.add(direction_item[0])

    confidence: float | None = None
    confidence_item = lookup(mapping.confidence)
    if confidence_item is not None:
        confidence = values.confidence(confidence_item[1])
        if confidence is None:
            unreadable[confidence_item[0]] = confidence_item[1]
        else:
            slotted.add(confidence_item[0])

    region_item = lookup(mapping.region)
    region = (region_item[1].strip() or None) if region_item else None
    for item in (picture, region_item):
        if item is not None:
            slotted.add(item[0])  # the picture path is kept in raw under its own name

    if utc_text is not None and time is None:
        unreadable["UtcTime"] = utc_text

    return OnvifPlateRead(
        topic=topic,
        vendor=mapping.vendor,
        plate=plate,
        time=time,
        property_operation=operation,
        picture_path=picture_path,
        speed_kmh=speed_kmh,
        direction=direction,
        confidence=confidence,
        region=region,
        source_items=source,
        data_items={**key, **data},
        unreadable=unreadable,
        utc_time_text=utc_text,
        slotted_items=frozenset(slotted),
    )


def _topic(element: Any) -> Topic:
    text = " ".join((element.text or "").split())
    prefix, colon, path = text.partition(":")
    if not colon:
        return Topic(namespace=None, path=text, text=text)
    # element.nsmap holds every prefix in scope, inherited ones included.
    namespace = element.nsmap.get(prefix)
    return Topic(namespace=namespace, path=path, text=text)


def _items(element: Any) -> dict[str, str]:
    if element is None:
        return {}
    items: dict[str, str] = {}
    for item in element.iterchildren(_TT + "SimpleItem"):
        name = item.get("Name")
        if name:
            items[name] = item.get("Value", "")
    return items


def _property_operation(text: str | None) -> PropertyOperation | None:
    if text is None:
        return None
    for operation in PropertyOperation:
        if operation.value.lower() == text.strip().lower():
            return operation
    return None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------
# Field readers (pure; exposed for tests and other vendors' mappings)

# ASCII digits only (re.ASCII): `\d` would also match "٥" and "５".
_UTC_TIME = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,32}))?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?\s*$",
    re.IGNORECASE | re.ASCII,
)


def parse_utc_time(text: str) -> datetime | None:
    """`2018-05-15T06:19:34Z`, with or without fractional seconds or an offset.

    No zone designator means UTC (the attribute is `UtcTime`). None when unreadable.
    """
    match = _UTC_TIME.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    microsecond = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        tz = values.utc_offset(zone) if zone else UTC
        if tz is None:
            return None  # an offset of 24 h or more
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), microsecond, tz
        )
        # Year 1 with a positive offset, or 9999 with a negative one, leaves
        # the range of datetime in UTC (OverflowError).
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


_DIRECTION_BY_VALUE = {d.value: d for d in Direction}


def parse_direction(text: str) -> Direction | None:
    """A code of `assumed.DIRECTION_CODES` (`1`), or a word (`in`, `out`, `approach`)."""
    stripped = text.strip().lower()
    code = ascii_int_or_none(stripped)
    if code is not None:
        name = assumed.DIRECTION_CODES.get(code)
        return _DIRECTION_BY_VALUE.get(name) if name else None
    word = assumed.HTTP_DIRECTION_WORDS.get(stripped, stripped)
    return _DIRECTION_BY_VALUE.get(word)


# --------------------------------------------------------------------------
# Mapping to the normalized events (pure)


def to_plate_event(
    read: OnvifPlateRead,
    camera_id: str,
    received: datetime,
    *,
    plate_image: Image | None = None,
) -> PlateEvent:
    """The normalized event of a read. The adapter passes the fetched picture.

    Without `plate_image` the picture is marked missing (never "not carried":
    an RTSP read names its picture).
    """
    if plate_image is None:
        plate_image = Image.missing(
            "picture not fetched" if read.picture_path else "notification names no picture"
        )
    raw: dict[str, Any] = {"topic": read.topic.text, "vendor": read.vendor}
    if read.picture_path is not None:
        raw["picture_path"] = read.picture_path
    if read.property_operation is not None:
        raw["property_operation"] = read.property_operation.value
    if read.source_items:
        raw["source"] = dict(read.source_items)
    # Items without a slot (unreadable ones are under "unreadable", not twice).
    rest = {
        name: value
        for name, value in read.data_items.items()
        if name not in read.slotted_items and name not in read.unreadable
    }
    if rest:
        raw["data"] = rest
    if read.unreadable:
        raw["unreadable"] = dict(read.unreadable)
    return PlateEvent(
        camera=camera_id,
        source=Source.RTSP,
        plate=read.plate,
        received=received,
        time=read.time,
        confidence=read.confidence,
        direction=read.direction,
        speed_kmh=read.speed_kmh,
        region=read.region,
        raw=raw,
        plate_image=plate_image,
        scene_image=None,  # the metadata stream names only the plate picture
    )


def to_camera_event(
    notification: OnvifNotification, camera_id: str, received: datetime
) -> CameraEvent:
    """A camera event whose kind is the topic path (`RuleEngine/CellMotionDetector/Motion`)."""
    data: dict[str, Any] = {"topic": notification.topic.text}
    if notification.topic.namespace is not None:
        data["topic_namespace"] = notification.topic.namespace
    if notification.property_operation is not None:
        data["property_operation"] = notification.property_operation.value
    data["source"] = dict(notification.source_items)
    if notification.key_items:
        data["key"] = dict(notification.key_items)
    data["data"] = dict(notification.data_items)
    return CameraEvent(
        camera=camera_id,
        source=Source.RTSP,
        kind=notification.topic.path or notification.topic.text or "unknown",
        received=received,
        time=notification.time,
        data=data,
    )


# --------------------------------------------------------------------------
# Building documents (the simulator and the tests)

DEFAULT_PREFIXES: Mapping[str, str] = {"tt": "tt", "wsnt": "wsnt", "tns1": "tns1"}
_ROLE_URIS = {"tt": NS_TT, "wsnt": NS_WSNT, "tns1": NS_TNS1, "tnsaxis": NS_TNSAXIS}


@dataclass(frozen=True, slots=True)
class NotificationSpec:
    """One notification to build. `topic_role` names the namespace of the topic."""

    topic_path: str
    utc_time: datetime
    property_operation: PropertyOperation | None = PropertyOperation.CHANGED
    source: Sequence[tuple[str, str]] = ()
    key: Sequence[tuple[str, str]] = ()
    data: Sequence[tuple[str, str]] = ()
    topic_role: str = "tns1"


def format_utc_time(moment: datetime, *, fraction: bool = False) -> str:
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += f".{moment.microsecond // 1000:03d}"
    return text + "Z"


def build_metadata_document(
    notifications: Sequence[NotificationSpec],
    *,
    prefixes: Mapping[str, str] | None = None,
    fraction: bool = False,
) -> bytes:
    """A `tt:MetadataStream` with one `tt:Event` per notification, as a camera sends it.

    `prefixes` renames the namespace prefixes by role (`tt`, `wsnt`, `tns1`,
    `tnsaxis`), topic text included: a parser keyed on prefixes breaks on it.
    """
    chosen = {**DEFAULT_PREFIXES, **(prefixes or {})}
    roles = {"tt", "wsnt"} | {spec.topic_role for spec in notifications}
    nsmap = {chosen.get(role, role): _ROLE_URIS[role] for role in sorted(roles)}
    tt, wsnt = f"{{{NS_TT}}}", f"{{{NS_WSNT}}}"
    root = etree.Element(tt + "MetadataStream", nsmap=nsmap)
    for spec in notifications:
        event = etree.SubElement(root, tt + "Event")
        notification = etree.SubElement(event, wsnt + "NotificationMessage")
        topic = etree.SubElement(notification, wsnt + "Topic", Dialect=TOPIC_DIALECT_CONCRETE_SET)
        topic.text = f"{chosen.get(spec.topic_role, spec.topic_role)}:{spec.topic_path}"
        wrapper = etree.SubElement(notification, wsnt + "Message")
        message = etree.SubElement(wrapper, tt + "Message")
        message.set("UtcTime", format_utc_time(spec.utc_time, fraction=fraction))
        if spec.property_operation is not None:
            message.set("PropertyOperation", spec.property_operation.value)
        for tag, items in (("Source", spec.source), ("Key", spec.key), ("Data", spec.data)):
            if not items and tag == "Key":
                continue
            container = etree.SubElement(message, tt + tag)
            for name, value in items:
                etree.SubElement(container, tt + "SimpleItem", Name=name, Value=value)
    result: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return result


_PLATE_SOURCE = (
    ("VideoSourceConfigurationToken", "VideoSourceToken"),
    ("VideoAnalyticsConfigurationToken", "VideoAnalyticsToken"),
    ("Rule", "MyLicensePlateDetectorRule"),
)
PLATE_TOPIC_PATH = "RuleEngine/LicensePlateDetector/LicensePlate"
MOTION_TOPIC_PATH = "RuleEngine/CellMotionDetector/Motion"


def plate_notification(
    plate: str,
    utc_time: datetime,
    picture_path: str | None,
    *,
    speed: str | None = "25km/h",
    direction: str | None = "1",
    property_operation: PropertyOperation | None = PropertyOperation.CHANGED,
) -> NotificationSpec:
    data = [("LicensePlateResult", plate)]
    if picture_path is not None:
        data.append(("LicensePlatePicturePath", picture_path))
    if speed is not None:
        data.append(("LicenseCarSpeed", speed))
    if direction is not None:
        data.append(("LicenseCarDirection", direction))
    return NotificationSpec(
        topic_path=PLATE_TOPIC_PATH,
        utc_time=utc_time,
        property_operation=property_operation,
        source=_PLATE_SOURCE,
        data=tuple(data),
    )


def motion_notification(
    utc_time: datetime,
    is_motion: bool,
    *,
    property_operation: PropertyOperation | None = PropertyOperation.CHANGED,
) -> NotificationSpec:
    return NotificationSpec(
        topic_path=MOTION_TOPIC_PATH,
        utc_time=utc_time,
        property_operation=property_operation,
        source=(
            ("VideoSourceConfigurationToken", "VideoSourceToken"),
            ("VideoAnalyticsConfigurationToken", "VideoAnalyticsToken"),
            ("Rule", "MyMotionDetectorRule"),
        ),
        data=(("IsMotion", "true" if is_motion else "false"),),
    )


def build_plate_document(
    plate: str,
    utc_time: datetime,
    picture_path: str | None,
    *,
    speed: str | None = "25km/h",
    direction: str | None = "1",
    property_operation: PropertyOperation | None = PropertyOperation.CHANGED,
    prefixes: Mapping[str, str] | None = None,
    fraction: bool = False,
) -> bytes:
    """The vendor note's sample shape: one plate notification."""
    spec = plate_notification(
        plate,
        utc_time,
        picture_path,
        speed=speed,
        direction=direction,
        property_operation=property_operation,
    )
    return build_metadata_document([spec], prefixes=prefixes, fraction=fraction)


def build_motion_document(
    utc_time: datetime,
    is_motion: bool = True,
    *,
    prefixes: Mapping[str, str] | None = None,
) -> bytes:
    return build_metadata_document([motion_notification(utc_time, is_motion)], prefixes=prefixes)


def build_initialized_document(
    utc_time: datetime,
    last_plate: str | None = None,
    last_picture_path: str | None = None,
    *,
    prefixes: Mapping[str, str] | None = None,
) -> bytes:
    """What a camera sends at stream start: its current state, `Initialized`.

    With `last_plate` it re-announces the latest read, which must not be
    taken for a fresh one.
    """
    specs = [motion_notification(utc_time, False, property_operation=PropertyOperation.INITIALIZED)]
    if last_plate is not None:
        specs.append(
            plate_notification(
                last_plate,
                utc_time,
                last_picture_path,
                property_operation=PropertyOperation.INITIALIZED,
            )
        )
    return build_metadata_document(specs, prefixes=prefixes)


# --------------------------------------------------------------------------
# Scene description: `tt:VideoAnalytics/tt:Frame` objects with a licence plate
# (ONVIF Profile M). Element names from metadatastream.xsd; what the schema
# leaves open is in `assumed` (SCENE_*).

# Objects read per frame; a frame claiming more is cut there (and said so).
MAX_SCENE_OBJECTS = 256
# PlateNumber candidates kept per object (the schema has one; some makers list several).
MAX_PLATE_CANDIDATES = 16
MAX_SCENE_TEXT = 256  # longest plate/type/brand text kept


@dataclass(frozen=True, slots=True)
class Likely:
    """A `tt:StringLikelihood`: text with its optional likelihood (0..1)."""

    value: str
    likelihood: float | None = None


@dataclass(frozen=True, slots=True)
class SceneBox:
    """A `tt:BoundingBox` in ONVIF normalized coordinates (-1..1, y pointing up),
    after the frame's or the appearance's `tt:Transformation`."""

    left: float
    top: float
    right: float
    bottom: float

    def to_pixels(self, width: int, height: int) -> Box:
        """The box in pixels of a `width` x `height` picture (y pointing down), clamped."""

        def px(value: float, size: int) -> int:
            return max(0, min(size, round(value * size)))

        xs = sorted(((self.left + 1) / 2, (self.right + 1) / 2))
        ys = sorted(((1 - self.top) / 2, (1 - self.bottom) / 2))
        return Box(px(xs[0], width), px(ys[0], height), px(xs[1], width), px(ys[1], height))

    def as_dict(self) -> dict[str, float]:
        return {"left": self.left, "top": self.top, "right": self.right, "bottom": self.bottom}


@dataclass(frozen=True, slots=True)
class SceneColor:
    """The heaviest `tt:ColorCluster`: a point in `colorspace`, and its nearest name."""

    x: float
    y: float
    z: float
    colorspace: str  # "YCbCr" or "RGB"
    weight: float | None
    name: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "x": self.x,
            "y": self.y,
            "z": self.z,
            "colorspace": self.colorspace,
            "weight": self.weight,
            "name": self.name,
        }


@dataclass(frozen=True, slots=True)
class ScenePlate:
    """One `tt:Object` with a `tt:LicensePlateInfo`, in one frame: one reading of a vehicle.

    Self-contained (the frame's time and scene picture are copied in), so that
    a tracker can keep the best reading of an object and publish it alone.
    """

    object_id: str
    plate: str
    confidence: float | None
    time: datetime | None  # the frame's UtcTime
    candidates: tuple[Likely, ...] = ()
    plate_type: Likely | None = None
    country_code: Likely | None = None
    issuing_entity: Likely | None = None
    vehicle_type: Likely | None = None
    vehicle_brand: Likely | None = None
    vehicle_model: Likely | None = None
    vehicle_color: SceneColor | None = None
    plate_color: SceneColor | None = None
    box: SceneBox | None = None
    image: Image | None = None  # the inline `tt:Image` (data, or why it is unusable)
    image_ref: str | None = None
    parent: str | None = None
    frame_source: str | None = None
    scene_image: Image | None = None  # the frame's inline `tt:SceneImage`
    scene_image_ref: str | None = None
    scene_size: tuple[int, int] | None = None  # (width, height) of the inline scene JPEG
    utc_time_text: str | None = None
    unreadable: Mapping[str, str] = field(default_factory=dict)

    @property
    def plate_normalized(self) -> str:
        return normalize_plate(self.plate)

    @property
    def region(self) -> str | None:
        for name in assumed.SCENE_REGION_ELEMENTS:
            item = self.country_code if name == "CountryCode" else self.issuing_entity
            if item is not None and item.value:
                return item.value
        return None


@dataclass(frozen=True, slots=True)
class OnvifSceneFrame:
    """One `tt:Frame` that matters to plates: its plate objects and its object tree."""

    time: datetime | None
    plates: tuple[ScenePlate, ...] = ()
    # ObjectIds the frame's `tt:ObjectTree` ends (Delete), renames (from, to)
    # and merges ((from, ...), to).
    ended: tuple[str, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()
    merged: tuple[tuple[tuple[str, ...], str], ...] = ()
    utc_time_text: str | None = None


MetadataResult = OnvifPlateRead | OnvifNotification | OnvifProblem | OnvifSceneFrame


def _local(element: Any) -> str:
    tag = element.tag
    if not isinstance(tag, str):
        return ""
    return tag.rpartition("}")[2]


_FLOAT = re.compile(r"[+-]?[0-9]{1,12}(?:\.[0-9]{1,12})?(?:[eE][+-]?[0-9]{1,3})?", re.ASCII)


def _float(text: str | None) -> float | None:
    """An xs:float as a camera writes it (`-0.25`, `1E-3`); None if anything else."""
    if text is None or not _FLOAT.fullmatch(text.strip()):
        return None
    return finite_or_none(float(text.strip()))


def _object_id(element: Any) -> str | None:
    """`ObjectId` (an integer: `007` is `7`), else the `UUID` attribute."""
    text: str | None = element.get("ObjectId")
    if text is not None and text.strip():
        number = ascii_int_or_none(text.lstrip("+"), max_digits=18)
        return str(number) if number is not None else text.strip()[:MAX_SCENE_TEXT]
    uuid_text: str | None = element.get("UUID")
    if uuid_text is not None and uuid_text.strip():
        return "uuid:" + uuid_text.strip()[:MAX_SCENE_TEXT]
    return None


def _likely(element: Any, unreadable: dict[str, str], name: str) -> Likely | None:
    if element is None:
        return None
    value = " ".join((element.text or "").split())[:MAX_SCENE_TEXT]
    if not value:
        return None
    likelihood: float | None = None
    text = element.get("Likelihood")
    if text is not None:
        likelihood = values.confidence(text)
        if likelihood is None:
            unreadable[f"{name}@Likelihood"] = text[:MAX_SCENE_TEXT]
    return Likely(value, likelihood)


def _best_likely(elements: Iterable[Any], unreadable: dict[str, str], name: str) -> list[Likely]:
    """Every readable candidate, the most likely first (document order among equals)."""
    candidates = [
        found for element in elements if (found := _likely(element, unreadable, name)) is not None
    ][:MAX_PLATE_CANDIDATES]
    # sorted() is stable: among equal likelihoods the first written stays first.
    return sorted(candidates, key=_likelihood_key, reverse=True)


def _likelihood_key(item: Likely) -> float:
    return -1.0 if item.likelihood is None else item.likelihood


@dataclass(frozen=True, slots=True)
class _Transformation:
    translate: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)

    def apply(self, x: float, y: float) -> tuple[float, float]:
        return (self.scale[0] * x + self.translate[0], self.scale[1] * y + self.translate[1])


def _transformation(element: Any, default: _Transformation) -> _Transformation:
    """`tt:Transformation`: normalized = Scale * given + Translate (ONVIF Analytics)."""
    if element is None:
        return default

    def vector(name: str, fallback: tuple[float, float]) -> tuple[float, float]:
        found = element.find(_TT + name)
        if found is None:
            return fallback
        x, y = _float(found.get("x")), _float(found.get("y"))
        return (fallback[0] if x is None else x, fallback[1] if y is None else y)

    return _Transformation(vector("Translate", (0.0, 0.0)), vector("Scale", (1.0, 1.0)))


def _box(
    shape: Any, transformation: _Transformation, unreadable: dict[str, str]
) -> SceneBox | None:
    if shape is None:
        return None
    element = shape.find(_TT + "BoundingBox")
    if element is None:
        return None
    sides = [_float(element.get(side)) for side in ("left", "top", "right", "bottom")]
    if any(side is None for side in sides):
        unreadable["BoundingBox"] = " ".join(
            f"{side}={element.get(side)!r}" for side in ("left", "top", "right", "bottom")
        )[:MAX_SCENE_TEXT]
        return None
    left, top, right, bottom = (float(side or 0.0) for side in sides)
    left, top = transformation.apply(left, top)
    right, bottom = transformation.apply(right, bottom)
    # Six places: far below a pixel, and no float noise (3.2e-06 for 0) in the JSON.
    return SceneBox(*(round(v, 6) + 0.0 for v in (left, top, right, bottom)))


def _color_name(x: float, y: float, z: float, colorspace: str) -> str | None:
    if colorspace == "RGB":
        red, green, blue = x, y, z
    else:  # YCbCr, full-range BT.601 (assumed; see assumed.SCENE_COLOR_NAMES)
        red = x + 1.402 * (z - 128)
        green = x - 0.344136 * (y - 128) - 0.714136 * (z - 128)
        blue = x + 1.772 * (y - 128)
    if not all(-64 <= c <= 320 for c in (red, green, blue)):
        return None  # not a colour on the 0-255 scale: no name rather than a wrong one
    return min(
        assumed.SCENE_COLOR_NAMES,
        key=lambda name: sum(
            (a - b) ** 2
            for a, b in zip((red, green, blue), assumed.SCENE_COLOR_NAMES[name], strict=True)
        ),
    )


def _colorspace(text: str | None, default: str) -> str:
    if not text:
        return default
    return "RGB" if text.strip().lower().rstrip("/").endswith("rgb") else "YCbCr"


def _color(element: Any, frame_colorspace: str, unreadable: dict[str, str]) -> SceneColor | None:
    """The heaviest colour cluster of a `tt:Color` descriptor."""
    if element is None:
        return None
    best: SceneColor | None = None
    for cluster in element.iterchildren(_TT + "ColorCluster"):
        color = cluster.find(_TT + "Color")
        if color is None:
            continue
        x, y, z = (_float(color.get(axis)) for axis in ("X", "Y", "Z"))
        if x is None or y is None or z is None:
            unreadable["ColorCluster"] = " ".join(
                f"{axis}={color.get(axis)!r}" for axis in ("X", "Y", "Z")
            )[:MAX_SCENE_TEXT]
            continue
        weight_element = cluster.find(_TT + "Weight")
        weight = _float(weight_element.text) if weight_element is not None else None
        space = _colorspace(color.get("Colorspace"), frame_colorspace)
        found = SceneColor(x, y, z, space, weight, _color_name(x, y, z, space))
        if best is None or (weight or 0.0) > (best.weight or 0.0):
            best = found
    return best


def _inline_image(element: Any, what: str) -> Image | None:
    """A base64 `tt:Image` / `tt:SceneImage`: its JPEG bytes, or why not."""
    if element is None:
        return None
    image = decode_image(element.text or "")
    if image.data is not None and not image.data.startswith(b"\xff\xd8\xff"):
        return Image.missing(f"the inline {what} is not a JPEG")
    if image.data is None:
        return Image.missing(f"the inline {what} is unusable: {image.missing_reason}")
    return image


def _uri(element: Any) -> str | None:
    if element is None:
        return None
    text = (element.text or "").strip()
    return text[:2048] or None


def _vehicle_info(appearance: Any, unreadable: dict[str, str]) -> tuple[Likely | None, ...]:
    """(type, brand, model) of the most likely `tt:VehicleInfo` (the schema allows several)."""
    best: tuple[Likely | None, ...] = (None, None, None)
    best_likelihood = -2.0
    for info in appearance.iterchildren(_TT + "VehicleInfo"):
        found = tuple(
            _likely(info.find(_TT + name), unreadable, f"Vehicle{name}")
            for name in ("Type", "Brand", "Model")
        )
        kind = found[0]
        likelihood = -1.0 if kind is None or kind.likelihood is None else kind.likelihood
        if likelihood > best_likelihood:
            best, best_likelihood = found, likelihood
    return best


def _scene_frame(frame: Any, results: list[MetadataResult]) -> None:
    utc_text = frame.get("UtcTime")
    time = parse_utc_time(utc_text) if utc_text is not None else None
    frame_colorspace = _colorspace(frame.get("Colorspace"), "YCbCr")
    frame_source = frame.get("Source")
    transformation = _transformation(frame.find(_TT + "Transformation"), _Transformation())
    scene_image = _inline_image(frame.find(_TT + "SceneImage"), "scene image")
    scene_size = jpeg_dimensions(scene_image.data) if scene_image and scene_image.data else None
    scene_ref = _uri(frame.find(_TT + "SceneImageRef"))

    objects = list(frame.iterchildren(_TT + "Object"))
    if len(objects) > MAX_SCENE_OBJECTS:
        results.append(
            OnvifProblem(
                "scene_too_many_objects",
                f"frame with {len(objects)} objects; the first {MAX_SCENE_OBJECTS} are read",
            )
        )
        objects = objects[:MAX_SCENE_OBJECTS]
    by_id = {oid: obj for obj in objects if (oid := _object_id(obj)) is not None}

    plates: list[ScenePlate] = []
    for obj in objects:
        appearance = obj.find(_TT + "Appearance")
        info = appearance.find(_TT + "LicensePlateInfo") if appearance is not None else None
        if info is None:
            continue
        object_id = _object_id(obj)
        if object_id is None:
            results.append(
                OnvifProblem("scene_no_object_id", "plate object without ObjectId or UUID")
            )
            continue
        unreadable: dict[str, str] = {}
        candidates = _best_likely(info.iterchildren(_TT + "PlateNumber"), unreadable, "PlateNumber")
        if not candidates:
            results.append(
                OnvifProblem("scene_no_plate", f"object {object_id[:40]!r} without a PlateNumber")
            )
            continue
        if utc_text is not None and time is None:
            unreadable["UtcTime"] = utc_text[:MAX_SCENE_TEXT]
        parent_id = obj.get("Parent")
        parent_id = parent_id.strip() if parent_id else None
        parent = by_id.get(parent_id) if parent_id else None
        parent_appearance = parent.find(_TT + "Appearance") if parent is not None else None

        own_vehicle = _vehicle_info(appearance, unreadable)
        # Profile M may put the plate on its own object under a vehicle object
        # (`Parent`): the vehicle's make and colour are then the parent's.
        vehicle = own_vehicle
        if own_vehicle[0] is None and parent_appearance is not None:
            vehicle = _vehicle_info(parent_appearance, unreadable)
        own_color = _color(appearance.find(_TT + "Color"), frame_colorspace, unreadable)
        if parent_appearance is not None and own_vehicle[0] is None:
            # A separate plate object: its colour is the plate's.
            vehicle_color = _color(
                parent_appearance.find(_TT + "Color"), frame_colorspace, unreadable
            )
            plate_color = own_color
        else:
            vehicle_color, plate_color = own_color, None
        local = _transformation(appearance.find(_TT + "Transformation"), transformation)
        best = candidates[0]
        plates.append(
            ScenePlate(
                object_id=object_id,
                plate=best.value,
                confidence=best.likelihood,
                time=time,
                candidates=tuple(candidates),
                plate_type=_likely(info.find(_TT + "PlateType"), unreadable, "PlateType"),
                country_code=_likely(info.find(_TT + "CountryCode"), unreadable, "CountryCode"),
                issuing_entity=_likely(
                    info.find(_TT + "IssuingEntity"), unreadable, "IssuingEntity"
                ),
                vehicle_type=vehicle[0],
                vehicle_brand=vehicle[1],
                vehicle_model=vehicle[2],
                vehicle_color=vehicle_color,
                plate_color=plate_color,
                box=_box(appearance.find(_TT + "Shape"), local, unreadable),
                image=_inline_image(appearance.find(_TT + "Image"), "plate image"),
                image_ref=_uri(appearance.find(_TT + "ImageRef")),
                parent=parent_id,
                frame_source=frame_source,
                scene_image=scene_image,
                scene_image_ref=scene_ref,
                scene_size=scene_size,
                utc_time_text=utc_text,
                unreadable=unreadable,
            )
        )

    ended: list[str] = []
    renamed: list[tuple[str, str]] = []
    merged: list[tuple[tuple[str, ...], str]] = []
    tree = frame.find(_TT + "ObjectTree")
    if tree is not None:
        for node in tree.iterchildren():
            name = _local(node).lower()
            if name in assumed.SCENE_OBJECT_ENDING_ELEMENTS:
                # `Delete` is one ObjectId; a vendor list may nest several.
                for target in (node, *node.iterchildren()):
                    if (oid := _object_id(target)) is not None:
                        ended.append(oid)
            elif name in ("rename", "merge"):
                froms = [
                    oid
                    for child in node.iterchildren()
                    if _local(child).lower() == "from" and (oid := _object_id(child)) is not None
                ]
                to = next(
                    (
                        oid
                        for child in node.iterchildren()
                        if _local(child).lower() == "to" and (oid := _object_id(child)) is not None
                    ),
                    None,
                )
                if not froms or to is None:
                    results.append(
                        OnvifProblem("scene_bad_object_tree", f"{_local(node)} without from/to")
                    )
                elif name == "rename":
                    renamed.append((froms[0], to))
                else:
                    merged.append((tuple(froms), to))
    if plates or ended or renamed or merged:
        results.append(
            OnvifSceneFrame(
                time=time,
                plates=tuple(plates),
                ended=tuple(ended),
                renamed=tuple(renamed),
                merged=tuple(merged),
                utc_time_text=utc_text,
            )
        )


def _scene_frames(root: Any, results: list[MetadataResult]) -> None:
    for analytics in root.iterchildren(_TT + "VideoAnalytics"):
        for frame in analytics.iterchildren(_TT + "Frame"):
            _scene_frame(frame, results)


def _likely_dict(item: Likely) -> dict[str, Any]:
    return {"value": item.value, "likelihood": item.likelihood}


def scene_to_plate_event(
    reading: ScenePlate,
    camera_id: str,
    received: datetime,
    *,
    plate_image: Image | None = None,
    scene_image: Image | None = None,
    resolution: Resolution | None = None,
    readings: int | None = None,
) -> PlateEvent:
    """The normalized event of a scene object's best reading.

    The adapter passes the pictures it has (the inline ones, or fetched from
    the ImageRefs); None is "not carried". `resolution` is the size the
    normalized coordinates are turned into pixels with when the frame's own
    scene picture does not give one; without either, the box stays in ONVIF
    coordinates under raw and `box` is null.
    """
    raw: dict[str, Any] = {"path": "scene", "object_id": reading.object_id}
    if readings is not None:
        raw["readings"] = readings
    if reading.parent is not None:
        raw["parent"] = reading.parent
    if reading.frame_source:
        raw["frame_source"] = reading.frame_source
    if len(reading.candidates) > 1:
        raw["candidates"] = [_likely_dict(c) for c in reading.candidates]
    if reading.plate_type is not None:
        raw["plate_type"] = _likely_dict(reading.plate_type)
    region = reading.region
    for name, item in (
        ("country_code", reading.country_code),
        ("issuing_entity", reading.issuing_entity),
    ):
        if item is not None and item.value != region:
            raw[name] = _likely_dict(item)
    if reading.vehicle_model is not None:
        raw["vehicle_model"] = _likely_dict(reading.vehicle_model)
    if reading.vehicle_color is not None:
        raw["vehicle_color"] = reading.vehicle_color.as_dict()
    if reading.plate_color is not None:
        raw["plate_color"] = reading.plate_color.as_dict()
    if reading.image_ref is not None:
        raw["image_ref"] = reading.image_ref
    if reading.scene_image_ref is not None:
        raw["scene_image_ref"] = reading.scene_image_ref

    size = reading.scene_size or (
        (resolution.width, resolution.height) if resolution is not None else None
    )
    box: Box | None = None
    if reading.box is not None and size is not None:
        box = reading.box.to_pixels(*size)
    elif reading.box is not None:
        # No picture size to turn them into pixels: the coordinates as the
        # camera gave them, and what they are.
        raw["box_normalized"] = reading.box.as_dict()
        raw["box_units"] = "onvif_normalized"
    if reading.unreadable:
        raw["unreadable"] = dict(reading.unreadable)

    vehicle_type: str | None = None
    if reading.vehicle_type is not None:
        kind = reading.vehicle_type.value.lower()
        vehicle_type = assumed.SCENE_VEHICLE_TYPES.get(kind, kind)
    return PlateEvent(
        camera=camera_id,
        source=Source.RTSP,
        plate=reading.plate,
        received=received,
        time=reading.time,
        confidence=reading.confidence,
        vehicle=Vehicle(
            type=vehicle_type,
            color=reading.vehicle_color.name if reading.vehicle_color else None,
            brand=reading.vehicle_brand.value if reading.vehicle_brand else None,
        ),
        plate_color=PlateColor(name=reading.plate_color.name if reading.plate_color else None),
        region=region,
        box=box,
        resolution=Resolution(*size) if box is not None and size is not None else None,
        raw=raw,
        plate_image=plate_image,
        scene_image=scene_image,
    )


def merge_scene_into(
    event: PlateEvent, reading: ScenePlate, resolution: Resolution | None = None
) -> PlateEvent:
    """A notification's event with what the scene object adds (one vehicle, two paths).

    Only fields the notification left empty are filled; its own values win.
    The object's extras go under raw["scene"].
    """
    scene = scene_to_plate_event(reading, event.camera, event.received, resolution=resolution)
    vehicle = event.vehicle
    merged_vehicle = Vehicle(
        type=vehicle.type or scene.vehicle.type,
        color=vehicle.color or scene.vehicle.color,
        color_code=vehicle.color_code,
        brand=vehicle.brand or scene.vehicle.brand,
    )
    plate_color = event.plate_color
    if plate_color.name is None and plate_color.code is None:
        plate_color = scene.plate_color
    raw = dict(event.raw)
    raw["scene"] = dict(scene.raw)
    box, resolution = event.box, event.resolution
    if box is None and scene.box is not None:
        box, resolution = scene.box, scene.resolution
    plate_image = event.plate_image
    scene_picture = reading.image
    if (plate_image is None or plate_image.data is None) and scene_picture and scene_picture.data:
        plate_image = scene_picture
    return replace(
        event,
        confidence=event.confidence if event.confidence is not None else scene.confidence,
        vehicle=merged_vehicle,
        plate_color=plate_color,
        region=event.region or scene.region,
        box=box,
        resolution=resolution,
        raw=raw,
        plate_image=plate_image,
    )


# --------------------------------------------------------------------------
# Building scene descriptions (the simulator's `--profile-m` and the tests)


@dataclass(frozen=True, slots=True)
class SceneObjectSpec:
    """One `tt:Object` with a plate to build. Likelihoods are 0..1; None leaves them out."""

    object_id: int
    plates: Sequence[tuple[str, float | None]]
    plate_type: str | None = "Normal"
    country_code: str | None = None
    issuing_entity: str | None = None
    vehicle: tuple[str, str | None, str | None] | None = None  # type, brand, model
    color_ycbcr: tuple[float, float, float] | None = None
    box: tuple[float, float, float, float] | None = None  # left, top, right, bottom
    image: bytes | None = None
    image_ref: str | None = None


@dataclass(frozen=True, slots=True)
class SceneFrameSpec:
    utc_time: datetime
    objects: Sequence[SceneObjectSpec] = ()
    deleted: Sequence[int] = ()
    source: str | None = "LicensePlateRecognition"


def build_scene_document(frames: Sequence[SceneFrameSpec], *, tt_prefix: str = "tt") -> bytes:
    """A `tt:MetadataStream` with one `tt:VideoAnalytics/tt:Frame` per spec, as a
    Profile M camera sends its scene description."""
    tt = f"{{{NS_TT}}}"
    root = etree.Element(tt + "MetadataStream", nsmap={tt_prefix: NS_TT})
    analytics = etree.SubElement(root, tt + "VideoAnalytics")
    for spec in frames:
        frame = etree.SubElement(analytics, tt + "Frame")
        frame.set("UtcTime", format_utc_time(spec.utc_time, fraction=True))
        if spec.source:
            frame.set("Source", spec.source)
        for obj in spec.objects:
            element = etree.SubElement(frame, tt + "Object", ObjectId=str(obj.object_id))
            appearance = etree.SubElement(element, tt + "Appearance")
            if obj.box is not None:
                shape = etree.SubElement(appearance, tt + "Shape")
                left, top, right, bottom = obj.box
                etree.SubElement(
                    shape,
                    tt + "BoundingBox",
                    left=f"{left:g}",
                    top=f"{top:g}",
                    right=f"{right:g}",
                    bottom=f"{bottom:g}",
                )
                etree.SubElement(
                    shape,
                    tt + "CenterOfGravity",
                    x=f"{(left + right) / 2:g}",
                    y=f"{(top + bottom) / 2:g}",
                )
            if obj.color_ycbcr is not None:
                color = etree.SubElement(appearance, tt + "Color")
                cluster = etree.SubElement(color, tt + "ColorCluster")
                y, cb, cr = obj.color_ycbcr
                etree.SubElement(
                    cluster,
                    tt + "Color",
                    X=f"{y:g}",
                    Y=f"{cb:g}",
                    Z=f"{cr:g}",
                    Colorspace="http://www.onvif.org/ver10/colorspace/YCbCr",
                )
                etree.SubElement(cluster, tt + "Weight").text = "1"
            if obj.vehicle is not None:
                info = etree.SubElement(appearance, tt + "VehicleInfo")
                for name, value in zip(("Type", "Brand", "Model"), obj.vehicle, strict=True):
                    if value is not None:
                        etree.SubElement(info, tt + name, Likelihood="0.9").text = value
            plate_info = etree.SubElement(appearance, tt + "LicensePlateInfo")
            for text, likelihood in obj.plates:
                number = etree.SubElement(plate_info, tt + "PlateNumber")
                number.text = text
                if likelihood is not None:
                    number.set("Likelihood", f"{likelihood:g}")
            for name, value in (
                ("PlateType", obj.plate_type),
                ("CountryCode", obj.country_code),
                ("IssuingEntity", obj.issuing_entity),
            ):
                if value is not None:
                    etree.SubElement(plate_info, tt + name, Likelihood="0.8").text = value
            if obj.image_ref is not None:
                etree.SubElement(appearance, tt + "ImageRef").text = obj.image_ref
            if obj.image is not None:
                etree.SubElement(appearance, tt + "Image").text = base64.b64encode(
                    obj.image
                ).decode("ascii")
        if spec.deleted:
            tree = etree.SubElement(frame, tt + "ObjectTree")
            for object_id in spec.deleted:
                etree.SubElement(tree, tt + "Delete", ObjectId=str(object_id))
    result: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return result
