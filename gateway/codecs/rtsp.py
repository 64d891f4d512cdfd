"""RTSP/1.0 client codec (RFC 2326), sans-IO, for the ONVIF metadata track.

`RtspReader` turns received bytes, cut anywhere, into `RtspResponse`,
`RtspRequest` and interleaved `$` frames; `encode_request` does the reverse.
Around them: SDP enough to find the metadata media, the `Session` and
`Transport` headers, Basic and Digest authentication (reused for the HTTP
picture fetch) and `RtspClient`, the OPTIONS → DESCRIBE → SETUP → PLAY machine.
No sockets, no clock, no randomness: the Digest cnonce comes from the caller.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from gateway.codecs.numbers import ascii_int_or_none, parse_ascii_int
from gateway.errors import CameraProtocolError

RTSP_VERSION = "RTSP/1.0"
DEFAULT_MAX_HEADER_BYTES = 16_384
DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_SESSION_TIMEOUT_SECONDS = 60  # RFC 2326 12.37, when the server names none
MAX_INTERLEAVED_PAYLOAD = 0xFFFF
METADATA_ENCODING = "vnd.onvif.metadata"
_COMPACT_AT = 65_536


class Signal(enum.Enum):
    NEED_DATA = "need_data"  # feed more bytes
    CLOSED = "closed"  # the peer ended the stream at a message boundary


NEED_DATA = Signal.NEED_DATA
CLOSED = Signal.CLOSED


# --------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True)
class Headers:
    """Header fields in arrival order; look-ups ignore case."""

    items: tuple[tuple[str, str], ...] = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        lowered = name.lower()
        for key, value in self.items:
            if key.lower() == lowered:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.items if key.lower() == lowered]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


@dataclass(frozen=True, slots=True)
class RtspResponse:
    status: int
    reason: str
    headers: Headers
    body: bytes = b""

    @property
    def cseq(self) -> int | None:
        return _cseq(self.headers)


@dataclass(frozen=True, slots=True)
class RtspRequest:
    """A request from the peer (a server may send OPTIONS or ANNOUNCE; simulators read these)."""

    method: str
    uri: str
    headers: Headers
    body: bytes = b""

    @property
    def cseq(self) -> int | None:
        return _cseq(self.headers)


@dataclass(frozen=True, slots=True)
class InterleavedFrame:
    channel: int
    payload: bytes


RtspMessage = RtspResponse | RtspRequest
ReaderEvent = RtspResponse | RtspRequest | InterleavedFrame | Signal


def _cseq(headers: Headers) -> int | None:
    """The CSeq, or None when absent or not plain ASCII digits (see `_on_response`)."""
    value = headers.get("CSeq")
    if value is None:
        return None
    return ascii_int_or_none(value)


_TOKEN_RE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_STATUS_RE = re.compile(r"^RTSP/(\d)\.(\d) (\d{3})(?: (.*))?$", re.ASCII)


class RtspReader:
    """Bytes in (any slicing), RTSP messages and interleaved frames out.

    Bounded: a header block over `max_header_bytes` or a body over
    `max_body_bytes` raises CameraProtocolError; a frame is at most 65535 bytes
    by its format. After an error the stream cannot be resynchronised (a `$`
    is a common byte inside payloads), so the reader stays failed.
    """

    def __init__(
        self,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._buf = bytearray()
        self._pos = 0
        self._scan_from = 0  # where the header-end search resumes
        self._eof = False
        self._error: CameraProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes) -> None:
        """Add received bytes; `b""` means the peer closed the stream."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("receive_data after end of stream")
        self._buf += data

    def next_event(self) -> ReaderEvent:
        if self._error is not None:
            raise self._error
        try:
            event = self._next()
        except CameraProtocolError as exc:
            self._error = exc
            raise
        if self._pos >= _COMPACT_AT or (self._pos and self._pos == len(self._buf)):
            del self._buf[: self._pos]
            self._scan_from = max(0, self._scan_from - self._pos)
            self._pos = 0
        return event

    def _next(self) -> ReaderEvent:
        buf = self._buf
        # Some servers put blank lines between messages.
        while self._pos < len(buf) and buf[self._pos] in (0x0D, 0x0A):
            self._pos += 1
        available = len(buf) - self._pos
        if available == 0:
            return CLOSED if self._eof else NEED_DATA
        if buf[self._pos] == 0x24:  # '$'
            return self._frame(available)
        return self._message(available)

    def _frame(self, available: int) -> ReaderEvent:
        if available < 4:
            return self._need()
        channel = self._buf[self._pos + 1]
        (length,) = struct.unpack_from(">H", self._buf, self._pos + 2)
        if available < 4 + length:
            return self._need()
        start = self._pos + 4
        payload = bytes(self._buf[start : start + length])
        self._pos = start + length
        self._scan_from = self._pos
        return InterleavedFrame(channel, payload)

    def _need(self) -> Signal:
        if self._eof:
            raise CameraProtocolError("rtsp_truncated", "stream ended inside a message")
        return NEED_DATA

    def _message(self, available: int) -> ReaderEvent:
        buf = self._buf
        first = buf[self._pos]
        if not (0x41 <= first <= 0x5A or 0x61 <= first <= 0x7A):
            raise CameraProtocolError(
                "rtsp_garbage", f"byte 0x{first:02x} where a message or a '$' frame starts"
            )
        search_from = max(self._pos, self._scan_from - 3)
        end = buf.find(b"\r\n\r\n", search_from)
        lf_end = buf.find(b"\n\n", search_from)
        if end < 0 and lf_end < 0:
            if available > self.max_header_bytes:
                raise CameraProtocolError(
                    "rtsp_header_too_large", f"no end of headers in {available} bytes"
                )
            self._scan_from = len(buf)
            if self._eof:
                raise CameraProtocolError("rtsp_truncated", "stream ended inside headers")
            # A start line that is not RTSP at all fails now, not 16 KB later.
            line_end = buf.find(b"\n", self._pos)
            if line_end >= 0:
                self._parse_start_line(bytes(buf[self._pos : line_end]).rstrip(b"\r"))
            return NEED_DATA
        if end < 0 or (0 <= lf_end < end):
            header_end, separator = lf_end, 2
        else:
            header_end, separator = end, 4
        if header_end - self._pos > self.max_header_bytes:
            raise CameraProtocolError(
                "rtsp_header_too_large", f"headers of {header_end - self._pos} bytes"
            )
        block = bytes(buf[self._pos : header_end]).decode("latin-1")
        lines = block.replace("\r\n", "\n").split("\n")
        start = self._parse_start_line(lines[0].encode("latin-1"))
        headers = _parse_header_lines(lines[1:])
        length_text = headers.get("Content-Length")
        length = 0
        if length_text is not None:
            # Only ASCII digits: int() would also take "+5", "-1", "1_000" and "５".
            length = parse_ascii_int(
                length_text, kind="rtsp_content_length", what="Content-Length", max_digits=12
            )
            if length > self.max_body_bytes:
                raise CameraProtocolError(
                    "rtsp_body_too_large", f"body of {length} bytes, limit {self.max_body_bytes}"
                )
        body_start = header_end + separator
        if len(buf) - body_start < length:
            self._scan_from = header_end  # the header end is found again next time
            return self._need()
        body = bytes(buf[body_start : body_start + length])
        self._pos = body_start + length
        self._scan_from = self._pos
        if isinstance(start, tuple) and isinstance(start[0], int):
            return RtspResponse(start[0], str(start[1]), headers, body)
        method, uri = start
        return RtspRequest(str(method), str(uri), headers, body)

    @staticmethod
    def _parse_start_line(line: bytes) -> tuple[int, str] | tuple[str, str]:
        text = line.decode("latin-1")
        if text.startswith("RTSP/"):
            match = _STATUS_RE.match(text)
            if match is None or match.group(1) != "1":
                raise CameraProtocolError("rtsp_status_line", f"bad status line {text[:80]!r}")
            return int(match.group(3)), (match.group(4) or "").strip()
        parts = text.split(" ")
        if (
            len(parts) != 3
            or not parts[2].startswith("RTSP/1.")
            or not _TOKEN_RE.match(parts[0].encode("latin-1"))
        ):
            raise CameraProtocolError("rtsp_start_line", f"bad start line {text[:80]!r}")
        return parts[0], parts[1]


