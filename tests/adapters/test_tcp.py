"""TCP adapter: against the simulator and scripted cameras with a collecting context,
then end to end through the gateway to a real mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters import tcp
from gateway.adapters.base import AdapterContext, ReconnectPolicy, backoff_delay
from gateway.codecs.tcp import (
    Command,
    Frame,
    FrameDecoder,
    encode_frame,
    encode_login_reply,
    encode_recognition_frame,
)
from gateway.config import Config, Protocol, TcpCameraConfig
from gateway.event import AnyEvent, PlateEvent
from gateway.metrics import Metrics
from gateway.pipeline import Admission
from gateway.simulate.tcp import Fault, TcpCameraSimulator
from tests.helpers import eventually
from tests.tcp_samples import FULL, PLATE, SCENE


@dataclass
class FakeSpine:
    """What the adapter talks to: records submissions and availability."""

    admission: Admission = Admission.ACCEPTED
    events: list[AnyEvent] = field(default_factory=list)
    availability: list[tuple[str, bool]] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def submit(self, event: AnyEvent) -> Admission:
        self.events.append(event)
        return self.admission

    def set_camera_online(self, camera: str, online: bool) -> None:
        self.availability.append((camera, online))

    def context(self, config: Config | None = None) -> AdapterContext:
        return AdapterContext(
            config=config or Config(),
            metrics=self.metrics,
            submit=self.submit,
            set_camera_online=self.set_camera_online,
            stopping=self.stopping,
        )

    @property
    def plates(self) -> list[str]:
        return [e.plate for e in self.events if isinstance(e, PlateEvent)]

    def online(self, camera: str = "cam") -> bool | None:
        states = [online for cam, online in self.availability if cam == camera]
        return states[-1] if states else None

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def camera_config(port: int, **overrides: Any) -> TcpCameraConfig:
    values: dict[str, Any] = {
        "id": "cam",
        "protocol": Protocol.TCP,
        "name": "cam",
        "host": "127.0.0.1",
        "port": port,
        "username": "admin",
        "password": "1234",
        "connect_timeout_seconds": 2.0,
    }
    values.update(overrides)
    return TcpCameraConfig(**values)


@contextlib.asynccontextmanager
async def running(
    spine: FakeSpine,
    *cameras: TcpCameraConfig,
    config: Config | None = None,
    policy: ReconnectPolicy | None = None,
) -> AsyncIterator[None]:
    run = tcp.run(spine.context(config), cameras, policy or FAST_RETRIES)
    task = asyncio.create_task(run)
    try:
        yield
    finally:
        spine.stopping.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# The production schedule starts at 1 s and retries refused logins every 60 s.
FAST_RETRIES = ReconnectPolicy(initial_seconds=0.02, max_seconds=0.1, auth_retry_seconds=0.1)


class ScriptedCamera:
    """A one-script camera: answers the login, then writes what the test says."""

    def __init__(
        self, script: Callable[[asyncio.StreamWriter], Awaitable[None]], login: int = 200
    ) -> None:
        self.script = script
        self.login = login
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedCamera:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionError, OSError):
            while not isinstance(event := decoder.next_event(), Frame):
                decoder.receive_data(await reader.read(4096) or b"")
            assert event.command == Command.LOGIN_REQ
            writer.write(encode_login_reply(self.login))
            await self.script(writer)
            await writer.drain()
            await reader.read()  # until the gateway hangs up
        writer.close()


# --------------------------------------------------------------------------
# Against the simulator


async def test_reads_reach_the_pipeline_with_images() -> None:
    spine = FakeSpine()
    async with TcpCameraSimulator(seed=11) as sim, running(spine, camera_config(sim.port)):
        # The camera stamps each read with its clock (ms): the stamps fall
        # between these two instants, however slow the machine is.
        before = time.time()
        await sim.push(3)
        await eventually(lambda: len(spine.events) == 3)
        after = time.time()
    assert spine.plates == [plate for plate, _, _ in sim.sent_reads]
    for event, (_, plate_jpeg, scene_jpeg) in zip(spine.events, sim.sent_reads, strict=True):
        assert isinstance(event, PlateEvent)
        assert event.camera == "cam" and event.source.value == "tcp"
        assert event.plate_image is not None and event.plate_image.data == plate_jpeg
        assert event.scene_image is not None and event.scene_image.data == scene_jpeg
        assert event.device_id == str(sim.device_id)
        assert event.time is not None
        assert int(before * 1000) / 1000 <= event.time.timestamp() <= after
    assert spine.availability == [("cam", False), ("cam", True), ("cam", False)]
    assert spine.sample("lpr_camera_frames_total", camera="cam") == 4  # login reply + 3
    assert spine.sample("lpr_camera_bytes_received_total", camera="cam") > 3 * 300_000


async def test_configured_color_table_is_used() -> None:
    spine = FakeSpine()
    config = Config(color_table=dict.fromkeys(range(9), "painted"))
    async with (
        TcpCameraSimulator(seed=12) as sim,
        running(spine, camera_config(sim.port), config=config),
    ):
        await sim.push(1)
        await eventually(lambda: len(spine.events) == 1)
    event = spine.events[0]
    assert isinstance(event, PlateEvent)
    assert event.vehicle.color == "painted" and event.plate_color.name == "painted"


async def test_login_refused_is_reported_once_and_retried_slowly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spine = FakeSpine()
    caplog.set_level(logging.INFO, logger="gateway.adapters.tcp")
    async with (
        TcpCameraSimulator(password="secret-pw") as sim,
        running(spine, camera_config(sim.port)),
    ):
        await eventually(lambda: sim.login_failures >= 3)
        assert spine.sample("lpr_camera_auth_failures_total", camera="cam") >= 2
        assert spine.online() is False
        assert True not in [online for _, online in spine.availability]
        sim.password = "1234"  # the user fixes the camera
        await eventually(lambda: spine.online() is True)
    refusals = [r for r in caplog.records if "login refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
    assert "cam" in refusals[0].getMessage()
    assert all("1234" not in r.getMessage() for r in caplog.records)
    assert any("login accepted again" in r.getMessage() for r in caplog.records)


async def test_reconnects_after_a_drop_mid_frame_and_loses_nothing_after_it() -> None:
    spine = FakeSpine()
    async with TcpCameraSimulator(seed=13) as sim, running(spine, camera_config(sim.port)):
        await sim.push(2)
        await sim.push(1, fault=Fault.DROP)
        await sim.push(3)  # waits for the gateway to log in again
        await eventually(lambda: len(spine.events) == 5)
    assert spine.plates == [plate for plate, _, _ in sim.sent_reads]
    assert len(sim.dropped_reads) == 1
    assert sim.connections == 2
    assert spine.sample("lpr_camera_reconnects_total", camera="cam") >= 1
    assert spine.sample("lpr_parse_errors_total", source="tcp", kind="truncated") == 1
    assert [online for _, online in spine.availability] == [False, True, False, True, False]


async def test_garbage_between_frames_is_skipped_and_counted() -> None:
    spine = FakeSpine()
    async with (
        TcpCameraSimulator(seed=14, fault=Fault.GARBAGE) as sim,
        running(spine, camera_config(sim.port)),
    ):
        await sim.push(4)
        await eventually(lambda: len(spine.events) == 4)
    assert spine.plates == [plate for plate, _, _ in sim.sent_reads]
    assert spine.sample("lpr_camera_bytes_skipped_total", camera="cam") == sim.garbage_bytes_sent


async def test_frames_split_across_writes() -> None:
    spine = FakeSpine()
    async with (
        TcpCameraSimulator(seed=15, fault=Fault.SPLIT) as sim,
        running(spine, camera_config(sim.port)),
    ):
        await sim.push(3)
        await eventually(lambda: len(spine.events) == 3)
    assert spine.plates == [plate for plate, _, _ in sim.sent_reads]


async def test_idle_session_is_replaced() -> None:
    spine = FakeSpine()
    async with (
        TcpCameraSimulator(seed=16) as sim,
        running(spine, camera_config(sim.port, idle_timeout_seconds=0.2)),
    ):
        await eventually(lambda: sim.logins >= 2)
        await sim.push(1)
        await eventually(lambda: len(spine.events) == 1)
    assert spine.sample("lpr_camera_reconnects_total", camera="cam") >= 1


async def test_unreachable_camera_keeps_retrying_quietly(caplog: pytest.LogCaptureFixture) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    spine = FakeSpine()
    caplog.set_level(logging.DEBUG, logger="gateway.adapters.tcp")
    async with running(spine, camera_config(port)):
        await eventually(lambda: spine.sample("lpr_camera_reconnects_total", camera="cam") >= 3)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot connect" in warnings[0].getMessage()
    assert spine.online() is False


async def test_refused_admission_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    spine = FakeSpine(admission=Admission.OUTBOX_FULL)
    async with TcpCameraSimulator(seed=17) as sim, running(spine, camera_config(sim.port)):
        await sim.push(1)
        await eventually(lambda: len(spine.events) == 1)
        await eventually(lambda: any("not taken" in r.getMessage() for r in caplog.records))
    (line,) = [r for r in caplog.records if "not taken" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "camera cam" in line.getMessage() and "outbox_full" in line.getMessage()
    assert spine.events[0].id in line.getMessage()


# --------------------------------------------------------------------------
# Scripted misbehaviour


async def test_oversize_frame_drops_the_connection() -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b"\xcc\xff\x01\x88" + struct.pack("<I", 1 << 30) + b"\x00" * 100)

    spine = FakeSpine()
    async with ScriptedCamera(script) as camera, running(spine, camera_config(camera.port)):
        await eventually(lambda: camera.connections >= 2)
    assert spine.sample("lpr_parse_errors_total", source="tcp", kind="oversize_frame") >= 1


async def test_unknown_commands_are_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(
            encode_frame(0x4242, b"abc") * 3 + encode_recognition_frame(FULL, [PLATE, SCENE])
        )

    spine = FakeSpine()
    async with ScriptedCamera(script) as camera, running(spine, camera_config(camera.port)):
        await eventually(lambda: len(spine.events) == 1)
    assert spine.sample("lpr_parse_errors_total", source="tcp", kind="unknown_command") == 3
    assert spine.sample("lpr_camera_parse_errors_total", camera="cam", kind="unknown_command") == 3
    assert sum("0x4242" in r.getMessage() for r in caplog.records) == 1
    assert spine.plates == ["부산02가1234"]


async def test_a_stalled_frame_is_given_up_and_later_reads_arrive() -> None:
    # A header claiming 1 MiB, then a real read: without a stall limit the read
    # would wait behind the bogus frame until a megabyte more arrived.
    policy = dataclasses.replace(FAST_RETRIES, frame_stall_seconds=0.2)

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b"\xcc\xff\x42\x42" + struct.pack("<I", 1 << 20))
        await writer.drain()
        writer.write(encode_recognition_frame(FULL, [PLATE, SCENE]))

    spine = FakeSpine()
    async with (
        ScriptedCamera(script) as camera,
        running(spine, camera_config(camera.port), policy=policy),
    ):
        await eventually(lambda: len(spine.events) == 1)
        assert spine.online() is True  # the session was kept
    assert spine.sample("lpr_parse_errors_total", source="tcp", kind="stalled") == 1
    assert spine.sample("lpr_camera_bytes_skipped_total", camera="cam") == 6
    assert camera.connections == 1


async def test_bad_frames_are_saved_in_capture_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcp, "CAPTURE_MAX_FILES", 3)
    bad = encode_frame(Command.RECOG_POST, b"\x33\xff\x00\x00\x00\x00\x00\x00")
    corrupt = encode_frame(Command.RECOG_POST, b"xyz")[:-2] + b"\x00\x00"
    good = encode_recognition_frame(FULL, [PLATE, SCENE])

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(bad + corrupt + bad + bad + bad + good)

    spine = FakeSpine()
    capture = tmp_path / "captures"
    async with (
        ScriptedCamera(script) as camera,
        running(spine, camera_config(camera.port, capture_dir=capture)),
    ):
        await eventually(lambda: len(spine.events) == 1)
        await eventually(lambda: len(list(capture.glob("cam.*.bin"))) == 3)
        await asyncio.sleep(0.1)
    files = sorted(capture.glob("cam.*.bin"))
    assert len(files) == 3
    contents = {f.read_bytes() for f in files}
    assert bad in contents and corrupt in contents
    assert spine.sample("lpr_parse_errors_total", source="tcp", kind="no_metadata") == 4
    assert spine.sample("lpr_parse_errors_total", source="tcp", kind="bad_sig_end") == 1


@pytest.mark.parametrize(
    ("reply", "outcome_metric"),
    [
        (encode_login_reply(500), None),
        (encode_frame(Command.LOGIN_REPLY, b"nope"), "bad_login_reply"),
    ],
)
async def test_odd_login_replies_back_off(reply: bytes, outcome_metric: str | None) -> None:
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read(100)
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spine = FakeSpine()
    async with server, running(spine, camera_config(port)):
        # A fourth attempt comes only once the third reply was dealt with (the
        # server counts a connection before the adapter has read its reply).
        await eventually(lambda: connections >= 4)
    assert spine.online() is False and True not in [o for _, o in spine.availability]
    if outcome_metric:
        assert spine.sample("lpr_parse_errors_total", source="tcp", kind=outcome_metric) >= 3
    assert spine.sample("lpr_camera_auth_failures_total", camera="cam") == 0


def test_backoff_is_capped_and_jittered() -> None:
    import random

    policy = ReconnectPolicy(initial_seconds=1.0, max_seconds=60.0)
    rng = random.Random(1)
    delays = [backoff_delay(n, policy.initial_seconds, policy.max_seconds, rng) for n in range(12)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0
    assert all(30.0 <= d <= 60.0 for d in delays[6:])
    assert len({round(d, 6) for d in delays[6:]}) > 1


# --------------------------------------------------------------------------
# End to end: simulator → gateway → mosquitto → subscriber

e2e = pytest.mark.broker


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@e2e
async def test_end_to_end_reads_images_and_availability(mqtt_broker: Any, tmp_path: Path) -> None:
    from gateway.app import Gateway
    from tests.helpers import MqttCollector, gateway_config

    sim = TcpCameraSimulator(seed=21)
    await sim.start()
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        cameras=[
            {
                "id": "gate_in",
                "protocol": "tcp",
                "host": "127.0.0.1",
                "port": sim.port,
                "username": "admin",
                "password": "1234",
            }
        ],
    )
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
        async with Gateway(config) as gateway:
            await sub.until(
                lambda ms: any(
                    m.topic == "lpr/gate_in/availability" and m.payload == b"online" for m in ms
                )
            )
            await sim.push(2)
            events = await sub.until_count("lpr/gate_in/event", 2)
            received = gateway.metrics.registry.get_sample_value(
                "lpr_events_received_total", {"camera": "gate_in", "source": "tcp"}
            )
            assert received == 2
            for message, (plate, plate_jpeg, scene_jpeg) in zip(
                events, sim.sent_reads, strict=True
            ):
                doc = message.json()
                assert doc["camera"] == "gate_in" and doc["source"] == "tcp"
                assert doc["plate"] == plate
                assert doc["device_id"] == str(sim.device_id)
                assert doc["resolution"] == {"width": 1920, "height": 1080}
                assert doc["images"]["plate"] == {
                    "topic": "lpr/gate_in/image/plate",
                    "bytes": len(plate_jpeg),
                    "sha256": _sha(plate_jpeg),
                }
                assert doc["images"]["scene"]["sha256"] == _sha(scene_jpeg)
                assert set(doc) >= {"time", "received", "confidence", "direction", "vehicle"}
            # the latest images, byte-exact and retained
            plate_msgs = sub.on("lpr/gate_in/image/plate")
            scene_msgs = sub.on("lpr/gate_in/image/scene")
            assert plate_msgs[-1].payload == sim.sent_reads[-1][1]
            assert scene_msgs[-1].payload == sim.sent_reads[-1][2]
            with MqttCollector(
                mqtt_broker.host, mqtt_broker.port, topics=("lpr/gate_in/image/#",)
            ) as late:
                retained = await late.until(lambda ms: len(ms) >= 2)
                by_topic = {m.topic: m for m in retained}
                assert by_topic["lpr/gate_in/image/plate"].retain
                assert by_topic["lpr/gate_in/image/plate"].payload == sim.sent_reads[-1][1]
                assert by_topic["lpr/gate_in/image/scene"].payload == sim.sent_reads[-1][2]
            # the camera goes away: availability follows
            await sim.stop()
            await sub.until(
                lambda ms: (
                    [m.payload for m in ms if m.topic == "lpr/gate_in/availability"][-1:]
                    == [b"offline"]
                )
            )
            # and comes back on the same port
            sim2 = TcpCameraSimulator(seed=22, port=sim.port)
            await sim2.start()
            try:
                await sub.until(
                    lambda ms: (
                        [m.payload for m in ms if m.topic == "lpr/gate_in/availability"][-1:]
                        == [b"online"]
                    )
                )
            finally:
                await sim2.stop()


@e2e
async def test_end_to_end_login_refused(mqtt_broker: Any, tmp_path: Path) -> None:
    from gateway.app import Gateway
    from tests.helpers import MqttCollector, gateway_config

    async with TcpCameraSimulator(login_status=401) as sim:
        config = gateway_config(
            mqtt_broker.url,
            tmp_path,
            cameras=[{"id": "gate_in", "protocol": "tcp", "host": "127.0.0.1", "port": sim.port}],
        )
        with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
            async with Gateway(config) as gateway:
                await eventually(lambda: sim.login_failures >= 1)
                await sub.until(
                    lambda ms: any(
                        m.topic == "lpr/gate_in/availability" and m.payload == b"offline"
                        for m in ms
                    )
                )
                value = gateway.metrics.registry.get_sample_value(
                    "lpr_camera_auth_failures_total", {"camera": "gate_in"}
                )
                assert value is not None and value >= 1
                assert not any(
                    m.topic == "lpr/gate_in/availability" and m.payload == b"online"
                    for m in sub.messages
                )


@e2e
async def test_end_to_end_drop_mid_frame_then_no_lost_read(
    mqtt_broker: Any, tmp_path: Path
) -> None:
    from gateway.app import Gateway
    from tests.helpers import MqttCollector, gateway_config

    async with TcpCameraSimulator(seed=23) as sim:
        config = gateway_config(
            mqtt_broker.url,
            tmp_path,
            cameras=[
                {
                    "id": "gate_in",
                    "protocol": "tcp",
                    "host": "127.0.0.1",
                    "port": sim.port,
                    "password": "1234",
                }
            ],
        )
        with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
            async with Gateway(config):
                await sim.push(1)
                await sim.push(1, fault=Fault.DROP)
                await sim.push(3)
                events = await sub.until_count("lpr/gate_in/event", 4)
                await asyncio.sleep(0.2)
                plates = [m.json()["plate"] for m in sub.on("lpr/gate_in/event")]
                assert plates == [plate for plate, _, _ in sim.sent_reads]
                assert len(events) == 4


# --------------------------------------------------------------------------
# Hostile streams: counted exactly, logged a little

# The log-amplification stream of issue 11: a plausible fake header (known
# command, DATA_SIZE 2, no SIG END) every 10 bytes, 1 MiB of it.
FAKE_HEADER = b"\xcc\xff\x01\x88\x02\x00\x00\x00\x00\x00"
HOSTILE = FAKE_HEADER * ((1 << 20) // len(FAKE_HEADER))


def _read(plate: str) -> bytes:
    return encode_recognition_frame(
        replace(FULL, license_plate=plate, car_number=plate, plate_length=None), [PLATE, SCENE]
    )


def _camera_warnings(caplog: pytest.LogCaptureFixture, camera: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "gateway.adapters.tcp"
        and r.levelno >= logging.WARNING
        and f"camera {camera}:" in r.getMessage()
    ]


async def test_fake_header_stream_is_counted_exactly_and_logged_a_few_times(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.adapters.tcp")
    unknown = encode_frame(0x4242, b"abc")

    async def script(writer: asyncio.StreamWriter) -> None:
        # A frame boundary, then garbage ("x") full of fake headers, then a read;
        # then a corrupt frame at a boundary whose region is the same fake
        # stream, three unknown commands, a last read.
        writer.write(_read("GOOD1") + b"x" + HOSTILE + _read("GOOD2"))
        writer.write(HOSTILE + _read("GOOD3") + unknown * 3 + _read("GOOD4"))

    spine = FakeSpine()
    async with ScriptedCamera(script) as camera, running(spine, camera_config(camera.port)):
        await eventually(lambda: len(spine.events) == 4, timeout=30)
        assert spine.online() is True
    assert spine.plates == ["GOOD1", "GOOD2", "GOOD3", "GOOD4"]
    assert camera.connections == 1  # garbage never costs the session
    # exact counts: one garbage region, one corrupt frame (whose rescanned rest
    # is skipped, not a second error), three unknown commands skipped whole
    assert spine.sample("lpr_parse_errors_total", source="tcp", kind="garbage") == 1
    assert spine.sample("lpr_parse_errors_total", source="tcp", kind="bad_sig_end") == 1
    assert spine.sample("lpr_parse_errors_total", source="tcp", kind="unknown_command") == 3
    assert spine.sample("lpr_camera_parse_errors_total", camera="cam", kind="garbage") == 1
    assert spine.sample("lpr_camera_parse_errors_total", camera="cam", kind="bad_sig_end") == 1
    assert spine.sample("lpr_camera_parse_errors_total", camera="cam", kind="unknown_command") == 3
    skipped = spine.sample("lpr_camera_bytes_skipped_total", camera="cam")
    assert skipped == (1 + len(HOSTILE)) + (len(HOSTILE) - 2)
    # One line per kind; the two unknown commands after the first are suppressed.
    warnings = _camera_warnings(caplog, "cam")
    assert len(warnings) == 3, [r.getMessage() for r in warnings]
    assert spine.sample("lpr_log_lines_suppressed_total") == 2


def test_capture_quota_is_counted_by_the_full_camera_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `gate-in` and `gate` share a capture_dir: neither uses up the other's quota.
    monkeypatch.setattr(tcp, "CAPTURE_MAX_FILES", 2)
    for n in range(3):
        name = f"{tcp._capture_prefix('gate-in')}{n}-x.bin"
        assert tcp._write_capture(tmp_path, "gate-in", name, b"in") is (n < 2)
    for n in range(3):
        name = f"{tcp._capture_prefix('gate')}{n}-x.bin"
        assert tcp._write_capture(tmp_path, "gate", name, b"g") is (n < 2)
    assert tcp._write_capture(tmp_path, "gate-out", f"{tcp._capture_prefix('gate-out')}0.bin", b"")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "gate-in.0-x.bin",
        "gate-in.1-x.bin",
        "gate-out.0.bin",
        "gate.0-x.bin",
        "gate.1-x.bin",
    ]


async def test_capture_quota_of_two_cameras_sharing_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through the adapter: `gate-in` fills its quota first, `gate` still saves.
    monkeypatch.setattr(tcp, "CAPTURE_MAX_FILES", 2)
    bad = encode_frame(Command.RECOG_POST, b"\x33\xff\x00\x00\x00\x00\x00\x00")

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(bad * 3 + _read("DONE"))

    capture = tmp_path / "captures"
    spine = FakeSpine()
    async with ScriptedCamera(script) as first:
        cfg = camera_config(first.port, id="gate-in", capture_dir=capture)
        async with running(spine, cfg):
            await eventually(lambda: len(spine.events) == 1)
            await eventually(lambda: len(list(capture.glob("gate-in.*.bin"))) == 2)
    spine2 = FakeSpine()
    async with ScriptedCamera(script) as second:
        cfg = camera_config(second.port, id="gate", capture_dir=capture)
        async with running(spine2, cfg):
            await eventually(lambda: len(spine2.events) == 1)
            await eventually(lambda: len(list(capture.glob("gate.*.bin"))) == 2)
    assert len(list(capture.glob("gate-in.*.bin"))) == 2


@e2e
async def test_end_to_end_fake_header_flood_then_a_good_read_is_published(
    mqtt_broker: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The real gateway: 1 MiB of fake headers from a camera, then a read.
    from gateway.app import Gateway
    from tests.helpers import MqttCollector, gateway_config

    caplog.set_level(logging.WARNING, logger="gateway.adapters.tcp")

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b"junk" + HOSTILE + _read("AFTER1"))

    async with ScriptedCamera(script) as camera:
        config = gateway_config(
            mqtt_broker.url,
            tmp_path,
            cameras=[
                {
                    "id": "gate_in",
                    "protocol": "tcp",
                    "host": "127.0.0.1",
                    "port": camera.port,
                    "username": "admin",
                    "password": "1234",
                }
            ],
        )
        with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
            async with Gateway(config) as gateway:
                events = await sub.until_count("lpr/gate_in/event", 1, timeout=30)
                assert events[0].json()["plate"] == "AFTER1"

                def sample(name: str, **labels: str) -> float:
                    return gateway.metrics.registry.get_sample_value(name, labels) or 0.0

                assert sample("lpr_parse_errors_total", source="tcp", kind="garbage") == 1
                assert (
                    sample("lpr_camera_parse_errors_total", camera="gate_in", kind="garbage") == 1
                )
                assert sample("lpr_camera_bytes_skipped_total", camera="gate_in") == 4 + len(
                    HOSTILE
                )
    assert len(_camera_warnings(caplog, "gate_in")) <= 2


# --------------------------------------------------------------------------
# The intake budget every TCP camera shares


async def test_intake_budget_grants_in_arrival_order_and_within_the_limit() -> None:
    budget = tcp.IntakeBudget(100)
    await budget.acquire(60)
    granted: list[str] = []

    async def take(name: str, size: int) -> None:
        await budget.acquire(size)
        granted.append(name)

    big = asyncio.create_task(take("big", 50))
    small = asyncio.create_task(take("small", 10))  # would fit, but comes second
    await asyncio.sleep(0)
    assert granted == [] and budget.used == 60
    budget.release(60)
    await asyncio.gather(big, small)
    assert granted == ["big", "small"] and budget.used == 60


async def test_intake_budget_takes_an_oversized_grant_alone() -> None:
    budget = tcp.IntakeBudget(100)
    await budget.acquire(500)  # nothing else in flight: one frame over the budget passes
    waiter = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0)
    assert not waiter.done()
    budget.release(500)
    await waiter
    assert budget.used == 1


async def test_intake_budget_cancelled_waiter_lets_the_next_one_in() -> None:
    budget = tcp.IntakeBudget(100)
    await budget.acquire(90)
    blocked = asyncio.create_task(budget.acquire(50))
    behind = asyncio.create_task(budget.acquire(10))
    await asyncio.sleep(0)
    blocked.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await blocked
    await behind
    assert budget.used == 100


@dataclass
class HeldSpine(FakeSpine):
    """A pipeline that holds every read until released, counting those in its hands."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    most_in_flight: int = 0

    async def submit(self, event: AnyEvent) -> Admission:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.events.append(event)
        await self.release.wait()
        self.in_flight -= 1
        return self.admission


