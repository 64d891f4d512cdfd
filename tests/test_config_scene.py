"""Config of the scene-description tracking on RTSP cameras (ONVIF Profile M)."""

from __future__ import annotations

import pytest
import yaml

from gateway.config import RtspCameraConfig, parse_config
from gateway.errors import ConfigError


def _camera(**options: object) -> RtspCameraConfig:
    entry = {"id": "lobby", "protocol": "rtsp", "url": "rtsp://192.0.2.1/main", **options}
    config = parse_config(yaml.safe_dump({"cameras": [entry]}), {})
    [camera] = config.cameras
    assert isinstance(camera, RtspCameraConfig)
    return camera


def test_defaults() -> None:
    camera = _camera()
    assert camera.track_end_seconds == 1.0
    assert camera.track_max_seconds == 10.0
    assert camera.track_max_objects == 64
    assert camera.scene_resolution is None


@pytest.mark.parametrize("text", ["1920x1080", " 1920 X 1080 ", "1920×1080"])
def test_scene_resolution(text: str) -> None:
    assert _camera(scene_resolution=text).scene_resolution == (1920, 1080)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"scene_resolution": "1920"}, "cameras[0].scene_resolution: expected WIDTHxHEIGHT"),
        ({"scene_resolution": "0x1080"}, "cameras[0].scene_resolution: expected WIDTHxHEIGHT"),
        ({"scene_resolution": "１920x1080"}, "cameras[0].scene_resolution: expected WIDTHxHEIGHT"),
        ({"track_end_seconds": 0}, "cameras[0].track_end_seconds: expected a number"),
        ({"track_max_seconds": "soon"}, "cameras[0].track_max_seconds: expected a number"),
        ({"track_max_objects": 0}, "cameras[0].track_max_objects: expected an integer"),
    ],
)
def test_bad_values_name_their_key_path(options: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _camera(**options)
    assert any(problem.startswith(expected) for problem in caught.value.problems), (
        caught.value.problems
    )


def test_the_options_are_rtsp_only() -> None:
    entry = {"id": "gate", "protocol": "tcp", "host": "192.0.2.2", "track_end_seconds": 1}
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump({"cameras": [entry]}), {})
    assert any("track_end_seconds: unknown key" in p for p in caught.value.problems)
