"""RTP (RFC 3550) for the ONVIF metadata track: header parsing, document reassembly, encoding.

The camera splits each XML document over RTP packets and sets the marker bit on
the last one. `RtpReassembler` glues payloads back per SSRC; a lost packet drops
only the document it damaged, and an oversized document is skipped without
buffering it. Sans-IO, shaped like the other codecs: `receive_data(packet)`,
then `next_event()` until NEED_DATA gives `RtpDocument` / `RtpDocumentDropped`.
"""

from __future__ import annotations

import enum
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final, Literal

from gateway.errors import CameraProtocolError, CodecMisuseError

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
SEQUENCE_MODULO = 1 << 16
# A sequence number this far behind the expected one is late or a duplicate,
# anything closer ahead is a gap (RFC 3550 A.1 uses the same half-range split).
_HALF_RANGE = SEQUENCE_MODULO // 2

DEFAULT_MAX_DOCUMENT_BYTES = 1_000_000
DEFAULT_MAX_SOURCES = 8
DEFAULT_MAX_PAYLOAD = 1400

_HEADER = struct.Struct(">BBHII")


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One parsed RTP packet; `payload` excludes CSRCs, extension and padding."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes
    csrcs: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension_data: bytes = b""
    padding: int = 0  # padding bytes that were stripped (0: none)


def parse_rtp_packet(data: bytes) -> RtpPacket:
    """Parse one RTP packet; a malformed one raises CameraProtocolError."""
    if len(data) < RTP_HEADER_SIZE:
        raise CameraProtocolError("rtp_short", f"{len(data)} bytes, a header needs 12")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    version = first >> 6
    if version != RTP_VERSION:
        raise CameraProtocolError("rtp_version", f"version {version}, expected 2")
    has_padding = bool(first & 0x20)
    has_extension = bool(first & 0x10)
    csrc_count = first & 0x0F
    offset = RTP_HEADER_SIZE + 4 * csrc_count
    if len(data) < offset:
        raise CameraProtocolError("rtp_short", f"{csrc_count} CSRCs do not fit in {len(data)}")
    csrcs = struct.unpack_from(f">{csrc_count}I", data, RTP_HEADER_SIZE) if csrc_count else ()
    extension_profile: int | None = None
    extension_data = b""
    if has_extension:
        if len(data) < offset + 4:
            raise CameraProtocolError("rtp_extension", "extension header cut short")
        extension_profile, words = struct.unpack_from(">HH", data, offset)
        offset += 4
        if len(data) < offset + 4 * words:
            raise CameraProtocolError("rtp_extension", f"extension of {words} words cut short")
        extension_data = bytes(data[offset : offset + 4 * words])
        offset += 4 * words
    end = len(data)
    padding = 0
    if has_padding:
        padding = data[-1] if end > offset else 0
        if padding == 0 or padding > end - offset:
            raise CameraProtocolError("rtp_padding", f"padding count {padding} is not valid")
        end -= padding
    return RtpPacket(
        payload_type=second & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        marker=bool(second & 0x80),
        payload=bytes(data[offset:end]),
        csrcs=tuple(csrcs),
        extension_profile=extension_profile,
        extension_data=extension_data,
        padding=padding,
    )


