"""Topic safety: whatever a camera sends, a topic level is a safe slug and a topic is checked."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.topics import (
    SLUG_MAX_CHARS,
    InvalidTopicError,
    check_topic,
    safe_slug,
    topic_problem,
)

HOSTILE_KINDS = [
    "a\x00b",
    "a\tb",
    "a\x7fb",
    "a\x85b",
    "a\ufdd0b",
    "a/b",
    "+",
    "#",
    "..",
    "\ud800",
    "x" * 70_000,
    "",
    "   ",
]


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_kinds_become_safe_slugs(kind: str) -> None:
    slug = safe_slug(kind)
    assert slug
    assert len(slug) <= SLUG_MAX_CHARS
    assert set(slug) <= set("abcdefghijklmnopqrstuvwxyz0123456789_.-")
    assert slug not in (".", "..")
    check_topic(f"lpr/gate_in/camera_event/{slug}")


@pytest.mark.parametrize(
    ("kind", "slug"),
    [
        ("VehicleCounting", "vehiclecounting"),
        ("vehicle counting", "vehicle_counting"),
        ("Région", "region"),
        ("tns1:RuleEngine/LineDetector", "tns1_ruleengine_linedetector"),
        ("", "unknown"),
    ],
)
def test_readable_kinds_stay_readable(kind: str, slug: str) -> None:
    assert safe_slug(kind) == slug


def test_long_and_foreign_kinds_keep_apart() -> None:
    assert safe_slug("x" * 100 + "a") != safe_slug("x" * 100 + "b")
    assert safe_slug("車") != safe_slug("門")
    assert safe_slug("車") == safe_slug("車")


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "lpr/a\x00",
        "lpr/\x1f",
        "lpr/\x7f",
        "lpr/\x9f",
        "lpr/+",
        "lpr/#",
        "lpr/\ufdd0",
        "lpr/\U0010ffff",
        "lpr/\ud800",
        "lpr//x",
        "/lpr",
        "lpr/" + "x" * 2000,
    ],
)
def test_bad_topics_are_refused_with_a_reason(topic: str) -> None:
    with pytest.raises(InvalidTopicError):
        check_topic(topic)
    assert topic_problem(topic)


@given(st.text())
def test_every_slug_makes_a_valid_topic(text: str) -> None:
    assert topic_problem(f"lpr/cam/camera_event/{safe_slug(text)}") is None
