"""SceneTracker: one read per object, the best reading, bounded, and one read per
vehicle when a camera sends a notification too. Time is passed in: no clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.codecs.onvif import OnvifSceneFrame, ScenePlate
from gateway.codecs.scene_tracker import FinishedTrack, SceneTracker, TrackEnd
from gateway.errors import CodecMisuseError

T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def reading(object_id: str, plate: str, confidence: float | None) -> ScenePlate:
    return ScenePlate(object_id=object_id, plate=plate, confidence=confidence, time=T0)


def frame(*readings: ScenePlate, ended: tuple[str, ...] = ()) -> OnvifSceneFrame:
    return OnvifSceneFrame(time=T0, plates=readings, ended=ended)


def summary(finished: list[FinishedTrack]) -> list[tuple[str, str, float | None, TrackEnd]]:
    return [(f.object_id, f.best.plate, f.best.confidence, f.end) for f in finished]


def test_one_read_per_object_with_its_best_reading_when_it_leaves() -> None:
    tracker = SceneTracker(end_seconds=1.0, max_seconds=10.0)
    out: list[FinishedTrack] = []
    # Two objects at once, their readings improving (and one getting worse at the end).
    steps = [
        (reading("1", "AB12", 0.4), reading("2", "XY9", 0.5)),
        (reading("1", "AB123", 0.7), reading("2", "XY98", 0.8)),
        (reading("1", "AB123", 0.95), reading("2", "XY987", 0.8)),
        (reading("1", "A8123", 0.6),),
    ]
    for step, readings in enumerate(steps):
        out += tracker.observe(frame(*readings), now=step * 0.25)
    assert out == []  # both still in the scene (2 last seen at 0.5)
    assert tracker.expire(1.49) == []
    out += tracker.expire(1.5)
    assert summary(out) == [("2", "XY987", 0.8, TrackEnd.ABSENT)]  # the tie went to the latest
    out += tracker.expire(1.75)
    assert summary(out)[1] == ("1", "AB123", 0.95, TrackEnd.ABSENT)
    assert out[1].readings == 4
    assert tracker.tracked == 0 and tracker.next_deadline() is None


def test_object_tree_delete_ends_an_object_at_once() -> None:
    tracker = SceneTracker()
    tracker.observe(frame(reading("5", "DEL1", 0.9)), now=0.0)
    out = tracker.observe(frame(ended=("5", "404")), now=0.1)  # an unknown id is no matter
    assert summary(out) == [("5", "DEL1", 0.9, TrackEnd.DELETED)]
    # Present and deleted in the same frame: that frame's reading counts.
    out = tracker.observe(frame(reading("6", "LAST", 0.5), ended=("6",)), now=0.2)
    assert summary(out) == [("6", "LAST", 0.5, TrackEnd.DELETED)]


def test_max_age_publishes_once_and_the_object_staying_gives_no_second_read() -> None:
    tracker = SceneTracker(end_seconds=1.0, max_seconds=2.0)
    out: list[FinishedTrack] = []
    now = 0.0
    while now < 6.0:  # a car parked in front of the camera, seen every 0.25 s
        out += tracker.observe(frame(reading("9", "PARKED", 0.5 + now / 100)), now=now)
        now += 0.25
    assert summary(out) == [("9", "PARKED", 0.52, TrackEnd.MAX_AGE)]
    assert tracker.expire(now + 5) == []  # it left: nothing more to say
    assert tracker.tracked == 0


def test_next_deadline_is_the_earliest_due_time() -> None:
    tracker = SceneTracker(end_seconds=1.0, max_seconds=10.0)
    assert tracker.next_deadline() is None
    tracker.observe(frame(reading("1", "A1", 0.5)), now=3.0)
    tracker.observe(frame(reading("2", "B2", 0.5)), now=3.5)
    assert tracker.next_deadline() == 4.0
    assert tracker.expire(3.99) == []
    assert summary(tracker.expire(4.0)) == [("1", "A1", 0.5, TrackEnd.ABSENT)]


def test_the_number_of_tracked_objects_is_bounded_oldest_finished_first() -> None:
    tracker = SceneTracker(end_seconds=60.0, max_seconds=600.0, max_objects=3)
    out: list[FinishedTrack] = []
    for index in range(5):
        out += tracker.observe(frame(reading(str(index), f"P{index}", 0.5)), now=index * 0.01)
    assert summary(out) == [
        ("0", "P0", 0.5, TrackEnd.EVICTED),
        ("1", "P1", 0.5, TrackEnd.EVICTED),
    ]
    assert tracker.tracked == 3


def test_a_published_object_is_dropped_first_when_room_is_needed() -> None:
    tracker = SceneTracker(end_seconds=60.0, max_seconds=1.0, max_objects=2)
    tracker.observe(frame(reading("old", "OLD1", 0.5)), now=0.0)
    tracker.observe(frame(reading("live", "LIVE1", 0.5)), now=0.9)
    [aged] = tracker.observe(frame(reading("old", "OLD1", 0.5)), now=1.0)
    assert aged.end is TrackEnd.MAX_AGE
    # A third object: the published one makes room, nothing is finished early.
    assert tracker.observe(frame(reading("new", "NEW1", 0.5)), now=1.1) == []
    assert tracker.tracked == 2


def test_rename_and_merge_continue_the_track() -> None:
    tracker = SceneTracker()
    tracker.observe(frame(reading("1", "REN1", 0.9), reading("2", "MRG1", 0.3)), now=0.0)
    tracker.observe(frame(reading("3", "MRG1", 0.7)), now=0.1)
    renamed = OnvifSceneFrame(time=T0, renamed=(("1", "11"),), merged=((("2", "3"), "23"),))
    assert tracker.observe(renamed, now=0.2) == []
    out = tracker.observe(frame(ended=("11", "23")), now=0.3)
    assert summary(out) == [
        ("11", "REN1", 0.9, TrackEnd.DELETED),
        ("23", "MRG1", 0.7, TrackEnd.DELETED),
    ]
    assert out[1].readings == 2


def test_readings_without_likelihood_lose_to_any_likelihood_and_tie_to_the_latest() -> None:
    tracker = SceneTracker()
    tracker.observe(frame(reading("1", "NONE1", None)), now=0.0)
    tracker.observe(frame(reading("1", "NONE2", None)), now=0.1)
    [done] = tracker.observe(frame(ended=("1",)), now=0.2)
    assert done.best.plate == "NONE2"
    tracker.observe(frame(reading("2", "LOW", 0.01)), now=0.3)
    tracker.observe(frame(reading("2", "UNSURE", None)), now=0.4)
    [done] = tracker.observe(frame(ended=("2",)), now=0.5)
    assert done.best.plate == "LOW"


def test_flush_gives_every_object_at_the_end_of_the_stream() -> None:
    tracker = SceneTracker()
    tracker.observe(frame(reading("1", "A1", 0.5), reading("2", "B2", 0.6)), now=0.0)
    assert summary(tracker.flush()) == [
        ("1", "A1", 0.5, TrackEnd.SESSION_END),
        ("2", "B2", 0.6, TrackEnd.SESSION_END),
    ]
    assert tracker.tracked == 0 and tracker.flush() == []


# -- both paths: one read per vehicle ---------------------------------------------------


def test_a_notification_claims_the_live_object_with_its_plate() -> None:
    tracker = SceneTracker(end_seconds=1.0, match_seconds=3.0)
    tracker.observe(frame(reading("1", "AB-123", 0.6)), now=0.0)
    tracker.observe(frame(reading("1", "AB123", 0.9), reading("2", "OTHER1", 0.9)), now=0.2)
    match = tracker.notification("AB123", now=0.3)
    assert match is not None and match.object_id == "1" and match.agree
    assert match.reading.confidence == 0.9
    # Both gone: the claimed one is said merged (not to be published, already
    # counted), the other one waits for a notification of its own.
    [claimed] = tracker.expire(1.25)
    assert (claimed.object_id, claimed.merged, claimed.claimed) == ("1", True, True)
    out = tracker.expire(4.25)
    assert summary(out) == [("2", "OTHER1", 0.9, TrackEnd.ABSENT)]
    assert not out[0].merged


def test_a_notification_matches_any_plate_the_object_was_read_as() -> None:
    tracker = SceneTracker()
    tracker.observe(frame(reading("1", "AB128", 0.5)), now=0.0)
    tracker.observe(frame(reading("1", "AB123", 0.9)), now=0.1)
    match = tracker.notification("AB128", now=0.2)
    assert match is not None and not match.agree  # the same vehicle, but no field merging


def test_with_notifications_a_finished_object_waits_for_its_notification() -> None:
    tracker = SceneTracker(end_seconds=1.0, match_seconds=3.0)
    assert tracker.notification("UNRELATED", now=0.0) is None
    tracker.observe(frame(reading("1", "LATE1", 0.8)), now=0.0)
    assert tracker.expire(1.0) == []  # held: a notification may still come
    assert tracker.held == 1 and tracker.next_deadline() == 4.0
    match = tracker.notification("LATE1", now=2.0)
    assert match is not None and match.object_id == "1"
    assert tracker.held == 0 and tracker.expire(10.0) == []


def test_a_held_object_is_published_when_no_notification_comes() -> None:
    tracker = SceneTracker(end_seconds=1.0, match_seconds=3.0)
    tracker.notification("SOMETHING", now=0.0)
    tracker.observe(frame(reading("1", "ALONE1", 0.8)), now=0.0)
    assert tracker.expire(3.99) == []
    assert summary(tracker.expire(4.0)) == [("1", "ALONE1", 0.8, TrackEnd.ABSENT)]


def test_a_notification_before_the_object_read_its_plate_suppresses_the_object() -> None:
    tracker = SceneTracker(end_seconds=1.0, match_seconds=3.0)
    assert tracker.notification("EARLY1", now=0.0) is None  # no object with it yet
    tracker.observe(frame(reading("1", "EARLY1", 0.7)), now=0.5)
    [finished] = tracker.expire(2.0)
    assert finished.merged and not finished.claimed and finished.best.plate == "EARLY1"


def test_a_camera_without_notifications_is_never_held_up() -> None:
    tracker = SceneTracker(end_seconds=1.0, match_seconds=3.0)
    tracker.observe(frame(reading("1", "FAST1", 0.8)), now=0.0)
    assert summary(tracker.expire(1.0)) == [("1", "FAST1", 0.8, TrackEnd.ABSENT)]


def test_an_old_notification_does_not_swallow_a_new_vehicle_with_the_same_plate() -> None:
    tracker = SceneTracker(end_seconds=1.0, match_seconds=3.0)
    tracker.notification("AGAIN1", now=0.0)
    tracker.observe(frame(reading("7", "AGAIN1", 0.8)), now=60.0)  # an hour later, say
    assert tracker.expire(61.0) == []  # held (the camera sends notifications)
    [finished] = tracker.expire(64.0)
    assert not finished.merged


@pytest.mark.parametrize(
    "arguments",
    [{"end_seconds": 0}, {"max_seconds": -1}, {"max_objects": 0}, {"match_seconds": -1}],
)
def test_nonsense_settings_are_a_misuse(arguments: dict[str, float]) -> None:
    with pytest.raises(CodecMisuseError):
        SceneTracker(**arguments)  # type: ignore[arg-type]
