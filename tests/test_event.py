"""The event JSON contract (golden files) and plate normalisation."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.event import (
    Box,
    CameraEvent,
    Direction,
    Image,
    ListMembership,
    PlateColor,
    PlateEvent,
    Resolution,
    Source,
    Vehicle,
    format_time,
    normalize_plate,
)

GOLDEN = Path(__file__).parent / "golden"
T_READ = datetime(2018, 5, 9, 12, 11, 30, tzinfo=UTC)
T_RECEIVED = datetime(2018, 5, 9, 12, 11, 30, 112000, tzinfo=UTC)


def full_event() -> PlateEvent:
    return PlateEvent(
        id="0b9a2c4e-6a0f-4c59-9a53-2f1e7c1d9a00",
        camera="gate_in",
        source=Source.TCP,
        time=T_READ,
        received=T_RECEIVED,
        plate="부산02가1234",
        confidence=0.93,
        direction=Direction.IN,
        speed_kmh=25,
        list=ListMembership.WHITE,
        vehicle=Vehicle(type="car", color="white", color_code=1, brand=None),
        plate_color=PlateColor(name=None, code=3),
        region="KR",
        roi=1,
        box=Box(10, 20, 110, 60),
        resolution=Resolution(1920, 1080),
        device_id="bb12f904-94ce-4065-89af-e83cd88f70be",
        known="Alice's car",
        match="fuzzy",
        raw={"firmware": "x"},
        plate_image=Image(b"plate-bytes"),
        scene_image=Image.missing("camera sent 1 image chunk, 2 expected"),
    )


def minimal_event() -> PlateEvent:
    return PlateEvent(
        id="11111111-2222-4333-8444-555555555555",
        camera="gate_out",
        source=Source.HTTP,
        plate="MS12345",
        received=T_RECEIVED,
    )


@pytest.mark.parametrize(
    ("name", "factory"), [("event_full.json", full_event), ("event_minimal.json", minimal_event)]
)
def test_event_json_matches_golden(name: str, factory: object) -> None:
    document = factory().to_json_dict("lpr")  # type: ignore[operator]
    expected = json.loads((GOLDEN / name).read_text(encoding="utf-8"))
    assert document == expected
    # Every key of the full form is present in the minimal one too (null, never absent).
    full_keys = set(full_event().to_json_dict("lpr"))
    assert set(document) == full_keys


def test_camera_event_json() -> None:
    event = CameraEvent(
        id="e",
        camera="c",
        source=Source.HTTP,
        kind="counting",
        received=T_RECEIVED,
        data={"count": 3},
    )
    assert event.to_json_dict() == {
        "schema": 1,
        "id": "e",
        "camera": "c",
        "source": "http",
        "kind": "counting",
        "time": None,
        "received": "2018-05-09T12:11:30.112Z",
        "data": {"count": 3},
    }


@pytest.mark.parametrize(
    ("plate", "normalized"),
    [
        ("ab 123-cd", "AB123CD"),
        ("AB.123.CD", "AB123CD"),
        ("  m s-1 2 3  ", "MS123"),
        ("부산02가1234", "부산02가1234"),
        ("부산 02가 1234", "부산02가1234"),
        # Conjoining jamo (NFD) compose to the same syllables (NFC).
        ("\u1100\u1161 1234", "가1234"),
        ("43거6510", "43거6510"),
        ("München-1", "MÜNCHEN1"),
        ("ü", "Ü"),
        ("ab\u2010cd", "ABCD"),  # typographic hyphen
        ("", ""),
    ],
)
def test_normalize_plate(plate: str, normalized: str) -> None:
    assert normalize_plate(plate) == normalized


def test_every_event_gets_its_own_uuid4_id() -> None:
    fresh = [
        PlateEvent(camera="c", source=Source.TCP, plate="x", received=T_RECEIVED).id
        for _ in range(1000)
    ]
    assert len(set(fresh)) == 1000
    assert all(uuid.UUID(i).version == 4 for i in fresh)
    # A redelivered event keeps its id: it is the event's, not the rendering's.
    event = minimal_event()
    assert event.to_json_dict("lpr")["id"] == event.to_json_dict("lpr")["id"] == event.id


def test_time_format_requires_aware_datetimes() -> None:
    assert format_time(T_RECEIVED) == "2018-05-09T12:11:30.112Z"
    with pytest.raises(ValueError):
        format_time(datetime(2018, 1, 1))


def test_image_is_data_or_reason() -> None:
    with pytest.raises(ValueError):
        Image(data=None)
