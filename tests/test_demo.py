"""`lpr-gateway demo` end to end: embedded broker, three simulated cameras, printed events."""

from __future__ import annotations

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
    lines = out.splitlines()
    for camera, source in (("gate_in", "tcp"), ("gate_out", "http"), ("lobby", "rtsp")):
        reads = [line for line in lines if f" {camera} " in line and f" {source} " in line]
        assert reads, f"no {source} read from {camera} in:\n{out}"
    assert "plate 20 KB, scene 299 KB" in out  # the images made it through MQTT
    assert "gateway    is offline" in out  # orderly shutdown said so
