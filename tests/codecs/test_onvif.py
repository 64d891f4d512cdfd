"""ONVIF metadata parser: samples, namespaces, vendor topics, hostile documents, fuzz."""

from __future__ import annotations

import json
import resource
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import assumed, onvif, values
from gateway.codecs.onvif import (
    NS_TNS1,
    NS_TNSAXIS,
    OnvifNotification,
    OnvifPlateRead,
    OnvifProblem,
    PropertyOperation,
    parse_metadata,
)
from gateway.errors import CameraProtocolError
from gateway.event import Direction, Image, Source

NS_DECL = (
    'xmlns:tt="http://www.onvif.org/ver10/schema" '
    'xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2" '
    'xmlns:tns1="http://www.onvif.org/ver10/topics"'
)

# The vendor note's sample, inside the MetadataStream a camera wraps it in.
SPEC_SAMPLE = f"""<?xml version="1.0" encoding="UTF-8"?>
<tt:MetadataStream {NS_DECL}>
 <tt:Event>
  <wsnt:NotificationMessage>
   <wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">tns1:RuleEngine/LicensePlateDetector/LicensePlate</wsnt:Topic>
   <wsnt:Message>
    <tt:Message UtcTime="2018-05-15T06:19:34Z" PropertyOperation="Changed">
     <tt:Source>
      <tt:SimpleItem Name="VideoSourceConfigurationToken" Value="VideoSourceToken"/>
      <tt:SimpleItem Name="VideoAnalyticsConfigurationToken" Value="VideoAnalyticsToken"/>
      <tt:SimpleItem Name="Rule" Value="MyLicensePlateDetectorRule"/>
     </tt:Source>
     <tt:Data>
      <tt:SimpleItem Name="LicensePlateResult" Value="43거6510"/>
      <tt:SimpleItem Name="LicensePlatePicturePath" Value="/LPR/2018051506193401.jpg"/>
      <tt:SimpleItem Name="LicenseCarSpeed" Value="25km/h"/>
      <tt:SimpleItem Name="LicenseCarDirection" Value="1"/>
     </tt:Data>
    </tt:Message>
   </wsnt:Message>
  </wsnt:NotificationMessage>
 </tt:Event>
</tt:MetadataStream>
""".encode()

SPEC_TIME = datetime(2018, 5, 15, 6, 19, 34, tzinfo=UTC)


def _notification_xml(
    topic: str,
    data: str,
    *,
    utc: str = "2018-05-15T06:19:34Z",
    operation: str | None = "Changed",
    tt: str = "tt",
    wsnt: str = "wsnt",
    topic_ns_decl: str = "",
) -> str:
    op = f' PropertyOperation="{operation}"' if operation else ""
    return (
        f"<{tt}:Event><{wsnt}:NotificationMessage>"
        f'<{wsnt}:Topic{topic_ns_decl} Dialect="{onvif.TOPIC_DIALECT_CONCRETE_SET}">'
        f"{topic}</{wsnt}:Topic>"
        f'<{wsnt}:Message><{tt}:Message UtcTime="{utc}"{op}>'
        f'<{tt}:Source><{tt}:SimpleItem Name="Rule" Value="R1"/></{tt}:Source>'
        f"<{tt}:Data>{data}</{tt}:Data>"
        f"</{tt}:Message></{wsnt}:Message></{wsnt}:NotificationMessage></{tt}:Event>"
    )


def _plate_data(plate: str, tt: str = "tt", extra: str = "") -> str:
    return (
        f'<{tt}:SimpleItem Name="LicensePlateResult" Value="{plate}"/>'
        f'<{tt}:SimpleItem Name="LicensePlatePicturePath" Value="/LPR/{plate}.jpg"/>' + extra
    )


def _stream(body: str, decl: str = NS_DECL, tt: str = "tt") -> bytes:
    return f"<{tt}:MetadataStream {decl}>{body}</{tt}:MetadataStream>".encode()


PLATE_TOPIC = "tns1:RuleEngine/LicensePlateDetector/LicensePlate"
MOTION_TOPIC = "tns1:RuleEngine/CellMotionDetector/Motion"


# --------------------------------------------------------------------------
# The spec's sample


def test_spec_sample_gives_one_plate_read_with_every_field() -> None:
    [read] = parse_metadata(SPEC_SAMPLE)
    assert isinstance(read, OnvifPlateRead)
    assert read.plate == "43거6510"
    assert read.time == SPEC_TIME
    assert read.picture_path == "/LPR/2018051506193401.jpg"
    assert read.speed_kmh == 25
    assert read.direction is Direction.IN
    assert read.property_operation is PropertyOperation.CHANGED
    assert not read.initialized
    assert read.vendor == "onvif"
    assert read.topic.namespace == NS_TNS1
    assert read.topic.path == "RuleEngine/LicensePlateDetector/LicensePlate"
    assert read.source_items == {
        "VideoSourceConfigurationToken": "VideoSourceToken",
        "VideoAnalyticsConfigurationToken": "VideoAnalyticsToken",
        "Rule": "MyLicensePlateDetectorRule",
    }
    assert read.unreadable == {}


