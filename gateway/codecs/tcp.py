"""The TCP camera protocol, sans-IO: frames, login, recognition results.

The bytes are those of docs/camera-protocols.md, section 1.

`FrameDecoder` takes the camera's byte stream in arbitrary slices and hands out
typed events (h11 style); the functions below it encode frames and parse/build
the COMM_RECOG_POST payload with construct. No sockets, no clock, no logging.
"""

from __future__ import annotations

import codecs
import collections
import enum
import heapq
import json
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from construct import Bytes, Float32l, Int8ul, Int16ul, Int32sl, Int32ul, Int64ul, Struct

from gateway.codecs import assumed, values
from gateway.codecs.jpeg import jpeg_dimensions as jpeg_dimensions  # callers import it here
from gateway.codecs.numbers import finite_or_none, parse_ascii_int
from gateway.errors import CameraProtocolError, CodecMisuseError
from gateway.event import (
    Box,
    Direction,
    Image,
    ListMembership,
    PlateColor,
    PlateEvent,
    Resolution,
    Source,
    Vehicle,
)

SIG: Final = b"\xcc\xff"
SIG_END: Final = b"\xff\xdd"
HEADER_SIZE: Final = 8  # SIG, COMMAND, DATA_SIZE
DEFAULT_MAX_DATA_SIZE: Final = 16 * 1024 * 1024
MAX_IMAGES: Final = 8
CHUNK_HEADER_SIZE: Final = 8
BASE_METADATA_SIZE: Final = 79
CAR_NUMBER_SIZE: Final = 16
REGION_SIZE: Final = 32

_HEADER = struct.Struct("<2sHI")
_CHUNK_HEADER = struct.Struct("<4sI")


class Command(enum.IntEnum):
    LOGIN_REQ = 0x0001
    LOGIN_REPLY = 0x8001
    RECOG_POST = 0x8801


_KNOWN_COMMANDS: Final = frozenset(int(c) for c in Command)


def command_name(command: int) -> str:
    try:
        return f"COMM_{Command(command).name}"
    except ValueError:
        return f"0x{command:04x}"


# --------------------------------------------------------------------------
# Framing


class NeedData(enum.Enum):
    """`next_event()` has nothing complete to return: feed more bytes."""

    NEED_DATA = "need_data"


