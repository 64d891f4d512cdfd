"""Strict ASCII numbers for every codec: what isdigit()/int()/float() would take and must not."""

from __future__ import annotations

import math

import pytest

from gateway.codecs.numbers import (
    ascii_decimal_or_none,
    ascii_int_or_none,
    finite_or_none,
    parse_ascii_int,
)
from gateway.errors import CameraProtocolError

HOSTILE_NUMBERS = [
    "",
    " ",
    "\u00b2",  # superscript two: isdigit() is True, int() raises
    "\uff15",  # fullwidth five: int() takes it
    "\u0665",  # Arabic-Indic five
    "-0x1",
    "0x10",
    "-1",
    "+5",
    "1_000",
    "1e3",
    "nan",
    "inf",
    "1 2",
    "12\x00",
    "9" * 10,
    "9" * 5000,
]


@pytest.mark.parametrize("text", HOSTILE_NUMBERS)
def test_hostile_ints_are_refused_with_the_codec_error(text: str) -> None:
    assert ascii_int_or_none(text) is None
    with pytest.raises(CameraProtocolError) as info:
        parse_ascii_int(text, kind="rtsp_cseq", what="CSeq")
    assert info.value.kind == "rtsp_cseq"
    assert len(info.value.detail) < 120  # 5,000 digits are not echoed


@pytest.mark.parametrize(
    ("text", "value"), [("0", 0), ("200", 200), (" 42\t", 42), ("007", 7), ("9" * 9, 999999999)]
)
def test_ascii_ints(text: str, value: int) -> None:
    assert ascii_int_or_none(text) == value
    assert parse_ascii_int(text, kind="k") == value


def test_max_digits() -> None:
    assert ascii_int_or_none("1234", max_digits=3) is None
    assert ascii_int_or_none("123", max_digits=3) == 123


@pytest.mark.parametrize(
    ("text", "value"),
    [("25", 25.0), ("25.5", 25.5), ("25,5", 25.5), ("+3", 3.0), (" 0.93 ", 0.93)],
)
def test_ascii_decimals(text: str, value: float) -> None:
    assert ascii_decimal_or_none(text) == value


@pytest.mark.parametrize("text", [*HOSTILE_NUMBERS[:-2], "1.2.3", ".5", "5.", "-0.5", "9" * 5000])
def test_hostile_decimals(text: str) -> None:
    if text in ("+5",):
        assert ascii_decimal_or_none(text) == 5.0
        return
    assert ascii_decimal_or_none(text) is None


def test_finite_or_none() -> None:
    assert finite_or_none(1.5) == 1.5
    assert finite_or_none(None) is None
    for bad in (math.nan, math.inf, -math.inf):
        assert finite_or_none(bad) is None