def test_spec_sample_maps_to_the_normalized_event() -> None:
    [read] = parse_metadata(SPEC_SAMPLE)
    assert isinstance(read, OnvifPlateRead)
    received = datetime(2018, 5, 15, 6, 19, 35, tzinfo=UTC)
    picture = Image(data=b"\xff\xd8jpeg")
    event = onvif.to_plate_event(read, "lobby", received, plate_image=picture)
    assert event.camera == "lobby"
    assert event.source is Source.RTSP
    assert event.plate == "43거6510"
    assert event.plate_normalized == "43거6510"
    assert event.time == SPEC_TIME
    assert event.received == received
    assert event.speed_kmh == 25
    assert event.direction is Direction.IN
    assert event.confidence is None
    assert event.plate_image == picture
    assert event.scene_image is None
    assert event.raw["picture_path"] == "/LPR/2018051506193401.jpg"
    assert event.raw["source"]["Rule"] == "MyLicensePlateDetectorRule"
    assert event.raw["property_operation"] == "Changed"
    assert "data" not in event.raw  # every data item of the sample has a slot
    document = event.to_json_dict("lpr")
    assert document["time"] == "2018-05-15T06:19:34.000Z"
    assert document["images"]["scene"] is None
    assert document["images"]["plate"]["bytes"] == len(picture.data or b"")


@pytest.mark.parametrize(
    ("picture_path", "reason"),
    [("/LPR/1.jpg", "picture not fetched"), (None, "notification names no picture")],
)
def test_plate_event_without_a_fetched_picture_marks_it_missing(
    picture_path: str | None, reason: str
) -> None:
    document = onvif.build_plate_document("AB123CD", SPEC_TIME, picture_path)
    [read] = parse_metadata(document)
    assert isinstance(read, OnvifPlateRead)
    event = onvif.to_plate_event(read, "cam", SPEC_TIME)
    assert event.plate_image == Image.missing(reason)
    assert event.to_json_dict("lpr")["images"]["plate"] == {"missing": True, "reason": reason}


# --------------------------------------------------------------------------
# Several notifications, prefixes, topics


def test_every_notification_of_a_document_in_order() -> None:
    body = (
        _notification_xml(PLATE_TOPIC, _plate_data("AAA111"))
        + _notification_xml(MOTION_TOPIC, '<tt:SimpleItem Name="IsMotion" Value="true"/>')
        + _notification_xml(PLATE_TOPIC, _plate_data("BBB222"), utc="2018-05-15T06:19:35.250Z")
    )
    results = parse_metadata(_stream(body))
    assert [type(r) for r in results] == [OnvifPlateRead, OnvifNotification, OnvifPlateRead]
    first, motion, second = results
    assert isinstance(first, OnvifPlateRead) and isinstance(second, OnvifPlateRead)
    assert (first.plate, second.plate) == ("AAA111", "BBB222")
    assert second.time == SPEC_TIME + timedelta(seconds=1, milliseconds=250)
    assert isinstance(motion, OnvifNotification)
    assert motion.data_items == {"IsMotion": "true"}


def test_several_notifications_inside_one_event_element() -> None:
    one = _notification_xml(PLATE_TOPIC, _plate_data("AAA111"))
    two = _notification_xml(PLATE_TOPIC, _plate_data("BBB222"))
    inner = one.removeprefix("<tt:Event>").removesuffix("</tt:Event>") + two.removeprefix(
        "<tt:Event>"
    ).removesuffix("</tt:Event>")
    results = parse_metadata(_stream(f"<tt:Event>{inner}</tt:Event>"))
    assert [r.plate for r in results if isinstance(r, OnvifPlateRead)] == ["AAA111", "BBB222"]


