"""TCP camera protocol codec: framing, login, recognition results, event mapping."""

from __future__ import annotations

import contextlib
import json
import struct
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codecs import assumed, values
from gateway.codecs.tcp import CLIENT_TRANSITIONS as TCP_CLIENT_TRANSITIONS
from gateway.codecs.tcp import (
    NEED_DATA,
    BadLoginReply,
    Command,
    CorruptFrame,
    DecoderEvent,
    DecoderState,
    EndOfStream,
    Flavour,
    Frame,
    FrameDecoder,
    GarbageSkipped,
    LoginAccepted,
    LoginRefused,
    LoginReplyIgnored,
    Recognition,
    RecognitionMetadata,
    StreamBroken,
    TcpClient,
    UnknownCommand,
    UnreadableRecognition,
    classify_images,
    effective_color_table,
    encode_frame,
    encode_login_reply,
    encode_login_request,
    encode_metadata,
    encode_recognition_data,
    jpeg_dimensions,
    parse_login_reply,
    parse_login_request,
    parse_metadata,
    parse_recognition_result,
    to_plate_event,
)
from gateway.codecs.tcp import ClientState as TcpClientState
from gateway.errors import CameraProtocolError, CodecMisuseError
from gateway.event import Direction, Image, ListMembership, Source
from tests.tcp_samples import BASE, DEVICE_BYTES, FULL, PLATE, SCENE


def drain(decoder: FrameDecoder) -> list[DecoderEvent]:
    events: list[DecoderEvent] = []
    while True:
        event = decoder.next_event()
        if event is NEED_DATA or isinstance(event, EndOfStream):
            return events
        events.append(event)
        if isinstance(event, StreamBroken):
            return events


def decode_all(chunks: list[bytes], *, eof: bool = True, **kwargs: Any) -> list[DecoderEvent]:
    decoder = FrameDecoder(**kwargs)
    events: list[DecoderEvent] = []
    for chunk in chunks:
        if not chunk:
            continue  # b"" would mean end of stream
        decoder.receive_data(chunk)
        events += drain(decoder)
        if events and isinstance(events[-1], StreamBroken):
            return events
    if eof:
        decoder.receive_data(b"")
        events += drain(decoder)
    return events


def frames_of(events: list[DecoderEvent]) -> list[tuple[int, bytes]]:
    return [(e.command, e.data) for e in events if isinstance(e, Frame)]


def recog_frame(
    meta: RecognitionMetadata = FULL, images: tuple[bytes, ...] = (PLATE, SCENE)
) -> bytes:
    return encode_frame(Command.RECOG_POST, encode_recognition_data(meta, images))


# --------------------------------------------------------------------------
# The note's worked values


def test_device_id_is_a_dotnet_order_guid() -> None:
    meta = parse_metadata(encode_metadata(BASE))
    assert str(meta.device_id) == "bb12f904-94ce-4065-89af-e83cd88f70be"
    assert meta.device_id.version == 4
    assert encode_metadata(BASE)[:16] == DEVICE_BYTES


def test_recognition_time_is_utc_milliseconds() -> None:
    meta = parse_metadata(encode_metadata(BASE))
    assert meta.time == datetime(2018, 5, 9, 12, 11, 30, tzinfo=UTC)
    assert parse_metadata(encode_metadata(replace(BASE, time_ms=1525867890123))).time == (
        datetime(2018, 5, 9, 12, 11, 30, 123000, tzinfo=UTC)
    )


def test_time_zero_means_no_clock() -> None:
    assert parse_metadata(encode_metadata(replace(BASE, time_ms=0))).time is None


def test_korean_plate_in_the_16_byte_field() -> None:
    payload = encode_metadata(BASE)
    assert len("부산02가1234".encode()) == 15
    assert payload[24:40] == "부산02가1234".encode() + b"\x00"
    assert parse_metadata(payload).car_number == "부산02가1234"


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("부산02가1234".encode() + b"\x00", "부산02가1234"),
        # a 3-byte Hangul syllable cut after its first byte at byte 16: dropped
        ("부산02가1234".encode() + "가".encode()[:1], "부산02가1234"),
        # cut after two of its three bytes
        ("부산02가123".encode() + "가".encode()[:2] + b"", "부산02가123"),
        (b"AB123CD".ljust(16, b"\x00"), "AB123CD"),
        (b"0123456789ABCDEF", "0123456789ABCDEF"),  # full, no terminator
        (b"AB12\x00junkjunkjun", "AB12"),  # padding that is not all NUL
        (b"\x00" * 16, ""),
    ],
)
def test_car_number_field(field: bytes, expected: str) -> None:
    payload = bytearray(encode_metadata(BASE))
    payload[24:40] = field.ljust(16, b"\x00")
    assert parse_metadata(bytes(payload)).car_number == expected


def test_car_number_not_utf8_is_replaced_and_reported() -> None:
    payload = bytearray(encode_metadata(BASE))
    payload[24:40] = b"AB\xff\xfe12".ljust(16, b"\x00")
    issues: list[Any] = []
    meta = parse_metadata(bytes(payload), issues)
    assert meta.car_number.startswith("AB") and "\ufffd" in meta.car_number
    assert [i.kind for i in issues] == ["bad_text"]


def test_encoder_cuts_long_plates_like_a_camera() -> None:
    meta = replace(BASE, car_number="부산02가1234가")  # 18 bytes
    assert parse_metadata(encode_metadata(meta)).car_number == "부산02가1234"


def test_login_request_worked_example() -> None:
    body = b'{"id": "admin", "password": "1234"}'
    expected = b"\xcc\xff\x01\x00" + struct.pack("<I", len(body) + 2) + body + b"\xff\xdd"
    assert encode_login_request("admin", "1234") == expected
    decoder = FrameDecoder()
    decoder.receive_data(expected)
    frame = decoder.next_event()
    assert isinstance(frame, Frame) and frame.known_command is Command.LOGIN_REQ
    request = parse_login_request(frame.data)
    assert (request.user, request.password) == ("admin", "1234")
    assert "1234" not in repr(request)


# --------------------------------------------------------------------------
# Login reply