NEED_DATA: Final = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole frame whose SIG END sat where its DATA_SIZE said."""

    command: int
    data: bytes
    offset: int  # stream offset of its SIG

    @property
    def known_command(self) -> Command | None:
        return Command(self.command) if self.command in _KNOWN_COMMANDS else None

    @property
    def size(self) -> int:
        return HEADER_SIZE + len(self.data) + len(SIG_END)

    def encode(self) -> bytes:
        return encode_frame(self.command, self.data)


@dataclass(frozen=True, slots=True)
class GarbageSkipped:
    """Bytes between frames that start no frame; the decoder scanned past them.

    One loss of synchronisation (the bytes from where a frame should have
    started to the next good frame) is a *garbage region*. The decoder does not
    hold the region's bytes, so a long region is reported in several events (at
    most one per `receive_data` slice, never one per false header inside it);
    `starts_region` is True on the first event of a region that no
    `CorruptFrame` already reported. A caller counts one parse error for it and
    adds every `count` to its skipped-bytes total.
    """

    count: int
    offset: int
    starts_region: bool = True


@dataclass(frozen=True, slots=True)
class CorruptFrame:
    """A header at a frame boundary whose frame is broken (bad SIG END, bad size,
    cut by the end of the stream). The decoder rescans from just after its SIG;
    the bytes skipped by that rescan belong to this event's region (their
    `GarbageSkipped` events have `starts_region` False)."""

    offset: int
    command: int
    data_size: int
    reason: str  # short stable label: bad_sig_end | bad_data_size | truncated | stalled
    raw: bytes  # the bytes the header claimed (for capture files)


@dataclass(frozen=True, slots=True)
class UnknownCommand:
    """A whole, well-formed frame at a frame boundary with a command the spec does
    not name. Skipped whole (its SIG END was where DATA_SIZE said): the stream
    stays in sync and its bytes are not rescanned."""

    command: int
    length: int  # the whole frame, header and SIG END included
    offset: int
    head: bytes = b""  # the first bytes of its DATA (for logs and the decode tool)


@dataclass(frozen=True, slots=True)
class StreamBroken:
    """Fatal: the stream cannot be trusted any more (e.g. DATA_SIZE over the limit).
    The adapter drops the connection; every later `next_event()` returns this again."""

    kind: str
    detail: str
    offset: int


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """`receive_data(b"")` was called and every buffered byte has been reported."""

    offset: int


DecoderEvent = Frame | GarbageSkipped | CorruptFrame | UnknownCommand | StreamBroken | EndOfStream

# While waiting for a hunted candidate's frame, later plausible headers whose
# frames are still incomplete are remembered (to check them once their SIG END
# has arrived) up to this many: a bound on memory, whatever the stream holds.
MAX_LOOKAHEAD_HEADERS = 1024
# Bytes of an unknown command's DATA kept in its event.
UNKNOWN_HEAD = 64


class DecoderState(enum.Enum):
    SYNCED = "synced"  # a frame header is expected at the read position
    HUNTING = "hunting"  # scanning garbage for the next plausible header
    CANDIDATE = "candidate"  # hunting found a plausible header; waiting for its frame
    ENDED = "ended"
    BROKEN = "broken"


class FrameDecoder:
    """Frames from a byte stream fed in arbitrary slices.

    At a frame boundary (stream start, or right after a good frame) any header is
    taken at its word: an unknown command is a frame to skip whole
    (`UnknownCommand`), a DATA_SIZE over the limit breaks the stream before
    anything is buffered, a SIG END out of place is a `CorruptFrame`. Once in
    garbage, a `CC FF` counts as a frame start only if its header is plausible
    (known command, size within limits) and its SIG END turns up where it
    should; otherwise scanning goes on from the byte after that `CC FF`, so a
    false start delays frames but never swallows them. While a plausible header
    in garbage waits for the rest of its frame, a later complete frame wins: a
    stream of false headers claiming megabytes cannot hold a good frame back.

    Work is linear in the bytes fed, and events are few: a garbage region full
    of false headers is one `GarbageSkipped` per slice fed, not one per header.
    """

    def __init__(
        self,
        max_data_size: int = DEFAULT_MAX_DATA_SIZE,
        *,
        start_offset: int = 0,
        synced: bool = True,
    ) -> None:
        if max_data_size < 2:
            raise CodecMisuseError("max_data_size must be at least 2 (it counts SIG END)")
        self.max_data_size = max_data_size
        self._buffer = bytearray()
        self._pos = 0  # read position in _buffer
        self._base = start_offset  # stream offset of _buffer[0]
        self._scan = 0  # while hunting: where in _buffer the SIG search resumes
        self._state = DecoderState.SYNCED if synced else DecoderState.HUNTING
        self._eof = False
        self._broken: StreamBroken | None = None
        self._queued: collections.deque[DecoderEvent] = collections.deque()
        # Garbage skipped but not yet reported: (stream offset, count).
        self._garbage_offset = 0
        self._garbage_count = 0
        # Whether the garbage being skipped belongs to a loss of sync already
        # reported (by a CorruptFrame or an earlier GarbageSkipped).
        self._in_region = False
        # Look-ahead past a waiting candidate (stream offsets, so that compacting
        # the buffer does not move them): where the SIG scan resumes, and
        # plausible headers seen whose frames were incomplete, as (end, start).
        self._look_from = 0
        self._look_pending: list[tuple[int, int]] = []

    @property
    def state(self) -> DecoderState:
        return self._state

    @property
    def buffered(self) -> int:
        """Bytes held in the buffer (received, not yet consumed)."""
        return len(self._buffer) - self._pos

    @property
    def offset(self) -> int:
        """Stream offset of the first byte not yet consumed."""
        return self._base + self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes (copied into the decoder's buffer); `b""` means the stream ended."""
        if self._eof:
            if data:
                raise CodecMisuseError("receive_data after end of stream")
            return
        if not data:
            self._eof = True
            return
        if self._state is DecoderState.BROKEN:
            return  # nothing will be read from a broken stream: don't keep it
        self._compact()
        self._buffer += data

    @property
    def held(self) -> int:
        """Bytes the decoder keeps in memory: the unconsumed ones, and consumed ones
        not yet dropped. 0 whenever `next_event()` returned NEED_DATA at a frame
        boundary: a session waiting between frames holds no frame's bytes."""
        return len(self._buffer)

    def _compact(self) -> None:
        """Drop the consumed bytes from the buffer."""
        pos = self._pos
        if not pos:
            return
        if pos == len(self._buffer):
            self._buffer = bytearray()  # the usual case: the last frame taken whole
        else:
            del self._buffer[:pos]
        self._base += pos
        self._scan = max(0, self._scan - pos)
        self._pos = 0

    @property
    def awaiting_frame(self) -> bool:
        """Whether a frame has begun (its SIG is buffered) and the rest is awaited."""
        buf, pos = self._buffer, self._pos
        return (
            self._state in (DecoderState.SYNCED, DecoderState.CANDIDATE)
            and len(buf) - pos >= len(SIG)
            and buf[pos : pos + 2] == SIG
        )

    def abandon_partial_frame(self) -> bool:
        """Give up on the frame being waited for; rescan from just after its SIG.

        The decoder has no clock: the caller decides when a frame is overdue. A
        header whose DATA_SIZE is plausible but wrong would otherwise hold every
        later frame until that many bytes have arrived. Returns whether there was
        such a frame; the next event is then its CorruptFrame (reason `stalled`)
        when it sat at a frame boundary.
        """
        if not self.awaiting_frame:
            return False
        buf, pos = self._buffer, self._pos
        command = data_size = 0
        if len(buf) - pos >= HEADER_SIZE:
            _, command, data_size = _HEADER.unpack_from(buf, pos)
        event = self._abandon(
            pos, self._state is DecoderState.CANDIDATE, command, data_size, "stalled"
        )
        if isinstance(event, CorruptFrame):
            self._queued.append(self._emitted(event))
        return True

    def next_event(self) -> DecoderEvent | Literal[NeedData.NEED_DATA]:
        if self._queued:
            return self._queued.popleft()
        while True:
            state, pos = self._state, self._pos
            event: DecoderEvent | None
            if state is DecoderState.BROKEN:
                assert self._broken is not None
                event = self._broken
            elif state is DecoderState.ENDED:
                event = EndOfStream(self.offset)
            elif state is DecoderState.HUNTING:
                event = self._hunt()
            else:
                event = self._frame_at_pos(hunted=state is DecoderState.CANDIDATE)
            if event is not None:
                # Garbage skipped on the way comes first, in stream order.
                garbage = self._flush_garbage()
                if garbage is not None:
                    self._queued.append(self._emitted(event))
                    return garbage
                return self._emitted(event)
            if self._state is state and self._pos == pos:
                # no progress possible with what is buffered
                if self._eof and self.buffered == 0:
                    self._state = DecoderState.ENDED
                    continue
                garbage = self._flush_garbage()
                if garbage is not None:
                    return garbage
                # Waiting for bytes: a thousand idle sessions must not each keep
                # their last frame (~330 KB) until their next read.
                self._compact()
                return NEED_DATA

    # -- internals ---------------------------------------------------------

    def _emitted(self, event: DecoderEvent) -> DecoderEvent:
        if isinstance(event, Frame | UnknownCommand):
            self._in_region = False  # in sync again: the next garbage is a new region
            self._look_pending.clear()
        elif isinstance(event, CorruptFrame):
            self._in_region = True  # the garbage rescanned after it is its region
        return event

    def _flush_garbage(self) -> GarbageSkipped | None:
        if not self._garbage_count:
            return None
        event = GarbageSkipped(self._garbage_count, self._garbage_offset, not self._in_region)
        self._in_region = True
        self._garbage_count = 0
        return event

    def _frame_at_pos(self, *, hunted: bool) -> DecoderEvent | None:
        buf, pos = self._buffer, self._pos
        avail = len(buf) - pos
        if avail == 0:
            return None
        if (
            buf[pos] != SIG[0]
            or (avail >= 2 and buf[pos + 1] != SIG[1])
            or (avail == 1 and self._eof)
        ):
            self._start_hunting(pos)
            return None
        if avail == 1:
            return None
        if avail < HEADER_SIZE:
            if self._eof:
                return self._abandon(pos, hunted, 0, 0, "truncated")
            return None
        _, command, data_size = _HEADER.unpack_from(buf, pos)
        if data_size > self.max_data_size:
            # Only reached at a frame boundary: a hunted header is never this big.
            self._state = DecoderState.BROKEN
            self._broken = StreamBroken(
                "oversize_frame",
                f"DATA_SIZE {data_size} over the limit {self.max_data_size}",
                self._base + pos,
            )
            self._buffer = bytearray()
            self._pos = 0
            return self._broken
        if data_size < len(SIG_END):
            return self._abandon(pos, hunted, command, data_size, "bad_data_size")
        end = pos + HEADER_SIZE + data_size
        if len(buf) < end:
            if self._eof:
                return self._abandon(pos, hunted, command, data_size, "truncated")
            if hunted:
                later = self._look_ahead(pos)
                if later is not None:
                    # A complete frame behind this candidate: the candidate was
                    # garbage that looked like a header.
                    self._skip_to(later)
                    self._scan = later
                    return None
            return None
        if buf[end - 2 : end] != SIG_END:
            return self._abandon(pos, hunted, command, data_size, "bad_sig_end")
        self._state = DecoderState.SYNCED
        if command not in _KNOWN_COMMANDS:
            # Only reached at a frame boundary (hunting takes known commands only).
            head = bytes(buf[pos + HEADER_SIZE : min(end - 2, pos + HEADER_SIZE + UNKNOWN_HEAD)])
            self._pos = end
            return UnknownCommand(command, end - pos, self._base + pos, head)
        with memoryview(buf) as view:  # one copy of DATA, not a bytearray slice and then bytes
            data = bytes(view[pos + HEADER_SIZE : end - 2])
        frame = Frame(command, data, self._base + pos)
        self._pos = end
        return frame

    def _plausible(self, command: int, data_size: int) -> bool:
        return command in _KNOWN_COMMANDS and 2 <= data_size <= self.max_data_size

    def _look_ahead(self, pos: int) -> int | None:
        """The buffer index of the first complete, valid frame after the candidate
        at `pos`, or None. Each buffered byte is scanned once over all calls; the
        incomplete headers met are kept (bounded) and checked once complete."""
        buf, base = self._buffer, self._base
        size = len(buf)
        after = base + pos + len(SIG)
        best: int | None = None
        pending = self._look_pending
        while pending and pending[0][0] <= base + size:
            end_abs, at_abs = heapq.heappop(pending)
            end = end_abs - base
            if at_abs >= after and buf[end - 2 : end] == SIG_END:
                best = at_abs - base if best is None else min(best, at_abs - base)
        scan = max(self._look_from - base, pos + len(SIG))
        while True:
            found = buf.find(SIG, scan)
            if found < 0:
                scan = max(scan, size - 1)  # a last CC may be half a SIG
                break
            if (best is not None and found >= best) or size - found < HEADER_SIZE:
                scan = found
                break
            _, command, data_size = _HEADER.unpack_from(buf, found)
            scan = found + len(SIG)
            if not self._plausible(command, data_size):
                continue
            end = found + HEADER_SIZE + data_size
            if end > size:
                if len(pending) < MAX_LOOKAHEAD_HEADERS:
                    heapq.heappush(pending, (base + end, base + found))
            elif buf[end - 2 : end] == SIG_END:
                best = found  # headers are met in order: nothing earlier is complete
                break
        self._look_from = base + scan
        return best

    def _abandon(
        self, pos: int, hunted: bool, command: int, data_size: int, reason: str
    ) -> CorruptFrame | None:
        """The frame that starts at `pos` is not one: rescan from just after its SIG."""
        self._start_hunting(pos + len(SIG))
        if hunted:
            return None  # it was garbage that looked like a header; reported as garbage
        end = min(len(self._buffer), pos + HEADER_SIZE + data_size)
        event = CorruptFrame(
            self._base + pos, command, data_size, reason, bytes(self._buffer[pos:end])
        )
        # The event accounts for its SIG; what follows is rescanned and, if no
        # frame, reported as garbage (of this event's region).
        self._pos = pos + len(SIG)
        return event

    def _start_hunting(self, scan_from: int) -> None:
        self._state = DecoderState.HUNTING
        self._scan = scan_from

    def _hunt(self) -> DecoderEvent | None:
        buf, pos = self._buffer, self._pos
        scan = max(self._scan, pos)
        while True:
            found = buf.find(SIG, scan)
            if found < 0:
                # A last byte CC may be the first half of a SIG.
                keep = 1 if (not self._eof and len(buf) > scan and buf[-1] == SIG[0]) else 0
                self._scan = len(buf) - keep
                self._skip_to(len(buf) - keep)
                return None
            if len(buf) - found < HEADER_SIZE and not self._eof:
                self._scan = found
                self._skip_to(found)
                return None
            if len(buf) - found >= HEADER_SIZE:
                _, command, data_size = _HEADER.unpack_from(buf, found)
                if self._plausible(command, data_size):
                    self._skip_to(found)
                    self._state = DecoderState.CANDIDATE
                    return None
            scan = found + len(SIG)

    def _skip_to(self, index: int) -> None:
        """Skip buffer bytes up to `index` as garbage (reported later, coalesced)."""
        count = index - self._pos
        if count <= 0:
            return
        if not self._garbage_count:
            self._garbage_offset = self._base + self._pos
        self._garbage_count += count
        self._pos = index


