"""Numbers in camera text, read strictly: ASCII digits only, with a length bound.

`str.isdigit()` is true for "²" and "５", `int()` takes "+5", " 5", "1_000",
"٥" and refuses 5,000 digits with a bare ValueError. A camera's number is none
of those: every codec reads its numeric fields through these helpers, so that
bad input is a `CameraProtocolError` with a stable kind (or, where the field is
optional, simply no value), never a ValueError escaping a codec.
"""

from __future__ import annotations

import math
import re
from typing import Final

from gateway.errors import CameraProtocolError

# Nine digits fit every field a camera sends (status codes, CSeq, lengths,
# ports, timeouts, payload types) and keep int() far from its 4,300-digit limit.
DEFAULT_MAX_DIGITS: Final = 9
_DIGITS: Final = re.compile(r"[0-9]+", re.ASCII)
_DECIMAL: Final = re.compile(r"[+]?([0-9]+)(?:[.,]([0-9]+))?", re.ASCII)
_ASCII_SPACE: Final = " \t\r\n"


def ascii_int_or_none(text: str, *, max_digits: int = DEFAULT_MAX_DIGITS) -> int | None:
    """`text` (surrounding ASCII blanks allowed) as a non-negative int, or None
    unless it is 1..max_digits ASCII digits."""
    stripped = text.strip(_ASCII_SPACE)
    if not 0 < len(stripped) <= max_digits or not _DIGITS.fullmatch(stripped):
        return None
    return int(stripped)


def parse_ascii_int(
    text: str,
    *,
    kind: str,
    what: str = "number",
    max_digits: int = DEFAULT_MAX_DIGITS,
) -> int:
    """Like `ascii_int_or_none`, but a bad value raises CameraProtocolError(kind)."""
    value = ascii_int_or_none(text, max_digits=max_digits)
    if value is None:
        raise CameraProtocolError(kind, f"{what} is not 1 to {max_digits} digits: {text[:40]!r}")
    return value


def ascii_decimal_or_none(text: str, *, max_digits: int = DEFAULT_MAX_DIGITS) -> float | None:
    """`25`, `25.5`, `25,5`, `+3` as a float; None for anything else (signs other
    than '+', exponents, nan/inf, non-ASCII digits, more than max_digits digits
    on either side of the point)."""
    match = _DECIMAL.fullmatch(text.strip(_ASCII_SPACE))
    if match is None:
        return None
    whole, fraction = match.group(1), match.group(2) or ""
    if len(whole) > max_digits or len(fraction) > max_digits:
        return None
    return float(f"{whole}.{fraction or '0'}")


def finite_or_none(value: float | None) -> float | None:
    """NaN and ±inf are no value: they are not JSON and no camera means them."""
    if value is None or not math.isfinite(value):
        return None
    return value