@pytest.mark.parametrize(
    ("body", "status", "ok", "unauthorized"),
    [
        (b'{"result": "200"}', 200, True, False),
        (b'{"result": 200}', 200, True, False),
        (b'{"result": "401"}', 401, False, True),
        (b'{"result": 401}', 401, False, True),
        (b'{"result": " 403 "}', 403, False, False),
        (b'{"result": "500", "extra": 1}', 500, False, False),
    ],
)
def test_login_reply(body: bytes, status: int, ok: bool, unauthorized: bool) -> None:
    reply = parse_login_reply(body)
    assert (reply.status, reply.ok, reply.unauthorized) == (status, ok, unauthorized)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[200]",
        b'{"result": "OK"}',
        b'{"result": true}',
        b"{}",
        b"\xff{}",
        b'{"result": "2000"}',
        b'{"result": null}',
        # digits by isdigit() but not a number int() takes, or not ASCII
        '{"result": "\u00b2"}'.encode(),
        '{"result": "\uff15\uff10\uff10"}'.encode(),
        '{"result": "\u0662\u0660\u0660"}'.encode(),
        b'{"result": "-0x1"}',
        b'{"result": "+200"}',
        b'{"result": "2_00"}',
        b'{"result": -200}',
        b'{"result": 200.0}',
        b'{"result": "' + b"9" * 5000 + b'"}',
        b'{"result": ' + b"9" * 5000 + b"}",
    ],
)
def test_login_reply_malformed(body: bytes) -> None:
    with pytest.raises(CameraProtocolError) as info:
        parse_login_reply(body)
    assert info.value.kind == "bad_login_reply"


@pytest.mark.parametrize("as_number", [False, True])
def test_login_reply_round_trip(as_number: bool) -> None:
    frame = encode_login_reply(401, as_number=as_number)
    (event,) = decode_all([frame])
    assert isinstance(event, Frame) and event.command == Command.LOGIN_REPLY
    assert parse_login_reply(event.data).status == 401
    assert (b'"401"' in frame) is not as_number


# --------------------------------------------------------------------------
# Every field


def test_every_base_field() -> None:
    payload = encode_metadata(BASE)
    assert len(payload) == 79
    meta = parse_metadata(payload)
    assert meta == BASE
    assert meta.license_plate is None and meta.confidence is None and meta.x2 is None


def test_every_trailing_field() -> None:
    payload = encode_metadata(FULL, trailing=None)
    # 79 base + 1 + 15 + 1 + 4 + 1 + 4 + 4 + 4 + 4 * 6
    assert len(payload) == 79 + 1 + 15 + 1 + 4 + 1 + 4 + 4 + 4 + 24
    meta = parse_metadata(payload)
    assert meta.plate_length == 15
    assert meta.license_plate == "부산02가1234"
    assert (meta.vehicle_type, meta.plate_type) == (1, 2)
    assert meta.confidence == pytest.approx(0.93)
    assert (meta.distance, meta.azimuth, meta.vehicle_count) == (12, 1.5, 7)
    assert (meta.width, meta.height) == (1920, 1080)
    assert (meta.x1, meta.y1, meta.x2, meta.y2) == (10, 20, 110, 60)
    assert meta.extra == {}


def test_negative_distance_is_signed() -> None:
    meta = parse_metadata(encode_metadata(replace(FULL, distance=-5), trailing=None))
    assert meta.distance == -5


def _trailing_sizes() -> list[int]:
    """Byte length of the metadata after each trailing field, for FULL."""
    return [
        len(encode_metadata(FULL, trailing=n)) for n in range(len(assumed.TCP_TRAILING_FIELDS) + 1)
    ]


@pytest.mark.parametrize("count", range(len(assumed.TCP_TRAILING_FIELDS) + 1))
def test_chunk_may_end_after_any_complete_field(count: int) -> None:
    names = [name for name, _ in assumed.TCP_TRAILING_FIELDS]
    meta = parse_metadata(encode_metadata(FULL, trailing=count))
    for index, name in enumerate(names):
        if index < count:
            assert getattr(meta, name) is not None, name
        else:
            assert getattr(meta, name) is None, name


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_partial_trailing_field_is_left_absent(cut: int) -> None:
    sizes = _trailing_sizes()
    # cut inside the confidence float (field 14, the 4th trailing field)
    payload = encode_metadata(FULL, trailing=4)[: sizes[3] + cut]
    meta = parse_metadata(payload)
    assert meta.vehicle_type == 1 and meta.confidence is None and meta.plate_type is None


def test_license_plate_cut_short_is_absent() -> None:
    payload = encode_metadata(FULL, trailing=2)[:-3]
    meta = parse_metadata(payload)
    assert meta.plate_length == 15 and meta.license_plate is None
    assert meta.plate == "부산02가1234"  # field 3 is the fallback


def test_extra_bytes_past_the_last_field_are_ignored() -> None:
    payload = encode_metadata(FULL, trailing=None) + b"\x01\x02\x03 newer firmware"
    assert parse_metadata(payload) == parse_metadata(encode_metadata(FULL, trailing=None))


def test_license_plate_field_wins_over_car_number() -> None:
    meta = replace(FULL, car_number="AB123C", license_plate="AB123CD")
    parsed = parse_metadata(encode_metadata(meta, trailing=None))
    assert parsed.plate == "AB123CD"
    empty = parse_metadata(encode_metadata(replace(meta, license_plate=""), trailing=None))
    assert empty.plate_length == 0 and empty.plate == "AB123C"


@pytest.mark.parametrize("size", [0, 1, 40, 78])
def test_short_metadata(size: int) -> None:
    with pytest.raises(CameraProtocolError) as info:
        parse_metadata(encode_metadata(BASE)[:size])
    assert info.value.kind == "short_metadata"


# --------------------------------------------------------------------------
# Chunks and images


def test_recognition_result_all_fields() -> None:
    result = parse_recognition_result(encode_recognition_data(FULL, [PLATE, SCENE]))
    assert result.metadata == parse_metadata(encode_metadata(FULL, trailing=None))
    assert result.plate_jpeg == PLATE and result.scene_jpeg == SCENE
    assert result.classified_by == "resolution"
    assert result.issues == ()


