"""Sans-IO parser for what a camera sends in HTTP mode (docs/camera-protocols.md, section 2).

A POST body (a JSON object) or a GET query becomes an `HttpPlateRead` or an
`HttpCameraNotice`; `to_event` turns either into the normalized event. No I/O,
no clock: the camera's time zone and the time received are passed in.

Speed: a POST is ~1 KB of fields around two base64 images of ~400 KB. Before
JSON parsing, long string values are cut out of the body by a quote scan
(`bytes.find`, no per-character Python work) and left in place as byte ranges;
images are base64-decoded straight from those ranges with pybase64. This is
about 15x faster than `json.loads` on the whole body and copies no image text.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

import pybase64

from gateway.codecs import assumed, values
from gateway.errors import CameraProtocolError
from gateway.event import (
    Box,
    CameraEvent,
    Direction,
    Image,
    ListMembership,
    PlateColor,
    PlateEvent,
    Resolution,
    Source,
    Vehicle,
    camera_event_kind_topic_segment,
)

# Safety bounds on what a camera may put in an event (not protocol points).
MAX_PLATE_CHARS = 64  # longer is not a plate: the body is refused
MAX_TEXT_CHARS = 128  # region, vehicle attributes...: truncated beyond
MAX_KIND_CHARS = 64
RAW_MAX_STRING_CHARS = 1024  # longer strings in `raw` are replaced by a summary
RAW_MAX_DEPTH = 8
RAW_MAX_ITEMS = 256  # per object or list kept in `raw`
MAX_EVENT_PICTURES = 8  # per camera event: each is published on a retained topic
# Strings at least this long (in bytes) are cut out of the body before parsing.
LONG_STRING_BYTES = 1024

# Parameters of a GET query beyond this are ignored (a camera sends two or three).
MAX_QUERY_FIELDS = 256

_DATA_URI_MAX_HEADER = 200  # "data:image/jpeg;base64," and friends
_MAX_SCANNED_STRINGS = 4096


# --------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class BodyOptions:
    """How one camera's bodies are read: its time zone and mounting."""

    tz: tzinfo = UTC
    swap_direction: bool = False


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """A field that could not be used; the read itself is still good."""

    field: str
    kind: str  # short stable label: bad_image, bad_time, bad_value, too_long
    detail: str


@dataclass(frozen=True, slots=True)
class HttpPlateRead:
    plate: str
    time: datetime | None = None
    confidence: float | None = None
    direction: Direction = Direction.UNKNOWN
    speed_kmh: float | None = None
    list: ListMembership | None = None
    vehicle: Vehicle = field(default_factory=Vehicle)
    plate_color: PlateColor = field(default_factory=PlateColor)
    region: str | None = None
    roi: int | None = None
    box: Box | None = None
    resolution: Resolution | None = None
    # None: not sent (always so for GET); Image.missing: sent but unusable.
    plate_image: Image | None = None
    scene_image: Image | None = None
    evidence0_image: Image | None = None
    evidence1_image: Image | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    problems: tuple[FieldProblem, ...] = ()


@dataclass(frozen=True, slots=True)
class HttpCameraNotice:
    """Any other event kind the camera posts (counting, list match, ...)."""

    kind: str  # already safe as one MQTT topic level
    time: datetime | None = None
    # Every field as sent, but a picture's field holds None: its picture is in
    # `images` (the event's JSON puts a reference to its topic there).
    data: Mapping[str, Any] = field(default_factory=dict)
    images: Mapping[str, Image] = field(default_factory=dict)
    problems: tuple[FieldProblem, ...] = ()


HttpBody = HttpPlateRead | HttpCameraNotice


# --------------------------------------------------------------------------
# Entry points


def parse_json_body(body: bytes, options: BodyOptions = BodyOptions()) -> HttpBody:
    """A POSTed body → read or notice. Raises CameraProtocolError if unreadable."""
    return interpret_document(load_json_body(body), options)


def load_json_body(body: bytes) -> dict[str, Any]:
    """A POSTed body as its JSON object, long strings (images) still in the body.

    The first half of `parse_json_body`: enough to see which camera sent it
    (`document_device`) before the camera's options are known.
    """
    if not body.strip():
        raise CameraProtocolError("empty_body", "the request has no body")
    document = _load(body)
    if not isinstance(document, dict):
        raise CameraProtocolError(
            "not_object", f"the body is JSON but not an object ({type(document).__name__})"
        )
    # A `\uD8xx` escape can put a lone surrogate into a str. Long strings
    # (the images) are still in the body and checked when their text is read;
    # the rest of the document is a few short fields: walking them costs far
    # less than scanning a 400 KB body for the escape (measured 0.1 ms).
    _refuse_invalid_text(document)
    return document


