"""HTTP scenarios: concurrent camera POSTs → gateway → mosquitto → one subscriber.

Each POST is a camera-shaped JSON body with two base64 JPEGs (~20 KB plate and
~300 KB scene decoded, ~430 KB on the wire). The load generator, the gateway
(`python -m gateway run`) and the subscriber are separate processes, so the
gateway's CPU is its own. Latency is from the `sent` time the load generator
puts in each body (it reaches the event's `raw`) to the subscriber's receipt.

Beside it, in the same run, the raw loop the issue compares against: take the
same bodies, `json.loads` + stdlib base64-decode the images, publish the same
four QoS 1 messages with paho (no HTTP, no outbox). Its events/s is printed
with the gateway's and their ratio (target: the gateway ≥ 0.5 of it).

- http-raw-decode: the raw loop alone
- http: the raw loop, then the gateway with 8 concurrent clients
- http-crowd: the gateway with 64 clients, more than it can serve flat out:
  whether publishing keeps up with intake (event latency near the reply
  latency, every reply 200) or falls behind (event latency growing to
  seconds, the outbox filling, 503s).
- http-flood: the gateway with 8 clients while another process opens connections
  to the camera port as fast as it can (half bare, half a 401 probe): the
  connection rate it reached and the cameras' latency under it. Printed, never
  asserted (tests/faults assert only counts).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import (
    MachineCpu,
    Result,
    Subscriber,
    cpu_seconds,
    loop_result,
    percentile,
    publish_read,
    round_ms,
    rss_mb,
    wait_published,
)
from gateway.broker import MosquittoProcess, free_port
from tests.helpers import stop_process

_SPAWN = mp.get_context("spawn")
WINDOW = 32
CLIENTS = 8
CROWD_CLIENTS = 64
POOL = 16  # distinct image pairs; plates differ per request
USER, PASSWORD = "bench", "bench-password"


def _image_pool() -> list[tuple[bytes, bytes]]:
    from gateway.simulate.common import PlateGenerator

    generator = PlateGenerator(seed=1)
    pool = []
    for _ in range(POOL):
        read = generator.read("bench")
        pool.append((base64.b64encode(read.plate_jpeg), base64.b64encode(read.scene_jpeg)))
    return pool


def _body(n: int, images: tuple[bytes, bytes]) -> bytes:
    head = json.dumps(
        {
            "device": "Network Camera",
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "time_msec": n % 1000,
            "plate": f"B{n:07d}",
            "type": "White",
            "speed": "-",
            "direction": "Approach",
            "confidence": "93",
            "resolution_width": 1920,
            "resolution_height": 1080,
            "coordinate_x1": 700,
            "coordinate_y1": 800,
            "coordinate_x2": 820,
            "coordinate_y2": 840,
            "plate_color": "White",
            "vehicle_type": "Car",
            "vehicle_color": "Gray",
            "Vehicle Brand": "Hyundai",
            "sent": time.time(),
        }
    ).encode()
    plate_b64, scene_b64 = images
    return b"".join(
        (
            head[:-1],
            b', "plate_image": "data:image/jpeg;base64,',
            plate_b64,
            b'", "full_image": "',
            scene_b64,
            b'"}',
        )
    )


# -- the raw loop ----------------------------------------------------------------


def raw_decode_loop(host: str, port: int, events: int) -> Result:
    """Parse + stdlib base64-decode each body, publish like the gateway does; no gateway."""
    subscriber = Subscriber(host, port, events, topic="rawhttp/#")
    pool = _image_pool()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rawhttp-{uuid.uuid4()}")
    client.max_inflight_messages_set(WINDOW)
    client.connect(host, port)
    client.loop_start()
    outstanding: deque[mqtt.MQTTMessageInfo] = deque()
    cpu0, start = cpu_seconds(), time.time()
    for n in range(events):
        document = json.loads(_body(n, pool[n % POOL]))
        plate = base64.b64decode(document.pop("plate_image").split(",", 1)[1], validate=True)
        scene = base64.b64decode(document.pop("full_image"), validate=True)
        event = json.dumps(
            {"id": str(uuid.uuid4()), "plate": document["plate"], "raw": {"sent": document["sent"]}}
        ).encode()
        publish_read(client, outstanding, "rawhttp", plate, scene, event, WINDOW)
    wait_published(outstanding)
    cpu = cpu_seconds() - cpu0
    got = subscriber.result()
    client.loop_stop()
    client.disconnect()
    return loop_result(
        "http: raw decode+publish loop",
        got,
        start,
        cpu,
        events,
        "loop's own CPU; json + stdlib base64 + paho, bodies built in the loop",
    )


# -- load generator process --------------------------------------------------------


def _load_main(url: str, events: int, clients: int, out: Any) -> None:
    out.put(asyncio.run(_load(url, events, clients)))


async def _load(url: str, events: int, clients: int) -> dict[str, Any]:
    import aiohttp

    pool = _image_pool()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    counter = iter(range(events))
    connector = aiohttp.TCPConnector(limit=clients)
    cpu0, start = cpu_seconds(), time.time()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def client() -> None:
            for n in counter:
                body = _body(n, pool[n % POOL])
                began = time.perf_counter()
                async with session.post(url, data=body) as reply:
                    await reply.read()
                    statuses[reply.status] += 1
                latencies.append((time.perf_counter() - began) * 1000)

        await asyncio.gather(*(client() for _ in range(clients)))
    return {
        "start": start,
        "end": time.time(),
        "statuses": dict(statuses),
        "latencies": latencies,
        "cpu": cpu_seconds() - cpu0,
    }


# -- the gateway scenario ------------------------------------------------------------


def _flood_main(port: int, stop: Any, out: Any) -> None:
    """Connections to the camera port as fast as one process makes them, until `stop`."""
    import socket

    start = time.monotonic()
    made = failed = 0
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                if made % 2:
                    conn.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
                    conn.recv(4096)
        except OSError:
            failed += 1
        made += 1
    out.put({"made": made, "failed": failed, "seconds": time.monotonic() - start})


def gateway_http(
    broker: MosquittoProcess, events: int, clients: int = CLIENTS, flood: bool = False
) -> Result:
    with tempfile.TemporaryDirectory(prefix="lpr-bench-http-") as tmp:
        http_port, metrics_port = free_port(), free_port()
        config = {
            "mqtt": {"url": broker.url, "client_id": f"bench-http-{uuid.uuid4().hex[:6]}"},
            "outbox": {"path": str(Path(tmp) / "outbox.sqlite3")},
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
            "http": {"listen": f"127.0.0.1:{http_port}"},
            "dedup": {"window_seconds": 0},
            "log_level": "WARNING",
            "cameras": [
                {
                    "id": "bench",
                    "protocol": "http",
                    "path": "/lpr/bench",
                    "username": USER,
                    "password": PASSWORD,
                }
            ],
        }
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config_path)],
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            _wait_healthy(metrics_port, http_port, gateway)
            subscriber = Subscriber(broker.host, broker.port, events, topic="lpr/bench/#")
            out: Any = _SPAWN.Queue()
            load = _SPAWN.Process(
                target=_load_main,
                args=(f"http://127.0.0.1:{http_port}/lpr/bench", events, clients, out),
                daemon=True,
            )
            flood_stop = _SPAWN.Event()
            flood_out: Any = _SPAWN.Queue()
            flooder = _SPAWN.Process(
                target=_flood_main, args=(http_port, flood_stop, flood_out), daemon=True
            )
            if flood:
                flooder.start()
            cpu0, machine = cpu_seconds(gateway.pid), MachineCpu()
            load.start()
            sent = out.get(timeout=600)
            flood_stop.set()
            flooded = flood_out.get(timeout=60) if flood else None
            got = subscriber.result()
            cpu = cpu_seconds(gateway.pid) - cpu0
            machine_pct = machine.pct()
            peak = rss_mb(gateway.pid)
            load.join(10)
            if flood:
                flooder.join(10)
        finally:
            stop_process(gateway, 20)
    seconds = max(got["end"] - sent["start"], 1e-9)
    received = got["received"]
    extra: dict[str, Any] = {}
    if flooded is not None:
        extra = {
            "flood_connections": flooded["made"],
            "flood_failed": flooded["failed"],
            "flood_connections_per_s": round(flooded["made"] / max(flooded["seconds"], 1e-9)),
        }
    return Result(
        scenario=f"http: {clients} clients → gateway"
        + (" under a connection flood" if flood else ""),
        events=received,
        seconds=round(seconds, 2),
        events_per_s=round(received / seconds, 1),
        p50_ms=round_ms(percentile(got["latencies"], 50)),
        p99_ms=round_ms(percentile(got["latencies"], 99)),
        gateway_cpu_pct=round(100 * cpu / seconds, 1),
        cpu_ms_per_event=round(1000 * cpu / max(received, 1), 3),
        peak_rss_mb=round(peak, 1),
        machine_cpu_pct=machine_pct,
        notes="separate processes; latency = body's send time → subscriber",
        extra={
            "statuses": sent["statuses"],
            "reply_p50_ms": round_ms(percentile(sent["latencies"], 50)),
            "reply_p99_ms": round_ms(percentile(sent["latencies"], 99)),
            "load_generator_cpu_s": round(sent["cpu"], 2),
            "gateway_cpu_s": round(cpu, 2),
            **extra,
        },
    )


def _wait_healthy(metrics_port: int, http_port: int, process: subprocess.Popen[bytes]) -> None:
    import socket
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("gateway exited at start")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=1):
                pass
            with socket.create_connection(("127.0.0.1", http_port), timeout=1):
                return
        except (OSError, urllib.error.URLError):
            time.sleep(0.05)
    raise RuntimeError("gateway not healthy in 30 s")


def http_raw(broker: MosquittoProcess, args: argparse.Namespace) -> Result:
    return raw_decode_loop(broker.host, broker.port, args.events)


def http_scenario(broker: MosquittoProcess, args: argparse.Namespace) -> Result:
    raw = raw_decode_loop(broker.host, broker.port, args.events)
    result = gateway_http(broker, args.events)
    ratio = result.events_per_s / raw.events_per_s if raw.events_per_s else 0.0
    result.extra["raw_decode_loop_events_per_s"] = raw.events_per_s
    result.extra["raw_decode_loop_cpu_ms_per_event"] = raw.cpu_ms_per_event
    result.extra["ratio_to_raw_decode_loop"] = round(ratio, 2)
    result.notes += (
        f"; raw decode loop {raw.events_per_s} ev/s in this run, ratio {ratio:.2f} (target ≥ 0.5)"
    )
    print(
        f"http: gateway {result.events_per_s} ev/s vs raw decode loop {raw.events_per_s} ev/s "
        f"→ ratio {ratio:.2f}; gateway {result.cpu_ms_per_event} CPU ms/event, "
        f"p99 {result.p99_ms} ms; replies {result.extra['statuses']}",
        file=sys.stderr,
    )
    return result


def http_flood_scenario(broker: MosquittoProcess, args: argparse.Namespace) -> Result:
    result = gateway_http(broker, args.events, flood=True)
    extra = result.extra
    print(
        f"http-flood: {extra['flood_connections']} connections "
        f"({extra['flood_connections_per_s']}/s, {extra['flood_failed']} failed) while the "
        f"cameras got {result.events_per_s} ev/s, reply p99 {extra['reply_p99_ms']} ms, "
        f"event p99 {result.p99_ms} ms; replies {extra['statuses']}",
        file=sys.stderr,
    )
    return result


def http_crowd_scenario(broker: MosquittoProcess, args: argparse.Namespace) -> Result:
    result = gateway_http(broker, args.events, clients=CROWD_CLIENTS)
    extra = result.extra
    print(
        f"http-crowd: {CROWD_CLIENTS} clients got {result.events_per_s} ev/s; reply p50 "
        f"{extra['reply_p50_ms']} ms, p99 {extra['reply_p99_ms']} ms; event p50 "
        f"{result.p50_ms} ms, p99 {result.p99_ms} ms; replies {extra['statuses']}",
        file=sys.stderr,
    )
    return result


SCENARIOS = {
    "http-raw-decode": http_raw,
    "http": http_scenario,
    "http-crowd": http_crowd_scenario,
    "http-flood": http_flood_scenario,
}