async def test_reads_in_flight_across_cameras_stay_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A budget of two whole frames, shared by two cameras of 3 reads each:
    # the pipeline never holds more than 2 reads, and all 6 arrive in order.
    frame_size = len(encode_recognition_frame(FULL, [PLATE, SCENE]))
    monkeypatch.setattr(tcp, "INTAKE_BUDGET_BYTES", 2 * frame_size + 100)
    spine = HeldSpine()
    async with (
        TcpCameraSimulator(seed=21, camera="a") as sim_a,
        TcpCameraSimulator(seed=22, camera="b") as sim_b,
        running(
            spine,
            camera_config(sim_a.port, id="a", name="a"),
            camera_config(sim_b.port, id="b", name="b"),
        ),
    ):
        await asyncio.gather(sim_a.push(3), sim_b.push(3))
        await eventually(lambda: len(spine.events) == 2)
        await asyncio.sleep(0.2)  # the other reads are read and decoded, and wait
        assert len(spine.events) == 2
        spine.release.set()
        await eventually(lambda: len(spine.events) == 6)
    assert spine.most_in_flight == 2
    for camera, sim in (("a", sim_a), ("b", sim_b)):
        got = [e.plate for e in spine.events if isinstance(e, PlateEvent) and e.camera == camera]
        assert got == [plate for plate, _, _ in sim.sent_reads]