def _parse_header_lines(lines: Sequence[str]) -> Headers:
    items: list[tuple[str, str]] = []
    for line in lines:
        if not line:
            continue
        if line[0] in " \t" and items:  # obsolete line folding
            name, value = items[-1]
            items[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise CameraProtocolError("rtsp_header", f"bad header line {line[:80]!r}")
        items.append((name, value.strip()))
    return Headers(tuple(items))


def _check_text(*parts: str) -> None:
    for part in parts:
        if "\r" in part or "\n" in part:
            raise ValueError(f"line break in an RTSP header field: {part[:40]!r}")


def encode_request(
    method: str,
    uri: str,
    cseq: int,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """One request; Content-Length is added for a body."""
    _check_text(method, uri)
    if " " in method or " " in uri:
        raise ValueError("spaces in an RTSP method or URI")
    lines = [f"{method} {uri} {RTSP_VERSION}", f"CSeq: {cseq}"]
    for name, value in headers:
        _check_text(name, value)
        lines.append(f"{name}: {value}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def encode_response(
    status: int,
    reason: str,
    cseq: int | None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """One response (for servers and simulators); Content-Length is added for a body."""
    _check_text(reason)
    lines = [f"{RTSP_VERSION} {status} {reason}"]
    if cseq is not None:
        lines.append(f"CSeq: {cseq}")
    for name, value in headers:
        _check_text(name, value)
        lines.append(f"{name}: {value}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def encode_interleaved(channel: int, payload: bytes) -> bytes:
    """A `$` frame: '$', channel, uint16 BE length, payload."""
    if not 0 <= channel <= 255:
        raise ValueError(f"channel {channel} out of 0..255")
    if len(payload) > MAX_INTERLEAVED_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a $ frame")
    return b"$" + bytes([channel]) + struct.pack(">H", len(payload)) + payload


# --------------------------------------------------------------------------
# Header values


@dataclass(frozen=True, slots=True)
class SessionHeader:
    id: str
    timeout_seconds: int | None = None  # None: the server named none (RFC default 60 s)

    @property
    def effective_timeout(self) -> int:
        return self.timeout_seconds or DEFAULT_SESSION_TIMEOUT_SECONDS


def parse_session(value: str) -> SessionHeader:
    """`Session: 12345678;timeout=60`."""
    parts = [p.strip() for p in value.split(";")]
    session_id = parts[0]
    if not session_id or any(c.isspace() for c in session_id):
        raise CameraProtocolError("rtsp_session", f"bad Session header {value[:80]!r}")
    timeout: int | None = None
    for part in parts[1:]:
        name, _, raw = part.partition("=")
        if name.strip().lower() == "timeout":
            timeout = parse_ascii_int(raw, kind="rtsp_session", what="session timeout")
            if timeout <= 0:
                timeout = None
    return SessionHeader(session_id, timeout)


@dataclass(frozen=True, slots=True)
class TransportSpec:
    protocol: str  # e.g. RTP/AVP/TCP
    parameters: Mapping[str, str | None]

    @property
    def interleaved(self) -> tuple[int, int] | None:
        value = self.parameters.get("interleaved")
        if not value:
            return None
        first, _, second = value.partition("-")
        rtp = ascii_int_or_none(first, max_digits=3)
        rtcp = ascii_int_or_none(second, max_digits=3) if second else None
        if rtp is not None and not second:
            rtcp = rtp + 1
        if rtp is None or rtcp is None:
            return None
        if not (0 <= rtp <= 255 and 0 <= rtcp <= 255):
            return None
        return rtp, rtcp


def parse_transport(value: str) -> TransportSpec:
    """The first transport of a `Transport` header (the server answers with one)."""
    first = value.split(",")[0]
    parts = [p.strip() for p in first.split(";") if p.strip()]
    if not parts:
        raise CameraProtocolError("rtsp_transport", "empty Transport header")
    parameters: dict[str, str | None] = {}
    for part in parts[1:]:
        name, equals, raw = part.partition("=")
        parameters[name.strip().lower()] = raw.strip() if equals else None
    return TransportSpec(parts[0], parameters)


def parse_rtp_info_sequence(value: str | None, track_url: str) -> int | None:
    """`seq=` of the RTP-Info entry for our track (or of the only entry).

    A `seq` that is not ASCII digits raises CameraProtocolError("rtsp_rtp_info").
    """
    if not value:
        return None
    entries = [e.strip() for e in value.split(",") if e.strip()]
    found: int | None = None
    for entry in entries:
        params: dict[str, str] = {}
        for part in entry.split(";"):
            name, _, raw = part.partition("=")
            params[name.strip().lower()] = raw.strip()
        if "seq" not in params:
            continue
        seq = parse_ascii_int(params["seq"], kind="rtsp_rtp_info", what="RTP-Info seq")
        url = params.get("url", "").rstrip("/")
        ours = bool(url) and (url == track_url or track_url.endswith("/" + url.lstrip("/")))
        if len(entries) == 1 or ours:
            found = seq % 65536
    return found


def parse_public(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset()
    return frozenset(m.strip().upper() for m in value.split(",") if m.strip())


# --------------------------------------------------------------------------
# SDP (RFC 4566), only what finding the metadata track needs


@dataclass(frozen=True, slots=True)
class SdpMedia:
    media: str  # video | audio | application | ...
    port: int
    protocol: str
    formats: tuple[str, ...]
    control: str | None = None
    rtpmap: Mapping[int, str] = field(default_factory=dict)  # pt → "encoding/clock[/ch]"


@dataclass(frozen=True, slots=True)
class SessionDescription:
    control: str | None
    media: tuple[SdpMedia, ...]


@dataclass(frozen=True, slots=True)
class MetadataTrack:
    control_url: str  # absolute URL to SETUP
    payload_type: int
    encoding: str  # as the SDP spells it, e.g. "vnd.onvif.metadata"
    clock_rate: int | None


@dataclass(slots=True)
class _MediaBuilder:
    media: str
    port: int
    protocol: str
    formats: tuple[str, ...]
    control: str | None = None
    rtpmap: dict[int, str] = field(default_factory=dict)

    def build(self) -> SdpMedia:
        return SdpMedia(
            self.media, self.port, self.protocol, self.formats, self.control, dict(self.rtpmap)
        )


def parse_sdp(body: bytes) -> SessionDescription:
    """Lenient SDP parse: unknown or malformed lines are skipped, never fatal."""
    text = body.decode("utf-8", errors="replace")
    session_control: str | None = None
    media: list[SdpMedia] = []
    current: _MediaBuilder | None = None
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            if current is not None:
                media.append(current.build())
            current = None
            fields = value.split()
            port = ascii_int_or_none(fields[1].split("/")[0]) if len(fields) >= 3 else None
            if port is None:
                continue
            current = _MediaBuilder(fields[0].lower(), port, fields[2], tuple(fields[3:]))
        elif kind == "a":
            name, _, attribute = value.partition(":")
            name = name.strip().lower()
            if name == "control":
                if current is None:
                    session_control = attribute.strip()
                else:
                    current.control = attribute.strip()
            elif name == "rtpmap" and current is not None:
                pt_text, _, encoding = attribute.strip().partition(" ")
                payload_type = ascii_int_or_none(pt_text, max_digits=3)
                if payload_type is not None and encoding.strip():
                    current.rtpmap[payload_type] = encoding.strip()
    if current is not None:
        media.append(current.build())
    return SessionDescription(session_control, tuple(media))


def resolve_control(control: str | None, base_url: str) -> str:
    """An `a=control` value made absolute.

    `*` or no control means the base itself. A relative control is appended to
    the base with one `/` between them, as live555, FFmpeg and GStreamer do:
    RFC 3986 joining would drop the last path segment of `rtsp://cam/main`.
    """
    if not control or control == "*":
        return base_url
    if urlsplit(control).scheme:
        return control
    if base_url.endswith("/") or control.startswith("/"):
        if base_url.endswith("/") and control.startswith("/"):
            return base_url + control[1:]
        return base_url + control
    return f"{base_url}/{control}"


def find_metadata_track(sdp: SessionDescription, base_url: str) -> MetadataTrack:
    """The ONVIF metadata media, or CameraProtocolError("rtsp_no_metadata_track", ...)."""
    base = base_url
    if sdp.control and sdp.control != "*" and urlsplit(sdp.control).scheme:
        base = sdp.control
    for media in sdp.media:
        if media.media != "application":
            continue
        for fmt in media.formats:
            payload_type = ascii_int_or_none(fmt, max_digits=3)
            if payload_type is None:
                continue
            encoding = media.rtpmap.get(payload_type)
            if encoding is None:
                continue
            name, _, rest = encoding.partition("/")
            if name.strip().lower().startswith(METADATA_ENCODING):
                return MetadataTrack(
                    control_url=resolve_control(media.control, base),
                    payload_type=payload_type,
                    encoding=name.strip(),
                    clock_rate=ascii_int_or_none(rest.split("/")[0]),
                )
    found = ", ".join(
        f"{m.media}({', '.join(m.rtpmap.values()) or ' '.join(m.formats)})" for m in sdp.media
    )
    raise CameraProtocolError(
        "rtsp_no_metadata_track",
        f"the SDP has no m=application track with rtpmap {METADATA_ENCODING}; "
        f"media: {found or 'none'} (enable the metadata/alarm stream on the camera)",
    )


# --------------------------------------------------------------------------
# Authentication (RFC 7617 Basic, RFC 2617/7616 Digest): shared by RTSP and the HTTP picture GET

_AUTH_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_AUTH_SCHEME_RE = re.compile(rf"\s*({_AUTH_TOKEN})")
_AUTH_PARAM_RE = re.compile(rf'\s*({_AUTH_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*')
_AUTH_TOKEN68_RE = re.compile(r"\s+[A-Za-z0-9._~+/-]+=*\s*(?:,|$)")
_DIGEST_HASHES: Mapping[str, Callable[[bytes], str]] = {
    "md5": lambda data: hashlib.md5(data).hexdigest(),
    "sha-256": lambda data: hashlib.sha256(data).hexdigest(),
}


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    scheme: str  # lower case: "basic", "digest", ...
    params: Mapping[str, str] = field(default_factory=dict)  # names lower case

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def nonce(self) -> str:
        return self.params.get("nonce", "")

    @property
    def stale(self) -> bool:
        return self.params.get("stale", "").lower() == "true"

    @property
    def algorithm(self) -> str:
        return self.params.get("algorithm", "MD5")

    @property
    def qop_options(self) -> tuple[str, ...]:
        raw = self.params.get("qop")
        if raw is None:
            return ()
        return tuple(q.strip().lower() for q in raw.split(",") if q.strip())

    @property
    def supported(self) -> bool:
        if self.scheme == "basic":
            return True
        if self.scheme != "digest" or not self.nonce:
            return False
        algorithm = self.algorithm.lower().removesuffix("-sess")
        if algorithm not in _DIGEST_HASHES:
            return False
        return not self.qop_options or "auth" in self.qop_options


def parse_www_authenticate(values: Iterable[str]) -> list[AuthChallenge]:
    """Every challenge in every `WWW-Authenticate` value (one value may hold several)."""
    challenges: list[AuthChallenge] = []
    for value in values:
        pos = 0
        while pos < len(value):
            while pos < len(value) and value[pos] in " \t,":
                pos += 1
            scheme_match = _AUTH_SCHEME_RE.match(value, pos)
            if scheme_match is None:
                break
            scheme = scheme_match.group(1).lower()
            pos = scheme_match.end()
            params: dict[str, str] = {}
            token68 = _AUTH_TOKEN68_RE.match(value, pos)
            if token68 is not None:
                # e.g. `Negotiate abc123==`: a blob, not parameters
                challenges.append(AuthChallenge(scheme, {}))
                pos = token68.end()
                continue
            while True:
                param = _AUTH_PARAM_RE.match(value, pos)
                if param is None:
                    break
                name, raw = param.group(1).lower(), param.group(2)
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                params[name] = raw
                pos = param.end()
                if pos < len(value) and value[pos] == ",":
                    pos += 1
                    continue
                break
            challenges.append(AuthChallenge(scheme, params))
    return challenges


def choose_challenge(challenges: Sequence[AuthChallenge]) -> AuthChallenge | None:
    """The strongest challenge we can answer: Digest SHA-256, Digest MD5, then Basic."""

    def rank(challenge: AuthChallenge) -> int:
        if challenge.scheme == "digest":
            return 3 if challenge.algorithm.lower().startswith("sha-256") else 2
        return 1

    usable = [c for c in challenges if c.supported]
    return max(usable, key=rank) if usable else None


def basic_authorization(username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def digest_authorization(
    challenge: AuthChallenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nonce_count: int = 1,
) -> str:
    """The `Authorization: Digest ...` value answering `challenge` (qop=auth or none)."""
    algorithm = challenge.algorithm
    digest = _DIGEST_HASHES.get(algorithm.lower().removesuffix("-sess"))
    if digest is None:
        raise ValueError(f"unsupported Digest algorithm {algorithm!r}")
    realm, nonce = challenge.realm, challenge.nonce
    ha1 = digest(f"{username}:{realm}:{password}".encode())
    if algorithm.lower().endswith("-sess"):
        ha1 = digest(f"{ha1}:{nonce}:{cnonce}".encode())
    ha2 = digest(f"{method}:{uri}".encode())
    use_qop = "auth" in challenge.qop_options
    nc = f"{nonce_count:08x}"
    if use_qop:
        response = digest(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode())
    else:
        response = digest(f"{ha1}:{nonce}:{ha2}".encode())
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"uri={_quote(uri)}",
    ]
    if use_qop:
        parts += ["qop=auth", f"nc={nc}", f"cnonce={_quote(cnonce)}"]
    parts.append(f"response={_quote(response)}")
    if "opaque" in challenge.params:
        parts.append(f"opaque={_quote(challenge.params['opaque'])}")
    if "algorithm" in challenge.params:
        parts.append(f"algorithm={algorithm}")
    return "Digest " + ", ".join(parts)


class AuthVerdict(enum.Enum):
    RETRY = "retry"  # resend the request with `authorization(...)`
    NO_CREDENTIALS = "no_credentials"  # the server wants credentials and none are configured
    REJECTED = "rejected"  # the configured credentials were tried and refused
    UNSUPPORTED = "unsupported"  # no challenge we can answer


class Authenticator:
    """Answers challenges for one server; usable for RTSP and for HTTP.

    The first 401 is expected (we do not know the scheme yet) and gives RETRY;
    a 401 after our answer is REJECTED unless the server says the nonce was
    stale, which earns one more RETRY until a request succeeds again.
    """

    def __init__(
        self, username: str | None, password: str | None, cnonce: Callable[[], str]
    ) -> None:
        self._username = username
        self._password = password or ""
        self._cnonce = cnonce
        self._challenge: AuthChallenge | None = None
        self._nonce_count = 0
        self._stale_retry_used = False

    @property
    def has_credentials(self) -> bool:
        return self._username is not None

    @property
    def scheme(self) -> str | None:
        return self._challenge.scheme if self._challenge else None

    def authorization(self, method: str, uri: str) -> str | None:
        """The Authorization value for a request, or None before any challenge."""
        challenge = self._challenge
        if challenge is None or self._username is None:
            return None
        if challenge.scheme == "basic":
            return basic_authorization(self._username, self._password)
        self._nonce_count += 1
        return digest_authorization(
            challenge,
            username=self._username,
            password=self._password,
            method=method,
            uri=uri,
            cnonce=self._cnonce(),
            nonce_count=self._nonce_count,
        )

    def on_unauthorized(
        self, www_authenticate: Iterable[str], sent: str | None = None
    ) -> AuthVerdict:
        """Judge a 401. `sent` is the Authorization the refused request carried.

        A request that carried none, or an answer to a challenge we have since
        replaced (concurrent requests), is not a refusal of the credentials.
        """
        challenge = choose_challenge(parse_www_authenticate(www_authenticate))
        if not self.has_credentials:
            return AuthVerdict.NO_CREDENTIALS
        if challenge is None:
            return AuthVerdict.UNSUPPORTED
        previous = self._challenge
        if previous is None or sent is None:
            self._adopt(challenge)
            return AuthVerdict.RETRY
        if _answered_nonce(sent) != previous.nonce and not sent.lower().startswith("basic"):
            return AuthVerdict.RETRY
        if challenge.scheme == "digest" and challenge.stale and not self._stale_retry_used:
            self._stale_retry_used = True
            self._adopt(challenge)
            return AuthVerdict.RETRY
        return AuthVerdict.REJECTED

    def on_success(self) -> None:
        self._stale_retry_used = False

    def reset(self) -> None:
        """Forget the challenge (a new connection starts over)."""
        self._challenge = None
        self._nonce_count = 0
        self._stale_retry_used = False

    def _adopt(self, challenge: AuthChallenge) -> None:
        if self._challenge is None or challenge.nonce != self._challenge.nonce:
            self._nonce_count = 0
        self._challenge = challenge


def _answered_nonce(authorization: str) -> str:
    # An Authorization value has the same auth-param syntax as a challenge.
    parsed = parse_www_authenticate([authorization])
    return parsed[0].nonce if parsed else ""


def split_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """`rtsp://user:pass@host/path` → (`rtsp://host/path`, user, pass)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    password = unquote(parts.password) if parts.password is not None else None
    return clean, unquote(parts.username or ""), password


# --------------------------------------------------------------------------
# Client state machine


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
            raise RuntimeError(f"start() in state {self.state.name}")
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
            raise RuntimeError(f"keep-alive in state {self.state.name}")
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
        except ValueError as exc:
            # The URI (SDP control, Content-Base) and the challenge's realm and
            # nonce come from the camera: a space or a lone CR in them is the
            # peer's error, not ours.
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
