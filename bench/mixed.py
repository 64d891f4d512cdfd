"""Multi-protocol scenarios: TCP, RTSP and HTTP camera simulators → gateway → one subscriber.

Cameras, gateway and subscriber each run in their own process (spawned), so
the gateway's CPU and RSS are its own. The cameras produce at a steady rate
for a bounded time once every session is up; the subscriber counts distinct
event ids until everything the cameras handed over has arrived.

Latency is camera read time → subscriber receipt: the `time` a TCP camera puts
in its frame (ms), the `time` of an RTSP notification (reads whose time has no
fraction, half of the simulator's, are left out of the latency figures), and for
HTTP the `time` the simulator writes (ms). It includes the RTSP picture fetch.

- mixed: 20 TCP + 20 RTSP cameras at 1 read/s and 4 HTTP cameras at 5 reads/s
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import Result, cpu_seconds, percentile, round_ms, rss_mb
from gateway.broker import MosquittoProcess, free_port

_SPAWN = mp.get_context("spawn")
HTTP_USER, HTTP_PASSWORD = "bench", "bench-password"


@dataclass(frozen=True)
class Load:
    tcp: int = 0
    rtsp: int = 0
    http: int = 0
    tcp_rate: float = 1.0
    rtsp_rate: float = 1.0
    http_rate: float = 1.0
    seconds: float = 15.0

    @property
    def sessions(self) -> int:
        return self.tcp + self.rtsp


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- cameras -----------------------------------------------------------------------


def _cameras_main(load: dict[str, Any], ports_q: Any, http_q: Any, go: Any, out: Any) -> None:
    _raise_fd_limit()
    asyncio.run(_cameras(Load(**load), ports_q, http_q, go, out))


async def _cameras(load: Load, ports_q: Any, http_q: Any, go: Any, out: Any) -> None:
    from gateway.simulate.http import HttpCameraSimulator
    from gateway.simulate.rtsp import RtspCameraSimulator
    from gateway.simulate.tcp import TcpCameraSimulator

    tcps = [
        TcpCameraSimulator(rate=load.tcp_rate, seed=3000 + i, camera=f"tcp{i}")
        for i in range(load.tcp)
    ]
    rtsps = [
        RtspCameraSimulator(
            username="admin",
            password="admin",
            rate=load.rtsp_rate,
            motion_every=0,
            seed=4000 + i,
            camera=f"rtsp{i}",
            sent_reads_kept=100_000,
            pictures_kept=50,
        )
        for i in range(load.rtsp)
    ]
    tcp_ports = [await sim.start() for sim in tcps]
    rtsp_ports = [await sim.start() for sim in rtsps]
    ports_q.put({"tcp": tcp_ports, "rtsp": rtsp_ports})
    http_port = http_q.get()  # the gateway's listener
    while not go.is_set():  # sessions up: the gateway said so
        await asyncio.sleep(0.05)
    cpu0 = cpu_seconds()
    start = time.time()
    tcp_before = sum(sim.frames_sent for sim in tcps)  # sessions come up one by one
    https = [
        HttpCameraSimulator(
            f"http://127.0.0.1:{http_port}/lpr/http{i}",
            user=HTTP_USER,
            password=HTTP_PASSWORD,
            camera=f"http{i}",
            seed=5000 + i,
        )
        for i in range(load.http)
    ]
    for sim in https:
        await sim.__aenter__()
    runs = [
        asyncio.create_task(sim.run(count=int(load.seconds * load.http_rate), rate=load.http_rate))
        for sim in https
    ]
    await asyncio.sleep(load.seconds)
    for tcp_sim in tcps:
        await tcp_sim.stop()
    for rtsp_sim in rtsps:
        await rtsp_sim.stop()
    await asyncio.gather(*runs)
    for http_sim in https:
        await http_sim.__aexit__()
    http_ok = sum(1 for sim in https for s in sim.sent if s.status == 200)
    # The first read of any camera: TCP and RTSP sessions start pushing before `go`.
    firsts = [min(sim.sent_times) for sim in tcps if sim.sent_times]
    firsts += [min(r.time.timestamp() for r in sim.sent_reads) for sim in rtsps if sim.sent_reads]
    out.put(
        {
            "tcp_sent": sum(sim.frames_sent for sim in tcps),
            "tcp_before_go": tcp_before,
            "rtsp_sent": sum(1 for sim in rtsps for r in sim.sent_reads if r.sessions),
            "http_ok": http_ok,
            "http_sent": sum(len(sim.sent) for sim in https),
            "start": min([start, *firsts]),
            "cpu": cpu_seconds() - cpu0,
        }
    )


# -- gateway -----------------------------------------------------------------------


def camera_entries(load: Load, ports: dict[str, Any]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for i, port in enumerate(ports["tcp"]):
        entries.append(
            {
                "id": f"tcp{i}",
                "protocol": "tcp",
                "host": "127.0.0.1",
                "port": port,
                "username": "admin",
                "password": "1234",
            }
        )
    for i, (rtsp_port, http_port) in enumerate(ports["rtsp"]):
        entries.append(
            {
                "id": f"rtsp{i}",
                "protocol": "rtsp",
                "url": f"rtsp://127.0.0.1:{rtsp_port}/main",
                "username": "admin",
                "password": "admin",
                "http_port": http_port,
            }
        )
    for i in range(load.http):
        entries.append(
            {
                "id": f"http{i}",
                "protocol": "http",
                "path": f"/lpr/http{i}",
                "username": HTTP_USER,
                "password": HTTP_PASSWORD,
            }
        )
    return entries


def _gateway_main(document: dict[str, Any], sessions: int, ready: Any, stop: Any, out: Any) -> None:
    _raise_fd_limit()
    asyncio.run(_gateway(document, sessions, ready, stop, out))


async def _gateway(
    document: dict[str, Any], sessions: int, ready: Any, stop: Any, out: Any
) -> None:
    from gateway.app import Gateway
    from gateway.config import parse_config

    config = parse_config(yaml.safe_dump(document), {})
    async with Gateway(config) as gateway:
        registry = gateway.metrics.registry
        deadline = time.monotonic() + 120
        online = 0.0
        while time.monotonic() < deadline:
            online = sum(
                sample.value
                for metric in registry.collect()
                if metric.name == "lpr_camera_connected"
                for sample in metric.samples
            )
            if online >= sessions:
                break
            await asyncio.sleep(0.1)
        cpu0 = cpu_seconds()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        out.put(
            {
                "cpu": cpu_seconds() - cpu0,
                "online": online,
                "peak_rss": rss_mb(),
                "image_fetch_failures": sum(
                    sample.value
                    for metric in registry.collect()
                    if metric.name == "lpr_image_fetch_failures"
                    for sample in metric.samples
                    if sample.name.endswith("_total")
                ),
            }
        )


# -- subscriber --------------------------------------------------------------------


def _subscriber_main(host: str, port: int, expected: Any, ready: Any, out: Any) -> None:
    latencies: dict[str, list[float]] = {"tcp": [], "rtsp": [], "http": []}
    ids: set[str] = set()
    last = [0.0]
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        import json

        if message.topic.endswith("/bridge/event"):  # the bridge's own feed, not a read
            return
        now = time.time()
        document = json.loads(message.payload)
        with lock:
            if document["id"] in ids:
                return
            ids.add(document["id"])
            last[0] = now
        stamp = document.get("time")
        if stamp:
            read = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            if document["source"] != "rtsp" or read.microsecond:
                latencies[document["source"]].append((now - read.timestamp()) * 1000)

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe("lpr/+/event", qos=1)
        ready.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{uuid.uuid4()}")
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect(host, port)
    client.loop_start()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        want = expected.value
        if want < 0 or (want > 0 and len(ids) >= want):  # -1: nothing is expected
            break
        time.sleep(0.05)
    time.sleep(0.3)
    client.loop_stop()
    out.put({"received": len(ids), "latencies": latencies, "last": last[0]})


# -- the run -----------------------------------------------------------------------


def run_load(broker: MosquittoProcess, name: str, load: Load, notes: str = "") -> Result:
    ports_q: Any = _SPAWN.Queue()
    http_q: Any = _SPAWN.Queue()
    cam_out: Any = _SPAWN.Queue()
    gw_out: Any = _SPAWN.Queue()
    sub_out: Any = _SPAWN.Queue()
    go, stop, sub_ready = _SPAWN.Event(), _SPAWN.Event(), _SPAWN.Event()
    expected = _SPAWN.Value("i", 0)
    subscriber = _SPAWN.Process(
        target=_subscriber_main,
        args=(broker.host, broker.port, expected, sub_ready, sub_out),
        daemon=True,
    )
    subscriber.start()
    if not sub_ready.wait(20):
        raise RuntimeError("bench subscriber did not connect")
    cameras = _SPAWN.Process(
        target=_cameras_main, args=(asdict(load), ports_q, http_q, go, cam_out), daemon=True
    )
    cameras.start()
    ports = ports_q.get(timeout=120)
    http_port = free_port()
    with tempfile.TemporaryDirectory(prefix="lpr-bench-mixed-") as tmp:
        document = {
            "mqtt": {"url": broker.url, "client_id": f"bench-gw-{uuid.uuid4().hex[:6]}"},
            "outbox": {"path": str(Path(tmp) / "outbox.sqlite3")},
            "metrics": {"listen": None},
            "http": {"listen": f"127.0.0.1:{http_port}"},
            "dedup": {"window_seconds": 0},
            "homeassistant": {"enabled": False},
            "log_level": "WARNING",
            "cameras": camera_entries(load, ports),
        }
        gateway = _SPAWN.Process(
            target=_gateway_main, args=(document, load.sessions, go, stop, gw_out), daemon=True
        )
        gateway.start()
        http_q.put(http_port)
        try:
            if not go.wait(150):
                raise RuntimeError("camera sessions did not come up")
            cams = cam_out.get(timeout=load.seconds + 120)
            expected.value = cams["tcp_sent"] + cams["rtsp_sent"] + cams["http_ok"] or -1
            got = sub_out.get(timeout=600)
            stop.set()
            gw = gw_out.get(timeout=60)
        finally:
            stop.set()
            for process in (gateway, cameras, subscriber):
                process.join(15)
                if process.is_alive():
                    process.kill()
    seconds = max(got["last"] - cams["start"], 1e-9)
    received = got["received"]
    all_latencies = [v for values in got["latencies"].values() for v in values]
    sent = max(expected.value, 0)
    if not sent:  # idle sessions: the figure is the gateway's memory
        seconds = load.seconds
    return Result(
        scenario=name,
        events=received,
        seconds=round(seconds, 2),
        events_per_s=round(received / seconds, 1),
        p50_ms=round_ms(percentile(all_latencies, 50)),
        p99_ms=round_ms(percentile(all_latencies, 99)),
        gateway_cpu_pct=round(100 * gw["cpu"] / seconds, 1),
        cpu_ms_per_event=round(1000 * gw["cpu"] / received, 3) if received else None,
        peak_rss_mb=round(gw["peak_rss"], 1),
        notes=notes or f"{received}/{sent} events arrived; lost {sent - received}",
        extra={
            "sessions_online": gw["online"],
            "load": asdict(load),
            "sent": {k: cams[k] for k in ("tcp_sent", "rtsp_sent", "http_ok", "http_sent")},
            "lost": sent - received,
            "p99_ms_by_source": {
                source: round_ms(percentile(values, 99))
                for source, values in got["latencies"].items()
                if values
            },
            "p50_ms_by_source": {
                source: round_ms(percentile(values, 50))
                for source, values in got["latencies"].items()
                if values
            },
            "image_fetch_failures": gw["image_fetch_failures"],
            "camera_process_cpu_s": round(cams["cpu"], 2),
            "gateway_cpu_s": round(gw["cpu"], 2),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    )


def mixed(broker: MosquittoProcess, args: argparse.Namespace) -> Result:
    seconds = getattr(args, "seconds", None) or 15.0
    load = Load(tcp=20, rtsp=20, http=4, tcp_rate=1, rtsp_rate=1, http_rate=5, seconds=seconds)
    result = run_load(broker, "mixed: 20 TCP + 20 RTSP @1/s, 4 HTTP @5/s", load)
    result.notes = f"{result.notes}; p99 by source {result.extra['p99_ms_by_source']}"
    return result


SCENARIOS = {"mixed": mixed}
