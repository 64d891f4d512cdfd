"""Field-shaped HTTP bodies (tests/fixtures/http/) against their golden event JSON.

Each `<name>.body.json` (a POST body) or `<name>.query` (a GET query) is shaped
like what cameras of this family post: the field names and value shapes public
integrations of them read (`time_msec` as a whole time, `"Vehicle Brand"`,
`"region name"`, `"All-Car"`, base64 `snapshot` and evidence images). Its
`<name>.event.json` is the exact event JSON the gateway publishes for it, from a
camera in Europe/Berlin; the end-to-end test in tests/adapters/test_http_fixtures.py
posts the same files through a real broker.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.codecs.http_body import (
    BodyOptions,
    HttpBody,
    _norm_key,
    parse_json_body,
    parse_query_string,
    to_event,
)
from gateway.topics import Topics

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "http"
SPEC = ROOT / "docs" / "camera-protocols.md"
CAMERA = "gate"
TZ = ZoneInfo("Europe/Berlin")
OPTIONS = BodyOptions(tz=TZ)
RECEIVED = datetime(2023, 9, 15, 4, 20, 30, 500000, tzinfo=UTC)
EVENT_ID = "00000000-0000-4000-8000-000000000016"
NAMES = sorted(
    path.name.split(".")[0]
    for path in FIXTURES.iterdir()
    if path.suffix in (".json", ".query") and not path.name.endswith(".event.json")
)


def body_path(name: str) -> Path:
    for candidate in (FIXTURES / f"{name}.body.json", FIXTURES / f"{name}.query"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(name)


def parse_fixture(name: str) -> HttpBody:
    path = body_path(name)
    if path.suffix == ".query":
        return parse_query_string(path.read_text(encoding="utf-8").strip(), OPTIONS)
    return parse_json_body(path.read_bytes(), OPTIONS)


def event_json(name: str) -> dict[str, Any]:
    event = replace(to_event(parse_fixture(name), CAMERA, RECEIVED), id=EVENT_ID)
    return event.to_json_dict(Topics("lpr"))


def golden(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        (FIXTURES / f"{name}.event.json").read_text(encoding="utf-8")
    )
    return document


def test_the_fixture_set_is_complete() -> None:
    assert NAMES == [
        "attributes",
        "get_lpr",
        "list_event",
        "parking",
        "recognition",
        "vehicle_counting",
        "violation",
    ]


@pytest.mark.parametrize("name", NAMES)
def test_fixture_gives_its_golden_event(name: str) -> None:
    result = parse_fixture(name)
    assert result.problems == ()  # a field-shaped body has nothing unusable
    assert event_json(name) == golden(name)


def _references(document: Any) -> list[dict[str, Any]]:
    """Every `{"topic", "bytes", "sha256"}` in an event JSON."""
    if isinstance(document, dict):
        if set(document) == {"topic", "bytes", "sha256"}:
            return [document]
        return [ref for value in document.values() for ref in _references(value)]
    return []


def _sent_images(name: str) -> list[bytes]:
    """Every picture in a fixture body, decoded here independently of the codec."""
    path = body_path(name)
    if path.suffix == ".query":
        return []
    pictures = []
    for key, value in json.loads(path.read_bytes()).items():
        if "image" in key or key == "snapshot":
            pictures.append(base64.b64decode(value.partition("base64,")[2] or value))
    return pictures


@pytest.mark.parametrize("name", NAMES)
def test_every_picture_sent_is_referred_to_byte_exact_and_none_inside_the_json(
    name: str,
) -> None:
    document = golden(name)
    references = _references(document)
    sent = _sent_images(name)
    assert sorted(r["sha256"] for r in references) == sorted(
        hashlib.sha256(p).hexdigest() for p in sent
    )
    assert all(
        r["bytes"] == len(p)
        for r, p in zip(
            sorted(references, key=lambda r: r["sha256"]),
            sorted(sent, key=lambda p: hashlib.sha256(p).hexdigest()),
            strict=True,
        )
    )
    assert len({r["topic"] for r in references}) == len(references)
    text = json.dumps(document)
    assert "base64" not in text and all(base64.b64encode(p).decode()[:40] not in text for p in sent)


def _spec_http_fields() -> set[str]:
    """The field names of the spec's HTTP table (its first column), plus `time_msec`."""
    section = SPEC.read_text(encoding="utf-8").split("## 2. HTTP type", 1)[1].split("## 3.", 1)[0]
    names = {"time_msec"}
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_the_fixtures_carry_every_field_of_the_spec_table() -> None:
    fields = _spec_http_fields()
    assert {"device", "vehicle_brand", "Vehicle Brand", "evidence_image1"} <= fields
    sent: set[str] = set()
    for name in NAMES:
        path = body_path(name)
        if path.suffix == ".json":
            sent |= {_norm_key(key) for key in json.loads(path.read_bytes())}
    assert {_norm_key(f) for f in fields} - sent == set()


def test_the_recognition_golden_fills_every_slot_an_http_camera_can() -> None:
    document = golden("recognition")
    # Only what the HTTP body has no field for stays null (a TCP camera's codes,
    # its GUID, and the enrich step's known/match).
    never_from_http = {"device_id", "known", "match"}
    for key, value in document.items():
        assert key in never_from_http or value is not None, key
    assert None not in document["images"].values()
    assert document["vehicle"]["color_code"] is None and document["plate_color"]["code"] is None
    assert None not in (document["vehicle"]["type"], document["vehicle"]["brand"])
    assert document["time"] == "2023-09-15T04:19:57.267Z"  # time_msec, Berlin summer time
    assert document["raw"] == {"device": "Network Camera"}  # the only field without a slot


def test_every_event_kind_gets_its_milliseconds() -> None:
    times = {name: golden(name)["time"] for name in NAMES}
    assert times["recognition"] == "2023-09-15T04:19:57.267Z"  # time_msec, a whole time
    assert times["vehicle_counting"] == "2023-09-15T04:20:00.031Z"  # time_msec, a whole time
    assert times["violation"] == "2023-09-15T04:21:10.042Z"  # time_msec, milliseconds only
    assert times["list_event"] == "2023-09-15T04:19:57.267Z"  # `:mmm` on time
    assert times["attributes"] == "2023-09-15T04:19:57.500Z"  # `.m` on time
    assert times["parking"] == "2023-09-15T05:02:11.904Z"  # `.mmm` on time
    assert times["get_lpr"] is None  # a GET carries no time