def test_recognition_result_base_flavour() -> None:
    data = encode_recognition_data(FULL, [PLATE, SCENE], flavour=Flavour.BASE)
    result = parse_recognition_result(data)
    assert result.metadata == BASE
    assert result.classified_by == "order"
    assert (result.plate_jpeg, result.scene_jpeg) == (PLATE, SCENE)


def test_scene_found_by_resolution_whatever_the_order() -> None:
    result = parse_recognition_result(encode_recognition_data(FULL, [SCENE, PLATE]))
    assert (result.plate_jpeg, result.scene_jpeg, result.classified_by) == (
        PLATE,
        SCENE,
        "resolution",
    )


@pytest.mark.parametrize(
    ("images", "resolution", "expected"),
    [
        ([], (1920, 1080), (None, None, "none")),
        ([PLATE, SCENE], None, (PLATE, SCENE, "order")),
        ([SCENE, PLATE], None, (SCENE, PLATE, "order")),  # no resolution: the note's order
        ([SCENE, PLATE], (1920, 1080), (PLATE, SCENE, "resolution")),
        ([SCENE], (1920, 1080), (None, SCENE, "resolution")),
        ([PLATE], (1920, 1080), (PLATE, None, "order")),
        ([SCENE, SCENE], (1920, 1080), (SCENE, SCENE, "order")),  # ambiguous: order
        ([b"not a jpeg", PLATE], (1920, 1080), (b"not a jpeg", PLATE, "order")),
        ([PLATE, SCENE], (640, 480), (PLATE, SCENE, "order")),
    ],
)
def test_classify_images(
    images: list[bytes], resolution: tuple[int, int] | None, expected: tuple[Any, ...]
) -> None:
    assert classify_images(images, resolution) == expected


EVIDENCE_A = b"\xff\xd8\xff\xe0 evidence camera A"
EVIDENCE_B = b"\xff\xd8\xff\xe0 evidence camera B"


@pytest.mark.parametrize(
    ("images", "extras"),
    [
        ([PLATE, SCENE], ()),
        ([SCENE, PLATE, EVIDENCE_A], (EVIDENCE_A,)),  # scene by resolution, then order
        ([PLATE, SCENE, EVIDENCE_A, EVIDENCE_B], (EVIDENCE_A, EVIDENCE_B)),
        ([EVIDENCE_A, SCENE, PLATE], (PLATE,)),  # plate = the first non-scene: the note's order
    ],
)
def test_images_beyond_plate_and_scene_are_extras_in_wire_order(
    images: list[bytes], extras: tuple[bytes, ...]
) -> None:
    result = parse_recognition_result(
        encode_recognition_data(replace(FULL, image_count=len(images)), images)
    )
    assert result.extras == extras
    assert result.scene_jpeg == SCENE


def test_extra_images_become_the_evidence_images_and_the_rest_is_counted() -> None:
    images = [PLATE, SCENE, EVIDENCE_A, EVIDENCE_B, b"\xff\xd8 fifth"]
    result = parse_recognition_result(
        encode_recognition_data(replace(FULL, image_count=len(images)), images)
    )
    event = to_plate_event(
        result, camera="gate_in", received=RECEIVED, color_table=effective_color_table({})
    )
    assert assumed.TCP_EXTRA_IMAGE_KINDS == ("evidence0", "evidence1")
    assert event.evidence0_image == Image(EVIDENCE_A)
    assert event.evidence1_image == Image(EVIDENCE_B)
    assert event.raw["extra_images"] == 1
    images_json = event.to_json_dict("lpr")["images"]
    assert images_json["evidence0"]["topic"] == "lpr/gate_in/image/evidence0"
    assert images_json["evidence1"]["bytes"] == len(EVIDENCE_B)


def test_two_images_have_no_evidence() -> None:
    result = parse_recognition_result(encode_recognition_data(FULL, [PLATE, SCENE]))
    event = to_plate_event(
        result, camera="gate_in", received=RECEIVED, color_table=effective_color_table({})
    )
    assert event.evidence0_image is None and event.evidence1_image is None
    assert "extra_images" not in event.raw


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PLATE, (480, 160)),
        (SCENE, (1920, 1080)),
        (b"", None),
        (b"\xff\xd8", None),
        (b"\xff\xd8\xff\xda\x00\x02", None),  # SOS before any SOF
        (
            b"\xff\xd8\xff\xe0\x00\x10" + b"\x00" * 14 + b"\xff\xc2\x00\x11\x08\x00\x02\x00\x03",
            (3, 2),
        ),
        (b"\xff\xd8\xff\xc0\x00\x11\x08\x01", None),  # SOF cut short
        (b"\xff\xd8\xff\xe0\x00\x00", None),  # impossible segment length
        (b"\xff\xd8\x00\x00\x00\x00", None),  # not a marker
        (PLATE[:20], None),
    ],
)
def test_jpeg_dimensions(data: bytes, expected: tuple[int, int] | None) -> None:
    assert jpeg_dimensions(data) == expected


def _chunk(chunk_id: bytes, payload: bytes, size: int | None = None) -> bytes:
    return chunk_id + struct.pack("<I", len(payload) if size is None else size) + payload


META = assumed.TCP_METADATA_CHUNK_ID
IMG = assumed.TCP_IMAGE_CHUNK_ID


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "no_metadata"),
        (b"\x11\xff\x00", "no_metadata"),
        (_chunk(IMG, PLATE), "no_metadata"),
        (_chunk(META, encode_metadata(BASE), size=500), "chunk_overflow"),
        (_chunk(META, encode_metadata(BASE)[:60]), "short_metadata"),
        (_chunk(META, encode_metadata(replace(BASE, image_count=9))), "too_many_images"),
        (
            _chunk(META, encode_metadata(replace(BASE, image_count=8)))
            + b"".join(_chunk(IMG, b"x") for _ in range(9)),
            "too_many_images",
        ),
    ],
)
def test_recognition_result_unusable(data: bytes, kind: str) -> None:
    with pytest.raises(CameraProtocolError) as info:
        parse_recognition_result(data)
    assert info.value.kind == kind


