"""RTSP messages: the reader, the encoders and header values (codecs/rtsp_messages.py)."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import rtp
from gateway.codecs.rtp import RtpDocument, RtpReassembler, packetize
from gateway.codecs.rtsp_messages import (
    CLOSED,
    NEED_DATA,
    InterleavedFrame,
    RtspReader,
    RtspRequest,
    RtspResponse,
    SessionHeader,
    encode_interleaved,
    encode_request,
    encode_response,
    parse_public,
    parse_rtp_info_sequence,
    parse_session,
    parse_transport,
)
from gateway.errors import CameraProtocolError, CodecMisuseError
from tests.rtsp_samples import HOSTILE_NUMBERS

# -- reader ---------------------------------------------------------------------


def drain(reader: RtspReader) -> list[object]:
    events: list[object] = []
    while True:
        event = reader.next_event()
        if event is NEED_DATA or event is CLOSED:
            return events
        events.append(event)


def read_all(chunks: list[bytes], eof: bool = True) -> list[object]:
    reader = RtspReader()
    events: list[object] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        events.extend(drain(reader))
    if eof:
        reader.receive_data(b"")
        events.extend(drain(reader))
        assert reader.next_event() is CLOSED
    return events


OK_OPTIONS = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nPublic: OPTIONS, DESCRIBE, SETUP, PLAY\r\n\r\n"
SDP_BODY = b"v=0\r\nm=application 0 RTP/AVP 107\r\na=rtpmap:107 vnd.onvif.metadata/90000\r\n"
DESCRIBE_REPLY = (
    b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP_BODY)).encode() + b"\r\n\r\n" + SDP_BODY
)
FRAME = encode_interleaved(0, b"\x80\xeb\x00\x01rtp-payload")
RTCP = encode_interleaved(1, b"rtcp")

READER_CASES = [
    (
        "one response",
        OK_OPTIONS,
        [("response", 200, "OK", b"")],
    ),
    (
        "response with body",
        DESCRIBE_REPLY,
        [("response", 200, "OK", SDP_BODY)],
    ),
    (
        "two responses in one read",
        OK_OPTIONS + DESCRIBE_REPLY,
        [("response", 200, "OK", b""), ("response", 200, "OK", SDP_BODY)],
    ),
    (
        "frames between responses",
        FRAME + OK_OPTIONS + FRAME + RTCP + DESCRIBE_REPLY + FRAME,
        [
            ("frame", 0, b"\x80\xeb\x00\x01rtp-payload"),
            ("response", 200, "OK", b""),
            ("frame", 0, b"\x80\xeb\x00\x01rtp-payload"),
            ("frame", 1, b"rtcp"),
            ("response", 200, "OK", SDP_BODY),
            ("frame", 0, b"\x80\xeb\x00\x01rtp-payload"),
        ],
    ),
    (
        "empty frame and max-size frame",
        encode_interleaved(3, b"") + encode_interleaved(0, b"z" * 65535),
        [("frame", 3, b""), ("frame", 0, b"z" * 65535)],
    ),
    (
        "blank lines between messages",
        OK_OPTIONS + b"\r\n\r\n" + OK_OPTIONS,
        [("response", 200, "OK", b""), ("response", 200, "OK", b"")],
    ),
    (
        "bare LF line ends",
        b'RTSP/1.0 401 Unauthorized\nCSeq: 3\nWWW-Authenticate: Basic realm="x"\n\n',
        [("response", 401, "Unauthorized", b"")],
    ),
    (
        "reason with spaces, no reason",
        b"RTSP/1.0 454 Session Not Found\r\nCSeq: 4\r\n\r\nRTSP/1.0 200\r\nCSeq: 5\r\n\r\n",
        [("response", 454, "Session Not Found", b""), ("response", 200, "", b"")],
    ),
    (
        "server request",
        b"OPTIONS * RTSP/1.0\r\nCSeq: 9\r\n\r\n",
        [("request", "OPTIONS", "*", b"")],
    ),
]


def summarize(event: object) -> tuple[object, ...]:
    if isinstance(event, RtspResponse):
        return ("response", event.status, event.reason, event.body)
    if isinstance(event, RtspRequest):
        return ("request", event.method, event.uri, event.body)
    assert isinstance(event, InterleavedFrame)
    return ("frame", event.channel, event.payload)


@pytest.mark.parametrize(
    ("name", "stream", "expected"), READER_CASES, ids=[c[0] for c in READER_CASES]
)
def test_reader_whole_and_byte_by_byte(name: str, stream: bytes, expected: list[object]) -> None:
    assert [summarize(e) for e in read_all([stream])] == expected
    one_by_one = [stream[i : i + 1] for i in range(len(stream))] if len(stream) < 5000 else []
    if one_by_one:
        assert [summarize(e) for e in read_all(one_by_one)] == expected


def test_headers_case_insensitive_repeated_and_folded() -> None:
    stream = (
        b"RTSP/1.0 401 Unauthorized\r\ncseq: 7\r\n"
        b'WWW-Authenticate: Digest realm="r",\r\n  nonce="n"\r\n'
        b'www-authenticate: Basic realm="r"\r\n\r\n'
    )
    (response,) = read_all([stream])
    assert isinstance(response, RtspResponse)
    assert response.cseq == 7
    assert response.headers.get_all("WWW-Authenticate") == [
        'Digest realm="r", nonce="n"',
        'Basic realm="r"',
    ]
    assert "CSEQ" in response.headers and "Session" not in response.headers


READER_ERRORS = [
    ("garbage byte", b"\x00\x01\x02", "rtsp_garbage"),
    ("html", b"<html>", "rtsp_garbage"),
    ("http status", b"HTTP/1.1 200 OK\r\n\r\n", "rtsp_start_line"),
    ("rtsp 2.0", b"RTSP/2.0 200 OK\r\n\r\n", "rtsp_status_line"),
    ("bad status", b"RTSP/1.0 2xx OK\r\n\r\n", "rtsp_status_line"),
    ("bad start line early", b"hello world\r\n", "rtsp_start_line"),
    ("bad header", b"RTSP/1.0 200 OK\r\nno colon here\r\n\r\n", "rtsp_header"),
    ("bad length", b"RTSP/1.0 200 OK\r\nContent-Length: ten\r\n\r\n", "rtsp_content_length"),
    ("negative length", b"RTSP/1.0 200 OK\r\nContent-Length: -1\r\n\r\n", "rtsp_content_length"),
    ("underscore length", b"RTSP/1.0 200 OK\r\nContent-Length: 1_0\r\n\r\n", "rtsp_content_length"),
    ("huge body", b"RTSP/1.0 200 OK\r\nContent-Length: 99999999\r\n\r\n", "rtsp_body_too_large"),
    ("endless headers", b"RTSP/1.0 200 OK\r\n" + b"X-A: b\r\n" * 3000, "rtsp_header_too_large"),
    ("eof in headers", b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n", "rtsp_truncated"),
    ("eof in body", b"RTSP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nab", "rtsp_truncated"),
    ("eof in frame", b"$\x00\x00\x10abc", "rtsp_truncated"),
]


@pytest.mark.parametrize(
    ("name", "stream", "kind"), READER_ERRORS, ids=[c[0] for c in READER_ERRORS]
)
def test_reader_errors(name: str, stream: bytes, kind: str) -> None:
    with pytest.raises(CameraProtocolError) as info:
        read_all([stream])
    assert info.value.kind == kind


def test_reader_stays_failed_and_buffer_is_bounded() -> None:
    reader = RtspReader(max_header_bytes=100)
    reader.receive_data(b"RTSP/1.0 200 OK\r\n" + b"X" * 200)
    with pytest.raises(CameraProtocolError):
        reader.next_event()
    with pytest.raises(CameraProtocolError):
        reader.next_event()


def test_reader_waits_for_a_body_without_rescanning_forever() -> None:
    reader = RtspReader()
    reader.receive_data(b"RTSP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(99):
        reader.receive_data(b"x" * 10)
        assert reader.next_event() is NEED_DATA
    reader.receive_data(b"x" * 10 + OK_OPTIONS)
    first = reader.next_event()
    assert isinstance(first, RtspResponse) and len(first.body) == 1000
    assert isinstance(reader.next_event(), RtspResponse)
    assert reader.buffered == 0


STREAM = FRAME + OK_OPTIONS + FRAME + RTCP + DESCRIBE_REPLY + FRAME + encode_interleaved(0, b"")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_any_split_yields_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in itertools.pairwise([0, *points, len(STREAM)])]
    expected = [summarize(e) for e in read_all([STREAM])]
    assert [summarize(e) for e in read_all([c for c in chunks if c])] == expected


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.binary(max_size=3000), min_size=1, max_size=5),
    st.integers(1, 1400),
    st.data(),
)
def test_any_split_of_an_interleaved_stream_yields_the_same_documents(
    documents: list[bytes], max_payload: int, data: st.DataObject
) -> None:
    stream = bytearray(OK_OPTIONS)
    seq = 500
    for index, document in enumerate(documents):
        for packet in packetize(document, 7, seq, index, 107, max_payload):
            stream += encode_interleaved(0, packet)
            seq += 1
        stream += encode_interleaved(1, b"rtcp") + OK_OPTIONS
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=20))))
    reader = RtspReader()
    reassembler = RtpReassembler(payload_type=107)
    got: list[bytes] = []
    responses = 0
    for a, b in itertools.pairwise([0, *cuts, len(stream)]):
        if b > a:  # an empty chunk would mean end of stream
            reader.receive_data(bytes(stream[a:b]))
        for event in drain(reader):
            if isinstance(event, InterleavedFrame) and event.channel == 0:
                reassembler.receive_data(event.payload)
                while (done := reassembler.next_event()) is not rtp.NEED_DATA:
                    if isinstance(done, RtpDocument):
                        got.append(done.data)
            elif isinstance(event, RtspResponse):
                responses += 1
    assert got == documents
    assert responses == len(documents) + 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(CameraProtocolError):
        read_all([data])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_after_good_messages_keeps_them(data: bytes) -> None:
    reader = RtspReader()
    reader.receive_data(OK_OPTIONS + FRAME + data)
    first, second = reader.next_event(), reader.next_event()
    assert isinstance(first, RtspResponse) and isinstance(second, InterleavedFrame)


# -- encoder ------------------------------------------------------------------------


def test_encode_request() -> None:
    data = encode_request(
        "SETUP",
        "rtsp://cam/main/trackID=3",
        4,
        [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
    )
    assert data == (
        b"SETUP rtsp://cam/main/trackID=3 RTSP/1.0\r\nCSeq: 4\r\n"
        b"Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
    )
    with_body = encode_request("SET_PARAMETER", "rtsp://cam/", 5, body=b"a: b\r\n")
    assert with_body.endswith(b"Content-Length: 6\r\n\r\na: b\r\n")


@pytest.mark.parametrize(
    ("method", "uri", "headers"),
    [
        ("OPTIONS", "rtsp://cam/\r\nX: y", []),
        ("OPTIONS", "rtsp://cam/", [("X", "a\r\nInjected: 1")]),
        ("OP TIONS", "rtsp://cam/", []),
    ],
)
def test_encode_request_refuses_injection(
    method: str, uri: str, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(CodecMisuseError):
        encode_request(method, uri, 1, headers)


def test_encode_round_trips_through_reader() -> None:
    response = encode_response(200, "OK", 3, [("Session", "abc;timeout=30")], b"body")
    request = encode_request("PLAY", "rtsp://cam/", 4, [("Session", "abc")])
    reader = RtspReader()
    reader.receive_data(response + request)
    got_response, got_request = reader.next_event(), reader.next_event()
    assert isinstance(got_response, RtspResponse) and got_response.body == b"body"
    assert got_response.headers.get("Session") == "abc;timeout=30"
    assert isinstance(got_request, RtspRequest) and got_request.cseq == 4
    with pytest.raises(CodecMisuseError):
        encode_interleaved(0, b"x" * 65536)


# -- header values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12345678", SessionHeader("12345678", None)),
        ("12345678;timeout=60", SessionHeader("12345678", 60)),
        ("ABC ; Timeout = 5", SessionHeader("ABC", 5)),
        ("xyz;timeout=0", SessionHeader("xyz", None)),
    ],
)
def test_parse_session(value: str, expected: SessionHeader) -> None:
    assert parse_session(value) == expected


@pytest.mark.parametrize("value", ["", ";timeout=5", "abc;timeout=soon"])
def test_parse_session_errors(value: str) -> None:
    with pytest.raises(CameraProtocolError):
        parse_session(value)


def test_session_default_timeout() -> None:
    assert SessionHeader("a").effective_timeout == 60
    assert SessionHeader("a", 15).effective_timeout == 15


@pytest.mark.parametrize(
    ("value", "interleaved"),
    [
        ("RTP/AVP/TCP;unicast;interleaved=0-1", (0, 1)),
        ("RTP/AVP/TCP;unicast;interleaved=4-5;ssrc=1234ABCD;mode=play", (4, 5)),
        ("RTP/AVP/TCP;interleaved=6", (6, 7)),
        ("RTP/AVP;unicast;client_port=5000-5001", None),
        ("RTP/AVP/TCP;interleaved=x-y", None),
    ],
)
def test_parse_transport(value: str, interleaved: tuple[int, int] | None) -> None:
    assert parse_transport(value).interleaved == interleaved


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("url=rtsp://cam/main/trackID=3;seq=17;rtptime=99", 17),
        ("url=trackID=3;seq=70000", 70000 % 65536),
        ("url=rtsp://cam/main/trackID=1;seq=5, url=rtsp://cam/main/trackID=3;seq=6", 6),
        ("url=rtsp://cam/main/trackID=1;seq=5, url=rtsp://cam/main/trackID=2;seq=6", None),
        ("url=rtsp://cam/main/trackID=3;rtptime=5", None),
    ],
)
def test_parse_rtp_info_sequence(value: str | None, expected: int | None) -> None:
    assert parse_rtp_info_sequence(value, "rtsp://cam/main/trackID=3") == expected


# What isdigit() or int() would take, or choke on with a bare ValueError.


@pytest.mark.parametrize("seq", HOSTILE_NUMBERS)
def test_parse_rtp_info_sequence_refuses_hostile_numbers(seq: str) -> None:
    with pytest.raises(CameraProtocolError) as info:
        parse_rtp_info_sequence(f"url=rtsp://cam/main/trackID=3;seq={seq}", "x")
    assert info.value.kind == "rtsp_rtp_info"


@pytest.mark.parametrize("bad", HOSTILE_NUMBERS)
def test_session_timeout_and_interleaved_refuse_hostile_numbers(bad: str) -> None:
    with pytest.raises(CameraProtocolError) as info:
        parse_session(f"abc;timeout={bad}")
    assert info.value.kind == "rtsp_session"
    assert parse_transport(f"RTP/AVP/TCP;interleaved={bad}").interleaved is None
    assert parse_transport(f"RTP/AVP/TCP;interleaved=0-{bad}").interleaved is None


@pytest.mark.parametrize("bad", HOSTILE_NUMBERS)
def test_content_length_and_cseq_refuse_hostile_numbers(bad: str) -> None:
    stream = f"RTSP/1.0 200 OK\r\nCSeq: 1\r\nContent-Length: {bad}\r\n\r\n".encode()
    reader = RtspReader()
    reader.receive_data(stream)
    with pytest.raises(CameraProtocolError) as info:
        reader.next_event()
    assert info.value.kind == "rtsp_content_length"
    # A CSeq that is not ASCII digits is no CSeq for the property ...
    reader = RtspReader()
    reader.receive_data(f"RTSP/1.0 200 OK\r\nCSeq: {bad}\r\n\r\n".encode())
    response = reader.next_event()
    assert isinstance(response, RtspResponse) and response.cseq is None


def test_parse_public() -> None:
    assert parse_public("OPTIONS, DESCRIBE,get_parameter ,") == {
        "OPTIONS",
        "DESCRIBE",
        "GET_PARAMETER",
    }
    assert parse_public(None) == frozenset()
