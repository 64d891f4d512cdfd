"""SDP (RFC 4566), sans-IO, only what finding the ONVIF metadata track needs.

`parse_sdp` is lenient (a malformed line is skipped); `find_metadata_track`
picks the `m=application` media whose rtpmap names `vnd.onvif.metadata`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gateway.codecs.numbers import ascii_int_or_none
from gateway.errors import CameraProtocolError

METADATA_ENCODING = "vnd.onvif.metadata"


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