RENAMED_PREFIX_DOCUMENTS = [
    pytest.param(
        _stream(
            _notification_xml(
                "evt:RuleEngine/LicensePlateDetector/LicensePlate",
                _plate_data("REN123", tt="o"),
                tt="o",
                wsnt="n",
            ),
            decl=(
                'xmlns:o="http://www.onvif.org/ver10/schema" '
                'xmlns:n="http://docs.oasis-open.org/wsn/b-2" '
                'xmlns:evt="http://www.onvif.org/ver10/topics"'
            ),
            tt="o",
        ),
        id="all-prefixes-renamed",
    ),
    pytest.param(
        _stream(
            _notification_xml(
                "t:RuleEngine/LicensePlateDetector/LicensePlate",
                _plate_data("REN123"),
                topic_ns_decl=' xmlns:t="http://www.onvif.org/ver10/topics"',
            ),
            decl=(
                'xmlns:tt="http://www.onvif.org/ver10/schema" '
                'xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2"'
            ),
        ),
        id="topic-prefix-declared-on-the-topic-element",
    ),
    pytest.param(
        # tt as the default namespace; a differently named wsnt prefix.
        (
            b'<MetadataStream xmlns="http://www.onvif.org/ver10/schema" '
            b'xmlns:b2="http://docs.oasis-open.org/wsn/b-2" '
            b'xmlns:ons="http://www.onvif.org/ver10/topics"><Event><b2:NotificationMessage>'
            b"<b2:Topic>ons:RuleEngine/LicensePlateDetector/LicensePlate</b2:Topic>"
            b'<b2:Message><Message UtcTime="2018-05-15T06:19:34Z"><Data>'
            b'<SimpleItem Name="LicensePlateResult" Value="REN123"/>'
            b"</Data></Message></b2:Message></b2:NotificationMessage></Event></MetadataStream>"
        ),
        id="default-namespace",
    ),
    pytest.param(
        onvif.build_plate_document(
            "REN123", SPEC_TIME, "/LPR/x.jpg", prefixes={"tt": "x", "wsnt": "y", "tns1": "z"}
        ),
        id="builder-with-renamed-prefixes",
    ),
]


@pytest.mark.parametrize("document", RENAMED_PREFIX_DOCUMENTS)
def test_namespaces_are_matched_by_uri_not_by_prefix(document: bytes) -> None:
    [read] = parse_metadata(document)
    assert isinstance(read, OnvifPlateRead)
    assert read.plate == "REN123"
    assert read.time == SPEC_TIME


NOT_A_PLATE_DOCUMENTS = [
    pytest.param(
        _stream(
            _notification_xml(PLATE_TOPIC, _plate_data("X1")),
            decl=(
                'xmlns:tt="http://www.onvif.org/ver10/schema" '
                'xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2" '
                'xmlns:tns1="http://example.com/not-onvif-topics"'
            ),
        ),
        "http://example.com/not-onvif-topics",
        id="tns1-prefix-bound-to-another-uri",
    ),
    pytest.param(
        _stream(
            _notification_xml(PLATE_TOPIC, _plate_data("X1")),
            decl=(
                'xmlns:tt="http://www.onvif.org/ver10/schema" '
                'xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2"'
            ),
        ),
        None,
        id="undeclared-topic-prefix",
    ),
    pytest.param(
        # Right element names in a wrong namespace are not tt:Message items.
        _stream(_notification_xml("tns1:VideoSource/MotionAlarm", ""), decl=NS_DECL),
        NS_TNS1,
        id="motion-alarm",
    ),
]


@pytest.mark.parametrize(("document", "namespace"), NOT_A_PLATE_DOCUMENTS)
def test_other_topics_are_notifications_not_reads(document: bytes, namespace: str | None) -> None:
    [result] = parse_metadata(document)
    assert isinstance(result, OnvifNotification)
    assert result.topic.namespace == namespace


def test_motion_notification_becomes_a_camera_event() -> None:
    moment = datetime(2024, 1, 15, 10, 30, 0, 123000, tzinfo=UTC)
    [result] = parse_metadata(onvif.build_motion_document(moment, True))
    assert isinstance(result, OnvifNotification)
    received = moment + timedelta(milliseconds=5)
    event = onvif.to_camera_event(result, "lobby", received)
    assert event.camera == "lobby"
    assert event.source is Source.RTSP
    assert event.kind == "RuleEngine/CellMotionDetector/Motion"
    assert event.time == moment.replace(microsecond=0)  # the builder writes whole seconds
    assert event.received == received
    assert event.data["data"] == {"IsMotion": "true"}
    assert event.data["source"]["Rule"] == "MyMotionDetectorRule"
    assert event.data["topic_namespace"] == NS_TNS1
    assert event.data["property_operation"] == "Changed"
    assert event.to_json_dict()["kind"] == "RuleEngine/CellMotionDetector/Motion"


