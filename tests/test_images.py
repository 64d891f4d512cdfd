"""Scene image options: byte-exact by default, skip, re-encode/resize, config checks."""

from __future__ import annotations

import hashlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PilImage

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.config import ImagesConfig, SceneMode, parse_config
from gateway.errors import ConfigError, ImageTransformError
from gateway.event import CameraEvent, Image, PlateEvent, Source, utc_now
from gateway.images import SKIPPED_REASON, apply_image_options, reencode_jpeg
from gateway.pipeline import Admission
from gateway.simulate.common import PlateGenerator, plate_jpeg, scene_jpeg
from tests.helpers import MqttCollector, gateway_config, sample

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
            failures = sample(gw.metrics, "lpr_image_transform_failures_total", camera="small")
            assert failures == 1
    assert scene.payload == garbage


# -- pixel limit: refused from the header, before decoding --------------------------------


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real, decodable 10000x10000 JPEG (1 colour: ~1.2 MB). Made once per module:
    encoding it costs ~0.2 s and ~100 MiB; decoding it (what the limit prevents) costs
    ~480 MiB and seconds."""
    path = tmp_path_factory.mktemp("images") / "huge.jpg"
    PilImage.new("L", (10_000, 10_000), 128).save(path, format="JPEG", quality=50)
    return path.read_bytes()


def claiming(width: int, height: int) -> bytes:
    """A tiny real JPEG whose frame header (SOF0) claims width x height."""
    out = io.BytesIO()
    PilImage.new("L", (16, 16), 128).save(out, format="JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records the size of every image Pillow decodes (ImageFile.load)."""
    from PIL import ImageFile

    seen: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> object:
        seen.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return seen


def test_huge_scene_is_refused_before_decoding(
    huge_jpeg: bytes, decodes: list[tuple[int, int]]
) -> None:
    assert size_of(huge_jpeg) == (10_000, 10_000)
    with pytest.raises(ImageTransformError) as caught:
        reencode_jpeg(huge_jpeg, 80, 1280)  # the default limit: 40 MP
    assert str(caught.value) == (
        "the scene image claims 10000x10000 = 100,000,000 pixels, "
        "more than images.max_pixels (40,000,000); not decoded"
    )
    assert decodes == []  # nothing was decoded
    # The same path does decode a scene under the limit (the spy sees it).
    reencode_jpeg(READ.scene_jpeg, 80, 1280)
    assert set(decodes) == {(1920, 1080)}


def test_a_few_bytes_claiming_huge_dimensions_are_refused(
    decodes: list[tuple[int, int]],
) -> None:
    with pytest.raises(ImageTransformError, match="claims 9000x8000 = 72,000,000 pixels"):
        reencode_jpeg(claiming(9000, 8000), 80, None)
    assert decodes == []


def test_pixel_limit_is_inclusive_and_configurable() -> None:
    pixels = 1920 * 1080
    event = event_with(READ.scene_jpeg)
    at_limit = ImagesConfig(max_width=640, max_pixels=pixels)
    scene = apply_image_options(event, at_limit).scene_image
    assert scene is not None and scene.data is not None and size_of(scene.data) == (640, 360)
    with pytest.raises(ImageTransformError, match=r"more than images.max_pixels \(2,073,599\)"):
        apply_image_options(event, ImagesConfig(max_width=640, max_pixels=pixels - 1))


def test_only_jpeg_is_decoded(decodes: list[tuple[int, int]]) -> None:
    png = io.BytesIO()
    PilImage.new("RGB", (64, 36)).save(png, format="PNG")
    with pytest.raises(ImageTransformError, match="cannot re-encode"):
        reencode_jpeg(png.getvalue(), 50, None)
    assert decodes == []


def test_pillow_itself_refuses_a_bomb_once_images_ran() -> None:
    """Pillow's own guard (process-wide) is set too: a picture opened elsewhere
    than reencode_jpeg is refused above twice the limit."""
    from PIL import Image as PillowImage

    from gateway.config import MAX_PIXELS_LIMIT

    reencode_jpeg(READ.scene_jpeg, 80, None)
    assert PillowImage.MAX_IMAGE_PIXELS == MAX_PIXELS_LIMIT
    with pytest.raises(PillowImage.DecompressionBombError):
        PillowImage.open(io.BytesIO(claiming(20_000, 20_000)))


def test_config_max_pixels_bounds() -> None:
    assert parse_config("images: {max_pixels: 1000000}", {}).images.max_pixels == 1_000_000
    assert parse_config("", {}).images.max_pixels == 40_000_000
    with pytest.raises(ConfigError) as caught:
        parse_config("images: {max_pixels: 200000000}", {})
    assert caught.value.problems == [
        "images.max_pixels: expected an integer 1-128000000, got 200000000"
    ]


