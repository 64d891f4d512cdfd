"""RTP header parsing, encoding and document reassembly (plain bytes, no I/O)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.rtp import (
    NEED_DATA,
    DropReason,
    RtpDocument,
    RtpDocumentDropped,
    RtpPacket,
    RtpPacketRejected,
    RtpReassembler,
    encode_rtp_packet,
    packetize,
    parse_rtp_packet,
)
from gateway.errors import CameraProtocolError, CodecMisuseError

PT = 107
SSRC = 0x1234ABCD


def _header(
    *,
    version: int = 2,
    padding: bool = False,
    extension: bool = False,
    cc: int = 0,
    marker: bool = False,
    pt: int = PT,
    seq: int = 1,
    ts: int = 90000,
    ssrc: int = SSRC,
) -> bytes:
    first = (version << 6) | (0x20 if padding else 0) | (0x10 if extension else 0) | cc
    return struct.pack(">BBHII", first, (0x80 if marker else 0) | pt, seq, ts, ssrc)


# -- header parsing ------------------------------------------------------------

GOOD_PACKETS = [
    ("plain", _header() + b"<xml/>", RtpPacket(PT, 1, 90000, SSRC, False, b"<xml/>")),
    (
        "marker",
        _header(marker=True, seq=65535) + b"x",
        RtpPacket(PT, 65535, 90000, SSRC, True, b"x"),
    ),
    (
        "two csrcs",
        _header(cc=2) + struct.pack(">II", 7, 8) + b"abc",
        RtpPacket(PT, 1, 90000, SSRC, False, b"abc", csrcs=(7, 8)),
    ),
    (
        "extension",
        _header(extension=True) + struct.pack(">HH", 0xABAC, 1) + b"EXT!" + b"payload",
        RtpPacket(
            PT, 1, 90000, SSRC, False, b"payload", extension_profile=0xABAC, extension_data=b"EXT!"
        ),
    ),
    (
        "padding",
        _header(padding=True) + b"data" + b"\x00\x00\x03",
        RtpPacket(PT, 1, 90000, SSRC, False, b"data", padding=3),
    ),
    (
        "csrc+extension+padding",
        _header(cc=1, extension=True, padding=True, marker=True)
        + struct.pack(">I", 9)
        + struct.pack(">HH", 1, 0)
        + b"doc"
        + b"\x01",
        RtpPacket(PT, 1, 90000, SSRC, True, b"doc", csrcs=(9,), extension_profile=1, padding=1),
    ),
    ("empty payload", _header(), RtpPacket(PT, 1, 90000, SSRC, False, b"")),
]


@pytest.mark.parametrize(
    ("name", "data", "expected"), GOOD_PACKETS, ids=[g[0] for g in GOOD_PACKETS]
)
def test_parse_rtp_packet(name: str, data: bytes, expected: RtpPacket) -> None:
    assert parse_rtp_packet(data) == expected


BAD_PACKETS = [
    ("short", b"\x80\x6b\x00", "rtp_short"),
    ("version 1", _header(version=1) + b"x", "rtp_version"),
    ("version 0", _header(version=0) + b"x", "rtp_version"),
    ("csrcs cut", _header(cc=3) + b"\x00" * 8, "rtp_short"),
    ("extension header cut", _header(extension=True) + b"\x00\x01", "rtp_extension"),
    (
        "extension body cut",
        _header(extension=True) + struct.pack(">HH", 1, 4) + b"1234",
        "rtp_extension",
    ),
    ("padding zero", _header(padding=True) + b"ab\x00", "rtp_padding"),
    ("padding too long", _header(padding=True) + b"ab\x09", "rtp_padding"),
    ("padding without payload", _header(padding=True), "rtp_padding"),
]


@pytest.mark.parametrize(("name", "data", "kind"), BAD_PACKETS, ids=[b[0] for b in BAD_PACKETS])
def test_parse_rtp_packet_rejects(name: str, data: bytes, kind: str) -> None:
    with pytest.raises(CameraProtocolError) as info:
        parse_rtp_packet(data)
    assert info.value.kind == kind


def test_encode_round_trip_with_every_option() -> None:
    data = encode_rtp_packet(
        b"hello",
        ssrc=SSRC,
        sequence=70000,  # wraps
        timestamp=1 << 33,  # wraps
        payload_type=96,
        marker=True,
        csrcs=(1, 2, 3),
        extension=(0xBEDE, b"12345678"),
        padding=4,
    )
    packet = parse_rtp_packet(data)
    assert packet == RtpPacket(
        96,
        70000 % 65536,
        0,
        SSRC,
        True,
        b"hello",
        csrcs=(1, 2, 3),
        extension_profile=0xBEDE,
        extension_data=b"12345678",
        padding=4,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payload_type": 128},
        {"payload_type": 1, "csrcs": tuple(range(16))},
        {"payload_type": 1, "padding": 256},
        {"payload_type": 1, "extension": (1, b"123")},
    ],
)
def test_encode_refuses_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(CodecMisuseError):
        encode_rtp_packet(b"x", ssrc=1, sequence=1, timestamp=1, **kwargs)  # type: ignore[arg-type]


# -- packetize ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_payload", "count"),
    [(0, 1400, 1), (1, 1400, 1), (1400, 1400, 1), (1401, 1400, 2), (5000, 1000, 5), (10, 3, 4)],
)
def test_packetize_splits_and_marks_last(size: int, max_payload: int, count: int) -> None:
    document = bytes(range(256)) * (size // 256 + 1)
    document = document[:size]
    packets = [parse_rtp_packet(p) for p in packetize(document, SSRC, 65534, 42, PT, max_payload)]
    assert len(packets) == count
    assert [p.marker for p in packets] == [False] * (count - 1) + [True]
    assert [p.sequence for p in packets] == [(65534 + i) % 65536 for i in range(count)]
    assert {p.timestamp for p in packets} == {42}
    assert all(len(p.payload) <= max_payload for p in packets)
    assert b"".join(p.payload for p in packets) == document


# -- reassembly -------------------------------------------------------------------------


def _docs(events: list[object]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, RtpDocument)]


def _drain(reassembler: RtpReassembler) -> list[object]:
    events: list[object] = []
    while (event := reassembler.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def _feed_all(reassembler: RtpReassembler, packets: list[bytes]) -> list[object]:
    events: list[object] = []
    for packet in packets:
        reassembler.receive_data(packet)
        events.extend(_drain(reassembler))
    return events


def _stream(documents: list[bytes], max_payload: int = 10, seq: int = 100) -> list[bytes]:
    packets: list[bytes] = []
    for index, document in enumerate(documents):
        chunk = packetize(document, SSRC, seq, index * 3000, PT, max_payload)
        seq += len(chunk)
        packets.extend(chunk)
    return packets


DOCS = [b"<doc one>" * 3, b"<doc two>" * 4, b"<doc three>" * 4]


def test_marker_ends_each_document() -> None:
    r = RtpReassembler(payload_type=PT)
    assert _docs(_feed_all(r, _stream(DOCS))) == DOCS
    assert r.counters.documents == 3


def test_lost_packet_drops_only_the_damaged_document() -> None:
    packets = _stream(DOCS)
    first_len = len(packetize(DOCS[0], SSRC, 0, 0, PT, 10))
    del packets[first_len + 1]  # a middle packet of the second document
    r = RtpReassembler()
    events = _feed_all(r, packets)
    assert _docs(events) == [DOCS[0], DOCS[2]]
    dropped = [e for e in events if isinstance(e, RtpDocumentDropped)]
    assert [d.reason for d in dropped] == [DropReason.LOSS]
    assert r.counters.dropped_loss == 1


def test_lost_marker_packet_drops_both_halves_it_joins() -> None:
    # The marker of doc 1 is lost: doc 1's tail and the unknown start of doc 2
    # cannot be told apart, so everything up to doc 2's marker goes; doc 3 survives.
    packets = _stream(DOCS)
    first_len = len(packetize(DOCS[0], SSRC, 0, 0, PT, 10))
    del packets[first_len - 1]
    r = RtpReassembler()
    events = _feed_all(r, packets)
    assert _docs(events) == [DOCS[2]]
    assert r.counters.dropped_loss == 1


def test_reordering_is_a_loss_without_a_window() -> None:
    packets = _stream(DOCS)
    packets[1], packets[2] = packets[2], packets[1]  # inside doc 1
    r = RtpReassembler()
    events = _feed_all(r, packets)
    assert _docs(events) == DOCS[1:]
    assert r.counters.dropped_loss == 1
    assert r.counters.packets_late == 1


def test_reordering_within_the_window_is_repaired() -> None:
    packets = _stream(DOCS)
    packets[1], packets[3] = packets[3], packets[1]
    r = RtpReassembler(reorder_window=4)
    assert _docs(_feed_all(r, packets)) == DOCS
    assert r.counters.dropped_loss == 0


def test_duplicate_packet_is_ignored() -> None:
    packets = _stream(DOCS)
    packets.insert(2, packets[1])
    r = RtpReassembler()
    assert _docs(_feed_all(r, packets)) == DOCS
    assert r.counters.packets_late == 1


def test_oversize_document_is_skipped_without_buffering() -> None:
    big = b"B" * 5000
    r = RtpReassembler(max_document_bytes=1000)
    events = _feed_all(r, _stream([DOCS[0], big, DOCS[1]], max_payload=100))
    assert _docs(events) == [DOCS[0], DOCS[1]]
    assert r.counters.dropped_oversize == 1
    dropped = [e for e in events if isinstance(e, RtpDocumentDropped)]
    assert [d.reason for d in dropped] == [DropReason.OVERSIZE]
    # Only what fitted under the limit was ever held.
    state = r._sources[SSRC]
    assert state.size == 0 and not state.parts


def test_sources_are_tracked_separately() -> None:
    a = packetize(b"AAAA" * 10, 1, 10, 0, PT, 8)
    b = packetize(b"BBBB" * 10, 2, 5000, 0, PT, 8)
    interleaved = [p for pair in zip(a, b, strict=True) for p in pair]
    r = RtpReassembler()
    assert sorted(_docs(_feed_all(r, interleaved))) == [b"AAAA" * 10, b"BBBB" * 10]


def test_sequence_wraps_around() -> None:
    r = RtpReassembler()
    packets = _stream(DOCS, seq=65530)
    assert _docs(_feed_all(r, packets)) == DOCS
    assert r.counters.dropped_loss == 0


def test_bad_packets_and_other_payload_types_are_rejected_not_raised() -> None:
    r = RtpReassembler(payload_type=PT)
    other = packetize(b"video", SSRC, 1, 0, 96)
    events = _feed_all(r, [b"\x00" * 3, other[0], *_stream(DOCS[:1])])
    assert [type(e) for e in events] == [RtpPacketRejected, RtpPacketRejected, RtpDocument]
    assert r.counters.packets_rejected == 2


def test_next_event_needs_data_until_a_packet_completes_something() -> None:
    r = RtpReassembler(payload_type=PT)
    assert r.next_event() is NEED_DATA
    first, *rest = _stream(DOCS[:1])
    r.receive_data(first)
    assert r.next_event() is NEED_DATA  # half a document
    for packet in rest:
        r.receive_data(packet)
    [document] = _drain(r)
    assert isinstance(document, RtpDocument) and document.data == DOCS[0]
    assert r.next_event() is NEED_DATA


def test_events_wait_until_drained_in_order() -> None:
    r = RtpReassembler(payload_type=PT)
    for packet in [b"\x00", *_stream(DOCS)]:
        r.receive_data(packet)
    events = _drain(r)
    assert isinstance(events[0], RtpPacketRejected)
    assert _docs(events) == DOCS


# -- properties ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    r = RtpReassembler(max_document_bytes=64)
    r.receive_data(data)
    for event in _drain(r):
        assert isinstance(event, RtpDocument | RtpDocumentDropped | RtpPacketRejected)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=6),
    st.integers(1, 64),
    st.integers(0, 65535),
    st.sets(st.integers(0, 40)),
)
def test_loss_never_corrupts_a_delivered_document(
    documents: list[bytes], max_payload: int, seq: int, lost: set[int]
) -> None:
    packets = _stream(documents, max_payload=max_payload, seq=seq)
    kept = [p for i, p in enumerate(packets) if i not in lost]
    reassembler = RtpReassembler()
    reassembler.expect_first_sequence(seq)
    delivered = _docs(_feed_all(reassembler, kept))
    # Every delivered document is one that was sent, whole; with no loss, all of them.
    assert all(d in documents for d in delivered)
    if not lost.intersection(range(len(packets))):
        assert delivered == documents


def test_first_sequence_hint_detects_a_lost_first_packet() -> None:
    packets = _stream(DOCS)
    without = RtpReassembler()
    assert len(_docs(_feed_all(without, packets[1:]))) == 3  # a truncated first document
    with_hint = RtpReassembler()
    with_hint.expect_first_sequence(100)
    assert _docs(_feed_all(with_hint, packets[1:])) == DOCS[1:]
    assert with_hint.counters.dropped_loss == 1