def test_tampering_topic_with_key_items() -> None:
    body = (
        "<tt:Event><wsnt:NotificationMessage>"
        "<wsnt:Topic>tns1:VideoSource/GlobalSceneChange/ImagingService</wsnt:Topic>"
        '<wsnt:Message><tt:Message UtcTime="2018-05-15T06:19:34Z" PropertyOperation="Changed">'
        '<tt:Source><tt:SimpleItem Name="Source" Value="VideoSource_1"/></tt:Source>'
        '<tt:Key><tt:SimpleItem Name="Zone" Value="3"/></tt:Key>'
        '<tt:Data><tt:SimpleItem Name="State" Value="true"/></tt:Data>'
        "</tt:Message></wsnt:Message></wsnt:NotificationMessage></tt:Event>"
    )
    [result] = parse_metadata(_stream(body))
    assert isinstance(result, OnvifNotification)
    assert result.key_items == {"Zone": "3"}
    event = onvif.to_camera_event(result, "cam", SPEC_TIME)
    assert event.kind == "VideoSource/GlobalSceneChange/ImagingService"
    assert event.data["key"] == {"Zone": "3"}


# --------------------------------------------------------------------------
# Initialized


def test_initialized_messages_are_marked() -> None:
    document = onvif.build_initialized_document(SPEC_TIME, "43거6510", "/LPR/old.jpg")
    results = parse_metadata(document)
    assert len(results) == 2
    motion, plate = results
    assert isinstance(motion, OnvifNotification) and motion.initialized
    assert isinstance(plate, OnvifPlateRead)
    assert plate.initialized
    assert plate.property_operation is PropertyOperation.INITIALIZED
    assert plate.plate == "43거6510"


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ("Initialized", PropertyOperation.INITIALIZED),
        ("initialized", PropertyOperation.INITIALIZED),
        ("Changed", PropertyOperation.CHANGED),
        ("Deleted", PropertyOperation.DELETED),
        ("Something", None),
        (None, None),
    ],
)
def test_property_operation_values(
    attribute: str | None, expected: PropertyOperation | None
) -> None:
    document = _stream(_notification_xml(PLATE_TOPIC, _plate_data("P1"), operation=attribute))
    [read] = parse_metadata(document)
    assert isinstance(read, OnvifPlateRead)
    assert read.property_operation is expected
    assert read.initialized is (expected is PropertyOperation.INITIALIZED)


# --------------------------------------------------------------------------
# Other vendors' plate topics


def _axis_document(topic_path: str, items: str) -> bytes:
    body = (
        "<tt:Event><wsnt:NotificationMessage>"
        f"<wsnt:Topic>tnsaxis:{topic_path}</wsnt:Topic>"
        '<wsnt:Message><tt:Message UtcTime="2024-03-01T08:00:00.5Z" PropertyOperation="Changed">'
        "<tt:Source/><tt:Data>" + items + "</tt:Data>"
        "</tt:Message></wsnt:Message></wsnt:NotificationMessage></tt:Event>"
    )
    return _stream(body, decl=f'{NS_DECL} xmlns:tnsaxis="{NS_TNSAXIS}"')


@pytest.mark.parametrize(
    ("topic_path", "items", "plate", "direction", "confidence", "region"),
    [
        (
            "CameraApplicationPlatform/ALPV.AllPlates",
            '<tt:SimpleItem Name="plate" Value="ABC123"/>'
            '<tt:SimpleItem Name="country" Value="SWE"/>'
            '<tt:SimpleItem Name="direction" Value="out"/>'
            '<tt:SimpleItem Name="plateConfidence" Value="0.87"/>',
            "ABC123",
            Direction.OUT,
            0.87,
            "SWE",
        ),
        (
            "CameraApplicationPlatform/ALPV/LicensePlateRecognition",
            '<tt:SimpleItem Name="text" Value="XYZ 987"/>'
            '<tt:SimpleItem Name="direction" Value="in"/>'
            '<tt:SimpleItem Name="plateConfidence" Value="93"/>',
            "XYZ 987",
            Direction.IN,
            0.93,
            None,
        ),
    ],
)
def test_axis_style_plate_topic_maps_to_the_same_fields(
    topic_path: str,
    items: str,
    plate: str,
    direction: Direction,
    confidence: float,
    region: str | None,
) -> None:
    [read] = parse_metadata(_axis_document(topic_path, items))
    assert isinstance(read, OnvifPlateRead)
    assert read.vendor == "axis"
    assert read.plate == plate
    assert read.direction is direction
    assert read.confidence == pytest.approx(confidence)
    assert read.region == region
    assert read.time == datetime(2024, 3, 1, 8, 0, 0, 500000, tzinfo=UTC)
    event = onvif.to_plate_event(read, "axis_cam", SPEC_TIME)
    assert event.plate_normalized == plate.replace(" ", "")
    assert event.region == region
    assert event.plate_image == Image.missing("notification names no picture")


def test_other_axis_topics_are_notifications() -> None:
    [result] = parse_metadata(
        _axis_document(
            "CameraApplicationPlatform/ALPV.Error", '<tt:SimpleItem Name="a" Value="b"/>'
        )
    )
    assert isinstance(result, OnvifNotification)


