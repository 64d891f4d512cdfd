"""`lpr-gateway demo` end to end: embedded broker, three simulated cameras, printed events."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_shows_reads_from_all_three_protocols() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--seconds", "6", "--rate", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "embedded MQTT broker on mqtt://127.0.0.1:" in out
    assert re.search(r"demo: web page on http://127\.0\.0\.1:\d+/", out), out[:2000]
    lines = out.splitlines()
    for camera, source in (("gate_in", "tcp"), ("gate_out", "http"), ("lobby", "rtsp")):
        reads = [line for line in lines if f" {camera} " in line and f" {source} " in line]
        assert reads, f"no {source} read from {camera} in:\n{out}"
    assert "plate 20 KB, scene 299 KB" in out  # the images made it through MQTT
    assert "gateway    is offline" in out  # orderly shutdown said so


def test_event_printer_logs_in_to_a_private_broker() -> None:
    """The demo's printer subscribes with the embedded broker's login of the run."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from gateway.broker import MosquittoProcess
    from gateway.demo import EventPrinter

    broker = MosquittoProcess(anonymous=False)
    broker.start()
    lines: list[str] = []
    printed = threading.Event()

    def write(line: str) -> None:
        lines.append(line)
        printed.set()

    printer = EventPrinter(
        broker.host, broker.port, "lpr", write, username=broker.username, password=broker.password
    )
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2)
    publisher.username_pw_set(broker.username, broker.password)
    try:
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        # Retained, so it reaches the printer whenever its SUBSCRIBE lands.
        publisher.publish("lpr/gate/availability", b"online", qos=1, retain=True).wait_for_publish(
            10
        )
        assert printed.wait(10), "the printer printed nothing"
        assert lines == [f"{'':24}  {'gate':<10} is online"]
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        printer.close()
        broker.close()
