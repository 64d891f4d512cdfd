"""RTSP scenario: 100 simulated RTSP/ONVIF cameras at 1 read/s, each read with its
picture fetched over HTTP from the camera, → gateway → mosquitto → one subscriber.

The 100 simulators share one process (each its own RTSP and picture port);
the gateway and the subscriber have their own. Latency is the notification's
UtcTime (reads with a millisecond fraction) → subscriber, so it includes the
picture fetch. Machinery: bench/mixed.py.

- rtsp-100x1: 100 cameras at 1/s for --seconds (default 15)
- rtsp-idle-200: 200 playing sessions with no reads; the gateway's peak RSS
"""

from __future__ import annotations

import argparse

from bench.common import Result
from bench.mixed import Load, run_load
from gateway.broker import MosquittoProcess


def many_cameras(broker: MosquittoProcess, args: argparse.Namespace) -> Result:
    seconds = getattr(args, "seconds", None) or 15.0
    load = Load(rtsp=100, rtsp_rate=1.0, seconds=seconds)
    result = run_load(broker, "rtsp: 100 cameras @1/s + picture fetch", load)
    failures = result.extra["image_fetch_failures"]
    result.notes += f"; picture fetch failures {failures:.0f}; {seconds:g} s of reads"
    return result


def idle_sessions(broker: MosquittoProcess, args: argparse.Namespace) -> Result:
    load = Load(rtsp=200, rtsp_rate=0.0, seconds=3.0)
    result = run_load(broker, "rtsp: 200 idle sessions", load)
    online = result.extra["sessions_online"]
    result.notes = f"gateway peak RSS with {online:.0f} sessions playing: {result.peak_rss_mb} MB"
    return result


SCENARIOS = {"rtsp-100x1": many_cameras, "rtsp-idle-200": idle_sessions}
