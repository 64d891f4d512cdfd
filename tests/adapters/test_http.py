"""The HTTP push receiver over real sockets on 127.0.0.1.

Most tests run the server against a small in-test intake (its submit answers
what the test says, as the pipeline would); the end-to-end tests run the real
Gateway with mosquitto and the HTTP camera simulator.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import zoneinfo
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.adapters import http as http_adapter
from gateway.adapters.base import AdapterContext
from gateway.adapters.http import HttpPushServer, serve
from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.config import (
    Config,
    HttpCameraConfig,
    HttpMatchConfig,
    HttpServerConfig,
    OtherEvents,
    Protocol,
)
from gateway.event import AnyEvent, CameraEvent, Direction, Image, PlateEvent
from gateway.metrics import Metrics
from gateway.pipeline import Admission
from gateway.simulate.http import HttpCameraSimulator
from tests.helpers import MqttCollector, eventually, free_port, gateway_config, stop_process

USER, PASSWORD = "cam", "s3cret"


@dataclass(frozen=True)
class BasicAuth:
    user: str
    password: str

    def header(self) -> str:
        return basic(self.user, self.password)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def camera(
    camera_id: str = "gate",
    user: str | None = USER,
    password: str | None = PASSWORD,
    **extra: Any,
) -> HttpCameraConfig:
    return HttpCameraConfig(
        id=camera_id,
        protocol=Protocol.HTTP,
        name=camera_id,
        path=f"/lpr/{camera_id}",
        username=user,
        password=password,
        **extra,
    )


@dataclass
class Intake:
    """Stands in for the pipeline: records submissions, answers `admission`."""

    admission: Admission = Admission.ACCEPTED
    events: list[AnyEvent] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when set, submit waits for it
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def submit(self, event: AnyEvent) -> Admission:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.events.append(event)
        return self.admission


@dataclass
class Served:
    server: HttpPushServer
    intake: Intake
    metrics: Metrics
    stopping: asyncio.Event
    online: dict[str, bool]

    def url(self, path: str = "/lpr/gate") -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def serving(
    cameras: tuple[HttpCameraConfig, ...] = (camera(),),
    intake: Intake | None = None,
    **http: Any,
) -> AsyncIterator[Served]:
    settings = HttpServerConfig(listen="127.0.0.1:0", **http)
    config = Config(http=settings, cameras=cameras)
    metrics = Metrics()
    stopping = asyncio.Event()
    online: dict[str, bool] = {}
    intake = intake or Intake()
    ctx = AdapterContext(
        config=config,
        metrics=metrics,
        submit=intake.submit,
        set_camera_online=online.__setitem__,
        stopping=stopping,
    )
    server = HttpPushServer(ctx, cameras)
    await server.start()
    try:
        yield Served(server, intake, metrics, stopping, online)
    finally:
        await server.stop()


AUTH = BasicAuth(USER, PASSWORD)


async def request(
    method: str, url: str, auth: BasicAuth | None = AUTH, **kwargs: Any
) -> tuple[int, dict[str, str], Any]:
    if auth is not None:
        kwargs["headers"] = {"Authorization": auth.header(), **kwargs.get("headers", {})}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, **kwargs) as reply,
    ):
        raw = await reply.read()
        headers = {k: v for k, v in reply.headers.items() if k not in ("Date", "Server")}
        return reply.status, headers, json.loads(raw) if raw else None


def plate_body(**fields: Any) -> bytes:
    return json.dumps({"plate": "AB123CD", **fields}).encode()


# --------------------------------------------------------------------------
# 200


async def test_post_read_is_submitted_and_answered_200() -> None:
    async with (
        serving() as served,
        HttpCameraSimulator(served.url(), user=USER, password=PASSWORD) as cam,
    ):
        sent = await cam.send_read()
        assert sent.status == 200, sent.reply
        (event,) = served.intake.events
        assert isinstance(event, PlateEvent)
        assert sent.reply == {"status": "accepted", "id": event.id}
        assert sent.read is not None
        assert event.plate == sent.plate
        assert event.plate_image == Image(data=sent.read.plate_jpeg)
        assert event.scene_image == Image(data=sent.read.scene_jpeg)
        assert event.time == sent.time
        assert event.direction is Direction.IN  # the first read says "Approach"
        assert event.camera == "gate"
        assert served.count("lpr_http_requests_total", status="200") == 1
        assert served.count("lpr_camera_frames_total", camera="gate") == 1
        assert served.count("lpr_camera_bytes_received_total", camera="gate") > 400_000


async def test_duplicate_is_answered_200_too() -> None:
    async with serving(intake=Intake(Admission.DUPLICATE)) as served:
        status, _, reply = await request("POST", served.url(), data=plate_body())
        assert status == 200 and reply["status"] == "duplicate"


async def test_get_query_read() -> None:
    async with serving() as served:
        status, _, _ = await request(
            "GET", served.url(), params={"Caption": "LPR", "description": "MS12345"}
        )
        assert status == 200
        (event,) = served.intake.events
        assert isinstance(event, PlateEvent)
        assert event.plate == "MS12345"
        assert event.plate_image is None and event.scene_image is None


async def test_other_event_kind_is_forwarded() -> None:
    async with serving() as served:
        body = json.dumps({"event": "Vehicle Counting", "count": 3}).encode()
        status, _, _ = await request("POST", served.url(), data=body)
        assert status == 200
        (event,) = served.intake.events
        assert isinstance(event, CameraEvent)
        assert event.kind == "vehicle_counting"
        assert event.data == {"event": "Vehicle Counting", "count": 3}


async def test_other_event_kind_skipped_when_configured() -> None:
    cams = (camera(other_events=OtherEvents.SKIP),)
    async with serving(cams) as served:
        status, _, reply = await request("POST", served.url(), data=b'{"event": "Parking"}')
        assert status == 200 and reply["status"] == "skipped"
        assert served.intake.events == []


async def test_camera_without_credentials_needs_none() -> None:
    async with serving((camera(user=None, password=None),)) as served:
        status, _, _ = await request("POST", served.url(), auth=None, data=plate_body())
        assert status == 200


async def test_trailing_slash_reaches_the_camera() -> None:
    async with serving() as served:
        status, _, _ = await request("POST", served.url("/lpr/gate/"), data=plate_body())
        assert status == 200


async def test_200_only_once_submit_returned() -> None:
    intake = Intake(gate=asyncio.Event())
    async with serving(intake=intake) as served:
        call = asyncio.create_task(request("POST", served.url(), data=plate_body()))
        await asyncio.wait_for(intake.entered.wait(), 5)
        done, _ = await asyncio.wait({call}, timeout=0.3)
        assert not done, "answered before the event was accepted"
        intake.gate.set()  # type: ignore[union-attr]
        status, _, _ = await asyncio.wait_for(call, 5)
        assert status == 200


# --------------------------------------------------------------------------
# 400


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"plate=AB123", "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (b"", "empty_body"),
        (b'{"plate": "' + b"X" * 100 + b'"}', "plate_too_long"),
        (b"\xff\xfe\xfa", "not_json"),
    ],
)
async def test_unreadable_body_is_400_with_reason(body: bytes, kind: str) -> None:
    async with serving() as served:
        status, _, reply = await request("POST", served.url(), data=body)
        assert status == 400
        assert reply["error"] == kind and reply["detail"]
        assert served.intake.events == []
        assert served.count("lpr_parse_errors_total", source="http", kind=kind) == 1
        assert served.count("lpr_http_requests_total", status="400") == 1
        # the server is still fine
        status, _, _ = await request("POST", served.url(), data=plate_body())
        assert status == 200


@pytest.mark.timeout(30)
async def test_body_less_requests_one_after_another_are_each_answered() -> None:
    # aiohttp hands every body-less request the same shared reader, whose
    # readchunk() says "end of a chunk" for ever once it was read once: a read
    # loop that takes that for "more may follow" spins the event loop, and the
    # whole gateway with it (found by the hostile property test).
    async with serving() as served:
        for _ in range(3):
            status, _, reply = await asyncio.wait_for(request("POST", served.url(), data=b""), 5)
            assert (status, reply["error"]) == (400, "empty_body")
        status, _, _ = await request("POST", served.url(), data=plate_body())
        assert status == 200
        assert served.count("lpr_parse_errors_total", source="http", kind="empty_body") == 3


async def test_garbage_bodies_never_get_a_500() -> None:
    rng = random.Random(7)
    good = plate_body(plate_image="data:image/jpeg;base64,QUJD", speed="-", confidence="93")
    bodies = [rng.randbytes(rng.randint(0, 3000)) for _ in range(40)]
    for _ in range(60):  # a good body with bytes flipped, cut or inserted
        mangled = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(mangled))
            mangled[at : at + rng.randint(0, 3)] = rng.randbytes(rng.randint(0, 3))
        bodies.append(bytes(mangled))
    async with serving() as served:
        statuses = [(await request("POST", served.url(), data=b))[0] for b in bodies]
        assert set(statuses) <= {200, 400}, statuses
        assert served.count("lpr_http_requests_total", status="500") == 0


async def test_chunked_body_under_the_limit_is_read() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        body = plate_body(region="KR")
        for at in range(0, len(body), 7):
            yield body[at : at + 7]

    async with serving(max_body_bytes=10_000) as served:
        status, _, _ = await request("POST", served.url(), data=chunks())
        assert status == 200
        (event,) = served.intake.events
        assert isinstance(event, PlateEvent) and event.region == "KR"


async def test_broken_image_is_still_a_200_read() -> None:
    async with serving() as served:
        status, _, _ = await request(
            "POST", served.url(), data=plate_body(plate_image="!!not base64!!")
        )
        assert status == 200
        (event,) = served.intake.events
        assert isinstance(event, PlateEvent)
        assert event.plate_image == Image.missing("invalid base64")
        assert served.count("lpr_parse_errors_total", source="http", kind="bad_image") == 1


# --------------------------------------------------------------------------
# 401 / 404: credentials never reveal whether a path exists


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        basic(USER, "wrong"),
        basic("wrong", PASSWORD),
        basic("", ""),
        basic(USER, PASSWORD + "x"),
        "Basic !!!notbase64",
        "Bearer abc",
        "Basic " + "A" * 5_000,  # under aiohttp's own header limit
    ],
)
async def test_wrong_credentials_are_401(authorization: str | None) -> None:
    async with serving() as served:
        headers = {"Authorization": authorization} if authorization else {}
        status, reply_headers, reply = await request(
            "POST", served.url(), auth=None, headers=headers, data=plate_body()
        )
        assert status == 401
        assert reply_headers["WWW-Authenticate"].startswith('Basic realm="lpr-gateway"')
        assert reply == {"error": "unauthorized"}
        assert served.intake.events == []
        assert served.count("lpr_camera_auth_failures_total", camera="gate") == 1


async def test_unknown_path_looks_exactly_like_a_wrong_password() -> None:
    other = camera("other", user="o", password="p")
    async with serving((camera(), other)) as served:
        wrong_password = await request(
            "POST", served.url(), auth=BasicAuth(USER, "nope"), data=plate_body()
        )
        no_credentials = await request("POST", served.url(), auth=None, data=plate_body())
        probes = [
            await request("POST", served.url("/lpr/nosuch"), auth=AUTH, data=plate_body()),
            await request("POST", served.url("/lpr/nosuch"), auth=None, data=plate_body()),
            await request("GET", served.url("/"), auth=None),
            await request("GET", served.url("/favicon.ico"), auth=None),
            # the right credentials of one camera on another camera's path
            await request("POST", served.url("/lpr/other"), auth=AUTH, data=plate_body()),
        ]
        assert wrong_password == no_credentials
        for probe in probes:
            assert probe == wrong_password
        assert served.intake.events == []


async def test_unknown_path_is_404_when_no_camera_has_credentials() -> None:
    async with serving((camera(user=None, password=None),)) as served:
        status, _, reply = await request("POST", served.url("/lpr/nosuch"), data=plate_body())
        assert status == 404 and reply == {"error": "not found"}


# --------------------------------------------------------------------------
# 403


async def test_source_not_allowed_is_403_after_credentials() -> None:
    cams = (camera(allowed_sources=("10.0.0.0/8",)),)
    async with serving(cams) as served:
        status, _, _ = await request("POST", served.url(), data=plate_body())
        assert status == 403
        # wrong credentials from the wrong address still say only 401
        status, _, _ = await request(
            "POST", served.url(), auth=BasicAuth(USER, "x"), data=plate_body()
        )
        assert status == 401
        assert served.intake.events == []


async def test_allowed_source_passes() -> None:
    cams = (camera(allowed_sources=("10.0.0.0/8", "127.0.0.0/8")),)
    async with serving(cams) as served:
        status, _, _ = await request("POST", served.url(), data=plate_body())
        assert status == 200


# --------------------------------------------------------------------------
# 405, 408, 413


async def test_other_methods_are_405() -> None:
    async with serving() as served:
        status, headers, _ = await request("PUT", served.url(), data=plate_body())
        assert status == 405 and headers["Allow"] == "GET, POST"


async def test_declared_oversize_body_is_413() -> None:
    async with serving(max_body_bytes=10_000) as served:
        status, _, reply = await request("POST", served.url(), data=b"x" * 10_001)
        assert status == 413 and "10000" in reply["error"]
        assert served.count("lpr_parse_errors_total", source="http", kind="too_large") == 1


async def test_gzip_body_is_read_decompressed() -> None:
    body = plate_body(region="KR")
    async with serving(max_body_bytes=10_000) as served:
        status, _, _ = await request(
            "POST",
            served.url(),
            data=gzip.compress(body),
            headers={"Content-Encoding": "gzip"},
        )
        assert status == 200
        (event,) = served.intake.events
        assert isinstance(event, PlateEvent) and event.region == "KR"


async def test_gzip_bomb_is_413_on_its_decompressed_size() -> None:
    # 64 MB of zeros is ~64 KB compressed: under the limit on the wire, and the
    # limit is on what it decompresses to.
    bomb = gzip.compress(b"\0" * 64_000_000, compresslevel=9)
    limit = 1_000_000
    assert len(bomb) < limit
    async with serving(max_body_bytes=limit) as served:
        status, _, reply = await request(
            "POST", served.url(), data=bomb, headers={"Content-Encoding": "gzip"}
        )
        assert status == 413 and str(limit) in reply["error"]
        assert served.count("lpr_parse_errors_total", source="http", kind="too_large") == 1
        assert served.intake.events == []
        status, _, _ = await request("POST", served.url(), data=plate_body())
        assert status == 200


async def raw_http(port: int, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    return reader, writer


def auth_header() -> bytes:
    return f"Authorization: {basic(USER, PASSWORD)}\r\n".encode()


async def test_streamed_oversize_body_is_413_without_reading_it_all() -> None:
    limit = 100_000
    async with serving(max_body_bytes=limit) as served:
        assert served.server.port is not None
        reader, writer = await raw_http(
            served.server.port,
            b"POST /lpr/gate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            + auth_header()
            + b"\r\n",
        )
        reply = asyncio.create_task(reader.readline())
        chunk = b"%x\r\n%s\r\n" % (65536, b"A" * 65536)
        sent = 0
        # an endless body: the reply must come while we are still sending
        while not reply.done() and sent < 200_000_000:
            writer.write(chunk)
            sent += 65536
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0)
        status_line = await asyncio.wait_for(reply, 5)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 413"), status_line
        assert sent < 50_000_000
        assert served.count("lpr_parse_errors_total", source="http", kind="too_large") == 1
        assert served.intake.events == []


async def test_slow_body_times_out_with_408() -> None:
    async with serving(request_timeout_seconds=0.3) as served:
        assert served.server.port is not None
        reader, writer = await raw_http(
            served.server.port,
            b"POST /lpr/gate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
            + auth_header()
            + b'\r\n{"plate": ',
        )
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        assert served.count("lpr_parse_errors_total", source="http", kind="timeout") == 1


async def test_client_going_away_mid_body_does_not_submit() -> None:
    async with serving() as served:
        assert served.server.port is not None
        _, writer = await raw_http(
            served.server.port,
            b"POST /lpr/gate HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            + auth_header()
            + b'\r\n{"plate": "AB1", ',
        )
        writer.close()
        await writer.wait_closed()
        # the next request is served normally, nothing was submitted from the broken one
        status, _, _ = await request("POST", served.url(), data=plate_body())
        assert status == 200
        assert len(served.intake.events) == 1


# --------------------------------------------------------------------------
# 503


@pytest.mark.parametrize("admission", [Admission.OUTBOX_FULL, Admission.SHUTTING_DOWN])
async def test_refused_by_the_outbox_is_503(admission: Admission) -> None:
    async with serving(intake=Intake(admission)) as served:
        status, headers, reply = await request("POST", served.url(), data=plate_body())
        assert status == 503
        assert headers["Retry-After"] == "5"
        assert "retry" in reply["error"]
        assert served.count("lpr_http_requests_total", status="503") == 1


async def test_stopping_is_503_without_submitting() -> None:
    async with serving() as served:
        served.stopping.set()
        status, _, _ = await request("POST", served.url(), data=plate_body())
        assert status == 503
        assert served.intake.events == []


async def test_server_wide_body_budget_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_adapter, "MAX_BUFFERED_BYTES", 50_000)
    async with serving() as served:
        status, _, _ = await request("POST", served.url(), data=plate_body(pad="x" * 100_000))
        assert status == 503
        assert served.count("lpr_parse_errors_total", source="http", kind="server_busy") == 1
        status, _, _ = await request("POST", served.url(), data=plate_body())
        assert status == 200
        assert served.server._buffered == 0


async def test_submit_taking_too_long_is_503() -> None:
    intake = Intake(gate=asyncio.Event())
    async with serving(intake=intake, request_timeout_seconds=0.3) as served:
        status, _, _ = await request("POST", served.url(), data=plate_body())
        assert status == 503
        intake.gate.set()  # type: ignore[union-attr]


# --------------------------------------------------------------------------
# Load, TLS, the run() entry point


async def test_50_concurrent_clients() -> None:
    cams = tuple(camera(f"cam{i}") for i in range(5))
    async with serving(cams) as served:
        sims = [
            HttpCameraSimulator(
                served.url(f"/lpr/cam{i % 5}"), user=USER, password=PASSWORD, seed=i
            )
            for i in range(50)
        ]
        async with contextlib.AsyncExitStack() as stack:
            for sim in sims:
                await stack.enter_async_context(sim)
            results = await asyncio.gather(*(sim.send_read() for sim in sims))
        assert [r.status for r in results] == [200] * 50, [r.error for r in results]
        events = served.intake.events
        assert len(events) == 50
        assert len({e.id for e in events}) == 50
        by_plate = {e.plate: e for e in events if isinstance(e, PlateEvent)}
        for sent in results:
            event = by_plate[sent.plate or ""]
            assert sent.read is not None
            assert event.scene_image == Image(data=sent.read.scene_jpeg)
        assert served.count("lpr_http_requests_total", status="200") == 50
        assert served.server._buffered == 0  # every body's share of the budget released


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_listener(tmp_path: Path) -> None:
    import ssl

    cert, key = make_certificate(tmp_path)
    async with serving(tls_cert_file=cert, tls_key_file=key) as served:
        client_tls = ssl.create_default_context(cafile=str(cert))
        url = served.url().replace("http://", "https://")
        status, _, _ = await request("POST", url, data=plate_body(), ssl=client_tls)
        assert status == 200
        with pytest.raises(aiohttp.ClientError):
            await request("POST", served.url(), data=plate_body())  # plain HTTP is refused


async def test_serve_keeps_cameras_online_until_cancelled_and_listens_again_after() -> None:
    port = free_port()
    config = Config(http=HttpServerConfig(listen=f"127.0.0.1:{port}"), cameras=(camera(),))
    intake = Intake()
    online: dict[str, bool] = {}
    ctx = AdapterContext(config, Metrics(), intake.submit, online.__setitem__, asyncio.Event())
    server = HttpPushServer(ctx, list(config.cameras))  # type: ignore[arg-type]
    await server.start()  # as the gateway does at start: a busy port fails there
    url = f"http://127.0.0.1:{port}/lpr/gate"
    for _round in range(2):  # the second round is the restart after a crash
        task = asyncio.create_task(serve(server))
        await eventually(lambda: online == {"gate": True})
        status, _, _ = await request("POST", url, data=plate_body())
        assert status == 200
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert online == {"gate": False}
        assert not server.listening
        with pytest.raises(aiohttp.ClientConnectionError):
            await request("POST", url, data=plate_body())
    assert len(intake.events) == 2


# --------------------------------------------------------------------------
# End to end: simulator → gateway → mosquitto → subscriber

E2E_CAMERA = {
    "id": "gate",
    "protocol": "http",
    "path": "/lpr/gate",
    "username": USER,
    "password": PASSWORD,
    "timezone": "Europe/Berlin",
}


@pytest.mark.broker
async def test_end_to_end_reads_images_get_and_other_events(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=[E2E_CAMERA])
    url = f"http://{config.http.listen}/lpr/gate"

    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
        async with (
            Gateway(config),
            HttpCameraSimulator(
                url,
                user=USER,
                password=PASSWORD,
                other_event_every=4,
                tz=zoneinfo.ZoneInfo("Europe/Berlin"),
            ) as cam,
        ):
            await _wait_listening(config.http.port)  # the adapter starts in its own task
            await cam.run(count=8, rate=0)  # 6 reads, 2 other events
            async with HttpCameraSimulator(
                url, user=USER, password=PASSWORD, get_mode=True, seed=9
            ) as getter:
                got = await getter.send_read()
            assert [s.status for s in cam.sent] == [200] * 8
            assert got.status == 200
            reads = [s for s in cam.sent if s.kind == "plate"]
            others = [s for s in cam.sent if s.kind != "plate"]
            messages = await sub.until_count("lpr/gate/event", len(reads) + 1)
            await sub.until(
                lambda msgs: (
                    sum(m.topic.startswith("lpr/gate/camera_event/") for m in msgs) >= len(others)
                )
            )
    events = {m.json()["plate"]: m.json() for m in messages}
    plate_images = {
        hashlib.sha256(m.payload).hexdigest(): m.payload for m in sub.on("lpr/gate/image/plate")
    }
    scene_images = {
        hashlib.sha256(m.payload).hexdigest(): m.payload for m in sub.on("lpr/gate/image/scene")
    }
    for sent in reads:
        assert sent.read is not None and sent.time is not None
        event = events[sent.plate]
        assert event["source"] == "http" and event["camera"] == "gate"
        assert event["time"] == sent.time.strftime("%Y-%m-%dT%H:%M:%S.") + (
            f"{sent.time.microsecond // 1000:03d}Z"
        )
        assert event["direction"] == {"Approach": "in", "Away": "out"}[sent.direction or ""]
        assert event["resolution"] == {"width": 1920, "height": 1080}
        assert event["vehicle"]["brand"] == "Hyundai"
        assert event["raw"] == {"device": "Network Camera"}
        plate_sha = event["images"]["plate"]["sha256"]
        scene_sha = event["images"]["scene"]["sha256"]
        assert plate_images[plate_sha] == sent.read.plate_jpeg  # byte-exact
        assert scene_images[scene_sha] == sent.read.scene_jpeg
    get_event = events[got.plate]
    assert get_event["images"] == {
        "plate": None,
        "scene": None,
        "evidence0": None,
        "evidence1": None,
    }
    kinds = sorted(
        m.topic.rsplit("/", 1)[1]
        for m in sub.messages
        if m.topic.startswith("lpr/gate/camera_event/")
    )
    assert kinds == ["list_event", "vehicle_counting"]
    # the counting event's snapshot: on its own retained topic, byte-exact, never in the JSON
    (counting,) = [s for s in others if s.snapshot is not None]
    (snapshot,) = sub.on("lpr/gate/image/vehicle_counting")
    assert snapshot.payload == counting.snapshot
    (counted,) = sub.on("lpr/gate/camera_event/vehicle_counting")
    assert (
        counted.json()["data"]["snapshot"]["sha256"] == hashlib.sha256(snapshot.payload).hexdigest()
    )
    assert sub.messages.index(snapshot) < sub.messages.index(counted)


def _write_config(path: Path, broker: MosquittoProcess, tmp_path: Path, port: int) -> None:
    document = {
        "mqtt": {"url": broker.url, "client_id": "gw-crash-test"},
        "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "http": {"listen": f"127.0.0.1:{port}"},
        "dedup": {"window_seconds": 0},
        "cameras": [E2E_CAMERA],
    }
    path.write_text(yaml.safe_dump(document))


def _start_gateway(config_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


async def _wait_listening(port: int, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process is None or process.poll() is None, "gateway exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("gateway did not listen")


@pytest.mark.broker
@pytest.mark.slow
async def test_a_200_is_never_given_for_an_event_not_in_the_outbox(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Broker down, camera posts (gets 200s), gateway SIGKILLed, restarted: all arrive."""
    port = free_port()
    config_path = tmp_path / "config.yaml"
    _write_config(config_path, mqtt_broker, tmp_path, port)
    gateway = _start_gateway(config_path)
    try:
        await _wait_listening(port, gateway)
        await asyncio.to_thread(mqtt_broker.stop)
        async with HttpCameraSimulator(
            f"http://127.0.0.1:{port}/lpr/gate", user=USER, password=PASSWORD, seed=5
        ) as cam:
            await cam.run(count=5, rate=0)
        accepted = [s for s in cam.sent if s.status == 200]
        assert len(accepted) == 5, [s.status for s in cam.sent]
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        await asyncio.to_thread(mqtt_broker.start)
        with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
            gateway = _start_gateway(config_path)
            messages = await sub.until_count("lpr/gate/event", len(accepted), timeout=20)
        arrived = {m.json()["id"] for m in messages}
        assert {s.reply["id"] for s in accepted} <= arrived
    finally:
        stop_process(gateway, 10)


