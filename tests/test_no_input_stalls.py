"""No input stalls delivery: the real gateway process, real mosquitto, real simulated cameras.

Hostile camera input (control characters in an event kind, a lone surrogate,
a huge ONVIF topic, garbage on the TCP stream) is answered, counted and set
aside; every good read from every camera still reaches the subscriber.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from gateway.broker import MosquittoProcess
from gateway.codecs import onvif
from gateway.simulate.http import HttpCameraSimulator
from gateway.simulate.rtsp import AuthMode, RtspCameraSimulator
from gateway.simulate.tcp import TcpCameraSimulator
from gateway.topics import topic_problem
from tests.helpers import (
    GatewayProcess,
    MqttCollector,
    http_camera_entry,
    tcp_simulator_entry,
)

HTTP_USER, HTTP_PASSWORD = "cam", "pw-1234"
HOSTILE_KINDS = ["a\u0000b", "a\tb", "a\u007fb", "a\u0085b", "a\ufdd0b", "x/+/#", "..", ""]


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def camera_config(broker: MosquittoProcess, tcp_port: int) -> dict[str, object]:
    """One HTTP and one TCP camera (the simulator on `tcp_port`)."""
    return {
        "mqtt": {"url": broker.url, "client_id": "gw-stall"},
        "cameras": [
            http_camera_entry("h", HTTP_USER, HTTP_PASSWORD),
            tcp_simulator_entry("t", tcp_port),
        ],
    }


@asynccontextmanager
async def running(
    broker: MosquittoProcess, tmp_path: Path, topics: tuple[str, ...]
) -> AsyncIterator[tuple[GatewayProcess, TcpCameraSimulator, HttpCameraSimulator, MqttCollector]]:
    """The gateway process with a simulated TCP and HTTP camera, and a subscriber."""
    async with TcpCameraSimulator(seed=41, camera="t") as tcp:
        with (
            GatewayProcess(camera_config(broker, tcp.port), tmp_path) as gw,
            MqttCollector(broker.host, broker.port, topics=topics) as sub,
        ):
            async with HttpCameraSimulator(
                gw.url("/lpr/h"), user=HTTP_USER, password=HTTP_PASSWORD, camera="h", seed=42
            ) as http:
                yield gw, tcp, http, sub


async def test_hostile_event_kinds_never_stop_the_other_cameras(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """The issue's first finding: `{"event": "a\\u0000b"}` stopped all publishing."""
    async with running(mqtt_broker, tmp_path, ("lpr/#",)) as (gw, tcp, http, sub):
        for kind in HOSTILE_KINDS:
            sent = await http.post_body(json.dumps({"event": kind}).encode(), kind="bad")
            assert sent.status == 200, (kind, sent.reply)
        query = "Caption=" + urllib.parse.quote("a\x00b")
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{gw.url('/lpr/h')}?{query}",
                headers={"Authorization": basic_auth(HTTP_USER, HTTP_PASSWORD)},
            ) as reply,
        ):
            assert reply.status == 200
        await tcp.push(2)
        good_http = [await http.send_read() for _ in range(2)]
        assert all(s.status == 200 for s in good_http)
        plates = {*(s.plate for s in good_http), *(p for p, _, _ in tcp.sent_reads)}
        await sub.until(
            lambda msgs: {m.json()["plate"] for m in msgs if m.topic.endswith("/event")} >= plates,
            timeout=30,
        )
        await sub.until(
            lambda msgs: sum("/camera_event/" in m.topic for m in msgs) >= len(HOSTILE_KINDS) + 1,
            timeout=30,
        )
        notices = [m for m in sub.messages if "/camera_event/" in m.topic]
        reconnects = gw.metric("lpr_mqtt_reconnects_total")
        status, health = gw.health()
    assert all(topic_problem(m.topic) is None for m in notices)
    assert reconnects == 1  # the broker never dropped the gateway
    assert status == 200 and health["healthy"] is True
    assert health["dead_letters"] == 0


async def test_a_lone_surrogate_is_refused_and_its_plate_still_published(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    async with running(mqtt_broker, tmp_path, ("lpr/h/event",)) as (gw, _tcp, http, sub):
        bad = b'{"plate": "B SR 77", "vehicle_brand": "\\ud800"}'
        refused = await http.post_body(bad, kind="surrogate")
        assert refused.status == 400, refused.reply
        clean = await http.post_body(b'{"plate": "B SR 77"}', kind="clean")
        assert clean.status == 200, clean.reply
        (event,) = await sub.until_count("lpr/h/event", 1, timeout=30)
        parse_errors = gw.metric("lpr_parse_errors_total", 'source="http"')
    assert event.json()["plate"] == "B SR 77"
    assert parse_errors >= 1


async def test_a_70_kb_onvif_topic_and_a_del_in_a_topic_never_stop_the_rtsp_camera(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """An ONVIF topic over MQTT's 65,535 bytes made paho raise ValueError and ended
    the publisher silently; U+007F in a topic made mosquitto drop the gateway."""
    async with RtspCameraSimulator(auth=AuthMode.NONE, seed=45, camera="r") as rtsp:
        rtsp.paused = True
        config = {
            "mqtt": {"url": mqtt_broker.url, "client_id": "gw-onvif"},
            "cameras": [
                {"id": "r", "protocol": "rtsp", "url": rtsp.url, "http_port": rtsp.http_port}
            ],
        }
        with (
            GatewayProcess(config, tmp_path) as gw,
            MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/r/#",)) as sub,
        ):
            await rtsp.wait_playing(1)
            for topic_path in ("Vendor/" + "T" * 70_000, "Vendor/Gate\x7fOpen"):
                rtsp.push_document(onvif_document(topic_path))
            (read,) = rtsp.push(1)
            await sub.until(
                lambda msgs: any(
                    m.topic == "lpr/r/event" and m.json()["plate"] == read.plate for m in msgs
                ),
                timeout=30,
            )
            await sub.until(
                lambda msgs: sum("/camera_event/" in m.topic for m in msgs) >= 2, timeout=30
            )
            reconnects = gw.metric("lpr_mqtt_reconnects_total")
            status, health = gw.health()
    notices = [m for m in sub.messages if "/camera_event/" in m.topic]
    assert all(topic_problem(m.topic) is None and len(m.topic) < 100 for m in notices)
    assert {len(m.json()["data"]["topic"]) > 70_000 for m in notices} == {True, False}
    assert reconnects == 1
    assert status == 200 and health["healthy"] is True and health["dead_letters"] == 0


def onvif_document(topic_path: str) -> bytes:
    spec = onvif.NotificationSpec(
        topic_path=topic_path,
        utc_time=datetime.now(UTC).replace(microsecond=0),
        data=(("State", "true"),),
    )
    return onvif.build_metadata_document([spec])
