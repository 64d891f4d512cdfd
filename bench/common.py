"""Shared benchmark machinery: a subscriber process, CPU/RSS sampling, result rows.

Figures on these shared machines vary by 1.7x from hour to hour, so every
scenario is compared with the raw paho loop measured in the same run.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import statistics
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.event import Image, PlateEvent, Source, utc_now

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid or os.getpid()}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def keep_freed_memory() -> None:
    """Tell glibc to keep freed memory for reuse (for the bench's own processes).

    A camera simulator flat out builds a fresh ~330 KB frame per read, and a
    subscriber receives a ~300 KB message per picture; with glibc's defaults
    each buffer is handed back to the kernel when freed and faulted in again for
    the next (most of a core in the kernel), CPU taken from the gateway and the
    raw loop measured beside them on the same two cores.
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_trim_threshold, 256 << 20)
    libc.mallopt(m_mmap_threshold, 32 << 20)


def rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):  # peak resident set
                return int(line.split()[1]) / 1024
    return 0.0


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


ALL_CORES_PCT = 100 * (os.cpu_count() or 1)  # the machine figure when every core is busy


class MachineCpu:
    """How busy the whole machine was (every process, every core) since it was made.

    The benches run the gateway, the broker, the subscriber and the load on the
    same cores: a scenario whose machine figure is near 100 x cores was limited
    by the machine, not by the gateway alone.
    """

    def __init__(self) -> None:
        self._busy, self._total = _machine_ticks()

    def pct(self) -> float:
        """Percent of one core (so up to `ALL_CORES_PCT`), since construction."""
        busy, total = _machine_ticks()
        share = (busy - self._busy) / max(total - self._total, 1)
        return round(ALL_CORES_PCT * share, 1)


@dataclass
class Result:
    scenario: str
    events: int
    seconds: float
    events_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    gateway_cpu_pct: float | None
    cpu_ms_per_event: float | None
    peak_rss_mb: float | None
    baseline_events_per_s: float | None = None
    ratio: float | None = None
    machine_cpu_pct: float | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def event_time(payload: bytes) -> float | None:
    """Send time carried by an event: `raw.sent` (raw loop) or the event's `received`."""
    try:
        document = json.loads(payload)
    except ValueError:
        return None
    sent = (document.get("raw") or {}).get("sent")
    if sent is not None:
        return float(sent)
    received = document.get("received")
    if received:
        return datetime.fromisoformat(received.replace("Z", "+00:00")).timestamp()
    return None


def _subscriber_main(
    host: str, port: int, topic: str, expected: int, ready: Any, out: Any, timeout: float
) -> None:
    keep_freed_memory()  # every 300 KB message faulted in afresh: most of a core
    latencies: list[float] = []
    ids: set[str] = set()
    done = mp.Event()
    first: list[float] = []

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        now = time.time()
        if not message.topic.endswith("/event") or message.topic.endswith("/bridge/event"):
            return
        sent = event_time(bytes(message.payload))
        if sent is not None:
            latencies.append((now - sent) * 1000)
        if not first:
            first.append(now)
        ids.add(json.loads(message.payload)["id"])
        if len(ids) >= expected:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{uuid.uuid4()}")
    client.on_message = on_message

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe(topic, qos=1)
        ready.set()

    client.on_connect = on_connect
    client.connect(host, port)
    client.loop_start()
    done.wait(timeout)
    end = time.time()
    client.loop_stop()
    out.put(
        {
            "received": len(ids),
            "latencies": latencies,
            "first": first[0] if first else None,
            "end": end,
            "cpu": cpu_seconds(),
        }
    )


class Subscriber:
    """One MQTT subscriber in its own process, counting distinct events."""

    def __init__(
        self, host: str, port: int, expected: int, topic: str = "#", timeout: float = 120
    ) -> None:
        ctx = mp.get_context("spawn")
        self._ready = ctx.Event()
        self._out: Any = ctx.Queue()
        self._process = ctx.Process(
            target=_subscriber_main,
            args=(host, port, topic, expected, self._ready, self._out, timeout),
            daemon=True,
        )
        self._process.start()
        if not self._ready.wait(20):
            raise RuntimeError("bench subscriber did not connect")
        time.sleep(0.2)

    def result(self) -> dict[str, Any]:
        result: dict[str, Any] = self._out.get(timeout=180)
        self._process.join(10)
        return result


