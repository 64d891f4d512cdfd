"""What every simulated camera shares: generated plates and real JPEG images.

The JPEGs are real files (a 480x160 plate crop of ~20 KB and a 1920x1080 scene
of ~300 KB, the sizes PERFORMANCE.md assumes). Each read gets its own bytes: a
JPEG comment segment carrying a counter is inserted after SOI, which keeps the
file a valid JPEG with the same SOF dimensions.
"""

from __future__ import annotations

import itertools
import random
import struct
from dataclasses import dataclass
from importlib import resources

SCENE_WIDTH = 1920
SCENE_HEIGHT = 1080
PLATE_WIDTH = 480
PLATE_HEIGHT = 160

_HANGUL_SYLLABLES = "가나다라마거너더러머버서어저고노도로모보소오조구누두루무부수우주하허호배"
_KR_REGIONS = ["서울", "부산", "대구", "인천", "광주", "대전", "울산", "경기"]
_LATIN = "ABCDEFGHJKLMNPRSTUVWXYZ"


def _load(name: str) -> bytes:
    return resources.files("gateway.simulate").joinpath("assets", name).read_bytes()


_PLATE_JPEG = _load("plate.jpg")
_SCENE_JPEG = _load("scene.jpg")


def tagged_jpeg(jpeg: bytes, tag: str) -> bytes:
    """The same picture with a COM segment after SOI, so every read's bytes differ."""
    comment = tag.encode("utf-8")[:60000]
    segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
    return jpeg[:2] + segment + jpeg[2:]


@dataclass(frozen=True, slots=True)
class SimulatedRead:
    plate: str
    plate_jpeg: bytes
    scene_jpeg: bytes
    sequence: int


class PlateGenerator:
    """Plates alternating Latin (`AB123CD`) and Korean (`부산02가1234`) styles.

    `repeat_every` > 0 re-sends an earlier plate now and then, as a real gate
    does when a car waits in front of it.
    """

    def __init__(self, seed: int | None = None, hangul_share: float = 0.5) -> None:
        self._random = random.Random(seed)
        self._hangul_share = hangul_share
        self._counter = itertools.count(1)

    def plate(self) -> str:
        r = self._random
        if r.random() < self._hangul_share:
            return (
                f"{r.choice(_KR_REGIONS)}{r.randint(1, 99):02d}"
                f"{r.choice(_HANGUL_SYLLABLES)}{r.randint(1000, 9999)}"
            )
        letters = "".join(r.choice(_LATIN) for _ in range(2))
        tail = "".join(r.choice(_LATIN) for _ in range(2))
        return f"{letters}{r.randint(100, 999)}{tail}"

    def read(self, camera: str = "sim") -> SimulatedRead:
        sequence = next(self._counter)
        plate = self.plate()
        tag = f"{camera} {sequence} {plate}"
        return SimulatedRead(
            plate=plate,
            plate_jpeg=tagged_jpeg(_PLATE_JPEG, tag),
            scene_jpeg=tagged_jpeg(_SCENE_JPEG, tag),
            sequence=sequence,
        )


def plate_jpeg() -> bytes:
    return _PLATE_JPEG


def scene_jpeg() -> bytes:
    return _SCENE_JPEG
