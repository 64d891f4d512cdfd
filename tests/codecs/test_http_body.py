"""The HTTP body parser: every field of the spec's table, plain bytes in, results out."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
import zoneinfo
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import assumed
from gateway.codecs.http_body import (
    LONG_STRING_BYTES,
    MAX_EVENT_PICTURES,
    MAX_PLATE_CHARS,
    BodyOptions,
    HttpCameraNotice,
    HttpPlateRead,
    LongString,
    _cut_long_strings,
    _load,
    camera_event,
    decode_image,
    parse_camera_time,
    parse_json_body,
    parse_query,
    parse_query_string,
    plate_event,
    to_event,
)
from gateway.errors import CameraProtocolError
from gateway.event import (
    Box,
    CameraEvent,
    Direction,
    Image,
    ListMembership,
    PlateEvent,
    Resolution,
    Source,
)
from gateway.simulate.common import plate_jpeg, scene_jpeg

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
SEOUL = zoneinfo.ZoneInfo("Asia/Seoul")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
PLATE_JPEG = plate_jpeg()
SCENE_JPEG = scene_jpeg()
PLATE_B64 = base64.b64encode(PLATE_JPEG).decode()
SCENE_B64 = base64.b64encode(SCENE_JPEG).decode()
RECEIVED = datetime(2024, 1, 15, 9, 31, tzinfo=UTC)


def body(**fields: Any) -> bytes:
    return json.dumps({"plate": "AB123CD", **fields}).encode()


DEFAULT = BodyOptions()


def read(raw: bytes, options: BodyOptions = DEFAULT) -> HttpPlateRead:
    result = parse_json_body(raw, options)
    assert isinstance(result, HttpPlateRead), result
    return result


def notice(raw: bytes, options: BodyOptions = DEFAULT) -> HttpCameraNotice:
    result = parse_json_body(raw, options)
    assert isinstance(result, HttpCameraNotice), result
    return result


# --------------------------------------------------------------------------
# Each field and alias


@pytest.mark.parametrize(
    ("fields", "attribute", "expected"),
    [
        ({"plate": " 부산02가1234 "}, "plate", "부산02가1234"),
        ({"plate": 12345}, "plate", "12345"),
        ({"type": "Visitor"}, "list", ListMembership.VISITOR),
        ({"type": "Black"}, "list", ListMembership.BLACK),
        ({"type": "White"}, "list", ListMembership.WHITE),
        ({"type": "white"}, "list", ListMembership.WHITE),
        ({"type": "Blacklist"}, "list", ListMembership.BLACK),
        ({"type": "Temporary"}, "list", None),
        ({"speed": 25}, "speed_kmh", 25),
        ({"speed": "25"}, "speed_kmh", 25),
        ({"speed": "25.5"}, "speed_kmh", 25.5),
        ({"speed": 25.5}, "speed_kmh", 25.5),
        ({"speed": "40 km/h"}, "speed_kmh", 40),
        ({"speed": "-"}, "speed_kmh", None),
        ({"speed": ""}, "speed_kmh", None),
        ({"speed": -3}, "speed_kmh", None),
        ({"direction": "Approach"}, "direction", Direction.IN),
        ({"direction": "Away"}, "direction", Direction.OUT),
        ({"direction": "approach"}, "direction", Direction.IN),
        ({"direction": "sideways"}, "direction", Direction.UNKNOWN),
        ({}, "direction", Direction.UNKNOWN),
        ({"detection_region": 3}, "roi", 3),
        ({"detection_region": "2"}, "roi", 2),
        ({"detection_region": "two"}, "roi", None),
        # numbers in text are ASCII digits: float() alone would take all of these
        ({"detection_region": "٢"}, "roi", None),
        ({"detection_region": "２"}, "roi", None),
        ({"detection_region": "1_0"}, "roi", None),
        ({"detection_region": "nan"}, "roi", None),
        ({"resolution_width": "inf", "resolution_height": "1080"}, "resolution", None),
        ({"region": "KR"}, "region", "KR"),
        ({"region": ""}, "region", None),
        (
            {"resolution_width": 1920, "resolution_height": "1080"},
            "resolution",
            Resolution(1920, 1080),
        ),
        (
            {"resolution_width": "1920.0", "resolution_height": 1080.0},
            "resolution",
            Resolution(1920, 1080),
        ),
        ({"resolution_width": 1920}, "resolution", None),
        ({"resolution_width": 0, "resolution_height": 1080}, "resolution", None),
        (
            {
                "coordinate_x1": 10,
                "coordinate_y1": "20",
                "coordinate_x2": 110,
                "coordinate_y2": "60",
            },
            "box",
            Box(10, 20, 110, 60),
        ),
        ({"coordinate_x1": 10, "coordinate_y1": 20, "coordinate_x2": 110}, "box", None),
        (
            {"coordinate_x1": "a", "coordinate_y1": 20, "coordinate_x2": 110, "coordinate_y2": 1},
            "box",
            None,
        ),
        ({"plate_color": "Yellow"}, "plate_color", "Yellow"),
        ({"vehicle_type": "Car"}, "vehicle.type", "Car"),
        ({"vehicle_color": "White"}, "vehicle.color", "White"),
        ({"vehicle_brand": "Kia"}, "vehicle.brand", "Kia"),
        ({"Vehicle Brand": "Kia"}, "vehicle.brand", "Kia"),
        ({"Vehicle_Brand": "Kia"}, "vehicle.brand", "Kia"),
        ({"vehicle_brand": 42}, "vehicle.brand", "42"),
    ],
)
def test_field(fields: dict[str, Any], attribute: str, expected: Any) -> None:
    result = read(body(**fields))
    value: Any = result
    for part in attribute.split("."):
        value = getattr(value, part)
    if attribute == "plate_color":
        value = value.name
    assert value == expected


@pytest.mark.parametrize("key", ["Plate", "PLATE", " plate "])
def test_field_names_ignore_case_and_spacing(key: str) -> None:
    assert read(json.dumps({key: "XY1"}).encode()).plate == "XY1"


def test_a_second_spelling_of_a_field_is_kept_in_raw() -> None:
    result = read(json.dumps({"plate": "XY1", "Plate": "ZZ9"}).encode())
    assert result.plate == "XY1"
    assert result.raw == {"Plate": "ZZ9"}


@pytest.mark.parametrize(
    ("fields", "raw_keys"),
    [
        ({"device": "Network Camera"}, {"device"}),
        ({"direction": "sideways"}, {"direction"}),
        ({"type": "Temporary"}, {"type"}),
        ({"speed": "fast"}, {"speed"}),
        ({"confidence": "high"}, {"confidence"}),
        ({"detection_region": "two"}, {"detection_region"}),
        ({"resolution_width": 1920}, {"resolution_width"}),
        (
            {"resolution_width": "x", "resolution_height": 1},
            {"resolution_width", "resolution_height"},
        ),
        ({"firmware": "1.2", "nested": {"a": [1, 2]}}, {"firmware", "nested"}),
        ({"time": "yesterday"}, {"time"}),
        ({"event": "LPR"}, {"event"}),
    ],
)
def test_unslotted_fields_go_to_raw(fields: dict[str, Any], raw_keys: set[str]) -> None:
    assert set(read(body(**fields)).raw) == raw_keys


def test_raw_keeps_values_as_sent() -> None:
    result = read(body(device="Gate", firmware=1.5, flags=[True, None], info={"k": "v"}))
    assert result.raw == {
        "device": "Gate",
        "firmware": 1.5,
        "flags": [True, None],
        "info": {"k": "v"},
    }


def test_swap_direction() -> None:
    options = BodyOptions(swap_direction=True)
    assert read(body(direction="Approach"), options).direction is Direction.OUT
    assert read(body(direction="Away"), options).direction is Direction.IN
    assert read(body(), options).direction is Direction.UNKNOWN


def test_direction_words_come_from_the_assumed_table() -> None:
    for word, name in assumed.HTTP_DIRECTION_WORDS.items():
        assert read(body(direction=word.upper())).direction is Direction(name)


# --------------------------------------------------------------------------
# Time formats and zones


@pytest.mark.parametrize(
    ("fields", "tz", "expected"),
    [
        ({"time": "2024-01-15 10:30:00"}, UTC, datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ({"time": "2024-01-15 10:30:00"}, BERLIN, datetime(2024, 1, 15, 9, 30, tzinfo=UTC)),
        ({"time": "2024-07-15 10:30:00"}, BERLIN, datetime(2024, 7, 15, 8, 30, tzinfo=UTC)),
        ({"time": "2024-01-15 10:30:00"}, SEOUL, datetime(2024, 1, 15, 1, 30, tzinfo=UTC)),
        ({"time": "2024-01-15 10:30:00"}, NEW_YORK, datetime(2024, 1, 15, 15, 30, tzinfo=UTC)),
        (
            {"time": "2024-01-15 10:30:00", "time_msec": 123},
            BERLIN,
            datetime(2024, 1, 15, 9, 30, 0, 123000, tzinfo=UTC),
        ),
        (
            {"time": "2024-01-15 10:30:00", "time_msec": "7"},
            UTC,
            datetime(2024, 1, 15, 10, 30, 0, 7000, tzinfo=UTC),
        ),
        (
            {"time": "2024-01-15 10:30:00:123"},
            SEOUL,
            datetime(2024, 1, 15, 1, 30, 0, 123000, tzinfo=UTC),
        ),
        (
            {"time": "2024-01-15 10:30:00.123"},
            SEOUL,
            datetime(2024, 1, 15, 1, 30, 0, 123000, tzinfo=UTC),
        ),
        (
            {"time": "2024-01-15 10:30:00.5"},
            UTC,
            datetime(2024, 1, 15, 10, 30, 0, 500000, tzinfo=UTC),
        ),
        (
            {"time": "2024-01-15T10:30:00Z"},
            BERLIN,
            datetime(2024, 1, 15, 10, 30, tzinfo=UTC),
        ),
        (
            {"time": "2024-01-15 10:30:00+09:00"},
            BERLIN,
            datetime(2024, 1, 15, 1, 30, tzinfo=UTC),
        ),
        ({"time": "2024/01/15 10:30:00"}, UTC, datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        # the fraction in the text wins over a separate time_msec
        (
            {"time": "2024-01-15 10:30:00.250", "time_msec": 999},
            UTC,
            datetime(2024, 1, 15, 10, 30, 0, 250000, tzinfo=UTC),
        ),
        ({"time": "2024-13-15 10:30:00"}, UTC, None),
        ({"time": "15.01.2024 10:30"}, UTC, None),
        ({"time": "2024-01-15 10:30:00:1234"}, UTC, None),
        ({"time": 1705314600}, UTC, None),
        ({}, UTC, None),
    ],
)
def test_time(fields: dict[str, Any], tz: Any, expected: datetime | None) -> None:
    result = read(body(**fields), BodyOptions(tz=tz))
    assert result.time == expected
    if expected is not None:
        assert result.time is not None and result.time.tzinfo is UTC
        assert "time" not in result.raw and "time_msec" not in result.raw
    elif fields:
        assert "time" in result.raw  # kept as sent
        assert [p.kind for p in result.problems] == ["bad_time"]


def test_bad_time_msec_is_kept_and_reported() -> None:
    result = read(body(time="2024-01-15 10:30:00", time_msec="abc"))
    assert result.time == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    assert result.raw == {"time_msec": "abc"}
    assert [p.field for p in result.problems] == ["time_msec"]


def test_time_in_the_dst_gap_and_overlap_does_not_fail() -> None:
    # 02:30 does not exist in Berlin on 2024-03-31; 02:30 exists twice on 2024-10-27.
    gap = parse_camera_time("2024-03-31 02:30:00", BERLIN)
    overlap = parse_camera_time("2024-10-27 02:30:00", BERLIN)
    assert gap.tzinfo is UTC and overlap.tzinfo is UTC
    assert overlap == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)  # first occurrence (fold=0)


def test_fixed_offset_tz() -> None:
    tz = timezone(timedelta(hours=5, minutes=30))
    assert parse_camera_time("2024-01-15 10:30:00", tz) == datetime(2024, 1, 15, 5, 0, tzinfo=UTC)


# --------------------------------------------------------------------------
# Confidence forms


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.93, 0.93),
        ("0.93", 0.93),
        (93, 0.93),
        ("93", 0.93),
        ("93.5", 0.935),
        ("93%", 0.93),
        ("0.5%", 0.005),
        (1, 1.0),
        (0, 0.0),
        (100, 1.0),
        (101, None),
        (-0.1, None),
        ("high", None),
        (True, None),
        ("NaN", None),
        (None, None),
    ],
)
def test_confidence(value: Any, expected: float | None) -> None:
    result = read(body(confidence=value))
    if expected is None:
        assert result.confidence is None
    else:
        assert result.confidence == pytest.approx(expected)


# --------------------------------------------------------------------------
# Images


@pytest.mark.parametrize("prefix", ["", "data:image/jpeg;base64,", "DATA:image/jpeg;BASE64,"])
def test_images_with_and_without_data_prefix(prefix: str) -> None:
    result = read(body(plate_image=prefix + PLATE_B64, full_image=prefix + SCENE_B64))
    assert result.plate_image == Image(data=PLATE_JPEG)
    assert result.scene_image == Image(data=SCENE_JPEG)
    assert result.raw == {}
    assert result.problems == ()


def test_no_image_fields_means_no_images() -> None:
    result = read(body())
    assert result.plate_image is None and result.scene_image is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not base64 at all!", "invalid base64"),
        ("QUJD*", "invalid base64"),
        ("", "empty image field"),
        ("data:image/jpeg;base64,", "empty image field"),
        ("data:image/jpeg,abcd", "data: URI that is not base64"),
        ("data:image/jpeg;base64" + "A" * 300, "data: URI without a comma"),
        ("ÄÖÜ", "invalid base64: not ASCII"),
        (12345, "not base64 text (int)"),
        ({"a": 1}, "not base64 text (dict)"),
        ("A" * (LONG_STRING_BYTES * 3 + 1), "invalid base64"),
        ("*" * (LONG_STRING_BYTES * 3), "invalid base64"),
    ],
)
def test_broken_image_is_missing_not_an_error(value: Any, reason: str) -> None:
    result = read(body(plate_image=value, full_image=SCENE_B64))
    assert result.plate_image == Image.missing(reason)
    assert result.scene_image == Image(data=SCENE_JPEG)
    assert [(p.field, p.kind) for p in result.problems] == [("plate_image", "bad_image")]
    assert "plate_image" not in result.raw


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: "\r\n".join(s[i : i + 76] for i in range(0, len(s), 76)),  # MIME lines
        lambda s: s.replace("+", "-").replace("/", "_"),  # URL-safe alphabet
        lambda s: s.rstrip("="),  # padding dropped
    ],
)
def test_lenient_base64_variants(mangle: Any) -> None:
    result = read(body(plate_image=mangle(PLATE_B64), full_image=mangle(SCENE_B64)))
    assert result.plate_image == Image(data=PLATE_JPEG)
    assert result.scene_image == Image(data=SCENE_JPEG)


def test_escaped_slashes_in_base64() -> None:
    # PHP-style encoders write "/" as "\/".
    text = json.dumps({"plate": "A1", "plate_image": PLATE_B64, "full_image": SCENE_B64})
    escaped = text.replace("/", "\\/").encode()
    result = read(escaped)
    assert result.plate_image == Image(data=PLATE_JPEG)
    assert result.scene_image == Image(data=SCENE_JPEG)


def test_other_escapes_in_a_long_image_string_are_exact() -> None:
    # \u0041 is "A": the parser must resolve it, not just strip the backslash.
    at = PLATE_B64.index("A", 2000)
    escaped = PLATE_B64[:at] + "\\u0041" + PLATE_B64[at + 1 :]
    raw = ('{"plate": "A1", "plate_image": "' + escaped + '"}').encode()
    assert read(raw).plate_image == Image(data=PLATE_JPEG)


def test_evidence_images_have_their_own_slots_and_never_stand_in_for_the_scene() -> None:
    result = read(body(plate_image=PLATE_B64, evidence_image0=SCENE_B64, evidence_image1=PLATE_B64))
    assert result.scene_image is None
    assert result.evidence0_image == Image(data=SCENE_JPEG)
    assert result.evidence1_image == Image(data=PLATE_JPEG)
    assert result.raw == {}


def test_a_broken_evidence_image_is_missing_with_the_reason() -> None:
    result = read(body(full_image=SCENE_B64, evidence_image0="###"))
    assert result.scene_image == Image(data=SCENE_JPEG)
    assert result.evidence0_image == Image.missing("invalid base64")
    assert result.evidence1_image is None
    assert result.raw == {}
    assert [(p.field, p.kind) for p in result.problems] == [("evidence_image0", "bad_image")]


def test_evidence_images_in_the_event_json() -> None:
    result = read(body(evidence_image1=PLATE_B64))
    images = plate_event(result, "gate", RECEIVED).to_json_dict("lpr")["images"]
    assert images["evidence0"] is None
    assert images["evidence1"] == {
        "topic": "lpr/gate/image/evidence1",
        "bytes": len(PLATE_JPEG),
        "sha256": hashlib.sha256(PLATE_JPEG).hexdigest(),
    }


def test_image_field_names_come_from_the_assumed_table() -> None:
    assert assumed.HTTP_PLATE_IMAGE_FIELDS[0] == "plate_image"
    assert assumed.HTTP_SCENE_IMAGE_FIELDS[0] == "full_image"


def test_decode_image_directly() -> None:
    assert decode_image(PLATE_B64) == Image(data=PLATE_JPEG)
    assert decode_image("data:image/jpeg;base64," + PLATE_B64) == Image(data=PLATE_JPEG)
    assert decode_image(None).missing_reason == "not base64 text (NoneType)"


# --------------------------------------------------------------------------
# Missing plate, other event kinds


@pytest.mark.parametrize(
    ("document", "kind"),
    [
        ({"event": "Vehicle Counting", "count": 3}, "vehicle_counting"),
        ({"event": "List Match", "plate": "AB123", "type": "Black"}, "list_match"),
        ({"event": "Attributes", "vehicle_type": "Car"}, "attributes"),
        ({"event": "Violation", "plate": "AB123"}, "violation"),
        ({"event": "parking/slot#1"}, "parking_slot_1"),
        ({"event": 7}, "7"),
        ({"event": {"nested": 1}}, "unknown"),
        ({"event": ""}, "unknown"),
        ({"device": "Network Camera"}, "unknown"),
        ({}, "unknown"),
        ({"plate": ""}, "unknown"),
        ({"plate": "   "}, "unknown"),
        ({"plate": None}, "unknown"),
        ({"plate": ["AB"]}, "unknown"),
        ({"event": "LPR"}, "lpr"),
    ],
)
def test_other_event_kinds_and_missing_plate(document: dict[str, Any], kind: str) -> None:
    result = notice(json.dumps(document).encode())
    assert result.kind == kind
    assert dict(result.data) == document


def test_other_event_with_a_huge_plate_is_still_forwarded() -> None:
    result = notice(json.dumps({"event": "Violation", "plate": "X" * 5000}).encode())
    assert result.kind == "violation"
    assert result.data["plate"] == {"omitted": "long string", "bytes": 5000}


def test_lpr_event_with_plate_is_a_plate_read() -> None:
    result = read(body(event="LPR"))
    assert result.plate == "AB123CD"


def test_notice_keeps_time_and_converts_it() -> None:
    result = notice(
        json.dumps({"event": "Parking", "time": "2024-01-15 10:30:00"}).encode(),
        BodyOptions(tz=BERLIN),
    )
    assert result.time == datetime(2024, 1, 15, 9, 30, tzinfo=UTC)
    assert result.data == {"event": "Parking", "time": "2024-01-15 10:30:00"}


def test_notice_data_has_no_image_blobs() -> None:
    document = {"event": "Violation", "evidence_image0": SCENE_B64, "snapshot": "data:image/x"}
    result = notice(json.dumps(document).encode())
    assert result.data == {"event": "Violation", "evidence_image0": None, "snapshot": None}
    assert result.images == {
        "evidence_image0": Image(data=SCENE_JPEG),
        "snapshot": Image.missing("data: URI without a comma"),
    }
    assert len(json.dumps(result.data)) < 500


# --------------------------------------------------------------------------
# GET query


@pytest.mark.parametrize(
    ("pairs", "plate"),
    [
        ([("Caption", "LPR"), ("description", "MS12345")], "MS12345"),
        ([("caption", "lpr"), ("Description", " MS12345 ")], "MS12345"),
        ([("description", "부산02가1234")], "부산02가1234"),
    ],
)
def test_get_query_is_a_plate_read_without_images(pairs: list[tuple[str, str]], plate: str) -> None:
    result = parse_query(pairs)
    assert isinstance(result, HttpPlateRead)
    assert result.plate == plate
    assert result.plate_image is None and result.scene_image is None
    assert "description" not in {k.lower() for k in result.raw}


def test_get_query_keeps_caption_and_extra_params_in_raw() -> None:
    result = parse_query([("Caption", "LPR"), ("description", "MS1"), ("x", "1")])
    assert isinstance(result, HttpPlateRead)
    assert result.raw == {"Caption": "LPR", "x": "1"}


def test_get_query_reads_other_known_fields() -> None:
    result = parse_query(
        [("description", "MS1"), ("direction", "Away"), ("time", "2024-01-15 10:30:00")],
        BodyOptions(tz=SEOUL, swap_direction=True),
    )
    assert isinstance(result, HttpPlateRead)
    assert result.direction is Direction.IN
    assert result.time == datetime(2024, 1, 15, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("pairs", "kind"),
    [
        ([("Caption", "Counting"), ("description", "3")], "counting"),
        ([("Caption", "LPR")], "lpr"),
        ([], "unknown"),
    ],
)
def test_get_query_other_kinds(pairs: list[tuple[str, str]], kind: str) -> None:
    result = parse_query(pairs)
    assert isinstance(result, HttpCameraNotice)
    assert result.kind == kind
    assert dict(result.data) == dict(pairs)


# --------------------------------------------------------------------------
# Unreadable bodies


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"", "empty_body"),
        (b"   \r\n", "empty_body"),
        (b"plate=AB123", "not_json"),
        (b"{", "not_json"),
        (b'{"plate": "AB12"', "not_json"),
        (b"\xff\xfe\x00garbage", "not_json"),
        (b'{"plate": "\xff\xfe"}', "not_json"),
        (b"[1, 2]", "not_object"),
        (b'"just a string"', "not_object"),
        (b"null", "not_object"),
        (b"42", "not_object"),
        (b"[" * 100_000 + b"]" * 100_000, "not_json"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not_json"),
        (json.dumps({"plate": "X" * (MAX_PLATE_CHARS + 1)}).encode(), "plate_too_long"),
        (json.dumps({"plate": "X" * (LONG_STRING_BYTES * 2)}).encode(), "plate_too_long"),
    ],
)
def test_unreadable_bodies(raw: bytes, kind: str) -> None:
    with pytest.raises(CameraProtocolError) as caught:
        parse_json_body(raw)
    assert caught.value.kind == kind
    assert caught.value.detail


@pytest.mark.parametrize(
    "inside",
    [b"\x01", b"\\q", b"\xff\xfe", b"\\uZZ"],
    ids=["control char", "bad escape", "bad utf-8", "short unicode escape"],
)
@pytest.mark.parametrize("field", ["region", "plate_image", "event", "other"])
def test_broken_long_strings_are_protocol_errors_or_summarised(inside: bytes, field: str) -> None:
    value = b"A" * 600 + inside + b"A" * 600
    raw = b'{"plate": "AB1", "' + field.encode() + b'": "' + value + b'"}'
    with pytest.raises(ValueError):
        json.loads(raw)  # the body is not JSON ...
    # ... and the parser says so, or (where it never reads the text as text)
    # it leaves the string out or, for an image, reports it missing.
    try:
        result = parse_json_body(raw)
    except CameraProtocolError as exc:
        assert exc.kind == "not_json"
        return
    assert field != "region", "a string used as text was not checked"
    if field == "plate_image":
        assert isinstance(result, HttpPlateRead)
        assert result.plate_image is not None and result.plate_image.data is None
        return
    summary = result.raw if isinstance(result, HttpPlateRead) else result.data
    assert summary[field]["omitted"] == "long string"


# --------------------------------------------------------------------------
# Text that cannot be stored: lone surrogates, undecodable query escapes

LONE = "\\ud800"  # the JSON escape, as a camera would send it


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"plate": "AB' + LONE.encode() + b'1"}', "plate"),
        (b'{"plate": "AB1", "event": "x\\udfff"}', "event"),
        (b'{"plate": "AB1", "region": "\\uDC00"}', "region"),
        (b'{"plate": "AB1", "extra": {"deep": ["ok", "\\ud83d"]}}', "extra"),
        (b'{"plate": "AB1", "extra": {"\\ud800": 1}}', "extra"),
        (b'{"event": "Counting", "count": "\\ud800"}', "count"),
        (b'{"plate": "AB1", "region": "' + b"x" * LONG_STRING_BYTES + b'\\ud800"}', "region"),
        (b'{"plate": "A", "full_image": "' + b"A" * LONG_STRING_BYTES + b'\\udbff"}', "full_image"),
        ('{"plate": "AB1", "vehicle_type": "\\ud800"}'.encode("utf-16"), "vehicle_type"),
    ],
    ids=[
        "plate", "event", "low half", "nested", "nested key", "notice",
        "long text", "long image", "utf-16 body",
    ],
)  # fmt: skip
def test_lone_surrogate_in_any_field_refuses_the_body(raw: bytes, field: str) -> None:
    with pytest.raises(CameraProtocolError) as caught:
        parse_json_body(raw)
    assert caught.value.kind == "invalid_text"
    assert caught.value.detail == f"invalid text in field {field!r}: lone surrogate"


def test_lone_surrogate_in_a_field_name_is_named_escaped() -> None:
    with pytest.raises(CameraProtocolError) as caught:
        parse_json_body(b'{"plate": "AB1", "\\ud800x": 1}')
    assert caught.value.detail == "invalid text in field name '\\ud800x': lone surrogate"
    caught.value.detail.encode("utf-8")  # safe to log and to send


@pytest.mark.parametrize(
    ("raw", "plate"),
    [
        (b'{"plate": "AB\\ud83d\\ude00"}', "AB\U0001f600"),  # a pair is one character
        (b'{"plate": "AB\\\\ud800"}', "AB\\ud800"),  # an escaped backslash, then text
        ('{"plate": "AB\U0001f600"}'.encode(), "AB\U0001f600"),
    ],
)
def test_surrogate_pairs_and_lookalikes_are_fine(raw: bytes, plate: str) -> None:
    assert read(raw).plate == plate


@pytest.mark.parametrize("char", ["\x00", "\t", "\x7f", "\x85", "\ufdd0", "\x1b"])
def test_control_characters_are_legal_text_and_kept(char: str) -> None:
    # Legal JSON: kept as sent. Topic segments are made safe elsewhere.
    notice = parse_json_body(json.dumps({"event": f"a{char}b", "note": char}).encode())
    assert isinstance(notice, HttpCameraNotice)
    assert notice.data == {"event": f"a{char}b", "note": char}
    result = parse_query_string("Caption=" + urllib.parse.quote(f"a{char}b") + "&description=AB1")
    assert isinstance(result, HttpCameraNotice | HttpPlateRead)


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("Caption=%ED%A0%80&description=AB1", "invalid text in field 'Caption': not UTF-8"),
        ("Caption=LPR&description=AB%FF", "invalid text in field 'description': not UTF-8"),
        ("description=%C3", "invalid text in field 'description': not UTF-8"),
        ("%ED%A0%80=1&description=AB1", "invalid text in field '%ED%A0%80': not UTF-8"),
        ("description=AB\udcff", "invalid text in field 'description': lone surrogate"),
    ],
)
def test_query_that_is_not_utf8_is_refused(query: str, detail: str) -> None:
    with pytest.raises(CameraProtocolError) as caught:
        parse_query_string(query)
    assert caught.value.kind == "invalid_text"
    assert caught.value.detail.startswith(detail)


def test_query_string_is_decoded_like_a_form() -> None:
    result = parse_query_string("Caption=LPR&description=%EB%B6%80%EC%82%B0+02&x=&y&&z=1=2")
    assert isinstance(result, HttpPlateRead)
    assert result.plate == "부산 02"
    assert result.raw == {"Caption": "LPR", "x": "", "y": "", "z": "1=2"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=40)), max_size=6))
def test_query_string_means_what_its_pairs_mean(pairs: list[tuple[str, str]]) -> None:
    query = urllib.parse.urlencode(pairs)
    try:
        direct = parse_query(pairs, DEFAULT)
    except CameraProtocolError as exc:
        with pytest.raises(CameraProtocolError) as caught:
            parse_query_string(query, DEFAULT)
        assert caught.value.kind == exc.kind
        return
    assert parse_query_string(query, DEFAULT) == direct


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["plate", "event", "region", "other", "time"]),
    st.text(
        # surrogates included on purpose (hypothesis leaves them out by default)
        alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010, exclude_categories=()),
        max_size=6,
    ),
)
def test_any_text_is_stored_as_utf8_or_refused(field: str, text: str) -> None:
    raw = json.dumps({"plate": "AB1", field: text}).encode()  # surrogates as \\u escapes
    _parse_or_protocol_error(raw)


def test_utf8_bom_and_utf16_bodies_are_json_too() -> None:
    assert read(b"\xef\xbb\xbf" + body()).plate == "AB123CD"
    assert read(json.dumps({"plate": "AB1"}).encode("utf-16")).plate == "AB1"


# --------------------------------------------------------------------------
# Huge fields


def test_huge_unknown_fields_are_summarised_in_raw() -> None:
    result = read(
        body(
            note="x" * 5000,
            short="y" * 100,
            blob="data:image/png;base64,AAAA",
            big_key_field={"k" * 2000: 1},
        )
    )
    assert result.raw["note"] == {"omitted": "long string", "bytes": 5000}
    assert result.raw["short"] == "y" * 100
    assert result.raw["blob"] == {"omitted": "long string", "chars": 26}
    assert list(result.raw["big_key_field"].values()) == [1]


def test_huge_text_fields_are_truncated_and_reported() -> None:
    result = read(body(region="R" * 10_000, vehicle_brand="B" * 200))
    assert result.region == "R" * 128
    assert result.vehicle.brand == "B" * 128
    assert {p.field for p in result.problems} == {"region", "vehicle_brand"}


def test_many_fields_and_deep_nesting_are_bounded() -> None:
    document: dict[str, Any] = {"plate": "A1"}
    document.update({f"f{i}": i for i in range(1000)})
    deep: Any = 1
    for _ in range(50):
        deep = {"d": deep}
    document["deep"] = deep
    document["long_list"] = list(range(1000))
    result = read(json.dumps(document).encode())
    assert len(result.raw) == 257  # 256 kept + the count of omitted ones
    assert result.raw["_omitted_fields"] == 1002 - 256
    serialised = json.dumps(result.raw)
    assert len(serialised) < 20_000


def test_non_finite_numbers_in_raw_are_json_safe() -> None:
    result = read(b'{"plate": "A1", "x": NaN, "y": Infinity, "z": -Infinity}')
    assert result.raw == {"x": "nan", "y": "inf", "z": "-inf"}
    json.dumps(result.raw, allow_nan=False)


def test_many_small_strings_fall_back_to_a_plain_parse() -> None:
    document = {"plate": "A1", "plate_image": PLATE_B64, **{f"k{i}": "v" for i in range(5000)}}
    result = read(json.dumps(document).encode())
    assert result.plate_image == Image(data=PLATE_JPEG)


# --------------------------------------------------------------------------
# Events


def test_plate_event_from_a_full_body() -> None:
    raw = json.dumps(
        {
            "device": "Network Camera",
            "time": "2024-01-15 10:30:00:123",
            "plate": "부산02가1234",
            "type": "White",
            "speed": "25",
            "direction": "Approach",
            "detection_region": 1,
            "region": "KR",
            "resolution_width": 1920,
            "resolution_height": 1080,
            "coordinate_x1": 10,
            "coordinate_y1": 20,
            "coordinate_x2": 110,
            "coordinate_y2": 60,
            "confidence": "93",
            "plate_color": "White",
            "vehicle_type": "Car",
            "vehicle_color": "Gray",
            "Vehicle Brand": "Hyundai",
            "plate_image": "data:image/jpeg;base64," + PLATE_B64,
            "full_image": SCENE_B64,
            "firmware": "v2",
        }
    ).encode()
    event = to_event(parse_json_body(raw, BodyOptions(tz=SEOUL)), "gate", RECEIVED)
    assert isinstance(event, PlateEvent)
    document = event.to_json_dict("lpr")
    assert document["source"] == "http"
    assert document["camera"] == "gate"
    assert document["time"] == "2024-01-15T01:30:00.123Z"
    assert document["received"] == "2024-01-15T09:31:00.000Z"
    assert document["plate"] == "부산02가1234"
    assert document["confidence"] == pytest.approx(0.93)
    assert document["direction"] == "in"
    assert document["speed_kmh"] == 25
    assert document["list"] == "white"
    assert document["vehicle"] == {
        "type": "Car",
        "color": "Gray",
        "color_code": None,
        "brand": "Hyundai",
    }
    assert document["plate_color"] == {"name": "White", "code": None}
    assert document["region"] == "KR" and document["roi"] == 1
    assert document["box"] == {"x1": 10, "y1": 20, "x2": 110, "y2": 60}
    assert document["resolution"] == {"width": 1920, "height": 1080}
    assert document["device_id"] is None
    assert document["raw"] == {"device": "Network Camera", "firmware": "v2"}
    assert document["images"]["plate"]["bytes"] == len(PLATE_JPEG)
    assert document["images"]["scene"]["bytes"] == len(SCENE_JPEG)
    assert event.plate_image == Image(data=PLATE_JPEG)


def test_get_event_has_null_images() -> None:
    result = parse_query([("Caption", "LPR"), ("description", "MS12345")])
    assert isinstance(result, HttpPlateRead)
    event = plate_event(result, "gate", RECEIVED)
    assert event.source is Source.HTTP
    assert event.to_json_dict("lpr")["images"] == {
        "plate": None,
        "scene": None,
        "evidence0": None,
        "evidence1": None,
    }


def test_camera_event_from_a_notice() -> None:
    result = notice(b'{"event": "Vehicle Counting", "count": "3"}')
    event = camera_event(result, "gate", RECEIVED)
    assert isinstance(event, CameraEvent)
    assert event.to_json_dict()["kind"] == "vehicle_counting"
    assert event.to_json_dict()["data"] == {"event": "Vehicle Counting", "count": "3"}
    assert isinstance(to_event(result, "gate", RECEIVED), CameraEvent)


def test_results_are_frozen() -> None:
    result = read(body())
    with pytest.raises(AttributeError):
        result.plate = "X"  # type: ignore[misc]


# --------------------------------------------------------------------------
# Long-string cut: same meaning as json.loads


def _resolve(value: Any) -> Any:
    if isinstance(value, LongString):
        return value.text()
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    return value


def test_cut_replaces_long_values_but_not_keys() -> None:
    long_value = "Q" * LONG_STRING_BYTES
    raw = json.dumps({"k" * LONG_STRING_BYTES: 1, "v": long_value, "s": "short"}).encode()
    cut = _cut_long_strings(raw)
    assert cut is not None
    reduced, longs = cut
    assert len(longs) == 1 and longs[0].text() == long_value
    assert b"NaN" in reduced and len(reduced) < LONG_STRING_BYTES * 2


def test_cut_is_skipped_when_the_body_has_its_own_nan() -> None:
    raw = ('{"x": NaN, "v": "' + "Q" * LONG_STRING_BYTES + '"}').encode()
    assert _cut_long_strings(raw) is None
    raw = ('{"x": "NaN", "v": "' + "Q" * LONG_STRING_BYTES + '"}').encode()
    assert _cut_long_strings(raw) is None
    assert _resolve(_load(raw)) == json.loads(raw)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.text(alphabet='AB"\\/é\n', min_size=LONG_STRING_BYTES, max_size=LONG_STRING_BYTES + 40)
    | st.sampled_from([PLATE_B64[:3000], "data:image/jpeg;base64," + PLATE_B64[:2000]])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=8) | st.just("k" * LONG_STRING_BYTES), children, max_size=4
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from([None, 0, 2]), st.booleans())
def test_load_means_what_json_loads_means(
    value: Any, indent: int | None, ensure_ascii: bool
) -> None:
    raw = json.dumps(value, indent=indent, ensure_ascii=ensure_ascii).encode()
    assert _resolve(_load(raw)) == json.loads(raw)


# --------------------------------------------------------------------------
# Garbage never raises anything but CameraProtocolError


def _parse_or_protocol_error(raw: bytes) -> None:
    try:
        result = parse_json_body(raw, BodyOptions(tz=BERLIN))
    except CameraProtocolError as exc:
        assert exc.kind
        return
    # ensure_ascii=False and a strict encode: what the outbox and MQTT will do
    # (a lone surrogate would pass an ASCII-escaped dump).
    json.dumps(
        result.raw if isinstance(result, HttpPlateRead) else result.data,
        allow_nan=False,
        ensure_ascii=False,
    ).encode("utf-8")
    event = to_event(result, "cam", RECEIVED)
    json.dumps(
        event.to_json_dict("lpr"),
        allow_nan=False,
        ensure_ascii=False,
    ).encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes(raw: bytes) -> None:
    _parse_or_protocol_error(raw)


field_names = st.sampled_from(
    [
        "plate",
        "time",
        "time_msec",
        "type",
        "speed",
        "direction",
        "detection_region",
        "region",
        "resolution_width",
        "resolution_height",
        "coordinate_x1",
        "coordinate_y1",
        "coordinate_x2",
        "coordinate_y2",
        "confidence",
        "plate_color",
        "vehicle_type",
        "vehicle_color",
        "Vehicle Brand",
        "plate_image",
        "full_image",
        "evidence_image0",
        "evidence_image1",
        "event",
        "device",
        "other",
    ]
)
field_values = (
    json_values
    | st.sampled_from(
        [
            "-",
            "93%",
            "Approach",
            "2024-01-15 10:30:00:123",
            "1e400",
            "NaN",
            "data:image/jpeg;base64,",
            PLATE_B64[:400],
        ]
    )
    | st.floats()
    | st.integers()
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(field_names, field_values, max_size=12))
def test_random_field_documents(document: dict[str, Any]) -> None:
    _parse_or_protocol_error(json.dumps(document).encode())


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(field_names, field_values, max_size=8),
    st.binary(max_size=30),
    st.integers(0, 10_000),
)
def test_corrupted_documents(document: dict[str, Any], junk: bytes, at: int) -> None:
    raw = json.dumps(document).encode()
    at = at % (len(raw) + 1)
    _parse_or_protocol_error(raw[:at] + junk + raw[at:])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=80)), max_size=8))
def test_random_queries(pairs: list[tuple[str, str]]) -> None:
    try:
        result = parse_query(pairs, BodyOptions(tz=BERLIN))
    except CameraProtocolError:
        return
    assert isinstance(result, HttpPlateRead | HttpCameraNotice)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120) | st.binary(max_size=60).map(urllib.parse.quote_from_bytes))
def test_random_query_strings(query: str) -> None:
    try:
        result = parse_query_string(query, BodyOptions(tz=BERLIN))
    except CameraProtocolError as exc:
        assert exc.kind and exc.detail.encode("utf-8")
        return
    event = to_event(result, "cam", RECEIVED)
    json.dumps(
        event.to_json_dict("lpr"),
        ensure_ascii=False,
    ).encode("utf-8")


text_fields = st.sampled_from(
    [
        "region",
        "plate_color",
        "vehicle_type",
        "Vehicle Brand",
        "time",
        "event",
        "plate",
        "full_image",
        "unknown_field",
    ]
)


@settings(max_examples=300, deadline=None)
@given(text_fields, st.binary(min_size=1, max_size=6), st.integers(0, LONG_STRING_BYTES))
def test_junk_inside_long_strings(field: str, junk: bytes, at: int) -> None:
    value = PLATE_B64[: LONG_STRING_BYTES + 10].encode()
    value = value[:at] + junk + value[at:]
    raw = b'{"plate": "AB1", "' + field.encode() + b'": "' + value + b'"}'
    _parse_or_protocol_error(raw)


# --------------------------------------------------------------------------
# Milliseconds (time_msec as a whole time) and pictures of camera events


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # the whole time wins over `time` (it has the milliseconds)
        (
            {"time": "2023-09-15 06:19:57", "time_msec": "2023-09-15 06:19:57.267"},
            datetime(2023, 9, 15, 4, 19, 57, 267000, tzinfo=UTC),
        ),
        (
            {"time_msec": "2023-09-15 06:19:57.267"},
            datetime(2023, 9, 15, 4, 19, 57, 267000, tzinfo=UTC),
        ),
        # an unreadable whole time: `time` still counts
        (
            {"time": "2023-09-15 06:19:57", "time_msec": "2023-02-30 06:19:57.267"},
            datetime(2023, 9, 15, 4, 19, 57, tzinfo=UTC),
        ),
    ],
)
def test_time_msec_as_a_whole_time(fields: dict[str, Any], expected: datetime) -> None:
    result = read(body(**fields), BodyOptions(tz=BERLIN))
    assert result.time == expected
    bad = "2023-02-30" in str(fields.get("time_msec"))
    assert ("time_msec" in result.raw) is bad
    assert [p.field for p in result.problems] == (["time_msec"] if bad else [])


@pytest.mark.parametrize(
    "fields",
    [
        {"time_msec": "2023-09-15 06:19:57.267"},
        {"time": "2023-09-15 06:19:57", "time_msec": 267},
        {"time": "2023-09-15 06:19:57:267"},
        {"time": "2023-09-15 06:19:57.267"},
    ],
)
def test_every_event_kind_gets_the_milliseconds(fields: dict[str, Any]) -> None:
    document = {"event": "Vehicle Counting", "All-Car": 2, **fields}
    result = notice(json.dumps(document).encode(), BodyOptions(tz=BERLIN))
    assert result.time == datetime(2023, 9, 15, 4, 19, 57, 267000, tzinfo=UTC)
    assert dict(result.data) == document  # every field as sent, in order


def _long_b64(data: bytes) -> str:
    return base64.b64encode(data + b"\x00" * 2000).decode()


@pytest.mark.parametrize(
    ("field", "value", "picture"),
    [
        ("snapshot", PLATE_B64, PLATE_JPEG),  # a picture's name: decoded whatever its size
        ("Snapshot", "data:image/jpeg;base64," + PLATE_B64, PLATE_JPEG),
        ("picture", "data:image/jpeg;base64," + PLATE_B64, PLATE_JPEG),  # a data:image/ URI
        ("capture", _long_b64(b"\xff\xd8\xff\xe0"), b"\xff\xd8\xff\xe0" + b"\x00" * 2000),
        ("capture", _long_b64(b"\x89PNG\r\n\x1a\n"), b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000),
    ],
)
def test_a_camera_events_picture_is_taken_out_of_its_data(
    field: str, value: str, picture: bytes
) -> None:
    result = notice(json.dumps({"event": "Parking", field: value, "space": 12}).encode())
    assert result.images == {field: Image(data=picture)}
    assert dict(result.data) == {"event": "Parking", field: None, "space": 12}


@pytest.mark.parametrize(
    "value",
    [
        _long_b64(b"GIF89a"),  # base64 of something that is no JPEG or PNG
        "x" * 5000,  # not base64 at all
        "short text",
    ],
)
def test_other_long_strings_stay_summaries(value: str) -> None:
    result = notice(json.dumps({"event": "Parking", "blob": value}).encode())
    assert result.images == {}
    assert result.data["blob"] == value or result.data["blob"]["omitted"] == "long string"


def test_a_broken_picture_of_a_camera_event_is_missing_and_said() -> None:
    result = notice(json.dumps({"event": "Parking", "snapshot": "###"}).encode())
    assert result.images == {"snapshot": Image.missing("invalid base64")}
    assert [(p.field, p.kind) for p in result.problems] == [("snapshot", "bad_image")]
    event = camera_event(result, "gate", RECEIVED)
    assert event.to_json_dict("lpr")["data"]["snapshot"] == {
        "missing": True,
        "reason": "invalid base64",
    }


def test_camera_event_pictures_topics() -> None:
    document = {
        "event": "Violation",
        "evidence_image0": PLATE_B64,
        "snapshot": SCENE_B64,
        "plate": "AB1",
    }
    event = camera_event(notice(json.dumps(document).encode()), "gate", RECEIVED)
    data = event.to_json_dict("lpr")["data"]
    assert list(data) == ["event", "evidence_image0", "snapshot", "plate"]
    # the snapshot is the event's picture; another one is named after its field
    assert data["snapshot"]["topic"] == "lpr/gate/image/violation"
    assert data["evidence_image0"]["topic"] == "lpr/gate/image/violation.evidence_image0"
    assert data["snapshot"]["sha256"] == hashlib.sha256(SCENE_JPEG).hexdigest()
    with pytest.raises(ValueError):
        event.to_json_dict()  # the references need the topics


@pytest.mark.parametrize("kind", ["plate", "Scene", "evidence0"])
def test_a_camera_event_never_overwrites_a_reads_picture(kind: str) -> None:
    document = {"event": kind, "snapshot": PLATE_B64}
    event = camera_event(notice(json.dumps(document).encode()), "gate", RECEIVED)
    topic = event.to_json_dict("lpr")["data"]["snapshot"]["topic"]
    assert topic == f"lpr/gate/image/event-{kind.lower()}"


def test_a_camera_event_has_a_bounded_number_of_pictures() -> None:
    pictures = {f"picture{n}": "data:image/jpeg;base64," + PLATE_B64 for n in range(12)}
    result = notice(json.dumps({"event": "Parking", **pictures}).encode())
    assert len(result.images) == MAX_EVENT_PICTURES
    extra = [key for key, value in result.data.items() if isinstance(value, dict)]
    assert len(extra) == 12 - MAX_EVENT_PICTURES
    assert all(
        result.data[key] == {"omitted": "image", "reason": "too many pictures"} for key in extra
    )
    assert {p.kind for p in result.problems} == {"too_many_images"}
    assert "base64" not in json.dumps(dict(result.data))
