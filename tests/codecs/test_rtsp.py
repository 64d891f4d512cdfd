"""RTSP client codec: message reader, encoder, SDP, headers, authentication, client machine."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.rtp import RtpDocument, RtpReassembler, packetize
from gateway.codecs.rtsp import (
    CLIENT_TRANSITIONS,
    CLOSED,
    NEED_DATA,
    AuthChallenge,
    AuthenticationFailed,
    Authenticator,
    AuthVerdict,
    ClientState,
    Headers,
    InterleavedFrame,
    KeepAliveAcknowledged,
    MetadataPacket,
    RequestFailed,
    RtspClient,
    RtspReader,
    RtspRequest,
    RtspResponse,
    SessionHeader,
    SessionStarted,
    Signal,
    TeardownComplete,
    Trigger,
    basic_authorization,
    choose_challenge,
    digest_authorization,
    encode_interleaved,
    encode_request,
    encode_response,
    find_metadata_track,
    parse_public,
    parse_rtp_info_sequence,
    parse_sdp,
    parse_session,
    parse_transport,
    parse_www_authenticate,
    resolve_control,
    split_url_credentials,
)
from gateway.errors import CameraProtocolError

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
                got += [
                    d.data for d in reassembler.feed(event.payload) if isinstance(d, RtpDocument)
                ]
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
    with pytest.raises(ValueError):
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
    with pytest.raises(ValueError):
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
HOSTILE_NUMBERS = ["x", "\u00b2", "\uff15", "\u0665", "-0x1", "-1", "+5", "1_0", "9" * 5000]


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


# -- SDP --------------------------------------------------------------------------------------

SDP_CAMERA = b"""v=0\r
o=- 1 1 IN IP4 192.168.1.52\r
s=Media Presentation\r
c=IN IP4 0.0.0.0\r
t=0 0\r
a=control:*\r
m=video 0 RTP/AVP 96\r
a=rtpmap:96 H264/90000\r
a=control:trackID=1\r
m=audio 0 RTP/AVP 0\r
a=rtpmap:0 PCMU/8000\r
a=control:trackID=2\r
m=application 0 RTP/AVP 107\r
a=rtpmap:107 vnd.onvif.metadata/90000\r
a=control:trackID=3\r
"""

SDP_CASES = [
    ("relative to request URL", SDP_CAMERA, "rtsp://cam:554/main", "rtsp://cam:554/main/trackID=3"),
    ("relative to base with slash", SDP_CAMERA, "rtsp://cam/main/", "rtsp://cam/main/trackID=3"),
    (
        "absolute control",
        SDP_CAMERA.replace(b"a=control:trackID=3", b"a=control:rtsp://10.0.0.9/meta"),
        "rtsp://cam/main",
        "rtsp://10.0.0.9/meta",
    ),
    (
        "session-level absolute control is the base",
        SDP_CAMERA.replace(b"a=control:*", b"a=control:rtsp://cam/agg/"),
        "rtsp://cam/main",
        "rtsp://cam/agg/trackID=3",
    ),
    (
        "upper case encoding, other pt, LF only",
        SDP_CAMERA.replace(b"\r\n", b"\n")
        .replace(b"107", b"98")
        .replace(b"vnd.onvif.metadata", b"VND.ONVIF.METADATA"),
        "rtsp://cam/main",
        "rtsp://cam/main/trackID=3",
    ),
    (
        "no control: the base itself",
        SDP_CAMERA.replace(b"a=control:trackID=3\r\n", b""),
        "rtsp://cam/main",
        "rtsp://cam/main",
    ),
    (
        "two application media, metadata second",
        SDP_CAMERA.replace(
            b"m=application 0 RTP/AVP 107",
            b"m=application 0 RTP/AVP 99\r\na=rtpmap:99 x-private/1000\r\n"
            b"m=application 0 RTP/AVP 107",
        ),
        "rtsp://cam/main",
        "rtsp://cam/main/trackID=3",
    ),
]


@pytest.mark.parametrize(
    ("name", "sdp", "base", "control"), SDP_CASES, ids=[c[0] for c in SDP_CASES]
)
def test_find_metadata_track(name: str, sdp: bytes, base: str, control: str) -> None:
    track = find_metadata_track(parse_sdp(sdp), base)
    assert track.control_url == control
    assert track.encoding.lower() == "vnd.onvif.metadata"
    assert track.clock_rate == 90000


@pytest.mark.parametrize(
    "sdp",
    [
        b"v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n",
        b"v=0\r\nm=application 0 RTP/AVP 107\r\n",  # no rtpmap
        b"v=0\r\nm=video 0 RTP/AVP 107\r\na=rtpmap:107 vnd.onvif.metadata/90000\r\n",
        b"",
        b"\xff\xfe garbage \x00\nm=\nm=application x\n",
    ],
)
def test_no_metadata_track_is_a_clear_error(sdp: bytes) -> None:
    with pytest.raises(CameraProtocolError) as info:
        find_metadata_track(parse_sdp(sdp), "rtsp://cam/main")
    assert info.value.kind == "rtsp_no_metadata_track"
    assert "vnd.onvif.metadata" in info.value.detail


@pytest.mark.parametrize(
    ("control", "base", "expected"),
    [
        ("trackID=1", "rtsp://h/a", "rtsp://h/a/trackID=1"),
        ("trackID=1", "rtsp://h/a/", "rtsp://h/a/trackID=1"),
        ("/trackID=1", "rtsp://h/a/", "rtsp://h/a/trackID=1"),
        ("*", "rtsp://h/a", "rtsp://h/a"),
        (None, "rtsp://h/a", "rtsp://h/a"),
        ("RTSP://other/x", "rtsp://h/a", "RTSP://other/x"),
    ],
)
def test_resolve_control(control: str | None, base: str, expected: str) -> None:
    assert resolve_control(control, base) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_sdp_random_bytes(data: bytes) -> None:
    try:
        find_metadata_track(parse_sdp(data), "rtsp://cam/")
    except CameraProtocolError as exc:
        assert exc.kind == "rtsp_no_metadata_track"


# -- authentication ---------------------------------------------------------------------------

RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)


def test_digest_rfc2617_worked_example() -> None:
    (challenge,) = parse_www_authenticate([RFC2617_CHALLENGE])
    value = digest_authorization(
        challenge,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="0a4f113b",
        nonce_count=1,
    )
    assert value == (
        'Digest username="Mufasa", realm="testrealm@host.com", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", '
        'qop=auth, nc=00000001, cnonce="0a4f113b", '
        'response="6629fae49393a05397450978507c4ef1", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )


def test_digest_without_qop() -> None:
    challenge = AuthChallenge(
        "digest", {"realm": "testrealm@host.com", "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093"}
    )
    value = digest_authorization(
        challenge,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="unused",
    )
    assert 'response="670fd8c2df070c60b045671b8b24ff02"' in value
    assert "qop" not in value and "cnonce" not in value and "nc=" not in value


def test_basic() -> None:
    # RFC 7617 section 2's example.
    assert basic_authorization("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (['Basic realm="cam"'], [("basic", {"realm": "cam"})]),
        (
            ['Digest realm="a b", nonce="n,1", stale=TRUE, algorithm=MD5'],
            [("digest", {"realm": "a b", "nonce": "n,1", "stale": "TRUE", "algorithm": "MD5"})],
        ),
        (
            ['Basic realm="x", Digest realm="y", nonce="z"'],
            [("basic", {"realm": "x"}), ("digest", {"realm": "y", "nonce": "z"})],
        ),
        (
            ['Digest realm="y", nonce="z"', 'Basic realm="x"'],
            [("digest", {"realm": "y", "nonce": "z"}), ("basic", {"realm": "x"})],
        ),
        (['Digest realm="q\\"uote", nonce=abc'], [("digest", {"realm": 'q"uote', "nonce": "abc"})]),
        (["Negotiate abc123==, Basic realm=r"], [("negotiate", {}), ("basic", {"realm": "r"})]),
        ([""], []),
    ],
)
def test_parse_www_authenticate(
    values: list[str], expected: list[tuple[str, dict[str, str]]]
) -> None:
    got = parse_www_authenticate(values)
    assert [(c.scheme, dict(c.params)) for c in got] == expected


def test_choose_challenge_prefers_digest_and_skips_unsupported() -> None:
    challenges = parse_www_authenticate(
        [
            'Basic realm="x"',
            'Digest realm="y", nonce="n"',
            'Digest realm="z", nonce="n", qop="auth-int"',
        ]
    )
    chosen = choose_challenge(challenges)
    assert chosen is not None and chosen.scheme == "digest" and chosen.realm == "y"
    assert choose_challenge(parse_www_authenticate(['Digest realm="y", algorithm=XYZ'])) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parse_www_authenticate_never_raises(value: str) -> None:
    choose_challenge(parse_www_authenticate([value]))


def test_authenticator_verdicts() -> None:
    counter = itertools.count(1)
    auth = Authenticator("admin", "secret", lambda: f"c{next(counter)}")
    assert auth.authorization("DESCRIBE", "rtsp://cam/") is None
    digest = 'Digest realm="cam", nonce="n1", qop="auth"'
    assert auth.on_unauthorized([digest]) is AuthVerdict.RETRY
    first = auth.authorization("DESCRIBE", "rtsp://cam/")
    second = auth.authorization("SETUP", "rtsp://cam/t")
    assert first is not None and "nc=00000001" in first and 'cnonce="c1"' in first
    assert second is not None and "nc=00000002" in second
    # Refused after our answer: a configuration problem.
    assert auth.on_unauthorized([digest], first) is AuthVerdict.REJECTED
    # A stale nonce earns exactly one retry until a success.
    stale = 'Digest realm="cam", nonce="n2", qop="auth", stale=true'
    assert auth.on_unauthorized([stale], second) is AuthVerdict.RETRY
    third = auth.authorization("PLAY", "rtsp://cam/")
    assert third is not None and "nc=00000001" in third and 'nonce="n2"' in third
    # A concurrent request answered with the replaced nonce n1 may simply retry.
    assert auth.on_unauthorized([stale], first) is AuthVerdict.RETRY
    assert auth.on_unauthorized([stale], third) is AuthVerdict.REJECTED
    auth.on_success()
    assert auth.on_unauthorized([stale.replace("n2", "n3")], third) is AuthVerdict.RETRY
    # A request that carried no credentials (sent before the first challenge) retries.
    assert auth.on_unauthorized([digest], None) is AuthVerdict.RETRY


def test_authenticator_without_credentials_or_support() -> None:
    assert Authenticator(None, None, str).on_unauthorized(['Basic realm="x"']) is (
        AuthVerdict.NO_CREDENTIALS
    )
    auth = Authenticator("u", "p", str)
    assert auth.on_unauthorized(["Bearer realm=x"]) is AuthVerdict.UNSUPPORTED
    assert auth.on_unauthorized(['Basic realm="x"']) is AuthVerdict.RETRY
    sent = auth.authorization("GET", "/")
    assert sent == basic_authorization("u", "p")
    assert auth.on_unauthorized(['Basic realm="x"'], sent) is AuthVerdict.REJECTED


def test_client_gives_up_on_endless_stale_nonces() -> None:
    client = RtspClient(URL, username="u", password="p", cnonce=lambda: "c")
    client.start()
    events: list[object] = []
    for n in range(5):
        request = sent_request(client)
        stale = f'Digest realm="cam", nonce="n{n}", stale=true'
        events = client_events(client, reply(request, 401, Headers((("WWW-Authenticate", stale),))))
        if events:
            break
    assert events == [AuthenticationFailed("OPTIONS", AuthVerdict.REJECTED, "cam")]
    assert n == 2


def test_split_url_credentials() -> None:
    assert split_url_credentials("rtsp://a%40b:p%3Ass@cam:8554/main?x=1") == (
        "rtsp://cam:8554/main?x=1",
        "a@b",
        "p:ss",
    )
    assert split_url_credentials("rtsp://cam/main") == ("rtsp://cam/main", None, None)


# -- client state machine -------------------------------------------------------------------------

URL = "rtsp://cam:554/main"
SDP_REPLY = SDP_CAMERA


def client_events(client: RtspClient, data: bytes) -> list[object]:
    client.receive_data(data)
    events: list[object] = []
    while (event := client.next_event()) is not NEED_DATA:
        assert not isinstance(event, Signal)
        events.append(event)
    return events


def sent_request(client: RtspClient) -> RtspRequest:
    reader = RtspReader()
    reader.receive_data(client.data_to_send())
    request = reader.next_event()
    assert isinstance(request, RtspRequest)
    assert reader.next_event() is NEED_DATA  # exactly one request
    return request


def reply(
    request: RtspRequest, status: int = 200, headers: Headers | None = None, body: bytes = b""
) -> bytes:
    reason = {200: "OK", 401: "Unauthorized", 454: "Session Not Found", 404: "Not Found"}[status]
    return encode_response(status, reason, request.cseq, (headers or Headers()).items, body)


def handshake(
    client: RtspClient, public: str = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"
) -> SessionStarted:
    client.start()
    options = sent_request(client)
    assert (options.method, options.uri) == ("OPTIONS", URL)
    assert client_events(client, reply(options, headers=Headers((("Public", public),)))) == []
    describe = sent_request(client)
    assert describe.method == "DESCRIBE" and describe.headers.get("Accept") == "application/sdp"
    assert client_events(client, reply(describe, body=SDP_REPLY)) == []
    setup = sent_request(client)
    assert (setup.method, setup.uri) == ("SETUP", URL + "/trackID=3")
    assert setup.headers.get("Transport") == "RTP/AVP/TCP;unicast;interleaved=0-1"
    session = Headers(
        (("Session", "ABCD;timeout=30"), ("Transport", "RTP/AVP/TCP;unicast;interleaved=2-3"))
    )
    assert client_events(client, reply(setup, headers=session)) == []
    play = sent_request(client)
    assert (play.method, play.uri, play.headers.get("Session")) == ("PLAY", URL, "ABCD")
    # A metadata packet may overtake the PLAY answer.
    early = encode_interleaved(2, b"early")
    events = client_events(client, early + reply(play))
    assert events[0] == MetadataPacket(b"early")
    started = events[1]
    assert isinstance(started, SessionStarted)
    assert client.state is ClientState.PLAYING
    return started


@pytest.mark.parametrize("bad", HOSTILE_NUMBERS)
def test_client_refuses_a_hostile_cseq_with_the_peer_error(bad: str) -> None:
    # ... and for the client a peer error, never a ValueError.
    client = RtspClient(URL, cnonce=lambda: "c")
    client.start()
    sent_request(client)
    with pytest.raises(CameraProtocolError) as info:
        client_events(client, f"RTSP/1.0 200 OK\r\nCSeq: {bad}\r\n\r\n".encode())
    assert info.value.kind == "rtsp_cseq"


@pytest.mark.parametrize("bad", HOSTILE_NUMBERS)
def test_client_plays_without_an_unreadable_rtp_info_and_says_so(bad: str) -> None:
    client = RtspClient(URL, cnonce=lambda: "c")
    client.start()
    options = sent_request(client)
    client_events(client, reply(options))
    client_events(client, reply(sent_request(client), body=SDP_REPLY))
    client_events(client, reply(sent_request(client), headers=Headers((("Session", "S1"),))))
    play = sent_request(client)
    rtp_info = Headers((("RTP-Info", f"url={URL}/trackID=3;seq={bad}"),))
    [started] = client_events(client, reply(play, headers=rtp_info))
    assert isinstance(started, SessionStarted)
    assert started.first_sequence is None and started.issues == ("rtsp_rtp_info",)
    assert client.state is ClientState.PLAYING


def test_client_refuses_a_control_url_it_cannot_send() -> None:
    # The SETUP URI comes from the camera's SDP: a space in it is the peer's
    # error, not a ValueError from encode_request.
    client = RtspClient(URL, cnonce=lambda: "c")
    client.start()
    client_events(client, reply(sent_request(client)))
    sdp = SDP_REPLY.replace(b"a=control:trackID=3", b"a=control:trackID=3 x")
    assert sdp != SDP_REPLY
    with pytest.raises(CameraProtocolError) as info:
        client_events(client, reply(sent_request(client), body=sdp))
    assert info.value.kind == "rtsp_bad_value"


def test_client_refuses_a_content_base_with_a_lone_cr() -> None:
    # Header lines end at LF: a lone CR stays inside a value and would be a
    # line break in our SETUP.
    client = RtspClient(URL, cnonce=lambda: "c")
    client.start()
    client_events(client, reply(sent_request(client)))
    describe = sent_request(client)
    answer = (
        f"RTSP/1.0 200 OK\r\nCSeq: {describe.cseq}\r\n"
        f"Content-Base: {URL}/x\ry/\r\nContent-Length: {len(SDP_REPLY)}\r\n\r\n"
    ).encode() + SDP_REPLY
    with pytest.raises(CameraProtocolError) as info:
        client_events(client, answer)
    assert info.value.kind == "rtsp_bad_value"


def test_sdp_with_hostile_numbers_skips_those_lines() -> None:
    sdp = SDP_REPLY.replace(b"m=application 0", "m=application \u00b2".encode()).replace(
        b"a=rtpmap:107", "a=rtpmap:\uff11\uff10\uff17".encode()
    )
    with pytest.raises(CameraProtocolError) as info:
        find_metadata_track(parse_sdp(sdp), URL)
    assert info.value.kind == "rtsp_no_metadata_track"


def test_client_handshake_keepalive_and_teardown() -> None:
    client = RtspClient(URL, cnonce=lambda: "c")
    started = handshake(client)
    assert started.session == SessionHeader("ABCD", 30)
    assert started.keepalive_method == "GET_PARAMETER"
    assert started.track.payload_type == 107 and started.rtp_channel == 2
    rtp = packetize(b"<doc/>", 1, 1, 1, 107)[0]
    events = client_events(client, encode_interleaved(2, rtp) + encode_interleaved(3, b"rtcp"))
    assert events == [MetadataPacket(rtp)]
    assert client.frames_ignored == 1
    client.send_keepalive()
    keepalive = sent_request(client)
    assert keepalive.method == "GET_PARAMETER" and keepalive.headers.get("Session") == "ABCD"
    assert client_events(client, reply(keepalive)) == [KeepAliveAcknowledged(200)]
    assert client.send_teardown()
    teardown = sent_request(client)
    assert teardown.method == "TEARDOWN"
    assert client_events(client, reply(teardown)) == [TeardownComplete(200)]
    assert client.state is ClientState.CLOSED
    assert not client.send_teardown()


def test_client_keepalive_falls_back_to_options() -> None:
    client = RtspClient(URL, cnonce=lambda: "c")
    started = handshake(client, public="OPTIONS, DESCRIBE, SETUP, PLAY")
    assert started.keepalive_method == "OPTIONS"
    client.send_keepalive()
    keepalive = sent_request(client)
    assert keepalive.method == "OPTIONS" and keepalive.headers.get("Session") == "ABCD"
    assert client_events(client, reply(keepalive)) == [KeepAliveAcknowledged(200)]
    client.send_keepalive()
    lost = sent_request(client)
    assert client_events(client, reply(lost, 454)) == [
        RequestFailed("OPTIONS", 454, "Session Not Found")
    ]


def test_client_digest_then_refused() -> None:
    client = RtspClient("rtsp://admin:pw@cam:554/main", cnonce=lambda: "0a4f113b")
    client.start()
    options = sent_request(client)
    assert options.uri == URL and options.headers.get("Authorization") is None
    challenge = Headers((("WWW-Authenticate", 'Digest realm="cam", nonce="n1", qop="auth"'),))
    assert client_events(client, reply(options, 401, challenge)) == []
    retried = sent_request(client)
    assert retried.method == "OPTIONS" and retried.cseq == 2
    authorization = retried.headers.get("Authorization") or ""
    assert authorization.startswith('Digest username="admin", realm="cam"')
    assert f'uri="{URL}"' in authorization
    events = client_events(client, reply(retried, 401, challenge))
    assert events == [AuthenticationFailed("OPTIONS", AuthVerdict.REJECTED, "cam")]
    assert client.state is ClientState.FAILED


def test_client_without_credentials_reports_it() -> None:
    client = RtspClient(URL, cnonce=lambda: "c")
    client.start()
    options = sent_request(client)
    challenge = Headers((("WWW-Authenticate", 'Basic realm="cam"'),))
    events = client_events(client, reply(options, 401, challenge))
    assert events == [AuthenticationFailed("OPTIONS", AuthVerdict.NO_CREDENTIALS, "cam")]


def test_client_describe_without_metadata_track_raises() -> None:
    client = RtspClient(URL, cnonce=lambda: "c")
    client.start()
    client_events(client, reply(sent_request(client)))
    describe = sent_request(client)
    with pytest.raises(CameraProtocolError) as info:
        client_events(client, reply(describe, body=b"v=0\r\nm=video 0 RTP/AVP 96\r\n"))
    assert info.value.kind == "rtsp_no_metadata_track"


def test_client_describe_not_found() -> None:
    client = RtspClient(URL, cnonce=lambda: "c")
    client.start()
    client_events(client, reply(sent_request(client)))
    describe = sent_request(client)
    assert client_events(client, reply(describe, 404)) == [
        RequestFailed("DESCRIBE", 404, "Not Found")
    ]


def test_client_answers_server_requests() -> None:
    client = RtspClient(URL, cnonce=lambda: "c")
    handshake(client)
    assert client_events(client, b"OPTIONS * RTSP/1.0\r\nCSeq: 77\r\n\r\n") == []
    reader = RtspReader()
    reader.receive_data(client.data_to_send())
    answer = reader.next_event()
    assert isinstance(answer, RtspResponse) and answer.status == 200 and answer.cseq == 77


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=4))
def test_client_fed_random_bytes_raises_only_protocol_errors(chunks: list[bytes]) -> None:
    client = RtspClient(URL, username="u", password="p", cnonce=lambda: "c")
    client.start()
    prefix = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nPublic: OPTIONS, DESCRIBE\r\n\r\n"
    with contextlib.suppress(CameraProtocolError):
        for chunk in [prefix, *chunks]:
            if chunk:
                client_events(client, chunk)


def test_client_transition_table_covers_every_state() -> None:
    assert set(CLIENT_TRANSITIONS) == set(ClientState)
    reachable = {ClientState.IDLE}
    for moves in CLIENT_TRANSITIONS.values():
        reachable |= set(moves.values())
    assert reachable == set(ClientState)
    assert CLIENT_TRANSITIONS[ClientState.CLOSED] == {
        Trigger.REFUSED: ClientState.FAILED,
        Trigger.TORN_DOWN: ClientState.CLOSED,
    }


def test_client_refuses_what_the_table_does_not_allow() -> None:
    client = RtspClient(URL, cnonce=lambda: "c")
    with pytest.raises(RuntimeError):
        client.send_keepalive()
    assert not client.send_teardown()  # no session yet
    client.start()
    with pytest.raises(RuntimeError):
        client.start()
    assert client.state is ClientState.OPTIONS


def test_client_a_play_answer_after_teardown_is_stale() -> None:
    client = RtspClient(URL, cnonce=lambda: "c")
    client.start()
    client_events(client, reply(sent_request(client)))
    client_events(client, reply(sent_request(client), body=SDP_REPLY))
    client_events(client, reply(sent_request(client), headers=Headers((("Session", "S1"),))))
    play = sent_request(client)
    assert client.send_teardown()  # shutdown before PLAY was answered
    teardown = sent_request(client)
    assert client_events(client, reply(play)) == []
    assert client.state is ClientState.TEARDOWN
    assert client_events(client, reply(teardown)) == [TeardownComplete(200)]
    # mypy narrowed `state` by the assert above; the reply changed it.
    assert client.state is ClientState.CLOSED  # type: ignore[comparison-overlap]
