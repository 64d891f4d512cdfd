"""Shared test tools: a real MQTT subscriber that records what arrives, config builders."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from gateway.broker import free_port
from gateway.config import Config, parse_config
from gateway.metrics import Metrics

__all__ = [
    "GatewayProcess",
    "MqttCollector",
    "Received",
    "eventually",
    "free_port",
    "gateway_config",
    "sample",
    "stop_process",
]


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    def json(self) -> Any:
        return json.loads(self.payload)


def publish_once(
    host: str,
    port: int,
    topic: str,
    payload: bytes | str,
    *,
    user: str | None = None,
    password: str | None = None,
    client_prefix: str = "test",
    retain: bool = False,
) -> None:
    """Publish one QoS 1 message as another client of the broker would (Home
    Assistant's birth message, an operator's request), waiting for the PUBACK."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{client_prefix}-{uuid.uuid4().hex[:8]}"
    )
    if user is not None:
        client.username_pw_set(user, password)
    client.connect(host, port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


class MqttCollector:
    """A real subscriber on its own paho thread, recording every message in order.

    `wait_for`/`wait_count` block (for sync tests and subprocess gateways);
    `until`/`until_count` are for async tests whose gateway shares the loop.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topics: Sequence[str] = ("lpr/#",),
        qos: int = 1,
        client_id: str | None = None,
        persistent: bool = False,
    ) -> None:
        """`persistent`: a clean_session=False session, so that QoS 1 messages
        published while the collector is cut off (broker restart with
        persistence) are queued for it instead of lost."""
        self.host, self.port, self.topics, self.qos = host, port, topics, qos
        self.messages: list[Received] = []
        self._lock = threading.Condition()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"collector-{uuid.uuid4().hex[:8]}",
            clean_session=not persistent,
        )
        # paho sleeps these (floats work; its stub says int)
        self._client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._subscribed = threading.Event()
        self._wants_bridge_events = any("bridge" in t for t in topics)

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe([(topic, self.qos) for topic in self.topics])
        self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith("/bridge/event") and not self._wants_bridge_events:
            # `lpr/+/event` (a camera's reads) also matches `lpr/bridge/event`;
            # a test asks for the bridge's events by naming `bridge`.
            return
        with self._lock:
            self.messages.append(
                Received(message.topic, bytes(message.payload), bool(message.retain), message.qos)
            )
            self._lock.notify_all()

    def __enter__(self) -> MqttCollector:
        self._client.connect(self.host, self.port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("collector could not connect")
        time.sleep(0.1)  # let the SUBSCRIBE be acknowledged before the test publishes
        return self

    def __exit__(self, *_: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        """Publish as a client of the broker (a request to the gateway, say), QoS 1."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    topics = [m.topic for m in self.messages[-20:]]
                    raise AssertionError(
                        f"timed out after {timeout}s; {len(self.messages)} messages, last: {topics}"
                    )
                self._lock.wait(min(remaining, 0.2))
            return list(self.messages)

    def wait_count(self, topic: str, count: int, timeout: float = 10.0) -> list[Received]:
        self.wait_for(lambda msgs: sum(m.topic == topic for m in msgs) >= count, timeout)
        return self.on(topic)

    # In async tests the gateway runs on the test's own loop: blocking there
    # would stall it, so these poll with asyncio.sleep instead.

    async def until(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                snapshot = list(self.messages)
            if predicate(snapshot):
                return snapshot
            if time.monotonic() > deadline:
                topics = [m.topic for m in snapshot[-20:]]
                raise AssertionError(
                    f"timed out after {timeout}s; {len(snapshot)} messages, last: {topics}"
                )
            await asyncio.sleep(0.02)

    async def until_count(self, topic: str, count: int, timeout: float = 10.0) -> list[Received]:
        await self.until(lambda msgs: sum(m.topic == topic for m in msgs) >= count, timeout)
        return self.on(topic)


def gateway_config(
    mqtt_url: str,
    tmp_path: Path,
    cameras: Iterable[dict[str, Any]] = (),
    **sections: dict[str, Any],
) -> Config:
    """A Config for tests: the given broker, an outbox in tmp_path, metrics on a free port."""
    document: dict[str, Any] = {
        "mqtt": {"url": mqtt_url, "client_id": f"gw-{uuid.uuid4().hex[:8]}"},
        "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "dedup": {"window_seconds": 0},
        "cameras": list(cameras),
    }
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    return parse_config(yaml.safe_dump(document, allow_unicode=True), {})


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Orderly stop of a gateway (or other) subprocess: SIGTERM, then SIGKILL after
    `timeout`. Nothing to do if it already ended."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class GatewayProcess:
    """`lpr-gateway run` as a real process, for end-to-end tests.

    `config` is the YAML document; `http.listen` and `metrics.listen` are set
    to free loopback ports and the outbox to `tmp_path` unless given. Entering
    waits for /healthz to answer 200; leaving stops the process (SIGTERM).
    """

    def __init__(self, config: dict[str, Any], tmp_path: Path, start_seconds: float = 30.0):
        self.http_port, self.metrics_port = free_port(), free_port()
        document = {
            "outbox": {"path": str(tmp_path / "data" / "outbox.sqlite3")},
            "http": {"listen": f"127.0.0.1:{self.http_port}"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "dedup": {"window_seconds": 0},
            **config,
        }
        self.config_path = tmp_path / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
        self.log_path = tmp_path / "gateway.log"
        self.start_seconds = start_seconds
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GatewayProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + self.start_seconds
        while self.health()[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise AssertionError(
                    f"gateway not healthy in {self.start_seconds} s:\n" + "\n".join(self.log_tail())
                )
            time.sleep(0.1)
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            stop_process(self.process)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def health(self) -> tuple[int, dict[str, Any]]:
        """(status, JSON) of /healthz; (0, {}) while it does not answer."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=5
            ) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of a metric's samples whose labels contain `labels`."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as reply:
            text = reply.read().decode()
        total = 0.0
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample.split("{")[0] == name and labels in sample:
                total += float(value)
        return total

    def log_tail(self, lines: int = 30) -> list[str]:
        if not self.log_path.exists():
            return []
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text.splitlines()[-lines:]


async def eventually(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait until `predicate()` holds; fail after `timeout` seconds (generous: a
    bound on a hang, never a claim about this machine's speed)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met in {timeout} s"
        await asyncio.sleep(0.02)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A metric sample's value (0 when the series does not exist yet), by its
    exposed name: `sample(gw.metrics, "lpr_events_published_total", camera="c")`."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


def http_camera_entry(camera_id: str, username: str, password: str) -> dict[str, Any]:
    """A config entry for an HTTP camera posting to `/lpr/<camera_id>` with a login."""
    return {
        "id": camera_id,
        "protocol": "http",
        "path": f"/lpr/{camera_id}",
        "username": username,
        "password": password,
    }


def tcp_simulator_entry(camera_id: str, port: int) -> dict[str, Any]:
    """A config entry for the TCP camera simulator on 127.0.0.1 (its default login)."""
    return {
        "id": camera_id,
        "protocol": "tcp",
        "host": "127.0.0.1",
        "port": port,
        "username": "admin",
        "password": "1234",
    }