# --------------------------------------------------------------------------
# Text that cannot be stored: refused before it reaches the pipeline


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"plate": "AB\\ud800C"}', "plate"),
        (b'{"plate": "AB1", "event": "LPR", "region": "\\udc00"}', "region"),
        (b'{"event": "Counting", "extra": {"n": ["\\udbff"]}}', "extra"),
    ],
)
async def test_lone_surrogate_is_400_with_reason_and_never_submitted(
    body: bytes, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving() as served:
        for _ in range(3):  # repeated by the camera: one log line, every one counted
            status, _, reply = await request("POST", served.url(), data=body)
            assert status == 400
            assert reply == {
                "error": "invalid_text",
                "detail": f"invalid text in field {field!r}: lone surrogate",
            }
        assert served.intake.events == []
        assert served.count("lpr_parse_errors_total", source="http", kind="invalid_text") == 3
        assert served.count("lpr_http_requests_total", status="400") == 3
        lines = [r for r in caplog.records if "unreadable body" in r.getMessage()]
        assert len(lines) == 1 and "camera gate" in lines[0].getMessage()
        assert served.count("lpr_log_lines_suppressed_total") == 2


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("Caption=%ED%A0%80&description=AB1", "Caption"),  # an encoded surrogate
        ("Caption=LPR&description=AB%FF", "description"),
        ("Caption=LPR&description=%C3", "description"),
    ],
)
async def test_undecodable_query_is_400_not_a_replacement_character(query: str, field: str) -> None:
    async with serving() as served:
        status, _, reply = await request("GET", served.url() + "?" + query)
        assert status == 400
        assert reply["error"] == "invalid_text"
        assert reply["detail"].startswith(f"invalid text in field {field!r}: not UTF-8")
        assert served.intake.events == []
        assert served.count("lpr_parse_errors_total", source="http", kind="invalid_text") == 1


