"""RTSP adapter end to end: simulated camera → gateway → real mosquitto → subscriber.

Real sockets on 127.0.0.1, the project's RTSP camera simulator, the real
broker fixture and `Gateway`: nothing mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import subprocess
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.adapters import rtsp as adapter
from gateway.adapters.base import ReconnectPolicy, backoff_delay
from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.codecs import onvif
from gateway.codecs.onvif import build_plate_document
from gateway.event import format_time
from gateway.simulate.common import plate_jpeg
from gateway.simulate.rtsp import AuthMode, Fault, RtspCameraSimulator, SentRead
from tests.helpers import MqttCollector, Received, eventually, free_port, gateway_config

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

CAMERA = "lobby"
EVENT_TOPIC = f"lpr/{CAMERA}/event"
AVAILABILITY = f"lpr/{CAMERA}/availability"
PLATE_TOPIC = f"lpr/{CAMERA}/image/plate"


# The production backoff starts at 1 s; tests need not wait that long.
QUICK_RECONNECT = ReconnectPolicy(initial_seconds=0.1)


def camera_entry(sim: RtspCameraSimulator, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": CAMERA,
        "protocol": "rtsp",
        "url": sim.url,
        "username": "admin",
        "password": "secret",
        "http_port": sim.http_port,
        "image_timeout_seconds": 1.0,
    }
    entry.update(overrides)
    return entry


@asynccontextmanager
async def running(
    broker: MosquittoProcess, tmp_path: Path, cameras: Iterable[dict[str, Any]]
) -> AsyncIterator[Gateway]:
    config = gateway_config(broker.url, tmp_path, list(cameras))
    async with Gateway(config, reconnect_policy=QUICK_RECONNECT) as gw:
        yield gw


def metric(gw: Gateway, name: str, **labels: str) -> float:
    return gw.metrics.registry.get_sample_value(name, labels) or 0.0


def last_availability(messages: list[Received]) -> str | None:
    states = [m.payload.decode() for m in messages if m.topic == AVAILABILITY]
    return states[-1] if states else None


async def wait_playing(sim: RtspCameraSimulator, count: int = 1) -> None:
    async with asyncio.timeout(10):
        await sim.wait_playing(count)


def simulator(**kwargs: Any) -> RtspCameraSimulator:
    settings: dict[str, Any] = {
        "username": "admin",
        "password": "secret",
        "rate": 0,
        "seed": 7,
        "camera": CAMERA,
    }
    settings.update(kwargs)
    return RtspCameraSimulator(**settings)


async def test_plate_reads_with_pictures_reach_mqtt(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with simulator() as sim, running(mqtt_broker, tmp_path, [camera_entry(sim)]) as gw:
            await wait_playing(sim)
            await collector.until(lambda msgs: last_availability(msgs) == "online")
            sent = sim.push(3)
            events = await collector.until_count(EVENT_TOPIC, 3)
            pictures = await collector.until_count(PLATE_TOPIC, 3)
            received_counter = metric(gw, "lpr_events_received_total", camera=CAMERA, source="rtsp")
            # The Initialized document at stream start is counted as a document, not a read.
            documents = metric(gw, "lpr_camera_frames_total", camera=CAMERA)
        # Shutdown said TEARDOWN to the camera.
        assert sim.stats.teardowns == 1
    assert [e.json()["plate"] for e in events] == [s.plate for s in sent]
    for message, read in zip(events, sent, strict=True):
        check_event(message.json(), read)
    # The retained plate picture is the camera's JPEG, byte for byte.
    assert [p.payload for p in pictures] == [s.picture for s in sent]
    # ... and stays retained for a subscriber that comes later.
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=(PLATE_TOPIC,)) as late:
        (retained,) = late.wait_count(PLATE_TOPIC, 1)
    assert retained.retain and retained.payload == sent[-1].picture
    motions = 3 // 3  # the simulator adds a motion notification every 3rd read
    assert received_counter == 3 + motions
    assert documents == 1 + 3 + motions
    assert not collector.on(f"lpr/{CAMERA}/image/scene")


def check_event(event: dict[str, Any], read: SentRead) -> None:
    assert event["camera"] == CAMERA
    assert event["source"] == "rtsp"
    assert event["plate"] == read.plate
    assert event["time"] == format_time(read.time)
    assert event["speed_kmh"] == read.speed_kmh
    assert event["direction"] == {0: "unknown", 1: "in", 2: "out"}[read.direction_code]
    assert event["raw"]["picture_path"] == read.picture_path
    assert event["images"]["scene"] is None
    plate = event["images"]["plate"]
    assert plate["topic"] == PLATE_TOPIC
    assert plate["bytes"] == len(read.picture)
    assert plate["sha256"] == hashlib.sha256(read.picture).hexdigest()


async def test_missing_picture_still_publishes_the_read(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with simulator() as sim, running(mqtt_broker, tmp_path, [camera_entry(sim)]) as gw:
            await wait_playing(sim)
            (missing,) = sim.push(1, faults=[Fault.MISSING_PICTURE])
            (good,) = sim.push(1, faults=[])
            events = await collector.until_count(EVENT_TOPIC, 2)
            failures = metric(
                gw, "lpr_image_fetch_failures_total", camera=CAMERA, reason="http_404"
            )
    first, second = (e.json() for e in events)
    assert first["plate"] == missing.plate  # camera order kept
    assert first["images"]["plate"]["missing"] is True
    assert "404" in first["images"]["plate"]["reason"]
    assert second["plate"] == good.plate
    assert second["images"]["plate"]["sha256"] == hashlib.sha256(good.picture).hexdigest()
    assert failures == 1


async def test_slow_picture_times_out_and_is_marked_missing(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with (
            simulator(slow_picture_seconds=1.0) as sim,
            running(mqtt_broker, tmp_path, [camera_entry(sim, image_timeout_seconds=0.3)]) as gw,
        ):
            await wait_playing(sim)
            sim.push(1, faults=[Fault.SLOW_PICTURE])
            (event,) = await collector.until_count(EVENT_TOPIC, 1)
            failures = metric(gw, "lpr_image_fetch_failures_total", camera=CAMERA, reason="timeout")
    image = event.json()["images"]["plate"]
    assert image["missing"] is True and "0.3 s" in image["reason"]
    assert failures == 1
    # The Digest challenge, then the first attempt and its one retry.
    assert sim.stats.picture_requests == 3


@pytest.mark.parametrize(
    ("body", "limit", "reason"),
    [
        (b"<html>login page</html>", None, "not_jpeg"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 5000, 1000, "too_large"),
    ],
)
async def test_a_picture_that_is_not_a_usable_jpeg_is_missing(
    mqtt_broker: MosquittoProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    body: bytes,
    limit: int | None,
    reason: str,
) -> None:
    if limit is not None:
        monkeypatch.setattr(adapter, "MAX_PICTURE_BYTES", limit)

    async def any_path(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/{tail:.*}", any_path)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
            entry_overrides = {"http_port": int(runner.addresses[0][1])}
            async with (
                simulator() as sim,
                running(mqtt_broker, tmp_path, [camera_entry(sim, **entry_overrides)]) as gw,
            ):
                await wait_playing(sim)
                sim.push(1)
                (event,) = await collector.until_count(EVENT_TOPIC, 1)
                failures = metric(
                    gw, "lpr_image_fetch_failures_total", camera=CAMERA, reason=reason
                )
    finally:
        await runner.cleanup()
    assert event.json()["images"]["plate"]["missing"] is True
    assert failures == 1
    assert not collector.on(PLATE_TOPIC)


async def test_availability_follows_the_session_and_reconnects_after_a_drop(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with simulator() as sim, running(mqtt_broker, tmp_path, [camera_entry(sim)]) as gw:
            await wait_playing(sim)
            await collector.until(lambda msgs: last_availability(msgs) == "online")
            (first,) = sim.push(1)
            await collector.until_count(EVENT_TOPIC, 1)
            documents = metric(gw, "lpr_camera_frames_total", camera=CAMERA)
            sim.drop_connections()
            await collector.until(lambda msgs: last_availability(msgs) == "offline")
            await collector.until(lambda msgs: last_availability(msgs) == "online")
            await wait_playing(sim)
            # The new session starts with an Initialized document repeating the
            # last read: it is received, and must not be published as a new read.
            await eventually(
                lambda: metric(gw, "lpr_camera_frames_total", camera=CAMERA) >= documents + 1,
                10,
            )
            (second,) = sim.push(1)
            events = await collector.until_count(EVENT_TOPIC, 2)
            reconnects = metric(gw, "lpr_camera_reconnects_total", camera=CAMERA)
            connected = metric(gw, "lpr_camera_connected", camera=CAMERA)
        await collector.until(lambda msgs: last_availability(msgs) == "offline")
    assert [e.json()["plate"] for e in events] == [first.plate, second.plate]
    assert reconnects >= 1  # the session after the drop (the first is not a reconnect)
    assert connected == 1
    assert sim.stats.sessions_started == 2


async def test_keepalive_holds_the_session_past_its_timeout(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with (
            simulator(session_timeout=2, enforce_session_timeout=True) as sim,
            running(mqtt_broker, tmp_path, [camera_entry(sim)]),
        ):
            await wait_playing(sim)
            # 4 keep-alives, one a second: twice the session timeout.
            await eventually(lambda: sim.stats.keepalives >= 4, 15)
            assert sim.stats.sessions_timed_out == 0
            assert sim.stats.sessions_started == 1
            (read,) = sim.push(1)
            (event,) = await collector.until_count(EVENT_TOPIC, 1)
    assert event.json()["plate"] == read.plate
    assert any(method == "GET_PARAMETER" for method, _ in sim.stats.requests)


async def test_keepalive_by_options_when_get_parameter_is_not_offered(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    async with (
        simulator(session_timeout=2, advertise_get_parameter=False) as sim,
        running(mqtt_broker, tmp_path, [camera_entry(sim)]),
    ):
        await wait_playing(sim)
        await eventually(lambda: sim.stats.keepalives >= 3, 15)
        assert sim.stats.sessions_timed_out == 0
    methods = [method for method, _ in sim.stats.requests]
    assert "GET_PARAMETER" not in methods
    assert methods.count("OPTIONS") >= 4  # the first one and the keep-alives


async def test_stale_nonce_is_answered_again_without_dropping_the_session(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with (
            simulator(session_timeout=2, nonce_lifetime_seconds=1.2) as sim,
            running(mqtt_broker, tmp_path, [camera_entry(sim)]) as gw,
        ):
            await wait_playing(sim)
            (first,) = sim.push(1)
            await collector.until_count(EVENT_TOPIC, 1)
            # Keep-alives outlive the nonce: the camera says stale, the gateway answers anew.
            await eventually(lambda: sim.stats.stale_nonces >= 1 and sim.stats.keepalives >= 3, 15)
            (second,) = sim.push(1)  # its picture GET meets a stale nonce too
            events = await collector.until_count(EVENT_TOPIC, 2)
            auth_failures = metric(gw, "lpr_camera_auth_failures_total", camera=CAMERA)
    assert sim.stats.sessions_started == 1
    assert sim.stats.auth_failures == 0 and auth_failures == 0
    check_event(events[0].json(), first)
    check_event(events[1].json(), second)


@pytest.mark.parametrize("auth", [AuthMode.BASIC, AuthMode.DIGEST])
async def test_wrong_password_is_a_config_problem(
    mqtt_broker: MosquittoProcess, tmp_path: Path, auth: AuthMode, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        simulator(auth=auth) as sim,
        running(mqtt_broker, tmp_path, [camera_entry(sim, password="wrong")]) as gw,
    ):
        await eventually(
            lambda: metric(gw, "lpr_camera_auth_failures_total", camera=CAMERA) >= 1, 10
        )
        assert metric(gw, "lpr_camera_connected", camera=CAMERA) == 0
        assert sim.playing_sessions == 0
    refusals = [r for r in caplog.records if "refused the configured credentials" in r.message]
    assert len(refusals) == 1
    assert "wrong" not in caplog.text  # never a secret in the log


async def test_basic_auth_camera(mqtt_broker: MosquittoProcess, tmp_path: Path) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with (
            simulator(auth=AuthMode.BASIC) as sim,
            running(mqtt_broker, tmp_path, [camera_entry(sim)]),
        ):
            await wait_playing(sim)
            (read,) = sim.push(1)
            (event,) = await collector.until_count(EVENT_TOPIC, 1)
    check_event(event.json(), read)


async def test_motion_is_forwarded_as_a_camera_event(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with simulator() as sim, running(mqtt_broker, tmp_path, [camera_entry(sim)]):
            await wait_playing(sim)
            sim.push_motion(True)
            (read,) = sim.push(1)
            await collector.until_count(EVENT_TOPIC, 1)
            messages = await collector.until(
                lambda msgs: any("/camera_event/" in m.topic for m in msgs)
            )
    (motion,) = [m for m in messages if m.topic.startswith(f"lpr/{CAMERA}/camera_event/")]
    body = motion.json()
    assert body["source"] == "rtsp" and "Motion" in body["kind"]
    assert collector.on(EVENT_TOPIC)[0].json()["plate"] == read.plate


async def test_other_events_skipped_when_configured(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with (
            simulator() as sim,
            running(mqtt_broker, tmp_path, [camera_entry(sim, other_events="skip")]),
        ):
            await wait_playing(sim)
            sim.push_motion(True)
            sim.push(1)
            await collector.until_count(EVENT_TOPIC, 1)
    assert not [m for m in collector.messages if "/camera_event/" in m.topic]


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault.GARBAGE, "rtsp_garbage"),
        (Fault.BAD_DOCUMENT, "xml_syntax"),
        (Fault.LOSE_PACKET, "rtp_loss"),
    ],
)
async def test_faults_are_counted_and_later_reads_still_arrive(
    mqtt_broker: MosquittoProcess, tmp_path: Path, fault: Fault, kind: str
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with simulator() as sim, running(mqtt_broker, tmp_path, [camera_entry(sim)]) as gw:
            await wait_playing(sim)
            sim.push(1, faults=[fault])
            await eventually(
                lambda: metric(gw, "lpr_parse_errors_total", source="rtsp", kind=kind) >= 1, 10
            )
            assert metric(gw, "lpr_camera_parse_errors_total", camera=CAMERA, kind=kind) >= 1
            await wait_playing(sim)
            (read,) = sim.push(1, faults=[])
            events = await collector.until(
                lambda msgs: any(
                    m.topic == EVENT_TOPIC and read.plate in m.payload.decode() for m in msgs
                )
            )
    assert [m for m in events if m.topic == EVENT_TOPIC][-1].json()["plate"] == read.plate


@pytest.mark.parametrize("bad", ["\u00b2", "\uff15", "-0x1", "9" * 5000])
async def test_hostile_numbers_are_counted_never_a_traceback_and_reads_survive(
    mqtt_broker: MosquittoProcess,
    tmp_path: Path,
    bad: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # RTP-Info seq, speed, direction and UtcTime of "²", "５", "-0x1" or 5,000
    # digits: the session keeps playing, the RTP-Info is counted as a parse
    # error, and both reads in the hostile document reach MQTT.
    now = datetime.now(UTC).replace(microsecond=0)
    hostile = onvif.plate_notification("HOSTILE1", now, None, speed=bad, direction=bad)
    good = onvif.plate_notification("GOOD1", now, None)
    document = onvif.build_metadata_document([hostile, good]).replace(
        b'UtcTime="' + onvif.format_utc_time(now).encode() + b'"',
        b'UtcTime="' + bad.encode() + b'"',
        1,
    )
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with simulator() as sim, running(mqtt_broker, tmp_path, [camera_entry(sim)]) as gw:
            sim.rtp_info_seq_text = bad
            await wait_playing(sim)
            sim.push_document(document)
            events = await collector.until_count(EVENT_TOPIC, 2)
            kind = "rtsp_rtp_info"
            assert metric(gw, "lpr_parse_errors_total", source="rtsp", kind=kind) == 1
            assert metric(gw, "lpr_camera_parse_errors_total", camera=CAMERA, kind=kind) == 1
            assert metric(gw, "lpr_parse_errors_total", source="rtsp", kind="internal") == 0
            assert sim.stats.connections == 1  # nothing made the session fail
    first, second = (e.json() for e in events)
    assert (first["plate"], second["plate"]) == ("HOSTILE1", "GOOD1")
    assert first["speed_kmh"] is None and first["time"] is None
    assert first["raw"]["unreadable"] == {
        "LicenseCarSpeed": bad,
        "LicenseCarDirection": bad,
        "UtcTime": bad,
    }
    assert not [r for r in caplog.records if r.exc_info]  # no traceback anywhere


async def test_unreachable_camera_is_offline_and_retried(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    entry = {
        "id": CAMERA,
        "protocol": "rtsp",
        "url": f"rtsp://127.0.0.1:{free_port()}/main",
        "connect_timeout_seconds": 0.5,
    }
    async with running(mqtt_broker, tmp_path, [entry]) as gw:
        await eventually(lambda: metric(gw, "lpr_camera_reconnects_total", camera=CAMERA) >= 3, 10)
        assert metric(gw, "lpr_camera_connected", camera=CAMERA) == 0


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(0, 0.05, 0.1), (1, 0.1, 0.2), (3, 0.4, 0.8), (20, 30.0, 60.0), (10_000, 30.0, 60.0)],
)
def test_backoff_is_capped_exponential_with_jitter(attempt: int, low: float, high: float) -> None:
    # QUICK_RECONNECT sets the initial delay to 0.1 s; the cap stays 60 s.
    rng = random.Random(attempt)
    delays = [
        backoff_delay(attempt, QUICK_RECONNECT.initial_seconds, QUICK_RECONNECT.max_seconds, rng)
        for _ in range(50)
    ]
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) > 1  # jittered


# -- interoperability: the gateway's client against GStreamer's RTSP server ----------

GST_SERVER = Path(__file__).resolve().parents[1] / "interop" / "gst_rtsp_metadata_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"
_GST_CHECK = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
    "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
    "assert Gst.ElementFactory.find('rtppcmupay') and Gst.ElementFactory.find('appsrc')"
)


def _gstreamer_missing() -> str | None:
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    check = subprocess.run(
        [SYSTEM_PYTHON, "-c", _GST_CHECK], capture_output=True, text=True, timeout=30
    )
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["?"])[-1]
        return f"GStreamer RTSP server bindings missing ({last}); run tests/interop/install-deps.sh"
    return None


@pytest.fixture(scope="module")
def gstreamer() -> None:
    reason = _gstreamer_missing()
    if reason is not None:
        pytest.skip(reason)


@asynccontextmanager
async def gst_rtsp_server(document: bytes, tmp_path: Path) -> AsyncIterator[str]:
    """GStreamer's RTSP server, Digest admin/secret, audio + metadata; yields its URL."""
    path = tmp_path / "metadata.xml"
    path.write_bytes(document)
    process = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON,
        str(GST_SERVER),
        "--document",
        str(path),
        "--user",
        "admin",
        "--password",
        "secret",
        "--interval",
        "0.3",
        "--chunk",
        "200",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            line = (await process.stdout.readline()).decode()
        if not line.startswith("READY "):
            pytest.fail(f"GStreamer RTSP server did not start: {line!r}")
        yield f"rtsp://127.0.0.1:{int(line.split()[1])}/lpr"
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@asynccontextmanager
async def picture_server(path: str, jpeg: bytes) -> AsyncIterator[int]:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=jpeg, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@pytest.mark.slow
async def test_interop_gstreamer_rtsp_server_with_digest(
    gstreamer: None, mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    picture_path = "/LPR/2018051506193401.jpg"
    jpeg = plate_jpeg()
    moment = datetime(2018, 5, 15, 6, 19, 34, tzinfo=UTC)
    document = build_plate_document("43거6510", moment, picture_path)
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as collector:
        async with (
            gst_rtsp_server(document, tmp_path) as url,
            picture_server(picture_path, jpeg) as http_port,
        ):
            entry = {
                "id": CAMERA,
                "protocol": "rtsp",
                "url": url,
                "username": "admin",
                "password": "secret",
                "http_port": http_port,
            }
            async with running(mqtt_broker, tmp_path, [entry]) as gw:
                events = await collector.until_count(EVENT_TOPIC, 2, timeout=20)
                pictures = await collector.until_count(PLATE_TOPIC, 2)
                assert last_availability(collector.messages) == "online"
                assert metric(gw, "lpr_camera_auth_failures_total", camera=CAMERA) == 0
    event = events[0].json()
    assert event["plate"] == "43거6510"
    assert event["source"] == "rtsp"
    assert event["time"] == "2018-05-15T06:19:34.000Z"
    assert event["speed_kmh"] == 25 and event["direction"] == "in"
    assert event["images"]["plate"]["sha256"] == hashlib.sha256(jpeg).hexdigest()
    assert pictures[0].payload == jpeg


@pytest.mark.slow
async def test_interop_gstreamer_refuses_a_wrong_password(
    gstreamer: None, mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    document = build_plate_document("43거6510", datetime.now(UTC), None)
    async with gst_rtsp_server(document, tmp_path) as url:
        entry = {
            "id": CAMERA,
            "protocol": "rtsp",
            "url": url,
            "username": "admin",
            "password": "wrong",
        }
        async with running(mqtt_broker, tmp_path, [entry]) as gw:
            await eventually(
                lambda: metric(gw, "lpr_camera_auth_failures_total", camera=CAMERA) >= 1, 15
            )
            assert metric(gw, "lpr_camera_connected", camera=CAMERA) == 0


async def test_a_silent_camera_is_detected_idle_and_reconnected(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    connections: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # accept, read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    entry = {
        "id": CAMERA,
        "protocol": "rtsp",
        "url": f"rtsp://127.0.0.1:{port}/main",
        "idle_timeout_seconds": 0.3,
    }
    try:
        async with running(mqtt_broker, tmp_path, [entry]) as gw:
            await eventually(lambda: len(connections) >= 3, 10)
            assert metric(gw, "lpr_camera_connected", camera=CAMERA) == 0
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_unreachable_camera_is_reported_once_and_retried(
    mqtt_broker: MosquittoProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry = {
        "id": CAMERA,
        "protocol": "rtsp",
        "url": f"rtsp://127.0.0.1:{free_port()}/main",  # nothing listens there
        "username": "admin",
        "password": "secret",
    }
    async with running(mqtt_broker, tmp_path, [entry]) as gw:
        await eventually(lambda: metric(gw, "lpr_camera_reconnects_total", camera=CAMERA) >= 3, 10)
    warnings = [
        r for r in caplog.records if r.levelname == "WARNING" and "cannot connect" in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