def interpret_document(document: Mapping[str, Any], options: BodyOptions) -> HttpBody:
    """A loaded POST body (`load_json_body`) → read or notice, with the camera's options."""
    return _interpret(document, options, images=True)


def document_device(document: Mapping[str, Any]) -> str | None:
    """The `device` field (the name set on the camera) as text, or None."""
    for key, value in document.items():
        if _norm_key(key) == "device":
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value).strip()[:MAX_TEXT_CHARS] or None
            return None
    return None


def parse_query_string(query: str, options: BodyOptions = BodyOptions()) -> HttpBody:
    """A GET query as it came on the request line (still percent-encoded) → read or notice.

    Decoded strictly: a percent-escape that is not UTF-8 (`%FF`, or `%ED%A0%80`,
    an encoded surrogate) is refused as `invalid_text`, where a lenient decoder
    would have put U+FFFD into the plate.
    """
    return interpret_query(load_query_string(query), options)


def _unquote(text: str, field_name: str) -> str:
    try:
        return urllib.parse.unquote_plus(text, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise CameraProtocolError(
            "invalid_text", f"invalid text in field {field_name[:64]!r}: not UTF-8 ({exc.reason})"
        ) from None


def parse_query(pairs: Iterable[tuple[str, str]], options: BodyOptions = BodyOptions()) -> HttpBody:
    """A GET query (`?Caption=LPR&description=MS12345`) → read (no images) or notice."""
    return interpret_query(load_query(pairs), options)


def load_query_string(query: str) -> dict[str, str]:
    """A GET query as it came on the request line → its fields (first of each name)."""
    pairs: list[tuple[str, str]] = []
    for part in query.split("&")[:MAX_QUERY_FIELDS]:
        if not part:
            continue
        raw_key, _, raw_value = part.partition("=")
        key = _unquote(raw_key, raw_key)
        pairs.append((key, _unquote(raw_value, key)))
    return load_query(pairs)


def load_query(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    document: dict[str, str] = {}
    for key, value in pairs:
        document.setdefault(key, value)
    _refuse_invalid_text(document)
    return document


def interpret_query(document: Mapping[str, Any], options: BodyOptions) -> HttpBody:
    """A loaded GET query → read (no images) or notice."""
    fields = _Fields(document)
    fields.alias("description", "plate")
    fields.alias("caption", "event")
    return _interpret_fields(fields, options, images=False)


def to_event(result: HttpBody, camera: str, received: datetime) -> PlateEvent | CameraEvent:
    if isinstance(result, HttpPlateRead):
        return plate_event(result, camera, received)
    return camera_event(result, camera, received)


def plate_event(read: HttpPlateRead, camera: str, received: datetime) -> PlateEvent:
    return PlateEvent(
        camera=camera,
        source=Source.HTTP,
        plate=read.plate,
        received=received,
        time=read.time,
        confidence=read.confidence,
        direction=read.direction,
        speed_kmh=read.speed_kmh,
        list=read.list,
        vehicle=read.vehicle,
        plate_color=read.plate_color,
        region=read.region,
        roi=read.roi,
        box=read.box,
        resolution=read.resolution,
        raw=read.raw,
        plate_image=read.plate_image,
        scene_image=read.scene_image,
        evidence0_image=read.evidence0_image,
        evidence1_image=read.evidence1_image,
    )


def camera_event(notice: HttpCameraNotice, camera: str, received: datetime) -> CameraEvent:
    return CameraEvent(
        camera=camera,
        source=Source.HTTP,
        kind=notice.kind,
        received=received,
        time=notice.time,
        data=notice.data,
        images=notice.images,
    )


# --------------------------------------------------------------------------
# Text that cannot be stored
#
# JSON lets a body escape half of a UTF-16 pair (`"\ud800"`); Python keeps it as
# a lone surrogate, which no UTF-8 encoder (the outbox, MQTT, the log) accepts.
# Such a body is refused whole, so nothing of it reaches the pipeline. Control
# characters are legal JSON text and are kept: topics are made safe elsewhere.

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_ASCII_COMPATIBLE = ("utf-8", "utf-8-sig")


def _refuse_invalid_text(document: Mapping[str, Any]) -> None:
    """Raise CameraProtocolError naming the top-level field that holds a lone surrogate."""
    for key, value in document.items():
        if _SURROGATE.search(key):
            raise _invalid_text(key, "field name")
        stack: list[Any] = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                bad = _SURROGATE.search(item) is not None
            elif isinstance(item, dict):
                bad = any(_SURROGATE.search(str(k)) for k in item)
                stack.extend(item.values())
            elif isinstance(item, list):
                bad = False
                stack.extend(item)
            else:
                bad = False
            if bad:
                raise _invalid_text(key, "field")


def _named(error: CameraProtocolError, field: str) -> CameraProtocolError:
    """A long string's invalid_text error, told with the field that holds it."""
    return _invalid_text(field, "field") if error.kind == "invalid_text" else error


def _invalid_text(key: str, what: str) -> CameraProtocolError:
    # repr() escapes the surrogate itself, so the detail is safe to log and to send.
    return CameraProtocolError(
        "invalid_text", f"invalid text in {what} {key[:64]!r}: lone surrogate"
    )


# --------------------------------------------------------------------------
# JSON with long strings left in the body


@dataclass(frozen=True, slots=True)
class LongString:
    """A JSON string value still in the body: `body[start:end]` is its raw text."""

    body: bytes
    start: int  # first byte after the opening quote
    end: int  # the closing quote

    @property
    def size(self) -> int:
        return self.end - self.start

    def text(self) -> str:
        """The exact value `json.loads` would give (escapes resolved, checked).

        Raises CameraProtocolError where `json.loads` of the body would have
        failed inside this string (a bad escape, a control character, bad UTF-8).
        """
        try:
            value = json.loads(self.body[self.start - 1 : self.end + 1])
        except ValueError as exc:
            raise CameraProtocolError("not_json", f"bad string in the body: {exc}"[:300]) from None
        if not isinstance(value, str):  # pragma: no cover -- a quoted token is a string
            raise CameraProtocolError("not_json", "bad string in the body")
        if _SURROGATE.search(value) is not None:
            raise CameraProtocolError(
                "invalid_text", f"invalid text in a field of {self.size} bytes: lone surrogate"
            )
        return value

    def ascii_view(self) -> memoryview | bytes:
        """The value's bytes for base64: a view when the text has no escapes.

        `\\/` is the only escape base64 text carries (PHP-style encoders emit
        it); any other escape falls back to the exact JSON string value.
        """
        body, start, end = self.body, self.start, self.end
        if body.find(b"\\", start, end) < 0:
            return memoryview(body)[start:end]
        if _ESCAPE_NOT_SLASH.search(body, start, end) is None:
            return body[start:end].translate(None, b"\\")
        return self.text().encode("utf-8", "surrogatepass")


_ESCAPE_NOT_SLASH = re.compile(rb"\\[^/]")


def _load(body: bytes) -> Any:
    cut = _cut_long_strings(body)
    if cut is not None:
        reduced, longs = cut
        queue: Iterator[LongString] = iter(longs)

        def constant(name: str) -> Any:
            return next(queue) if name == "NaN" else float(name)

        try:
            return json.loads(_decode(reduced), parse_constant=constant)
        except Exception:
            pass  # the plain parse below gives the exact error
    try:
        return json.loads(_decode(body))
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise CameraProtocolError("not_json", f"the body is not JSON: {detail}"[:300]) from None


def _decode(data: bytes) -> str:
    """The body as text, decoded strictly.

    `json.loads(bytes)` decodes with "surrogatepass": an encoded surrogate
    (ED A0 80) would become a lone U+D800 that no UTF-8 encoder downstream
    (outbox, MQTT, logs) accepts. Found by the long fuzz run.
    """
    encoding = json.detect_encoding(data)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        try:
            data.decode(encoding, "surrogatepass")
        except UnicodeDecodeError:
            raise CameraProtocolError(
                "not_json", f"the body is not {encoding.upper()} text: {exc.reason}"
            ) from None
        raise CameraProtocolError(
            "invalid_text", "invalid text in the body: an encoded lone surrogate"
        ) from None


def _cut_long_strings(body: bytes) -> tuple[bytes, list[LongString]] | None:
    """Replace each long string value by `NaN`, remembering where it was.

    `json.loads` hands every `NaN` to `parse_constant` in document order, which
    puts the `LongString`s back exactly where the strings were. None when the
    trick does not apply (not UTF-8-looking, a `NaN` of the body's own, nothing
    long): the caller parses the body as it is.
    """
    if len(body) < LONG_STRING_BYTES or json.detect_encoding(body) != "utf-8":
        return None
    find = body.find
    parts: list[bytes] = []
    longs: list[LongString] = []
    kept_from = 0
    position = 0
    length = len(body)
    for _ in range(_MAX_SCANNED_STRINGS):
        opening = find(b'"', position)
        if opening < 0:
            break
        closing = opening + 1
        while True:
            closing = find(b'"', closing)
            if closing < 0:
                return None  # unterminated: let json.loads say so
            backslashes = 0
            while body[closing - 1 - backslashes] == 0x5C:
                backslashes += 1
            if backslashes % 2 == 0:
                break
            closing += 1
        position = closing + 1
        if closing - opening - 1 < LONG_STRING_BYTES:
            continue
        after = position
        while after < length and body[after] in b" \t\r\n":
            after += 1
        if after < length and body[after] == 0x3A:  # ':' -- an object key, keep it
            continue
        parts.append(body[kept_from:opening])
        parts.append(b"NaN")
        longs.append(LongString(body, opening + 1, closing))
        kept_from = position
    else:
        return None  # a body of thousands of strings is no camera's: parse it plainly
    if not longs:
        return None
    parts.append(body[kept_from:])
    reduced = b"".join(parts)
    if reduced.count(b"NaN") != len(longs):
        return None
    return reduced, longs


# --------------------------------------------------------------------------
# Field table


def _norm_key(key: str) -> str:
    # `Vehicle Brand`, `Vehicle_Brand` and `vehicle_brand` are one field.
    return key.strip().lower().replace(" ", "_").replace("-", "_")


class _Fields:
    """The body's top-level fields, taken one by one; what is left goes to `raw`."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.original: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.left: dict[str, Any] = {}  # original key → value, in body order
        for key, value in document.items():
            norm = _norm_key(key)
            if norm in self.values:
                self.left[key] = value  # a second spelling of a field: keep as raw
                continue
            self.original[norm] = key
            self.values[norm] = value
            self.left[key] = value
        self.problems: list[FieldProblem] = []

    def has(self, name: str) -> bool:
        return name in self.values

    def peek(self, name: str) -> Any:
        return self.values.get(name)

    def pop(self, name: str) -> Any:
        if name not in self.values:
            return None
        self.left.pop(self.original[name], None)
        return self.values.pop(name)

    def alias(self, name: str, target: str) -> None:
        """Read field `name` as `target` (raw keeps the spelling the camera used)."""
        if name in self.values and target not in self.values:
            self.original[target] = self.original.pop(name)
            self.values[target] = self.values.pop(name)

    def keep(self, name: str, value: Any) -> None:
        """A field taken but unusable: keep it in raw under its own spelling."""
        self.left[self.original.get(name, name)] = value

    def problem(self, name: str, kind: str, detail: str) -> None:
        self.problems.append(FieldProblem(self.original.get(name, name), kind, detail))

    def pop_text(self, name: str, limit: int = MAX_TEXT_CHARS) -> str | None:
        value = self.pop(name)
        if value is None:
            return None
        if isinstance(value, LongString):
            try:
                value = value.text()
            except CameraProtocolError as exc:
                raise _named(exc, name) from None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.keep(name, value)
            self.problem(name, "bad_value", f"expected text, got {type(value).__name__}")
            return None
        text = str(value).strip()
        if len(text) > limit:
            self.problem(name, "too_long", f"{len(text)} characters, kept {limit}")
            text = text[:limit]
        return text or None

    def pop_int(self, name: str, low: int = 0, high: int = 1 << 31) -> int | None:
        value = self.pop(name)
        if value is None:
            return None
        number = _number(value)
        if number is None or number != int(number) or not low <= number <= high:
            self.keep(name, value)
            self.problem(name, "bad_value", f"expected an integer {low}-{high}")
            return None
        return int(number)


def _number(value: Any) -> float | None:
    """A JSON number or a number as text; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value) if abs(value) < 1 << 53 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= 40 and _NUMBER_TEXT.fullmatch(value.strip()):
        # float() alone would also take "٥", "１２", "1_000", "nan" and "inf".
        number = float(value.strip())
        return number if math.isfinite(number) else None
    return None


_NUMBER_TEXT = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,3})?", re.ASCII)


