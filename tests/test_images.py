"""Scene image options: byte-exact by default, skip, re-encode/resize, config checks."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import pytest
from PIL import Image as PilImage

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.config import ImagesConfig, SceneMode, parse_config
from gateway.errors import ConfigError
from gateway.event import Image, PlateEvent, Source, utc_now
from gateway.images import SKIPPED_REASON, ImageTransformError, apply_image_options, reencode_jpeg
from gateway.simulate.common import PlateGenerator
from tests.helpers import MqttCollector, gateway_config

READ = PlateGenerator(3).read("c")  # a real 1920x1080 scene JPEG (~300 KB) and plate crop


def event_with(scene: bytes | None, plate: bytes | None = READ.plate_jpeg) -> PlateEvent:
    return PlateEvent(
        camera="c",
        source=Source.INJECT,
        plate="AB123",
        received=utc_now(),
        plate_image=Image(plate) if plate is not None else None,
        scene_image=Image(scene) if scene is not None else None,
    )


def size_of(jpeg: bytes) -> tuple[int, int]:
    with PilImage.open(io.BytesIO(jpeg)) as picture:
        assert picture.format == "JPEG"
        return picture.size


def test_default_is_byte_exact() -> None:
    event = event_with(READ.scene_jpeg)
    assert apply_image_options(event, ImagesConfig()) is event


def test_skip_marks_the_scene_missing_and_keeps_the_plate() -> None:
    event = apply_image_options(event_with(READ.scene_jpeg), ImagesConfig(scene=SceneMode.SKIP))
    assert event.scene_image == Image.missing(SKIPPED_REASON)
    assert event.plate_image == Image(READ.plate_jpeg)
    # A source without a scene stays without one.
    bare = event_with(None)
    assert apply_image_options(bare, ImagesConfig(scene=SceneMode.SKIP)) is bare


@pytest.mark.parametrize(
    ("quality", "max_width", "size"),
    [
        (None, 640, (640, 360)),
        (40, None, (1920, 1080)),
        (60, 1280, (1280, 720)),
    ],
)
def test_reencode_makes_it_smaller(
    quality: int | None, max_width: int | None, size: tuple[int, int]
) -> None:
    options = ImagesConfig(quality=quality, max_width=max_width)
    event = apply_image_options(event_with(READ.scene_jpeg), options)
    assert event.scene_image is not None and event.scene_image.data is not None
    data = event.scene_image.data
    assert len(data) < len(READ.scene_jpeg)
    assert size_of(data) == size
    assert event.plate_image == Image(READ.plate_jpeg)  # the crop is never touched


def test_reencode_keeps_a_smaller_original() -> None:
    small = io.BytesIO()
    noise = PilImage.effect_noise((64, 36), 100).convert("RGB")  # hard to compress
    noise.save(small, format="JPEG", quality=20)
    data = small.getvalue()
    assert reencode_jpeg(data, 95, 1280) is data  # not narrower, and 95 would only grow it


def test_reencode_refuses_garbage() -> None:
    with pytest.raises(ImageTransformError):
        reencode_jpeg(b"\xff\xd8 not really a jpeg", 50, None)


def test_config_images_global_and_per_camera() -> None:
    config = parse_config(
        """
images: {quality: 70, max_width: 1280}
cameras:
  - {id: a, protocol: http}
  - {id: b, protocol: http, images: {scene: skip}}
  - {id: c, protocol: http, images: {max_width: 640}}
""",
        {},
    )
    by_id = {c.id: c.images for c in config.cameras}
    assert config.images == ImagesConfig(quality=70, max_width=1280)
    assert by_id["a"] == ImagesConfig(quality=70, max_width=1280)
    assert by_id["b"] == ImagesConfig(scene=SceneMode.SKIP, quality=70, max_width=1280)
    assert not by_id["b"].reencode
    assert by_id["c"] == ImagesConfig(quality=70, max_width=640)
    assert parse_config("", {}).images == ImagesConfig()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("images: {quality: 0}", "images.quality: expected an integer 1-95"),
        ("images: {max_width: 8}", "images.max_width: expected an integer 16-16384"),
        ("images: {scene: drop}", "images.scene: expected one of send, skip"),
        ("images: {size: 3}", "images.size: unknown key"),
        (
            "cameras: [{id: a, protocol: http, images: {quality: 200}}]",
            "cameras[0].images.quality: expected an integer 1-95",
        ),
    ],
)
def test_config_images_problems(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_config_says_when_pillow_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL...` now raises ImportError
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ConfigError) as caught:
        parse_config("images: {max_width: 1280}", {})
    assert any("Pillow" in p and "lpr-gateway[images]" in p for p in caught.value.problems)
    with pytest.raises(ConfigError):
        parse_config("cameras: [{id: a, protocol: http, images: {quality: 50}}]", {})
    # Skipping needs no Pillow, nor does the default.
    assert parse_config("images: {scene: skip}", {}).images.scene is SceneMode.SKIP


async def test_images_options_in_gateway(mqtt_broker: MosquittoProcess, tmp_path: Path) -> None:
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        cameras=[
            {"id": "exact", "protocol": "http"},
            {"id": "small", "protocol": "http", "images": {"max_width": 640, "quality": 60}},
            {"id": "noscene", "protocol": "http", "images": {"scene": "skip"}},
        ],
    )
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
        async with Gateway(config) as gw:
            for camera in ("exact", "small", "noscene"):
                event = PlateEvent(
                    camera=camera,
                    source=Source.INJECT,
                    plate="AB123",
                    received=utc_now(),
                    plate_image=Image(READ.plate_jpeg),
                    scene_image=Image(READ.scene_jpeg),
                )
                assert (await gw.submit(event)).taken
            await sub.until(lambda msgs: sum(m.topic.endswith("/event") for m in msgs) >= 3)
    events = {m.json()["camera"]: m.json() for m in sub.messages if m.topic.endswith("/event")}
    (exact_scene,) = sub.on("lpr/exact/image/scene")
    assert exact_scene.payload == READ.scene_jpeg
    (small_scene,) = sub.on("lpr/small/image/scene")
    assert size_of(small_scene.payload) == (640, 360)
    assert events["small"]["images"]["scene"] == {
        "topic": "lpr/small/image/scene",
        "bytes": len(small_scene.payload),
        "sha256": hashlib.sha256(small_scene.payload).hexdigest(),
    }
    assert sub.on("lpr/noscene/image/scene") == []
    assert events["noscene"]["images"]["scene"] == {"missing": True, "reason": SKIPPED_REASON}
    for camera in ("exact", "small", "noscene"):
        (plate,) = sub.on(f"lpr/{camera}/image/plate")
        assert plate.payload == READ.plate_jpeg


async def test_undecodable_scene_is_published_as_received(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        cameras=[{"id": "small", "protocol": "http", "images": {"max_width": 640}}],
    )
    garbage = b"\xff\xd8 truncated camera upload"
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
        async with Gateway(config) as gw:
            event = PlateEvent(
                camera="small",
                source=Source.INJECT,
                plate="AB123",
                received=utc_now(),
                scene_image=Image(garbage),
            )
            assert (await gw.submit(event)).taken
            (scene,) = await sub.until_count("lpr/small/image/scene", 1)
            failures = gw.metrics.image_transform_failures.labels(camera="small")
            assert failures._value.get() == 1
    assert scene.payload == garbage
