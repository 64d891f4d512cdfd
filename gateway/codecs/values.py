"""Camera values read one way, whichever protocol carried them.

A confidence, a speed or a UTC offset means the same whatever the transport:
the TCP codec, the HTTP body parser and the ONVIF parser all read them here,
so the same camera value publishes the same number. Pure functions; numbers
in text go through `numbers.py` (ASCII digits, bounded).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, timedelta, timezone
from typing import Final

from gateway.codecs import assumed
from gateway.codecs.numbers import ascii_decimal_or_none, finite_or_none

# float32 on the TCP wire makes 0.93 arrive as 0.9300000071525574.
CONFIDENCE_PLACES: Final = 4
SPEED_MAX_KMH: Final = 10_000
_SPEED: Final = re.compile(r"([+]?[0-9]+(?:[.,][0-9]+)?)\s*([a-z/]*)", re.IGNORECASE | re.ASCII)
_SPEED_UNITS_TO_KMH: Final = {"km/h": 1.0, "kmh": 1.0, "kph": 1.0, "mph": 1.609344, "m/s": 3.6}
_NO_VALUE: Final = frozenset({"", "-", "--"})
_OFFSET: Final = re.compile(r"([+-])([0-9]{2})(?::?([0-9]{2}))?", re.ASCII)


def confidence(value: float | int | str | None) -> float | None:
    """0..1 as a fraction; above 1 (up to 100) a percentage; text ending in `%`
    always a percentage. Rounded to 4 places. None when absent or unreadable
    (negative, over 100 %, NaN, not a number)."""
    if value is None or isinstance(value, bool):
        return None
    percent = False
    if isinstance(value, str):
        text = value.strip()
        percent = text.endswith("%")
        number = ascii_decimal_or_none(text.removesuffix("%").strip())
    else:
        number = float(value)
    number = finite_or_none(number)
    if number is None or number < 0:
        return None
    if percent or number > 1:
        number /= 100
    return round(number, CONFIDENCE_PLACES) if number <= 1 else None


def speed_kmh(value: float | int | str | None) -> tuple[float | int | None, bool]:
    """`25`, `25km/h`, `25 km/h`, `15mph`, `7m/s` → km/h; a bare number is in
    `assumed.DEFAULT_SPEED_UNIT`. Returns (speed, readable): `-`, `--` or empty
    is "no speed" and readable. Whole numbers come out as int."""
    if value is None:
        return None, True
    if isinstance(value, bool):
        return None, False
    if isinstance(value, str):
        text = value.strip()
        if text in _NO_VALUE:
            return None, True
        match = _SPEED.fullmatch(text) if len(text) <= 40 else None
        if match is None:
            return None, False
        number, unit = match.groups()
        factor = _SPEED_UNITS_TO_KMH.get((unit or assumed.DEFAULT_SPEED_UNIT).lower())
        parsed = ascii_decimal_or_none(number)
        if factor is None or parsed is None:
            return None, False
        kmh = parsed * factor if factor == 1.0 else round(parsed * factor, 1)
    else:
        kmh = float(value)
    if not math.isfinite(kmh) or not 0 <= kmh < SPEED_MAX_KMH:
        return None, False
    return (int(kmh) if kmh == int(kmh) else kmh), True


def utc_offset(text: str) -> timezone | None:
    """`Z`, `+02:00`, `+0200`, `-05` → a fixed zone; None for anything else,
    including offsets of 24 h or more."""
    if text.upper() == "Z":
        return UTC
    match = _OFFSET.fullmatch(text)
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
    if delta >= timedelta(hours=24) or int(minutes or 0) >= 60:
        return None
    return timezone(-delta if sign == "-" else delta)