def _interpret(document: Mapping[str, Any], options: BodyOptions, images: bool) -> HttpBody:
    return _interpret_fields(_Fields(document), options, images)


def _interpret_fields(fields: _Fields, options: BodyOptions, images: bool) -> HttpBody:
    kind = _event_kind(fields.peek("event"))
    plate_value = fields.peek("plate")
    plate_kind = kind is None or kind in assumed.HTTP_PLATE_EVENT_KINDS
    if plate_kind and isinstance(plate_value, LongString):
        raise CameraProtocolError(
            "plate_too_long", f"plate of {plate_value.size} bytes (at most {MAX_PLATE_CHARS})"
        )
    has_plate = (
        isinstance(plate_value, str | int)
        and not isinstance(plate_value, bool)
        and bool(str(plate_value).strip())
    )
    if plate_kind and has_plate:
        return _plate_read(fields, options, images)
    return _notice(fields, kind or "unknown", options, images)


def _event_kind(value: Any) -> str | None:
    if value is None or isinstance(value, LongString | dict | list | bool):
        return None if value is None else "unknown"
    text = str(value).strip()[:MAX_KIND_CHARS]
    return camera_event_kind_topic_segment(text) if text else None


def _plate_read(fields: _Fields, options: BodyOptions, images: bool) -> HttpPlateRead:
    plate = str(fields.pop("plate")).strip()
    if len(plate) > MAX_PLATE_CHARS:
        raise CameraProtocolError(
            "plate_too_long", f"plate of {len(plate)} characters (at most {MAX_PLATE_CHARS})"
        )
    event_value = fields.peek("event")
    if event_value is not None:
        fields.keep("event", fields.pop("event"))
    moment = _pop_time(fields, options.tz)
    confidence = _pop_confidence(fields)
    direction = _pop_direction(fields, options.swap_direction)
    speed = _pop_speed(fields)
    membership = _pop_list(fields)
    vehicle = Vehicle(
        type=fields.pop_text("vehicle_type"),
        color=fields.pop_text("vehicle_color"),
        brand=fields.pop_text("vehicle_brand"),
    )
    plate_color = PlateColor(name=fields.pop_text("plate_color"))
    region = fields.pop_text("region")
    roi = fields.pop_int("detection_region", 0, 255)
    resolution = _pop_resolution(fields)
    box = _pop_box(fields)
    plate_image: Image | None = None
    scene_image: Image | None = None
    evidence: dict[str, Image | None] = {}
    if images:
        decoded = {name: _pop_image(fields, name) for name in _IMAGE_FIELDS}
        plate_image = _first(decoded, assumed.HTTP_PLATE_IMAGE_FIELDS)
        scene_image = _first(decoded, assumed.HTTP_SCENE_IMAGE_FIELDS)
        evidence = {
            kind: decoded.get(name) for name, kind in assumed.HTTP_EVIDENCE_IMAGE_FIELDS.items()
        }
        used = {id(plate_image), id(scene_image), *(id(i) for i in evidence.values())}
        for name, image in decoded.items():
            if image is not None and id(image) not in used:
                fields.keep(name, _image_summary(image))
    return HttpPlateRead(
        plate=plate,
        time=moment,
        confidence=confidence,
        direction=direction,
        speed_kmh=speed,
        list=membership,
        vehicle=vehicle,
        plate_color=plate_color,
        region=region,
        roi=roi,
        box=box,
        resolution=resolution,
        plate_image=plate_image,
        scene_image=scene_image,
        evidence0_image=evidence.get("evidence0"),
        evidence1_image=evidence.get("evidence1"),
        raw=_sanitize_mapping(fields.left, 0),
        problems=tuple(fields.problems),
    )


