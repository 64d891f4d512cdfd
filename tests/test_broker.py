"""The embedded broker: started when mqtt.url is absent, and gone when the gateway is."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.helpers import MqttCollector, free_port


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


def test_embedded_broker_goes_with_a_killed_gateway_and_the_port_is_free_again(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mqtt": {"embedded_port": port},
                "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
                "metrics": {"listen": None},
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
        with MqttCollector("127.0.0.1", port, topics=("lpr/bridge/state",)) as sub:
            sub.wait_for(lambda ms: any(m.payload == b"online" for m in ms), timeout=20)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        # The private broker must not outlive its gateway and hold the port.
        assert wait(lambda: not listening(port), 10), "embedded broker outlived the gateway"
        gateway = start()  # same fixed port: free again
        assert wait(lambda: listening(port), 20)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(15) == 0
        assert wait(lambda: not listening(port), 10)
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
