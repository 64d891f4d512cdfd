"""Topic safety: whatever a camera sends, a topic level is a safe slug and a topic is checked."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.event import ImageKind
from gateway.known_plates import topic_slug
from gateway.topics import (
    SLUG_MAX_CHARS,
    InvalidTopicError,
    Topics,
    check_topic,
    known_name_slug,
    retired_topic,
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


# -- Topics: every topic the gateway publishes to, from one base ------------------

TOPICS = Topics("lpr")


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (TOPICS.state, "lpr/bridge/state"),
        (TOPICS.info, "lpr/bridge/info"),
        (TOPICS.availability("gate"), "lpr/gate/availability"),
        (TOPICS.image("gate", ImageKind.PLATE), "lpr/gate/image/plate"),
        (TOPICS.image("gate", ImageKind.SCENE), "lpr/gate/image/scene"),
        (TOPICS.event("gate"), "lpr/gate/event"),
        (TOPICS.last("gate"), "lpr/gate/last"),
        (TOPICS.ha_event("gate"), "lpr/gate/ha_event"),
        (TOPICS.camera_event("gate", "Vehicle Counting"), "lpr/gate/camera_event/vehicle_counting"),
        (TOPICS.known("gate", "  Müller "), "lpr/gate/known/muller"),
        (Topics("site/a").event("gate"), "site/a/gate/event"),
    ],
)
def test_topics_table(built: str, expected: str) -> None:
    assert built == expected


def test_topics_is_a_frozen_value() -> None:
    assert Topics("lpr") == TOPICS
    assert hash(Topics("lpr")) == hash(TOPICS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TOPICS.base = "other"  # type: ignore[misc]


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_a_hostile_camera_event_kind_or_known_name_still_makes_a_valid_topic(kind: str) -> None:
    assert topic_problem(TOPICS.camera_event("gate", kind)) is None
    assert topic_problem(TOPICS.known("gate", kind)) is None


@given(st.text())
def test_known_name_slug_is_the_known_plates_slug(name: str) -> None:
    assert known_name_slug(name) == topic_slug(name)


OFF = "Home Assistant discovery is off"
GONE = "camera old is no longer configured"
MOVED = "it is not under the base topic (mqtt.base_topic changed)"


@pytest.mark.parametrize(
    ("topic", "discovery_on", "reason"),
    [
        ("lpr/gate/last", True, None),
        ("lpr/gate/image/snapshot.full_image", True, None),  # a camera event's picture
        ("lpr/gate/presence", True, None),
        ("lpr/gate/presence", False, OFF),
        ("lpr/gate/enabled", False, OFF),
        ("lpr/gate/availability", False, None),
        ("lpr/old/last", True, GONE),
        ("lpr/old/availability", False, GONE),
        ("lpr/gate_b/last", True, "camera gate_b is no longer configured"),
        ("lpr/bridge/state", True, None),
        ("lpr/bridge/last_seen/alice", True, None),  # a name's, whichever camera read it
        ("lpr/bridge/last_seen/alice", False, OFF),
        ("lpr/bridge/last_seen/bob", True, "its known-plates name is gone"),
        ("lpr/bridge/last_seen/bob", False, OFF),
        ("homeassistant/sensor/lpr/old_plate/config", True, None),  # the discovery's own
        ("homeassistant/sensor/lpr/gate_plate/config", False, OFF),
        ("lprx/gate/last", True, MOVED),
        ("site/lpr/gate/last", True, MOVED),
        ("ha/sensor/lpr/gate_plate/config", True, MOVED),  # an earlier discovery prefix
    ],
)
def test_what_the_gateway_publishes_no_more(
    topic: str, discovery_on: bool, reason: str | None
) -> None:
    judged = retired_topic(
        topic,
        Topics("lpr"),
        cameras={"gate"},
        discovery_prefix="homeassistant",
        discovery_on=discovery_on,
        last_seen={"lpr/bridge/last_seen/alice"},
    )
    assert judged == reason


def test_a_discovery_prefix_under_the_base_topic_is_not_taken_for_a_camera() -> None:
    config = "lpr/ha/sensor/lpr/gate_plate/config"
    assert retired_topic(config, Topics("lpr"), {"gate"}, "lpr/ha", discovery_on=True) is None
    assert retired_topic("lpr/site/gate/last", Topics("lpr/site"), {"gate"}, "lpr/ha", True) is None


def test_a_camera_event_picture_topic_names_its_camera() -> None:
    topics = Topics("site/lpr")
    event_picture = topics.camera_event_image("gate", "Vehicle Counting", "snapshot")
    second = topics.camera_event_image("gate", "counting", "full_image", primary=False)
    renamed = topics.camera_event_image("gate", "plate", "snapshot")  # event-plate
    assert topics.event_picture_camera(event_picture) == "gate"
    assert topics.event_picture_camera(second) == "gate"
    assert topics.event_picture_camera(renamed) == "gate"
    for kind in ImageKind:  # a read's pictures are bounded by the kinds there are
        assert topics.event_picture_camera(topics.image("gate", kind)) is None
    assert topics.event_picture_camera("site/lpr/gate/last") is None
    assert topics.event_picture_camera("lpr/gate/image/snapshot") is None  # another base
