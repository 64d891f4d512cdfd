"""Sample TCP recognition reads shared by the codec and the `decode` tests.

A data module, not a test module: test modules import from here, never from
each other.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

from gateway.codecs.tcp import RecognitionMetadata
from gateway.simulate.common import plate_jpeg, scene_jpeg

DEVICE_BYTES = bytes.fromhex("04f912bbce94654089afe83cd88f70be")
DEVICE_ID = uuid.UUID(bytes_le=DEVICE_BYTES)
PLATE = plate_jpeg()
SCENE = scene_jpeg()

# The base flavour: the fields every firmware sends.
BASE = RecognitionMetadata(
    device_id=DEVICE_ID,
    time_ms=1525867890000,
    car_number="부산02가1234",
    car_color=1,
    plate_color=3,
    speed=25,
    image_count=2,
    direction=1,
    region="KR",
    roi=1,
)
# Every field of the extended flavour.
FULL = replace(
    BASE,
    license_plate="부산02가1234",
    vehicle_type=1,
    confidence=0.93,
    plate_type=2,
    distance=12,
    azimuth=1.5,
    vehicle_count=7,
    width=1920,
    height=1080,
    x1=10,
    y1=20,
    x2=110,
    y2=60,
)
