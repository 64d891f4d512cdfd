"""RTSP/1.0 messages (RFC 2326), sans-IO: the reader, the encoders and header values.

`RtspReader` turns received bytes, cut anywhere, into `RtspResponse`,
`RtspRequest` and interleaved `$` frames; `encode_request`, `encode_response`
and `encode_interleaved` do the reverse. The `Session`, `Transport`,
`RTP-Info` and `Public` header values are parsed here too.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.codecs.numbers import ascii_int_or_none, parse_ascii_int
from gateway.errors import CameraProtocolError, CodecMisuseError

RTSP_VERSION = "RTSP/1.0"
DEFAULT_MAX_HEADER_BYTES = 16_384
DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_SESSION_TIMEOUT_SECONDS = 60  # RFC 2326 12.37, when the server names none
MAX_INTERLEAVED_PAYLOAD = 0xFFFF
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
    """The CSeq, or None when absent or not plain ASCII digits (the client decides)."""
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
            raise CodecMisuseError("receive_data after end of stream")
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
            raise CodecMisuseError(f"line break in an RTSP header field: {part[:40]!r}")


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
        raise CodecMisuseError("spaces in an RTSP method or URI")
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
        raise CodecMisuseError(f"channel {channel} out of 0..255")
    if len(payload) > MAX_INTERLEAVED_PAYLOAD:
        raise CodecMisuseError(f"payload of {len(payload)} bytes does not fit a $ frame")
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