def encode_frame(command: int, data: bytes) -> bytes:
    return _HEADER.pack(SIG, command, len(data) + len(SIG_END)) + data + SIG_END


# --------------------------------------------------------------------------
# Login


@dataclass(frozen=True, slots=True)
class LoginRequest:
    user: str
    password: str

    def __repr__(self) -> str:  # never show the secret
        return f"LoginRequest(user={self.user!r}, password='***')"


@dataclass(frozen=True, slots=True)
class LoginReply:
    status: int

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def unauthorized(self) -> bool:
        return self.status == 401


def encode_login_request(user: str, password: str) -> bytes:
    body = json.dumps({"id": user, "password": password}, ensure_ascii=False)
    return encode_frame(Command.LOGIN_REQ, body.encode("utf-8"))


def parse_login_request(data: bytes) -> LoginRequest:
    document = _json_object(data, "bad_login_request")
    user, password = document.get("id"), document.get("password")
    if not isinstance(user, str) or not isinstance(password, str):
        raise CameraProtocolError("bad_login_request", "id and password must be strings")
    return LoginRequest(user, password)


def encode_login_reply(status: int | str, *, as_number: bool = False) -> bytes:
    result: int | str = int(status) if as_number else str(status)
    return encode_frame(Command.LOGIN_REPLY, json.dumps({"result": result}).encode("utf-8"))


