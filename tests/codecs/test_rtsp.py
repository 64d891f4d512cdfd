"""RTSP client: the state machine over messages, SDP and authentication (codecs/rtsp.py)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import http_auth, rtsp, rtsp_messages, sdp
from gateway.codecs.rtp import packetize
from gateway.codecs.rtsp import (
    CLIENT_TRANSITIONS,
    NEED_DATA,
    AuthenticationFailed,
    AuthVerdict,
    ClientState,
    Headers,
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
    encode_interleaved,
    encode_response,
)
from gateway.errors import CameraProtocolError, CodecMisuseError
from tests.rtsp_samples import HOSTILE_NUMBERS, SDP_CAMERA

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
    with pytest.raises(CodecMisuseError):
        client.send_keepalive()
    assert not client.send_teardown()  # no session yet
    client.start()
    with pytest.raises(CodecMisuseError):
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


def test_the_split_modules_stay_importable_from_rtsp() -> None:
    # gateway.codecs.rtsp was one module; its callers import from it unchanged.
    for module in (rtsp_messages, sdp, http_auth):
        public = {name for name in vars(module) if not name.startswith("_")}
        moved = public & set(rtsp.__all__)
        assert moved, module.__name__
        for name in moved:
            assert getattr(rtsp, name) is getattr(module, name), name
    assert all(hasattr(rtsp, name) for name in rtsp.__all__)
