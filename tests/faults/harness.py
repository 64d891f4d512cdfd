"""What the fault suite shares: three real simulated cameras, a counting subscriber,
and the ledger that compares what the cameras had accepted with what arrived.

Every read is identified from both ends without trusting the gateway's ids:

- HTTP: the event id the gateway put in its 200 reply (the camera's receipt);
- TCP and RTSP: the SHA-256 of the plate JPEG the simulator produced (every
  simulated read has its own bytes), which the event JSON carries in
  `images.plate.sha256`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from gateway.simulate.http import HttpCameraSimulator, SentRequest
from gateway.simulate.rtsp import RtspCameraSimulator
from gateway.simulate.tcp import TcpCameraSimulator
from tests.helpers import MqttCollector, Received

TCP_CAMERA, HTTP_CAMERA, RTSP_CAMERA = "gate_tcp", "gate_http", "gate_rtsp"
HTTP_USER, HTTP_PASSWORD = "cam", "cam-secret"
RTSP_USER, RTSP_PASSWORD = "admin", "rtsp-secret"
TCP_USER, TCP_PASSWORD = "admin", "1234"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CountingCollector(MqttCollector):
    """MqttCollector that also counts its (re)connections, so a test can wait until
    it is subscribed again after a broker restart before letting the gateway in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connects = 0
        self._connected = threading.Condition()
        self.arrival: dict[str, float] = {}  # event id → time.time() of its first arrival

    def __enter__(self) -> CountingCollector:
        super().__enter__()
        return self

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith("/event"):
            with contextlib.suppress(ValueError, KeyError):
                self.arrival.setdefault(json.loads(message.payload)["id"], time.time())
        super()._on_message(client, userdata, message)

    def _on_connect(self, client: mqtt.Client, *rest: Any) -> None:
        # Subscribe and count only once the SUBACK is back: after that, every
        # message the broker routes reaches this session.
        client.on_subscribe = self._on_subscribe
        super()._on_connect(client, *rest)

    def _on_subscribe(self, *_: Any) -> None:
        with self._connected:
            self.connects += 1
            self._connected.notify_all()

    async def until_connects(self, count: int, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.connects < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"collector not resubscribed ({self.connects}/{count})")
            await asyncio.sleep(0.01)

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            snapshot = list(self.messages)
        return [json.loads(m.payload) for m in snapshot if m.topic.endswith("/event")]


def plate_key(event: dict[str, Any]) -> str | None:
    plate = (event.get("images") or {}).get("plate") or {}
    digest = plate.get("sha256")
    return None if digest is None else str(digest)


@dataclass
class Ledger:
    """Per camera: the keys the camera had accepted, in the order it sent them."""

    expected: dict[str, list[str]] = field(default_factory=dict)
    key_of: dict[str, Callable[[dict[str, Any]], str | None]] = field(default_factory=dict)

    def report(self, events: Sequence[dict[str, Any]]) -> Report:
        report = Report()
        for camera, keys in self.expected.items():
            key_fn = self.key_of[camera]
            mine = [e for e in events if e["camera"] == camera]
            first_seen: list[str] = []
            payload_of_id: dict[str, dict[str, Any]] = {}
            ids_of_key: dict[str, set[str]] = {}
            for event in mine:
                key = key_fn(event)
                if key is None:
                    continue
                ids_of_key.setdefault(key, set()).add(event["id"])
                if event["id"] in payload_of_id:
                    report.redeliveries += 1
                    if payload_of_id[event["id"]] != event:
                        report.changed_redeliveries.append(event["id"])
                else:
                    payload_of_id[event["id"]] = event
                    first_seen.append(key)
            wanted = set(keys)
            arrived = set(first_seen)
            report.sent[camera] = len(keys)
            report.received[camera] = len(wanted & arrived)
            report.lost[camera] = sorted(wanted - arrived)
            # A read published twice under two ids would be a duplicate the
            # subscriber cannot recognise: the promise is one id per read.
            report.split_ids += sum(1 for k in wanted if len(ids_of_key.get(k, ())) > 1)
            order = {key: n for n, key in enumerate(keys)}
            positions = [order[k] for k in first_seen if k in order]
            late = [(keys[b], keys[a]) for a, b in itertools.pairwise(positions) if b < a]
            report.out_of_order[camera] = len(late)
            if late:
                report.late_reads[camera] = late[:10]
        return report


@dataclass
class Report:
    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    lost: dict[str, list[str]] = field(default_factory=dict)
    out_of_order: dict[str, int] = field(default_factory=dict)
    # Per camera: (a read, the one sent after it that arrived first), at most 10.
    late_reads: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    redeliveries: int = 0
    split_ids: int = 0
    changed_redeliveries: list[str] = field(default_factory=list)

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def total_lost(self) -> int:
        return sum(len(v) for v in self.lost.values())

    def line(self, what: str) -> str:
        per = ", ".join(f"{cam} {self.received[cam]}/{self.sent[cam]}" for cam in sorted(self.sent))
        return (
            f"{what}: sent {self.total_sent}, received {self.total_sent - self.total_lost}"
            f" ({per}), lost {self.total_lost}, redelivered {self.redeliveries},"
            f" out of order {sum(self.out_of_order.values())}"
        )

    def assert_nothing_lost(self) -> None:
        # Which reads, not only how many: a loss here is rare and must be read from CI.
        assert self.total_lost == 0, {cam: v[:20] for cam, v in self.lost.items() if v}
        assert not any(self.out_of_order.values()), (self.out_of_order, self.late_reads)
        assert self.split_ids == 0
        assert not self.changed_redeliveries


# -- the three cameras -----------------------------------------------------------


# Time the gateway gets to fetch the last plate pictures before the camera goes.
RTSP_PICTURE_GRACE_SECONDS = 1.5