async def test_huge_scene_is_published_as_received_and_counted(
    mqtt_broker: MosquittoProcess, tmp_path: Path, huge_jpeg: bytes
) -> None:
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        cameras=[{"id": "small", "protocol": "http", "images": {"max_width": 640}}],
    )
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
        async with Gateway(config) as gw:
            event = PlateEvent(
                camera="small",
                source=Source.INJECT,
                plate="AB123",
                received=utc_now(),
                scene_image=Image(huge_jpeg),
            )
            assert (await gw.submit(event)).taken
            (scene,) = await sub.until_count("lpr/small/image/scene", 1)
            (published,) = await sub.until_count("lpr/small/event", 1)
            failures = sample(gw.metrics, "lpr_image_transform_failures_total", camera="small")
            assert failures == 1
    assert scene.payload == huge_jpeg  # the read and its picture, as the camera sent them
    assert published.json()["images"]["scene"]["bytes"] == len(huge_jpeg)


# -- the broker's message size limit (mqtt.max_payload_bytes) ----------------------


@pytest.fixture
def small_message_broker() -> Iterator[MosquittoProcess]:
    """Like a NATS server with its 1 MB max_payload, smaller: mosquitto drops a
    client that sends a packet over 200,000 bytes."""
    broker = MosquittoProcess(extra_config=("max_packet_size 200000",))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


async def test_a_picture_over_the_brokers_limit_is_published_as_missing(
    small_message_broker: MosquittoProcess, tmp_path: Path
) -> None:
    broker = small_message_broker
    config = gateway_config(broker.url, tmp_path, mqtt={"max_payload_bytes": 190_000})
    big = scene_jpeg()
    assert len(big) > 200_000  # over what this broker takes
    read = PlateEvent(
        camera="cam",
        source=Source.INJECT,
        plate="BIG1",
        received=utc_now(),
        plate_image=Image(plate_jpeg()),
        scene_image=Image(big),
    )
    counting = CameraEvent(
        camera="cam",
        source=Source.INJECT,
        kind="vehicle_counting",
        received=utc_now(),
        images={"snapshot": Image(big)},
    )
    topics = ("lpr/cam/#",)
    with MqttCollector(broker.host, broker.port, topics=topics) as sub:
        async with Gateway(config) as gw:
            assert await gw.submit(read) is Admission.ACCEPTED
            assert await gw.submit(counting) is Admission.ACCEPTED
            await sub.until(
                lambda ms: any(m.topic == "lpr/cam/camera_event/vehicle_counting" for m in ms),
                timeout=20,
            )
            over = "lpr_images_over_broker_limit_total"
            assert sample(gw.metrics, over, camera="cam", image="scene") == 1
            assert sample(gw.metrics, over, camera="cam", image="snapshot") == 1
            assert sample(gw.metrics, "lpr_mqtt_reconnects_total") == 1  # never dropped
            assert gw.outbox.dead_letter_events == 0
    event = sub.on("lpr/cam/event")[-1].json()
    assert event["images"]["scene"]["missing"] is True
    assert "mqtt.max_payload_bytes 190000" in event["images"]["scene"]["reason"]
    assert sub.on("lpr/cam/image/plate")[-1].payload == plate_jpeg()  # under it: byte-exact
    assert not sub.on("lpr/cam/image/scene")
    snapshot = sub.on("lpr/cam/camera_event/vehicle_counting")[-1].json()["data"]["snapshot"]
    assert snapshot["missing"] is True


async def test_re_encoding_makes_a_scene_fit_the_brokers_limit(
    small_message_broker: MosquittoProcess, tmp_path: Path
) -> None:
    broker = small_message_broker
    config = gateway_config(
        broker.url,
        tmp_path,
        mqtt={"max_payload_bytes": 190_000},
        images={"max_width": 800, "quality": 70},
    )
    read = PlateEvent(
        camera="cam",
        source=Source.INJECT,
        plate="FIT1",
        received=utc_now(),
        scene_image=Image(scene_jpeg()),
    )
    with MqttCollector(broker.host, broker.port, topics=("lpr/cam/#",)) as sub:
        async with Gateway(config) as gw:
            assert await gw.submit(read) is Admission.ACCEPTED
            await sub.until(lambda ms: any(m.topic == "lpr/cam/event" for m in ms), timeout=20)
            assert (
                gw.metrics.registry.get_sample_value(
                    "lpr_images_over_broker_limit_total", {"camera": "cam", "image": "scene"}
                )
                is None
            )
    scene = sub.on("lpr/cam/image/scene")[-1].payload
    assert scene.startswith(b"\xff\xd8") and len(scene) <= 190_000
    assert sub.on("lpr/cam/event")[-1].json()["images"]["scene"]["bytes"] == len(scene)
