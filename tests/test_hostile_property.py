"""Property: whatever hostile input the cameras send, every good read arrives.

hypothesis generates hostile HTTP bodies and camera-event kinds, TCP byte
streams and ONVIF documents; each is sent into one running gateway process
(real mosquitto, the project's TCP, HTTP and RTSP camera simulators),
followed by a good read from every camera. Each good read must reach the
subscriber, no HTTP request may get a 5xx, and /healthz must stay healthy.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.broker import MosquittoProcess
from gateway.codecs import onvif
from gateway.codecs.tcp import DEFAULT_MAX_DATA_SIZE, HEADER_SIZE, SIG, encode_frame
from gateway.simulate.http import HttpCameraSimulator
from gateway.simulate.rtsp import AuthMode, RtspCameraSimulator
from gateway.simulate.tcp import TcpCameraSimulator
from tests.helpers import (
    GatewayProcess,
    MqttCollector,
    http_camera_entry,
    tcp_simulator_entry,
)

T = TypeVar("T")
HTTP_USER, HTTP_PASSWORD = "cam", "pw-prop"
GOOD_READ_SECONDS = 30.0


class Rig:
    """One gateway process and its cameras, shared by every example.

    The simulators live on an event loop in a thread of their own, so that the
    (synchronous) hypothesis test can drive them between examples.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.broker = MosquittoProcess()
        self.tcp = TcpCameraSimulator(seed=71, camera="t")
        self.rtsp = RtspCameraSimulator(auth=AuthMode.NONE, rate=1.0, seed=72, camera="r")
        self.http: HttpCameraSimulator | None = None
        self.gateway: GatewayProcess | None = None
        self.collector: MqttCollector | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.broker.start()
        self.thread.start()
        self.run(self.tcp.start())
        self.run(self.rtsp.start())
        self.rtsp.paused = True  # reads only when a test pushes one
        cameras = [
            http_camera_entry("h", HTTP_USER, HTTP_PASSWORD),
            tcp_simulator_entry("t", self.tcp.port),
            {
                "id": "r",
                "protocol": "rtsp",
                "url": self.rtsp.url,
                "http_port": self.rtsp.http_port,
                "image_timeout_seconds": 5.0,
            },
        ]
        self.collector = MqttCollector(self.broker.host, self.broker.port, topics=("lpr/#",))
        self.collector.__enter__()
        config = {"mqtt": {"url": self.broker.url, "client_id": "gw-prop"}, "cameras": cameras}
        self.gateway = GatewayProcess(config, self.tmp).__enter__()
        self.http = HttpCameraSimulator(
            self.gateway.url("/lpr/h"), user=HTTP_USER, password=HTTP_PASSWORD, camera="h", seed=73
        )
        self.run(self.http.__aenter__())
        self.run(self.rtsp.wait_playing(1), timeout=30)

    def close(self) -> None:
        if self.http is not None:
            self.run(self.http.__aexit__())
        if self.gateway is not None:
            self.gateway.__exit__()
        if self.collector is not None:
            self.collector.__exit__()
        for simulator in (self.tcp, self.rtsp):
            self.run(simulator.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.broker.close()

    def published_plates(self) -> set[tuple[str, str]]:
        assert self.collector is not None
        return {
            (m.topic.split("/")[1], m.json()["plate"])
            for m in list(self.collector.messages)
            if m.topic.endswith("/event")
        }


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    rig = Rig(tmp_path_factory.mktemp("hostile"))
    try:
        rig.start()
        yield rig
    finally:
        rig.close()


# -- hostile input -----------------------------------------------------------------


_TOPIC_PLACEHOLDER = "TopicPlaceholder/x"


def _document(topic_path: str, data: list[tuple[str, str]]) -> bytes:
    """An ONVIF document whose topic is `topic_path` as is: characters XML does not
    allow (NUL, most C0 controls) make a document the parser must refuse."""
    spec = onvif.NotificationSpec(
        topic_path=_TOPIC_PLACEHOLDER,
        utc_time=datetime.now(UTC).replace(microsecond=0),
        data=tuple(data),
    )
    document = onvif.build_metadata_document([spec])
    escaped = topic_path.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return document.replace(_TOPIC_PLACEHOLDER.encode(), escaped.encode("utf-8"))


TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"])
    | st.sampled_from("\x00\t\x7f\x85\ufdd0/+#²"),
    max_size=40,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    ["plate", "event", "time", "confidence", "speed", "direction", "device", "type", "region"]
)
HTTP_BODIES = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(FIELDS, JSON_VALUES, max_size=6).map(lambda d: json.dumps(d).encode()),
    TEXT.map(lambda kind: json.dumps({"event": kind}).encode()),
    st.just(b'{"plate": "A\\ud800"}'),
    st.just(b'{"plate": "\xed\xa0\x80"}'),
)
TCP_STREAMS = st.one_of(
    st.binary(max_size=300),
    # plausible frames: any command, a payload that is no recognition result
    st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=100)).map(
        lambda c: encode_frame(c[0], c[1])
    ),
    # fake headers every 10 bytes (the log amplification of the issue)
    st.integers(1, 30).map(lambda n: encode_frame(0x8801, b"x" * 9)[:10] * n),
)
NUMBERS = st.sampled_from(["²", "５", "9" * 5000, "-0x1", "NaN", "inf", "", "12"])
ONVIF_DOCUMENTS = st.one_of(
    st.binary(max_size=300),
    TEXT.map(lambda topic: _document(topic or "x", [("IsMotion", "true")])),
    st.just(b""),  # an empty RTP document
    st.sampled_from([1, 70]).map(lambda kb: _document("Vendor/" + "T" * (kb * 1024), [])),
    st.tuples(NUMBERS, NUMBERS).map(
        lambda n: _document(
            onvif.PLATE_TOPIC_PATH,
            [
                ("LicensePlateResult", "HOSTILE1"),
                ("LicenseCarSpeed", n[0]),
                ("LicenseCarDirection", n[1]),
            ],
        )
    ),
)


