"""Every point the vendor note leaves open, and what the gateway assumes for it.

`docs/camera-protocols.md` marks these ASSUMED. They live here and nowhere
else, so that a correction from a real camera (or a capture a user sends in)
is a one-line change. Codecs import these names; they never repeat the values.
"""

from __future__ import annotations

from typing import Final

# --- TCP (section 1) -------------------------------------------------------

# The note's text cuts the image chunk id to `22 ff 00`; the fourth byte is
# assumed `00`, like the metadata chunk id `11 ff 00 00`.
TCP_METADATA_CHUNK_ID: Final = b"\x11\xff\x00\x00"
TCP_IMAGE_CHUNK_ID: Final = b"\x22\xff\x00\x00"

# When the JPEG dimensions cannot tell plate from scene, the note's wording
# ("the license plate snapshot, and the full-screen snapshot") gives the order.
TCP_IMAGE_ORDER: Final = ("plate", "scene")

# Trailing metadata fields of later firmware (11-24), listed by the note
# without sizes. Assumed: enums are uint8; "int"/"float" are 4 bytes; counts and
# coordinates uint32. Field 12 has the byte length given by field 11.
# (name, construct-style format: "u8" | "u32" | "i32" | "f32" | "bytes:plate_length")
TCP_TRAILING_FIELDS: Final = (
    ("plate_length", "u8"),
    ("license_plate", "bytes:plate_length"),
    ("vehicle_type", "u8"),
    ("confidence", "f32"),
    ("plate_type", "u8"),
    ("distance", "i32"),
    ("azimuth", "f32"),
    ("vehicle_count", "u32"),
    ("width", "u32"),
    ("height", "u32"),
    ("x1", "u32"),
    ("y1", "u32"),
    ("x2", "u32"),
    ("y2", "u32"),
)

# The note's colour table is "stand by" (empty). Provisional names, overridable
# with `color_table` in the config; the raw code is always published too.
PROVISIONAL_COLOR_TABLE: Final[dict[int, str]] = {
    0: "unknown",
    1: "white",
    2: "black",
    3: "blue",
    4: "yellow",
    5: "green",
    6: "red",
    7: "gray",
    8: "silver",
}

# Field 13: given by the note.
VEHICLE_TYPES: Final[dict[int, str | None]] = {
    0: None,
    1: "car",
    2: "motorbike",
    3: "bus",
    4: "truck",
    5: "minibus",
}

# --- HTTP (section 2) ------------------------------------------------------

# `direction` words → event direction; a camera configured with
# `swap_direction: true` exchanges them (camera facing the other way).
HTTP_DIRECTION_WORDS: Final[dict[str, str]] = {
    "approach": "in",
    "away": "out",
}

# Values of a POST's `event` field (and a GET's `Caption`) that mean "a plate
# read" rather than another event kind. Only `LPR` is seen (the GET example
# `Caption=LPR`); a body with any other `event` is forwarded as a camera event.
HTTP_PLATE_EVENT_KINDS: Final = frozenset({"lpr"})

# Which POSTed image is the plate crop and which the scene, in order of
# preference. `full_image` is the scene.
HTTP_PLATE_IMAGE_FIELDS: Final = ("plate_image",)
HTTP_SCENE_IMAGE_FIELDS: Final = ("full_image",)

# `evidence_image0`/`evidence_image1` are the pictures of the evidence cameras
# linked to the LPR camera (the vendor's "Evidence function"): pictures of
# other cameras, so never a stand-in for the scene. Each has its own slot.
HTTP_EVIDENCE_IMAGE_FIELDS: Final = {"evidence_image0": "evidence0", "evidence_image1": "evidence1"}