async def test_control_characters_are_legal_and_accepted() -> None:
    async with serving() as served:
        body = json.dumps({"event": "a\u0000b\t\u007f\u0085\ufdd0", "n": 1}).encode()
        status, _, _ = await request("POST", served.url(), data=body)
        assert status == 200
        status, _, _ = await request("GET", served.url() + "?Caption=a%00b%7F&x=1")
        assert status == 200
        assert [type(e) for e in served.intake.events] == [CameraEvent, CameraEvent]


# --------------------------------------------------------------------------
# Connections: header and idle deadlines, caps


async def connect(port: int, head: bytes = b"", source: str = "127.0.0.1") -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    if head:
        writer.write(head)
        await writer.drain()
    return reader, writer


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (the timeout only bounds a failing test)."""
    return await asyncio.wait_for(reader.read(), timeout)


HALF_SENT = b"POST /lpr/gate HTTP/1.1\r\nHost: a\r\n"


def get_request(keep_alive: bool = True) -> bytes:
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        b"GET /lpr/gate?description=AB1 HTTP/1.1\r\nHost: a\r\nConnection: "
        + connection
        + b"\r\n"
        + auth_header()
        + b"\r\n"
    )


async def test_half_sent_headers_are_closed_after_the_header_timeout() -> None:
    async with serving(header_timeout_seconds=0.3) as served:
        port = served.server.port
        assert port is not None
        half = [await connect(port, HALF_SENT) for _ in range(5)]
        silent = [await connect(port) for _ in range(2)]  # not a byte
        await until(lambda: served.count("lpr_http_connections_open") == 7)
        # a well-behaved request meanwhile is served
        status, _, _ = await request("POST", served.url(), data=plate_body())
        assert status == 200
        for reader, writer in half + silent:
            assert await read_to_eof(reader) == b""  # closed without a reply
            writer.close()
        closed = served.count("lpr_http_connections_closed_total", reason="header_timeout")
        assert closed == 7
        await until(lambda: served.count("lpr_http_connections_open") == 0)
        assert served.intake.events and len(served.intake.events) == 1


async def test_a_request_trickled_byte_by_byte_is_cut_at_the_header_deadline() -> None:
    async with serving(header_timeout_seconds=0.5) as served:
        assert served.server.port is not None
        reader, writer = await connect(served.server.port)
        sent = 0
        with contextlib.suppress(ConnectionError):
            for byte in get_request():  # every byte in time, the whole never
                writer.write(bytes([byte]))
                await writer.drain()
                sent += 1
                if reader.at_eof():
                    break
                await asyncio.sleep(0.05)
        assert await read_to_eof(reader) == b""
        writer.close()
        assert sent < len(get_request())
        assert served.count("lpr_http_connections_closed_total", reason="header_timeout") == 1
        assert served.intake.events == []


async def test_idle_keepalive_connection_is_closed_and_counted() -> None:
    async with serving(keepalive_timeout_seconds=0.3, header_timeout_seconds=5) as served:
        assert served.server.port is not None
        reader, writer = await connect(served.server.port, get_request())
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        rest = await read_to_eof(reader)  # the reply's remainder, then the close
        assert b'"status": "accepted"' in rest
        writer.close()
        assert served.count("lpr_http_connections_closed_total", reason="idle_timeout") == 1
        assert served.count("lpr_http_connections_closed_total", reason="header_timeout") == 0


async def test_keepalive_pause_longer_than_the_header_timeout_is_fine() -> None:
    """The header deadline runs from a request's first byte, not from the last reply."""
    async with serving(keepalive_timeout_seconds=10, header_timeout_seconds=0.3) as served:
        assert served.server.port is not None
        reader, writer = await connect(served.server.port, get_request())
        replies = []
        for _ in range(2):
            replies.append(await reader.readuntil(b"}"))
            await asyncio.sleep(0.6)  # idle, twice the header timeout
            writer.write(get_request())
            await writer.drain()
        replies.append(await reader.readuntil(b"}"))
        assert all(r.startswith(b"HTTP/1.1 200") for r in replies), replies
        # ... and the next request, begun but not finished, is cut at its deadline
        writer.write(HALF_SENT)
        await writer.drain()
        assert await read_to_eof(reader) == b""
        writer.close()
        assert len(served.intake.events) == 3
        assert served.count("lpr_http_connections_closed_total", reason="header_timeout") == 1
        assert served.count("lpr_http_connections_closed_total", reason="idle_timeout") == 0


