"""ONVIF metadata parser: one reassembled `tt:MetadataStream` document in, typed results out.

Sans-IO (bytes in, frozen dataclasses out) and hardened: a camera stream is
untrusted, so DOCTYPE/entity declarations are refused, nothing is resolved or
fetched, and a document over the byte limit is refused before it is parsed.
Also builds realistic documents for the RTSP simulator and the tests.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from gateway.codecs import assumed, values
from gateway.codecs.numbers import ascii_int_or_none
from gateway.errors import CameraProtocolError
from gateway.event import CameraEvent, Direction, Image, PlateEvent, Source

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


MetadataResult = OnvifPlateRead | OnvifNotification | OnvifProblem


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
    """Every `wsnt:NotificationMessage` of one `tt:MetadataStream` document, in order.

    Raises `CameraProtocolError` when the document as a whole is refused:
    `xml_too_large`, `xml_doctype` (DTD or entity declarations), `xml_syntax`,
    `xml_not_metadata` (the root is not a `tt:MetadataStream`). A document with
    no events (scene or PTZ metadata only) gives an empty list.
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