def _notice(fields: _Fields, kind: str, options: BodyOptions, images: bool) -> HttpCameraNotice:
    sent_times = {name: fields.peek(name) for name in ("time", _MSEC) if fields.has(name)}
    moment = None
    if sent_times:
        order = list(fields.left)
        moment = _pop_time(fields, options.tz)
        for name, value in sent_times.items():
            fields.keep(name, value)  # data keeps every field as sent, in body order
        fields.left = {key: fields.left[key] for key in order if key in fields.left}
    pictures = _pop_event_images(fields) if images else {}
    return HttpCameraNotice(
        kind=kind,
        time=moment,
        data=_sanitize_mapping(fields.left, 0),
        images=pictures,
        problems=tuple(fields.problems),
    )


def _pop_event_images(fields: _Fields) -> dict[str, Image]:
    """A camera event's pictures by their field's name as sent; each field stays in
    `fields.left` at its place, holding None (the JSON refers to the picture there)."""
    pictures: dict[str, Image] = {}
    for key, value in list(fields.left.items()):
        if len(pictures) >= MAX_EVENT_PICTURES:
            # Each picture is a retained topic: a body must not make thousands.
            if _event_image(_norm_key(key), value, decode=False) is not None:
                fields.left[key] = {"omitted": "image", "reason": "too many pictures"}
                fields.problem(key, "too_many_images", f"more than {MAX_EVENT_PICTURES}")
            continue
        image = _event_image(_norm_key(key), value)
        if image is None:
            continue
        if image.data is None:
            fields.problem(key, "bad_image", image.missing_reason or "unusable")
        pictures[key] = image
        fields.left[key] = None
    return pictures


