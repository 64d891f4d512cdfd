"""`python -m bench.stall [--events N] [--rate R]`: where a latency tail comes from.

Drives the pipeline in-process at a fixed rate (the `pipeline-100` load) and
times every outbox call (`append_batch`, `acknowledge`, `read_after`) and every
garbage-collector pass, next to the camera→subscriber latency and the WAL's
peak size. A call or a pass that takes tens of milliseconds shows up here as
the same figure in the p99 of the latency. This is how the in-commit WAL
checkpoint was found (bench/RESULTS.md, "The latency tail").
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import statistics
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Subscriber, inject_read, percentile
from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.config import Config, MetricsConfig, MqttConfig, OutboxConfig
from gateway.outbox import Outbox
from gateway.simulate.common import plate_jpeg, scene_jpeg

TIMED_OUTBOX_CALLS = ("append_batch", "acknowledge", "read_after")


class Timings:
    """Durations (seconds) by what took them."""

    def __init__(self) -> None:
        self.durations: dict[str, list[float]] = defaultdict(list)
        self._gc_started = 0.0

    def time_outbox_calls(self) -> None:
        for name in TIMED_OUTBOX_CALLS:
            setattr(Outbox, name, self._timed(name, getattr(Outbox, name)))

    def _timed(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.durations[name].append(time.perf_counter() - started)

        return timed

    def time_collections(self) -> None:
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            elapsed = time.perf_counter() - self._gc_started
            self.durations[f"gc gen{info['generation']}"].append(elapsed)


async def _drive(broker: MosquittoProcess, events: int, rate: float) -> dict[str, float]:
    plate, scene = plate_jpeg(), scene_jpeg()
    with tempfile.TemporaryDirectory(prefix="lpr-stall-") as tmp:
        config = Config(
            mqtt=MqttConfig(urls=(broker.url,), client_id=f"stall-{uuid.uuid4().hex[:6]}"),
            metrics=MetricsConfig(listen=None),
            outbox=OutboxConfig(path=Path(tmp) / "outbox.sqlite3"),
        )
        wal = config.outbox.path.with_name("outbox.sqlite3-wal")
        peak_wal = [0]
        done = threading.Event()

        def watch_wal() -> None:
            while not done.wait(0.01):
                if wal.exists():
                    peak_wal[0] = max(peak_wal[0], wal.stat().st_size)

        async with Gateway(config) as gateway:
            while gateway.publisher is None or not gateway.publisher.connected:
                await asyncio.sleep(0.01)
            threading.Thread(target=watch_wal, daemon=True).start()
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.time()
            for n in range(events):
                delay = start + n / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gateway.submit(inject_read("stall", n, plate, scene))
            while gateway.outbox.pending_events > 0:
                await asyncio.sleep(0.005)
            after = resource.getrusage(resource.RUSAGE_SELF)
            done.set()
    return {
        "user_ms": 1000 * (after.ru_utime - before.ru_utime) / events,
        "sys_ms": 1000 * (after.ru_stime - before.ru_stime) / events,
        "peak_wal_mb": peak_wal[0] / 1e6,
    }


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stall", description=__doc__)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    args = parser.parse_args(argv)
    timings = Timings()
    timings.time_outbox_calls()
    timings.time_collections()
    broker = MosquittoProcess()
    broker.start()
    try:
        subscriber = Subscriber(broker.host, broker.port, args.events, topic="lpr/#")
        figures = asyncio.run(_drive(broker, args.events, args.rate))
        latencies = subscriber.result()["latencies"]
    finally:
        broker.close()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(f"{args.events} events at {args.rate:g}/s")
    print(f"camera→subscriber ms: p50 {p50:.1f}  p99 {p99:.1f}  max {max(latencies):.1f}")
    print(
        f"CPU per event: user {figures['user_ms']:.2f} ms, system {figures['sys_ms']:.2f} ms;"
        f" peak WAL {figures['peak_wal_mb']:.1f} MB"
    )
    print("| what | calls | mean ms | p99 ms | max ms | over 10 ms |")
    print("|---|---|---|---|---|---|")
    for name, durations in sorted(timings.durations.items()):
        print(
            f"| {name} | {len(durations)} | {_ms(statistics.mean(durations))} |"
            f" {_ms(percentile(durations, 99))} | {_ms(max(durations))} |"
            f" {sum(d > 0.01 for d in durations)} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