def parse_login_reply(data: bytes) -> LoginReply:
    """`{"result": "200"}`; the code may also come as a number."""
    document = _json_object(data, "bad_login_reply")
    result = document.get("result")
    if isinstance(result, bool) or not isinstance(result, int | str):
        raise CameraProtocolError("bad_login_reply", f"result is not a status code: {result!r}")
    if isinstance(result, int):
        result = str(result)  # JSON numbers are ASCII digits (a sign aside)
    status = parse_ascii_int(result, kind="bad_login_reply", what="result", max_digits=3)
    return LoginReply(status)


def _json_object(data: bytes, kind: str) -> dict[str, Any]:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CameraProtocolError(kind, f"not UTF-8 JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CameraProtocolError(kind, "not a JSON object")
    return document


# --------------------------------------------------------------------------
# Recognition result (COMM_RECOG_POST DATA)

_BASE_METADATA = Struct(
    "device_id" / Bytes(16),
    "time_ms" / Int64ul,
    "car_number" / Bytes(CAR_NUMBER_SIZE),
    "car_color" / Int8ul,
    "plate_color" / Int8ul,
    "speed" / Int16ul,
    "image_count" / Int8ul,
    "direction" / Int8ul,
    "region" / Bytes(REGION_SIZE),
    "roi" / Int8ul,
)
assert _BASE_METADATA.sizeof() == BASE_METADATA_SIZE
_BASE_PARSER = _BASE_METADATA.compile()

_SCALARS: Final[dict[str, Any]] = {
    "u8": Int8ul,
    "u16": Int16ul,
    "u32": Int32ul,
    "i32": Int32sl,
    "f32": Float32l,
}


@dataclass(frozen=True, slots=True)
class _TrailingField:
    name: str
    scalar: Any | None  # a construct scalar, or None for bytes
    length_from: str | None  # for bytes: the earlier field that gives the length
    # The scalar's own struct format (construct's `fmtstr`): parsing field by
    # field through construct costs ~5 µs a field, this a tenth of that.
    unpack: struct.Struct | None = None


def _trailing_layout() -> tuple[_TrailingField, ...]:
    layout = []
    for name, spec in assumed.TCP_TRAILING_FIELDS:
        if spec.startswith("bytes:"):
            layout.append(_TrailingField(name, None, spec.split(":", 1)[1]))
        else:
            scalar = _SCALARS[spec]
            layout.append(_TrailingField(name, scalar, None, struct.Struct(scalar.fmtstr)))
    return tuple(layout)


_TRAILING: Final = _trailing_layout()


class Flavour(enum.Enum):
    """Which metadata fields a camera's firmware sends."""

    BASE = "base"  # fields 1-10 (79 bytes)
    ALL = "all"  # plus every trailing field of later firmware


@dataclass(frozen=True, slots=True)
class ParseIssue:
    """Something wrong in a recognition result that still left a usable read."""

    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class RecognitionMetadata:
    """The metadata chunk. Trailing fields are None when the firmware did not send them."""

    device_id: uuid.UUID
    time_ms: int
    car_number: str
    car_color: int
    plate_color: int
    speed: int
    image_count: int
    direction: int
    region: str
    roi: int
    plate_length: int | None = None
    license_plate: str | None = None
    vehicle_type: int | None = None
    confidence: float | None = None
    plate_type: int | None = None
    distance: int | None = None
    azimuth: float | None = None
    vehicle_count: int | None = None
    width: int | None = None
    height: int | None = None
    x1: int | None = None
    y1: int | None = None
    x2: int | None = None
    y2: int | None = None
    # Trailing fields named in the ASSUMED table that have no slot above.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def plate(self) -> str:
        """Field 12 when present and non-empty, else field 3."""
        return self.license_plate or self.car_number

    @property
    def time(self) -> datetime | None:
        if self.time_ms == 0:
            return None  # a camera without a clock set; not 1970
        try:
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=self.time_ms)
        except OverflowError:
            return None

    @property
    def resolution(self) -> tuple[int, int] | None:
        if self.width and self.height:
            return (self.width, self.height)
        return None


