"""SDP: parsing and finding the ONVIF metadata track (codecs/sdp.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.sdp import (
    find_metadata_track,
    parse_sdp,
    resolve_control,
)
from gateway.errors import CameraProtocolError
from tests.rtsp_samples import SDP_CAMERA

SDP_CASES = [
    ("relative to request URL", SDP_CAMERA, "rtsp://cam:554/main", "rtsp://cam:554/main/trackID=3"),
    ("relative to base with slash", SDP_CAMERA, "rtsp://cam/main/", "rtsp://cam/main/trackID=3"),
    (
        "absolute control",
        SDP_CAMERA.replace(b"a=control:trackID=3", b"a=control:rtsp://10.0.0.9/meta"),
        "rtsp://cam/main",
        "rtsp://10.0.0.9/meta",
    ),
    (
        "session-level absolute control is the base",
        SDP_CAMERA.replace(b"a=control:*", b"a=control:rtsp://cam/agg/"),
        "rtsp://cam/main",
        "rtsp://cam/agg/trackID=3",
    ),
    (
        "upper case encoding, other pt, LF only",
        SDP_CAMERA.replace(b"\r\n", b"\n")
        .replace(b"107", b"98")
        .replace(b"vnd.onvif.metadata", b"VND.ONVIF.METADATA"),
        "rtsp://cam/main",
        "rtsp://cam/main/trackID=3",
    ),
    (
        "no control: the base itself",
        SDP_CAMERA.replace(b"a=control:trackID=3\r\n", b""),
        "rtsp://cam/main",
        "rtsp://cam/main",
    ),
    (
        "two application media, metadata second",
        SDP_CAMERA.replace(
            b"m=application 0 RTP/AVP 107",
            b"m=application 0 RTP/AVP 99\r\na=rtpmap:99 x-private/1000\r\n"
            b"m=application 0 RTP/AVP 107",
        ),
        "rtsp://cam/main",
        "rtsp://cam/main/trackID=3",
    ),
]


@pytest.mark.parametrize(
    ("name", "sdp", "base", "control"), SDP_CASES, ids=[c[0] for c in SDP_CASES]
)
def test_find_metadata_track(name: str, sdp: bytes, base: str, control: str) -> None:
    track = find_metadata_track(parse_sdp(sdp), base)
    assert track.control_url == control
    assert track.encoding.lower() == "vnd.onvif.metadata"
    assert track.clock_rate == 90000


@pytest.mark.parametrize(
    "sdp",
    [
        b"v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n",
        b"v=0\r\nm=application 0 RTP/AVP 107\r\n",  # no rtpmap
        b"v=0\r\nm=video 0 RTP/AVP 107\r\na=rtpmap:107 vnd.onvif.metadata/90000\r\n",
        b"",
        b"\xff\xfe garbage \x00\nm=\nm=application x\n",
    ],
)
def test_no_metadata_track_is_a_clear_error(sdp: bytes) -> None:
    with pytest.raises(CameraProtocolError) as info:
        find_metadata_track(parse_sdp(sdp), "rtsp://cam/main")
    assert info.value.kind == "rtsp_no_metadata_track"
    assert "vnd.onvif.metadata" in info.value.detail


@pytest.mark.parametrize(
    ("control", "base", "expected"),
    [
        ("trackID=1", "rtsp://h/a", "rtsp://h/a/trackID=1"),
        ("trackID=1", "rtsp://h/a/", "rtsp://h/a/trackID=1"),
        ("/trackID=1", "rtsp://h/a/", "rtsp://h/a/trackID=1"),
        ("*", "rtsp://h/a", "rtsp://h/a"),
        (None, "rtsp://h/a", "rtsp://h/a"),
        ("RTSP://other/x", "rtsp://h/a", "RTSP://other/x"),
    ],
)
def test_resolve_control(control: str | None, base: str, expected: str) -> None:
    assert resolve_control(control, base) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_sdp_random_bytes(data: bytes) -> None:
    try:
        find_metadata_track(parse_sdp(data), "rtsp://cam/")
    except CameraProtocolError as exc:
        assert exc.kind == "rtsp_no_metadata_track"


def test_sdp_with_hostile_numbers_skips_those_lines() -> None:
    sdp = SDP_CAMERA.replace(b"m=application 0", "m=application \u00b2".encode()).replace(
        b"a=rtpmap:107", "a=rtpmap:\uff11\uff10\uff17".encode()
    )
    with pytest.raises(CameraProtocolError) as info:
        find_metadata_track(parse_sdp(sdp), "rtsp://cam:554/main")
    assert info.value.kind == "rtsp_no_metadata_track"