def test_the_vendor_table_can_be_extended_by_the_caller() -> None:
    mapping = onvif.PlateTopicMapping(
        vendor="acme",
        namespace="http://acme.example/topics",
        paths=frozenset({"Lpr/Read"}),
        plate=("Number",),
        speed=("Kph",),
    )
    body = (
        "<tt:Event><wsnt:NotificationMessage><wsnt:Topic>a:Lpr/Read</wsnt:Topic>"
        '<wsnt:Message><tt:Message UtcTime="2018-05-15T06:19:34Z"><tt:Data>'
        '<tt:SimpleItem Name="Number" Value="ACME1"/><tt:SimpleItem Name="Kph" Value="40"/>'
        "</tt:Data></tt:Message></wsnt:Message></wsnt:NotificationMessage></tt:Event>"
    )
    document = _stream(body, decl=f'{NS_DECL} xmlns:a="http://acme.example/topics"')
    [default] = parse_metadata(document)
    assert isinstance(default, OnvifNotification)
    [read] = parse_metadata(document, plate_topics=(*onvif.PLATE_TOPICS, mapping))
    assert isinstance(read, OnvifPlateRead)
    assert (read.vendor, read.plate, read.speed_kmh) == ("acme", "ACME1", 40)


# --------------------------------------------------------------------------
# Field readers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2018-05-15T06:19:34Z", datetime(2018, 5, 15, 6, 19, 34, tzinfo=UTC)),
        ("2018-05-15T06:19:34.5Z", datetime(2018, 5, 15, 6, 19, 34, 500000, tzinfo=UTC)),
        ("2018-05-15T06:19:34.123Z", datetime(2018, 5, 15, 6, 19, 34, 123000, tzinfo=UTC)),
        ("2018-05-15T06:19:34.1234567Z", datetime(2018, 5, 15, 6, 19, 34, 123456, tzinfo=UTC)),
        ("2018-05-15T06:19:34", datetime(2018, 5, 15, 6, 19, 34, tzinfo=UTC)),
        ("2018-05-15T15:19:34+09:00", datetime(2018, 5, 15, 6, 19, 34, tzinfo=UTC)),
        ("2018-05-15T01:19:34-0500", datetime(2018, 5, 15, 6, 19, 34, tzinfo=UTC)),
        ("2018-05-15t06:19:34z", datetime(2018, 5, 15, 6, 19, 34, tzinfo=UTC)),
        ("2018-13-15T06:19:34Z", None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_parse_utc_time(text: str, expected: datetime | None) -> None:
    parsed = onvif.parse_utc_time(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "expected", "readable"),
    [
        ("25km/h", 25.0, True),
        ("25 km/h", 25.0, True),
        ("25", 25.0, True),  # bare number: assumed.DEFAULT_SPEED_UNIT
        ("25.5KM/H", 25.5, True),
        ("0", 0.0, True),
        ("10mph", 16.1, True),
        ("10m/s", 36.0, True),
        ("-", None, True),
        ("", None, True),
        ("fast", None, False),
        ("25furlongs", None, False),
        ("-5km/h", None, False),
    ],
)
def test_parse_speed(text: str, expected: float | None, readable: bool) -> None:
    assert values.speed_kmh(text) == (expected, readable)


def test_bare_speed_uses_the_assumed_default_unit() -> None:
    assert assumed.DEFAULT_SPEED_UNIT == "km/h"  # the parser's table must know it
    assert values.speed_kmh("30")[0] == values.speed_kmh(f"30{assumed.DEFAULT_SPEED_UNIT}")[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[(str(code), Direction(name)) for code, name in assumed.DIRECTION_CODES.items()],
        (" 2 ", Direction.OUT),
        ("in", Direction.IN),
        ("OUT", Direction.OUT),
        ("Approach", Direction.IN),
        ("away", Direction.OUT),
        ("9", None),
        ("sideways", None),
    ],
)
def test_parse_direction(text: str, expected: Direction | None) -> None:
    assert onvif.parse_direction(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.9", 0.9), ("90", 0.9), ("90%", 0.9), ("1", 1.0), ("-1", None), ("x", None), ("nan", None)],
)
def test_parse_confidence(text: str, expected: float | None) -> None:
    value = values.confidence(text)
    assert value == (pytest.approx(expected) if expected is not None else None)