@pytest.mark.parametrize(
    ("images_blob", "count", "plate", "scene", "kinds"),
    [
        # count says 2, only one chunk present
        (_chunk(IMG, PLATE), 2, PLATE, None, ["image_count_mismatch"]),
        # count says 1, two chunks present: both kept
        (_chunk(IMG, PLATE) + _chunk(IMG, SCENE), 1, PLATE, SCENE, ["image_count_mismatch"]),
        # second chunk claims more than is left
        (
            _chunk(IMG, PLATE) + _chunk(IMG, SCENE[:1000], size=len(SCENE)),
            2,
            PLATE,
            None,
            ["chunk_overflow", "image_count_mismatch"],
        ),
        # a few stray bytes after the last chunk
        (
            _chunk(IMG, PLATE) + _chunk(IMG, SCENE) + b"\x22\xff",
            2,
            PLATE,
            SCENE,
            ["chunk_truncated"],
        ),
        # an unknown chunk between the images is skipped
        (
            _chunk(IMG, PLATE) + _chunk(b"\x33\xff\x00\x00", b"abc") + _chunk(IMG, SCENE),
            2,
            PLATE,
            SCENE,
            ["unknown_chunk"],
        ),
        (b"", 0, None, None, []),
    ],
)
def test_image_count_lying(
    images_blob: bytes, count: int, plate: bytes | None, scene: bytes | None, kinds: list[str]
) -> None:
    meta = replace(BASE, image_count=count)
    data = _chunk(META, encode_metadata(meta)) + images_blob
    result = parse_recognition_result(data)
    assert result.metadata.plate == "부산02가1234"
    assert (result.plate_jpeg, result.scene_jpeg) == (plate, scene)
    assert [issue.kind for issue in result.issues] == kinds


# --------------------------------------------------------------------------
# Framing


def test_frame_round_trip_and_offsets() -> None:
    stream = encode_login_reply(200) + recog_frame() + encode_frame(0x1234, b"xyz")
    events = decode_all([stream])
    assert [type(e) for e in events] == [Frame, Frame, UnknownCommand]
    assert [e.offset for e in events] == [
        0,
        len(encode_login_reply(200)),
        len(stream) - len(encode_frame(0x1234, b"xyz")),
    ]
    # An unknown command at a frame boundary is skipped whole: in sync, no garbage.
    assert events[2] == UnknownCommand(
        0x1234, len(encode_frame(0x1234, b"xyz")), events[2].offset, b"xyz"
    )
    assert sum(e.size for e in events if isinstance(e, Frame)) + events[2].length == len(stream)


def test_unknown_command_frame_is_skipped_whole_not_rescanned() -> None:
    # Its DATA holds what looks like a whole frame: skipped whole, that is not seen.
    inner = encode_login_reply(401)
    unknown = encode_frame(0x4242, b"ab" + inner + b"cd")
    good = encode_login_reply(200)
    events = decode_all([unknown + good])
    assert events == [
        UnknownCommand(0x4242, len(unknown), 0, (b"ab" + inner + b"cd")[:64]),
        Frame(0x8001, good[8:-2], len(unknown)),
    ]


def test_empty_data_frame() -> None:
    assert frames_of(decode_all([encode_frame(Command.LOGIN_REPLY, b"")])) == [(0x8001, b"")]


def test_need_data_until_whole_frame() -> None:
    frame = encode_login_reply(200)
    decoder = FrameDecoder()
    for byte in frame[:-1]:
        decoder.receive_data(bytes([byte]))
        assert decoder.next_event() is NEED_DATA
    decoder.receive_data(frame[-1:])
    event = decoder.next_event()
    assert isinstance(event, Frame) and event.data == b'{"result": "200"}'
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"")
    assert decoder.next_event() == EndOfStream(len(frame))
    assert decoder.next_event() == EndOfStream(len(frame))
    with pytest.raises(CodecMisuseError):
        decoder.receive_data(b"more")


def test_bad_sig_end_reports_corrupt_frame_and_resyncs() -> None:
    good = encode_login_reply(200)
    bad = good[:-2] + b"\xff\xee"
    events = decode_all([bad + good])
    assert isinstance(events[0], CorruptFrame)
    assert (events[0].offset, events[0].reason, events[0].command) == (0, "bad_sig_end", 0x8001)
    assert events[0].raw == bad
    # the rest of the broken frame (after its SIG) is skipped as garbage of its
    # region: the CorruptFrame is the one parse error, not a second "garbage"
    assert events[1] == GarbageSkipped(len(bad) - 2, 2, starts_region=False)
    assert frames_of(events[2:]) == [(0x8001, b'{"result": "200"}')]


def test_size_too_small_for_sig_end() -> None:
    bad = b"\xcc\xff\x01\x80\x01\x00\x00\x00"
    good = encode_login_reply(200)
    events = decode_all([bad + good])
    assert isinstance(events[0], CorruptFrame) and events[0].reason == "bad_data_size"
    assert frames_of(events) == [(0x8001, b'{"result": "200"}')]


def test_size_too_large_for_the_frame_recovers_the_frames_behind_it() -> None:
    # DATA_SIZE says 100 more bytes than there are: the SIG END is not where it
    # should be, and the good frames it swallowed are found again.
    good = encode_login_reply(200)
    lying = bytearray(encode_login_reply(401))
    struct.pack_into("<I", lying, 4, len(lying) - 8 + 100)
    followers = good * 10
    events = decode_all([bytes(lying) + followers])
    assert isinstance(events[0], CorruptFrame) and events[0].reason == "bad_sig_end"
    assert len(frames_of(events)) == 10


def test_truncated_frame_at_end_of_stream() -> None:
    frame = recog_frame()
    events = decode_all([frame + frame[:5000]])
    assert isinstance(events[0], Frame)
    assert isinstance(events[1], CorruptFrame) and events[1].reason == "truncated"
    assert events[1].offset == len(frame) and events[1].raw == frame[:5000]
    assert isinstance(events[2], GarbageSkipped) and not events[2].starts_region
    assert events[2].offset + events[2].count == len(frame) + 5000