_METADATA_FIELDS: Final = frozenset(f.name for f in fields(RecognitionMetadata))


@dataclass(frozen=True, slots=True)
class RecognitionResult:
    metadata: RecognitionMetadata
    images: tuple[bytes, ...]  # image chunks in wire order
    plate_jpeg: bytes | None
    scene_jpeg: bytes | None
    classified_by: str  # "resolution" | "order" | "none"
    issues: tuple[ParseIssue, ...] = ()
    # The images that are neither plate nor scene, in wire order (evidence pictures).
    extras: tuple[bytes, ...] = ()


def parse_recognition_result(data: bytes, *, max_images: int = MAX_IMAGES) -> RecognitionResult:
    """The COMM_RECOG_POST DATA: metadata chunk, then image chunks.

    Raises CameraProtocolError when there is no usable metadata. Problems with
    the images (count lying, a chunk running past DATA) are `issues` of a result
    that still carries the read and whatever images were intact.
    """
    view = memoryview(data)
    if len(view) < CHUNK_HEADER_SIZE:
        raise CameraProtocolError("no_metadata", f"DATA of {len(view)} bytes holds no chunk")
    chunk_id, size = _CHUNK_HEADER.unpack_from(view, 0)
    if chunk_id != assumed.TCP_METADATA_CHUNK_ID:
        raise CameraProtocolError("no_metadata", f"first chunk id is {chunk_id.hex(' ')}")
    if CHUNK_HEADER_SIZE + size > len(view):
        raise CameraProtocolError(
            "chunk_overflow",
            f"metadata chunk of {size} bytes runs past DATA ({len(view) - CHUNK_HEADER_SIZE} left)",
        )
    issues: list[ParseIssue] = []
    metadata = parse_metadata(bytes(view[CHUNK_HEADER_SIZE : CHUNK_HEADER_SIZE + size]), issues)
    if metadata.image_count > max_images:
        raise CameraProtocolError(
            "too_many_images", f"image count {metadata.image_count} over {max_images}"
        )
    images: list[bytes] = []
    pos = CHUNK_HEADER_SIZE + size
    while pos < len(view):
        if len(view) - pos < CHUNK_HEADER_SIZE:
            issues.append(
                ParseIssue("chunk_truncated", f"{len(view) - pos} bytes at {pos} after the chunks")
            )
            break
        chunk_id, size = _CHUNK_HEADER.unpack_from(view, pos)
        start = pos + CHUNK_HEADER_SIZE
        if start + size > len(view):
            issues.append(
                ParseIssue(
                    "chunk_overflow",
                    f"chunk at {pos} claims {size} bytes, {len(view) - start} left",
                )
            )
            break
        if chunk_id == assumed.TCP_IMAGE_CHUNK_ID:
            if len(images) >= max_images:
                raise CameraProtocolError("too_many_images", f"more than {max_images} images")
            images.append(bytes(view[start : start + size]))
        else:
            issues.append(ParseIssue("unknown_chunk", f"chunk id {chunk_id.hex(' ')} at {pos}"))
        pos = start + size
    if len(images) != metadata.image_count:
        issues.append(
            ParseIssue(
                "image_count_mismatch",
                f"metadata says {metadata.image_count} images, {len(images)} present",
            )
        )
    plate, scene, how = classify_image_indices(images, metadata.resolution)
    return RecognitionResult(
        metadata,
        tuple(images),
        None if plate is None else images[plate],
        None if scene is None else images[scene],
        how,
        tuple(issues),
        extras=tuple(image for i, image in enumerate(images) if i not in (plate, scene)),
    )