_NOT_DECODED = Image.missing("not decoded")


def _event_image(name: str, value: Any, decode: bool = True) -> Image | None:
    """The picture a camera event's field holds, or None when it is no picture.

    `decode=False`: only whether it looks like one (a name or a `data:image/`
    prefix; a long string's bytes are not decoded to see).
    """
    if name in assumed.HTTP_EVENT_IMAGE_FIELDS and isinstance(value, str | LongString):
        return _decode_named(name, value) if decode else _NOT_DECODED
    if isinstance(value, str):
        if value[:11].lower() != "data:image/":
            return None
        return _decode_named(name, value) if decode else _NOT_DECODED
    if isinstance(value, LongString) and value.size >= assumed.HTTP_EVENT_IMAGE_MIN_BYTES:
        head = bytes(value.body[value.start : value.start + 11]).lower()
        if not decode:
            return _NOT_DECODED if head == b"data:image/" else None
        image = _decode_named(name, value)
        if head == b"data:image/":
            return image
        if image.data is not None and image.data.startswith(assumed.HTTP_EVENT_IMAGE_MAGIC):
            return image
    return None


def _decode_named(name: str, value: Any) -> Image:
    try:
        return decode_image(value)
    except CameraProtocolError as exc:
        raise _named(exc, name) from None