def test_unreadable_items_are_kept_not_invented() -> None:
    extra = (
        '<tt:SimpleItem Name="LicenseCarSpeed" Value="fast"/>'
        '<tt:SimpleItem Name="LicenseCarDirection" Value="7"/>'
    )
    document = _stream(_notification_xml(PLATE_TOPIC, _plate_data("P1", extra=extra), utc="bad"))
    [read] = parse_metadata(document)
    assert isinstance(read, OnvifPlateRead)
    assert read.speed_kmh is None
    assert read.direction is Direction.UNKNOWN
    assert read.time is None
    assert read.unreadable == {
        "LicenseCarSpeed": "fast",
        "LicenseCarDirection": "7",
        "UtcTime": "bad",
    }
    event = onvif.to_plate_event(read, "cam", SPEC_TIME)
    assert event.time is None
    assert event.raw["unreadable"]["LicenseCarSpeed"] == "fast"
    assert "data" not in event.raw  # unreadable items are not repeated


def test_items_without_a_slot_go_to_raw() -> None:
    extra = '<tt:SimpleItem Name="LicensePlateColor" Value="yellow"/>'
    document = _stream(_notification_xml(PLATE_TOPIC, _plate_data("P1", extra=extra)))
    [read] = parse_metadata(document)
    assert isinstance(read, OnvifPlateRead)
    event = onvif.to_plate_event(read, "cam", SPEC_TIME)
    assert event.raw["data"] == {"LicensePlateColor": "yellow"}
    assert event.raw["picture_path"] == "/LPR/P1.jpg"


# --------------------------------------------------------------------------
# Broken notifications inside good documents; refused documents


def test_a_broken_notification_does_not_lose_the_others() -> None:
    no_plate = _notification_xml(
        PLATE_TOPIC, '<tt:SimpleItem Name="LicensePlateResult" Value=" "/>'
    )
    no_topic = (
        "<tt:Event><wsnt:NotificationMessage><wsnt:Message/></wsnt:NotificationMessage></tt:Event>"
    )
    no_message = (
        f"<tt:Event><wsnt:NotificationMessage><wsnt:Topic>{PLATE_TOPIC}</wsnt:Topic>"
        "</wsnt:NotificationMessage></tt:Event>"
    )
    good = _notification_xml(PLATE_TOPIC, _plate_data("GOOD1"))
    results = parse_metadata(_stream(no_plate + no_topic + no_message + good))
    kinds = [r.kind for r in results if isinstance(r, OnvifProblem)]
    assert kinds == ["onvif_no_plate", "onvif_no_topic", "onvif_no_message"]
    assert isinstance(results[-1], OnvifPlateRead) and results[-1].plate == "GOOD1"


HOSTILE_NUMBERS = ["\u00b2", "\uff15", "\u0665", "-0x1", "1_0", "nan", "inf", "1e999", "9" * 5000]


@pytest.mark.parametrize("bad", HOSTILE_NUMBERS)
def test_hostile_numbers_cost_the_field_not_the_read(bad: str) -> None:
    # Speed, direction and confidence of "²", "５", "-0x1" or 5,000 digits: the
    # field is null and its text is kept under raw["unreadable"]; the plate read
    # and the other read in the same document are both kept.
    extra = (
        f'<tt:SimpleItem Name="LicenseCarSpeed" Value="{bad}"/>'
        f'<tt:SimpleItem Name="LicenseCarDirection" Value="{bad}"/>'
    )
    hostile = _notification_xml(PLATE_TOPIC, _plate_data("BAD1", extra=extra), utc=bad)
    good = _notification_xml(PLATE_TOPIC, _plate_data("GOOD1"))
    axis = (
        f"<tt:Event><wsnt:NotificationMessage>"
        f'<wsnt:Topic xmlns:tnsaxis="{NS_TNSAXIS}">'
        "tnsaxis:CameraApplicationPlatform/ALPV.AllPlates</wsnt:Topic>"
        '<wsnt:Message><tt:Message UtcTime="2018-05-15T06:19:34Z"><tt:Data>'
        '<tt:SimpleItem Name="plate" Value="AXIS1"/>'
        f'<tt:SimpleItem Name="plateConfidence" Value="{bad}"/>'
        f'<tt:SimpleItem Name="direction" Value="{bad}"/>'
        "</tt:Data></tt:Message></wsnt:Message></wsnt:NotificationMessage></tt:Event>"
    )
    results = parse_metadata(_stream(hostile + good + axis))
    assert [type(r) for r in results] == [OnvifPlateRead] * 3
    first, second, third = results
    assert isinstance(first, OnvifPlateRead) and isinstance(third, OnvifPlateRead)
    assert first.plate == "BAD1" and first.speed_kmh is None and first.time is None
    assert first.direction is Direction.UNKNOWN
    assert first.unreadable == {
        "LicenseCarSpeed": bad,
        "LicenseCarDirection": bad,
        "UtcTime": bad,
    }
    assert isinstance(second, OnvifPlateRead) and second.plate == "GOOD1"
    assert not second.unreadable
    assert third.plate == "AXIS1" and third.confidence is None
    assert third.unreadable == {"plateConfidence": bad, "direction": bad}
    for read in (first, third):
        doc = onvif.to_plate_event(read, "cam", SPEC_TIME).to_json_dict("lpr")
        json.dumps(doc, allow_nan=False)