@pytest.mark.parametrize("tail", [b"\xcc", b"\xcc\xff", b"\xcc\xff\x01\x80\x10"])
def test_partial_header_at_end_of_stream(tail: bytes) -> None:
    events = decode_all([encode_login_reply(200) + tail])
    assert len(frames_of(events)) == 1
    skipped = sum(e.count for e in events if isinstance(e, GarbageSkipped))
    corrupt = [e for e in events if isinstance(e, CorruptFrame)]
    assert skipped + (2 if corrupt else 0) == len(tail)


def test_oversize_data_size_is_fatal_before_buffering() -> None:
    header = b"\xcc\xff\x01\x88" + struct.pack("<I", 16 * 1024 * 1024 + 1)
    decoder = FrameDecoder()
    decoder.receive_data(encode_login_reply(200) + header + b"\x00" * 1000)
    assert isinstance(decoder.next_event(), Frame)
    broken = decoder.next_event()
    assert isinstance(broken, StreamBroken)
    assert broken.kind == "oversize_frame" and broken.offset == len(encode_login_reply(200))
    assert decoder.state is DecoderState.BROKEN
    assert decoder.buffered == 0
    decoder.receive_data(b"\x00" * 100_000)
    assert decoder.buffered == 0
    assert decoder.next_event() == broken


def test_max_data_size_is_configurable() -> None:
    frame = encode_frame(Command.RECOG_POST, b"x" * 100)
    assert frames_of(decode_all([frame], max_data_size=102)) == [(0x8801, b"x" * 100)]
    (event,) = decode_all([frame], max_data_size=101)
    assert isinstance(event, StreamBroken)


def test_oversize_header_inside_garbage_is_not_fatal() -> None:
    garbage = b"junk\xcc\xff\x01\x88\xff\xff\xff\xffmore junk"
    events = decode_all([garbage + encode_login_reply(200)])
    assert not any(isinstance(e, StreamBroken) for e in events)
    assert frames_of(events) == [(0x8001, b'{"result": "200"}')]
    assert sum(e.count for e in events if isinstance(e, GarbageSkipped)) == len(garbage)
    # one region: one event carries it, and it starts the region
    assert [e for e in events if isinstance(e, GarbageSkipped)] == [
        GarbageSkipped(len(garbage), 0, starts_region=True)
    ]


def test_unknown_command_inside_garbage_is_garbage() -> None:
    # Out of sync, a header with any command word would too often claim real
    # frames: only known commands end a garbage region.
    garbage = b"junk" + encode_frame(0x4242, b"abc")
    events = decode_all([garbage + encode_login_reply(200)])
    assert frames_of(events) == [(0x8001, b'{"result": "200"}')]
    assert not any(isinstance(e, UnknownCommand) for e in events)


def test_plausible_false_header_in_garbage_delays_but_loses_nothing() -> None:
    # CC FF + a known command + a small size, but no SIG END where it points
    false_start = b"\xcc\xff\x01\x80" + struct.pack("<I", 40)
    good = encode_login_reply(200)
    events = decode_all([b"xx" + false_start + good + good])
    assert len(frames_of(events)) == 2
    assert not any(isinstance(e, CorruptFrame) for e in events)
    assert [e for e in events if isinstance(e, GarbageSkipped)] == [
        GarbageSkipped(2 + len(false_start), 0, starts_region=True)
    ]


@pytest.mark.parametrize("command", [0x4242, Command.RECOG_POST])
def test_abandon_a_stalled_frame_recovers_the_frames_behind_it(command: int) -> None:
    # A header at a frame boundary claims 1 MiB; the good frames behind it would
    # wait for that many bytes. The caller's clock says "overdue": rescan.
    bogus = b"\xcc\xff" + struct.pack("<HI", command, 1 << 20)
    good = encode_login_reply(200)
    decoder = FrameDecoder()
    decoder.receive_data(good + bogus + good + good)
    assert isinstance(decoder.next_event(), Frame)
    assert decoder.next_event() is NEED_DATA
    assert decoder.awaiting_frame
    assert decoder.abandon_partial_frame()
    events = drain(decoder)
    assert isinstance(events[0], CorruptFrame)
    assert (events[0].reason, events[0].offset, events[0].data_size) == (
        "stalled",
        len(good),
        1 << 20,
    )
    assert events[1] == GarbageSkipped(len(bogus) - 2, len(good) + 2, starts_region=False)
    assert frames_of(events) == [(0x8001, good[8:-2])] * 2
    assert not decoder.awaiting_frame and not decoder.abandon_partial_frame()


def test_abandon_a_hunted_candidate_reports_garbage_only() -> None:
    false_start = b"\xcc\xff\x01\x80" + struct.pack("<I", 5000)
    good = encode_login_reply(200)
    decoder = FrameDecoder()
    decoder.receive_data(b"junk" + false_start + good[:-1])  # no complete frame behind
    assert decoder.next_event() == GarbageSkipped(4, 0, starts_region=True)
    assert decoder.next_event() is NEED_DATA
    assert decoder.state is DecoderState.CANDIDATE
    assert decoder.abandon_partial_frame()
    decoder.receive_data(good[-1:])
    events = drain(decoder)
    # the same region goes on: no second "garbage" parse error
    assert events[0] == GarbageSkipped(len(false_start), 4, starts_region=False)
    assert frames_of(events) == [(0x8001, good[8:-2])]


def test_a_complete_frame_behind_a_waiting_candidate_wins() -> None:
    # A false header in garbage claims far more than follows; the good frame
    # behind it is taken as soon as it is whole, without the caller's clock.
    false_start = b"\xcc\xff\x01\x88" + struct.pack("<I", 1 << 20)
    good = encode_login_reply(200)
    events = decode_all([b"junk" + false_start + b"x" * 50 + good], eof=False)
    assert events == [
        GarbageSkipped(4 + len(false_start) + 50, 0, starts_region=True),
        Frame(0x8001, good[8:-2], 4 + len(false_start) + 50),
    ]


def test_many_false_headers_claiming_megabytes_hold_no_frame_back() -> None:
    # The stall attack: every false header claims 4 MiB. Each one waited for
    # would cost the caller's stall timeout; a complete frame behind them wins.
    unit = b"\xcc\xff\x01\x88" + struct.pack("<I", 4 << 20) + b"\x00\x00"
    good = encode_login_reply(200)
    stream = b"junk" + unit * 20_000 + good
    pieces = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    events = decode_all(pieces, eof=False)
    assert frames_of(events) == [(0x8001, good[8:-2])]
    garbage = [e for e in events if isinstance(e, GarbageSkipped)]
    assert sum(e.count for e in garbage) == len(stream) - len(good)
    assert [e.starts_region for e in garbage] == [True] + [False] * (len(garbage) - 1)
    assert len(garbage) <= len(pieces)


