"""TCP scenarios: simulated cameras → gateway → mosquitto → one subscriber.

Simulators, gateway and subscriber each run in their own process, so CPU and
RSS are per role. Latency is from the camera's read time (set by the simulator
when it builds the frame, millisecond precision) to the subscriber's receipt.

- tcp-flat: one camera pushing as fast as the connection takes frames
- tcp-200x1: 200 cameras at 1 read/s each (random phases)
- tcp-1000x0.1: 1,000 cameras at 0.1 read/s each (100 reads/s in all)
- tcp-1000x0.2: 1,000 cameras at 0.2 read/s each: the 200 reads/s of tcp-200x1,
  so the two CPU-per-read figures differ only by the number of sessions (at
  100 reads/s the outbox commits fewer reads at a time, which costs more per
  read whatever the camera count: compare pipeline and pipeline-100)
- tcp-idle-500: 500 logged-in sessions with no reads; the gateway's RSS
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import (
    LoopLag,
    MachineCpu,
    Result,
    cpu_seconds,
    keep_freed_memory,
    percentile,
    round_ms,
    rss_mb,
)
from gateway.broker import MosquittoProcess
from gateway.limits import raise_open_file_limit

_SPAWN = mp.get_context("spawn")


def _vm_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# -- cameras -----------------------------------------------------------------


def _cameras_main(
    n: int, rate: float | None, count: int | None, ports_q: Any, stop: Any, out: Any
) -> None:
    raise_open_file_limit()  # a listening socket and a session per camera
    keep_freed_memory()
    asyncio.run(_cameras(n, rate, count, ports_q, stop, out))


async def _cameras(
    n: int, rate: float | None, count: int | None, ports_q: Any, stop: Any, out: Any
) -> None:
    from gateway.simulate.tcp import TcpCameraSimulator

    sims = [
        TcpCameraSimulator(rate=rate, count=count, seed=1000 + i, camera=f"cam{i}")
        for i in range(n)
    ]
    ports = [await sim.start() for sim in sims]
    cpu0 = cpu_seconds()
    ports_q.put(ports)
    while not stop.is_set():
        if count is not None and all(sim.done.is_set() for sim in sims):
            break
        await asyncio.sleep(0.05)
    times = [t for sim in sims for t in sim.sent_times]
    out.put(
        {
            "sent": sum(sim.frames_sent for sim in sims),
            "logins": sum(sim.logins for sim in sims),
            "first": min(times) if times else None,
            "cpu": cpu_seconds() - cpu0,
        }
    )
    while not stop.is_set():  # keep the sessions until the gateway is measured
        await asyncio.sleep(0.05)
    for sim in sims:
        await sim.stop()


# -- gateway -----------------------------------------------------------------


def _gateway_main(broker_url: str, ports: list[int], ready: Any, stop: Any, out: Any) -> None:
    raise_open_file_limit()
    asyncio.run(_gateway(broker_url, ports, ready, stop, out))


async def _gateway(broker_url: str, ports: list[int], ready: Any, stop: Any, out: Any) -> None:
    from gateway.app import Gateway
    from gateway.config import (
        Config,
        DedupConfig,
        MetricsConfig,
        MqttConfig,
        OutboxConfig,
        Protocol,
        TcpCameraConfig,
    )

    cameras = tuple(
        TcpCameraConfig(
            id=f"cam{i}",
            protocol=Protocol.TCP,
            name=f"cam{i}",
            host="127.0.0.1",
            port=port,
            password="1234",
        )
        for i, port in enumerate(ports)
    )
    with tempfile.TemporaryDirectory(prefix="lpr-bench-tcp-") as tmp:
        config = Config(
            mqtt=MqttConfig(urls=(broker_url,), client_id=f"bench-gw-{uuid.uuid4().hex[:6]}"),
            metrics=MetricsConfig(listen=None),
            outbox=OutboxConfig(path=Path(tmp) / "outbox.sqlite3"),
            dedup=DedupConfig(window_seconds=0),
            cameras=cameras,
        )
        async with Gateway(config) as gateway:
            gc.freeze()  # as `lpr-gateway run` does once started (gateway/cli.py serve)
            cpu0, machine = cpu_seconds(), MachineCpu()
            lag = LoopLag()
            lag.start()
            # CPU and reads once every camera is online: the reads after it
            # show the cost per read without the login storm's share.
            at_online: list[tuple[float, float]] = []
            online_rss = None
            while not stop.is_set():
                totals = _metric_totals(
                    gateway.metrics, ("lpr_camera_connected", "lpr_events_published")
                )
                if totals["lpr_camera_connected"] >= len(cameras):
                    online_rss = _vm_rss_mb()
                    at_online.append((cpu_seconds(), totals["lpr_events_published"]))
                    break
                await asyncio.sleep(0.1)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            cpu = cpu_seconds() - cpu0
            steady = None
            if at_online:
                published = _metric_totals(gateway.metrics, ("lpr_events_published",))
                reads = published["lpr_events_published"] - at_online[0][1]
                if reads > 0:
                    steady = 1000 * (cpu_seconds() - at_online[0][0]) / reads
            out.put(
                {
                    **lag.stop(),
                    "cpu": cpu,
                    "machine_cpu_pct": machine.pct(),
                    "steady_cpu_ms_per_read": None if steady is None else round(steady, 3),
                    "peak_rss": rss_mb(),
                    "online_rss": online_rss,
                    "publish_p99_le_s": _histogram_p99(gateway.metrics.registry),
                }
            )


def _metric_totals(metrics: Any, names: tuple[str, ...]) -> dict[str, float]:
    """Each metric summed over its labels: only these metrics collected (the
    whole registry with 1,000 cameras' labels took long enough to show in the
    loop-lag figures)."""
    totals = dict.fromkeys(names, 0.0)
    wanted = {
        "lpr_camera_connected": metrics.camera_connected,
        "lpr_events_published": metrics.events_published,
    }
    for name in names:
        for metric in wanted[name].collect():
            totals[name] += sum(
                sample.value for sample in metric.samples if not sample.name.endswith("_created")
            )
    return totals


def _histogram_p99(registry: Any) -> float | None:
    """Upper bound of the bucket holding the 99th percentile of publish latency
    (outbox acceptance → PUBACK): splits the gateway's latency into spine and intake."""
    buckets: list[tuple[float, float]] = []
    for metric in registry.collect():
        if metric.name == "lpr_publish_latency_seconds":
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    return next(le for le, count in buckets if count >= 0.99 * total)