async def test_end_to_end_a_frame_with_evidence_pictures(mqtt_broker: Any, tmp_path: Path) -> None:
    """A frame with four images: the third and fourth are published as evidence
    pictures (assumed.TCP_EXTRA_IMAGE_KINDS), byte-exact, before the event."""
    from gateway.app import Gateway
    from tests.helpers import MqttCollector, gateway_config, tcp_simulator_entry

    evidence = [b"\xff\xd8\xff\xe0 evidence camera 0", b"\xff\xd8\xff\xe0 evidence camera 1"]
    images = [SCENE, PLATE, *evidence]  # the scene found by its resolution, whatever the order
    frame = encode_recognition_frame(replace(FULL, image_count=len(images)), images)
    async with TcpCameraSimulator(seed=23) as sim:
        config = gateway_config(
            mqtt_broker.url, tmp_path, cameras=[tcp_simulator_entry("gate_in", sim.port)]
        )
        with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
            async with Gateway(config):
                await sim.send_raw(frame)
                (event,) = await sub.until_count("lpr/gate_in/event", 1)
    order = [m.topic for m in sub.messages if "/image/" in m.topic or m.topic.endswith("/event")]
    assert order == [
        "lpr/gate_in/image/plate",
        "lpr/gate_in/image/scene",
        "lpr/gate_in/image/evidence0",
        "lpr/gate_in/image/evidence1",
        "lpr/gate_in/event",
    ]
    document = event.json()
    for number, picture in enumerate(evidence):
        topic = f"lpr/gate_in/image/evidence{number}"
        (published,) = sub.on(topic)
        assert published.payload == picture
        assert document["images"][f"evidence{number}"] == {
            "topic": topic,
            "bytes": len(picture),
            "sha256": _sha(picture),
        }
    assert "extra_images" not in document["raw"]