def test_a_fake_header_every_ten_bytes_is_one_region_not_one_event_each() -> None:
    # The log-amplification stream: 1 MiB of false headers (known command,
    # DATA_SIZE 2, no SIG END). At the frame boundary the first is a corrupt
    # frame; all the rest is its region, reported in a few events.
    unit = b"\xcc\xff\x01\x88\x02\x00\x00\x00\x00\x00"
    good = encode_login_reply(200)
    hostile = unit * ((1 << 20) // len(unit))
    events = decode_all([good, hostile[: 1 << 19], hostile[1 << 19 :], good], eof=False)
    assert frames_of(events) == [(0x8001, good[8:-2])] * 2
    corrupt = [e for e in events if isinstance(e, CorruptFrame)]
    assert [(e.offset, e.reason) for e in corrupt] == [(len(good), "bad_sig_end")]
    garbage = [e for e in events if isinstance(e, GarbageSkipped)]
    assert sum(e.count for e in garbage) == len(hostile) - 2  # the SIG is the corrupt frame's
    assert not any(e.starts_region for e in garbage)
    assert len(events) <= 6


def test_nothing_to_abandon() -> None:
    decoder = FrameDecoder()
    assert not decoder.abandon_partial_frame()
    decoder.receive_data(b"\xcc")  # half a SIG: not a frame yet
    assert decoder.next_event() is NEED_DATA
    assert not decoder.awaiting_frame and not decoder.abandon_partial_frame()


def test_garbage_offsets_and_counts() -> None:
    good = encode_login_reply(200)
    stream = b"abc" + good + b"defgh" + good
    events = decode_all([stream])
    assert (
        events
        == [
            GarbageSkipped(3, 0, starts_region=True),
            Frame(0x8001, good[8:-2], 3),
            GarbageSkipped(5, 3 + len(good), starts_region=True),  # a new region after a frame
            Frame(0x8001, good[8:-2], 8 + len(good)),
        ]
    )


def test_start_in_hunting_mode_and_at_an_offset() -> None:
    good = encode_login_reply(200)
    events = decode_all(
        [b"\xcc\xff\x42\x42\xff\xff\xff\xff" + good], synced=False, start_offset=100
    )
    assert events[0] == GarbageSkipped(8, 100)
    assert isinstance(events[1], Frame) and events[1].offset == 108


def test_trailing_cc_waits_for_the_next_byte() -> None:
    good = encode_login_reply(200)
    decoder = FrameDecoder()
    decoder.receive_data(b"xyz\xcc")
    assert decoder.next_event() == GarbageSkipped(3, 0)
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(good[1:])
    event = decoder.next_event()
    assert isinstance(event, Frame) and event.offset == 3


def test_buffer_stays_bounded_while_hunting() -> None:
    decoder = FrameDecoder()
    for _ in range(100):
        decoder.receive_data(b"\x00" * 65536)
        drain(decoder)
        assert decoder.buffered <= 1


def test_recognition_frame_split_at_every_boundary() -> None:
    frame = recog_frame(FULL, (PLATE[:300], SCENE[:300]))
    stream = encode_login_reply(200) + frame
    expected = frames_of(decode_all([stream]))
    assert len(expected) == 2
    for cut in range(1, len(stream)):
        assert frames_of(decode_all([stream[:cut], stream[cut:]])) == expected


# --------------------------------------------------------------------------
# Properties

_FRAME = st.builds(
    encode_frame,
    st.sampled_from([int(c) for c in Command]),
    st.binary(max_size=200),
)
_NO_SIG = st.binary(max_size=300).filter(lambda b: b"\xcc\xff" not in b)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(_FRAME, min_size=1, max_size=6), data=st.data())
def test_any_split_decodes_to_the_same_frames(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert frames_of(decode_all(pieces)) == frames_of(decode_all([stream]))
    assert len(frames_of(decode_all(pieces))) == len(frames)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(st.tuples(_NO_SIG, _FRAME), min_size=1, max_size=6),
    data=st.data(),
)
def test_garbage_without_sig_between_frames_loses_no_frame(
    items: list[tuple[bytes, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(garbage + frame for garbage, frame in items)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=8)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    events = decode_all(pieces)
    expected = frames_of(decode_all([b"".join(frame for _, frame in items)]))
    assert frames_of(events) == expected
    assert sum(e.count for e in events if isinstance(e, GarbageSkipped)) == sum(
        len(g) for g, _ in items
    )
    assert not any(isinstance(e, CorruptFrame | StreamBroken) for e in events)


def _accounted(events: list[DecoderEvent]) -> int:
    """Stream bytes the events report: frames whole, garbage, a corrupt frame's SIG."""
    total = 0
    for event in events:
        if isinstance(event, Frame):
            total += event.size
        elif isinstance(event, GarbageSkipped):
            total += event.count
        elif isinstance(event, UnknownCommand):
            total += event.length
        elif isinstance(event, CorruptFrame):
            total += 2  # the rest of it is rescanned and reported again
    return total


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    garbage=st.lists(st.binary(max_size=200), min_size=1, max_size=5),
    frames=st.lists(_FRAME, min_size=1, max_size=5),
    splits=st.lists(st.tuples(st.integers(1, 64), st.booleans()), max_size=20),
)
def test_arbitrary_garbage_never_raises(
    garbage: list[bytes], frames: list[bytes], splits: list[tuple[int, bool]]
) -> None:
    """Any bytes, any split, the caller giving up on pending frames at any time:
    no exception, a bounded buffer, and every byte reported exactly once."""
    stream = b"".join(g + f for g, f in zip(garbage, frames, strict=False)) + garbage[-1]
    pieces, pos = [], 0
    for size, abandon in splits:
        pieces.append((stream[pos : pos + size], abandon))
        pos += size
    pieces.append((stream[pos:], False))
    decoder = FrameDecoder(max_data_size=4096)
    events: list[DecoderEvent] = []
    for piece, abandon in pieces:
        if piece:
            decoder.receive_data(piece)
        assert decoder.buffered <= 4096 + 8 + 64
        events += drain(decoder)
        if events and isinstance(events[-1], StreamBroken):
            return
        if abandon:
            decoder.abandon_partial_frame()
            events += drain(decoder)
    decoder.receive_data(b"")
    events += drain(decoder)
    assert _accounted(events) == len(stream)
    assert isinstance(decoder.next_event(), EndOfStream)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_recognition_data_never_crashes(data: bytes) -> None:
    for blob in (data, _chunk(META, data), _chunk(META, encode_metadata(BASE)) + data):
        try:
            result = parse_recognition_result(blob)
        except CameraProtocolError:
            continue
        to_plate_event(result, camera="c", received=datetime.now(UTC), color_table={})


@settings(max_examples=200)
@given(st.binary(max_size=100))
def test_arbitrary_login_reply_never_crashes(data: bytes) -> None:
    with contextlib.suppress(CameraProtocolError):
        parse_login_reply(data)


# --------------------------------------------------------------------------
# To the normalized event

RECEIVED = datetime(2018, 5, 9, 12, 11, 30, 112000, tzinfo=UTC)


def test_plate_event_from_all_fields() -> None:
    result = parse_recognition_result(encode_recognition_data(FULL, [SCENE, PLATE]))
    event = to_plate_event(
        result, camera="gate_in", received=RECEIVED, color_table=effective_color_table({})
    )
    doc = event.to_json_dict("lpr")
    assert doc["camera"] == "gate_in" and doc["source"] == "tcp"
    assert doc["time"] == "2018-05-09T12:11:30.000Z"
    assert doc["received"] == "2018-05-09T12:11:30.112Z"
    assert doc["plate"] == doc["plate_normalized"] == "부산02가1234"
    assert doc["confidence"] == 0.93
    assert doc["direction"] == "in" and doc["speed_kmh"] == 25 and doc["list"] == "white"
    assert doc["vehicle"] == {"type": "car", "color": "white", "color_code": 1, "brand": None}
    assert doc["plate_color"] == {"name": "blue", "code": 3}
    assert doc["region"] == "KR" and doc["roi"] == 1
    assert doc["box"] == {"x1": 10, "y1": 20, "x2": 110, "y2": 60}
    assert doc["resolution"] == {"width": 1920, "height": 1080}
    assert doc["device_id"] == "bb12f904-94ce-4065-89af-e83cd88f70be"
    assert doc["raw"] == {"distance": 12, "azimuth": 1.5, "vehicle_count": 7}
    assert event.plate_image == Image(PLATE) and event.scene_image == Image(SCENE)
    assert doc["images"]["plate"]["bytes"] == len(PLATE)


def test_plate_event_from_base_fields() -> None:
    result = parse_recognition_result(
        encode_recognition_data(BASE, [PLATE, SCENE], flavour=Flavour.BASE)
    )
    event = to_plate_event(result, camera="c", received=RECEIVED, color_table={7: "gray"})
    assert event.source is Source.TCP
    assert event.confidence is None and event.list is None and event.box is None
    assert event.resolution is None and event.vehicle.type is None
    assert event.vehicle.color is None and event.vehicle.color_code == 1  # not in the table
    assert event.plate_color.code == 3 and event.plate_color.name is None
    assert event.raw == {}
    assert (event.plate_image, event.scene_image) == (Image(PLATE), Image(SCENE))


def test_plate_event_with_missing_images() -> None:
    result = parse_recognition_result(encode_recognition_data(replace(BASE, image_count=0), []))
    event = to_plate_event(result, camera="c", received=RECEIVED, color_table={})
    assert event.plate_image is not None and event.plate_image.data is None
    assert event.scene_image is not None and event.scene_image.missing_reason


@pytest.mark.parametrize(
    ("direction", "plate_type", "vehicle_type", "expected", "raw"),
    [
        (0, 1, 2, (Direction.UNKNOWN, ListMembership.BLACK, "motorbike"), {}),
        (2, 3, 5, (Direction.OUT, ListMembership.VISITOR, "minibus"), {}),
        (
            9,
            0,
            77,
            (Direction.UNKNOWN, None, None),
            {"direction_code": 9, "plate_type": 0, "vehicle_type_code": 77},
        ),
    ],
)
def test_plate_event_codes(
    direction: int,
    plate_type: int,
    vehicle_type: int,
    expected: tuple[Any, ...],
    raw: dict[str, int],
) -> None:
    meta = replace(
        FULL,
        direction=direction,
        plate_type=plate_type,
        vehicle_type=vehicle_type,
        distance=None,
        azimuth=None,
        vehicle_count=None,
    )
    result = parse_recognition_result(encode_recognition_data(meta, [PLATE, SCENE], trailing=5))
    event = to_plate_event(result, camera="c", received=RECEIVED, color_table={})
    assert (event.direction, event.list, event.vehicle.type) == expected
    assert event.raw == raw


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_never_leave_the_codec(bad: float) -> None:
    # azimuth and confidence are float32 on the wire: NaN/inf become None, the
    # camera's value is kept as text under raw, and the event is valid JSON.
    meta = replace(FULL, azimuth=bad, confidence=bad)
    result = parse_recognition_result(encode_recognition_data(meta, [PLATE, SCENE]))
    assert result.metadata.azimuth is None and result.metadata.confidence is None
    event = to_plate_event(result, camera="c", received=RECEIVED, color_table={})
    doc = event.to_json_dict("lpr")
    assert doc["confidence"] is None
    assert "azimuth" not in doc["raw"]
    assert doc["raw"]["azimuth_raw"] == doc["raw"]["confidence_raw"] == str(bad)
    text = json.dumps(doc, allow_nan=False)  # raises on NaN/inf anywhere
    assert "NaN" not in text and "Infinity" not in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.93, 0.93),
        (93.0, 0.93),
        (1.0, 1.0),
        (0.0, 0.0),
        (-1.0, None),
        (float("nan"), None),
        (float("inf"), None),
        (250.0, None),
        (None, None),
    ],
)
def test_confidence(value: float | None, expected: float | None) -> None:
    assert values.confidence(value) == expected