@pytest.mark.parametrize(
    "utc",
    [
        "2018-05-15T06:19:34+99:00",  # timezone() refuses 24 h and more
        "2018-05-15T06:19:34-24:00",
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "\uff12\uff10\uff11\uff18-05-15T06:19:34Z",  # fullwidth digits
        "2018-05-15T06:19:34." + "9" * 5000 + "Z",
    ],
)
def test_utc_times_out_of_range_are_unreadable_not_a_crash(utc: str) -> None:
    assert onvif.parse_utc_time(utc) is None
    document = _stream(_notification_xml(PLATE_TOPIC, _plate_data("P1"), utc=utc))
    [read] = parse_metadata(document)
    assert isinstance(read, OnvifPlateRead) and read.time is None
    assert read.unreadable == {"UtcTime": utc}


def test_a_metadata_stream_without_events_is_empty() -> None:
    document = _stream(
        '<tt:VideoAnalytics><tt:Frame UtcTime="2018-05-15T06:19:34Z"/></tt:VideoAnalytics>'
    )
    assert parse_metadata(document) == []


BILLION_LAUGHS = """<?xml version="1.0" encoding="{encoding}"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<tt:MetadataStream {ns}>{body}</tt:MetadataStream>
"""


def _billion_laughs(encoding: str) -> bytes:
    body = _notification_xml(PLATE_TOPIC, _plate_data("&lol9;"))
    return BILLION_LAUGHS.format(encoding=encoding, ns=NS_DECL, body=body).encode(
        "utf-16" if encoding == "UTF-16" else "utf-8"
    )