# -- subscriber --------------------------------------------------------------


def _subscriber_main(
    host: str, port: int, expected: int, ready: Any, out: Any, timeout: float
) -> None:
    keep_freed_memory()  # as the common subscriber: no page-fault storm on the same cores
    latencies: list[float] = []
    from_received: list[float] = []  # gateway intake → subscriber (excludes the camera side)
    ids: set[str] = set()
    finished = [0.0]
    complete = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        now = time.time()
        if not message.topic.endswith("/event") or message.topic.endswith("/bridge/event"):
            return
        document = json.loads(message.payload)
        if document.get("time"):
            read = datetime.fromisoformat(document["time"].replace("Z", "+00:00")).timestamp()
            latencies.append((now - read) * 1000)
        received = datetime.fromisoformat(document["received"].replace("Z", "+00:00"))
        from_received.append((now - received.timestamp()) * 1000)
        ids.add(document["id"])
        finished[0] = now
        if len(ids) >= expected:
            complete.set()

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe("lpr/+/event", qos=1)
        ready.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{uuid.uuid4()}")
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect(host, port)
    client.loop_start()
    complete.wait(timeout)
    client.loop_stop()
    out.put(
        {
            "received": len(ids),
            "latencies": latencies,
            "from_received": from_received,
            "last": finished[0],
            "cpu": cpu_seconds(),
        }
    )


# -- scenarios ---------------------------------------------------------------


