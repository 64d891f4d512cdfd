"""RTSP/1.0 client (RFC 2326), sans-IO: `RtspClient`, OPTIONS → DESCRIBE → SETUP → PLAY.

Its transitions are one table, `CLIENT_TRANSITIONS`. The pieces it drives live
beside it, as h11 splits readers, state and connection: `rtsp_messages`
(reader, encoders, header values), `sdp` and `http_auth`. Their names are
re-exported here so `gateway.codecs.rtsp` stays the one import for RTSP.
No sockets, no clock, no randomness: the Digest cnonce comes from the caller.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.codecs.http_auth import (
    AuthChallenge,
    Authenticator,
    AuthVerdict,
    basic_authorization,
    choose_challenge,
    digest_authorization,
    parse_www_authenticate,
    split_url_credentials,
)
from gateway.codecs.rtsp_messages import (
    CLOSED,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_SESSION_TIMEOUT_SECONDS,
    MAX_INTERLEAVED_PAYLOAD,
    NEED_DATA,
    RTSP_VERSION,
    Headers,
    InterleavedFrame,
    ReaderEvent,
    RtspMessage,
    RtspReader,
    RtspRequest,
    RtspResponse,
    SessionHeader,
    Signal,
    TransportSpec,
    encode_interleaved,
    encode_request,
    encode_response,
    parse_public,
    parse_rtp_info_sequence,
    parse_session,
    parse_transport,
)
from gateway.codecs.sdp import (
    METADATA_ENCODING,
    MetadataTrack,
    SdpMedia,
    SessionDescription,
    find_metadata_track,
    parse_sdp,
    resolve_control,
)
from gateway.errors import CameraProtocolError, CodecMisuseError

__all__ = [
    "CLIENT_TRANSITIONS",
    "CLOSED",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_SESSION_TIMEOUT_SECONDS",
    "MAX_AUTH_ROUNDS",
    "MAX_INTERLEAVED_PAYLOAD",
    "METADATA_ENCODING",
    "NEED_DATA",
    "RTSP_VERSION",
    "AuthChallenge",
    "AuthVerdict",
    "AuthenticationFailed",
    "Authenticator",
    "ClientEvent",
    "ClientState",
    "Headers",
    "InterleavedFrame",
    "KeepAliveAcknowledged",
    "MetadataPacket",
    "MetadataTrack",
    "ReaderEvent",
    "RequestFailed",
    "RtspClient",
    "RtspMessage",
    "RtspReader",
    "RtspRequest",
    "RtspResponse",
    "SdpMedia",
    "SessionDescription",
    "SessionHeader",
    "SessionStarted",
    "Signal",
    "TeardownComplete",
    "TransportSpec",
    "Trigger",
    "basic_authorization",
    "choose_challenge",
    "digest_authorization",
    "encode_interleaved",
    "encode_request",
    "encode_response",
    "find_metadata_track",
    "parse_public",
    "parse_rtp_info_sequence",
    "parse_sdp",
    "parse_session",
    "parse_transport",
    "parse_www_authenticate",
    "resolve_control",
    "split_url_credentials",
]


class ClientState(enum.Enum):
    IDLE = "idle"
    OPTIONS = "options"  # OPTIONS sent
    DESCRIBE = "describe"
    SETUP = "setup"
    PLAY = "play"
    PLAYING = "playing"
    TEARDOWN = "teardown"
    CLOSED = "closed"
    FAILED = "failed"


class Trigger(enum.Enum):
    """What moves the client from one state to another."""

    START = "start"  # start(): OPTIONS sent
    ANSWERED = "answered"  # the handshake request of this state answered with success
    KEEPALIVE = "keepalive"  # send_keepalive()
    TEARDOWN = "teardown"  # send_teardown()
    REFUSED = "refused"  # a request refused, or its credentials
    TORN_DOWN = "torn_down"  # TEARDOWN answered


# Every transition of the client, and the only place one is decided. A trigger
# the table does not list for the state is refused: start() and
# send_keepalive() raise, send_teardown() returns False, a handshake answer is
# stale and ignored. Once started, a refusal fails the client and a TEARDOWN
# answer closes it, whatever the state (see _ENDINGS).
_MOVES: Mapping[ClientState, Mapping[Trigger, ClientState]] = {
    ClientState.IDLE: {Trigger.START: ClientState.OPTIONS},
    # OPTIONS only informs: any answer but a final 401 moves on to DESCRIBE.
    ClientState.OPTIONS: {Trigger.ANSWERED: ClientState.DESCRIBE},
    ClientState.DESCRIBE: {Trigger.ANSWERED: ClientState.SETUP},
    ClientState.SETUP: {
        Trigger.ANSWERED: ClientState.PLAY,
        Trigger.TEARDOWN: ClientState.TEARDOWN,
    },
    ClientState.PLAY: {
        Trigger.ANSWERED: ClientState.PLAYING,
        Trigger.TEARDOWN: ClientState.TEARDOWN,
    },
    ClientState.PLAYING: {
        Trigger.KEEPALIVE: ClientState.PLAYING,
        Trigger.TEARDOWN: ClientState.TEARDOWN,
    },
    ClientState.TEARDOWN: {},
    ClientState.FAILED: {Trigger.TEARDOWN: ClientState.TEARDOWN},
    ClientState.CLOSED: {},
}
_ENDINGS: Mapping[Trigger, ClientState] = {
    Trigger.REFUSED: ClientState.FAILED,
    Trigger.TORN_DOWN: ClientState.CLOSED,
}
CLIENT_TRANSITIONS: Mapping[ClientState, Mapping[Trigger, ClientState]] = {
    state: {**moves, **(_ENDINGS if state is not ClientState.IDLE else {})}
    for state, moves in _MOVES.items()
}


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """PLAY succeeded: metadata packets follow."""

    session: SessionHeader
    track: MetadataTrack
    keepalive_method: str  # GET_PARAMETER or OPTIONS
    public: frozenset[str]
    rtp_channel: int
    first_sequence: int | None = None  # from RTP-Info, for the reassembler
    # Kinds of peer errors in the PLAY answer that did not stop the session
    # (e.g. an unreadable RTP-Info): the caller counts them.
    issues: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MetadataPacket:
    """One RTP packet (bytes) on the metadata channel."""

    data: bytes


@dataclass(frozen=True, slots=True)
class KeepAliveAcknowledged:
    status: int


@dataclass(frozen=True, slots=True)
class AuthenticationFailed:
    method: str
    verdict: AuthVerdict
    realm: str


@dataclass(frozen=True, slots=True)
class RequestFailed:
    method: str
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class TeardownComplete:
    status: int


ClientEvent = (
    SessionStarted
    | MetadataPacket
    | KeepAliveAcknowledged
    | AuthenticationFailed
    | RequestFailed
    | TeardownComplete
)


MAX_AUTH_ROUNDS = 3  # answers to 401 for one request before giving up


@dataclass(frozen=True, slots=True)
class _Pending:
    method: str
    uri: str
    headers: tuple[tuple[str, str], ...]
    authorization: str | None = None
    auth_round: int = 0


class RtspClient:
    """The client side of one RTSP connection, without I/O.

    Call `start()`, then loop: send `data_to_send()`, feed received bytes to
    `receive_data()`, and drain `next_event()` until NEED_DATA. The caller
    owns the clock: it calls `send_keepalive()` before the session times out
    and `send_teardown()` at shutdown. Failures of the peer's protocol raise
    CameraProtocolError from `next_event()`.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        cnonce: Callable[[], str],
        user_agent: str = "lpr-gateway",
        rtp_channel: int = 0,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        clean, url_user, url_password = split_url_credentials(url)
        self.url = clean
        self.user_agent = user_agent
        self.auth = Authenticator(
            username if username is not None else url_user,
            password if username is not None else url_password,
            cnonce,
        )
        self.state = ClientState.IDLE
        self.reader = RtspReader(max_header_bytes=max_header_bytes, max_body_bytes=max_body_bytes)
        self.public: frozenset[str] = frozenset()
        self.session: SessionHeader | None = None
        self.track: MetadataTrack | None = None
        self.rtp_channel = rtp_channel
        self.rtcp_channel = rtp_channel + 1
        self.frames_ignored = 0  # RTCP and unknown channels
        self._aggregate_url = clean
        self._cseq = 0
        self._pending: dict[int, _Pending] = {}
        self._outgoing = bytearray()
        self._events: list[ClientEvent] = []

    # -- outgoing -----------------------------------------------------------

    def _move(self, trigger: Trigger) -> bool:
        """Take the transition the table gives for `trigger`; False if it gives none."""
        next_state = CLIENT_TRANSITIONS[self.state].get(trigger)
        if next_state is None:
            return False
        self.state = next_state
        return True

    def start(self) -> None:
        if not self._move(Trigger.START):
            raise CodecMisuseError(f"start() in state {self.state.name}")
        self._request("OPTIONS", self.url)

    def data_to_send(self) -> bytes:
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    @property
    def keepalive_method(self) -> str:
        return "GET_PARAMETER" if "GET_PARAMETER" in self.public else "OPTIONS"

    def send_keepalive(self) -> None:
        if not self._move(Trigger.KEEPALIVE):
            raise CodecMisuseError(f"keep-alive in state {self.state.name}")
        self._request(self.keepalive_method, self._aggregate_url)

    def send_teardown(self) -> bool:
        """Queue TEARDOWN if a session exists; False when there is nothing to tear down."""
        if self.session is None or not self._move(Trigger.TEARDOWN):
            return False
        self._request("TEARDOWN", self._aggregate_url)
        return True

    def _request(
        self,
        method: str,
        uri: str,
        extra: tuple[tuple[str, str], ...] = (),
        auth_round: int = 0,
    ) -> None:
        self._cseq += 1
        headers: list[tuple[str, str]] = [("User-Agent", self.user_agent)]
        try:
            authorization = self.auth.authorization(method, uri)
            if authorization is not None:
                headers.append(("Authorization", authorization))
            if self.session is not None:
                headers.append(("Session", self.session.id))
            headers.extend(extra)
            request = encode_request(method, uri, self._cseq, headers)
        except (CodecMisuseError, UnicodeError) as exc:
            # The URI (SDP control, Content-Base) and the challenge's realm and
            # nonce come from the camera: a space, a lone CR or an unencodable
            # character in them is the peer's error, not ours.
            raise CameraProtocolError("rtsp_bad_value", f"cannot send {method}: {exc}") from None
        self._pending[self._cseq] = _Pending(method, uri, extra, authorization, auth_round)
        self._outgoing += request

    # -- incoming -----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self.reader.receive_data(data)

    def next_event(self) -> ClientEvent | Signal:
        while True:
            if self._events:
                return self._events.pop(0)
            event = self.reader.next_event()
            if isinstance(event, Signal):
                return event
            if isinstance(event, InterleavedFrame):
                if event.channel == self.rtp_channel and self.state in (
                    ClientState.PLAY,
                    ClientState.PLAYING,
                    ClientState.TEARDOWN,
                ):
                    return MetadataPacket(event.payload)
                self.frames_ignored += 1
                continue
            if isinstance(event, RtspRequest):
                self._answer_server_request(event)
                continue
            self._on_response(event)

    def _answer_server_request(self, request: RtspRequest) -> None:
        # A server may probe us (OPTIONS) or announce; we answer, never act.
        status, reason = (200, "OK") if request.method == "OPTIONS" else (501, "Not Implemented")
        self._outgoing += encode_response(status, reason, request.cseq)

    def _on_response(self, response: RtspResponse) -> None:
        cseq = response.cseq
        if cseq is None and "CSeq" in response.headers:
            raise CameraProtocolError(
                "rtsp_cseq",
                f"CSeq is not 1 to 9 ASCII digits: {response.headers.get('CSeq')!r:.40}",
            )
        pending = self._pending.pop(cseq, None) if cseq is not None else None
        if pending is None:
            if cseq is None and self._pending:
                pending = self._pending.pop(min(self._pending))
            else:
                return  # an answer to nothing we still wait for (e.g. after a retry)
        if response.status == 401 and pending.method != "TEARDOWN":
            verdict = self.auth.on_unauthorized(
                response.headers.get_all("WWW-Authenticate"), pending.authorization
            )
            if verdict is AuthVerdict.RETRY and pending.auth_round + 1 < MAX_AUTH_ROUNDS:
                self._request(pending.method, pending.uri, pending.headers, pending.auth_round + 1)
                return
            if verdict is AuthVerdict.RETRY:
                verdict = AuthVerdict.REJECTED
            self._move(Trigger.REFUSED)
            realm = ""
            challenge = choose_challenge(
                parse_www_authenticate(response.headers.get_all("WWW-Authenticate"))
            )
            if challenge is not None:
                realm = challenge.realm
            self._events.append(AuthenticationFailed(pending.method, verdict, realm))
            return
        ok = 200 <= response.status < 300
        if ok:
            self.auth.on_success()
        handler = {
            "OPTIONS": self._on_options,
            "DESCRIBE": self._on_describe,
            "SETUP": self._on_setup,
            "PLAY": self._on_play,
            "GET_PARAMETER": self._on_keepalive,
            "TEARDOWN": self._on_teardown,
        }[pending.method]
        handler(response, pending, ok)

    def _fail(self, pending: _Pending, response: RtspResponse) -> None:
        self._move(Trigger.REFUSED)
        self._events.append(RequestFailed(pending.method, response.status, response.reason))

    def _on_options(self, response: RtspResponse, pending: _Pending, ok: bool) -> None:
        if self.state is ClientState.PLAYING:
            self._on_keepalive(response, pending, ok)
            return
        if not self._move(Trigger.ANSWERED):
            return  # stale
        # OPTIONS only informs; a camera that refuses it may still DESCRIBE.
        if ok:
            self.public = parse_public(response.headers.get("Public"))
        self._request("DESCRIBE", self.url, (("Accept", "application/sdp"),))

    def _on_describe(self, response: RtspResponse, pending: _Pending, ok: bool) -> None:
        if not ok:
            self._fail(pending, response)
            return
        base = (
            response.headers.get("Content-Base")
            or response.headers.get("Content-Location")
            or pending.uri
        )
        sdp = parse_sdp(response.body)
        self.track = find_metadata_track(sdp, base)
        self._aggregate_url = resolve_control(sdp.control, base) if sdp.control else pending.uri
        if not self._move(Trigger.ANSWERED):
            return  # stale
        transport = f"RTP/AVP/TCP;unicast;interleaved={self.rtp_channel}-{self.rtcp_channel}"
        self._request("SETUP", self.track.control_url, (("Transport", transport),))

    def _on_setup(self, response: RtspResponse, pending: _Pending, ok: bool) -> None:
        if not ok:
            self._fail(pending, response)
            return
        session_value = response.headers.get("Session")
        if session_value is None:
            raise CameraProtocolError("rtsp_session", "SETUP answered without a Session header")
        self.session = parse_session(session_value)
        transport_value = response.headers.get("Transport")
        if transport_value is not None:
            channels = parse_transport(transport_value).interleaved
            if channels is not None:
                self.rtp_channel, self.rtcp_channel = channels
        if not self._move(Trigger.ANSWERED):
            return  # stale
        self._request("PLAY", self._aggregate_url, (("Range", "npt=0.000-"),))

    def _on_play(self, response: RtspResponse, pending: _Pending, ok: bool) -> None:
        if not ok:
            self._fail(pending, response)
            return
        assert self.session is not None and self.track is not None
        session_value = response.headers.get("Session")
        if session_value is not None:
            # Some servers state the timeout only here.
            answered = parse_session(session_value)
            if answered.timeout_seconds is not None:
                self.session = SessionHeader(self.session.id, answered.timeout_seconds)
        if not self._move(Trigger.ANSWERED):
            return  # stale
        issues: list[str] = []
        try:
            first_sequence = parse_rtp_info_sequence(
                response.headers.get("RTP-Info"), self.track.control_url
            )
        except CameraProtocolError as exc:
            # Only a hint for the reassembler: play without it, and say so.
            first_sequence = None
            issues.append(exc.kind)
        self._events.append(
            SessionStarted(
                session=self.session,
                track=self.track,
                keepalive_method=self.keepalive_method,
                public=self.public,
                rtp_channel=self.rtp_channel,
                first_sequence=first_sequence,
                issues=tuple(issues),
            )
        )

    def _on_keepalive(self, response: RtspResponse, pending: _Pending, ok: bool) -> None:
        if ok:
            self._events.append(KeepAliveAcknowledged(response.status))
        elif response.status in (405, 501) and pending.method == "GET_PARAMETER":
            # The server listed GET_PARAMETER but refuses it: fall back to OPTIONS.
            self.public = self.public - {"GET_PARAMETER"}
            self._events.append(KeepAliveAcknowledged(response.status))
        else:
            self._fail(pending, response)

    def _on_teardown(self, response: RtspResponse, pending: _Pending, ok: bool) -> None:
        self._move(Trigger.TORN_DOWN)
        self.session = None
        self._events.append(TeardownComplete(response.status))
