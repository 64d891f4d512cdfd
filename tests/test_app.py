"""Metrics and health endpoints of a running gateway, against a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway import app
from gateway.app import PULL_ADAPTERS, Gateway
from gateway.broker import MosquittoProcess
from gateway.config import Protocol
from gateway.event import Image, PlateEvent, Source, utc_now
from gateway.metrics import Metrics
from tests.helpers import MqttCollector, gateway_config

GATEWAY_DIR = Path(app.__file__).parent


async def fetch(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def sample_value(metrics_text: str, name: str, labels: str = "") -> float:
    prefix = f"{name}{{{labels}}}" if labels else name
    for line in metrics_text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{prefix} not in metrics")


async def test_metrics_move_and_health_follows_broker(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path)
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/last",)) as sub:
        async with Gateway(config) as gw:
            base = f"http://127.0.0.1:{gw.metrics_port}"
            await sub.until(lambda _: gw.publisher is not None and gw.publisher.connected)
            status, body = await fetch(f"{base}/healthz")
            assert status == 200 and json.loads(body)["healthy"] is True
            for n in range(3):
                await gw.submit(
                    PlateEvent(
                        camera="cam",
                        source=Source.HTTP,
                        plate=f"P{n}",
                        received=utc_now(),
                        scene_image=Image(b"\xff\xd8" * 100),
                    )
                )
            await sub.until_count("lpr/cam/last", 3)
            # Acks are flushed to the outbox every 20 ms: wait for it, however busy
            # the machine is (the labelled sample exists only from the first one on).
            published = 'lpr_events_published_total{camera="cam"} 3.0'
            for _ in range(400):
                _, text = await fetch(f"{base}/metrics")
                if published in text and sample_value(text, "lpr_outbox_events") == 0:
                    break
                await asyncio.sleep(0.05)
            assert (
                sample_value(text, "lpr_events_received_total", 'camera="cam",source="http"') == 3
            )
            assert sample_value(text, "lpr_events_published_total", 'camera="cam"') == 3
            assert sample_value(text, "lpr_mqtt_connected") == 1
            assert sample_value(text, "lpr_outbox_events") == 0
            assert sample_value(text, "lpr_publish_latency_seconds_count") == 3

            await asyncio.to_thread(mqtt_broker.stop)
            for _ in range(400):
                status, body = await fetch(f"{base}/healthz")
                if status == 503:
                    break
                await asyncio.sleep(0.05)
            report = json.loads(body)
            assert status == 503 and report["mqtt_connected"] is False
            assert any(p.startswith("mqtt: not connected") for p in report["problems"])
            _, text = await fetch(f"{base}/metrics")
            assert sample_value(text, "lpr_mqtt_connected") == 0


def test_every_protocol_has_an_adapter() -> None:
    assert set(PULL_ADAPTERS) == set(Protocol) - {Protocol.HTTP}


def test_a_gateway_loads_only_the_protocol_libraries_its_cameras_need() -> None:
    # lxml (RTSP) and construct (TCP) cost ~7 MB resident; an HTTP-only gateway
    # does without them. Loaded in a fresh interpreter: this one has them all.
    script = (
        "import sys, gateway.cli, gateway.app\n"
        "print(sorted(m for m in ('lxml', 'construct') if m in sys.modules))\n"
        "gateway.app.PULL_ADAPTERS[gateway.app.Protocol.RTSP]()\n"
        "print(sorted(m for m in ('lxml', 'construct') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.splitlines() == ["[]", "['lxml']"]


async def test_stop_ends_although_a_task_ignores_its_cancel(
    mqtt_broker: MosquittoProcess,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task that swallows its cancel (as Python 3.11's `wait_for` did when a
    result landed in the same turn) is named in the log; stop still ends."""
    monkeypatch.setattr(app, "TASK_STOP_SECONDS", 0.5)
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()

    config = gateway_config(mqtt_broker.url, tmp_path)
    gw = Gateway(config)
    await gw.start()
    task = asyncio.create_task(stubborn(), name="stubborn")
    gw._tasks.append(task)
    try:
        await asyncio.wait_for(gw.stop(), 30)
        assert "task stubborn did not end" in caplog.text
        assert not task.done()
    finally:
        released.set()
        await task


def test_the_gateway_does_not_use_wait_for() -> None:
    """Python 3.11's `asyncio.wait_for` returns a result that lands in the turn a
    cancel does, swallowing the cancel: a stopping gateway waited forever on the
    publisher it had cancelled mid-connect. `asyncio.timeout` keeps the cancel."""
    offenders = [
        f"{path.relative_to(GATEWAY_DIR.parent)}:{number}"
        for path in sorted(GATEWAY_DIR.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "asyncio.wait_for(" in line
    ]
    assert not offenders, offenders


def test_a_remembered_metric_child_is_the_labelled_series() -> None:
    metrics = Metrics()
    child = metrics.child(metrics.events_received, "gate", "http")
    assert child is metrics.child(metrics.events_received, "gate", "http")
    child.inc()
    metrics.events_received.labels(camera="gate", source="http").inc()
    assert metrics.child(metrics.events_received, "gate", "tcp") is not child
    value = metrics.registry.get_sample_value(
        "lpr_events_received_total", {"camera": "gate", "source": "http"}
    )
    assert value == 2