def parse_metadata(payload: bytes, issues: list[ParseIssue] | None = None) -> RecognitionMetadata:
    """Fields 1-10, then as many trailing fields as the chunk holds whole."""
    if issues is None:
        issues = []
    if len(payload) < BASE_METADATA_SIZE:
        raise CameraProtocolError(
            "short_metadata", f"metadata chunk of {len(payload)} bytes, need {BASE_METADATA_SIZE}"
        )
    base = _BASE_PARSER.parse(payload[:BASE_METADATA_SIZE])
    values: dict[str, Any] = {
        "device_id": uuid.UUID(bytes_le=bytes(base.device_id)),
        "time_ms": base.time_ms,
        "car_number": _fixed_text(base.car_number, "car_number", issues),
        "car_color": base.car_color,
        "plate_color": base.plate_color,
        "speed": base.speed,
        "image_count": base.image_count,
        "direction": base.direction,
        "region": _fixed_text(base.region, "region", issues),
        "roi": base.roi,
    }
    extra: dict[str, Any] = {}
    pos = BASE_METADATA_SIZE
    for spec in _TRAILING:
        value: Any
        if spec.scalar is None:
            length = values.get(spec.length_from or "", extra.get(spec.length_from or ""))
            if not isinstance(length, int) or pos + length > len(payload):
                break
            value = _fixed_text(payload[pos : pos + length], spec.name, issues)
            pos += length
        else:
            assert spec.unpack is not None
            width = spec.unpack.size
            if pos + width > len(payload):
                break
            (value,) = spec.unpack.unpack_from(payload, pos)
            pos += width
            if isinstance(value, float) and finite_or_none(value) is None:
                # NaN/inf is no value (and not JSON): the field is None, the
                # camera's value is kept as text under raw.
                extra[f"{spec.name}_raw"] = str(value)
                value = None
        if spec.name in _METADATA_FIELDS:
            values[spec.name] = value
        else:
            extra[spec.name] = value
    return RecognitionMetadata(**values, extra=extra)


def _fixed_text(raw: bytes, name: str, issues: list[ParseIssue]) -> str:
    """A NUL-padded UTF-8 field; a character cut by the field's end is dropped."""
    text = raw.split(b"\x00", 1)[0]
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        return decoder.decode(text, final=False)
    except UnicodeDecodeError:
        issues.append(ParseIssue("bad_text", f"{name} is not UTF-8"))
        return text.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------
# Images


def classify_images(
    images: Sequence[bytes], resolution: tuple[int, int] | None
) -> tuple[bytes | None, bytes | None, str]:
    """(plate, scene, how): the scene is the image the size of the resolution, else order."""
    plate, scene, how = classify_image_indices(images, resolution)
    return (
        None if plate is None else images[plate],
        None if scene is None else images[scene],
        how,
    )


def classify_image_indices(
    images: Sequence[bytes], resolution: tuple[int, int] | None
) -> tuple[int | None, int | None, str]:
    """`classify_images` as positions in `images`, so the rest can be told apart."""
    if not images:
        return None, None, "none"
    if resolution is not None:
        matches = [i for i, image in enumerate(images) if jpeg_dimensions(image) == resolution]
        if len(matches) == 1:
            scene_index = matches[0]
            others = [i for i in range(len(images)) if i != scene_index]
            return (others[0] if others else None), scene_index, "resolution"
    by_kind: dict[str, int] = {}
    for kind, index in zip(assumed.TCP_IMAGE_ORDER, range(len(images)), strict=False):
        by_kind[kind] = index
    return by_kind.get("plate"), by_kind.get("scene"), "order"


# --------------------------------------------------------------------------
# Building (simulator, tests)


def encode_metadata(metadata: RecognitionMetadata, *, trailing: int | None = 0) -> bytes:
    """The metadata chunk payload: base fields, then the first `trailing` trailing
    fields (None: all of them). Absent trailing values are written as 0."""
    out = bytearray(
        _BASE_METADATA.build(
            {
                "device_id": metadata.device_id.bytes_le,
                "time_ms": metadata.time_ms,
                "car_number": _pad(metadata.car_number.encode("utf-8"), CAR_NUMBER_SIZE),
                "car_color": metadata.car_color,
                "plate_color": metadata.plate_color,
                "speed": metadata.speed,
                "image_count": metadata.image_count,
                "direction": metadata.direction,
                "region": _pad(metadata.region.encode("utf-8"), REGION_SIZE),
                "roi": metadata.roi,
            }
        )
    )
    count = len(_TRAILING) if trailing is None else trailing
    values: dict[str, Any] = {
        name: getattr(metadata, name) for name in _METADATA_FIELDS if name != "extra"
    }
    values.update(metadata.extra)
    for spec in _TRAILING:
        if spec.scalar is None and spec.length_from:
            value = values.get(spec.name) or b""
            encoded = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            values[spec.name] = encoded[:255]
            if values.get(spec.length_from) is None:  # an explicit (lying) length wins
                values[spec.length_from] = len(values[spec.name])
    for spec in _TRAILING[:count]:
        if spec.scalar is None:
            out += values[spec.name]
        else:
            out += spec.scalar.build(values.get(spec.name) or 0)
    return bytes(out)


def _pad(raw: bytes, size: int) -> bytes:
    """Cut to `size` bytes (possibly mid-character, as a camera does) and NUL-pad."""
    return raw[:size].ljust(size, b"\x00")


def encode_recognition_data(
    metadata: RecognitionMetadata,
    images: Sequence[bytes],
    *,
    flavour: Flavour = Flavour.ALL,
    trailing: int | None = None,
) -> bytes:
    """COMM_RECOG_POST DATA. `trailing` (a field count) overrides the flavour."""
    if trailing is None and flavour is Flavour.BASE:
        trailing = 0
    meta = encode_metadata(metadata, trailing=trailing)
    parts = [_CHUNK_HEADER.pack(assumed.TCP_METADATA_CHUNK_ID, len(meta)), meta]
    for image in images:
        parts += [_CHUNK_HEADER.pack(assumed.TCP_IMAGE_CHUNK_ID, len(image)), image]
    return b"".join(parts)