# --------------------------------------------------------------------------
# Individual fields

_TIME_RE = re.compile(
    r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})[ T]+(\d{1,2}):(\d{2}):(\d{2})"
    r"(?:([.:])(\d{1,6}))?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?",
    re.ASCII,
)


def parse_camera_time(text: str, tz: tzinfo, msec: int | None = None) -> datetime:
    """Camera-local `2024-01-15 10:30:00[.mmm|:mmm]` → aware UTC datetime.

    `msec` (from a separate `time_msec` field) is used when the text has no
    fraction. An explicit `Z`/offset in the text wins over `tz`.
    Raises ValueError for anything else.
    """
    match = _TIME_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"unrecognised time {text[:40]!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    separator, fraction, zone = match.group(7), match.group(8), match.group(9)
    micros = 0
    if fraction is not None:
        if separator == ":":
            if len(fraction) > 3:
                raise ValueError(f"milliseconds out of range in {text[:40]!r}")
            micros = int(fraction) * 1000
        else:
            micros = int(fraction.ljust(6, "0"))
    elif msec is not None:
        micros = msec * 1000
    zone_info: tzinfo = tz
    if zone is not None:
        offset = values.utc_offset(zone)
        if offset is None:
            raise ValueError(f"UTC offset out of range in {text[:40]!r}")
        zone_info = offset
    local = datetime(year, month, day, hour, minute, second, micros, tzinfo=zone_info)
    return local.astimezone(UTC)


_MSEC = assumed.HTTP_MILLISECONDS_FIELD