_XXE_BODY = _notification_xml(PLATE_TOPIC, _plate_data("&xxe;"))
XXE = f"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<tt:MetadataStream {NS_DECL}>{_XXE_BODY}</tt:MetadataStream>
"""

HOSTILE_DOCUMENTS = [
    pytest.param(_billion_laughs("UTF-8"), "xml_doctype", id="billion-laughs"),
    # UTF-16 hides the declarations from the byte scan: the parser must not
    # expand them and the DTD check after parsing must refuse the document.
    pytest.param(_billion_laughs("UTF-16"), "xml_doctype", id="billion-laughs-utf16"),
    pytest.param(XXE.encode(), "xml_doctype", id="xxe-file-passwd"),
    pytest.param(XXE.encode("utf-16"), "xml_doctype", id="xxe-file-passwd-utf16"),
    pytest.param(
        f'<!DOCTYPE x SYSTEM "http://127.0.0.1:9/evil.dtd"><tt:MetadataStream {NS_DECL}/>'.encode(),
        "xml_doctype",
        id="external-dtd",
    ),
    pytest.param(
        f"<tt:MetadataStream {NS_DECL}>{'<a>' * 5000}{'</a>' * 5000}</tt:MetadataStream>".encode(),
        "xml_syntax",
        id="nesting-too-deep",
    ),
    pytest.param(b"", "xml_syntax", id="empty"),
    pytest.param(b"<tt:MetadataStream", "xml_syntax", id="truncated"),
    pytest.param(b"\x00\xff\xfe garbage", "xml_syntax", id="garbage"),
    pytest.param(
        b'<?xml version="1.0" encoding="nope-42"?><a/>', "xml_syntax", id="unknown-encoding"
    ),
    pytest.param(
        b'<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"/>',
        "xml_not_metadata",
        id="not-a-metadata-stream",
    ),
    pytest.param(
        b'<MetadataStream xmlns="http://example.com/other"/>',
        "xml_not_metadata",
        id="metadata-stream-in-another-namespace",
    ),
]


@pytest.mark.parametrize(("document", "kind"), HOSTILE_DOCUMENTS)
def test_hostile_and_broken_documents_are_refused(document: bytes, kind: str) -> None:
    with pytest.raises(CameraProtocolError) as caught:
        parse_metadata(document)
    assert caught.value.kind == kind
    assert "root:" not in caught.value.detail  # nothing of /etc/passwd leaks


def _max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_billion_laughs_does_not_grow_memory() -> None:
    before = _max_rss_kib()
    for encoding in ("UTF-8", "UTF-16"):
        with pytest.raises(CameraProtocolError):
            parse_metadata(_billion_laughs(encoding))
    # Fully expanded, lol9 is 3 GB; refused, it costs nothing measurable.
    assert _max_rss_kib() - before < 50 * 1024


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16"])
def test_without_the_byte_scan_the_parser_still_refuses_entities(
    encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second line of defence: the hardened parser and the DTD check after it.
    monkeypatch.setattr(onvif, "_DTD_MARKERS", ())
    before = _max_rss_kib()
    for document in (_billion_laughs(encoding), XXE.encode(encoding.lower())):
        with pytest.raises(CameraProtocolError) as caught:
            parse_metadata(document)
        assert caught.value.kind in ("xml_doctype", "xml_syntax")
        assert "root:" not in caught.value.detail
    assert _max_rss_kib() - before < 50 * 1024


def test_a_50_mb_document_is_refused_before_parsing() -> None:
    head = f"<tt:MetadataStream {NS_DECL}>".encode()
    filler = b"<tt:Event/>" * (50 * 1024 * 1024 // 11)
    document = head + filler + b"</tt:MetadataStream>"
    assert len(document) > 50 * 1024 * 1024
    before = _max_rss_kib()
    with pytest.raises(CameraProtocolError) as caught:
        parse_metadata(document)
    assert caught.value.kind == "xml_too_large"
    # A parsed tree of 4.7 M elements would take hundreds of MB.
    assert _max_rss_kib() - before < 50 * 1024


def test_the_byte_limit_is_configurable_and_inclusive() -> None:
    assert parse_metadata(SPEC_SAMPLE, max_bytes=len(SPEC_SAMPLE))
    with pytest.raises(CameraProtocolError) as caught:
        parse_metadata(SPEC_SAMPLE, max_bytes=len(SPEC_SAMPLE) - 1)
    assert caught.value.kind == "xml_too_large"


# --------------------------------------------------------------------------
# Builders round-trip; property tests


def test_builder_with_fraction_and_every_optional_item_absent() -> None:
    moment = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2)))
    document = onvif.build_plate_document(
        "AB123CD", moment, None, speed=None, direction=None, fraction=True
    )
    assert b'UtcTime="2024-01-02T01:04:05.678Z"' in document
    [read] = parse_metadata(document)
    assert isinstance(read, OnvifPlateRead)
    assert read.time == moment
    assert (read.picture_path, read.speed_kmh, read.direction) == (None, None, Direction.UNKNOWN)


_PLATE_CHARS = st.sampled_from("ABCDEFGHJKLMNPRSTUVWXYZ0123456789가나다라마거부산서울 -.<>&\"'")


@given(
    plate=st.text(_PLATE_CHARS, min_size=1, max_size=16).filter(lambda p: p.strip()),
    seconds=st.integers(0, 2_000_000_000),
    speed=st.integers(0, 300),
    direction=st.sampled_from(sorted(assumed.DIRECTION_CODES)),
    prefix=st.sampled_from(["tt", "onvif", "a", "tns1"]),
)
def test_built_plate_documents_read_back(
    plate: str, seconds: int, speed: int, direction: int, prefix: str
) -> None:
    moment = datetime.fromtimestamp(seconds, UTC)
    document = onvif.build_plate_document(
        plate,
        moment,
        f"/LPR/{seconds}.jpg",
        speed=f"{speed}km/h",
        direction=str(direction),
        prefixes={"tt": prefix, "tns1": "ev" if prefix == "tns1" else "tns1"},
    )
    [read] = parse_metadata(document)
    assert isinstance(read, OnvifPlateRead)
    assert read.plate == plate.strip()
    assert read.time == moment
    assert read.speed_kmh == speed
    assert read.direction is Direction(assumed.DIRECTION_CODES[direction])
    assert read.picture_path == f"/LPR/{seconds}.jpg"


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_nothing_but_camera_protocol_error(data: bytes) -> None:
    try:
        results = parse_metadata(data)
    except CameraProtocolError as exc:
        assert exc.kind.startswith("xml_")
    else:
        assert isinstance(results, list)


@settings(max_examples=300)
@given(
    position=st.integers(0, len(SPEC_SAMPLE)),
    cut=st.integers(0, 40),
    insert=st.binary(max_size=16),
)
def test_mutated_samples_raise_nothing_but_camera_protocol_error(
    position: int, cut: int, insert: bytes
) -> None:
    document = SPEC_SAMPLE[:position] + insert + SPEC_SAMPLE[position + cut :]
    try:
        results = parse_metadata(document)
    except CameraProtocolError:
        return
    for result in results:
        assert isinstance(result, OnvifPlateRead | OnvifNotification | OnvifProblem)
        if isinstance(result, OnvifPlateRead):
            onvif.to_plate_event(result, "cam", SPEC_TIME).to_json_dict("lpr")
        elif isinstance(result, OnvifNotification):
            onvif.to_camera_event(result, "cam", SPEC_TIME).to_json_dict()