def encode_recognition_frame(
    metadata: RecognitionMetadata,
    images: Sequence[bytes],
    *,
    flavour: Flavour = Flavour.ALL,
    trailing: int | None = None,
) -> bytes:
    data = encode_recognition_data(metadata, images, flavour=flavour, trailing=trailing)
    return encode_frame(Command.RECOG_POST, data)


# --------------------------------------------------------------------------
# To the normalized event

_LIST_MEMBERSHIP: Final = {
    1: ListMembership.BLACK,
    2: ListMembership.WHITE,
    3: ListMembership.VISITOR,
}
_DIRECTIONS: Final = {code: Direction(word) for code, word in assumed.DIRECTION_CODES.items()}


def effective_color_table(configured: Mapping[int, str] | None) -> Mapping[int, str]:
    """The configured table when there is one, else the provisional default."""
    return configured if configured else assumed.PROVISIONAL_COLOR_TABLE


def to_plate_event(
    result: RecognitionResult,
    *,
    camera: str,
    received: datetime,
    color_table: Mapping[int, str],
) -> PlateEvent:
    """The normalized event for one recognition result (pure)."""
    meta = result.metadata
    raw: dict[str, Any] = {}
    for name in ("distance", "azimuth", "vehicle_count"):
        value = getattr(meta, name)
        if value is not None:
            raw[name] = round(value, 4) if isinstance(value, float) else value
    if meta.license_plate and meta.car_number and meta.car_number != meta.license_plate:
        raw["car_number"] = meta.car_number
    if meta.direction not in _DIRECTIONS:
        raw["direction_code"] = meta.direction
    if meta.plate_type is not None and meta.plate_type not in _LIST_MEMBERSHIP:
        raw["plate_type"] = meta.plate_type
    if meta.vehicle_type is not None and meta.vehicle_type not in assumed.VEHICLE_TYPES:
        raw["vehicle_type_code"] = meta.vehicle_type
    evidence = dict(zip(assumed.TCP_EXTRA_IMAGE_KINDS, result.extras, strict=False))
    if len(result.extras) > len(evidence):
        raw["extra_images"] = len(result.extras) - len(evidence)
    for name, value in meta.extra.items():
        raw[name] = value if not isinstance(value, bytes) else value.hex()

    box = None
    if None not in (meta.x1, meta.y1, meta.x2, meta.y2) and any(
        (meta.x1, meta.y1, meta.x2, meta.y2)
    ):
        assert meta.x1 is not None and meta.y1 is not None
        assert meta.x2 is not None and meta.y2 is not None
        box = Box(meta.x1, meta.y1, meta.x2, meta.y2)
    resolution = Resolution(*meta.resolution) if meta.resolution else None
    return PlateEvent(
        camera=camera,
        source=Source.TCP,
        plate=meta.plate,
        received=received,
        time=meta.time,
        confidence=values.confidence(meta.confidence),
        direction=_DIRECTIONS.get(meta.direction, Direction.UNKNOWN),
        speed_kmh=meta.speed,
        list=_LIST_MEMBERSHIP.get(meta.plate_type) if meta.plate_type is not None else None,
        vehicle=Vehicle(
            type=(
                assumed.VEHICLE_TYPES.get(meta.vehicle_type)
                if meta.vehicle_type is not None
                else None
            ),
            color=color_table.get(meta.car_color),
            color_code=meta.car_color,
        ),
        plate_color=PlateColor(name=color_table.get(meta.plate_color), code=meta.plate_color),
        region=meta.region or None,
        roi=meta.roi or None,
        box=box,
        resolution=resolution,
        device_id=str(meta.device_id),
        raw=raw,
        plate_image=_image(result.plate_jpeg, "the camera sent no plate image"),
        scene_image=_image(result.scene_jpeg, "the camera sent no scene image"),
        # None when not sent: most cameras have no evidence cameras linked.
        evidence0_image=_evidence(evidence.get("evidence0")),
        evidence1_image=_evidence(evidence.get("evidence1")),
    )


def _evidence(data: bytes | None) -> Image | None:
    return None if data is None else Image(data=data)


def _image(data: bytes | None, reason: str) -> Image:
    return Image(data=data) if data is not None else Image.missing(reason)


# --------------------------------------------------------------------------
# The client: login, then recognitions (h11's Connection shape)


class ClientState(enum.Enum):
    IDLE = "idle"  # start() not called yet
    LOGGING_IN = "logging_in"  # the login request is queued or sent; its reply awaited
    LOGGED_IN = "logged_in"
    LOGIN_FAILED = "login_failed"  # refused or unreadable reply: the session is over
    CLOSED = "closed"  # the stream ended or broke


@dataclass(frozen=True, slots=True)
class LoginAccepted:
    offset: int


@dataclass(frozen=True, slots=True)
class LoginRefused:
    status: int
    offset: int

    @property
    def unauthorized(self) -> bool:
        """401: the credentials, not the camera, are wrong."""
        return self.status == 401


@dataclass(frozen=True, slots=True)
class BadLoginReply:
    """A login reply that is not the spec's JSON: the session cannot go on."""

    kind: str
    detail: str
    offset: int


@dataclass(frozen=True, slots=True)
class LoginReplyIgnored:
    """A further login reply once logged in (some cameras repeat it)."""

    offset: int


@dataclass(frozen=True, slots=True)
class Recognition:
    frame: Frame
    result: RecognitionResult