OVER_CAP = b"HTTP/1.1 503 Service Unavailable\r\n"


async def test_connections_over_the_per_source_cap_get_503_and_are_closed() -> None:
    async with serving(max_connections_per_source=3, header_timeout_seconds=10) as served:
        port = served.server.port
        assert port is not None
        held = [await connect(port) for _ in range(3)]
        await until(lambda: served.count("lpr_http_connections_open") == 3)
        refused = [await connect(port) for _ in range(4)]
        for reader, writer in refused:
            reply = await read_to_eof(reader)
            assert reply.startswith(OVER_CAP) and b"Retry-After: 5\r\n" in reply, reply
            writer.close()
        assert served.count("lpr_http_connections_closed_total", reason="per_source") == 4
        assert served.count("lpr_http_connections_open") == 3
        # another source address is not affected by this one's cap
        reader, writer = await connect(port, get_request(keep_alive=False), source="127.0.0.2")
        assert (await read_to_eof(reader)).startswith(b"HTTP/1.1 200")
        writer.close()
        # once one is closed, this source is served again
        held.pop()[1].close()
        await until(lambda: served.count("lpr_http_connections_open") == 2)
        status, _, _ = await request("POST", served.url(), data=plate_body())
        assert status == 200
        for _, writer in held:
            writer.close()
        await until(lambda: served.count("lpr_http_connections_open") == 0)
        assert served.count("lpr_http_connections_closed_total", reason="max_connections") == 0