@dataclass(frozen=True)
class Hostile:
    http_body: bytes
    tcp_stream: bytes
    onvif_document: bytes


def _breaks_the_stream(stream: bytes) -> bool:
    """Whether `stream`, sent between frames, starts a header whose DATA_SIZE is
    over the limit or not yet complete (the next frame's bytes would complete it)."""
    if not stream.startswith(SIG):
        return False
    if len(stream) < HEADER_SIZE:
        return True
    return int.from_bytes(stream[4:HEADER_SIZE], "little") > DEFAULT_MAX_DATA_SIZE


async def _send_hostile(rig: Rig, hostile: Hostile) -> list[int]:
    assert rig.http is not None
    sent = await rig.http.post_body(hostile.http_body, kind="hostile")
    statuses = [sent.status or 0]
    await rig.tcp.send_raw(hostile.tcp_stream)
    rig.rtsp.push_document(hostile.onvif_document)
    return statuses


async def _send_good(rig: Rig) -> tuple[set[tuple[str, str]], list[int]]:
    assert rig.http is not None
    http = await rig.http.send_read()
    await rig.tcp.push(1, wait_seconds=GOOD_READ_SECONDS)
    tcp_plate = rig.tcp.sent_reads[-1][0]
    await rig.rtsp.wait_playing(1)
    (rtsp,) = rig.rtsp.push(1)
    expected = {("t", tcp_plate), ("r", rtsp.plate)}
    if http.status == 200 and http.plate:
        expected.add(("h", http.plate))
    return expected, [http.status or 0]


@settings(
    max_examples=int(os.environ.get("LPR_PROPERTY_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(http_body=HTTP_BODIES, tcp_stream=TCP_STREAMS, onvif_document=ONVIF_DOCUMENTS)
def test_every_good_read_arrives_whatever_the_cameras_send(
    rig: Rig, http_body: bytes, tcp_stream: bytes, onvif_document: bytes
) -> None:
    # A header that claims more than the limit (or whose size the next frame's
    # first bytes complete to that) drops the connection by design (protocol
    # spec 1, "larger is a corrupt or hostile stream: drop the connection"); the
    # good read sent right behind it goes down with it, the camera protocol has
    # no acknowledgement to resend it by. Found once in ~2,000 examples.
    assume(not _breaks_the_stream(tcp_stream))
    hostile = Hostile(http_body, tcp_stream, onvif_document)
    gateway = rig.gateway
    assert gateway is not None
    statuses = rig.run(_send_hostile(rig, hostile))
    expected, good_statuses = rig.run(_send_good(rig), timeout=GOOD_READ_SECONDS * 2)
    assert all(0 < s < 500 for s in statuses), statuses
    assert good_statuses == [200], good_statuses
    deadline = time.monotonic() + GOOD_READ_SECONDS
    while not expected <= rig.published_plates():
        assert time.monotonic() < deadline, (
            f"good reads missing: {expected - rig.published_plates()} after {hostile!r:.300}\n"
            + "\n".join(gateway.log_tail(30))
        )
        time.sleep(0.05)
    status, health = gateway.health()
    assert status == 200 and health["healthy"], (health, gateway.log_tail(30))
    assert health["dead_letters"] == 0, health