@dataclass(frozen=True, slots=True)
class UnreadableRecognition:
    """A whole COMM_RECOG_POST frame whose payload cannot be read."""

    frame: Frame
    error: CameraProtocolError


ClientEvent = (
    LoginAccepted
    | LoginRefused
    | BadLoginReply
    | LoginReplyIgnored
    | Recognition
    | UnreadableRecognition
    | UnknownCommand
    | GarbageSkipped
    | CorruptFrame
    | StreamBroken
    | EndOfStream
)
# The events that are one whole frame from the camera (counted as frames).
FRAME_EVENTS: Final = (
    Recognition,
    UnreadableRecognition,
    LoginAccepted,
    LoginRefused,
    BadLoginReply,
    LoginReplyIgnored,
    UnknownCommand,
)
_IN_SESSION: Final = (
    Recognition,
    UnreadableRecognition,
    UnknownCommand,
    GarbageSkipped,
    CorruptFrame,
)
_ENDS: Final = (StreamBroken, EndOfStream)

# Every transition of the client, and the only place one is decided: the state
# a (state, event type) pair leads to. LoginRequest is the caller's start();
# the rest are what next_event() hands out. A pair not listed is a bug.
CLIENT_TRANSITIONS: Final[Mapping[ClientState, Mapping[type, ClientState]]] = {
    ClientState.IDLE: {LoginRequest: ClientState.LOGGING_IN},
    ClientState.LOGGING_IN: {
        LoginAccepted: ClientState.LOGGED_IN,
        LoginRefused: ClientState.LOGIN_FAILED,
        BadLoginReply: ClientState.LOGIN_FAILED,
        # Reads before the login reply are taken, as the camera sent them.
        **dict.fromkeys(_IN_SESSION, ClientState.LOGGING_IN),
        **dict.fromkeys(_ENDS, ClientState.CLOSED),
    },
    ClientState.LOGGED_IN: {
        LoginReplyIgnored: ClientState.LOGGED_IN,
        **dict.fromkeys(_IN_SESSION, ClientState.LOGGED_IN),
        **dict.fromkeys(_ENDS, ClientState.CLOSED),
    },
    ClientState.LOGIN_FAILED: {},
    # The decoder repeats its last event once the stream is over.
    ClientState.CLOSED: dict.fromkeys(_ENDS, ClientState.CLOSED),
}


class TcpClient:
    """One session with a TCP camera, sans-IO.

    `start()` queues the login request (take it with `data_to_send()`), then
    feed the camera's bytes to `receive_data()` (`b""` at end of stream) and
    drain `next_event()` until NEED_DATA. The login reply decides the session;
    every recognition frame comes out parsed. The framing is `FrameDecoder`'s:
    its garbage, corrupt-frame and end events come through as they are. The
    caller owns the clock: `awaiting_frame` and `abandon_partial_frame()` are
    the decoder's, for a frame that is overdue.
    """

    def __init__(
        self, username: str, password: str, *, max_data_size: int = DEFAULT_MAX_DATA_SIZE
    ) -> None:
        self.state = ClientState.IDLE
        self._login = LoginRequest(username, password)
        self._decoder = FrameDecoder(max_data_size)
        self._outgoing = bytearray()

    @property
    def logged_in(self) -> bool:
        return self.state is ClientState.LOGGED_IN

    @property
    def awaiting_frame(self) -> bool:
        return self._decoder.awaiting_frame

    def abandon_partial_frame(self) -> bool:
        return self._decoder.abandon_partial_frame()

    def start(self) -> None:
        self._transition(self._login)
        self._outgoing += encode_login_request(self._login.user, self._login.password)

    def data_to_send(self) -> bytes:
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the camera's bytes (copied: the caller may reuse its buffer);
        `b""` means the stream ended."""
        self._decoder.receive_data(data)

    @property
    def unconsumed(self) -> int:
        """Bytes received and not yet decoded."""
        return self._decoder.buffered

    def next_event(self) -> ClientEvent | Literal[NeedData.NEED_DATA]:
        if self.state is ClientState.LOGIN_FAILED:
            raise CodecMisuseError("next_event after a failed login: the session is over")
        decoded = self._decoder.next_event()
        if decoded is NEED_DATA:
            return NEED_DATA
        event = self._interpret(decoded) if isinstance(decoded, Frame) else decoded
        self._transition(event)
        return event

    def _transition(self, event: object) -> None:
        allowed = CLIENT_TRANSITIONS[self.state]
        kind = type(event)
        if kind not in allowed:
            raise CodecMisuseError(f"{kind.__name__} in state {self.state.name}")
        self.state = allowed[kind]

    def _interpret(self, frame: Frame) -> ClientEvent:
        command = frame.command
        if command == Command.RECOG_POST:
            try:
                return Recognition(frame, parse_recognition_result(frame.data))
            except CameraProtocolError as exc:
                return UnreadableRecognition(frame, exc)
        if command == Command.LOGIN_REPLY:
            return self._login_reply(frame)
        # LOGIN_REQ is ours to send, not the camera's: skipped like an unknown command.
        return UnknownCommand(frame.command, frame.size, frame.offset, frame.data[:UNKNOWN_HEAD])

    def _login_reply(self, frame: Frame) -> ClientEvent:
        if self.state is ClientState.LOGGED_IN:
            return LoginReplyIgnored(frame.offset)
        try:
            reply = parse_login_reply(frame.data)
        except CameraProtocolError as exc:
            return BadLoginReply(exc.kind, exc.detail, frame.offset)
        if reply.ok:
            return LoginAccepted(frame.offset)
        return LoginRefused(reply.status, frame.offset)