async def test_connections_over_the_total_cap_get_503_and_are_closed() -> None:
    async with serving(max_connections=2, max_connections_per_source=10) as served:
        port = served.server.port
        assert port is not None
        held = [await connect(port, source=f"127.0.0.{n}") for n in (2, 3)]
        await until(lambda: served.count("lpr_http_connections_open") == 2)
        reader, writer = await connect(port, source="127.0.0.4")
        assert (await read_to_eof(reader)).startswith(OVER_CAP)
        writer.close()
        assert served.count("lpr_http_connections_closed_total", reason="max_connections") == 1
        assert served.count("lpr_http_connections_closed_total", reason="per_source") == 0
        for _, held_writer in held:
            held_writer.close()
        await until(lambda: served.count("lpr_http_connections_open") == 0)
        status, _, _ = await request("POST", served.url(), data=plate_body())
        assert status == 200


async def test_repeated_complaints_are_one_log_line_and_exact_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving(max_body_bytes=1000) as served:
        for _ in range(5):
            status, _, _ = await request(
                "POST", served.url(), auth=BasicAuth(USER, "Gu3ssW0rd"), data=plate_body()
            )
            assert status == 401
            status, _, _ = await request("POST", served.url(), data=b"x" * 1001)
            assert status == 413
        assert served.count("lpr_camera_auth_failures_total", camera="gate") == 5
        assert served.count("lpr_parse_errors_total", source="http", kind="too_large") == 5
        messages = [r.getMessage() for r in caplog.records if r.name == http_adapter.__name__]
        assert sum("wrong credentials" in m for m in messages) == 1
        assert sum("refused (limit 1000)" in m for m in messages) == 1
        assert served.count("lpr_log_lines_suppressed_total") == 8
        assert not any("Gu3ssW0rd" in m or PASSWORD in m for m in messages)