def _pop_time(fields: _Fields, tz: tzinfo) -> datetime | None:
    value = fields.pop("time")
    msec_value = fields.pop(_MSEC)
    msec: int | None = None
    if isinstance(msec_value, str) and _TIME_RE.fullmatch(msec_value.strip()):
        # The whole local time with its milliseconds: the most precise time sent.
        try:
            moment = parse_camera_time(msec_value, tz)
        except (ValueError, OverflowError) as exc:
            fields.keep(_MSEC, msec_value)
            fields.problem(_MSEC, "bad_time", str(exc))
        else:
            if value is not None and not isinstance(value, str):
                fields.keep("time", value)  # not a time at all: raw says what it was
            return moment
        msec_value = None
    if msec_value is not None:
        number = _number(msec_value)
        if number is not None and number == int(number) and 0 <= number <= 999:
            msec = int(number)
        else:
            fields.keep(_MSEC, msec_value)
            fields.problem(_MSEC, "bad_time", "expected milliseconds 0-999 or a time")
    if value is None:
        if msec_value is not None and msec is not None:
            fields.keep(_MSEC, msec_value)
        return None
    if not isinstance(value, str):
        fields.keep("time", value)
        fields.problem("time", "bad_time", f"expected text, got {type(value).__name__}")
        return None
    try:
        return parse_camera_time(value, tz, msec)
    except (ValueError, OverflowError) as exc:
        fields.keep("time", value)
        if msec_value is not None:
            fields.keep(_MSEC, msec_value)
        fields.problem("time", "bad_time", str(exc))
        return None


def _pop_confidence(fields: _Fields) -> float | None:
    value = fields.pop("confidence")
    if value is None:
        return None
    number = values.confidence(value) if isinstance(value, str | int | float) else None
    if number is None:
        fields.keep("confidence", value)
        fields.problem("confidence", "bad_value", "expected 0..1 or a percentage")
    return number


def _pop_speed(fields: _Fields) -> float | None:
    value = fields.pop("speed")
    if value is None:
        return None
    speed, readable = (
        values.speed_kmh(value) if isinstance(value, str | int | float) else (None, False)
    )
    if not readable:
        fields.keep("speed", value)
        fields.problem("speed", "bad_value", "expected km/h or '-'")
    return speed


_SWAPPED = {Direction.IN: Direction.OUT, Direction.OUT: Direction.IN}


def _pop_direction(fields: _Fields, swap: bool) -> Direction:
    value = fields.pop("direction")
    if value is None:
        return Direction.UNKNOWN
    word = str(value).strip().lower() if isinstance(value, str | int) else ""
    name = assumed.HTTP_DIRECTION_WORDS.get(word, word)
    try:
        direction = Direction(name)
    except ValueError:
        fields.keep("direction", value)
        return Direction.UNKNOWN
    return _SWAPPED.get(direction, direction) if swap else direction


_LIST_WORDS = {
    "black": ListMembership.BLACK,
    "blacklist": ListMembership.BLACK,
    "white": ListMembership.WHITE,
    "whitelist": ListMembership.WHITE,
    "visitor": ListMembership.VISITOR,
}


def _pop_list(fields: _Fields) -> ListMembership | None:
    value = fields.pop("type")
    if value is None:
        return None
    word = value.strip().lower().replace(" ", "").replace("_", "") if isinstance(value, str) else ""
    membership = _LIST_WORDS.get(word)
    if membership is None:
        fields.keep("type", value)  # another list name: not an error, just no slot
    return membership


def _pop_resolution(fields: _Fields) -> Resolution | None:
    if not (fields.has("resolution_width") and fields.has("resolution_height")):
        return None
    width_value, height_value = fields.peek("resolution_width"), fields.peek("resolution_height")
    width = fields.pop_int("resolution_width", 1, 100_000)
    height = fields.pop_int("resolution_height", 1, 100_000)
    if width is None or height is None:
        fields.keep("resolution_width", width_value)
        fields.keep("resolution_height", height_value)
        return None
    return Resolution(width, height)


_BOX_FIELDS = ("coordinate_x1", "coordinate_y1", "coordinate_x2", "coordinate_y2")


def _pop_box(fields: _Fields) -> Box | None:
    if not all(fields.has(name) for name in _BOX_FIELDS):
        return None
    values = [fields.peek(name) for name in _BOX_FIELDS]
    coordinates = [fields.pop_int(name, 0, 1_000_000) for name in _BOX_FIELDS]
    if any(c is None for c in coordinates):
        for name, value in zip(_BOX_FIELDS, values, strict=True):
            fields.keep(name, value)
        return None
    x1, y1, x2, y2 = (int(c or 0) for c in coordinates)
    return Box(x1, y1, x2, y2)


# --------------------------------------------------------------------------
# Images