def publish_read(
    client: mqtt.Client,
    outstanding: deque[mqtt.MQTTMessageInfo],
    prefix: str,
    plate: bytes,
    scene: bytes,
    event: bytes,
    window: int,
) -> None:
    """Publish one read as the gateway does (images, event, last; QoS 1), keeping at
    most `window` messages unacknowledged: the raw loops' baseline publishing."""
    for topic, payload, retain in (
        (f"{prefix}/cam/image/plate", plate, True),
        (f"{prefix}/cam/image/scene", scene, True),
        (f"{prefix}/cam/event", event, False),
        (f"{prefix}/cam/last", event, True),
    ):
        outstanding.append(client.publish(topic, payload, qos=1, retain=retain))
    while len(outstanding) > window:
        outstanding.popleft().wait_for_publish(30)


def wait_published(outstanding: deque[mqtt.MQTTMessageInfo]) -> None:
    for info in outstanding:
        info.wait_for_publish(30)


def loop_result(
    scenario: str,
    got: dict[str, Any],
    start: float,
    cpu: float,
    events: int,
    notes: str,
    machine_cpu_pct: float | None = None,
) -> Result:
    """The row of a raw loop (no gateway): rate and latency as its subscriber saw
    them, CPU of the loop itself."""
    seconds = max(got["end"] - start, 1e-9)
    return Result(
        scenario=scenario,
        events=got["received"],
        seconds=round(seconds, 2),
        events_per_s=round(got["received"] / seconds, 1),
        p50_ms=round_ms(percentile(got["latencies"], 50)),
        p99_ms=round_ms(percentile(got["latencies"], 99)),
        gateway_cpu_pct=round(100 * cpu / seconds, 1),
        cpu_ms_per_event=round(1000 * cpu / max(events, 1), 3),
        peak_rss_mb=None,
        machine_cpu_pct=machine_cpu_pct,
        notes=notes,
    )


def round_ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def inject_read(camera: str, n: int, plate: bytes, scene: bytes) -> PlateEvent:
    """Read `n` as the in-process scenarios submit it: ~1 KB of fields, both images."""
    return PlateEvent(
        camera=camera,
        source=Source.INJECT,
        plate=f"B{n:06d}",
        received=utc_now(),
        raw={"padding": "x" * 600},
        plate_image=Image(plate),
        scene_image=Image(scene),
    )


class LoopLag:
    """How late the event loop runs a 5 ms timer: a tail here is the loop being
    busy (one long callback, a burst of ready sockets), not the spine waiting.

    Also which callbacks held the loop longest while it ran (every callback
    timed: ~0.1 µs each), so that a stall in the figures can be named: a
    sampling profile misses a few 20 ms events in a 15 s run.
    """

    SLOW_CALLBACK_MS = 8.0

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.lags_ms: list[float] = []
        self.slow_callbacks: list[tuple[float, str]] = []  # (ms, what)
        self._task: asyncio.Task[None] | None = None
        self._plain_run: Any = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._plain_run = plain_run = asyncio.Handle._run
        slow = self.slow_callbacks
        limit = self.SLOW_CALLBACK_MS / 1000

        def timed_run(handle: asyncio.Handle) -> None:
            callback = handle._callback  # type: ignore[attr-defined]  # cleared if it cancels itself
            started = time.perf_counter()
            plain_run(handle)
            took = time.perf_counter() - started
            if took > limit:
                slow.append((round(took * 1000, 1), _callback_name(callback)))

        asyncio.Handle._run = timed_run  # type: ignore[method-assign,assignment]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.lags_ms.append((loop.time() - due) * 1000)

    def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
        if self._plain_run is not None:
            asyncio.Handle._run = self._plain_run  # type: ignore[method-assign]
        longest = sorted(self.slow_callbacks, reverse=True)[:5]
        return {
            "loop_lag_p99_ms": round_ms(percentile(self.lags_ms, 99)),
            "loop_lag_max_ms": round_ms(max(self.lags_ms, default=0.0)),
            "callbacks_over_8ms": len(self.slow_callbacks),
            "longest_callbacks": [f"{ms} ms {what}" for ms, what in longest],
        }


def _callback_name(callback: Any) -> str:
    """A task's name and coroutine, or the callback's qualified name."""
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        return f"{task.get_name()} ({getattr(task.get_coro(), '__qualname__', '?')})"
    return str(getattr(callback, "__qualname__", repr(callback)))[:100]
