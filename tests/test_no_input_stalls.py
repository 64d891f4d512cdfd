"""No input stalls delivery: the real gateway process, real mosquitto, real simulated cameras.

Hostile camera input (control characters in an event kind, a lone surrogate,
a huge ONVIF topic, garbage on the TCP stream) is answered, counted and set
aside; every good read from every camera still reaches the subscriber.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

from gateway.broker import MosquittoProcess
from gateway.simulate.http import HttpCameraSimulator
from gateway.simulate.tcp import TcpCameraSimulator
from gateway.topics import topic_problem
from tests.helpers import MqttCollector, free_port, stop_process

HTTP_USER, HTTP_PASSWORD = "cam", "pw-1234"
HOSTILE_KINDS = ["a\u0000b", "a\tb", "a\u007fb", "a\u0085b", "a\ufdd0b", "x/+/#", "..", ""]


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class RunningGateway:
    process: subprocess.Popen[bytes]
    http_port: int
    metrics_port: int
    stderr_path: Path

    @property
    def camera_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/lpr/h"

    def health(self) -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=5
            ) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def metric(self, name: str, labels: str = "") -> float:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as reply:
            text = reply.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + ("{" if labels or "{" in line else " ")) and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


@contextmanager
def gateway_process(
    broker: MosquittoProcess, tmp_path: Path, tcp_port: int
) -> Iterator[RunningGateway]:
    http_port, metrics_port = free_port(), free_port()
    config = {
        "mqtt": {"url": broker.url, "client_id": "gw-stall"},
        "outbox": {"path": str(tmp_path / "data" / "outbox.sqlite3")},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "dedup": {"window_seconds": 0},
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
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    stderr_path = tmp_path / "gateway.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    running = RunningGateway(process, http_port, metrics_port, stderr_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, stderr_path.read_text()
            try:
                status, _ = running.health()
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gateway not healthy in 30 s"
            time.sleep(0.1)
        yield running
    finally:
        stop_process(process)


async def test_hostile_event_kinds_never_stop_the_other_cameras(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """The issue's first finding: `{"event": "a\\u0000b"}` stopped all publishing."""
    tcp = TcpCameraSimulator(seed=41, camera="t")
    await tcp.start()
    try:
        with (
            gateway_process(mqtt_broker, tmp_path, tcp.port) as gw,
            MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/#",)) as sub,
        ):
            async with HttpCameraSimulator(
                gw.camera_url, user=HTTP_USER, password=HTTP_PASSWORD, camera="h", seed=42
            ) as http:
                for kind in HOSTILE_KINDS:
                    sent = await http.post_body(json.dumps({"event": kind}).encode(), kind="bad")
                    assert sent.status == 200, (kind, sent.reply)
                query = "Caption=" + urllib.parse.quote("a\x00b")
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(
                        f"{gw.camera_url}?{query}",
                        headers={"Authorization": basic_auth(HTTP_USER, HTTP_PASSWORD)},
                    ) as reply,
                ):
                    assert reply.status == 200
                await tcp.push(2)
                good_http = [await http.send_read() for _ in range(2)]
                assert all(s.status == 200 for s in good_http)
                plates = {*(s.plate for s in good_http), *(p for p, _, _ in tcp.sent_reads)}
                await sub.until(
                    lambda msgs: (
                        {m.json()["plate"] for m in msgs if m.topic.endswith("/event")} >= plates
                    ),
                    timeout=30,
                )
                notices = [m for m in sub.messages if "/camera_event/" in m.topic]
                await sub.until(
                    lambda msgs: (
                        sum("/camera_event/" in m.topic for m in msgs) >= len(HOSTILE_KINDS) + 1
                    ),
                    timeout=30,
                )
                notices = [m for m in sub.messages if "/camera_event/" in m.topic]
            reconnects = gw.metric("lpr_mqtt_reconnects_total")
            status, health = gw.health()
    finally:
        await tcp.stop()
    assert all(topic_problem(m.topic) is None for m in notices)
    assert reconnects == 1  # the broker never dropped the gateway
    assert status == 200 and health["healthy"] is True
    assert health["dead_letters"] == 0


async def test_a_lone_surrogate_is_refused_and_its_plate_still_published(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    tcp = TcpCameraSimulator(seed=43, camera="t")
    await tcp.start()
    try:
        with (
            gateway_process(mqtt_broker, tmp_path, tcp.port) as gw,
            MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/h/event",)) as sub,
        ):
            async with HttpCameraSimulator(
                gw.camera_url, user=HTTP_USER, password=HTTP_PASSWORD, camera="h", seed=44
            ) as http:
                bad = b'{"plate": "B SR 77", "vehicle_brand": "\\ud800"}'
                refused = await http.post_body(bad, kind="surrogate")
                assert refused.status == 400, refused.reply
                clean = await http.post_body(b'{"plate": "B SR 77"}', kind="clean")
                assert clean.status == 200, clean.reply
                (event,) = await sub.until_count("lpr/h/event", 1, timeout=30)
            parse_errors = gw.metric("lpr_parse_errors_total", 'source="http"')
    finally:
        await tcp.stop()
    assert event.json()["plate"] == "B SR 77"
    assert parse_errors >= 1