def _run(
    broker: MosquittoProcess,
    name: str,
    cameras: int,
    rate: float | None,
    count: int | None,
    notes: str,
) -> Result:
    expected = cameras * count if count else 0
    stop = _SPAWN.Event()
    ports_q: Any = _SPAWN.Queue()
    cam_out: Any = _SPAWN.Queue()
    gw_out: Any = _SPAWN.Queue()
    sub_out: Any = _SPAWN.Queue()
    gw_ready = _SPAWN.Event()
    sub_ready = _SPAWN.Event()
    subscriber = None
    if expected:
        subscriber = _SPAWN.Process(
            target=_subscriber_main,
            args=(broker.host, broker.port, expected, sub_ready, sub_out, 300.0),
            daemon=True,
        )
        subscriber.start()
        if not sub_ready.wait(20):
            raise RuntimeError("bench subscriber did not connect")
    sims = _SPAWN.Process(
        target=_cameras_main, args=(cameras, rate, count, ports_q, stop, cam_out), daemon=True
    )
    sims.start()
    ports = ports_q.get(timeout=120)
    gateway = _SPAWN.Process(
        target=_gateway_main,
        args=(broker.url, ports, gw_ready, stop, gw_out),
        daemon=True,
    )
    gateway.start()
    try:
        if expected:
            got = sub_out.get(timeout=330)
            cams = cam_out.get(timeout=30)
        else:
            if not gw_ready.wait(120):
                raise RuntimeError("sessions did not all come online")
            time.sleep(2.0)  # settle, then measure
            got = {"received": 0, "latencies": [], "from_received": [], "last": None}
            cams = None
        stop.set()
        gw = gw_out.get(timeout=30)
        if cams is None:
            cams = cam_out.get(timeout=30)
    finally:
        stop.set()
        for process in (gateway, sims, subscriber):
            if process is not None:
                process.join(15)
                if process.is_alive():
                    process.kill()
    measured = bool(expected and cams["first"] and got["last"])
    seconds = got["last"] - cams["first"] if measured else 0.0
    received = got["received"]
    return Result(
        scenario=name,
        events=received,
        seconds=round(seconds, 2),
        events_per_s=round(received / seconds, 1) if seconds > 0 else 0.0,
        p50_ms=round_ms(percentile(got["latencies"], 50)),
        p99_ms=round_ms(percentile(got["latencies"], 99)),
        gateway_cpu_pct=round(100 * gw["cpu"] / seconds, 1) if seconds > 0 else None,
        cpu_ms_per_event=round(1000 * gw["cpu"] / received, 3) if received else None,
        peak_rss_mb=round(gw["peak_rss"], 1),
        machine_cpu_pct=gw["machine_cpu_pct"],
        notes=notes,
        extra={
            "cameras": cameras,
            "sent": cams["sent"],
            "logins": cams["logins"],
            "camera_process_cpu_s": round(cams["cpu"], 2),
            "gateway_cpu_s": round(gw["cpu"], 2),
            "rss_all_online_mb": None if gw["online_rss"] is None else round(gw["online_rss"], 1),
            "p99_ms_from_gateway_intake": round_ms(percentile(got["from_received"], 99)),
            "publish_latency_p99_bucket_s": gw["publish_p99_le_s"],
            "steady_cpu_ms_per_read": gw["steady_cpu_ms_per_read"],
            "loop_lag_p99_ms": gw["loop_lag_p99_ms"],
            "loop_lag_max_ms": gw["loop_lag_max_ms"],
            # the gateway's callbacks that held its loop longest (> 8 ms), and how many did
            "callbacks_over_8ms": gw["callbacks_over_8ms"],
            "longest_callbacks": gw["longest_callbacks"],
            "max_ms": round_ms(max(got["latencies"], default=None)),
            # in order of arrival: a burst at the start shows in the first third
            "p99_ms_by_thirds": [
                round_ms(percentile(part, 99)) for part in _thirds(got["latencies"])
            ],
            # the same from the gateway's intake (`received`): the camera side left out
            "p99_ms_from_intake_by_thirds": [
                round_ms(percentile(part, 99)) for part in _thirds(got["from_received"])
            ],
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    )


def _thirds(values: list[float]) -> list[list[float]]:
    third = max(1, len(values) // 3)
    return [values[:third], values[third : 2 * third], values[2 * third :]]


def flat_out(broker: MosquittoProcess, args: argparse.Namespace) -> Result:
    result = _run(broker, "tcp: 1 camera flat out", 1, 0.0, args.events, "separate processes")
    # The camera is a process on the same two cores, and flat out it costs about
    # what the gateway does (two 330 KB copies per frame, the loopback send):
    # the raw loop it is compared with has no producer to share the machine with.
    if result.events:
        camera_ms = round(1000 * result.extra["camera_process_cpu_s"] / result.events, 3)
        result.extra["camera_cpu_ms_per_read"] = camera_ms
        print(
            f"tcp-flat: the camera simulator {camera_ms} CPU ms per read, the gateway "
            f"{result.cpu_ms_per_event}; the machine {result.machine_cpu_pct} % of 200"
        )
    return result


def many_cameras(broker: MosquittoProcess, args: argparse.Namespace) -> Result:
    seconds = 15
    return _run(broker, "tcp: 200 cameras @1/s", 200, 1.0, seconds, f"{seconds} reads per camera")


def thousand_cameras(broker: MosquittoProcess, args: argparse.Namespace) -> Result:
    reads = 3
    return _run(broker, "tcp: 1000 cameras @0.1/s", 1000, 0.1, reads, f"{reads} reads per camera")


def thousand_cameras_at_200(broker: MosquittoProcess, args: argparse.Namespace) -> Result:
    reads = 4
    return _run(broker, "tcp: 1000 cameras @0.2/s", 1000, 0.2, reads, f"{reads} reads per camera")


def idle_sessions(broker: MosquittoProcess, args: argparse.Namespace) -> Result:
    result = _run(broker, "tcp: 500 idle sessions", 500, None, None, "")
    result.notes = f"gateway RSS with all online: {result.extra['rss_all_online_mb']} MB"
    return result


SCENARIOS = {
    "tcp-flat": flat_out,
    "tcp-200x1": many_cameras,
    "tcp-1000x0.1": thousand_cameras,
    "tcp-1000x0.2": thousand_cameras_at_200,
    "tcp-idle-500": idle_sessions,
}
