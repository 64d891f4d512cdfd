"""ONVIF scene description (Profile M `tt:Frame` objects with a plate): golden documents,
the mapping to the event, odd and hostile objects."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import onvif
from gateway.codecs.onvif import (
    OnvifNotification,
    OnvifProblem,
    OnvifSceneFrame,
    SceneBox,
    SceneFrameSpec,
    SceneObjectSpec,
    build_scene_document,
    parse_metadata,
    scene_to_plate_event,
)
from gateway.errors import CameraProtocolError
from gateway.event import Box, Direction, Image, PlateEvent, Resolution, Source
from gateway.simulate.common import plate_jpeg, scene_jpeg

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "onvif_scene"
RECEIVED = datetime(2026, 3, 4, 5, 6, 10, tzinfo=UTC)
TT = 'xmlns:tt="http://www.onvif.org/ver10/schema"'
# The golden crop: a JPEG's magic, a comment-like tail (the codec checks the magic only).
GOLDEN_CROP = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00golden plate crop\xff\xd9"


def _frame(document: bytes) -> OnvifSceneFrame:
    [frame] = [r for r in parse_metadata(document) if isinstance(r, OnvifSceneFrame)]
    return frame


def _event_json(event: PlateEvent) -> dict[str, Any]:
    document = event.to_json_dict("lpr")
    del document["id"]
    return document


def _scene(objects: str, *, frame_attrs: str = "", tree: str = "", extra: str = "") -> bytes:
    return (
        f'<tt:MetadataStream {TT}><tt:VideoAnalytics><tt:Frame UtcTime="2026-03-04T05:06:07Z"'
        f"{frame_attrs}>{extra}{objects}{tree}</tt:Frame></tt:VideoAnalytics></tt:MetadataStream>"
    ).encode()


def _plate_object(object_id: str = "1", plate: str = "AB123", appearance: str = "") -> str:
    return (
        f'<tt:Object ObjectId="{object_id}"><tt:Appearance>{appearance}<tt:LicensePlateInfo>'
        f'<tt:PlateNumber Likelihood="0.9">{plate}</tt:PlateNumber>'
        "</tt:LicensePlateInfo></tt:Appearance></tt:Object>"
    )


# --------------------------------------------------------------------------
# Golden documents


@pytest.mark.parametrize(
    ("name", "resolution"),
    [
        ("single_object_transformation", Resolution(1920, 1080)),
        ("plate_under_vehicle", None),
    ],
)
def test_golden_document_gives_the_golden_event(name: str, resolution: Resolution | None) -> None:
    frame = _frame((GOLDEN / f"{name}.xml").read_bytes())
    [reading] = frame.plates
    event = scene_to_plate_event(
        reading, "gate", RECEIVED, plate_image=reading.image, resolution=resolution
    )
    expected = json.loads((GOLDEN / f"{name}.event.json").read_text(encoding="utf-8"))
    assert _event_json(event) == expected


def test_single_object_fields_and_pixel_box() -> None:
    frame = _frame((GOLDEN / "single_object_transformation.xml").read_bytes())
    assert frame.time == datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    [reading] = frame.plates
    assert reading.object_id == "42"  # "0042" is the integer 42
    assert reading.plate == "B-MW 1234" and reading.confidence == 0.87
    assert reading.region == "DE"  # CountryCode before IssuingEntity
    assert reading.image_ref == "/onvif/plates/42.jpg" and reading.image is None
    assert reading.vehicle_color is not None and reading.vehicle_color.name == "blue"
    assert reading.vehicle_color.weight == 0.7  # the heaviest of the two clusters
    # Pixels 960,540-1152,594 of 1920x1080 through the Transformation into
    # ONVIF coordinates (y up), and back into those pixels.
    assert reading.box == SceneBox(0.0, 0.0, 0.2, -0.1)
    event = scene_to_plate_event(reading, "gate", RECEIVED, resolution=Resolution(1920, 1080))
    assert event.box == Box(960, 540, 1152, 594)
    assert event.resolution == Resolution(1920, 1080)
    assert event.vehicle.type == "truck" and event.vehicle.brand == "Volvo"
    assert event.raw["vehicle_model"] == {"value": "FH16", "likelihood": 0.4}
    assert event.source is Source.RTSP and event.direction is Direction.UNKNOWN
    # No picture was passed: the scene object names one (ImageRef), the adapter fetches it.
    assert event.plate_image is None and event.scene_image is None


def test_plate_object_under_a_vehicle_object() -> None:
    results = parse_metadata((GOLDEN / "plate_under_vehicle.xml").read_bytes())
    # The notification beside the frame is still read.
    assert [type(r) for r in results] == [OnvifNotification, OnvifSceneFrame]
    frame = results[1]
    assert isinstance(frame, OnvifSceneFrame)
    [reading] = frame.plates  # the vehicle object (7) has no LicensePlateInfo
    assert reading.object_id == "8" and reading.parent == "7"
    assert reading.plate == "12가3456"  # the most likely of three candidates
    assert [c.value for c in reading.candidates] == ["12가3456", "12가3466", "12기3456"]
    assert reading.region == "서울"  # IssuingEntity, there being no CountryCode
    assert reading.vehicle_type is not None and reading.vehicle_type.value == "Car"
    assert reading.vehicle_brand is not None and reading.vehicle_brand.value == "Kia"
    assert reading.vehicle_color is not None and reading.vehicle_color.name == "black"
    assert reading.plate_color is not None and reading.plate_color.name == "yellow"
    # Inline crop, base64 over two lines: the bytes exactly.
    assert reading.image == Image(data=GOLDEN_CROP)
    assert frame.ended == ("3",)
    event = scene_to_plate_event(reading, "gate", RECEIVED, plate_image=reading.image)
    assert event.box is None  # no resolution known: the coordinates as given, said so
    assert event.raw["box_units"] == "onvif_normalized"
    assert event.raw["box_normalized"] == {
        "left": -0.25,
        "top": -0.2,
        "right": -0.05,
        "bottom": -0.3,
    }
    # ... and with a resolution: x from the left, y from the top.
    event = scene_to_plate_event(reading, "gate", RECEIVED, resolution=Resolution(1920, 1080))
    assert event.box == Box(720, 648, 912, 702)


def test_object_tree_only() -> None:
    frame = _frame((GOLDEN / "object_tree_only.xml").read_bytes())
    assert frame.plates == ()  # the person is not a plate
    assert frame.ended == ("9", "10", "11")
    assert frame.renamed == (("5", "15"),)
    assert frame.merged == ((("6", "16"), "26"),)


def test_a_frame_with_neither_plates_nor_tree_gives_nothing() -> None:
    document = _scene('<tt:Object ObjectId="1"><tt:Appearance/></tt:Object>')
    assert parse_metadata(document) == []


# --------------------------------------------------------------------------
# Pictures


def test_inline_scene_image_gives_the_resolution() -> None:
    scene = scene_jpeg()  # 1920x1080
    extra = f"<tt:SceneImage>{base64.b64encode(scene).decode()}</tt:SceneImage>"
    box = '<tt:Shape><tt:BoundingBox left="-1" top="1" right="0" bottom="0"/></tt:Shape>'
    # SceneImage comes after the objects in the schema; the parser does not mind the order.
    document = _scene(_plate_object(appearance=box), tree=extra)
    [reading] = _frame(document).plates
    assert reading.scene_image == Image(data=scene)
    assert reading.scene_size == (1920, 1080)
    event = scene_to_plate_event(reading, "c", RECEIVED, scene_image=reading.scene_image)
    assert event.box == Box(0, 0, 960, 540)
    assert event.resolution == Resolution(1920, 1080)


@pytest.mark.parametrize(
    ("image_text", "reason"),
    [
        ("!!!not base64!!!", "invalid base64"),
        (base64.b64encode(b"GIF89a....").decode(), "not a JPEG"),
        ("", "empty"),
    ],
)
def test_an_unusable_inline_image_is_missing_with_its_reason(image_text: str, reason: str) -> None:
    document = _scene(
        _plate_object().replace(
            "</tt:Appearance>", f"<tt:Image>{image_text}</tt:Image></tt:Appearance>"
        )
    )
    [reading] = _frame(document).plates
    assert reading.plate == "AB123"  # the read is kept
    assert reading.image is not None and reading.image.data is None
    assert reason in (reading.image.missing_reason or "")


# --------------------------------------------------------------------------
# Odd and hostile objects: a problem each, never a crash, the other objects kept


def test_objects_without_id_or_plate_are_problems_and_the_good_one_is_kept() -> None:
    no_id = (
        "<tt:Object><tt:Appearance><tt:LicensePlateInfo><tt:PlateNumber>X1</tt:PlateNumber>"
        "</tt:LicensePlateInfo></tt:Appearance></tt:Object>"
    )
    no_plate = (
        '<tt:Object ObjectId="2"><tt:Appearance><tt:LicensePlateInfo>'
        '<tt:PlateNumber Likelihood="0.9">  </tt:PlateNumber>'
        "</tt:LicensePlateInfo></tt:Appearance></tt:Object>"
    )
    results = parse_metadata(_scene(no_id + no_plate + _plate_object("3", "GOOD1")))
    problems = [r.kind for r in results if isinstance(r, OnvifProblem)]
    assert problems == ["scene_no_object_id", "scene_no_plate"]
    [frame] = [r for r in results if isinstance(r, OnvifSceneFrame)]
    assert [p.plate for p in frame.plates] == ["GOOD1"]


def test_uuid_identifies_an_object_without_object_id() -> None:
    document = _scene(_plate_object().replace('ObjectId="1"', 'UUID="a-b-c"'))
    assert _frame(document).plates[0].object_id == "uuid:a-b-c"


@pytest.mark.parametrize(
    "attributes",
    [
        'left="nan" top="1" right="0" bottom="0"',
        'left="-1" top="inf" right="0" bottom="0"',
        'left="-1" top="1" right="0"',
        'left="１" top="1" right="0" bottom="0"',
        'left="1e999" top="1" right="0" bottom="0"',
    ],
)
def test_an_unreadable_bounding_box_is_left_out_and_said(attributes: str) -> None:
    box = f"<tt:Shape><tt:BoundingBox {attributes}/></tt:Shape>"
    [reading] = _frame(_scene(_plate_object(appearance=box))).plates
    assert reading.box is None
    assert "BoundingBox" in reading.unreadable


def test_unreadable_likelihood_and_time_are_said_and_the_read_kept() -> None:
    document = _scene(_plate_object()).replace(b'Likelihood="0.9"', b'Likelihood="high"')
    document = document.replace(b"2026-03-04T05:06:07Z", b"yesterday")
    [reading] = _frame(document).plates
    assert reading.plate == "AB123" and reading.confidence is None and reading.time is None
    assert reading.unreadable == {"PlateNumber@Likelihood": "high", "UtcTime": "yesterday"}
    event = scene_to_plate_event(reading, "c", RECEIVED)
    assert event.raw["unreadable"]["UtcTime"] == "yesterday"


def test_percent_likelihoods_are_fractions() -> None:
    document = _scene(_plate_object()).replace(b'Likelihood="0.9"', b'Likelihood="87"')
    assert _frame(document).plates[0].confidence == 0.87


def test_too_many_objects_are_cut_and_said() -> None:
    objects = "".join(_plate_object(str(i), f"P{i}") for i in range(onvif.MAX_SCENE_OBJECTS + 5))
    results = parse_metadata(_scene(objects))
    assert [r.kind for r in results if isinstance(r, OnvifProblem)] == ["scene_too_many_objects"]
    [frame] = [r for r in results if isinstance(r, OnvifSceneFrame)]
    assert len(frame.plates) == onvif.MAX_SCENE_OBJECTS


def test_bad_object_tree_entries_are_problems() -> None:
    tree = "<tt:ObjectTree><tt:Rename><tt:from ObjectId='1'/></tt:Rename></tt:ObjectTree>"
    results = parse_metadata(_scene("", tree=tree))
    assert [r.kind for r in results if isinstance(r, OnvifProblem)] == ["scene_bad_object_tree"]


def test_a_scene_document_with_a_doctype_is_refused_whole() -> None:
    document = b'<!DOCTYPE x [<!ENTITY e "AB">]>' + _scene(_plate_object(plate="&e;"))
    with pytest.raises(CameraProtocolError) as caught:
        parse_metadata(document)
    assert caught.value.kind == "xml_doctype"


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    object_id=_TEXT,
    plate=_TEXT,
    likelihood=_TEXT,
    box=st.lists(_TEXT, min_size=4, max_size=4),
    color=st.lists(_TEXT, min_size=3, max_size=3),
    image=_TEXT,
)
def test_any_attribute_text_never_crashes_and_maps_to_json(
    object_id: str, plate: str, likelihood: str, box: list[str], color: list[str], image: str
) -> None:
    from lxml import etree

    tt = "{http://www.onvif.org/ver10/schema}"
    root = etree.Element(tt + "MetadataStream", nsmap={"tt": tt[1:-1]})
    frame = etree.SubElement(etree.SubElement(root, tt + "VideoAnalytics"), tt + "Frame")
    frame.set("UtcTime", "2026-03-04T05:06:07Z")
    obj = etree.SubElement(frame, tt + "Object")
    try:
        obj.set("ObjectId", object_id)
        appearance = etree.SubElement(obj, tt + "Appearance")
        shape = etree.SubElement(appearance, tt + "Shape")
        etree.SubElement(
            shape,
            tt + "BoundingBox",
            dict(zip(("left", "top", "right", "bottom"), box, strict=True)),
        )
        cluster = etree.SubElement(etree.SubElement(appearance, tt + "Color"), tt + "ColorCluster")
        etree.SubElement(cluster, tt + "Color", dict(zip("XYZ", color, strict=True)))
        info = etree.SubElement(appearance, tt + "LicensePlateInfo")
        number = etree.SubElement(info, tt + "PlateNumber", Likelihood=likelihood)
        number.text = plate
        etree.SubElement(appearance, tt + "Image").text = image
    except ValueError:
        return  # text lxml itself will not put in a document (control characters)
    document = etree.tostring(root)
    for result in parse_metadata(document):
        if isinstance(result, OnvifSceneFrame):
            for reading in result.plates:
                event = scene_to_plate_event(
                    reading, "c", RECEIVED, resolution=Resolution(640, 480)
                )
                json.dumps(event.to_json_dict("lpr"), allow_nan=False)
                if event.box is not None:
                    assert 0 <= event.box.x1 <= event.box.x2 <= 640
                    assert 0 <= event.box.y1 <= event.box.y2 <= 480


# --------------------------------------------------------------------------
# The builder (simulator) and the parser agree


def test_built_scene_documents_parse_back() -> None:
    crop = plate_jpeg()
    moment = datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)
    document = build_scene_document(
        [
            SceneFrameSpec(
                moment,
                [
                    SceneObjectSpec(
                        1,
                        [("AB123CD", 0.62)],
                        country_code="FR",
                        vehicle=("Car", "Renault", None),
                        color_ycbcr=(235, 128, 128),
                        box=(-0.5, 0.0, -0.2, -0.1),
                        image=crop,
                    ),
                    SceneObjectSpec(2, [("XY987", None)], image_ref="/onvif/plate/2.jpg"),
                ],
                deleted=[0],
            )
        ]
    )
    frame = _frame(document)
    assert frame.time == moment and frame.ended == ("0",)
    first, second = frame.plates
    assert (first.object_id, first.plate, first.confidence) == ("1", "AB123CD", 0.62)
    assert first.image == Image(data=crop) and first.region == "FR"
    assert first.vehicle_color is not None and first.vehicle_color.name == "white"
    assert first.box == SceneBox(-0.5, 0.0, -0.2, -0.1)
    assert (second.object_id, second.plate, second.confidence) == ("2", "XY987", None)
    assert second.image_ref == "/onvif/plate/2.jpg" and second.image is None


def test_merge_scene_into_a_notification_fills_only_what_it_lacks() -> None:
    [reading] = _frame((GOLDEN / "single_object_transformation.xml").read_bytes()).plates
    notification = PlateEvent(
        camera="gate",
        source=Source.RTSP,
        plate="B-MW 1234",
        received=RECEIVED,
        speed_kmh=30,
        direction=Direction.IN,
        raw={"topic": "tns1:RuleEngine/LicensePlateDetector/LicensePlate"},
        plate_image=Image(data=b"\xff\xd8\xff notification picture"),
    )
    merged = onvif.merge_scene_into(notification, reading)
    assert merged.id == notification.id and merged.plate == "B-MW 1234"
    assert (merged.speed_kmh, merged.direction) == (30, Direction.IN)  # the notification's
    assert merged.confidence == 0.87 and merged.region == "DE"  # the object's
    assert merged.vehicle.type == "truck" and merged.vehicle.color == "blue"
    assert merged.plate_image == notification.plate_image
    assert merged.raw["topic"] == notification.raw["topic"]
    assert merged.raw["scene"]["object_id"] == "42"
