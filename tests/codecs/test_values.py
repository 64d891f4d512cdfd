"""One camera value, one published number, whichever protocol carried it.

The same confidences and speeds go through the TCP codec, the HTTP body
parser and the ONVIF parser; each must publish what `values` says.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.codecs import values
from gateway.codecs.http_body import HttpPlateRead, parse_json_body
from gateway.codecs.onvif import NS_TNSAXIS, OnvifPlateRead, parse_metadata
from gateway.codecs.tcp import (
    Flavour,
    Frame,
    FrameDecoder,
    encode_recognition_frame,
    parse_recognition_result,
    to_plate_event,
)
from tests.tcp_samples import FULL, PLATE, SCENE

# (what the camera sent, as text, what every protocol publishes)
CONFIDENCES = [
    ("0.93", 0.93),
    ("93", 0.93),
    ("93%", 0.93),
    ("0.5%", 0.005),
    ("1", 1.0),
    ("100", 1.0),
    ("0", 0.0),
    ("0.123456", 0.1235),
    ("-1", None),
    ("150", None),
    ("nan", None),
    ("²", None),
    ("1e400", None),
]


@pytest.mark.parametrize(("text", "expected"), CONFIDENCES)
def test_confidence_table(text: str, expected: float | None) -> None:
    assert values.confidence(text) == expected


@pytest.mark.parametrize(("text", "expected"), CONFIDENCES)
def test_http_and_onvif_publish_the_same_confidence(text: str, expected: float | None) -> None:
    http = parse_json_body(json.dumps({"plate": "AB1", "confidence": text}).encode())
    assert isinstance(http, HttpPlateRead)
    document = _axis_document(
        f'<tt:SimpleItem Name="plate" Value="AB1"/>'
        f'<tt:SimpleItem Name="plateConfidence" Value="{text}"/>'
    )
    (onvif_read,) = parse_metadata(document)
    assert isinstance(onvif_read, OnvifPlateRead)
    assert http.confidence == onvif_read.confidence == expected


@pytest.mark.parametrize(
    ("number", "expected"),
    [(0.93, 0.93), (93.0, 0.93), (0.9300000071525574, 0.93), (150.0, None), (-0.5, None)],
)
def test_tcp_publishes_the_same_confidence(number: float, expected: float | None) -> None:
    frame = encode_recognition_frame(
        replace(FULL, confidence=number), [PLATE, SCENE], flavour=Flavour.ALL
    )
    decoder = FrameDecoder()
    decoder.receive_data(frame)
    event = decoder.next_event()
    assert isinstance(event, Frame)
    result = parse_recognition_result(event.data)
    published = to_plate_event(result, camera="c", received=datetime.now(UTC), color_table={})
    assert published.confidence == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("25", (25, True)),
        ("25km/h", (25, True)),
        ("25 km/h", (25, True)),
        ("25.5", (25.5, True)),
        ("25,5", (25.5, True)),
        ("15mph", (24.1, True)),
        ("10m/s", (36, True)),
        ("-", (None, True)),
        ("", (None, True)),
        ("-5", (None, False)),
        ("fast", (None, False)),
        ("9" * 5000, (None, False)),
    ],
)
def test_speed_table_and_http_reads_it_so(text: str, expected: tuple[object, bool]) -> None:
    assert values.speed_kmh(text) == expected
    http = parse_json_body(json.dumps({"plate": "AB1", "speed": text}).encode())
    assert isinstance(http, HttpPlateRead)
    assert http.speed_kmh == expected[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Z", UTC),
        ("+02:00", timezone(timedelta(hours=2))),
        ("+0200", timezone(timedelta(hours=2))),
        ("-05", timezone(timedelta(hours=-5))),
        ("+05:30", timezone(timedelta(hours=5, minutes=30))),
        ("+24:00", None),
        ("+99:00", None),
        ("+01:60", None),
        ("+1", None),
    ],
)
def test_utc_offset_table(text: str, expected: timezone | None) -> None:
    assert values.utc_offset(text) == expected


def test_http_and_onvif_read_an_offset_the_same_way() -> None:
    http = parse_json_body(b'{"plate": "AB1", "time": "2024-03-01 10:00:00+02:00"}')
    assert isinstance(http, HttpPlateRead)
    expected = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    assert http.time == expected
    (read,) = parse_metadata(
        _axis_document(
            '<tt:SimpleItem Name="plate" Value="AB1"/>', utc_time="2024-03-01T10:00:00+02:00"
        )
    )
    assert isinstance(read, OnvifPlateRead)
    assert read.time == expected


def _axis_document(items: str, utc_time: str = "2024-03-01T08:00:00Z") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<tt:MetadataStream xmlns:tt="http://www.onvif.org/ver10/schema"'
        ' xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2"'
        f' xmlns:tnsaxis="{NS_TNSAXIS}">'
        "<tt:Event><wsnt:NotificationMessage>"
        "<wsnt:Topic>tnsaxis:CameraApplicationPlatform/ALPV.AllPlates</wsnt:Topic>"
        f'<wsnt:Message><tt:Message UtcTime="{utc_time}" PropertyOperation="Changed">'
        "<tt:Source/><tt:Data>" + items + "</tt:Data>"
        "</tt:Message></wsnt:Message></wsnt:NotificationMessage></tt:Event>"
        "</tt:MetadataStream>"
    ).encode()