_IMAGE_FIELDS = (
    *assumed.HTTP_PLATE_IMAGE_FIELDS,
    *assumed.HTTP_SCENE_IMAGE_FIELDS,
    *assumed.HTTP_EVIDENCE_IMAGE_FIELDS,
)
_B64_CLEANUP = bytes.maketrans(b"-_", b"+/")
_WHITESPACE = b" \t\r\n"


def decode_image(value: Any) -> Image:
    """A base64 field (optionally a `data:` URI) → JPEG bytes, or why not."""
    if isinstance(value, LongString):
        text: memoryview | bytes = value.ascii_view()
    elif isinstance(value, str):
        try:
            text = value.encode("ascii")
        except UnicodeEncodeError:
            return Image.missing("invalid base64: not ASCII")
    else:
        return Image.missing(f"not base64 text ({type(value).__name__})")
    stripped = _strip_data_uri(text)
    if isinstance(stripped, str):
        return Image.missing(stripped)
    text = stripped
    if len(text) == 0:
        return Image.missing("empty image field")
    try:
        data = pybase64.b64decode(text, validate=True)
    except ValueError:
        lenient = _decode_lenient(bytes(text))
        if lenient is None:
            return Image.missing("invalid base64")
        data = lenient
    if not data:
        return Image.missing("empty image field")
    return Image(data=data)


def _strip_data_uri(text: memoryview | bytes) -> memoryview | bytes | str:
    """Drop a `data:image/jpeg;base64,` prefix; a str result is a missing reason."""
    if bytes(text[:5]).lower() != b"data:":
        return text
    head = bytes(text[:_DATA_URI_MAX_HEADER])
    comma = head.find(b",")
    if comma < 0:
        return "data: URI without a comma"
    if not head[:comma].lower().endswith(b";base64"):
        return "data: URI that is not base64"
    return text[comma + 1 :]


def _decode_lenient(text: bytes) -> bytes | None:
    """Second chance: line breaks, the URL-safe alphabet, missing padding."""
    cleaned = text.translate(_B64_CLEANUP, _WHITESPACE).rstrip(b"=")
    if len(cleaned) % 4 == 1:
        return None
    cleaned += b"=" * (-len(cleaned) % 4)
    try:
        return bytes(pybase64.b64decode(cleaned, validate=True))
    except ValueError:
        return None


def _pop_image(fields: _Fields, name: str) -> Image | None:
    value = fields.pop(name)
    if value is None:
        return None
    try:
        image = decode_image(value)
    except CameraProtocolError as exc:
        raise _named(exc, name) from None
    if image.data is None:
        fields.problem(name, "bad_image", image.missing_reason or "unusable")
    return image


def _first(decoded: Mapping[str, Image | None], names: Iterable[str]) -> Image | None:
    """The first image with data among `names`, else the first sent at all."""
    candidates = [image for name in names if (image := decoded.get(name)) is not None]
    with_data = [image for image in candidates if image.data is not None]
    if with_data:
        return with_data[0]
    return candidates[0] if candidates else None


def _image_summary(image: Image) -> dict[str, Any]:
    if image.data is None:
        return {"omitted": "image", "missing": image.missing_reason}
    return {"omitted": "image", "bytes": len(image.data)}


# --------------------------------------------------------------------------
# raw / data: JSON-safe, bounded, without blobs


def _sanitize_mapping(mapping: Mapping[str, Any], depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for index, (key, value) in enumerate(mapping.items()):
        if index >= RAW_MAX_ITEMS:
            out["_omitted_fields"] = len(mapping) - RAW_MAX_ITEMS
            break
        out[key] = _sanitize(value, depth + 1)
    return out


def _sanitize(value: Any, depth: int) -> Any:
    if isinstance(value, LongString):
        return {"omitted": "long string", "bytes": value.size}
    if isinstance(value, str):
        if len(value) > RAW_MAX_STRING_CHARS or value[:5].lower() == "data:":
            return {"omitted": "long string", "chars": len(value)}
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= RAW_MAX_DEPTH:
        return {"omitted": "nested too deeply"}
    if isinstance(value, dict):
        keys = {str(k): v for k, v in value.items()}
        return _sanitize_mapping(keys, depth)
    if isinstance(value, list):
        items = [_sanitize(item, depth + 1) for item in value[:RAW_MAX_ITEMS]]
        if len(value) > RAW_MAX_ITEMS:
            items.append({"omitted_items": len(value) - RAW_MAX_ITEMS})
        return items
    return str(value)