# A camera event's pictures (counting `snapshot`, ...). A field is a picture
# when its name is one of these, or when its text is a `data:image/` URI, or a
# string of at least HTTP_EVENT_IMAGE_MIN_BYTES that decodes as base64 to bytes
# starting with one of HTTP_EVENT_IMAGE_MAGIC (JPEG, PNG). Anything else long
# stays a summary in `data`, as before.
HTTP_EVENT_IMAGE_FIELDS: Final = frozenset(
    {"snapshot", "plate_image", "full_image", "evidence_image0", "evidence_image1", "image"}
)
HTTP_EVENT_IMAGE_MIN_BYTES: Final = 1024
HTTP_EVENT_IMAGE_MAGIC: Final = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")

# `time_msec` comes in two shapes: the whole local time with milliseconds
# (`2023-09-15 06:19:57.267`, what public integrations of these cameras
# read) or the milliseconds alone (0-999) beside `time`. Either sets the
# event time to the millisecond; the whole time wins over `time` when both
# are readable.
HTTP_MILLISECONDS_FIELD: Final = "time_msec"

# --- TCP, more than two image chunks ----------------------------------------

# A frame may carry more image chunks than the plate crop and the scene (the
# evidence cameras' pictures, by analogy with the HTTP body's
# evidence_image0/1). Once plate and scene are told apart (by resolution, else
# TCP_IMAGE_ORDER), the remaining chunks in wire order are these, in this
# order; chunks beyond them are only counted (`raw.extra_images`).
TCP_EXTRA_IMAGE_KINDS: Final = ("evidence0", "evidence1")

# --- RTSP (section 3) ------------------------------------------------------

# `LicenseCarDirection` is a bare number in the sample ("1"); assumed to use
# the TCP direction codes (0 unknown, 1 in, 2 out).
DIRECTION_CODES: Final[dict[int, str]] = {0: "unknown", 1: "in", 2: "out"}

# `LicenseCarSpeed` carries its unit ("25km/h"); a bare number is km/h.
DEFAULT_SPEED_UNIT: Final = "km/h"

# --- ONVIF scene description (Profile M `tt:Frame` objects) ----------------------
# The ONVIF schema (metadatastream.xsd) fixes the element names; these are
# the points it leaves to each maker.

# `tt:VehicleInfo/tt:Type` (the schema lists Bus, Car, Truck, Bicycle,
# Motorcycle) → the event's vehicle type, in the TCP table's words where one
# exists. Any other value is published lower-cased as the camera wrote it.
SCENE_VEHICLE_TYPES: Final[dict[str, str]] = {
    "car": "car",
    "bus": "bus",
    "truck": "truck",
    "motorcycle": "motorbike",
    "bicycle": "bicycle",
}

# `tt:LicensePlateInfo` has no "region": `CountryCode` is taken for it, and
# `IssuingEntity` (state, province) only when there is no country code.
SCENE_REGION_ELEMENTS: Final = ("CountryCode", "IssuingEntity")

# A `tt:ColorCluster` is a point in a colour space (YCbCr unless the frame or
# the colour says RGB), not a name. The event's colour name is the nearest of
# these (RGB, Euclidean distance after a full-range BT.601 YCbCr → RGB
# conversion); the numbers themselves are kept under raw.
SCENE_COLOR_NAMES: Final[dict[str, tuple[int, int, int]]] = {
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "silver": (192, 192, 192),
    "red": (200, 30, 30),
    "blue": (30, 60, 200),
    "green": (30, 150, 50),
    "yellow": (230, 200, 30),
    "brown": (120, 70, 30),
    "orange": (240, 130, 20),
}

# `tt:ObjectTree` children that end an object. The schema has `Delete`;
# `ObjectsForward` is named by the issue that asked for this support (no
# published schema has it) and is read the same way: the ObjectIds it names
# have left the scene.
SCENE_OBJECT_ENDING_ELEMENTS: Final = frozenset({"delete", "objectsforward"})

# One vehicle, both paths: a plate notification and a scene object are the
# same vehicle when their normalized plates are equal (any plate the object
# was read as) and the notification came while the object was tracked or
# within this many seconds of its last sighting (gateway clock). A camera
# that has sent plate notifications has its finished scene reads held this
# long for the notification to come, so that one read is published, not two.
SCENE_NOTIFICATION_MATCH_SECONDS: Final = 3.0