@pytest.mark.broker
async def test_surrogate_body_is_refused_then_the_same_plate_clean_is_published(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """The refused body leaves nothing behind: not in the outbox, not in dedup."""
    config = gateway_config(
        mqtt_broker.url, tmp_path, cameras=[E2E_CAMERA], dedup={"window_seconds": 60}
    )
    url = f"http://{config.http.listen}/lpr/gate"
    with MqttCollector(mqtt_broker.host, mqtt_broker.port) as sub:
        async with Gateway(config) as gw:
            await _wait_listening(config.http.port)
            bad = await request("POST", url, data=b'{"plate": "AB123CD", "region": "\\ud800"}')
            again = await request("POST", url, data=b'{"plate": "AB123CD", "region": "\\ud800"}')
            clean = await request("POST", url, data=plate_body(region="KR"))
            messages = await sub.until_count("lpr/gate/event", 1)
            parse_errors = gw.metrics.registry.get_sample_value(
                "lpr_parse_errors_total", {"source": "http", "kind": "invalid_text"}
            )
    assert bad[0] == again[0] == 400
    assert bad[2]["detail"] == "invalid text in field 'region': lone surrogate"
    assert clean[0] == 200 and clean[2]["status"] == "accepted"
    (event,) = [m.json() for m in messages]
    assert event["id"] == clean[2]["id"]
    assert event["plate"] == "AB123CD" and event["region"] == "KR"
    assert parse_errors == 2


# --------------------------------------------------------------------------
# One URL path for many cameras (match)


def matched(
    camera_id: str, device: str | None = None, source: tuple[str, ...] = ()
) -> HttpCameraConfig:
    return HttpCameraConfig(
        id=camera_id,
        protocol=Protocol.HTTP,
        name=camera_id,
        path="/lpr",
        username=camera_id,
        password=f"{camera_id}-pw",
        match=HttpMatchConfig(device=device, source=source),
        timezone="Europe/Berlin" if camera_id == "north" else "UTC",
    )


SHARED = (matched("north", device="Gate North"), matched("south", device="Gate South"))


def auth_of(camera_id: str) -> BasicAuth:
    return BasicAuth(camera_id, f"{camera_id}-pw")


async def test_shared_path_by_device_is_the_matching_cameras_read() -> None:
    async with serving(SHARED) as served:
        body = plate_body(device=" gate NORTH", time="2024-07-01 12:00:00.250")
        status, _, _ = await request("POST", served.url("/lpr"), auth=auth_of("north"), data=body)
        assert status == 200
        body = plate_body(device="Gate South", time="2024-07-01 12:00:00.250")
        status, _, _ = await request("POST", served.url("/lpr/"), auth=auth_of("south"), data=body)
        assert status == 200
        status, _, _ = await request(
            "GET",
            served.url("/lpr"),
            auth=auth_of("south"),
            params={"Caption": "LPR", "description": "MS12345", "device": "Gate South"},
        )
        assert status == 200
        north, south, south_get = served.intake.events
        assert (north.camera, south.camera, south_get.camera) == ("north", "south", "south")
        # each camera's own options: north's clock is Berlin's, south's UTC
        assert (
            north.time is not None and north.time.isoformat() == "2024-07-01T10:00:00.250000+00:00"
        )
        assert (
            south.time is not None and south.time.isoformat() == "2024-07-01T12:00:00.250000+00:00"
        )
        assert served.count("lpr_camera_bytes_received_total", camera="north") == len(
            plate_body(device=" gate NORTH", time="2024-07-01 12:00:00.250")
        )


async def test_shared_path_unmatched_looks_like_a_wrong_password_and_is_counted() -> None:
    async with serving((*SHARED, camera())) as served:
        wrong_password = await request(
            "POST", served.url(), auth=BasicAuth(USER, "nope"), data=plate_body()
        )
        replies = [
            # a device no camera there has
            await request(
                "POST", served.url("/lpr"), auth=auth_of("north"), data=plate_body(device="Gate X")
            ),
            # no device at all
            await request("POST", served.url("/lpr"), auth=auth_of("north"), data=plate_body()),
            # credentials of no camera there
            await request(
                "POST", served.url("/lpr"), auth=AUTH, data=plate_body(device="Gate North")
            ),
            # a GET without a device
            await request(
                "GET", served.url("/lpr"), auth=auth_of("south"), params={"description": "X1"}
            ),
        ]
        assert all(reply == wrong_password for reply in replies)
        assert served.intake.events == []
        assert served.count("lpr_http_unmatched_requests_total", path="/lpr") == 4
        assert served.count("lpr_camera_auth_failures_total", camera="north") == 0


async def test_shared_path_one_cameras_password_is_not_anothers() -> None:
    async with serving(SHARED) as served:
        status, _, _ = await request(
            "POST", served.url("/lpr"), auth=auth_of("north"), data=plate_body(device="Gate South")
        )
        assert status == 401
        assert served.intake.events == []
        assert served.count("lpr_camera_auth_failures_total", camera="south") == 1


async def test_shared_path_reads_no_body_for_credentials_that_fit_no_camera() -> None:
    big = plate_body(device="Gate North", filler="x" * 5000)
    async with serving(SHARED, max_body_bytes=2048) as served:
        status, _, _ = await request("POST", served.url("/lpr"), auth=AUTH, data=big)
        assert status == 401  # refused from the headers: the size was never looked at
        status, _, _ = await request("POST", served.url("/lpr"), auth=auth_of("north"), data=big)
        assert status == 413  # credentials that fit: the body is read, within its limit
        assert served.count("lpr_parse_errors_total", source="http", kind="too_large") == 1


async def test_shared_path_by_source_address() -> None:
    cams = (
        matched("lan", source=("10.0.0.0/8",)),
        matched("local", source=("127.0.0.1",)),
    )
    async with serving(cams) as served:
        status, _, _ = await request(
            "POST", served.url("/lpr"), auth=auth_of("local"), data=plate_body()
        )
        assert status == 200
        (event,) = served.intake.events
        assert event.camera == "local"
        # lan's own credentials from an address that is not lan's: nobody's request
        status, _, _ = await request(
            "POST", served.url("/lpr"), auth=auth_of("lan"), data=plate_body()
        )
        assert status == 401
        assert served.count("lpr_http_unmatched_requests_total", path="/lpr") == 1


async def test_shared_path_pictures_of_a_camera_event_reach_the_intake() -> None:
    async with serving(SHARED) as served:
        snapshot = base64.b64encode(b"\xff\xd8\xff\xe0 snapshot").decode()
        body = json.dumps(
            {
                "event": "Vehicle Counting",
                "device": "Gate North",
                "All-Car": 3,
                "snapshot": snapshot,
            }
        ).encode()
        status, _, _ = await request("POST", served.url("/lpr"), auth=auth_of("north"), data=body)
        assert status == 200
        (event,) = served.intake.events
        assert isinstance(event, CameraEvent) and event.camera == "north"
        assert event.images == {"snapshot": Image(b"\xff\xd8\xff\xe0 snapshot")}