def encode_rtp_packet(
    payload: bytes,
    *,
    ssrc: int,
    sequence: int,
    timestamp: int,
    payload_type: int,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    extension: tuple[int, bytes] | None = None,
    padding: int = 0,
) -> bytes:
    """One RTP packet. `extension` is (profile, data with a length multiple of 4)."""
    if not 0 <= payload_type <= 127:
        raise CodecMisuseError(f"payload type {payload_type} out of 0..127")
    if len(csrcs) > 15:
        raise CodecMisuseError("at most 15 CSRCs")
    if not 0 <= padding <= 255:
        raise CodecMisuseError("padding is 0..255 bytes")
    first = (RTP_VERSION << 6) | (0x20 if padding else 0) | (0x10 if extension else 0)
    first |= len(csrcs)
    second = (0x80 if marker else 0) | payload_type
    parts = [
        _HEADER.pack(
            first, second, sequence % SEQUENCE_MODULO, timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF
        )
    ]
    if csrcs:
        parts.append(struct.pack(f">{len(csrcs)}I", *csrcs))
    if extension is not None:
        profile, data = extension
        if len(data) % 4:
            raise CodecMisuseError("extension data must be a multiple of 4 bytes")
        parts.append(struct.pack(">HH", profile, len(data) // 4) + data)
    parts.append(payload)
    if padding:
        parts.append(bytes(padding - 1) + bytes([padding]))
    return b"".join(parts)


def packetize(
    document: bytes,
    ssrc: int,
    seq_start: int,
    timestamp: int,
    payload_type: int,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> list[bytes]:
    """Split one document into RTP packets; the marker bit is set on the last one.

    Sequence numbers run from `seq_start` (wrapping at 65536); the next document
    starts at `seq_start + len(result)`.
    """
    if max_payload < 1:
        raise CodecMisuseError("max_payload must be at least 1")
    chunks = [document[i : i + max_payload] for i in range(0, len(document), max_payload)]
    if not chunks:
        chunks = [b""]
    last = len(chunks) - 1
    return [
        encode_rtp_packet(
            chunk,
            ssrc=ssrc,
            sequence=(seq_start + index) % SEQUENCE_MODULO,
            timestamp=timestamp,
            payload_type=payload_type,
            marker=index == last,
        )
        for index, chunk in enumerate(chunks)
    ]


# --------------------------------------------------------------------------
# Reassembly


class NeedData(enum.Enum):
    """`next_event()` has nothing complete to return: feed more packets."""

    NEED_DATA = "need_data"


NEED_DATA: Final = NeedData.NEED_DATA


class DropReason(enum.Enum):
    LOSS = "loss"  # a sequence gap inside (or before the end of) the document
    OVERSIZE = "oversize"  # the document grew past the size limit


@dataclass(frozen=True, slots=True)
class RtpDocument:
    """One whole document: every packet from the last marker to this one, in order."""

    ssrc: int
    timestamp: int
    data: bytes
    packets: int


@dataclass(frozen=True, slots=True)
class RtpDocumentDropped:
    """A document that could not be had whole; only that one is lost."""

    ssrc: int
    reason: DropReason
    detail: str


@dataclass(frozen=True, slots=True)
class RtpPacketRejected:
    """A packet that is not valid RTP (or has an unexpected payload type)."""

    kind: str
    detail: str


ReassemblyEvent = RtpDocument | RtpDocumentDropped | RtpPacketRejected


@dataclass(slots=True)
class _SourceState:
    expected: int  # next sequence number
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    packets: int = 0
    skipping: bool = False  # after a loss or an oversize: discard up to the next marker
    pending: dict[int, RtpPacket] = field(default_factory=dict)  # reorder window


@dataclass(slots=True)
class ReassemblyCounters:
    documents: int = 0
    dropped_loss: int = 0
    dropped_oversize: int = 0
    packets_rejected: int = 0
    packets_late: int = 0  # duplicates and packets older than the expected sequence


class RtpReassembler:
    """Per-SSRC reassembly of marker-delimited documents.

    Feed one whole RTP packet per `receive_data()` call (an interleaved `$`
    frame's payload: RTP keeps packet boundaries), then drain `next_event()`
    until NEED_DATA.

    `reorder_window` packets may arrive ahead of a missing one and still be put
    back in order; over RTSP-interleaved TCP nothing is reordered, so the default
    is 0 (a gap is a loss at once, and no good document waits behind it).
    Memory is bounded by `max_document_bytes` per source, `max_sources` sources
    and the reorder window.
    """

    def __init__(
        self,
        *,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        payload_type: int | None = None,
        reorder_window: int = 0,
        max_sources: int = DEFAULT_MAX_SOURCES,
    ) -> None:
        self.max_document_bytes = max_document_bytes
        self.payload_type = payload_type
        self.reorder_window = reorder_window
        self.max_sources = max_sources
        self.counters = ReassemblyCounters()
        self._sources: OrderedDict[int, _SourceState] = OrderedDict()
        self._first_sequence: int | None = None
        # At most a few events per packet (a loss, then up to a reorder
        # window of documents); the caller drains them after each packet.
        self._events: deque[ReassemblyEvent] = deque()

    def expect_first_sequence(self, sequence: int | None) -> None:
        """The sequence number the next new source starts at (RTSP `RTP-Info: seq=`).

        Without it the first packet of a source is taken as the start of a
        document; with it, a lost first packet is detected like any other loss.
        """
        self._first_sequence = None if sequence is None else sequence % SEQUENCE_MODULO

    def receive_data(self, data: bytes) -> None:
        """Take one RTP packet (bytes); what it completes or drops waits in `next_event()`."""
        try:
            packet = parse_rtp_packet(data)
        except CameraProtocolError as exc:
            self.counters.packets_rejected += 1
            self._events.append(RtpPacketRejected(exc.kind, exc.detail))
            return
        self._receive_packet(packet)

    def next_event(self) -> ReassemblyEvent | Literal[NeedData.NEED_DATA]:
        return self._events.popleft() if self._events else NEED_DATA

    def _receive_packet(self, packet: RtpPacket) -> None:
        if self.payload_type is not None and packet.payload_type != self.payload_type:
            self.counters.packets_rejected += 1
            self._events.append(
                RtpPacketRejected(
                    "rtp_payload_type",
                    f"payload type {packet.payload_type}, expected {self.payload_type}",
                )
            )
            return
        state = self._sources.get(packet.ssrc)
        if state is None:
            # A new source starts where it starts: the stream began with PLAY.
            first = self._first_sequence
            self._first_sequence = None
            state = _SourceState(expected=packet.sequence if first is None else first)
            self._sources[packet.ssrc] = state
            if len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(packet.ssrc)
        distance = (packet.sequence - state.expected) % SEQUENCE_MODULO
        if distance >= _HALF_RANGE or (distance > 0 and packet.sequence in state.pending):
            self.counters.packets_late += 1
            return
        if distance > 0:
            state.pending[packet.sequence] = packet
            if len(state.pending) <= self.reorder_window:
                return
            # The window is full: the missing packets are lost.
            nearest = min(state.pending, key=lambda s: (s - state.expected) % SEQUENCE_MODULO)
            gap = (nearest - state.expected) % SEQUENCE_MODULO
            self._lose(state, packet.ssrc, f"{gap} packet(s) missing before {nearest}")
            state.expected = nearest
        else:
            self._accept(state, packet)
        while state.expected in state.pending:
            self._accept(state, state.pending.pop(state.expected))

    def _lose(self, state: _SourceState, ssrc: int, detail: str) -> None:
        # Whatever was gathered is damaged, and the next packet may sit in the
        # middle of a document: discard up to the next marker.
        if not state.skipping:
            self.counters.dropped_loss += 1
            self._events.append(RtpDocumentDropped(ssrc, DropReason.LOSS, detail))
        state.parts.clear()
        state.size = 0
        state.packets = 0
        state.skipping = True

    def _accept(self, state: _SourceState, packet: RtpPacket) -> None:
        state.expected = (packet.sequence + 1) % SEQUENCE_MODULO
        if not state.skipping:
            if state.size + len(packet.payload) > self.max_document_bytes:
                self.counters.dropped_oversize += 1
                self._events.append(
                    RtpDocumentDropped(
                        packet.ssrc,
                        DropReason.OVERSIZE,
                        f"document over {self.max_document_bytes} bytes",
                    )
                )
                state.parts.clear()
                state.size = 0
                state.packets = 0
                state.skipping = True
            else:
                state.parts.append(packet.payload)
                state.size += len(packet.payload)
                state.packets += 1
        if packet.marker:
            if not state.skipping:
                self.counters.documents += 1
                self._events.append(
                    RtpDocument(
                        ssrc=packet.ssrc,
                        timestamp=packet.timestamp,
                        data=b"".join(state.parts),
                        packets=state.packets,
                    )
                )
            state.parts.clear()
            state.size = 0
            state.packets = 0
            state.skipping = False
