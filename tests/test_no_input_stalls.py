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
from pathlib import Path

import aiohttp

from gateway.broker import MosquittoProcess
from gateway.simulate.http import HttpCameraSimulator
from gateway.simulate.tcp import TcpCameraSimulator
from gateway.topics import topic_problem
from tests.helpers import GatewayProcess, MqttCollector

HTTP_USER, HTTP_PASSWORD = "cam", "pw-1234"
HOSTILE_KINDS = ["a\u0000b", "a\tb", "a\u007fb", "a\u0085b", "a\ufdd0b", "x/+/#", "..", ""]


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def camera_config(broker: MosquittoProcess, tcp_port: int) -> dict[str, object]:
    """One HTTP and one TCP camera (the simulator on `tcp_port`)."""
    return {
        "mqtt": {"url": broker.url, "client_id": "gw-stall"},
        "cameras": [
            {
                "id": "h",
                "protocol": "http",
                "path": "/lpr/h",
                "username": HTTP_USER,
                "password": HTTP_PASSWORD,
            },
            {
                "id": "t",
                "protocol": "tcp",
                "host": "127.0.0.1",
                "port": tcp_port,
                "username": "admin",
                "password": "1234",
            },
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
