"""The embedded broker: started when mqtt.url is absent, gone when the gateway is, and
(anonymous=False) usable only with the login of its run."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.broker import MosquittoProcess, mosquitto_password_hash
from gateway.event import PlateEvent, Source, utc_now
from tests.helpers import MqttCollector, free_port, gateway_config, stop_process


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def healthz(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return dict(json.load(response))
    except (OSError, ValueError):
        return None  # not listening yet, or 503 while the broker is not connected


def test_embedded_broker_goes_with_a_killed_gateway_and_the_port_is_free_again(
    tmp_path: Path,
) -> None:
    port = free_port()
    metrics_port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mqtt": {"embedded_port": port},
                "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
                "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
                "http": {"listen": f"127.0.0.1:{free_port()}"},
            }
        )
    )

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    gateway = start()
    try:
        assert wait(lambda: listening(port), 20), "embedded broker never listened"
        # The gateway is connected to its own broker (whatever login that takes).
        assert wait(lambda: (healthz(metrics_port) or {}).get("mqtt_connected"), 20)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        # The private broker must not outlive its gateway and hold the port.
        assert wait(lambda: not listening(port), 10), "embedded broker outlived the gateway"
        gateway = start()  # same fixed port: free again
        assert wait(lambda: listening(port), 20)
        # Started (its signal handlers set) before it is asked to stop: a SIGTERM
        # in the middle of start-up ends it with -15 instead of an orderly 0.
        assert wait(lambda: (healthz(metrics_port) or {}).get("mqtt_connected"), 20)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(15) == 0
        assert wait(lambda: not listening(port), 10)
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()


# -- the private broker: anonymous=False ------------------------------------------------


@pytest.fixture
def private_broker() -> Iterator[MosquittoProcess]:
    broker = MosquittoProcess(anonymous=False)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


def connack(port: int, username: str | None = None, password: str | None = None) -> Any:
    """The broker's answer to a CONNECT with this login (a paho ReasonCode)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
    if username is not None:
        client.username_pw_set(username, password)
    answered = threading.Event()
    result: list[Any] = []

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        result.append(reason)
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    deadline = time.monotonic() + 10
    try:
        while not answered.is_set() and time.monotonic() < deadline:
            client.loop(0.05)  # this thread runs the client: no loop thread to wind down
        assert answered.is_set(), "no CONNACK"
    finally:
        client.disconnect()
    return result[0]


def test_private_broker_accepts_only_its_login(private_broker: MosquittoProcess) -> None:
    broker = private_broker
    assert broker.username is not None and broker.password is not None
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"  # no credentials in it
    assert str(connack(broker.port)) == "Not authorized"  # anonymous
    assert str(connack(broker.port, broker.username, "wrong")) == "Not authorized"
    assert str(connack(broker.port, "admin", broker.password)) == "Not authorized"
    assert str(connack(broker.port, broker.username, broker.password)) == "Success"


def test_private_broker_files_are_ours_alone(private_broker: MosquittoProcess) -> None:
    broker = private_broker
    assert broker.password is not None
    assert stat.S_IMODE(broker.workdir.stat().st_mode) == 0o700
    for name in ("mosquitto.conf", "passwd"):
        assert stat.S_IMODE((broker.workdir / name).stat().st_mode) == 0o600, name
    conf = (broker.workdir / "mosquitto.conf").read_text().splitlines()
    assert f"listener {broker.port} 127.0.0.1" in conf
    assert "allow_anonymous false" in conf and "allow_anonymous true" not in conf
    stored = (broker.workdir / "passwd").read_text()
    assert stored.startswith(f"{broker.username}:$7$101$")
    for text in (stored, "\n".join(conf), repr(broker)):
        assert broker.password not in text  # hashed on disk, never shown


def test_private_broker_listens_on_loopback_only(private_broker: MosquittoProcess) -> None:
    """From the kernel's socket table: the listener's address is 127.0.0.1, no IPv6."""
    port_hex = f"{private_broker.port:04X}"
    listeners: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and local.endswith(f":{port_hex}"):  # 0A: LISTEN
                listeners.append(local)
    assert listeners == ["0100007F:" + port_hex]


def test_private_broker_login_is_random_per_instance_and_kept_on_restart() -> None:
    first, second = MosquittoProcess(anonymous=False), MosquittoProcess(anonymous=False)
    try:
        assert first.username != second.username and first.password != second.password
        first.start()
        login = (first.username, first.password)
        first.restart()
        assert (first.username, first.password) == login
        assert str(connack(first.port, *login)) == "Success"
    finally:
        first.close()
        second.close()


def test_private_broker_refuses_auth_in_extra_config() -> None:
    with pytest.raises(ValueError, match="own login"):
        MosquittoProcess(anonymous=False, extra_config=("allow_anonymous true",))


def test_password_hash_is_mosquittos_format() -> None:
    """Checked against `mosquitto_passwd` output for user/secret with this salt."""
    salt = bytes.fromhex("8e27ce2579e4110ac2f495ab")
    assert mosquitto_password_hash("secret", salt) == (
        "$7$101$jifOJXnkEQrC9JWr$Rkiqtv1p98/7MF5rFJW1QTnXYiWrCgAPRR/d0cGx4NFIMHYN/ae/"
        "Hnj5qKSBePGIRn//dxFj7lpEGnptID1yug=="
    )


async def test_gateway_publishes_through_the_private_broker_with_its_login(
    private_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """What app.py does with an embedded broker: the publisher logs in with the run's login."""
    broker = private_broker
    config = gateway_config(
        broker.url, tmp_path, mqtt={"username": broker.username, "password": broker.password}
    )
    sub = MqttCollector(broker.host, broker.port, topics=("lpr/#",))
    sub._client.username_pw_set(broker.username, broker.password)
    with sub:
        async with Gateway(config) as gw:
            event = PlateEvent(camera="c", source=Source.INJECT, plate="AB1", received=utc_now())
            assert (await gw.submit(event)).taken
            (received,) = await sub.until_count("lpr/c/event", 1)
            assert received.json()["id"] == event.id


def test_gateway_embedded_broker_refuses_anonymous_clients(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mqtt": {"embedded_port": port},
                "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
                "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
                "http": {"listen": f"127.0.0.1:{free_port()}"},
            }
        )
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait(lambda: (healthz(metrics_port) or {}).get("mqtt_connected"), 20)
        assert str(connack(port)) == "Not authorized"
    finally:
        stop_process(gateway)