def test_color_table_override() -> None:
    assert effective_color_table({}) is assumed.PROVISIONAL_COLOR_TABLE
    assert effective_color_table({1: "weiss"}) == {1: "weiss"}
    result = parse_recognition_result(encode_recognition_data(BASE, [PLATE, SCENE]))
    event = to_plate_event(
        result, camera="c", received=RECEIVED, color_table=effective_color_table({1: "weiss"})
    )
    assert event.vehicle.color == "weiss" and event.plate_color.name is None


# --------------------------------------------------------------------------
# TcpClient: login, then recognitions


def client_events(*chunks: bytes, eof: bool = False) -> tuple[TcpClient, list[object]]:
    client = TcpClient("admin", "1234")
    client.start()
    events: list[object] = []
    for chunk in [*chunks, *([b""] if eof else [])]:
        client.receive_data(chunk)
        while (event := client.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, EndOfStream | StreamBroken | LoginRefused | BadLoginReply):
                return client, events
    return client, events


def test_client_start_queues_the_login_request_once() -> None:
    client = TcpClient("admin", "1234")
    assert client.state is TcpClientState.IDLE
    client.start()
    # mypy narrowed `state` by the assert above; start() changed it.
    assert client.state is TcpClientState.LOGGING_IN  # type: ignore[comparison-overlap]
    assert client.data_to_send() == encode_login_request("admin", "1234")
    assert client.data_to_send() == b""
    with pytest.raises(CodecMisuseError):
        client.start()