@dataclass
class Cameras:
    tcp: TcpCameraSimulator
    rtsp: RtspCameraSimulator
    http_url_path: str = f"/lpr/{HTTP_CAMERA}"

    def entries(self) -> list[dict[str, Any]]:
        return [
            {
                "id": TCP_CAMERA,
                "protocol": "tcp",
                "host": "127.0.0.1",
                "port": self.tcp.port,
                "username": TCP_USER,
                "password": TCP_PASSWORD,
            },
            {
                "id": HTTP_CAMERA,
                "protocol": "http",
                "path": self.http_url_path,
                "username": HTTP_USER,
                "password": HTTP_PASSWORD,
            },
            {
                "id": RTSP_CAMERA,
                "protocol": "rtsp",
                "url": self.rtsp.url,
                "username": RTSP_USER,
                "password": RTSP_PASSWORD,
                "http_port": self.rtsp.http_port,
                "image_timeout_seconds": 2.0,
            },
        ]

    async def stop(self) -> None:
        """End the run: no more reads, a moment for the gateway to fetch the last
        RTSP pictures (a read whose picture it cannot fetch is published without
        it, and the ledger knows RTSP reads by their picture), then close."""
        self.tcp.rate = None
        self.rtsp.paused = True
        await asyncio.sleep(RTSP_PICTURE_GRACE_SECONDS)
        await self.tcp.stop()
        await self.rtsp.stop()

    def tcp_keys(self) -> list[str]:
        return [sha(plate) for _, plate, _ in self.tcp.sent_reads]

    def rtsp_keys(self) -> list[str]:
        return [sha(read.picture) for read in self.rtsp.sent_reads if read.sessions]


@contextlib.asynccontextmanager
async def three_cameras(rate: float = 5.0, seed: int = 11) -> AsyncIterator[Cameras]:
    """A TCP and an RTSP camera pushing `rate` reads/s once a session is up
    (0: only what the test pushes).

    The HTTP camera is driven by the test (it needs the gateway's port).
    """
    tcp = TcpCameraSimulator(
        user=TCP_USER, password=TCP_PASSWORD, rate=rate or None, seed=seed, camera=TCP_CAMERA
    )
    rtsp = RtspCameraSimulator(
        username=RTSP_USER,
        password=RTSP_PASSWORD,
        rate=rate,
        motion_every=0,
        seed=seed + 1,
        camera=RTSP_CAMERA,
        sent_reads_kept=100_000,
        pictures_kept=1000,  # the gateway may fetch late while it is being restarted
        session_timeout=60,
    )
    await tcp.start()
    await rtsp.start()
    try:
        yield Cameras(tcp, rtsp)
    finally:
        await tcp.stop()
        await rtsp.stop()


class HttpLoad:
    """An HTTP camera posting `rate` reads/s in the background; keeps every reply."""

    def __init__(self, port: int, rate: float = 5.0, seed: int = 13) -> None:
        self.sim = HttpCameraSimulator(
            f"http://127.0.0.1:{port}/lpr/{HTTP_CAMERA}",
            user=HTTP_USER,
            password=HTTP_PASSWORD,
            camera=HTTP_CAMERA,
            seed=seed,
            timeout=10.0,
        )
        self.rate = rate
        self._task: asyncio.Task[list[SentRequest]] | None = None

    async def __aenter__(self) -> HttpLoad:
        await self.sim.__aenter__()
        self._task = asyncio.create_task(self.sim.run(count=None, rate=self.rate))
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
        await self.sim.__aexit__()

    def accepted_ids(self) -> list[str]:
        return [
            str(s.reply["id"])
            for s in self.sim.sent
            if s.status == 200 and isinstance(s.reply, dict) and s.kind == "plate"
        ]

    def statuses(self) -> dict[int | None, int]:
        return dict(self.sim.status_counts())


def reads_sent(cams: Cameras, http: HttpLoad) -> dict[str, int]:
    """Reads each camera has sent so far (HTTP: those the gateway answered 200)."""
    return {
        TCP_CAMERA: len(cams.tcp.sent_reads),
        RTSP_CAMERA: len(cams.rtsp_keys()),
        HTTP_CAMERA: len(http.accepted_ids()),
    }


async def until_each_camera_sent(
    cams: Cameras, http: HttpLoad, count: int, timeout: float = 60.0
) -> None:
    """Until every camera has sent `count` reads: the load is waited for, never
    assumed from how long the test ran (a loaded machine sends fewer per second)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while min(reads_sent(cams, http).values()) < count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"cameras did not send {count} reads each: {reads_sent(cams, http)}"
            )
        await asyncio.sleep(0.05)


def event_id(event: dict[str, Any]) -> str:
    return str(event["id"])


def ledger(cams: Cameras, http: HttpLoad) -> Ledger:
    return Ledger(
        expected={
            TCP_CAMERA: cams.tcp_keys(),
            RTSP_CAMERA: cams.rtsp_keys(),
            HTTP_CAMERA: http.accepted_ids(),
        },
        key_of={TCP_CAMERA: plate_key, RTSP_CAMERA: plate_key, HTTP_CAMERA: event_id},
    )


def events_of(messages: Sequence[Received]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic.endswith("/event")]


async def wait_listening(
    port: int, timeout: float = 15.0, alive: Callable[[], bool] | None = None
) -> None:
    """Until something accepts connections on 127.0.0.1:port (adapters start after start())."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        assert alive is None or alive(), "the gateway exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise AssertionError(f"nothing listens on {port} after {timeout} s") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return


def record(line: str) -> None:
    """Print a fault-suite result line; with LPR_FAULT_REPORT=path also append it there
    (bench/RESULTS.md is written from those lines)."""
    import os

    print(line)
    path = os.environ.get("LPR_FAULT_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