def test_client_logs_in_then_hands_out_parsed_recognitions() -> None:
    reply = encode_login_reply(200)
    client, events = client_events(reply + recog_frame(), recog_frame()[:100])
    assert client.state is TcpClientState.LOGGED_IN and client.logged_in
    assert events[0] == LoginAccepted(0)
    (recognition,) = events[1:]
    assert isinstance(recognition, Recognition)
    assert recognition.result.metadata.plate == "부산02가1234"
    assert recognition.frame.offset == len(reply)
    assert client.awaiting_frame  # the second frame has begun
    assert client.abandon_partial_frame()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (encode_login_reply(401), LoginRefused(401, 0)),
        (encode_login_reply(500, as_number=True), LoginRefused(500, 0)),
        (
            encode_frame(Command.LOGIN_REPLY, b"[]"),
            BadLoginReply("bad_login_reply", "not a JSON object", 0),
        ),
    ],
)
def test_client_login_failures_end_the_session(reply: bytes, expected: object) -> None:
    client, events = client_events(reply + recog_frame())
    assert events == [expected]
    assert client.state is TcpClientState.LOGIN_FAILED
    assert not client.logged_in
    with pytest.raises(CodecMisuseError):
        client.next_event()


def test_client_login_refused_401_is_unauthorized() -> None:
    assert LoginRefused(401, 0).unauthorized and not LoginRefused(403, 0).unauthorized


def test_client_ignores_a_repeated_login_reply_and_skips_a_login_request() -> None:
    reply = encode_login_reply(200)
    request = encode_login_request("x", "y")
    _, events = client_events(reply + reply + request)
    assert events[1] == LoginReplyIgnored(len(reply))
    assert events[2] == UnknownCommand(
        Command.LOGIN_REQ, len(request), 2 * len(reply), request[8:-2]
    )


def test_client_reads_before_the_login_reply_are_taken() -> None:
    client, events = client_events(recog_frame())
    assert client.state is TcpClientState.LOGGING_IN
    assert [type(e) for e in events] == [Recognition]


def test_client_unreadable_recognition_keeps_the_session() -> None:
    bad = encode_frame(Command.RECOG_POST, b"short")
    client, events = client_events(encode_login_reply(200) + bad)
    assert isinstance(events[1], UnreadableRecognition)
    assert events[1].frame.data == b"short"
    assert isinstance(events[1].error, CameraProtocolError)
    assert client.logged_in


@pytest.mark.parametrize("logged_in", [False, True])
def test_client_end_of_stream_closes(logged_in: bool) -> None:
    start = encode_login_reply(200) if logged_in else b""
    client, events = client_events(start, eof=True)
    assert isinstance(events[-1], EndOfStream)
    assert client.state is TcpClientState.CLOSED
    assert isinstance(client.next_event(), EndOfStream)  # repeated, still CLOSED


def test_client_broken_stream_closes() -> None:
    client = TcpClient("admin", "1234", max_data_size=100)
    client.start()
    client.receive_data(encode_frame(Command.RECOG_POST, b"x" * 200))
    assert isinstance(client.next_event(), StreamBroken)
    assert client.state is TcpClientState.CLOSED


def test_client_every_state_is_in_the_transition_table() -> None:
    assert set(TCP_CLIENT_TRANSITIONS) == set(TcpClientState)
    reachable = {TcpClientState.IDLE}
    for table in TCP_CLIENT_TRANSITIONS.values():
        reachable |= set(table.values())
    assert reachable == set(TcpClientState)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_client_any_bytes_give_events_never_a_crash(chunks: list[bytes]) -> None:
    prefix = encode_login_reply(200)
    client, events = client_events(prefix, *[c for c in chunks if c], eof=True)
    assert client.state in (TcpClientState.CLOSED, TcpClientState.LOGGED_IN)
    assert events and events[0] == LoginAccepted(0)


def test_decoder_waiting_between_frames_holds_no_bytes() -> None:
    frame = encode_frame(Command.RECOG_POST, b"x" * 5000)
    decoder = FrameDecoder()
    decoder.receive_data(frame + frame[:100])
    first = decoder.next_event()
    assert isinstance(first, Frame) and first.data == b"x" * 5000
    assert decoder.next_event() is NEED_DATA
    assert decoder.held == 100  # only the next frame's start
    decoder.receive_data(frame[100:])
    second = decoder.next_event()
    assert isinstance(second, Frame) and second.offset == len(frame)
    assert decoder.next_event() is NEED_DATA
    assert decoder.held == 0
    assert decoder.offset == 2 * len(frame)
